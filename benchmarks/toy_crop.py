"""Stage 1 on a context crop against the whole image, on the toy world at 4× its scale.

Each case is a held-out toy neglect case (a 256 px scene, an 80 px mask, a prompt whose colour and shape are
not in the scene) placed as one tile of a 4×4 mosaic of toy scenes: a 1024 px photo whose shapes and mask
have the training's pixel size. On the whole image, stage 1 (working size 256) sees everything at a quarter
of that size; a context crop (auto: a 256 px square around the mask) sees the mask at the training's scale.
The shipped toy model paints each case both ways with the same seed; the toy scorer reads the mask.

    python benchmarks/toy_crop.py --cases 24        # about 2 minutes on 2 CPU cores
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import PIL.Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from hdpainter.eval.stats import rate_interval, sign_test  # noqa: E402
from hdpainter.toy import world  # noqa: E402

TILES = 4  # the mosaic is TILES × TILES scenes of world.SIZE px
REGIONS = ("whole", "crop")


def mosaic_case(case: world.NeglectCase, rng: np.random.Generator) -> tuple[PIL.Image.Image, PIL.Image.Image]:
    """The case's scene as one tile (chosen at random) of a mosaic of other toy scenes, and its mask there."""
    size = world.SIZE
    image = PIL.Image.new("RGB", (TILES * size, TILES * size))
    mask = PIL.Image.new("L", image.size, 0)
    at = int(rng.integers(TILES * TILES))
    for k in range(TILES * TILES):
        x, y = (k % TILES) * size, (k // TILES) * size
        if k == at:
            image.paste(case.image, (x, y))
            mask.paste(case.mask, (x, y))
        else:
            image.paste(world.random_scene(rng).image, (x, y))
    return image, mask


def run(cases: int, steps: int, seed: int) -> list[dict]:
    from hdpainter.painter import HDPainter
    from hdpainter.request import InpaintRequest

    painter = HDPainter.from_pretrained("toy", upscaler=None, device="cpu")
    rng = np.random.default_rng(seed)
    rows = []
    for case in world.neglect_cases(cases, placements=world.PLACEMENTS[:3]):  # its documented case set
        image, mask = mosaic_case(case, rng)
        for region in REGIONS:
            request = InpaintRequest.from_options(
                dict(
                    prompt=case.prompt,
                    steps=steps,
                    negative_prompt="",
                    positive_prompt="",
                    seed=case.index,
                    working_size=world.SIZE,
                    sr_method="bicubic",
                    stage1_region=region,
                )
            )
            started = time.perf_counter()
            result = painter(image, mask, request, progress=False)
            color, shape = world.classify(result.images[0], mask)
            rows.append(
                dict(
                    case=case.index,
                    placement=case.placement,
                    region=region,
                    box=result.metadata[0]["stage1_box"],
                    seconds=time.perf_counter() - started,
                    color=color == case.color,
                    shape=shape == case.shape,
                    both=(color, shape) == (case.color, case.shape),
                )
            )
        print(".", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    return rows


def table(rows: list[dict]) -> str:
    def pct(values):
        p, low, high = rate_interval(sum(values), len(values))
        return f"{100 * p:.0f} % ({100 * low:.0f}–{100 * high:.0f})"

    lines = ["| stage 1 on | colour | shape | both | s per case |", "|---|---|---|---|---|"]
    for region in REGIONS:
        mine = [r for r in rows if r["region"] == region]
        seconds = sum(r["seconds"] for r in mine) / len(mine)
        lines.append(
            f"| {region} | {pct([r['color'] for r in mine])} | {pct([r['shape'] for r in mine])} | "
            f"{pct([r['both'] for r in mine])} | {seconds:.1f} |"
        )
    crop = {r["case"]: r["both"] for r in rows if r["region"] == "crop"}
    whole = {r["case"]: r["both"] for r in rows if r["region"] == "whole"}
    wins = sum(crop[c] and not whole[c] for c in crop)
    losses = sum(whole[c] and not crop[c] for c in crop)
    lines.append("")
    lines.append(
        f"Paired on `both`: crop right and whole wrong in {wins} cases, the reverse in {losses} "
        f"(two-sided sign test p = {sign_test(wins, losses):.2g}); 95 % Wilson intervals in brackets."
    )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=24)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--seed", type=int, default=0, help="the mosaics' seed")
    args = parser.parse_args(argv)
    rows = run(args.cases, args.steps, args.seed)
    print(
        f"{args.cases} held-out cases as tiles of a {TILES * world.SIZE} px mosaic, {args.steps} steps, "
        "painta+rasg, the shipped toy model\n"
    )
    print(table(rows), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
