"""Aggregate evaluation runs into a Table-1-style table with permutation tests (``pddpm table``).

Each run folder (``<method>/fold<k>/`` from :func:`~pddpm_monai.evaluation.evaluate.evaluate_method`)
holds a per-volume ``metrics.csv``. Per (method, fold, dataset) the volumes are averaged with
``nanmean`` (volumes with empty ground truth are NaN and left out); then mean ± std over the folds
(sample std, ``ddof=1``; a method with one fold, such as Thresh, shows the mean only).
Dice and AUPRC are in percent, l1 in units of 1e-3, as in the paper. Rows name the methods as the
paper does (``pDDPM``, ``DDPM``, ``AE``, ...: :func:`~pddpm_monai.names.method_label`), in the order
of its Table 1, whatever the results folders are called.

Significance: for every dataset, each method's per-volume Dice (mean over folds) is compared with
the reference method's (default: the best mean Dice in that dataset) by a paired permutation test;
a ``*`` marks Dice cells that differ significantly from the reference (alpha 0.05). All pairwise
tests are written to ``permutation_tests.csv``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pddpm_monai.data.adapters import DATASETS
from pddpm_monai.evaluation.metrics import pr_curve_from_histogram
from pddpm_monai.evaluation.stats import PermutationConfig, paired_permutation_test
from pddpm_monai.names import method_label, method_order
from pddpm_monai.utils import InputError, atomic_path

__all__ = [
    "TableColumn",
    "TABLE_COLUMNS",
    "find_runs",
    "load_results",
    "aggregate",
    "significance_tests",
    "format_markdown",
    "nan_volumes",
    "write_table",
]


@dataclass(frozen=True)
class TableColumn:
    """One column of the table: dataset key, metric column, header, scale, and whether higher is better."""

    dataset: str
    metric: str
    header: str
    scale: float
    higher_is_better: bool = True


#: columns of ``permutation_tests.csv``
TEST_COLUMNS = ("dataset", "method_a", "method_b", "n", "mean_difference", "p_value", "significant")

#: the columns of the paper's Table 1
TABLE_COLUMNS: tuple[TableColumn, ...] = (
    TableColumn("brats21", "dice", "BraTS21 DICE [%]", 100.0),
    TableColumn("brats21", "auprc", "BraTS21 AUPRC [%]", 100.0),
    TableColumn("mslub", "dice", "MSLUB DICE [%]", 100.0),
    TableColumn("mslub", "auprc", "MSLUB AUPRC [%]", 100.0),
    TableColumn("ixi", "l1", "IXI l1 (1e-3)", 1000.0, higher_is_better=False),
)


def find_runs(paths: Sequence[str | os.PathLike]) -> list[Path]:
    """Run folders (with ``run.json`` and ``metrics.csv``) at or below each path."""
    runs: list[Path] = []
    for p in map(Path, paths):
        if not p.exists():
            raise InputError(p, "results folder not found")
        found = sorted(r.parent for r in p.rglob("run.json") if (r.parent / "metrics.csv").is_file())
        if (p / "run.json").is_file() and (p / "metrics.csv").is_file():
            found = [p]
        if not found:
            raise InputError(p, "no evaluation results (run.json + metrics.csv) found below it")
        runs.extend(r for r in found if r not in runs)
    return runs


def load_results(paths: Sequence[str | os.PathLike]) -> pd.DataFrame:
    """All per-volume rows of the runs below ``paths``, with ``method`` (the paper's name) and ``fold`` columns."""
    frames = []
    for run in find_runs(paths):
        try:
            meta = json.loads((run / "run.json").read_text(encoding="utf-8"))
            frame = pd.read_csv(run / "metrics.csv")
        except (OSError, ValueError) as err:
            raise InputError(run, f"unreadable evaluation results ({err})") from None
        missing = {"name", "dataset", "dice", "auprc", "l1"} - set(frame.columns)
        if missing:
            raise InputError(run / "metrics.csv", f"lacks column(s) {sorted(missing)}")
        frame["method"], frame["fold"] = method_label(str(meta["method"])), int(meta["fold"])
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def aggregate(results: pd.DataFrame, columns: Sequence[TableColumn] = TABLE_COLUMNS) -> pd.DataFrame:
    """Mean and std over folds of the per-fold volume means, scaled; one row per method.

    Returns:
        columns ``<header> mean``, ``<header> std`` and ``<header> folds`` per table column.
    """
    per_fold = results.groupby(["method", "fold", "dataset"])[["dice", "auprc", "l1"]].mean()  # skips NaN
    rows = {}
    for method in sorted(results["method"].unique(), key=method_order):
        row = {}
        for col in columns:
            try:
                values = per_fold.xs((method, col.dataset), level=("method", "dataset"))[col.metric].dropna()
            except KeyError:
                values = pd.Series(dtype=float)
            values = values * col.scale
            row[f"{col.header} mean"] = values.mean() if len(values) else np.nan
            row[f"{col.header} std"] = values.std(ddof=1) if len(values) > 1 else np.nan
            row[f"{col.header} folds"] = len(values)
        rows[method] = row
    return pd.DataFrame.from_dict(rows, orient="index")


def _volume_dice(results: pd.DataFrame, method: str, dataset: str) -> dict[str, float]:
    sub = results[(results["method"] == method) & (results["dataset"] == dataset)]
    return sub.groupby("name")["dice"].mean().to_dict()


def significance_tests(
    results: pd.DataFrame, config: PermutationConfig = PermutationConfig()
) -> pd.DataFrame:
    """Paired permutation tests on per-volume Dice for every pair of methods and unhealthy dataset."""
    rows = []
    methods = sorted(results["method"].unique(), key=method_order)
    for dataset in sorted(results["dataset"].unique()):
        if dataset in DATASETS and not DATASETS[dataset].unhealthy:
            continue
        for i, a in enumerate(methods):
            for b in methods[i + 1 :]:
                test = paired_permutation_test(
                    _volume_dice(results, a, dataset), _volume_dice(results, b, dataset), config
                )
                rows.append((dataset, a, b, test.n, test.mean_difference, test.p_value, test.significant))
    return pd.DataFrame(rows, columns=list(TEST_COLUMNS))


def _significant(tests: pd.DataFrame, dataset: str, a: str, b: str) -> bool:
    """Whether the test of methods ``a`` and ``b`` (``a != b``, either order) on ``dataset`` is significant."""
    pair = (tests["dataset"] == dataset) & tests["method_a"].isin([a, b]) & tests["method_b"].isin([a, b])
    return bool(tests.loc[pair, "significant"].any())


def format_markdown(
    table: pd.DataFrame,
    tests: pd.DataFrame,
    *,
    reference: str | None = None,
    columns: Sequence[TableColumn] = TABLE_COLUMNS,
    digits: int = 2,
    nan_volumes: dict[str, int] | None = None,
) -> str:
    """Markdown of :func:`aggregate`'s table: best value per column in bold, ``*`` = Dice differs
    significantly (permutation test) from ``reference`` (default: the best Dice of that dataset)."""
    header = "| Model | " + " | ".join(c.header for c in columns) + " |"
    lines = [header, "|" + "---|" * (len(columns) + 1)]
    best: dict[str, str | None] = {}
    for c in columns:
        means = table[f"{c.header} mean"].dropna()
        best[c.header] = None if means.empty else (means.idxmax() if c.higher_is_better else means.idxmin())
    for method in table.index:
        cells = []
        for c in columns:
            mean, std = table.loc[method, f"{c.header} mean"], table.loc[method, f"{c.header} std"]
            if not np.isfinite(mean):
                cells.append("–")
                continue
            text = f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if np.isfinite(std) else "")
            if best[c.header] == method:
                text = f"**{text}**"
            ref = reference or best[c.header]
            if c.metric == "dice" and ref and ref != method and _significant(tests, c.dataset, method, ref):
                text += " *"
            cells.append(text)
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    lines.append("")
    ref_text = f"`{reference}`" if reference else "the best method of that dataset"
    lines.append(
        f"Mean ± std over folds. `*`: Dice differs from {ref_text} (paired permutation test on per-volume Dice, p < 0.05)."
    )
    if nan_volumes:
        counts = ", ".join(
            f"{DATASETS[k].title if k in DATASETS else k} {n}" for k, n in sorted(nan_volumes.items())
        )
        lines.append(f"Volumes with empty ground truth (NaN Dice/AUPRC, left out of the means): {counts}.")
    return "\n".join(lines) + "\n"


