"""Test helper: write a 3-D volume as a DICOM series with SimpleITK (one file per axial slice)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from pddpm_monai.transforms.sitk_convert import array_to_sitk

#: a DICOM UID root for test data (2.25 = UUID-derived UIDs)
UID_ROOT = "2.25.1234567"


def write_dicom_series(
    array: np.ndarray,
    affine: np.ndarray,
    folder: str | Path,
    *,
    series: int = 1,
    description: str = "T2 AX",
    prefix: str = "IM",
) -> Path:
    """Write ``array`` (nibabel order, integer-valued) with the RAS ``affine`` as an MR DICOM series.

    The geometry goes into ImagePositionPatient / ImageOrientationPatient / PixelSpacing per slice,
    as a scanner export has it; the voxels are stored as int16 (so they must be integers).

    Returns:
        the folder.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    volume = array_to_sitk(np.asarray(array).astype(np.int16), affine)
    d = volume.GetDirection()  # row-major 3x3 in LPS; column c is the direction of index axis c
    orientation = "\\".join(repr(float(v)) for v in (d[0], d[3], d[6], d[1], d[4], d[7]))
    series_uid = f"{UID_ROOT}.{series}"
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(volume.GetDepth()):
        image = volume[:, :, k]
        tags = {
            "0008|0060": "MR",
            "0008|103e": description,
            "0020|000d": f"{UID_ROOT}.99",
            "0020|000e": series_uid,
            "0020|0011": str(series),
            "0008|0018": f"{series_uid}.{k + 1}",
            "0020|0013": str(k + 1),
            "0020|0037": orientation,
            "0020|0032": "\\".join(repr(float(v)) for v in volume.TransformIndexToPhysicalPoint((0, 0, k))),
        }
        for tag, value in tags.items():
            image.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"{prefix}{series}_{k:04d}.dcm"))
        writer.Execute(image)
    return folder
