"""Split CSVs: the paper's proportions, disjointness, age stratification, seeding, read-back."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pddpm_monai.data.datalist import SPLIT_NAMES, read_split_csv
from pddpm_monai.data.splits import make_splits
from pddpm_monai.utils import InputError


def _touch(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")


def _root(tmp: Path, n_ixi: int, n_brats: int, n_ms: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    base = tmp / "Train" / "ixi"
    for i in range(n_ixi):
        name = f"IXI{i:03d}-Guys-{i:04d}"
        for kind in ("t2", "mask"):
            _touch(base / kind / f"{name}_{kind}.nii.gz")
        (base / "records").mkdir(parents=True, exist_ok=True)
        (base / "records" / f"{name}.json").write_text(json.dumps({"age": float(rng.uniform(20, 86))}))
    for folder, prefix, n in (("Brats21", "BraTS2021_", n_brats), ("MSLUB", "patient", n_ms)):
        for i in range(n):
            for kind in ("t2", "mask", "seg"):
                _touch(tmp / "Test" / folder / kind / f"{prefix}{i:02d}_{kind}.nii.gz")
    return tmp


def _names(root: Path, split: str) -> list[str]:
    return [item["name"] for item in read_split_csv(root / "splits" / f"{split}.csv", root)]


@pytest.fixture(scope="module")
def paper_root(tmp_path_factory):
    root = _root(tmp_path_factory.mktemp("root"), 560, 1251, 30)
    make_splits(root, seed=3)
    return root


def test_paper_counts_and_disjoint_folds(paper_root):
    assert sorted(p.stem for p in (paper_root / "splits").glob("*.csv")) == sorted(SPLIT_NAMES)
    test = set(_names(paper_root, "IXI_test"))
    assert len(test) == 158
    vals = []
    for fold in range(5):
        train, val = (
            set(_names(paper_root, f"IXI_train_fold{fold}")),
            set(_names(paper_root, f"IXI_val_fold{fold}")),
        )
        assert (len(train), len(val)) == (358, 44)
        assert not train & val and not (train | val) & test and len(train | val | test) == 560
        vals.append(val)
    assert all(not vals[a] & vals[b] for a in range(5) for b in range(a + 1, 5))
    assert (len(_names(paper_root, "Brats21_val")), len(_names(paper_root, "Brats21_test"))) == (100, 1151)
    assert (len(_names(paper_root, "MSLUB_val")), len(_names(paper_root, "MSLUB_test"))) == (10, 20)
    items = read_split_csv(paper_root / "splits" / "Brats21_val.csv", paper_root)
    assert items[0]["label"] == 1 and items[0]["seg"].endswith("_seg.nii.gz")
    ixi = read_split_csv(paper_root / "splits" / "IXI_test.csv", paper_root)
    assert ixi[0]["label"] == 0 and ixi[0]["seg"] is None and ixi[0]["age"] is not None


def test_splits_are_stratified_by_age(paper_root):
    ages = {
        i["name"]: i["age"]
        for s in ("IXI_test", "IXI_train_fold0", "IXI_val_fold0")
        for i in read_split_csv(paper_root / "splits" / f"{s}.csv", paper_root)
    }
    all_ages = np.array(list(ages.values()))
    for split in ("IXI_test", "IXI_val_fold0", "IXI_val_fold3"):
        sub = np.array([ages[n] for n in _names(paper_root, split)])
        # stratified: quartiles within 3 years of the cohort's (random draws of 44 differ by ~5)
        np.testing.assert_allclose(
            np.percentile(sub, [25, 50, 75]), np.percentile(all_ages, [25, 50, 75]), atol=3.0
        )


def test_seeded_and_reproducible(tmp_path):
    root = _root(tmp_path, 40, 6, 4)
    first = {p.name: p.read_text(encoding="utf-8") for p in make_splits(root, seed=1).values()}
    again = {p.name: p.read_text(encoding="utf-8") for p in make_splits(root, seed=1).values()}
    other = {p.name: p.read_text(encoding="utf-8") for p in make_splits(root, seed=2).values()}
    assert first == again and first != other
    assert len(_names(root, "IXI_test")) == 11 and len(_names(root, "MSLUB_val")) == 1
    brats = (root / "splits" / "Brats21_val.csv").read_text(encoding="utf-8")
    for path in (root / "Train").rglob("*.nii.gz"):
        path.unlink()  # IXI removed: the other datasets' splits do not change
    make_splits(root, seed=2)
    assert (root / "splits" / "Brats21_val.csv").read_text(encoding="utf-8") == brats


def test_small_cohorts_fill_every_split_and_bad_roots_are_refused(tmp_path):
    root = _root(tmp_path / "small", 7, 2, 2)
    make_splits(root, seed=0)
    for split in SPLIT_NAMES:
        assert _names(root, split), split
    with pytest.raises(InputError, match="no preprocessed scans"):
        make_splits(tmp_path / "empty")
    _touch(tmp_path / "broken" / "Test" / "MSLUB" / "t2" / "patient01_t2.nii.gz")
    with pytest.raises(InputError, match="patient01_mask.nii.gz: brain mask of this scan is missing"):
        make_splits(tmp_path / "broken")
