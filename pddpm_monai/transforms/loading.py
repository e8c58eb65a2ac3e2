"""Loading a data-root volume onto the model grid (DESIGN.md, data flow step 4).

As the authors do at load time: SimpleITK ``CurvatureFlow`` (time step 0.125, 3 iterations) on
the image, crop/pad to 192x192x100 (drops the 30 top and bottom slices of 160), rescale to [0, 1]
with the 1st/99th percentile inside the brain mask (clipped, as TorchIO's ``RescaleIntensity``),
downsample by 2 (96x96x50; cubic B-spline for the image, nearest neighbour for mask and seg).
Axial slices are along the last axis.

Example:
    >>> load = model_grid_transforms(keys=("image", "mask", "seg"))  # doctest: +SKIP
    >>> item = load({"image": "root/Test/Brats21/t2/BraTS2021_00000_t2.nii.gz", ...})  # doctest: +SKIP
    >>> item["image"].shape  # doctest: +SKIP
    torch.Size([1, 96, 96, 50])
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import (
    Compose,
    EnsureChannelFirstd,
    EnsureTyped,
    LoadImaged,
    MapTransform,
    ResizeWithPadOrCropd,
    Spacingd,
    Transform,
)

from pddpm_monai.utils import InputError, PddpmError

__all__ = [
    "ModelGridConfig",
    "CurvatureFlow",
    "CurvatureFlowd",
    "MaskedPercentileRescale",
    "MaskedPercentileRescaled",
    "source_name",
    "ValidateVolumed",
    "BinarizeLabelsd",
    "model_grid_transforms",
    "InputCheckedCompose",
]


@dataclass(frozen=True)
class ModelGridConfig:
    """Every default of loading a data-root volume onto the model grid (the authors' values)."""

    curvature_time_step: float = 0.125
    curvature_iterations: int = 3
    crop_size: tuple[int, int, int] = (192, 192, 100)
    percentiles: tuple[float, float] = (1.0, 99.0)
    downsample: float = 2.0
    image_spline_order: int = 3


class CurvatureFlow(Transform):
    """Edge-preserving smoothing with SimpleITK ``CurvatureFlow`` on a channel-first 3-D image.

    Args:
        time_step: the filter's time step (authors: 0.125).
        iterations: number of iterations (authors: 3).
    """

    def __init__(self, time_step: float = 0.125, iterations: int = 3):
        self.time_step, self.iterations = time_step, iterations

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        arr = img.detach().cpu().numpy().astype(np.float32)
        out = np.empty_like(arr)
        for c in range(arr.shape[0]):
            # SimpleITK is z-y-x; transpose there and back so the result lines up with the input
            itk = sitk.GetImageFromArray(arr[c].transpose(2, 1, 0))
            smoothed = sitk.CurvatureFlow(itk, timeStep=self.time_step, numberOfIterations=self.iterations)
            out[c] = sitk.GetArrayFromImage(smoothed).transpose(2, 1, 0)
        res = torch.as_tensor(out, device=img.device)
        return MetaTensor(res, meta=img.meta) if isinstance(img, MetaTensor) else res


class CurvatureFlowd(MapTransform):
    """Dictionary wrapper of :class:`CurvatureFlow`."""

    def __init__(
        self, keys: KeysCollection, time_step: float = 0.125, iterations: int = 3, allow_missing_keys=False
    ):
        super().__init__(keys, allow_missing_keys)
        self.filter = CurvatureFlow(time_step, iterations)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.filter(d[key])
        return d


class MaskedPercentileRescale(Transform):
    """Rescale to [0, 1] between the given percentiles of the voxels inside a mask, clipping outside.

    Args:
        lower: lower percentile (authors: 1).
        upper: upper percentile (authors: 99).

    An empty mask falls back to the whole image's nonzero voxels (as TorchIO does when the mask
    is empty, it uses every voxel); callers that must refuse empty masks validate first
    (:class:`ValidateVolumed`).
    """

    def __init__(self, lower: float = 1.0, upper: float = 99.0):
        self.lower, self.upper = lower, upper

    def __call__(self, img: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        inside = img[mask > 0] if mask is not None and bool((mask > 0).any()) else img[img != 0]
        if inside.numel() == 0:
            return torch.zeros_like(img)
        q = torch.tensor([self.lower, self.upper], dtype=torch.float32) / 100.0
        lo, hi = torch.quantile(inside.float(), q).tolist()
        if hi <= lo:
            return torch.zeros_like(img)
        return ((img - lo) / (hi - lo)).clamp(0.0, 1.0)


class MaskedPercentileRescaled(MapTransform):
    """Dictionary wrapper of :class:`MaskedPercentileRescale`; the mask is read from ``mask_key``."""

    def __init__(
        self,
        keys: KeysCollection,
        mask_key: str = "mask",
        lower: float = 1.0,
        upper: float = 99.0,
        allow_missing_keys: bool = False,
    ):
        super().__init__(keys, allow_missing_keys)
        self.mask_key = mask_key
        self.rescale = MaskedPercentileRescale(lower, upper)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.rescale(d[key], d.get(self.mask_key))
        return d


def source_name(img: Any, fallback: str = "<scan>") -> str:
    """The file a loaded volume came from (its ``filename_or_obj`` metadata), for error messages."""
    meta = getattr(img, "meta", None) or {}
    return str(meta.get("filename_or_obj", fallback))


class ValidateVolumed(MapTransform):
    """Refuse bad volumes with one-line :class:`~pddpm_monai.utils.InputError` naming the file.

    Checks: 3-D single-channel, finite, image not all zero, mask not empty, every key on the image's
    grid (shape and affine), seg labels within ``seg_labels`` when given.

    Args:
        keys: keys to check; the first is the reference image.
        mask_key: key of the brain mask (must be non-empty).
        seg_key: key of the lesion segmentation.
        seg_labels: allowed label values of the segmentation (BraTS: 0, 1, 2, 4); ``None`` = any.
    """

    def __init__(
        self,
        keys: KeysCollection,
        mask_key: str | None = "mask",
        seg_key: str | None = "seg",
        seg_labels: Sequence[int] | None = (0, 1, 2, 3, 4),
        allow_missing_keys: bool = True,
    ):
        super().__init__(keys, allow_missing_keys)
        self.mask_key, self.seg_key = mask_key, seg_key
        self.seg_labels = None if seg_labels is None else set(seg_labels)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        ref_key = None
        for key in self.key_iterator(d):
            img = d[key]
            src = source_name(img, str(key))
            if img.ndim != 4 or img.shape[0] != 1:
                raise InputError(src, f"expected a single-channel 3-D scan, got shape {tuple(img.shape)}")
            if not torch.isfinite(img).all():
                raise InputError(src, "image contains NaN/Inf voxels")
            if ref_key is None:
                ref_key = key
                if not bool((img != 0).any()):
                    raise InputError(src, "image is all zeros")
                continue
            ref = d[ref_key]
            if img.shape != ref.shape:
                raise InputError(
                    src, f"grid mismatch: shape {tuple(img.shape[1:])} vs image {tuple(ref.shape[1:])}"
                )
            aff, ref_aff = getattr(img, "affine", None), getattr(ref, "affine", None)
            if aff is not None and ref_aff is not None and not torch.allclose(aff, ref_aff, atol=1e-3):
                raise InputError(src, "grid mismatch: affine differs from the image's")
            if key == self.mask_key and not bool((img > 0).any()):
                raise InputError(src, "brain mask is empty")
            if key == self.seg_key and self.seg_labels is not None:
                labels = {int(v) for v in torch.unique(img).tolist()}
                if not labels <= self.seg_labels:
                    raise InputError(src, f"unexpected seg labels {sorted(labels - self.seg_labels)}")
        return d


class BinarizeLabelsd(MapTransform):
    """Set the given label maps to ``float(x > 0)`` (any BraTS label > 0 is tumour).

    Not MONAI's ``AsDiscreted(threshold=t)``, which keeps ``x >= t``: no ``t`` gives ``x > 0`` for
    every float input.
    """

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = (d[key] > 0).to(torch.float32)
        return d


class InputCheckedCompose(Compose):
    """A ``Compose`` that re-raises a :class:`~pddpm_monai.utils.PddpmError` unwrapped.

    MONAI wraps every exception raised inside a transform in ``RuntimeError("applying transform
    ...")``; for user-facing errors (bad input, a failed registration) we want the one-line
    message itself.
    """

    def __call__(self, input_, *args, **kwargs):
        try:
            return super().__call__(input_, *args, **kwargs)
        except RuntimeError as err:
            cause = err
            while cause is not None and not isinstance(cause, PddpmError):
                cause = cause.__cause__
            if cause is None:
                raise
            raise cause from None


def model_grid_transforms(
    keys: Sequence[str] = ("image", "mask"),
    *,
    config: ModelGridConfig = ModelGridConfig(),
    load: bool = True,
    smooth: bool = True,
) -> Compose:
    """Transforms that load a data-root subject onto the model grid (96x96x50 by default).

    Args:
        keys: ``"image"`` first, then any of ``"mask"``, ``"seg"`` (label maps; missing keys allowed).
        config: the grid and intensity settings.
        load: start with ``LoadImaged`` (paths in, tensors out); ``False`` when tensors come in.
        smooth: apply ``CurvatureFlow`` to the image (the authors' loader does).

    Returns:
        a MONAI ``Compose``; outputs are channel-first ``MetaTensor`` s whose affines describe the
        model grid, images in [0, 1], mask/seg binary.
    """
    keys = tuple(keys)
    labels = tuple(k for k in keys if k != "image")
    factor = config.downsample
    steps: list = []
    if load:
        steps += [
            LoadImaged(keys, image_only=True, allow_missing_keys=True),
            EnsureChannelFirstd(keys, channel_dim="no_channel", allow_missing_keys=True),
        ]
    steps += [
        EnsureTyped(keys, dtype=torch.float32, track_meta=True, allow_missing_keys=True),
        ValidateVolumed(keys),
    ]
    if smooth:
        steps.append(CurvatureFlowd("image", config.curvature_time_step, config.curvature_iterations))
    steps += [
        ResizeWithPadOrCropd(keys, spatial_size=config.crop_size, allow_missing_keys=True),
        MaskedPercentileRescaled(
            "image", mask_key="mask", lower=config.percentiles[0], upper=config.percentiles[1]
        ),
    ]
    if factor != 1:
        steps.append(_RelativeSpacingd("image", factor, config.image_spline_order))
        if labels:
            steps.append(_RelativeSpacingd(labels, factor, "nearest"))
    if labels:
        steps.append(BinarizeLabelsd(labels, allow_missing_keys=True))
    return InputCheckedCompose(steps)


class _RelativeSpacingd(MapTransform):
    """Resample each key to ``factor`` times its own voxel spacing (TorchIO ``Resample(factor)`` on 1 mm data)."""

    def __init__(self, keys: KeysCollection, factor: float, mode):
        super().__init__(keys, allow_missing_keys=True)
        self.factor, self.mode = factor, mode

    def __call__(self, data):
        d = dict(data)
        for key in self.key_iterator(d):
            spacing = np.sqrt((np.asarray(d[key].affine[:3, :3], dtype=np.float64) ** 2).sum(0))
            spacer = Spacingd(key, pixdim=tuple(spacing * self.factor), mode=self.mode, padding_mode="border")
            # pass only this key: Spacingd treats any other "<key>_*" entry as a meta dict to update
            d[key] = spacer({key: d[key]})[key]
        return d
