"""HDPainter: stage 1 → stage 2 → Poisson blend, at the original's own size, on the tiny models."""

import math
import warnings

import numpy as np
import PIL.Image
import pytest
import torch

from hdpainter.core.blend import blend_region, poisson_blend
from hdpainter.errors import HDPainterError
from hdpainter.images import resize_window
from hdpainter.painter import HDPainter, InpaintRequest, blend_dilation, finish, source_box
from hdpainter.upscale import HDUpscalePipeline, SRConfig, super_resolve

WORKING = 64  # a small working size keeps stage 2's canvas small (4 × 64 = 256 px)


@pytest.fixture(scope="module")
def painter(pipe, tiny_upscaler_dir):
    sr = HDUpscalePipeline.from_pretrained(tiny_upscaler_dir)
    return HDPainter(pipe, sr)


def request(**kw):
    """A request from option keys (as the CLI spells them): baseline, 2 + 2 steps, the small working size."""
    return InpaintRequest.from_options(
        dict(prompt="a red ball", method="baseline", steps=2, sr_steps=2, working_size=WORKING) | kw
    )


def photo_and_mask(size, box):
    from skimage import data

    image = PIL.Image.fromarray(data.coffee()).resize(size, PIL.Image.BICUBIC)
    mask = np.zeros(size[::-1], np.uint8)
    x0, y0, x1, y1 = box
    mask[y0:y1, x0:x1] = 255
    return image, PIL.Image.fromarray(mask)


def upscaler_calls(painter):
    calls = []
    handle = painter.upscaler.unet.register_forward_hook(lambda *a: calls.append(1))
    return calls, handle


@pytest.mark.parametrize(
    "size, box, diffused",
    [
        ((50, 37), (10, 5, 30, 20), False),  # smaller than the working size: no super-resolution
        ((151, 97), (60, 30, 151, 97), True),  # between 1× and 4× working, odd, mask touching right and bottom
        ((256, 171), (0, 0, 70, 60), True),  # 4× the working size on the long side, mask in a corner
        ((517, 300), (200, 100, 330, 180), True),  # above 4× working
    ],
)
def test_output_has_the_inputs_size_and_its_pixels_outside_the_blend_region(painter, size, box, diffused):
    image, mask = photo_and_mask(size, box)
    calls, handle = upscaler_calls(painter)
    try:
        (out,) = painter(image, mask, request(), progress=False)
    finally:
        handle.remove()
    assert out.size == image.size and out.mode == "RGB"
    assert bool(calls) == diffused  # the ×4 upscaler runs only for originals larger than the working size
    x0, y0, x1, y1 = blend_region(np.asarray(mask), 32, blend_dilation(size, None))
    outside = np.ones(size[::-1], bool)
    outside[y0:y1, x0:x1] = False
    original, result = np.asarray(image), np.asarray(out)
    assert outside.any() and np.array_equal(result[outside], original[outside])
    inside = np.asarray(mask) > 0
    assert (result[inside] != original[inside]).any()


def test_blend_dilation_scales_the_references_48_at_2048():
    assert blend_dilation((2048, 1000), None) == 48
    assert blend_dilation((800, 1024), None) == 24
    assert blend_dilation((256, 256), None) == 6
    assert blend_dilation((30, 20), None) == 1
    assert blend_dilation((4096, 10), 7) == 7


@pytest.mark.parametrize("box", [(60, 40, 110, 80), (0, 50, 40, 120), (140, 0, 181, 30)])
def test_bicubic_stage2_equals_a_full_image_resize_and_poisson_blend(box):
    """The window arithmetic changes nothing: the same as resizing the whole stage-1 result and blending it all."""
    image, mask = photo_and_mask((181, 133), box)
    low_res = PIL.Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8))
    out = finish(image, mask, low_res, request(sr_method="bicubic"))
    generated = whole_resize(np.asarray(low_res), image.size)
    expected = poisson_blend(np.asarray(image), generated, np.asarray(mask), 32, blend_dilation(image.size, None))
    np.testing.assert_array_equal(np.asarray(out), expected)


