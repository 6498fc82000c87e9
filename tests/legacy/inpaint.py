"""Stage 1: HDPainterPipeline, prompt-faithful inpainting with PAIntA and RASG (docs/method.md §1-4).

Notation: x_t `latents`, ε̂ `eps`, x̂0 `x0`, ᾱ `alpha_bar`, per-step α = 1 − β `alpha`, ind(τ) `token_mask`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import PIL.Image
import torch
from diffusers import StableDiffusionInpaintPipeline
from diffusers.pipelines.stable_diffusion import StableDiffusionPipelineOutput
from diffusers.utils.torch_utils import randn_tensor

from hdpainter import images as imgs
from hdpainter.core.rasg import ddim_sigma, normalize_gradient, rasg_objective, vanilla_guidance
from hdpainter.core.sampling import ddim_step, split_prediction, trailing_timesteps
from hdpainter.core.tokens import prompt_token_indices
from hdpainter.defaults import (
    METHODS,
    RASG_SIGMAS,
    REFERENCE_NEGATIVE_PROMPT,
    REFERENCE_POSITIVE_PROMPT,
    VANILLA_SCALE,
)
from hdpainter.errors import HDPainterError

from .attention import LATENT_FACTOR, STATE_KEY, AttentionGuidance, guided_attention

LOSS_SCALE = (
    1024.0  # RASG's loss is scaled before backward (g is std-normalised, so this changes nothing but fp16 underflow)
)
OUTPUT_TYPES = ("pil", "np", "pt", "latent")


@dataclass(frozen=True)
class GuidanceConfig:
    """Where and when PAIntA and RASG act (reference values, docs/method.md §3-4)."""

    painta_until_t: int = 500  # PAIntA is active while t > this
    painta_grids: tuple[int, ...] = (16, 32)  # pixel divisors of the grids whose self-attention becomes PAIntA
    rasg_grid: int = 32  # pixel divisor of the grid whose cross-attention logits RASG reads (H/32)
    rasg_logit_offset: float = 1.0  # BCE-with-logits(Ā − offset, M)


def _method_flags(method: str) -> tuple[bool, bool, bool]:
    """(PAIntA, RASG, vanilla post-hoc guidance) of a method name."""
    if method not in METHODS:
        raise HDPainterError(f"method must be one of {', '.join(METHODS)}; got {method!r}")
    return method in ("painta", "painta+rasg"), method in ("rasg", "painta+rasg"), method == "vanilla-guidance"


def _as_list(value, name: str) -> list:
    if isinstance(value, (list, tuple)):
        if not value:
            raise HDPainterError(f"{name} is an empty list")
        return list(value)
    return [value]


def _broadcast(values: list, n: int, name: str) -> list:
    if len(values) == 1:
        return values * n
    if len(values) != n:
        raise HDPainterError(f"{name} has {len(values)} entries for {n} prompts")
    return values


@dataclass
class Conditioning:
    """What stays fixed over the sampling loop (B conditional samples)."""

    latent_size: tuple[int, int]  # (h, w)
    image: torch.Tensor  # (B, 5, h, w): mask on the latent grid and E(masked image)
    cond_embeds: torch.Tensor  # (B, T, D) full prompts
    uncond_embeds: torch.Tensor | None  # (B, T, D) negative prompts; None without classifier-free guidance
    token_mask: torch.Tensor  # (B, T) ind(τ)
    grid_masks: dict[int, torch.Tensor]  # pixel divisor → (B, n) bool at that attention grid


def _unet(unet, x, t, embeds, cond: Conditioning, role, painta_divisors=(), rasg_divisors=(), relevance=None):
    state = AttentionGuidance(
        cond.latent_size,
        role,
        cond.token_mask,
        cond.grid_masks,
        painta_divisors,
        rasg_divisors,
        end_graph_after_rasg=bool(rasg_divisors),
        relevance=relevance if relevance is not None else {},
    )
    image = cond.image.repeat(x.shape[0] // cond.image.shape[0], 1, 1, 1)
    t_batch = torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)
    out = unet(
        torch.cat([x, image], dim=1),
        t_batch,
        encoder_hidden_states=embeds,
        cross_attention_kwargs={STATE_KEY: state},
        return_dict=False,
    )[0]
    return out, state


def guided_prediction(
    unet,
    latents: torch.Tensor,
    t: int,
    cond: Conditioning,
    guidance_scale: float,
    guidance: GuidanceConfig,
    painta_on: bool,
    gradient_on: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One UNet evaluation of a sampling step: the CFG-combined output, and ∇_{x_t} L of RASG's objective
    (float32; None unless `gradient_on`).

    Call inside `guided_attention(unet)`. Without the gradient: one batched [uncond; cond] pass. With it:
    the conditional half with gradients w.r.t. x_t only (weights need no grad), then the unconditional half
    outside the graph, reusing the conditional half's PAIntA relevance maps.
    """
    painta = tuple(guidance.painta_grids) if painta_on else ()
    do_cfg = cond.uncond_embeds is not None
    gradient = None
    if gradient_on:
        x = latents.detach().requires_grad_(True)
        with (
            torch.enable_grad()
        ):  # the last RASG layer switches recording off for the rest of the pass; this restores it
            out_cond, state = _unet(unet, x, t, cond.cond_embeds, cond, "cond", painta, (guidance.rasg_grid,))
        with torch.enable_grad():
            loss = rasg_objective(
                state.rasg_logits(), cond.token_mask, cond.grid_masks[guidance.rasg_grid], guidance.rasg_logit_offset
            )
            (grad,) = torch.autograd.grad(loss.sum() * LOSS_SCALE, x)
        out_cond = out_cond.detach()
        gradient = grad.float() / LOSS_SCALE
        if do_cfg:
            out_uncond, _ = _unet(
                unet, latents, t, cond.uncond_embeds, cond, "uncond", painta, relevance=state.relevance
            )
    elif do_cfg:
        out, _ = _unet(
            unet,
            torch.cat([latents, latents]),
            t,
            torch.cat([cond.uncond_embeds, cond.cond_embeds]),
            cond,
            "cfg",
            painta,
        )
        out_uncond, out_cond = out.chunk(2)
    else:
        out_cond, _ = _unet(unet, latents, t, cond.cond_embeds, cond, "cond", painta)
    if not do_cfg:
        return out_cond, gradient
    return out_uncond + guidance_scale * (out_cond - out_uncond), gradient


