"""HDPainter: the whole method behind one call, at the photo's own size.

Stage 1 (HDPainterPipeline) runs at the working resolution (long side 512). Stage 2 lifts its result
to the original's size: for originals larger than the working size, the inpainting-specialised ×4
upscaler (hdpainter.upscale) on a box around the mask, then a resize to the original's own size;
otherwise a bicubic resize. The result is Poisson blended into the original (METHOD §6) on a window
around the mask, so pixels outside the blend region are the input's, byte for byte.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass, field

import numpy as np
import PIL.Image

from . import images as imgs
from .core.blend import POISSON_DILATION, POISSON_PAD, blend_region, poisson_blend
from .errors import HDPainterError
from .defaults import REFERENCE_NEGATIVE_PROMPT, REFERENCE_POSITIVE_PROMPT, SEED_STRIDE, VANILLA_SCALE

REFERENCE_SIZE = 2048  # the long side at which the reference blends (its fixed output size)
WINDOW_MARGIN = 4  # pixels kept around the Poisson blend region in the window it is solved on


@dataclass
class InpaintRequest:
    """One inpainting job: shared by the CLI, the API and (later) the UI and batch front-ends."""

    prompt: str
    method: str = "painta+rasg"
    num_inference_steps: int = 50
    guidance_scale: float = 7.5
    rasg_eta: float = 0.1
    rasg_sigma: str = "reference"
    negative_prompt: str = REFERENCE_NEGATIVE_PROMPT
    positive_prompt: str = REFERENCE_POSITIVE_PROMPT
    seed: int = 1
    num_samples: int = 1
    working_size: int = imgs.WORKING_SIZE  # long side of stage 1's resolution; stage 2 lifts it ×4
    upscale: bool = True  # stage 2 and Poisson blending; False: bicubic resize and a feathered paste (fast preview)
    sr_method: str = "specialized"  # "specialized" (Eq. 10), "baseline" (plain ×4 SR) or "bicubic" (no diffusion)
    sr_steps: int = 20
    sr_region: str = "crop"  # "crop": diffuse a box around the mask; "whole": the whole image, as the reference
    sr_context: int = 128  # high-res pixels of context around the mask in "crop" mode
    blend_dilation: int | None = None  # Poisson blend's dilation in output pixels; None: 48 per 2048 of the long side
    blend_pad: int = POISSON_PAD
    vae_tiling: bool | None = None  # stage 2's VAE in tiles: None = for regions above 1 MP, True = always, False = never
    mask_feather: int = 0  # > 0: the result goes over the input through the mask blurred across its edge by this many px
    vanilla_scale: float = VANILLA_SCALE  # s of method "vanilla-guidance" (the paper's Eq. 6 ablation)
    extra: dict = field(default_factory=dict)  # recorded alongside (model name, …)

    def sr_config(self):
        """Stage 2's settings for this request (the rest at the reference's values)."""
        from .upscale import SRConfig

        return SRConfig(method=self.sr_method, num_inference_steps=self.sr_steps, region=self.sr_region,
                        context=self.sr_context, vae_tiling=self.vae_tiling)

    def metadata(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k != "extra"} | self.extra


def composite(original: PIL.Image.Image, generated: PIL.Image.Image, mask: PIL.Image.Image) -> PIL.Image.Image:
    """Bring a working-resolution result to the original's size and paste it through a feathered mask.

    The mask is grown by about two working-resolution pixels (stage 1 dilates by one) and feathered inside
    that margin, so pixels farther than that from the mask are exactly the original's.
    """
    import cv2

    scale = max(original.size) / max(generated.size)
    grow = max(1, math.ceil(2 * scale))
    up = np.asarray(generated.resize(original.size, resample=PIL.Image.BICUBIC), dtype=np.float32)
    binary = np.asarray(mask.convert("L")) > 0
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * grow + 1, 2 * grow + 1))
    grown = cv2.dilate(binary.astype(np.uint8), kernel)
    alpha = cv2.GaussianBlur(grown.astype(np.float32), (0, 0), sigmaX=grow / 2)
    alpha = np.where(grown > 0, np.maximum(alpha, binary.astype(np.float32)), 0.0)[..., None]  # zero outside `grown`
    base = np.asarray(original, dtype=np.float32)
    out = base * (1.0 - alpha) + up * alpha
    return PIL.Image.fromarray(np.clip(out + 0.5, 0, 255).astype(np.uint8))




def blend_dilation(size: tuple[int, int], dilation: int | None) -> int:
    """The Poisson blend's dilation for an output of `size`: the reference's 48 px at 2048, scaled; or as given."""
    if dilation is not None:
        if not 1 <= dilation <= max(size):
            raise HDPainterError(f"blend_dilation must be in 1..{max(size)} (the image's long side), got {dilation}")
        return dilation
    return max(1, round(POISSON_DILATION * max(size) / REFERENCE_SIZE))


def check_request(size: tuple[int, int], request: InpaintRequest) -> None:
    """Stage 2's options against an image of `size`, before any model work."""
    blend_dilation(size, request.blend_dilation)
    if not 1 <= request.blend_pad <= max(size):
        raise HDPainterError(f"blend_pad must be in 1..{max(size)} (the image's long side), got {request.blend_pad}")
    request.sr_config().check()


