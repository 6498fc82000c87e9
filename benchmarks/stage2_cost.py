"""Stage 2's cost: crop around the mask vs the whole image, and peak memory as the output grows.

A full-size ×4 upscaler (the UNet and VAE of stabilityai/stable-diffusion-x4-upscaler, built from its
configuration with random weights, fp32; a small text encoder, whose cost is negligible) runs stage 2
(`hdpainter.painter.finish`: super-resolution, resize to the original, Poisson blend) on the CPU, each
configuration in a fresh process: wall time, peak resident memory (weights included) and the peak
above the loaded weights. The stage-1 result is stood in for by the photo at the working size.

    python benchmarks/stage2_cost.py                        # both tables, about 30 minutes on 2 cores
    python benchmarks/stage2_cost.py --table growth --growth-sizes 1024 2048
    python benchmarks/stage2_cost.py --table region --region-working-size 256

Table "region": a 4:3 photo whose long side is 4× the working size, a mask covering `--fraction` of it,
crop vs whole. Table "growth": crop mode at a fixed working size for originals of growing size (the
same relative mask). `--sr-steps` (default 1) runs that many upscaler steps: the UNet part of the time
scales with it, the VAE part does not; the tables also give the time inside the UNet per step.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

from step_cost import PeakRSS, rss_bytes

X4_UNET = dict(  # configs/stable-diffusion/x4-upscaling.yaml of Stability-AI/stablediffusion, in diffusers' terms
    sample_size=128,
    in_channels=7,
    out_channels=4,
    layers_per_block=2,
    block_out_channels=(256, 512, 512, 1024),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    attention_head_dim=8,
    cross_attention_dim=1024,
    use_linear_projection=True,
    num_class_embeds=1000,
    only_cross_attention=(True, True, True, False),
)
X4_VAE = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 3,
    up_block_types=("UpDecoderBlock2D",) * 3,
    block_out_channels=(128, 256, 512),
    layers_per_block=2,
    latent_channels=4,
    sample_size=256,
    scaling_factor=0.08333,
)


def full_size_upscaler():
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from hdpainter.testing import make_upscaler_components
    from hdpainter.upscale import HDUpscalePipeline

    parts = make_upscaler_components()
    torch.manual_seed(0)
    parts["unet"] = UNet2DConditionModel(**X4_UNET).eval().requires_grad_(False)
    parts["vae"] = AutoencoderKL(**X4_VAE).eval().requires_grad_(False)
    tok = parts["tokenizer"]
    parts["text_encoder"] = (
        CLIPTextModel(
            CLIPTextConfig(
                vocab_size=len(tok),
                hidden_size=1024,
                intermediate_size=64,
                num_attention_heads=8,
                num_hidden_layers=1,
                max_position_embeddings=77,
                bos_token_id=tok.bos_token_id,
                eos_token_id=tok.eos_token_id,
                pad_token_id=tok.pad_token_id,
                hidden_act="gelu",
                projection_dim=32,
            )
        )
        .eval()
        .requires_grad_(False)
    )
    pipe = HDUpscalePipeline(**parts)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def scene(long_side: int, working: int, fraction: float):
    """A 4:3 photo, a centred rectangular mask of `fraction` of its area (same aspect), and the stand-in stage-1 result."""
    import numpy as np
    import PIL.Image
    from skimage import data

    from hdpainter.images import working_size

    w, h = long_side, long_side * 3 // 4
    image = PIL.Image.fromarray(data.coffee()).resize((w, h), PIL.Image.BICUBIC)
    mw, mh = round(w * fraction**0.5), round(h * fraction**0.5)
    mask = np.zeros((h, w), np.uint8)
    mask[(h - mh) // 2 : (h + mh) // 2, (w - mw) // 2 : (w + mw) // 2] = 255
    return image, PIL.Image.fromarray(mask), image.resize(working_size(image.size, working), PIL.Image.BICUBIC)


def child(region: str, long_side: int, working: int, fraction: float, steps: int) -> dict:
    import torch

    from hdpainter.painter import InpaintRequest, finish

    torch.set_num_threads(torch.get_num_threads())
    pipe = full_size_upscaler()
    image, mask, low_res = scene(long_side, working, fraction)
    request = InpaintRequest.from_options(
        {"prompt": "a red ball", "sr_steps": steps, "sr_region": region, "working_size": working}
    )
    unet = {"seconds": 0.0, "pixels": 0}

    def pre(module, args):
        unet["start"] = time.perf_counter()

    def post(module, args, out):
        unet["seconds"] += time.perf_counter() - unet["start"]
        unet["pixels"] += args[0].shape[-1] * args[0].shape[-2]

    pipe.unet.register_forward_pre_hook(pre)
    pipe.unet.register_forward_hook(post)
    before = rss_bytes()
    start = time.perf_counter()
    with PeakRSS() as peak:
        out = finish(image, mask, low_res, request, pipe, torch.Generator().manual_seed(0))
    assert out.size == image.size
    return {
        "seconds": time.perf_counter() - start,
        "unet_seconds_per_step": unet["seconds"] / steps,
        "latent_pixels_per_step": unet["pixels"] // steps,
        "peak_bytes": peak.peak,
        "above_weights_bytes": peak.peak - before,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--table", choices=("region", "growth", "both"), default="both")
    parser.add_argument("--fraction", type=float, default=0.05, help="mask area / image area (default 0.05)")
    parser.add_argument("--sr-steps", type=int, default=1)
    parser.add_argument(
        "--region-working-size", type=int, default=512, help="table region: working size (canvas = 4×)"
    )
    parser.add_argument("--growth-working-size", type=int, default=256)
    parser.add_argument("--growth-sizes", type=int, nargs="+", default=[1024, 2048, 4096, 8192])
    parser.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        region, long_side, working, fraction, steps = args.child
        print(json.dumps(child(region, int(long_side), int(working), float(fraction), int(steps))))
        return 0

    def run_child(region, long_side, working) -> dict:
        proc = subprocess.run(
            [
                sys.executable,
                __file__,
                "--child",
                region,
                str(long_side),
                str(working),
                str(args.fraction),
                str(args.sr_steps),
            ],
            capture_output=True,
            text=True,
        )
        if proc.returncode:
            sys.exit(proc.stderr)
        return json.loads(proc.stdout.strip().splitlines()[-1])

    gib = 2**30

    def row(label, r):
        return (
            f"| {label} | {r['seconds']:.0f} s | {r['unet_seconds_per_step']:.1f} s | {r['latent_pixels_per_step']:,} "
            f"| {r['peak_bytes'] / gib:.2f} GiB | {r['above_weights_bytes'] / gib:.2f} GiB |"
        )

    header = [
        "| run | stage-2 time | UNet time per step | latent pixels per step | peak memory | above weights |",
        "|---|---|---|---|---|---|",
    ]
    if args.table in ("region", "both"):
        long_side = 4 * args.region_working_size
        results = {r: run_child(r, long_side, args.region_working_size) for r in ("crop", "whole")}
        lines = [
            f"{long_side}x{long_side * 3 // 4} photo, mask {args.fraction:.0%} of it, working size {args.region_working_size}, "
            f"{args.sr_steps} SR step(s)",
            "",
            *header,
        ]
        lines += [row(r, results[r]) for r in ("crop", "whole")]
        c, w = results["crop"], results["whole"]
        lines.append(
            f"| whole / crop | {w['seconds'] / c['seconds']:.1f}× | {w['unet_seconds_per_step'] / c['unet_seconds_per_step']:.1f}× "
            f"| {w['latent_pixels_per_step'] / c['latent_pixels_per_step']:.1f}× | {w['peak_bytes'] / c['peak_bytes']:.2f}× "
            f"| {w['above_weights_bytes'] / c['above_weights_bytes']:.1f}× |"
        )
        print("\n".join(lines) + "\n", flush=True)
    if args.table in ("growth", "both"):
        lines = [
            f"crop mode, working size {args.growth_working_size}, mask {args.fraction:.0%} of the photo, {args.sr_steps} SR step(s)",
            "",
            *header,
        ]
        first = None
        for size in args.growth_sizes:
            r = run_child("crop", size, args.growth_working_size)
            first = first or (size, r)
            growth = r["peak_bytes"] / first[1]["peak_bytes"]
            pixels = (size / first[0]) ** 2
            lines.append(row(f"{size}x{size * 3 // 4} (pixels ×{pixels:.0f}, peak ×{growth:.2f})", r))
            print(lines[-1], file=sys.stderr, flush=True)
        print("\n".join(lines), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
