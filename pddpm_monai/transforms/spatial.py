"""Resampling to 1 mm in the atlas's orientation, and the crop to the brain box (paper §4.1).

Both steps stay hand-made instead of MONAI's invertible ``Orientationd``/``Spacingd``/crop/pad
with ``Invertd`` (checked 2026-12-02, MONAI 1.6.1), because:

- the way back must outlive the process: ``pddpm preprocess`` writes each subject's record as JSON
  beside its volumes, and ``pddpm detect`` caches the preprocessed scan with its JSON record and
  maps later runs' anomaly maps back from it (:func:`~pddpm_monai.transforms.native.to_native`);
  MONAI's ``applied_operations`` live only on the in-memory ``MetaTensor`` and are lost when the
  volume is saved;
- the numbers would change: ``Spacingd`` spans the voxel centres (``(n - 1) * s + 1`` samples)
  where :func:`resample_to_spacing` keeps the extent (``round(n * s)``), e.g. 119 instead of 120
  slices for the 2 mm-slice head scan of ``shared/data/healthy``, and its interpolation differs by
  up to 8e-6 (relative) on the common voxels, so every later step (registration included) would see
  other input;
- the way back is one resampling: :func:`~pddpm_monai.transforms.native.to_native` composes crop,
  registration and resampling into one SimpleITK ``Resample`` from the data-root grid to the native
  grid, where ``Invertd`` would interpolate twice (the registration's inverse onto the 1 mm grid,
  then ``Spacingd``'s inverse), and the registration (SimpleITK) has no MONAI inverse anyway;
- the crop needs a box at any start (below 0 or past the end: zero padding); MONAI's ``BorderPad``
  then ``SpatialCrop`` give the same values and affine bit for bit, but its inverse must still come
  from the JSON record, so they would replace :func:`crop_or_pad`'s one slice assignment without
  removing any of the record.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import SimpleITK as sitk
from monai.config import KeysCollection
from monai.transforms import MapTransform

from pddpm_monai.transforms.sitk_convert import (
    RECORD_KEY,
    Interp,
    grid_of,
    interpolator,
    metatensor_to_sitk,
    sitk_to_metatensor,
    source_of,
    to_metatensor,
    unpack,
)
from pddpm_monai.utils import InputError

__all__ = ["resample_to_spacing", "brain_box", "crop_or_pad", "ResampleToSpacingd", "CropToBraind"]


def resample_to_spacing(
    img: sitk.Image, spacing: float, *, axcodes: str | None = None, mode: Interp = "linear"
) -> sitk.Image:
    """Reorient ``img`` to ``axcodes`` (nibabel letters, e.g. ``"LAS"``) and resample to isotropic ``spacing``.

    Both steps are exact no-ops when already satisfied (no interpolation of a 1 mm scan).
    """
    if axcodes:
        img = sitk.DICOMOrient(img, axcodes)
    old = np.asarray(img.GetSpacing())
    if np.allclose(old, spacing, atol=1e-3):
        return img
    size = np.maximum(np.round(np.asarray(img.GetSize()) * old / spacing), 1).astype(int)
    return sitk.Resample(
        img, size.tolist(), sitk.Transform(), interpolator(mode), img.GetOrigin(), [float(spacing)] * 3,
        img.GetDirection(), 0.0, img.GetPixelID(),
    )  # fmt: skip


def brain_box(mask: np.ndarray, roi_size: Sequence[int]) -> tuple[int, ...]:
    """Start index of a ``roi_size`` box centred on the bounding box of ``mask`` (may be < 0 or overhang)."""
    idx = np.nonzero(mask)
    lo = np.array([i.min() for i in idx])
    hi = np.array([i.max() for i in idx]) + 1
    return tuple(int(s) for s in (lo + hi) // 2 - np.asarray(roi_size) // 2)


def crop_or_pad(
    array: np.ndarray, affine: np.ndarray, start: Sequence[int], size: Sequence[int]
) -> tuple[np.ndarray, np.ndarray]:
    """Extract ``array[start:start+size]``, zero-padding outside; the affine keeps world positions."""
    out = np.zeros(tuple(size), dtype=array.dtype)
    src = tuple(slice(max(s, 0), min(s + n, d)) for s, n, d in zip(start, size, array.shape))
    dst = tuple(slice(sl.start - s, sl.stop - s) for sl, s in zip(src, start))
    if all(sl.stop > sl.start for sl in src):
        out[dst] = array[src]
    shift = np.eye(4)
    shift[:3, 3] = start
    return out, np.asarray(affine) @ shift


class ResampleToSpacingd(MapTransform):
    """Orient to ``axcodes`` and resample to isotropic ``spacing`` (labels by nearest neighbour).

    Records the native grid of the first key (for :func:`~pddpm_monai.transforms.native.to_native`).

    Args:
        keys: image/label keys.
        spacing: target spacing in mm.
        axcodes: nibabel orientation letters (the atlas's, e.g. ``"LAS"`` for SRI24), ``None`` keeps.
        label_keys: keys resampled by nearest neighbour.
        record_key: where the record lives.
    """

    def __init__(
        self,
        keys: KeysCollection,
        spacing: float = 1.0,
        axcodes: str | None = "RAS",
        label_keys: Sequence[str] = ("mask", "seg"),
        record_key: str = RECORD_KEY,
        allow_missing_keys: bool = True,
    ):
        super().__init__(keys, allow_missing_keys)
        self.spacing, self.axcodes = spacing, axcodes
        self.label_keys, self.record_key = label_keys, record_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict:
        d = dict(data)
        rec = d.setdefault(self.record_key, {})
        for key in self.key_iterator(d):
            img = metatensor_to_sitk(d[key])
            rec.setdefault("native", grid_of(img))
            mode: Interp = "nearest" if key in self.label_keys else "linear"
            d[key] = sitk_to_metatensor(
                resample_to_spacing(img, self.spacing, axcodes=self.axcodes, mode=mode)
            )
        rec.setdefault("steps", []).append("resample")
        return d


class CropToBraind(MapTransform):
    """Crop black borders: a ``roi_size`` box centred on the brain bounding box (zero padding outside).

    The box start goes to the record (``record["crop"]``) and each output's affine keeps world
    positions, so the crop is exactly invertible (:meth:`inverse_array`,
    :func:`~pddpm_monai.transforms.native.to_native`).

    Args:
        keys: keys to crop.
        mask_key: the brain mask whose bounding box centres the crop.
        roi_size: output size (192x192x160).
    """

    def __init__(
        self,
        keys: KeysCollection,
        mask_key: str = "mask",
        roi_size: Sequence[int] = (192, 192, 160),
        record_key: str = RECORD_KEY,
        allow_missing_keys: bool = True,
    ):
        super().__init__(keys, allow_missing_keys)
        self.mask_key, self.roi_size, self.record_key = mask_key, tuple(roi_size), record_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict:
        d = dict(data)
        mask, mask_affine = unpack(d[self.mask_key])
        if not mask.any():
            raise InputError(source_of(d, self.record_key), "empty brain mask: nothing to crop to")
        start = brain_box(mask > 0, self.roi_size)
        for key in self.key_iterator(d):
            arr, aff = unpack(d[key])
            d[key] = to_metatensor(*crop_or_pad(arr, aff, start, self.roi_size))
        shift = np.eye(4)
        shift[:3, 3] = start
        rec = d.setdefault(self.record_key, {})
        rec["crop"] = {"start": list(start), "size": list(self.roi_size), "source_shape": list(mask.shape)}
        rec["root_grid"] = {"shape": list(self.roi_size), "affine": (mask_affine @ shift).tolist()}
        rec.setdefault("steps", []).append("crop")
        return d

    @staticmethod
    def inverse_array(array: np.ndarray, crop: Mapping[str, Any]) -> np.ndarray:
        """Put a cropped ``array`` back on the grid it was cropped from (zeros elsewhere)."""
        neg = [-s for s in crop["start"]]
        return crop_or_pad(np.asarray(array), np.eye(4), neg, crop["source_shape"])[0]
