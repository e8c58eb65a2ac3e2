"""A tiny hand-made data root (DESIGN.md layout) for the evaluation integration tests.

Volumes are 64x64x48 at 1 mm, smaller than the 192x192x100 crop (the loader pads them). Each head
is an ellipsoidal brain (white matter 0.4, a grey-matter shell 0.55, bright "ventricles" 0.9) with
one bright spherical lesion (0.75) in unhealthy subjects; MSLUB's second test subject has an empty
lesion mask (undefined Dice). IXI subjects are healthy.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from pddpm_monai.utils import save_nifti

SHAPE = (64, 64, 48)
AFFINE = np.array([[-1.0, 0, 0, 40.0], [0, -1.0, 0, 30.0], [0, 0, 1.0, -20.0], [0, 0, 0, 1]])

#: (dataset folder, split, subject name, lesion centre or None)
SUBJECTS = (
    ("Brats21", "Brats21_val", "BraTS2021_00001", (24, 36, 24)),
    ("Brats21", "Brats21_val", "BraTS2021_00002", (40, 28, 22)),
    ("Brats21", "Brats21_test", "BraTS2021_00003", (38, 38, 26)),
    ("Brats21", "Brats21_test", "BraTS2021_00004", (26, 26, 20)),
    ("MSLUB", "MSLUB_val", "patient01", (34, 24, 24)),
    ("MSLUB", "MSLUB_test", "patient02", (28, 38, 22)),
    ("MSLUB", "MSLUB_test", "patient03", None),
    ("ixi", "IXI_test", "IXI002-Guys-0828", None),
    ("ixi", "IXI_test", "IXI012-HH-1211", None),
    ("ixi", "IXI_val_fold0", "IXI013-HH-1212", None),
)
LESION_RADIUS = 9.0


def _ellipsoid(centre, radii) -> np.ndarray:
    grid = np.meshgrid(*[np.arange(n, dtype=np.float64) for n in SHAPE], indexing="ij")
    return sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii)) <= 1.0


def make_subject(rng: np.random.Generator, lesion_centre) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(image, mask, seg)`` of one synthetic head."""
    centre = np.array(SHAPE) / 2.0 - 0.5
    brain = _ellipsoid(centre, (26, 28, 20))
    image = np.where(brain, 0.55, 0.0)
    image[_ellipsoid(centre, (22, 24, 16))] = 0.4
    image[_ellipsoid(centre + (0, 0, 2), (4, 9, 5))] = 0.9
    seg = np.zeros(SHAPE, dtype=np.uint8)
    if lesion_centre is not None:
        seg = (_ellipsoid(lesion_centre, (LESION_RADIUS,) * 3) & brain).astype(np.uint8)
        image[seg > 0] = 0.75
    image = (image + rng.normal(0, 0.02, SHAPE) * brain) * 1000.0
    return image.astype(np.float32), brain.astype(np.uint8), seg


def write_root(root: Path, seed: int = 0) -> Path:
    """Write the tiny data root with its split CSVs."""
    rng = np.random.default_rng(seed)
    splits: dict[str, list[list]] = {}
    for folder, split, name, lesion in SUBJECTS:
        image, mask, seg = make_subject(rng, lesion)
        base = ("Train/" if folder == "ixi" else "Test/") + folder
        paths = {kind: f"/{base}/{kind}/{name}_{kind}.nii.gz" for kind in ("t2", "mask", "seg")}
        save_nifti(image, AFFINE, root / paths["t2"].lstrip("/"))
        save_nifti(mask, AFFINE, root / paths["mask"].lstrip("/"))
        healthy = folder == "ixi"
        if not healthy:
            save_nifti(seg, AFFINE, root / paths["seg"].lstrip("/"))
        rows = splits.setdefault(split, [])
        rows.append(
            [
                len(rows),
                f"{name}_t2.nii.gz",
                50,
                0 if healthy else 1,
                paths["t2"],
                paths["mask"],
                "" if healthy else paths["seg"],
            ]
        )
    (root / "splits").mkdir(parents=True, exist_ok=True)
    for split, rows in splits.items():
        with (root / "splits" / f"{split}.csv").open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["", "img_name", "age", "label", "img_path", "mask_path", "seg_path"])
            writer.writerows(rows)
    return root


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory) -> Path:
    """The tiny data root (read-only for tests: copy before modifying)."""
    return write_root(tmp_path_factory.mktemp("tiny_root"))
