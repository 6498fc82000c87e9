"""HDPainter: stage 1 → stage 2 → Poisson blend, at the original's own size, on the tiny models."""

import warnings

import numpy as np
import PIL.Image
import pytest
import torch

from hdpainter.core.blend import blend_region, poisson_blend
from hdpainter.painter import HDPainter, InpaintRequest, blend_dilation, finish
from hdpainter.upscale import HDUpscalePipeline, SRConfig, super_resolve

WORKING = 64  # a small working size keeps stage 2's canvas small (4 × 64 = 256 px)


@pytest.fixture(scope="module")
def painter(pipe, tiny_upscaler_dir):
    sr = HDUpscalePipeline.from_pretrained(tiny_upscaler_dir)
    return HDPainter(pipe, sr)


def request(**kw):
    return InpaintRequest("a red ball", method="baseline", num_inference_steps=2, sr_steps=2, working_size=WORKING, **kw)


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
    """The window arithmetic changes nothing: same as resizing the whole stage-1 result and blending the whole image."""
    image, mask = photo_and_mask((181, 133), box)
    low_res = PIL.Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8))
    out = finish(image, mask, low_res, request(sr_method="bicubic"))
    generated = np.asarray(low_res.resize(image.size, PIL.Image.BICUBIC))
    expected = poisson_blend(np.asarray(image), generated, np.asarray(mask), 32, blend_dilation(image.size, None))
    assert_same_up_to_box_rounding(np.asarray(out), expected)


def assert_same_up_to_box_rounding(out, expected):
    """Equal, but for rare ±1 levels: PIL's box resize places its taps with float error ~1e-15, flipping .5 roundings."""
    diff = np.abs(out.astype(int) - expected.astype(int))
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-3


def test_specialized_stage2_equals_whole_image_sr_resized_and_blended(painter):
    """finish() with a whole-image SR run equals: the whole ×4 result, resized to the original, Poisson blended."""
    image, mask = photo_and_mask((301, 203), (120, 60, 200, 150))
    low_res = image.resize((64, 43), PIL.Image.BICUBIC)
    out = finish(image, mask, low_res, request(sr_region="whole"), painter.upscaler, torch.Generator().manual_seed(4))
    config = SRConfig(num_inference_steps=2, region="whole")
    patch = super_resolve(painter.upscaler, image, mask, low_res, "a red ball", config, torch.Generator().manual_seed(4))
    assert patch.box == (0, 0, 256, 172) and patch.size == (256, 172)
    generated = np.asarray(PIL.Image.fromarray(patch.pixels).resize(image.size, PIL.Image.BICUBIC))
    expected = poisson_blend(np.asarray(image), generated, np.asarray(mask), 32, blend_dilation(image.size, None))
    assert_same_up_to_box_rounding(np.asarray(out), expected)


def test_sr_methods_differ_and_baseline_is_not_specialized(painter):
    image, mask = photo_and_mask((200, 150), (60, 40, 140, 110))
    results = {m: np.asarray(painter(image, mask, request(sr_method=m), progress=False)[0]).astype(int)
               for m in ("specialized", "baseline", "bicubic")}
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
    (stage1,) = painter.pipeline("a red ball", image, mask, method="baseline", num_inference_steps=2, working_size=WORKING,
                                 generator=[torch.Generator().manual_seed(1)]).images
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
