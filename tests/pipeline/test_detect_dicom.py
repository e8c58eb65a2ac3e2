"""``pddpm detect`` on a DICOM series: the same mask as on the NIfTI of the same scan, on its grid.

The series is written from a real BraTS scan of ``../shared/data`` with SimpleITK (one int16 file
per axial slice with its ImagePositionPatient / ImageOrientationPatient, as a scanner export); the
model is the quick demo's trained tiny pDDPM (``tests/pipeline/conftest.py``).
"""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from pddpm_monai.cli import main
from pddpm_monai.pipeline.detect import DetectConfig, detect_scan
from pddpm_monai.transforms.atlas import resolve_atlas
from pddpm_monai.utils import read_nifti
from tests.dicom_series import write_dicom_series
from tests.pipeline.test_detect import BRATS_CASE, FAST_PREPROCESS


@pytest.mark.slow
@pytest.mark.realdata
def test_dicom_series_gives_the_mask_of_the_nifti(shared_data, tiny_model, tmp_path):
    scan = shared_data / "brats18" / BRATS_CASE / f"{BRATS_CASE}_t2.nii.gz"
    array, affine = read_nifti(scan)
    assert np.array_equal(array, np.rint(array)) and array.max() < 2**15  # int16 DICOM holds it exactly
    series = write_dicom_series(array, affine, tmp_path / "export" / BRATS_CASE)
    config = DetectConfig(
        skull_stripped=True, thresholds_file=str(tiny_model.thresholds), preprocess=FAST_PREPROCESS
    )
    atlas = resolve_atlas(tiny_model.atlas_dir)
    nifti = detect_scan(
        scan, tmp_path / "nifti", checkpoint=tiny_model.checkpoint, atlas=atlas, config=config
    )
    dicom = detect_scan(
        series, tmp_path / "dicom", checkpoint=tiny_model.checkpoint, atlas=atlas, config=config
    )
    assert dicom.paths["lesions"].name == f"{BRATS_CASE}_lesions.nii.gz"  # named after the series folder
    for kind in ("lesions", "brain", "anomaly"):
        want, got = nib.load(str(nifti.paths[kind])), nib.load(str(dicom.paths[kind]))
        assert got.shape == want.shape == array.shape, kind
        np.testing.assert_allclose(got.affine, affine, atol=1e-4, err_msg=kind)  # the scan's grid
        if kind == "anomaly":
            np.testing.assert_allclose(np.asarray(got.dataobj), np.asarray(want.dataobj), atol=1e-5)
        else:
            np.testing.assert_array_equal(np.asarray(got.dataobj), np.asarray(want.dataobj), err_msg=kind)
    assert np.asarray(nib.load(str(dicom.paths["lesions"])).dataobj).any(), "no lesion: a vacuous comparison"
    assert dicom.summary["lesion_volume_ml"] == nifti.summary["lesion_volume_ml"]


def test_cli_folder_with_two_series_is_one_line_naming_them(tmp_path, capsys):
    rng = np.random.default_rng(0)
    volume = rng.integers(1, 500, size=(8, 8, 4)).astype(np.float32)
    folder = tmp_path / "study"
    write_dicom_series(volume, np.eye(4), folder, series=1, description="T2 AX")
    write_dicom_series(volume, np.eye(4), folder, series=2, description="T2 COR")
    code = main(["detect", str(folder), "--checkpoint", str(tmp_path / "x.pt"), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert str(folder) in err and "2 DICOM series" in err and "'T2 AX'" in err and "'T2 COR'" in err
    empty = tmp_path / "empty"
    empty.mkdir()
    code = main(["detect", str(empty), "--checkpoint", str(tmp_path / "x.pt"), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "no DICOM series" in err
