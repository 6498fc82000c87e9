"""`hdpainter eval`: generate every (pair, method) of a COCO test set, score it, and write the table.

A run folder holds everything and makes the run resumable:
    pairs.csv                    the pairs, in the reference's format
    results/METHOD/NAME.png      each method's inpainting of pair NAME (image_idx_segment_idx), written atomically
    scores/NAME.json             that pair's {method: {metric: value}}, written atomically
    table.md, table.csv, table.json, contact_sheet.png
Under torchrun / accelerate launch each process takes every N-th pair (all its methods) and rank 0 merges
the score files once all processes are done, so each pair is generated and scored exactly once.
"""

from __future__ import annotations

import csv
import json
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import PIL.Image

from ..defaults import EVAL_OPTIONS, PAPER_METHODS
from ..errors import HDPainterError
from ..outputs import save_image
from ..request import InpaintRequest, OptionError
from . import metrics as M
from .coco import EVAL_SIZE, Coco, Pair, read_pairs, sample_pairs, write_pairs
from .stats import mean_interval, rate_interval

METHODS = PAPER_METHODS  # the paper's Table 2
PAPER_PAIRS = 10000
PAPER_TABLE = {  # docs/method.md §7 / the paper's Table 2: SD 2 inpainting, 10,000 pairs
    "baseline": (24.86, 51.9),
    "painta": (25.24, 52.2),
    "rasg": (25.85, 62.0),
    "painta+rasg": (26.34, 61.4),
}


@dataclass
class EvalConfig:
    coco: str
    out: str
    methods: list[str] = field(default_factory=lambda: list(METHODS))
    model: str = "sd2"
    pairs_file: str | None = None  # the reference's CSV; None: our seeded sampler
    sample: int | None = None  # pairs drawn by the sampler; None: the paper's 10,000 (all there are, if fewer)
    sample_seed: int = 0
    limit: int | None = None  # only the first N pairs
    hull: bool = True  # False: the exact polygons
    size: int = EVAL_SIZE
    # generation options by key (seed, steps, rasg_eta, …) over the reference's evaluation protocol (EVAL_OPTIONS:
    # η 0.25, no negative or positive prompt); the seed is the same for every pair, as the reference's
    options: dict = field(default_factory=dict)
    metrics: list[str] = field(default_factory=lambda: list(M.DEFAULT_METRICS))
    clip_model: str = M.CLIP_MODEL
    detector: str = M.DETECTOR
    pickscore_model: str = M.PICKSCORE_MODEL
    pickscore_processor: str = M.PICKSCORE_PROCESSOR
    aesthetic_clip: str = M.AESTHETIC_CLIP
    aesthetic_head: str = M.AESTHETIC_HEAD
    pick_reference: str | None = None  # PickScore's reference method; None: the first of `methods`
    contact_sheet: int = 6  # pairs shown in contact_sheet.png (0: none)
    device: str | None = None
    dtype: str | None = None
    local_files_only: bool = False
    progress: bool = True

    def check(self) -> None:
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown or not self.methods:
            raise HDPainterError(
                f"unknown method {unknown[0] if unknown else '(none)'!r}: use some of {', '.join(METHODS)}"
            )
        if len(set(self.methods)) != len(self.methods):
            raise HDPainterError("a method is listed twice in --methods")
        if self.limit is not None and self.limit < 1:
            raise HDPainterError(f"--limit must be at least 1, got {self.limit}")
        if self.sample is not None and self.sample < 1:
            raise HDPainterError(f"--sample must be at least 1, got {self.sample}")
        if self.reference not in self.methods:
            raise HDPainterError(f"--pick-reference {self.reference!r} is not among --methods")
        try:
            self.request(self.methods[0], "").validate()
        except OptionError as exc:  # the evaluation's working size is its --size
            flag = "--size" if exc.option.key == "working_size" else exc.option.flag
            raise HDPainterError(f"{flag} {exc.detail}") from None
        M.make_metrics(self.metrics)  # unknown metric names fail here

    def request(self, method: str, prompt: str) -> InpaintRequest:
        """The generation request of one (pair, method): the protocol's options, then this run's."""
        return InpaintRequest.from_options(
            EVAL_OPTIONS | self.options | dict(prompt=prompt, method=method, working_size=self.size)
        )

    @property
    def reference(self) -> str:
        return self.pick_reference or self.methods[0]


