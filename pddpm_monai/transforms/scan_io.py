"""Reading one scan from the formats clinical pipelines hand over: NIfTI, other ITK files, DICOM series.

- NIfTI (``.nii``, ``.nii.gz``): :func:`~pddpm_monai.utils.read_nifti` (nibabel), as everywhere else;
- other single-file ITK formats (``.nrrd``, ``.nhdr``, ``.mha``, ``.mhd``): SimpleITK ``ReadImage``;
- a folder: the one DICOM series in it (SimpleITK ``ImageSeriesReader`` with GDCM's series
  grouping and slice ordering). A folder with no series, or with several, is refused with a
  one-line error that names the series found (UID, description, number of files).

Every reader returns the nibabel convention of the rest of the project: an ``(X, Y, Z)`` float32 array
and a RAS affine (SimpleITK's LPS geometry converted as in
:func:`~pddpm_monai.transforms.sitk_convert.sitk_to_array`), validated by
:func:`~pddpm_monai.utils.checked_volume` as NIfTI files are (3-D, finite, not all zeros). Outputs stay NIfTI on the scan's grid.

:class:`ScanReader` is the same reader as a MONAI ``ImageReader`` (``LoadImaged(reader=ScanReader())``
in the bundle's ``configs/inference.json``, also under MONAI Label), so the bundle needs neither
``itk`` nor ``pydicom``.

Example:
    >>> array, affine = read_scan("DICOM/series_t2")  # doctest: +SKIP
    >>> nifti = scan_as_nifti("sub-01_T2w.nrrd", "work/sub-01_T2w_native.nii.gz")  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
from monai.data import ImageReader
from monai.utils import MetaKeys, SpaceKeys, ensure_tuple

from pddpm_monai.transforms.sitk_convert import sitk_to_array
from pddpm_monai.utils import InputError, checked_volume, read_nifti, save_nifti

__all__ = [
    "NIFTI_SUFFIXES",
    "ITK_SUFFIXES",
    "SCAN_SUFFIXES",
    "is_scan_path",
    "is_nifti",
    "dicom_series",
    "read_scan",
    "scan_as_nifti",
    "scan_name",
    "ScanReader",
]

NIFTI_SUFFIXES: tuple[str, ...] = (".nii.gz", ".nii")
#: single-file formats read with SimpleITK
ITK_SUFFIXES: tuple[str, ...] = (".nrrd", ".nhdr", ".mha", ".mhd")
#: every file suffix :func:`read_scan` takes (a folder is read as a DICOM series)
SCAN_SUFFIXES: tuple[str, ...] = NIFTI_SUFFIXES + ITK_SUFFIXES
#: DICOM tag of the series description (shown in the error for a folder with several series)
_SERIES_DESCRIPTION = "0008|103e"


def is_nifti(path: str | os.PathLike) -> bool:
    """Whether ``path`` names a NIfTI file (by its suffix)."""
    return str(path).lower().endswith(NIFTI_SUFFIXES)


def is_scan_path(path: str | os.PathLike) -> bool:
    """Whether :func:`read_scan` would try ``path``: a folder, or a file with a :data:`SCAN_SUFFIXES` suffix."""
    return Path(path).is_dir() or str(path).lower().endswith(SCAN_SUFFIXES)


def _series_label(folder: Path, uid: str) -> str:
    files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid)
    description = ""
    with contextlib.suppress(RuntimeError):
        reader = sitk.ImageFileReader()
        reader.SetFileName(files[0])
        reader.ReadImageInformation()
        if reader.HasMetaDataKey(_SERIES_DESCRIPTION):
            description = reader.GetMetaData(_SERIES_DESCRIPTION).strip()
    return f"{uid}{f' {description!r}' if description else ''} ({len(files)} files)"


def dicom_series(folder: str | os.PathLike) -> list[str]:
    """The DICOM files of the one series in ``folder``, in slice order (GDCM).

    Raises:
        InputError: the folder does not exist, holds no DICOM series, or holds several (named).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(folder, "folder not found")
    uids = list(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)))
    if not uids:
        raise InputError(folder, "no DICOM series in this folder (expected the files of one series)")
    if len(uids) > 1:
        listed = "; ".join(_series_label(folder, uid) for uid in uids)
        raise InputError(
            folder, f"{len(uids)} DICOM series in this folder: {listed}; put each series in its own folder"
        )
    return list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uids[0]))


