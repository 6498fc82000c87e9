"""core/: PAIntA, RASG, ind(τ) and the sampler against explicit formulas and hand-computed values."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hdpainter.core.painta import cross_attention_probs, painta_attention, smoothing_kernel, token_relevance
from hdpainter.core.rasg import ddim_sigma, normalize_gradient, rasg_objective
from hdpainter.core.sampling import ddim_step, split_prediction, trailing_timesteps
from hdpainter.core.tokens import prompt_token_indices


def eq5_explicit(q, k, v, c, mask):
    """Eq. 5 exactly as the reference writes it: n×n logits times the matrix (1 − M)·c + M,
    M = m mᵀ + (1 − m) per sample; softmax; times V."""
    d = q.shape[-1]
    logits = q @ k.transpose(-1, -2) / math.sqrt(d)  # (B, H, n, n)
    m = mask.to(q.dtype)[:, :, None]  # (B, n, 1)
    big_m = m @ m.transpose(1, 2) + (1 - m)  # (B, n, n)
    factor = (1 - big_m) * c[:, None, :] + big_m
    return (logits * factor[:, None]).softmax(-1) @ v


def random_case(b=2, heads=3, n=36, d=8, same_mask=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(b, heads, n, d, generator=g, dtype=torch.float64) for _ in range(3))
    c = torch.rand(b, n, generator=g, dtype=torch.float64)
    mask = torch.rand(1 if same_mask else b, n, generator=g) > 0.6
    return q, k, v, c, mask.expand(b, n).clone()


@pytest.mark.parametrize("same_mask", [True, False])
def test_painta_fused_equals_explicit_eq5(same_mask):
    q, k, v, c, mask = random_case(same_mask=same_mask)
    expected = eq5_explicit(q, k, v, c, mask)
    torch.testing.assert_close(painta_attention(q, k, v, c, mask), expected)
    if same_mask:  # the row-restricted second call gives the same
        rows = mask[0].nonzero().squeeze(1)
        torch.testing.assert_close(painta_attention(q, k, v, c, mask, shared_rows=rows), expected)


def test_painta_gradients_equal_explicit_form():
    q, k, v, c, mask = random_case(same_mask=True)
    rows = mask[0].nonzero().squeeze(1)
    grads = []
    for fn in (lambda *a: painta_attention(*a, shared_rows=rows), eq5_explicit):
        qq, cc = q.clone().requires_grad_(), c.clone().requires_grad_()
        (fn(qq, k, v, cc, mask) * v).sum().backward()
        grads.append((qq.grad, cc.grad))
    torch.testing.assert_close(grads[0], grads[1])


def test_painta_changes_only_masked_queries_and_is_plain_without_rescaling():
    q, k, v, c, mask = random_case()
    plain = F.scaled_dot_product_attention(q, k, v)
    out = painta_attention(q, k, v, c, mask)
    torch.testing.assert_close(out[:, :, ~mask[0]], plain[:, :, ~mask[0]])
    assert (out[:, :, mask[0]] - plain[:, :, mask[0]]).abs().max() > 1e-3
    torch.testing.assert_close(painta_attention(q, k, v, torch.ones_like(c), mask), plain)
    empty = torch.zeros(0, dtype=torch.long)
    torch.testing.assert_close(painta_attention(q, k, v, c, torch.zeros_like(mask), shared_rows=empty), plain)


def test_smoothing_kernel_is_normalised_outer_product_of_e_minus_one_weights():
    w = np.array([math.exp(-1), 1.0, math.exp(-1)])
    expected = np.outer(w, w) / np.outer(w, w).sum()
    np.testing.assert_allclose(smoothing_kernel(dtype=torch.float64).numpy(), expected, rtol=1e-12)


def test_token_relevance_against_hand_computation():
    h, w, T = 4, 6, 7
    g = torch.Generator().manual_seed(1)
    probs = torch.rand(2, h * w, T, generator=g, dtype=torch.float64).softmax(-1)
    token_mask = torch.zeros(2, T, dtype=torch.bool)
    token_mask[0, [1, 2, 5]] = True
    token_mask[1, [3]] = True
    got = token_relevance(probs, token_mask, (h, w))
    kernel = smoothing_kernel(dtype=torch.float64).numpy()
    for b in range(2):
        s = probs[b][:, token_mask[b]].sum(-1).reshape(h, w).numpy()
        padded = np.pad(s, 1)
        smooth = np.array(
            [[(padded[i : i + 3, j : j + 3] * kernel).sum() for j in range(w)] for i in range(h)]
        ).ravel()
        lower_median = np.sort(smooth)[(smooth.size - 1) // 2]  # torch.median: the lower of the two middles
        expected = np.clip((smooth - lower_median) / smooth.max(), 0, 1)
        np.testing.assert_allclose(got[b].numpy(), expected, rtol=1e-10, atol=1e-12)
        assert (expected == 0).sum() >= smooth.size // 2  # half the tokens at or below the median are cut


def test_cross_attention_probs_is_head_mean_of_softmax_in_fp32():
    g = torch.Generator().manual_seed(2)
    q = torch.randn(1, 4, 10, 8, generator=g).half()
    k = torch.randn(1, 4, 5, 8, generator=g).half()
    got = cross_attention_probs(q, k, scale=0.125)
    assert got.dtype == torch.float32
    expected = torch.stack([torch.softmax(q[0, h].float() @ k[0, h].float().T * 0.125, -1) for h in range(4)]).mean(0)
    torch.testing.assert_close(got[0], expected)


def test_rasg_objective_against_hand_computed_bce():
    logits = torch.tensor([[[0.5, 2.0, -1.0], [3.0, 0.0, 1.0]]])  # (B=1, n=2, T=3)
    mask = torch.tensor([[1.0, 0.0]])
    token_mask = torch.tensor([[False, True, True]])

    def bce(x, y):
        p = 1 / (1 + math.exp(-x))
        return -(y * math.log(p) + (1 - y) * math.log(1 - p))

    # token 1: pixels (2.0-1, y=1), (0.0-1, y=0); token 2: (-1-1, 1), (1-1, 0); mean over pixels, sum over tokens
    expected = (bce(1.0, 1) + bce(-1.0, 0)) / 2 + (bce(-2.0, 1) + bce(0.0, 0)) / 2
    assert rasg_objective(logits, token_mask, mask).item() == pytest.approx(expected, rel=1e-6)


def test_rasg_objective_is_per_sample():
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(3, 16, 77, generator=g)
    mask = (torch.rand(3, 16, generator=g) > 0.5).float()
    token_mask = torch.zeros(3, 77, dtype=torch.bool)
    token_mask[:, 1:4] = True
    batched = rasg_objective(logits, token_mask, mask)
    singles = torch.cat([rasg_objective(logits[i : i + 1], token_mask[i : i + 1], mask[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(batched, singles)


def test_gradient_normalisation_uses_unbiased_std_per_sample_without_centering():
    g = torch.tensor([[[1.0, 2.0], [3.0, 4.0]], [[10.0, 10.0], [10.0, 30.0]]])
    got = normalize_gradient(g)
    for b in range(2):
        values = g[b].flatten().tolist()
        mean = sum(values) / 4
        std = math.sqrt(sum((x - mean) ** 2 for x in values) / 3)
        torch.testing.assert_close(got[b], g[b] / std)


def test_sigma_variants_hand_computed_on_the_sd_schedule():
    betas = np.linspace(0.00085**0.5, 0.012**0.5, 1000) ** 2
    alpha = 1 - betas
    alpha_bar = np.cumprod(alpha)
    t, prev = 999, 979
    ref = math.sqrt((1 - alpha[prev]) / (1 - alpha[t]) * (1 - alpha[t] / alpha[prev]))
    paper = math.sqrt((1 - alpha_bar[prev]) / (1 - alpha_bar[t]) * (1 - alpha_bar[t] / alpha_bar[prev]))
    assert ddim_sigma(alpha[t], alpha[prev]) == pytest.approx(ref, rel=1e-12)
    assert ddim_sigma(alpha_bar[t], alpha_bar[prev]) == pytest.approx(paper, rel=1e-12)
    # docs/method.md §4: η σ is about 1e-3..2e-3 with the reference σ at η=0.1, and the paper's σ is much larger
    sigmas = [0.1 * ddim_sigma(alpha[s], alpha[s - 20]) for s in range(999, 20, -20)]
    assert 5e-4 < min(sigmas) and max(sigmas) < 3e-3
    assert ddim_sigma(alpha_bar[t], alpha_bar[prev]) > 10 * ddim_sigma(alpha[t], alpha[prev])
    assert ddim_sigma(alpha_bar[19], 1.0) == 0.0  # the final step to a clean sample never yields NaN


@pytest.mark.parametrize("steps", [1, 7, 30, 50, 1000])
def test_trailing_timesteps_match_diffusers(steps):
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler(timestep_spacing="trailing")
    scheduler.set_timesteps(steps)
    assert trailing_timesteps(1000, steps) == scheduler.timesteps.tolist()
    assert len(trailing_timesteps(1000, steps)) == steps


def test_reference_timesteps_for_50_steps():
    assert trailing_timesteps(1000, 50) == list(range(999, 0, -20))


def test_uint8_conversion_truncates_like_the_reference():
    from hdpainter.images import to_uint8

    x = torch.tensor([-1.5, -1.0, 0.0, 0.999, 1.0, 2.0, 2 * 100.7 / 255 - 1]).view(1, 1, 1, -1).expand(1, 3, 1, -1)
    # 255 (x + 1) / 2, clipped to [-1, 1] first, then truncated: 127.5 → 127, 254.87 → 254, 100.7 → 100
    assert to_uint8(x)[0, 0, :, 0].tolist() == [0, 0, 127, 254, 255, 255, 100]


def test_ddim_step_formulas():
    g = torch.Generator().manual_seed(4)
    x0, eps, direction = (torch.randn(2, 4, 3, 3, generator=g, dtype=torch.float64) for _ in range(3))
    a_prev, ns = 0.3, 0.05
    expected = math.sqrt(a_prev) * x0 + math.sqrt(1 - a_prev - ns**2) * eps + ns * direction
    torch.testing.assert_close(ddim_step(x0, eps, a_prev, ns, direction), expected)
    torch.testing.assert_close(ddim_step(x0, eps, 1.0), x0)


@pytest.mark.parametrize("kind", ["epsilon", "v_prediction", "sample"])
def test_split_prediction_recovers_x0_and_eps(kind):
    g = torch.Generator().manual_seed(5)
    x0, eps = (
        torch.randn(2, 4, 5, 5, generator=g, dtype=torch.float64),
        torch.randn(2, 4, 5, 5, generator=g, dtype=torch.float64),
    )
    a = 0.42
    x_t = math.sqrt(a) * x0 + math.sqrt(1 - a) * eps
    output = {"epsilon": eps, "v_prediction": math.sqrt(a) * eps - math.sqrt(1 - a) * x0, "sample": x0}[kind]
    got_x0, got_eps = split_prediction(output, x_t, a, kind)
    torch.testing.assert_close(got_x0, x0)
    torch.testing.assert_close(got_eps, eps)


# ind(τ): ids are [SOT, words…, EOT] (+ padding)
SOT, EOT = 900, 901


def test_token_indices_plain_prompt_with_positive_words():
    bare = [SOT, 10, 11, 12, EOT]
    full = [SOT, 10, 11, 12, 5, 20, 21, EOT]
    assert prompt_token_indices(bare, full, EOT) == [1, 2, 3, 7]


def test_token_indices_empty_prompt_is_only_the_eot():
    assert prompt_token_indices([SOT, EOT], [SOT, EOT], EOT) == [1]
    assert prompt_token_indices([SOT, EOT], [SOT, 5, 20, EOT], EOT) == [3]


def test_token_indices_ignore_padding_of_either_kind():
    bare_sd1 = [SOT, 10, EOT] + [EOT] * 74
    bare_sd2 = [SOT, 10, EOT] + [0] * 74
    assert prompt_token_indices(bare_sd1, bare_sd1, EOT) == prompt_token_indices(bare_sd2, bare_sd2, EOT) == [1, 2]


def test_token_indices_truncated_prompt():
    bare = [SOT] + [10] * 75 + [EOT]  # 77 tokens: the prompt was cut
    assert prompt_token_indices(bare, bare, EOT) == list(range(1, 76)) + [76]


def test_rasg_step_is_eq9_with_the_normalised_negative_gradient():
    """x_{t−Δ} = √ᾱ_prev x̂0 + √(1 − ᾱ_prev − (ησ)²) ε̂ + ησ g, g = −∇L / std(−∇L) per sample (unbiased std)."""
    from hdpainter.core.sampling import rasg_step

    g = torch.Generator().manual_seed(0)
    x0, eps, grad = (torch.randn(2, 4, 3, 5, generator=g, dtype=torch.float64) for _ in range(3))
    grad[1] *= 1e-3  # a tiny gradient is normalised like a large one
    eta, sigma, ab_prev = 0.3, 0.8, 0.6
    out = rasg_step(x0, eps, grad, ab_prev, eta, sigma)
    for b in range(2):
        flat = -grad[b].flatten()
        std = math.sqrt(((flat - flat.mean()) ** 2).sum().item() / (flat.numel() - 1))
        want = (
            math.sqrt(ab_prev) * x0[b]
            + math.sqrt(1 - ab_prev - (eta * sigma) ** 2) * eps[b]
            - eta * sigma * grad[b] / std
        )
        torch.testing.assert_close(out[b], want)
    # by hand: one sample, ∇L = (1, −1): std √2, g = (−1, 1)/√2
    hand = rasg_step(torch.zeros(1, 2), torch.zeros(1, 2), torch.tensor([[1.0, -1.0]]), 0.5, 1.0, 0.5)
    torch.testing.assert_close(hand, torch.tensor([[-0.5, 0.5]]) / math.sqrt(2))


def test_the_sampler_over_a_closed_form_model_is_the_ddim_recursion():
    """sample() with a linear model, RASG-style noise and a callback, against the DDIM formulas written out."""
    from hdpainter.core.sampling import Prediction, sample

    alpha_bar = torch.linspace(0.99, 0.05, 1000, dtype=torch.float64)
    timesteps = [999, 666, 332]
    direction = torch.full((1, 2), 0.5)

    def model(x, i, t):
        return Prediction(x0=0.5 * x.float(), eps=x.float() + i, grad=torch.ones(1, 2))

    seen = []
    x_t = torch.tensor([[1.0, -2.0]])
    out = sample(
        model,
        x_t,
        timesteps,
        alpha_bar,
        noise=lambda pred, t, t_prev: (0.1, direction),
        callback=lambda i, t, x, pred: seen.append((i, t)) or x * 2,
    )
    x = x_t.clone()
    for i in range(len(timesteps)):
        x0, eps = 0.5 * x, x + i
        if i == len(timesteps) - 1:
            x = x0 * 2
        else:
            ab = float(alpha_bar[timesteps[i + 1]])
            x = (math.sqrt(ab) * x0 + math.sqrt(1 - ab - 0.01) * eps + 0.1 * direction) * 2
    torch.testing.assert_close(out, x)
    assert seen == [(0, 999), (1, 666), (2, 332)]
    assert sample(model, x_t, timesteps, alpha_bar, interrupted=lambda: True) is x_t  # interrupted before any step


def test_vanilla_guidance_and_known_region_wrappers_are_eq6_and_eq10():
    from hdpainter.core.sampling import Prediction, with_known_region, with_vanilla_guidance

    g = torch.Generator().manual_seed(1)
    x, eps, x0, grad, known = (torch.randn(1, 4, 2, 3, generator=g) for _ in range(5))
    alpha_bar = torch.full((1000,), 0.36, dtype=torch.float64)
    guided = with_vanilla_guidance(lambda x_, i, t: Prediction(x0, eps, grad), alpha_bar, 50.0)(x, 0, 10)
    eps_hat = eps + math.sqrt(1 - 0.36) * 50.0 * grad
    torch.testing.assert_close(guided.eps, eps_hat)
    torch.testing.assert_close(guided.x0, (x - 0.8 * eps_hat) / 0.6)
    mask = (torch.rand(1, 1, 2, 3, generator=g) > 0.5).float()
    blended = with_known_region(lambda x_, i, t: Prediction(x0, eps), known, mask)(x, 0, 10)
    torch.testing.assert_close(blended.x0, torch.where(mask > 0, x0, known))
    assert blended.eps is eps
