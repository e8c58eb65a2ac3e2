"""Simplex noise, the patch grid and masks, the (patched) forward process and losses."""

from pddpm_monai.diffusion.noise import (
    NoiseType,
    SimplexNoiseConfig,
    make_noise,
    simplex_noise_like,
    simplex_noise_reference,
)
from pddpm_monai.diffusion.patches import (
    PATCH_GRIDS,
    PatchGrid,
    PatchSampling,
    boxes_to_masks,
    patch_grid,
    patch_masks,
    patch_weights,
    sample_patch_boxes,
    sample_patch_masks,
)
from pddpm_monai.diffusion.process import (
    DiffusionConfig,
    DiffusionProcess,
    full_l1_loss,
    partly_noised,
    patch_l1_loss,
)

__all__ = [
    "PATCH_GRIDS",
    "DiffusionConfig",
    "DiffusionProcess",
    "NoiseType",
    "PatchGrid",
    "PatchSampling",
    "SimplexNoiseConfig",
    "boxes_to_masks",
    "full_l1_loss",
    "make_noise",
    "partly_noised",
    "patch_grid",
    "patch_l1_loss",
    "patch_masks",
    "patch_weights",
    "sample_patch_boxes",
    "sample_patch_masks",
    "simplex_noise_like",
    "simplex_noise_reference",
]
