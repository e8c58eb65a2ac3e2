"""The preprocessing chain of paper §4.1 as one MONAI ``Compose`` of the step transforms.

Per subject: orient to the atlas's axis codes and resample to 1 mm
(:class:`~pddpm_monai.transforms.spatial.ResampleToSpacingd`) -> HD-BET skull stripping
(:class:`~pddpm_monai.transforms.skull_strip.SkullStripd`, or
:class:`~pddpm_monai.transforms.skull_strip.BrainMaskFromImaged` for data that is already
stripped) -> affine registration to the atlas, mask and seg following by nearest neighbour
(:class:`~pddpm_monai.transforms.registration.RegisterToAtlasd`) -> crop to the brain bounding
box padded/cropped to 192x192x160 (:class:`~pddpm_monai.transforms.spatial.CropToBraind`) -> bias
field correction inside the brain mask (:class:`~pddpm_monai.transforms.bias.N4BiasCorrectiond`).

Each step appends to the subject's plain-JSON record, from which
:func:`~pddpm_monai.transforms.native.to_native` maps results back to the native scan. Running the
chain on files (one scan for ``pddpm detect``, a raw dataset for ``pddpm preprocess``) is
:mod:`pddpm_monai.data.prepare`.
"""

from __future__ import annotations

from typing import Any

import nibabel as nib

from pddpm_monai.transforms.bias import N4BiasCorrectiond, bias_corrector
from pddpm_monai.transforms.config import Device, PreprocessConfig
from pddpm_monai.transforms.loading import InputCheckedCompose
from pddpm_monai.transforms.registration import RegisterToAtlasd
from pddpm_monai.transforms.skull_strip import BrainMaskFromImaged, SkullStrip, SkullStripd
from pddpm_monai.transforms.spatial import CropToBraind, ResampleToSpacingd

__all__ = ["preprocessing_transforms"]


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
) -> InputCheckedCompose:
    """The §4.1 chain as a ``Compose`` over ``{t2, [seg], record}`` dicts (user errors raised unwrapped).

    Args:
        atlas: the registration target (:class:`~pddpm_monai.transforms.atlas.Atlas`).
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
    chain.append(N4BiasCorrectiond(image_key, mask_key=mask_key, corrector=bias_corrector(config)))
    return InputCheckedCompose(chain)
