"""One synthetic subject at a time: healthy raw head scans and atlas-space healthy/tumour/MS brains.

Every subject is a pure function of ``(seed, kind, index)``: its random generator is seeded from
that triple, so a cohort does not depend on the number of workers or on the order of generation.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from pddpm_monai.data.synthetic.anatomy import EDT_STEP, Atlas, load_atlas, t2_contrast
from pddpm_monai.data.synthetic.config import SkullConfig, SynthConfig, TissueContrast
from pddpm_monai.data.synthetic.lesions import paint_ms, paint_tumour, sample_ms_lesions, sample_tumour
from pddpm_monai.data.synthetic.render import (
    Deformation,
    render,
    render_stepped,
    rotation_matrix,
    smooth_field,
    upsample_field,
)

__all__ = [
    "Kind",
    "Grid",
    "Subject",
    "subject_rng",
    "healthy_raw",
    "atlas_subject",
    "atlas_grid",
    "root_grid",
    "template_t2",
]

Kind = Literal["healthy", "tumour", "ms"]
Grid = Literal["atlas", "root"]

#: stream ids mixed into the seed so that kinds and purposes never share random numbers
_STREAMS = {"healthy": 1, "tumour": 2, "ms": 3, "demographics": 4, "splits": 5}
#: a distance (mm) beyond any skull or scalp layer
_FAR_MM = 100.0
#: the brain median is taken over voxels whose brain-mask value exceeds this
_MASK_LEVEL = 0.5
#: skull-stripped (atlas-space) subjects keep the partial-volume rim down to this brain-mask value
_RIM_LEVEL = 0.2
#: tumour centres: white-matter probability above this, above this MNI z (mm; spares the cerebellum)
_TUMOUR_MIN_WM, _TUMOUR_MIN_Z_MM = 0.6, 0.0


@dataclass
class Subject:
    """A generated volume with its ground truth.

    Attributes:
        image: T2 intensities (float32, or int16 for scanner-like raw volumes).
        mask: brain mask (uint8).
        seg: lesion labels (uint8; BraTS labels for tumours, 0/1 for MS) or ``None`` when healthy.
        affine: voxel -> world mm.
        params: the parameters used (JSON-serialisable), written as the sidecar.
    """

    image: np.ndarray
    mask: np.ndarray
    seg: np.ndarray | None
    affine: np.ndarray
    params: dict[str, Any] = field(default_factory=dict)


def subject_rng(seed: int, stream: str, index: int) -> np.random.Generator:
    """The random generator of subject ``index`` of ``stream`` (a kind, or a bookkeeping stream)."""
    return np.random.default_rng([int(seed), _STREAMS[stream], int(index)])


@functools.lru_cache(maxsize=2)
def template_t2(resolution_mm: int, pad_mm: int, contrast: TissueContrast) -> np.ndarray:
    """The T2-like template (WM = 1) on the padded atlas grid (cached)."""
    return t2_contrast(load_atlas(resolution_mm, pad_mm), contrast)


@functools.lru_cache(maxsize=2)
def _atlas_channels(cfg: SynthConfig) -> np.ndarray:
    """Template channels of atlas-space subjects: T2, brain mask, tissue (GM + WM) probability."""
    atlas = _atlas(cfg)
    template = template_t2(cfg.anatomy.resolution_mm, cfg.anatomy.pad_mm, cfg.contrast)
    return np.stack([template, atlas.mask, atlas.gm + atlas.wm])


def _atlas(cfg: SynthConfig) -> Atlas:
    return load_atlas(cfg.anatomy.resolution_mm, cfg.anatomy.pad_mm)


def atlas_grid(cfg: SynthConfig = SynthConfig()) -> tuple[tuple[int, int, int], np.ndarray]:
    """Shape and affine of the cohort's atlas space (nilearn's MNI152 grid)."""
    atlas = _atlas(cfg)
    return atlas.mni_shape, atlas.mni_affine


def root_grid(cfg: SynthConfig = SynthConfig()) -> tuple[tuple[int, int, int], np.ndarray]:
    """Shape and affine of a data-root volume: ``cfg.root_shape`` centred on the atlas brain."""
    atlas = _atlas(cfg)
    lo, hi = atlas.brain_box
    start = (lo + hi) // 2 - np.asarray(cfg.root_shape) // 2
    affine = atlas.affine.copy()
    affine[:3, 3] = atlas.affine[:3, :3] @ start + atlas.affine[:3, 3]
    return tuple(cfg.root_shape), affine


def _deformation(rng: np.random.Generator, atlas: Atlas, cfg: SynthConfig) -> tuple[Deformation, dict]:
    """Global scale, smooth displacement and ventricle expansion of one subject."""
    an = cfg.anatomy
    scale = rng.uniform(*an.global_scale) * (1.0 + rng.uniform(-an.anisotropy, an.anisotropy, 3))
    lo = atlas.affine[:3, 3]
    hi = atlas.affine[:3, :3] @ (np.asarray(atlas.shape) - 1) + lo
    field_cp = smooth_field(rng, 3, an.displacement_cells) * an.displacement_mm
    ventricle_scale = float(rng.uniform(*an.ventricle_scale))
    deformation = Deformation(
        centre=atlas.ventricle_centre,
        scale=scale,
        field=field_cp,
        field_box=(lo, hi),
        ventricle_centre=atlas.ventricle_centre,
        ventricle_scale=ventricle_scale,
        ventricle_sigma=an.ventricle_sigma_mm,
    )
    params = {
        "scale": scale.tolist(),
        "scale_centre_mm": atlas.ventricle_centre.tolist(),
        "displacement_mm": an.displacement_mm,
        "ventricle_scale": ventricle_scale,
    }
    return deformation, params


def _texture(rng: np.random.Generator, shape, cfg: SynthConfig) -> np.ndarray:
    cells = cfg.contrast.texture_cells
    field_cp = smooth_field(rng, 1, cells) * cfg.contrast.texture
    return 1.0 + upsample_field(field_cp, shape)[0]


def _bias(rng: np.random.Generator, shape, amplitude: float, cells: int) -> np.ndarray:
    return np.exp(upsample_field(smooth_field(rng, 1, cells) * amplitude, shape)[0])


def _shells(dist_mm: np.ndarray, rng: np.random.Generator, skull: SkullConfig) -> tuple[np.ndarray, dict]:
    """Intensity (WM units) of extra-axial CSF, bone and scalp at distance ``dist_mm`` outside the brain."""
    c = rng.uniform(*skull.csf_mm)
    b = c + rng.uniform(*skull.bone_mm)
    s = b + rng.uniform(*skull.scalp_mm)

    # piecewise-linear profile: each layer boundary is a linear ramp of width blur_mm
    h = skull.blur_mm / 2.0
    layers = np.interp(
        dist_mm,
        [c - h, c + h, b - h, b + h, s - h, s + h],
        [skull.csf, skull.bone, skull.bone, skull.scalp, skull.scalp, 0.0],
    )
    return layers.astype(np.float32), {"csf_mm": c, "bone_mm": b - c, "scalp_mm": s - b}


def _native_grid(
    rng: np.random.Generator, centre_mm: np.ndarray, cfg: SynthConfig
) -> tuple[tuple, np.ndarray, dict]:
    """A scanner-like axial grid: spacing, voxel axis order and flips, field of view centred on the head.

    The slices are axial (thickness along world z, the smaller field of view); which voxel axis holds
    each world axis, and its direction, is random (as scanners and converters store them).
    """
    sc = cfg.scanner
    world_spacing = np.asarray(sc.spacings[rng.integers(len(sc.spacings))], dtype=np.float64)
    world_fov = np.array([sc.fov_mm[0], sc.fov_mm[0], sc.fov_mm[1]])
    order = rng.permutation(3)  # voxel axis j holds world axis order[j]
    signs = rng.choice([-1.0, 1.0], 3)
    spacing = world_spacing[order]
    shape = tuple(int(round(f / s)) for f, s in zip(world_fov[order], spacing))
    direction = np.zeros((3, 3))
    direction[order, np.arange(3)] = signs
    affine = np.eye(4)
    affine[:3, :3] = direction * spacing
    affine[:3, 3] = centre_mm - affine[:3, :3] @ ((np.asarray(shape) - 1) / 2.0)
    params = {
        "spacing": spacing.tolist(),
        "axis_order": order.tolist(),
        "flips": signs.tolist(),
        "shape": shape,
    }
    return shape, affine, params


def healthy_raw(index: int, seed: int, cfg: SynthConfig = SynthConfig(), *, skull: bool = True) -> Subject:
    """An IXI-like raw T2 head scan: native grid and pose, bias field, Rician noise, int16.

    The brain mask is the template mask through the same warp (linear interpolation, > 0.5).
    ``params["pose"]`` maps the subject's head frame (the template's MNI mm, up to the global scale
    and the smooth deformation) to the scanner's world mm.
    """
    rng = subject_rng(seed, "healthy", index)
    atlas = _atlas(cfg)
    deformation, params = _deformation(rng, atlas, cfg)
    sc = cfg.scanner
    rot = rotation_matrix(rng.uniform(-sc.rotation_deg, sc.rotation_deg, 3))
    shift = rng.uniform(-sc.translation_mm, sc.translation_mm, 3)
    centre = atlas.ventricle_centre
    pose = np.eye(4)
    pose[:3, :3] = rot
    pose[:3, 3] = centre + shift - rot @ centre
    shape, affine, grid_params = _native_grid(rng, centre + shift, cfg)
    template = template_t2(cfg.anatomy.resolution_mm, cfg.anatomy.pad_mm, cfg.contrast)
    # distances are stored minus _FAR_MM so that the zeros sampled outside the template grid read "far"
    channels = [template, atlas.mask] + ([atlas.dist_out - _FAR_MM] if skull else [])
    channels = np.stack(channels)
    out = render(channels, atlas.affine, shape, affine, np.linalg.inv(pose), deformation)
    head = out[0] * _texture(rng, shape, cfg)
    skull_params: dict = {}
    if skull:
        layers, skull_params = _shells(out[2] + _FAR_MM, rng, cfg.skull)
        head = head + (1.0 - np.clip(out[1], 0, 1)) * layers
    wm_level = rng.uniform(*sc.wm_level)
    offset = rng.uniform(*sc.offset)
    sigma = sc.noise * wm_level
    signal = head * _bias(rng, shape, sc.bias_amplitude, sc.bias_cells) * wm_level
    noise = rng.standard_normal((2, *shape), dtype=np.float32) * sigma
    image = np.sqrt((signal + noise[0]) ** 2 + noise[1] ** 2) + offset
    image = np.clip(np.rint(image), 0, sc.max_value).astype(np.int16)
    params.update(
        kind="healthy",
        index=index,
        seed=seed,
        skull=skull,
        pose=pose.tolist(),
        rotation_deg_max=sc.rotation_deg,
        translation_mm=shift.tolist(),
        wm_level=wm_level,
        offset=offset,
        noise_sigma=sigma,
        bias_amplitude=sc.bias_amplitude,
        **grid_params,
        **({"skull_layers": skull_params} if skull else {}),
    )
    return Subject(image, (out[1] > _MASK_LEVEL).astype(np.uint8), None, affine, params)


@functools.lru_cache(maxsize=2)
def _candidates(resolution_mm: int, pad_mm: int, min_midline_mm: float, ms_min_wm: float, pv_mm: float):
    """Candidate lesion centres (template mm): tumour, periventricular MS, deep-WM MS."""
    atlas = load_atlas(resolution_mm, pad_mm)
    sl = (slice(None, None, EDT_STEP),) * 3
    vox = np.stack(np.meshgrid(*[np.arange(s)[sl[0]] for s in atlas.shape], indexing="ij"), -1)
    mm = vox @ atlas.affine[:3, :3].T + atlas.affine[:3, 3]
    wm, dv = atlas.wm[sl], atlas.dist_ventricle
    tumour = (wm > _TUMOUR_MIN_WM) & (np.abs(mm[..., 0]) > min_midline_mm) & (mm[..., 2] > _TUMOUR_MIN_Z_MM)
    deep = wm > ms_min_wm
    return mm[tumour], mm[deep & (dv < pv_mm)], mm[deep]


def atlas_subject(
    kind: Kind, index: int, seed: int, cfg: SynthConfig = SynthConfig(), *, grid: Grid = "atlas"
) -> Subject:
    """A skull-stripped brain in atlas space: healthy, with a BraTS-like tumour, or with MS lesions.

    Args:
        kind: ``"healthy"``, ``"tumour"`` or ``"ms"``.
        index: subject index (with ``seed``, fixes every random choice).
        seed: cohort seed.
        cfg: settings.
        grid: ``"atlas"`` (nilearn's MNI grid, the raw BraTS/MSLUB-like layout: mild bias field and
            noise) or ``"root"`` (``cfg.root_shape`` crop, intensities as after N4: no bias field).

    Returns:
        the :class:`Subject`; ``image`` is float32 and zero outside the brain.
    """
    rng = subject_rng(seed, kind, index)
    atlas = _atlas(cfg)
    deformation, params = _deformation(rng, atlas, cfg)
    shape, affine = atlas_grid(cfg) if grid == "atlas" else root_grid(cfg)
    tumour_cand, pv_cand, deep_cand = _candidates(
        cfg.anatomy.resolution_mm,
        cfg.anatomy.pad_mm,
        cfg.tumour.min_midline_mm,
        cfg.ms.min_wm,
        cfg.ms.periventricular_mm,
    )
    tumour = sample_tumour(rng, tumour_cand, cfg.tumour) if kind == "tumour" else None
    if tumour is not None:
        deformation.extra.append(tumour.displacement)
    step = cfg.root_render_step if grid == "root" else 1
    out = render_stepped(_atlas_channels(cfg), atlas.affine, shape, affine, np.eye(4), deformation, step)
    # a skull-stripped scan keeps a partial-volume rim (a brain mask from HD-BET, ROBEX, ... ends a
    # voxel outside the brain, where the voxels are part tissue, part bone or background): the
    # image is weighted by the soft template mask and the mask keeps that dark rim, as the HD-BET
    # masks of the raw healthy scans do; without it, the masked 1st percentile of the intensity
    # normalisation falls on white matter here but on the rim there (a contrast shift between
    # the preprocessed healthy training scans and these test scans)
    soft = np.clip(out[1], 0.0, 1.0)
    brain = soft > _RIM_LEVEL
    image = out[0] * _texture(rng, shape, cfg) * soft
    median = float(np.median(image[soft > _MASK_LEVEL]))
    seg = None
    if tumour is not None:
        seg = paint_tumour(image, brain, affine, tumour, median, cfg.tumour.blend_mm)
        params["tumour"] = {
            "centre_mm": tumour.centre.tolist(),
            "radius_mm": tumour.radius,
            "necrosis": tumour.necrosis > 0,
            "levels_x_brain_median": tumour.levels,
            "volume_ml": float((seg > 0).sum()) * float(abs(np.linalg.det(affine[:3, :3]))) / 1000.0,
        }
    elif kind == "ms":
        lesions = sample_ms_lesions(rng, pv_cand, deep_cand, cfg.ms)
        seg = paint_ms(image, out[2] > _MASK_LEVEL, affine, lesions, median, cfg.ms.blend_mm)
        params["ms"] = {
            "count": len(lesions),
            "centres_mm": [les.centre.tolist() for les in lesions],
            "levels_x_brain_median": [les.level for les in lesions],
            "volume_ml": float(seg.sum()) * float(abs(np.linalg.det(affine[:3, :3]))) / 1000.0,
        }
    if grid == "atlas":
        image = image * _bias(rng, shape, cfg.atlas_bias_amplitude, cfg.scanner.bias_cells)
    wm_level = rng.uniform(*cfg.root_wm_level)
    noise = rng.standard_normal(shape, dtype=np.float32) * cfg.atlas_noise
    image = (np.abs(image + noise) * brain * wm_level).astype(np.float32)
    params.update(
        kind=kind, index=index, seed=seed, grid=grid, wm_level=wm_level, brain_median_wm_units=median
    )
    return Subject(image, brain.astype(np.uint8), seg, affine, params)
