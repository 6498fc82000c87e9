"""`hdpainter` command line: a thin front-end over `hdpainter.painter`. Heavy imports happen inside commands."""

from __future__ import annotations

import argparse
import os
import sys
import warnings

from .defaults import METHODS, RASG_SIGMAS, REFERENCE_NEGATIVE_PROMPT, REFERENCE_POSITIVE_PROMPT, SEED_STRIDE, VANILLA_SCALE
from .errors import HDPainterError
from .outputs import image_format, output_paths, save_image

DTYPES = ("auto", "float32", "float16", "bfloat16")


def _parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="hdpainter", description="Prompt-faithful text-guided inpainting (HD-Painter).")
    parser.add_argument("--version", action="version", version=f"hdpainter {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("inpaint", help="fill the masked region of an image with what the prompt asks for")
    p.add_argument("--image", required=True, help="input image (any format Pillow reads)")
    p.add_argument("--mask", required=True, help="mask of the same size, white (>127) = fill")
    p.add_argument("--prompt", required=True, help="what to paint in the masked region")
    p.add_argument("--output", required=True, help="output file (.png keeps the parameters in its metadata); "
                   "with --num-samples K > 1, files OUT-1.png … OUT-K.png")
    _add_generation_options(p)
    b = commands.add_parser("batch", help="inpaint a folder of images with masks, or a CSV/JSONL manifest; resumable")
    b.add_argument("input", help="a folder of x.png + x_mask.png pairs, or a .csv/.jsonl manifest "
                   "(columns image, mask, prompt; optional seed, negative_prompt; paths relative to the manifest)")
    b.add_argument("--output", required=True, help="output folder (created if missing): DIR/x.png for input x")
    b.add_argument("--prompt", default=None, help="the prompt for every item (a manifest's own prompts take precedence)")
    _add_generation_options(b)
    commands.add_parser("models", help="list the short model names and whether each is in the local hub cache")
    d = commands.add_parser("demo", help="offline demo: a toy scene, a mask on empty background, the shipped toy model "
                            "paints the prompt; writes a before/after PNG")
    d.add_argument("--output", default="demo.png", help="the before/after image (default demo.png)")
    d.add_argument("--prompt", default="a red circle", help="a colour (red, green, blue, yellow) and a shape (circle, square, triangle)")
    d.add_argument("--seed", type=int, default=0, help="the scene's and the sampler's seed (default 0)")
    d.add_argument("--method", default="painta+rasg", choices=METHODS)
    d.add_argument("--steps", type=int, default=50)
    d.add_argument("--guidance-scale", type=float, default=7.5)
    d.add_argument("--vanilla-scale", type=float, default=VANILLA_SCALE, help="s of --method vanilla-guidance")
    d.add_argument("--model", default="toy", help="toy (default, shipped) or a folder of another toy-world model")
    d.add_argument("--device", default=None)
    e = commands.add_parser("eval", help="the paper's MSCOCO evaluation: generate, score (CLIP, accuracy, PickScore, "
                            "aesthetics, known-region PSNR) and tabulate; resumable, data-parallel under torchrun")
    e.add_argument("--coco", required=True, help="COCO folder with annotations/instances_val2017.json and val2017/")
    e.add_argument("--out", required=True, help="run folder (created; re-running resumes)")
    e.add_argument("--methods", default="baseline,painta,rasg,painta+rasg", help="comma-separated (default: all four)")
    e.add_argument("--model", default="sd2", help="inpainting model (default sd2, the paper's)")
    e.add_argument("--pairs", default=None, help="the reference's pair list (CSV image_idx,segment_idx); default: our seeded sampler")
    e.add_argument("--sample", type=int, default=None, help="pairs the sampler draws (default 10000, or all if fewer)")
    e.add_argument("--sample-seed", type=int, default=0, help="the sampler's seed (default 0)")
    e.add_argument("--limit", type=int, default=None, help="only the first N pairs")
    e.add_argument("--polygon", action="store_true", help="masks from the exact polygons instead of their convex hull")
    e.add_argument("--size", type=int, default=512, help="long side of the evaluation images (default 512, the paper's)")
    e.add_argument("--seed", type=int, default=1, help="generation seed (default 1, the reference's)")
    e.add_argument("--steps", type=int, default=50)
    e.add_argument("--guidance-scale", type=float, default=7.5)
    e.add_argument("--rasg-eta", type=float, default=0.25, help="RASG η (default 0.25, the reference's evaluation)")
    e.add_argument("--negative-prompt", default="", help="default none, as the reference's evaluation")
    e.add_argument("--positive-prompt", default="", help="default none, as the reference's evaluation")
    e.add_argument("--metrics", default=None, help="comma-separated from clip, accuracy, pickscore, aesthetic, psnr, lpips "
                   "(default: all but lpips; lpips too when the lpips package is installed)")
    e.add_argument("--clip-model", default=None, help="CLIP score model (default openai/clip-vit-base-patch16)")
    e.add_argument("--detector", default=None, help="COCO detector for accuracy (default PekingU/rtdetr_r50vd)")
    e.add_argument("--pickscore-model", default=None, help="default yuvalkirstain/PickScore_v1")
    e.add_argument("--pickscore-processor", default=None, help="default laion/CLIP-ViT-H-14-laion2B-s32B-b79K")
    e.add_argument("--pick-reference", default=None, help="method PickScore compares against (default: the first of --methods)")
    e.add_argument("--aesthetic-clip", default=None, help="default openai/clip-vit-large-patch14")
    e.add_argument("--aesthetic-head", default=None, help="LAION's MLP as REPO:FILE, DIR:FILE or a file "
                   "(default camenduru/improved-aesthetic-predictor:sac+logos+ava1-l14-linearMSE.pth)")
    e.add_argument("--contact-sheet", type=int, default=6, help="pairs in contact_sheet.png (default 6; 0: none)")
    e.add_argument("--device", default=None)
    e.add_argument("--dtype", default="auto", choices=DTYPES)
    e.add_argument("--local-files-only", action="store_true", help="never contact the hub; use the local cache only")
    u = commands.add_parser("ui", help="a local web UI: upload an image, paint the mask, type a prompt")
    u.add_argument("--model", action="append", default=None,
                   help="a model to offer (repeat for several; the first is loaded at start; default sd2). "
                        "Short name, hub id or local folder: only these can be chosen in the browser")
    u.add_argument("--upscaler", default="x4", help="x4 (default), a hub id or a local diffusers folder; 'none': stage 2 by bicubic resize only")
    u.add_argument("--host", default=None, help="address to listen on (default 127.0.0.1: this machine only)")
    u.add_argument("--lan", action="store_true", help="listen on all interfaces (0.0.0.0): others on your network can use it")
    u.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    u.add_argument("--max-upload-mb", type=int, default=25, help="largest file a browser may upload, in MB (default 25)")
    u.add_argument("--working-size", type=int, default=512, help="long side of stage 1's resolution (default 512)")
    u.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps (default: the best available)")
    u.add_argument("--dtype", default="auto", choices=DTYPES, help="auto: float16 on CUDA, float32 otherwise")
    u.add_argument("--cpu-offload", action="store_true", help="keep models on the CPU until they run (CUDA only)")
    u.add_argument("--attention-slicing", action="store_true", help="compute attention in slices (less memory, slower)")
    u.add_argument("--local-files-only", action="store_true", help="never contact the hub; use the local cache only")
    return parser


def _add_generation_options(p: argparse.ArgumentParser) -> None:
    """The options `inpaint` and `batch` share."""
    p.add_argument("--model", default="sd2", help="sd2 (default), sd15, ds8, a hub id or a local diffusers folder / .safetensors file")
    p.add_argument("--method", default="painta+rasg", choices=METHODS,
                   help="painta+rasg (default, HD-Painter), painta, rasg, baseline (plain inpainting), or the ablation "
                        "vanilla-guidance (Eq. 6 post-hoc guidance instead of RASG)")
    p.add_argument("--steps", type=int, default=50, help="DDIM steps (default 50)")
    p.add_argument("--seed", type=int, default=1, help="seed; sample k uses seed + 1000·k (default 1)")
    p.add_argument("--num-samples", type=int, default=1)
    p.add_argument("--guidance-scale", type=float, default=7.5)
    p.add_argument("--rasg-eta", type=float, default=0.1, help="RASG η (reference 0.1; the paper's evaluation used 0.25)")
    p.add_argument("--rasg-sigma", default="reference", choices=RASG_SIGMAS, help="σ of RASG's step (see README)")
    p.add_argument("--vanilla-scale", type=float, default=VANILLA_SCALE, help=f"s of --method vanilla-guidance (default {VANILLA_SCALE:g})")
    p.add_argument("--negative-prompt", default=REFERENCE_NEGATIVE_PROMPT, help="default: the reference's negative prompt; '' for none")
    p.add_argument("--positive-prompt", default=REFERENCE_POSITIVE_PROMPT, help="appended to the prompt; default: the reference's; '' for none")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps (default: the best available)")
    p.add_argument("--dtype", default="auto", choices=DTYPES, help="auto: float16 on CUDA, float32 otherwise")
    masks = p.add_argument_group("mask conveniences (applied in this order)")
    masks.add_argument("--mask-color", default=None, help="the mask file is a picture: pixels of this colour (R,G,B or #rrggbb) are the mask")
    masks.add_argument("--mask-tolerance", type=int, default=32, help="with --mask-color: per-channel tolerance (default 32)")
    masks.add_argument("--mask-invert", action="store_true", help="fill what the mask leaves out")
    masks.add_argument("--mask-grow", type=int, default=0, help="grow the mask by PX pixels (negative: shrink)")
    masks.add_argument("--mask-feather", type=int, default=0,
                       help="paste the result through the mask softened across its edge by PX pixels (default 0: the blend's own edge)")
    p.add_argument("--working-size", type=int, default=512, help="long side of stage 1's resolution (default 512, the reference's)")
    sr = p.add_argument_group("stage 2 (super-resolution and blending; used when the image is larger than the working size)")
    sr.add_argument("--no-upscale", action="store_true", help="skip stage 2: resize the stage-1 result and paste it (fast preview)")
    sr.add_argument("--sr-method", default="specialized", choices=("specialized", "baseline", "bicubic"),
                    help="specialized: ×4 upscaler with the known region blended in at every step (default); "
                         "baseline: plain ×4 upscaler; bicubic: no diffusion")
    sr.add_argument("--upscaler", default="x4", help="x4 (stabilityai/stable-diffusion-x4-upscaler, default), a hub id or a local diffusers folder")
    sr.add_argument("--sr-steps", type=int, default=20, help="upscaler DDIM steps (default 20)")
    sr.add_argument("--sr-region", default="crop", choices=("crop", "whole"),
                    help="crop: super-resolve a box around the mask (default); whole: the whole image, as the reference")
    sr.add_argument("--sr-context", type=int, default=128, help="pixels of context around the mask in crop mode, at 4× the working size (default 128)")
    sr.add_argument("--blend-dilation", type=int, default=None, help="Poisson blend: mask dilation in output pixels (default: 48 per 2048 px of the long side)")
    sr.add_argument("--blend-pad", type=int, default=32, help="Poisson blend: reflect padding around the image (default 32)")
    mem = p.add_argument_group("memory")
    mem.add_argument("--cpu-offload", action="store_true", help="keep models on the CPU until they run (CUDA only; slower, much less GPU memory)")
    mem.add_argument("--attention-slicing", action="store_true", help="compute attention in slices (less memory, slower)")
    mem.add_argument("--vae-tiling", default="auto", choices=("auto", "on", "off"),
                     help="stage 2's VAE in tiles: auto (regions above 1 MP, default), on, off (the reference's; much more memory)")
    p.add_argument("--local-files-only", action="store_true", help="never contact the hub; use the local cache only")


def make_request(args: argparse.Namespace, prompt: str, seed: int | None = None, negative_prompt: str | None = None, **extra):
    """An InpaintRequest from the command line's options (per-item prompt, seed and negative prompt for batches)."""
    from .painter import InpaintRequest

    return InpaintRequest(
        prompt=prompt, method=args.method, num_inference_steps=args.steps, guidance_scale=args.guidance_scale,
        rasg_eta=args.rasg_eta, rasg_sigma=args.rasg_sigma, vanilla_scale=args.vanilla_scale,
        negative_prompt=args.negative_prompt if negative_prompt is None else negative_prompt,
        positive_prompt=args.positive_prompt, seed=args.seed if seed is None else seed, num_samples=args.num_samples,
        working_size=args.working_size, upscale=not args.no_upscale, sr_method=args.sr_method, sr_steps=args.sr_steps,
        sr_region=args.sr_region, sr_context=args.sr_context, blend_dilation=args.blend_dilation, blend_pad=args.blend_pad,
        vae_tiling={"auto": None, "on": True, "off": False}[args.vae_tiling], mask_feather=args.mask_feather,
        extra={"model": args.model} | extra
        | {k: v for k, v in (("mask_color", args.mask_color), ("mask_invert", args.mask_invert), ("mask_grow", args.mask_grow)) if v},
    )


def check_options(args: argparse.Namespace) -> None:
    from . import images

    if args.num_samples < 1:
        raise HDPainterError("--num-samples must be at least 1")
    if args.mask_feather < 0:
        raise HDPainterError(f"--mask-feather must be 0 or more, got {args.mask_feather}")
    if not 1 <= args.steps <= 1000:
        raise HDPainterError(f"--steps must be in 1..1000, got {args.steps}")
    images.check_working_size(args.working_size)


def load_painter(args: argparse.Namespace, upscale: bool, device=None):
    """The models, once: the upscaler only when stage 2 will diffuse (and first, so a missing one fails fast)."""
    from .models import UPSCALER_MODELS, default_device_and_dtype, resolve
    from .painter import HDPainter

    if upscale:
        resolve(args.upscaler, UPSCALER_MODELS)  # an unknown name or missing folder fails before any loading
    device, dtype = default_device_and_dtype(device or args.device, None if args.dtype == "auto" else args.dtype)
    return HDPainter.from_pretrained(args.model, upscaler=args.upscaler if upscale else None, device=device, dtype=dtype,
                                     local_files_only=args.local_files_only, cpu_offload=args.cpu_offload,
                                     attention_slicing=args.attention_slicing)


def load_mask(args: argparse.Namespace, path=None):
    """The mask file, through the mask conveniences: colour → invert → grow/shrink."""
    from . import images

    if args.mask_color is not None:
        if not 0 <= args.mask_tolerance <= 255:
            raise HDPainterError(f"--mask-tolerance must be in 0..255, got {args.mask_tolerance}")
        color = images.parse_color(args.mask_color)
        mask = images.mask_from_color(images.load_image(path or args.mask), color, args.mask_tolerance)
    else:
        mask = images.load_mask(path or args.mask)
    if args.mask_invert:
        mask = images.invert_mask(mask)
    return images.grow_mask(mask, args.mask_grow)


def inpaint(args: argparse.Namespace) -> int:
    from . import images
    from .painter import check_request

    outputs = output_paths(args.output, args.num_samples)
    for path in outputs:
        image_format(path)
        if not path.parent.is_dir():
            raise HDPainterError(f"output folder does not exist: {path.parent}")
    check_options(args)
    image = images.load_image(args.image)
    mask = load_mask(args)
    request = make_request(args, args.prompt, image=os.path.basename(args.image))
    if image.size != mask.size:
        raise HDPainterError(f"image is {image.size[0]}x{image.size[1]} but mask is {mask.size[0]}x{mask.size[1]}: they must match")
    if not any(mask.getextrema()):
        print("note: the mask is empty: nothing to inpaint; the output is the input, unchanged", file=sys.stderr)
        for path in outputs:
            save_image(image, path, request.metadata() | {"unchanged": True})
            print(path)
        return 0
    images.prepare(image, mask, args.working_size)  # all input checks before the (slow) model load
    check_request(image.size, request)
    diffuse = request.upscale and request.sr_method != "bicubic" and max(image.size) > max(images.working_size(image.size, args.working_size))
    if diffuse:
        request.extra["upscaler"] = args.upscaler
    painter = load_painter(args, diffuse)
    results = painter(image, mask, request)
    for k, (result, path) in enumerate(zip(results, outputs)):
        save_image(result, path, request.metadata() | {"seed": request.seed + SEED_STRIDE * k, "sample": k + 1})
        print(path)
    return 0


def _long_side(path) -> int:
    """An image's long side from its header (0 when unreadable: that item fails on its own later)."""
    import PIL.Image

    try:
        with PIL.Image.open(path) as image:
            return max(image.size)
    except Exception:
        return 0


def batch(args: argparse.Namespace) -> int:
    from pathlib import Path

    from . import images
    from .batch import collect_items, distributed, finished, rank_device, run_items
    from .painter import check_request

    check_options(args)
    out_dir = Path(args.output)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise HDPainterError(f"cannot create the output folder {out_dir}: {exc.strerror}") from None
    items = collect_items(args.input, args.prompt)
    rank, world, local = distributed()
    device = rank_device(args.device, world, local)
    pending = [i for i in items[rank::world] if not i.error and not finished(i, out_dir, args.num_samples)]
    upscale = not args.no_upscale and args.sr_method != "bicubic" and any(_long_side(i.image) > args.working_size for i in pending)
    painter = load_painter(args, upscale, device) if pending else None  # model errors end the batch here, once
    requests = {}

    def process(item):
        image = images.load_image(item.image)
        mask = load_mask(args, item.mask)
        request = requests[item.name] = make_request(args, item.prompt, item.seed, item.negative_prompt, image=item.image.name)
        if image.size != mask.size:
            raise HDPainterError(f"image is {image.size[0]}x{image.size[1]} but mask is {mask.size[0]}x{mask.size[1]}")
        if not any(mask.getextrema()):
            return [image] * args.num_samples  # nothing to inpaint: the input, unchanged
        images.prepare(image, mask, args.working_size)
        check_request(image.size, request)
        if upscale and max(image.size) > args.working_size:
            request.extra["upscaler"] = args.upscaler
        return painter(image, mask, request, progress=False)

    def metadata(item, k):
        request = requests[item.name]
        return request.metadata() | {"seed": request.seed + SEED_STRIDE * k, "sample": k + 1}

    summary = run_items(items, out_dir, process, metadata, args.num_samples, rank, world)
    for name in summary.written:
        print(out_dir / f"{name}.png")
    for name, message in summary.failed:
        print(f"hdpainter: failed: {name}: {message}", file=sys.stderr)
    counts = [len(summary.written), len(summary.skipped), len(summary.failed)]
    if world > 1:
        import torch
        import torch.distributed as dist

        total = torch.tensor(counts)
        dist.all_reduce(total)
        counts = total.tolist()
        dist.destroy_process_group()
    if rank == 0:
        print(f"batch: {counts[0]} written, {counts[1]} already done, {counts[2]} failed, of {len(items)}", file=sys.stderr)
    return 1 if summary.failed or counts[2] else 0


def models(args: argparse.Namespace) -> int:
    from huggingface_hub import constants

    from .models import DEFAULT_INPAINT_MODEL, DEFAULT_UPSCALER, known_models

    rows = [("name", "kind", "hub id", "in local cache")]
    for name, kind, repo, cached in known_models():
        default = name in (DEFAULT_INPAINT_MODEL, DEFAULT_UPSCALER)
        if os.path.isabs(repo):  # shipped inside the package, not on the hub
            repo, cached = "(shipped with hdpainter)", "yes (in the package)" if cached else "missing from this install"
        rows.append((name + (" (default)" if default else ""), kind, repo, cached if isinstance(cached, str) else "yes" if cached else "no"))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[3])
    print(f"\ncache: {constants.HF_HUB_CACHE} (set HF_HOME or HF_HUB_CACHE to move it). --model and --upscaler "
          "also take any hub id or a local diffusers folder; --local-files-only never contacts the hub.")
    return 0


