"""The one request schema: every option of an inpainting job, with its default, choices, range and help.

`InpaintRequest` (stage 1's options, the mask conveniences, `guidance`: where PAIntA and RASG act, and
`sr`: stage 2) is the only place these are declared. The CLI's flags, the web UI's widgets, batch
manifests' columns and the metadata written with each result are all built from `options()`, so a new
option appears everywhere at once. Cheap to import: no torch, no diffusers.

Every option has a *key* (`steps`, `sr_steps`, …): the CLI flag without its dashes, a manifest column and a
metadata entry. Library errors name the field (`sr.num_inference_steps`); the CLI names the flag.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from .defaults import (
    CROP_ALIGN,
    METHODS,
    POISSON_PAD,
    RASG_SIGMAS,
    REFERENCE_NEGATIVE_PROMPT,
    REFERENCE_POSITIVE_PROMPT,
    SEED_STRIDE,
    VANILLA_SCALE,
    WORKING_SIZE,
)
from .errors import HDPainterError

SR_METHODS = ("specialized", "baseline", "bicubic")
SR_REGIONS = ("crop", "whole")
ATTENTION_GRIDS = (8, 16, 32, 64)  # pixel divisors of an SD UNet's attention grids (H/8 … H/64)
WORKING_RANGE = (64, 2048)
STAGE1_REGIONS = ("auto", "crop", "whole")
FILLS = ("blur", "edge", "reflect")  # how outpainting pre-fills the new area (hdpainter.region)
MAX_OUTPAINT = 8192  # pixels added on one side at most (the grown canvas must also stay under 64 MP)
TILING = {"auto": None, "on": True, "off": False}  # vae_tiling's values as the CLI and UI spell them
TRUE_WORDS, FALSE_WORDS = ("true", "1", "yes", "on"), ("false", "0", "no", "off")  # booleans as text (CSV cells)


def option(
    default,
    help: str,
    *,
    key: str | None = None,
    choices=None,
    range=None,
    multiple_of=None,
    labels: Mapping[str, Any] | None = None,
    group: str = "stage 1",
    ui_max=None,
    odd=False,
    length=None,
):
    """A dataclass field that carries its own help, choices, range and CLI key (see `Option`)."""
    meta = dict(
        help=help,
        key=key,
        choices=choices,
        range=range,
        multiple_of=multiple_of,
        labels=labels,
        group=group,
        ui_max=ui_max,
        odd=odd,
        length=length,
    )
    return field(default=default, metadata=meta)


class OptionError(HDPainterError):
    """An option's value is out of its range or choices; `option` says which, `detail` what is wrong."""

    def __init__(self, option: Option, detail: str, flag: bool = False):
        self.option, self.detail = option, detail
        super().__init__(f"{option.flag if flag else option.name} {detail}")

    def for_cli(self) -> OptionError:
        """The same error naming the command-line flag instead of the Python field."""
        return OptionError(self.option, self.detail, flag=True)


