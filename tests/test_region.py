"""Stage 1 on a context crop, and outpainting: the geometry by hand, the pipeline against independent runs."""

import json
import math

import numpy as np
import PIL.Image
import pytest

from hdpainter import cli
from hdpainter import images as imgs
from hdpainter.core.blend import blend_region
from hdpainter.errors import HDPainterError
from hdpainter.painter import HDPainter, blend_dilation, prepare_job
from hdpainter.region import outpaint, outpaint_amounts, stage1_box
from hdpainter.request import InpaintRequest

WORKING = 64


def box_mask(size, *boxes):
    mask = np.zeros(size[::-1], bool)
    for x0, y0, x1, y1 in boxes:
        mask[y0:y1, x0:x1] = True
    return mask


@pytest.mark.parametrize(
    "size, boxes, working, context, want",
    [
        # the image's aspect ratio, long side twice the mask's (or the working size), each side ≥ twice the mask's
        ((2000, 1500), [(500, 400, 600, 460)], 128, None, (450, 355, 650, 505)),  # 200 × 150
        ((2000, 1500), [(500, 400, 540, 420)], 256, None, (392, 314, 648, 506)),  # at least the working size
        ((2000, 1500), [(0, 0, 50, 50)], 256, None, (0, 0, 256, 192)),  # touching a corner: shifted inside
        ((2000, 1500), [(1990, 1400, 2000, 1500)], 128, None, (1800, 1300, 2000, 1500)),  # tall mask: 200 high
        ((2000, 200), [(900, 50, 1000, 150)], 256, None, (822, 0, 1078, 200)),  # the short side is the image's
        ((2000, 1500), [(100, 100, 150, 150), (300, 120, 340, 160)], 64, None, (0, 0, 480, 360)),  # the union box
        ((2000, 1500), [(500, 400, 600, 460)], 128, 30, (470, 370, 630, 490)),  # an explicit context, as it is
        ((2000, 1500), [(10, 400, 600, 460)], 128, 30, (0, 370, 630, 490)),  # clipped at the border
    ],
)
def test_crop_boxes_by_hand(size, boxes, working, context, want):
    assert stage1_box(box_mask(size, *boxes), working, "crop", context) == want


def test_auto_crops_when_that_at_least_doubles_stage1s_scale():
    mask = box_mask((1000, 800), (400, 300, 500, 400))  # a square of 200 px around it
    assert stage1_box(mask, 128, "auto", None) == (350, 250, 550, 450)  # 200 · 2 ≤ 1000
    assert stage1_box(mask, 501, "auto", None) == (0, 0, 1000, 800)  # 501 · 2 > 1000: the whole image
    assert stage1_box(mask, 128, "whole", None) == (0, 0, 1000, 800)
    assert stage1_box(box_mask((1000, 800)), 128, "crop", None) == (0, 0, 1000, 800)  # no mask: nothing to crop


@pytest.fixture(scope="module")
def painter(pipe, tiny_upscaler_dir):
    from hdpainter.upscale import HDUpscalePipeline

    return HDPainter(pipe, HDUpscalePipeline.from_pretrained(tiny_upscaler_dir), "tiny", "tiny-x4")


def photo(size):
    from skimage import data

    return PIL.Image.fromarray(data.coffee()).resize(size, PIL.Image.BICUBIC)


def request(**kw):
    options = dict(prompt="a red ball", method="painta+rasg", steps=2, sr_steps=2, working_size=WORKING)
    return InpaintRequest.from_options(options | kw)


def test_a_crop_covering_the_whole_image_is_the_whole_image_run(painter):
    image, mask = photo((300, 200)), PIL.Image.fromarray(box_mask((300, 200), (100, 60, 160, 120)))
    whole = painter(image, mask, request(stage1_region="whole"), progress=False)
    crop = painter(image, mask, request(stage1_region="crop", stage1_context=300), progress=False)
    assert crop.metadata[0]["stage1_box"] == [0, 0, 300, 200] and crop.metadata[0]["stage1_region_used"] == "whole"
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(whole, crop))


