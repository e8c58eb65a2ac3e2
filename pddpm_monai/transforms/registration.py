"""Affine registration to the atlas (paper §4.1): SimpleITK Mattes MI, seeded, on fixed ITK threads.

The only custom spatial step of the chain (see :mod:`pddpm_monai.transforms.spatial` for why the
others are not MONAI's invertible transforms either); its transform goes to the record as plain
JSON (:func:`transform_record`) for :func:`~pddpm_monai.transforms.native.to_native`.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Hashable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import SimpleITK as sitk
from monai.config import KeysCollection
from monai.transforms import MapTransform

from pddpm_monai.transforms.config import PreprocessConfig
from pddpm_monai.transforms.sitk_convert import (
    RECORD_KEY,
    Interp,
    array_to_sitk,
    grid_of,
    interpolator,
    metatensor_to_sitk,
    sitk_to_metatensor,
    source_of,
    unpack,
)
from pddpm_monai.utils import PddpmError

__all__ = [
    "RegistrationError",
    "itk_threads",
    "register_affine",
    "transform_record",
    "transform_from_record",
    "RegisterToAtlasd",
]


class RegistrationError(PddpmError):
    """A registration whose quality checks failed: reported, never written."""


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


def transform_record(tx: sitk.AffineTransform) -> dict[str, list[float]]:
    """The plain-JSON form of an affine transform (its parameters and fixed parameters)."""
    return {"parameters": list(tx.GetParameters()), "fixed_parameters": list(tx.GetFixedParameters())}


def transform_from_record(rec: Mapping[str, Any] | None) -> sitk.Transform:
    """The transform of :func:`transform_record`'s output; the identity for ``None`` (no registration)."""
    if not rec:
        return sitk.Transform()
    tx = sitk.AffineTransform(3)
    tx.SetFixedParameters(rec["fixed_parameters"])
    tx.SetParameters(rec["parameters"])
    return tx


class RegisterToAtlasd(MapTransform):
    """Affine registration of ``image_key`` to the atlas; all ``keys`` are resampled onto the atlas grid.

    The image is registered with its brain mask applied; label keys follow by nearest neighbour. The
    transform and quality figures go to the record; a registration failing the checks of ``config``
    (final metric, Dice and volume ratio of the brain mask against the atlas mask) raises
    :class:`RegistrationError` instead of writing a misaligned volume.

    Args:
        keys: keys to resample (``("t2", "mask", "seg")``).
        atlas: a :class:`~pddpm_monai.transforms.atlas.Atlas` (anything with ``image`` and ``mask``).
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
        moving = metatensor_to_sitk(d[self.image_key])
        if self.mask_key in d:
            moving = sitk.Mask(
                sitk.Cast(moving, sitk.sitkFloat32),
                sitk.Cast(metatensor_to_sitk(d[self.mask_key]), sitk.sitkUInt8),
            )
        tx, metric = register_affine(fixed, moving, self.config)
        for key in self.key_iterator(d):
            mode: Interp = "nearest" if key in self.label_keys else "linear"
            src = metatensor_to_sitk(d[key])
            out = sitk.Resample(src, fixed, tx, interpolator(mode), 0.0, src.GetPixelID())
            d[key] = sitk_to_metatensor(out)
        rec = d.setdefault(self.record_key, {})
        qc = self._check(d, metric, source_of(d, self.record_key))
        rec["registration"] = {**transform_record(tx), "metric": metric, **qc}
        rec["atlas_grid"] = grid_of(fixed)
        rec.setdefault("steps", []).append("register")
        rec.setdefault("seconds", {})["register"] = round(time.perf_counter() - start, 2)
        return d

    def _check(self, d: dict, metric: float, source: str) -> dict[str, float]:
        cfg = self.config
        atlas_mask = self.atlas.mask
        moved = unpack(d[self.mask_key if self.mask_key in d else self.image_key])[0] > 0
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
