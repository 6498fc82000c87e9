"""SAM mask refinement before stage 2 (the reference demo's "use SAM mask for background preservation")."""

import json

import numpy as np
import PIL.Image
import pytest
import torch
from scipy import ndimage

from hdpainter.errors import HDPainterError
from hdpainter.painter import HDPainter, InpaintRequest
from hdpainter.sam import SamSegmenter, prompt_box, refine_mask
from hdpainter.upscale import HDUpscalePipeline, SRConfig, make_canvas, soft_mask

WORKING = 64


class StubSam:
    """A segmenter with known answers: for each image it is shown (recognised by its pixels), fixed masks."""

    def __init__(self, answers):
        self.answers = answers  # list of (image array, (K, H, W) bool masks)
        self.calls = []

    def __call__(self, image, box):
        self.calls.append((image.copy(), tuple(box)))
        for known, masks in self.answers:
            if known.shape == image.shape and np.array_equal(known, image):
                return masks
        raise AssertionError("the stub was shown an image it does not know")


def rect(shape, box):
    out = np.zeros(shape, bool)
    x0, y0, x1, y1 = box
    out[y0:y1, x0:x1] = True
    return out


def scene():
    """A 256×192 photo and mask, and a 64×48 'stage-1 result' (its size is the scale SAM works at)."""
    from skimage import data

    original = PIL.Image.fromarray(data.chelsea()).resize((256, 192), PIL.Image.BICUBIC)
    mask = np.zeros((192, 256), np.uint8)
    mask[60:130, 90:180] = 255
    stage1 = PIL.Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8))
    return original, PIL.Image.fromarray(mask), stage1


def test_refine_mask_is_the_references_recipe():
    """Box from the mask at the stage-1 scale (left/top moved out a pixel), SAM on the resized original and on
    the stage-1 result, the union of the three candidates of each, grown 13×13 and 3×3, their union kept
    of the resized mask's grey levels."""
    original, mask, stage1 = scene()
    small_image = np.asarray(original.resize(stage1.size, PIL.Image.BICUBIC))
    small_mask = np.asarray(mask.resize(stage1.size, PIL.Image.BICUBIC))
    h, w = small_mask.shape
    was = np.stack([rect((h, w), (20, 14, 26, 20)), rect((h, w), (22, 30, 24, 31)), np.zeros((h, w), bool)])
    now = np.stack([np.zeros((h, w), bool), rect((h, w), (36, 22, 40, 26)), rect((h, w), (38, 24, 44, 28))])
    stub = StubSam([(small_image, was), (np.asarray(stage1), now)])

    refined = np.asarray(refine_mask(original, mask, stage1, stub))

    ys, xs = np.nonzero(small_mask)
    box = (max(xs.min() - 1, 0), max(ys.min() - 1, 0))
    box = box + (box[0] + (xs.max() - xs.min() + 1) + 1, box[1] + (ys.max() - ys.min() + 1) + 1)
    assert [call[1] for call in stub.calls] == [box, box]
    square = lambda n: np.ones((n, n), bool)  # noqa: E731
    keep = ndimage.binary_dilation(was.any(0), square(13)) | ndimage.binary_dilation(now.any(0), square(3))
    np.testing.assert_array_equal(refined, np.where(keep, small_mask, 0))
    assert refined.any() and (refined < small_mask).any()  # narrower than the mask, and not empty


def test_prompt_box_at_the_image_edge():
    mask = np.zeros((20, 30), np.uint8)
    mask[0:5, 0:7] = 200
    assert prompt_box(mask) == (0, 0, 8, 6)  # x0 stays 0; x1 = x0 + width + 1
    mask[:] = 0
    mask[10:12, 20:30] = 1
    assert prompt_box(mask) == (19, 9, 30, 12)