@pytest.mark.parametrize("box", [(60, 40, 110, 80), (0, 50, 40, 120)])
def test_the_windowed_blend_of_a_soft_mask_equals_the_whole_image_blend(box):
    """A soft mask (a binary one bicubic-resized, as the reference's 2048 px mask) keeps its grey levels
    through the windowed blend, and the window changes nothing against blending the whole image."""
    image, mask = photo_and_mask((181, 133), box)
    soft = mask.resize((45, 33), PIL.Image.BICUBIC).resize(image.size, PIL.Image.BICUBIC)
    levels = np.asarray(soft)
    assert np.count_nonzero((levels > 0) & (levels < 255)) > 50
    low_res = PIL.Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8))
    out = np.asarray(finish(image, soft, low_res, request(sr_method="bicubic")))
    generated = whole_resize(np.asarray(low_res), image.size)
    dilation = blend_dilation(image.size, None)
    np.testing.assert_array_equal(out, poisson_blend(np.asarray(image), generated, levels, 32, dilation))
    x0, y0, x1, y1 = blend_region(levels, 32, dilation)
    outside = np.ones(levels.shape, bool)
    outside[y0:y1, x0:x1] = False
    assert np.array_equal(out[outside], np.asarray(image)[outside])
    binarised = poisson_blend(np.asarray(image), generated, levels > 0, 32, dilation)
    assert not np.array_equal(out, binarised)


def whole_resize(array, size):
    return resize_window(array, (0, 0), (array.shape[1], array.shape[0]), size, (0, 0, *size))


@pytest.mark.parametrize("size", [(517, 300), (2900, 1700), (1023, 601), (64, 48)])
def test_our_bicubic_resize_is_pils_up_to_its_intermediate_rounding(size):
    """Same filter as PIL's BICUBIC (antialiased when shrinking). PIL rounds and clips to 8 bits between its two
    passes, we do not: on a photo, 1 level apart on average at most, and more than 1 level at under 0.01 % of
    pixels."""
    from skimage import data

    source = np.asarray(PIL.Image.fromarray(data.coffee()).resize((1024, 768), PIL.Image.BICUBIC))
    ours = whole_resize(source, size).astype(int)
    pil = np.asarray(PIL.Image.fromarray(source).resize(size, PIL.Image.BICUBIC)).astype(int)
    diff = np.abs(ours - pil)
    assert diff.mean() < 0.2 and (diff > 1).mean() < 1e-4 and diff.max() <= 8


def test_specialized_stage2_equals_whole_image_sr_resized_and_blended(painter):
    """finish() with a whole-image SR run equals: the whole ×4 result, resized to the original, Poisson blended."""
    image, mask = photo_and_mask((301, 203), (120, 60, 200, 150))
    low_res = image.resize((64, 43), PIL.Image.BICUBIC)
    out = finish(image, mask, low_res, request(sr_region="whole"), painter.upscaler, torch.Generator().manual_seed(4))
    config = SRConfig(num_inference_steps=2, region="whole")
    patch = super_resolve(
        painter.upscaler, image, mask, low_res, "a red ball", config, torch.Generator().manual_seed(4)
    )
    assert patch.box == (0, 0, 256, 172) and patch.size == (256, 172)
    generated = whole_resize(patch.pixels, image.size)
    expected = poisson_blend(np.asarray(image), generated, np.asarray(mask), 32, blend_dilation(image.size, None))
    np.testing.assert_array_equal(np.asarray(out), expected)


def test_sr_methods_differ_and_baseline_is_not_specialized(painter):
    image, mask = photo_and_mask((200, 150), (60, 40, 140, 110))
    results = {
        m: np.asarray(painter(image, mask, request(sr_method=m), progress=False)[0]).astype(int)
        for m in ("specialized", "baseline", "bicubic")
    }
    inside = np.asarray(mask) > 0
    assert (results["specialized"][inside] != results["baseline"][inside]).any()
    assert (results["specialized"][inside] != results["bicubic"][inside]).any()


def test_no_upscale_is_the_feathered_paste(painter):
    from hdpainter.painter import composite

    image, mask = photo_and_mask((200, 150), (60, 40, 140, 110))
    calls, handle = upscaler_calls(painter)
    try:
        (out,) = painter(image, mask, request(upscale=False), progress=False)
    finally:
        handle.remove()
    (stage1,) = painter.pipeline(
        "a red ball",
        image,
        mask,
        method="baseline",
        num_inference_steps=2,
        working_size=WORKING,
        generator=[torch.Generator().manual_seed(1)],
    ).images
    assert not calls and np.array_equal(np.asarray(out), np.asarray(composite(image, stage1, mask)))


def test_empty_mask_returns_the_image_unchanged_with_a_warning(painter):
    image, _ = photo_and_mask((120, 90), (0, 0, 1, 1))
    with pytest.warns(UserWarning, match="mask is empty"):
        out = painter(image, PIL.Image.new("L", image.size, 0), request(num_samples=2), progress=False)
    assert len(out) == 2 and all(np.array_equal(np.asarray(o), np.asarray(image)) for o in out)


