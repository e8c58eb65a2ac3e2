"""Mapping results on the data-root grid back onto the native scan, from the plain-JSON record.

The record (``native`` grid, ``registration`` transform, ``root_grid``) is what the chain writes
(:mod:`pddpm_monai.transforms.chain`) and what ``pddpm preprocess`` and ``pddpm detect`` keep on
disk; why this is not MONAI's ``Invertd`` is in :mod:`pddpm_monai.transforms.spatial`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch

from pddpm_monai.transforms.registration import transform_from_record
from pddpm_monai.transforms.sitk_convert import Interp, array_to_sitk, interpolator, sitk_to_array
from pddpm_monai.utils import InputError

__all__ = ["to_native"]


def to_native(
    volume: np.ndarray | torch.Tensor, record: Mapping[str, Any], *, mode: Interp = "linear"
) -> tuple[np.ndarray, np.ndarray]:
    """Map a volume on the data-root grid (e.g. an anomaly map) back onto the native scan grid.

    Args:
        volume: an array of ``record["root_grid"]["shape"]`` (a leading channel axis is dropped).
        record: the subject record written by the preprocessing.
        mode: ``"linear"`` for maps, ``"nearest"`` for label maps.

    Returns:
        ``(array, affine)`` with the native scan's shape and affine.
    """
    arr = np.asarray(volume.detach().cpu() if isinstance(volume, torch.Tensor) else volume, dtype=np.float32)
    while arr.ndim > 3 and arr.shape[0] == 1:
        arr = arr[0]
    root = record["root_grid"]
    if list(arr.shape) != list(root["shape"]):
        raise InputError("volume", f"shape {arr.shape} is not the preprocessed grid {tuple(root['shape'])}")
    moving = array_to_sitk(arr, np.asarray(root["affine"]))
    native = record["native"]
    reference = array_to_sitk(np.zeros(native["shape"], np.uint8), np.asarray(native["affine"]))
    forward = transform_from_record(record.get("registration"))
    inverse = forward.GetInverse() if record.get("registration") else forward
    out = sitk.Resample(moving, reference, inverse, interpolator(mode), 0.0, sitk.sitkFloat32)
    return sitk_to_array(out)[0], np.asarray(native["affine"])
