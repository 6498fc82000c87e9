"""`hdpainter` command line: a thin front-end over `hdpainter.painter`. Heavy imports happen inside commands.

The options of a request are not declared here: they come from the schema in `hdpainter.request`.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings

from .defaults import EVAL_OPTIONS, EVAL_SIZE, SAM_MODEL, WORKING_SIZE
from .errors import HDPainterError
from .outputs import image_format, output_paths, save_image
from .request import InpaintRequest, Option, OptionError, options

DTYPES = ("auto", "float32", "float16", "bfloat16")
GROUPS = {  # titles of the schema's option groups in --help
    "stage 1": "stage 1 (the guided inpainting at the working size)",
    "mask": "mask conveniences (applied after --mask-color, in this order: invert, grow; feather at the end)",
    "guidance": "where and when PAIntA and RASG act (the reference's values)",
    "outpaint": "outpainting (the canvas grows; the new area is masked and painted)",
    "stage 2": "stage 2 (super-resolution and blending; used when the image is larger than the working size)",
}
DEMO_DEFAULTS = {"seed": 0}  # the demo's seed draws its scene too
MODEL_FLAGS = {"sam_refine": SAM_MODEL}  # switches that may name their model: --sam-refine [MODEL]


class _Formatter(argparse.ArgumentDefaultsHelpFormatter):
    """Defaults shown by the parser; options without a meaningful default ('None') show none."""

    def _get_help_string(self, action):
        if (
            action.default in (None, False)
            or action.default is argparse.SUPPRESS
            or "%(default)" in (action.help or "")
        ):
            return action.help
        return super()._get_help_string(action)


def add_option(parser, opt: Option, default=None) -> None:
    """One schema option as a flag: its type, choices and help; `default` overrides the schema's."""
    value = opt.default if default is None else default
    kwargs = dict(dest=opt.key, help=opt.help, default=opt.label(value))
    if opt.key in MODEL_FLAGS:  # off (None), on with the default model, or on with the one named
        help = f"{opt.help} (MODEL: a hub id or local folder; default {MODEL_FLAGS[opt.key]})"
        kwargs.update(nargs="?", const=MODEL_FLAGS[opt.key], default=None, metavar="MODEL", help=help)
    elif opt.type is bool:
        kwargs.update(action=argparse.BooleanOptionalAction, default=value)
    elif opt.labels is not None:
        kwargs.update(choices=list(opt.labels))
    elif opt.sequence:
        kwargs.update(type=str, metavar=",".join([opt.type.__name__.upper()] * 2))
    else:
        kwargs.update(type=opt.type, choices=list(opt.choices) if opt.choices else None)
    parser.add_argument(opt.flag, **kwargs)


def add_request_options(parser, keys=None, defaults: dict | None = None) -> None:
    """The schema's options (all, or those of `keys`) as flags, in its groups."""
    groups = {}
    for opt in options():
        if keys is not None and opt.key not in keys:
            continue
        if opt.group not in groups:
            groups[opt.group] = parser.add_argument_group(GROUPS[opt.group]) if keys is None else parser
        add_option(groups[opt.group], opt, (defaults or {}).get(opt.key))


def _add_load_options(p: argparse.ArgumentParser, upscaler: bool = True) -> None:
    """How models are loaded (not part of a request)."""
    p.add_argument(
        "--model",
        default="sd2",
        help="sd2 (the paper's), sd15, ds8, sdxl (SDXL inpainting, 1024 px), toy, an SD 1.x/2.x or SDXL inpainting "
        "hub id, a local diffusers folder or a .safetensors/.ckpt file",
    )
    if upscaler:
        p.add_argument(
            "--upscaler",
            default="x4",
            help="x4 (stabilityai/stable-diffusion-x4-upscaler), a hub id or a local diffusers folder",
        )
    _add_device_options(p)


