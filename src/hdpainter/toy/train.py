"""Train the toy-world inpainting model from scratch on a CPU: `python -m hdpainter.toy.train --out DIR`.

Stable Diffusion's geometry at 256 px: an autoencoder (×8, 4 latent channels), a small CLIP text
encoder with a BPE tokenizer, and a 9-channel inpainting UNet with cross-attention at H/16 and H/32 and
in the middle block (so PAIntA's and RASG's grids, H/32 = 8×8 and H/16 = 16×16, exist). Phase 1
trains the autoencoder on toy scenes; phase 2 trains the text encoder and UNet together on inpainting
examples: mask a shape's box (grown by a random margin), a part of a shape, or empty background, and
prompt the shape ("a red circle", or "" for background); 10 % of prompts are dropped for
classifier-free guidance. Seeded throughout; the result is a diffusers folder (fp16 weights).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from . import world

LATENT_SCALE = 8
DROP_PROMPT = 0.1  # classifier-free guidance: the share of examples trained without their prompt


def make_components(seed: int = 0) -> dict:
    """The untrained toy model: VAE, text encoder, tokenizer, UNet, DDIM scheduler."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from ..testing import make_tokenizer

    torch.manual_seed(seed)
    tokenizer = make_tokenizer("sd1")
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_attention_heads=4, num_hidden_layers=2,
        max_position_embeddings=77, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, hidden_act="quick_gelu", projection_dim=64))
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(16, 32, 48, 48), layers_per_block=1, latent_channels=4, norm_num_groups=8,
        sample_size=world.SIZE)
    unet = UNet2DConditionModel(
        sample_size=world.SIZE // LATENT_SCALE, in_channels=9, out_channels=4, layers_per_block=1,
        block_out_channels=(48, 96, 128),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),  # H/8, H/16, H/32
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=64, attention_head_dim=4, norm_num_groups=16)
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1, prediction_type="epsilon")
    return dict(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler)


def to_tensor(images):
    """PIL images → a (B, 3, H, W) tensor in [-1, 1]."""
    import torch

    array = np.stack([np.asarray(i.convert("RGB"), dtype=np.float32) for i in images]) / 127.5 - 1.0
    return torch.from_numpy(array).permute(0, 3, 1, 2)


def warmup_cosine(optimizer, steps: int, warmup: float):
    """Linear warm-up over `warmup` of the steps, then a cosine decay to a tenth."""
    import math

    import torch

    first = max(1, int(warmup * steps))

    def factor(step):
        if step < first:
            return (step + 1) / first
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, (step - first) / max(1, steps - first))))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def scenes(rng, count):
    return [world.random_scene(rng) for _ in range(count)]


def inpainting_example(rng: np.random.Generator):
    """(scene image, mask, prompt): a shape's box grown by 2–24 px (65 %), part of a shape (15 %), or an
    empty background box with the empty prompt (20 %)."""
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
        box = [(x0 - 4, y0 - 4, x0 + cut, y1 + 4), (x1 - cut, y0 - 4, x1 + 4, y1 + 4),
               (x0 - 4, y0 - 4, x1 + 4, y0 + cut), (x0 - 4, y1 - cut, x1 + 4, y1 + 4)][side]
        return scene.image, world.box_mask(box), shape.prompt
    return scene.image, world.box_mask(shape.box, grow=int(rng.integers(2, 25))), shape.prompt


