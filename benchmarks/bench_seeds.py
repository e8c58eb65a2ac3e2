"""Spread of ``bench_quality.py`` over training seeds: how far an ordering moves for no method reason.

Reads several ``bench_quality.py`` output folders that scored the same cohort with different
``--train-seed`` values, and prints, per method, the mean +- sample std over the runs of each
column of ``table.csv`` and how often each method ranks first on BraTS21-like Dice. Then it pairs
every two methods on the seed-averaged per-volume Dice (each volume's Dice averaged over the runs,
then :func:`~pddpm_monai.evaluation.stats.paired_permutation_test` over the volumes, the paper's
test).

Usage::

    python benchmarks/bench_seeds.py OUT_SEED0 OUT_SEED1 OUT_SEED2 [--dataset brats21]
"""

from __future__ import annotations

import argparse
import csv
import itertools
import sys
from pathlib import Path

import numpy as np

from pddpm_monai.evaluation.stats import paired_permutation_test

COLUMNS = ("BraTS21 DICE [%]", "BraTS21 AUPRC [%]", "MSLUB DICE [%]", "IXI l1 (1e-3)")


def read_table(run: Path) -> dict[str, dict[str, float]]:
    """``method -> column -> mean`` of one run's ``table.csv``."""
    with open(run / "table.csv", encoding="utf-8", newline="") as f:
        return {row["method"]: {c: float(row[f"{c} mean"]) for c in COLUMNS} for row in csv.DictReader(f)}


def read_dice(run: Path, method: str, dataset: str) -> dict[str, float]:
    """``volume -> Dice`` of ``method`` on ``dataset`` (fold 0's ``metrics.csv``)."""
    with open(run / "results" / method / "fold0" / "metrics.csv", encoding="utf-8", newline="") as f:
        return {r["name"]: float(r["dice"]) for r in csv.DictReader(f) if r["dataset"] == dataset}


def spread(tables: list[dict[str, dict[str, float]]]) -> dict[str, dict[str, tuple[float, float]]]:
    """``method -> column -> (mean, sample std)`` over the runs; methods that every run scored."""
    methods = [m for m in tables[0] if all(m in t for t in tables)]
    out = {}
    for m in methods:
        values = {c: np.array([t[m][c] for t in tables]) for c in COLUMNS}
        out[m] = {
            c: (float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0) for c, v in values.items()
        }
    return out


def seed_averaged(runs: list[Path], method: str, dataset: str) -> dict[str, float]:
    """Each volume's Dice averaged over the runs (volumes every run scored)."""
    per_run = [read_dice(r, method, dataset) for r in runs]
    names = set.intersection(*(set(d) for d in per_run))
    return {n: float(np.mean([d[n] for d in per_run])) for n in names}


def wins(tables: list[dict[str, dict[str, float]]], methods: list[str], column: str) -> dict[str, int]:
    """How many runs each method is first in ``column`` (higher is better)."""
    counts = dict.fromkeys(methods, 0)
    for t in tables:
        counts[max(methods, key=lambda m: t[m][column])] += 1
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="bench_quality.py output folders")
    parser.add_argument("--dataset", default="brats21", help="dataset of the paired Dice tests")
    args = parser.parse_args(argv)
    missing = [str(r) for r in args.runs if not (r / "table.csv").is_file()]
    if missing:
        print(
            f"bench_seeds: {missing[0]}: no table.csv (not a finished bench_quality.py run)", file=sys.stderr
        )
        return 2
    tables = [read_table(r) for r in args.runs]
    stats = spread(tables)
    methods = list(stats)
    print(f"{len(args.runs)} runs: " + ", ".join(str(r) for r in args.runs))
    print("| Model | " + " | ".join(COLUMNS) + " | first on Dice |")
    print("|---" * (len(COLUMNS) + 2) + "|")
    first = wins(tables, methods, COLUMNS[0])
    for m in methods:
        cells = " | ".join(f"{mu:.2f} +- {sd:.2f}" for mu, sd in stats[m].values())
        print(f"| {m} | {cells} | {first[m]} of {len(tables)} |")
    print(f"\nPaired permutation tests on seed-averaged per-volume {args.dataset} Dice:")
    averaged = {m: seed_averaged(args.runs, m, args.dataset) for m in methods}
    for a, b in itertools.combinations(methods, 2):
        test = paired_permutation_test(averaged[a], averaged[b])
        print(f"  {a} - {b}: {100 * test.mean_difference:+.2f} Dice, p = {test.p_value:.3f} (n = {test.n})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
