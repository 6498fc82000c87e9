"""Prompt faithfulness on the toy world: a small replication of the paper's ablation (its Table 2).

    python benchmarks/toy_faithfulness.py [--cases 40] [--scales 3,7.5] [--steps 50] [--out DIR]

Held-out cases (seeds apart from training's) built to provoke prompt neglect: the prompt asks for a
colour and shape that differ from every shape in the scene, and the mask lies on empty background,
next to a shape (touching its box), or over a shape (covering it). Each case runs with baseline,
painta, rasg and painta+rasg at each guidance scale, with the same seed. The scorer reads the colour
and shape in the mask; the table gives accuracy (colour, shape, both) with Wilson 95 % intervals, and
the cross-attention in-mask / out-of-mask ratio of the prompt's tokens at H/16 and H/32: the result is
encoded, noised to t = 500 (fixed noise) and passed once through the UNet, whose cross-attention
probabilities (softmax over the prompt's tokens ind(τ)) are averaged over heads and layers of each grid.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import PIL.Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from hdpainter.eval.stats import rate_interval  # noqa: E402
from hdpainter.toy import world  # noqa: E402

METHODS = ("baseline", "painta", "rasg", "painta+rasg")
PLACEMENTS = ("background", "next to", "over")
CASE_SEED = 1_000_003  # far from the training seeds
NOISE_T = 500


@dataclass
class Case:
    index: int
    image: PIL.Image.Image
    mask: PIL.Image.Image
    prompt: str
    color: str
    shape: str
    placement: str


def make_cases(count: int, seed: int = CASE_SEED) -> list[Case]:
    """`count` cases, placements in turn; the prompt's colour and shape both differ from every shape present."""
    rng = np.random.default_rng(seed)
    cases = []
    while len(cases) < count:
        placement = PLACEMENTS[len(cases) % len(PLACEMENTS)]
        scene = world.random_scene(rng, count=(1, 3))
        colors = [c for c in world.COLORS if all(s.color != c for s in scene.shapes)]
        shapes = [s for s in world.SHAPES if all(x.shape != s for x in scene.shapes)]
        if not colors or not shapes:
            continue
        color, shape = str(rng.choice(colors)), str(rng.choice(shapes))
        r = 40
        if placement == "background":
            box = world.free_box(rng, scene.shapes, r, margin=8)
        elif placement == "over":  # the mask covers the first shape with a margin
            target = scene.shapes[0]
            box = (target.cx - target.r - 6, target.cy - target.r - 6, target.cx + target.r + 6, target.cy + target.r + 6)
        else:  # next to: the mask's box touches the first shape's box on one side
            target = scene.shapes[0]
            side = int(rng.integers(4))
            dx, dy = [(1, 0), (-1, 0), (0, 1), (0, -1)][side]
            cx, cy = target.cx + dx * (target.r + r), target.cy + dy * (target.r + r)
            box = (cx - r, cy - r, cx + r, cy + r)
            if min(box) < 0 or max(box) > world.SIZE:
                box = None
        if box is None:
            continue
        box = tuple(int(np.clip(v, 0, world.SIZE)) for v in box)
        cases.append(Case(len(cases), scene.image, world.box_mask(box), f"a {color} {shape}", color, shape, placement))
    return cases


class AttentionProbe:
    """Cross-attention probabilities of the prompt's tokens, in-mask vs out-of-mask, per grid (a diffusers
    attention processor installed for one UNet call)."""

    def __init__(self, token_index: list[int], masks: dict[int, np.ndarray]):
        self.token_index = token_index
        self.masks = masks  # tokens per side → (side*side,) bool
        self.ratios: dict[int, list[float]] = {}

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        import torch

        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        q, k, v = attn.to_q(hidden_states), attn.to_k(context), attn.to_v(context)
        q, k, v = (attn.head_to_batch_dim(x) for x in (q, k, v))
        probs = attn.get_attention_scores(q, k, None)  # (B·heads, n, T)
        out = attn.batch_to_head_dim(torch.bmm(probs, v))
        out = attn.to_out[1](attn.to_out[0](out))
        side = int(round(hidden_states.shape[1] ** 0.5))
        if encoder_hidden_states is not None and side in self.masks:
            inside = torch.from_numpy(self.masks[side])
            p = probs[:, :, self.token_index].sum(-1).mean(0)  # (n,)
            self.ratios.setdefault(side, []).append(float(p[inside].mean() / p[~inside].mean().clamp_min(1e-12)))
        if attn.residual_connection:
            out = out + hidden_states
        return out / attn.rescale_output_factor


