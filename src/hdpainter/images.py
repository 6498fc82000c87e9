"""Reading, validating, resizing and padding images and masks (docs/method.md §1)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal

import numpy as np
import PIL.Image

from .defaults import WORKING_SIZE
from .errors import HDPainterError

PAD_MULTIPLE = 64  # images are padded right/bottom to a multiple of this
MASK_THRESHOLD = 127  # input mask pixels above this count as "fill" (non-binary masks are thresholded)
MAX_PIXELS = 64 * 1024 * 1024  # refuse absurd images before decoding them (64 MP)
MIN_SIDE = 8


def _open(path: str | os.PathLike, what: str) -> PIL.Image.Image:
    if not os.path.exists(path):
        raise HDPainterError(f"{what} not found: {path}")
    if os.path.isdir(path):
        raise HDPainterError(f"{what} is a folder, not an image: {path}")
    try:
        image = PIL.Image.open(path)
        check_size(image.size, what)
        image.load()
    except HDPainterError:
        raise
    except (OSError, SyntaxError, ValueError, PIL.Image.DecompressionBombError) as exc:
        raise HDPainterError(f"cannot read {what} {path}: {exc}") from None
    return image


def check_size(size: tuple[int, int], what: str) -> None:
    w, h = size
    if w * h > MAX_PIXELS:
        raise HDPainterError(f"{what} is {w}x{h}: larger than the {MAX_PIXELS // 2**20} MP this tool accepts")
    if min(w, h) < MIN_SIDE:
        raise HDPainterError(f"{what} is {w}x{h}: smaller than {MIN_SIDE} px on a side")


def _to_uint8_array(image: PIL.Image.Image) -> np.ndarray:
    """Any PIL mode as an (H, W) or (H, W, C) uint8 array; 16-bit and float data are rescaled, not clipped."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        data = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if image.mode.startswith("I;16") or data.max() > 255 else 255.0
        if image.mode == "F" and data.max() <= 1.0:
            peak = 1.0
        return np.clip(data / peak * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return np.asarray(image)


def to_rgb(image: PIL.Image.Image) -> PIL.Image.Image:
    """RGB version of any input mode: greyscale, palette, 16-bit, CMYK; alpha is dropped (as the reference)."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        return PIL.Image.fromarray(_to_uint8_array(image)).convert("RGB")
    if image.mode == "P":
        image = image.convert("RGBA")
    return image.convert("RGB")


def to_mask(mask: PIL.Image.Image, threshold: int = MASK_THRESHOLD) -> PIL.Image.Image:
    """Binary 'L' mask (255 = fill) from any mode: greyscale/RGB by luminance, a transparent-background
    RGBA/LA mask by its alpha, 16-bit rescaled; pixels above `threshold` are masked."""
    if mask.mode in ("RGBA", "LA", "PA") or (mask.mode == "P" and "transparency" in mask.info):
        rgba = mask.convert("RGBA")
        alpha = np.asarray(rgba)[..., 3]
        if alpha.min() < 255:  # painted strokes on a transparent layer
            values = alpha
        else:
            values = np.asarray(rgba.convert("L"))
    elif mask.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        values = _to_uint8_array(mask)
    else:
        values = np.asarray(mask.convert("L"))
    return PIL.Image.fromarray(np.where(values > threshold, 255, 0).astype(np.uint8), "L")


def parse_color(text: str) -> tuple[int, int, int]:
    """'255,0,0' or '#ff0000' → (255, 0, 0)."""
    value = text.strip()
    try:
        if value.startswith("#") and len(value) == 7:
            return tuple(int(value[i : i + 2], 16) for i in (1, 3, 5))
        parts = tuple(int(p) for p in value.split(","))
        if len(parts) == 3 and all(0 <= p <= 255 for p in parts):
            return parts
    except ValueError:
        pass
    raise HDPainterError(f"cannot read the colour {text!r}: use R,G,B (0..255 each) or #rrggbb")


def mask_from_color(image: PIL.Image.Image, color: tuple[int, int, int], tolerance: int = 32) -> PIL.Image.Image:
    """A mask painted in another editor: pixels within `tolerance` of `color` on every channel are masked (255)."""
    rgb = np.asarray(to_rgb(image), dtype=np.int16)
    near = np.all(np.abs(rgb - np.asarray(color, dtype=np.int16)) <= tolerance, axis=-1)
    return PIL.Image.fromarray(np.where(near, 255, 0).astype(np.uint8), "L")


def grow_mask(mask: PIL.Image.Image, pixels: int) -> PIL.Image.Image:
    """Grow (pixels > 0) or shrink (< 0) a binary mask: keep what lies within `pixels` (Euclidean) of the mask,
    or what lies farther than −`pixels` from its outside."""
    import cv2

    binary = np.asarray(mask.convert("L")) > 0
    if pixels == 0:
        return mask
    target = ~binary if pixels > 0 else binary  # distance to the nearest pixel outside `target`
    distance = cv2.distanceTransform(target.astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    result = (distance <= pixels) if pixels > 0 else (distance > -pixels)
    return PIL.Image.fromarray(np.where(result, 255, 0).astype(np.uint8), "L")


def feather_alpha(mask: PIL.Image.Image, pixels: int) -> np.ndarray:
    """A soft (H, W) float alpha in [0, 1] from a binary mask: a Gaussian (σ = pixels / 3) truncated at
    `pixels`, so it ramps across the mask's edge over 2·pixels and is exactly 0 (1) farther out (in)."""
    import cv2

    binary = (np.asarray(mask.convert("L")) > 0).astype(np.float64)
    if pixels <= 0:
        return binary
    alpha = cv2.GaussianBlur(
        binary, (2 * pixels + 1, 2 * pixels + 1), sigmaX=pixels / 3, borderType=cv2.BORDER_REPLICATE
    )
    return np.clip(alpha, 0.0, 1.0)


def feather_paste(
    original: PIL.Image.Image, result: PIL.Image.Image, mask: PIL.Image.Image, pixels: int
) -> PIL.Image.Image:
    """`result` over `original` through the feathered mask: a soft edge instead of the blend's own."""
    alpha = feather_alpha(mask, pixels)[..., None]
    base = np.asarray(original.convert("RGB"), dtype=np.float64)
    top = np.asarray(result.convert("RGB"), dtype=np.float64)
    return PIL.Image.fromarray(np.clip(base + alpha * (top - base) + 0.5, 0, 255).astype(np.uint8))


def invert_mask(mask: PIL.Image.Image) -> PIL.Image.Image:
    return PIL.Image.fromarray(np.where(np.asarray(mask.convert("L")) > 0, 0, 255).astype(np.uint8), "L")


def load_image(path: str | os.PathLike) -> PIL.Image.Image:
    return to_rgb(_open(path, "image"))


def load_mask(path: str | os.PathLike, threshold: int = MASK_THRESHOLD) -> PIL.Image.Image:
    return to_mask(_open(path, "mask"), threshold)


def as_pil(image, what: str) -> PIL.Image.Image:
    """PIL image from PIL, an (H, W[, C]) numpy array (uint8, or float in [0, 1]) or a (C, H, W) tensor in [0, 1]."""
    if isinstance(image, PIL.Image.Image):
        return image
    if hasattr(image, "detach"):  # torch tensor
        image = image.detach().cpu().float()
        if image.ndim == 4 and image.shape[0] == 1:
            image = image[0]
        if image.ndim == 2:
            image = image[None]
        if image.ndim != 3:
            raise HDPainterError(f"{what}: expected a (C, H, W) or (H, W) tensor, got shape {tuple(image.shape)}")
        image = image.permute(1, 2, 0).numpy()
    if isinstance(image, np.ndarray):
        if image.ndim == 3 and image.shape[2] == 1:
            image = image[..., 0]
        if image.ndim not in (2, 3):
            raise HDPainterError(f"{what}: expected an (H, W) or (H, W, C) array, got shape {image.shape}")
        if image.dtype == np.bool_:
            image = image.astype(np.uint8) * 255
        elif np.issubdtype(image.dtype, np.floating):  # floats are in [0, 1]
            image = np.clip(np.asarray(image, dtype=np.float64) * 255.0 + 0.5, 0, 255).astype(np.uint8)
        elif image.dtype == np.uint16:
            image = (image.astype(np.float64) / 257.0 + 0.5).astype(np.uint8)
        elif image.dtype != np.uint8:  # other integers are taken as 0..255
            image = np.clip(image, 0, 255).astype(np.uint8)
        return PIL.Image.fromarray(image)
    raise HDPainterError(f"{what}: expected a PIL image, numpy array or torch tensor, got {type(image).__name__}")


def working_size(size: tuple[int, int], long_side: int = WORKING_SIZE) -> tuple[int, int]:
    """The reference's resize target: long side `long_side`, short side truncated, (w, h)."""
    w, h = size
    return min(long_side, int(long_side * w / h)), min(long_side, int(long_side * h / w))


def padded_size(size: tuple[int, int], multiple: int = PAD_MULTIPLE) -> tuple[int, int]:
    return tuple(-(-s // multiple) * multiple for s in size)


def dilate_cross(mask: np.ndarray, iterations: int = 1) -> np.ndarray:
    """Binary dilation with the cross-shaped 3x3 structure (scipy's default), bool → bool."""
    import cv2

    kernel = cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3))
    return cv2.dilate(mask.astype(np.uint8), kernel, iterations=iterations).astype(bool)


def resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bicubic (PIL) resize of a bool mask stored as 0/255 uint8, to (w, h); returns uint8 values."""
    image = PIL.Image.fromarray(np.where(mask, 255, 0).astype(np.uint8), "L")
    return np.asarray(image.resize(size, resample=PIL.Image.BICUBIC))


@dataclass
class PreparedInput:
    """One image and mask at stage 1's working resolution, padded (docs/method.md §1)."""

    image: np.ndarray  # (Hp, Wp, 3) uint8, zero padded
    mask: np.ndarray  # (Hp, Wp) bool, True = fill; dilated by 1 px, zero padded
    size: tuple[int, int]  # (w, h) before padding: the output is cropped back to this


def prepare(image: PIL.Image.Image, mask: PIL.Image.Image, long_side: int = WORKING_SIZE) -> PreparedInput:
    """Resize image and mask (bicubic) to the working size, binarise (non-zero), dilate 1 px, pad to ×64."""
    if image.size != mask.size:
        raise HDPainterError(
            f"image is {image.size[0]}x{image.size[1]} but mask is {mask.size[0]}x{mask.size[1]}: they must match"
        )
    check_size(image.size, "image")
    binary = np.asarray(mask.convert("L")) > 0
    if not binary.any():
        raise HDPainterError("mask is empty: nothing to inpaint (white = fill)")
    if binary.all():
        raise HDPainterError("mask covers the whole image: nothing is left to condition on")
    size = working_size(image.size, long_side)
    if min(size) < MIN_SIDE:
        raise HDPainterError(
            f"image is {image.size[0]}x{image.size[1]}: too elongated for a {long_side} px working size"
        )
    small = np.asarray(image.convert("RGB").resize(size, resample=PIL.Image.BICUBIC))
    small_mask = dilate_cross(resize_mask(binary, size) != 0)
    pw, ph = padded_size(size)
    padded = np.zeros((ph, pw, 3), np.uint8)
    padded[: size[1], : size[0]] = small
    padded_mask = np.zeros((ph, pw), bool)
    padded_mask[: size[1], : size[0]] = small_mask
    return PreparedInput(padded, padded_mask, size)


def grid_mask(mask: np.ndarray, divisor: int, threshold: Literal["any", "half"]) -> np.ndarray:
    """The mask on a grid H/divisor × W/divisor: bicubic downscale, then `!= 0` ("any") or `> 0.5` ("half")."""
    h, w = mask.shape
    values = resize_mask(mask, (w // divisor, h // divisor))
    if threshold == "any":
        return values != 0
    if threshold == "half":
        return values / 255.0 > 0.5
    raise ValueError(f"threshold must be 'any' or 'half', got {threshold!r}")


def cubic_weights(outputs: np.ndarray, first: int, count: int, scale: float, full: int) -> np.ndarray:
    """(len(outputs), count) weights of source pixels first..first+count−1 for output pixels `outputs` of a
    bicubic resize (Keys, a = −0.5) by `scale` = output/source of a `full`-pixel axis: PIL's filter, widened
    when shrinking (antialiasing), taps beyond the image dropped and the rest renormalised, as PIL does."""
    stretch = max(1.0 / scale, 1.0)
    centres = (outputs.astype(np.float64) + 0.5) / scale  # in source pixels
    sources = np.arange(first, first + count, dtype=np.float64) + 0.5
    x = np.abs(sources[None, :] - centres[:, None]) / stretch
    w = np.where(x < 1, (1.5 * x - 2.5) * x * x + 1, np.where(x < 2, ((-0.5 * x + 2.5) * x - 4) * x + 2, 0.0))
    w[:, (sources < 0) | (sources > full)] = 0.0
    return w / w.sum(axis=1, keepdims=True)


def resize_window(
    source: np.ndarray,
    offset: tuple[int, int],
    full: tuple[int, int],
    size: tuple[int, int],
    window: tuple[int, int, int, int],
) -> np.ndarray:
    """Pixels `window` (x0, y0, x1, y1) of the bicubic resize to `size` (w, h) of a `full` (w, h) image, of which
    `source` ((h, w, 3) uint8) is the part at `offset` (x, y). Each output pixel's weights depend on its position
    only, so any window equals the same window of the whole resize (given the taps: `source` must cover them)."""
    x0, y0, x1, y1 = window
    wy = cubic_weights(np.arange(y0, y1), offset[1], source.shape[0], size[1] / full[1], full[1])
    wx = cubic_weights(np.arange(x0, x1), offset[0], source.shape[1], size[0] / full[0], full[0])
    rows = np.tensordot(wy, source.astype(np.float64), axes=(1, 0))  # (y1 − y0, w, 3)
    out = np.tensordot(rows, wx, axes=(1, 1)).transpose(0, 2, 1)  # (y1 − y0, x1 − x0, 3)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def to_uint8(decoded) -> np.ndarray:
    """Decoded images in [-1, 1], a (B, 3, H, W) tensor → (B, H, W, 3) uint8 by truncation, as the reference."""
    import torch

    return (255.0 * (decoded.clamp(-1.0, 1.0) + 1.0) / 2.0).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def bounding_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """(x0, y0, x1, y1), exclusive, of a bool mask's set pixels; None when it has none."""
    rows, cols = np.any(mask, axis=1), np.any(mask, axis=0)
    if not rows.any():
        return None
    y0, y1 = np.argmax(rows), len(rows) - np.argmax(rows[::-1])
    x0, x1 = np.argmax(cols), len(cols) - np.argmax(cols[::-1])
    return int(x0), int(y0), int(x1), int(y1)
