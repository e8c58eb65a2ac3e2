"""``pddpm ablate``: the Fig. 3 sweeps of one pDDPM, their table and figures, and the ensemble."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch

from pddpm_monai.cli import main
from pddpm_monai.data.adapters import DATASETS
from pddpm_monai.evaluation.ablation import (
    AblationConfig,
    EnsembleScorer,
    Setting,
    ablation_settings,
    compare_ensemble,
    parse_setting,
    run_ablation,
    write_ablation_figures,
)
from pddpm_monai.evaluation.evaluate import EvaluationConfig
from pddpm_monai.methods import build_method
from pddpm_monai.methods.checkpoint import save_method_checkpoint
from pddpm_monai.utils import InputError
from tests.engines.toys import randomize, tiny

PNG_MAGIC = b"\x89PNG"


def test_sweeps_go_through_the_checkpoint_setting():
    got = ablation_settings(Setting(48, 500), [32, 48], [100, 500])
    assert got == [
        ("patch_size", Setting(32, 500)),
        ("patch_size", Setting(48, 500)),
        ("t_test", Setting(48, 100)),
        ("t_test", Setting(48, 500)),
    ]
    assert Setting(60, 400).name == "pddpm_p60_t400"
    assert parse_setting("60:400") == Setting(60, 400)
    with pytest.raises(InputError, match="PATCH:T_TEST"):
        parse_setting("60-400")


class _Constant:
    def __init__(self, value: float, recon: bool = True):
        self.value, self.recon, self.name = value, recon, f"c{value}"

    def __call__(self, image, mask):
        anomaly = torch.full_like(image, self.value) * (mask > 0)
        return (image * self.value if self.recon else None), anomaly


def test_ensemble_averages_the_members_maps_and_reconstructions():
    image = torch.rand(1, 8, 8, 4)
    mask = (torch.rand(1, 8, 8, 4) > 0.3).float()
    recon, anomaly = EnsembleScorer([_Constant(0.2), _Constant(0.6), _Constant(1.0)])(image, mask)
    torch.testing.assert_close(anomaly, torch.full_like(image, 0.6) * (mask > 0))
    torch.testing.assert_close(recon, image * 0.6)
    # a member without reconstruction: the ensemble has none either, the map is still the mean
    recon, anomaly = EnsembleScorer([_Constant(0.2), _Constant(0.4, recon=False)])(image, mask)
    assert recon is None
    torch.testing.assert_close(anomaly, torch.full_like(image, 0.3) * (mask > 0))


def _rows(setting: str, sweep: str, patch: int | None, t_test: int | None, dice: list[float]):
    return [
        {
            "sweep": sweep,
            "setting": setting,
            "patch_size": patch,
            "t_test": t_test,
            "fold": f,
            "dataset": "brats21",
            "dice": d,
            "auprc": d,
        }
        for f, d in enumerate(dice)
    ]


def test_ensemble_comparison_and_figures_over_folds(tmp_path):
    rows = (
        _rows("pddpm_p32_t500", "patch_size", 32, 500, [0.30, 0.34])
        + _rows("pddpm_p48_t500", "patch_size", 48, 500, [0.40, 0.44])
        + _rows("pddpm_p48_t400", "t_test", 48, 400, [0.41, 0.45])
        + _rows("pddpm_p48_t500", "t_test", 48, 500, [0.40, 0.44])
        + _rows("ensemble", "ensemble", None, None, [0.42, 0.46])
    )
    comparison = compare_ensemble(rows)["brats21"]
    assert comparison["best_setting"] == "pddpm_p48_t400"
    assert comparison["best_single"] == pytest.approx(0.43)
    assert comparison["ensemble"] == pytest.approx(0.44) and comparison["ensemble_beats_best"]
    worse = [r if r["setting"] != "ensemble" else {**r, "dice": r["dice"] - 0.1} for r in rows]
    assert not compare_ensemble(worse)["brats21"]["ensemble_beats_best"]
    paths = write_ablation_figures(rows, tmp_path)
    assert sorted(p.name for p in paths) == ["dice_vs_patch_size_brats21.png", "dice_vs_t_test_brats21.png"]
    assert all(p.read_bytes()[:4] == PNG_MAGIC for p in paths)


#: a tiny pDDPM UNet for 96x96 slices (no attention: its 48x48 middle would dominate the run time)
NET_96 = {
    "model_channels": 8,
    "channel_mult": [1, 2],
    "num_res_blocks": 1,
    "num_groups": 4,
    "mid_attention": False,
}
#: Gaussian noise keeps the test fast (simplex noise, the default, is tested in the diffusion package)
GAUSSIAN = {"noise_type": "gaussian"}


@pytest.fixture
def pddpm_checkpoint(tmp_path):
    torch.manual_seed(0)
    method = randomize(
        build_method("pddpm", {"network": NET_96, "patch_size": 48, "t_test": 500, "diffusion": GAUSSIAN}),
        seed=3,
    )
    return save_method_checkpoint(tmp_path / "fold0.pt", method)


@pytest.mark.slow
def test_ablation_evaluates_each_setting_and_the_ensemble(tiny_root, pddpm_checkpoint, tmp_path):
    evaluation = EvaluationConfig(
        datasets=("mslub",), save_nifti=False, figures=False, progress=False, smooth=False
    )
    config = AblationConfig(
        patch_sizes=(96,),
        t_tests=(250,),
        ensemble=(Setting(96, 500), Setting(48, 250)),
        evaluation=evaluation,
    )
    out = tmp_path / "ablation"
    csv_path = run_ablation([pddpm_checkpoint], tiny_root, out, config)
    with csv_path.open() as f:
        rows = list(csv.DictReader(f))
    assert [(r["sweep"], r["setting"]) for r in rows] == [
        ("patch_size", "pddpm_p96_t500"),
        ("t_test", "pddpm_p48_t250"),
        ("ensemble", "ensemble"),
    ]
    for row in rows:  # each row is the summary of its own evaluation run
        run = out / "runs" / row["setting"] / "fold0"
        summary = json.loads((run / "summary.json").read_text(encoding="utf-8"))["mslub"]
        assert float(row["dice"]) == pytest.approx(summary["dice"]["mean"])
        assert 0.0 <= float(row["dice"]) <= 1.0
        info = json.loads((run / "run.json").read_text(encoding="utf-8"))
        if row["sweep"] != "ensemble":
            assert (info["patch_size"], info["t_test"]) == (int(row["patch_size"]), int(row["t_test"]))
    # the two settings differ (the patch size and t_test change the anomaly maps)
    assert not math.isclose(float(rows[0]["auprc"]), float(rows[1]["auprc"]))
    ensemble = json.loads((out / "ensemble.json").read_text(encoding="utf-8"))
    assert ensemble["members"] == ["pddpm_p96_t500", "pddpm_p48_t250"]
    entry = ensemble["datasets"]["mslub"]
    best = max(float(r["dice"]) for r in rows[:2])
    assert entry["best_single"] == pytest.approx(best)
    assert entry["ensemble_beats_best"] == (float(rows[2]["dice"]) > best)
    assert (out / "figures" / "dice_vs_patch_size_mslub.png").is_file()
    assert (out / "figures" / "dice_vs_t_test_mslub.png").is_file()


def test_ablate_command_refuses_a_non_pddpm_checkpoint(tiny_root, tmp_path, capsys):
    ddpm = save_method_checkpoint(tmp_path / "ddpm.pt", tiny("ddpm"))
    code = main(
        ["ablate", "--checkpoint", str(ddpm), "--data-root", str(tiny_root), "--out", str(tmp_path / "o")]
    )
    err = capsys.readouterr().err
    assert (
        code == 2
        and str(ddpm) in err
        and "'pddpm' was requested" in err
        and len(err.strip().splitlines()) == 1
    )


def test_ablate_command_offers_the_unhealthy_datasets():
    from pddpm_monai.cli import build_parser

    args = build_parser().parse_args(["ablate", "--checkpoint", "c.pt", "--data-root", "r", "--out", "o"])
    assert args.datasets == [k for k, spec in DATASETS.items() if spec.unhealthy]
    assert args.patch_sizes is None and args.t_test is None
