"""`hdpainter demo`: a toy scene, a mask over empty background, the shipped toy model paints the prompt."""

from __future__ import annotations

import numpy as np
import PIL.Image
from PIL import ImageDraw

from ..errors import HDPainterError
from . import world

DEMO_PROMPT = "a red circle"
TOY_WORKING_SIZE = world.SIZE  # the toy model's own resolution (256 px; the SD models' is 512)


def parse_prompt(prompt: str) -> tuple[str, str]:
    """('red', 'circle') from "a red circle"; the toy world knows only its four colours and three shapes."""
    words = prompt.lower().split()
    colors = [w for w in words if w in world.COLORS]
    shapes = [w for w in words if w in world.SHAPES]
    if len(colors) != 1 or len(shapes) != 1:
        raise HDPainterError(
            f"the toy world paints one of {', '.join(world.COLORS)} × {', '.join(world.SHAPES)}, "
            f"e.g. 'a red circle'; got {prompt!r}"
        )
    return colors[0], shapes[0]


def demo_scene(seed: int = 0) -> tuple[PIL.Image.Image, PIL.Image.Image]:
    """A seeded scene of 1–2 shapes and a square mask (side 84 px) over empty background."""
    rng = np.random.default_rng(seed)
    for _ in range(100):
        scene = world.random_scene(rng, count=(1, 2))
        box = world.free_box(rng, scene.shapes, 42, margin=10)
        if box is not None:
            return scene.image, world.box_mask(box)
    raise HDPainterError(f"no free space for a mask in scene {seed}")  # pragma: no cover - 100 tries


def before_after(
    image: PIL.Image.Image,
    mask: PIL.Image.Image,
    result: PIL.Image.Image,
    prompt: str,
    found: tuple[str | None, str | None],
) -> PIL.Image.Image:
    """Input with the mask outlined, beside the result, with the prompt and what the scorer sees."""
    w, h = image.size
    label = 20
    sheet = PIL.Image.new("RGB", (2 * w + 12, h + 2 * label), "white")
    left = image.convert("RGB").copy()
    ys, xs = np.nonzero(np.asarray(mask) > 127)
    ImageDraw.Draw(left).rectangle(
        (int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())), outline=(0, 0, 0), width=2
    )
    sheet.paste(left, (0, label))
    sheet.paste(result.convert("RGB"), (w + 12, label))
    draw = ImageDraw.Draw(sheet)
    draw.text((4, 4), "input and mask", fill="black")
    draw.text((w + 16, 4), f'"{prompt}"', fill="black")
    seen = " ".join(v for v in found if v) or "no shape"
    draw.text((w + 16, h + label + 4), f"scorer sees: {seen}", fill="black")
    return sheet
