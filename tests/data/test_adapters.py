"""Dataset adapters: raw layouts of IXI / BraTS21 / MSLUB and the data-root names."""

from __future__ import annotations

from pathlib import Path

import pytest

from pddpm_monai.data.adapters import find_subjects, output_paths
from pddpm_monai.utils import InputError


def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def test_ixi_names_and_ages_from_the_demographics_table(tmp_path):
    for name in ("IXI012-HH-1211-T2.nii.gz", "IXI002-Guys-0828-T2.nii.gz", "IXI002-Guys-0828-T1.nii.gz"):
        _touch(tmp_path / "IXI-T2" / name)
    (tmp_path / "IXI.csv").write_text("IXI_ID,SEX_ID,AGE\n2,1,35.8\n12,2,\n")
    subjects = find_subjects("ixi", tmp_path)
    assert [s.name for s in subjects] == ["IXI002-Guys-0828", "IXI012-HH-1211"]
    assert subjects[0].age == pytest.approx(35.8) and subjects[1].age is None  # missing age stays unknown
    paths = output_paths("/root", subjects[0])
    assert paths["t2"] == Path("/root/Train/ixi/t2/IXI002-Guys-0828_t2.nii.gz")
    assert paths["mask"] == Path("/root/Train/ixi/mask/IXI002-Guys-0828_mask.nii.gz")
    assert set(paths) == {"t2", "mask", "record"}


def test_brats_and_mslub_layouts(tmp_path):
    for case in ("BraTS2021_00002", "BraTS2021_00000"):
        for kind in ("t2", "seg", "flair"):
            _touch(tmp_path / "brats" / case / f"{case}_{kind}.nii.gz")
    for patient in ("patient02", "patient01"):
        _touch(tmp_path / "mslub" / patient / "T2W.nii.gz")
        _touch(tmp_path / "mslub" / patient / "consensus_gt.nii.gz")
    brats = find_subjects("brats21", tmp_path / "brats")
    assert [s.name for s in brats] == ["BraTS2021_00000", "BraTS2021_00002"]
    assert brats[0].seg.name == "BraTS2021_00000_seg.nii.gz"
    assert output_paths("/r", brats[0])["seg"] == Path("/r/Test/Brats21/seg/BraTS2021_00000_seg.nii.gz")
    mslub = find_subjects("mslub", tmp_path / "mslub")
    assert [s.name for s in mslub] == ["patient01", "patient02"]
    assert output_paths("/r", mslub[1])["t2"] == Path("/r/Test/MSLUB/t2/patient02_t2.nii.gz")


def test_adapter_errors_name_the_folder(tmp_path):
    _touch(tmp_path / "BraTS2021_00001" / "BraTS2021_00001_t2.nii.gz")
    with pytest.raises(InputError, match="BraTS2021_00001: no BraTS2021_00001_seg"):
        find_subjects("brats21", tmp_path)
    with pytest.raises(InputError, match="no ixi scans found"):
        find_subjects("ixi", tmp_path)
    with pytest.raises(InputError, match="raw data folder not found"):
        find_subjects("mslub", tmp_path / "missing")
    with pytest.raises(InputError, match="unknown dataset"):
        find_subjects("oasis", tmp_path)  # type: ignore[arg-type]
