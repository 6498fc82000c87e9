"""Stage 1: prompt-faithful inpainting with PAIntA and RASG (docs/method.md §1-4), on Stable Diffusion 1.x/2.x
(HDPainterPipeline) and SDXL (HDPainterXLPipeline) inpainting models: one call, the text conditioning per family.

Notation: x_t `latents`, ε̂ `eps`, x̂0 `x0`, ᾱ `alpha_bar`, per-step α = 1 − β `alpha`, ind(τ) `token_mask`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import PIL.Image
import torch
from diffusers import StableDiffusionInpaintPipeline, StableDiffusionXLInpaintPipeline
from diffusers.pipelines.stable_diffusion import StableDiffusionPipelineOutput

from . import images as imgs
from .attention import STATE_KEY, AttentionGuidance, guided_attention
from .core.rasg import rasg_objective
from .core.sampling import Prediction, rasg_noise, sample, split_prediction, with_vanilla_guidance
from .core.tokens import prompt_token_indices
from .defaults import REFERENCE_NEGATIVE_PROMPT, REFERENCE_POSITIVE_PROMPT, VANILLA_SCALE
from .errors import HDPainterError
from .request import GuidanceConfig, option_index
from .schedule import DDIMSchedule, callback_tensor_inputs, encoder_layout

LOSS_SCALE = (
    1024.0  # RASG's loss is scaled before backward (g is std-normalised, so this changes nothing but fp16 underflow)
)
OUTPUT_TYPES = ("pil", "np", "pt", "latent")

__all__ = ["GuidanceConfig", "HDPainterPipeline", "HDPainterXLPipeline", "guided_prediction"]
# SDXL's micro-conditioning scores (diffusers' defaults; used only by checkpoints that require them)
AESTHETIC_SCORE, NEGATIVE_AESTHETIC_SCORE = 6.0, 2.5
# step-callback names of the text conditioning's tensors → their key in the UNet's added_cond_kwargs (None: the
# cross-attention embeddings themselves)
TEXT_TENSORS = {"prompt_embeds": None, "add_text_embeds": "text_embeds", "add_time_ids": "time_ids"}


def _method_flags(method: str) -> tuple[bool, bool, bool]:
    """(PAIntA, RASG, vanilla post-hoc guidance) of a method name."""
    option_index()["method"].check(method)
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
    """What the UNet is conditioned on over the sampling loop (B conditional samples)."""

    latent_size: tuple[int, int]  # (h, w)
    latent_factor: int  # pixels per latent pixel (the VAE's downsampling)
    image: torch.Tensor  # (B, 5, h, w): mask on the latent grid and E(masked image)
    cond_embeds: torch.Tensor  # (B, T, D) full prompts
    uncond_embeds: torch.Tensor | None  # (B, T, D) negative prompts; None without classifier-free guidance
    token_mask: torch.Tensor  # (B, T) ind(τ)
    grid_masks: dict[int, torch.Tensor]  # pixel divisor → (B, n) bool at that attention grid
    cond_added: dict[str, torch.Tensor] | None = None  # SDXL: "text_embeds" (B, P) pooled, "time_ids" (B, 6)
    uncond_added: dict[str, torch.Tensor] | None = None  # the same for the negative prompts

    def added(self, role: str) -> dict[str, torch.Tensor] | None:
        """The UNet's added_cond_kwargs for a call's batch layout (None for SD 1.x/2.x)."""
        if self.cond_added is None:
            return None
        if role == "cond":
            return self.cond_added
        if role == "uncond":
            return self.uncond_added
        return {k: torch.cat([self.uncond_added[k], v]) for k, v in self.cond_added.items()}

    def text_rows(self) -> dict[str, tuple[torch.Tensor | None, torch.Tensor]]:
        """The text conditioning by step-callback name: (unconditional rows or None, conditional rows)."""
        rows = {"prompt_embeds": (self.uncond_embeds, self.cond_embeds)}
        for name, key in TEXT_TENSORS.items():
            if key is not None and self.cond_added is not None:
                rows[name] = (self.uncond_added[key] if self.uncond_added else None, self.cond_added[key])
        return rows

    def set_text_rows(self, name: str, uncond: torch.Tensor | None, cond: torch.Tensor) -> None:
        key = TEXT_TENSORS[name]
        if key is None:
            self.uncond_embeds, self.cond_embeds = uncond, cond
            return
        self.cond_added = self.cond_added | {key: cond}
        if uncond is not None:
            self.uncond_added = self.uncond_added | {key: uncond}

    def drop_unconditional(self) -> None:
        self.uncond_embeds, self.uncond_added = None, None


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
        latent_factor=cond.latent_factor,
    )
    image = cond.image.repeat(x.shape[0] // cond.image.shape[0], 1, 1, 1)
    t_batch = torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)
    added = cond.added(role)
    out = unet(
        torch.cat([x, image], dim=1),
        t_batch,
        encoder_hidden_states=embeds,
        cross_attention_kwargs={STATE_KEY: state},
        return_dict=False,
        **({} if added is None else {"added_cond_kwargs": added}),
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


def tokenizer_token_mask(tok, prompts: Sequence[str], full_prompts: Sequence[str]) -> torch.Tensor:
    """ind(τ) of each prompt as `tok` tokenises it: a (len(prompts), tok.model_max_length) bool matrix."""
    kwargs = dict(truncation=True, max_length=tok.model_max_length)
    bare, full = tok(list(prompts), **kwargs).input_ids, tok(list(full_prompts), **kwargs).input_ids
    mask = torch.zeros(len(prompts), tok.model_max_length, dtype=torch.bool)
    for row, (b, f) in enumerate(zip(bare, full)):
        mask[row, prompt_token_indices(b, f, tok.eos_token_id)] = True
    return mask


def _config_int(value) -> int:
    """A UNet config entry that may be per-level (a list) or one number."""
    return value if isinstance(value, int) else max(value)


class GuidedInpainting(DDIMSchedule):
    """Stage 1's call, shared by the SD 1.x/2.x and SDXL pipelines; each family supplies `check_components`,
    `_tokenizers` and `_encode_text` (its text conditioning)."""

    _callback_tensor_inputs = ["latents", "x0", "prompt_embeds"]

    @property
    def native_working_size(self) -> int:
        """The model's own resolution (long side, pixels): the UNet's sample size × the VAE's factor (512 for SD
        1.x/2.x, 1024 for SDXL); the working size when none is given."""
        return _config_int(self.unet.config.sample_size) * self.vae_scale_factor

    def _tokenizers(self) -> list:
        raise NotImplementedError

    def check_components(self) -> None:
        """HDPainterError, in one line, for a UNet that is not a 9-channel inpainting one or components of another
        family (a text encoder whose width the UNet's cross-attention does not take, say)."""
        raise NotImplementedError

    def _encode_text(self, full_prompts, negatives, copies: int, device, dtype, size: tuple[int, int]):
        """(conditional embeddings, unconditional ones or None, conditional added_cond_kwargs or None, unconditional
        ones or None) for `copies` samples of each prompt; `size` (h, w) is the padded working size."""
        raise NotImplementedError

    def token_mask(self, prompts: Sequence[str], full_prompts: Sequence[str]) -> torch.Tensor:
        """ind(τ) for each prompt as a (len(prompts), max_length) bool matrix: the union over the family's
        tokenizers (SDXL's two pad differently but place the prompt's tokens alike; a test checks they agree)."""
        masks = [tokenizer_token_mask(tok, prompts, full_prompts) for tok in self._tokenizers()]
        if len({m.shape[1] for m in masks}) != 1:
            raise HDPainterError("the tokenizers' lengths differ; their embeddings cannot be concatenated")
        mask = masks[0]
        for other in masks[1:]:
            mask = mask | other
        return mask

    def _encode_images(self, prepared: list[imgs.PreparedInput], device, dtype) -> torch.Tensor:
        """E(masked image): posterior mean × scaling factor (the reference's choice; diffusers samples)."""
        unique = list({id(p): p for p in prepared}.values())  # samples of one prompt share their input
        pixels = torch.stack([torch.from_numpy(p.image).permute(2, 0, 1) for p in unique]).float() / 127.5 - 1.0
        keep = torch.stack([torch.from_numpy(~p.mask) for p in unique])[:, None]
        masked = (pixels * keep).to(device=device, dtype=self.vae.dtype)
        latents = (
            self.vae.encode(encoder_layout(masked)).latent_dist.mean.contiguous() * self.vae.config.scaling_factor
        )
        index = {id(p): i for i, p in enumerate(unique)}
        return latents[[index[id(p)] for p in prepared]].to(dtype)

    def _step_callback(self, callback, names, i: int, t: int, latents, pred: Prediction, cond: Conditioning):
        """diffusers' step-end contract: the named tensors in, new latents or text conditioning (prompt embeddings;
        SDXL's pooled embeddings and size ids) out; a callback that switched guidance off (`_guidance_scale` ≤ 1)
        ends the unconditional pass."""
        text = cond.text_rows()
        local = {"latents": latents, "x0": pred.x0}
        local |= {name: c if u is None else torch.cat([u, c]) for name, (u, c) in text.items()}
        outputs = callback(self, i, t, {name: local[name] for name in names}) or {}
        for name, (uncond, conditional) in text.items():
            new = outputs.get(name, local[name])
            if new is local[name]:
                continue
            rows = conditional.shape[0]
            if new.shape[0] == 2 * rows and uncond is not None:
                cond.set_text_rows(name, *new.chunk(2))
            elif new.shape[0] == rows:
                cond.set_text_rows(name, uncond, new)
            elif not self.do_classifier_free_guidance:
                pass  # guidance switched off and the unconditional rows dropped its own way (SDCFGCutoffCallback
                # keeps the last row only, for one sample): the conditional rows stay as they were
            else:
                raise HDPainterError(
                    f"the step callback returned {name} for {new.shape[0]} samples; {rows} are sampled"
                )
        if not self.do_classifier_free_guidance:
            cond.drop_unconditional()
        return outputs.get("latents", latents)

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
        working_size: int | None = None,
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
            callback_on_step_end: called as fn(pipe, step, timestep, {name: tensor}) after each step with the
                tensors named in `callback_on_step_end_tensor_inputs` (any of `_callback_tensor_inputs`: "latents",
                "x0", "prompt_embeds"); it may return new latents or prompt embeddings. diffusers'
                `PipelineCallback`s work (e.g. `SDCFGCutoffCallback`: they read `num_timesteps` and may set
                `_guidance_scale`, which the next steps follow).
            working_size: long side of the working resolution; None: the model's own (`native_working_size`: 512
                for SD 1.x/2.x, the reference's; 1024 for SDXL).
            guidance: where and when PAIntA and RASG act (reference values by default).
        """
        # 1. Check inputs
        self.check_components()
        use_painta, use_rasg, use_vanilla = _method_flags(method)
        working_size = self.native_working_size if working_size is None else working_size
        options = option_index()
        options["rasg_sigma"].check(rasg_sigma)
        options["working_size"].check(working_size)
        if output_type not in OUTPUT_TYPES:
            raise HDPainterError(f"output_type must be one of {', '.join(OUTPUT_TYPES)}; got {output_type!r}")
        if working_size % self.vae_scale_factor:
            raise HDPainterError(
                f"working_size must be a multiple of the VAE's factor {self.vae_scale_factor}, got {working_size}"
            )
        if num_images_per_prompt < 1:
            raise HDPainterError(f"num_images_per_prompt must be at least 1, got {num_images_per_prompt}")
        if not 1 <= num_inference_steps <= self.scheduler.config.num_train_timesteps:
            raise HDPainterError(
                f"num_inference_steps must be in 1..{self.scheduler.config.num_train_timesteps}, "
                f"got {num_inference_steps}"
            )
        callback_on_step_end_tensor_inputs = callback_tensor_inputs(
            self, callback_on_step_end, callback_on_step_end_tensor_inputs
        )
        self._guidance_scale = guidance_scale
        self._interrupt = False
        prompts = _as_list(prompt, "prompt")
        if not all(isinstance(p, str) for p in prompts):
            raise HDPainterError("prompt must be a string or a list of strings")
        negatives = _broadcast(
            [n or "" for n in _as_list(negative_prompt, "negative_prompt")], len(prompts), "negative_prompt"
        )
        full_prompts = [f"{p}, {positive_prompt}" if positive_prompt else p for p in prompts]
        batch = len(prompts) * num_images_per_prompt
        do_cfg = self.do_classifier_free_guidance
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
        factor = self.vae_scale_factor
        latent_size = (height // factor, width // factor)

        # 3. Text: embeddings of [negative; full prompt], and ind(τ) of each sample
        token_mask = self.token_mask(prompts, full_prompts).repeat_interleave(num_images_per_prompt, 0).to(device)
        cond_embeds, uncond_embeds, cond_added, uncond_added = self._encode_text(
            full_prompts, negatives, num_images_per_prompt, device, dtype, (height, width)
        )

        # 4. UNet conditioning: mask on the latent grid ("!= 0") and E(masked image)
        mask_latent = torch.stack([torch.from_numpy(imgs.grid_mask(p.mask, factor, "any")) for p in prepared])
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
        latents = self.initial_latents(shape, latents, generator, device, dtype)
        timesteps, alpha_bar, prediction_type = self.ddim_schedule(num_inference_steps, "epsilon")
        alpha = 1.0 - self.scheduler.betas.double()
        cond = Conditioning(
            latent_size,
            factor,
            condition,
            cond_embeds,
            uncond_embeds if do_cfg else None,
            token_mask,
            grid_masks,
            cond_added,
            uncond_added if do_cfg else None,
        )

        # 7. Sampling: DDIM with RASG's step noise, PAIntA while t > painta_until_t (docs/method.md §4)
        def model(x: torch.Tensor, i: int, t: int) -> Prediction:
            painta_on = use_painta and t > guidance.painta_until_t
            rasg_on = use_rasg and i + 1 < len(timesteps)  # the last step returns x̂0, which RASG's term does not reach
            output, grad = guided_prediction(
                self.unet, x, t, cond, self.guidance_scale, guidance, painta_on, rasg_on or use_vanilla
            )
            x0, eps = split_prediction(output.float(), x.float(), float(alpha_bar[t]), prediction_type)
            return Prediction(x0, eps, grad)

        if use_vanilla:  # the gradient shifts ε̂ (Eq. 6); the step itself stays deterministic
            model = with_vanilla_guidance(model, alpha_bar, vanilla_scale)
        noise = rasg_noise(rasg_eta, alpha if rasg_sigma == "reference" else alpha_bar) if use_rasg else None

        with (
            frozen(self.unet),
            guided_attention(self.unet, factor),
            self.progress_bar(total=len(timesteps)) as progress,
        ):

            def step_end(i: int, t: int, x: torch.Tensor, pred: Prediction) -> torch.Tensor:
                if callback_on_step_end is not None:
                    x = self._step_callback(
                        callback_on_step_end, callback_on_step_end_tensor_inputs, i, t, x, pred, cond
                    )
                progress.update()
                return x

            latents = sample(model, latents, timesteps, alpha_bar, noise, step_end, lambda: self.interrupt)

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
                result = [PIL.Image.fromarray(a) for a in imgs.to_uint8(decoded)]
            else:
                unit = ((decoded + 1.0) / 2.0).clamp(0.0, 1.0)
                result = unit if output_type == "pt" else unit.permute(0, 2, 3, 1).numpy()
        self.maybe_free_model_hooks()
        if not return_dict:
            return (result, None)
        return StableDiffusionPipelineOutput(images=result, nsfw_content_detected=None)


def _inpainting_unet(unet) -> None:
    if unet.config.in_channels != 9:
        raise HDPainterError(
            f"the UNet has {unet.config.in_channels} input channels; an inpainting (9-channel) model is needed"
        )


def _text_width(unet, encoders) -> None:
    width = sum(e.config.hidden_size for e in encoders if e is not None)
    if isinstance(unet.config.cross_attention_dim, int) and unet.config.cross_attention_dim != width:
        raise HDPainterError(
            f"mixed components: the text encoders give {width}-wide embeddings but the UNet's cross-attention takes "
            f"{unet.config.cross_attention_dim}"
        )


class HDPainterPipeline(GuidedInpainting, StableDiffusionInpaintPipeline):
    """HD-Painter stage 1 on any 9-channel Stable Diffusion 1.x/2.x inpainting checkpoint.

    Loads like any diffusers pipeline (`HDPainterPipeline.from_pretrained(hub_id_or_folder)`), and
    returns the whole decoded image at the working resolution (long side 512), as the reference does:
    compositing into the original happens later (see `hdpainter.painter`). During a call the diffusers
    properties `guidance_scale`, `do_classifier_free_guidance`, `num_timesteps` and `interrupt` describe it
    (set `_interrupt = True` from a callback to stop after the current step).
    """

    def _tokenizers(self) -> list:
        return [self.tokenizer]

    def check_components(self) -> None:
        _inpainting_unet(self.unet)
        if self.unet.config.get("addition_embed_type") == "text_time":
            raise HDPainterError(
                "this is an SDXL UNet (pooled-text and size embeddings): load the model with HDPainterXLPipeline "
                "(hdpainter loads SDXL checkpoints so by itself)"
            )
        _text_width(self.unet, [self.text_encoder])

    def _encode_text(self, full_prompts, negatives, copies: int, device, dtype, size: tuple[int, int]):
        cond, uncond = self.encode_prompt(full_prompts, device, copies, self.do_classifier_free_guidance, negatives)
        # transformers loads a half-precision text encoder as saved while diffusers loads the UNet in float32
        # unless torch_dtype is given: the UNet's dtype rules
        return cond.to(dtype), uncond.to(dtype) if uncond is not None else None, None, None


class HDPainterXLPipeline(GuidedInpainting, StableDiffusionXLInpaintPipeline):
    """HD-Painter stage 1 on any 9-channel SDXL inpainting checkpoint (diffusers/stable-diffusion-xl-1.0-inpainting-0.1
    and its fine-tunes), at 1024 px by default.

    The same call as `HDPainterPipeline`. SDXL's UNet has self- and cross-attention at H/16 (2 layers per block)
    and H/32 (10), the middle block included, so PAIntA acts on both grids and RASG on H/32 unchanged. Text
    conditioning as diffusers' SDXL inpainting pipeline: both text encoders' penultimate layers concatenated, the
    second's pooled embedding and the size ids (original = target = the padded working size, crop (0, 0)) as
    added conditioning; an empty negative prompt is zeros when the model asks for it (`force_zeros_for_empty_prompt`,
    as diffusers does for no negative prompt). ind(τ) is the union of both tokenizers' (they agree: same
    vocabulary, same positions; only the padding differs).
    """

    _callback_tensor_inputs = ["latents", "x0", "prompt_embeds", "add_text_embeds", "add_time_ids"]

    def _tokenizers(self) -> list:
        return [tok for tok in (self.tokenizer, self.tokenizer_2) if tok is not None]

    def check_components(self) -> None:
        _inpainting_unet(self.unet)
        if self.text_encoder_2 is None or self.unet.config.get("addition_embed_type") != "text_time":
            raise HDPainterError(
                "not an SDXL model: SDXL needs a second text encoder and a UNet with pooled-text and size embeddings "
                "(mixed components, or an SD 1.x/2.x model: load those with HDPainterPipeline)"
            )
        _text_width(self.unet, [self.text_encoder, self.text_encoder_2])
        ids = 5 if self.config.requires_aesthetics_score else 6
        given = self.unet.config.addition_time_embed_dim * ids + self.text_encoder_2.config.projection_dim
        expected = self.unet.add_embedding.linear_1.in_features
        if given != expected:
            raise HDPainterError(
                f"mixed components: the second text encoder's pooled embedding and {ids} size ids give {given} values,"
                f" but the UNet's added embedding takes {expected}"
            )

    def _encode_text(self, full_prompts, negatives, copies: int, device, dtype, size: tuple[int, int]):
        do_cfg = self.do_classifier_free_guidance
        zeros = [not n and self.config.force_zeros_for_empty_prompt for n in negatives]
        cond, uncond, pooled, uncond_pooled = self.encode_prompt(
            list(full_prompts),
            device=device,
            num_images_per_prompt=copies,
            do_classifier_free_guidance=do_cfg,
            negative_prompt=None if all(zeros) else list(negatives),
        )
        if do_cfg and any(zeros) and not all(zeros):  # some prompts have no negative: zeros for those rows only
            rows = torch.tensor(zeros, device=uncond.device).repeat_interleave(copies)
            uncond = uncond.masked_fill(rows[:, None, None], 0.0)
            uncond_pooled = uncond_pooled.masked_fill(rows[:, None], 0.0)
        time_ids, uncond_time_ids = self._get_add_time_ids(
            size,
            (0, 0),
            size,
            AESTHETIC_SCORE,
            NEGATIVE_AESTHETIC_SCORE,
            size,
            (0, 0),
            size,
            dtype=dtype,
            text_encoder_projection_dim=self.text_encoder_2.config.projection_dim,
        )
        rows = cond.shape[0]
        cond_added = {"text_embeds": pooled.to(dtype), "time_ids": time_ids.to(device).repeat(rows, 1)}
        if not do_cfg:
            return cond.to(dtype), None, cond_added, None
        uncond_added = {"text_embeds": uncond_pooled.to(dtype), "time_ids": uncond_time_ids.to(device).repeat(rows, 1)}
        return cond.to(dtype), uncond.to(dtype), cond_added, uncond_added


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