@dataclass
class Failure:
    name: str
    message: str

    @classmethod
    def of(cls, name: str, exc: Exception) -> Failure:
        if isinstance(exc, HDPainterError):
            return cls(name, str(exc))
        return cls(name, f"{type(exc).__name__}: {exc}".replace("\n", " ")[:300])


def choose_pairs(config: EvalConfig, coco: Coco) -> list[Pair]:
    if config.pairs_file:
        pairs = read_pairs(config.pairs_file)
    else:
        count = config.sample if config.sample is not None else min(PAPER_PAIRS, len(coco.all_pairs()))
        pairs = sample_pairs(coco, count, config.sample_seed)
    pairs = pairs[: config.limit] if config.limit else pairs
    for pair in pairs:
        coco.check(pair)
    return pairs


def result_path(out: Path, method: str, pair: Pair) -> Path:
    return out / "results" / method.replace("+", "_") / f"{pair.name}.png"


def score_path(out: Path, pair: Pair) -> Path:
    return out / "scores" / f"{pair.name}.json"


def write_json(data, path: Path) -> None:
    """Atomically: a temporary file in the same folder, then rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(data, handle, indent=1, sort_keys=True)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def _bar(items, desc: str, config: EvalConfig, rank: int, world: int):
    from tqdm import tqdm

    return tqdm(
        items,
        desc=f"{desc} (rank {rank}/{world})" if world > 1 else desc,
        unit="pair",
        disable=not config.progress,
        file=sys.stderr,
    )


def generate(
    config: EvalConfig, coco: Coco, pairs: list[Pair], out: Path, device, dtype=None, rank=0, world=1
) -> list[Failure]:
    """Each method's result for each pair not yet done, with the reference's protocol: the stage-1 output
    at the evaluation size (the whole decoded image, no super-resolution, no blending)."""
    from ..models import load_inpaint_pipeline
    from ..painter import stage1_arguments

    todo = [p for p in pairs if not all(result_path(out, m, p).exists() for m in config.methods)]
    if not todo:
        return []
    pipe = load_inpaint_pipeline(config.model, device=device, dtype=dtype, local_files_only=config.local_files_only)
    pipe.set_progress_bar_config(disable=True)
    failures = []
    for pair in _bar(todo, "generate", config, rank, world):
        try:
            sample = coco.sample(pair, config.hull, config.size)
            for method in config.methods:
                path = result_path(out, method, pair)
                if path.exists():
                    continue
                path.parent.mkdir(parents=True, exist_ok=True)
                request = config.request(method, sample.prompt)
                image = pipe(sample.prompt, sample.image, sample.mask, **stage1_arguments(request)).images[0]
                meta = request.metadata(groups=("stage 1", "guidance"))  # no stage 2 in the protocol
                save_image(image, path, meta | {"pair": pair.name, "image_id": sample.image_id, "model": config.model})
        except (MemoryError, KeyboardInterrupt):
            raise
        except Exception as exc:  # one broken pair must not stop the others
            failures.append(Failure.of(pair.name, exc))
    del pipe
    return failures


def needs_scores(path: Path, methods: list[str], names: list[str], reference: str) -> bool:
    try:
        done = json.loads(path.read_text())
    except (OSError, ValueError):
        return True
    if "pickscore" in names and done.get("_pickscore_reference") != reference:
        return True  # preferences against another method: all of them again
    return any(name not in done.get(method, {}) for method in methods for name in names)


def score(config: EvalConfig, coco: Coco, pairs: list[Pair], out: Path, device, rank=0, world=1) -> list[Failure]:
    """Every metric of every pair whose score file lacks one; earlier values of other methods/metrics are kept."""
    metric_list = metric_objects(config)
    names = [m.name for m in metric_list]
    todo = [
        p
        for p in pairs
        if all(result_path(out, m, p).exists() for m in config.methods)
        and needs_scores(score_path(out, p), config.methods, names, config.reference)
    ]
    if not todo:
        return []
    for metric in metric_list:
        metric.load(device, config.local_files_only)
    failures = []
    for pair in _bar(todo, "score", config, rank, world):
        try:
            sample = coco.sample(pair, config.hull, config.size)
            results = {}
            for method in config.methods:
                with PIL.Image.open(result_path(out, method, pair)) as image:
                    results[method] = image.convert("RGB")
            path = score_path(out, pair)
            try:
                scores = json.loads(path.read_text())
            except (OSError, ValueError):
                scores = {}
            if scores.get("_pickscore_reference", config.reference) != config.reference:
                for values in scores.values():
                    if isinstance(values, dict):
                        values.pop("pickscore", None)
            for metric in metric_list:
                for method, value in metric.score(sample, results).items():
                    scores.setdefault(method, {})[metric.name] = value
            scores["_prompt"] = sample.prompt
            if "pickscore" in names:
                scores["_pickscore_reference"] = config.reference
            write_json(scores, path)
        except (MemoryError, KeyboardInterrupt):
            raise
        except Exception as exc:  # one broken pair must not stop the others
            failures.append(Failure.of(pair.name, exc))
    return failures


def metric_objects(config: EvalConfig) -> list[M.Metric]:
    return M.make_metrics(
        config.metrics,
        config.clip_model,
        config.detector,
        config.pickscore_model,
        config.pickscore_processor,
        config.aesthetic_clip,
        config.aesthetic_head,
        config.reference,
    )


def summarise(config: EvalConfig, pairs: list[Pair], out: Path) -> dict:
    """The table's numbers: per method and metric, mean (or rate) with its 95 % interval, over the scored pairs."""
    metric_list = metric_objects(config)
    columns = {}
    for pair in pairs:
        try:
            scores = json.loads(score_path(out, pair).read_text())
        except (OSError, ValueError):
            continue
        for method in config.methods:
            for metric in metric_list:
                value = scores.get(method, {}).get(metric.name)
                if value is not None:
                    columns.setdefault((method, metric.name), []).append(float(value))
    rows = []
    for method in config.methods:
        row = {"method": method}
        for metric in metric_list:
            values = columns.get((method, metric.name), [])
            if metric.kind == "rate":
                mean, low, high = rate_interval(int(round(sum(values))), len(values))
            else:
                mean, low, high = mean_interval(values)
            row[metric.name] = {
                "mean": mean,
                "low": low,
                "high": high,
                "n": len(values),
                "reference": metric.name == "pickscore" and method == config.reference,
            }
        rows.append(row)
    return {
        "rows": rows,
        "metrics": {
            m.name: {"kind": m.kind, "higher_is_better": m.higher_is_better, "description": m.describe()}
            for m in metric_list
        },
        "pairs": len(pairs),
        "config": asdict(config),
        "generation": config.request(config.methods[0], "").metadata(),
    }


