"""Significance of Dice differences between two methods (paper §4.4): mlxtend's permutation test.

Paired on the volumes both methods evaluated (matched by name); a volume whose Dice is NaN for
either method (empty ground truth) is left out. With several folds, a method's Dice of a volume
is its mean over the folds. The test is two-sided (``|mean(x - y)|``), approximate with
10,000 random sign flips, and seeded for reproducibility.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from mlxtend.evaluate import permutation_test

__all__ = ["PermutationConfig", "PairedTest", "paired_permutation_test"]


@dataclass(frozen=True)
class PermutationConfig:
    """Defaults of the permutation test (the paper's)."""

    rounds: int = 10_000
    alpha: float = 0.05
    seed: int = 0


@dataclass(frozen=True)
class PairedTest:
    """Result of one paired test: p-value, number of paired volumes, mean of x - y, significance."""

    p_value: float
    n: int
    mean_difference: float
    significant: bool


def paired_permutation_test(
    x: Mapping[str, float],
    y: Mapping[str, float],
    config: PermutationConfig = PermutationConfig(),
) -> PairedTest:
    """Paired two-sided permutation test on per-volume scores.

    Args:
        x: ``volume name -> score`` of the first method.
        y: the same for the second method.
        config: rounds, alpha and seed.

    Returns:
        a :class:`PairedTest`; ``p_value`` is NaN when fewer than two volumes pair up.
    """
    names = sorted(n for n in set(x) & set(y) if np.isfinite(x[n]) and np.isfinite(y[n]))
    a = np.array([x[n] for n in names], dtype=np.float64)
    b = np.array([y[n] for n in names], dtype=np.float64)
    if len(names) < 2:
        return PairedTest(float("nan"), len(names), float("nan"), False)
    diff = float(np.mean(a - b))
    if np.all(a == b):
        return PairedTest(1.0, len(names), 0.0, False)
    # two-sided: mlxtend's default func "x_mean != y_mean"
    p = float(
        permutation_test(a, b, method="approximate", num_rounds=config.rounds, seed=config.seed, paired=True)
    )
    return PairedTest(p, len(names), diff, p < config.alpha)
