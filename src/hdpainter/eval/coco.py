"""The paper's MSCOCO test set (docs/method.md §7): (image, instance) pairs from val2017, mask = convex hull of the
instance's polygons, prompt = the class name, image and mask resized to 512 on the long side.

Indexing follows the reference: `image_idx` indexes the sorted image ids of the annotation file, and
`segment_idx` that image's polygon annotations (crowd RLE ones left out) in file order.
"""

from __future__ import annotations

import csv
import json
import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import PIL.Image

from .. import images as imgs
from ..defaults import EVAL_SIZE  # the long side the paper evaluates at (no super-resolution)
from ..errors import HDPainterError

SUBSET = "val2017"


@dataclass(frozen=True)
class Pair:
    image_idx: int
    segment_idx: int

    @property
    def name(self) -> str:
        return f"{self.image_idx}_{self.segment_idx}"


@dataclass
class Sample:
    """One pair, ready to inpaint: the image and mask at EVAL_SIZE, and the class name as the prompt."""

    pair: Pair
    image_id: int
    image: PIL.Image.Image
    mask: PIL.Image.Image  # 'L', soft-edged as the reference's bicubic resize leaves it; > 127 is inpainted
    prompt: str


class Coco:
    """A local COCO folder: annotations/instances_val2017.json and val2017/."""

    def __init__(self, root: str | os.PathLike, subset: str = SUBSET):
        self.root = Path(root)
        path = self.root / "annotations" / f"instances_{subset}.json"
        if not path.is_file():
            raise HDPainterError(f"{path} not found: --coco must be a COCO folder with annotations/ and {subset}/")
        try:
            data = json.loads(path.read_text())
            labels = {c["id"]: c["name"] for c in data["categories"]}
            self.files = {image["id"]: self.root / subset / image["file_name"] for image in data["images"]}
            self.polygons: dict[int, list[dict]] = defaultdict(list)
            for ann in data["annotations"]:
                if isinstance(ann["segmentation"], list):  # polygons; crowd regions are RLE and left out
                    self.polygons[ann["image_id"]].append(
                        {"label": labels[ann["category_id"]], "segmentation": ann["segmentation"]}
                    )
        except (ValueError, KeyError, TypeError) as exc:
            raise HDPainterError(f"{path} is not a COCO instances file: {type(exc).__name__}: {exc}") from None
        self.image_ids = sorted(self.files)

    def all_pairs(self) -> list[Pair]:
        return [Pair(i, s) for i, image_id in enumerate(self.image_ids) for s in range(len(self.polygons[image_id]))]

    def check(self, pair: Pair) -> None:
        if not 0 <= pair.image_idx < len(self.image_ids):
            raise HDPainterError(
                f"pair {pair.name}: image_idx {pair.image_idx} is out of 0..{len(self.image_ids) - 1}"
            )
        count = len(self.polygons[self.image_ids[pair.image_idx]])
        if not 0 <= pair.segment_idx < count:
            raise HDPainterError(f"pair {pair.name}: segment_idx {pair.segment_idx} is out of 0..{count - 1}")

    def sample(self, pair: Pair, hull: bool = True, size: int = EVAL_SIZE) -> Sample:
        self.check(pair)
        image_id = self.image_ids[pair.image_idx]
        annotation = self.polygons[image_id][pair.segment_idx]
        image = imgs.load_image(self.files[image_id])
        mask = instance_mask(annotation["segmentation"], image.size, hull)
        target = imgs.working_size(image.size, size)
        return Sample(
            pair,
            image_id,
            image.resize(target, PIL.Image.BICUBIC),
            mask.resize(target, PIL.Image.BICUBIC),
            annotation["label"],
        )


def instance_mask(segmentation: list[list[float]], size: tuple[int, int], hull: bool = True) -> PIL.Image.Image:
    """The instance's mask at the image's size: the convex hull of all its polygons' points (the paper's),
    or the polygons themselves; coordinates truncated to integers and filled as OpenCV draws contours."""
    import cv2

    contours = [np.asarray(polygon, dtype=np.float64).astype(np.int32).reshape(-1, 2) for polygon in segmentation]
    if hull:
        contours = [cv2.convexHull(np.concatenate(contours))]
    canvas = np.zeros((size[1], size[0]), np.uint8)
    cv2.drawContours(canvas, contours, -1, 255, thickness=-1)
    return PIL.Image.fromarray(canvas, "L")


def read_pairs(path: str | os.PathLike) -> list[Pair]:
    """The reference's list format: a CSV with columns image_idx, segment_idx."""
    try:
        with open(path, newline="") as handle:
            rows = list(csv.DictReader(handle))
    except OSError as exc:
        raise HDPainterError(f"cannot read the pair list {path}: {exc.strerror}") from None
    pairs = []
    for number, row in enumerate(rows, start=2):
        try:
            pairs.append(Pair(int(row["image_idx"]), int(row["segment_idx"])))
        except (KeyError, TypeError, ValueError):
            raise HDPainterError(f"{path}, line {number}: expected integer columns image_idx,segment_idx") from None
    if not pairs:
        raise HDPainterError(f"{path} lists no pairs")
    return pairs


def write_pairs(pairs: list[Pair], path: str | os.PathLike) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image_idx", "segment_idx"])
        writer.writerows((p.image_idx, p.segment_idx) for p in pairs)


def sample_pairs(coco: Coco, count: int, seed: int = 0) -> list[Pair]:
    """`count` distinct pairs drawn uniformly from all polygon instances, the same for the same folder and seed."""
    candidates = coco.all_pairs()
    if count > len(candidates):
        raise HDPainterError(
            f"asked for {count} pairs but the annotations hold only {len(candidates)} polygon instances"
        )
    order = np.random.default_rng(seed).permutation(len(candidates))[:count]
    return [candidates[i] for i in order]


def mask_box(mask: PIL.Image.Image) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1), end exclusive: every pixel above 0 counts, the soft edge included (as the reference)."""
    ys, xs = np.nonzero(np.asarray(mask.convert("L")))
    if len(xs) == 0:
        raise HDPainterError("the mask is empty: no box to crop")
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def square_crop(image: PIL.Image.Image, box: tuple[int, int, int, int], size: int = 224) -> PIL.Image.Image:
    """The box cropped, padded with black to a square (the odd pixel after), resized bicubic to `size`."""
    import cv2

    x0, y0, x1, y1 = box
    crop = np.asarray(image.convert("RGB"))[y0:y1, x0:x1]
    h, w = crop.shape[:2]
    side = max(h, w)
    dy, dx = side - h, side - w
    padded = np.pad(crop, ((dy // 2, dy - dy // 2), (dx // 2, dx - dx // 2), (0, 0)))
    return PIL.Image.fromarray(cv2.resize(padded, (size, size), interpolation=cv2.INTER_CUBIC))
