"""The deterministic / generalised DDIM step used by stage 1 (METHOD.md §4, step 4)."""

from __future__ import annotations

import numpy as np
import torch


def trailing_timesteps(num_train_timesteps: int, steps: int) -> list[int]:
    """diffusers' "trailing" spacing: 999, 979, …, 19 for 50 of 1000 steps; always `steps` values."""
    if not 1 <= steps <= num_train_timesteps:
        raise ValueError(f"num_inference_steps must be in 1..{num_train_timesteps}, got {steps}")
    ts = np.round(np.arange(num_train_timesteps, 0, -num_train_timesteps / steps)).astype(np.int64) - 1
    return [int(t) for t in ts]


def split_prediction(
    model_output: torch.Tensor, x_t: torch.Tensor, alpha_bar: float, prediction_type: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """(x̂0, ε̂) from a UNet output, for ε- and v-prediction models."""
    a, s = alpha_bar**0.5, (1.0 - alpha_bar) ** 0.5
    if prediction_type == "epsilon":
        eps = model_output
        x0 = (x_t - s * eps) / a
    elif prediction_type == "v_prediction":
        x0 = a * x_t - s * model_output
        eps = a * model_output + s * x_t
    elif prediction_type == "sample":
        x0 = model_output
        eps = (x_t - a * x0) / s
    else:
        raise ValueError(f"unsupported prediction_type {prediction_type!r}")
    return x0, eps


def ddim_step(
    x0: torch.Tensor,
    eps: torch.Tensor,
    alpha_bar_prev: float,
    noise_scale: float = 0.0,
    direction: torch.Tensor | None = None,
) -> torch.Tensor:
    """x_{t−Δ} = √ᾱ_prev x̂0 + √(1 − ᾱ_prev − (ησ)²) ε̂ + ησ g   (RASG, Eq. 9; η=0 is plain DDIM)."""
    eps_coef = max(1.0 - alpha_bar_prev - noise_scale**2, 0.0) ** 0.5
    x_prev = alpha_bar_prev**0.5 * x0 + eps_coef * eps
    if direction is not None and noise_scale != 0.0:
        x_prev = x_prev + noise_scale * direction
    return x_prev
