"""Every setting of the §4.1 preprocessing chain (:class:`PreprocessConfig`) and the HD-BET device type."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["Device", "PreprocessConfig"]

Device = Literal["cpu", "cuda"]


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
            :func:`~pddpm_monai.transforms.registration.register_affine` passes ``reg_seed + 1``.
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
