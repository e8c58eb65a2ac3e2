"""The binarisation threshold that maximises Dice over the pooled voxels of a validation set.

The authors search it greedily (Zimmerer's 10-step interval halving over ``[0, max]``, each step
re-thresholding every pooled voxel twice). :func:`best_dice_threshold` computes the exact optimum
instead: the scores are sorted once, and the Dice of *every* distinct threshold follows from
cumulative counts, ``Dice(t) = 2 TP(t) / (P(t) + G)``. A voxel is predicted anomalous when its score
is strictly above the threshold (as the authors' ``x > t``), so the candidates are the distinct
scores; among equally good thresholds the smallest is returned (what an ascending brute-force scan
keeping strict improvements returns). :func:`interval_halving_threshold` re-implements the
authors' search and :func:`brute_force_threshold` the definition, for tests and benchmarks.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pddpm_monai.utils import InputError

__all__ = [
    "ThresholdResult",
    "dice_curve",
    "best_dice_threshold",
    "brute_force_threshold",
    "interval_halving_threshold",
    "fpr_threshold",
    "ValidationPool",
    "read_threshold_file",
]


@dataclass(frozen=True)
class ThresholdResult:
    """A threshold and the pooled Dice it reaches (prediction = ``score > threshold``)."""

    threshold: float
    dice: float


def _flat(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores).ravel()
    y = np.asarray(labels).ravel() > 0
    if s.shape != y.shape:
        raise ValueError(f"scores ({s.size}) and labels ({y.size}) differ in size")
    return s, y


def dice_curve(
    scores: np.ndarray,
    labels: np.ndarray,
    *,
    extra_positives: int = 0,
    floor: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Pooled Dice of ``scores > t`` for every candidate threshold ``t``, from one sort.

    Args:
        scores: anomaly scores (any shape, flattened).
        labels: ground truth of the same size (nonzero = lesion).
        extra_positives: lesion voxels not passed in ``scores`` because their score is at or below
            ``floor`` (they are never predicted, but count in the ground-truth total ``G``).
        floor: an extra candidate below every score (e.g. ``0.0`` when only positive scores were
            kept); ``scores > floor`` then predicts every voxel passed in.

    Returns:
        ``(thresholds, dice)`` with thresholds in descending order.

    Raises:
        ValueError: when there is no lesion voxel at all (Dice undefined everywhere).
    """
    s, y = _flat(scores, labels)
    order = np.argsort(s)[::-1]  # descending; ties are grouped below, so the sort need not be stable
    s, y = s[order], y[order]
    tp = np.cumsum(y, dtype=np.int64)
    n_true = int(tp[-1]) if tp.size else 0
    g = n_true + int(extra_positives)
    if g == 0:
        raise ValueError("no lesion voxels: the Dice threshold is undefined")
    group_end = np.flatnonzero(np.r_[s[1:] != s[:-1], True]) if s.size else np.zeros(0, np.int64)
    # threshold = the next lower distinct score predicts everything down to this group's end;
    # the highest distinct score predicts nothing
    thresholds = s[group_end].astype(np.float64)
    predicted = np.r_[0, group_end[:-1] + 1]
    true_pos = np.r_[0, tp[group_end[:-1]]]
    if floor is not None and (not s.size or floor < s[-1]):
        thresholds = np.r_[thresholds, floor]
        predicted = np.r_[predicted, s.size]
        true_pos = np.r_[true_pos, n_true]
    return thresholds, 2.0 * true_pos.astype(np.float64) / (predicted.astype(np.float64) + g)


def best_dice_threshold(
    scores: np.ndarray,
    labels: np.ndarray,
    *,
    extra_positives: int = 0,
    floor: float | None = None,
) -> ThresholdResult:
    """The exact threshold maximising pooled Dice (see :func:`dice_curve` for the arguments).

    Ties go to the smallest threshold.
    """
    thresholds, dice = dice_curve(scores, labels, extra_positives=extra_positives, floor=floor)
    best = int(np.flatnonzero(dice == dice.max())[-1])
    return ThresholdResult(float(thresholds[best]), float(dice[best]))


def _dice_at(s: np.ndarray, y: np.ndarray, t: float, g: int) -> float:
    pred = s > t
    return 2.0 * float(np.count_nonzero(pred & y)) / (float(np.count_nonzero(pred)) + g)


def brute_force_threshold(
    scores: np.ndarray, labels: np.ndarray, *, floor: float | None = None
) -> ThresholdResult:
    """Reference search: re-threshold for every distinct score (ascending), keep strict improvements."""
    s, y = _flat(scores, labels)
    g = int(np.count_nonzero(y))
    if g == 0:
        raise ValueError("no lesion voxels: the Dice threshold is undefined")
    candidates = np.unique(s)
    if floor is not None and (not s.size or floor < candidates[0]):
        candidates = np.r_[floor, candidates]
    best = ThresholdResult(float("nan"), -1.0)
    for t in candidates:
        d = _dice_at(s, y, float(t), g)
        if d > best.dice:
            best = ThresholdResult(float(t), d)
    return best


