"""PAIntA, prompt-aware introverted attention (paper §3.3, Eq. 5; docs/method.md §3).

Notation (shapes):
    B   batch, H heads, n = h*w image tokens, T text tokens (77), d head dimension
    q, k, v          (B, H, n, d)  self-attention projections
    probs            (B, n, T)     cross-attention probabilities, mean over heads, fp32
    token_mask       (B, T)        True at ind(τ)
    relevance (c_j)  (B, n)        prompt relevance of each image token, in [0, 1]
    mask             (B, n)        True where the token is to be filled (unknown region)
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

SMOOTHING_SIGMA = 0.5  # Attend-and-Excite's 3x3 Gaussian, as used by the reference


def smoothing_kernel(sigma: float = SMOOTHING_SIGMA, dtype=torch.float32, device=None) -> torch.Tensor:
    """The 3x3 kernel outer(w, w) with w_x = exp(-((x-1)/(2σ))²), normalised to sum 1."""
    x = torch.arange(3, dtype=torch.float64) - 1.0
    w = torch.exp(-((x / (2.0 * sigma)) ** 2))
    kernel = torch.outer(w, w)
    return (kernel / kernel.sum()).to(dtype=dtype, device=device)


def smooth(maps: torch.Tensor, sigma: float = SMOOTHING_SIGMA) -> torch.Tensor:
    """Gaussian smoothing of (B, h, w) maps with zero 'same' padding."""
    kernel = smoothing_kernel(sigma, maps.dtype, maps.device)[None, None]
    return F.conv2d(maps[:, None], kernel, padding=1)[:, 0]


def cross_attention_probs(q: torch.Tensor, k: torch.Tensor, scale: float | None = None) -> torch.Tensor:
    """softmax(q kᵀ · scale) per head, in fp32, then the mean over heads: (B, H, n, d), (B, H, T, d) → (B, n, T)."""
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    logits = torch.matmul(q.float(), k.float().transpose(-1, -2)) * scale  # (B, H, n, T)
    return logits.softmax(dim=-1).mean(dim=1)


def token_relevance(probs: torch.Tensor, token_mask: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """c_j of Eq. 5: summed attention to ind(τ), smoothed, then clip((c - median) / max, 0, 1) per sample."""
    h, w = grid
    c = (probs * token_mask[:, None, :].to(probs.dtype)).sum(dim=-1)  # (B, n)
    c = smooth(c.reshape(-1, h, w)).reshape(c.shape[0], h * w)
    median = c.median(dim=1, keepdim=True).values  # torch.median: the lower middle value, as the reference
    peak = c.amax(dim=1, keepdim=True)
    return ((c - median) / peak).clamp(0.0, 1.0)


def painta_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    relevance: torch.Tensor,
    mask: torch.Tensor,
    plain: torch.Tensor | None = None,
    shared_rows: torch.Tensor | None = None,
    scale: float | None = None,
) -> torch.Tensor:
    """Eq. 5 through fused attention: softmax(Ã) v with Ã_ij = c_j A_ij for masked i and known j.

    Uses c_j (q_i · k_j) = q_i · (c_j k_j): masked queries attend over keys whose known entries are
    scaled by c_j; the other queries keep plain attention (`plain`, if the caller already has it).
    When every sample shares one mask, `shared_rows` (its masked token indices) limits the second
    attention call to those query rows. Returns (B, H, n, d) without ever forming the n×n matrix.
    """
    if plain is None:
        plain = F.scaled_dot_product_attention(q, k, v, scale=scale)
    key_scale = torch.where(mask, torch.ones_like(relevance), relevance)  # (B, n)
    k_scaled = k * key_scale[:, None, :, None].to(k.dtype)
    if shared_rows is not None:
        if shared_rows.numel() == 0:
            return plain
        rescaled = F.scaled_dot_product_attention(q.index_select(2, shared_rows), k_scaled, v, scale=scale)
        return plain.index_copy(2, shared_rows, rescaled)
    rescaled = F.scaled_dot_product_attention(q, k_scaled, v, scale=scale)
    return torch.where(mask[:, None, :, None], rescaled, plain)
