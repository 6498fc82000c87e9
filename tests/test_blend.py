"""Stage 2's blending building blocks: Eq. 10 and the Poisson blend."""

import numpy as np
import pytest
import torch

from hdpainter.core.blend import blend_region, latent_blend, poisson_blend


def test_latent_blend_is_eq10():
    g = torch.Generator().manual_seed(0)
    x0, known = torch.randn(2, 4, 6, 6, generator=g), torch.randn(2, 4, 6, 6, generator=g)
    mask = torch.rand(2, 1, 6, 6, generator=g)  # soft (blurred) masks are allowed
    expected = mask * x0 + (1 - mask) * known
    torch.testing.assert_close(latent_blend(x0, known, mask), expected)
    binary = (mask > 0.5).float()
    out = latent_blend(x0, known, binary)
    assert torch.equal(out[binary.expand_as(out) == 0], known[binary.expand_as(out) == 0])


def scene():
    """A smooth photo-like gradient and a generated patch whose colour is off by a constant."""
    h, w = 160, 200
    yy, xx = np.mgrid[0:h, 0:w]
    original = np.stack([60 + 0.5 * xx, 80 + 0.4 * yy, 120 + 0.2 * (xx + yy)], -1).clip(0, 255).astype(np.uint8)
    generated = (original.astype(int) + 40).clip(0, 255).astype(np.uint8)
    generated[70:90, 90:110] = [200, 30, 30]  # the new object
    mask = np.zeros((h, w), bool)
    mask[60:100, 80:120] = True
    return original, generated, mask


def boundary_jump(image, mask):
    """Mean absolute colour step across the mask's outline (inside pixel vs outside neighbour)."""
    img = image.astype(float)
    jumps = []
    ys, xs = np.nonzero(mask)
    for y, x in zip(ys, xs):
        for dy, dx in ((0, 1), (1, 0), (0, -1), (-1, 0)):
            yy, xx = y + dy, x + dx
            if 0 <= yy < mask.shape[0] and 0 <= xx < mask.shape[1] and not mask[yy, xx]:
                jumps.append(np.abs(img[y, x] - img[yy, xx]).mean())
    return float(np.mean(jumps))


def outside(box, shape):
    x0, y0, x1, y1 = box
    keep = np.ones(shape, bool)
    keep[y0:y1, x0:x1] = False
    return keep


def test_poisson_blend_is_seamless_and_leaves_the_outside_alone():
    original, generated, mask = scene()
    pasted = np.where(mask[..., None], generated, original)
    blended = poisson_blend(original, generated, mask, pad=8, dilation=9)
    region = np.zeros_like(mask)
    region[60 - 4 : 100 + 4, 80 - 4 : 120 + 4] = True  # the mask (rows 60..99, cols 80..119) dilated by the 9x9 square
    box = blend_region(mask, pad=8, dilation=9)
    assert box == (76, 56, 124, 104)
    far = outside(box, mask.shape)
    assert np.array_equal(blended[far], original[far])
    assert not np.array_equal(blended[~far], original[~far])
    # plain pasting leaves a 40-level step at the outline; Poisson blending removes most of it
    assert boundary_jump(pasted, mask) > 30
    assert boundary_jump(blended, region) < 0.25 * boundary_jump(pasted, mask)
    # the new object survives (its gradients are kept): red stays far above green inside it
    patch = blended[75:85, 95:105].astype(int)
    assert (patch[..., 0] - patch[..., 1]).mean() > 100


def test_poisson_blend_accepts_every_mask_encoding():
    original, generated, mask = scene()
    expected = poisson_blend(original, generated, mask, pad=8, dilation=9)
    for encoded in (mask.astype(np.uint8), mask.astype(np.uint8) * 255, mask.astype(np.float32)):
        assert np.array_equal(poisson_blend(original, generated, encoded, pad=8, dilation=9), expected)


def test_poisson_blend_edge_cases():
    original, generated, _ = scene()
    assert np.array_equal(poisson_blend(original, generated, np.zeros(original.shape[:2], bool)), original)
    border_mask = np.zeros(original.shape[:2], bool)
    border_mask[:30, :40] = True  # touching the image border
    out = poisson_blend(original, generated, border_mask, pad=8, dilation=9)
    far = outside(blend_region(border_mask, pad=8, dilation=9), border_mask.shape)
    assert out.shape == original.shape and np.array_equal(out[far], original[far])
    # at the border the generated image is the boundary condition: the corner takes its (brighter) colours
    assert np.abs(out[:5, :5].astype(int) - generated[:5, :5].astype(int)).mean() < 3
    with pytest.raises(ValueError, match="shapes differ"):
        poisson_blend(original, generated[:10], border_mask)


@pytest.mark.parametrize("dilation", [1, 6, 9, 48])
def test_blend_region_is_the_bounding_box_of_opencvs_dilation(dilation):
    import cv2

    rng = np.random.default_rng(dilation)
    for _ in range(5):
        mask = np.zeros((70, 90), np.uint8)
        y, x = rng.integers(0, 60), rng.integers(0, 80)
        mask[y : y + rng.integers(1, 10), x : x + rng.integers(1, 10)] = 255
        dilated = cv2.dilate(mask, np.ones((dilation, dilation), np.uint8))
        bx, by, bw, bh = cv2.boundingRect(dilated)
        assert blend_region(mask, 32, dilation) == (bx, by, bx + bw, by + bh)