def blend_window(mask: np.ndarray, pad: int, dilation: int) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1): the Poisson blend region grown by WINDOW_MARGIN; solving on it equals solving on the whole image."""
    height, width = mask.shape
    x0, y0, x1, y1 = blend_region(mask, pad, dilation)
    m = WINDOW_MARGIN
    return max(x0 - m, 0), max(y0 - m, 0), min(x1 + m, width), min(y1 + m, height)


def source_box(window: tuple[int, int, int, int], source_size: tuple[int, int], size: tuple[int, int]) -> tuple[int, int, int, int]:
    """The box of a `source_size` image whose pixels a bicubic resize to `size` reads for `window` (its taps included)."""
    sx, sy = size[0] / source_size[0], size[1] / source_size[1]
    support = math.ceil(2 * max(1.0, 1.0 / min(sx, sy))) + 1  # bicubic: 2 taps each side, stretched when shrinking
    x0, y0, x1, y1 = window
    return (max(math.floor(x0 / sx) - support, 0), max(math.floor(y0 / sy) - support, 0),
            min(math.ceil(x1 / sx) + support, source_size[0]), min(math.ceil(y1 / sy) + support, source_size[1]))


def finish(original: PIL.Image.Image, mask: PIL.Image.Image, low_res: PIL.Image.Image, request: InpaintRequest,
           upscaler=None, generator=None, sr_config=None, callback_on_step_end=None) -> PIL.Image.Image:
    """Stage 2 and the Poisson blend: the stage-1 result `low_res` into `original` at the original's size.
    `callback_on_step_end` is passed to the upscaler (called after each of its steps when it diffuses)."""
    from .upscale import SR_SCALE, super_resolve

    check_request(original.size, request)
    binary = np.asarray(mask.convert("L")) > 0
    dilation = blend_dilation(original.size, request.blend_dilation)
    window = blend_window(binary, request.blend_pad, dilation)
    width, height = original.size
    if request.sr_method != "bicubic" and max(original.size) > max(low_res.size):
        if upscaler is None:
            raise HDPainterError("stage 2 needs an upscaler: load one (upscaler=...) or use sr_method='bicubic'")
        config = sr_config or request.sr_config()
        hr_size = (SR_SCALE * low_res.size[0], SR_SCALE * low_res.size[1])
        needed = source_box(window, hr_size, original.size)
        patch = super_resolve(upscaler, original, mask, low_res, request.prompt, config, generator, needed,
                              callback_on_step_end)
        generated = imgs.resize_window(patch.pixels, patch.box[:2], hr_size, original.size, window)
    else:
        generated = imgs.resize_window(np.asarray(low_res.convert("RGB")), (0, 0), low_res.size, original.size, window)
    x0, y0, x1, y1 = window
    base = np.array(original.convert("RGB"))
    base[y0:y1, x0:x1] = poisson_blend(base[y0:y1, x0:x1], generated, binary[y0:y1, x0:x1],
                                       request.blend_pad, dilation)
    return PIL.Image.fromarray(base)


class HDPainter:
    """Load once, inpaint many: `HDPainter.from_pretrained("sd2")(image, mask, InpaintRequest("a boat"))`."""

    def __init__(self, pipeline, upscaler=None, model_name: str = "custom", upscaler_name: str | None = None,
                 load_options: dict | None = None):
        self.pipeline = pipeline
        self.upscaler = upscaler
        self.model_name = model_name
        self.upscaler_name = upscaler_name
        self.load_options = load_options or {}  # how from_pretrained loaded it: with_model loads the same way

    @classmethod
    def from_pretrained(
        cls,
        model: str = "sd2",
        upscaler: str | None = "x4",
        device=None,
        dtype=None,
        local_files_only: bool = False,
        cpu_offload: bool = False,
        attention_slicing: bool = False,
        vae_tiling: bool = False,
    ) -> "HDPainter":
        """Load `model` and `upscaler` (None: no stage-2 diffusion) onto `device` (default: the best available)
        in `dtype` (default: float16 on CUDA). `cpu_offload` keeps each model on the CPU until it runs (needs
        a GPU; accelerate's model offload); `attention_slicing` and `vae_tiling` trade speed for memory."""
        from .models import default_device_and_dtype, load_upscale_pipeline

        device, dtype = default_device_and_dtype(device, dtype)
        if cpu_offload and device.type != "cuda":
            raise HDPainterError("cpu offload moves models to a GPU as they run: it needs a CUDA device")
        options = dict(device=device, dtype=dtype, local_files_only=local_files_only, cpu_offload=cpu_offload,
                       attention_slicing=attention_slicing, vae_tiling=vae_tiling)
        sr = None
        if upscaler is not None:  # first: the smaller download, and the one most often missing
            sr = _place(load_upscale_pipeline(upscaler, device=None if cpu_offload else device, dtype=dtype,
                                              local_files_only=local_files_only), options)
        return cls(_load_inpaint(model, options), sr, model, upscaler, options)

    def with_model(self, model: str) -> "HDPainter":
        """Another inpainting model loaded as this one was, sharing this painter's upscaler (self is unchanged)."""
        if model == self.model_name:
            return self
        return HDPainter(_load_inpaint(model, self.load_options), self.upscaler, model, self.upscaler_name, self.load_options)

    def __call__(self, image, mask, request: InpaintRequest, progress: bool = True, on_step=None) -> list[PIL.Image.Image]:
        """Inpaint `mask` (white = fill) of `image`; returns `request.num_samples` images of the input's size.

        An empty mask returns the input unchanged (with a warning): there is nothing to paint.
        `on_step(stage, sample, step, total)` is called after every denoising step: stage 1 runs all samples
        at once (sample None), stage 2 one sample (0-based) at a time, and only where it diffuses.
        """
        import torch

        image, mask = imgs.to_rgb(imgs.as_pil(image, "image")), imgs.to_mask(imgs.as_pil(mask, "mask"))
        if request.num_samples < 1:
            raise HDPainterError(f"num_samples must be at least 1, got {request.num_samples}")
        if not 0 <= request.mask_feather <= max(image.size):
            raise HDPainterError(f"mask_feather must be in 0..{max(image.size)} (the image's long side), got {request.mask_feather}")
        if image.size != mask.size:
            raise HDPainterError(f"image is {image.size[0]}x{image.size[1]} but mask is {mask.size[0]}x{mask.size[1]}: they must match")
        if not np.any(np.asarray(mask)):
            warnings.warn("the mask is empty: nothing to inpaint, the image is returned unchanged", stacklevel=2)
            return [image.copy() for _ in range(request.num_samples)]
        if request.upscale:
            check_request(image.size, request)
        seeds = [request.seed + k * SEED_STRIDE for k in range(request.num_samples)]
        self.pipeline.set_progress_bar_config(disable=not progress)
        if self.upscaler is not None:
            self.upscaler.set_progress_bar_config(disable=not progress)
        result = self.pipeline(
            request.prompt,
            image,
            mask,
            method=request.method,
            num_inference_steps=request.num_inference_steps,
            guidance_scale=request.guidance_scale,
            rasg_eta=request.rasg_eta,
            rasg_sigma=request.rasg_sigma,
            vanilla_scale=request.vanilla_scale,
            negative_prompt=request.negative_prompt,
            positive_prompt=request.positive_prompt,
            num_images_per_prompt=request.num_samples,
            working_size=request.working_size,
            generator=[torch.Generator("cpu").manual_seed(s) for s in seeds],
            callback_on_step_end=_step_reporter(on_step, 1, None, request.num_inference_steps),
        ).images
        if not request.upscale:
            outputs = [composite(image, generated, mask) for generated in result]
        else:
            outputs = [finish(image, mask, generated, request, self.upscaler, torch.Generator("cpu").manual_seed(seed),
                              callback_on_step_end=_step_reporter(on_step, 2, k, request.sr_steps))
                       for k, (generated, seed) in enumerate(zip(result, seeds))]
        if request.mask_feather > 0:
            outputs = [imgs.feather_paste(image, out, mask, request.mask_feather) for out in outputs]
        return outputs


def _load_inpaint(model: str, options: dict):
    """An inpainting pipeline loaded and placed with HDPainter.from_pretrained's options."""
    from .models import load_inpaint_pipeline

    device = None if options.get("cpu_offload") else options.get("device")
    return _place(load_inpaint_pipeline(model, device=device, dtype=options.get("dtype"),
                                        local_files_only=options.get("local_files_only", False)), options)


def _place(pipe, options: dict):
    """Memory options of HDPainter.from_pretrained on a freshly loaded pipeline."""
    if options.get("cpu_offload"):
        pipe.enable_model_cpu_offload(device=options["device"])
    if options.get("attention_slicing"):
        pipe.enable_attention_slicing()
    if options.get("vae_tiling"):
        pipe.vae.enable_tiling()
    return pipe


def _step_reporter(on_step, stage: int, sample: int | None, total: int):
    """A diffusers-style step-end callback that reports (stage, sample, step, total) to `on_step`; None without one."""
    if on_step is None:
        return None

    def callback(pipe, i, t, tensors):
        on_step(stage, sample, i + 1, total)
        return {}

    return callback