def test_the_refined_mask_is_eq10s_and_the_crop_stays_the_masks():
    original, mask, stage1 = scene()
    config = SRConfig()
    refined = PIL.Image.fromarray(np.where(rect((48, 64), (30, 20, 40, 28)), 255, 0).astype(np.uint8))
    plain = make_canvas(original, mask, stage1, config)
    canvas = make_canvas(original, mask, stage1, config, refined)
    np.testing.assert_array_equal(canvas.painted, plain.painted)  # what places the crop
    hr = np.asarray(refined.resize(plain.size, PIL.Image.BICUBIC)) > 0  # the reference's bicubic to the ×4 size
    hr = np.pad(hr, [(0, plain.padded_size[1] - hr.shape[0]), (0, plain.padded_size[0] - hr.shape[1])], "reflect")
    cross = ndimage.generate_binary_structure(2, 1)
    dilated = ndimage.binary_dilation(hr, cross, iterations=config.mask_dilation)
    latent = (plain.padded_size[0] // 4, plain.padded_size[1] // 4)
    np.testing.assert_allclose(canvas.blend_mask, soft_mask(dilated, latent, config.mask_blur))
    assert canvas.blend_mask.sum() < plain.blend_mask.sum()


@pytest.fixture(scope="module")
def painter(pipe, tiny_upscaler_dir):
    sr = HDUpscalePipeline.from_pretrained(tiny_upscaler_dir)
    return HDPainter(pipe, sr)


def request(**kw):
    return InpaintRequest.from_options(
        dict(prompt="a red ball", method="baseline", steps=2, sr_steps=2, working_size=WORKING) | kw
    )


class Everything:
    """SAM that segments the whole image: the refined mask is the mask itself."""

    def __call__(self, image, box):
        return np.ones((3,) + image.shape[:2], bool)


class Nothing:
    def __call__(self, image, box):
        return np.zeros((3,) + image.shape[:2], bool)


class Refuses:
    def __call__(self, image, box):
        raise AssertionError("SAM was asked although sam_refine is off")


def x0_steps(painter, image, mask, req, sam):
    """Stage 2's x̂0 after every step, for the job's first stage-1 result."""
    from hdpainter.painter import finish, prepare_job

    with_sam = HDPainter(painter.pipeline, painter.upscaler, sam=sam)
    low_res = with_sam.preview(prepare_job(image, mask, req), progress=False).images[0]
    steps = []
    finish(
        image,
        mask,
        low_res,
        req,
        painter.upscaler,
        torch.Generator().manual_seed(0),
        callback_on_step_end=lambda p, i, t, d: steps.append(d["x0"].clone()) or {},
        refined=refine_mask(image, mask, low_res, sam),
    )
    return steps


def test_off_is_todays_result_and_never_asks_sam(painter):
    original, mask, _ = scene()
    today = HDPainter(painter.pipeline, painter.upscaler)(original, mask, request(), progress=False)[0]
    with_sam = HDPainter(painter.pipeline, painter.upscaler, sam=Refuses())(original, mask, request(), progress=False)
    np.testing.assert_array_equal(np.asarray(with_sam[0]), np.asarray(today))
    assert "sam_model" not in with_sam.metadata[0] and with_sam.metadata[0]["sam_refine"] is False


def test_a_sam_that_keeps_the_whole_mask_keeps_it_and_one_that_finds_nothing_keeps_the_photo(painter):
    original, mask, stage1 = scene()
    small_mask = np.asarray(mask.resize(stage1.size, PIL.Image.BICUBIC))
    np.testing.assert_array_equal(np.asarray(refine_mask(original, mask, stage1, Everything())), small_mask)
    everything = HDPainter(painter.pipeline, painter.upscaler, sam=Everything())(
        original, mask, request(sam_refine=True), progress=False
    )
    assert everything.metadata[0]["sam_refine"] is True and everything.metadata[0]["sam_model"]
    # nothing segmented: Eq. 10's mask is 0, so every step's x̂0 is E(I_hr) itself, the same at each step
    steps = x0_steps(painter, original, mask, request(sam_refine=True, sr_steps=3), Nothing())
    assert len(steps) == 3 and torch.equal(steps[0], steps[1]) and torch.equal(steps[1], steps[2])
    plain = x0_steps(painter, original, mask, request(sam_refine=True, sr_steps=3), Everything())
    assert not torch.equal(plain[0], plain[1])
    assert plain[0].shape == steps[0].shape


def test_end_to_end_with_the_tiny_sam(painter, tmp_path):
    from hdpainter.testing import save_sam_model

    sam = SamSegmenter.from_pretrained(str(save_sam_model(tmp_path / "sam")))
    original, mask, _ = scene()
    masks = sam(np.asarray(original.resize((64, 48))), (20, 14, 46, 34))
    assert masks.shape == (3, 48, 64) and masks.dtype == bool
    result = HDPainter(painter.pipeline, painter.upscaler, sam=sam, sam_name="tiny")(
        original, mask, request(sam_refine=True, method="painta+rasg"), progress=False
    )
    assert result[0].size == original.size and result.metadata[0]["sam_model"] == "tiny"
    outside = np.asarray(mask) == 0
    far = np.ones_like(outside)
    far[40:150, 70:200] = False  # beyond the blend's reach of the mask
    np.testing.assert_array_equal(np.asarray(result[0])[far], np.asarray(original)[far])
    assert json.dumps(result.metadata[0])


def test_a_missing_sam_model_offline_is_one_line(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(HDPainterError, match="sam-refine") as info:
        SamSegmenter.from_pretrained("nobody/no-such-sam", local_files_only=True)
    assert "\n" not in str(info.value)
