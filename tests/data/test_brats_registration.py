"""`pddpm preprocess brats21` and `pddpm detect` give a BraTS scan the same chain: affine registration.

The authors register BraTS affinely to SRI24 (their preprocessing/prepare_Brats21.sh) although it is
distributed on the SRI24 grid; the data root and detect now both do, skipping only HD-BET.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from pddpm_monai.data.adapters import DATASETS, find_subjects
from pddpm_monai.data.prepare import preprocess_scan, process_subject
from pddpm_monai.transforms.atlas import resolve_atlas
from pddpm_monai.transforms.config import PreprocessConfig
from pddpm_monai.utils import read_nifti

CASE = "Brats18_2013_3_1"
#: fewer iterations than the defaults keep the test within budget (the same for both paths)
FAST = dataclasses.replace(PreprocessConfig(), n4_iterations=(20, 20, 20), reg_iterations=50)


def test_brats21_spec_registers_but_skips_skull_stripping():
    spec = DATASETS["brats21"]
    assert spec.skull_stripped and not spec.in_atlas_space


@pytest.mark.slow
def test_preprocess_and_detect_register_brats_the_same_way(shared_data, tmp_path):
    atlas = resolve_atlas(shared_data / "sri24", channel="t2")
    subject = next(s for s in find_subjects("brats21", shared_data / "brats18") if s.name == CASE)
    assert process_subject(subject, tmp_path, atlas, config=FAST) == "done"
    record = json.loads(
        (tmp_path / "Test" / "Brats21" / "records" / f"{CASE}.json").read_text(encoding="utf-8")
    )
    root_t2, _ = read_nifti(tmp_path / "Test" / "Brats21" / "t2" / f"{CASE}_t2.nii.gz")
    # detect's path: preprocess_scan with --skull-stripped (detect never assumes atlas space)
    t2, mask, _, det_record = preprocess_scan(subject.image, atlas=atlas, skull_stripped=True, config=FAST)
    steps = ["resample", "register", "crop", "n4"]
    assert record["steps"] == det_record["steps"] == steps
    # BraTS is already on the SRI24 grid (rigidly): the affine mostly rescales the brain to the
    # atlas's size, as for the IXI training scans (measured: det 0.81, brain Dice 0.94 vs 0.91 unregistered)
    params = np.asarray(record["registration"]["parameters"])
    assert 0.7 < abs(np.linalg.det(params[:9].reshape(3, 3))) < 1.3
    assert np.abs(params[9:]).max() < 10.0  # mm
    assert record["registration"]["brain_dice"] > 0.9
    np.testing.assert_allclose(
        det_record["registration"]["parameters"], record["registration"]["parameters"], atol=1e-3
    )
    # and the two paths write the same volume
    inside = mask > 0
    assert np.abs(root_t2[inside] - t2[inside]).max() <= 1e-3 * np.abs(t2[inside]).max()
    # the tumour follows the registration: its volume scales by 1 / det(A) only
    raw_seg, _ = read_nifti(subject.seg, allow_empty=True)
    seg, _ = read_nifti(tmp_path / "Test" / "Brats21" / "seg" / f"{CASE}_seg.nii.gz", allow_empty=True)
    expected = (raw_seg > 0).sum() / abs(np.linalg.det(params[:9].reshape(3, 3)))
    assert (seg > 0).sum() == pytest.approx(expected, rel=0.05)