def nan_volumes(results: pd.DataFrame) -> dict[str, int]:
    """Per unhealthy dataset: how many distinct volumes have NaN Dice (empty ground truth)."""
    unhealthy = [d for d in results["dataset"].unique() if d not in DATASETS or DATASETS[d].unhealthy]
    sub = results[results["dataset"].isin(unhealthy) & results["dice"].isna()]
    return {d: int(sub[sub["dataset"] == d]["name"].nunique()) for d in unhealthy}


def _pr_figures(runs: list[Path], out_dir: Path) -> list[Path]:
    from pddpm_monai.evaluation.figures import plot_pr_curves

    written = []
    for key, spec in DATASETS.items():
        curves = {}
        for run in runs:
            pr = run / f"pr_{key}.npz"
            if not pr.is_file():
                continue
            meta = json.loads((run / "run.json").read_text(encoding="utf-8"))
            label = f"{method_label(meta['method'])} (fold {meta['fold']})"
            data = np.load(pr)
            curves[label] = pr_curve_from_histogram(data["pos"], data["neg"])
        if curves:
            written.append(plot_pr_curves(curves, out_dir / f"pr_{key}.png", title=spec.title))
    return written


def write_table(
    paths: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    *,
    reference: str | None = None,
    config: PermutationConfig = PermutationConfig(),
    figures: bool = True,
) -> dict[str, Path]:
    """Aggregate the runs below ``paths``; write ``table.md``, ``table.csv``, ``permutation_tests.csv``.

    Args:
        paths: results folders (an ``evaluate --out`` folder, a method folder or a run folder).
        out_dir: where the table goes.
        reference: method the ``*`` marks compare with (default: the best Dice per dataset).
        config: permutation-test settings.
        figures: also draw PR curves of all runs per dataset.

    Returns:
        ``name -> path`` of the written files.
    """
    out_dir = Path(out_dir)
    results = load_results(paths)
    reference = None if reference is None else method_label(reference)
    if reference is not None and reference not in set(results["method"]):
        raise InputError(
            "--reference", f"method {reference!r} is not among {sorted(results['method'].unique())}"
        )
    table = aggregate(results)
    tests = significance_tests(results, config)
    written = {}
    for name, text in (
        ("table.md", format_markdown(table, tests, reference=reference, nan_volumes=nan_volumes(results))),
        ("table.csv", table.to_csv(index_label="method")),
        ("permutation_tests.csv", tests.to_csv(index=False)),
    ):
        with atomic_path(out_dir / name) as tmp:
            tmp.write_text(text, encoding="utf-8")
        written[name] = out_dir / name
    if figures:
        for path in _pr_figures(find_runs(paths), out_dir / "figures"):
            written[path.name] = path
    return written
