"""Slice datasets: exact slices, uniform draws with replacement, determinism, caching."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.transforms import Transform

from pddpm_monai.data.dataset import AllSlicesDataset, RandomSliceDataset, nonempty_slices, volume_dataset

DEPTHS = (6, 9, 4)


def _volumes() -> list[dict[str, torch.Tensor]]:
    """Volumes whose voxel values encode (volume, slice); the first and last slice have no brain."""
    volumes = []
    for v, depth in enumerate(DEPTHS):
        image = torch.zeros(1, 5, 7, depth)
        mask = torch.zeros(1, 5, 7, depth)
        for s in range(depth):
            image[..., s] = 100 * v + s + 1
            if 0 < s < depth - 1:
                mask[0, 1:4, 2:5, s] = 1
        volumes.append({"image": image, "mask": mask})
    return volumes


def _decode(item: dict) -> tuple[int, int]:
    value = int(item["image"][0, 0, 0].item()) - 1
    return value // 100, value % 100


def test_random_slices_are_exact_slices_of_their_volume():
    volumes = _volumes()
    ds = RandomSliceDataset(volumes, slices_per_volume=3, seed=1)
    assert len(ds) == 3 * len(DEPTHS)
    counts = np.zeros(len(DEPTHS), int)
    for item in ds:
        v, s = item["volume"], item["slice"]
        assert _decode(item) == (v, s)
        assert item["image"].shape == (1, 5, 7)
        torch.testing.assert_close(item["mask"], volumes[v]["mask"][..., s])
        counts[v] += 1
    np.testing.assert_array_equal(counts, 3)  # every volume contributes slices_per_volume items


def test_random_slices_are_deterministic_and_order_independent():
    a = RandomSliceDataset(_volumes(), seed=7)
    b = RandomSliceDataset(_volumes(), seed=7)
    forward = [(it["volume"], it["slice"]) for it in a]
    backward = [(b[i]["volume"], b[i]["slice"]) for i in reversed(range(len(b)))][::-1]
    assert forward == backward
    draws = set()
    for epoch in range(6):
        a.set_epoch(epoch)
        draws.add(tuple((it["volume"], it["slice"]) for it in a))
    assert len(draws) > 1  # epochs differ
    c = RandomSliceDataset(_volumes(), seed=8)
    assert [(it["volume"], it["slice"]) for it in c] != forward or len(draws) > 1


def test_random_slices_uniform_with_replacement_including_empty():
    volumes = _volumes()[1:2]  # depth 9
    ds = RandomSliceDataset(volumes, slices_per_volume=20, seed=0, shuffle=False)
    counts = np.zeros(DEPTHS[1], int)
    for epoch in range(60):
        ds.set_epoch(epoch)
        slices = [ds[i]["slice"] for i in range(len(ds))]
        counts += np.bincount(slices, minlength=DEPTHS[1])
    assert len(set(slices)) < len(slices)  # with replacement: repeats within an epoch
    expected = counts.sum() / DEPTHS[1]
    chi2 = ((counts - expected) ** 2 / expected).sum()
    assert chi2 < 26.1  # chi-square, 8 dof, p = 0.001
    assert counts[0] > 0 and counts[-1] > 0  # empty slices are drawn too (the authors' behaviour)


def test_skip_empty_draws_only_slices_with_brain():
    volumes = _volumes()
    ds = RandomSliceDataset(volumes, slices_per_volume=10, seed=0, skip_empty=True)
    for epoch in range(5):
        ds.set_epoch(epoch)
        for item in ds:
            assert item["mask"].sum() > 0
    np.testing.assert_array_equal(nonempty_slices(volumes[0]), np.arange(1, DEPTHS[0] - 1))
    no_mask = {"image": volumes[0]["image"] * (volumes[0]["mask"] > 0)}
    np.testing.assert_array_equal(nonempty_slices(no_mask), np.arange(1, DEPTHS[0] - 1))


def test_all_slices_and_fixed_subset():
    volumes = _volumes()
    ds = AllSlicesDataset(volumes)
    assert len(ds) == sum(DEPTHS)
    assert [_decode(ds[i]) for i in range(len(ds))] == [
        (v, s) for v, d in enumerate(DEPTHS) for s in range(d)
    ]
    sub = AllSlicesDataset(volumes, slices_per_volume=3, seed=2)
    again = AllSlicesDataset(volumes, slices_per_volume=3, seed=2)
    assert sub.index == again.index
    assert len(sub) == 3 * len(DEPTHS)
    for v in range(len(DEPTHS)):
        picked = [s for vv, s in sub.index if vv == v]
        assert len(set(picked)) == 3 and all(0 <= s < DEPTHS[v] for s in picked)
    skip = AllSlicesDataset(volumes, skip_empty=True)
    assert len(skip) == sum(d - 2 for d in DEPTHS)


class _CountingTransform(Transform):
    """A deterministic MONAI transform that counts its calls (CacheDataset caches Transforms only)."""

    def __init__(self):
        self.calls = 0

    def __call__(self, item):
        self.calls += 1
        return {"image": torch.full((1, 4, 4, 3), float(item["value"]))}


@pytest.mark.parametrize("cache", ["memory", "disk"])
def test_volume_dataset_preprocesses_each_volume_once(cache, tmp_path):
    items = [{"value": v} for v in range(3)]
    transform = _CountingTransform()
    volumes = volume_dataset(
        items, cache=cache, cache_dir=tmp_path / "cache", transform=transform, num_workers=1
    )
    ds = RandomSliceDataset(volumes, slices_per_volume=4, seed=0)
    for epoch in range(3):
        ds.set_epoch(epoch)
        for item in ds:
            assert float(item["image"][0, 0, 0]) == item["volume"]
    if cache == "memory":
        assert transform.calls == len(items)
    else:
        assert len(list((tmp_path / "cache").glob("*.pt"))) == len(items)
        fresh = _CountingTransform()
        reused = volume_dataset(items, cache="disk", cache_dir=tmp_path / "cache", transform=fresh)
        assert float(reused[2]["image"].max()) == 2 and fresh.calls == 0  # a later run reads the disk cache
