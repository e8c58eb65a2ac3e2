"""Mapping results on the data-root grid back onto the native scan (the real head scan, ../shared/data)."""

from __future__ import annotations

import numpy as np
import pytest

from pddpm_monai.transforms.native import to_native
from pddpm_monai.utils import InputError, read_nifti


@pytest.mark.slow
def test_to_native_maps_back_onto_the_raw_scan(healthy):
    path, (t2, mask, _, record) = healthy
    raw, raw_aff = read_nifti(path)
    native, native_aff = to_native(t2, record)
    native_mask, _ = to_native(mask, record, mode="nearest")
    assert native.shape == raw.shape and np.allclose(native_aff, raw_aff)
    inside = native_mask > 0
    assert 0.2 < inside.mean() < 0.6  # a brain, not the whole head nor nothing
    # the back-mapped image lines up with the raw scan: strong voxelwise correlation inside the brain
    assert np.corrcoef(native[inside], raw[inside])[0, 1] > 0.8
    with pytest.raises(InputError, match="not the preprocessed grid"):
        to_native(t2[:10], record)