@pytest.mark.parametrize("upscale", [True, False])
def test_a_crop_is_the_whole_method_on_the_box_pasted_back(painter, upscale):
    """A small mask in a large photo: the result equals HDPainter on the cropped photo, pasted into the photo, and
    every pixel outside the crop's blend region is the input's."""
    image = photo((640, 480))
    mask_array = box_mask(image.size, (400, 300, 430, 330))
    mask = PIL.Image.fromarray(mask_array)
    result = painter(image, mask, request(upscale=upscale, num_samples=2), progress=False)
    box = tuple(result.metadata[0]["stage1_box"])
    assert box == (383, 285, 447, 345) and result.metadata[0]["stage1_region_used"] == "crop"  # auto: 64 × 60
    direct = painter(
        image.crop(box), mask.crop(box), request(upscale=upscale, num_samples=2, stage1_region="whole"), progress=False
    )
    for got, part in zip(result, direct):
        want = image.copy()
        want.paste(part, box[:2])
        assert got.size == image.size and np.array_equal(np.asarray(got), np.asarray(want))
        changed = np.any(np.asarray(got) != np.asarray(image), axis=-1)
        part_mask = mask_array[box[1] : box[3], box[0] : box[2]]
        if upscale:  # the Poisson blend's region in the box
            x0, y0, x1, y1 = blend_region(part_mask, 32, blend_dilation((64, 64), None))
        else:  # the preview's paste: the mask grown by 2 stage-1 pixels (the box's long side is the working size)
            mx0, my0, mx1, my1 = imgs.bounding_box(part_mask)
            x0, y0, x1, y1 = mx0 - 2, my0 - 2, mx1 + 2, my1 + 2
        allowed = np.zeros_like(changed)
        allowed[box[1] + y0 : box[1] + y1, box[0] + x0 : box[0] + x1] = True
        assert changed.any() and not (changed & ~allowed).any()


def test_outpaint_amounts_and_canvas_by_hand():
    assert outpaint_amounts((300, 200), (0, 0, 0, 0), "401x300") == (50, 50, 51, 50)
    with pytest.raises(HDPainterError, match="smaller than the image"):
        outpaint_amounts((300, 200), (0, 0, 0, 0), "200x200")
    with pytest.raises(HDPainterError, match="not both"):
        outpaint_amounts((300, 200), (1, 0, 0, 0), "400x300")
    rgb = np.arange(4 * 3 * 3, dtype=np.uint8).reshape(4, 3, 3) * 5
    image, mask = PIL.Image.fromarray(rgb), PIL.Image.new("L", (3, 4), 0)
    grown, painted = outpaint(image, mask, (2, 1, 0, 0), "edge", 1)
    g, m = np.asarray(grown), np.asarray(painted) > 0
    assert g.shape == (5, 5, 3) and np.array_equal(g[1:, 2:], rgb)  # the photo, moved by (2, 1)
    assert np.array_equal(g[1:, 0], rgb[:, 0]) and np.array_equal(g[0, 2:], rgb[0])  # edge pixels carried out
    want = np.ones((5, 5), bool)
    want[2:, 3:] = False  # the new area plus a 1 px overlap along the grown sides (left, top)
    assert np.array_equal(m, want)
    reflected = np.asarray(outpaint(image, mask, (0, 0, 2, 0), "reflect", 0)[0])
    assert np.array_equal(reflected[:, 3], rgb[:, 2]) and np.array_equal(reflected[:, 4], rgb[:, 1])
    blurred = np.asarray(outpaint(image, mask, (0, 0, 8, 0), "blur", 0)[0]).astype(int)
    assert np.array_equal(blurred[:, :3], rgb) and np.abs(np.diff(blurred[:, 3:], axis=1)).max() <= 3  # smooth


