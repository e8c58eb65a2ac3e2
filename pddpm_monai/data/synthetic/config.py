"""Every default of the synthetic cohort in one place.

Contrast figures are calibrated on the real files described in ``../shared/data/README.md``: SRI24 T2
tissue medians relative to white matter (CSF 2.08, GM 1.37, WM 1.00), BraTS T2 compartments relative
to the non-tumour brain median (oedema 1.19-1.42, core 1.57-2.39, enhancing 1.49-1.72; whole tumour
38-101 ml), MSLUB lesions 1.38 x the brain median (about 1.3 ml in many small components).
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = [
    "TissueContrast",
    "AnatomyConfig",
    "ScannerConfig",
    "SkullConfig",
    "TumourConfig",
    "MSConfig",
    "SynthConfig",
    "ROOT_SHAPE",
]

#: shape of a data-root volume (DESIGN.md: the authors' crop of the 1 mm atlas space)
ROOT_SHAPE: tuple[int, int, int] = (192, 192, 160)


@dataclass(frozen=True)
class TissueContrast:
    """T2 intensities of the tissues relative to white matter, and their texture.

    Args:
        csf: CSF / WM (SRI24 T2: 2.08).
        gm: GM / WM (SRI24 T2: 1.37).
        wm: WM (the unit).
        sharpness: exponent that sharpens the population-average tissue maps (1: as shipped).
        texture: relative amplitude of a smooth multiplicative tissue texture.
        texture_cells: control points per axis of that texture field.
    """

    csf: float = 2.08
    gm: float = 1.37
    wm: float = 1.00
    sharpness: float = 4.0
    texture: float = 0.04
    texture_cells: int = 12


@dataclass(frozen=True)
class AnatomyConfig:
    """Per-subject anatomical variability (applied as one inverse warp of the template).

    Args:
        resolution_mm: resolution of nilearn's MNI152 maps used as raw material (1 or 2).
        pad_mm: margin added around the template grid (room for the skull and scalp).
        global_scale: range of the isotropic head scale factor.
        anisotropy: maximal extra relative scale per axis.
        displacement_mm: standard deviation of the smooth random displacement.
        displacement_cells: control points per axis of that displacement field.
        ventricle_scale: range of the local expansion (>0) or shrinkage (<0) around the ventricles.
        ventricle_sigma_mm: extent (Gaussian sigma) of that local expansion.
    """

    resolution_mm: int = 1
    pad_mm: int = 20
    global_scale: tuple[float, float] = (0.88, 1.02)
    anisotropy: float = 0.04
    displacement_mm: float = 2.0
    displacement_cells: int = 6
    ventricle_scale: tuple[float, float] = (-0.15, 0.35)
    ventricle_sigma_mm: float = 22.0


@dataclass(frozen=True)
class ScannerConfig:
    """Acquisition of a raw (IXI-like) volume: pose, grid, bias field, intensity scale and noise.

    Args:
        rotation_deg: maximal absolute rotation about each axis of the random rigid pose.
        translation_mm: maximal absolute translation along each axis.
        spacings: (x, y, z) voxel spacings to choose from (mm; z is the slice thickness of axial slices).
        fov_mm: field of view (mm) in-plane (x, y) and along the slices (z).
        bias_amplitude: standard deviation of the log bias field.
        bias_cells: control points per axis of the bias field.
        wm_level: range of the white-matter intensity in scanner units.
        offset: range of the additive intensity offset.
        noise: Rician noise sigma relative to the white-matter intensity.
        max_value: clip of the stored int16 intensities.
    """

    rotation_deg: float = 10.0
    translation_mm: float = 12.0
    spacings: tuple[tuple[float, float, float], ...] = (
        (0.9375, 0.9375, 1.2),
        (0.9375, 0.9375, 1.2),
        (1.0, 1.0, 1.2),
        (0.9, 0.9, 1.5),
        (1.0, 1.0, 1.0),
    )
    fov_mm: tuple[float, float] = (240.0, 180.0)
    bias_amplitude: float = 0.18
    bias_cells: int = 4
    wm_level: tuple[float, float] = (250.0, 700.0)
    offset: tuple[float, float] = (0.0, 20.0)
    noise: float = 0.035
    max_value: int = 32767


@dataclass(frozen=True)
class SkullConfig:
    """Shells around the brain of a raw head volume (distances from the brain surface, mm).

    Args:
        csf_mm: range of the extra-axial CSF layer thickness.
        bone_mm: range of the skull (dark in T2) thickness.
        scalp_mm: range of the scalp thickness.
        csf: intensity of the extra-axial CSF / WM.
        bone: intensity of bone / WM.
        scalp: intensity of the scalp / WM.
        blur_mm: width of the blend between shells.
    """

    csf_mm: tuple[float, float] = (1.0, 3.0)
    bone_mm: tuple[float, float] = (4.0, 7.0)
    scalp_mm: tuple[float, float] = (4.0, 8.0)
    csf: float = 1.9
    bone: float = 0.12
    scalp: float = 1.15
    blur_mm: float = 1.0


@dataclass(frozen=True)
class TumourConfig:
    """A BraTS-like glioma: oedema around a heterogeneous core, optional necrosis, mass effect.

    Args:
        volume_ml: range of the whole-tumour volume (BraTS: 38-101 ml).
        elongation: maximal ratio between ellipsoid semi-axes.
        core_fraction: range of the core radius / whole-tumour radius.
        necrosis_probability: chance of a necrotic centre.
        necrosis_fraction: necrosis radius / core radius.
        rim_fraction: inner radius of the enhancing rim / core radius.
        shape_noise: amplitude of the boundary irregularity (relative radius).
        oedema: range of the oedema intensity / brain median (BraTS: 1.19-1.42).
        core: range of the non-enhancing core intensity / brain median (BraTS: 1.57-2.39).
        enhancing: range of the enhancing rim intensity / brain median (BraTS: 1.49-1.72).
        necrosis: range of the necrosis intensity / brain median.
        heterogeneity: relative amplitude of the core texture.
        mass_effect: maximal displacement of surrounding tissue / core radius.
        min_midline_mm: minimal distance of the centre from the midline.
        blend_mm: width of the partial-volume ramp at compartment borders.
    """

    volume_ml: tuple[float, float] = (38.0, 101.0)
    elongation: float = 1.3
    core_fraction: tuple[float, float] = (0.45, 0.65)
    necrosis_probability: float = 0.6
    necrosis_fraction: float = 0.5
    rim_fraction: float = 0.75
    shape_noise: float = 0.12
    oedema: tuple[float, float] = (1.19, 1.42)
    core: tuple[float, float] = (1.57, 2.1)
    enhancing: tuple[float, float] = (1.49, 1.72)
    necrosis: tuple[float, float] = (2.2, 2.39)
    heterogeneity: float = 0.15
    mass_effect: float = 0.5
    min_midline_mm: float = 12.0
    blend_mm: float = 1.5


@dataclass(frozen=True)
class MSConfig:
    """MS-like lesions: small T2-hyperintense ovoids, mostly periventricular white matter.

    Args:
        count: range of the number of lesions.
        diameter_mm: range of the lesion diameters (3-15 mm).
        median_diameter_mm: median of the log-normal diameter distribution.
        elongation: maximal ratio of the long to the short axis.
        periventricular: fraction of lesions placed within ``periventricular_mm`` of the ventricles.
        periventricular_mm: distance defining "periventricular".
        min_wm: minimal white-matter probability at a lesion centre.
        intensity: range of the lesion intensity / brain median (MSLUB: 1.38).
        blend_mm: width of the partial-volume ramp at the lesion border.
    """

    count: tuple[int, int] = (8, 20)
    diameter_mm: tuple[float, float] = (3.0, 15.0)
    median_diameter_mm: float = 5.5
    elongation: float = 1.8
    periventricular: float = 0.7
    periventricular_mm: float = 12.0
    min_wm: float = 0.8
    intensity: tuple[float, float] = (1.3, 1.5)
    blend_mm: float = 1.0


@dataclass(frozen=True)
class SynthConfig:
    """All settings of the synthetic cohort.

    Args:
        contrast: tissue contrast of the T2 template.
        anatomy: anatomical variability.
        scanner: acquisition of raw healthy volumes.
        skull: skull and scalp of raw healthy volumes.
        tumour: BraTS-like tumours.
        ms: MS-like lesions.
        atlas_noise: Gaussian noise sigma / WM of atlas-space (BraTS/MSLUB-like and root) volumes.
        atlas_bias_amplitude: log bias amplitude of raw atlas-space (BraTS/MSLUB-like) volumes.
        root_shape: shape of data-root volumes.
        root_render_step: data-root anatomy is rendered every this many voxels and upsampled
            (2: 8x faster; the model sees the data at 2 mm anyway); lesions are painted at 1 mm.
        root_wm_level: range of the white-matter intensity of data-root volumes.
        age_range: range of the ages written to the demographics sheet.
    """

    contrast: TissueContrast = field(default_factory=TissueContrast)
    anatomy: AnatomyConfig = field(default_factory=AnatomyConfig)
    scanner: ScannerConfig = field(default_factory=ScannerConfig)
    skull: SkullConfig = field(default_factory=SkullConfig)
    tumour: TumourConfig = field(default_factory=TumourConfig)
    ms: MSConfig = field(default_factory=MSConfig)
    atlas_noise: float = 0.02
    atlas_bias_amplitude: float = 0.08
    root_shape: tuple[int, int, int] = ROOT_SHAPE
    root_render_step: int = 2
    root_wm_level: tuple[float, float] = (80.0, 160.0)
    age_range: tuple[float, float] = (20.0, 86.0)