@dataclass(frozen=True)
class Option:
    """One field of the schema, as front-ends see it."""

    path: tuple[str, ...]  # attribute path in InpaintRequest: ("sr", "num_inference_steps")
    key: str  # flag without dashes, manifest column, metadata key: "sr_steps"
    type: type  # int, float, str or bool (of each element when `sequence`)
    default: Any
    help: str
    group: str
    choices: tuple | None = None
    range: tuple | None = None  # (low, high) inclusive; None for an open end
    multiple_of: int | None = None
    labels: Mapping[str, Any] | None = None  # text → value, for options whose values are not plain text
    optional: bool = False  # None is a value (e.g. "automatic")
    sequence: bool = False  # a tuple of `type`
    ui_max: float | None = None  # the web UI slider's upper end, where the range has none or a large one
    odd: bool = False
    length: int | None = None  # a sequence of exactly this many values

    @property
    def name(self) -> str:
        """The field as the library names it in errors: `num_inference_steps`, `sr.context`."""
        return ".".join(self.path)

    @property
    def flag(self) -> str:
        return "--" + self.key.replace("_", "-")

    def label(self, value) -> Any:
        """A value as the CLI and UI show it (vae_tiling None → "auto"; a grid tuple → "16,32")."""
        if self.labels is not None:
            return next(text for text, v in self.labels.items() if v == value)
        if self.sequence:
            return ",".join(str(v) for v in value)
        return value

    def parse(self, value) -> Any:
        """A value from text (a CLI argument, a CSV cell, a form field) or already typed; then checked."""
        if self.labels is not None:
            if isinstance(value, str) and value in self.labels:
                value = self.labels[value]
            elif isinstance(value, str) or value not in self.labels.values():
                raise OptionError(self, f"must be one of {', '.join(self.labels)}; got {value!r}")
        elif self.sequence:
            parts = (
                value.split(",") if isinstance(value, str) else value if isinstance(value, (list, tuple)) else [value]
            )
            value = tuple(self._scalar(p.strip() if isinstance(p, str) else p) for p in parts if p != "")
        elif self.optional and (value is None or value == ""):
            value = None
        else:
            value = self._scalar(value)
        self.check(value)
        return value

    def _scalar(self, value):
        if self.type is bool:
            if isinstance(value, str):
                lowered = value.strip().lower()
                if lowered not in TRUE_WORDS + FALSE_WORDS:
                    raise OptionError(self, f"must be true or false; got {value!r}")
                return lowered in TRUE_WORDS
            if isinstance(value, (bool, int)) and value in (0, 1):
                return bool(value)
            raise OptionError(self, f"must be true or false; got {value!r}")
        if self.type is str:
            if value is None:
                return ""  # no text: as '' (no negative prompt, no suffix)
            if not isinstance(value, str):
                raise OptionError(self, f"must be text; got {value!r}")
            return value
        if self.type is int and isinstance(value, float) and value.is_integer():
            return int(value)
        try:
            if self.type is int and isinstance(value, (bool, float)):
                raise ValueError
            return self.type(value)
        except (TypeError, ValueError):
            raise OptionError(
                self, f"must be {'an integer' if self.type is int else 'a number'}; got {value!r}"
            ) from None

    def check(self, value) -> None:
        """The value as typed (the Python API's fields are checked here): its type, then choices and range."""
        if self.labels is not None:  # exactly one of the values (True, not 1)
            if not any(type(value) is type(v) and value == v for v in self.labels.values()):
                raise OptionError(self, f"must be one of {', '.join(self.labels)}; got {value!r}")
            return
        if value is None and self.optional:
            return
        if self.sequence:
            if not isinstance(value, tuple) or not value:
                raise OptionError(self, f"must list at least one value; got {value!r}")
            if self.length is not None and len(value) != self.length:
                raise OptionError(self, f"must list {self.length} values; got {len(value)}")
            for v in value:
                self._check_type(v)
                self._check_one(v)
            return
        self._check_type(value)
        self._check_one(value)

    def _check_type(self, value) -> None:
        kinds = {bool: (bool,), int: (int,), float: (int, float), str: (str,)}[self.type]
        if not isinstance(value, kinds) or (self.type is not bool and isinstance(value, bool)):
            what = {bool: "true or false", int: "an integer", float: "a number", str: "text"}[self.type]
            raise OptionError(self, f"must be {what}; got {value!r}")

    def _check_one(self, value) -> None:
        if self.choices is not None and value not in self.choices:
            raise OptionError(self, f"must be one of {', '.join(map(str, self.choices))}; got {value!r}")
        if self.range is not None:
            low, high = self.range
            if high is None and value < low:
                raise OptionError(self, f"must be at least {low}, got {value}")
            if low is None and value > high:
                raise OptionError(self, f"must be at most {high}, got {value}")
            if low is not None and high is not None and not low <= value <= high:
                raise OptionError(self, f"must be in {low}..{high}, got {value}")
        if self.multiple_of and value % self.multiple_of:
            lo, hi = self.range or (None, None)
            where = f" in {lo}..{hi}" if lo is not None and hi is not None else ""
            raise OptionError(self, f"must be a multiple of {self.multiple_of}{where}, got {value}")
        if self.odd and value % 2 == 0:
            raise OptionError(self, f"must be odd, got {value}")


@dataclass(frozen=True)
class GuidanceConfig:
    """Where and when PAIntA and RASG act (reference values, docs/method.md §3-4)."""

    painta_until_t: int = option(
        500, "PAIntA is active while the timestep t is above this", range=(-1, 1000), group="guidance"
    )
    painta_grids: tuple[int, ...] = option(
        (16, 32),
        "pixel divisors of the grids whose self-attention becomes PAIntA",
        choices=ATTENTION_GRIDS,
        group="guidance",
    )
    rasg_grid: int = option(
        32,
        "pixel divisor of the grid whose cross-attention logits RASG reads (H/32)",
        choices=ATTENTION_GRIDS,
        group="guidance",
    )
    rasg_logit_offset: float = option(1.0, "RASG's objective is BCE-with-logits(Ā − offset, M)", group="guidance")


