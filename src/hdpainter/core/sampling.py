"""The one sampler of both stages: DDIM over a model callable, generalised by a per-step noise source
(docs/method.md §4-5).

A *model* maps (x_t, step index i, timestep t) to a `Prediction` (x̂0, ε̂ and, when asked for, ∇_{x_t} L).
What the stages add is composed around it, in the manner of k-diffusion's samplers:
    - RASG (stage 1) is the step's noise source: `rasg_noise` turns ∇L into the direction ησ·g of Eq. 9;
    - vanilla post-hoc guidance (Eq. 6) is a model wrapper, `with_vanilla_guidance`;
    - the known-region blend of Eq. 10 (stage 2) is an x̂0 post-process, `with_known_region`.

Notation: x_t `x`, x̂0 `x0`, ε̂ `eps`, ᾱ `alpha_bar` (indexed by t), ∇_{x_t} L `grad`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch

from .blend import latent_blend
from .rasg import ddim_sigma, normalize_gradient, vanilla_guidance


@dataclass
class Prediction:
    """One model evaluation at x_t: x̂0 and ε̂ (float32), and ∇_{x_t} L when the step asked for it."""

    x0: torch.Tensor
    eps: torch.Tensor
    grad: torch.Tensor | None = None


Model = Callable[[torch.Tensor, int, int], Prediction]  # (x_t, step index, t) → Prediction
NoiseSource = Callable[[Prediction, int, int], tuple[float, torch.Tensor | None]]  # (pred, t, t_prev) → (ησ, g)
StepCallback = Callable[[int, int, torch.Tensor, Prediction], torch.Tensor]  # (i, t, x_{t−Δ}, pred) → x_{t−Δ}


def trailing_timesteps(num_train_timesteps: int, steps: int) -> list[int]:
    """diffusers' "trailing" spacing: 999, 979, …, 19 for 50 of 1000 steps; always `steps` values."""
    if not 1 <= steps <= num_train_timesteps:
        raise ValueError(f"num_inference_steps must be in 1..{num_train_timesteps}, got {steps}")
    ts = np.round(np.arange(num_train_timesteps, 0, -num_train_timesteps / steps)).astype(np.int64) - 1
    return [int(t) for t in ts]


def split_prediction(
    model_output: torch.Tensor, x_t: torch.Tensor, alpha_bar: float, prediction_type: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """(x̂0, ε̂) from a UNet output, for ε-, v- and x0-prediction models."""
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


def rasg_step(
    x0: torch.Tensor, eps: torch.Tensor, grad: torch.Tensor, alpha_bar_prev: float, eta: float, sigma: float
) -> torch.Tensor:
    """RASG's generalised DDIM step (Eq. 9): the step's noise replaced by ησ·g, g = −∇L / std(∇L) per sample."""
    return ddim_step(x0, eps, alpha_bar_prev, eta * sigma, normalize_gradient(-grad))


def rasg_noise(eta: float, alpha: torch.Tensor) -> NoiseSource:
    """RASG as the sampler's noise source: scale ησ(α_t, α_prev) and direction −∇L / std(∇L).

    `alpha` (indexed by t) is what σ is computed from: per-step α = 1 − β (the authors' code) or the
    cumulative ᾱ (the paper). A step whose prediction carries no gradient is plain DDIM.
    """

    def noise(pred: Prediction, t: int, t_prev: int) -> tuple[float, torch.Tensor | None]:
        if pred.grad is None:
            return 0.0, None
        scale = eta * ddim_sigma(float(alpha[t]), float(alpha[t_prev]))
        return scale, normalize_gradient(-pred.grad)  # towards lower L: the reference's +∇score

    return noise


def with_vanilla_guidance(model: Model, alpha_bar: torch.Tensor, scale: float) -> Model:
    """Eq. 6 as a model wrapper: ε̂ ← ε̂ + √(1 − ᾱ_t)·s·∇L, and x̂0 recomputed from it (ε-form)."""

    def guided(x: torch.Tensor, i: int, t: int) -> Prediction:
        pred = model(x, i, t)
        a = float(alpha_bar[t])
        if pred.grad is None or a <= 0:  # at ᾱ_t = 0 (zero terminal SNR) ε̂ does not reach x̂0
            return pred
        eps = vanilla_guidance(pred.eps, pred.grad, a, scale)
        x0, eps = split_prediction(eps, x.float(), a, "epsilon")
        return replace(pred, x0=x0, eps=eps)

    return guided


def with_known_region(model: Model, known: torch.Tensor, mask: torch.Tensor) -> Model:
    """Eq. 10 as an x̂0 post-process: x̂0 ← m·x̂0 + (1 − m)·E(I_hr), `mask` m = 1 where the model paints."""

    def blended(x: torch.Tensor, i: int, t: int) -> Prediction:
        pred = model(x, i, t)
        return replace(pred, x0=latent_blend(pred.x0, known, mask))

    return blended


def sample(
    model: Model,
    x: torch.Tensor,
    timesteps: Sequence[int],
    alpha_bar: torch.Tensor,
    noise: NoiseSource | None = None,
    callback: StepCallback | None = None,
    interrupted: Callable[[], bool] | None = None,
) -> torch.Tensor:
    """DDIM from x_T over `timesteps`, each step's noise from `noise` (none: η = 0); returns the last step's x̂0.

    Every x_{t−Δ} is cast back to x's dtype (the model's), the last one being x̂0 (a caller that wants x̂0 at
    float32 precision reads it from the last prediction its callback sees).
    `callback(i, t, x_{t−Δ}, pred)` runs after each step and returns the x_{t−Δ} to go on with.
    `interrupted()` is asked before each step; once it says so the remaining steps are skipped.
    """
    dtype = x.dtype
    for i, t in enumerate(timesteps):
        if interrupted is not None and interrupted():
            break
        pred = model(x, i, t)
        if i + 1 == len(timesteps):
            x = pred.x0.to(dtype)
        else:
            t_prev = timesteps[i + 1]
            scale, direction = noise(pred, t, t_prev) if noise is not None else (0.0, None)
            x = ddim_step(pred.x0, pred.eps, float(alpha_bar[t_prev]), scale, direction).to(dtype)
        if callback is not None:
            x = callback(i, t, x, pred)
    return x
