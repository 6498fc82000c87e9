"""A synthetic COCO-format folder for the evaluation's tests: real photos, hand-made polygon annotations."""

import json
from pathlib import Path

import numpy as np
import PIL.Image

CATEGORIES = [
    {"id": 1, "name": "person"},
    {"id": 9, "name": "boat"},
    {"id": 17, "name": "cat"},
    {"id": 18, "name": "dog"},
]
# image id → (skimage photo, size, annotations as (category id, polygons)); ids deliberately out of order
IMAGES = {
    42: (
        "coffee",
        (160, 120),
        [
            (18, [[20, 20, 70.9, 25, 60, 80, 25, 70]]),
            (17, [[100, 10, 150, 10, 150, 50], [110, 60, 140, 60, 125, 100]]),
        ],
    ),  # two parts
    7: ("astronaut", (120, 160), [(1, [[30, 30, 90, 30, 90, 150, 30, 150]]), "crowd", (9, [[5, 5, 40, 5, 20, 40]])]),
    139: ("chelsea", (150, 100), [(17, [[40, 20, 110, 20, 110, 90, 75, 50, 40, 90]])]),  # concave: hull ≠ polygon
    3: ("rocket", (100, 140), []),  # no annotations: still counted in the sorted image ids
}


def make_coco(root: Path) -> Path:
    from skimage import data

    (root / "annotations").mkdir(parents=True)
    (root / "val2017").mkdir()
    images, annotations = [], []
    for image_id, (name, size, anns) in IMAGES.items():
        file_name = f"{image_id:012d}.jpg"
        PIL.Image.fromarray(getattr(data, name)()).convert("RGB").resize(size).save(
            root / "val2017" / file_name, quality=95
        )
        images.append({"id": image_id, "file_name": file_name, "width": size[0], "height": size[1]})
        for ann in anns:
            if ann == "crowd":
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": image_id,
                        "category_id": 1,
                        "iscrowd": 1,
                        "segmentation": {"counts": [0, 10], "size": [size[1], size[0]]},
                    }
                )
            else:
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": image_id,
                        "category_id": ann[0],
                        "iscrowd": 0,
                        "segmentation": ann[1],
                    }
                )
    (root / "annotations" / "instances_val2017.json").write_text(
        json.dumps({"images": images, "annotations": annotations, "categories": CATEGORIES})
    )
    return root


def polygon_area_mask(points, size):
    """Independent rasterisation for checks: PIL's polygon fill of integer-truncated points."""
    from PIL import ImageDraw

    canvas = PIL.Image.new("L", size, 0)
    ImageDraw.Draw(canvas).polygon([tuple(p) for p in np.asarray(points, float).astype(int).reshape(-1, 2)], fill=255)
    return np.asarray(canvas) > 0