def test_mask_of_another_size_is_refused(painter):
    from hdpainter.errors import HDPainterError

    image, mask = photo_and_mask((120, 90), (10, 10, 50, 50))
    with pytest.raises(HDPainterError, match="must match"):
        painter(image, mask.resize((90, 120)), request(), progress=False)


def test_stage2_without_an_upscaler_says_what_to_do(pipe):
    from hdpainter.errors import HDPainterError

    image, mask = photo_and_mask((200, 150), (60, 40, 140, 110))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(HDPainterError, match="needs an upscaler"):
            HDPainter(pipe)(image, mask, request(), progress=False)


@pytest.mark.parametrize("size", [(517, 300), (2900, 1700), (1023, 601)])
def test_a_window_resized_from_its_source_box_equals_the_whole_resize(size):
    """What stage 2 must super-resolve for a window (source_box) is enough: resizing just that box gives the
    window of the whole resize, for shrinking (originals under 4× working) and enlarging (above)."""
    rng = np.random.default_rng(0)
    source = rng.integers(0, 255, (768, 1024, 3), dtype=np.uint8)
    whole = whole_resize(source, size)
    for _ in range(6):
        x0, y0 = int(rng.integers(0, size[0] - 40)), int(rng.integers(0, size[1] - 30))
        window = (x0, y0, int(rng.integers(x0 + 20, size[0] + 1)), int(rng.integers(y0 + 20, size[1] + 1)))
        expected = whole[window[1] : window[3], window[0] : window[2]]
        bx0, by0, bx1, by1 = source_box(window, (1024, 768), size)
        cut = resize_window(source[by0:by1, bx0:bx1], (bx0, by0), (1024, 768), size, window)
        np.testing.assert_array_equal(cut, expected)
        # without the taps (just the window's own footprint) the edges come out wrong: the margin is needed
        sx, sy = size[0] / 1024, size[1] / 768
        bare = (
            math.floor(window[0] / sx),
            math.floor(window[1] / sy),
            math.ceil(window[2] / sx),
            math.ceil(window[3] / sy),
        )
        if bare[0] > 0 and bare[1] > 0 and bare[2] < 1024 and bare[3] < 768:
            short = resize_window(source[bare[1] : bare[3], bare[0] : bare[2]], bare[:2], (1024, 768), size, window)
            assert np.abs(short.astype(int) - expected.astype(int)).max() > 3


@pytest.mark.parametrize(
    "option, message",
    [
        ({"sr_method": "nope"}, "sr.method must be one of specialized, baseline, bicubic"),
        ({"sr_region": "half"}, "sr.region must be one of crop, whole"),
        ({"sr_context": -1}, "sr.context must be at least 0"),
        ({"sr_steps": 0}, "sr.num_inference_steps must be in 1..1000"),
        ({"blend_pad": 0}, "sr.blend_pad must be at least 1"),
        ({"blend_dilation": 301}, "sr.blend_dilation must be in 1..300"),
    ],
)
def test_stage2_options_are_checked_before_any_work(option, message):
    from hdpainter.errors import HDPainterError

    with pytest.raises(HDPainterError, match=message):
        InpaintRequest.from_options({"prompt": "a boat"} | option).validate((300, 200))
    InpaintRequest("a boat").validate((300, 200))  # the defaults pass


@pytest.mark.parametrize("upscale", [True, False])
def test_mask_feather_pastes_the_result_through_a_soft_edge(painter, upscale):
    from hdpainter.images import feather_alpha

    image, mask = photo_and_mask((151, 97), (50, 30, 100, 70))
    (plain,) = painter(image, mask, request(upscale=upscale), progress=False)
    (soft,) = painter(image, mask, request(upscale=upscale, mask_feather=5), progress=False)
    alpha = feather_alpha(mask, 5)[..., None]
    base = np.asarray(image, dtype=np.float64)
    want = np.floor(base + alpha * (np.asarray(plain, dtype=np.float64) - base) + 0.5)
    assert np.array_equal(np.asarray(soft), want.astype(np.uint8))
    assert not np.array_equal(np.asarray(soft), np.asarray(plain))
    with pytest.raises(HDPainterError, match="mask_feather must be in 0..151"):
        painter(image, mask, request(mask_feather=152), progress=False)
    with pytest.raises(HDPainterError, match="mask_feather must be at least 0"):
        painter(image, mask, request(mask_feather=-1), progress=False)
