"""RASG, reweighting attention score guidance (paper §3.4, Eq. 7-9, App. F; docs/method.md §4).

Notation (shapes):
    logits      (B, n, T)  pre-softmax cross-attention logits at the RASG grid, mean over layers and heads
    token_mask  (B, T)     True at ind(τ)
    mask        (B, n)     1 where the pixel is to be filled
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

LOGIT_OFFSET = 1.0  # the reference's `x - 1.0` before BCE-with-logits


def rasg_objective(
    logits: torch.Tensor, token_mask: torch.Tensor, mask: torch.Tensor, logit_offset: float = LOGIT_OFFSET
) -> torch.Tensor:
    """L = Σ_{k∈ind(τ)} BCEWithLogits(Ā^k − offset, M), mean over pixels; one value per sample, (B,)."""
    x = logits.float() - logit_offset  # (B, n, T)
    target = mask.float()[:, :, None].expand_as(x)
    bce = F.binary_cross_entropy_with_logits(x, target, reduction="none").mean(dim=1)  # (B, T)
    return (bce * token_mask.to(bce.dtype)).sum(dim=1)


def normalize_gradient(grad: torch.Tensor) -> torch.Tensor:
    """g / std(g) per sample: the unbiased std over all of a sample's entries, mean not subtracted."""
    flat = grad.flatten(1).float()
    std = flat.std(dim=1).clamp_min(torch.finfo(torch.float32).tiny)
    return (flat / std[:, None]).reshape(grad.shape).to(grad.dtype)


def ddim_sigma(alpha_t: float, alpha_prev: float) -> float:
    """σ = sqrt((1 − α_prev)/(1 − α_t) · (1 − α_t/α_prev)), zero when stepping to a clean sample.

    With per-step α = 1 − β this is the reference code's σ (docs/method.md §4 "reference"); with cumulative ᾱ
    it is the standard DDIM σ the paper describes ("paper").
    """
    if alpha_prev >= 1.0:
        return 0.0
    value = (1.0 - alpha_prev) / (1.0 - alpha_t) * (1.0 - alpha_t / alpha_prev)
    return max(value, 0.0) ** 0.5


def vanilla_guidance(eps: torch.Tensor, grad: torch.Tensor, alpha_bar: float, scale: float) -> torch.Tensor:
    """ε̂ + √(1 − ᾱ_t)·s·∇L: the paper's vanilla post-hoc guidance (Eq. 6), the ablation RASG replaces.

    `grad` is ∇_{x_t} of the objective to lower (RASG's L); the DDIM step then moves x̂0 against it.
    """
    return eps + (1.0 - alpha_bar) ** 0.5 * scale * grad.to(eps.dtype)