def test_outpainting_grows_the_output_and_keeps_the_photo(painter):
    image = photo((200, 150))
    result = painter(image, None, request(outpaint="0,0,64,0", outpaint_overlap=8, upscale=False), progress=False)
    (out,) = result
    assert out.size == (264, 150) and result.metadata[0]["canvas"] == [264, 150]
    margin = math.ceil(2 * max(out.size) / WORKING)  # the preview's paste grows the mask by 2 stage-1 pixels
    keep = 200 - 8 - margin  # the photo away from the overlap and that margin
    assert np.array_equal(np.asarray(out)[:, :keep], np.asarray(image)[:, :keep])
    assert np.any(np.asarray(out)[:, 200:] != np.asarray(out)[:, 199:200])  # the new strip was painted


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(outpaint="-5,0,0,0"), "outpaint must be in 0..8192, got -5"),
        (dict(outpaint="0,0,9000,0"), "outpaint must be in 0..8192, got 9000"),
        (dict(outpaint="0,0,8192,8192"), "the outpainted canvas is 8392x8342: larger than the 64 MP"),
        (dict(outpaint="1,2,3"), "outpaint must list 4 values"),
        (dict(stage1_context=500), "stage1_context must be in 0..200 (the image's long side), got 500"),
    ],
)
def test_bad_region_and_outpaint_options_are_clear_errors(options, message):
    image, mask = photo((200, 150)), PIL.Image.fromarray(box_mask((200, 150), (50, 50, 80, 80)))
    with pytest.raises(HDPainterError, match=message.replace("(", r"\(").replace(")", r"\)")):
        prepare_job(image, mask, request(**options))


def test_outpaint_from_the_command_line_needs_no_mask(capsys, tmp_path, tiny_model_dir):
    photo((120, 90)).save(tmp_path / "in.png")
    out = tmp_path / "out.png"
    argv = [
        "inpaint",
        "--image",
        str(tmp_path / "in.png"),
        "--prompt",
        "sky",
        "--output",
        str(out),
        "--model",
        str(tiny_model_dir),
        "--steps",
        "2",
        "--working-size",
        "64",
        "--sr-method",
        "bicubic",
        "--device",
        "cpu",
    ]
    assert cli.main([*argv, "--outpaint-to", "160x90"]) == 0
    with PIL.Image.open(out) as result:
        params = json.loads(result.info["parameters"])
        assert result.size == (160, 90) and params["outpaint_to"] == "160x90" and params["canvas"] == [160, 90]
    capsys.readouterr()
    assert cli.main(argv) == 2 and "--mask is needed" in capsys.readouterr().err
    assert cli.main([*argv, "--outpaint", "0,0,10,0", "--stage1-context", "999"]) == 2
    assert "--stage1-context must be in 0..130" in capsys.readouterr().err


def test_stage2_on_a_crop_runs_at_the_whole_images_scale(painter):
    """A crop larger than the working size: its stage-1 result goes to stage 2 resized to the scale stage 2
    would give the whole image (here 4 · 64 / 640 = 0.4 of the box), so stage 2 costs no more than on the whole."""
    import torch

    from hdpainter.painter import finish, stage1_arguments
    from hdpainter.region import stage2_input_size

    image = photo((640, 480))
    mask = PIL.Image.fromarray(box_mask(image.size, (300, 200, 360, 250)))
    req = request(stage1_region="crop")
    (got,) = painter(image, mask, req, progress=False)
    box = stage1_box(np.asarray(mask) > 0, WORKING, "crop", None)
    assert box == (270, 175, 390, 275)  # 120 (twice the mask's 60 px) × 100 (twice its 50), centred on it
    assert stage2_input_size(image.size, box, WORKING) == (12, 10)  # 120 · 0.4 / 4, 100 · 0.4 / 4
    part, part_mask = image.crop(box), mask.crop(box)
    (stage1,) = painter.pipeline("a red ball", part, part_mask, **stage1_arguments(req)).images
    low = stage1.resize(stage2_input_size(image.size, box, WORKING), PIL.Image.BICUBIC)
    want = image.copy()
    want.paste(finish(part, part_mask, low, req, painter.upscaler, torch.Generator("cpu").manual_seed(1)), box[:2])
    assert np.array_equal(np.asarray(got), np.asarray(want))