@dataclass(frozen=True)
class SRConfig:
    """Stage 2: the ×4 super-resolution and the Poisson blend; defaults are the reference's (docs/method.md §5-6)."""

    method: str = option(
        "specialized",
        "specialized: the ×4 upscaler with the known region blended in at every step "
        "(Eq. 10); baseline: the plain ×4 upscaler; bicubic: no diffusion",
        key="sr_method",
        choices=SR_METHODS,
        group="stage 2",
    )
    num_inference_steps: int = option(
        20,
        "upscaler DDIM steps, trailing spacing (999, 949, …, 49)",
        key="sr_steps",
        range=(1, 1000),
        group="stage 2",
        ui_max=100,
    )
    guidance_scale: float = option(
        7.5,
        "the upscaler's classifier-free guidance",
        key="sr_guidance_scale",
        range=(0, None),
        group="stage 2",
        ui_max=20,
    )
    noise_level: int = option(
        20,
        "noise added to the low-res condition (also the UNet's class label)",
        key="sr_noise_level",
        range=(0, 350),
        group="stage 2",
    )
    prompt_suffix: str = option(
        "high resolution professional photo",
        "the upscaler's prompt is 'PROMPT, SUFFIX'",
        key="sr_prompt_suffix",
        group="stage 2",
    )
    negative_prompt: str = option("", "the upscaler's negative prompt", key="sr_negative_prompt", group="stage 2")
    mask_dilation: int = option(
        19,
        "iterations of the 3×3 cross dilation of the high-res mask",
        key="sr_mask_dilation",
        range=(0, None),
        group="stage 2",
        ui_max=64,
    )
    mask_blur: int = option(
        19,
        "Gaussian kernel (latent pixels, odd) softening Eq. 10's mask",
        key="sr_mask_blur",
        range=(1, None),
        odd=True,
        group="stage 2",
        ui_max=63,
    )
    canvas_multiple: int = option(
        256,
        "the high-res image is reflect-padded right/bottom to a multiple of this",
        key="sr_canvas_multiple",
        range=(CROP_ALIGN, None),
        multiple_of=CROP_ALIGN,
        group="stage 2",
        ui_max=512,
    )
    region: str = option(
        "crop",
        "crop: super-resolve a box around the mask; whole: the whole image, as the reference",
        key="sr_region",
        choices=SR_REGIONS,
        group="stage 2",
    )
    context: int = option(
        128,
        "pixels of context around the mask in crop mode, at 4× the working size",
        key="sr_context",
        range=(0, None),
        group="stage 2",
        ui_max=512,
    )
    vae_tiling: bool | None = option(
        None,
        "stage 2's VAE in tiles: auto (regions above 1 MP), on, off (the reference's; much more memory)",
        key="vae_tiling",
        labels=TILING,
        group="stage 2",
    )
    sam_refine: bool = option(
        False,
        "narrow Eq. 10's mask to SAM's segments of the original and the inpainted object (the reference "
        "demo's 'use SAM mask for background preservation'); needs a SAM model",
        key="sam_refine",
        group="stage 2",
    )
    blend_dilation: int | None = option(
        None,
        "Poisson blend: mask dilation in output pixels (auto: 48 per 2048 px of the long side, the reference's)",
        key="blend_dilation",
        range=(1, None),
        group="stage 2",
        ui_max=256,
    )
    blend_pad: int = option(
        POISSON_PAD,
        "Poisson blend: reflect padding around the image",
        key="blend_pad",
        range=(1, None),
        group="stage 2",
        ui_max=256,
    )

    def check(self) -> None:
        for opt in _options(type(self), ("sr",)):
            opt.check(getattr(self, opt.path[-1]))


