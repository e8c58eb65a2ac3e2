"""Raw material of the synthetic cohort: nilearn's bundled MNI152 maps turned into a T2-like template.

nilearn ships the ICBM152 2009a template, its GM and WM probability maps and a brain mask inside the
package (offline). CSF is what the brain mask holds beyond GM and WM (ventricles, sulci, the
extra-axial rim). The template grid is padded so that a skull and scalp fit around the brain.
"""

from __future__ import annotations

import functools
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F
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
        dist_ventricle: distance (mm) from the ventricles, on the grid strided by ``EDT_STEP``.
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


#: distance maps are computed on a grid this many times coarser (8x less work)
EDT_STEP = 2
_COARSE = (slice(None, None, EDT_STEP),) * 3
#: nilearn's brain mask: the template (scaled to max 1) above this (``load_mni152_brain_mask``)
_MASK_THRESHOLD = 0.2
#: nilearn's bundled ICBM152 2009a files (1 mm)
_MNI_FILES = {
    "t1": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
    "gm": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
    "wm": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
}


def _mni152_maps(resolution_mm: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """T1 template, GM and WM maps scaled to [0, 1] (float32) and their affine.

    At 1 mm the files bundled in nilearn are read directly with nibabel (as nilearn's
    ``load_mni152_*`` do, without importing nilearn, which takes seconds); other resolutions go
    through nilearn's loaders.
    """
    if resolution_mm == 1:
        spec = importlib.util.find_spec("nilearn")
        if spec is None or not spec.submodule_search_locations:
            raise ImportError("nilearn is required for the synthetic cohort (pip install nilearn)")
        folder = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data"
        imgs = [nib.load(str(folder / _MNI_FILES[k])) for k in ("t1", "gm", "wm")]
    else:
        from nilearn import datasets

        imgs = [
            datasets.load_mni152_template(resolution=resolution_mm),
            datasets.load_mni152_gm_template(resolution=resolution_mm),
            datasets.load_mni152_wm_template(resolution=resolution_mm),
        ]
    arrays = []
    for img in imgs:
        data = np.asarray(img.dataobj, dtype=np.float32)
        arrays.append(data / data.max())
    return arrays[0], arrays[1], arrays[2], np.asarray(imgs[0].affine, dtype=np.float64)


def _coarse_edt(foreground: np.ndarray, resolution_mm: float) -> np.ndarray:
    """Euclidean distance (mm) to the nearest background voxel, on the grid strided by ``EDT_STEP``."""
    return ndimage.distance_transform_edt(
        foreground[_COARSE], sampling=(resolution_mm * EDT_STEP,) * 3
    ).astype(np.float32)


def _upsample(coarse: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Trilinear upsampling of a map on the ``EDT_STEP``-strided grid back to the full ``shape``."""
    size = [(n - 1) * EDT_STEP + 1 for n in coarse.shape]
    full = F.interpolate(torch.as_tensor(coarse)[None, None], size=size, mode="trilinear", align_corners=True)
    out = np.zeros(shape, dtype=np.float32)
    crop = tuple(slice(0, min(a, b)) for a, b in zip(size, shape))
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
    pad = int(round(pad_mm / resolution_mm))
    t1, gm, wm, affine = _mni152_maps(resolution_mm)
    t1, gm, wm = (np.pad(a, pad) for a in (t1, gm, wm))
    mask = (t1 > _MASK_THRESHOLD).astype(np.float32)
    gm, wm = gm * mask, wm * mask
    csf = np.clip(1.0 - gm - wm, 0.0, 1.0) * mask
    affine = affine.copy()
    affine[:3, 3] -= affine[:3, :3] @ np.full(3, pad)
    inside = mask > 0
    dist_out = _upsample(_coarse_edt(~inside, resolution_mm), inside.shape)
    depth = _coarse_edt(inside, resolution_mm)
    ventricles = (csf[_COARSE] > _VENTRICLE_CSF) & (depth > _VENTRICLE_DEPTH_MM)
    dist_ventricle = ndimage.distance_transform_edt(~ventricles, sampling=(resolution_mm * EDT_STEP,) * 3)
    centre_vox = np.argwhere(ventricles).mean(axis=0) * EDT_STEP
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

    The MNI152 maps average 152 brains, so few voxels are pure tissue; raising the probabilities to
    ``contrast.sharpness`` and renormalising makes them individual-like (three separated histogram
    modes, as in a real scan) while partial volume still follows from the sharpened probabilities.
    """
    probs = np.stack([atlas.csf, atlas.gm, atlas.wm]) ** contrast.sharpness
    total = probs.sum(axis=0)
    probs /= np.where(total > 0, total, 1.0)
    levels = np.array([contrast.csf, contrast.gm, contrast.wm], dtype=np.float32)
    return (np.tensordot(levels, probs, axes=1) * atlas.mask).astype(np.float32)