def train_autoencoder(vae, steps: int, batch: int, rng, log, crop: int = 128) -> tuple[float, list[float]]:
    """Reconstruction (L1 + MSE) with a small KL term, on random `crop`-px crops of scenes (the autoencoder
    is convolutional: 4× cheaper than whole scenes); returns the latents' standard deviation (for scaling)
    and the losses."""
    import torch

    vae.train()
    losses = []
    optimizer = torch.optim.AdamW(vae.parameters(), lr=1e-3, weight_decay=0.0)
    schedule = warmup_cosine(optimizer, steps, 0.05)
    for step in range(steps):
        x = to_tensor([s.image for s in scenes(rng, batch)])
        top, left = (int(v) for v in rng.integers(0, world.SIZE - crop + 1, 2) // LATENT_SCALE * LATENT_SCALE)
        x = x[:, :, top:top + crop, left:left + crop]
        posterior = vae.encode(x).latent_dist
        z = posterior.sample(generator=None)
        y = vae.decode(z).sample
        kl = posterior.kl().mean() / z[0].numel()
        loss = (y - x).abs().mean() + ((y - x) ** 2).mean() + 1e-4 * kl
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        if step % 50 == 0 or step == steps - 1:
            log(f"autoencoder {step + 1}/{steps}: loss {np.mean(losses[-50:]):.4f}")
    vae.eval()
    with torch.no_grad():
        z = vae.encode(to_tensor([s.image for s in scenes(rng, 16)])).latent_dist.mean
    return float(z.std()), losses


def train_inpainting(components, steps: int, batch: int, rng, log, lr: float = 4e-4, deadline: float = float("inf")) -> list[float]:
    import torch

    vae, unet, text_encoder, tokenizer, scheduler = (components[k] for k in ("vae", "unet", "text_encoder", "tokenizer", "scheduler"))
    scale = vae.config.scaling_factor
    unet.train()
    text_encoder.train()
    params = list(unet.parameters()) + list(text_encoder.parameters())
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=1e-2)
    schedule = warmup_cosine(optimizer, steps, 0.03)
    alphas = scheduler.alphas_cumprod
    generator = torch.Generator().manual_seed(int(rng.integers(2**31)))
    losses = []
    for step in range(steps):
        examples = [inpainting_example(rng) for _ in range(batch)]
        images = to_tensor([e[0] for e in examples])
        masks = torch.from_numpy(np.stack([np.asarray(e[1]) > 127 for e in examples])).float()[:, None]
        prompts = ["" if rng.random() < DROP_PROMPT else e[2] for e in examples]
        with torch.no_grad():
            latents = vae.encode(images).latent_dist.mean * scale
            masked = vae.encode(images * (masks < 0.5)).latent_dist.mean * scale
        small = torch.nn.functional.interpolate(masks, size=latents.shape[-2:])
        tokens = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                           return_tensors="pt").input_ids
        noise = torch.randn(latents.shape, generator=generator)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (batch,), generator=generator)
        a = alphas[t].view(-1, 1, 1, 1)
        noisy = a.sqrt() * latents + (1 - a).sqrt() * noise
        context = text_encoder(tokens)[0]
        prediction = unet(torch.cat([noisy, small, masked], 1), t, encoder_hidden_states=context).sample
        loss = torch.nn.functional.mse_loss(prediction, noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        if step % 50 == 0 or step == steps - 1:
            log(f"inpainting {step + 1}/{steps}: loss {np.mean(losses[-50:]):.4f}")
        if time.monotonic() > deadline:
            log(f"time budget reached after {step + 1} steps")
            break
    unet.eval()
    text_encoder.eval()
    return losses


def load_components(folder: str | Path) -> dict:
    """The parts of a saved toy model, in float32, ready to train further."""
    import torch
    from diffusers import StableDiffusionInpaintPipeline

    pipe = StableDiffusionInpaintPipeline.from_pretrained(folder, torch_dtype=torch.float32, safety_checker=None,
                                                          requires_safety_checker=False)
    return {k: getattr(pipe, k) for k in ("vae", "text_encoder", "tokenizer", "unet", "scheduler")}


def save(components, out: Path, fp16: bool = True) -> Path:
    import torch
    from diffusers import StableDiffusionInpaintPipeline

    pipe = StableDiffusionInpaintPipeline(**components, safety_checker=None, feature_extractor=None,
                                          requires_safety_checker=False)
    if fp16:
        pipe.to(torch.float16)
    pipe.save_pretrained(out, safe_serialization=True)
    pipe.to(torch.float32)
    return out


def main(argv: list[str] | None = None) -> int:
    import torch

    parser = argparse.ArgumentParser(prog="python -m hdpainter.toy.train", description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder for the trained diffusers model")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ae-steps", type=int, default=500)
    parser.add_argument("--ae-batch", type=int, default=8)
    parser.add_argument("--ae-crop", type=int, default=128, help="autoencoder training crops (px, a multiple of 8)")
    parser.add_argument("--steps", type=int, default=4000, help="inpainting steps")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=4e-4)
    parser.add_argument("--minutes", type=float, default=None, help="stop the inpainting phase after this much wall time")
    parser.add_argument("--resume", default=None, help="a saved toy model: keep its autoencoder, train its UNet and text encoder further")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's; 1 when the CPU is shared)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    out = Path(args.out)
    started = time.perf_counter()

    def log(message):
        print(f"[{time.perf_counter() - started:7.0f} s] {message}", file=sys.stderr, flush=True)

    if args.resume:
        components = load_components(args.resume)
        std, ae_losses = 1.0 / components["vae"].config.scaling_factor, []
        log(f"resumed from {args.resume}: the autoencoder is kept, the inpainting phase goes on")
    else:
        components = make_components(args.seed)
        std, ae_losses = train_autoencoder(components["vae"], args.ae_steps, args.ae_batch, rng, log, args.ae_crop)
        components["vae"].register_to_config(scaling_factor=1.0 / std)
        log(f"latent std {std:.3f}: scaling factor {1 / std:.4f}")
    deadline = time.monotonic() + 60 * args.minutes - (time.perf_counter() - started) if args.minutes else float("inf")
    losses = train_inpainting(components, args.steps, args.batch, rng, log, args.lr, deadline)
    save(components, out)
    record = {"args": vars(args), "seconds": round(time.perf_counter() - started), "latent_std": std,
              "final_loss": float(np.mean(losses[-100:])), "first_loss": float(np.mean(losses[:100])),
              "ae_losses": [round(v, 5) for v in ae_losses], "losses": [round(v, 5) for v in losses],
              "params": {k: sum(p.numel() for p in components[k].parameters()) for k in ("vae", "unet", "text_encoder")}}
    (out / "training.json").write_text(json.dumps(record, indent=1))
    log(f"saved to {out}: {json.dumps(record['params'])}, loss {record['first_loss']:.4f} → {record['final_loss']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
