"""Short model names → checkpoints, and loading with clear errors for unknown or unreachable models."""

from __future__ import annotations

import os
from pathlib import Path

from .errors import HDPainterError

TOY_MODEL = str(Path(__file__).resolve().parent / "toy" / "model")  # shipped in the package (hdpainter.toy)

INPAINT_MODELS = {
    "sd2": "stabilityai/stable-diffusion-2-inpainting",  # the paper's backbone
    "sd15": "stable-diffusion-v1-5/stable-diffusion-inpainting",
    "ds8": "Lykon/dreamshaper-8-inpainting",  # the reference code's default
    "sdxl": "diffusers/stable-diffusion-xl-1.0-inpainting-0.1",  # SDXL inpainting, 1024 px (no reference support)
    "toy": TOY_MODEL,  # the toy world's model, 256 px (python -m hdpainter.toy.train)
}
DEFAULT_INPAINT_MODEL = "sd2"
# (family, native working size) of the hub models with short names, as their configs say (UNet sample size × 8)
SHORT_NAME_FACTS = {"sd2": ("sd", 512), "sd15": ("sd", 512), "ds8": ("sd", 512), "sdxl": ("sdxl", 1024)}
UPSCALER_MODELS = {
    "x4": "stabilityai/stable-diffusion-x4-upscaler",  # the paper's stage-2 model
}
DEFAULT_UPSCALER = "x4"
SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt")
FAMILIES = ("sd", "sdxl")  # Stable Diffusion 1.x/2.x, and SDXL (two text encoders, pooled and size embeddings)
FAMILY_SIZES = {"sd": 512, "sdxl": 1024}  # native working sizes, where no UNet config says (single files)
SDXL_CHECKPOINT_KEY = "conditioner.embedders.1."  # SDXL's second text encoder in an original-format checkpoint


def resolve(name: str, known: dict[str, str] = INPAINT_MODELS) -> str:
    """A short name, hub id ("org/name"), local folder or single checkpoint file → what to load."""
    if name in known:
        shipped = os.path.isabs(known[name])  # a model inside the package, not on the hub
        if shipped and not Path(known[name], "model_index.json").is_file():
            raise HDPainterError(
                f"the {name!r} model is missing from this installation ({known[name]}): reinstall "
                "hdpainter, or train one with `python -m hdpainter.toy.train --out DIR` and pass --model DIR"
            )
        return known[name]
    path = Path(name).expanduser()
    if path.exists():
        if path.is_dir() and not (path / "model_index.json").exists():
            raise HDPainterError(f"{name} is a folder without model_index.json: not a diffusers model folder")
        if path.is_file() and path.suffix not in SINGLE_FILE_SUFFIXES:
            raise HDPainterError(f"{name} is a file but not a .safetensors/.ckpt checkpoint")
        return str(path)
    if (
        name.endswith(SINGLE_FILE_SUFFIXES)
        or name.startswith((".", "/", "~"))
        or os.sep in name.strip("/").replace("/", "", 1)
    ):
        raise HDPainterError(f"model path not found: {name}")
    if name.count("/") != 1:
        raise HDPainterError(
            f"unknown model {name!r}: use one of {', '.join(known)}, a hub id (org/name) or a local folder"
        )
    return name


def is_cached(repo_id: str) -> bool:
    """Whether `repo_id`'s model_index.json is in the local hub cache (HF_HOME / HF_HUB_CACHE are respected)."""
    from huggingface_hub import try_to_load_from_cache

    if os.path.isabs(repo_id):  # a model shipped in the package
        return os.path.isfile(os.path.join(repo_id, "model_index.json"))
    return isinstance(try_to_load_from_cache(repo_id, "model_index.json"), str)


def known_models() -> list[tuple[str, str, str, bool]]:
    """(short name, kind, hub id, in the local cache) for every model with a short name."""
    rows = [(name, "inpaint", repo) for name, repo in INPAINT_MODELS.items()]
    rows += [(name, "upscaler", repo) for name, repo in UPSCALER_MODELS.items()]
    return [(name, kind, repo, is_cached(repo)) for name, kind, repo in rows]


