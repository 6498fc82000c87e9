"""Train the toy-world inpainting model from scratch on a CPU: `python -m hdpainter.toy.train --out DIR`.

Stable Diffusion's geometry at 256 px: an autoencoder (×8, 4 latent channels), a small CLIP text
encoder with a BPE tokenizer, and a 9-channel inpainting UNet with cross-attention at H/16 and H/32 and
in the middle block (so PAIntA's and RASG's grids, H/32 = 8×8 and H/16 = 16×16, exist), on SD's noise
schedule, predicting v (as SD 2's 768 px model does) rather than ε.

Phase 1 trains the autoencoder on crops of toy scenes. Phase 2 trains the text encoder and UNet together
on inpainting examples of one of two kinds (`--data`):

- `single` (the default, the shipped model's): scenes of 1–3 shapes; mask a shape's box (grown by a random
  margin), a part of a shape, or empty background, and prompt the shape ("a red circle", or "" for
  background);
- `captions` (issue #17), built as real inpainting models are trained: a scene of 2–4 shapes, a random mask
  (a shape's box grown by a random margin, a part of a shape, empty background, or a random blob) and the
  caption of the whole scene ("a red circle and a blue square"), which often names shapes outside the mask.
  Multi-object captions make each word localise (the model has to tell which named shape is missing), and
  captions of shapes the mask does not cover teach it, as they teach real models, to continue the context
  rather than follow the prompt. `--full-mask S` masks the whole scene in a share S of these examples, as
  Stable Diffusion's inpainting models were trained (S = 0.25): text-to-image examples, in which each named
  shape is drawn somewhere and only its words can say where. `--offscreen S` makes a share S of the captions
  name 1–2 shapes more that are not in the picture, as a photo's caption names what a training crop cut off:
  a named shape that cannot be seen is then not always under the mask, which is what teaches real inpainting
  models to continue the context instead of following the prompt.

`--attention-loss W` (with `--data captions`) adds W times TokenCompose's token loss (Wang et al., CVPR 2024),
adapted to boxes and to every word of a shape's phrase (`word_attention_loss`): on the H/16 and H/32
cross-attention layers, each word of a shape in view is taught to attend inside that shape's box. Large models
learn where their words are from billions of captioned images; a toy trained for an hour learns it at H/16 at
best, and not at H/32, the grid RASG reads (docs/benchmarks.md). Words of shapes beyond the picture are left free,
so the caption still names what cannot be seen.

`--levels 4` gives the UNet Stable Diffusion's layout (a plain H/64 level under H/32, holding the middle
block) instead of the shipped model's 3 levels, where H/32 is the bottleneck; with `--resume` it deepens a
3-level model, keeping every trained block (`deepen_unet`).

10 % of prompts are dropped for classifier-free guidance. The UNet's inputs
are built exactly as the pipeline builds them at inference (mask dilated by one pixel, its latent-grid
version by bicubic downscale and `!= 0`, E(masked image) as the posterior mean). What makes it fit in an
hour on two cores:

- v-prediction: with ε-prediction the x̂0 of the noisiest steps (where colour, shape and the known
  region's layout are decided) carries the ε error times √(1−ᾱ)/√ᾱ ≈ 15, and a model trained for an
  hour fills whole images with the prompt's colour; the v-loss weighs x0 errors by SNR + 1, capped at
  `--snr-gamma` + 1 (as min-SNR-γ caps it) so the nearly clean steps do not dominate;
- examples are cut to `--crop` px around their mask (the networks are convolutional; shapes keep their
  size), and the last `--full-share` of the steps train on whole 256 px scenes;
- a replay pool: the autoencoder encodes each example once and the UNet sees it about
  `--batch / --refresh` times;
- the masked region counts `1 + --mask-weight` times in the loss (outside it, E(masked image) gives
  most of the answer away); the autoencoder's loss likewise weighs shape pixels up;
- glibc keeps freed memory for reuse (see `keep_freed_memory`);
- the weights saved are an exponential moving average of the trained ones.

Seeded throughout; the result is a diffusers folder (fp16 weights) with a `training.json` record: the
losses, held-out losses before and after each phase, how well the scorer reads shapes through the
autoencoder, and a quick faithfulness check on held-out cases.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import PIL.Image

from . import world

LATENT_SCALE = 8
DROP_PROMPT = 0.1  # classifier-free guidance: the share of examples trained without their prompt
CHECK_STEPS = 20  # the quick faithfulness check's sampling steps
# Held-out draws, far from the small training seeds (--seed): validation losses, autoencoder fidelity, final check
VALIDATION_SEED, FIDELITY_SEED, CHECK_SEED = 2_000_003, 2_000_011, 2_000_017
LATENT_PENALTY = 1e-4  # weight of the autoencoder's mean squared latent
AE_WARMUP, UNET_WARMUP = 0.05, 0.03  # shares of each phase's steps with a linear learning-rate warm-up
ENCODE_CHUNK = 32  # examples encoded at once when a replay pool is filled


def make_components(seed: int = 0, levels: int = 3) -> dict:
    """The untrained toy model: VAE, text encoder, tokenizer, UNet (make_unet), DDIM scheduler."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler
    from transformers import CLIPTextConfig, CLIPTextModel

    from ..testing import make_tokenizer

    torch.manual_seed(seed)
    tokenizer = make_tokenizer("sd1")
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=64,
            intermediate_size=128,
            num_attention_heads=4,
            num_hidden_layers=2,
            max_position_embeddings=77,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            hidden_act="quick_gelu",
            projection_dim=64,
        )
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(16, 32, 48, 48),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=world.SIZE,
    )
    unet = make_unet(levels)
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type="v_prediction",
    )
    return dict(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler)


