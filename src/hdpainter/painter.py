"""HDPainter: the whole method behind one call, at the photo's own size.

Stage 1 (HDPainterPipeline) runs at the working resolution; its result is brought back to the
original size and composited so that pixels away from the mask are the input's own. Stage 2 (the
inpainting-specialised super-resolution and Poisson blending) plugs in here.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np
import PIL.Image

from . import images as imgs
from .errors import HDPainterError
from .defaults import REFERENCE_NEGATIVE_PROMPT, REFERENCE_POSITIVE_PROMPT, SEED_STRIDE



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
    upscale: bool = False
    extra: dict = field(default_factory=dict)  # recorded alongside (model name, …)

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


class HDPainter:
    """Load once, inpaint many: `HDPainter.from_pretrained("sd2")(image, mask, InpaintRequest("a boat"))`."""

    def __init__(self, pipeline, model_name: str = "custom"):
        self.pipeline = pipeline
        self.model_name = model_name

    @classmethod
    def from_pretrained(cls, model: str = "sd2", device=None, dtype=None, local_files_only: bool = False) -> "HDPainter":
        """Load `model` onto `device` (default: the best available) in `dtype` (default: float16 on CUDA)."""
        from .models import default_device_and_dtype, load_inpaint_pipeline

        device, dtype = default_device_and_dtype(device, dtype)
        return cls(load_inpaint_pipeline(model, device=device, dtype=dtype, local_files_only=local_files_only), model)

    def __call__(self, image: PIL.Image.Image, mask: PIL.Image.Image, request: InpaintRequest, progress: bool = True) -> list[PIL.Image.Image]:
        """Inpaint `mask` (white = fill) of `image`; returns `request.num_samples` images of the input's size."""
        import torch

        image, mask = imgs.to_rgb(image), imgs.to_mask(mask)  # sizes are checked by the pipeline (images.prepare)
        if request.num_samples < 1:
            raise HDPainterError(f"num_samples must be at least 1, got {request.num_samples}")
        generators = [torch.Generator("cpu").manual_seed(request.seed + k * SEED_STRIDE) for k in range(request.num_samples)]
        self.pipeline.set_progress_bar_config(disable=not progress)
        result = self.pipeline(
            request.prompt,
            image,
            mask,
            method=request.method,
            num_inference_steps=request.num_inference_steps,
            guidance_scale=request.guidance_scale,
            rasg_eta=request.rasg_eta,
            rasg_sigma=request.rasg_sigma,
            negative_prompt=request.negative_prompt,
            positive_prompt=request.positive_prompt,
            num_images_per_prompt=request.num_samples,
            generator=generators,
        ).images
        return [composite(image, generated, mask) for generated in result]
