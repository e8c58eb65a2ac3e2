"""Split CSVs of a data root, as the authors': IXI test + age-stratified folds, BraTS21 and MSLUB val/test.

Columns (an unnamed index first, as the authors' files): ``img_name, age, label, img_path,
mask_path, seg_path``, paths relative to the data root with a leading ``/``. The proportions are the
paper's, scaled to the cohort found: IXI 158 test of 560 and, of the remaining 402, five folds of
358 train / 44 val (the val sets are disjoint and every split is stratified by age); BraTS21 100 val
of 1251; MSLUB 10 val of 30. :func:`~pddpm_monai.data.datalist.read_split_csv` reads them back.

Example:
    >>> paths = make_splits("data_root", seed=0)  # doctest: +SKIP
    >>> sorted(paths)[:2]  # doctest: +SKIP
    ['Brats21_test', 'Brats21_val']
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pddpm_monai.data.adapters import DATASETS, Subject, output_paths
from pddpm_monai.utils import InputError, save_csv

__all__ = ["SplitConfig", "SPLIT_COLUMNS", "RootEntry", "scan_data_root", "stratified_pick", "make_splits"]

SPLIT_COLUMNS = ("img_name", "age", "label", "img_path", "mask_path", "seg_path")


@dataclass(frozen=True)
class SplitConfig:
    """Split proportions (the paper's counts) and fold count.

    Args:
        n_folds: IXI cross-validation folds.
        ixi_test: fraction of IXI held out for testing (158 / 560).
        ixi_val: fraction of the remaining IXI in each fold's validation set (44 / 402).
        brats_val: fraction of BraTS21 for validation (100 / 1251).
        mslub_val: fraction of MSLUB for validation (10 / 30).
    """

    n_folds: int = 5
    ixi_test: float = 158 / 560
    ixi_val: float = 44 / 402
    brats_val: float = 100 / 1251
    mslub_val: float = 10 / 30


@dataclass(frozen=True)
class RootEntry:
    """One subject of a data root: name, age (or NaN) and its CSV row."""

    name: str
    age: float
    row: dict[str, str]


def _rel(root: Path, path: Path) -> str:
    return "/" + path.relative_to(root).as_posix()


def scan_data_root(data_root: str | os.PathLike, dataset: str) -> list[RootEntry]:
    """Subjects of ``dataset`` in the data root (files ``<name>_t2.nii.gz``), ages from their records."""
    root = Path(data_root)
    spec = DATASETS[dataset]
    base = root / spec.split / spec.folder
    entries = []
    for t2 in sorted((base / "t2").glob("*_t2.nii.gz")):
        name = t2.name[: -len("_t2.nii.gz")]
        paths = output_paths(root, Subject(name, dataset, t2))
        if not paths["mask"].is_file():
            raise InputError(paths["mask"], "brain mask of this scan is missing from the data root")
        if spec.has_seg and not paths["seg"].is_file():
            raise InputError(paths["seg"], "segmentation of this scan is missing from the data root")
        record = paths["record"]
        age = json.loads(record.read_text(encoding="utf-8")).get("age") if record.is_file() else None
        age = float("nan") if age is None else float(age)
        row = {
            "img_name": t2.name,
            "age": "" if np.isnan(age) else f"{age:g}",
            "label": str(spec.label),
            "img_path": _rel(root, t2),
            "mask_path": _rel(root, paths["mask"]),
            "seg_path": _rel(root, paths["seg"]) if spec.has_seg else "",
        }
        entries.append(RootEntry(name, age, row))
    return entries


def _age_order(entries: Sequence[RootEntry], rng: np.random.Generator) -> list[int]:
    """Indices sorted by age (ties and missing ages in random order)."""
    jitter = rng.permutation(len(entries))
    ages = np.array([e.age for e in entries], dtype=float)
    ages = np.where(np.isnan(ages), np.nanmean(ages) if np.isfinite(ages).any() else 0.0, ages)
    return list(np.lexsort((jitter, ages)))


def stratified_pick(entries: Sequence[RootEntry], k: int, rng: np.random.Generator) -> list[int]:
    """Pick ``k`` indices whose ages spread like the whole: one at random from each of ``k`` age bins."""
    if k <= 0:
        return []
    order = np.asarray(_age_order(entries, rng))
    edges = np.round(np.linspace(0, len(order), k + 1)).astype(int)  # bin sizes interleaved, no drift
    return [int(rng.choice(order[a:b])) for a, b in zip(edges[:-1], edges[1:]) if b > a]


def _count(n: int, fraction: float, *, keep_one_each: bool = True) -> int:
    k = int(round(n * fraction))
    if keep_one_each and n >= 2:
        k = min(max(k, 1), n - 1)
    return k


def _ixi_splits(entries: list[RootEntry], cfg: SplitConfig, rng: np.random.Generator) -> dict[str, list[int]]:
    n = len(entries)
    test = stratified_pick(entries, _count(n, cfg.ixi_test), rng) if n >= 3 else []
    rest = [i for i in range(n) if i not in set(test)]
    rest_entries = [entries[i] for i in rest]
    order = _age_order(rest_entries, rng)
    fold_of = np.empty(len(rest), dtype=int)
    for start in range(0, len(order), cfg.n_folds):  # stratified fold assignment
        group = order[start : start + cfg.n_folds]
        fold_of[group] = rng.permutation(cfg.n_folds)[: len(group)]
    n_val = _count(len(rest), cfg.ixi_val)
    out: dict[str, list[int]] = {"IXI_test": sorted(test)}
    for fold in range(cfg.n_folds):
        members = [j for j in range(len(rest)) if fold_of[j] == fold]
        if not members:  # fewer subjects than folds: draw a validation set at random
            members = list(rng.permutation(len(rest))[: max(n_val, 1)])
        picked = stratified_pick([rest_entries[j] for j in members], min(n_val, len(members)), rng)
        val = sorted(rest[members[j]] for j in picked)
        out[f"IXI_val_fold{fold}"] = val
        out[f"IXI_train_fold{fold}"] = sorted(set(rest) - set(val))
    return out


def _val_test(
    entries: list[RootEntry], fraction: float, prefix: str, rng: np.random.Generator
) -> dict[str, list[int]]:
    perm = [int(i) for i in rng.permutation(len(entries))]
    k = _count(len(entries), fraction)
    return {f"{prefix}_val": sorted(perm[:k]), f"{prefix}_test": sorted(perm[k:])}


def make_splits(
    data_root: str | os.PathLike, *, seed: int = 0, config: SplitConfig = SplitConfig()
) -> dict[str, Path]:
    """Write ``<root>/splits/*.csv`` for every dataset present in the data root.

    Args:
        data_root: a data root written by ``pddpm preprocess`` (or the authors' layout).
        seed: the same seed and subjects give identical files.
        config: proportions and fold count.

    Returns:
        split name -> CSV path.

    Raises:
        InputError: no dataset found in the data root, or a scan lacking its mask/seg.
    """
    root = Path(data_root)
    plans: dict[str, tuple[list[RootEntry], list[int]]] = {}
    makers = {
        "ixi": lambda e, rng: _ixi_splits(e, config, rng),
        "brats21": lambda e, rng: _val_test(e, config.brats_val, "Brats21", rng),
        "mslub": lambda e, rng: _val_test(e, config.mslub_val, "MSLUB", rng),
    }
    for stream, (dataset, maker) in enumerate(makers.items()):
        entries = scan_data_root(root, dataset)
        if entries:  # one random stream per dataset: adding a dataset later leaves the others' splits alone
            rng = np.random.default_rng([seed, stream])
            plans.update({name: (entries, idx) for name, idx in maker(entries, rng).items()})
    if not plans:
        raise InputError(
            root, "no preprocessed scans (Train/ixi, Test/Brats21, Test/MSLUB) in this data root"
        )
    written = {}
    for name, (entries, idx) in plans.items():
        rows = [[entries[i].row[c] for c in SPLIT_COLUMNS] for i in idx]
        path = root / "splits" / f"{name}.csv"
        written[name] = save_csv(SPLIT_COLUMNS, rows, path, index=True, lineterminator="\n")
    return written
