"""HDPainter: the whole method behind one call, at the photo's own size.

Stage 1 (HDPainterPipeline) runs at the working resolution (long side 512). Stage 2 lifts its result
to the original's size: for originals larger than the working size, the inpainting-specialised ×4
upscaler (hdpainter.upscale) on a box around the mask, then a resize to the original's own size;
otherwise a bicubic resize. The result is Poisson blended into the original (docs/method.md §6) on a window
around the mask, so pixels outside the blend region are the input's, byte for byte.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import numpy as np
import PIL.Image

from . import images as imgs
from . import region
from .core.blend import POISSON_DILATION, blend_region, poisson_blend
from .defaults import WORKING_SIZE
from .errors import HDPainterError
from .request import GuidanceConfig, InpaintRequest, SRConfig
from .sam import SAM_MODEL, refine_mask

__all__ = ["GuidanceConfig", "HDPainter", "InpaintRequest", "InpaintResult", "Job", "SRConfig", "prepare_job"]

REFERENCE_SIZE = 2048  # the long side at which the reference blends (its fixed output size)
WINDOW_MARGIN = 4  # pixels kept around the Poisson blend region in the window it is solved on
NO_UPSCALER = "stage 2 needs an upscaler: load one (upscaler=...) or use sr=SRConfig(method='bicubic') (--sr-method)"
EMPTY_MASK_NOTE = "the mask is empty: nothing to inpaint; the output is the input, unchanged"


@dataclass
class InpaintResult:
    """What one request gives: an image per sample (the input's size), its seed and its metadata.

    Iterating, indexing and len() go over the images, so `(image,) = painter(...)` works."""

    images: list[PIL.Image.Image]
    seeds: list[int]
    metadata: list[dict]  # per sample: every option by its key, model names, seed, sample number
    notes: list[str] = field(default_factory=list)  # things the user should hear (e.g. an empty mask)
    unchanged: bool = False  # True: nothing was painted (the images are the input)

    def __iter__(self):
        return iter(self.images)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index):
        return self.images[index]


@dataclass
class Job:
    """A validated request on one image: the RGB image (grown when outpainting), the binary mask after the
    request's conveniences, and the box of it that stage 1 inpaints (the whole image, or a context crop)."""

    image: PIL.Image.Image
    mask: PIL.Image.Image
    request: InpaintRequest
    box: tuple[int, int, int, int]  # (x0, y0, x1, y1) of `image` that stages 1 and 2 work on
    input_size: tuple[int, int] | None = None  # the photo's size before outpainting grew the canvas

    @property
    def empty(self) -> bool:
        return not np.any(np.asarray(self.mask))

    @property
    def cropped(self) -> bool:
        return self.box != (0, 0, *self.image.size)

    @property
    def region_size(self) -> tuple[int, int]:
        x0, y0, x1, y1 = self.box
        return x1 - x0, y1 - y0

    @property
    def needs_upscaler(self) -> bool:
        """Whether stage 2 will diffuse (an upscaler must be loaded)."""
        return not self.empty and self.request.needs_upscaler(self.region_size)

    def metadata(self, model: str | None = None, upscaler: str | None = None, sam: str | None = None) -> list[dict]:
        base = self.request.metadata()
        if model is not None:
            base["model"] = model
        if upscaler is not None and self.needs_upscaler:
            base["upscaler"] = upscaler
        if sam is not None:
            base["sam_model"] = sam
        if self.empty:
            base["unchanged"] = True
        else:  # what stage 1 actually worked on
            base["stage1_box"] = list(self.box)
            base["stage1_region_used"] = "crop" if self.cropped else "whole"
        if self.input_size is not None and self.input_size != self.image.size:
            base["canvas"] = list(self.image.size)
        return [base | {"seed": seed, "sample": k + 1} for k, seed in enumerate(self.request.seeds())]

    def unchanged(self, model: str | None = None) -> InpaintResult:
        """The empty mask's result: the input, once per sample, and a note saying so."""
        return InpaintResult(
            [self.image.copy() for _ in range(self.request.num_samples)],
            self.request.seeds(),
            self.metadata(model),
            [EMPTY_MASK_NOTE],
            unchanged=True,
        )


def prepare_job(image, mask, request: InpaintRequest, native_size: int = WORKING_SIZE) -> Job:
    """Every check of a request on an image before any model work: options, sizes, the mask (after its
    inversion and growth), outpainting's canvas, the box stage 1 inpaints; raises HDPainterError naming what
    is wrong. An empty mask is not an error. `mask` may be None when outpainting (nothing else to paint).
    An automatic working size becomes `native_size`, the model's own (`models.native_working_size`)."""
    request = request.for_model(native_size)
    image = imgs.to_rgb(imgs.as_pil(image, "image"))
    mask = PIL.Image.new("L", image.size, 0) if mask is None else imgs.to_mask(imgs.as_pil(mask, "mask"))
    imgs.check_size(image.size, "image")
    if image.size != mask.size:
        raise HDPainterError(
            f"image is {image.size[0]}x{image.size[1]} but mask is {mask.size[0]}x{mask.size[1]}: they must match"
        )
    input_size = image.size
    amounts = region.outpaint_amounts(image.size, request.outpaint, request.outpaint_to)
    canvas = (image.size[0] + amounts[0] + amounts[2], image.size[1] + amounts[1] + amounts[3])
    imgs.check_size(canvas, "the outpainted canvas")
    request.validate(canvas)
    if request.mask_invert:
        mask = imgs.invert_mask(mask)
    mask = imgs.grow_mask(mask, request.mask_grow)
    image, mask = region.outpaint(image, mask, amounts, request.outpaint_fill, request.outpaint_overlap)
    binary = np.asarray(mask) > 0
    box = region.stage1_box(binary, request.working_size, request.stage1_region, request.stage1_context)
    job = Job(image, mask, request, box, input_size)
    if not job.empty:  # a full mask, or a region too elongated, fails here
        imgs.prepare(image.crop(box), mask.crop(box), request.working_size)
    return job


def stage1_arguments(request: InpaintRequest) -> dict:
    """HDPainterPipeline's keyword arguments for a request (one generator per sample, seeded as the reference)."""
    import torch

    return dict(
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
        guidance=request.guidance,
        generator=[torch.Generator("cpu").manual_seed(s) for s in request.seeds()],
    )


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
        return dilation
    return max(1, round(POISSON_DILATION * max(size) / REFERENCE_SIZE))


def blend_window(mask: np.ndarray, pad: int, dilation: int) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1): the Poisson blend region grown by WINDOW_MARGIN (solving on it = solving on all of it)."""
    height, width = mask.shape
    x0, y0, x1, y1 = blend_region(mask, pad, dilation)
    m = WINDOW_MARGIN
    return max(x0 - m, 0), max(y0 - m, 0), min(x1 + m, width), min(y1 + m, height)


def source_box(
    window: tuple[int, int, int, int], source_size: tuple[int, int], size: tuple[int, int]
) -> tuple[int, int, int, int]:
    """The box of a `source_size` image whose pixels a bicubic resize to `size` reads for `window` (taps included)."""
    sx, sy = size[0] / source_size[0], size[1] / source_size[1]
    support = math.ceil(2 * max(1.0, 1.0 / min(sx, sy))) + 1  # bicubic: 2 taps each side, stretched when shrinking
    x0, y0, x1, y1 = window
    return (
        max(math.floor(x0 / sx) - support, 0),
        max(math.floor(y0 / sy) - support, 0),
        min(math.ceil(x1 / sx) + support, source_size[0]),
        min(math.ceil(y1 / sy) + support, source_size[1]),
    )


def finish(
    original: PIL.Image.Image,
    mask: PIL.Image.Image,
    low_res: PIL.Image.Image,
    request: InpaintRequest,
    upscaler=None,
    generator=None,
    callback_on_step_end=None,
    refined: PIL.Image.Image | None = None,
) -> PIL.Image.Image:
    """Stage 2 and the Poisson blend: the stage-1 result `low_res` into `original` at the original's size.
    `callback_on_step_end` is passed to the upscaler (called after each of its steps when it diffuses).
    `refined` (`hdpainter.sam.refine_mask`, any size) is Eq. 10's mask when `request.sr.sam_refine` is set."""
    from .upscale import SR_SCALE, super_resolve

    request.sr.check()
    request.check_bounded(original.size, ("blend_dilation", "blend_pad"))
    sr = request.sr
    levels = np.asarray(mask.convert("L"))  # grey levels: a soft mask blends softly, as the reference's does
    dilation = blend_dilation(original.size, sr.blend_dilation)
    window = blend_window(levels, sr.blend_pad, dilation)
    if request.needs_upscaler(original.size):
        if upscaler is None:
            raise HDPainterError(NO_UPSCALER)
        hr_size = (SR_SCALE * low_res.size[0], SR_SCALE * low_res.size[1])
        needed = source_box(window, hr_size, original.size)
        if sr.sam_refine and sr.method == "specialized" and refined is None:
            raise HDPainterError("sam_refine needs the SAM-refined mask: HDPainter makes it, or pass refined=")
        if not (sr.sam_refine and sr.method == "specialized"):
            refined = None
        patch = super_resolve(
            upscaler, original, mask, low_res, request.prompt, sr, generator, needed, callback_on_step_end, refined
        )
        generated = imgs.resize_window(patch.pixels, patch.box[:2], hr_size, original.size, window)
    else:
        generated = imgs.resize_window(np.asarray(low_res.convert("RGB")), (0, 0), low_res.size, original.size, window)
    x0, y0, x1, y1 = window
    base = np.array(original.convert("RGB"))
    base[y0:y1, x0:x1] = poisson_blend(base[y0:y1, x0:x1], generated, levels[y0:y1, x0:x1], sr.blend_pad, dilation)
    return PIL.Image.fromarray(base)


