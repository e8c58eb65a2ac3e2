"""Per-volume metrics against scikit-learn and direct formulas."""

from __future__ import annotations

import math

import numpy as np
import pytest
from parameterized import parameterized
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

from pddpm_monai.evaluation.metrics import (
    average_precision,
    dice_score,
    l1_error,
    pr_curve_from_histogram,
    pr_histogram,
    roc_auc,
    volume_metrics,
)

SEEDS = [(0,), (1,), (2,)]


def _volume(seed: int):
    rng = np.random.default_rng(seed)
    shape = (12, 10, 8)
    gt = np.zeros(shape, bool)
    gt[3:7, 2:6, 2:5] = True
    mask = np.zeros(shape, bool)
    mask[1:11, 1:9, 1:7] = True
    scores = rng.random(shape) + gt * rng.random(shape)
    scores[0, 0, 0] = scores[0, 0, 1]  # a tie
    return scores.astype(np.float32), gt, mask, rng


@parameterized.expand(SEEDS)
def test_dice_matches_the_formula(seed):
    scores, gt, _, rng = _volume(seed)
    pred = scores > 0.9
    expected = 2 * (pred & gt).sum() / (pred.sum() + gt.sum())
    assert dice_score(pred, gt) == pytest.approx(expected, abs=1e-6)


@parameterized.expand(SEEDS)
def test_auprc_and_auroc_match_sklearn(seed):
    scores, gt, mask, _ = _volume(seed)
    assert average_precision(scores, gt, mask) == pytest.approx(
        average_precision_score(gt[mask], scores[mask]), abs=1e-6
    )
    assert average_precision(scores, gt, voxels="all") == pytest.approx(
        average_precision_score(gt.ravel(), scores.ravel()), abs=1e-6
    )
    assert roc_auc(scores, gt, mask) == pytest.approx(roc_auc_score(gt[mask], scores[mask]), abs=1e-6)


def test_empty_ground_truth_gives_nan():
    scores, _, mask, _ = _volume(0)
    empty = np.zeros_like(mask)
    assert math.isnan(dice_score(scores > 0.5, empty))
    assert math.isnan(dice_score(np.zeros_like(mask), empty))
    assert math.isnan(average_precision(scores, empty, mask))
    assert math.isnan(roc_auc(scores, empty, mask))
    m = volume_metrics(
        scores, scores > 0.5, None, mask, image=scores, reconstruction=None, raw_anomaly_map=scores
    )
    assert math.isnan(m.dice) and math.isnan(m.auprc) and math.isnan(m.best_dice) and m.lesion_voxels == 0
    assert m.l1 == pytest.approx(scores[mask].mean(), rel=1e-6)


def test_l1_inside_the_mask():
    image = np.zeros((4, 4, 4))
    recon = np.full((4, 4, 4), 0.25)
    recon[0] = 9.0  # outside the mask: ignored
    mask = np.zeros((4, 4, 4), bool)
    mask[1:] = True
    assert l1_error(image, recon, mask) == pytest.approx(0.25)


def test_volume_metrics_best_dice_bounds_dice():
    scores, gt, mask, _ = _volume(1)
    pred = scores > 1.2
    m = volume_metrics(
        scores, pred, gt, mask, image=scores, reconstruction=scores * 0.5, raw_anomaly_map=scores
    )
    assert m.best_dice >= m.dice
    assert m.dice == pytest.approx(dice_score(pred, gt))
    assert m.l1 == pytest.approx(np.abs(scores * 0.5)[mask].mean(), rel=1e-6)


def test_pr_histogram_reproduces_sklearn_curve_when_bins_separate_scores():
    rng = np.random.default_rng(5)
    scores = rng.permutation(200) / 200.0
    labels = rng.random(200) < 0.3
    edges = np.sort(scores)  # one score per bin
    pos, neg = pr_histogram(scores, labels, edges)
    precision, recall = pr_curve_from_histogram(pos, neg)
    ref_p, ref_r, _ = precision_recall_curve(labels, scores)
    # sklearn goes from the lowest threshold up; drop our empty top bins and compare as point sets
    ours = {(round(p, 9), round(r, 9)) for p, r in zip(precision, recall) if r > 0}
    ref = {(round(p, 9), round(r, 9)) for p, r in zip(ref_p, ref_r) if r > 0}
    assert ours == ref
