"""Means and 95 % confidence intervals for the evaluation table."""

from __future__ import annotations

import math

Z95 = 1.959963984540054  # the standard normal's 97.5 % quantile


def mean_interval(values: list[float]) -> tuple[float, float, float]:
    """(mean, low, high): the normal-approximation 95 % interval of the mean, mean ± z·s/√n (s with n − 1).
    With one value the interval is unknown (nan)."""
    n = len(values)
    if n == 0:
        return math.nan, math.nan, math.nan
    mean = math.fsum(values) / n
    if n == 1:
        return mean, math.nan, math.nan
    s = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))
    half = Z95 * s / math.sqrt(n)
    return mean, mean - half, mean + half


def rate_interval(successes: int, n: int) -> tuple[float, float, float]:
    """(rate, low, high): the Wilson score 95 % interval of a proportion (sound at 0 %, 100 % and small n)."""
    if n == 0:
        return math.nan, math.nan, math.nan
    p = successes / n
    z2 = Z95 * Z95
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = Z95 * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return p, max(0.0, centre - half), min(1.0, centre + half)


def sign_test(wins: int, losses: int) -> float:
    """Two-sided exact sign test (binomial, p = ½) of `wins` against `losses`, ties left out: the p-value of a
    paired comparison of two methods on the same cases."""
    n = wins + losses
    if n == 0:
        return 1.0
    tail = math.fsum(math.comb(n, k) for k in range(min(wins, losses) + 1)) / 2**n
    return min(1.0, 2 * tail)