@pytest.mark.parametrize("side", ["left", "right", "top", "bottom"])
def test_a_large_dilation_at_the_border_does_not_shift_the_paste(side):
    """Blending an image into itself changes nothing, even when the dilation outgrows the 32 px padding."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (150, 201, 3), dtype=np.uint8)
    mask = np.zeros((150, 201), bool)
    region = {
        "left": (slice(40, 90), slice(0, 31)),
        "right": (slice(40, 91), slice(170, 201)),
        "top": (slice(0, 30), slice(60, 121)),
        "bottom": (slice(121, 150), slice(60, 120)),
    }[side]
    mask[region] = True
    for width in (0, 1):  # both parities of the box
        if width:
            mask[:, :] = np.roll(mask, 1, axis=1) | mask
        out = poisson_blend(image, image, mask, pad=32, dilation=94)
        assert np.abs(out.astype(int) - image.astype(int)).max() <= 1


def reference_steps(original, generated, levels, pad, dilation):
    """The reference's Poisson blend written out step by step (METHOD.md §6; its `poisson_blend`): the mask's
    grey levels as given, zero-padded, grey-dilated by a square, handed to seamlessClone unchanged."""
    import cv2

    fake = np.pad(generated, ((pad, pad), (pad, pad), (0, 0)), mode="reflect")
    base = np.pad(original, ((pad, pad), (pad, pad), (0, 0)), mode="reflect")
    for rows, cols in ((slice(0, pad), slice(None)), (slice(-pad, None), slice(None))):
        base[rows, cols] = fake[rows, cols]
        base[cols, rows] = fake[cols, rows]
    dilated = cv2.dilate(np.pad(levels, pad, mode="constant"), np.ones((dilation, dilation), np.uint8), iterations=1)
    x, y, w, h = cv2.boundingRect(dilated)
    return cv2.seamlessClone(fake, base, dilated, (x + w // 2, y + h // 2), cv2.NORMAL_CLONE)[pad:-pad, pad:-pad]


def soft_masks(shape):
    """Soft masks as the reference meets them: a binary mask bicubic-resized (its 2048 px resize), a blurred one
    and a ramp that never reaches 255."""
    import cv2
    import PIL.Image

    h, w = shape
    small = np.zeros((h // 4, w // 4), np.uint8)
    small[15:25, 20:30] = 255
    resized = np.asarray(PIL.Image.fromarray(small).resize((w, h), PIL.Image.BICUBIC))
    binary = np.zeros(shape, np.uint8)
    binary[60:100, 80:120] = 255
    blurred = cv2.GaussianBlur(binary, (15, 15), 4)
    ramp = np.zeros(shape, np.uint8)
    ramp[50:110, 70:130] = np.linspace(40, 200, 60).astype(np.uint8)[None, :]
    return {"bicubic resize": resized, "blurred": blurred, "ramp": ramp}


@pytest.mark.parametrize("kind", ["bicubic resize", "blurred", "ramp"])
@pytest.mark.parametrize("pad, dilation", [(32, 48), (8, 9)])
def test_poisson_blend_on_a_soft_mask_is_the_references(kind, pad, dilation):
    original, generated, _ = scene()
    levels = soft_masks(original.shape[:2])[kind]
    assert 0 < np.count_nonzero((levels > 0) & (levels < 255))  # really soft
    expected = reference_steps(original, generated, levels, pad, dilation)
    out = poisson_blend(original, generated, levels, pad=pad, dilation=dilation)
    np.testing.assert_array_equal(out, expected)
    far = outside(blend_region(levels, pad, dilation), levels.shape)
    assert np.array_equal(out[far], original[far])
    # the grey levels matter: binarising them first (what the blend did before) gives another image
    binarised = poisson_blend(original, generated, levels > 0, pad=pad, dilation=dilation)
    assert not np.array_equal(binarised, out)


def test_poisson_blend_on_a_binary_mask_is_the_references_too():
    original, generated, mask = scene()
    expected = reference_steps(original, generated, mask.astype(np.uint8) * 255, 8, 9)
    np.testing.assert_array_equal(poisson_blend(original, generated, mask, pad=8, dilation=9), expected)


def test_clone_mask_encodings():
    from hdpainter.core.blend import clone_mask

    levels = np.array([[0, 1, 2, 128, 255]], np.uint8)
    np.testing.assert_array_equal(clone_mask(levels), levels)  # grey levels as given
    np.testing.assert_array_equal(clone_mask(np.array([[0, 1]], np.uint8)), [[0, 255]])  # 0/1 is binary
    np.testing.assert_array_equal(clone_mask(np.array([[False, True]])), [[0, 255]])
    np.testing.assert_array_equal(clone_mask(np.array([[0.0, 0.5, 1.0, 2.0]])), [[0, 128, 255, 255]])
    np.testing.assert_array_equal(clone_mask(np.array([[0, 300]], np.int32)), [[0, 255]])
