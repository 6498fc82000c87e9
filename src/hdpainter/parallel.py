"""Several processes under torchrun / accelerate launch: which one this is, and which device it uses.

Shared by the batch command and the evaluation, which split their items across processes.
"""

from __future__ import annotations

import os


def distributed() -> tuple[int, int, int]:
    """(rank, world size, local rank); starts torch.distributed when launched by torchrun / accelerate launch."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1, 0
    import torch
    import torch.distributed as dist

    local = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), dist.get_world_size(), local


def rank_device(device: str | None, world: int, local: int) -> str | None:
    """The device a process uses: as asked, or under a multi-process launch its own GPU (cuda:LOCAL_RANK), or CPU."""
    if world == 1 or device is not None:
        return device
    import torch

    return f"cuda:{local}" if torch.cuda.is_available() else "cpu"
