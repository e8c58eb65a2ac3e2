"""``pddpm train`` on a tiny data root and ``pddpm reconstruct`` of one of its scans."""

from __future__ import annotations

import csv
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from pddpm_monai.cli import main

ATLAS_SHAPE = (192, 192, 160)
SUBJECTS = {"train": ["IXI001-Guys-0001", "IXI002-Guys-0002"], "val": ["IXI003-Guys-0003"]}
TRAIN_OPTIONS = [
    "--epochs", "2", "--batch-size", "4", "--channels", "16", "--channel-mult", "1", "2",
    "--res-blocks", "1", "--groups", "8", "--head-channels", "16", "--val-slices", "2",
    "--t-test", "100", "--device", "cpu", "--seed", "1",
]  # fmt: skip


def _write_subject(root: Path, name: str, rng: np.random.Generator) -> None:
    zz, yy, xx = np.meshgrid(*(np.arange(n, dtype=np.float32) for n in ATLAS_SHAPE), indexing="ij")
    r = ((zz - 96) / 70) ** 2 + ((yy - 96) / 80) ** 2 + ((xx - 80) / 65) ** 2
    mask = (r < 1).astype(np.uint8)
    image = mask * (300 + 200 * np.cos(zz / 9) * np.sin(yy / 11) + rng.normal(0, 10, ATLAS_SHAPE))
    for kind, data in (("t2", image.astype(np.float32)), ("mask", mask)):
        path = root / "Train" / "ixi" / kind / f"{name}_{kind}.nii.gz"
        path.parent.mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(data, np.eye(4)), str(path))


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    """3 healthy subjects in atlas space with fold-0 splits (2 train, 1 val), as the data root layout."""
    root = tmp_path_factory.mktemp("root")
    rng = np.random.default_rng(0)
    (root / "splits").mkdir()
    for split, names in SUBJECTS.items():
        with (root / "splits" / f"IXI_{split}_fold0.csv").open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["", "img_name", "age", "label", "img_path", "mask_path", "seg_path"])
            for i, name in enumerate(names):
                _write_subject(root, name, rng)
                t2, mask = (f"/Train/ixi/{k}/{name}_{k}.nii.gz" for k in ("t2", "mask"))
                writer.writerow([i, f"{name}_t2.nii.gz", 40, 0, t2, mask, ""])
    return root


@pytest.mark.slow
def test_train_then_reconstruct_from_a_data_root(data_root, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--data-root", str(data_root), "--out", str(out), *TRAIN_OPTIONS]) == 0
    best = Path(capsys.readouterr().out.strip().splitlines()[-1])
    assert best == out / "best.pt"
    state = torch.load(best, weights_only=True)
    assert state["method"] == "pddpm" and state["config"]["network"]["model_channels"] == 16
    assert state["config"]["t_test"] == 100 and state["train_config"]["epochs"] == 2
    last = torch.load(out / "last.pt", weights_only=True)["trainer"]
    assert last["epoch"] == 2 and last["iteration"] == 2 * last["epoch_length"]
    assert (out / "train_config.json").is_file() and any((out / "tensorboard").iterdir())

    scan = data_root / "Train" / "ixi" / "t2" / "IXI003-Guys-0003_t2.nii.gz"
    mask = data_root / "Train" / "ixi" / "mask" / "IXI003-Guys-0003_mask.nii.gz"
    recon_dir = tmp_path / "recon"
    args = ["reconstruct", "--checkpoint", str(best), "--image", str(scan), "--mask", str(mask)]
    args += ["--out", str(recon_dir), "--patch-size", "96", "--device", "cpu"]
    assert main(args) == 0
    files = {
        kind: recon_dir / f"IXI003-Guys-0003_t2_{kind}.nii.gz"
        for kind in ("input", "reconstruction", "anomaly")
    }
    loaded = {kind: nib.load(str(path)) for kind, path in files.items()}
    for img in loaded.values():
        assert img.shape == (96, 96, 50)
        np.testing.assert_allclose(np.abs(np.diag(img.affine))[:3], 2.0)  # the model grid: 2 mm voxels
        np.testing.assert_allclose(img.affine, loaded["input"].affine)
    image, recon, anomaly = (loaded[k].get_fdata() for k in ("input", "reconstruction", "anomaly"))
    assert -1e-6 <= image.min() and image.max() <= 1 + 1e-6 and image.max() > 0.9
    model_mask = anomaly != 0
    np.testing.assert_allclose(anomaly[model_mask], np.abs(image - recon)[model_mask], atol=1e-5)
    assert model_mask.sum() > 0.1 * model_mask.size and (anomaly[image == 0] == 0).mean() > 0.9

    capsys.readouterr()
    assert main(args) == 0  # finished outputs are skipped
    assert "skipped" in capsys.readouterr().out


def test_bad_checkpoint_and_bad_options_are_one_line_errors(data_root, tmp_path, capsys):
    corrupt = tmp_path / "best.pt"
    corrupt.write_bytes(b"not a checkpoint")
    scan = data_root / "Train" / "ixi" / "t2" / "IXI001-Guys-0001_t2.nii.gz"
    code = main(["reconstruct", "--checkpoint", str(corrupt), "--image", str(scan), "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and str(corrupt) in err and len(err.strip().splitlines()) == 1
    code = main(
        [
            "train",
            "--data-root",
            str(data_root),
            "--out",
            str(tmp_path / "x"),
            "--method",
            "ddpm",
            "--patch-size",
            "8",
        ]
    )
    err = capsys.readouterr().err
    assert (
        code == 2 and "unknown DDPMConfig option(s): patch_size" in err and len(err.strip().splitlines()) == 1
    )
    code = main(["train", "--data-root", str(tmp_path / "nowhere"), "--out", str(tmp_path / "y")])
    err = capsys.readouterr().err
    assert code == 2 and "data root not found" in err


def test_omitted_options_keep_the_dataclass_defaults_and_help_states_them(capsys):
    from pddpm_monai.cli import build_parser
    from pddpm_monai.engines.commands import train_config_from_args
    from pddpm_monai.engines.trainer import TrainConfig
    from pddpm_monai.methods import PDDPMConfig

    args = build_parser().parse_args(["train", "--data-root", "r", "--out", "o"])
    config = train_config_from_args(args)
    assert config == TrainConfig(data_root="r", out_dir="o")
    args = build_parser().parse_args(
        ["train", "--data-root", "r", "--out", "o", "--noise", "gaussian", "--channel-mult", "1", "2"]
    )
    assert train_config_from_args(args).method_options == {
        "diffusion.noise_type": "gaussian",
        "network.channel_mult": [1, 2],
    }
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    method, train = PDDPMConfig(), TrainConfig()
    for option, value in (
        ("--patch-size", method.patch_size),
        ("--t-test", method.t_test),
        ("--channels", method.network.model_channels),
        ("--epochs", train.epochs),
        ("--batch-size", train.batch_size),
        ("--lr", train.lr),
        ("--seed", train.seed),
        ("--val-slices", train.val_slices_per_volume),
    ):
        assert f"{option.upper()[2:].replace('-', '_')} " in text and f"(default {value}" in text, option
