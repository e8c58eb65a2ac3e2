"""The checks of MONAI model-zoo's CI on ``bundles/pddpm_brain_uad``, mirrored offline.

Model-zoo's ``ci/verify_bundle.py`` (Project-MONAI/model-zoo) and its pre-commit hooks are not part
of this project and need a model-zoo checkout, so CI runs their checks here (the real script was run
by hand: ``docs/README.md`` of the bundle, section "Model-zoo checks"):

- ``verify_bundle_directory``: ``LICENSE``, ``configs/metadata.json``, ``models/model.pt``,
  ``configs/inference.json``; ``large_files.yml`` entries whose hash matches the shipped file (MONAI's
  ``download_url`` skips the download of an existing file with the right hash, so it stays offline);
- ``verify_version_changes``: ``version`` in ``changelog``;
- ``verify_metadata_format``: the metadata against the schema (``test_bundle.py::test_verify_metadata``);
- ``verify_data_shape``: ``verify_net_in_out`` on ``network_def`` with one tensor
  (``test_bundle.py::test_verify_net_in_out``);
- ``verify_torchscript``: ``ckpt_export`` of ``network_def`` with the whole ``models/model.pt`` loaded
  into it, then ``torch.jit.load`` of the result;
- the pre-commit hooks ``pretty-format-json --autofix --no-sort-keys --indent=4``,
  ``end-of-file-fixer``, ``trailing-whitespace``, ``check-added-large-files --maxkb=1024``.
"""

from __future__ import annotations

import hashlib
import json
import logging.config
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser

from tests.bundle.conftest import BUNDLE, CONFIGS

META = CONFIGS / "metadata.json"
MODEL = BUNDLE / "models" / "model.pt"
THRESHOLD = BUNDLE / "models" / "threshold.json"
#: model-zoo's ``check-added-large-files --maxkb=1024``
MAX_KB = 1024


def _text_files() -> list[Path]:
    return [p for p in BUNDLE.rglob("*") if p.is_file() and p.suffix in {".json", ".md", ".yml", ".conf", ""}]


def test_model_zoo_necessary_and_preferred_files() -> None:
    for name in ("LICENSE", "configs/metadata.json", "models/model.pt", "configs/inference.json"):
        assert (BUNDLE / name).is_file(), name
    assert (BUNDLE / "LICENSE").read_text(encoding="utf-8").lstrip().startswith("Apache License")


def test_large_files_hash_matches_the_shipped_model() -> None:
    parser = ConfigParser()
    parser.read_config(str(BUNDLE / "large_files.yml"))  # as model-zoo's download_large_files
    entries = parser.get()["large_files"]
    assert [e["path"] for e in entries] == ["models/model.pt"]
    for entry in entries:
        digest = hashlib.new(entry["hash_type"], (BUNDLE / entry["path"]).read_bytes()).hexdigest()
        assert digest == entry["hash_val"], "models/model.pt changed: update large_files.yml"
        assert entry["url"].startswith("https://")


def test_version_is_in_the_changelog() -> None:
    meta = json.loads(META.read_text(encoding="utf-8"))
    assert meta["version"] in meta["changelog"]
    assert [int(p) for p in meta["version"].split(".")] and len(meta["version"].split(".")) == 3


@pytest.mark.parametrize("path", sorted(BUNDLE.glob("configs/*.json")), ids=lambda p: p.name)
def test_json_as_the_model_zoo_pre_commit_formats_it(path: Path) -> None:
    """``pretty-format-json --no-sort-keys --indent=4`` (its defaults: ASCII escapes) changes nothing."""
    text = path.read_text(encoding="utf-8")
    pretty = json.dumps(json.loads(text, object_pairs_hook=OrderedDict), indent=4, ensure_ascii=True) + "\n"
    assert text == pretty


def test_text_files_pass_the_whitespace_hooks_and_files_are_small() -> None:
    for path in _text_files():
        text = path.read_text(encoding="utf-8")
        assert not text or (text.endswith("\n") and not text.endswith("\n\n")), f"end-of-file-fixer: {path}"
        assert not [n for n, line in enumerate(text.splitlines(), 1) if line != line.rstrip()], path
    # files listed in large_files.yml are downloaded in model-zoo, not committed there
    parser = ConfigParser()
    parser.read_config(str(BUNDLE / "large_files.yml"))
    large = {BUNDLE / entry["path"] for entry in parser.get()["large_files"]}
    for path in BUNDLE.rglob("*"):
        if path.is_file() and path not in large and not {"runs", "eval", "__pycache__"} & set(path.parts):
            assert path.stat().st_size <= MAX_KB * 1024, f"check-added-large-files: {path}"