LEVELS = (3, 4)  # --levels: the UNet's resolution levels


def make_unet(levels: int = 3):
    """The toy UNet (untrained; seed torch first). With 3 levels (the shipped model's), H/8 without attention, then
    H/16 and H/32 with cross-attention, and the middle block at H/32. With 4, Stable Diffusion's layout: a plain
    H/64 level below those, holding the middle block, so that H/32 is not the bottleneck (in SD the H/32 maps are
    the ones that localise words; its bottleneck's, like the 3-level toy's H/32, hardly do)."""
    from diffusers import UNet2DConditionModel

    if levels not in LEVELS:
        raise ValueError(f"the toy UNet has {' or '.join(map(str, LEVELS))} levels, not {levels}")
    extra = levels - 3
    return UNet2DConditionModel(
        sample_size=world.SIZE // LATENT_SCALE,
        in_channels=9,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(48, 96, 128) + (128,) * extra,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D") + ("DownBlock2D",) * extra,
        up_block_types=("UpBlock2D",) * extra + ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=64,
        attention_head_dim=4,
        norm_num_groups=16,
    )


def unet_levels(unet) -> int:
    return len(unet.config.block_out_channels)


def unet_multiple(levels: int) -> int:
    """Pixel sizes a UNet of `levels` levels takes: the latent halves levels − 1 times."""
    return LATENT_SCALE * 2 ** (levels - 1)


def saved_unet_levels(folder: str | Path) -> int | None:
    """The UNet levels of a saved toy model, from its config alone (None if there is none to read)."""
    try:
        config = json.loads((Path(folder) / "unet" / "config.json").read_text())
        return len(config["block_out_channels"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def deepen_unet(unet, seed: int = 0):
    """A 4-level UNet (make_unet(4)) that starts from a trained 3-level one: every block keeps its trained weights
    (the 3-level model's up blocks become up blocks 1–3, its middle block moves down a level), and what is new
    (the H/64 level, its up block, the H/32 downsampler) starts as make_unet(4) initialises it under `seed`.
    Returns (UNet, names of the parameters that start new)."""
    import torch

    if unet_levels(unet) != 3:
        raise ValueError(f"deepen_unet takes a 3-level toy UNet, not one of {unet_levels(unet)} levels")
    torch.manual_seed(seed)
    deeper = make_unet(4)
    old = unet.state_dict()
    state, new = deeper.state_dict(), []
    for name, value in state.items():
        source = name
        if name.startswith("up_blocks."):
            index, rest = name[len("up_blocks.") :].split(".", 1)
            source = f"up_blocks.{int(index) - 1}.{rest}" if index != "0" else ""
        if source in old and old[source].shape == value.shape:
            state[name] = old[source]
        else:
            new.append(name)
    deeper.load_state_dict(state)
    return deeper.to(unet.dtype), new


def to_tensor(images):
    """PIL images or (H, W, 3) uint8 arrays → a (B, 3, H, W) tensor in [-1, 1]."""
    import torch

    array = np.stack([np.asarray(i.convert("RGB") if hasattr(i, "convert") else i, dtype=np.float32) for i in images])
    return torch.from_numpy(array / 127.5 - 1.0).permute(0, 3, 1, 2)


def warmup_cosine(optimizer, steps: int, warmup: float):
    """Linear warm-up over `warmup` of the steps, then a cosine decay to a tenth."""
    import torch

    first = max(1, int(warmup * steps))

    def factor(step):
        if step < first:
            return (step + 1) / first
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, (step - first) / max(1, steps - first))))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


DATA = ("single", "captions")  # --data: the first toy world's examples, or whole-scene captions (issue #17)
FIRST_WORLD_SHAPES = (1, 3)  # shapes per scene of the first toy world ("single")


def scene_shapes(data: str) -> tuple[int, int]:
    return world.TRAIN_SHAPES if data == "captions" else FIRST_WORLD_SHAPES


def case_placements(data: str) -> tuple[str, ...]:
    """The held-out placements of the closing check: the first toy world's three, or all four."""
    return world.PLACEMENTS if data == "captions" else world.PLACEMENTS[:3]


def scenes(rng, count, shapes: tuple[int, int] = FIRST_WORLD_SHAPES):
    return [world.random_scene(rng, count=shapes) for _ in range(count)]


