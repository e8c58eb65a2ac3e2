"""``pddpm detect``: native-space outputs on real scans, the threshold's provenance, bad input."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
from monai.bundle import ConfigParser
from scipy import ndimage

from pddpm_monai.cli import main
from pddpm_monai.methods import build_method
from pddpm_monai.methods.checkpoint import save_method_checkpoint
from pddpm_monai.pipeline.detect import (
    DetectConfig,
    bundle_atlas,
    detect_scan,
    lesion_statistics,
    resolve_threshold,
)
from pddpm_monai.transforms.atlas import resolve_atlas
from pddpm_monai.transforms.config import PreprocessConfig
from pddpm_monai.utils import InputError, plain_json, save_checkpoint
from tests.pipeline.conftest import TINY_PDDPM

BRATS_CASE = "Brats18_2013_3_1"
BUNDLE_CONFIGS = Path(__file__).resolve().parents[2] / "bundles" / "pddpm_brain_uad" / "configs"
#: fewer N4 iterations than the default keep the real-scan tests short (same chain otherwise)
FAST_PREPROCESS = PreprocessConfig(n4_iterations=(20, 20))


# ------------------------------------------------------------------------------------- threshold

THRESHOLD_FILE_CASES = [
    ("evaluate_format", {"brats21": {"threshold": 0.3}, "mslub": {"threshold": 0.2}}, "mslub", 0.2),
    ("single_dataset_fallback", {"brats21": {"threshold": 0.3}}, "mslub", 0.3),
    ("plain", {"threshold": 0.25}, "brats21", 0.25),
    ("bundle_numbers", {"brats21": 0.4, "mslub": 0.1}, "brats21", 0.4),
]


@pytest.mark.parametrize("_, content, dataset, expected", THRESHOLD_FILE_CASES)
def test_threshold_from_a_file_beside_the_checkpoint(_, content, dataset, expected, tmp_path):
    (tmp_path / "thresholds.json").write_text(json.dumps(content))
    value, source = resolve_threshold(tmp_path / "best.pt", dataset=dataset)
    assert value == pytest.approx(expected)
    assert "thresholds.json" in source


def test_explicit_threshold_wins_and_missing_threshold_is_one_line(tmp_path):
    (tmp_path / "thresholds.json").write_text(json.dumps({"threshold": 0.9}))
    assert resolve_threshold(tmp_path / "best.pt", threshold=0.1) == (0.1, "--threshold")
    with pytest.raises(InputError, match="no threshold"):
        resolve_threshold(tmp_path / "sub" / "best.pt")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(InputError, match="bad.json"):
        resolve_threshold(tmp_path / "best.pt", thresholds_file=tmp_path / "bad.json")
    (tmp_path / "other.json").write_text(json.dumps({"brats21": {"threshold": 1}, "mslub": {"threshold": 2}}))
    with pytest.raises(InputError, match="no threshold for dataset 'ixi'"):
        resolve_threshold(tmp_path / "best.pt", thresholds_file=tmp_path / "other.json", dataset="ixi")


# ------------------------------------------------------------------------------------ statistics


def test_lesion_statistics_on_an_anisotropic_grid():
    lesions = np.zeros((20, 20, 10), bool)
    lesions[2:5, 2:5, 2:4] = True  # 18 voxels
    lesions[10:14, 10:14, 5:8] = True  # 48 voxels, the largest
    lesions[18, 18, 9] = True  # 1 voxel; touches nothing
    affine = np.diag([0.5, 1.0, 2.0, 1.0])  # 1 mm^3 per voxel
    stats = lesion_statistics(lesions, affine)
    labels, n = ndimage.label(lesions, structure=np.ones((3, 3, 3)))
    assert stats["n_components"] == n == 3
    assert stats["lesion_volume_ml"] == pytest.approx(67 / 1000)
    assert stats["largest_component_ml"] == pytest.approx(48 / 1000)
    assert stats["component_volumes_ml"] == pytest.approx([0.048, 0.018, 0.001])
    assert stats["largest_component_centroid_voxel"] == pytest.approx([11.5, 11.5, 6.0])


# ------------------------------------------------------------------------------------- bad input


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A valid small scan and a tiny untrained checkpoint with a threshold beside it."""
    folder = tmp_path_factory.mktemp("detect_inputs")
    rng = np.random.default_rng(0)
    nib.save(
        nib.Nifti1Image(rng.random((16, 16, 8)).astype(np.float32), np.eye(4)), str(folder / "scan.nii.gz")
    )
    method = build_method("pddpm", TINY_PDDPM)
    save_method_checkpoint(folder / "tiny.pt", method)
    (folder / "thresholds.json").write_text(json.dumps({"threshold": 0.5}))
    return folder


def _detect(scan: Path, checkpoint: Path, out: Path) -> None:
    detect_scan(scan, out, checkpoint=checkpoint, atlas=None, config=DetectConfig(skull_stripped=True))


