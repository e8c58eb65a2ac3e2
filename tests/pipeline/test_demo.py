"""``pddpm demo --quick``: every stage runs, the report holds the table, a re-run reuses everything."""

from __future__ import annotations

import dataclasses
import json
import re

import pandas as pd
import pytest

from pddpm_monai.cli import main
from pddpm_monai.names import method_label
from pddpm_monai.pipeline.demo import STAGES, run_demo
from pddpm_monai.utils import InputError
from tests.pipeline.conftest import quick_config

QUICK = quick_config()


def _table_cell(table_md: str, method: str, column: str) -> float:
    lines = [line for line in table_md.splitlines() if line.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    for line in lines[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        if cells[0] == method:
            return float(re.match(r"[-\d.]+", cells[header.index(column)].strip("*")).group())
    raise AssertionError(f"no row {method!r} in the table")


@pytest.mark.slow
def test_quick_demo_runs_every_stage_and_reports(quick_demo):
    out = quick_demo
    stages = json.loads((out / "stages.json").read_text(encoding="utf-8"))
    assert list(stages) == list(STAGES)
    table_md = (out / "results" / "table.md").read_text(encoding="utf-8")
    methods = ["pddpm", "pddpm_blend", "Thresh"]  # pddpm_blend: the same network on the blend grid
    for method in methods:
        assert (out / "results" / method / "fold0" / "metrics.csv").is_file(), method
    # the table's BraTS21 Dice is the mean per-volume test Dice of metrics.csv (an independent reading)
    for method in methods:
        rows = pd.read_csv(out / "results" / method / "fold0" / "metrics.csv")
        expected = 100 * rows.loc[rows["dataset"] == "brats21", "dice"].mean()
        cell = _table_cell(table_md, method_label(method), "BraTS21 DICE [%]")  # rows: the paper's names
        assert cell == pytest.approx(expected, abs=0.06)
    report = (out / "report.md").read_text(encoding="utf-8")
    assert table_md.strip().splitlines()[0] in report
    assert "tensorboard --logdir" in report
    images = re.findall(r"!\[[^]]*\]\(([^)]+)\)", report)
    assert any("training_curves" in i for i in images) and any("overlay_brats21" in i for i in images)
    assert any("pddpm_blend/fold0/figures/overlay_brats21" in i for i in images)
    blend = pd.read_csv(out / "results" / "pddpm_blend" / "fold0" / "metrics.csv")
    authors = pd.read_csv(out / "results" / "pddpm" / "fold0" / "metrics.csv")
    assert not blend["dice"].equals(authors["dice"]) or not blend["l1"].equals(authors["l1"])
    assert all((out / i).is_file() for i in images), "the report links a missing image"
    assert "<table>" in (out / "report.html").read_text(encoding="utf-8")


@pytest.mark.slow
def test_rerun_reuses_every_stage_and_says_so(quick_demo, capsys):
    out = quick_demo
    code = main(["demo", "--out", str(out), "--quick"])
    captured = capsys.readouterr()
    assert code == 0
    assert captured.err.count("skipped (already finished") == len(STAGES)
    assert (out / "results" / "table.md").read_text(encoding="utf-8") in captured.out
    assert "report.md" in captured.out


@pytest.mark.slow
def test_another_configuration_in_the_same_folder_is_refused(quick_demo):
    with pytest.raises(InputError, match="another configuration .*seed"):
        run_demo(quick_demo, dataclasses.replace(QUICK, seed=1))


def test_corrupt_stage_record_is_a_one_line_error(tmp_path):
    (tmp_path / "stages.json").write_text("{truncated")
    with pytest.raises(InputError, match="stages.json: corrupt JSON") as err:
        run_demo(tmp_path, QUICK)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "data_root").exists(), "a stage ran despite the corrupt record"


def test_changing_only_unfinished_stages_is_allowed(tmp_path):
    from pddpm_monai.pipeline.demo import DemoPaths, _check_config

    paths = DemoPaths(tmp_path)
    _check_config(paths, QUICK)
    (tmp_path / "stages.json").write_text(
        json.dumps({s: {"finished": "t", "seconds": 0} for s in STAGES[:3]})
    )
    _check_config(paths, dataclasses.replace(QUICK, epochs=QUICK.epochs + 1))  # train has not finished
    assert (
        json.loads((tmp_path / "demo_config.json").read_text(encoding="utf-8"))["epochs"] == QUICK.epochs + 1
    )
    with pytest.raises(InputError, match="finished stage 'cohort' .*n_ms"):
        _check_config(paths, dataclasses.replace(QUICK, n_ms=QUICK.n_ms + 1))
