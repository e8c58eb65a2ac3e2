"""Slice datasets over cached model-grid volumes (DESIGN.md, data flow steps 4-5).

Volumes are loaded and preprocessed once (:func:`volume_dataset`: MONAI ``CacheDataset`` in memory
or ``PersistentDataset`` on disk over :func:`~pddpm_monai.transforms.loading.model_grid_transforms`);
the slice datasets then only index the cached ``(1, H, W, D)`` tensors along the last (axial) axis:

- :class:`RandomSliceDataset` (training): per epoch, ``slices_per_volume`` items per volume, each an
  axial slice drawn uniformly with replacement (the authors' ``vol2slice`` draws one random slice
  per volume and epoch, empty slices included); the item order is shuffled per epoch.
- :class:`AllSlicesDataset` (validation / evaluation): every axial slice of every volume, or a fixed
  seeded subset of ``slices_per_volume`` slices per volume.

Both are deterministic given ``seed`` (and the epoch, set with :meth:`RandomSliceDataset.set_epoch`),
independent of the order in which items are read, so they work with any number of workers.

Example:
    >>> volumes = volume_dataset(read_split_csv(csv, root))  # doctest: +SKIP
    >>> train = RandomSliceDataset(volumes, seed=3141)  # doctest: +SKIP
    >>> train[0]["image"].shape  # doctest: +SKIP
    torch.Size([1, 96, 96])
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import numpy as np
import torch
from monai.data import CacheDataset, Dataset, MetaTensor, PersistentDataset
from torch import Tensor

from pddpm_monai.transforms.loading import model_grid_transforms

__all__ = ["CacheMode", "volume_dataset", "RandomSliceDataset", "AllSlicesDataset", "nonempty_slices"]

CacheMode = Literal["memory", "disk", "none"]


def volume_dataset(
    items: Sequence[Mapping[str, Any]],
    *,
    keys: Sequence[str] = ("image", "mask"),
    cache: CacheMode = "memory",
    cache_dir: str | os.PathLike | None = None,
    num_workers: int = 1,
    transform: Callable | None = None,
    progress: bool = False,
) -> Dataset:
    """Data-list items (paths) -> model-grid volumes, preprocessed once and cached.

    Args:
        items: dicts with file paths under ``keys`` (e.g. from
            :func:`~pddpm_monai.data.datalist.read_split_csv`).
        keys: keys to load (``"image"`` first).
        cache: ``"memory"`` (``CacheDataset``: every volume preprocessed up front),
            ``"disk"`` (``PersistentDataset`` in ``cache_dir``: reused by later runs, plain tensors
            without metadata), or ``"none"``.
        cache_dir: folder of the disk cache (required for ``"disk"``).
        num_workers: threads preprocessing the memory cache.
        transform: the preprocessing; default ``model_grid_transforms(keys)``.
        progress: show a progress bar while caching.

    Returns:
        a MONAI dataset of dicts with ``(1, H, W, D)`` tensors under ``keys``.
    """
    transform = transform if transform is not None else model_grid_transforms(tuple(keys))
    data = [dict(item) for item in items]
    if cache == "memory":
        # copy_cache=False: the slice datasets only read the cached tensors, never modify them
        return CacheDataset(
            data,
            transform,
            cache_rate=1.0,
            num_workers=max(num_workers, 1),
            progress=progress,
            copy_cache=False,
        )
    if cache == "disk":
        if cache_dir is None:
            raise ValueError("cache='disk' needs a cache_dir.")
        return PersistentDataset(data, transform, cache_dir=cache_dir)
    if cache == "none":
        return Dataset(data, transform)
    raise ValueError(f"cache must be 'memory', 'disk' or 'none', got {cache!r}.")


def _plain(x: Any) -> Tensor:
    """A plain tensor (no MetaTensor metadata: cheap to collate)."""
    return x.as_tensor() if isinstance(x, MetaTensor) else torch.as_tensor(x)


def nonempty_slices(
    volume: Mapping[str, Any], *, mask_key: str = "mask", image_key: str = "image"
) -> np.ndarray:
    """Indices of the axial slices (last axis) with any brain: mask > 0, or image != 0 without a mask.

    Args:
        volume: a dict with ``(1, H, W, D)`` (or ``(H, W, D)``) tensors.
        mask_key: key of the brain mask.
        image_key: key of the image, used when the mask is absent.

    Returns:
        sorted slice indices (all slices when every slice is empty).
    """
    mask = volume.get(mask_key)
    ref = _plain(mask) > 0 if mask is not None else _plain(volume[image_key]) != 0
    ref = ref.reshape(-1, ref.shape[-1])
    found = torch.nonzero(ref.any(dim=0)).flatten().numpy()
    return found if found.size else np.arange(ref.shape[-1])


class _SliceSource:
    """Shared parts: the volumes, the keys, slice extraction and (cached) candidate slices."""

    def __init__(
        self, volumes: Sequence[Mapping[str, Any]], keys: Sequence[str], skip_empty: bool, context: int = 0
    ) -> None:
        if len(volumes) == 0:
            raise ValueError("no volumes given.")
        if context < 0:
            raise ValueError(f"context must be non-negative, got {context}.")
        self.context = context
        self.volumes = volumes
        self.keys = tuple(keys)
        self.skip_empty = skip_empty
        self._candidates: dict[int, np.ndarray] = {}

    def candidates(self, index: int) -> np.ndarray:
        """Slice indices of volume ``index`` that may be drawn (non-empty ones with ``skip_empty``)."""
        if index not in self._candidates:
            volume = self.volumes[index]
            depth = volume[self.keys[0]].shape[-1]
            self._candidates[index] = nonempty_slices(volume) if self.skip_empty else np.arange(depth)
        return self._candidates[index]

    def slice_item(self, index: int, slice_index: int) -> dict[str, Any]:
        volume = self.volumes[index]
        item: dict[str, Any] = {
            key: _plain(volume[key])[..., slice_index].clone()
            for key in self.keys
            if volume.get(key) is not None
        }
        if self.context:  # the image with its neighbours as channels (edge slices repeated)
            image = _plain(volume[self.keys[0]])
            around = np.clip(
                np.arange(slice_index - self.context, slice_index + self.context + 1), 0, image.shape[-1] - 1
            )
            item[self.keys[0]] = image.reshape(-1, *image.shape[-3:])[0][..., around].permute(2, 0, 1).clone()
        item["volume"] = index
        item["slice"] = int(slice_index)
        return item


class RandomSliceDataset(torch.utils.data.Dataset):
    """Training slices: per epoch, ``slices_per_volume`` uniformly drawn axial slices per volume.

    Item ``i`` of epoch ``e`` is a function of ``(seed, e, i)`` only. The slice is drawn uniformly
    with replacement from all slices of its volume (``skip_empty=False``, the authors' behaviour)
    or from the slices with brain (``skip_empty=True``). Call :meth:`set_epoch` at the start of
    every epoch (the trainer does) for fresh draws and a fresh order.

    Args:
        volumes: a sequence of dicts with ``(1, H, W, D)`` tensors (e.g. :func:`volume_dataset`).
        keys: keys to slice (``"image"`` first); missing keys are skipped.
        slices_per_volume: items per volume and epoch.
        skip_empty: draw only slices with brain (mask > 0, or image != 0 without a mask).
        seed: seed of the draws.
        shuffle: shuffle the item order per epoch (the volumes' order otherwise).
        context: also stack this many neighbouring slices on each side of the image as channels,
            ``(2 * context + 1, H, W)``, edge slices repeated (slice-context SVAE).

    Returns items ``{"image": (1, H, W), "mask": (1, H, W), "volume": int, "slice": int}``.
    """

    def __init__(
        self,
        volumes: Sequence[Mapping[str, Any]],
        *,
        keys: Sequence[str] = ("image", "mask"),
        slices_per_volume: int = 1,
        skip_empty: bool = False,
        seed: int = 0,
        shuffle: bool = True,
        context: int = 0,
    ) -> None:
        if slices_per_volume < 1:
            raise ValueError(f"slices_per_volume must be positive, got {slices_per_volume}.")
        self.source = _SliceSource(volumes, keys, skip_empty, context)
        self.slices_per_volume = slices_per_volume
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0
        self._order: tuple[int, np.ndarray] | None = None

    def set_epoch(self, epoch: int) -> None:
        """Select the draws of ``epoch`` (like ``DistributedSampler.set_epoch``)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.source.volumes) * self.slices_per_volume

    def _item_order(self) -> np.ndarray:
        if self._order is None or self._order[0] != self.epoch:
            order = np.arange(len(self))
            if self.shuffle:
                order = np.random.default_rng([self.seed, self.epoch]).permutation(len(self))
            self._order = (self.epoch, order)
        return self._order[1]

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} items.")
        item_id = int(self._item_order()[index])
        volume_index = item_id % len(self.source.volumes)
        candidates = self.source.candidates(volume_index)
        rng = np.random.default_rng([self.seed, self.epoch, item_id, 1])
        return self.source.slice_item(volume_index, int(candidates[rng.integers(len(candidates))]))


