"""Dataset adapters: find the subjects of a raw IXI / BraTS21 / MSLUB download and name their outputs.

Raw layouts (the real datasets' and the synthetic cohort's, same names)::

    IXI      <raw>/**/IXI002-Guys-0828-T2.nii.gz, demographics in <raw>/**/IXI.xls (or IXI.csv)
    BraTS21  <raw>/**/BraTS2021_00000/BraTS2021_00000_{t2,seg}.nii.gz
    MSLUB    <raw>/**/patient01/{T2,consensus_gt}.nii.gz   (also T2W.nii[.gz])

Data-root layout (the authors' naming)::

    <root>/Train/ixi/{t2,mask}/IXI002-Guys-0828_{t2,mask}.nii.gz
    <root>/Test/Brats21/{t2,mask,seg}/BraTS2021_00000_{t2,mask,seg}.nii.gz
    <root>/Test/MSLUB/{t2,mask,seg}/patient01_{t2,mask,seg}.nii.gz
    <root>/<split>/<dataset>/records/<name>.json      (our addition: geometry + QC of each subject)
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pddpm_monai.utils import InputError

__all__ = ["DatasetSpec", "DATASETS", "Subject", "find_subjects", "output_paths", "read_ixi_ages"]

DatasetName = Literal["ixi", "brats21", "mslub"]


@dataclass(frozen=True)
class DatasetSpec:
    """How a dataset is stored raw and where it goes in the data root.

    Args:
        split: top folder of the data root (``Train`` or ``Test``).
        folder: dataset folder of the data root (the authors' capitalisation).
        skull_stripped: raw scans are already skull-stripped (no HD-BET).
        has_seg: raw scans come with a lesion segmentation.
        label: the split CSVs' ``label`` (0 healthy, 1 unhealthy).
        in_atlas_space: raw scans are already on the atlas grid (no registration).
        title: the name in tables and figures (Table 1's).
        test_split: the split CSV of its test volumes (``splits/<test_split>.csv``).
        val_split: the split CSV of its validation volumes (the threshold search); ``None`` for a
            healthy dataset.
    """

    split: str
    folder: str
    skull_stripped: bool
    has_seg: bool
    label: int
    in_atlas_space: bool = False
    title: str = ""
    test_split: str = ""
    val_split: str | None = None

    @property
    def unhealthy(self) -> bool:
        """Whether it has lesion masks (then a validation split gives the threshold)."""
        return self.val_split is not None


#: the datasets of Table 1 by their command-line key: how each is stored and evaluated
DATASETS: dict[str, DatasetSpec] = {
    "ixi": DatasetSpec(
        "Train", "ixi", skull_stripped=False, has_seg=False, label=0, title="IXI", test_split="IXI_test"
    ),
    # BraTS is distributed skull-stripped on the SRI24 grid, but the authors still register it
    # affinely to the SRI24 T1 brain (preprocessing/prepare_Brats21.sh: registration.py -trans
    # Affine) and `pddpm detect` registers every scan: both register it, so a BraTS scan gets the
    # same chain in the data root and in detect (the skull stripping is still skipped)
    "brats21": DatasetSpec(
        "Test",
        "Brats21",
        skull_stripped=True,
        has_seg=True,
        label=1,
        title="BraTS21",
        test_split="Brats21_test",
        val_split="Brats21_val",
    ),
    "mslub": DatasetSpec(
        "Test",
        "MSLUB",
        skull_stripped=True,
        has_seg=True,
        label=1,
        title="MSLUB",
        test_split="MSLUB_test",
        val_split="MSLUB_val",
    ),
}

IXI_PATTERN = re.compile(r"^(IXI(\d{3})-.+)-T2\.nii(\.gz)?$")
BRATS_SUFFIX = re.compile(r"^(.+)_t2\.nii(\.gz)?$")
MSLUB_T2_NAMES = ("T2.nii.gz", "T2W.nii.gz", "T2.nii", "T2W.nii")
MSLUB_SEG_NAMES = ("consensus_gt.nii.gz", "consensus_gt.nii")
IXI_DEMOGRAPHICS = ("IXI.xls", "IXI.xlsx", "IXI.csv")


@dataclass(frozen=True)
class Subject:
    """One raw subject: its data-root name, dataset, files and age (IXI)."""

    name: str
    dataset: str
    image: Path
    seg: Path | None = None
    age: float | None = None


def read_ixi_ages(raw_dir: str | os.PathLike) -> dict[int, float]:
    """``IXI_ID -> AGE`` from ``IXI.xls``/``IXI.csv`` anywhere under ``raw_dir`` (empty if absent)."""
    import pandas as pd

    for name in IXI_DEMOGRAPHICS:
        found = sorted(Path(raw_dir).rglob(name))
        if not found:
            continue
        try:
            table = pd.read_csv(found[0]) if name.endswith(".csv") else pd.read_excel(found[0])
        except Exception as err:
            raise InputError(
                found[0], f"unreadable demographics table ({type(err).__name__}: {err})"
            ) from None
        if not {"IXI_ID", "AGE"} <= set(table.columns):
            raise InputError(found[0], "demographics table lacks IXI_ID/AGE columns")
        table = table.dropna(subset=["IXI_ID", "AGE"])
        return {int(i): float(a) for i, a in zip(table["IXI_ID"], table["AGE"])}
    return {}


def _find_ixi(raw: Path) -> list[Subject]:
    ages = read_ixi_ages(raw)
    subjects = []
    for path in sorted(raw.rglob("IXI*-T2.nii*")):
        match = IXI_PATTERN.match(path.name)
        if match:
            subjects.append(Subject(match.group(1), "ixi", path, None, ages.get(int(match.group(2)))))
    return subjects


def _find_brats(raw: Path) -> list[Subject]:
    subjects = []
    for path in sorted(raw.rglob("*_t2.nii*")):
        match = BRATS_SUFFIX.match(path.name)
        if not match:
            continue
        name = match.group(1)
        segs = [path.parent / f"{name}_seg.nii{ext}" for ext in (".gz", "")]
        seg = next((s for s in segs if s.is_file()), None)
        if seg is None:
            raise InputError(path.parent, f"no {name}_seg.nii.gz beside the T2 scan")
        subjects.append(Subject(name, "brats21", path, seg))
    return subjects


def _find_mslub(raw: Path) -> list[Subject]:
    subjects = []
    for folder in sorted(p for p in raw.rglob("patient*") if p.is_dir()):
        image = next((folder / n for n in MSLUB_T2_NAMES if (folder / n).is_file()), None)
        if image is None:
            continue
        seg = next((folder / n for n in MSLUB_SEG_NAMES if (folder / n).is_file()), None)
        if seg is None:
            raise InputError(folder, "no consensus_gt.nii.gz beside the T2 scan")
        subjects.append(Subject(folder.name, "mslub", image, seg))
    return subjects


_FINDERS = {"ixi": _find_ixi, "brats21": _find_brats, "mslub": _find_mslub}


def find_subjects(dataset: DatasetName, raw_dir: str | os.PathLike) -> list[Subject]:
    """All subjects of ``dataset`` under ``raw_dir``, sorted by name.

    Raises:
        InputError: unknown dataset, missing folder, no subject found, or a subject without its seg.
    """
    if dataset not in _FINDERS:
        raise InputError("dataset", f"unknown dataset {dataset!r}; use one of {sorted(_FINDERS)}")
    raw = Path(raw_dir)
    if not raw.is_dir():
        raise InputError(raw, "raw data folder not found")
    subjects = sorted(_FINDERS[dataset](raw), key=lambda s: s.name)
    if not subjects:
        raise InputError(
            raw, f"no {dataset} scans found (see preprocessing/README.md for the expected layout)"
        )
    return subjects


def output_paths(data_root: str | os.PathLike, subject: Subject) -> dict[str, Path]:
    """Data-root files of ``subject``: ``t2``, ``mask``, ``seg`` (if the dataset has one) and ``record``."""
    spec = DATASETS[subject.dataset]
    base = Path(data_root) / spec.split / spec.folder
    keys = ("t2", "mask", "seg") if spec.has_seg else ("t2", "mask")
    paths = {key: base / key / f"{subject.name}_{key}.nii.gz" for key in keys}
    paths["record"] = base / "records" / f"{subject.name}.json"
    return paths