@dataclass
class InpaintRequest:
    """One inpainting job, shared by the Python API, the CLI, the web UI, batch and eval."""

    prompt: str
    method: str = option(
        "painta+rasg",
        "painta+rasg (HD-Painter), painta, rasg, baseline (plain inpainting), or the "
        "ablation vanilla-guidance (Eq. 6 post-hoc guidance instead of RASG)",
        choices=METHODS,
    )
    num_inference_steps: int = option(
        50, "DDIM steps, trailing spacing (999, 979, …, 19 for 50)", key="steps", range=(1, 1000), ui_max=200
    )
    guidance_scale: float = option(
        7.5, "classifier-free guidance scale (≤ 1: no unconditional pass)", range=(0, None), ui_max=20
    )
    rasg_eta: float = option(
        0.1, "η of RASG's step (the reference's 0.1; the paper's evaluation 0.25)", range=(0, None), ui_max=1
    )
    rasg_sigma: str = option(
        "reference",
        "σ of RASG's step: per-step α (reference, the authors' code) or cumulative ᾱ (paper)",
        choices=RASG_SIGMAS,
    )
    vanilla_scale: float = option(VANILLA_SCALE, "s of method vanilla-guidance, on ∇ of RASG's objective")
    negative_prompt: str = option(
        REFERENCE_NEGATIVE_PROMPT, "the unconditional prompt (the reference's list; '' for none)"
    )
    positive_prompt: str = option(
        REFERENCE_POSITIVE_PROMPT, "appended as 'PROMPT, POSITIVE' (the reference's; '' for none)"
    )
    seed: int = option(1, f"seed; sample k (from 0) uses seed + {SEED_STRIDE}·k, as the reference")
    num_samples: int = option(1, "samples (one batched stage-1 run)", range=(1, None), ui_max=4)
    working_size: int | None = option(
        None,
        "long side of stage 1's resolution (stage 2 lifts it ×4); auto: the model's own (512 for SD 1.x/2.x, the "
        "reference's; 1024 for SDXL)",
        range=WORKING_RANGE,
        multiple_of=8,
        ui_max=1024,
    )
    stage1_region: str = option(
        "auto",
        "what stage 1 inpaints: crop (a box around the mask, resized to the working size), whole (the whole image, "
        "the reference's), auto (crop when it gives stage 1 at least twice the whole image's scale)",
        choices=STAGE1_REGIONS,
    )
    stage1_context: int | None = option(
        None,
        "crop: pixels of the photo kept around the mask's box (auto: a square twice the mask's long side, at least "
        "the working size)",
        range=(0, None),
        ui_max=2048,
    )
    mask_invert: bool = option(False, "fill what the mask leaves out", group="mask")
    mask_grow: int = option(
        0, "grow the mask by this many pixels (Euclidean; negative shrinks)", group="mask", ui_max=64
    )
    mask_feather: int = option(
        0,
        "paste the result through the mask softened across its edge by this many pixels "
        "(0: the Poisson blend's own edge)",
        range=(0, None),
        group="mask",
        ui_max=64,
    )
    upscale: bool = option(
        True,
        "stage 2 (super-resolution and Poisson blend); off: resize the stage-1 result and paste it (a fast preview)",
        group="stage 2",
    )
    outpaint: tuple[int, ...] = option(
        (0, 0, 0, 0),
        "grow the canvas by LEFT,TOP,RIGHT,BOTTOM pixels and paint the new area",
        range=(0, MAX_OUTPAINT),
        length=4,
        group="outpaint",
    )
    outpaint_to: str = option(
        "", "grow the canvas to WxH, the photo centred (instead of --outpaint)", group="outpaint"
    )
    outpaint_fill: str = option(
        "blur",
        "how the new area is pre-filled: blur (edge pixels carried out, blurred), edge, reflect",
        choices=FILLS,
        group="outpaint",
    )
    outpaint_overlap: int = option(
        16,
        "pixels of the photo along each grown side painted too (the seam)",
        range=(0, None),
        group="outpaint",
        ui_max=128,
    )
    guidance: GuidanceConfig = GuidanceConfig()
    sr: SRConfig = SRConfig()
    extra: dict = field(default_factory=dict)  # recorded in the metadata alongside (the input's file name, …)

    @classmethod
    def from_options(cls, values: Mapping[str, Any]) -> InpaintRequest:
        """A request from option keys (`steps`, `sr_steps`, as the CLI and manifests spell them) or field names
        (`num_inference_steps`), values typed or as text. `prompt` is required; unknown keys are an error."""
        by_name = option_index()
        flat: dict[tuple[str, ...], Any] = {}
        prompt = None
        for name, value in values.items():
            if name == "prompt":
                prompt = value
                continue
            if name not in by_name:
                raise HDPainterError(f"unknown option {name!r}")
            opt = by_name[name]
            flat[opt.path] = opt.parse(value)
        if not isinstance(prompt, str):
            raise HDPainterError("prompt must be a string")
        return cls(prompt).replace(flat)

    def replace(self, values: Mapping[tuple[str, ...], Any]) -> InpaintRequest:
        """A copy with the options at these paths set (nested configs rebuilt)."""
        top = {path[0]: v for path, v in values.items() if len(path) == 1}
        for nested in ("guidance", "sr"):
            inner = {path[1]: v for path, v in values.items() if len(path) == 2 and path[0] == nested}
            if inner:
                top[nested] = dataclasses.replace(getattr(self, nested), **inner)
        return dataclasses.replace(self, **top)

    def validate(self, image_size: tuple[int, int] | None = None) -> None:
        """Every option against its range and choices; with `image_size`, the options bounded by the image too."""
        if not isinstance(self.prompt, str):
            raise HDPainterError("prompt must be a string")
        for opt in options():
            opt.check(self.get(opt))
        if image_size is not None:
            self.check_bounded(image_size, ("mask_feather", "stage1_context"))
            if self.upscale:
                self.check_bounded(image_size, ("blend_dilation", "blend_pad"))

    def check_bounded(self, image_size: tuple[int, int], keys: tuple[str, ...]) -> None:
        """The options of `keys` against the long side of the image they apply to."""
        long_side = max(image_size)
        for opt in options():
            value = self.get(opt) if opt.key in keys else None
            if value is not None and not opt.range[0] <= value <= long_side:
                raise OptionError(opt, f"must be in {opt.range[0]}..{long_side} (the image's long side), got {value}")

    def get(self, opt: Option):
        value = self
        for part in opt.path:
            value = getattr(value, part)
        return value

    def for_model(self, native_size: int | None) -> InpaintRequest:
        """This request with an automatic working size (None) set to the model's own, `native_size` (the request
        as it is when either is None)."""
        if self.working_size is not None or native_size is None:
            return self
        return dataclasses.replace(self, working_size=native_size)

    def stage1_size(self, image_size: tuple[int, int]) -> tuple[int, int]:
        """(w, h) of stage 1's result for an image of `image_size`: long side `working_size`, short side truncated;
        an automatic working size counts as the SD models' 512 (`for_model` sets the model's own)."""
        from .images import working_size

        return working_size(image_size, self.working_size or WORKING_SIZE)

    def needs_upscaler(self, image_size: tuple[int, int]) -> bool:
        """Whether stage 2 diffuses for an image of this size: on, not bicubic, and larger than stage 1's result."""
        return self.upscale and self.sr.method != "bicubic" and max(image_size) > max(self.stage1_size(image_size))

    def seeds(self) -> list[int]:
        """The seed of each sample: seed + 1000·k, as the reference CLI."""
        return [self.seed + k * SEED_STRIDE for k in range(self.num_samples)]

    def metadata(self, groups: tuple[str, ...] | None = None) -> dict:
        """Every option (or those of `groups`) by its key, as the CLI and manifests spell it; the prompt; `extra`."""
        chosen = [opt for opt in options() if groups is None or opt.group in groups]
        return {"prompt": self.prompt} | {opt.key: self.get(opt) for opt in chosen} | self.extra


