"""Fixtures of the bundle tests: a tiny synthetic data root and the bundle's paths.

The data root has the DESIGN.md layout (``Train/ixi``, ``Test/Brats21``, ``Test/MSLUB``, ``splits/``)
with simple ellipsoid "brains" (192x192x160, 1 mm) and bright spherical lesions, written in about a
second, and the split CSVs of :func:`~pddpm_monai.data.synthetic.cohort.write_root_splits`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pddpm_monai.data.synthetic.cohort import brats_id, ixi_id, mslub_id, write_root_splits
from pddpm_monai.utils import save_nifti
from tests.conftest import shared_once  # noqa: F401 (re-exported to test modules)

REPO_ROOT = Path(__file__).resolve().parents[2]
BUNDLE = REPO_ROOT / "bundles" / "pddpm_brain_uad"
CONFIGS = BUNDLE / "configs"

ROOT_SHAPE = (192, 192, 160)
AFFINE = np.diag([1.0, 1.0, 1.0, 1.0])
N_HEALTHY, N_TUMOUR, N_MS = 6, 2, 2
LESION_RADIUS = 10

#: a network small enough for CPU tests (the bundle's keys, as command-line overrides)
TINY = {
    "model_channels": 8,
    "channel_mult": [1, 2, 2],
    "num_res_blocks": 1,
    "num_groups": 4,
    "num_head_channels": 8,
}


def tiny_overrides() -> list[str]:
    """``--key value`` arguments of :data:`TINY` for ``python -m monai.bundle``."""
    args = []
    for key, value in TINY.items():
        args += [f"--{key}", str(value).replace(" ", "")]
    return args


def _brain(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    grid = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float32) for n in ROOT_SHAPE], indexing="ij"))
    centre = np.array([96, 96, 80], dtype=np.float32)[:, None, None, None]
    radii = np.array([70, 80, 60], dtype=np.float32)[:, None, None, None] * rng.uniform(0.95, 1.05)
    r = np.sqrt((((grid - centre) / radii) ** 2).sum(0))
    mask = r < 1
    image = (600 + 300 * np.cos(grid[0] / 9) * np.sin(grid[1] / 11) + 200 * r) * mask
    image += rng.normal(0, 10, ROOT_SHAPE) * mask
    return image.astype(np.float32), mask.astype(np.uint8)


def _lesion(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    centre = np.array([96, 96, 80]) + rng.integers(-15, 16, 3)
    grid = np.ogrid[tuple(slice(0, n) for n in ROOT_SHAPE)]
    seg = (sum((g - c) ** 2 for g, c in zip(grid, centre)) < LESION_RADIUS**2) & (mask > 0)
    image[seg] = 1600.0
    return seg.astype(np.uint8)


def make_tiny_root(out: Path, seed: int = 0) -> Path:
    """Write the tiny data root to ``out``."""
    rng = np.random.default_rng(seed)
    for i in range(N_HEALTHY):
        image, mask = _brain(rng)
        base = out / "Train" / "ixi"
        save_nifti(image, AFFINE, base / "t2" / f"{ixi_id(i)}_t2.nii.gz")
        save_nifti(mask, AFFINE, base / "mask" / f"{ixi_id(i)}_mask.nii.gz")
    for folder, count, name_of in (("Brats21", N_TUMOUR, brats_id), ("MSLUB", N_MS, mslub_id)):
        for i in range(count):
            image, mask = _brain(rng)
            seg = _lesion(image, mask, rng)
            base = out / "Test" / folder
            save_nifti(image, AFFINE, base / "t2" / f"{name_of(i)}_t2.nii.gz")
            save_nifti(mask, AFFINE, base / "mask" / f"{name_of(i)}_mask.nii.gz")
            save_nifti(seg, AFFINE, base / "seg" / f"{name_of(i)}_seg.nii.gz")
    ages = list(rng.uniform(20, 80, N_HEALTHY))
    write_root_splits(out, n_healthy=N_HEALTHY, n_tumour=N_TUMOUR, n_ms=N_MS, ages=ages, seed=seed)
    return out


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny synthetic data root (one per test run)."""
    return shared_once(tmp_path_factory, "tiny_root", make_tiny_root)
