"""Post-processing steps on tiny arrays with hand-computed answers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.transforms import MedianSmooth
from parameterized import parameterized

from pddpm_monai.evaluation.postprocess import (
    Binarize,
    Binarized,
    PostprocessAnomalyMapd,
    PostprocessConfig,
    binarize,
    erode_mask,
    median_filter,
    postprocess_anomaly_map,
    remove_small_components,
)


def test_median_removes_a_spike_and_keeps_a_step():
    spike = np.zeros((9, 9, 9), np.float32)
    spike[4, 4, 4] = 5.0
    np.testing.assert_array_equal(median_filter(spike, 5), 0.0)
    step = np.zeros((9, 9, 9), np.float32)
    step[:, :, 5:] = 1.0  # a half space: the median of every 5-cube is its majority side
    np.testing.assert_array_equal(median_filter(step, 5), step)


def test_median_known_value():
    vol = np.arange(125, dtype=np.float32).reshape(5, 5, 5)
    assert median_filter(vol, 5)[2, 2, 2] == 62.0  # median of 0..124
    np.testing.assert_array_equal(median_filter(vol, 1), vol)


def test_median_matches_monai_median_smooth_away_from_the_border():
    rng = np.random.default_rng(0)
    vol = rng.random((16, 16, 12)).astype(np.float32)
    ours = median_filter(vol, 5)
    monai = MedianSmooth(radius=2)(torch.as_tensor(vol[None]))[0].numpy()
    np.testing.assert_allclose(ours[2:-2, 2:-2, 2:-2], monai[2:-2, 2:-2, 2:-2])


def test_erosion_in_plane_shrinks_a_square_by_three_and_keeps_slices():
    mask = np.zeros((15, 15, 3), bool)
    mask[2:13, 2:13, :] = True  # 11x11 square in every slice
    eroded = erode_mask(mask, 3, in_plane=True)
    expected = np.zeros_like(mask)
    expected[5:10, 5:10, :] = True  # a cross iterated 3x is an L1 ball of radius 3
    np.testing.assert_array_equal(eroded, expected)


def test_erosion_3d_removes_a_thin_slab():
    mask = np.zeros((15, 15, 5), bool)
    mask[2:13, 2:13, 2] = True
    assert erode_mask(mask, 1, in_plane=True)[:, :, 2].sum() == 9 * 9
    assert not erode_mask(mask, 1, in_plane=False).any()
    np.testing.assert_array_equal(erode_mask(mask, 0), mask)


def _blob(n: int, start) -> np.ndarray:
    vol = np.zeros((20, 20, 20), bool)
    x, y, z = start
    vol[x, y, z : z + n] = True
    return vol


def test_components_drop_six_keep_seven():
    vol = _blob(6, (2, 2, 2)) | _blob(7, (12, 12, 2))
    out = remove_small_components(vol, 7, 3)
    np.testing.assert_array_equal(out, _blob(7, (12, 12, 2)))


def test_components_use_26_connectivity():
    vol = np.zeros((10, 10, 10), bool)
    for i in range(7):  # a diagonal chain: one component only with 26-connectivity
        vol[i + 1, i + 1, i + 1] = True
    assert remove_small_components(vol, 7, 3).sum() == 7
    assert remove_small_components(vol, 7, 1).sum() == 0


def test_postprocess_masks_with_eroded_mask_before_the_median():
    amap = np.ones((21, 21, 11), np.float32)
    mask = np.zeros_like(amap)
    mask[3:18, 3:18, :] = 1  # 15x15 in every slice -> eroded to 9x9 (6..14)
    out = postprocess_anomaly_map(amap, mask, PostprocessConfig())
    assert out[10, 10, 5] == 1.0  # deep inside: all ones
    assert out[1, 10, 5] == 0.0  # outside the mask
    # at the eroded edge x=6, 3 of the 5 rows of a kernel lie inside -> median 1; at x=5 only 2 -> 0
    assert out[6, 10, 5] == 1.0 and out[5, 10, 5] == 0.0


def test_postprocess_rejects_mismatched_grids():
    with pytest.raises(ValueError, match="same 3-D grid"):
        postprocess_anomaly_map(np.zeros((4, 4, 4)), np.zeros((4, 4, 5)))


BINARIZE_CASES = [(0.5, 7), (1.5, 0), (2.5, 0)]


@parameterized.expand(BINARIZE_CASES)
def test_binarize_then_drop_small_components(threshold, expected):
    amap = np.zeros((10, 10, 10), np.float32)
    amap[2, 2, 1:8] = 1.0  # 7 voxels at 1: kept when above the threshold
    amap[6, 6, 1:7] = 2.0  # 6 voxels at 2: always too small
    assert binarize(amap, threshold).sum() == expected


def test_binarize_threshold_is_strict():
    amap = np.zeros((10, 10, 10), np.float32)
    amap[2, 2, 1:9] = 1.0
    assert binarize(amap, 1.0).sum() == 0
    assert binarize(amap, 0.999).sum() == 8


def test_dictionary_twins_match_functions():
    rng = np.random.default_rng(1)
    amap = torch.as_tensor(rng.random((1, 12, 12, 8)).astype(np.float32))
    mask = torch.zeros_like(amap)
    mask[:, 2:10, 2:10] = 1
    out = PostprocessAnomalyMapd("map", mask_key="mask")({"map": amap, "mask": mask})
    np.testing.assert_allclose(out["map"][0].numpy(), postprocess_anomaly_map(amap, mask))
    binary = Binarized("map", threshold=0.3)(out)["map"]
    np.testing.assert_array_equal(binary[0].numpy() > 0, binarize(out["map"], 0.3))
    assert Binarize(0.3)(out["map"]).shape == amap.shape
