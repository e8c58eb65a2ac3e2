"""The bundle in a real MONAI Label ``BundleInferTask`` (skipped unless ``monailabel`` is installed).

``pip install "pddpm-monai[label]"`` installs MONAI Label; ``../shared/tools/monailabel-venv.sh`` builds a
scratch environment in which this test runs on the CPU. It loads the shipped bundle (demo model and
threshold) as MONAI Label's ``monaibundle`` app does and checks what ``/info`` and ``/infer`` report:
a 3-D model labelled ``anomaly``, and a binary mask with the input scan's shape and affine.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from tests.bundle.conftest import BUNDLE

pytest.importorskip("monailabel", reason="MONAI Label is not installed (pip install 'pddpm-monai[label]')")


def _test_scan(root: Path) -> Path:
    row = (root / "splits" / "Brats21_test.csv").read_text(encoding="utf-8").splitlines()[1].split(",")
    return root / row[4].lstrip("/")


@pytest.mark.slow
def test_bundle_infer_task_returns_a_mask_on_the_scan_grid(tiny_root: Path, tmp_path: Path) -> None:
    from monailabel.tasks.infer.bundle import BundleInferTask

    bundle = tmp_path / "model" / "pddpm_brain_uad"
    shutil.copytree(BUNDLE, bundle, ignore=shutil.ignore_patterns("runs", "eval", "__pycache__"))
    task = BundleInferTask(str(bundle), {})
    assert task.is_valid()
    info = task.info()
    assert info["dimension"] == 3 and info["labels"] == {"anomaly": 1}, info
    scan = _test_scan(tiny_root)
    result, _ = task({"image": str(scan), "device": "cpu", "result_extension": ".nii.gz"})
    mask, source = nib.load(str(result)), nib.load(str(scan))
    assert mask.shape == source.shape
    np.testing.assert_allclose(mask.affine, source.affine, atol=1e-4)
    values = np.unique(np.asarray(mask.dataobj))
    assert set(values.tolist()) <= {0, 1}
