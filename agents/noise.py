"""AMC's exploration noise: a normal distribution around the actor's action, truncated to the action range.

AMC (He et al., ECCV 2018, Sec. 3.4; github.com/mit-han-lab/amc ``lib/agent.py``,
``sample_from_truncated_normal_distribution``) samples each action from ``TN(mu, sigma^2, lo, hi)`` with ``mu``
the actor's output, and decays sigma exponentially per episode after the warm-up. Truncation (rather than
clipping a normal sample) keeps every action strictly inside the range with a density that is a rescaled
normal: no probability mass piles up on the bounds, which clipping would put on the extreme sparsities.
"""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np

_STD_NORMAL = NormalDist()


def _cdf(x: float) -> float:
    return 0.5 * math.erfc(-x / math.sqrt(2.0))


def sample_truncated_normal(rng: np.random.Generator, mu: float, sigma: float, low: float = -1.0,
                            high: float = 1.0) -> float:
    """One draw of ``N(mu, sigma^2)`` truncated to ``[low, high]`` by inverting the CDF (one uniform draw).

    Args:
        rng: the Generator to draw from (exactly one ``rng.random()`` per call: reproducible and resumable).
        mu: the mean; it must lie within ``[low, high]`` (the actor's tanh output always does).
        sigma: the standard deviation (``0`` returns ``mu``).
    """
    if not low <= mu <= high:
        raise ValueError(f"truncated-normal mean {mu} outside [{low}, {high}]")
    u = float(rng.random())
    if sigma <= 0.0:
        return float(mu)
    p_low, p_high = _cdf((low - mu) / sigma), _cdf((high - mu) / sigma)
    p = p_low + u * (p_high - p_low)
    # mu in [low, high] gives p_low <= 0.5 <= p_high; only the extreme tails underflow to 0 or round to 1
    p = min(max(p, 1e-300), 1.0 - 1e-16)
    x = mu + sigma * _STD_NORMAL.inv_cdf(p)
    return float(min(max(x, low), high))  # guards rounding only: the draw is inside by construction


class TruncatedNormalNoise:
    """AMC's exploration schedule: sigma ``sigma0 * decay ** k`` at the k-th episode after the warm-up.

    Args:
        sigma0: the initial standard deviation, in action units ([-1, 1] scale).
        decay: the per-episode multiplicative decay (AMC: 0.95).
    """

    def __init__(self, sigma0: float, decay: float) -> None:
        self.sigma0, self.decay = float(sigma0), float(decay)

    def sigma(self, k: int) -> float:
        """The standard deviation of the k-th post-warm-up episode (k = 0 is the first)."""
        return self.sigma0 * self.decay ** max(k, 0)

    def __call__(self, rng: np.random.Generator, mu: float, k: int) -> float:
        """An exploratory action around ``mu`` for the k-th post-warm-up episode."""
        return sample_truncated_normal(rng, mu, self.sigma(k))
