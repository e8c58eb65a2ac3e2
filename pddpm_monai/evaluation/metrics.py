"""Per-volume metrics: Dice, AUPRC, AUROC, best-possible Dice and the l1 reconstruction error.

NaN convention: a volume whose ground truth is empty (a healthy scan, or a lesion lost in the
downsampling) has undefined Dice, AUPRC, AUROC and best Dice; they are NaN here (MONAI's
``DiceMetric(ignore_empty=True)`` and ``compute_average_precision`` both return NaN for it), and
means over volumes use ``nanmean`` while reporting how many volumes were NaN.

Voxels: Dice compares the whole binarised volume with the ground truth (as the authors).
AUPRC and AUROC rank the post-processed scores of the voxels inside the brain mask
(``voxels="brain"``, the default, as the issue asks); the authors rank every voxel of the volume
(``voxels="all"``). The two agree whenever every lesion voxel scores above the background's 0.
The l1 error is the mean ``|x - x_rec|`` inside the brain mask (the authors average over the
whole volume, background included, which makes it depend on the head size); a method without a
reconstruction reports the mean of its raw anomaly map there (for Thresh: the mean intensity).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from monai.metrics import DiceMetric, compute_average_precision, compute_roc_auc

from pddpm_monai.evaluation.threshold import best_dice_threshold

__all__ = [
    "VolumeMetrics",
    "dice_score",
    "average_precision",
    "roc_auc",
    "l1_error",
    "pr_histogram",
    "pr_curve_from_histogram",
    "volume_metrics",
]

VoxelSet = Literal["brain", "all"]


@dataclass
class VolumeMetrics:
    """Metrics of one volume (NaN where undefined, see the module docstring)."""

    dice: float
    auprc: float
    auroc: float
    best_dice: float
    l1: float
    lesion_voxels: int
    predicted_voxels: int


def _bool(x: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.squeeze(np.asarray(x)) > 0


def dice_score(prediction: np.ndarray | torch.Tensor, ground_truth: np.ndarray | torch.Tensor) -> float:
    """Dice of two binary volumes with MONAI ``DiceMetric`` (NaN when the ground truth is empty)."""
    pred, gt = _bool(prediction), _bool(ground_truth)
    if pred.shape != gt.shape:
        raise ValueError(f"prediction {pred.shape} and ground truth {gt.shape} differ in shape")
    metric = DiceMetric(include_background=True, reduction="none", ignore_empty=True)
    value = metric(*(torch.as_tensor(v[None, None], dtype=torch.float32) for v in (pred, gt)))
    return float(value.reshape(-1)[0])


def _ranked(scores, labels, mask, voxels: VoxelSet) -> tuple[np.ndarray, np.ndarray]:
    """Flat float64 scores and boolean labels of the ranked voxels (inside ``mask`` for ``"brain"``)."""
    s = np.squeeze(np.asarray(scores, dtype=np.float64))
    y = _bool(labels)
    if s.shape != y.shape:
        raise ValueError(f"scores {s.shape} and ground truth {y.shape} differ in shape")
    if voxels == "brain":
        if mask is None:
            raise ValueError("voxels='brain' needs a brain mask")
        keep = _bool(mask)
        s, y = s[keep], y[keep]
    elif voxels != "all":
        raise ValueError(f"voxels must be 'brain' or 'all', got {voxels!r}")
    return s.ravel(), y.ravel()


def _ranking_metric(compute, scores, labels, mask, voxels: VoxelSet) -> float:
    """``compute(scores, labels)`` on the ranked voxels; NaN when they hold no lesion (or only lesion)."""
    s, y = _ranked(scores, labels, mask, voxels)
    if y.all() or not y.any():  # also when empty
        return float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(compute(torch.as_tensor(s), torch.as_tensor(y, dtype=torch.float64)))


def average_precision(scores, labels, mask=None, *, voxels: VoxelSet = "brain") -> float:
    """AUPRC (average precision, as scikit-learn's) with MONAI ``compute_average_precision``.

    Args:
        scores: post-processed anomaly map; labels: ground truth of the same shape.
        mask: brain mask (required for ``voxels="brain"``).
        voxels: ``"brain"`` ranks the voxels inside ``mask``; ``"all"`` every voxel (authors).

    Returns:
        the AUPRC, NaN when the ranked voxels hold no lesion (or only lesion).
    """
    return _ranking_metric(compute_average_precision, scores, labels, mask, voxels)


def roc_auc(scores, labels, mask=None, *, voxels: VoxelSet = "brain") -> float:
    """AUROC with MONAI ``compute_roc_auc`` on the same voxels as :func:`average_precision`."""
    return _ranking_metric(compute_roc_auc, scores, labels, mask, voxels)


def l1_error(image, reconstruction, mask) -> float:
    """Mean ``|image - reconstruction|`` inside the brain mask (NaN for an empty mask)."""
    x = np.squeeze(np.asarray(image, dtype=np.float64))
    r = np.squeeze(np.asarray(reconstruction, dtype=np.float64))
    keep = _bool(mask)
    if not keep.any():
        return float("nan")
    return float(np.abs(x - r)[keep].mean())


def pr_histogram(scores, labels, edges: np.ndarray, mask=None) -> tuple[np.ndarray, np.ndarray]:
    """Counts of lesion and non-lesion voxels per score bin (``len(edges) + 1`` bins).

    Bin ``i`` holds scores in ``[edges[i-1], edges[i])``; the first bin everything below
    ``edges[0]``, the last everything at or above ``edges[-1]``. Summing these over volumes gives a
    pooled precision-recall curve without keeping the voxels.
    """
    s, y = _ranked(scores, labels, mask, "all" if mask is None else "brain")
    bins = np.searchsorted(edges, s, side="right")
    n = len(edges) + 1
    return np.bincount(bins[y], minlength=n), np.bincount(bins[~y], minlength=n)


def pr_curve_from_histogram(pos: np.ndarray, neg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(precision, recall)`` of thresholding at each bin edge, from the highest bin down."""
    tp = np.cumsum(np.asarray(pos, dtype=np.float64)[::-1])
    fp = np.cumsum(np.asarray(neg, dtype=np.float64)[::-1])
    total = tp[-1] if tp.size else 0.0
    predicted = tp + fp
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(predicted > 0, tp / predicted, 1.0)
        recall = tp / total if total > 0 else np.zeros_like(tp)
    return precision, recall


def volume_metrics(
    scores: np.ndarray,
    prediction: np.ndarray,
    ground_truth: np.ndarray | None,
    mask: np.ndarray,
    *,
    image: np.ndarray,
    reconstruction: np.ndarray | None,
    raw_anomaly_map: np.ndarray,
    voxels: VoxelSet = "brain",
) -> VolumeMetrics:
    """All per-volume metrics of one volume.

    Args:
        scores: the post-processed anomaly map.
        prediction: the binarised map (after the connected-component filter).
        ground_truth: the lesion mask, ``None`` for a healthy scan (all lesion metrics NaN).
        mask: the brain mask.
        image: the input on the same grid; reconstruction: the method's reconstruction or ``None``.
        raw_anomaly_map: the anomaly map before post-processing (l1 when there is no reconstruction).
        voxels: which voxels AUPRC/AUROC rank.
    """
    pred = _bool(prediction)
    if reconstruction is None:
        image, reconstruction = raw_anomaly_map, 0.0
    l1 = l1_error(image, reconstruction, mask)
    gt = np.zeros_like(pred) if ground_truth is None else _bool(ground_truth)
    n_lesion = int(gt.sum())
    nan = float("nan")
    if n_lesion == 0:
        return VolumeMetrics(nan, nan, nan, nan, l1, 0, int(pred.sum()))
    best = best_dice_threshold(scores, gt, floor=float(np.min(scores)) - 1.0).dice
    return VolumeMetrics(
        dice=dice_score(pred, gt),
        auprc=average_precision(scores, gt, mask, voxels=voxels),
        auroc=roc_auc(scores, gt, mask, voxels=voxels),
        best_dice=best,
        l1=l1,
        lesion_voxels=n_lesion,
        predicted_voxels=int(pred.sum()),
    )
