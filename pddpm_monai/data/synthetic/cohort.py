"""Write synthetic cohorts: raw dataset layouts, a preprocessed data root, and the atlas template.

Subjects are generated in parallel (a process pool), each written atomically; a subject whose
sidecar JSON exists is finished and skipped on re-runs. Each subject depends only on
``(seed, kind, index)``, so the files do not depend on ``workers``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from pddpm_monai.data.splits import SPLIT_COLUMNS, SplitConfig
from pddpm_monai.data.synthetic.anatomy import load_atlas
from pddpm_monai.data.synthetic.config import SynthConfig
from pddpm_monai.data.synthetic.subjects import (
    atlas_grid,
    atlas_subject,
    healthy_raw,
    subject_rng,
    template_t2,
)
from pddpm_monai.utils import InputError, ensure_output_dir, save_csv, save_json, save_nifti

__all__ = [
    "ixi_id",
    "brats_id",
    "mslub_id",
    "make_synthetic_raw",
    "make_synthetic_root",
    "synthetic_atlas",
    "write_root_splits",
    "demographics",
]

#: BraTS-like raw volumes are stored as int16 like the real ones
_BRATS_DTYPE = np.int16


def ixi_id(index: int) -> str:
    """IXI-like subject name of healthy subject ``index`` (``IXI002-Synth-0002`` for index 0)."""
    return f"IXI{index + 2:03d}-Synth-{index + 2:04d}"


def brats_id(index: int) -> str:
    """BraTS-like subject name (``BraTS2021_00000`` for index 0)."""
    return f"BraTS2021_{index:05d}"


def mslub_id(index: int) -> str:
    """MSLUB-like subject name (``patient01`` for index 0)."""
    return f"patient{index + 1:02d}"


def demographics(index: int, seed: int, cfg: SynthConfig = SynthConfig()) -> dict[str, object]:
    """IXI-like demographics of healthy subject ``index`` (a row of ``IXI.csv``)."""
    rng = subject_rng(seed, "demographics", index)
    age = round(float(rng.uniform(*cfg.age_range)), 2)
    sex = int(rng.integers(1, 3))
    study_year = 2005 + int(rng.integers(0, 2))
    return {
        "IXI_ID": index + 2,
        "SEX_ID [1=m, 2=f]": sex,
        "HEIGHT": int(rng.normal(176 if sex == 1 else 163, 7)),
        "WEIGHT": int(rng.normal(80 if sex == 1 else 66, 10)),
        "DOB": f"{study_year - int(age)}-01-01",
        "STUDY_DATE": f"{study_year}-06-01",
        "AGE": age,
    }


# ---------------------------------------------------------------- one subject, written ----------------


@dataclass(frozen=True)
class _Job:
    """One subject to write: its kind, index, the cohort seed and where its files go."""

    kind: str  # healthy_raw | tumour_raw | ms_raw | healthy_root | tumour_root | ms_root
    index: int
    seed: int
    out: str
    skull: bool
    cfg: SynthConfig


#: per kind: subject name, raw dataset folder, raw image and seg below it (``{n}``: the name), data-root folder
_LAYOUTS = {
    "healthy": (ixi_id, "IXI", "{n}-T2.nii.gz", None, "Train/ixi"),
    "tumour": (brats_id, "BraTS21", "{n}/{n}_t2.nii.gz", "{n}/{n}_seg.nii.gz", "Test/Brats21"),
    "ms": (mslub_id, "MSLUB", "{n}/T2.nii.gz", "{n}/consensus_gt.nii.gz", "Test/MSLUB"),
}


def _paths(job: _Job) -> dict[str, Path | None]:
    kind, where = job.kind.split("_")
    name_of, raw, image, seg, folder = _LAYOUTS[kind]
    out, name = Path(job.out), name_of(job.index)
    if where == "raw":
        truth = out / "truth" / raw
        return {
            "image": out / raw / image.format(n=name),
            "mask": truth / f"{name}_mask.nii.gz",
            "seg": None if seg is None else out / raw / seg.format(n=name),
            "sidecar": truth / f"{name}.json",
        }
    base = out / folder
    return {
        "image": base / "t2" / f"{name}_t2.nii.gz",
        "mask": base / "mask" / f"{name}_mask.nii.gz",
        "seg": None if seg is None else base / "seg" / f"{name}_seg.nii.gz",
        "sidecar": out / "params" / f"{name}.json",
    }


def _run_job(job: _Job) -> None:
    """Generate and write one subject (skipped when its sidecar exists)."""
    paths = _paths(job)
    if paths["sidecar"].is_file() and paths["image"].is_file():
        return
    kind, where = job.kind.split("_")
    if kind == "healthy" and where == "raw":
        subject = healthy_raw(job.index, job.seed, job.cfg, skull=job.skull)
    else:
        subject = atlas_subject(
            kind, job.index, job.seed, job.cfg, grid="atlas" if where == "raw" else "root"
        )
    image = subject.image
    if job.kind == "tumour_raw":
        image = np.clip(np.rint(image), 0, np.iinfo(_BRATS_DTYPE).max).astype(_BRATS_DTYPE)
    save_nifti(image, subject.affine, paths["image"])
    save_nifti(subject.mask, subject.affine, paths["mask"])
    if paths["seg"] is not None and subject.seg is not None:
        save_nifti(subject.seg, subject.affine, paths["seg"])
    save_json(subject.params, paths["sidecar"])  # last: its presence marks the subject as finished


def _write_subjects(
    where: str,
    out_dir: str | os.PathLike,
    counts: dict[str, int],
    *,
    seed: int,
    workers: int,
    skull: bool,
    cfg: SynthConfig,
) -> Path:
    """Check the arguments, then write the ``n_healthy``, ``n_tumour``, ``n_ms`` subjects of ``counts``.

    ``where`` is ``"raw"`` or ``"root"``; subjects run in a process pool of ``workers`` (in-process
    when 1), with a progress bar.
    """
    for name, value in counts.items():
        if int(value) != value or value < 0:
            raise InputError(name, f"must be a non-negative integer, got {value}")
    if workers < 1:
        raise InputError("workers", f"must be >= 1, got {workers}")
    out = ensure_output_dir(out_dir)
    kinds = zip(_LAYOUTS, counts.values())
    jobs = [_Job(f"{kind}_{where}", i, seed, str(out), skull, cfg) for kind, n in kinds for i in range(n)]
    load_atlas(cfg.anatomy.resolution_mm, cfg.anatomy.pad_mm)  # warm the cache before forking
    bar = {"desc": f"synth {where}", "unit": "vol", "total": len(jobs)}
    if workers <= 1 or len(jobs) <= 1:
        for job in tqdm(jobs, **bar):
            _run_job(job)
    else:
        with ProcessPoolExecutor(workers, initializer=torch.set_num_threads, initargs=(1,)) as pool:
            list(tqdm(pool.map(_run_job, jobs), **bar))
    return out


# ---------------------------------------------------------------- public API ----------------


def make_synthetic_raw(
    out_dir: str | os.PathLike,
    *,
    n_healthy: int,
    n_tumour: int,
    n_ms: int,
    seed: int,
    skull: bool = True,
    workers: int = 1,
    cfg: SynthConfig = SynthConfig(),
) -> Path:
    """Write a raw synthetic cohort in the layouts of the real datasets.

    Files written under ``out_dir``::

        IXI/IXI002-Synth-0002-T2.nii.gz ...     healthy T2 head scans (int16, native grid and pose,
                                                 bias field, Rician noise, skull/scalp if ``skull``)
        IXI/IXI.csv                               demographics (IXI_ID, SEX_ID [1=m, 2=f], HEIGHT,
                                                 WEIGHT, DOB, STUDY_DATE, AGE), as the real IXI.xls
        BraTS21/BraTS2021_00000/BraTS2021_00000_{t2,seg}.nii.gz
                                                 tumour brains, skull-stripped, in atlas space; seg 0/1/2/4
        MSLUB/patient01/{T2,consensus_gt}.nii.gz MS brains, skull-stripped, in atlas space; binary mask
        truth/{IXI,BraTS21,MSLUB}/<name>_mask.nii.gz   brain mask of each volume (ground truth)
        truth/{IXI,BraTS21,MSLUB}/<name>.json          parameters used (pose, scale, lesions, ...)

    "Atlas space" is the grid of :func:`synthetic_atlas`.

    Args:
        out_dir: output folder (created).
        n_healthy, n_tumour, n_ms: number of subjects of each kind.
        seed: cohort seed; the same seed gives bit-identical files.
        skull: add extra-axial CSF, skull and scalp around the healthy brains.
        workers: processes generating subjects in parallel.
        cfg: generator settings.

    Returns:
        ``out_dir`` as a :class:`~pathlib.Path`.
    """
    counts = {"n_healthy": n_healthy, "n_tumour": n_tumour, "n_ms": n_ms}
    out = _write_subjects("raw", out_dir, counts, seed=seed, workers=workers, skull=skull, cfg=cfg)
    if n_healthy:
        rows = [demographics(i, seed, cfg) for i in range(n_healthy)]
        save_csv(list(rows[0]), [list(r.values()) for r in rows], out / "IXI" / "IXI.csv")
    return out


def make_synthetic_root(
    out_dir: str | os.PathLike,
    *,
    n_healthy: int,
    n_tumour: int,
    n_ms: int,
    seed: int,
    workers: int = 1,
    cfg: SynthConfig = SynthConfig(),
) -> Path:
    """Write a preprocessed data root (DESIGN.md layout) directly, without raw volumes.

    Files written under ``out_dir`` (volumes ``cfg.root_shape`` = 192x192x160 at 1 mm, atlas space,
    skull-stripped, no bias field, float32)::

        Train/ixi/{t2,mask}/IXI002-Synth-0002_{t2,mask}.nii.gz
        Test/Brats21/{t2,mask,seg}/BraTS2021_00000_{t2,mask,seg}.nii.gz   (seg labels 0/1/2/4)
        Test/MSLUB/{t2,mask,seg}/patient01_{t2,mask,seg}.nii.gz           (seg 0/1)
        splits/{IXI_train_fold0..4,IXI_val_fold0..4,IXI_test,Brats21_val,Brats21_test,MSLUB_val,MSLUB_test}.csv
        params/<name>.json                                                 parameters of each subject

    Args:
        out_dir: the data root (created).
        n_healthy, n_tumour, n_ms: number of subjects of each kind (``n_healthy >= 7`` fills every
            IXI split; ``n_tumour, n_ms >= 2`` fill both val and test).
        seed: cohort seed (also seeds the splits).
        workers: processes generating subjects in parallel.
        cfg: generator settings.

    Returns:
        ``out_dir`` as a :class:`~pathlib.Path`.
    """
    counts = {"n_healthy": n_healthy, "n_tumour": n_tumour, "n_ms": n_ms}
    out = _write_subjects("root", out_dir, counts, seed=seed, workers=workers, skull=False, cfg=cfg)
    ages = [float(demographics(i, seed, cfg)["AGE"]) for i in range(n_healthy)]
    write_root_splits(out, n_healthy=n_healthy, n_tumour=n_tumour, n_ms=n_ms, ages=ages, seed=seed)
    return out


def synthetic_atlas(out_dir: str | os.PathLike, cfg: SynthConfig = SynthConfig()) -> Path:
    """Write the cohort's atlas (a T2-like template, not SRI24) once; return its T2 path.

    Writes ``template_t2.nii.gz`` (T2-like contrast from nilearn's MNI152 GM/WM maps and the derived
    CSF, skull-stripped, WM = 1000) and ``template_mask.nii.gz`` on nilearn's MNI152 grid. This is the
    "atlas space" of the synthetic BraTS/MSLUB-like volumes and the registration target of the demo
    (pass it as ``--atlas`` to preprocessing); it stands in for SRI24 when the user has no copy.
    """
    out = Path(out_dir)
    t2_path, mask_path = out / "template_t2.nii.gz", out / "template_mask.nii.gz"
    if t2_path.is_file() and mask_path.is_file():
        return t2_path
    atlas = load_atlas(cfg.anatomy.resolution_mm, cfg.anatomy.pad_mm)
    _, affine = atlas_grid(cfg)
    crop = (slice(atlas.pad, -atlas.pad or None),) * 3
    template = template_t2(cfg.anatomy.resolution_mm, cfg.anatomy.pad_mm, cfg.contrast)
    save_nifti(atlas.mask[crop].astype(np.uint8), affine, mask_path)
    save_nifti((template[crop] * TEMPLATE_WM_LEVEL).astype(np.float32), affine, t2_path)
    return t2_path


#: white-matter intensity of the written template
TEMPLATE_WM_LEVEL = 1000.0


# ---------------------------------------------------------------- splits ----------------


def _n_val(n: int, fraction: float) -> int:
    """Validation count: the fraction of ``n``, at least 1 while leaving at least 1 for the other split."""
    return 0 if n < 2 else int(min(max(1, round(fraction * n)), n - 1))


def _stratified_pick(ages: np.ndarray, n_pick: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of ``n_pick`` subjects, one random subject per age bin of equal count."""
    if n_pick == 0:
        return np.zeros(0, dtype=int)
    order = np.argsort(ages, kind="stable")
    return np.array(sorted(int(rng.choice(b)) for b in np.array_split(order, n_pick)), dtype=int)


