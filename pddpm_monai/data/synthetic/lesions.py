"""Lesions painted into a rendered atlas-space subject: BraTS-like tumours and MS-like ovoids.

A lesion is an ellipsoid (irregular for tumours) defined in the subject's frame; its compartments
replace the tissue intensity with a calibrated multiple of the subject's brain median, blended over
a short partial-volume ramp. The tumour's mass effect is a radial displacement of the surrounding
tissue, applied in the same inverse warp that renders the subject (see :class:`TumourShape.mass_effect`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from pddpm_monai.data.synthetic.config import MSConfig, TumourConfig
from pddpm_monai.data.synthetic.render import (
    apply_affine,
    box_points,
    rotation_matrix,
    sample_volume,
    smooth_field,
)

__all__ = ["TumourShape", "sample_tumour", "paint_tumour", "sample_ms_lesions", "paint_ms"]

#: BraTS labels
NECROTIC, OEDEMA, ENHANCING = 1, 2, 4
#: control points per axis of the boundary and texture fields of a tumour
_TUMOUR_CELLS = 6
#: the tumour box extends this many whole-tumour radii around the centre
_BOX_RADII = 1.6


@dataclass
class TumourShape:
    """One tumour in the subject's frame (mm).

    Args:
        centre: centre (mm).
        radius: radius of the whole tumour (mm) of the equal-volume sphere.
        axes: relative semi-axes (product 1).
        rotation: 3x3 orientation of the ellipsoid.
        core: core radius / whole radius.
        necrosis: necrosis radius / whole radius (0: none).
        rim: inner radius of the enhancing rim / whole radius.
        boundary: ``(2, c, c, c)`` smooth fields (boundary irregularity, core texture) over the box.
        mass_effect: maximal outward displacement (mm) of surrounding tissue.
        levels: intensities / brain median of oedema, core, enhancing rim, necrosis.
        shape_noise: amplitude of the boundary irregularity.
        heterogeneity: amplitude of the core texture.
    """

    centre: np.ndarray
    radius: float
    axes: np.ndarray
    rotation: np.ndarray
    core: float
    necrosis: float
    rim: float
    boundary: np.ndarray
    mass_effect: float
    levels: dict[str, float]
    shape_noise: float
    heterogeneity: float

    def box_affine(self) -> np.ndarray:
        """Affine of the control-point box of the boundary/texture fields."""
        half = _BOX_RADII * self.radius * float(self.axes.max())
        cells = self.boundary.shape[1]
        aff = np.diag([2 * half / (cells - 1)] * 3 + [1.0])
        aff[:3, 3] = self.centre - half
        return aff

    def rho(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised irregular radius (1 = tumour border) and core texture at points ``x`` (mm)."""
        rotate = np.zeros((4, 4))
        rotate[:3, :3] = self.rotation.T
        rel = apply_affine(x - torch.as_tensor(self.centre, dtype=torch.float32), rotate)
        rel = rel / torch.as_tensor(self.axes * self.radius, dtype=torch.float32)
        fields = sample_volume(torch.as_tensor(self.boundary), self.box_affine(), x)
        rho = rel.norm(dim=-1) * (1.0 + self.shape_noise * fields[0])
        return rho, 1.0 + self.heterogeneity * fields[1]

    def displacement(self, x: torch.Tensor) -> torch.Tensor:
        """Mass effect: outward displacement ``u(x)`` (mm); the warp samples the template at ``x - u``."""
        rel = x - torch.as_tensor(self.centre, dtype=torch.float32)
        dist = rel.norm(dim=-1, keepdim=True).clamp_min(1e-3)
        core_r = self.core * self.radius
        magnitude = self.mass_effect * torch.exp(-((dist / (1.5 * self.radius)) ** 2))
        # never pull tissue from beyond the centre: the source radius stays >= 0
        magnitude = torch.minimum(magnitude, dist * (1.0 - 1e-3)) * (core_r > 0)
        return rel / dist * magnitude