class HDPainterPipeline(StableDiffusionInpaintPipeline):
    """HD-Painter stage 1 on any 9-channel Stable Diffusion 1.x/2.x inpainting checkpoint.

    Loads like any diffusers pipeline (`HDPainterPipeline.from_pretrained(hub_id_or_folder)`), and
    returns the whole decoded image at the working resolution (long side 512), as the reference does:
    compositing into the original happens later (see `hdpainter.painter`).
    """

    def token_mask(self, prompts: Sequence[str], full_prompts: Sequence[str]) -> torch.Tensor:
        """ind(τ) for each prompt as a (len(prompts), max_length) bool matrix."""
        tok = self.tokenizer
        kwargs = dict(truncation=True, max_length=tok.model_max_length)
        bare, full = tok(list(prompts), **kwargs).input_ids, tok(list(full_prompts), **kwargs).input_ids
        mask = torch.zeros(len(prompts), tok.model_max_length, dtype=torch.bool)
        for row, (b, f) in enumerate(zip(bare, full)):
            mask[row, prompt_token_indices(b, f, tok.eos_token_id)] = True
        return mask

    def _encode_images(self, prepared: list[imgs.PreparedInput], device, dtype) -> torch.Tensor:
        """E(masked image): posterior mean × scaling factor (the reference's choice; diffusers samples)."""
        unique = list({id(p): p for p in prepared}.values())  # samples of one prompt share their input
        pixels = torch.stack([torch.from_numpy(p.image).permute(2, 0, 1) for p in unique]).float() / 127.5 - 1.0
        keep = torch.stack([torch.from_numpy(~p.mask) for p in unique])[:, None]
        masked = (pixels * keep).to(device=device, dtype=self.vae.dtype)
        # the one change since the freeze (issue 18): the encoder's input in the reference's channels_last layout
        masked = masked.contiguous(memory_format=torch.channels_last)
        latents = self.vae.encode(masked).latent_dist.mean.contiguous() * self.vae.config.scaling_factor
        index = {id(p): i for i, p in enumerate(unique)}
        return latents[[index[id(p)] for p in prepared]].to(dtype)

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str],
        image,
        mask_image,
        method: str = "painta+rasg",
        num_inference_steps: int = 50,
        guidance_scale: float = 7.5,
        rasg_eta: float = 0.1,
        rasg_sigma: str = "reference",
        vanilla_scale: float = VANILLA_SCALE,
        negative_prompt: str | list[str] | None = REFERENCE_NEGATIVE_PROMPT,
        positive_prompt: str | None = REFERENCE_POSITIVE_PROMPT,
        num_images_per_prompt: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Callable | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
        working_size: int = imgs.WORKING_SIZE,
        guidance: GuidanceConfig = GuidanceConfig(),
    ):
        """Inpaint `mask_image` (white = fill) of `image` with what `prompt` asks for.

        Args:
            prompt: one prompt or a list (a batch).
            image, mask_image: PIL images, (H, W[, C]) arrays or (C, H, W) tensors in [0, 1]; one for all
                prompts or one per prompt, all of the same size. Non-binary masks are thresholded at 127.
            method: "baseline", "painta", "rasg" or "painta+rasg" (the full HD-Painter); "vanilla-guidance" is
                the paper's ablation of RASG: ε̂ ← ε̂ + √(1 − ᾱ_t)·s·∇L at every step (Eq. 6), η = 0.
            num_inference_steps: DDIM steps, "trailing" spacing (999, 979, …, 19 for 50).
            guidance_scale: classifier-free guidance scale; ≤ 1 disables the unconditional pass.
            rasg_eta: η of RASG's generalised DDIM step (reference 0.1; the paper's evaluation 0.25).
            rasg_sigma: "reference" (per-step α, as the authors' code) or "paper" (cumulative ᾱ).
            vanilla_scale: s of "vanilla-guidance", on the gradient of RASG's objective L (mean over the
                H/32 grid's cells, as the reference's; the paper's Eq. 9 sums over them).
            negative_prompt: the unconditional prompt; default the reference's list, "" or None for none.
            positive_prompt: appended as f"{prompt}, {positive_prompt}"; default the reference's, "" or None for none.
            num_images_per_prompt: samples per prompt.
            generator: torch.Generator (or one per sample) for the initial noise.
            latents: initial noise x_T, (batch, 4, H/8, W/8) at the padded working size.
            output_type: "pil", "np" (float in [0, 1], NHWC), "pt" (float in [0, 1], NCHW) or "latent" (x̂0).
            callback_on_step_end: called as fn(pipe, step, timestep, {"latents": …}); may return new latents.
            working_size: long side of the working resolution (reference 512).
            guidance: where and when PAIntA and RASG act (reference values by default).
        """
        # 1. Check inputs
        use_painta, use_rasg, use_vanilla = _method_flags(method)
        if rasg_sigma not in RASG_SIGMAS:
            raise HDPainterError(f"rasg_sigma must be one of {', '.join(RASG_SIGMAS)}; got {rasg_sigma!r}")
        if output_type not in OUTPUT_TYPES:
            raise HDPainterError(f"output_type must be one of {', '.join(OUTPUT_TYPES)}; got {output_type!r}")
        if num_images_per_prompt < 1:
            raise HDPainterError(f"num_images_per_prompt must be at least 1, got {num_images_per_prompt}")
        if not 1 <= num_inference_steps <= self.scheduler.config.num_train_timesteps:
            raise HDPainterError(
                f"num_inference_steps must be in 1..{self.scheduler.config.num_train_timesteps}, got {num_inference_steps}"
            )
        if self.unet.config.in_channels != 9:
            raise HDPainterError(
                f"the UNet has {self.unet.config.in_channels} input channels; an inpainting (9-channel) model is needed"
            )
        prompts = _as_list(prompt, "prompt")
        if not all(isinstance(p, str) for p in prompts):
            raise HDPainterError("prompt must be a string or a list of strings")
        negatives = _broadcast(
            [n or "" for n in _as_list(negative_prompt, "negative_prompt")], len(prompts), "negative_prompt"
        )
        full_prompts = [f"{p}, {positive_prompt}" if positive_prompt else p for p in prompts]
        batch = len(prompts) * num_images_per_prompt
        do_cfg = guidance_scale > 1.0
        device, dtype = self._execution_device, self.unet.dtype

        # 2. Images and masks at the working resolution (docs/method.md §1)
        pil_images = _broadcast(
            [imgs.to_rgb(imgs.as_pil(i, "image")) for i in _as_list(image, "image")], len(prompts), "image"
        )
        pil_masks = _broadcast(
            [imgs.to_mask(imgs.as_pil(m, "mask_image")) for m in _as_list(mask_image, "mask_image")],
            len(prompts),
            "mask_image",
        )
        if len({i.size for i in pil_images}) != 1:
            raise HDPainterError("all images of one call must have the same size")
        prepared_once = {}
        prepared = []
        for im, mk in zip(pil_images, pil_masks):
            key = (id(im), id(mk))
            if key not in prepared_once:
                prepared_once[key] = imgs.prepare(im, mk, working_size)
            prepared.extend([prepared_once[key]] * num_images_per_prompt)
        height, width = prepared[0].mask.shape
        latent_size = (height // LATENT_FACTOR, width // LATENT_FACTOR)

        # 3. Text: embeddings of [negative; full prompt], and ind(τ) of each sample
        token_mask = self.token_mask(prompts, full_prompts).repeat_interleave(num_images_per_prompt, 0).to(device)
        cond_embeds, uncond_embeds = self.encode_prompt(full_prompts, device, num_images_per_prompt, do_cfg, negatives)
        # transformers loads a half-precision text encoder as saved while diffusers loads the UNet in float32
        # unless torch_dtype is given: the UNet's dtype rules
        cond_embeds = cond_embeds.to(dtype)
        uncond_embeds = uncond_embeds.to(dtype) if uncond_embeds is not None else None

        # 4. UNet conditioning: mask on the latent grid ("!= 0") and E(masked image)
        mask_latent = torch.stack([torch.from_numpy(imgs.grid_mask(p.mask, LATENT_FACTOR, "any")) for p in prepared])
        mask_latent = mask_latent[:, None].to(device=device, dtype=dtype)
        image_latents = self._encode_images(prepared, device, dtype)
        condition = torch.cat([mask_latent, image_latents], dim=1)  # (B, 5, h, w)

        # 5. Masks at the attention grids ("> 0.5") for PAIntA and RASG
        divisors = set(guidance.painta_grids) | {guidance.rasg_grid}
        grid_masks = {
            d: torch.stack([torch.from_numpy(imgs.grid_mask(p.mask, d, "half")).flatten() for p in prepared]).to(
                device
            )
            for d in divisors
        }

        # 6. Initial noise x_T and the timestep schedule
        shape = (batch, self.vae.config.latent_channels, *latent_size)
        if isinstance(generator, list) and len(generator) != batch:
            raise HDPainterError(
                f"{len(generator)} generators given for {batch} samples (prompts × num_images_per_prompt)"
            )
        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=device, dtype=dtype)
        elif tuple(latents.shape) != shape:
            raise HDPainterError(f"latents must have shape {shape} for this input, got {tuple(latents.shape)}")
        latents = latents.to(device=device, dtype=dtype)
        timesteps = trailing_timesteps(self.scheduler.config.num_train_timesteps, num_inference_steps)
        alpha_bar = self.scheduler.alphas_cumprod.double()
        alpha = 1.0 - self.scheduler.betas.double()
        prediction_type = self.scheduler.config.get("prediction_type", "epsilon")

        cond = Conditioning(
            latent_size, condition, cond_embeds, uncond_embeds if do_cfg else None, token_mask, grid_masks
        )

        unknown = set(callback_on_step_end_tensor_inputs) - {"latents", "x0"}
        if unknown:
            raise HDPainterError(
                f"callback_on_step_end_tensor_inputs may hold 'latents' and 'x0', not {sorted(unknown)}"
            )

        # 7. Sampling: DDIM, with RASG's guided step and PAIntA while t > painta_until_t
        with frozen(self.unet), guided_attention(self.unet), self.progress_bar(total=len(timesteps)) as progress:
            for i, t in enumerate(timesteps):
                last = i == len(timesteps) - 1
                painta_on = use_painta and t > guidance.painta_until_t
                rasg_on = use_rasg and not last  # the last step returns x̂0, which RASG's term does not reach
                model_output, gradient = guided_prediction(
                    self.unet, latents, t, cond, guidance_scale, guidance, painta_on, rasg_on or use_vanilla
                )
                x0, eps = split_prediction(model_output.float(), latents.float(), float(alpha_bar[t]), prediction_type)
                if use_vanilla and alpha_bar[t] > 0:  # at ᾱ_t = 0 (zero terminal SNR) ε̂ does not reach x̂0
                    eps = vanilla_guidance(eps, gradient, float(alpha_bar[t]), vanilla_scale)
                    x0, eps = split_prediction(eps, latents.float(), float(alpha_bar[t]), "epsilon")
                if last:
                    latents = x0.to(dtype)
                else:
                    t_prev = timesteps[i + 1]
                    noise_scale = 0.0
                    if rasg_on:
                        a_t, a_prev = (
                            (alpha[t], alpha[t_prev])
                            if rasg_sigma == "reference"
                            else (alpha_bar[t], alpha_bar[t_prev])
                        )
                        noise_scale = rasg_eta * ddim_sigma(float(a_t), float(a_prev))
                    direction = (
                        normalize_gradient(-gradient) if rasg_on else None
                    )  # towards lower L: the reference's +∇score
                    latents = ddim_step(x0, eps, float(alpha_bar[t_prev]), noise_scale, direction).to(dtype)

                if callback_on_step_end is not None:
                    local = {"latents": latents, "x0": x0}
                    outputs = (
                        callback_on_step_end(self, i, t, {k: local[k] for k in callback_on_step_end_tensor_inputs})
                        or {}
                    )
                    latents = outputs.get("latents", latents)
                progress.update()

        # 8. Decode x̂0 of the last step (no paste-back: the whole decoded image, cropped from the padding)
        if output_type == "latent":
            result = latents
        else:
            decoded = self.vae.decode(latents.to(self.vae.dtype) / self.vae.config.scaling_factor, return_dict=False)[
                0
            ]
            w, h = prepared[0].size
            decoded = decoded[:, :, :h, :w].float().cpu()
            if output_type == "pil":
                result = [PIL.Image.fromarray(a) for a in to_uint8(decoded)]
            else:
                unit = ((decoded + 1.0) / 2.0).clamp(0.0, 1.0)
                result = unit if output_type == "pt" else unit.permute(0, 2, 3, 1).numpy()
        self.maybe_free_model_hooks()
        if not return_dict:
            return (result, None)
        return StableDiffusionPipelineOutput(images=result, nsfw_content_detected=None)


@contextlib.contextmanager
def frozen(module: torch.nn.Module):
    """Weights need no gradient while sampling (RASG differentiates w.r.t. x_t only); restored afterwards."""
    flags = [(p, p.requires_grad) for p in module.parameters()]
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def to_uint8(decoded: torch.Tensor) -> np.ndarray:
    """Decoded images in [-1, 1], (B, 3, H, W) → (B, H, W, 3) uint8 by truncation, as the reference."""
    return (255.0 * (decoded.clamp(-1.0, 1.0) + 1.0) / 2.0).to(torch.uint8).permute(0, 2, 3, 1).numpy()
