"""``pddpm preprocess`` runner: shards, resumability, failure reporting, reading a scan, end to end."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from pddpm_monai.cli import main
from pddpm_monai.data.datalist import SPLIT_NAMES, read_split_csv
from pddpm_monai.data.prepare import load_subject, parse_shard, shard
from pddpm_monai.transforms.atlas import resolve_atlas
from pddpm_monai.transforms.sitk_convert import array_to_sitk, sitk_to_array
from pddpm_monai.transforms.spatial import resample_to_spacing
from pddpm_monai.utils import InputError, read_nifti


@pytest.mark.parametrize("text, expected", [(None, (0, 1)), ("0/4", (0, 4)), ("3/4", (3, 4))])
def test_parse_shard(text, expected):
    assert parse_shard(text) == expected


@pytest.mark.parametrize("text", ["4/4", "-1/2", "a/b", "1"])
def test_parse_shard_refuses_bad_specs(text):
    with pytest.raises(InputError, match="--shard"):
        parse_shard(text)


def test_shards_partition_the_subjects():
    subjects = [f"s{i}" for i in range(11)]
    parts = [shard(subjects, i, 3) for i in range(3)]  # type: ignore[arg-type]
    assert sorted(sum(parts, [])) == sorted(subjects) and all(len(p) in (3, 4) for p in parts)


def _save(path: Path, arr: np.ndarray, affine: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(arr, affine), str(path))


@pytest.mark.slow
def test_bad_subjects_are_reported_and_the_run_goes_on(shared_data, tmp_path, capsys):
    """MSLUB layout at 3 mm: one good subject, one with NaN voxels, one that cannot register."""
    atlas = resolve_atlas(shared_data / "sri24")
    small = resample_to_spacing(array_to_sitk(*atlas.image), 3.0)
    data, aff = sitk_to_array(small)
    _save(tmp_path / "atlas" / "t2.nii.gz", data, aff)
    shifted = aff.copy()
    shifted[:3, 3] += (4.0, -3.0, 2.0)
    seg = np.zeros(data.shape, np.uint8)
    seg[38:42, 40:44, 25:28] = 1
    raw = tmp_path / "raw"
    _save(raw / "patient01" / "T2.nii.gz", data, shifted)
    _save(raw / "patient01" / "consensus_gt.nii.gz", seg, shifted)
    nan = data.copy()
    nan[10, 10, 10] = np.nan
    _save(raw / "patient02" / "T2.nii.gz", nan, aff)
    _save(raw / "patient02" / "consensus_gt.nii.gz", seg, aff)
    slab = np.zeros_like(data)
    slab[:, :, 24:28] = data[:, :, 24:28]
    _save(raw / "patient03" / "T2.nii.gz", slab, aff)
    _save(raw / "patient03" / "consensus_gt.nii.gz", seg, aff)
    root = tmp_path / "root"
    args = [
        "preprocess",
        "mslub",
        "--input",
        str(raw),
        "--data-root",
        str(root),
        "--atlas",
        str(tmp_path / "atlas"),
    ]
    assert main([*args, "--no-progress", "--workers", "2"]) == 1
    err = capsys.readouterr().err
    assert "done 1, skipped 0 (already finished), failed 2" in err
    assert "FAILED patient02: " in err and "patient02/T2.nii.gz: image contains 1 NaN/Inf voxels" in err
    assert "FAILED patient03: " in err and "registration to the atlas failed" in err
    written = sorted(p.name for p in root.rglob("*") if p.is_file())
    assert written == [
        "patient01.json",
        "patient01_mask.nii.gz",
        "patient01_seg.nii.gz",
        "patient01_t2.nii.gz",
    ]
    t2, t2_aff = read_nifti(root / "Test" / "MSLUB" / "t2" / "patient01_t2.nii.gz")
    out_seg, _ = read_nifti(root / "Test" / "MSLUB" / "seg" / "patient01_seg.nii.gz", allow_empty=True)
    assert t2.shape == (192, 192, 160) and out_seg.sum() > 0
    # the 3 mm subject lands on the 3 mm atlas: shift undone (the lesion's world centre moves back by the
    # shift, within 2 voxels: the registration pyramid of a 3 mm scan runs at 12 and 6 mm)
    centre = lambda a, m: (m @ [*np.argwhere(a > 0).mean(0), 1])[:3]  # noqa: E731
    np.testing.assert_allclose(centre(out_seg, t2_aff), centre(seg, shifted) - (4.0, -3.0, 2.0), atol=6.1)
    # resumable: a second run skips the finished subject
    assert main([*args, "--no-progress"]) == 1
    assert "done 0, skipped 1" in capsys.readouterr().err


@pytest.mark.slow
def test_synthetic_raw_cohort_end_to_end(tmp_path, capsys):
    """The synthetic raw cohort -> `pddpm preprocess` x3 -> `pddpm splits` -> a valid data root."""
    from pddpm_monai.data.synthetic.cohort import make_synthetic_raw, synthetic_atlas

    raw = make_synthetic_raw(tmp_path / "raw", n_healthy=1, n_tumour=1, n_ms=1, seed=0)
    atlas = synthetic_atlas(tmp_path / "atlas")
    root = tmp_path / "root"
    for dataset in ("ixi", "brats21", "mslub"):
        code = main(
            [
                "preprocess",
                dataset,
                "--input",
                str(raw),
                "--data-root",
                str(root),
                "--atlas",
                str(atlas),
                "--no-progress",
            ]
        )
        assert code == 0, capsys.readouterr().err
    assert main(["splits", "--data-root", str(root), "--seed", "0"]) == 0
    assert sorted(p.stem for p in (root / "splits").glob("*.csv")) == sorted(SPLIT_NAMES)
    items = [i for name in SPLIT_NAMES for i in read_split_csv(root / "splits" / f"{name}.csv", root)]
    assert {i["name"] for i in items} == {"IXI002-Synth-0002", "BraTS2021_00000", "patient01"}
    truth_masks = {"IXI002-Synth-0002": "IXI", "BraTS2021_00000": "BraTS21", "patient01": "MSLUB"}
    for item in {i["name"]: i for i in items}.values():
        t2, aff = read_nifti(item["image"])
        mask, mask_aff = read_nifti(item["mask"])
        assert t2.shape == mask.shape == (192, 192, 160) and np.allclose(aff, mask_aff)
        assert not t2[mask == 0].any()
        record = json.loads(
            (Path(item["image"]).parents[1] / "records" / f"{item['name']}.json").read_text(encoding="utf-8")
        )
        if "registration" in record:
            assert record["registration"]["brain_dice"] > 0.9
        truth, _ = read_nifti(raw / "truth" / truth_masks[item["name"]] / f"{item['name']}_mask.nii.gz")
        # brain volume is preserved up to the registration's scaling (1 mm raw voxels vs 1 mm output)
        scale = 1.0
        if "registration" in record:
            scale = abs(np.linalg.det(np.reshape(record["registration"]["parameters"][:9], (3, 3))))
        raw_voxel = float(np.prod(np.abs(np.linalg.eigvals(read_nifti(item["image"])[1][:3, :3]))))
        assert raw_voxel == pytest.approx(1.0, rel=1e-3)
        expected = truth.astype(bool).sum() * _voxel_volume(raw, item["name"], truth_masks) / scale
        assert (mask > 0).sum() == pytest.approx(expected, rel=0.1)
    seg, _ = read_nifti(root / "Test" / "Brats21" / "seg" / "BraTS2021_00000_seg.nii.gz", allow_empty=True)
    assert set(np.unique(seg)) <= {0, 1, 2, 4} and seg.any()
    assert (
        json.loads(
            (root / "Train" / "ixi" / "records" / "IXI002-Synth-0002.json").read_text(encoding="utf-8")
        )["age"]
        is not None
    )


def _voxel_volume(raw: Path, name: str, folders: dict[str, str]) -> float:
    img = nib.load(str(raw / "truth" / folders[name] / f"{name}_mask.nii.gz"))
    return float(np.prod(img.header.get_zooms()[:3]))


def _write(path, arr, affine=np.eye(4)):
    nib.save(nib.Nifti1Image(np.asarray(arr), affine), str(path))
    return path


BAD_INPUTS = [
    ("two_d", lambda p: _write(p, np.ones((8, 8), np.float32)), "expected a 3-D image"),
    ("four_d", lambda p: _write(p, np.ones((8, 8, 8, 2), np.float32)), "expected a 3-D image"),
    ("nan", lambda p: _write(p, np.full((8, 8, 8), np.nan, np.float32)), "NaN/Inf"),
    (
        "inf",
        lambda p: _write(
            p, np.where(np.eye(8)[..., None] > 0, np.inf, 1.0).astype(np.float32) * np.ones((8, 8, 8))
        ),
        "NaN/Inf",
    ),
    ("zeros", lambda p: _write(p, np.zeros((8, 8, 8), np.float32)), "all zeros"),
]


@pytest.mark.parametrize("name, make, message", BAD_INPUTS)
def test_bad_scans_give_one_line_errors_naming_the_file(tmp_path, name, make, message):
    path = make(tmp_path / f"{name}.nii.gz")
    with pytest.raises(InputError, match=message) as err:
        load_subject(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_truncated_file_and_grid_mismatch_and_singleton_axis(tmp_path):
    good = _write(tmp_path / "img.nii.gz", np.ones((8, 8, 8, 1), np.float32))
    assert load_subject(good)["t2"].shape == (1, 8, 8, 8)  # trailing singleton squeezed
    truncated = tmp_path / "cut.nii.gz"
    truncated.write_bytes(good.read_bytes()[:60])
    with pytest.raises(InputError, match="cut.nii.gz: not a readable NIfTI"):
        load_subject(truncated)
    seg = _write(tmp_path / "seg.nii.gz", np.zeros((8, 8, 7), np.uint8))
    with pytest.raises(InputError, match="seg.nii.gz: grid mismatch"):
        load_subject(good, seg)
    shifted = _write(tmp_path / "seg2.nii.gz", np.zeros((8, 8, 8), np.uint8), np.diag([2.0, 1, 1, 1]))
    with pytest.raises(InputError, match="seg2.nii.gz: grid mismatch"):
        load_subject(good, shifted)
