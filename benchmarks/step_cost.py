"""Cost of one `painta+rasg` sampling step relative to one `baseline` step (time and peak memory).

A full-size Stable Diffusion 2 inpainting UNet (865 M parameters, random weights, fp32) runs on the CPU
at 256 and 512 px; with `--family sdxl`, a full-size SDXL inpainting UNet (2.6 G parameters: attention at H/16
with 2 layers and at H/32 with 10, pooled-text and size embeddings) at 512 px (and 1024 px, where 24 GB allows). Time: both methods in one process, interleaved in rounds after a warm-up, so that
the machine's drift hits both alike; the ratio is the median of the per-round ratios. Memory: each
method in a fresh process, peak resident memory during its first step (weights included).

    python benchmarks/step_cost.py                  # 256 and 512 px, about 15 minutes on 2 cores
    python benchmarks/step_cost.py --sizes 256 --rounds 2
    python benchmarks/step_cost.py --family sdxl --sizes 512 --rounds 2
    # allocator caching, as CUDA's allocator does (removes page-zeroing time from both methods):
    GLIBC_TUNABLES=glibc.malloc.mmap_threshold=4294967295:glibc.malloc.trim_threshold=17179869184 python benchmarks/step_cost.py
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time

SD2_INPAINT_UNET = dict(
    sample_size=64,
    in_channels=9,
    out_channels=4,
    layers_per_block=2,
    block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    attention_head_dim=(5, 10, 20, 20),
    cross_attention_dim=1024,
    use_linear_projection=True,
)
SDXL_INPAINT_UNET = dict(  # diffusers/stable-diffusion-xl-1.0-inpainting-0.1's UNet
    sample_size=128,
    in_channels=9,
    out_channels=4,
    layers_per_block=2,
    block_out_channels=(320, 640, 1280),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    transformer_layers_per_block=(1, 2, 10),
    attention_head_dim=(5, 10, 20),
    cross_attention_dim=2048,
    use_linear_projection=True,
    addition_embed_type="text_time",
    addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816,
)
FAMILIES = {"sd2": (SD2_INPAINT_UNET, 1024, None), "sdxl": (SDXL_INPAINT_UNET, 2048, 1280)}  # UNet, text width, pooled
METHODS = ("baseline", "painta+rasg")


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRSS:
    """Samples resident memory every millisecond in a thread (torch releases the GIL in its kernels)."""

    def __enter__(self):
        self.peak, self._stop = rss_bytes(), threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes())
            time.sleep(0.001)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())


def setup(family: str, size: int):
    """A full-size inpainting UNet of `family` (random weights) and fixed conditioning for one image of `size` px."""
    import torch
    from diffusers import UNet2DConditionModel

    from hdpainter.inpaint import Conditioning

    config, width, pooled = FAMILIES[family]
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**config).eval().requires_grad_(False)
    h = w = size // 8
    g = torch.Generator().manual_seed(1)
    mask = torch.zeros(1, 1, h, w)
    mask[..., h // 4 : 3 * h // 4, w // 4 : 3 * w // 4] = 1  # a quarter of the image
    token_mask = torch.zeros(1, 77, dtype=torch.bool)
    token_mask[0, 1:4] = True
    grid_masks = {d: torch.nn.functional.interpolate(mask, scale_factor=8 / d).flatten(1) > 0.5 for d in (16, 32)}
    added = [None, None]
    if pooled is not None:  # SDXL: pooled text embedding and the six size ids, per CFG half
        ids = torch.tensor([[size, size, 0, 0, size, size]], dtype=torch.float32)
        added = [{"text_embeds": torch.randn(1, pooled, generator=g), "time_ids": ids} for _ in range(2)]
    cond = Conditioning(
        (h, w),
        8,
        torch.cat([mask, torch.randn(1, 4, h, w, generator=g)], 1),
        torch.randn(1, 77, width, generator=g),
        torch.randn(1, 77, width, generator=g),
        token_mask,
        grid_masks,
        *added,
    )
    return unet, cond, torch.randn(1, 4, h, w, generator=g)


def make_step(unet, cond, latents, method: str, t: int):
    """One sampling step's UNet work for `method` at timestep `t`, as the pipeline runs it."""
    import torch

    from hdpainter.attention import guided_attention
    from hdpainter.inpaint import GuidanceConfig, guided_prediction

    guidance = GuidanceConfig()
    on = method == "painta+rasg"

    def step():
        with torch.no_grad(), guided_attention(unet, 8):
            out, gradient = guided_prediction(
                unet, latents, t, cond, 7.5, guidance, on and t > guidance.painta_until_t, on
            )
        assert torch.isfinite(out).all() and (gradient is None or torch.isfinite(gradient).all())

    return step


