"""Shared fixtures: the real MRI files of ../shared/data (skip when absent), a quiet torch, and a
fixed random state and one torch thread at the start of every test."""

from __future__ import annotations

import os
import random
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def same_start_for_every_test() -> None:
    """Seed torch, numpy and ``random``, and put torch back on one thread, before each test.

    A test's unseeded draws would otherwise depend on which tests ran before it on the same
    pytest-xdist worker, so a tolerance could pass here and fail in CI (it did once, issue 14's
    stop). Threads: a test that starts numba's OpenMP layer (opensimplex as a reference) leaves
    torch on every core (``pddpm_monai.threads.keep_torch_threads``); with two workers on two
    cores the tests after it ran up to 8x slower.
    """
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    torch.set_num_threads(1)


def shared_data_dir() -> Path | None:
    """``$PDDPM_TEST_DATA`` or ``../shared/data`` beside the project; ``None`` when absent."""
    env = os.environ.get("PDDPM_TEST_DATA")
    candidates = [Path(env)] if env else []
    candidates.append(REPO_ROOT.parent / "shared" / "data")
    for path in candidates:
        if path.is_dir():
            return path
    return None


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The folder of real MRI files; the test skips when it is not there."""
    path = shared_data_dir()
    if path is None:
        pytest.skip("real MRI files (../shared/data or $PDDPM_TEST_DATA) are absent")
    return path


@pytest.fixture(scope="session")
def meta_schema() -> Path:
    """The offline MONAI bundle metadata schema; skip when ../shared is absent."""
    path = REPO_ROOT.parent / "shared" / "monai" / "meta_schema_20240725.json"
    if not path.is_file():
        pytest.skip("offline bundle metadata schema (../shared/monai) is absent")
    return path


def shared_once(tmp_path_factory: pytest.TempPathFactory, name: str, make: Callable[[Path], object]) -> Path:
    """``make(folder)`` once per test run, shared by the pytest-xdist workers (file lock + marker)."""
    from filelock import FileLock

    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # the workers' common temporary folder
    folder, done = base / name, base / f"{name}.done"
    with FileLock(str(base / f"{name}.lock")):
        if not done.is_file():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
            make(folder)
            done.touch()
    return folder
