"""Stage 2's blending (paper §3.5 Eq. 10 and the final Poisson blend; docs/method.md §5-6).

Building blocks for the inpainting-specialised super-resolution: `latent_blend` runs on tensors at
every upscaler step; `poisson_blend` runs once on uint8 images (OpenCV's seamlessClone).
"""

from __future__ import annotations

import numpy as np
import torch

from ..defaults import POISSON_DILATION, POISSON_PAD


def latent_blend(x0: torch.Tensor, known: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Eq. 10: X̂0 ← m · X̂0 + (1 − m) · E(I_hr); `mask` (B, 1, h, w) is 1 where the model paints."""
    mask = mask.to(x0.dtype)
    return mask * x0 + (1.0 - mask) * known.to(x0.dtype)


def poisson_blend(
    original: np.ndarray,
    generated: np.ndarray,
    mask: np.ndarray,
    pad: int = POISSON_PAD,
    dilation: int = POISSON_DILATION,
) -> np.ndarray:
    """Blend `generated` into `original` (both (H, W, 3) uint8) where `mask` (H, W) is set.

    The reference's recipe: both images reflect-padded by `pad`, the original's padded border replaced
    by the generated image's, the mask zero-padded and dilated by a `dilation`×`dilation` square (a
    maximum filter: a soft mask stays soft), NORMAL_CLONE centred on the dilated mask's bounding box.
    The mask's grey levels reach seamlessClone as they are, as in the reference (whose mask is the bicubic
    resize of the user's to 2048 px, soft at its edge): OpenCV clones where the mask is non-zero and mixes
    the two images' gradients in proportion to mask / 255. See `clone_mask` for the encodings taken.
    OpenCV solves on the non-zero mask's bounding box, so pixels outside it (the blend region) keep the
    original's values exactly; inside it but outside the dilated mask they may move by a few levels, as in
    the reference.

    The padding is raised to `dilation // 2 + 2` when smaller (never with the reference's 32 and 48): a
    dilated mask reaching the padded image's edge would lose its outer ring inside seamlessClone, which
    then pastes one pixel off.
    """
    import cv2

    if original.shape != generated.shape or original.shape[:2] != np.shape(mask):
        raise ValueError(
            f"shapes differ: original {original.shape}, generated {generated.shape}, mask {np.shape(mask)}"
        )
    levels = clone_mask(mask)
    if not levels.any():
        return original.copy()
    pad = max(pad, min_pad(dilation))
    widths = ((pad, pad), (pad, pad), (0, 0))
    fake = np.pad(generated, widths, mode="reflect")
    base = np.pad(original, widths, mode="reflect")
    border = np.ones(base.shape[:2], bool)
    border[pad:-pad, pad:-pad] = False
    base[border] = fake[border]
    region = cv2.dilate(np.pad(levels, pad), np.ones((dilation, dilation), np.uint8))
    x, y, w, h = cv2.boundingRect(region)
    # seamlessClone may write into its mask argument (seen with OpenCV 5.0): hand it a copy
    out = cv2.seamlessClone(fake, base, region.copy(), (x + w // 2, y + h // 2), cv2.NORMAL_CLONE)
    return out[pad:-pad, pad:-pad]


def clone_mask(mask: np.ndarray) -> np.ndarray:
    """`mask` as the uint8 grey levels seamlessClone takes (255 = the generated image's gradients only).

    bool masks and integer masks with values in {0, 1} are binary (0/255); float masks are in [0, 1]
    (×255, rounded); other integer masks are grey levels 0..255 as given, soft ones included.
    """
    mask = np.asarray(mask)
    if mask.dtype == np.bool_:
        return mask.astype(np.uint8) * 255
    if np.issubdtype(mask.dtype, np.floating):
        return np.rint(np.clip(mask, 0.0, 1.0) * 255.0).astype(np.uint8)
    if mask.size and mask.max() <= 1:
        return (mask > 0).astype(np.uint8) * 255
    return np.clip(mask, 0, 255).astype(np.uint8)


def min_pad(dilation: int) -> int:
    """The least padding that keeps a mask dilated by `dilation` off the padded image's outer ring."""
    return dilation // 2 + 2


def blend_region(
    mask: np.ndarray, pad: int = POISSON_PAD, dilation: int = POISSON_DILATION
) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1), exclusive, of what `poisson_blend` may change: the dilated mask's bounding box.

    Computed from the mask's bounding box (a square dilation with OpenCV's centre anchor grows it by
    `dilation − 1 − dilation // 2` before and `dilation // 2` after), so an 8K mask costs no dilation.
    `pad` does not matter here: it only moves the box, which is clipped to the image anyway.
    """
    binary = np.asarray(mask) > 0
    rows, cols = np.flatnonzero(binary.any(axis=1)), np.flatnonzero(binary.any(axis=0))
    if not len(rows):
        return 0, 0, 0, 0
    height, width = binary.shape
    before, after = dilation - 1 - dilation // 2, dilation // 2
    return (
        max(int(cols[0]) - before, 0),
        max(int(rows[0]) - before, 0),
        min(int(cols[-1]) + 1 + after, width),
        min(int(rows[-1]) + 1 + after, height),
    )
