"""benchmarks/bench_seeds.py: spread over runs, seed-averaged Dice, first places, refusal of a bad run."""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from bench_seeds import COLUMNS, main, read_table, seed_averaged, spread, wins  # noqa: E402

METHODS = ("AE", "pDDPM")


def _write_run(root: Path, dice: dict[str, list[float]]) -> Path:
    """A minimal bench_quality.py folder: table.csv (means) and fold-0 metrics.csv per method."""
    header = ["method"] + [f"{c} {k}" for c in COLUMNS for k in ("mean", "std", "folds")]
    rows = [",".join(header)]
    for m, values in dice.items():
        mean = 100 * sum(values) / len(values)
        rows.append(",".join([m] + [f"{mean + i},,1" for i in range(len(COLUMNS))]))
        folder = root / "results" / m / "fold0"
        folder.mkdir(parents=True)
        lines = ["name,dataset,dice"] + [f"v{i},brats21,{d}" for i, d in enumerate(values)] + ["h0,ixi,nan"]
        (folder / "metrics.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (root / "table.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return root


@pytest.fixture
def runs(tmp_path: Path) -> list[Path]:
    return [
        _write_run(tmp_path / "s0", {"AE": [0.6, 0.8], "pDDPM": [0.5, 0.5]}),
        _write_run(tmp_path / "s1", {"AE": [0.4, 0.6], "pDDPM": [0.7, 0.9]}),
        _write_run(tmp_path / "s2", {"AE": [0.5, 0.7], "pDDPM": [0.6, 0.8]}),
    ]


def test_spread_is_mean_and_sample_std_over_runs(runs: list[Path]) -> None:
    stats = spread([read_table(r) for r in runs])
    ae = [70.0, 50.0, 60.0]  # the runs' mean Dice of AE in percent
    mean, std = stats["AE"][COLUMNS[0]]
    assert mean == pytest.approx(statistics.mean(ae))
    assert std == pytest.approx(statistics.stdev(ae))
    assert stats["pDDPM"][COLUMNS[1]][0] == pytest.approx(statistics.mean([51.0, 81.0, 71.0]))


def test_seed_averaged_dice_per_volume_and_first_places(runs: list[Path]) -> None:
    averaged = seed_averaged(runs, "pDDPM", "brats21")
    assert averaged == pytest.approx({"v0": 0.6, "v1": 0.7333333})
    assert wins([read_table(r) for r in runs], list(METHODS), COLUMNS[0]) == {"AE": 1, "pDDPM": 2}


def test_a_folder_without_table_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(tmp_path)]) == 2
    assert "no table.csv" in capsys.readouterr().err
