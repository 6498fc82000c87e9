"""Prompt faithfulness on the toy world: a small replication of the paper's ablation (its Table 2).

    python benchmarks/toy_faithfulness.py [--cases 36] [--scales 1.5,3,7.5] [--steps 50] [--model toy]
        [--rasg-grid 32] [--out DIR]
    python benchmarks/toy_faithfulness.py --probe-only 1,2 [--cases 36] [--model toy]

Held-out cases (seeds apart from training's) built to provoke prompt neglect: the prompt asks for a
colour and shape that differ from every shape in the scene, and the mask lies on empty background,
next to a shape (touching its box), or over a shape (covering it); or ("masked object") the mask covers
one of 2–3 shapes and the prompt names only that shape (the model was trained on captions of whole scenes). Each case runs with baseline,
painta, rasg, painta+rasg and the vanilla post-hoc guidance ablation (Eq. 6) at each guidance scale,
with the same seed; RASG with the paper's evaluation η = 0.25. The scorer reads the colour and shape
in the mask; the table gives accuracy (colour, shape, both) with Wilson 95 % intervals, the paired
comparison with the baseline on the same cases (cases won / lost, exact sign-test p), and
the cross-attention in-mask / out-of-mask ratio of the prompt's tokens at H/16 and H/32: the result is
encoded, noised to t = 500 (fixed noise) and passed once through the UNet, whose cross-attention
probabilities (softmax over the prompt's tokens ind(τ)) are averaged over heads and layers of each grid
(the same probe on each case's ideal completion, the prompted shape drawn in the mask, says whether the words
localise apart from whether the model drew what they say);
rows.json also keeps the prompt tokens' share of all cross-attention (the rest goes to SOT and padding) and each
layer's ratio (`layers16`, `layers32`, in the UNet's call order: down, middle, up).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import PIL.Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from hdpainter.defaults import (  # noqa: E402
    EVAL_OPTIONS,  # noqa: E402
    METHODS,
    RASG_SIGMAS,
    VANILLA_SCALE,
)

EVAL_RASG_ETA = EVAL_OPTIONS["rasg_eta"]  # the paper's evaluation
from hdpainter.eval.stats import rate_interval, sign_test  # noqa: E402
from hdpainter.toy import world  # noqa: E402
from hdpainter.toy.train import CrossAttentionRecorder, cross_attention_processor  # noqa: E402
from hdpainter.toy.world import PLACEMENTS, NeglectCase, neglect_cases  # noqa: E402

NOISE_T = 500


class AttentionProbe(CrossAttentionRecorder):
    """Cross-attention probabilities of the prompt's tokens, in-mask vs out-of-mask, per grid (a diffusers
    attention processor installed for one UNet call)."""

    def __init__(self, token_index: list[int], masks: dict[int, np.ndarray]):
        super().__init__()
        self.token_index = token_index
        self.masks = masks  # tokens per side → (side*side,) bool
        self.ratios: dict[int, list[float]] = {}
        self.shares: dict[int, list[float]] = {}  # the prompt tokens' share of all cross-attention, per layer

    def record(self, probs) -> None:  # (B, n, T), the mean over heads
        import torch

        side = int(round(probs.shape[1] ** 0.5))
        if side in self.masks:
            inside = torch.from_numpy(self.masks[side])
            p = probs[:, :, self.token_index].sum(-1).mean(0)  # (n,)
            self.ratios.setdefault(side, []).append(float(p[inside].mean() / p[~inside].mean().clamp_min(1e-12)))
            self.shares.setdefault(side, []).append(float(p.mean()))


def attention_ratio(
    pipe,
    image: PIL.Image.Image,
    mask: PIL.Image.Image,
    prompt: str,
    shares: dict | None = None,
    layers: dict | None = None,
) -> dict[int, float]:
    """{16: ratio, 32: ratio}: prompt-token attention in the mask over outside, on the result noised to t=500,
    the mean of each grid's cross-attention layers; `shares`, if given, receives {16: share, 32: share}, the prompt
    tokens' share of all cross-attention, and `layers` {16: [ratio, ...], 32: [...]}, each layer's ratio in the
    UNet's call order."""
    import torch

    from hdpainter.core.tokens import prompt_token_indices

    tok = pipe.tokenizer
    ids = tok(prompt, padding="max_length", max_length=tok.model_max_length, truncation=True).input_ids
    index = prompt_token_indices(ids, ids, tok.eos_token_id)
    binary = np.asarray(mask) > 127
    size = binary.shape[0]  # square: the world's 256 px, or an upscaled case (ideal_probe)
    masks = {}
    for divisor in (16, 32):
        side = size // divisor
        masks[side] = binary.reshape(side, divisor, side, divisor).mean((1, 3)).reshape(-1) > 0.5
    probe = AttentionProbe(index, masks)
    with torch.no_grad():
        pixels = torch.from_numpy(np.asarray(image.convert("RGB"), np.float32) / 127.5 - 1).permute(2, 0, 1)[None]
        masked = pixels * torch.from_numpy(~binary)[None, None]
        scale = pipe.vae.config.scaling_factor
        latents = pipe.vae.encode(pixels).latent_dist.mean * scale
        masked_latents = pipe.vae.encode(masked).latent_dist.mean * scale
        small = torch.from_numpy(binary.astype(np.float32))[None, None]
        small = torch.nn.functional.interpolate(small, size=latents.shape[-2:])
        t = torch.tensor([NOISE_T])
        a = pipe.scheduler.alphas_cumprod[NOISE_T]
        noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(0))
        noisy = a.sqrt() * latents + (1 - a).sqrt() * noise
        text = pipe.text_encoder(torch.tensor([ids]))[0]
        with cross_attention_processor(pipe.unet, probe):
            pipe.unet(torch.cat([noisy, small, masked_latents], 1), t, encoder_hidden_states=text)
    if shares is not None:
        shares.update({size // side: float(np.mean(v)) for side, v in probe.shares.items()})
    if layers is not None:
        layers.update({size // side: list(v) for side, v in probe.ratios.items()})
    return {size // side: float(np.mean(v)) for side, v in probe.ratios.items()}


def ideal_probe(cases: list[NeglectCase], model: str = "toy", upscale: int = 1) -> dict[int, float]:
    """{16: ratio, 32: ratio}, the mean over `cases` of the probe on their ideal completions, the image (bicubic)
    and mask (nearest) enlarged `upscale` times first: at 512 px, H/32 is a 16×16 grid instead of 8×8, so this
    asks whether a model's H/32 layers fail to localise for want of cells (no generation is run)."""
    import torch
    from diffusers import StableDiffusionInpaintPipeline

    from hdpainter.models import resolve

    pipe = StableDiffusionInpaintPipeline.from_pretrained(
        resolve(model), torch_dtype=torch.float32, safety_checker=None, requires_safety_checker=False
    )
    side = world.SIZE * upscale
    ratios = [
        attention_ratio(
            pipe,
            world.ideal_completion(c).resize((side, side), PIL.Image.BICUBIC),
            c.mask.resize((side, side), PIL.Image.NEAREST),
            c.prompt,
        )
        for c in cases
    ]
    return {d: float(np.mean([r[d] for r in ratios])) for d in (16, 32)}


def run(
    cases: list[NeglectCase],
    scales: list[float],
    steps: int,
    model: str = "toy",
    methods=METHODS,
    progress=True,
    rasg_eta: float = EVAL_RASG_ETA,
    rasg_sigma: str = "reference",
    vanilla_scale: float = VANILLA_SCALE,
    batch: int = 12,
    rasg_grid: int = 32,
) -> list[dict]:
    """One row per (case, scale, method). Cases run in batches; each keeps its own seed (its index), so a row
    equals a single run of its case. `rasg_grid` 16 makes RASG read H/16 instead of the paper's H/32 (an
    ablation, for a model whose words localise only there)."""
    import torch

    from hdpainter.inpaint import HDPainterPipeline
    from hdpainter.models import resolve
    from hdpainter.request import GuidanceConfig

    pipe = HDPainterPipeline.from_pretrained(resolve(model), torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    # the probe on the answer a faithful model would give: whether the words localise apart from whether the
    # model draws what they say (the probe on a neglecting model's result has no prompted shape to attend to)
    ideal = {c.index: attention_ratio(pipe, world.ideal_completion(c), c.mask, c.prompt) for c in cases}
    rows = []
    total, started = len(cases) * len(scales) * len(methods), time.perf_counter()
    for scale in scales:
        for method in methods:
            for first in range(0, len(cases), batch):
                chunk = cases[first : first + batch]
                results = pipe(
                    [c.prompt for c in chunk],
                    [c.image for c in chunk],
                    [c.mask for c in chunk],
                    method=method,
                    num_inference_steps=steps,
                    guidance_scale=scale,
                    rasg_eta=rasg_eta,
                    rasg_sigma=rasg_sigma,
                    vanilla_scale=vanilla_scale,
                    negative_prompt="",
                    positive_prompt="",
                    working_size=world.SIZE,
                    generator=[torch.Generator().manual_seed(c.index) for c in chunk],
                    guidance=GuidanceConfig(rasg_grid=rasg_grid),
                ).images
                for case, result in zip(chunk, results):
                    color, shape = world.classify(result, case.mask)
                    shares, layers = {}, {}
                    ratio = attention_ratio(pipe, result, case.mask, case.prompt, shares, layers)
                    rows.append(
                        {
                            "case": case.index,
                            "placement": case.placement,
                            "prompt": case.prompt,
                            "scale": scale,
                            "method": method,
                            "rasg_grid": rasg_grid,
                            "found_color": color,
                            "found_shape": shape,
                            "color": color == case.color,
                            "shape": shape == case.shape,
                            "both": color == case.color and shape == case.shape,
                            "ratio16": ratio.get(16),
                            "ratio32": ratio.get(32),
                            "share16": shares.get(16),
                            "share32": shares.get(32),
                            "layers16": layers.get(16),
                            "layers32": layers.get(32),
                            "ideal16": ideal[case.index].get(16),
                            "ideal32": ideal[case.index].get(32),
                        }
                    )
                if progress:
                    done = len(rows)
                    eta = (time.perf_counter() - started) / done * (total - done)
                    print(f"\r{done}/{total}  eta {eta:.0f} s", end="", file=sys.stderr, flush=True)
    if progress:
        print(file=sys.stderr)
    return rows


def paired(rows: list[dict], method: str, reference: str = "baseline", key: str = "both") -> tuple[int, int, float]:
    """(cases `method` gets right and `reference` wrong, the reverse, two-sided exact sign-test p) over the rows
    the two share (same case and scale): the paired comparison the shared cases allow."""
    mine = {(r["case"], r["scale"]): r[key] for r in rows if r["method"] == method}
    theirs = {(r["case"], r["scale"]): r[key] for r in rows if r["method"] == reference}
    shared = mine.keys() & theirs.keys()
    wins = sum(mine[k] and not theirs[k] for k in shared)
    losses = sum(theirs[k] and not mine[k] for k in shared)
    return wins, losses, sign_test(wins, losses)


def table(rows: list[dict], methods=METHODS) -> str:
    """The Markdown table: accuracy with Wilson 95 % intervals, and mean attention ratios, per method."""

    def pct(values):
        p, low, high = rate_interval(sum(values), len(values))
        return f"{100 * p:.0f} % ({100 * low:.0f}–{100 * high:.0f})"

    lines = [
        "| method | colour | shape | both | both vs baseline: +/− (p) | attn in/out H/16 | attn in/out H/32 | n |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for method in methods:
        mine = [r for r in rows if r["method"] == method]
        if not mine:
            continue
        r16 = np.mean([r["ratio16"] for r in mine if r["ratio16"] is not None])
        r32 = np.mean([r["ratio32"] for r in mine if r["ratio32"] is not None])
        wins, losses, p = paired(rows, method)
        compared = method != "baseline" and any(r["method"] == "baseline" for r in rows)
        versus = f"+{wins} / −{losses} ({p:.2g})" if compared else "—"
        lines.append(
            f"| {method} | {pct([r['color'] for r in mine])} | {pct([r['shape'] for r in mine])} | "
            f"{pct([r['both'] for r in mine])} | {versus} | {r16:.2f} | {r32:.2f} | {len(mine)} |"
        )
    ideal = {r["case"]: (r["ideal16"], r["ideal32"]) for r in rows if r.get("ideal16") is not None}
    if ideal:
        i16, i32 = np.mean(list(ideal.values()), axis=0)
        lines += [
            "",
            f"On the ideal completions (the prompted shape drawn in the mask), {len(ideal)} cases: attn in/out "
            f"H/16 {i16:.2f}, H/32 {i32:.2f}.",
        ]
    scales = sorted({r["scale"] for r in rows})
    placements = [p for p in PLACEMENTS if any(r["placement"] == p for r in rows)]
    lines += [
        "",
        "Both right, by guidance scale and by placement:",
        "",
        "| method | " + " | ".join(f"w={s:g}" for s in scales) + " | " + " | ".join(placements) + " |",
        "|---|" + "---|" * (len(scales) + len(placements)),
    ]
    for method in methods:
        mine = [r for r in rows if r["method"] == method]
        if not mine:
            continue
        cells = [pct([r["both"] for r in mine if r["scale"] == s]) for s in scales]
        cells += [pct([r["both"] for r in mine if r["placement"] == p]) for p in placements]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=36)
    parser.add_argument("--scales", default="1.5,3,7.5", help="guidance scales, comma-separated")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--model", default="toy")
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated (default: all five)")
    parser.add_argument(
        "--rasg-eta",
        type=float,
        default=EVAL_RASG_ETA,
        help=f"RASG's η (default {EVAL_RASG_ETA}, the paper's evaluation)",
    )
    parser.add_argument("--rasg-sigma", default="reference", choices=RASG_SIGMAS)
    parser.add_argument(
        "--vanilla-scale", type=float, default=VANILLA_SCALE, help=f"s of vanilla-guidance (default {VANILLA_SCALE:g})"
    )
    parser.add_argument(
        "--placements",
        default=",".join(PLACEMENTS),
        help="mask placements, taken in turn (the first three alone: the first toy world's case set)",
    )
    parser.add_argument(
        "--rasg-grid",
        type=int,
        default=32,
        choices=(16, 32),
        help="the grid RASG reads: 32 (H/32, the paper's) or 16 (an ablation)",
    )
    parser.add_argument(
        "--probe-only",
        default=None,
        metavar="UPSCALES",
        help="no generation: the probe on the cases' ideal completions, enlarged by each factor given "
        "(comma-separated, e.g. 1,2: 2 makes H/32 a 16×16 grid)",
    )
    parser.add_argument("--batch", type=int, default=12, help="cases per pipeline call")
    parser.add_argument("--out", default=None, help="folder for rows.json and table.md")
    args = parser.parse_args(argv)
    import torch

    torch.manual_seed(0)
    placements = tuple(p.strip() for p in args.placements.split(",") if p.strip())
    if not placements or set(placements) - set(PLACEMENTS):
        parser.error(f"--placements: some of {', '.join(PLACEMENTS)}")
    cases = neglect_cases(args.cases, placements=placements)
    if args.probe_only:
        try:
            upscales = [int(v) for v in args.probe_only.split(",")]
        except ValueError:
            upscales = []
        if not upscales or min(upscales) < 1:
            parser.error("--probe-only takes whole enlargement factors ≥ 1, comma-separated (e.g. 1,2)")
        print("| working size | ideal completions: attn in/out H/16 | H/32 | n |\n|---|---|---|---|")
        for upscale in upscales:
            r = ideal_probe(cases, args.model, upscale)
            print(f"| {world.SIZE * upscale} | {r[16]:.2f} | {r[32]:.2f} | {len(cases)} |")
        return 0
    started = time.perf_counter()
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        parser.error(f"unknown method {unknown[0] if unknown else '(none)'!r}: use some of {', '.join(METHODS)}")
    rows = run(
        cases,
        [float(s) for s in args.scales.split(",")],
        args.steps,
        model=args.model,
        methods=methods,
        rasg_eta=args.rasg_eta,
        rasg_sigma=args.rasg_sigma,
        vanilla_scale=args.vanilla_scale,
        batch=args.batch,
        rasg_grid=args.rasg_grid,
    )
    markdown = table(rows, methods)
    print(markdown)
    print(
        f"{len(rows)} generations in {time.perf_counter() - started:.0f} s ({args.steps} steps each)", file=sys.stderr
    )
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "rows.json").write_text(json.dumps(rows, indent=1))
        (out / "table.md").write_text(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