def attention_ratio(pipe, image: PIL.Image.Image, mask: PIL.Image.Image, prompt: str) -> dict[int, float]:
    """{16: ratio, 32: ratio}: prompt-token attention in the mask over outside, on the result noised to t=500."""
    import torch
    from diffusers.models.attention_processor import AttnProcessor2_0

    from hdpainter.core.tokens import prompt_token_indices

    tok = pipe.tokenizer
    ids = tok(prompt, padding="max_length", max_length=tok.model_max_length, truncation=True).input_ids
    index = prompt_token_indices(ids, ids, tok.eos_token_id)
    binary = np.asarray(mask) > 127
    masks = {}
    for divisor in (16, 32):
        side = world.SIZE // divisor
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
        processors = pipe.unet.attn_processors
        pipe.unet.set_attn_processor({name: probe if name.endswith("attn2.processor") else AttnProcessor2_0()
                                      for name in processors})
        try:
            pipe.unet(torch.cat([noisy, small, masked_latents], 1), t, encoder_hidden_states=text)
        finally:
            pipe.unet.set_attn_processor(processors)
    return {world.SIZE // side: float(np.mean(v)) for side, v in probe.ratios.items()}


def run(cases: list[Case], scales: list[float], steps: int, model: str = "toy", methods=METHODS, progress=True) -> list[dict]:
    import torch

    from hdpainter.inpaint import HDPainterPipeline
    from hdpainter.models import resolve

    pipe = HDPainterPipeline.from_pretrained(resolve(model), torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    rows = []
    total, started = len(cases) * len(scales) * len(methods), time.perf_counter()
    for case in cases:
        for scale in scales:
            for method in methods:
                result = pipe(case.prompt, case.image, case.mask, method=method, num_inference_steps=steps,
                              guidance_scale=scale, negative_prompt="", positive_prompt="", working_size=world.SIZE,
                              generator=torch.Generator().manual_seed(case.index)).images[0]
                color, shape = world.classify(result, case.mask)
                ratio = attention_ratio(pipe, result, case.mask, case.prompt)
                rows.append({"case": case.index, "placement": case.placement, "prompt": case.prompt, "scale": scale,
                             "method": method, "found_color": color, "found_shape": shape,
                             "color": color == case.color, "shape": shape == case.shape,
                             "both": color == case.color and shape == case.shape,
                             "ratio16": ratio.get(16), "ratio32": ratio.get(32)})
                if progress:
                    done = len(rows)
                    eta = (time.perf_counter() - started) / done * (total - done)
                    print(f"\r{done}/{total}  eta {eta:.0f} s", end="", file=sys.stderr, flush=True)
    if progress:
        print(file=sys.stderr)
    return rows


def table(rows: list[dict], methods=METHODS) -> str:
    """The Markdown table: accuracy with Wilson 95 % intervals, and mean attention ratios, per method."""
    def pct(values):
        p, low, high = rate_interval(sum(values), len(values))
        return f"{100 * p:.0f} % ({100 * low:.0f}–{100 * high:.0f})"

    lines = ["| method | colour | shape | both | attn in/out H/16 | attn in/out H/32 | n |", "|---|---|---|---|---|---|---|"]
    for method in methods:
        mine = [r for r in rows if r["method"] == method]
        if not mine:
            continue
        r16 = np.mean([r["ratio16"] for r in mine if r["ratio16"] is not None])
        r32 = np.mean([r["ratio32"] for r in mine if r["ratio32"] is not None])
        lines.append(f"| {method} | {pct([r['color'] for r in mine])} | {pct([r['shape'] for r in mine])} | "
                     f"{pct([r['both'] for r in mine])} | {r16:.2f} | {r32:.2f} | {len(mine)} |")
    scales = sorted({r["scale"] for r in rows})
    placements = [p for p in PLACEMENTS if any(r["placement"] == p for r in rows)]
    lines += ["", "Both right, by guidance scale and by placement:", "",
              "| method | " + " | ".join(f"w={s:g}" for s in scales) + " | " + " | ".join(placements) + " |",
              "|---|" + "---|" * (len(scales) + len(placements))]
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
    parser.add_argument("--scales", default="3,7.5", help="guidance scales, comma-separated")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--model", default="toy")
    parser.add_argument("--out", default=None, help="folder for rows.json and table.md")
    args = parser.parse_args(argv)
    import torch

    torch.manual_seed(0)
    cases = make_cases(args.cases)
    started = time.perf_counter()
    rows = run(cases, [float(s) for s in args.scales.split(",")], args.steps, args.model)
    markdown = table(rows)
    print(markdown)
    print(f"{len(rows)} generations in {time.perf_counter() - started:.0f} s ({args.steps} steps each)", file=sys.stderr)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "rows.json").write_text(json.dumps(rows, indent=1))
        (out / "table.md").write_text(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