def read_scan(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read and validate one 3-D scan: NIfTI, NRRD/MetaImage, or a folder holding one DICOM series.

    Args:
        path: the file, or the folder of the DICOM series.

    Returns:
        ``(array (X, Y, Z) float32, RAS affine)``, as :func:`~pddpm_monai.utils.read_nifti`.

    Raises:
        InputError: naming ``path``: not found, an unknown suffix, unreadable, no or several DICOM
            series, not 3-D, NaN/Inf voxels, all zeros.
    """
    path = Path(path)
    if path.is_dir():
        reader, what = sitk.ImageSeriesReader(), "DICOM series"
        reader.SetFileNames(dicom_series(path))
    elif not path.exists():
        raise InputError(path, "file not found")
    elif is_nifti(path):
        return read_nifti(path)
    elif not str(path).lower().endswith(ITK_SUFFIXES):
        raise InputError(
            path,
            f"unsupported scan format: expected {', '.join(SCAN_SUFFIXES)} or a folder holding one DICOM series",
        )
    else:
        reader, what = sitk.ImageFileReader(), "image"
        reader.SetFileName(str(path))
    try:
        image = reader.Execute()
    except RuntimeError as err:
        first = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
        raise InputError(path, f"not a readable {what} ({first})") from None
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(
            path, f"expected a scalar image, got {image.GetNumberOfComponentsPerPixel()} components"
        )
    if image.GetDimension() != 3:
        raise InputError(path, f"expected a 3-D image, got a {image.GetDimension()}-D one")
    return checked_volume(path, *sitk_to_array(image))


def scan_name(path: str | os.PathLike) -> str:
    """The scan's file name without ``.nii.gz`` / ``.nii`` / its suffix, or the DICOM folder's name.

    (The prefix of ``pddpm detect``'s outputs and of a scan's preprocessing cache.)
    """
    name = Path(path).name
    if Path(path).is_dir():
        return name
    for suffix in NIFTI_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


def scan_as_nifti(path: str | os.PathLike, out: str | os.PathLike) -> Path:
    """``path`` itself when it is NIfTI, else the scan converted to the NIfTI ``out`` (atomically).

    The conversion keeps the voxels (float32) and the geometry (RAS affine): results computed on
    ``out`` are on the grid of ``path``.
    """
    if is_nifti(path) and Path(path).is_file():
        return Path(path)
    array, affine = read_scan(path)
    return save_nifti(array, affine, out)


class ScanReader(ImageReader):
    """MONAI ``ImageReader`` over :func:`read_scan` (NIfTI, NRRD/MetaImage, a DICOM series folder).

    One scan per call; the array is ``(X, Y, Z)`` float32 with a RAS ``affine`` in the metadata, as
    MONAI's ``NibabelReader`` gives it, so ``LoadImaged(keys, reader=ScanReader())`` can replace the
    default reader in the bundle's inference (and under MONAI Label).
    """

    def verify_suffix(self, filename: Sequence[os.PathLike | str] | os.PathLike | str) -> bool:
        """A folder, or a file with one of :data:`SCAN_SUFFIXES`."""
        return all(is_scan_path(f) for f in ensure_tuple(filename))

    def read(self, data: Sequence[os.PathLike | str] | os.PathLike | str, **kwargs: Any) -> Any:
        """Read the scan (exactly one path)."""
        paths = ensure_tuple(data)
        if len(paths) != 1:
            raise InputError(
                str(paths[0]) if paths else "image", f"expected one scan, got {len(paths)} paths"
            )
        return read_scan(paths[0])

    def get_data(self, img: Any) -> tuple[np.ndarray, dict]:
        """``(array, metadata)`` with ``affine``, ``original_affine``, ``spatial_shape``, ``space``."""
        array, affine = img
        meta = {
            MetaKeys.AFFINE: affine.copy(),
            MetaKeys.ORIGINAL_AFFINE: affine.copy(),
            MetaKeys.SPATIAL_SHAPE: np.asarray(array.shape),
            MetaKeys.SPACE: SpaceKeys.RAS,
            MetaKeys.ORIGINAL_CHANNEL_DIM: float("nan"),
        }
        return array, meta
