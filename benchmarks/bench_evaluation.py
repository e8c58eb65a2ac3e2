"""Threshold search speed and quality: exact (one sort + cumulative counts) vs the authors'
10-step interval halving vs a brute-force scan.

Run: ``python benchmarks/bench_evaluation.py [--volumes 10] [--small 20000]``

Two settings:
* small (``--small`` voxels, scores rounded to 1e-5): all three searches; the exact and
  brute-force thresholds must agree.
* pooled validation set (``--volumes`` model-grid volumes of 96x96x50, brain ~35 %, lesion ~2 %):
  exact vs interval halving (brute force would need one pass per distinct score).
"""

from __future__ import annotations

import argparse
import platform
from functools import partial

import numpy as np
from _common import timed

from pddpm_monai.evaluation.metrics import volume_metrics
from pddpm_monai.evaluation.postprocess import binarize, postprocess_anomaly_map
from pddpm_monai.evaluation.threshold import (
    ValidationPool,
    best_dice_threshold,
    brute_force_threshold,
    interval_halving_threshold,
)

GRID = (96, 96, 50)


def _scores(rng: np.random.Generator, n: int, lesion_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    labels = rng.random(n) < lesion_fraction
    scores = rng.gamma(2.0, 0.03, n) + labels * rng.gamma(2.0, 0.05, n)
    return scores.astype(np.float32), labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--volumes", type=int, default=10, help="pooled validation volumes (96x96x50)")
    parser.add_argument("--small", type=int, default=20000, help="voxels of the small setting")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    print(f"python {platform.python_version()}, numpy {np.__version__}")

    s, y = _scores(rng, args.small, 0.05)
    s = np.round(s * 1e5) / 1e5  # ties, as in real maps
    t_exact, _, exact = timed(lambda: best_dice_threshold(s, y), args.repeats)
    t_brute, _, brute = timed(lambda: brute_force_threshold(s, y), 1)
    t_halve, _, halve = timed(lambda: interval_halving_threshold(s, y), args.repeats)
    print(f"small: {args.small} voxels, {np.unique(s).size} distinct scores")
    print(f"  exact        {t_exact * 1e3:9.2f} ms  thr {exact.threshold:.4f} dice {exact.dice:.4f}")
    print(
        f"  brute force  {t_brute * 1e3:9.2f} ms  thr {brute.threshold:.4f} dice {brute.dice:.4f}  ({t_brute / t_exact:.0f}x exact)"
    )
    print(f"  halving (10) {t_halve * 1e3:9.2f} ms  thr {halve.threshold:.4f} dice {halve.dice:.4f}")
    assert exact == brute, (exact, brute)

    pool = ValidationPool()
    n = int(np.prod(GRID))
    all_scores, all_labels = [], []
    for _ in range(args.volumes):
        brain = rng.random(n) < 0.35
        v, lab = _scores(rng, n, 0.02)
        v, lab = v * brain, lab & brain
        pool.add(v, lab)
        all_scores.append(v)
        all_labels.append(lab)
    full_s, full_y = np.concatenate(all_scores), np.concatenate(all_labels)
    t_exact, _, exact = timed(pool.best, args.repeats)
    t_halve, _, halve = timed(lambda: interval_halving_threshold(full_s, full_y), args.repeats)
    print(
        f"pooled: {args.volumes} volumes, {full_s.size / 1e6:.1f} M voxels ({pool.scores().size / 1e6:.1f} M in the brain)"
    )
    print(f"  exact        {t_exact:7.3f} s  thr {exact.threshold:.5f} dice {exact.dice:.5f}")
    print(
        f"  halving (10) {t_halve:7.3f} s  thr {halve.threshold:.5f} dice {halve.dice:.5f}"
        f"  (exact/halving time {t_exact / t_halve:.2f}, Dice gap {exact.dice - halve.dice:+.5f})"
    )

    amap, seg = full_s[:n].reshape(GRID), full_y[:n].reshape(GRID)
    mask = amap > 0
    t_post, _, scores = timed(lambda: postprocess_anomaly_map(amap, mask), 1)
    t_bin, _, pred = timed(lambda: binarize(scores, exact.threshold), 1)
    metrics = partial(
        volume_metrics, scores, pred, seg, mask, image=amap, reconstruction=None, raw_anomaly_map=amap
    )
    t_metrics = timed(metrics, 1)[0]
    print(
        f"per volume {GRID}: post-process {t_post:.2f} s, binarise+CC {t_bin:.2f} s, metrics {t_metrics:.2f} s"
        f" (Dice, AUPRC, AUROC, best Dice, l1)"
    )


if __name__ == "__main__":
    main()
