"""Input handling: modes, thresholds, the reference's resize / dilation / padding geometry."""

import numpy as np
import PIL.Image
import pytest

from hdpainter import images as imgs
from hdpainter.errors import HDPainterError


def test_non_binary_mask_is_thresholded_at_127():
    values = np.array([[0, 3, 127, 128, 200, 255]], np.uint8)
    mask = imgs.to_mask(PIL.Image.fromarray(values))
    assert np.asarray(mask).tolist() == [[0, 0, 0, 255, 255, 255]]


def test_rgba_mask_painted_on_transparent_layer_uses_alpha():
    rgba = np.zeros((2, 3, 4), np.uint8)
    rgba[..., :3] = 255  # white everywhere, but only one stroke is opaque
    rgba[0, 1, 3] = 255
    mask = imgs.to_mask(PIL.Image.fromarray(rgba, "RGBA"))
    assert np.asarray(mask).tolist() == [[0, 255, 0], [0, 0, 0]]


def test_sixteen_bit_inputs_are_rescaled_not_clipped():
    data = np.array([[0, 32768, 65535]], np.uint16)
    image = PIL.Image.fromarray(data)
    assert image.mode.startswith("I;16")
    assert np.asarray(imgs.to_rgb(image))[0, :, 0].tolist() == [0, 128, 255]
    assert np.asarray(imgs.to_mask(image)).tolist() == [[0, 255, 255]]


def test_arrays_and_tensors_of_any_dtype():
    import torch

    assert np.asarray(imgs.as_pil(np.array([[0.0, 0.5, 1.0]]), "x")).tolist() == [[0, 128, 255]]
    assert np.asarray(imgs.as_pil(np.array([[0, 100, 255]], np.int64), "x")).tolist() == [[0, 100, 255]]
    assert np.asarray(imgs.as_pil(np.array([[0, 65535]], np.uint16), "x")).tolist() == [[0, 255]]
    assert np.asarray(imgs.as_pil(np.array([[False, True]]), "x")).tolist() == [[0, 255]]
    assert np.asarray(imgs.as_pil(torch.tensor([[0.0, 1.0]]), "x")).tolist() == [[0, 255]]  # (H, W) mask tensor
    assert imgs.as_pil(torch.zeros(3, 5, 7), "x").size == (7, 5)


def test_rgba_and_greyscale_images_become_rgb():
    rgba = PIL.Image.new("RGBA", (4, 4), (10, 20, 30, 0))
    assert np.asarray(imgs.to_rgb(rgba))[0, 0].tolist() == [10, 20, 30]
    grey = PIL.Image.new("L", (4, 4), 77)
    assert np.asarray(imgs.to_rgb(grey))[0, 0].tolist() == [77, 77, 77]


@pytest.mark.parametrize(
    "size, expected",
    [((2048, 1365), (512, 341)), ((300, 200), (512, 341)), ((1000, 1000), (512, 512)), ((333, 999), (170, 512))],
)
def test_working_size_follows_the_reference_resize(size, expected):
    w, h = size
    assert imgs.working_size(size) == expected == (min(512, int(512 * w / h)), min(512, int(512 * h / w)))


def test_prepare_dilates_by_a_cross_and_pads_to_64():
    image = PIL.Image.new("RGB", (512, 300), (200, 100, 50))
    mask = np.zeros((300, 512), np.uint8)
    mask[100, 200] = 255
    prepared = imgs.prepare(image, PIL.Image.fromarray(mask))
    assert prepared.size == (512, 300)
    assert prepared.image.shape == (320, 512, 3) and prepared.mask.shape == (320, 512)
    assert (prepared.image[300:] == 0).all() and not prepared.mask[300:].any()
    ys, xs = np.nonzero(prepared.mask)
    assert sorted(zip(ys.tolist(), xs.tolist())) == [(99, 200), (100, 199), (100, 200), (100, 201), (101, 200)]


def test_grid_masks_use_two_thresholds():
    mask = np.zeros((64, 64), bool)
    mask[0:8, 0:8] = True  # one full cell of the 8x8 latent grid
    mask[8:10, 8:16] = True  # a quarter of another cell
    any_grid = imgs.grid_mask(mask, 8, "any")
    half_grid = imgs.grid_mask(mask, 8, "half")
    assert any_grid[0, 0] and any_grid[1, 1]
    assert half_grid[0, 0] and not half_grid[1, 1]


def test_bad_masks_and_sizes_are_refused():
    image = PIL.Image.new("RGB", (64, 64))
    with pytest.raises(HDPainterError, match="empty"):
        imgs.prepare(image, PIL.Image.new("L", (64, 64), 0))
    with pytest.raises(HDPainterError, match="whole image"):
        imgs.prepare(image, PIL.Image.new("L", (64, 64), 255))
    with pytest.raises(HDPainterError, match="must match"):
        imgs.prepare(image, PIL.Image.new("L", (32, 64), 255))
    half = np.zeros((8, 8000), np.uint8)
    half[:, :4000] = 255
    with pytest.raises(HDPainterError, match="too elongated"):
        imgs.prepare(PIL.Image.new("RGB", (8000, 8)), PIL.Image.fromarray(half))
    with pytest.raises(HDPainterError, match="smaller than"):
        imgs.check_size((4, 4000), "image")
    with pytest.raises(HDPainterError, match="larger than"):
        imgs.check_size((20000, 20000), "image")