class HDPainter:
    """Load once, inpaint many: `HDPainter.from_pretrained("sd2")(image, mask, InpaintRequest("a boat")).images`."""

    def __init__(
        self,
        pipeline,
        upscaler=None,
        model_name: str = "custom",
        upscaler_name: str | None = None,
        load_options: dict | None = None,
        sam=None,
        sam_name: str | None = None,
    ):
        self.pipeline = pipeline
        self.upscaler = upscaler
        self.model_name = model_name
        self.upscaler_name = upscaler_name
        self.load_options = load_options or {}  # how from_pretrained loaded it: with_model loads the same way
        self.segmenter = sam  # SAM for requests with sr.sam_refine: a Segmenter, or None to load `sam_name` then
        self.sam_name = sam_name or SAM_MODEL

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
        sam_model: str | None = None,
    ) -> HDPainter:
        """Load `model` and `upscaler` (None: no stage-2 diffusion) onto `device` (default: the best available)
        in `dtype` (default: float16 on CUDA). `cpu_offload` keeps each model on the CPU until it runs (needs
        a GPU; accelerate's model offload); `attention_slicing` and `vae_tiling` trade speed for memory.
        `sam_model` (default facebook/sam-vit-base) is loaded, the same way, by the first request that asks for
        `sr.sam_refine`."""
        from .models import default_device_and_dtype, load_upscale_pipeline

        device, dtype = default_device_and_dtype(device, dtype)
        if cpu_offload and device.type != "cuda":
            raise HDPainterError("cpu offload moves models to a GPU as they run: it needs a CUDA device")
        options = dict(
            device=device,
            dtype=dtype,
            local_files_only=local_files_only,
            cpu_offload=cpu_offload,
            attention_slicing=attention_slicing,
            vae_tiling=vae_tiling,
        )
        sr = None
        if upscaler is not None:  # first: the smaller download, and the one most often missing
            sr = _place(
                load_upscale_pipeline(
                    upscaler, device=None if cpu_offload else device, dtype=dtype, local_files_only=local_files_only
                ),
                options,
            )
        return cls(_load_inpaint(model, options), sr, model, upscaler, options, sam_name=sam_model)

    def with_model(self, model: str) -> HDPainter:
        """Another inpainting model loaded as this one was, sharing this painter's upscaler (self is unchanged)."""
        if model == self.model_name:
            return self
        return HDPainter(
            _load_inpaint(model, self.load_options),
            self.upscaler,
            model,
            self.upscaler_name,
            self.load_options,
            sam=self.segmenter,
            sam_name=self.sam_name,
        )

    def __call__(self, image, mask, request: InpaintRequest, progress: bool = True, on_step=None) -> InpaintResult:
        """Inpaint `mask` (white = fill) of `image`: `request.num_samples` images of the input's size, with
        their seeds and metadata (an `InpaintResult`, which iterates over the images).

        An empty mask (after the request's inversion and growth) returns the input unchanged, with a
        warning and a note in the result: there is nothing to paint. `on_step(stage, sample, step, total)`
        is called after every denoising step: stage 1 runs all samples at once (sample None), stage 2 one
        sample (0-based) at a time, and only where it diffuses.
        """
        return self.run(self.prepare(image, mask, request), progress, on_step)

    def prepare(self, image, mask, request: InpaintRequest) -> Job:
        """`prepare_job` for this painter's model: an automatic working size becomes the model's own."""
        return prepare_job(image, mask, request, self.pipeline.native_working_size)

    def run(self, job: Job, progress: bool = True, on_step=None) -> InpaintResult:
        """`__call__` on a job from `prepare_job` (front-ends check inputs before loading models)."""
        if job.empty:
            warnings.warn(EMPTY_MASK_NOTE, stacklevel=3)
            return job.unchanged(self.model_name)
        preview = self.preview(job, progress, on_step)
        outputs = [self.upscale(preview, k, progress, on_step) for k in range(len(preview.images))]
        return InpaintResult(outputs, preview.seeds, preview.metadata)

    def preview(self, job: Job, progress: bool = True, on_step=None) -> Preview:
        """Stage 1 only, for every sample: fast, to choose from; `upscale(preview, k)` then finishes sample k
        exactly as `run` would have (the same seed, the same stage 2)."""
        request = job.request
        if job.empty:
            raise HDPainterError(EMPTY_MASK_NOTE)
        if job.needs_upscaler and self.upscaler is None:
            raise HDPainterError(NO_UPSCALER)
        if self.uses_sam(job):
            self.sam()  # loaded (or its error raised) before the slow part
        self.pipeline.set_progress_bar_config(disable=not progress)
        image, mask = job.image, job.mask
        part, part_mask = (image.crop(job.box), mask.crop(job.box)) if job.cropped else (image, mask)
        stage1 = self.pipeline(
            request.prompt,
            part,
            part_mask,
            **stage1_arguments(request),
            callback_on_step_end=_step_reporter(on_step, 1, None, request.num_inference_steps),
        ).images
        sam_name = self.sam_name if self.uses_sam(job) else None
        return Preview(job, stage1, request.seeds(), job.metadata(self.model_name, self.upscaler_name, sam_name))

    def upscale(self, preview: Preview, index: int, progress: bool = True, on_step=None) -> PIL.Image.Image:
        """Stage 2 and the blend for sample `index` of `preview` (0-based): the full-size result."""
        import torch

        job, request = preview.job, preview.job.request
        if not 0 <= index < len(preview.images):
            raise HDPainterError(f"there is no sample {index + 1}: this preview has {len(preview.images)}")
        if job.needs_upscaler and self.upscaler is None:
            raise HDPainterError(NO_UPSCALER)
        if self.upscaler is not None:
            self.upscaler.set_progress_bar_config(disable=not progress)
        image, mask = job.image, job.mask
        part, part_mask = (image.crop(job.box), mask.crop(job.box)) if job.cropped else (image, mask)
        generated = preview.images[index]
        # SAM sees the stage-1 result at its own size (the working size, the reference's 512 px)
        refined = refine_mask(part, part_mask, generated, self.sam()) if self.uses_sam(job) else None
        if job.cropped and job.needs_upscaler:  # stage 2 at the whole image's scale (region.stage2_input_size)
            generated = generated.resize(
                region.stage2_input_size(image.size, job.box, request.working_size), PIL.Image.BICUBIC
            )
        if not request.upscale:
            out = composite(part, generated, part_mask)
        else:
            out = finish(
                part,
                part_mask,
                generated,
                request,
                self.upscaler,
                torch.Generator("cpu").manual_seed(preview.seeds[index]),
                callback_on_step_end=_step_reporter(on_step, 2, index, request.sr.num_inference_steps),
                refined=refined,
            )
        if job.cropped:
            out = _paste(image, out, job.box)
        if request.mask_feather > 0:
            out = imgs.feather_paste(image, out, mask, request.mask_feather)
        return out

    def uses_sam(self, job: Job) -> bool:
        """Whether SAM refines this job's stage-2 mask: asked for, and stage 2 runs Eq. 10 (the only place it acts)."""
        return job.request.sr.sam_refine and job.needs_upscaler and job.request.sr.method == "specialized"

    def sam(self):
        """The SAM segmenter (`hdpainter.sam`), loaded on first use as this painter's models were."""
        if self.segmenter is None:
            from .sam import SamSegmenter

            options = self.load_options
            self.segmenter = SamSegmenter.from_pretrained(
                self.sam_name,
                device=options.get("device"),
                dtype=options.get("dtype"),
                local_files_only=options.get("local_files_only", False),
            )
        return self.segmenter


@dataclass
class Preview:
    """Stage 1's results for a job (`HDPainter.preview`), kept so that a chosen sample can be finished later."""

    job: Job
    images: list[PIL.Image.Image]  # per sample: the stage-1 result of the job's box, at the working size
    seeds: list[int]
    metadata: list[dict]  # per sample: the finished image's metadata


def _paste(image: PIL.Image.Image, part: PIL.Image.Image, box: tuple[int, int, int, int]) -> PIL.Image.Image:
    """`image` with `part` (the box's result) in place: outside the box, the image's own pixels."""
    out = image.copy()
    out.paste(part, box[:2])
    return out


def _load_inpaint(model: str, options: dict):
    """An inpainting pipeline loaded and placed with HDPainter.from_pretrained's options."""
    from .models import load_inpaint_pipeline

    device = None if options.get("cpu_offload") else options.get("device")
    return _place(
        load_inpaint_pipeline(
            model, device=device, dtype=options.get("dtype"), local_files_only=options.get("local_files_only", False)
        ),
        options,
    )


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
