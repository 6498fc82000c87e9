"""SAM mask refinement before stage 2: the reference demo's "use SAM mask for background preservation".

Before super-resolution the mask that Eq. 10 lets the upscaler paint is narrowed to the union of what SAM
segments, inside the mask's box, in the original (the object that was there, grown by 13 px) and in the
stage-1 result (the object that was painted, grown by 3 px): the rest of the mask keeps the original's
latents, so background the mask covered but the new object does not come back as it was. Off by default,
as in the reference. The Poisson blend still uses the whole mask (as the reference).

Everything happens at the stage-1 result's scale (the reference's 512 px), as in the reference's
`refine_mask`; the refined mask is then resized (bicubic) to stage 2's ×4 scale.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import PIL.Image

from .defaults import SAM_MODEL
from .errors import HDPainterError

__all__ = ["SAM_MODEL", "SamSegmenter", "Segmenter", "prompt_box", "refine_mask", "segment_union"]
ORIGINAL_DILATION = 13  # px at the stage-1 scale: SAM's segments of the original object, grown
INPAINTED_DILATION = 3  # px: SAM's segments of the inpainted object, grown

# image (H, W, 3) uint8 and a box (x0, y0, x1, y1) in its pixels → SAM's candidate masks (K, H, W) bool
Segmenter = Callable[[np.ndarray, tuple[int, int, int, int]], np.ndarray]


def prompt_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """The box SAM is prompted with: the reference's (the mask's bounding rectangle, its left and top edges
    moved out by a pixel, x1 = x0 + width + 1 from the moved x0, and y1 likewise)."""
    import cv2

    x, y, w, h = cv2.boundingRect((np.asarray(mask) > 0).astype(np.uint8))
    x0, y0 = max(x - 1, 0), max(y - 1, 0)
    return x0, y0, x0 + w + 1, y0 + h + 1


def segment_union(segment: Segmenter, image: np.ndarray, box: tuple[int, int, int, int], grow: int) -> np.ndarray:
    """(H, W) uint8 0/1: every candidate mask SAM gives for `box`, united, dilated by a `grow`×`grow` square."""
    import cv2

    masks = np.asarray(segment(image, box))
    if masks.ndim != 3 or masks.shape[1:] != image.shape[:2]:
        raise HDPainterError(f"SAM returned masks of shape {masks.shape} for an image of {image.shape[:2]}")
    united = (masks.sum(axis=0) > 0).astype(np.uint8)
    return cv2.dilate(united, np.ones((grow, grow), np.uint8))


def refine_mask(
    original: PIL.Image.Image, mask: PIL.Image.Image, stage1: PIL.Image.Image, segment: Segmenter
) -> PIL.Image.Image:
    """The mask narrowed to SAM's segments of the original and of the inpainted object, at `stage1`'s size.

    `original` and `mask` are resized (bicubic) to the stage-1 result's size; the box is the resized mask's
    (`prompt_box`); the result is the resized mask's grey levels where either dilated union is set, 0 elsewhere
    ('L'). An empty result (SAM found nothing the mask and either object share) makes Eq. 10 keep the
    original everywhere, as in the reference.
    """
    size = stage1.size
    small_mask = mask.convert("L")
    small_mask = np.asarray(small_mask if small_mask.size == size else small_mask.resize(size, PIL.Image.BICUBIC))
    if not small_mask.any():
        return PIL.Image.fromarray(small_mask, "L")
    small_image = original.convert("RGB")
    if small_image.size != size:
        small_image = small_image.resize(size, PIL.Image.BICUBIC)
    box = prompt_box(small_mask)
    was = segment_union(segment, np.asarray(small_image), box, ORIGINAL_DILATION)
    painted = segment_union(segment, np.asarray(stage1.convert("RGB")), box, INPAINTED_DILATION)
    keep = (was + painted) > 0
    return PIL.Image.fromarray(np.where(keep, small_mask, 0).astype(np.uint8), "L")


class SamSegmenter:
    """Box-prompted SAM through transformers' `SamModel` and `SamProcessor`: all three candidate masks of a box
    (`multimask_output=True`), thresholded at logit 0 at the image's own size, as segment-anything's predictor."""

    def __init__(self, model, processor):
        self.model = model
        self.processor = processor

    @classmethod
    def from_pretrained(
        cls, name: str = SAM_MODEL, device=None, dtype=None, local_files_only: bool = False
    ) -> SamSegmenter:
        """Any SAM checkpoint: a hub id or a local folder (model and processor)."""
        from transformers import SamModel, SamProcessor

        from .models import load_pretrained

        kwargs = {} if dtype is None else {"dtype": dtype}
        model = load_pretrained(SamModel, name, local_files_only, "--sam-refine", **kwargs)
        processor = load_pretrained(SamProcessor, name, local_files_only, "--sam-refine")
        model.requires_grad_(False).eval()
        if device is not None:
            model.to(device)
        return cls(model, processor)

    def __call__(self, image: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
        import torch

        inputs = self.processor(
            images=PIL.Image.fromarray(image), input_boxes=[[[float(v) for v in box]]], return_tensors="pt"
        )
        device, dtype = self.model.device, self.model.dtype
        pixels = inputs["pixel_values"].to(device=device, dtype=dtype)
        with torch.no_grad():
            out = self.model(
                pixel_values=pixels,
                input_boxes=inputs["input_boxes"].to(device=device, dtype=dtype),
                multimask_output=True,
            )
        masks = self.processor.image_processor.post_process_masks(
            out.pred_masks.float().cpu(), inputs["original_sizes"].cpu(), inputs["reshaped_input_sizes"].cpu()
        )[0]  # (boxes, K, H, W) bool
        return masks[0].numpy().astype(bool)
