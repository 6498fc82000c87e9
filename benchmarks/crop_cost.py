"""End-to-end cost of stage 1 on a context crop against the whole image, with full-size random-weight models.

An SD 2 inpainting UNet and SD's VAE (built from their configurations, random weights, fp32; a small text
encoder) and the full-size ×4 upscaler run the whole method (`HDPainter`, painta+rasg) on a 4:3 photo with a
centred mask of 2 % of its area, each configuration in a fresh process on the CPU: wall time and peak resident
memory. Few steps (the per-step costs add up linearly; see step_cost.py and stage2_cost.py for those).

    python benchmarks/crop_cost.py                    # 2048 and 4096 px, about 10 minutes on 2 cores
    python benchmarks/crop_cost.py --sizes 2048 --steps 2 --sr-steps 1
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

from stage2_cost import full_size_upscaler, scene
from step_cost import SD2_INPAINT_UNET, PeakRSS

SD_VAE = dict(  # the VAE of Stable Diffusion 1.x / 2.x
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(128, 256, 512, 512),
    layers_per_block=2,
    latent_channels=4,
    sample_size=512,
    scaling_factor=0.18215,
)


def full_size_inpainter():
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from hdpainter.inpaint import HDPainterPipeline
    from hdpainter.testing import make_inpaint_components

    parts = make_inpaint_components("sd2")
    torch.manual_seed(0)
    parts["unet"] = UNet2DConditionModel(**SD2_INPAINT_UNET).eval().requires_grad_(False)
    parts["vae"] = AutoencoderKL(**SD_VAE).eval().requires_grad_(False)
    parts["text_encoder"] = full_size_upscaler().text_encoder  # hidden size 1024, one layer: negligible
    pipe = HDPainterPipeline(**parts, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def child(region: str, long_side: int, steps: int, sr_steps: int, fraction: float) -> dict:
    from hdpainter.painter import HDPainter
    from hdpainter.request import InpaintRequest

    painter = HDPainter(full_size_inpainter(), full_size_upscaler())
    image, mask, _ = scene(long_side, 512, fraction)
    request = InpaintRequest.from_options(
        {"prompt": "a red ball", "steps": steps, "sr_steps": sr_steps, "stage1_region": region}
    )
    last_step = {}  # stage → time of its last step so far

    def on_step(stage, sample, step, total):
        last_step[stage] = time.perf_counter()

    start = time.perf_counter()
    with PeakRSS() as peak:
        result = painter(image, mask, request, progress=False, on_step=on_step)
    end = time.perf_counter()
    assert result.images[0].size == image.size
    return {
        "seconds": end - start,
        "stage1_seconds": last_step[1] - start,  # preparation and stage 1's steps
        "stage2_seconds": last_step[2] - last_step[1],  # stage 1's decode, stage 2's encode and steps
        "rest_seconds": end - last_step[2],  # stage 2's decode, the resize and the Poisson blend
        "peak_bytes": peak.peak,
        "box": result.metadata[0]["stage1_box"],
    }


def median_run(runs: list[dict]) -> dict:
    """The run of median time (the lower middle one of an even count), with every run's seconds."""
    ordered = sorted(runs, key=lambda run: run["seconds"])
    return {**ordered[(len(ordered) - 1) // 2], "all_seconds": [round(run["seconds"]) for run in runs]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2048, 4096])
    parser.add_argument("--steps", type=int, default=2, help="stage-1 steps (2: one with RASG's gradient)")
    parser.add_argument("--sr-steps", type=int, default=1)
    parser.add_argument("--fraction", type=float, default=0.02, help="mask area / image area")
    parser.add_argument(
        "--repeats", type=int, default=1, help="runs of each configuration, alternating; the median is shown"
    )
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        region, size = args.child
        print(json.dumps(child(region, int(size), args.steps, args.sr_steps, args.fraction)))
        return 0
    runs: dict[tuple[int, str], list[dict]] = {}
    for size in args.sizes:
        for repeat in range(args.repeats):
            regions = ("whole", "crop") if repeat % 2 == 0 else ("crop", "whole")
            for region in regions:
                cmd = [sys.executable, __file__, "--child", region, str(size), "--steps", str(args.steps)]
                cmd += ["--sr-steps", str(args.sr_steps), "--fraction", str(args.fraction)]
                out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
                runs.setdefault((size, region), []).append(json.loads(out.strip().splitlines()[-1]))
                print(f"{size} {region}: {runs[size, region][-1]}", file=sys.stderr)
    rows = {key: median_run(value) for key, value in runs.items()}
    gib = 2**30
    print(
        f"painta+rasg, {args.steps} stage-1 and {args.sr_steps} stage-2 step(s), mask {args.fraction:.0%} of a 4:3 "
        f"photo, full-size random-weight models, fp32, CPU, median of {args.repeats} run(s) each\n"
    )
    print("| photo | whole: time | crop: time | crop / whole | whole: peak memory | crop: peak memory | crop box |")
    print("|---|---|---|---|---|---|---|")
    parts = ("stage1_seconds", "stage2_seconds", "rest_seconds")
    for size in args.sizes:
        w, c = rows[size, "whole"], rows[size, "crop"]
        box = c["box"]
        print(
            f"| {size}×{size * 3 // 4} | {w['seconds']:.0f} s | {c['seconds']:.0f} s | "
            f"{c['seconds'] / w['seconds']:.2f}× | {w['peak_bytes'] / gib:.2f} GiB | {c['peak_bytes'] / gib:.2f} GiB | "
            f"{box[2] - box[0]}×{box[3] - box[1]} |"
        )
    print(
        "\nWhere the time goes (the median run; s): stage 1 (with preparing the inputs) / stage 2 up to its last step"
    )
    print("(with stage 1's decode and E(I_hr)) / the rest (stage 2's decode, the resize to the photo, the blend)\n")
    for size in args.sizes:
        for region in ("whole", "crop"):
            run = rows[size, region]
            print(
                f"- {size} px, {region}: "
                + " / ".join(f"{run[p]:.0f}" for p in parts)
                + f"; all runs {run['all_seconds']}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
