"""A synthetic world of coloured shapes: scenes, captions, masks, and a deterministic scorer.

Scenes hold a few axis-aligned shapes (circle, square, upright triangle) in four saturated colours on a
pale, softly graded background. `training_example` builds examples as real inpainting models are trained
(the training script's `--data captions`): a scene of 2–4 shapes, a caption of the *whole* scene ("a red
circle and a blue square") and a random mask (over a shape, part of one, empty background, or a random
blob), so the caption often names what is outside the mask.
Held-out prompts name one shape ("a red circle"). The scorer reads the colour and shape inside a mask from
pixel statistics alone: saturated pixels vote for the nearest colour, and the largest blob of that colour is
a square, circle or triangle by how much of its box it fills (1, π/4 ≈ 0.79, 1/2).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import PIL.Image
from PIL import ImageDraw

SIZE = 256
COLORS = {"red": (214, 40, 40), "green": (40, 160, 60), "blue": (40, 80, 220), "yellow": (235, 200, 35)}
SHAPES = ("circle", "square", "triangle")
RADIUS = (22, 46)  # half the side of a shape's box, in pixels at SIZE
SATURATION = 90  # max − min channel above this: a shape's pixel (the background stays below 40)
MIN_SHAPE_PIXELS = 60  # fewer saturated pixels than this in a mask: no shape there
SQUARE_FILL, CIRCLE_FILL = 0.89, 0.64  # fill-ratio boundaries: square above, circle between, triangle below
TRAIN_SHAPES = (2, 4)  # shapes per training scene
MASK_KINDS = ("object", "part", "background", "blob")  # training masks, drawn with MASK_SHARES
MASK_SHARES = (0.45, 0.15, 0.2, 0.2)
OFFSCREEN = (1, 2)  # shapes a caption names beyond the picture, when it names any (training_example's offscreen)
CAPTION_COMMA, CAPTION_AND = ", ", " and "  # what a caption puts between the shapes it names
PART_MARGIN = 4  # a part-of-shape mask reaches this many px beyond the shape on its three other sides
# where a held-out case's mask lies; the first three ask for a shape absent from the scene, the last for the
# shape under the mask (the prompt names only it, the scene holds others)
PLACEMENTS = ("background", "next to", "over", "masked object")
CASE_SEED = 1_000_003  # held-out cases: far from the training seeds


@dataclass(frozen=True)
class Shape:
    shape: str
    color: str
    cx: int
    cy: int
    r: int

    @property
    def prompt(self) -> str:
        return f"a {self.color} {self.shape}"

    @property
    def box(self) -> tuple[int, int, int, int]:
        """(x0, y0, x1, y1), end exclusive."""
        return self.cx - self.r, self.cy - self.r, self.cx + self.r, self.cy + self.r


def draw_shape(draw: ImageDraw.ImageDraw, shape: Shape, fill) -> None:
    x0, y0, x1, y1 = shape.box
    if shape.shape == "circle":
        draw.ellipse((x0, y0, x1 - 1, y1 - 1), fill=fill)
    elif shape.shape == "square":
        draw.rectangle((x0, y0, x1 - 1, y1 - 1), fill=fill)
    else:
        draw.polygon([(shape.cx, y0), (x1 - 1, y1 - 1), (x0, y1 - 1)], fill=fill)


def background(rng: np.random.Generator, size: int = SIZE) -> np.ndarray:
    """A pale two-tone vertical gradient with a little noise: (size, size, 3) float."""
    top, bottom = (rng.uniform(170, 240) + rng.uniform(-18, 18, 3) for _ in range(2))
    t = np.linspace(0.0, 1.0, size)[:, None, None]
    image = top * (1 - t) + bottom * t + rng.normal(0, 2.0, (size, size, 3))
    return np.broadcast_to(image, (size, size, 3)).copy()


def render(shapes: list[Shape], base: np.ndarray) -> PIL.Image.Image:
    image = PIL.Image.fromarray(np.clip(base + 0.5, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for shape in shapes:
        draw_shape(draw, shape, COLORS[shape.color])
    return image


def random_shapes(rng: np.random.Generator, count: int, size: int = SIZE, avoid=()) -> list[Shape]:
    """`count` non-overlapping shapes (boxes 6 px apart), fully inside the image."""
    shapes = list(avoid)
    for _ in range(200 * count):
        if len(shapes) == len(avoid) + count:
            break
        r = int(rng.integers(RADIUS[0], RADIUS[1] + 1))
        cx, cy = (int(v) for v in rng.integers(r + 4, size - r - 4, 2))
        candidate = Shape(str(rng.choice(SHAPES)), str(rng.choice(list(COLORS))), cx, cy, r)
        if all(abs(cx - s.cx) > r + s.r + 6 or abs(cy - s.cy) > r + s.r + 6 for s in shapes):
            shapes.append(candidate)
    return shapes[len(avoid) :]


@dataclass
class Scene:
    image: PIL.Image.Image
    shapes: list[Shape]
    base: np.ndarray  # the background alone


def random_scene(rng: np.random.Generator, size: int = SIZE, count: tuple[int, int] = (1, 3)) -> Scene:
    base = background(rng, size)
    shapes = random_shapes(rng, int(rng.integers(count[0], count[1] + 1)), size)
    return Scene(render(shapes, base), shapes, base)


def box_mask(box: tuple[int, int, int, int], size: int = SIZE, grow: int = 0) -> PIL.Image.Image:
    x0, y0, x1, y1 = box
    mask = np.zeros((size, size), np.uint8)
    mask[max(y0 - grow, 0) : min(y1 + grow, size), max(x0 - grow, 0) : min(x1 + grow, size)] = 255
    return PIL.Image.fromarray(mask, "L")


def box_grown(box: tuple[int, int, int, int], grow: int) -> tuple[int, int, int, int]:
    x0, y0, x1, y1 = box
    return x0 - grow, y0 - grow, x1 + grow, y1 + grow


def free_box(rng: np.random.Generator, shapes: list[Shape], r: int, size: int = SIZE, margin: int = 4):
    """A square box of half-side r that touches no shape (None if none is found)."""
    for _ in range(300):
        cx, cy = (int(v) for v in rng.integers(r + margin, size - r - margin, 2))
        if all(abs(cx - s.cx) > r + s.r + margin or abs(cy - s.cy) > r + s.r + margin for s in shapes):
            return cx - r, cy - r, cx + r, cy + r
    return None


def caption(shapes: list[Shape], rng: np.random.Generator | None = None) -> str:
    """The whole scene in words, in random order when `rng` is given (caption_order): "a red circle, a blue
    square and a green triangle"."""
    words = [shape.prompt for shape in caption_order(shapes, rng)]
    return words[0] if len(words) == 1 else CAPTION_COMMA.join(words[:-1]) + CAPTION_AND + words[-1]


