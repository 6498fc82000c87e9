"""Stage 2: the inpainting-specialised ×4 super-resolution (paper §3.5, Eq. 10; docs/method.md §5).

The stage-1 result (working resolution) conditions the ×4 upscaler; the original image, resized to
4× the working size, supplies the known region: at every step its latents replace the predicted clean
latent x̂0 outside a soft mask (Eq. 10). All the full-canvas inputs (noise, masks, padded images) live at
4× the working size, so they are bounded whatever the original's size; only a box around the mask is
diffused ("crop", the default) unless the whole canvas is asked for ("whole", the reference).

Notation: x_t `latents`, x̂0 `x0`, ε̂ `eps`, ᾱ `alpha_bar`, E(I_hr) `known`, lr_mask `blend_mask`
(1 where the model paints, 0 where the known latents are kept).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import PIL.Image
import torch
from diffusers import StableDiffusionUpscalePipeline
from diffusers.utils.torch_utils import randn_tensor

from hdpainter import images as imgs
from hdpainter.core.blend import latent_blend
from hdpainter.core.sampling import ddim_step, split_prediction, trailing_timesteps
from hdpainter.errors import HDPainterError

from .inpaint import to_uint8

SR_METHODS = ("specialized", "baseline", "bicubic")
SR_REGIONS = ("crop", "whole")
SR_SCALE = 4  # the upscaler's factor: high-res pixels per low-res pixel (= per latent pixel)
CROP_ALIGN = (
    32  # crop boxes start and end on multiples of this many high-res pixels: 8 latent pixels, the UNet's coarsest grid
)
VAE_TILING_AUTO_PIXELS = 1024 * 1024  # with vae_tiling=None, regions larger than this are encoded/decoded in tiles


@dataclass(frozen=True)
class SRConfig:
    """Stage 2's settings; the defaults are the reference's (docs/method.md §5)."""

    method: str = (
        "specialized"  # "specialized" (Eq. 10 every step), "baseline" (plain ×4 SR), "bicubic" (no diffusion)
    )
    num_inference_steps: int = 20  # DDIM steps, trailing spacing: 999, 949, …, 49
    guidance_scale: float = 7.5
    noise_level: int = 20  # noise added to the low-res condition; also the UNet's class label
    prompt_suffix: str = "high resolution professional photo"  # the prompt becomes f"{prompt}, {suffix}"
    negative_prompt: str = ""
    mask_dilation: int = 19  # iterations of the 3×3 cross dilation of the high-res mask
    mask_blur: int = 19  # Gaussian kernel size (latent pixels) softening Eq. 10's mask; σ = 0.3·((k−1)/2 − 1) + 0.8
    canvas_multiple: int = 256  # the high-res image is reflect-padded right/bottom to a multiple of this
    region: str = "crop"  # "crop": diffuse a box around the mask; "whole": the whole canvas, as the reference
    context: int = 128  # high-res pixels of context kept around the dilated mask in "crop" mode
    vae_tiling: bool | None = None  # None: tiled VAE for regions over VAE_TILING_AUTO_PIXELS

    def check(self) -> None:
        if self.method not in SR_METHODS:
            raise HDPainterError(f"sr_method must be one of {', '.join(SR_METHODS)}; got {self.method!r}")
        if self.region not in SR_REGIONS:
            raise HDPainterError(f"sr_region must be one of {', '.join(SR_REGIONS)}; got {self.region!r}")
        if not 1 <= self.num_inference_steps <= 1000:
            raise HDPainterError(f"sr_steps must be in 1..1000, got {self.num_inference_steps}")
        if not 0 <= self.noise_level <= 350:
            raise HDPainterError(f"sr_noise_level must be in 0..350, got {self.noise_level}")
        if self.context < 0:
            raise HDPainterError(f"sr_context must not be negative, got {self.context}")
        if self.mask_dilation < 0:
            raise HDPainterError(f"the mask dilation must not be negative, got {self.mask_dilation}")
        if self.mask_blur < 1 or self.mask_blur % 2 == 0:
            raise HDPainterError(f"the mask blur kernel must be a positive odd size, got {self.mask_blur}")
        if self.canvas_multiple % CROP_ALIGN:
            raise HDPainterError(f"canvas_multiple must be a multiple of {CROP_ALIGN}")


def blur_sigma(kernel: int) -> float:
    """The σ torchvision's gaussian_blur uses when none is given (the reference passes only the kernel size)."""
    return 0.3 * ((kernel - 1) * 0.5 - 1) + 0.8


