"""Aggregation over folds, permutation tests and the markdown table."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from mlxtend.evaluate import permutation_test

from pddpm_monai.evaluation.evaluate import METRIC_COLUMNS
from pddpm_monai.evaluation.figures import pick_cases, plot_ablation
from pddpm_monai.evaluation.stats import PermutationConfig, paired_permutation_test
from pddpm_monai.evaluation.table import aggregate, load_results, significance_tests, write_table
from pddpm_monai.utils import InputError

NAMES = [f"BraTS2021_{i:05d}" for i in range(12)]


def _write_run(root: Path, method: str, fold: int, dice: list[float], l1: float) -> Path:
    run = root / method / f"fold{fold}"
    run.mkdir(parents=True)
    (run / "run.json").write_text(json.dumps({"method": method, "fold": fold}))
    with (run / "metrics.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=METRIC_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for name, d in zip(NAMES, dice):
            writer.writerow({"name": name, "dataset": "brats21", "dice": d, "auprc": d / 2, "l1": np.nan})
        writer.writerow(
            {"name": "empty", "dataset": "brats21", "dice": np.nan, "auprc": np.nan, "l1": np.nan}
        )
        writer.writerow({"name": "IXI002", "dataset": "ixi", "dice": np.nan, "auprc": np.nan, "l1": l1})
    return run


@pytest.fixture()
def results(tmp_path) -> Path:
    rng = np.random.default_rng(0)
    base = rng.uniform(0.2, 0.5, len(NAMES))
    for fold in range(2):
        _write_run(tmp_path, "Good", fold, list(base + 0.3 + 0.01 * fold), 0.02 + 0.002 * fold)
        _write_run(tmp_path, "Bad", fold, list(base + rng.normal(0, 0.01, len(NAMES))), 0.03)
    alternating = 0.05 * (-1.0) ** np.arange(len(NAMES))  # as good on average, but no consistent shift
    _write_run(tmp_path, "Tie", 0, list(base + 0.303 + alternating), 0.05)
    return tmp_path


def test_aggregate_is_mean_and_std_over_fold_means(results):
    table = aggregate(load_results([results]))
    df = load_results([results / "Good"])
    fold_means = [df[(df.fold == f) & (df.dataset == "brats21")]["dice"].mean() * 100 for f in (0, 1)]
    assert table.loc["Good", "BraTS21 DICE [%] mean"] == pytest.approx(np.mean(fold_means))
    assert table.loc["Good", "BraTS21 DICE [%] std"] == pytest.approx(np.std(fold_means, ddof=1))
    assert table.loc["Good", "IXI l1 (1e-3) mean"] == pytest.approx(21.0)
    assert np.isnan(table.loc["Tie", "BraTS21 DICE [%] std"])  # one fold: no std
    assert np.isnan(table.loc["Good", "MSLUB DICE [%] mean"])


def test_permutation_test_matches_mlxtend_directly():
    rng = np.random.default_rng(1)
    x = {n: v for n, v in zip(NAMES, rng.random(12))}
    y = {n: x[n] - 0.05 + rng.normal(0, 0.05) for n in NAMES}
    y["extra"] = 0.3  # not paired: ignored
    result = paired_permutation_test(x, y, PermutationConfig(rounds=2000, seed=3))
    a, b = np.array([x[n] for n in sorted(NAMES)]), np.array([y[n] for n in sorted(NAMES)])
    expected = permutation_test(a, b, method="approximate", num_rounds=2000, seed=3, paired=True)
    assert result.p_value == pytest.approx(expected) and result.n == 12
    assert result.mean_difference == pytest.approx(np.mean(a - b))
    assert paired_permutation_test(x, x).p_value == 1.0


def test_significance_and_markdown(results):
    df = load_results([results])
    tests = significance_tests(df, PermutationConfig(rounds=2000))
    row = tests[(tests.method_a == "Bad") & (tests.method_b == "Good")].iloc[0]
    assert row.significant and row.p_value < 0.01 and row.n == 12  # the empty-GT volume is left out
    tie = tests[(tests.method_a == "Good") & (tests.method_b == "Tie")].iloc[0]
    assert not tie.significant
    written = write_table([results], results / "table", config=PermutationConfig(rounds=2000))
    text = written["table.md"].read_text(encoding="utf-8")
    lines = {
        line.split("|")[1].strip(): line
        for line in text.splitlines()
        if line.startswith("| ") and "Model" not in line
    }
    assert "**" in lines["Good"].split("|")[2] and "*" in lines["Bad"].split("|")[2].replace("**", "")
    assert " *" not in lines["Tie"].split("|")[2]
    assert "empty ground truth (NaN Dice/AUPRC, left out of the means): BraTS21 1." in text
    assert (results / "table" / "permutation_tests.csv").is_file()


def test_table_names_methods_as_the_paper_in_its_order(tmp_path):
    rng = np.random.default_rng(1)
    base = rng.uniform(0.2, 0.5, len(NAMES))
    for i, key in enumerate(("pddpm", "ddpm", "ae", "fanogan", "Thresh")):  # results folders / run.json keys
        _write_run(tmp_path, key, 0, list(base + 0.01 * i), 0.02)
    written = write_table(
        [tmp_path], tmp_path / "table", reference="ddpm", config=PermutationConfig(rounds=200)
    )
    rows = [
        line.split("|")[1].strip()
        for line in written["table.md"].read_text(encoding="utf-8").splitlines()[2:]
        if line.startswith("| ")
    ]
    assert rows == ["Thresh", "AE", "f-AnoGAN", "DDPM", "pDDPM"]
    csv_rows = [
        line.split(",")[0] for line in written["table.csv"].read_text(encoding="utf-8").splitlines()[1:]
    ]
    assert csv_rows == rows
    tests = written["permutation_tests.csv"].read_text(encoding="utf-8")
    assert "pDDPM" in tests and "pddpm" not in tests


def test_missing_results_folder_is_one_line_error(tmp_path):
    with pytest.raises(InputError, match="no evaluation results"):
        load_results([tmp_path])
    with pytest.raises(InputError, match="not found"):
        load_results([tmp_path / "nope"])


def test_pick_cases_and_ablation_plot(tmp_path):
    records = [{"dice": d} for d in (0.2, float("nan"), 0.9, 0.5)]
    cases = pick_cases(records, "dice")
    assert (cases["best"]["dice"], cases["median"]["dice"], cases["worst"]["dice"]) == (0.9, 0.5, 0.2)
    out = plot_ablation(
        [32, 48, 60], {"BraTS21": [[0.3, 0.32], [0.35, 0.36], [0.37, 0.33]]}, tmp_path / "abl.png"
    )
    assert out.stat().st_size > 1000
