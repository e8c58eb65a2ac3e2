"""benchmarks/bench_seeds.py: runs as folds, spread over seeds, seed-averaged tests, refusal of a bad run."""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

import pytest

from pddpm_monai.evaluation.table import aggregate, significance_tests

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from bench_seeds import first_places, load_seed_runs, main  # noqa: E402


def _write_run(root: Path, dice: dict[str, list[float]]) -> Path:
    """A minimal bench_quality.py folder: results/<method>/fold0/{run.json, metrics.csv}."""
    for method, values in dice.items():
        folder = root / "results" / method / "fold0"
        folder.mkdir(parents=True)
        (folder / "run.json").write_text(json.dumps({"method": method, "fold": 0}), encoding="utf-8")
        rows = [f"v{i},brats21,{d},{d / 2},nan" for i, d in enumerate(values)] + ["h0,ixi,nan,nan,0.05"]
        (folder / "metrics.csv").write_text(
            "name,dataset,dice,auprc,l1\n" + "\n".join(rows) + "\n", encoding="utf-8"
        )
    return root


@pytest.fixture
def runs(tmp_path: Path) -> list[Path]:
    return [
        _write_run(tmp_path / "s0", {"AE": [0.6, 0.8], "DDPM": [0.5, 0.5]}),
        _write_run(tmp_path / "s1", {"AE": [0.4, 0.6], "DDPM": [0.7, 0.9]}),
        _write_run(tmp_path / "s2", {"AE": [0.5, 0.7], "DDPM": [0.6, 0.8]}),
    ]


def test_each_run_is_a_fold_and_the_table_is_the_spread_over_runs(runs: list[Path]) -> None:
    results = load_seed_runs(runs)
    assert sorted(results["fold"].unique()) == [0, 1, 2]
    table = aggregate(results)
    ae = [70.0, 50.0, 60.0]  # each run's mean Dice of AE in percent
    assert table.loc["AE", "BraTS21 DICE [%] mean"] == pytest.approx(statistics.mean(ae))
    assert table.loc["AE", "BraTS21 DICE [%] std"] == pytest.approx(statistics.stdev(ae))
    assert table.loc["DDPM", "BraTS21 AUPRC [%] mean"] == pytest.approx(statistics.mean([25.0, 40.0, 35.0]))
    assert first_places(results) == {"AE": 1, "DDPM": 2}


def test_tests_pair_the_seed_averaged_volumes(runs: list[Path]) -> None:
    tests = significance_tests(load_seed_runs(runs))
    row = tests[(tests["dataset"] == "brats21")].iloc[0]
    # seed-averaged Dice: AE v0 0.5, v1 0.7; DDPM v0 0.6, v1 0.7333
    assert (row["method_a"], row["method_b"], row["n"]) == ("AE", "DDPM", 2)
    assert row["mean_difference"] == pytest.approx(((0.5 - 0.6) + (0.7 - 0.7333333)) / 2)


def test_a_folder_without_results_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path) in err and "not found" in err and len(err.strip().splitlines()) == 1