def single_prompt_example(rng: np.random.Generator):
    """The first toy world's examples (--data single, the shipped model's): (scene image, mask, prompt) of a scene
    of 1–3 shapes, a shape's box grown by 2–24 px (65 %), part of a shape (15 %), or an empty background box with
    the empty prompt (20 %); the prompt names exactly the masked shape."""
    scene = world.random_scene(rng)
    roll = rng.random()
    if roll < 0.2:
        r = int(rng.integers(world.RADIUS[0], world.RADIUS[1] + 8))
        box = world.free_box(rng, scene.shapes, r)
        if box is not None:
            return scene.image, world.box_mask(box), ""
    shape = scene.shapes[int(rng.integers(len(scene.shapes)))]
    if roll < 0.35:
        x0, y0, x1, y1 = shape.box
        cut = int(rng.integers(shape.r // 2, shape.r + 1))
        side = int(rng.integers(4))
        m = world.PART_MARGIN
        box = [
            (x0 - m, y0 - m, x0 + cut, y1 + m),
            (x1 - cut, y0 - m, x1 + m, y1 + m),
            (x0 - m, y0 - m, x1 + m, y0 + cut),
            (x0 - m, y1 - cut, x1 + m, y1 + m),
        ][side]
        return scene.image, world.box_mask(box), shape.prompt
    return scene.image, world.box_mask(shape.box, grow=int(rng.integers(2, 25))), shape.prompt


def inpainting_example(rng: np.random.Generator, data: str = "single", full_mask: float = 0.0, offscreen: float = 0.0):
    """(scene image, mask, prompt, the shapes the prompt names in its order or None) of `data`: "single"
    (single_prompt_example) or "captions" (hdpainter.toy.world.captioned_example): 2–4 shapes, a mask over a shape
    (45 %), part of one (15 %), empty background (20 %; a blob when no free box fits, in about a sixth of these
    scenes) or a random blob (20 %), and the caption of the whole scene, as real inpainting models are trained
    (captions of whole images, random masks), a `full_mask` share of them masking the whole scene and an
    `offscreen` share of the captions naming shapes beyond the picture too."""
    if data == "captions":
        image, mask, named = world.captioned_example(rng, full_mask=full_mask, offscreen=offscreen)
        return image, mask, world.caption(named), named
    if data != "single":
        raise ValueError(f"unknown training data {data!r}: one of {', '.join(DATA)}")
    return (*single_prompt_example(rng), None)


def crop_origin(mask: np.ndarray, crop: int, rng: np.random.Generator) -> tuple[int, int]:
    """(top, left), multiples of 8, of a random `crop`-px window that holds the whole mask; if none does (a mask
    within 7 px of the crop's size, or `--full-mask`'s whole scene), the aligned window nearest to centred on it."""
    ys, xs = np.nonzero(mask)
    origin = []
    for lo, hi, full in ((ys.min(), ys.max() + 1, mask.shape[0]), (xs.min(), xs.max() + 1, mask.shape[1])):
        first = -(-max(0, hi - crop) // LATENT_SCALE)  # in latent pixels: the window starts at or before `lo`
        last = min(lo, full - crop) // LATENT_SCALE  # and ends at or after `hi`
        if first <= last:
            origin.append(LATENT_SCALE * int(rng.integers(first, last + 1)))
        else:
            origin.append(int(np.clip((lo + hi - crop) // 2, 0, full - crop)) // LATENT_SCALE * LATENT_SCALE)
    return origin[0], origin[1]


def unet_inputs(examples, crop: int, rng: np.random.Generator):
    """Pixels, masked pixels (B, 3, crop, crop), latent-grid masks (B, 1, crop/8, crop/8) and the crops' (top,
    left) of (image, mask, ...) examples, cut to `crop` px around their masks; built as HDPainterPipeline builds
    them (docs/method.md §1), the latent-grid mask from the whole mask, then cut."""
    import torch

    from .. import images as imgs

    pixels, kept, grids, origins = [], [], [], []
    for image, mask, *_ in examples:
        binary = imgs.dilate_cross(np.asarray(mask) > 127)
        grid = imgs.grid_mask(binary, LATENT_SCALE, "any")
        top, left = crop_origin(binary, crop, rng) if crop < binary.shape[0] else (0, 0)
        pixels.append(np.asarray(image)[top : top + crop, left : left + crop])
        kept.append(~binary[top : top + crop, left : left + crop])
        t, l, c = top // LATENT_SCALE, left // LATENT_SCALE, crop // LATENT_SCALE  # noqa: E741 (top, left, crop)
        grids.append(grid[t : t + c, l : l + c])
        origins.append((top, left))
    pixels = to_tensor(pixels)
    masked = pixels * torch.from_numpy(np.stack(kept))[:, None]
    return pixels, masked, torch.from_numpy(np.stack(grids)).float()[:, None], origins


class ExamplePool:
    """A replay pool of encoded inpainting examples: a ring of `capacity` entries that the training loop
    refreshes a few at a time and draws batches from, so each encoded example serves several steps."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.tensors: dict = {}
        self.size = 0
        self.next = 0

    def add(self, batch: dict) -> None:
        import torch

        n = len(next(iter(batch.values())))
        if not self.tensors:
            self.tensors = {k: torch.empty((self.capacity, *v.shape[1:]), dtype=v.dtype) for k, v in batch.items()}
        rows = (self.next + torch.arange(n)) % self.capacity
        for k, v in batch.items():
            self.tensors[k][rows] = v
        self.next = (self.next + n) % self.capacity
        self.size = min(self.size + n, self.capacity)

    def sample(self, n: int, generator) -> dict:
        import torch

        rows = torch.randint(0, self.size, (n,), generator=generator)
        return {k: v[rows] for k, v in self.tensors.items()}


def encode_examples(
    components,
    count: int,
    crop: int,
    rng: np.random.Generator,
    data: str = "single",
    full_mask: float = 0.0,
    offscreen: float = 0.0,
    word_maps: bool = False,
) -> dict:
    """`count` fresh examples as the UNet needs them: x0 = E(image) and E(masked image) (posterior means ×
    scaling factor), the latent-grid mask and the prompt's token ids; with `word_maps` (--data captions) also
    where each token's shape lies (word_maps)."""
    import torch

    vae, tokenizer = components["vae"], components["tokenizer"]
    examples = [inpainting_example(rng, data, full_mask, offscreen) for _ in range(count)]
    pixels, masked, grid, origins = unet_inputs(examples, crop, rng)
    extra = {}
    if word_maps:
        extra = word_maps_of(tokenizer, [e[3] for e in examples], origins, crop)
    with torch.no_grad():
        both = vae.encode(torch.cat([pixels, masked])).latent_dist.mean * vae.config.scaling_factor
    ids = tokenizer(
        [e[2] for e in examples],
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids
    return {"latents": both[:count], "masked": both[count:], "mask": grid, "ids": ids, **extra}


MAX_NAMED = world.TRAIN_SHAPES[1] + world.OFFSCREEN[1]  # the most shapes a training caption names


def caption_token_shapes(tokenizer, named: list) -> list[int]:
    """For each of the caption's `model_max_length` token ids (world.caption(named)), the index in `named` of the
    shape whose words ("a red circle") it belongs to, or -1 (start, separators, end, padding)."""
    ids = [tokenizer.bos_token_id]
    owner = [-1]
    for i, shape in enumerate(named):
        if i:
            gap = world.CAPTION_AND if i == len(named) - 1 else world.CAPTION_COMMA
            piece = tokenizer(gap.strip(), add_special_tokens=False).input_ids
            ids += piece
            owner += [-1] * len(piece)
        piece = tokenizer(shape.prompt, add_special_tokens=False).input_ids
        ids += piece
        owner += [i] * len(piece)
    length = tokenizer.model_max_length
    whole = tokenizer(world.caption(named), padding="max_length", max_length=length, truncation=True).input_ids
    if whole[: len(ids)] != ids[:length]:
        raise ValueError(f"the tokenizer splits {world.caption(named)!r} differently from its parts")
    return (owner + [-1] * length)[:length]


def word_maps_of(tokenizer, named: list[list], origins: list[tuple[int, int]], crop: int) -> dict:
    """The attention loss's targets for captioned examples: "owner" (B, T), for each token the index of the shape
    it names (caption_token_shapes) and "regions" (B, MAX_NAMED, crop/8, crop/8), the share of each latent cell of
    the `crop`-px window at `origins` covered by each named shape's box (zero for shapes beyond the picture or
    the window)."""
    import torch

    side = crop // LATENT_SCALE
    owner = torch.tensor([caption_token_shapes(tokenizer, shapes) for shapes in named])
    regions = np.zeros((len(named), MAX_NAMED, side, side), np.float32)
    for b, (shapes, (top, left)) in enumerate(zip(named, origins)):
        for i, shape in enumerate(shapes):
            if shape.r:  # drawn: offscreen shapes have radius 0
                box = np.asarray(world.box_mask(shape.box), bool)[top : top + crop, left : left + crop]
                regions[b, i] = box.reshape(side, LATENT_SCALE, side, LATENT_SCALE).mean((1, 3))
    return {"owner": owner, "regions": torch.from_numpy(regions)}


class CrossAttentionRecorder:
    """A diffusers attention processor for cross-attention (attn2) that computes softmax(q kᵀ · scale)
    explicitly and hands each call's probabilities, averaged over heads, (B, n, T), with their autograd graph, to
    `record`, which keeps them in `probs` (for the attention loss; the toy benchmark's probe reads them instead)."""

    def __init__(self):
        self.probs: list = []

    def record(self, probs) -> None:
        self.probs.append(probs)

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        import torch

        from ..attention import _output, _project

        q, k, v = _project(attn, hidden_states, encoder_hidden_states)
        weights = (torch.matmul(q, k.transpose(-1, -2)) * attn.scale).softmax(-1)  # (B, H, n, T)
        self.record(weights.mean(1))
        return _output(attn, torch.matmul(weights, v), hidden_states)


@contextlib.contextmanager
def cross_attention_processor(unet, processor):
    """`processor` on every cross-attention layer (attn2) of `unet` while the block runs; then the processors
    that were there before."""
    processors = unet.attn_processors
    unet.set_attn_processor({k: processor if k.endswith("attn2.processor") else v for k, v in processors.items()})
    try:
        yield processor
    finally:
        unet.set_attn_processor(processors)


ATTENTION_DIVISORS = (2, 4)  # latent cells per attention cell on PAIntA's and RASG's grids, H/16 and H/32


def word_attention_loss(probs: list, owner, regions, keep):
    """The mean over cross-attention layers on the H/16 and H/32 grids and over the tokens of shapes in view of (1 −
    the share of the token's attention, over the image, that falls in its shape's box)², TokenCompose's token loss
    (Wang et al., CVPR 2024) with boxes for its masks and every word of a phrase for its nouns: it teaches each
    word to attend where its shape is, as large models learn to. `owner` (B, T) and `regions` (B, S, h, w) as
    word_maps_of gives them; `keep` (B,) False where the caption was dropped."""
    import torch
    import torch.nn.functional as F

    latent_side = regions.shape[-1]
    terms, grids = [], 0
    for p in probs:
        side = math.isqrt(p.shape[1])
        divisor = latent_side // side
        if side * side != p.shape[1] or side * divisor != latent_side or divisor not in ATTENTION_DIVISORS:
            continue
        grids += 1
        cells = F.avg_pool2d(regions, divisor).flatten(2)  # (B, S, n): the box's share of each cell
        target = torch.gather(cells, 1, owner.clamp(min=0)[..., None].expand(-1, -1, cells.shape[-1]))  # (B, T, n)
        attention = p.transpose(1, 2)  # (B, T, n)
        share = (attention * target).sum(-1) / attention.sum(-1).clamp_min(1e-12)
        valid = (owner >= 0) & (target.sum(-1) > 0) & keep[:, None]
        terms.append(((1 - share) ** 2)[valid])
    if not grids:
        raise ValueError(f"no cross-attention layer on the H/16 or H/32 grid of a {latent_side}-cell latent")
    terms = torch.cat(terms)
    return terms.mean() if len(terms) else terms.sum()


def autoencoder_loss(vae, x, shape_weight: float):
    """Reconstruction (L1 + squared error) of pixels `x` through the posterior mean; shape pixels count
    `1 + shape_weight` times; plus a small penalty on the latents' size."""
    z = vae.encode(x).latent_dist.mean
    error = (vae.decode(z).sample - x).abs()
    saturated = (x.amax(1, keepdim=True) - x.amin(1, keepdim=True)) * 127.5 > world.SATURATION
    weight = 1 + shape_weight * saturated
    return (weight * (error + error**2)).mean() / weight.mean() + LATENT_PENALTY * (z**2).mean()


def train_autoencoder(
    vae,
    steps: int,
    batch: int,
    rng,
    log,
    crop: int = 128,
    lr: float = 2e-3,
    shape_weight: float = 4.0,
    shapes: tuple[int, int] = FIRST_WORLD_SHAPES,
) -> tuple[float, list[float], list[float]]:
    """Reconstruction through the posterior mean, which is all the pipeline ever uses (sampling the
    posterior would only add noise that a tiny autoencoder takes long to learn away), on random `crop`-px
    crops of scenes (the autoencoder is convolutional: 4× cheaper than whole scenes).

    Shapes cover about a tenth of a scene, so a plain mean lets the background alone bring the loss to a
    long plateau; shape pixels (saturated, as the scorer sees them) count `1 + shape_weight` times.
    Returns the latents' standard deviation (for scaling), the losses, and the loss on held-out whole
    scenes before and after."""
    import torch

    held_out = to_tensor([s.image for s in scenes(np.random.default_rng(VALIDATION_SEED), 8, shapes)])

    def validation_loss() -> float:
        vae.eval()
        with torch.no_grad():
            value = float(autoencoder_loss(vae, held_out, shape_weight))
        vae.train()
        return value

    val = [validation_loss()]
    losses = []
    optimizer = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    schedule = warmup_cosine(optimizer, steps, AE_WARMUP)
    for step in range(steps):
        x = to_tensor([s.image for s in scenes(rng, batch, shapes)])
        top, left = (int(v) for v in rng.integers(0, world.SIZE - crop + 1, 2) // LATENT_SCALE * LATENT_SCALE)
        loss = autoencoder_loss(vae, x[:, :, top : top + crop, left : left + crop], shape_weight)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        if step % 50 == 0 or step == steps - 1:
            log(f"autoencoder {step + 1}/{steps}: loss {np.mean(losses[-50:]):.4f}")
    val.append(validation_loss())
    vae.eval()
    with torch.no_grad():
        z = vae.encode(to_tensor([s.image for s in scenes(rng, 16, shapes)])).latent_dist.mean
    return float(z.std()), losses, val


def autoencoder_fidelity(
    vae, count: int = 48, seed: int = FIDELITY_SEED, shapes: tuple[int, int] = FIRST_WORLD_SHAPES
) -> float:
    """Share of ground-truth shapes (box grown by 6 px) the scorer still reads right after encode → decode."""
    import torch

    from ..images import to_uint8

    rng = np.random.default_rng(seed)
    right = total = 0
    with torch.no_grad():
        while total < count:
            batch = scenes(rng, 8, shapes)
            decoded = vae.decode(vae.encode(to_tensor([s.image for s in batch])).latent_dist.mean).sample
            for scene, array in zip(batch, to_uint8(decoded)):
                image = PIL.Image.fromarray(array)
                for shape in scene.shapes:
                    right += world.classify(image, world.box_mask(shape.box, grow=6)) == (shape.color, shape.shape)
                    total += 1
    return right / total


def snr_weights(alphas_cumprod, t, gamma: float | None):
    """min(1, (γ + 1)/(SNR + 1)) per example: the v-loss, whose x0 error weight is SNR + 1, with that weight
    capped at γ + 1 (as min-SNR-γ caps it), so the nearly clean steps do not dominate; ones when γ is None."""
    import torch

    if gamma is None:
        return torch.ones(len(t))
    snr = alphas_cumprod[t] / (1 - alphas_cumprod[t])
    return ((gamma + 1) / (snr + 1)).clamp(max=1.0)


def denoising_loss(
    components,
    batch: dict,
    generator,
    mask_weight: float,
    snr_gamma: float | None,
    drop_prompt: float = 0.0,
    attention_weight: float = 0.0,
    parts: dict | None = None,
):
    """The weighted v-prediction loss on a batch of encoded examples, noise and timesteps drawn from `generator`,
    plus `attention_weight` × word_attention_loss when the batch carries word maps; `parts`, if given, receives
    both terms ("v", "attention")."""
    import torch

    unet, text_encoder, tokenizer, scheduler = (
        components[k] for k in ("unet", "text_encoder", "tokenizer", "scheduler")
    )
    n = len(batch["ids"])
    empty = tokenizer([""], padding="max_length", max_length=tokenizer.model_max_length, return_tensors="pt").input_ids
    drop = torch.rand(n, generator=generator) < drop_prompt
    ids = torch.where(drop[:, None], empty, batch["ids"])
    noise = torch.randn(batch["latents"].shape, generator=generator)
    t = torch.randint(0, scheduler.config.num_train_timesteps, (n,), generator=generator)
    a = scheduler.alphas_cumprod[t].view(-1, 1, 1, 1)
    noisy = a.sqrt() * batch["latents"] + (1 - a).sqrt() * noise
    target = a.sqrt() * noise - (1 - a).sqrt() * batch["latents"]  # v
    context = text_encoder(ids)[0]
    recorder = CrossAttentionRecorder() if attention_weight and "owner" in batch else None
    inputs = torch.cat([noisy, batch["mask"], batch["masked"]], 1)
    with cross_attention_processor(unet, recorder) if recorder is not None else contextlib.nullcontext():
        prediction = unet(inputs, t, encoder_hidden_states=context).sample
    weight = (1 + mask_weight * batch["mask"]) * snr_weights(scheduler.alphas_cumprod, t, snr_gamma).view(-1, 1, 1, 1)
    loss = (weight * (prediction - target) ** 2).mean()
    if parts is not None:
        parts["v"] = loss.item()
    if recorder is not None:
        words = word_attention_loss(recorder.probs, batch["owner"], batch["regions"], ~drop)
        loss = loss + attention_weight * words
        if parts is not None:
            parts["attention"] = words.item()
    return loss


def train_inpainting(
    components,
    steps: int,
    batch: int,
    rng,
    log,
    lr: float = 4e-4,
    deadline: float = float("inf"),
    crop: int = 160,
    full_share: float = 0.15,
    pool_size: int = 512,
    refresh: int = 4,
    mask_weight: float = 2.0,
    snr_gamma: float | None = 5.0,
    ema_decay: float = 0.999,
    validation: int = 32,
    data: str = "single",
    max_steps: int | None = None,
    full_mask: float = 0.0,
    offscreen: float = 0.0,
    attention_weight: float = 0.0,
    attention_losses: list | None = None,
) -> tuple[list[float], list[float]]:
    """Text encoder and UNet, with the vae frozen; the components end up holding the EMA weights. Returns the
    training losses and the (v-)loss on `validation` held-out whole-scene examples (fixed noise) before and after.
    `max_steps` stops after that many of the `steps` the schedules are planned for (as a deadline would, but
    reproducibly). With `attention_weight` (--data captions) the loss adds that much word_attention_loss, whose
    values go to `attention_losses`."""
    import torch
    from diffusers.training_utils import EMAModel

    if attention_weight and data != "captions":
        raise ValueError("the attention loss needs --data captions: its words name the shapes in the picture")
    unet, text_encoder = components["unet"], components["text_encoder"]
    components["vae"].eval().requires_grad_(False)
    held_out = encode_examples(
        components, validation, world.SIZE, np.random.default_rng(VALIDATION_SEED), data, full_mask, offscreen
    )

    def validation_loss() -> float:
        with torch.no_grad():
            return float(
                denoising_loss(components, held_out, torch.Generator().manual_seed(0), mask_weight, snr_gamma)
            )

    unet.eval()
    text_encoder.eval()
    val = [validation_loss()]
    unet.train()
    text_encoder.train()
    params = list(unet.parameters()) + list(text_encoder.parameters())
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=1e-2)
    schedule = warmup_cosine(optimizer, steps, UNET_WARMUP)
    ema = EMAModel(params, decay=ema_decay, use_ema_warmup=True, power=3 / 4)
    generator = torch.Generator().manual_seed(int(rng.integers(2**31)))
    full_from = steps - int(round(full_share * steps))  # the last steps train on whole scenes
    words = bool(attention_weight)
    pool, size = None, None
    losses = []
    started = time.monotonic()
    for step in range(steps):
        if pool is None or (step == full_from and size != world.SIZE):
            size = crop if step < full_from else world.SIZE
            pool = ExamplePool(pool_size)
            while pool.size < pool_size:
                chunk = min(ENCODE_CHUNK, pool_size - pool.size)
                pool.add(encode_examples(components, chunk, size, rng, data, full_mask, offscreen, words))
            log(f"step {step + 1}: a pool of {pool_size} examples at {size} px")
        pool.add(encode_examples(components, refresh, size, rng, data, full_mask, offscreen, words))
        parts = {}
        loss = denoising_loss(
            components,
            pool.sample(batch, generator),
            generator,
            mask_weight,
            snr_gamma,
            DROP_PROMPT,
            attention_weight,
            parts,
        )
        if "attention" in parts and attention_losses is not None:
            attention_losses.append(parts["attention"])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        ema.step(params)
        losses.append(loss.item())
        if step % 50 == 0 or step == steps - 1:
            rate = (time.monotonic() - started) / (step + 1)
            attention = f", attention {np.mean(attention_losses[-50:]):.4f}" if attention_losses else ""
            log(f"inpainting {step + 1}/{steps}: loss {np.mean(losses[-50:]):.4f}{attention} ({rate:.2f} s/step)")
        if time.monotonic() > deadline:
            log(f"time budget reached after {step + 1} steps")
            break
        if max_steps is not None and step + 1 >= max_steps:
            log(f"stopped after {step + 1} steps (--max-steps)")
            break
    ema.copy_to(params)
    unet.eval()
    text_encoder.eval()
    val.append(validation_loss())
    log(f"held-out loss {val[0]:.4f} → {val[1]:.4f}")
    return losses, val


def faithfulness_check(
    components, count: int = 24, seed: int = CHECK_SEED, placements: tuple[str, ...] = world.PLACEMENTS[:3]
) -> dict:
    """Colour / shape / both accuracy of plain inpainting (method baseline, CFG 7.5, CHECK_STEPS steps) on
    held-out cases of the benchmark's kind (hdpainter.toy.world.neglect_cases) with these `placements`."""
    import torch

    from ..inpaint import HDPainterPipeline

    pipe = HDPainterPipeline(**components, safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    hits = {"color": 0, "shape": 0, "both": 0}
    cases = world.neglect_cases(count, seed, placements)
    for case in cases:
        result = pipe(
            case.prompt,
            case.image,
            case.mask,
            method="baseline",
            num_inference_steps=CHECK_STEPS,
            negative_prompt="",
            positive_prompt="",
            working_size=world.SIZE,
            generator=torch.Generator().manual_seed(case.index),
        ).images[0]
        color, shape = world.classify(result, case.mask)
        hits["color"] += color == case.color
        hits["shape"] += shape == case.shape
        hits["both"] += (color, shape) == (case.color, case.shape)
    return {k: v / len(cases) for k, v in hits.items()} | {"cases": len(cases)}


def load_components(folder: str | Path) -> dict:
    """The parts of a saved toy model, in float32, ready to train further."""
    import torch
    from diffusers import StableDiffusionInpaintPipeline

    pipe = StableDiffusionInpaintPipeline.from_pretrained(
        folder, torch_dtype=torch.float32, safety_checker=None, requires_safety_checker=False
    )
    return {k: getattr(pipe, k) for k in ("vae", "text_encoder", "tokenizer", "unet", "scheduler")}


def save(components, out: Path, fp16: bool = True) -> Path:
    import torch
    from diffusers import StableDiffusionInpaintPipeline

    pipe = StableDiffusionInpaintPipeline(
        **components, safety_checker=None, feature_extractor=None, requires_safety_checker=False
    )
    if fp16:
        pipe.to(torch.float16)
    pipe.save_pretrained(out, safe_serialization=True)
    pipe.to(torch.float32)
    return out


def keep_freed_memory() -> bool:
    """Ask glibc to keep freed memory for reuse instead of returning it to the kernel (mallopt(3)), as a GPU's
    caching allocator does. Training allocates and frees the same large buffers every step; without this, a
    CPU spends up to half its time in the kernel zeroing fresh pages. Returns whether it took effect."""
    import ctypes
    import ctypes.util

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # <malloc.h>
    return bool(mallopt(m_mmap_threshold, 32 * 2**20)) and bool(
        mallopt(m_trim_threshold, 2**31 - 1)
    )  # 32 MiB: glibc's maximum


def main(argv: list[str] | None = None) -> int:
    import torch

    parser = argparse.ArgumentParser(prog="python -m hdpainter.toy.train", description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder for the trained diffusers model")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ae-steps", type=int, default=900)
    parser.add_argument("--ae-batch", type=int, default=8)
    parser.add_argument("--ae-crop", type=int, default=128, help="autoencoder training crops (px, a multiple of 8)")
    parser.add_argument(
        "--data",
        default="single",
        choices=DATA,
        help="training examples: single (the shipped model's: the prompt names the masked shape) or captions "
        "(issue #17: 2-4 shapes, captions of the whole scene, random masks)",
    )
    parser.add_argument(
        "--full-mask",
        type=float,
        default=0.0,
        help="with --data captions: the share of examples that mask the whole scene (text-to-image examples; "
        "Stable Diffusion's inpainting training used 0.25)",
    )
    parser.add_argument(
        "--offscreen",
        type=float,
        default=0.0,
        help="with --data captions: the share of captions that also name 1-2 shapes beyond the picture (as captions "
        "of photos name what a training crop cut off): the cause of prompt neglect",
    )
    parser.add_argument(
        "--attention-loss",
        type=float,
        default=0.0,
        help="with --data captions: weight of a loss that teaches each word of the caption to attend, on the H/16 and "
        "H/32 grids, where its shape is (TokenCompose's token loss), as large models learn to; 0 for none",
    )
    parser.add_argument(
        "--levels",
        type=int,
        choices=LEVELS,
        default=None,
        help="UNet levels: 3 (the shipped model's; H/32 is the bottleneck) or 4 (Stable Diffusion's layout, a plain "
        "H/64 level below H/32); with --resume, 4 deepens a 3-level model (deepen_unet); default: 3, or the "
        "resumed model's",
    )
    parser.add_argument("--steps", type=int, default=4000, help="inpainting steps")
    parser.add_argument(
        "--max-steps", type=int, default=None, help="stop after this many steps (schedules stay planned for --steps)"
    )
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=4e-4)
    parser.add_argument(
        "--crop",
        type=int,
        default=160,
        help="inpainting crops around the mask (px, a multiple of 32 with 3 UNet levels, of 64 with 4)",
    )
    parser.add_argument(
        "--full-share", type=float, default=0.15, help="share of the inpainting steps, at the end, on whole scenes"
    )
    parser.add_argument("--pool", type=int, default=512, help="encoded examples kept for replay")
    parser.add_argument("--refresh", type=int, default=4, help="new examples encoded per step")
    parser.add_argument("--mask-weight", type=float, default=2.0, help="extra loss weight inside the mask")
    parser.add_argument(
        "--snr-gamma", type=float, default=5.0, help="cap the v-loss's x0 weight at γ + 1 (min-SNR-γ); 0 for none"
    )
    parser.add_argument(
        "--ema", type=float, default=0.999, help="EMA decay of the saved weights (at most; it warms up)"
    )
    parser.add_argument(
        "--check", type=int, default=24, help="held-out cases of the final faithfulness check; 0 for none"
    )
    parser.add_argument(
        "--minutes",
        type=float,
        default=None,
        help="stop the inpainting phase early if the whole run would take longer than this",
    )
    parser.add_argument(
        "--resume",
        default=None,
        help="a saved toy model: keep its autoencoder, train its UNet and text encoder further",
    )
    parser.add_argument(
        "--autoencoder",
        default=None,
        help="a saved toy model: take its trained autoencoder (skipping phase 1), train a new UNet and text encoder",
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's; 1 when the CPU is shared)"
    )
    args = parser.parse_args(argv)
    if args.ae_crop % LATENT_SCALE or not LATENT_SCALE <= args.ae_crop <= world.SIZE:
        parser.error(f"--ae-crop must be a multiple of {LATENT_SCALE} in {LATENT_SCALE}..{world.SIZE}")
    for flag, share in (("--full-mask", args.full_mask), ("--offscreen", args.offscreen)):
        if share and args.data != "captions" or not 0 <= share <= 1:
            parser.error(f"{flag} is a share in 0..1 and goes with --data captions")
    if args.attention_loss and args.data != "captions" or args.attention_loss < 0:
        parser.error("--attention-loss is a weight of at least 0 and goes with --data captions")
    if args.resume and args.autoencoder:
        parser.error("--resume already keeps the saved model's autoencoder: give one of --resume, --autoencoder")
    levels = args.levels or 3
    if args.resume:
        saved = saved_unet_levels(args.resume)
        if saved is None:
            parser.error(f"--resume {args.resume}: no toy model there (no readable unet/config.json)")
        if args.levels is not None and args.levels < saved:
            parser.error(f"--levels {args.levels}: {args.resume} has a {saved}-level UNet, which only deepens to 4")
        levels = args.levels or saved
    multiple = unet_multiple(levels)
    if args.crop % multiple or not multiple <= args.crop <= world.SIZE:
        parser.error(f"--crop must be a multiple of {multiple} in {multiple}..{world.SIZE} with {levels} UNet levels")
    if not 1 <= args.refresh <= args.pool:
        parser.error("--refresh must be at least 1 and at most --pool")
    if args.threads:
        torch.set_num_threads(args.threads)
    keep_freed_memory()  # this process only: the training script is a program of its own, not a library call
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    out = Path(args.out)
    started = time.perf_counter()

    def log(message):
        print(f"[{time.perf_counter() - started:7.0f} s] {message}", file=sys.stderr, flush=True)

    if args.resume:
        components = load_components(args.resume)
        std, ae_losses, ae_val = 1.0 / components["vae"].config.scaling_factor, [], []
        log(f"resumed from {args.resume}: the autoencoder is kept, the inpainting phase goes on")
        if levels != unet_levels(components["unet"]):
            components["unet"], new = deepen_unet(components["unet"], args.seed)
            log(f"deepened to Stable Diffusion's 4 levels; {len(new)} new parameter tensors")
    elif args.autoencoder:
        components = make_components(args.seed, levels)
        components["vae"] = load_components(args.autoencoder)["vae"]
        std, ae_losses, ae_val = 1.0 / components["vae"].config.scaling_factor, [], []
        log(f"the autoencoder of {args.autoencoder}; a new UNet and text encoder")
    else:
        components = make_components(args.seed, levels)
        std, ae_losses, ae_val = train_autoencoder(
            components["vae"], args.ae_steps, args.ae_batch, rng, log, args.ae_crop, shapes=scene_shapes(args.data)
        )
        components["vae"].register_to_config(scaling_factor=1.0 / std)
        log(f"latent std {std:.3f}: scaling factor {1 / std:.4f}")
    fidelity = autoencoder_fidelity(components["vae"], shapes=scene_shapes(args.data))
    log(f"the scorer reads {100 * fidelity:.0f} % of ground-truth shapes right through the autoencoder")
    deadline = float("inf")
    if args.minutes:  # keep a minute and a half for saving and the check
        deadline = time.monotonic() + 60 * args.minutes - (time.perf_counter() - started) - (90 if args.check else 15)
    attention_losses = []
    losses, val = train_inpainting(
        components,
        args.steps,
        args.batch,
        rng,
        log,
        args.lr,
        deadline,
        args.crop,
        args.full_share,
        args.pool,
        args.refresh,
        args.mask_weight,
        args.snr_gamma or None,
        args.ema,
        data=args.data,
        max_steps=args.max_steps,
        full_mask=args.full_mask,
        offscreen=args.offscreen,
        attention_weight=args.attention_loss,
        attention_losses=attention_losses,
    )
    save(components, out)
    check = faithfulness_check(components, args.check, placements=case_placements(args.data)) if args.check else {}
    if check:
        log(
            f"faithfulness check (baseline, {check['cases']} held-out cases): colour {check['color']:.0%}, "
            f"shape {check['shape']:.0%}, both {check['both']:.0%}"
        )
    record = {
        "args": vars(args),
        "seconds": round(time.perf_counter() - started),
        "latent_std": std,
        "autoencoder_fidelity": fidelity,
        "autoencoder_validation_loss": ae_val,
        "steps_done": len(losses),
        "check": check,
        "validation_loss": val,
        "final_loss": float(np.mean(losses[-100:])),
        "first_loss": float(np.mean(losses[:100])),
        "ae_losses": [round(v, 5) for v in ae_losses],
        "losses": [round(v, 5) for v in losses],
        "attention_losses": [round(v, 5) for v in attention_losses],
        # `losses` are the totals; with the attention loss, their v-loss term alone
        "v_losses": [round(t - args.attention_loss * a, 5) for t, a in zip(losses, attention_losses)],
        "params": {k: sum(p.numel() for p in components[k].parameters()) for k in ("vae", "unet", "text_encoder")},
    }
    (out / "training.json").write_text(json.dumps(record, indent=1))
    log(
        f"saved to {out}: {json.dumps(record['params'])}, loss {record['first_loss']:.4f} → {record['final_loss']:.4f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