def test_bad_scans_give_one_line_errors(inputs, tmp_path):
    not_nifti = tmp_path / "notes.nii.gz"
    not_nifti.write_text("not an image")
    four_d = tmp_path / "dwi.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((8, 8, 8, 3), np.float32), np.eye(4)), str(four_d))
    empty = tmp_path / "empty.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8), np.float32), np.eye(4)), str(empty))
    for scan, problem in ((not_nifti, "NIfTI"), (four_d, "3-D"), (empty, "all zeros")):
        with pytest.raises(InputError, match=problem) as err:
            _detect(scan, inputs / "tiny.pt", tmp_path / "out")
        assert str(scan) in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_checkpoints_of_another_method_or_size_are_refused(inputs, tmp_path):
    scan = inputs / "scan.nii.gz"
    state = dict(__import__("torch").load(inputs / "tiny.pt", weights_only=True))
    for other, problem in (("vq-vae", "unknown method 'vq-vae'"), ("ddpm", "unknown DDPMConfig option")):
        save_checkpoint({**state, "method": other}, tmp_path / "other_method.pt")
        with pytest.raises(InputError, match=problem) as err:
            _detect(scan, tmp_path / "other_method.pt", tmp_path / "out")
        assert "other_method.pt" in str(err.value)
    bigger = {
        **state,
        "config": {**state["config"], "network": {**state["config"]["network"], "model_channels": 32}},
    }
    save_checkpoint(bigger, tmp_path / "other_size.pt")
    with pytest.raises(InputError, match="weights do not match"):
        _detect(scan, tmp_path / "other_size.pt", tmp_path / "out")
    large_patch = build_method("pddpm", {**TINY_PDDPM, "patch_size": 128})
    save_method_checkpoint(tmp_path / "large_patch.pt", large_patch)
    with pytest.raises(InputError, match="does not fit the 96x96 model grid"):
        _detect(scan, tmp_path / "large_patch.pt", tmp_path / "out")


def test_cli_bad_input_is_one_line_and_exit_2(inputs, tmp_path, capsys):
    code = main(["detect", str(tmp_path / "missing.nii.gz"), "--checkpoint", str(inputs / "tiny.pt"),
                 "--out", str(tmp_path / "o"), "--atlas", str(tmp_path)])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and "missing.nii.gz" in err
    with pytest.raises(SystemExit) as exit_info:
        main(["detect", "x.nii.gz", "--out", "o"])  # neither --checkpoint nor --bundle
    assert exit_info.value.code == 2


def _bundle(folder: Path, inference: str | None, checkpoint: Path | None = None) -> Path:
    (folder / "configs").mkdir(parents=True)
    (folder / "models").mkdir()
    if inference is not None:
        (folder / "configs" / "inference.json").write_text(inference)
    if checkpoint is not None:
        (folder / "models" / "model.pt").write_bytes(checkpoint.read_bytes())
    return folder


def test_bundle_atlas_reads_the_inference_config(tmp_path):
    assert bundle_atlas(_bundle(tmp_path / "none", None)) is None
    assert bundle_atlas(_bundle(tmp_path / "null", '{"atlas": null}')) is None
    assert bundle_atlas(_bundle(tmp_path / "abs", '{"atlas": "/data/sri24"}')) == "/data/sri24"
    assert bundle_atlas(_bundle(tmp_path / "name", '{"atlas": "sri24"}')) == "sri24"  # not a folder here
    relative = _bundle(tmp_path / "rel", '{"atlas": "atlas"}')
    (relative / "atlas").mkdir()
    assert bundle_atlas(relative) == str(relative / "atlas")
    for bad, message in (('{"atlas": "$@x"}', "plain path"), ("{not json", "readable")):
        folder = _bundle(tmp_path / f"bad{len(message)}", bad)
        with pytest.raises(InputError, match=message) as info:
            bundle_atlas(folder)
        assert "inference.json" in str(info.value)


