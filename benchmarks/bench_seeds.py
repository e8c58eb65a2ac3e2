"""Spread of ``bench_quality.py`` over training seeds: how far an ordering moves for no method reason.

Reads several ``bench_quality.py`` output folders that scored the same cohort with different
``--train-seed`` values and treats each run as one "fold" of ``pddpm table``'s code
(:mod:`pddpm_monai.evaluation.table`): the table is the mean ± sample std over the runs of each
method's volume means, and the paired permutation tests pair every two methods on the
seed-averaged per-volume Dice (the paper's test). It also counts how often each method ranks
first on BraTS21-like Dice.

Usage::

    python benchmarks/bench_seeds.py OUT_SEED0 OUT_SEED1 OUT_SEED2
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from pddpm_monai.evaluation.table import aggregate, format_markdown, load_results, significance_tests
from pddpm_monai.utils import InputError


def load_seed_runs(runs: Sequence[Path]) -> pd.DataFrame:
    """Per-volume rows of every run's ``results`` folder; column ``fold`` is the run's index."""
    frames = []
    for index, run in enumerate(runs):
        frame = load_results([run / "results"])
        frame["fold"] = index
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def first_places(results: pd.DataFrame, dataset: str = "brats21", metric: str = "dice") -> dict[str, int]:
    """How many runs each method has the highest mean ``metric`` on ``dataset``."""
    means = results[results["dataset"] == dataset].groupby(["fold", "method"])[metric].mean().unstack()
    counts = means.idxmax(axis=1).value_counts()
    return {m: int(counts.get(m, 0)) for m in means.columns}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="bench_quality.py output folders")
    args = parser.parse_args(argv)
    try:
        results = load_seed_runs(args.runs)
    except InputError as error:  # one line naming the folder and the problem, exit 2
        print(f"bench_seeds: {error}", file=sys.stderr)
        return 2
    print(f"{len(args.runs)} runs (one per training seed): " + ", ".join(map(str, args.runs)))
    print(format_markdown(aggregate(results), tests := significance_tests(results)))
    print("First on BraTS21 Dice: " + ", ".join(f"{m} {n}" for m, n in first_places(results).items()))
    print("\nPaired permutation tests on seed-averaged per-volume Dice:")
    print(tests.to_string(index=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
