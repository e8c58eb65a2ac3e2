"""MONAI dictionary transforms: preprocessing (paper §4.1) and loading for the model.

The preprocessing chain, one module per step: :mod:`~pddpm_monai.transforms.sitk_convert`
(array/SimpleITK/MetaTensor conversion and the record), :mod:`~pddpm_monai.transforms.spatial`
(1 mm resampling, crop to the brain), :mod:`~pddpm_monai.transforms.skull_strip` (HD-BET),
:mod:`~pddpm_monai.transforms.registration` (affine to the atlas of
:mod:`~pddpm_monai.transforms.atlas`), :mod:`~pddpm_monai.transforms.bias` (N4),
:mod:`~pddpm_monai.transforms.chain` (the ``Compose``, settings in
:mod:`~pddpm_monai.transforms.config`) and :mod:`~pddpm_monai.transforms.native` (back to the
native scan). Loading onto the model grid: :mod:`~pddpm_monai.transforms.loading`; single-scan
inference: :mod:`~pddpm_monai.transforms.inference`, :mod:`~pddpm_monai.transforms.scan_io`.
"""

from pddpm_monai.transforms.atlas import ATLAS_ENV, Atlas, fetch_atlas, resolve_atlas
from pddpm_monai.transforms.bias import N4BiasCorrection, N4BiasCorrectiond, bias_corrector, n4_correct
from pddpm_monai.transforms.chain import preprocessing_transforms
from pddpm_monai.transforms.config import Device, PreprocessConfig
from pddpm_monai.transforms.native import to_native
from pddpm_monai.transforms.registration import (
    RegisterToAtlasd,
    RegistrationError,
    itk_threads,
    register_affine,
)
from pddpm_monai.transforms.sitk_convert import RECORD_KEY, array_to_sitk, sitk_to_array, to_metatensor
from pddpm_monai.transforms.skull_strip import BrainMaskFromImaged, SkullStrip, SkullStripd, hd_bet_mask
from pddpm_monai.transforms.spatial import (
    CropToBraind,
    ResampleToSpacingd,
    brain_box,
    crop_or_pad,
    resample_to_spacing,
)

__all__ = [
    "ATLAS_ENV",
    "Atlas",
    "fetch_atlas",
    "resolve_atlas",
    "N4BiasCorrection",
    "N4BiasCorrectiond",
    "bias_corrector",
    "n4_correct",
    "preprocessing_transforms",
    "Device",
    "PreprocessConfig",
    "to_native",
    "RegisterToAtlasd",
    "RegistrationError",
    "itk_threads",
    "register_affine",
    "RECORD_KEY",
    "array_to_sitk",
    "sitk_to_array",
    "to_metatensor",
    "BrainMaskFromImaged",
    "SkullStrip",
    "SkullStripd",
    "hd_bet_mask",
    "CropToBraind",
    "ResampleToSpacingd",
    "brain_box",
    "crop_or_pad",
    "resample_to_spacing",
]