def caption_order(shapes: list[Shape], rng: np.random.Generator | None = None) -> list[Shape]:
    """`shapes` in the order a caption names them: a random permutation when `rng` is given, else as they are."""
    return [shapes[int(i)] for i in rng.permutation(len(shapes))] if rng is not None else list(shapes)


def blob_mask(rng: np.random.Generator, size: int = SIZE) -> PIL.Image.Image:
    """A random blob: the union of 2–4 ellipses (radii 10–36 px) around a random point, wherever it falls."""
    mask = PIL.Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(mask)
    cx, cy = (int(v) for v in rng.integers(40, size - 40, 2))
    for _ in range(int(rng.integers(2, 5))):
        x, y = (int(v) for v in rng.integers(-28, 29, 2))
        rx, ry = (int(v) for v in rng.integers(10, 37, 2))
        draw.ellipse((cx + x - rx, cy + y - ry, cx + x + rx, cy + y + ry), fill=255)
    return mask


def random_mask(rng: np.random.Generator, scene: Scene, kind: str, size: int = SIZE) -> PIL.Image.Image:
    """A training mask of `kind` (MASK_KINDS): a shape's box grown by 2–24 px; a part of a shape (a strip of
    ½–1 of its box from one side, PART_MARGIN px beyond it elsewhere); an empty background box (a blob when no
    box fits); or a random blob."""
    if kind == "background":
        r = int(rng.integers(RADIUS[0], RADIUS[1] + 8))
        box = free_box(rng, scene.shapes, r, size)
        return box_mask(box, size) if box is not None else blob_mask(rng, size)
    if kind == "blob":
        return blob_mask(rng, size)
    shape = scene.shapes[int(rng.integers(len(scene.shapes)))]
    if kind == "object":
        return box_mask(shape.box, size, grow=int(rng.integers(2, 25)))
    if kind != "part":
        raise ValueError(f"unknown mask kind {kind!r}: one of {', '.join(MASK_KINDS)}")
    x0, y0, x1, y1 = shape.box
    cut = int(rng.integers(shape.r // 2, shape.r + 1))
    m = PART_MARGIN
    box = [
        (x0 - m, y0 - m, x0 + cut, y1 + m),
        (x1 - cut, y0 - m, x1 + m, y1 + m),
        (x0 - m, y0 - m, x1 + m, y0 + cut),
        (x0 - m, y1 - cut, x1 + m, y1 + m),
    ][int(rng.integers(4))]
    return box_mask(box, size)


def training_example(
    rng: np.random.Generator, size: int = SIZE, full_mask: float = 0.0, offscreen: float = 0.0
) -> tuple[PIL.Image.Image, PIL.Image.Image, str]:
    """(image, mask, caption) as real inpainting training sees them (captioned_example, the caption in words)."""
    image, mask, named = captioned_example(rng, size, full_mask, offscreen)
    return image, mask, caption(named)


def captioned_example(
    rng: np.random.Generator, size: int = SIZE, full_mask: float = 0.0, offscreen: float = 0.0
) -> tuple[PIL.Image.Image, PIL.Image.Image, list[Shape]]:
    """(image, mask, the shapes the caption names, in its order), as real inpainting training sees them: a scene
    of TRAIN_SHAPES shapes, a mask of a random kind, and the whole scene's caption whatever the mask covers. A
    `full_mask` share of the examples mask the whole image, as Stable Diffusion's inpainting models were trained
    ("in 25 % mask everything"): text-to-image examples, where each named shape has to be drawn somewhere, which
    its words can only steer by attending where it is drawn. With `full_mask` 0 no extra random number is drawn
    (the earlier examples exactly).

    An `offscreen` share of the captions also name OFFSCREEN shapes that are not in the picture (radius 0), as a
    photo's caption names what a training crop cut off: then a named shape that cannot be seen is not always
    under the mask, and the model learns, as real inpainting models do, that continuing the context is often
    right even when the caption names something it cannot see (prompt neglect). With `offscreen` 0 no extra
    random number is drawn."""
    scene = random_scene(rng, size, count=TRAIN_SHAPES)
    if full_mask and rng.random() < full_mask:
        mask = PIL.Image.new("L", (size, size), 255)
    else:
        kind = MASK_KINDS[int(rng.choice(len(MASK_KINDS), p=MASK_SHARES))]
        mask = random_mask(rng, scene, kind, size)
    named = scene.shapes
    if offscreen and rng.random() < offscreen:
        named = named + offscreen_shapes(rng, int(rng.integers(OFFSCREEN[0], OFFSCREEN[1] + 1)))
    return scene.image, mask, caption_order(named, rng)


def offscreen_shapes(rng: np.random.Generator, count: int) -> list[Shape]:
    """`count` shapes of random colour and kind that are not drawn (their position is left at 0: unused)."""
    return [Shape(str(rng.choice(SHAPES)), str(rng.choice(list(COLORS))), 0, 0, 0) for _ in range(count)]


def classify(image: PIL.Image.Image, mask: PIL.Image.Image | None = None) -> tuple[str | None, str | None]:
    """(colour, shape) of the dominant shape inside `mask` (the whole image if None), or (None, None)."""
    import cv2

    rgb = np.asarray(image.convert("RGB"), dtype=np.int32)
    inside = np.ones(rgb.shape[:2], bool) if mask is None else np.asarray(mask.convert("L")) > 127
    saturated = (rgb.max(-1) - rgb.min(-1) > SATURATION) & inside
    if saturated.sum() < MIN_SHAPE_PIXELS:
        return None, None
    nearest = nearest_color(rgb, saturated)
    votes = np.bincount(nearest[saturated], minlength=len(COLORS))
    color = int(votes.argmax())
    blob = (saturated & (nearest == color)).astype(np.uint8)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(blob, connectivity=8)
    if count < 2:
        return list(COLORS)[color], None
    largest = 1 + int(stats[1:, cv2.CC_STAT_AREA].argmax())
    area, w, h = (int(stats[largest, k]) for k in (cv2.CC_STAT_AREA, cv2.CC_STAT_WIDTH, cv2.CC_STAT_HEIGHT))
    if area < MIN_SHAPE_PIXELS:
        return list(COLORS)[color], None
    fill = area / float(w * h)
    shape = "square" if fill > SQUARE_FILL else "circle" if fill > CIRCLE_FILL else "triangle"
    return list(COLORS)[color], shape


def nearest_color(rgb: np.ndarray, where: np.ndarray) -> np.ndarray:
    """Index into COLORS of the nearest palette colour (squared RGB distance) at `where`; −1 elsewhere."""
    palette = np.array(list(COLORS.values()), np.int32)
    nearest = np.full(rgb.shape[:2], -1, np.int64)
    nearest[where] = np.argmin(((rgb[where][:, None, :] - palette) ** 2).sum(-1), axis=-1)
    return nearest


def color_fraction(image: PIL.Image.Image, mask: PIL.Image.Image, color: str) -> float:
    """Share of the mask's pixels that are saturated and nearest to `color`."""
    rgb = np.asarray(image.convert("RGB"), dtype=np.int32)
    inside = np.asarray(mask.convert("L")) > 127
    saturated = (rgb.max(-1) - rgb.min(-1) > SATURATION) & inside
    hit = saturated & (nearest_color(rgb, saturated) == list(COLORS).index(color))
    return float(hit.sum()) / max(int(inside.sum()), 1)


@dataclass
class NeglectCase:
    """A held-out case built to provoke prompt neglect (the faithfulness benchmark's and the training check's)."""

    index: int
    image: PIL.Image.Image
    mask: PIL.Image.Image
    prompt: str
    color: str
    shape: str
    placement: str


def ideal_completion(case: NeglectCase) -> PIL.Image.Image:
    """The answer a faithful model would give: the mask filled with the background (each row's mean over its
    unmasked, unsaturated pixels: the background is a vertical gradient) and the prompted shape drawn at the
    mask's centre, 6 px inside its box. Pixels outside the mask are the case's own."""
    rgb = np.asarray(case.image.convert("RGB"), dtype=np.float64).copy()
    inside = np.asarray(case.mask.convert("L")) > 127
    plain = (rgb.max(-1) - rgb.min(-1) <= SATURATION) & ~inside
    ys, xs = np.nonzero(inside)
    everywhere = rgb[plain].mean(0)
    for y in range(ys.min(), ys.max() + 1):
        row = plain[y]
        rgb[y, inside[y]] = rgb[y, row].mean(0) if row.any() else everywhere
    image = PIL.Image.fromarray(np.clip(rgb + 0.5, 0, 255).astype(np.uint8))
    x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
    r = int(min(x1 - x0, y1 - y0)) // 2 - 6
    shape = Shape(case.shape, case.color, int(x0 + x1) // 2, int(y0 + y1) // 2, r)
    draw_shape(ImageDraw.Draw(image), shape, COLORS[case.color])
    return image


def neglect_cases(count: int, seed: int = CASE_SEED, placements: tuple[str, ...] = PLACEMENTS) -> list[NeglectCase]:
    """`count` cases, `placements` in turn: mask on empty background, touching a shape's box, or covering a shape,
    with a prompt whose colour and shape both differ from every shape in the scene; or ("masked object") covering
    one of 2–3 shapes, with a prompt that names only that shape. The first three placements alone give the case
    set of the first toy world (before "masked object" was added)."""
    rng = np.random.default_rng(seed)
    cases = []
    while len(cases) < count:
        placement = placements[len(cases) % len(placements)]
        if placement == "masked object":
            scene = random_scene(rng, count=(2, 3))
            target = scene.shapes[0]
            if len(scene.shapes) < 2:
                continue
            box = tuple(int(np.clip(v, 0, SIZE)) for v in box_grown(target.box, 6))
            mask = box_mask(box)
            cases.append(
                NeglectCase(len(cases), scene.image, mask, target.prompt, target.color, target.shape, placement)
            )
            continue
        scene = random_scene(rng, count=(1, 3))
        colors = [c for c in COLORS if all(s.color != c for s in scene.shapes)]
        shapes = [s for s in SHAPES if all(x.shape != s for x in scene.shapes)]
        if not colors or not shapes:
            continue
        color, shape = str(rng.choice(colors)), str(rng.choice(shapes))
        r = 40
        if placement == "background":
            box = free_box(rng, scene.shapes, r, margin=8)
        elif placement == "over":  # the mask covers the first shape with a margin
            box = box_grown(scene.shapes[0].box, 6)
        else:  # next to: the mask's box touches the first shape's box on one side
            target = scene.shapes[0]
            side = int(rng.integers(4))
            dx, dy = [(1, 0), (-1, 0), (0, 1), (0, -1)][side]
            cx, cy = target.cx + dx * (target.r + r), target.cy + dy * (target.r + r)
            box = (cx - r, cy - r, cx + r, cy + r)
            if min(box) < 0 or max(box) > SIZE:
                box = None
        if box is None:
            continue
        box = tuple(int(np.clip(v, 0, SIZE)) for v in box)
        cases.append(
            NeglectCase(len(cases), scene.image, box_mask(box), f"a {color} {shape}", color, shape, placement)
        )
    return cases