def demo(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .painter import HDPainter, InpaintRequest
    from .toy import world
    from .toy.demo import TOY_WORKING_SIZE, before_after, demo_scene, parse_prompt

    parse_prompt(args.prompt)
    output = Path(args.output)
    image_format(output)
    if not output.parent.is_dir():
        raise HDPainterError(f"output folder does not exist: {output.parent}")
    if not 1 <= args.steps <= 1000:
        raise HDPainterError(f"--steps must be in 1..1000, got {args.steps}")
    image, mask = demo_scene(args.seed)
    painter = HDPainter.from_pretrained(args.model, upscaler=None, device=args.device)
    request = InpaintRequest(args.prompt, method=args.method, num_inference_steps=args.steps,
                             guidance_scale=args.guidance_scale, negative_prompt="", positive_prompt="", seed=args.seed,
                             working_size=TOY_WORKING_SIZE, sr_method="bicubic", vanilla_scale=args.vanilla_scale,
                             extra={"model": args.model})
    result = painter(image, mask, request)[0]
    found = world.classify(result, mask)
    save_image(before_after(image, mask, result, args.prompt, found), output,
               request.metadata() | {"scorer_sees": " ".join(v or "-" for v in found)})
    print(output)
    print(f"scorer sees in the mask: {' '.join(v for v in found if v) or 'no shape'} (asked for {args.prompt!r})", file=sys.stderr)
    return 0


def evaluate(args: argparse.Namespace) -> int:
    from .eval import metrics as M
    from .eval.run import EvalConfig, run_eval

    names = [m.strip() for m in args.metrics.split(",")] if args.metrics else \
        list(M.DEFAULT_METRICS) + (["lpips"] if M.lpips_available() else [])
    models = {k: v for k, v in (("clip_model", args.clip_model), ("detector", args.detector),
                                ("pickscore_model", args.pickscore_model), ("pickscore_processor", args.pickscore_processor),
                                ("aesthetic_clip", args.aesthetic_clip), ("aesthetic_head", args.aesthetic_head)) if v}
    config = EvalConfig(
        coco=args.coco, out=args.out, methods=[m.strip() for m in args.methods.split(",") if m.strip()], model=args.model,
        pairs_file=args.pairs, sample=args.sample, sample_seed=args.sample_seed, limit=args.limit, hull=not args.polygon,
        size=args.size, seed=args.seed, steps=args.steps, guidance_scale=args.guidance_scale, rasg_eta=args.rasg_eta,
        negative_prompt=args.negative_prompt, positive_prompt=args.positive_prompt, metrics=names,
        pick_reference=args.pick_reference, contact_sheet=args.contact_sheet, device=args.device,
        dtype=None if args.dtype == "auto" else args.dtype, local_files_only=args.local_files_only, **models)
    markdown, failures = run_eval(config)
    if markdown:
        print(markdown)
    for failure in failures:
        print(f"hdpainter: failed: {failure.name}: {failure.message}", file=sys.stderr)
    return 1 if failures else 0


def _check_port(host: str, port: int) -> None:
    import socket

    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
            probe.bind((host, port))
    except OSError as exc:
        reason = "the port is in use" if exc.errno in (98, 48, 10048) else exc.strerror or str(exc)
        raise HDPainterError(f"cannot listen on {host}:{port}: {reason}; choose another with --port or --host") from None


def ui(args: argparse.Namespace) -> int:
    from . import images
    from .models import INPAINT_MODELS, UPSCALER_MODELS, resolve

    import importlib.util

    if importlib.util.find_spec("gradio") is None:
        raise HDPainterError("the web UI needs Gradio: pip install 'hdpainter[ui]'")
    from .ui import DEFAULT_HOST, LAN_HOST, InpaintApp, UIConfig, launch

    if args.lan and args.host:
        raise HDPainterError("give --host or --lan, not both")
    host = LAN_HOST if args.lan else args.host or DEFAULT_HOST
    if not 1 <= args.port <= 65535:
        raise HDPainterError(f"--port must be in 1..65535, got {args.port}")
    if args.max_upload_mb < 1:
        raise HDPainterError(f"--max-upload-mb must be at least 1, got {args.max_upload_mb}")
    images.check_working_size(args.working_size)
    _check_port(host, args.port)  # before the (slow) model load
    models = list(dict.fromkeys(args.model or ["sd2"]))
    for name in models:
        resolve(name, INPAINT_MODELS)  # unknown names and missing folders fail before the server starts
    upscaler = None if args.upscaler.lower() == "none" else args.upscaler
    if upscaler is not None:
        resolve(upscaler, UPSCALER_MODELS)
    config = UIConfig(models=models, upscaler=upscaler, device=args.device, dtype=None if args.dtype == "auto" else args.dtype,
                      local_files_only=args.local_files_only, cpu_offload=args.cpu_offload,
                      attention_slicing=args.attention_slicing, working_size=args.working_size,
                      max_upload_mb=args.max_upload_mb)
    app = InpaintApp(config)
    try:
        print(f"loading {models[0]} …", file=sys.stderr)
        app.cache.get(models[0])  # load errors end here, with one line, before anything listens
        if host == LAN_HOST:
            print("note: listening on all interfaces: anyone on your network can use this UI", file=sys.stderr)
        try:
            launch(app, host, args.port)
        except OSError:
            raise HDPainterError(f"cannot listen on {host}:{args.port}: the port is in use; choose another with --port") from None
    finally:
        app.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # library deprecation chatter is not for the terminal
        try:
            return {"inpaint": inpaint, "batch": batch, "models": models, "ui": ui, "eval": evaluate, "demo": demo}[args.command](args)
        except HDPainterError as exc:
            print(f"hdpainter: error: {exc}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("hdpainter: interrupted", file=sys.stderr)
            return 130
        except Exception as exc:
            if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
                print("hdpainter: error: out of memory; try --dtype float16 on a GPU, fewer samples or a smaller working size",
                      file=sys.stderr)
                return 1
            raise


def run() -> None:
    """Console entry point: this process is ours, so library log chatter is turned down before imports."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    sys.exit(main())


if __name__ == "__main__":
    run()
