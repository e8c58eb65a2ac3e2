"""Run-to-run reproducibility in fresh processes (same seed, same thread count).

- ``pddpm detect`` twice on the real head scan with skull: HD-BET, registration, crop, N4, the
  seeded patched inference and the mapping back give bit-identical files.
- ``pddpm demo --quick`` in a fresh folder and process gives the tables, per-volume metrics and
  thresholds of the session's quick demo (``quick_demo`` fixture) exactly.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from pddpm_monai.pipeline.detect import output_paths
from pddpm_monai.transforms.inference import CACHE_FILES, cache_folder

#: the thread count both runs share (the test process itself runs torch on 1 thread, tests/conftest.py)
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def _pddpm(*args: object) -> list[str]:
    return [sys.executable, "-m", "pddpm_monai", *map(str, args)]


def _run_together(commands: list[list[str]], timeout: float = 3600) -> None:
    """Start every command at once (fresh processes), wait for all, fail with the stderr of a failure."""
    procs = [
        subprocess.Popen(c, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for c in commands
    ]
    try:
        for proc in procs:
            _, err = proc.communicate(timeout=timeout)
            assert proc.returncode == 0, err.decode()[-3000:]
    finally:
        for proc in procs:  # a failure or a timeout leaves no process behind
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def _voxels(path: Path) -> np.ndarray:
    return np.asarray(nib.load(str(path)).dataobj)


@pytest.mark.slow
@pytest.mark.realdata
def test_detect_twice_gives_identical_preprocessing_and_masks(shared_data, tiny_model, tmp_path):
    scan = shared_data / "healthy" / "T2w_head.nii.gz"
    outs = [tmp_path / "first", tmp_path / "second"]
    _run_together(
        [
            _pddpm(
                "detect",
                scan,
                "--out",
                out,
                "--checkpoint",
                tiny_model.checkpoint,
                "--atlas",
                tiny_model.atlas_dir,
                "--threshold",
                tiny_model.threshold,
                "--threads",
                1,
            )  # fmt: skip
            for out in outs
        ]
    )
    first, second = (output_paths(scan, out) for out in outs)
    work = [cache_folder(out, scan) for out in outs]
    # the preprocessed scan: HD-BET mask, registration (transform in the record), crop and N4
    for key in ("t2", "mask"):
        a, b = (_voxels(w / CACHE_FILES[key]) for w in work)
        assert a.any(), key
        np.testing.assert_array_equal(a, b, err_msg=f"preprocessed {key}")
    records = [json.loads((w / CACHE_FILES["record"]).read_text(encoding="utf-8")) for w in work]
    assert records[0]["registration"] == records[1]["registration"]
    # the outputs on the native grid: brain mask, anomaly map, lesion mask
    for key in ("brain", "anomaly", "lesions"):
        np.testing.assert_array_equal(_voxels(first[key]), _voxels(second[key]), err_msg=key)
    summaries = [json.loads(p["summary"].read_text(encoding="utf-8")) for p in (first, second)]
    for key in ("lesion_volume_ml", "n_components", "brain_volume_ml", "registration"):
        assert summaries[0][key] == summaries[1][key], key


def _text(path: Path, folder: Path) -> str:
    """A result file's text with the demo folder's own path taken out (metrics.csv names its files)."""
    return path.read_text(encoding="utf-8").replace(str(folder), "<demo>")


@pytest.mark.slow
def test_quick_demo_twice_gives_identical_tables_and_masks(quick_demo, tmp_path):
    """A fresh ``pddpm demo --quick`` in a new process and folder against the session's quick demo."""
    again = tmp_path / "again"
    _run_together([_pddpm("demo", "--quick", "--out", again, "--threads", 1)])
    assert_same_demo_outputs(quick_demo, again)


def assert_same_demo_outputs(first: Path, second: Path) -> None:
    """Two demo folders hold equal tables, per-volume results, maps, masks and trained weights.

    (Also usable on two full demos: their ``detect`` outputs are compared when present.)
    """
    res = {f: f / "results" for f in (first, second)}
    tables = [Path("table.md"), Path("table.csv"), Path("permutation_tests.csv")]
    per_method = sorted(
        p.relative_to(res[second])
        for p in res[second].glob("*/fold0/*")
        if p.name in ("metrics.csv", "thresholds.json", "summary.json")
    )
    assert len(per_method) >= 6, per_method  # at least one learned method and Thresh
    for rel in tables + per_method:
        assert _text(res[first] / rel, first) == _text(res[second] / rel, second), rel
    # the anomaly maps and binary predictions of every evaluated volume, and detect's outputs
    volumes = [p.relative_to(second) for p in res[second].rglob("nifti/**/*.nii.gz")]
    volumes += [p.relative_to(second) for p in (second / "detect").glob("*.nii.gz")]
    assert any(p.name.endswith("_prediction.nii.gz") for p in volumes)
    for rel in sorted(volumes):
        np.testing.assert_array_equal(_voxels(first / rel), _voxels(second / rel), err_msg=str(rel))
    # the trained weights
    import torch

    for run in sorted(p.relative_to(second) for p in (second / "runs").glob("*/best.pt")):
        weights = [torch.load(f / run, weights_only=True)["network"] for f in (first, second)]
        for key, value in weights[0].items():
            assert torch.equal(value, weights[1][key]), f"{run}: {key}"