def _options(cls, prefix: tuple[str, ...] = ()) -> Iterator[Option]:
    for f in dataclasses.fields(cls):
        if "help" not in f.metadata:
            continue
        meta = f.metadata
        default = f.default
        sequence = isinstance(default, tuple)
        kind = type(default[0]) if sequence else type(default) if default is not None else int
        yield Option(
            path=prefix + (f.name,),
            key=meta["key"] or f.name,
            type=kind,
            default=default,
            help=meta["help"],
            group=meta["group"],
            choices=meta["choices"],
            range=meta["range"],
            multiple_of=meta["multiple_of"],
            labels=meta["labels"],
            optional=default is None and meta["labels"] is None,
            sequence=sequence,
            ui_max=meta["ui_max"],
            odd=meta["odd"],
            length=meta["length"],
        )


def options() -> list[Option]:
    """Every option of InpaintRequest except the prompt, in declaration order (stage 1, mask, guidance, stage 2)."""
    top = list(_options(InpaintRequest))
    return top + list(_options(GuidanceConfig, ("guidance",))) + list(_options(SRConfig, ("sr",)))


def option_index() -> dict[str, Option]:
    """Options by key and by field name (`steps`, `num_inference_steps`; `sr_steps`, `sr.num_inference_steps`)."""
    index = {}
    for opt in options():
        index[opt.key] = opt
        index[opt.name] = opt
    return index


def options_markdown() -> str:
    """The options as a Markdown table (flag, default, meaning), as docs/development.md holds it (a test checks)."""
    rows = ["| option | default | meaning |", "|---|---|---|"]
    for opt in options():
        if opt.type is bool:
            flag = f"`{opt.flag}` / `--no-{opt.flag[2:]}`"
            default = "on" if opt.default else "off"
        else:
            flag = f"`{opt.flag}`"
            default = "auto" if opt.default is None else opt.label(opt.default)
            default = f"`{default}`" if isinstance(default, str) and default else default
        if opt.key in ("negative_prompt", "positive_prompt"):
            default = "the reference's"
        text = opt.help.replace("|", "\\|")
        if opt.choices and opt.type is int:
            text += f" (of {', '.join(map(str, opt.choices))})"
        if default == "":
            default = "`''`"
        rows.append(f"| {flag} | {default} | {text} |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":  # python -m hdpainter.request: the option table of docs/development.md
    print(options_markdown(), end="")