def test_unreadable_files(tmp_path):
    with pytest.raises(HDPainterError, match="not found"):
        imgs.load_image(tmp_path / "nope.png")
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
    with pytest.raises(HDPainterError, match="cannot read image"):
        imgs.load_image(bad)
    with pytest.raises(HDPainterError, match="folder"):
        imgs.load_image(tmp_path)


def brute_distance(points_from: np.ndarray, points_to: np.ndarray) -> np.ndarray:
    """For each True pixel position of the grid, the Euclidean distance to the nearest True of `points_to`."""
    ty, tx = np.nonzero(points_to)
    yy, xx = np.mgrid[: points_from.shape[0], : points_from.shape[1]]
    if not len(ty):
        return np.full(points_from.shape, np.inf)
    return np.sqrt((yy[..., None] - ty) ** 2 + (xx[..., None] - tx) ** 2).min(-1)


@pytest.mark.parametrize("pixels", [1, 3, 6, -1, -2, -4])
def test_grow_and_shrink_are_euclidean(pixels):
    from hdpainter.images import grow_mask

    rng = np.random.default_rng(abs(pixels))
    mask = np.zeros((40, 50), bool)
    for _ in range(3):
        y, x = rng.integers(0, 35), rng.integers(0, 45)
        mask[y : y + rng.integers(2, 15), x : x + rng.integers(2, 15)] = True
    out = np.asarray(grow_mask(PIL.Image.fromarray(np.where(mask, 255, 0).astype(np.uint8)), pixels)) > 0
    if pixels > 0:
        expected = brute_distance(mask, mask) <= pixels
    else:  # what stays is farther than |pixels| from every unmasked pixel (the image border is not an edge)
        expected = mask & (brute_distance(mask, ~mask) > -pixels)
    assert np.array_equal(out, expected)


def test_mask_from_color_invert_and_colour_parsing():
    from hdpainter.errors import HDPainterError
    from hdpainter.images import invert_mask, mask_from_color, parse_color

    picture = np.full((20, 30, 3), 128, np.uint8)
    picture[5:10, 5:15] = (250, 10, 5)  # painted red, a little off
    picture[12:15, 20:25] = (200, 10, 5)  # another red, outside a 32 tolerance
    mask = np.asarray(mask_from_color(PIL.Image.fromarray(picture), parse_color("#ff0000"), 32)) > 0
    expected = np.zeros((20, 30), bool)
    expected[5:10, 5:15] = True
    assert np.array_equal(mask, expected)
    assert parse_color("255, 0, 0") == (255, 0, 0)
    assert np.array_equal(np.asarray(invert_mask(PIL.Image.fromarray(expected.astype(np.uint8) * 255))) > 0, ~expected)
    for bad in ("red", "256,0,0", "#ff00", "1,2"):
        with pytest.raises(HDPainterError, match="cannot read the colour"):
            parse_color(bad)


@pytest.mark.parametrize("pixels", [1, 3, 6])
def test_feather_is_a_truncated_gaussian_across_the_edge(pixels):
    rng = np.random.default_rng(pixels)
    binary = np.zeros((30, 40), bool)
    binary[8:22, 10:31] = True
    binary[rng.integers(0, 30, 5), rng.integers(0, 40, 5)] = True  # stray pixels, some on the border
    alpha = imgs.feather_alpha(PIL.Image.fromarray(binary.astype(np.uint8) * 255), pixels)
    # explicit: separable Gaussian weights, σ = pixels / 3, over ±pixels, replicated borders
    offsets = np.arange(-pixels, pixels + 1)
    g = np.exp(-(offsets**2) / (2 * (pixels / 3) ** 2))
    g /= g.sum()
    padded = np.pad(binary.astype(np.float64), pixels, mode="edge")
    want = np.zeros(binary.shape)
    for dy, wy in zip(offsets, g):
        for dx, wx in zip(offsets, g):
            want += wy * wx * padded[pixels + dy : pixels + dy + 30, pixels + dx : pixels + dx + 40]
    np.testing.assert_allclose(alpha, want, atol=1e-6)
    # farther than `pixels` from the edge: exactly the mask
    from scipy.ndimage import binary_dilation, binary_erosion

    square = np.ones((2 * pixels + 1, 2 * pixels + 1), bool)
    far_out = ~binary_dilation(binary, square)
    far_in = binary_erosion(np.pad(binary, pixels, mode="edge"), square)[pixels:-pixels, pixels:-pixels]
    assert np.all(alpha[far_out] == 0) and np.allclose(alpha[far_in], 1.0, atol=1e-12)
    assert np.array_equal(
        imgs.feather_alpha(PIL.Image.fromarray(binary.astype(np.uint8) * 255), 0), binary.astype(float)
    )


def test_feather_paste_mixes_by_the_alpha():
    rng = np.random.default_rng(0)
    a, b = (rng.integers(0, 256, (20, 24, 3), dtype=np.uint8) for _ in range(2))
    mask = np.zeros((20, 24), np.uint8)
    mask[5:15, 6:18] = 255
    out = np.asarray(
        imgs.feather_paste(PIL.Image.fromarray(a), PIL.Image.fromarray(b), PIL.Image.fromarray(mask), 3), int
    )
    alpha = imgs.feather_alpha(PIL.Image.fromarray(mask), 3)[..., None]
    want = np.floor(a + alpha * (b.astype(float) - a) + 0.5)
    assert np.abs(out - want).max() == 0
    assert np.array_equal(out[0], a[0]) and np.array_equal(out[10, 12], b[10, 12])
