"""Array <-> SimpleITK conversion keeps world coordinates (RAS for nibabel, LPS for ITK)."""

from __future__ import annotations

import numpy as np
from parameterized import parameterized

from pddpm_monai.transforms.sitk_convert import array_to_sitk, sitk_to_array

AFFINES = [
    [np.diag([-1.0, 1.0, 1.0, 1.0])],
    [np.array([[-1.0, 0, 0, 112], [0, 0.99, -0.22, -96.7], [0, 0.11, 1.99, -62.5], [0, 0, 0, 1]])],
    [np.array([[0, 0, 1.2, -10], [-0.9, 0, 0, 20], [0, 1.1, 0, 5], [0, 0, 0, 1]])],
]


@parameterized.expand(AFFINES)
def test_sitk_round_trip_keeps_world_coordinates(affine):
    arr = np.random.default_rng(0).random((5, 6, 7)).astype(np.float32)
    img = array_to_sitk(arr, affine)
    back, back_aff = sitk_to_array(img)
    np.testing.assert_array_equal(back, arr)
    np.testing.assert_allclose(back_aff, affine, atol=1e-6)
    # voxel (1, 2, 3) is at the same world point for nibabel (RAS) and ITK (LPS)
    ras = (affine @ [1, 2, 3, 1])[:3]
    lps = np.asarray(img.TransformIndexToPhysicalPoint((1, 2, 3)))
    np.testing.assert_allclose(lps, ras * [-1, -1, 1], atol=1e-5)