def test_detect_with_a_bundle_uses_its_atlas(inputs, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("PDDPM_ATLAS", raising=False)
    bundle = _bundle(tmp_path / "bundle", '{"atlas": "/no/such/atlas_dir"}', inputs / "tiny.pt")
    code = main(
        ["detect", str(inputs / "scan.nii.gz"), "--bundle", str(bundle), "--out", str(tmp_path / "o")]
    )
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "/no/such/atlas_dir" in err  # the bundle's atlas was used


# -------------------------------------------------------------------------------- real scans


def _assert_native(paths: dict[str, Path], scan: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    ref = nib.load(str(scan))
    arrays = []
    for kind in ("anomaly", "lesions", "brain"):
        img = nib.load(str(paths[kind]))
        assert img.shape == ref.shape[:3], kind
        np.testing.assert_allclose(img.affine, ref.affine, atol=1e-4, err_msg=kind)
        arrays.append(np.asarray(img.dataobj))
    return tuple(arrays)  # type: ignore[return-value]


@pytest.mark.slow
@pytest.mark.realdata
def test_brats_case_map_is_higher_in_the_tumour(shared_data, tiny_model, tmp_path):
    scan = shared_data / "brats18" / BRATS_CASE / f"{BRATS_CASE}_t2.nii.gz"
    seg = (
        np.asarray(nib.load(str(shared_data / "brats18" / BRATS_CASE / f"{BRATS_CASE}_seg.nii.gz")).dataobj)
        > 0
    )
    config = DetectConfig(
        skull_stripped=True, thresholds_file=str(tiny_model.thresholds), preprocess=FAST_PREPROCESS
    )
    atlas = resolve_atlas(tiny_model.atlas_dir)
    result = detect_scan(scan, tmp_path, checkpoint=tiny_model.checkpoint, atlas=atlas, config=config)
    assert all(p.is_file() for p in result.paths.values())
    anomaly, lesions, brain = _assert_native(result.paths, scan)
    image = np.asarray(nib.load(str(scan)).dataobj)
    assert not (lesions.astype(bool) & (image <= 0)).any(), "lesion voxels outside the skull-stripped brain"
    assert not (lesions.astype(bool) & ~brain.astype(bool)).any()
    inside, outside = anomaly[seg].mean(), anomaly[(image > 0) & ~seg].mean()
    assert inside > outside, (inside, outside)
    summary = json.loads(result.paths["summary"].read_text(encoding="utf-8"))
    assert summary["threshold"] == pytest.approx(tiny_model.threshold)
    assert "thresholds.json" in summary["threshold_source"]
    assert summary["model"]["method"] == "pddpm" and summary["pddpm_monai_version"]
    assert summary["n_components"] == lesion_statistics(lesions, nib.load(str(scan)).affine)["n_components"]
    dice = 2 * (lesions.astype(bool) & seg).sum() / max(lesions.astype(bool).sum() + seg.sum(), 1)
    print(
        f"BraTS {BRATS_CASE}: mean map inside/outside the tumour {inside:.4f}/{outside:.4f}, Dice {dice:.3f}"
    )
    # one detection chain: the bundle's inference config on the same raw scan gives the same outputs
    bundle_anomaly, bundle_mask = _bundle_inference(scan, tmp_path / "bundle", tiny_model, FAST_PREPROCESS)
    np.testing.assert_allclose(bundle_anomaly, anomaly, rtol=0, atol=1e-5 * float(anomaly.max()))
    np.testing.assert_array_equal(bundle_mask, lesions)


def _bundle_inference(
    scan: Path, out: Path, model: Any, preprocess: PreprocessConfig
) -> tuple[np.ndarray, np.ndarray]:
    """``(anomaly map, mask)`` of the bundle's ``configs/inference.json`` on a raw skull-stripped scan."""
    parser = ConfigParser()
    parser.read_config(str(BUNDLE_CONFIGS / "inference.json"))
    preprocess_config = {"_target_": "pddpm_monai.transforms.config.PreprocessConfig"}
    preprocess_config.update(plain_json(dataclasses.asdict(preprocess)))
    parser.update(
        {
            "bundle_root": str(out),
            "model_path": str(model.checkpoint),
            "image": str(scan),
            "output_dir": str(out),
            "raw_input": True,
            "skull_stripped": True,
            "atlas": str(model.atlas_dir),
            "threshold": model.threshold,
            "device": "$torch.device('cpu')",
            "preprocessing#preprocess": preprocess_config,
        }
    )
    parser.get_parsed_content("initialize")
    parser.get_parsed_content("inference")
    name = scan.name.removesuffix(".nii.gz")
    return tuple(
        np.asarray(nib.load(str(out / f"{name}_{kind}.nii.gz")).dataobj) for kind in ("anomaly", "mask")
    )


@pytest.mark.slow
@pytest.mark.realdata
def test_head_scan_with_skull_through_hd_bet(shared_data, tiny_model, tmp_path):
    scan = shared_data / "healthy" / "T2w_head.nii.gz"
    config = DetectConfig(threshold=tiny_model.threshold, preprocess=FAST_PREPROCESS)
    atlas = resolve_atlas(tiny_model.atlas_dir)
    result = detect_scan(scan, tmp_path, checkpoint=tiny_model.checkpoint, atlas=atlas, config=config)
    anomaly, lesions, brain = _assert_native(result.paths, scan)
    brain = brain.astype(bool)
    voxel_ml = abs(np.linalg.det(nib.load(str(scan)).affine[:3, :3])) / 1000
    assert 300 < brain.sum() * voxel_ml < 2000, "HD-BET brain mask of implausible volume"
    assert not (lesions.astype(bool) & ~brain).any()
    assert anomaly[~brain].sum() <= 0.05 * anomaly.sum(), "anomaly map outside the brain"
    again = detect_scan(scan, tmp_path, checkpoint=tiny_model.checkpoint, atlas=atlas, config=config)
    assert again.skipped and again.summary == result.summary