def child_memory(family: str, method: str, size: int, t: int) -> dict:
    """Peak resident memory (weights included) during the first step of a fresh process."""
    step = make_step(*setup(family, size), method, t)
    before = rss_bytes()
    with PeakRSS() as peak:
        step()
    return {"peak_bytes": peak.peak, "step_bytes": peak.peak - before}


def child_time(family: str, size: int, timesteps: list[int], rounds: int) -> dict:
    """Median step times, baseline and painta+rasg interleaved in rounds so machine drift hits both alike."""
    unet, cond, latents = setup(family, size)
    steps = {(m, t): make_step(unet, cond, latents, m, t) for t in timesteps for m in METHODS}
    for step in steps.values():
        step()  # warm-up
    times = {key: [] for key in steps}
    for _ in range(rounds):
        for key, step in steps.items():
            start = time.perf_counter()
            step()
            times[key].append(time.perf_counter() - start)
    return {f"{m}@{t}": statistics.median(v) for (m, t), v in times.items()} | {
        f"ratio@{t}": statistics.median(o / b for o, b in zip(times[("painta+rasg", t)], times[("baseline", t)]))
        for t in timesteps
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", choices=sorted(FAMILIES), default="sd2", help="whose full-size UNet")
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--skip-time", action="store_true", help="peak memory only (each step once, no timing)")
    parser.add_argument("--skip-memory", action="store_true", help="times only (no fresh process per method)")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds after one warm-up step of each")
    parser.add_argument(
        "--timesteps", type=int, nargs="+", default=[999, 499], help="999: PAIntA and RASG; 499: RASG only"
    )
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, family, *rest = args.child
        if kind == "memory":
            result = child_memory(family, rest[0], int(rest[1]), int(rest[2]))
        else:
            result = child_time(family, int(rest[0]), [int(t) for t in rest[2:]], int(rest[1]))
        print(json.dumps(result))
        return 0

    def run_child(*argv) -> dict:
        proc = subprocess.run(
            [sys.executable, __file__, "--child", *map(str, argv)], capture_output=True, text=True, check=True
        )
        return json.loads(proc.stdout.strip().splitlines()[-1])

    gib = 2**30
    lines = [
        "| size | t | baseline step | painta+rasg step | time ratio | baseline peak memory | painta+rasg peak memory | memory ratio |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for size in args.sizes:
        timing = None if args.skip_time else run_child("time", args.family, size, args.rounds, *args.timesteps)
        for t in args.timesteps:
            if args.skip_memory:
                memory_cells = ["—"] * 3
            else:
                memory = {m: run_child("memory", args.family, m, size, t) for m in METHODS}
                peaks = [memory[m]["peak_bytes"] for m in METHODS]
                memory_cells = [f"{b / gib:.2f} GiB" for b in peaks] + [f"{peaks[1] / peaks[0]:.2f}×"]
            cells = (
                ["—"] * 3
                if timing is None
                else [f"{timing[f'{m}@{t}']:.2f} s" for m in METHODS] + [f"{timing[f'ratio@{t}']:.2f}×"]
            )
            lines.append(f"| {size} px | {t} | {' | '.join(cells + memory_cells)} |")
            print(lines[-1], file=sys.stderr)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
