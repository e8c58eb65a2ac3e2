"""The single-scan detection chain: one ``Compose`` before and one after the model, for every entry.

``pddpm detect``, the bundle's ``configs/inference.json`` (``python -m monai.bundle run inference``)
and MONAI Label (``BundleInferTask`` on that config) run these two factories; only the engine around
them differs (``detect`` calls the checkpoint's scorer, the bundle a ``SupervisedEvaluator`` with
``checkpoint_inferer``), so one scan gives one mask whichever way it comes in.

Keys of the dictionary, in order of appearance::

    image       the scan path -> native scan -> data-root volume -> model-grid input (96x96x50)
    mask        brain mask, data-root grid -> model grid (post-processing erodes it)
    scan_record the JSON preprocessing record of a raw scan ("" for preprocessed input)
    root_grid   a copy of the data-root image: the grid the outputs are resampled back to
    brain       a copy of the data-root brain mask (mapped to the native grid at the end)
    pred        the anomaly map from the model -> the binary lesion mask on the native grid
    anomaly     the post-processed anomaly map on the native grid

Back-mapping: both maps are resampled linearly (model grid -> data-root grid -> native grid) and the
lesion mask is the resampled binary prediction ``>= mask_level`` inside the native brain mask, so a
lesion keeps its volume when the native grid is finer than the 2 mm model grid (a nearest-neighbour
mask would copy the model grid's staircase).

Example:
    >>> pre = scan_preprocessing(raw=True, atlas=resolve_atlas("sri24"))  # doctest: +SKIP
    >>> data = pre({"image": "sub-01_T2w.nii.gz"})  # doctest: +SKIP
    >>> data["pred"] = MetaTensor(anomaly_map, meta=data["image"].meta)  # doctest: +SKIP
    >>> data = scan_postprocessing(threshold=0.12)(data)  # doctest: +SKIP
"""

from __future__ import annotations

import os
from typing import Any

import torch
from monai.transforms import (
    AsDiscreted,
    Compose,
    CopyItemsd,
    EnsureChannelFirstd,
    EnsureTyped,
    LoadImaged,
    MaskIntensityd,
    ResampleToMatchd,
)

from pddpm_monai.evaluation.postprocess import Binarized, PostprocessAnomalyMapd, PostprocessConfig
from pddpm_monai.transforms.config import Device, PreprocessConfig
from pddpm_monai.transforms.inference import SCAN_RECORD_KEY, PrepareScand, ToNatived
from pddpm_monai.transforms.loading import ModelGridConfig, model_grid_transforms
from pddpm_monai.transforms.scan_io import ScanReader

__all__ = ["ROOT_GRID_KEY", "BRAIN_KEY", "ANOMALY_KEY", "scan_preprocessing", "scan_postprocessing"]

#: a copy of the data-root image (the grid the outputs are resampled back to)
ROOT_GRID_KEY = "root_grid"
#: a copy of the data-root brain mask (mapped to the native grid with the outputs)
BRAIN_KEY = "brain"
#: the post-processed anomaly map (the binary mask goes to ``pred``)
ANOMALY_KEY = "anomaly"


def scan_preprocessing(
    *,
    raw: bool = False,
    atlas: Any = None,
    skull_stripped: bool = False,
    device: Device = "cpu",
    preprocess: PreprocessConfig = PreprocessConfig(),
    loading: ModelGridConfig = ModelGridConfig(),
    smooth: bool = True,
    cache_dir: str | os.PathLike | None = None,
) -> Compose:
    """From ``{"image": path}`` to the model-grid ``image`` and ``mask`` (and what the way back needs).

    Args:
        raw: the scan is native (the §4.1 chain runs on it); ``False``: already preprocessed.
        atlas: the registration target of a raw scan (an ``Atlas``, a path, a name, or ``None``
            for ``$PDDPM_ATLAS``).
        skull_stripped: the raw scan is already skull-stripped (no HD-BET).
        device: where HD-BET runs.
        preprocess: the §4.1 settings (must be the training data's).
        loading: the model-grid settings (must be the training's).
        smooth: the loader's CurvatureFlow, as in training and evaluation.
        cache_dir: keep a raw scan's preprocessing there (``PrepareScand(cache_dir=...)``).
    """
    return Compose(
        [
            LoadImaged("image", reader=ScanReader(), image_only=True),
            EnsureChannelFirstd("image", channel_dim="no_channel"),
            EnsureTyped("image", dtype=torch.float32, track_meta=True),
            PrepareScand(
                "image",
                mask_key="mask",
                record_key=SCAN_RECORD_KEY,
                raw=raw,
                atlas=atlas,
                skull_stripped=skull_stripped,
                device=device,
                config=preprocess,
                cache_dir=cache_dir,
            ),
            CopyItemsd(("image", "mask"), names=(ROOT_GRID_KEY, BRAIN_KEY)),
            model_grid_transforms(("image", "mask"), config=loading, load=False, smooth=smooth),
        ]
    )


def scan_postprocessing(
    threshold: float,
    *,
    config: PostprocessConfig = PostprocessConfig(),
    mask_level: float = 0.5,
) -> Compose:
    """From the model-grid anomaly map in ``pred`` to ``anomaly`` and the lesion mask ``pred`` on the scan's grid.

    Args:
        threshold: the threshold of the post-processed map (a validation set's Dice-optimal one).
        config: erosion, median filter and connected components (the evaluation's).
        mask_level: the linearly resampled binary mask is a lesion where it is ``>= mask_level``.
    """
    return Compose(
        [
            PostprocessAnomalyMapd("pred", mask_key="mask", config=config),
            CopyItemsd("pred", names=ANOMALY_KEY),
            Binarized("pred", threshold=threshold, config=config),
            ResampleToMatchd(
                (ANOMALY_KEY, "pred"), key_dst=ROOT_GRID_KEY, mode="bilinear", padding_mode="zeros"
            ),
            ToNatived((ANOMALY_KEY, "pred", BRAIN_KEY), modes=("linear", "linear", "nearest")),
            AsDiscreted("pred", threshold=mask_level),
            MaskIntensityd("pred", mask_key=BRAIN_KEY),
        ]
    )
