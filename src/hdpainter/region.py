"""Where stage 1 looks, and outpainting's canvas: geometry on the original's pixels (numpy and PIL only).

Stage 1 on a *context crop* ("only masked"): a box around the mask, resized so its long side is the
working size, instead of the whole photo. A small mask in a large photo then keeps enough latent cells
(and cells of the H/32 grid where PAIntA and RASG act) for the prompt to be painted; stage 2 lifts the box
×4 and the result is blended back into the photo at full size. Several masks far apart share one box:
the union of their boxes (one stage-1 run, the scene around all of them as context).
"""

from __future__ import annotations

import math

import numpy as np
import PIL.Image

from . import images as imgs
from .errors import HDPainterError

MASK_SHARE = 0.5  # automatic context: the mask's box fills at most this share of the crop's long side
BLUR_SIGMA_MAX = 32.0  # outpaint fill "blur": σ = a quarter of the widest new side, at most this (pixels)
AUTO_CROP_GAIN = 2.0  # region "auto" crops when that gives stage 1 at least this many times the whole image's scale


def stage1_box(mask: np.ndarray, working_size: int, region: str, context: int | None) -> tuple[int, int, int, int]:
    """The box (x0, y0, x1, y1) of the original that stage 1 inpaints; the whole image for region "whole".

    "crop": the mask's box (all its parts) grown by `context` pixels on every side, or with `context` None
    a box of the image's own aspect ratio centred on it, whose long side is twice the mask's long side and at
    least `working_size` (so stage 1 never upsamples the photo, and works on as many pixels as for the whole
    image), each side at least twice the mask's; shifted and clipped to lie inside the image. "auto": that crop
    when it gives stage 1 at least AUTO_CROP_GAIN times the scale of the whole image (its long side at most
    half the image's), else the whole image.
    """
    height, width = mask.shape
    whole = (0, 0, width, height)
    box = imgs.bounding_box(mask)
    if region == "whole" or box is None:
        return whole
    x0, y0, x1, y1 = box
    if context is not None:
        crop = (max(x0 - context, 0), max(y0 - context, 0), min(x1 + context, width), min(y1 + context, height))
    else:
        long = max(math.ceil(max(x1 - x0, y1 - y0) / MASK_SHARE), working_size)
        side_x, side_y = (
            (long, round(long * height / width)) if width >= height else (round(long * width / height), long)
        )
        side_x = max(side_x, math.ceil((x1 - x0) / MASK_SHARE))
        side_y = max(side_y, math.ceil((y1 - y0) / MASK_SHARE))
        (cx0, cx1), (cy0, cy1) = _centred(x0, x1, side_x, width), _centred(y0, y1, side_y, height)
        crop = (cx0, cy0, cx1, cy1)
    if region == "auto" and max(crop[2] - crop[0], crop[3] - crop[1]) * AUTO_CROP_GAIN > max(width, height):
        return whole
    return crop


def stage2_input_size(
    image_size: tuple[int, int], box: tuple[int, int, int, int], working_size: int, scale: int = 4
) -> tuple[int, int]:
    """The size a crop's stage-1 result is resized to before stage 2's ×`scale` super-resolution: the box at the
    scale stage 2 would lift the whole image to (`scale` × working size over the image's long side), never above
    the box's own pixels. So stage 2 on a crop costs no more than on the whole image, and adds no detail the
    photo does not have room for; stage 1 has painted the mask with more latent cells all the same."""
    s = min(1.0, scale * working_size / max(image_size))
    w, h = box[2] - box[0], box[3] - box[1]
    return max(round(w * s / scale), imgs.MIN_SIDE), max(round(h * s / scale), imgs.MIN_SIDE)


def _centred(start: int, end: int, side: int, limit: int) -> tuple[int, int]:
    """[a, b) of length min(side, limit) centred on [start, end), shifted to lie inside [0, limit)."""
    side = min(side, limit)
    a = (start + end) // 2 - side // 2
    a = min(max(a, 0), limit - side)
    return a, a + side


def outpaint_amounts(size: tuple[int, int], sides: tuple[int, int, int, int], to: str) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) pixels to add: `sides` as given, or for `to` = "WxH" the photo centred on a
    W×H canvas (the odd pixel right and bottom)."""
    if not to:
        return tuple(sides)
    try:
        w, h = (int(v) for v in to.lower().split("x"))
    except ValueError:
        raise HDPainterError(f"outpaint_to must be WxH (e.g. 1024x768), got {to!r}") from None
    if w < size[0] or h < size[1]:
        raise HDPainterError(f"outpaint_to {w}x{h} is smaller than the image ({size[0]}x{size[1]}): it only grows it")
    if any(sides):
        raise HDPainterError("give outpaint (pixels per side) or outpaint_to (a size), not both")
    dx, dy = w - size[0], h - size[1]
    return dx // 2, dy // 2, dx - dx // 2, dy - dy // 2


def outpaint(
    image: PIL.Image.Image, mask: PIL.Image.Image, amounts: tuple[int, int, int, int], fill: str, overlap: int
) -> tuple[PIL.Image.Image, PIL.Image.Image]:
    """The photo on a canvas grown by `amounts` (left, top, right, bottom), the new area pre-filled by `fill`,
    and the mask: the user's (moved with the photo), the new area, and `overlap` pixels of the photo along each
    grown side, so the fill and the photo meet inside the painted region.

    Stage 1 never sees the fill (inpainting models are given the masked pixels as zeros); it shows only where
    stage 2's soft mask and the Poisson blend reach across the seam: "blur" (the edge pixels carried outwards,
    then blurred) gives the smoothest seam, "edge" the edge pixels as they are, "reflect" the photo mirrored.
    """
    import cv2

    left, top, right, bottom = amounts
    if not any(amounts):
        return image, mask
    rgb = np.asarray(image.convert("RGB"))
    mode = {"blur": "edge", "edge": "edge", "reflect": "symmetric"}[fill]
    canvas = np.pad(rgb, ((top, bottom), (left, right), (0, 0)), mode=mode)
    new = np.ones(canvas.shape[:2], bool)
    new[top : top + rgb.shape[0], left : left + rgb.shape[1]] = False
    if fill == "blur":
        sigma = min(max(max(amounts) / 4, 1.0), BLUR_SIGMA_MAX)
        blurred = cv2.GaussianBlur(canvas, (0, 0), sigmaX=sigma, borderType=cv2.BORDER_REPLICATE)
        canvas = np.where(new[..., None], blurred, canvas)
    painted = new.copy()
    h, w = rgb.shape[:2]
    o = overlap
    if left:
        painted[top : top + h, left : left + o] = True
    if right:
        painted[top : top + h, left + w - o : left + w] = True
    if top:
        painted[top : top + o, left : left + w] = True
    if bottom:
        painted[top + h - o : top + h, left : left + w] = True
    user = np.pad(np.asarray(mask.convert("L")) > 0, ((top, bottom), (left, right)))
    full = np.where(painted | user, 255, 0).astype(np.uint8)
    return PIL.Image.fromarray(canvas), PIL.Image.fromarray(full, "L")
