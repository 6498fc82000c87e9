"""What both pipelines do before sampling: check the step callback, draw or check x_T, lay out the DDIM schedule,
hand the VAE encoder its input in the reference's layout."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.utils.torch_utils import randn_tensor

from .core.sampling import trailing_timesteps
from .errors import HDPainterError


def encoder_layout(pixels: torch.Tensor) -> torch.Tensor:
    """`pixels` (B, 3, H, W) in channels_last memory layout, as the reference hands its VAE encoder (its images
    come from (H, W, C) numpy arrays, transposed without a copy). Convolutions choose their kernels by layout, so
    the layout decides the rounding: on random weights a contiguous input alone moves stage 1's x̂0 by 0.27 from
    the reference's after 10 steps. Free: one copy of the image, nothing next to the encoder's own work, and
    what the encoder returns is made contiguous again by its caller, so nothing downstream changes layout."""
    return pixels.contiguous(memory_format=torch.channels_last)


def callback_tensor_inputs(pipe, callback, names: Sequence[str]) -> list[str]:
    """The tensors a step callback gets: a diffusers PipelineCallback's own, or `names`; each one the pipeline has."""
    if isinstance(callback, (PipelineCallback, MultiPipelineCallbacks)):
        names = callback.tensor_inputs
    unknown = set(names) - set(pipe._callback_tensor_inputs)
    if unknown:
        raise HDPainterError(
            f"callback_on_step_end_tensor_inputs may hold {', '.join(pipe._callback_tensor_inputs)}, "
            f"not {sorted(unknown)}"
        )
    return list(names)


class DDIMSchedule:
    """Mixed into HDPainterPipeline and HDUpscalePipeline (diffusers pipelines with a `scheduler` and a `vae`)."""

    def initial_latents(self, shape: tuple[int, ...], latents, generator, device, dtype) -> torch.Tensor:
        """x_T: drawn from `generator` (one or one per sample), or the given `latents` checked against `shape`."""
        if isinstance(generator, list) and len(generator) != shape[0]:
            raise HDPainterError(
                f"{len(generator)} generators given for {shape[0]} samples (prompts × num_images_per_prompt)"
            )
        if latents is None:
            return randn_tensor(shape, generator=generator, device=device, dtype=dtype)
        if tuple(latents.shape) != tuple(shape):
            raise HDPainterError(f"latents must have shape {tuple(shape)} for this input, got {tuple(latents.shape)}")
        return latents.to(device=device, dtype=dtype)

    def ddim_schedule(self, num_inference_steps: int, default_prediction: str) -> tuple[list[int], torch.Tensor, str]:
        """(timesteps with trailing spacing, ᾱ indexed by t in float64, the model's prediction type);
        `num_timesteps` reads the step count from here on."""
        timesteps = trailing_timesteps(self.scheduler.config.num_train_timesteps, num_inference_steps)
        self._num_timesteps = len(timesteps)
        prediction_type = self.scheduler.config.get("prediction_type", default_prediction)
        return timesteps, self.scheduler.alphas_cumprod.double(), prediction_type
