"""Resampling to 1 mm in the atlas orientation and the crop to the brain box."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from pddpm_monai.transforms.sitk_convert import array_to_sitk, sitk_to_array, to_metatensor
from pddpm_monai.transforms.spatial import CropToBraind, crop_or_pad, resample_to_spacing
from pddpm_monai.utils import InputError


def test_crop_or_pad_is_exactly_invertible():
    arr = np.random.default_rng(1).random((20, 18, 9)).astype(np.float32)
    aff = np.diag([-1.0, 1.0, 2.0, 1.0])
    start, size = (3, -2, -4), (12, 22, 16)
    out, out_aff = crop_or_pad(arr, aff, start, size)
    assert out.shape == size
    np.testing.assert_array_equal(out[0:12, 2:20, 4:13], arr[3:15, 0:18, 0:9])
    np.testing.assert_allclose(out_aff @ [0, 0, 0, 1], aff @ [*start, 1])
    back = CropToBraind.inverse_array(out, {"start": list(start), "source_shape": list(arr.shape)})
    np.testing.assert_array_equal(back[3:15], arr[3:15])
    assert not back[:3].any() and not back[15:].any()


def test_empty_brain_mask_is_refused():
    d = {
        "t2": to_metatensor(np.ones((8, 8, 8), np.float32), np.eye(4)),
        "mask": to_metatensor(np.zeros((8, 8, 8), np.uint8), np.eye(4)),
        "record": {"source": "scan.nii.gz"},
    }
    with pytest.raises(InputError, match="scan.nii.gz: empty brain mask"):
        CropToBraind(("t2", "mask"), roi_size=(4, 4, 4))(d)


def test_resample_is_a_no_op_at_target_spacing_and_reorients_exactly():
    arr = np.random.default_rng(2).random((6, 5, 4)).astype(np.float32)
    aff = np.diag([-1.0, -1.0, 1.0, 1.0])  # LPS codes
    out = resample_to_spacing(array_to_sitk(arr, aff), 1.0, axcodes="LAS")
    back, back_aff = sitk_to_array(out)
    np.testing.assert_array_equal(back, arr[:, ::-1, :])  # a flip, no interpolation
    assert "".join(nib.aff2axcodes(back_aff)) == "LAS"
    up = resample_to_spacing(array_to_sitk(arr, np.diag([2.0, 2.0, 2.0, 1.0])), 1.0)
    assert up.GetSize() == (12, 10, 8) and up.GetSpacing() == (1.0, 1.0, 1.0)
    assert sitk.GetArrayFromImage(up).max() <= arr.max() + 1e-6
