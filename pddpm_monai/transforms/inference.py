"""Transforms of single-scan inference: ``pddpm detect``, the bundle's ``configs/inference.json``, MONAI Label.

A scan comes in either already preprocessed (on the data-root grid: skull-stripped, registered,
192x192x160, as the files of a data root) or raw (native scan, ``raw=True``: the §4.1 chain runs on
it, and the outputs are mapped back to the native grid at the end). The one chain of all three
entries is :func:`~pddpm_monai.evaluation.detection.scan_preprocessing` ->
scorer/inferer -> :func:`~pddpm_monai.evaluation.detection.scan_postprocessing`, built from:

1. :class:`PrepareScand`: the scan onto the data-root grid, plus its brain mask (``cache_dir``
   keeps the preprocessed scan so that a re-run skips HD-BET, registration and N4);
2. the model-grid transforms (``model_grid_transforms(load=False)``) make the 96x96x50 input;
3. after the inferer and post-processing, MONAI's ``ResampleToMatchd`` maps the maps back onto the
   data-root grid (a copy of the image kept by ``CopyItemsd``), and :class:`ToNatived` onto the
   native scan when it was raw.

The subject record of a raw scan (registration, grids) travels as a JSON string under
``record_key`` so that it survives MONAI's collate/decollate.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
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
from pddpm_monai.transforms.loading import ValidateVolumed, source_name
from pddpm_monai.transforms.native import to_native
from pddpm_monai.transforms.scan_io import scan_name
from pddpm_monai.transforms.sitk_convert import RECORD_KEY, Interp, to_metatensor
from pddpm_monai.transforms.skull_strip import BrainMaskFromImaged
from pddpm_monai.utils import InputError, plain_json, read_nifti, save_json, save_nifti

__all__ = ["SCAN_RECORD_KEY", "CACHE_FILES", "cache_folder", "PrepareScand", "ToNatived"]

#: key of the raw scan's preprocessing record (a JSON string; empty for preprocessed input)
SCAN_RECORD_KEY = "scan_record"
#: the files of one scan's preprocessing cache (the record last: it marks the cache complete)
CACHE_FILES: dict[str, str] = {"t2": "t2.nii.gz", "mask": "mask.nii.gz", "record": "record.json"}


def cache_folder(cache_dir: str | os.PathLike, scan: str | os.PathLike) -> Path:
    """The preprocessing cache of ``scan`` in ``cache_dir``: ``<cache_dir>/<scan name>_preprocessed``."""
    return Path(cache_dir) / f"{scan_name(scan)}_preprocessed"


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
        cache_dir: keep the preprocessed raw scan in ``cache_folder(cache_dir, scan)`` (``t2``, ``mask``,
            ``record``) and reuse it when the scan, atlas, ``skull_stripped`` and ``config`` are the
            same. A fresh result is read back from the cache too, so a first run and a re-run see the
            same bits (NIfTI stores the affine in single precision). ``None``: no cache.
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
        cache_dir: str | os.PathLike | None = None,
    ) -> None:
        super().__init__(keys)
        if len(self.keys) != 1:
            raise ValueError(f"PrepareScand takes one image key, got {self.keys}.")
        self.mask_key, self.record_key = mask_key, record_key
        self.raw, self.atlas, self.skull_stripped = raw, atlas, skull_stripped
        self.device, self.config, self.cache_dir = device, config, cache_dir

    def _preprocess(self, img: MetaTensor, source: str, atlas: Atlas) -> tuple[MetaTensor, MetaTensor, dict]:
        """The §4.1 chain on the native scan: ``(t2, mask, record)`` on the data-root grid."""
        arr = img.detach().cpu().numpy()[0].astype(np.float32)
        scan = {
            "t2": to_metatensor(arr, np.asarray(img.affine, dtype=np.float64)),
            RECORD_KEY: {"source": source},
        }
        chain = preprocessing_transforms(
            atlas, skull_stripped=self.skull_stripped, device=self.device, config=self.config
        )
        out = chain(scan)
        t2 = out["t2"]
        record = {
            **out[RECORD_KEY],
            "root_grid": {"shape": list(t2.shape[1:]), "affine": np.asarray(t2.affine).tolist()},
            **self._cache_key(source, atlas),
        }
        return t2, out["mask"], record

    def _cache_key(self, source: str, atlas: Atlas) -> dict[str, Any]:
        """What a cached result must match (stored in its record)."""
        return plain_json(
            {
                "source": source,
                "skull_stripped": self.skull_stripped,
                "atlas": atlas.describe(),
                "config": dataclasses.asdict(self.config),
            }
        )

    def _cached(self, source: str, atlas: Atlas) -> tuple[MetaTensor, MetaTensor, dict] | None:
        """The cached ``(t2, mask, record)`` of ``source`` when it matches, else ``None``."""
        folder = cache_folder(self.cache_dir, source)  # type: ignore[arg-type]
        paths = {k: folder / v for k, v in CACHE_FILES.items()}
        if not all(p.is_file() for p in paths.values()):
            return None
        record = json.loads(paths["record"].read_text(encoding="utf-8"))
        if any(record.get(k) != v for k, v in self._cache_key(source, atlas).items()):
            return None
        (t2, affine), (mask, _) = (read_nifti(paths[k]) for k in ("t2", "mask"))
        record["root_grid"] = {"shape": list(t2.shape), "affine": affine.tolist()}  # the affine as stored
        return to_metatensor(t2, affine), to_metatensor(mask, affine), record

    def _raw(self, img: MetaTensor, source: str) -> tuple[MetaTensor, MetaTensor, dict]:
        """``(t2, mask, record)`` of a raw scan, through the cache when there is one."""
        atlas = self.atlas if isinstance(self.atlas, Atlas) else resolve_atlas(self.atlas)
        if self.cache_dir is None:
            return self._preprocess(img, source, atlas)
        cached = self._cached(source, atlas)
        if cached is None:
            t2, mask, record = self._preprocess(img, source, atlas)
            folder = cache_folder(self.cache_dir, source)
            save_nifti(t2.numpy()[0].astype(np.float32), np.asarray(t2.affine), folder / CACHE_FILES["t2"])
            save_nifti(mask.numpy()[0].astype(np.uint8), np.asarray(t2.affine), folder / CACHE_FILES["mask"])
            save_json(record, folder / CACHE_FILES["record"])  # last: marks the cache complete
            cached = self._cached(source, atlas)
        return cached  # type: ignore[return-value]

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        key = self.keys[0]
        img, source = d[key], source_name(d[key])
        if not isinstance(img, MetaTensor):
            raise InputError(source, f"expected a channel-first MetaTensor, got {type(img).__name__}")
        ValidateVolumed(key, mask_key=None, seg_key=None)(d)  # one 3-D scan, finite, not all zeros
        if not self.raw:
            d = BrainMaskFromImaged(key, mask_key=self.mask_key)(d)
            d[self.mask_key] = MetaTensor(d[self.mask_key].float(), meta=dict(img.meta))
            d[self.record_key] = ""
            return d
        t2, mask, record = self._raw(img, source)
        # a fresh meta dict each: MetaTensor keeps it
        for out_key, value in ((key, t2), (self.mask_key, mask)):
            meta = {"filename_or_obj": source}
            d[out_key] = MetaTensor(value.float().as_tensor(), affine=t2.affine, meta=meta)
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
