"""The §4.1 chain on real scans (../shared/data, skipped when absent; HD-BET runs once per session)."""

from __future__ import annotations

import numpy as np
import pytest

from pddpm_monai.data.prepare import load_subject
from pddpm_monai.transforms.chain import preprocessing_transforms
from pddpm_monai.transforms.native import to_native
from pddpm_monai.transforms.spatial import crop_or_pad
from pddpm_monai.utils import read_nifti

#: measured: healthy head (HD-BET fast, T2 atlas) 0.945; MSLUB patient07 0.947
MIN_BRAIN_DICE = 0.92


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * np.logical_and(a, b).sum() / (a.sum() + b.sum()))


@pytest.mark.slow
def test_healthy_head_ends_in_atlas_space_with_a_good_brain_mask(healthy, atlas):
    _, (t2, mask, affine, record) = healthy
    assert t2.shape == mask.shape == (192, 192, 160) and t2.dtype == np.float32
    assert record["steps"] == ["resample", "skull_strip", "register", "crop", "n4"]
    # the atlas brain mask on the same (cropped) grid
    atlas_mask, _ = crop_or_pad(atlas.mask, atlas.image[1], record["crop"]["start"], record["crop"]["size"])
    assert _dice(mask > 0, atlas_mask) > MIN_BRAIN_DICE
    np.testing.assert_allclose(affine[:3, :3], atlas.image[1][:3, :3])  # atlas orientation and 1 mm
    assert not t2[mask == 0].any() and (t2[mask > 0] > 0).mean() > 0.99


@pytest.fixture(scope="module")
def mslub(shared_data, atlas, fast_config):
    folder = shared_data / "mslub" / "patient07"
    d = load_subject(folder / "T2.nii.gz", folder / "consensus_gt.nii.gz")
    return folder, preprocessing_transforms(atlas, skull_stripped=True, config=fast_config)(d)


@pytest.mark.slow
def test_mslub_registers_and_its_lesion_mask_follows(mslub, atlas):
    folder, d = mslub
    rec = d["record"]
    assert rec["registration"]["brain_dice"] > MIN_BRAIN_DICE
    raw_seg, _ = read_nifti(folder / "consensus_gt.nii.gz", allow_empty=True)
    # MNI brains are larger than SRI24: the voxel count scales by 1 / det(A) of the affine
    matrix = np.asarray(rec["registration"]["parameters"][:9]).reshape(3, 3)
    expected = (raw_seg > 0).sum() / np.linalg.det(matrix)
    seg = d["seg"].numpy()[0]
    assert set(np.unique(seg)) <= {0, 1}
    assert abs((seg > 0).sum() / expected - 1) < 0.1
    # and maps back: the lesions overlap the original ones
    np.testing.assert_allclose(rec["root_grid"]["affine"], d["seg"].affine.numpy())
    native, _ = to_native(seg, rec, mode="nearest")
    assert _dice(native > 0, raw_seg > 0) > 0.6


@pytest.mark.slow
def test_brats_passes_through_unchanged_except_the_crop(shared_data, atlas, fast_config):
    folder = shared_data / "brats18" / "Brats18_2013_3_1"
    d = load_subject(folder / "Brats18_2013_3_1_t2.nii.gz", folder / "Brats18_2013_3_1_seg.nii.gz")
    out = preprocessing_transforms(atlas, skull_stripped=True, in_atlas_space=True, config=fast_config)(d)
    assert "registration" not in out["record"] and out["t2"].shape[1:] == (192, 192, 160)
    raw_seg, raw_aff = read_nifti(folder / "Brats18_2013_3_1_seg.nii.gz", allow_empty=True)
    seg, seg_aff = out["seg"].numpy()[0], np.asarray(out["seg"].affine)
    # each output voxel's world position falls exactly on a raw voxel with the same label
    vox_map = np.linalg.inv(raw_aff) @ seg_aff
    np.testing.assert_allclose(vox_map, np.round(vox_map), atol=1e-6)
    idx = np.stack(np.meshgrid(*[np.arange(s) for s in seg.shape], indexing="ij"), -1).reshape(-1, 3)
    src = np.rint(idx @ vox_map[:3, :3].T + vox_map[:3, 3]).astype(int)
    inside = np.all((src >= 0) & (src < raw_seg.shape), axis=1)
    expected = np.zeros(len(idx), np.uint8)
    expected[inside] = raw_seg[tuple(src[inside].T)]
    np.testing.assert_array_equal(seg.reshape(-1), expected)
    assert (raw_seg > 0).sum() == (seg > 0).sum()  # the crop keeps the whole tumour
