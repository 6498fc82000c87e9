"""Batch inpainting: a folder of image + mask pairs or a CSV/JSONL manifest, resumable, one process or many.

Items are split across torch.distributed ranks (`torchrun` / `accelerate launch` start the processes);
each output is written atomically, so a re-run skips every finished item and redoes the rest.
"""

from __future__ import annotations

import csv
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .errors import HDPainterError
from .outputs import TEMP_SUFFIX, output_paths, save_image

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
MANIFEST_FILES = ("image", "mask", "prompt")  # a manifest's own columns; the others are options of the request
RESULT_KEYS = ("model", "upscaler", "sample", "unchanged", "mask_color", "mask_tolerance")  # a result's metadata
MASK_SUFFIX = "_mask"  # x.png is inpainted with x_mask.png (any image suffix)
OUTPUT_SUFFIX = ".png"


@dataclass
class BatchItem:
    """One row of work; `error` is set when the row itself is unusable (reported, not fatal)."""

    name: str  # output stem: DIR/name.png
    image: Path | None
    mask: Path | None
    prompt: str | None = None
    options: dict = field(default_factory=dict)  # a manifest row's own option values, by key (seed, steps, …)
    error: str | None = None
    ignored: list[str] = field(default_factory=list)  # the row's columns that are not options (reported, not used)


@dataclass
class BatchSummary:
    written: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)


def collect_items(source: str | os.PathLike, prompt: str | None) -> list[BatchItem]:
    """The items of a folder (x.png + x_mask.png, one prompt for all) or a manifest (.csv / .jsonl), in fixed order."""
    path = Path(source)
    if path.is_dir():
        if prompt is None:
            raise HDPainterError("a folder batch needs --prompt (or use a manifest with a prompt column)")
        items = _folder_items(path, prompt)
    elif path.is_file() and path.suffix.lower() in (".csv", ".jsonl"):
        items = _manifest_items(path, prompt)
    elif path.exists():
        raise HDPainterError(f"{source} is neither a folder nor a .csv/.jsonl manifest")
    else:
        raise HDPainterError(f"batch input not found: {source}")
    if not items:
        raise HDPainterError(f"no images found in {source}")
    seen: dict[str, int] = {}
    for k, item in enumerate(items):
        if item.name in seen:
            raise HDPainterError(
                f"items {seen[item.name] + 1} and {k + 1} would both write {item.name}{OUTPUT_SUFFIX}: rename one"
            )
        seen[item.name] = k
    return items


def _folder_items(folder: Path, prompt: str) -> list[BatchItem]:
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    items = []
    for image in files:
        if image.stem.endswith(MASK_SUFFIX):
            continue
        masks = [image.with_name(image.stem + MASK_SUFFIX + s) for s in IMAGE_SUFFIXES]
        mask = next((m for m in masks if m.exists()), None)
        error = None if mask else f"no mask {image.stem}{MASK_SUFFIX}.png (or another image suffix) next to it"
        items.append(BatchItem(image.stem, image, mask, prompt, error=error))
    return items


def _manifest_items(manifest: Path, prompt: str | None) -> list[BatchItem]:
    try:
        text = manifest.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise HDPainterError(f"cannot read manifest {manifest}: {exc}") from None
    if manifest.suffix.lower() == ".csv":
        rows = list(csv.DictReader(text.splitlines()))
    else:
        rows = []
        for number, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    row = {"_error": f"line {number} is not JSON: {exc.msg}"}
                rows.append(row if isinstance(row, dict) else {"_error": f"line {number} is not a JSON object"})
    from .request import option_index

    options = option_index()
    items = []
    for number, row in enumerate(rows, 1):
        image, mask = row.get("image") or "", row.get("mask") or ""
        item = BatchItem(
            Path(image).stem or f"row-{number}",
            manifest.parent / image if image else None,
            manifest.parent / mask if mask else None,
            row.get("prompt") or prompt,
            error=row.get("_error"),
        )
        item.options = {k: v for k, v in row.items() if k in options and _given(options[k], v)}
        item.ignored = [k for k in row if k not in options and k not in MANIFEST_FILES + RESULT_KEYS + ("_error",)]
        if item.error is None and (not image or not mask):
            item.error = f"row {number}: image and mask are both needed"
        elif item.error is None and not item.prompt:
            item.error = f"row {number}: no prompt (give a prompt column or --prompt)"
        items.append(item)
    return items


def _given(opt, value) -> bool:
    """Whether a manifest cell sets its option: an empty cell falls back to the command line, except for free
    text (an empty negative prompt means none)."""
    if value is None:
        return False
    return value != "" or (opt.type is str and opt.choices is None)


def finished(item: BatchItem, out_dir: Path, num_samples: int) -> bool:
    return all(p.exists() for p in output_paths(str(out_dir / f"{item.name}{OUTPUT_SUFFIX}"), num_samples))


def remove_stale_temporaries(item: BatchItem, out_dir: Path) -> None:
    """Half-written files of a killed run (`.x.png.XXXX.tmp`): never outputs, but clutter."""
    for stale in out_dir.glob(f".{item.name}*{OUTPUT_SUFFIX}.*{TEMP_SUFFIX}"):
        stale.unlink(missing_ok=True)


def run_items(
    items: list[BatchItem],
    out_dir: Path,
    process: Callable[[BatchItem], tuple[list, list[dict]]],
    samples: Callable[[BatchItem], int] = lambda item: 1,
    rank: int = 0,
    world: int = 1,
    progress: bool = True,
) -> BatchSummary:
    """Run this rank's share of `items` (every `world`-th), skipping finished ones; a failing item is recorded.

    `process(item)` returns the item's images and each one's metadata; `samples(item)` how many files it writes.
    """
    from tqdm import tqdm

    summary = BatchSummary()
    mine = items[rank::world]
    bar = tqdm(
        mine,
        desc=f"batch (rank {rank}/{world})" if world > 1 else "batch",
        unit="item",
        disable=not progress,
        file=sys.stderr,
    )
    for item in bar:
        remove_stale_temporaries(item, out_dir)
        if not item.error and finished(item, out_dir, samples(item)):
            summary.skipped.append(item.name)
            continue
        started = time.perf_counter()
        try:
            if item.error:
                raise HDPainterError(item.error)
            images, metadata = process(item)
            paths = output_paths(str(out_dir / f"{item.name}{OUTPUT_SUFFIX}"), len(images))
            for image, meta, path in zip(images, metadata, paths):
                save_image(image, path, meta)
        except HDPainterError as exc:
            summary.failed.append((item.name, str(exc)))
        except (MemoryError, KeyboardInterrupt):
            raise
        except Exception as exc:  # one broken item must not stop the others
            summary.failed.append((item.name, f"{type(exc).__name__}: {exc}".replace("\n", " ")[:300]))
        else:
            summary.written.append(item.name)
            bar.write(
                f"{out_dir / item.name}{OUTPUT_SUFFIX}  ({time.perf_counter() - started:.1f} s)", file=sys.stderr
            )
    return summary
