"""Cost of one `painta+rasg` sampling step relative to one `baseline` step (time and peak memory).

A full-size Stable Diffusion 2 inpainting UNet (865 M parameters, random weights, fp32) runs on the CPU
at 256 and 512 px. Each (size, method) is measured in a fresh process so that peak memory is its own:
peak resident memory during the first step (weights included), then the median time of the next steps.
Figures are ratios measured in one run on the same machine.

    python benchmarks/step_cost.py                  # 256 and 512 px
    python benchmarks/step_cost.py --sizes 256 --repeats 2
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
    sample_size=64, in_channels=9, out_channels=4, layers_per_block=2,
    block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    attention_head_dim=(5, 10, 20, 20), cross_attention_dim=1024, use_linear_projection=True,
)
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


def child(method: str, size: int, repeats: int, t: int) -> dict:
    import torch
    from diffusers import UNet2DConditionModel

    from hdpainter.attention import guided_attention
    from hdpainter.inpaint import Conditioning, GuidanceConfig, guided_prediction

    torch.manual_seed(0)
    unet = UNet2DConditionModel(**SD2_INPAINT_UNET).eval().requires_grad_(False)
    h = w = size // 8
    g = torch.Generator().manual_seed(1)
    mask = torch.zeros(1, 1, h, w)
    mask[..., h // 4 : 3 * h // 4, w // 4 : 3 * w // 4] = 1  # a quarter of the image
    token_mask = torch.zeros(1, 77, dtype=torch.bool)
    token_mask[0, 1:4] = True
    grid_masks = {d: torch.nn.functional.interpolate(mask, scale_factor=8 / d).flatten(1) > 0.5 for d in (16, 32)}
    cond = Conditioning((h, w), torch.cat([mask, torch.randn(1, 4, h, w, generator=g)], 1),
                        torch.randn(1, 77, 1024, generator=g), torch.randn(1, 77, 1024, generator=g), token_mask, grid_masks)
    latents = torch.randn(1, 4, h, w, generator=g)
    on = method == "painta+rasg"
    guidance = GuidanceConfig()

    def step():
        with torch.no_grad(), guided_attention(unet):
            out, direction = guided_prediction(unet, latents, t, cond, 7.5, guidance, on and t > guidance.painta_until_t, on)
        assert torch.isfinite(out).all() and (direction is None or torch.isfinite(direction).all())

    before = rss_bytes()
    with PeakRSS() as peak:
        step()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return {"method": method, "size": size, "t": t, "time_s": statistics.median(times),
            "peak_bytes": peak.peak, "step_bytes": peak.peak - before}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--timesteps", type=int, nargs="+", default=[999, 499], help="999: PAIntA and RASG; 499: RASG only")
    parser.add_argument("--child", nargs=4, metavar=("METHOD", "SIZE", "REPEATS", "T"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        method, size, repeats, t = args.child
        print(json.dumps(child(method, int(size), int(repeats), int(t))))
        return 0

    rows = []
    for size in args.sizes:
        for t in args.timesteps:
            result = {}
            for method in METHODS:
                proc = subprocess.run([sys.executable, __file__, "--child", method, str(size), str(args.repeats), str(t)],
                                      capture_output=True, text=True, check=True)
                result[method] = json.loads(proc.stdout.strip().splitlines()[-1])
            base, ours = result["baseline"], result["painta+rasg"]
            rows.append((size, t, base, ours))
            print(f"{size} px, t={t}: baseline {base['time_s']:.2f} s, painta+rasg {ours['time_s']:.2f} s", file=sys.stderr)

    gib = 2**30
    print("| size | t | baseline step | painta+rasg step | time ratio | baseline peak RSS | painta+rasg peak RSS | peak ratio | step-only memory (baseline → ours) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for size, t, base, ours in rows:
        print(f"| {size} | {t} | {base['time_s']:.2f} s | {ours['time_s']:.2f} s | {ours['time_s'] / base['time_s']:.2f}× "
              f"| {base['peak_bytes'] / gib:.2f} GiB | {ours['peak_bytes'] / gib:.2f} GiB | {ours['peak_bytes'] / base['peak_bytes']:.2f}× "
              f"| {base['step_bytes'] / gib:.2f} → {ours['step_bytes'] / gib:.2f} GiB |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