def write_root_splits(
    root: str | os.PathLike, *, n_healthy: int, n_tumour: int, n_ms: int, ages: Sequence[float], seed: int
) -> dict[str, Path]:
    """Write the split CSVs of a synthetic data root (the file names of DESIGN.md), age-stratified.

    IXI: a test set, then ``n_folds`` train/val folds of the rest (val age-stratified, drawn per
    fold); BraTS21 and MSLUB: val/test. Proportions and fold count are
    :class:`~pddpm_monai.data.splits.SplitConfig`'s (DESIGN.md's, scaled down), with at least one
    subject per split when the cohort allows. A stand-in for :func:`pddpm_monai.data.splits.make_splits`
    with the same outputs.

    Returns:
        split name -> CSV path.
    """
    root, split = Path(root), SplitConfig()
    rng = subject_rng(seed, "splits", 0)
    ages_arr = np.asarray(ages, dtype=np.float64)

    def row(folder: str, name: str, age: object = "") -> list:
        """A CSV row: healthy IXI subjects have an age and no seg, the lesion datasets a seg."""
        healthy = folder == "Train/ixi"
        t2, mask, seg = (f"/{folder}/{kind}/{name}_{kind}.nii.gz" for kind in ("t2", "mask", "seg"))
        return [f"{name}_t2.nii.gz", age, int(not healthy), t2, mask, "" if healthy else seg]

    def ixi_row(i: int) -> list:
        return row("Train/ixi", ixi_id(i), ages_arr[i])

    n_test = min(max(1, round(split.ixi_test * n_healthy)), n_healthy - 2) if n_healthy >= 3 else 0
    test = _stratified_pick(ages_arr, n_test, rng)
    rest = np.setdiff1d(np.arange(n_healthy), test)
    splits: dict[str, list[list]] = {"IXI_test": [ixi_row(i) for i in test]}
    for fold in range(split.n_folds):
        val = rest[_stratified_pick(ages_arr[rest], _n_val(len(rest), split.ixi_val), rng)]
        splits[f"IXI_train_fold{fold}"] = [ixi_row(i) for i in rest if i not in val]
        splits[f"IXI_val_fold{fold}"] = [ixi_row(i) for i in val]
    for prefix, n, fraction, name_of in (
        ("Brats21", n_tumour, split.brats_val, brats_id),
        ("MSLUB", n_ms, split.mslub_val, mslub_id),
    ):
        perm = rng.permutation(n)
        n_val = _n_val(n, fraction)
        splits[f"{prefix}_val"] = [row(f"Test/{prefix}", name_of(i)) for i in sorted(perm[:n_val])]
        splits[f"{prefix}_test"] = [row(f"Test/{prefix}", name_of(i)) for i in sorted(perm[n_val:])]
    return {
        name: save_csv(SPLIT_COLUMNS, rows, root / "splits" / f"{name}.csv", index=True)
        for name, rows in splits.items()
    }
