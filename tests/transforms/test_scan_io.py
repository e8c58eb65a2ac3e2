"""Reading scans from NIfTI, NRRD/MetaImage and DICOM series (``pddpm_monai.transforms.scan_io``)."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from monai.transforms import LoadImaged

from pddpm_monai.bundle.components import inference_items
from pddpm_monai.transforms.scan_io import ScanReader, read_scan, scan_as_nifti
from pddpm_monai.transforms.sitk_convert import array_to_sitk
from pddpm_monai.utils import InputError
from tests.dicom_series import write_dicom_series

#: an oblique, anisotropic grid (rotation about z, 0.9 x 1.1 x 2.5 mm, an offset origin)
ANGLE = np.deg2rad(20)
AFFINE = np.array(
    [
        [-0.9 * np.cos(ANGLE), 1.1 * np.sin(ANGLE), 0.0, 30.5],
        [-0.9 * np.sin(ANGLE), -1.1 * np.cos(ANGLE), 0.0, 12.25],
        [0.0, 0.0, 2.5, -40.0],
        [0.0, 0.0, 0.0, 1.0],
    ]
)


@pytest.fixture(scope="module")
def volume() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 1000, size=(12, 10, 7)).astype(np.float32)


@pytest.fixture(scope="module")
def nifti(volume: np.ndarray, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("scans") / "scan.nii.gz"
    nib.save(nib.Nifti1Image(volume, AFFINE), str(path))
    return path


def _same(got: tuple[np.ndarray, np.ndarray], volume: np.ndarray) -> None:
    array, affine = got
    assert array.dtype == np.float32 and array.shape == volume.shape
    np.testing.assert_array_equal(array, volume)
    np.testing.assert_allclose(affine, AFFINE, atol=1e-5)


def test_dicom_series_reads_as_the_nifti(volume: np.ndarray, nifti: Path, tmp_path: Path) -> None:
    folder = write_dicom_series(volume, AFFINE, tmp_path / "series")
    _same(read_scan(folder), volume)
    _same(read_scan(nifti), volume)
    converted = scan_as_nifti(folder, tmp_path / "native.nii.gz")
    image = nib.load(str(converted))
    np.testing.assert_array_equal(np.asarray(image.dataobj), volume)
    np.testing.assert_allclose(image.affine, AFFINE, atol=1e-5)
    assert scan_as_nifti(nifti, tmp_path / "unused.nii.gz") == nifti  # a NIfTI is used as it is


@pytest.mark.parametrize("suffix", [".nrrd", ".mha", ".mhd", ".nii"])
def test_itk_formats_read_as_the_nifti(suffix: str, volume: np.ndarray, tmp_path: Path) -> None:
    path = tmp_path / f"scan{suffix}"
    sitk.WriteImage(array_to_sitk(volume, AFFINE), str(path))
    _same(read_scan(path), volume)


def test_scan_reader_in_load_imaged_matches_nibabel(volume: np.ndarray, nifti: Path, tmp_path: Path) -> None:
    folder = write_dicom_series(volume, AFFINE, tmp_path / "series")
    reference = LoadImaged("image", image_only=True)({"image": str(nifti)})["image"]
    for source in (nifti, folder):
        got = LoadImaged("image", reader=ScanReader(), image_only=True)({"image": str(source)})["image"]
        np.testing.assert_array_equal(got.numpy(), reference.numpy())
        np.testing.assert_allclose(np.asarray(got.affine), np.asarray(reference.affine), atol=1e-5)
        assert tuple(got.meta["spatial_shape"]) == volume.shape


def test_folder_errors_name_the_series(volume: np.ndarray, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no images here")
    with pytest.raises(InputError, match="no DICOM series") as info:
        read_scan(empty)
    assert str(empty) in str(info.value) and "\n" not in str(info.value)
    two = tmp_path / "two"
    write_dicom_series(volume, AFFINE, two, series=1, description="T2 AX")
    write_dicom_series(volume[:, :, :4], AFFINE, two, series=2, description="FLAIR")
    with pytest.raises(InputError, match="2 DICOM series") as info:
        read_scan(two)
    message = str(info.value)
    assert "\n" not in message and str(two) in message
    for name in ("2.25.1234567.1", "2.25.1234567.2", "'T2 AX'", "'FLAIR'", "(7 files)", "(4 files)"):
        assert name in message, (name, message)


def test_bad_files_are_one_line_errors(tmp_path: Path) -> None:
    text = tmp_path / "scan.nrrd"
    text.write_text("not an image")
    two_d = tmp_path / "slice.mha"
    sitk.WriteImage(sitk.GetImageFromArray(np.ones((5, 6), np.float32)), str(two_d))
    other = tmp_path / "scan.png"
    other.write_bytes(b"\x89PNG")
    for path, problem in (
        (text, "not a readable image"),
        (two_d, "3-D"),
        (other, "unsupported scan format"),
        (tmp_path / "missing.nrrd", "not found"),
    ):
        with pytest.raises(InputError, match=problem) as info:
            read_scan(path)
        assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_inference_items_lists_every_kind_of_scan(volume: np.ndarray, nifti: Path, tmp_path: Path) -> None:
    folder = tmp_path / "scans"
    write_dicom_series(volume, AFFINE, folder / "sub-02_dicom")
    sitk.WriteImage(array_to_sitk(volume, AFFINE), str(folder / "sub-03.nrrd"))
    (folder / "sub-01.nii.gz").write_bytes(nifti.read_bytes())
    (folder / "notes").mkdir()
    (folder / "README.txt").write_text("-")
    names = [Path(item["image"]).name for item in inference_items(dataset_dir=str(folder))]
    assert names == ["sub-01.nii.gz", "sub-02_dicom", "sub-03.nrrd"]
    assert inference_items(image=str(folder / "sub-02_dicom")) == [{"image": str(folder / "sub-02_dicom")}]
    with pytest.raises(InputError, match="unsupported scan format"):
        inference_items(image=str(folder / "README.txt"))
    with pytest.raises(InputError, match="no scans"):
        inference_items(dataset_dir=str(folder / "notes"))