def _uniform(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    return float(rng.uniform(*bounds))


def _random_axes(rng: np.random.Generator, elongation: float) -> np.ndarray:
    axes = np.exp(rng.uniform(-0.5, 0.5, 3) * np.log(elongation))
    return axes / np.prod(axes) ** (1 / 3)


def sample_tumour(rng: np.random.Generator, candidates_mm: np.ndarray, cfg: TumourConfig) -> TumourShape:
    """Draw a tumour: size, shape, compartments and intensities; centre among ``candidates_mm`` (N, 3)."""
    volume_mm3 = _uniform(rng, cfg.volume_ml) * 1000.0
    radius = (3.0 * volume_mm3 / (4.0 * np.pi)) ** (1 / 3)
    core = _uniform(rng, cfg.core_fraction)
    has_necrosis = rng.uniform() < cfg.necrosis_probability
    return TumourShape(
        centre=candidates_mm[rng.integers(len(candidates_mm))].astype(np.float64),
        radius=radius,
        axes=_random_axes(rng, cfg.elongation),
        rotation=rotation_matrix(rng.uniform(-180, 180, 3)),
        core=core,
        necrosis=core * cfg.necrosis_fraction if has_necrosis else 0.0,
        rim=core * cfg.rim_fraction,
        boundary=np.clip(smooth_field(rng, 2, _TUMOUR_CELLS), -2.5, 2.5),
        mass_effect=cfg.mass_effect * core * radius,
        levels={
            "oedema": _uniform(rng, cfg.oedema),
            "core": _uniform(rng, cfg.core),
            "enhancing": _uniform(rng, cfg.enhancing),
            "necrosis": _uniform(rng, cfg.necrosis),
        },
        shape_noise=cfg.shape_noise,
        heterogeneity=cfg.heterogeneity,
    )


def _box(centre_mm: np.ndarray, half_mm: float, affine: np.ndarray, shape) -> tuple[np.ndarray, np.ndarray]:
    inv = np.linalg.inv(affine)
    corners = np.array([[centre_mm + s * half_mm for s in (-1, 1)]]).reshape(2, 3)
    vox = corners @ inv[:3, :3].T + inv[:3, 3]
    lo = np.clip(np.floor(vox.min(0)).astype(int), 0, shape)
    hi = np.clip(np.ceil(vox.max(0)).astype(int) + 1, 0, shape)
    return lo, hi


def _blend(img: np.ndarray, target: np.ndarray, rho: np.ndarray, edge: float, ramp: float) -> np.ndarray:
    weight = np.clip((edge - rho) / ramp + 0.5, 0.0, 1.0)
    return img * (1.0 - weight) + target * weight


def paint_tumour(
    image: np.ndarray,
    brain: np.ndarray,
    affine: np.ndarray,
    tumour: TumourShape,
    brain_median: float,
    blend_mm: float,
) -> np.ndarray:
    """Paint ``tumour`` into ``image`` (in place) and return its BraTS label map (0/1/2/4).

    Args:
        image: the subject's T2 (any unit; ``brain_median`` is in the same unit).
        brain: boolean brain mask of the subject (the tumour is confined to it).
        affine: voxel -> mm of the grid.
        tumour: the tumour.
        brain_median: median brain intensity before the tumour.
        blend_mm: partial-volume ramp width (mm).
    """
    seg = np.zeros(image.shape, dtype=np.uint8)
    lo, hi = _box(tumour.centre, _BOX_RADII * tumour.radius * tumour.axes.max(), affine, image.shape)
    if np.any(hi <= lo):
        return seg
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    rho_t, texture_t = tumour.rho(box_points(lo, hi, affine))
    rho, texture = rho_t.numpy(), texture_t.numpy()
    inside = brain[box]
    ramp = blend_mm / tumour.radius
    region = image[box]
    lv = {k: v * brain_median for k, v in tumour.levels.items()}
    region = _blend(region, lv["oedema"] * texture, rho, 1.0, ramp)
    region = _blend(region, lv["enhancing"] * texture, rho, tumour.core, ramp)
    region = _blend(region, lv["core"] * texture, rho, tumour.rim, ramp)
    if tumour.necrosis > 0:
        region = _blend(region, np.full_like(region, lv["necrosis"]), rho, tumour.necrosis, ramp)
    image[box] = np.where(inside, region, image[box])
    labels = np.zeros(rho.shape, dtype=np.uint8)
    labels[rho < 1.0] = OEDEMA
    labels[rho < tumour.core] = ENHANCING
    labels[rho < tumour.rim] = NECROTIC
    seg[box] = labels * inside
    return seg


@dataclass
class Ovoid:
    """One MS lesion: centre (mm), semi-axes (mm), orientation, intensity / brain median."""

    centre: np.ndarray
    semi_axes: np.ndarray
    rotation: np.ndarray
    level: float


def sample_ms_lesions(
    rng: np.random.Generator, periventricular_mm: np.ndarray, deep_wm_mm: np.ndarray, cfg: MSConfig
) -> list[Ovoid]:
    """Draw MS lesions; centres from periventricular or other deep white-matter candidate points (mm)."""
    count = int(rng.integers(cfg.count[0], cfg.count[1] + 1))
    lesions = []
    for _ in range(count):
        pool = (
            periventricular_mm
            if (rng.uniform() < cfg.periventricular and len(periventricular_mm))
            else deep_wm_mm
        )
        diameter = float(
            np.clip(cfg.median_diameter_mm * np.exp(0.45 * rng.standard_normal()), *cfg.diameter_mm)
        )
        axes = _random_axes(rng, cfg.elongation) * diameter / 2.0
        lesions.append(
            Ovoid(
                centre=pool[rng.integers(len(pool))].astype(np.float64),
                semi_axes=axes,
                rotation=rotation_matrix(rng.uniform(-180, 180, 3)),
                level=_uniform(rng, cfg.intensity),
            )
        )
    return lesions


def paint_ms(
    image: np.ndarray,
    tissue: np.ndarray,
    affine: np.ndarray,
    lesions: list[Ovoid],
    brain_median: float,
    blend_mm: float,
) -> np.ndarray:
    """Paint MS ovoids into ``image`` (in place, never darkening it); return the binary lesion mask.

    Args:
        image: the subject's T2.
        tissue: boolean map of brain tissue (GM/WM, not CSF) where lesions are labelled.
        affine: voxel -> mm of the grid.
        lesions: the lesions.
        brain_median: median brain intensity before the lesions.
        blend_mm: partial-volume ramp width (mm).
    """
    seg = np.zeros(image.shape, dtype=np.uint8)
    for lesion in lesions:
        lo, hi = _box(lesion.centre, float(lesion.semi_axes.max()) + 2 * blend_mm, affine, image.shape)
        if np.any(hi <= lo):
            continue
        box = tuple(slice(a, b) for a, b in zip(lo, hi))
        rel = (box_points(lo, hi, affine).numpy() - lesion.centre) @ lesion.rotation
        rho = np.linalg.norm(rel / lesion.semi_axes, axis=-1)
        ramp = blend_mm / float(lesion.semi_axes.min())
        painted = _blend(
            image[box], np.full(rho.shape, lesion.level * brain_median, np.float32), rho, 1.0, ramp
        )
        image[box] = np.maximum(image[box], painted)
        seg[box] |= ((rho < 1.0) & tissue[box]).astype(np.uint8)
    return seg
