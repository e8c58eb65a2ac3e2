"""Transforms of single-scan inference (the bundle's ``configs/inference.json``, MONAI Label).

A scan comes in either already preprocessed (on the data-root grid: skull-stripped, registered,
192x192x160, as the files of a data root) or raw (native scan, ``raw=True``: the §4.1 chain runs on
it, and the outputs are mapped back to the native grid at the end). In both cases:

1. :class:`PrepareScand` brings the scan to the data-root grid and adds its brain mask;
2. the model-grid transforms (``model_grid_transforms(load=False)``) make the 96x96x50 input;
3. after the inferer and post-processing, MONAI's ``ResampleToMatchd`` maps the maps back onto the
   data-root grid (a copy of the image kept by ``CopyItemsd``), and :class:`ToNatived` onto the
   native scan when it was raw.

The subject record of a raw scan (registration, grids) travels as a JSON string under
``record_key`` so that it survives MONAI's collate/decollate.
"""

from __future__ import annotations

import json
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform
from monai.utils import ensure_tuple_rep

from pddpm_monai.transforms.atlas import Atlas, resolve_atlas
from pddpm_monai.transforms.chain import preprocessing_transforms
from pddpm_monai.transforms.config import PreprocessConfig
from pddpm_monai.transforms.native import to_native
from pddpm_monai.transforms.sitk_convert import RECORD_KEY, Interp, to_metatensor
from pddpm_monai.transforms.skull_strip import BrainMaskFromImaged
from pddpm_monai.utils import InputError

__all__ = ["SCAN_RECORD_KEY", "PrepareScand", "ToNatived"]

#: key of the raw scan's preprocessing record (a JSON string; empty for preprocessed input)
SCAN_RECORD_KEY = "scan_record"


def _filename(img: Any) -> str:
    meta = getattr(img, "meta", None) or {}
    return str(meta.get("filename_or_obj", "<scan>"))


class PrepareScand(MapTransform):
    """Bring a loaded scan onto the data-root grid and add its brain mask.

    ``raw=False`` (default): the scan is already preprocessed (a data-root volume, or any
    skull-stripped scan registered to the atlas grid); the brain mask is its non-zero voxels (holes
    filled) unless ``mask_key`` is already present. ``raw=True``: the §4.1 chain runs (1 mm
    resampling, HD-BET unless ``skull_stripped``, registration to ``atlas``, crop, N4) and the
    subject record goes to ``record_key`` for :class:`ToNatived`.

    Args:
        keys: the image key (one).
        mask_key: where the brain mask goes.
        record_key: where the (JSON) preprocessing record goes; ``""`` for preprocessed input.
        raw: run the full preprocessing chain.
        atlas: the registration target for ``raw`` (an ``Atlas``, a path, or ``None`` for
            ``$PDDPM_ATLAS``).
        skull_stripped: the raw scan is already skull-stripped (no HD-BET).
        device: HD-BET device.
        config: the preprocessing settings.
    """

    def __init__(
        self,
        keys: KeysCollection = "image",
        mask_key: str = "mask",
        record_key: str = SCAN_RECORD_KEY,
        *,
        raw: bool = False,
        atlas: Any = None,
        skull_stripped: bool = False,
        device: str = "cpu",
        config: PreprocessConfig = PreprocessConfig(),
    ) -> None:
        super().__init__(keys)
        if len(self.keys) != 1:
            raise ValueError(f"PrepareScand takes one image key, got {self.keys}.")
        self.mask_key, self.record_key = mask_key, record_key
        self.raw, self.atlas, self.skull_stripped = raw, atlas, skull_stripped
        self.device, self.config = device, config

    def _atlas(self) -> Any:
        return self.atlas if isinstance(self.atlas, Atlas) else resolve_atlas(self.atlas)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        key = self.keys[0]
        img = d[key]
        if not isinstance(img, MetaTensor) or img.ndim != 4 or img.shape[0] != 1:
            shape = tuple(getattr(img, "shape", ()))
            raise InputError(
                _filename(img), f"expected one 3-D scan (channel-first MetaTensor), got shape {shape}"
            )
        if not torch.isfinite(img).all():
            raise InputError(_filename(img), "image contains NaN/Inf voxels")
        if not bool((img != 0).any()):
            raise InputError(_filename(img), "image is all zeros")
        if not self.raw:
            d = BrainMaskFromImaged(key, mask_key=self.mask_key)(d)
            d[self.mask_key] = MetaTensor(d[self.mask_key].float(), meta=dict(img.meta))
            d[self.record_key] = ""
            return d
        arr = img.detach().cpu().numpy()[0].astype(np.float32)
        scan = {
            "t2": to_metatensor(arr, np.asarray(img.affine, dtype=np.float64)),
            RECORD_KEY: {"source": _filename(img)},
        }
        chain = preprocessing_transforms(
            self._atlas(), skull_stripped=self.skull_stripped, device=self.device, config=self.config
        )
        out = chain(scan)
        record = dict(out[RECORD_KEY])
        t2 = out["t2"]
        record["root_grid"] = {"shape": list(t2.shape[1:]), "affine": np.asarray(t2.affine).tolist()}
        meta = {"filename_or_obj": _filename(img)}
        d[key] = MetaTensor(t2.float().as_tensor(), affine=t2.affine, meta=meta)
        d[self.mask_key] = MetaTensor(out["mask"].float().as_tensor(), affine=t2.affine, meta=dict(meta))
        d[self.record_key] = json.dumps(record, default=str)
        return d


class ToNatived(MapTransform):
    """Map data-root-grid outputs back onto the native scan when :class:`PrepareScand` ran ``raw``.

    A no-op when the record is empty (preprocessed input: the outputs are already on its grid).

    Args:
        keys: the outputs to map (e.g. ``["anomaly", "pred"]``).
        record_key: where :class:`PrepareScand` stored the record.
        modes: ``"linear"`` for maps, ``"nearest"`` for label maps (one per key or one for all).
    """

    def __init__(
        self,
        keys: KeysCollection,
        record_key: str = SCAN_RECORD_KEY,
        modes: Sequence[Interp] | Interp = "linear",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.record_key = record_key
        self.modes = ensure_tuple_rep(modes, len(self.keys))

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        text = d.get(self.record_key) or ""
        if isinstance(text, (list, tuple)):  # a batch of one that was not decollated
            text = text[0] if text else ""
        if not text:
            return d
        record = json.loads(text)
        for key, mode in self.key_iterator(d, self.modes):
            img = d[key]
            array, affine = to_native(img, record, mode=mode)
            meta = dict(getattr(img, "meta", {}) or {})
            meta.pop("affine", None)
            meta["filename_or_obj"] = record.get("source", meta.get("filename_or_obj"))
            d[key] = MetaTensor(torch.as_tensor(array)[None], affine=torch.as_tensor(affine), meta=meta)
        return d
