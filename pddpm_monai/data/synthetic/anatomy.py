"""Raw material of the synthetic cohort: nilearn's bundled MNI152 maps turned into a T2-like template.

nilearn ships the ICBM152 2009a template, its GM and WM probability maps and a brain mask inside the
package (offline). CSF is what the brain mask holds beyond GM and WM (ventricles, sulci, the
extra-axial rim). The template grid is padded so that a skull and scalp fit around the brain.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from pddpm_monai.data.synthetic.config import AnatomyConfig, TissueContrast

__all__ = ["Atlas", "load_atlas", "t2_contrast"]


@dataclass(frozen=True)
class Atlas:
    """Tissue maps on the (padded) template grid, 1 voxel = ``resolution_mm`` mm, RAS+ axes.

    Attributes:
        gm, wm, csf: tissue probabilities (float32).
        mask: brain mask (float32, 0/1).
        dist_out: distance (mm) from the brain surface outside the brain, 0 inside.
        dist_ventricle: distance (mm) from the ventricles.
        affine: voxel -> MNI mm of the padded grid.
        ventricle_centre: centroid of the ventricles (MNI mm).
        brain_box: ``(lo, hi)`` voxel bounds of the brain mask on the padded grid.
        pad: padding (voxels) added on each side of nilearn's grid.
    """

    gm: np.ndarray
    wm: np.ndarray
    csf: np.ndarray
    mask: np.ndarray
    dist_out: np.ndarray
    dist_ventricle: np.ndarray
    affine: np.ndarray
    ventricle_centre: np.ndarray
    brain_box: tuple[np.ndarray, np.ndarray]
    pad: int

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.mask.shape)  # type: ignore[return-value]

    @property
    def mni_shape(self) -> tuple[int, int, int]:
        """Shape of nilearn's unpadded grid (the cohort's atlas space)."""
        return tuple(s - 2 * self.pad for s in self.mask.shape)  # type: ignore[return-value]

    @property
    def mni_affine(self) -> np.ndarray:
        """Affine of nilearn's unpadded grid (the cohort's atlas space)."""
        aff = self.affine.copy()
        aff[:3, 3] = self.affine[:3, :3] @ np.full(3, self.pad) + self.affine[:3, 3]
        return aff


#: distance maps are computed on a grid this many times coarser, then upsampled (8x less work)
_EDT_STEP = 2


def _coarse_edt(foreground: np.ndarray, resolution_mm: float) -> np.ndarray:
    """Euclidean distance (mm) to the nearest background voxel, computed on a coarser grid."""
    import torch
    import torch.nn.functional as F

    coarse = foreground[::_EDT_STEP, ::_EDT_STEP, ::_EDT_STEP]
    dist = ndimage.distance_transform_edt(coarse, sampling=(resolution_mm * _EDT_STEP,) * 3)
    size = [(n - 1) * _EDT_STEP + 1 for n in coarse.shape]
    full = F.interpolate(torch.as_tensor(dist, dtype=torch.float32)[None, None], size=size, mode="trilinear", align_corners=True)
    out = np.zeros(foreground.shape, dtype=np.float32)
    crop = tuple(slice(0, min(a, b)) for a, b in zip(size, foreground.shape))
    out[crop] = full[0, 0].numpy()[crop]
    return out


#: ventricles: CSF probability above this, deeper than ``_VENTRICLE_DEPTH_MM`` inside the brain
_VENTRICLE_CSF = 0.5
_VENTRICLE_DEPTH_MM = 12.0


@functools.lru_cache(maxsize=2)
def load_atlas(resolution_mm: int = AnatomyConfig.resolution_mm, pad_mm: int = AnatomyConfig.pad_mm) -> Atlas:
    """Load nilearn's MNI152 maps (offline) and derive CSF, distances and the ventricles (cached).

    Args:
        resolution_mm: 1 or 2 (nilearn ships both).
        pad_mm: margin (mm) added on each side for the skull and scalp.

    Returns:
        the :class:`Atlas`.
    """
    from nilearn import datasets

    mask_img = datasets.load_mni152_brain_mask(resolution=resolution_mm)
    pad = int(round(pad_mm / resolution_mm))

    def _load(img) -> np.ndarray:
        return np.pad(np.asarray(img.get_fdata(), dtype=np.float32), pad)

    mask = (_load(mask_img) > 0.5).astype(np.float32)
    gm = _load(datasets.load_mni152_gm_template(resolution=resolution_mm)) * mask
    wm = _load(datasets.load_mni152_wm_template(resolution=resolution_mm)) * mask
    csf = np.clip(1.0 - gm - wm, 0.0, 1.0) * mask
    affine = np.asarray(mask_img.affine, dtype=np.float64).copy()
    affine[:3, 3] -= affine[:3, :3] @ np.full(3, pad)
    inside = mask > 0
    dist_out = _coarse_edt(~inside, resolution_mm)
    depth = _coarse_edt(inside, resolution_mm)
    ventricles = (csf > _VENTRICLE_CSF) & (depth > _VENTRICLE_DEPTH_MM)
    dist_ventricle = _coarse_edt(~ventricles, resolution_mm)
    centre_vox = np.argwhere(ventricles).mean(axis=0)
    idx = np.argwhere(inside)
    return Atlas(
        gm=gm,
        wm=wm,
        csf=csf,
        mask=mask,
        dist_out=dist_out,
        dist_ventricle=dist_ventricle,
        affine=affine,
        ventricle_centre=affine[:3, :3] @ centre_vox + affine[:3, 3],
        brain_box=(idx.min(axis=0), idx.max(axis=0) + 1),
        pad=pad,
    )


def t2_contrast(atlas: Atlas, contrast: TissueContrast = TissueContrast()) -> np.ndarray:
    """T2-weighted template in units of white matter: CSF bright, GM intermediate, WM darker.

    Partial volume follows from the tissue probabilities (a voxel's intensity is their weighted sum).
    """
    return (contrast.wm * atlas.wm + contrast.gm * atlas.gm + contrast.csf * atlas.csf).astype(np.float32)