def _add_device_options(p: argparse.ArgumentParser) -> None:
    """Where and how models run, and whether the hub may be asked: every command that loads models."""
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps (default: the best available)")
    p.add_argument("--dtype", default="auto", choices=DTYPES, help="auto: float16 on CUDA, float32 otherwise")
    mem = p.add_argument_group("memory")
    mem.add_argument(
        "--cpu-offload",
        action="store_true",
        help="keep models on the CPU until they run (CUDA only; slower, much less GPU memory)",
    )
    mem.add_argument(
        "--attention-slicing", action="store_true", help="compute attention in slices (less memory, slower)"
    )
    p.add_argument("--local-files-only", action="store_true", help="never contact the hub; use the local cache only")


def _parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="hdpainter", description="Prompt-faithful text-guided inpainting (HD-Painter)."
    )
    parser.add_argument("--version", action="version", version=f"hdpainter {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    def command(name, help):
        return commands.add_parser(name, help=help, formatter_class=_Formatter)

    p = command("inpaint", "fill the masked region of an image with what the prompt asks for")
    p.add_argument("--image", required=True, help="input image (any format Pillow reads)")
    p.add_argument(
        "--mask", default=None, help="mask of the same size, white (>127) = fill (optional when outpainting)"
    )
    p.add_argument("--prompt", required=True, help="what to paint in the masked region")
    p.add_argument(
        "--output",
        required=True,
        help="output file (.png keeps the parameters in its metadata); "
        "with --num-samples K > 1, files OUT-1.png … OUT-K.png",
    )
    _add_generation_options(p)
    b = command("batch", "inpaint a folder of images with masks, or a CSV/JSONL manifest; resumable")
    b.add_argument(
        "input",
        help="a folder of x.png + x_mask.png pairs, or a .csv/.jsonl manifest (columns image, mask, "
        "prompt, and any option of inpaint spelled as its flag without dashes: seed, steps, sr_method, …; "
        "paths relative to the manifest)",
    )
    b.add_argument("--output", required=True, help="output folder (created if missing): DIR/x.png for input x")
    b.add_argument(
        "--prompt", default=None, help="the prompt for every item (a manifest's own prompts take precedence)"
    )
    _add_generation_options(b)
    command("models", "list the short model names and whether each is in the local hub cache")
    d = command(
        "demo",
        "offline demo: a toy scene, a mask on empty background, the shipped toy model paints the "
        "prompt; writes a before/after PNG",
    )
    d.add_argument("--output", default="demo.png", help="the before/after image")
    d.add_argument(
        "--prompt",
        default="a red circle",
        help="a colour (red, green, blue, yellow) and a shape (circle, square, triangle)",
    )
    add_request_options(d, ("method", "steps", "guidance_scale", "vanilla_scale", "seed"), DEMO_DEFAULTS)
    d.add_argument("--model", default="toy", help="toy (shipped) or a folder of another toy-world model")
    d.add_argument("--device", default=None)
    e = command(
        "eval",
        "the paper's MSCOCO evaluation: generate, score (CLIP, accuracy, PickScore, aesthetics, "
        "known-region PSNR) and tabulate; resumable, data-parallel under torchrun",
    )
    e.add_argument("--coco", required=True, help="COCO folder with annotations/instances_val2017.json and val2017/")
    e.add_argument("--out", required=True, help="run folder (created; re-running resumes)")
    e.add_argument("--methods", default="baseline,painta,rasg,painta+rasg", help="comma-separated")
    e.add_argument(
        "--pairs",
        default=None,
        help="the reference's pair list (CSV image_idx,segment_idx); default: our seeded sampler",
    )
    e.add_argument("--sample", type=int, default=None, help="pairs the sampler draws (default 10000, or all if fewer)")
    e.add_argument("--sample-seed", type=int, default=0, help="the sampler's seed")
    e.add_argument("--limit", type=int, default=None, help="only the first N pairs")
    e.add_argument("--polygon", action="store_true", help="masks from the exact polygons instead of their convex hull")
    e.add_argument("--size", type=int, default=EVAL_SIZE, help="long side of the evaluation images (the paper's)")
    add_request_options(
        e,
        ("seed", "steps", "guidance_scale", "rasg_eta", "rasg_sigma", "negative_prompt", "positive_prompt"),
        EVAL_OPTIONS,
    )
    e.add_argument(
        "--metrics",
        default=None,
        help="comma-separated from clip, accuracy, pickscore, aesthetic, psnr, "
        "lpips (default: all but lpips; lpips too when the lpips package is installed)",
    )
    e.add_argument("--clip-model", default=None, help="CLIP score model (default openai/clip-vit-base-patch16)")
    e.add_argument("--detector", default=None, help="COCO detector for accuracy (default PekingU/rtdetr_r50vd)")
    e.add_argument("--pickscore-model", default=None, help="default yuvalkirstain/PickScore_v1")
    e.add_argument("--pickscore-processor", default=None, help="default laion/CLIP-ViT-H-14-laion2B-s32B-b79K")
    e.add_argument(
        "--pick-reference", default=None, help="method PickScore compares against (default: the first of --methods)"
    )
    e.add_argument("--aesthetic-clip", default=None, help="default openai/clip-vit-large-patch14")
    e.add_argument(
        "--aesthetic-head",
        default=None,
        help="LAION's MLP as REPO:FILE, DIR:FILE or a file "
        "(default camenduru/improved-aesthetic-predictor:sac+logos+ava1-l14-linearMSE.pth)",
    )
    e.add_argument("--contact-sheet", type=int, default=6, help="pairs in contact_sheet.png (0: none)")
    _add_load_options(e, upscaler=False)
    u = command("ui", "a local web UI: upload an image, paint the mask, type a prompt")
    u.add_argument(
        "--model",
        action="append",
        default=None,
        help="a model to offer (repeat for several; the first is loaded at start; default sd2). "
        "Short name, hub id or local folder: only these can be chosen in the browser",
    )
    u.add_argument(
        "--upscaler",
        default="x4",
        help="x4, a hub id or a local diffusers folder; 'none': stage 2 by bicubic resize only",
    )
    u.add_argument("--host", default=None, help="address to listen on (default 127.0.0.1: this machine only)")
    u.add_argument(
        "--lan", action="store_true", help="listen on all interfaces (0.0.0.0): others on your network can use it"
    )
    u.add_argument("--port", type=int, default=7860, help="port")
    u.add_argument("--max-upload-mb", type=int, default=25, help="largest file a browser may upload, in MB")
    u.add_argument(
        "--sam-model",
        default=SAM_MODEL,
        help="the SAM checkpoint (hub id or local folder) loaded when a request ticks 'SAM refine'",
    )
    add_request_options(u, ("working_size",))
    _add_device_options(u)
    return parser


def _add_generation_options(p: argparse.ArgumentParser) -> None:
    """What `inpaint` and `batch` share: every request option, how the mask file is read, how models load."""
    add_request_options(p)
    masks = p.add_argument_group("reading the mask file")
    masks.add_argument(
        "--mask-color",
        default=None,
        help="the mask file is a picture: pixels of this colour (R,G,B or #rrggbb) are the mask",
    )
    masks.add_argument(
        "--mask-tolerance", type=int, default=32, help="with --mask-color: per-channel tolerance (0..255)"
    )
    _add_load_options(p)


def request_options(args: argparse.Namespace) -> dict:
    """The schema's options as the command line set them, by key."""
    values = {opt.key: getattr(args, opt.key) for opt in options() if hasattr(args, opt.key)}
    for key in MODEL_FLAGS.keys() & values.keys():
        values[key] = values[key] is not None  # the model it names is a load option (load_painter)
    return values


def make_request(args: argparse.Namespace, prompt: str, row: dict | None = None, **extra) -> InpaintRequest:
    """An InpaintRequest from the command line's options, a manifest row's own values over them."""
    request = InpaintRequest.from_options(request_options(args) | (row or {}) | {"prompt": prompt})
    request.extra.update(extra)
    if args.mask_color is not None:
        request.extra.update(mask_color=args.mask_color, mask_tolerance=args.mask_tolerance)
    return request


def model_working_size(args: argparse.Namespace) -> int:
    """--model's own working size (512 for SD 1.x/2.x, 1024 for SDXL) from its config files, before loading it; the
    SD models' 512 when they cannot be read now (loading then fails with the reason)."""
    from .models import native_working_size

    return native_working_size(args.model, args.local_files_only) or WORKING_SIZE


def load_painter(args: argparse.Namespace, upscale: bool, device=None):
    """The models, once: the upscaler only when stage 2 will diffuse (and first, so a missing one fails fast)."""
    from .models import UPSCALER_MODELS, default_device_and_dtype, resolve
    from .painter import HDPainter

    if upscale:
        resolve(args.upscaler, UPSCALER_MODELS)  # an unknown name or missing folder fails before any loading
    device, dtype = default_device_and_dtype(device or args.device, None if args.dtype == "auto" else args.dtype)
    return HDPainter.from_pretrained(
        args.model,
        upscaler=args.upscaler if upscale else None,
        device=device,
        dtype=dtype,
        local_files_only=args.local_files_only,
        cpu_offload=args.cpu_offload,
        attention_slicing=args.attention_slicing,
        sam_model=getattr(args, "sam_refine", None),
    )


def load_mask(args: argparse.Namespace, path=None):
    """The mask file: a mask (white = fill), or with --mask-color the pixels of that colour."""
    from . import images

    if args.mask_color is not None:
        if not 0 <= args.mask_tolerance <= 255:
            raise HDPainterError(f"--mask-tolerance must be in 0..255, got {args.mask_tolerance}")
        color = images.parse_color(args.mask_color)
        return images.mask_from_color(images.load_image(path or args.mask), color, args.mask_tolerance)
    return images.load_mask(path or args.mask)


def inpaint(args: argparse.Namespace) -> int:
    from . import images
    from .painter import prepare_job

    outputs = output_paths(args.output, args.num_samples)
    for path in outputs:
        image_format(path)
        if not path.parent.is_dir():
            raise HDPainterError(f"output folder does not exist: {path.parent}")
    request = make_request(args, args.prompt, image=os.path.basename(args.image))
    request.validate()
    if args.mask is None and not (any(request.outpaint) or request.outpaint_to):
        raise HDPainterError("--mask is needed (unless --outpaint or --outpaint-to grows the canvas to paint)")
    mask = load_mask(args) if args.mask is not None else None
    # every input check before loading, at the model's own working size unless one is given
    job = prepare_job(images.load_image(args.image), mask, request, model_working_size(args))
    painter = None if job.empty else load_painter(args, job.needs_upscaler)
    result = painter.run(job) if painter else job.unchanged(args.model)
    for note in result.notes:
        print(f"note: {note}", file=sys.stderr)
    for image, metadata, path in zip(result.images, result.metadata, outputs):
        save_image(image, path, metadata)
        print(path)
    return 0


def _image_size(path) -> tuple[int, int] | None:
    """An image's size from its header (None when unreadable: that item fails on its own later)."""
    import PIL.Image

    try:
        with PIL.Image.open(path) as image:
            return image.size
    except Exception:
        return None


def batch(args: argparse.Namespace) -> int:
    from pathlib import Path

    from . import images
    from .batch import collect_items, finished, run_items
    from .painter import prepare_job
    from .parallel import distributed, rank_device

    make_request(args, args.prompt or "").validate()  # the command line's own options, once, before anything else
    out_dir = Path(args.output)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise HDPainterError(f"cannot create the output folder {out_dir}: {exc.strerror}") from None
    items = collect_items(args.input, args.prompt)
    for column in dict.fromkeys(c for item in items for c in item.ignored):
        print(f"note: manifest column {column!r} is not an option of inpaint: ignored", file=sys.stderr)
    requests = {}
    for number, item in enumerate(items, 1):
        if not item.error:
            try:
                requests[item.name] = make_request(args, item.prompt, item.options, image=item.image.name)
            except HDPainterError as exc:  # a manifest cell out of range: that row fails, named by its column
                detail = f"{exc.option.key} {exc.detail}" if isinstance(exc, OptionError) else str(exc)
                item.error = f"row {number}: {detail}"
    rank, world, local = distributed()
    device = rank_device(args.device, world, local)

    def samples(item):
        return requests[item.name].num_samples

    pending = [i for i in items[rank::world] if not i.error and not finished(i, out_dir, samples(i))]
    native = model_working_size(args) if pending else WORKING_SIZE
    requests = {name: request.for_model(native) for name, request in requests.items()}
    upscale = any(requests[i.name].needs_upscaler(size) for i in pending if (size := _image_size(i.image)))
    painter = load_painter(args, upscale, device) if pending else None  # model errors end the batch here, once

    def process(item):
        try:
            job = prepare_job(images.load_image(item.image), load_mask(args, item.mask), requests[item.name])
        except OptionError as exc:  # bounded by this item's image: named as a manifest column / flag
            raise HDPainterError(f"{exc.option.key} {exc.detail}") from None
        result = painter.run(job, progress=False)
        return result.images, result.metadata

    summary = run_items(items, out_dir, process, samples, rank, world)
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
        print(
            f"batch: {counts[0]} written, {counts[1]} already done, {counts[2]} failed, of {len(items)}",
            file=sys.stderr,
        )
    return 1 if summary.failed or counts[2] else 0


def models(args: argparse.Namespace) -> int:
    from huggingface_hub import constants

    from .models import DEFAULT_INPAINT_MODEL, DEFAULT_UPSCALER, known_models

    rows = [("name", "kind", "hub id", "in local cache")]
    for name, kind, repo, cached in known_models():
        default = name in (DEFAULT_INPAINT_MODEL, DEFAULT_UPSCALER)
        if os.path.isabs(repo):  # shipped inside the package, not on the hub
            repo, cached = (
                "(shipped with hdpainter)",
                "yes (in the package)" if cached else "missing from this install",
            )
        rows.append(
            (
                name + (" (default)" if default else ""),
                kind,
                repo,
                cached if isinstance(cached, str) else "yes" if cached else "no",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[3])
    print(
        f"\ncache: {constants.HF_HUB_CACHE} (set HF_HOME or HF_HUB_CACHE to move it). --model and --upscaler "
        "also take any hub id or a local diffusers folder; --local-files-only never contacts the hub."
    )
    return 0


def demo(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .painter import HDPainter
    from .toy import world
    from .toy.demo import TOY_WORKING_SIZE, before_after, demo_scene, parse_prompt

    parse_prompt(args.prompt)
    output = Path(args.output)
    image_format(output)
    if not output.parent.is_dir():
        raise HDPainterError(f"output folder does not exist: {output.parent}")
    request = InpaintRequest.from_options(
        request_options(args)
        | dict(
            prompt=args.prompt,
            negative_prompt="",
            positive_prompt="",
            working_size=TOY_WORKING_SIZE,
            sr_method="bicubic",
        )
    )
    image, mask = demo_scene(args.seed)
    painter = HDPainter.from_pretrained(args.model, upscaler=None, device=args.device)
    result = painter(image, mask, request)
    found = world.classify(result.images[0], mask)
    save_image(
        before_after(image, mask, result.images[0], args.prompt, found),
        output,
        result.metadata[0] | {"scorer_sees": " ".join(v or "-" for v in found)},
    )
    print(output)
    print(
        f"scorer sees in the mask: {' '.join(v for v in found if v) or 'no shape'} (asked for {args.prompt!r})",
        file=sys.stderr,
    )
    return 0


def evaluate(args: argparse.Namespace) -> int:
    from .eval import metrics as M
    from .eval.run import EvalConfig, run_eval

    names = (
        [m.strip() for m in args.metrics.split(",")]
        if args.metrics
        else list(M.DEFAULT_METRICS) + (["lpips"] if M.lpips_available() else [])
    )
    models = {
        k: v
        for k, v in (
            ("clip_model", args.clip_model),
            ("detector", args.detector),
            ("pickscore_model", args.pickscore_model),
            ("pickscore_processor", args.pickscore_processor),
            ("aesthetic_clip", args.aesthetic_clip),
            ("aesthetic_head", args.aesthetic_head),
        )
        if v
    }
    config = EvalConfig(
        coco=args.coco,
        out=args.out,
        methods=[m.strip() for m in args.methods.split(",") if m.strip()],
        model=args.model,
        pairs_file=args.pairs,
        sample=args.sample,
        sample_seed=args.sample_seed,
        limit=args.limit,
        hull=not args.polygon,
        size=args.size,
        options=request_options(args),
        metrics=names,
        pick_reference=args.pick_reference,
        contact_sheet=args.contact_sheet,
        device=args.device,
        dtype=None if args.dtype == "auto" else args.dtype,
        local_files_only=args.local_files_only,
        **models,
    )
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
        raise HDPainterError(
            f"cannot listen on {host}:{port}: {reason}; choose another with --port or --host"
        ) from None


def ui(args: argparse.Namespace) -> int:
    import importlib.util

    from .models import INPAINT_MODELS, UPSCALER_MODELS, resolve
    from .request import option_index

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
    option_index()["working_size"].check(args.working_size)
    _check_port(host, args.port)  # before the (slow) model load
    models = list(dict.fromkeys(args.model or ["sd2"]))
    for name in models:
        resolve(name, INPAINT_MODELS)  # unknown names and missing folders fail before the server starts
    upscaler = None if args.upscaler.lower() == "none" else args.upscaler
    if upscaler is not None:
        resolve(upscaler, UPSCALER_MODELS)
    config = UIConfig(
        models=models,
        upscaler=upscaler,
        device=args.device,
        dtype=None if args.dtype == "auto" else args.dtype,
        local_files_only=args.local_files_only,
        cpu_offload=args.cpu_offload,
        attention_slicing=args.attention_slicing,
        working_size=args.working_size,
        max_upload_mb=args.max_upload_mb,
        sam_model=args.sam_model,
    )
    app = InpaintApp(config)
    try:
        print(f"loading {models[0]} …", file=sys.stderr)
        app.cache.get(models[0])  # load errors end here, with one line, before anything listens
        if host == LAN_HOST:
            print("note: listening on all interfaces: anyone on your network can use this UI", file=sys.stderr)
        try:
            launch(app, host, args.port)
        except OSError:
            raise HDPainterError(
                f"cannot listen on {host}:{args.port}: the port is in use; choose another with --port"
            ) from None
    finally:
        app.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # library deprecation chatter is not for the terminal
        try:
            return {"inpaint": inpaint, "batch": batch, "models": models, "ui": ui, "eval": evaluate, "demo": demo}[
                args.command
            ](args)
        except OptionError as exc:  # the command line names options by their flags
            print(f"hdpainter: error: {exc.for_cli()}", file=sys.stderr)
            return 2
        except HDPainterError as exc:
            print(f"hdpainter: error: {exc}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("hdpainter: interrupted", file=sys.stderr)
            return 130
        except Exception as exc:
            if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
                print(
                    "hdpainter: error: out of memory; try --dtype float16 on a GPU, fewer samples or a smaller "
                    "working size",
                    file=sys.stderr,
                )
                return 1
            raise


def run() -> None:
    """Console entry point: this process is ours, so library log chatter is turned down before imports."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    sys.exit(main())


if __name__ == "__main__":
    run()
