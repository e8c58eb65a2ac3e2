"""The exact pooled-Dice threshold equals a brute-force search."""

from __future__ import annotations

import numpy as np
import pytest
from parameterized import parameterized

from pddpm_monai.evaluation.threshold import (
    ValidationPool,
    best_dice_threshold,
    brute_force_threshold,
    dice_curve,
    fpr_threshold,
    interval_halving_threshold,
)

SEEDS = [(0,), (1,), (2,), (3,), (4,)]


def _data(seed: int, n: int = 400, levels: int = 30):
    rng = np.random.default_rng(seed)
    labels = rng.random(n) < 0.15
    scores = np.round(rng.random(n) * levels + labels * rng.random(n) * levels * 0.6) / levels  # many ties
    return scores, labels


def test_hand_computed_example():
    scores = np.array([0.1, 0.4, 0.35, 0.8, 0.8, 0.2])
    labels = np.array([0, 1, 0, 1, 0, 0])
    # > 0.35 predicts {0.4, 0.8, 0.8}: TP 2, P 3, G 2 -> 0.8 (best); > 0.4 predicts the 0.8s: 2/4 = 0.5
    result = best_dice_threshold(scores, labels)
    assert result.threshold == 0.35 and result.dice == pytest.approx(0.8)
    thresholds, dice = dice_curve(scores, labels)
    np.testing.assert_allclose(thresholds, [0.8, 0.4, 0.35, 0.2, 0.1])
    np.testing.assert_allclose(dice, [0.0, 0.5, 0.8, 4 / 6, 4 / 7])


@parameterized.expand(SEEDS)
def test_exact_equals_brute_force(seed):
    scores, labels = _data(seed)
    assert best_dice_threshold(scores, labels) == brute_force_threshold(scores, labels)
    floor = float(scores.min()) - 1.0
    assert best_dice_threshold(scores, labels, floor=floor) == brute_force_threshold(
        scores, labels, floor=floor
    )


@parameterized.expand(SEEDS)
def test_pool_equals_brute_force_on_the_full_volumes(seed):
    rng = np.random.default_rng(seed)
    pool, all_scores, all_labels = ValidationPool(floor=0.0), [], []
    for _ in range(3):
        scores, labels = _data(int(rng.integers(1000)), n=300)
        scores = scores.astype(np.float32)  # anomaly maps are float32
        scores[rng.random(300) < 0.4] = 0.0  # masked-out voxels, some of them lesion
        pool.add(scores.reshape(3, 10, 10), labels.reshape(3, 10, 10))
        all_scores.append(scores)
        all_labels.append(labels)
    s, y = np.concatenate(all_scores), np.concatenate(all_labels)
    assert pool.extra_positives == int((y & (s <= 0)).sum())
    assert pool.best() == brute_force_threshold(s, y)


@parameterized.expand(SEEDS)
def test_interval_halving_never_beats_the_exact_optimum(seed):
    scores, labels = _data(seed)
    exact = best_dice_threshold(scores, labels, floor=0.0 - 1e-9)
    assert interval_halving_threshold(scores, labels).dice <= exact.dice + 1e-12


def test_no_lesion_is_an_error():
    with pytest.raises(ValueError, match="no lesion"):
        best_dice_threshold(np.array([0.1, 0.2]), np.array([0, 0]))


def test_bin_edges_are_sorted_and_start_at_the_floor():
    pool = ValidationPool()
    pool.add(np.linspace(0, 1, 101), np.arange(101) > 90)
    edges = pool.bin_edges(10)
    assert edges[0] == 0.0 and np.all(np.diff(edges) > 0) and edges[-1] == 1.0


def test_fpr_threshold_hand_computed():
    healthy = np.arange(100, dtype=np.float64)  # 0..99
    assert fpr_threshold(healthy, 0.05) == 94.0  # 95..99 above: 5 %
    assert fpr_threshold(healthy, 0.0) == 99.0
    assert np.mean(healthy > fpr_threshold(healthy, 0.1)) == pytest.approx(0.1)
    with pytest.raises(ValueError):
        fpr_threshold(healthy, 1.0)
