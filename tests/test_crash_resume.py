"""Crash and resume: ``SIGKILL`` preprocessing, training and evaluation at random moments, re-run.

For every stage: no partial output is visible at any time (files appear by atomic rename), the
re-run skips finished work, and the final outputs equal those of an uninterrupted run
(bit-identical on the CPU). Also: two ``--shard`` processes on one data root produce exactly the
union of the work, and the same seed gives the same cohort, splits and anomaly maps.
"""

from __future__ import annotations

import filecmp
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
KILL_SEEDS = (0, 1)


def _pddpm(*args: str) -> list[str]:
    return [sys.executable, "-m", "pddpm_monai", *map(str, args)]


def _run(cmd: list[str]) -> subprocess.CompletedProcess:
    result = subprocess.run(
        cmd, capture_output=True, text=True, encoding="utf-8", errors="replace", env=ENV, timeout=900
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def _files(root: Path) -> dict[str, Path]:
    """Visible files under ``root`` (hidden temporary files of an interrupted write are left out)."""
    return {
        str(p.relative_to(root)): p for p in sorted(root.rglob("*")) if p.is_file() and ".tmp-" not in p.name
    }


def _assert_complete(root: Path) -> None:
    """Every visible file is complete: no temporary names, every NIfTI loads in full."""
    for rel, path in _files(root).items():
        if rel.endswith(".nii.gz"):
            np.asarray(nib.load(str(path)).dataobj)  # raises on a truncated file


def _kill_at_random(cmd: list[str], seconds: float, seed: int, watch: Path) -> None:
    """Start ``cmd``, SIGKILL it after a random delay, checking ``watch`` for partial files meanwhile."""
    delay = random.Random(seed).uniform(0.25, 0.9) * seconds
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
    start = time.time()
    try:
        while time.time() - start < delay and proc.poll() is None:
            if watch.exists():
                _assert_complete_visible(watch)
            time.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()


def _assert_complete_visible(root: Path) -> None:
    """Temporary files of writes in progress are hidden (``.name.tmp-*``) and never take a final name."""
    for path in root.rglob("*"):
        assert ".tmp-" not in path.name or path.name.startswith("."), f"partial output visible: {path}"


def _assert_same_tree(a: Path, b: Path, *, ignore: tuple[str, ...] = ()) -> None:
    fa = {k: v for k, v in _files(a).items() if not (ignore and k.endswith(ignore))}
    fb = {k: v for k, v in _files(b).items() if not (ignore and k.endswith(ignore))}
    assert sorted(fa) == sorted(fb)
    for rel in fa:
        if rel.endswith(".nii.gz"):
            np.testing.assert_array_equal(
                np.asarray(nib.load(str(fa[rel])).dataobj),
                np.asarray(nib.load(str(fb[rel])).dataobj),
                err_msg=rel,
            )
        elif rel.endswith((".csv", ".tfm")):
            assert filecmp.cmp(fa[rel], fb[rel], shallow=False), rel


# ---------------------------------------------------------------- preprocessing


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("raw")
    _run(_pddpm("synth", "raw", "--out", out, "--n-healthy", 0, "--n-tumour", 3, "--n-ms", 0, "--seed", 3))
    return out


def _preprocess(raw: Path, root: Path, *extra: str) -> list[str]:
    atlas = raw / "atlas" / "template_t2.nii.gz"
    return _pddpm(
        "preprocess", "brats21", "--input", raw / "BraTS21", "--data-root", root, "--atlas", atlas, *extra
    )


@pytest.fixture(scope="module")
def reference_root(raw, tmp_path_factory) -> tuple[Path, float]:
    root = tmp_path_factory.mktemp("reference_root")
    start = time.time()
    _run(_preprocess(raw, root, "--no-progress"))
    return root, time.time() - start


@pytest.mark.parametrize("seed", KILL_SEEDS)
def test_killed_preprocessing_resumes_to_the_same_root(raw, reference_root, tmp_path, seed):
    reference, seconds = reference_root
    root = tmp_path / "root"
    _kill_at_random(_preprocess(raw, root, "--no-progress"), seconds, seed, root)
    if root.exists():
        _assert_complete(root)
    # a subject is finished once its record (written last, atomically) exists
    finished_before = len(list((root / "Test/Brats21/records").glob("*.json"))) if root.exists() else 0
    result = _run(_preprocess(raw, root, "--no-progress"))
    assert f"skipped {finished_before}" in result.stdout + result.stderr
    _assert_same_tree(reference, root)


def test_two_shards_make_exactly_the_union(raw, reference_root, tmp_path):
    reference, _ = reference_root
    root = tmp_path / "root"
    procs = [
        subprocess.Popen(
            _preprocess(raw, root, "--no-progress", "--shard", f"{i}/2"), env=ENV, stderr=subprocess.PIPE
        )
        for i in range(2)
    ]
    for proc in procs:
        assert proc.wait(timeout=900) == 0, proc.stderr.read().decode()[-2000:]
    _assert_same_tree(reference, root)


# ---------------------------------------------------------------- evaluation


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth_root")
    _run(_pddpm("synth", "root", "--out", out, "--n-healthy", 7, "--n-tumour", 4, "--n-ms", 3, "--seed", 5))
    return out


def _evaluate(root: Path, out: Path) -> list[str]:
    return _pddpm(
        "evaluate", "--method", "thresh", "--data-root", root, "--out", out, "--no-figures", "--quiet"
    )


def _per_volume_csvs(out: Path) -> dict[str, str]:
    return {str(p.relative_to(out)): p.read_text(encoding="utf-8") for p in sorted(out.rglob("*.csv"))}


@pytest.mark.parametrize("seed", KILL_SEEDS)
def test_killed_evaluation_resumes_to_the_same_results(synth_root, tmp_path, seed):
    reference = tmp_path / "reference"
    start = time.time()
    _run(_evaluate(synth_root, reference))
    seconds = time.time() - start
    out = tmp_path / "killed"
    _kill_at_random(_evaluate(synth_root, out), seconds, seed, out)
    _run(_evaluate(synth_root, out))
    assert _per_volume_csvs(out) == _per_volume_csvs(reference)
    _assert_same_tree(reference, out, ignore=(".nii.gz", ".csv"))


# ---------------------------------------------------------------- training

CHILD = """
import sys
sys.path.insert(0, {root!r})
from tests.engines.test_trainer import blob_config, small_volumes
from pddpm_monai.engines.trainer import train
train(blob_config({out!r}, epochs={epochs}), train_volumes=small_volumes(), val_volumes=None)
"""


def _train_cmd(out: Path, epochs: int) -> list[str]:
    return [
        sys.executable,
        "-c",
        textwrap.dedent(CHILD.format(root=str(REPO_ROOT), out=str(out), epochs=epochs)),
    ]


@pytest.mark.parametrize("seed", KILL_SEEDS)
def test_killed_training_ends_bit_identical(tmp_path, seed):
    """Checkpoints at epoch ends (the default): a killed run replays its epoch exactly.

    (Mid-epoch checkpoints, ``checkpoint_every``, restore step count and optimiser state but not the
    epoch's data order: see ``tests/engines/test_trainer.py``.)
    """
    epochs = 4
    start = time.time()
    _run(_train_cmd(tmp_path / "reference", epochs))
    seconds = time.time() - start
    out = tmp_path / "killed"
    _kill_at_random(_train_cmd(out, epochs), seconds, seed, out)
    _run(_train_cmd(out, epochs))
    ref = torch.load(tmp_path / "reference" / "last.pt", weights_only=True)
    got = torch.load(out / "last.pt", weights_only=True)
    assert got["trainer"]["iteration"] == ref["trainer"]["iteration"]
    for key, value in ref["network"].items():
        assert torch.equal(value, got["network"][key]), key


# ---------------------------------------------------------------- determinism


def test_same_seed_same_cohort_splits_and_maps(synth_root, tmp_path):
    again = tmp_path / "again"
    _run(_pddpm("synth", "root", "--out", again, "--n-healthy", 7, "--n-tumour", 4, "--n-ms", 3, "--seed", 5))
    _assert_same_tree(synth_root, again)
    for csv_path in (synth_root / "splits").glob("*.csv"):
        assert csv_path.read_text(encoding="utf-8") == (again / "splits" / csv_path.name).read_text(
            encoding="utf-8"
        )
