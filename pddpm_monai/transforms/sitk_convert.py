"""Conversion between nibabel-ordered arrays, SimpleITK images and MONAI ``MetaTensor`` s; the record.

The preprocessing steps hold their logic in functions on SimpleITK images and run as MONAI
dictionary transforms on channel-first ``(1, X, Y, Z)`` :class:`monai.data.MetaTensor` values whose
``affine`` (RAS, as nibabel) carries the geometry. SimpleITK works in LPS world coordinates with
the ``(Z, Y, X)`` array order: :func:`array_to_sitk` and :func:`sitk_to_array` convert exactly.

Each step appends what it did to a plain-JSON record (``d[RECORD_KEY]``) that
:func:`~pddpm_monai.transforms.native.to_native` reads to map results back to the native scan.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import numpy as np
import SimpleITK as sitk
import torch
from monai.data import MetaTensor

__all__ = [
    "RECORD_KEY",
    "Interp",
    "array_to_sitk",
    "sitk_to_array",
    "to_metatensor",
    "unpack",
    "metatensor_to_sitk",
    "sitk_to_metatensor",
    "grid_of",
    "interpolator",
    "source_of",
]

Interp = Literal["linear", "nearest"]
#: where the preprocessing steps keep their plain-JSON record in the data dict
RECORD_KEY = "record"
#: RAS (nibabel) <-> LPS (ITK) world coordinates
_RAS_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


def array_to_sitk(array: np.ndarray, affine: np.ndarray) -> sitk.Image:
    """A SimpleITK image of a nibabel-ordered ``(X, Y, Z)`` array with a RAS ``affine``."""
    arr = np.asarray(array)
    img = sitk.GetImageFromArray(np.ascontiguousarray(arr.transpose(2, 1, 0)))
    lps = _RAS_LPS @ np.asarray(affine, dtype=np.float64)
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    img.SetSpacing(spacing.tolist())
    img.SetDirection((lps[:3, :3] / spacing).flatten().tolist())
    img.SetOrigin(lps[:3, 3].tolist())
    return img


def sitk_to_array(img: sitk.Image) -> tuple[np.ndarray, np.ndarray]:
    """``(array (X, Y, Z), RAS affine)`` of a SimpleITK image (inverse of :func:`array_to_sitk`)."""
    return sitk.GetArrayFromImage(img).transpose(2, 1, 0), _affine_of(img)


def to_metatensor(array: np.ndarray, affine: np.ndarray) -> MetaTensor:
    """A channel-first ``(1, X, Y, Z)`` MetaTensor carrying ``affine``."""
    return MetaTensor(torch.as_tensor(np.ascontiguousarray(array))[None], affine=torch.as_tensor(affine))


def unpack(value: Any) -> tuple[np.ndarray, np.ndarray]:
    """``(array (X, Y, Z), affine)`` of a ``(1, X, Y, Z)`` (or ``(X, Y, Z)``) MetaTensor."""
    if not isinstance(value, MetaTensor):
        raise TypeError("preprocessing transforms expect MetaTensor values (use load_subject or LoadImaged)")
    arr = value.detach().cpu().numpy()
    if arr.ndim == 4:
        arr = arr[0]
    return arr, np.asarray(value.affine, dtype=np.float64)


def metatensor_to_sitk(value: Any) -> sitk.Image:
    """The SimpleITK image of a MetaTensor (see :func:`unpack`)."""
    return array_to_sitk(*unpack(value))


def sitk_to_metatensor(img: sitk.Image, dtype: type | None = None) -> MetaTensor:
    """The ``(1, X, Y, Z)`` MetaTensor of a SimpleITK image, optionally cast to ``dtype``."""
    arr, aff = sitk_to_array(img)
    return to_metatensor(arr if dtype is None else arr.astype(dtype), aff)


def _affine_of(img: sitk.Image) -> np.ndarray:
    lps = np.eye(4)
    lps[:3, :3] = np.asarray(img.GetDirection()).reshape(3, 3) @ np.diag(img.GetSpacing())
    lps[:3, 3] = img.GetOrigin()
    return _RAS_LPS @ lps


def grid_of(img: sitk.Image) -> dict[str, list]:
    """The plain-JSON grid of an image: ``{"shape", "affine"}``."""
    return {"shape": list(img.GetSize()), "affine": _affine_of(img).tolist()}


def interpolator(mode: Interp) -> int:
    """The SimpleITK interpolator of ``mode``."""
    return sitk.sitkNearestNeighbor if mode == "nearest" else sitk.sitkLinear


def source_of(d: Mapping, key: str = RECORD_KEY) -> str:
    """The scan's file name for error messages (the record's ``source``)."""
    return str(d.get(key, {}).get("source", "<scan>"))
