"""The quick demo, run once per test run and shared by the pytest-xdist workers.

Its outputs serve two purposes: the demo tests check them, and the detect tests use its trained
tiny pDDPM (trained on a synthetic healthy data root), the synthetic atlas it was registered to,
and the Dice-optimal threshold that its evaluation found on the BraTS21-like validation volume.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import shared_once
from tests.engines.toys import TINY_NET

#: a pDDPM with the engine tests' tiny UNet (for checkpoints that are built, not trained)
TINY_PDDPM = {"network": TINY_NET, "t_test": 250, "patch_size": 48}


def quick_config():
    from pddpm_monai.pipeline.demo import DemoConfig

    return dataclasses.replace(DemoConfig.quick(), progress=False)


@pytest.fixture(scope="session")
def quick_demo(tmp_path_factory) -> Path:
    """The folder of a finished ``pddpm demo --quick --threads 1`` run, in a fresh process.

    A fresh process with ``OMP_NUM_THREADS=1``, exactly as ``test_reproducibility.py`` runs its second
    demo: an in-process run inherits this worker's BLAS/OpenMP thread pools (fixed when numpy and
    torch were imported), whose summation order moved the table in the 7th digit on CI.
    """

    def make(folder: Path) -> None:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
        command = [
            sys.executable,
            "-m",
            "pddpm_monai",
            "demo",
            "--quick",
            "--out",
            str(folder),
            "--threads",
            "1",
        ]
        proc = subprocess.run(
            command, env=env, capture_output=True, text=True, encoding="utf-8", errors="replace", timeout=3600
        )
        assert proc.returncode == 0, proc.stderr[-3000:]

    return shared_once(tmp_path_factory, "quick_demo", make)


@dataclass(frozen=True)
class TinyModel:
    """A trained checkpoint, the atlas folder its data live in, and its validation threshold."""

    checkpoint: Path
    atlas_dir: Path
    thresholds: Path
    threshold: float


@pytest.fixture(scope="session")
def tiny_model(quick_demo) -> TinyModel:
    thresholds = quick_demo / "results" / "pddpm" / "fold0" / "thresholds.json"
    threshold = json.loads(thresholds.read_text(encoding="utf-8"))["brats21"]["threshold"]
    return TinyModel(
        quick_demo / "runs" / "pddpm" / "best.pt", quick_demo / "atlas", thresholds, float(threshold)
    )