class AllSlicesDataset(torch.utils.data.Dataset):
    """Every axial slice of every volume, or a fixed seeded subset per volume (validation).

    Args:
        volumes: a sequence of dicts with ``(1, H, W, D)`` tensors.
        keys: keys to slice (``"image"`` first); missing keys are skipped.
        slices_per_volume: ``None`` for every slice, else this many distinct slices per volume,
            drawn once from ``seed`` (all of them when the volume has fewer).
        skip_empty: use only slices with brain.
        seed: seed of the subset.
        context: neighbouring slices stacked on each side of the image (see :class:`RandomSliceDataset`).

    Returns items as :class:`RandomSliceDataset`, ordered by volume then slice.
    """

    def __init__(
        self,
        volumes: Sequence[Mapping[str, Any]],
        *,
        keys: Sequence[str] = ("image", "mask"),
        slices_per_volume: int | None = None,
        skip_empty: bool = False,
        seed: int = 0,
        context: int = 0,
    ) -> None:
        if slices_per_volume is not None and slices_per_volume < 1:
            raise ValueError(f"slices_per_volume must be positive or None, got {slices_per_volume}.")
        self.source = _SliceSource(volumes, keys, skip_empty, context)
        self.index: list[tuple[int, int]] = []
        for v in range(len(volumes)):
            slices = self.source.candidates(v)
            if slices_per_volume is not None and slices_per_volume < len(slices):
                rng = np.random.default_rng([seed, v])
                slices = np.sort(rng.choice(slices, size=slices_per_volume, replace=False))
            self.index.extend((v, int(s)) for s in slices)

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, index: int) -> dict[str, Any]:
        volume_index, slice_index = self.index[index]
        return self.source.slice_item(volume_index, slice_index)