def soft_mask(mask: np.ndarray, size: tuple[int, int], kernel: int) -> np.ndarray:
    """Eq. 10's mask: a bool high-res mask → bicubic to `size` (w, h) on the latent grid, Gaussian blur, in [0, 1]."""
    import cv2

    small = imgs.resize_mask(mask, size).astype(np.float32) / 255.0
    return cv2.GaussianBlur(small, (kernel, kernel), blur_sigma(kernel), borderType=cv2.BORDER_REFLECT_101)


def _pad_to(array: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Reflect-pad an (H, W[, C]) array right/bottom to `size` (w, h)."""
    h, w = array.shape[:2]
    widths = [(0, size[1] - h), (0, size[0] - w)] + [(0, 0)] * (array.ndim - 2)
    return np.pad(array, widths, mode="reflect") if (size[0], size[1]) != (w, h) else array


@dataclass
class Canvas:
    """Stage 2's inputs at 4× the working size, reflect-padded (docs/method.md §5); boxes are in its pixels."""

    size: tuple[int, int]  # (W, H) of the high-res image before padding: 4 × the stage-1 result's size
    image: np.ndarray  # (Hc, Wc, 3) uint8: the original resized to `size`, padded
    low_res: np.ndarray  # (Hc/4, Wc/4, 3) uint8: the stage-1 result, padded
    painted: np.ndarray  # (Hc, Wc) bool: the high-res mask, padded, then dilated
    blend_mask: np.ndarray  # (Hc/4, Wc/4) float32: Eq. 10's soft mask on the latent grid

    @property
    def padded_size(self) -> tuple[int, int]:
        return self.painted.shape[1], self.painted.shape[0]


def make_canvas(
    original: PIL.Image.Image, mask: PIL.Image.Image, low_res: PIL.Image.Image, config: SRConfig
) -> Canvas:
    """Resize the original and mask to 4× `low_res`'s size (bicubic), pad everything, dilate and soften the mask."""
    size = (SR_SCALE * low_res.size[0], SR_SCALE * low_res.size[1])
    padded = imgs.padded_size(size, config.canvas_multiple)
    image = (
        np.asarray(original.convert("RGB").resize(size, resample=PIL.Image.BICUBIC))
        if original.size != size
        else np.asarray(original.convert("RGB"))
    )
    hr_mask = imgs.resize_mask(np.asarray(mask.convert("L")) > 0, size) > 0
    painted = (
        imgs.dilate_cross(_pad_to(hr_mask, padded), config.mask_dilation)
        if config.mask_dilation
        else _pad_to(hr_mask, padded)
    )
    latent = (padded[0] // SR_SCALE, padded[1] // SR_SCALE)
    return Canvas(
        size=size,
        image=_pad_to(image, padded),
        low_res=_pad_to(np.asarray(low_res.convert("RGB")), latent),
        painted=painted,
        blend_mask=soft_mask(painted, latent, config.mask_blur),
    )


def crop_box(needed: tuple[int, int, int, int], context: int, canvas: tuple[int, int]) -> tuple[int, int, int, int]:
    """The box (x0, y0, x1, y1) diffused in "crop" mode: `needed` grown by `context`, aligned out to CROP_ALIGN, inside `canvas`."""
    x0, y0, x1, y1 = needed
    down = lambda v: max(0, (v - context) // CROP_ALIGN * CROP_ALIGN)  # noqa: E731
    up = lambda v, limit: min(limit, -(-(v + context) // CROP_ALIGN) * CROP_ALIGN)  # noqa: E731
    return down(x0), down(y0), up(x1, canvas[0]), up(y1, canvas[1])


def bounding_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """(x0, y0, x1, y1), exclusive, of a bool mask's set pixels; None when it has none."""
    rows, cols = np.any(mask, axis=1), np.any(mask, axis=0)
    if not rows.any():
        return None
    y0, y1 = np.argmax(rows), len(rows) - np.argmax(rows[::-1])
    x0, x1 = np.argmax(cols), len(cols) - np.argmax(cols[::-1])
    return int(x0), int(y0), int(x1), int(y1)


def to_unit_range(array: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 → (1, 3, H, W) float32 in [−1, 1] (the reference's x/255·2 − 1)."""
    return torch.from_numpy(np.array(array, copy=True)).permute(2, 0, 1)[None].float() / 255.0 * 2.0 - 1.0


class HDUpscalePipeline(StableDiffusionUpscalePipeline):
    """The ×4 upscaler with HD-Painter's latent blend (Eq. 10) at every step.

    Loads like diffusers' `StableDiffusionUpscalePipeline` (e.g. stabilityai/stable-diffusion-x4-upscaler)
    and works on one region: a low-res condition, and (for "specialized") the matching high-res known image
    and Eq. 10's soft mask. `hdpainter.upscale.super_resolve` cuts those regions out of a whole photo.
    """

    def encode_known(self, high_res: torch.Tensor) -> torch.Tensor:
        """E(I_hr): the VAE posterior mean, scaled (the reference's; not a sample)."""
        vae_dtype = self.vae.dtype
        moments = self.vae.encode(high_res.to(self._execution_device, vae_dtype)).latent_dist
        return moments.mean * self.vae.config.scaling_factor

    def decode(self, x0: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(x0.to(self.vae.dtype) / self.vae.config.scaling_factor, return_dict=False)[0]

    @torch.no_grad()
    def __call__(
        self,
        prompt: str,
        low_res: torch.Tensor,
        known: torch.Tensor | None = None,
        blend_mask: torch.Tensor | None = None,
        num_inference_steps: int = 20,
        guidance_scale: float = 7.5,
        noise_level: int = 20,
        negative_prompt: str = "",
        generator: torch.Generator | None = None,
        latents: torch.Tensor | None = None,
        low_res_noise: torch.Tensor | None = None,
        callback_on_step_end: Callable | None = None,
        output_type: str = "pt",
    ) -> torch.Tensor:
        """Super-resolve `low_res` ((1, 3, h, w) in [−1, 1]); returns (1, 3, 4h, 4w) in [−1, 1] (or x̂0 for "latent").

        `known` ((1, 4, h, w), from `encode_known`) and `blend_mask` ((1, 1, h, w), 1 = paint) switch on
        Eq. 10; leave both None for the plain upscaler. `latents` and `low_res_noise` replace the draws
        from `generator` (x_T, and the low-res augmentation noise). `callback_on_step_end(self, i, t,
        {"latents", "x0", "eps"})` sees each step after the blend, x0 being the blended x̂0.
        """
        if (known is None) != (blend_mask is None):
            raise HDPainterError("known and blend_mask go together: give both for Eq. 10, neither for plain SR")
        if output_type not in ("pt", "latent"):
            raise HDPainterError(f"output_type must be 'pt' or 'latent', got {output_type!r}")
        device, dtype = self._execution_device, self.unet.dtype
        _, _, h, w = low_res.shape
        do_cfg = guidance_scale > 1.0

        # 1. Text: [negative; prompt]
        cond_embeds, uncond_embeds = self.encode_prompt(prompt, device, 1, do_cfg, negative_prompt)
        embeds = torch.cat([uncond_embeds, cond_embeds]) if do_cfg else cond_embeds

        # 2. Low-res condition, noised at `noise_level` by the low-res scheduler (drawn first, as diffusers)
        low_res = low_res.to(device=device, dtype=dtype)
        if low_res_noise is None:
            low_res_noise = randn_tensor(low_res.shape, generator=generator, device=device, dtype=dtype)
        level = torch.tensor([noise_level], dtype=torch.long, device=device)
        condition = self.low_res_scheduler.add_noise(low_res, low_res_noise.to(device=device, dtype=dtype), level)
        copies = 2 if do_cfg else 1
        condition, labels = torch.cat([condition] * copies), torch.cat([level] * copies)

        # 3. x_T and the timesteps
        shape = (1, self.vae.config.latent_channels, h, w)
        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=device, dtype=dtype)
        elif tuple(latents.shape) != shape:
            raise HDPainterError(f"latents must have shape {shape}, got {tuple(latents.shape)}")
        latents = latents.to(device=device, dtype=dtype)
        if known is not None:
            known = known.to(device=device, dtype=torch.float32)
            blend_mask = blend_mask.to(device=device, dtype=torch.float32)
        timesteps = trailing_timesteps(self.scheduler.config.num_train_timesteps, num_inference_steps)
        alpha_bar = self.scheduler.alphas_cumprod.double()
        prediction_type = self.scheduler.config.get("prediction_type", "v_prediction")

        # 4. DDIM (η = 0) on x̂0 blended with the known latents (Eq. 10); the last step's x̂0 is decoded
        with self.progress_bar(total=len(timesteps)) as progress:
            for i, t in enumerate(timesteps):
                x_in = torch.cat([torch.cat([latents] * copies), condition], dim=1)
                t_batch = torch.full((copies,), t, device=device, dtype=torch.long)
                out = self.unet(x_in, t_batch, encoder_hidden_states=embeds, class_labels=labels, return_dict=False)[0]
                if do_cfg:
                    out_uncond, out_cond = out.float().chunk(2)
                    out = out_uncond + guidance_scale * (out_cond - out_uncond)
                x0, eps = split_prediction(out.float(), latents.float(), float(alpha_bar[t]), prediction_type)
                if known is not None:
                    x0 = latent_blend(x0, known, blend_mask)
                if i + 1 < len(timesteps):
                    latents = ddim_step(x0, eps, float(alpha_bar[timesteps[i + 1]])).to(dtype)
                if callback_on_step_end is not None:
                    callback_on_step_end(self, i, t, {"latents": latents, "x0": x0, "eps": eps})
                progress.update()
        result = x0 if output_type == "latent" else self.decode(x0).float()
        self.maybe_free_model_hooks()  # with model cpu offload, the VAE goes back to the CPU
        return result


@dataclass
class Patch:
    """Stage 2's output: high-res pixels of a box of the (unpadded) high-res image."""

    pixels: np.ndarray  # (y1 − y0, x1 − x0, 3) uint8
    box: tuple[int, int, int, int]  # (x0, y0, x1, y1) in high-res pixels
    size: tuple[int, int]  # (W, H) of the whole high-res image


def super_resolve(
    pipe: HDUpscalePipeline,
    original: PIL.Image.Image,
    mask: PIL.Image.Image,
    low_res: PIL.Image.Image,
    prompt: str,
    config: SRConfig = SRConfig(),
    generator: torch.Generator | None = None,
    needed: tuple[int, int, int, int] | None = None,
    callback_on_step_end: Callable | None = None,
) -> Patch:
    """Stage 2 on a photo: `low_res` (the stage-1 result) ×4 with `original`'s own detail outside `mask`.

    Noise is drawn for the whole canvas and cut, so "crop" sees the same x_T and low-res noise as
    "whole" at every pixel. `needed` (high-res box) is a region the crop must also cover (the blend's).
    """
    config.check()
    if config.method == "bicubic":
        raise HDPainterError("sr_method 'bicubic' needs no upscaler: resize the stage-1 result instead")
    canvas = make_canvas(original, mask, low_res, config)
    cw, ch = canvas.padded_size
    device, dtype = pipe._execution_device, pipe.unet.dtype

    # the same draws as a whole-canvas run, in diffusers' order (low-res noise, then x_T)
    low_res_noise = randn_tensor(
        (1, 3, ch // SR_SCALE, cw // SR_SCALE), generator=generator, device=device, dtype=dtype
    )
    latents = randn_tensor(
        (1, pipe.vae.config.latent_channels, ch // SR_SCALE, cw // SR_SCALE),
        generator=generator,
        device=device,
        dtype=dtype,
    )

    if config.region == "whole":
        box = (0, 0, cw, ch)
    else:
        box_mask = bounding_box(canvas.painted)
        if box_mask is None:
            raise HDPainterError("the mask is empty at the high resolution: nothing to super-resolve")
        if needed is not None:
            box_mask = (
                min(box_mask[0], needed[0]),
                min(box_mask[1], needed[1]),
                max(box_mask[2], needed[2]),
                max(box_mask[3], needed[3]),
            )
        # the one change since the freeze here (issue 14): the box ends at the image aligned up, not in the padding
        width, height = canvas.size
        limit = (min(cw, -(-width // CROP_ALIGN) * CROP_ALIGN), min(ch, -(-height // CROP_ALIGN) * CROP_ALIGN))
        box = crop_box(box_mask, config.context, limit)
    x0, y0, x1, y1 = box
    lx0, ly0, lx1, ly1 = (v // SR_SCALE for v in box)

    was_tiling = pipe.vae.use_tiling  # the pipeline's own setting (e.g. from HDPainter(vae_tiling=True)) is restored
    tiling = (
        config.vae_tiling
        if config.vae_tiling is not None
        else was_tiling or (x1 - x0) * (y1 - y0) > VAE_TILING_AUTO_PIXELS
    )
    pipe.vae.use_tiling = tiling
    try:
        known = blend = None
        if config.method == "specialized":
            known = pipe.encode_known(to_unit_range(canvas.image[y0:y1, x0:x1]))
            blend = torch.from_numpy(np.ascontiguousarray(canvas.blend_mask[ly0:ly1, lx0:lx1]))[None, None]
        decoded = pipe(
            f"{prompt}, {config.prompt_suffix}" if config.prompt_suffix else prompt,
            to_unit_range(canvas.low_res[ly0:ly1, lx0:lx1]),
            known,
            blend,
            num_inference_steps=config.num_inference_steps,
            guidance_scale=config.guidance_scale,
            noise_level=config.noise_level,
            negative_prompt=config.negative_prompt,
            latents=latents[:, :, ly0:ly1, lx0:lx1],
            low_res_noise=low_res_noise[:, :, ly0:ly1, lx0:lx1],
            callback_on_step_end=callback_on_step_end,
        )
    finally:
        pipe.vae.use_tiling = was_tiling
    width, height = canvas.size
    x1, y1 = min(x1, width), min(y1, height)  # drop the padding
    pixels = to_uint8(decoded.cpu()[:, :, : y1 - y0, : x1 - x0])[0]
    return Patch(pixels, (x0, y0, x1, y1), canvas.size)