def _cell(stat: dict, kind: str, name: str) -> str:
    if stat["n"] == 0:
        return "—"
    if stat.get("reference"):
        return "(reference)"
    scale, unit = (100.0, " %") if kind == "rate" else (1.0, "")
    if name == "pickscore":
        scale, unit = 100.0, " %"
    if stat["low"] != stat["low"]:  # nan: one value
        return f"{stat['mean'] * scale:.2f}{unit}"
    return f"{stat['mean'] * scale:.2f}{unit} ({stat['low'] * scale:.2f}–{stat['high'] * scale:.2f})"


def write_table(summary: dict, out: Path) -> str:
    """table.md, table.csv and table.json in `out`; returns the Markdown."""
    metrics = summary["metrics"]
    names = list(metrics)
    config = summary["config"]
    header = ["method"] + [name + (" ↑" if metrics[name]["higher_is_better"] else " ↓") for name in names] + ["n"]
    generation = summary["generation"]
    lines = [
        f"# hdpainter eval: {config['model']}, {summary['pairs']} pairs, {generation['steps']} steps, "
        f"seed {generation['seed']}",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for row in summary["rows"]:
        n = max((row[name]["n"] for name in names), default=0)
        lines.append(
            "| "
            + " | ".join(
                [row["method"]] + [_cell(row[name], metrics[name]["kind"], name) for name in names] + [str(n)]
            )
            + " |"
        )
    lines += ["", "Mean (95 % interval: normal approximation for means, Wilson for rates). Metrics:"]
    lines += [f"- {name}: {metrics[name]['description']}" for name in names]
    lines += [
        "",
        "The paper (SD 2 inpainting, 10,000 pairs): "
        + "; ".join(f"{m} CLIP {c:.2f}, accuracy {a:.1f} %" for m, (c, a) in PAPER_TABLE.items())
        + " (its accuracy used RTMDet-tiny; numbers from another detector differ).",
    ]
    markdown = "\n".join(lines) + "\n"
    (out / "table.md").write_text(markdown)
    with open(out / "table.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["method", "metric", "mean", "low", "high", "n"])
        for row in summary["rows"]:
            for name in names:
                s = row[name]
                writer.writerow([row["method"], name, s["mean"], s["low"], s["high"], s["n"]])
    write_json(summary, out / "table.json")
    return markdown


def contact_sheet(config: EvalConfig, coco: Coco, pairs: list[Pair], out: Path, tile: int = 192) -> Path | None:
    """The first `config.contact_sheet` finished pairs: the input with its mask tinted red, then each method."""
    import numpy as np
    from PIL import ImageDraw

    shown = [p for p in pairs if all(result_path(out, m, p).exists() for m in config.methods)][: config.contact_sheet]
    if not shown:
        return None
    label = 18
    columns = ["input + mask"] + list(config.methods)
    sheet = PIL.Image.new("RGB", (tile * len(columns), label + (tile + label) * len(shown)), "white")
    draw = ImageDraw.Draw(sheet)
    for c, title in enumerate(columns):
        draw.text((c * tile + 4, 3), title, fill="black")
    for r, pair in enumerate(shown):
        sample = coco.sample(pair, config.hull, config.size)
        y = label + r * (tile + label)
        tinted = np.asarray(sample.image, dtype=np.float32)
        alpha = np.asarray(sample.mask, dtype=np.float32)[..., None] / 255.0 * 0.5
        tinted = tinted * (1 - alpha) + np.array([255, 0, 0], np.float32) * alpha
        tiles = [PIL.Image.fromarray(tinted.astype(np.uint8))]
        for method in config.methods:
            with PIL.Image.open(result_path(out, method, pair)) as image:
                tiles.append(image.convert("RGB"))
        for c, image in enumerate(tiles):
            image.thumbnail((tile, tile))
            sheet.paste(image, (c * tile + (tile - image.width) // 2, y + (tile - image.height) // 2))
        draw.text((4, y + tile + 2), f"{pair.name}: {sample.prompt}", fill="black")
    path = out / "contact_sheet.png"
    save_image(sheet, path, {"pairs": [p.name for p in shown]})
    return path


def run_eval(config: EvalConfig) -> tuple[str | None, list[Failure]]:
    """The whole evaluation (this process's share under torch.distributed); returns rank 0's Markdown table
    (None on other ranks) and this process's failures."""
    from ..models import default_device_and_dtype
    from ..parallel import distributed, rank_device

    config.check()
    coco = Coco(config.coco)
    pairs = choose_pairs(config, coco)
    out = Path(config.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise HDPainterError(f"cannot create the run folder {out}: {exc.strerror}") from None
    rank, world, local = distributed()
    device, dtype = default_device_and_dtype(rank_device(config.device, world, local), config.dtype)
    for metric in metric_objects(config):
        metric.check_available(config.local_files_only)  # before hours of generation, not after
    if rank == 0:
        write_pairs(pairs, out / "pairs.csv")
    mine = pairs[rank::world]
    started = time.perf_counter()
    failures = generate(config, coco, mine, out, device, dtype, rank, world)
    failures += score(config, coco, mine, out, device, rank, world)
    if world > 1:
        import torch.distributed as dist

        dist.barrier()  # every rank's score files are written before rank 0 reads them
    markdown = None
    if rank == 0:
        markdown = write_table(summarise(config, pairs, out), out)
        if config.contact_sheet:
            contact_sheet(config, coco, pairs, out)
        print(
            f"eval: {len(pairs)} pairs × {len(config.methods)} methods in {time.perf_counter() - started:.0f} s; "
            f"table in {out / 'table.md'}",
            file=sys.stderr,
        )
    if world > 1:
        import torch.distributed as dist

        dist.barrier()
        dist.destroy_process_group()
    return markdown, failures