def test_metadata_installs_beside_monai_label_and_says_3d() -> None:
    meta = json.loads(META.read_text(encoding="utf-8"))
    # not on the package index: the bundle documents how it finds pddpm_monai instead
    assert "pddpm-monai" not in meta["required_packages_version"]
    # MONAI Label 0.8.5 needs numpy < 2; numpy 1.26.4 has wheels for Python 3.10-3.12
    assert meta["numpy_version"].startswith("1.26.")
    assert meta["required_packages_version"]["mlxtend"].startswith("0.23.")
    # MONAI Label's /info "dimension" is len(spatial_shape) of the first input
    image = next(iter(meta["network_data_format"]["inputs"].values()))
    pred = next(iter(meta["network_data_format"]["outputs"].values()))
    assert len(image["spatial_shape"]) == 3 and pred["spatial_shape"] == image["spatial_shape"]


def test_logging_conf_is_a_valid_logging_config() -> None:
    path = CONFIGS / "logging.conf"
    logging.config.fileConfig(str(path), disable_existing_loggers=False)
    assert logging.getLogger().handlers


def test_shipped_demo_model_and_threshold() -> None:
    state = torch.load(MODEL, map_location="cpu", weights_only=True)
    assert state["method"] == "pddpm" and state["version"] >= 2
    assert state["config"]["diffusion"]["schedule"] == "cosine"  # trained after the "Fidelity" defaults
    assert state["config"]["network"]["model_channels"] == 16
    thresholds = json.loads(THRESHOLD.read_text(encoding="utf-8"))
    assert 0 < thresholds["brats21"]["threshold"] < 1
    assert MODEL.stat().st_mode & 0o044 == 0o044, "model.pt must be readable by others (not 0600)"


def test_ckpt_export_torchscript_of_the_shipped_bundle(tmp_path: Path) -> None:
    """Model-zoo's ``verify_torchscript``: ``ckpt_export`` loads the whole ``model.pt`` into ``network_def``."""
    from monai.bundle import ckpt_export

    ts_path = tmp_path / "verify_model.ts"
    ckpt_export(net_id="network_def", filepath=str(ts_path), ckpt_file=str(MODEL), meta_file=str(META),
                config_file=str(CONFIGS / "inference.json"), bundle_root=str(BUNDLE))  # fmt: skip
    scripted = torch.jit.load(str(ts_path))
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "inference.json"))
    parser["bundle_root"] = str(BUNDLE)
    net = parser.get_parsed_content("network_def")
    weights = torch.load(MODEL, map_location="cpu", weights_only=True)["model"]
    for key, value in weights.items():
        torch.testing.assert_close(net.state_dict()[key], value)
    volume = torch.rand(1, 1, 96, 96, 50, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = net(volume)
        got = scripted(volume)
    assert torch.equal(got, expected) and float(expected.abs().mean()) > 0
    extra = {"metadata.json": ""}
    torch.jit.load(str(ts_path), _extra_files=extra)
    assert (
        json.loads(extra["metadata.json"])["version"]
        == json.loads(META.read_text(encoding="utf-8"))["version"]
    )
    assert np.isfinite(got.numpy()).all()


@pytest.mark.slow
def test_shipped_bundle_runs_on_nifti_nrrd_and_dicom_alike(tiny_root: Path, tmp_path: Path) -> None:
    """``run inference`` out of the box (shipped model and threshold) on one scan in three formats."""
    import nibabel as nib
    import SimpleITK as sitk
    from monai.bundle import run

    from pddpm_monai.transforms.sitk_convert import array_to_sitk
    from pddpm_monai.utils import read_nifti, save_nifti
    from tests.dicom_series import write_dicom_series

    row = (tiny_root / "splits" / "Brats21_test.csv").read_text(encoding="utf-8").splitlines()[1].split(",")
    array, affine = read_nifti(tiny_root / row[4].lstrip("/"))
    array = np.rint(array)  # integer voxels: the int16 DICOM holds them exactly
    scans = {
        "scan": save_nifti(array, affine, tmp_path / "in" / "scan.nii.gz"),
        "scan_nrrd": tmp_path / "in" / "scan_nrrd.nrrd",
        "scan_dicom": write_dicom_series(array, affine, tmp_path / "in" / "scan_dicom"),
    }
    sitk.WriteImage(array_to_sitk(array, affine), str(scans["scan_nrrd"]))
    out = tmp_path / "out"
    for scan in scans.values():
        run("inference", config_file=str(CONFIGS / "inference.json"), meta_file=str(META),
            bundle_root=str(BUNDLE), image=str(scan), output_dir=str(out))  # fmt: skip
    reference = {k: nib.load(str(out / f"scan_{k}.nii.gz")) for k in ("mask", "anomaly")}
    assert np.asarray(reference["mask"].dataobj).any(), "no anomaly found: a vacuous comparison"
    for name in ("scan_nrrd", "scan_dicom"):
        for kind, ref in reference.items():
            got = nib.load(str(out / f"{name}_{kind}.nii.gz"))
            assert got.shape == array.shape
            np.testing.assert_allclose(got.affine, affine, atol=1e-5)
            np.testing.assert_allclose(
                np.asarray(got.dataobj), np.asarray(ref.dataobj), atol=1e-5, err_msg=name
            )