def default_device_and_dtype(device=None, dtype=None):
    """The best available device unless one is named, and float16 on CUDA / float32 elsewhere unless named."""
    import torch

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    try:
        device = torch.device(device)
    except RuntimeError:
        raise HDPainterError(f"unknown device {device!r}: use cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise HDPainterError("device cuda asked for, but this torch build sees no CUDA GPU")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise HDPainterError("device mps asked for, but MPS is not available here")
    if isinstance(dtype, str):
        if dtype not in ("float32", "float16", "bfloat16"):
            raise HDPainterError(f"unknown dtype {dtype!r}: use float32, float16 or bfloat16")
        dtype = getattr(torch, dtype)
    if dtype is None:
        dtype = torch.float16 if device.type == "cuda" else torch.float32
    if device.type == "cpu" and dtype != torch.float32:
        raise HDPainterError(f"{dtype} is not supported on the CPU here; use float32")
    return device, dtype


def checkpoint_family(path: str) -> str:
    """ "sdxl" or "sd" for an original-format single checkpoint file, from its tensor names alone."""
    if path.endswith(".safetensors"):
        from safetensors import safe_open

        with safe_open(path, framework="pt") as f:
            keys = list(f.keys())
    else:
        import torch

        state = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
        keys = list(state.get("state_dict", state))
    return "sdxl" if any(k.startswith(SDXL_CHECKPOINT_KEY) for k in keys) else "sd"


def model_index_family(index: dict) -> str:
    """ "sdxl" or "sd" from a diffusers model_index.json: SDXL pipelines have a second text encoder."""
    entry = index.get("text_encoder_2")
    return "sdxl" if isinstance(entry, (list, tuple)) and entry and entry[0] is not None else "sd"


def inpaint_model_facts(name: str, local_files_only: bool = False) -> tuple[str, int]:
    """(family, native working size) of an inpainting model, read from its small config files (model_index.json,
    the UNet's and the VAE's config; for a single file, its tensor names) without loading any weights. Errors are
    the loader's one-line HDPainterErrors."""
    from diffusers import AutoencoderKL, DiffusionPipeline, UNet2DConditionModel

    source = resolve(name)
    if name in SHORT_NAME_FACTS:
        return SHORT_NAME_FACTS[name]
    if source.endswith(SINGLE_FILE_SUFFIXES):
        try:
            family = checkpoint_family(source)
        except Exception as exc:
            raise HDPainterError(load_error(name, source, exc)) from exc
        return family, FAMILY_SIZES[family]
    family = model_index_family(
        load_pretrained(DiffusionPipeline, source, local_files_only, name=name, loader="load_config")
    )
    unet = load_pretrained(
        UNet2DConditionModel, source, local_files_only, name=name, loader="load_config", subfolder="unet"
    )
    vae = load_pretrained(AutoencoderKL, source, local_files_only, name=name, loader="load_config", subfolder="vae")
    factor = 2 ** (len(vae.get("block_out_channels", (0,) * 4)) - 1)
    sample = unet.get("sample_size")
    if sample is None:
        return family, FAMILY_SIZES[family]
    return family, (sample if isinstance(sample, int) else max(sample)) * factor


def native_working_size(name: str, local_files_only: bool = False) -> int | None:
    """The model's own working size (512 for SD 1.x/2.x, 1024 for SDXL), or None when its configs cannot be read
    now (then loading it fails with the same error, in its place)."""
    try:
        return inpaint_model_facts(name, local_files_only)[1]
    except HDPainterError:
        return None


def load_inpaint_pipeline(name: str = DEFAULT_INPAINT_MODEL, device=None, dtype=None, local_files_only: bool = False):
    """Load an HDPainterPipeline (SD 1.x/2.x) or HDPainterXLPipeline (SDXL; chosen from the model's files) from a
    short name, hub id, local folder or single checkpoint file.

    In float16 an SDXL VAE that asks to be upcast (`force_upcast`, as SDXL's own, which overflows in float16) stays
    in float32, as diffusers' SDXL pipelines upcast it."""
    import torch

    from .inpaint import HDPainterPipeline, HDPainterXLPipeline

    family, _ = inpaint_model_facts(name, local_files_only)
    if family == "sdxl":
        pipe = _load(HDPainterXLPipeline, name, resolve(name), dtype, local_files_only, add_watermarker=False)
    else:
        pipe = _load(
            HDPainterPipeline,
            name,
            resolve(name),
            dtype,
            local_files_only,
            safety_checker=None,
            requires_safety_checker=False,
        )
    if pipe.unet.config.in_channels != 9:
        raise HDPainterError(
            f"{name} is not an inpainting model: its UNet takes {pipe.unet.config.in_channels} channels, not 9"
        )
    try:
        pipe.check_components()
    except HDPainterError as exc:
        raise HDPainterError(f"{name}: {exc}") from None
    if family == "sdxl" and dtype == torch.float16 and pipe.vae.config.get("force_upcast", True):
        pipe.vae.to(torch.float32)
    return _ready(pipe, device)


def load_upscale_pipeline(name: str = DEFAULT_UPSCALER, device=None, dtype=None, local_files_only: bool = False):
    """Load an HDUpscalePipeline (a diffusers ×4 upscaler) from a short name, hub id or local folder.

    In float16 the VAE stays in float32, as diffusers' upscale pipeline upcasts it (it overflows in float16).
    """
    import torch

    from .upscale import HDUpscalePipeline

    source = resolve(name, UPSCALER_MODELS)
    if source.endswith(SINGLE_FILE_SUFFIXES):
        raise HDPainterError(
            f"{name}: the upscaler must be a diffusers folder or hub id, not a single checkpoint file"
        )
    pipe = _load(HDUpscalePipeline, name, source, dtype, local_files_only, "--upscaler")
    channels = pipe.vae.config.latent_channels + 3
    if pipe.unet.config.in_channels != channels or getattr(pipe, "low_res_scheduler", None) is None:
        raise HDPainterError(
            f"{name} is not a ×4 upscaler like {UPSCALER_MODELS[DEFAULT_UPSCALER]} "
            f"(its UNet takes {pipe.unet.config.in_channels} channels, not {channels})"
        )
    if dtype == torch.float16 and pipe.vae.config.get("force_upcast", True):
        pipe.vae.to(torch.float32)
    return _ready(pipe, device)


def _load(cls, name: str, source: str, dtype, local_files_only: bool, flag: str = "--model", **extra):
    kwargs = dict(extra)
    if dtype is not None:
        kwargs["torch_dtype"] = dtype
    if source.endswith(SINGLE_FILE_SUFFIXES):
        return load_pretrained(cls, source, local_files_only, flag, name=name, loader="from_single_file", **kwargs)
    return load_pretrained(cls, source, local_files_only, flag, name=name, **kwargs)


def load_pretrained(
    cls,
    source: str,
    local_files_only: bool = False,
    flag: str = "--model",
    name: str | None = None,
    loader: str = "from_pretrained",
    **kwargs,
):
    """`cls.from_pretrained(source)` (any diffusers or transformers class) with hub, network and format errors
    turned into one HDPainterError line that names `flag`, the option to pass a local folder with instead."""
    try:
        return getattr(cls, loader)(source, local_files_only=local_files_only, **kwargs)
    except HDPainterError:
        raise
    except Exception as exc:  # hub, network and format errors all end here with one clear line
        raise HDPainterError(load_error(name or source, source, exc, flag)) from exc


def _ready(pipe, device):
    """Weights frozen (nothing here trains), on `device` unless None (cpu offload places them itself)."""
    import torch

    for module in (pipe.unet, pipe.vae, pipe.text_encoder, getattr(pipe, "text_encoder_2", None)):
        if module is not None:
            module.requires_grad_(False)
    if device is not None:
        pipe.to(torch.device(device))
    return pipe


def _causes(exc: BaseException):
    """The exception and every one it was raised from or during (diffusers wraps the hub's in an OSError)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def _network_errors() -> tuple[type, ...]:
    """Exception types that mean the hub could not be reached: the hub's own, the OS's, and httpx's / requests'."""
    import socket

    from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled

    types = [LocalEntryNotFoundError, OfflineModeIsEnabled, ConnectionError, TimeoutError, socket.gaierror]
    for module, name in (("httpx", "TransportError"), ("requests", "ConnectionError"), ("requests", "Timeout")):
        try:
            types.append(getattr(__import__(module), name))
        except (ImportError, AttributeError):
            pass
    return tuple(types)


def load_error(name: str, source: str, exc: Exception, flag: str = "--model") -> str:
    """One line for a failed load, chosen by the exception's type (and its causes'), never its wording."""
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

    text = f"{type(exc).__name__}: {exc}".replace("\n", " ")
    if os.path.exists(source):
        return f"cannot load model from {source}: {text[:300]}"
    causes = list(_causes(exc))
    if any(isinstance(c, GatedRepoError) for c in causes):
        return (
            f"model {name!r} ({source}) is gated on the hub: accept its licence there and log in "
            f"(huggingface-cli login), or pass a local folder with {flag} DIR"
        )
    if any(isinstance(c, (RepositoryNotFoundError, RevisionNotFoundError)) for c in causes):
        return f"model {name!r} not found on the hub: check the id, or pass a local folder with {flag} DIR"
    if hub_offline() or any(isinstance(c, _network_errors()) for c in causes):
        return (
            f"model {name!r} ({source}) is not in the local cache and cannot be downloaded (offline?): "
            f"download it on a connected machine or pass a local folder with {flag} DIR"
        )
    return f"cannot load model {name!r}: {text[:300]}"


def hub_offline() -> bool:
    """Whether HF_HUB_OFFLINE forbids the hub now (read at each call, as huggingface_hub parses it)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE")