def interval_halving_threshold(
    scores: np.ndarray,
    labels: np.ndarray,
    *,
    steps: int = 10,
    low: float = 0.0,
    high: float | None = None,
) -> ThresholdResult:
    """The authors' greedy search (after Zimmerer et al.): an approximation, for comparison only.

    Each step evaluates Dice at the first and third quarter of ``[low, high]`` and keeps the half
    whose quarter point scored better (ties to the lower half), remembering the best point seen.

    Args:
        scores: anomaly scores; labels: ground truth.
        steps: halving steps (authors: 10).
        low: start of the interval (authors: 0).
        high: end of the interval (authors: the maximum score).
    """
    s, y = _flat(scores, labels)
    g = int(np.count_nonzero(y))
    high = float(s.max()) if high is None else high
    best = ThresholdResult(0.0, 0.0)
    for _ in range(steps):
        if low == high:
            high = 1.0
        q_low, q_high = low + 0.25 * (high - low), low + 0.75 * (high - low)
        d_low, d_high = _dice_at(s, y, q_low, g), _dice_at(s, y, q_high, g)
        mid = low + 0.5 * (high - low)
        if d_low >= d_high:
            candidate, high = ThresholdResult(q_low, d_low), mid
        else:
            candidate, low = ThresholdResult(q_high, d_high), mid
        if candidate.dice >= best.dice:
            best = candidate
    return best


def fpr_threshold(healthy_scores: np.ndarray, fpr: float) -> float:
    """The smallest threshold at which at most a fraction ``fpr`` of healthy voxels score above it.

    The authors also log such thresholds (1, 5, 10 %) from healthy validation scans; they are extra
    operating points, never a replacement for the Dice-optimal validation threshold.

    Args:
        healthy_scores: post-processed scores of healthy voxels.
        fpr: the allowed false-positive rate in [0, 1).
    """
    s = np.sort(np.asarray(healthy_scores, dtype=np.float64).ravel())[::-1]
    if not s.size or not 0.0 <= fpr < 1.0:
        raise ValueError(f"need healthy scores and 0 <= fpr < 1, got {s.size} scores and fpr={fpr}")
    return float(s[int(np.floor(fpr * s.size))])


class ValidationPool:
    """Pools post-processed validation maps to search one threshold over all their voxels.

    Only voxels scoring above ``floor`` (0: masked-out voxels score exactly 0) are stored; lesion
    voxels at or below it are counted, so that the Dice of every threshold >= ``floor`` is exact
    while memory stays proportional to the brain volume.

    Args:
        floor: scores at or below it are never predicted anomalous.
    """

    def __init__(self, floor: float = 0.0):
        self.floor = floor
        self._scores: list[np.ndarray] = []
        self._labels: list[np.ndarray] = []
        self.extra_positives = 0
        self.n_volumes = 0

    def add(self, anomaly_map: np.ndarray, seg: np.ndarray) -> None:
        """Add one volume's post-processed map and ground truth (same shape)."""
        s, y = _flat(anomaly_map, seg)
        keep = s > self.floor
        self._scores.append(s[keep].astype(np.float32))
        self._labels.append(y[keep])
        self.extra_positives += int(np.count_nonzero(y & ~keep))
        self.n_volumes += 1

    def scores(self) -> np.ndarray:
        """All stored scores (above ``floor``)."""
        return np.concatenate(self._scores) if self._scores else np.zeros(0, np.float32)

    def best(self) -> ThresholdResult:
        """The exact pooled-Dice threshold (>= ``floor``)."""
        labels = np.concatenate(self._labels) if self._labels else np.zeros(0, bool)
        return best_dice_threshold(
            self.scores(), labels, extra_positives=self.extra_positives, floor=self.floor
        )

    def bin_edges(self, n_bins: int = 512) -> np.ndarray:
        """Quantile bin edges of the pooled scores (shared by the test volumes' PR histograms)."""
        s = self.scores()
        if not s.size:
            return np.array([self.floor, self.floor + 1.0])
        edges = np.unique(np.quantile(s, np.linspace(0.0, 1.0, n_bins + 1)))
        return np.r_[self.floor, edges] if edges[0] > self.floor else edges


def read_threshold_file(path: str | os.PathLike, dataset: str = "brats21") -> float:
    """The threshold of ``dataset`` in a thresholds file: the one reader of ``pddpm detect`` and the bundle.

    Accepts what ``pddpm evaluate`` writes (``thresholds.json``: ``{dataset: {"threshold": t, ...}}``),
    what the bundle's ``run evaluating`` writes (``models/threshold.json``, same form), a bare
    ``{"threshold": t}`` and ``{dataset: t}``; a file with a single dataset serves any ``dataset``.

    Raises:
        InputError: naming ``path`` when it is unreadable or has no threshold for ``dataset``.
    """
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise InputError(path, f"not a readable thresholds JSON ({err})") from None
    if isinstance(data, dict) and isinstance(data.get("threshold"), int | float):
        return float(data["threshold"])
    if not isinstance(data, dict) or not data:
        raise InputError(path, "expected {dataset: {threshold: ...}} as written by `pddpm evaluate`")
    entry = data.get(dataset)
    if entry is None and len(data) == 1:
        entry = next(iter(data.values()))
    value = entry.get("threshold") if isinstance(entry, dict) else entry
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InputError(path, f"no threshold for dataset {dataset!r} (has: {', '.join(sorted(data))})")
    return float(value)
