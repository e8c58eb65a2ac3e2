"""Write synthetic cohorts: raw dataset layouts, a preprocessed data root, and the atlas template.

Subjects are generated in parallel (a process pool), each written atomically; a subject whose
sidecar JSON exists is finished and skipped on re-runs. Each subject depends only on
``(seed, kind, index)``, so the files do not depend on ``workers``.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from pddpm_monai.data.synthetic.anatomy import load_atlas
from pddpm_monai.data.synthetic.config import SynthConfig
from pddpm_monai.data.synthetic.subjects import (
    Subject,
    atlas_grid,
    atlas_subject,
    healthy_raw,
    subject_rng,
    template_t2,
)
from pddpm_monai.utils import InputError, atomic_path, save_json, save_nifti

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

#: split proportions scaled down from DESIGN.md (IXI 158 test of 560; 44 val of 402; BraTS 100 of 1251; MSLUB 10 of 30)
IXI_TEST_FRACTION = 158 / 560
IXI_VAL_FRACTION = 44 / 402
BRATS_VAL_FRACTION = 100 / 1251
MSLUB_VAL_FRACTION = 10 / 30
N_FOLDS = 5
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


def _save_subject(
    subject: Subject, image: Path, mask: Path, seg: Path | None, sidecar: Path, dtype=None
) -> None:
    data = (
        subject.image
        if dtype is None
        else np.clip(np.rint(subject.image), 0, np.iinfo(dtype).max).astype(dtype)
    )
    save_nifti(data, subject.affine, image)
    save_nifti(subject.mask, subject.affine, mask)
    if seg is not None and subject.seg is not None:
        save_nifti(subject.seg, subject.affine, seg)
    save_json(subject.params, sidecar)  # last: its presence marks the subject as finished


def _paths(job: _Job) -> dict[str, Path | None]:
    out, i = Path(job.out), job.index
    truth = out / "truth"
    if job.kind == "healthy_raw":
        name = ixi_id(i)
        return {"image": out / "IXI" / f"{name}-T2.nii.gz", "mask": truth / "IXI" / f"{name}_mask.nii.gz",
                "seg": None, "sidecar": truth / "IXI" / f"{name}.json"}  # fmt: skip
    if job.kind == "tumour_raw":
        name = brats_id(i)
        return {"image": out / "BraTS21" / name / f"{name}_t2.nii.gz", "mask": truth / "BraTS21" / f"{name}_mask.nii.gz",
                "seg": out / "BraTS21" / name / f"{name}_seg.nii.gz", "sidecar": truth / "BraTS21" / f"{name}.json"}  # fmt: skip
    if job.kind == "ms_raw":
        name = mslub_id(i)
        return {"image": out / "MSLUB" / name / "T2.nii.gz", "mask": truth / "MSLUB" / f"{name}_mask.nii.gz",
                "seg": out / "MSLUB" / name / "consensus_gt.nii.gz", "sidecar": truth / "MSLUB" / f"{name}.json"}  # fmt: skip
    folder, name = {
        "healthy_root": ("Train/ixi", ixi_id(i)),
        "tumour_root": ("Test/Brats21", brats_id(i)),
        "ms_root": ("Test/MSLUB", mslub_id(i)),
    }[job.kind]
    base = out / folder
    return {
        "image": base / "t2" / f"{name}_t2.nii.gz",
        "mask": base / "mask" / f"{name}_mask.nii.gz",
        "seg": None if job.kind == "healthy_root" else base / "seg" / f"{name}_seg.nii.gz",
        "sidecar": out / "params" / f"{name}.json",
    }


def _run_job(job: _Job) -> str:
    """Generate and write one subject (skipped when its sidecar exists); returns its image path."""
    paths = _paths(job)
    if paths["sidecar"].is_file() and paths["image"].is_file():
        return str(paths["image"])
    kind, where = job.kind.split("_")
    if kind == "healthy" and where == "raw":
        subject = healthy_raw(job.index, job.seed, job.cfg, skull=job.skull)
    else:
        subject = atlas_subject(
            kind, job.index, job.seed, job.cfg, grid="atlas" if where == "raw" else "root"
        )
    dtype = _BRATS_DTYPE if job.kind == "tumour_raw" else None
    _save_subject(subject, paths["image"], paths["mask"], paths["seg"], paths["sidecar"], dtype)
    return str(paths["image"])


def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)


def _run_jobs(jobs: Sequence[_Job], workers: int, desc: str) -> list[str]:
    """Run ``jobs`` with a process pool of ``workers`` (in-process when 1), with a progress bar."""
    if workers <= 1 or len(jobs) <= 1:
        return [_run_job(job) for job in tqdm(jobs, desc=desc, unit="vol")]
    with ProcessPoolExecutor(max_workers=workers, initializer=_init_worker) as pool:
        return list(tqdm(pool.map(_run_job, jobs), total=len(jobs), desc=desc, unit="vol"))


def _check_args(out_dir: str | os.PathLike, counts: dict[str, int], workers: int) -> Path:
    for name, value in counts.items():
        if int(value) != value or value < 0:
            raise InputError(name, f"must be a non-negative integer, got {value}")
    if workers < 1:
        raise InputError("workers", f"must be >= 1, got {workers}")
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        with atomic_path(out / ".write-test") as tmp:
            tmp.write_text("", encoding="utf-8")
        (out / ".write-test").unlink()
    except OSError as err:
        raise InputError(out, f"output folder is not writable ({err.strerror or err})") from None
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
    out = _check_args(out_dir, {"n_healthy": n_healthy, "n_tumour": n_tumour, "n_ms": n_ms}, workers)
    jobs = [_Job("healthy_raw", i, seed, str(out), skull, cfg) for i in range(n_healthy)]
    jobs += [_Job("tumour_raw", i, seed, str(out), skull, cfg) for i in range(n_tumour)]
    jobs += [_Job("ms_raw", i, seed, str(out), skull, cfg) for i in range(n_ms)]
    load_atlas(cfg.anatomy.resolution_mm, cfg.anatomy.pad_mm)  # warm the cache before forking
    _run_jobs(jobs, workers, "synth raw")
    if n_healthy:
        rows = [demographics(i, seed, cfg) for i in range(n_healthy)]
        _write_csv(out / "IXI" / "IXI.csv", list(rows[0]), [list(r.values()) for r in rows], index=False)
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
    out = _check_args(out_dir, {"n_healthy": n_healthy, "n_tumour": n_tumour, "n_ms": n_ms}, workers)
    jobs = [_Job("healthy_root", i, seed, str(out), False, cfg) for i in range(n_healthy)]
    jobs += [_Job("tumour_root", i, seed, str(out), False, cfg) for i in range(n_tumour)]
    jobs += [_Job("ms_root", i, seed, str(out), False, cfg) for i in range(n_ms)]
    load_atlas(cfg.anatomy.resolution_mm, cfg.anatomy.pad_mm)
    _run_jobs(jobs, workers, "synth root")
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


def _write_csv(path: Path, header: list[str], rows: list[list], *, index: bool = True) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(([""] if index else []) + header)
    for i, row in enumerate(rows):
        writer.writerow(([i] if index else []) + row)
    with atomic_path(path) as tmp:
        tmp.write_text(buf.getvalue(), encoding="utf-8")


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
    root: str | os.PathLike,
    *,
    n_healthy: int,
    n_tumour: int,
    n_ms: int,
    ages: Sequence[float],
    seed: int,
) -> dict[str, Path]:
    """Write the split CSVs of a synthetic data root (the file names of DESIGN.md), age-stratified.

    IXI: a test set, then ``N_FOLDS`` train/val folds of the rest (val age-stratified, drawn per
    fold); BraTS21 and MSLUB: val/test. Proportions are DESIGN.md's, scaled down, with at least one
    subject per split when the cohort allows. A stand-in for :func:`pddpm_monai.data.splits.make_splits`
    with the same outputs.

    Returns:
        split name -> CSV path.
    """
    root = Path(root)
    rng = subject_rng(seed, "splits", 0)
    ages_arr = np.asarray(ages, dtype=np.float64)
    header = ["img_name", "age", "label", "img_path", "mask_path", "seg_path"]

    def ixi_row(i: int) -> list:
        name = ixi_id(i)
        return [f"{name}_t2.nii.gz", ages_arr[i], 0, f"/Train/ixi/t2/{name}_t2.nii.gz",
                f"/Train/ixi/mask/{name}_mask.nii.gz", ""]  # fmt: skip

    def lesion_row(folder: str, name: str) -> list:
        return [f"{name}_t2.nii.gz", "", 1, f"/Test/{folder}/t2/{name}_t2.nii.gz",
                f"/Test/{folder}/mask/{name}_mask.nii.gz", f"/Test/{folder}/seg/{name}_seg.nii.gz"]  # fmt: skip

    n_test = min(max(1, round(IXI_TEST_FRACTION * n_healthy)), n_healthy - 2) if n_healthy >= 3 else 0
    test = _stratified_pick(ages_arr, n_test, rng)
    rest = np.setdiff1d(np.arange(n_healthy), test)
    splits: dict[str, list[list]] = {"IXI_test": [ixi_row(i) for i in test]}
    for fold in range(N_FOLDS):
        val = rest[_stratified_pick(ages_arr[rest], _n_val(len(rest), IXI_VAL_FRACTION), rng)]
        splits[f"IXI_train_fold{fold}"] = [ixi_row(i) for i in rest if i not in val]
        splits[f"IXI_val_fold{fold}"] = [ixi_row(i) for i in val]
    for prefix, folder, n, fraction, name_of in (
        ("Brats21", "Brats21", n_tumour, BRATS_VAL_FRACTION, brats_id),
        ("MSLUB", "MSLUB", n_ms, MSLUB_VAL_FRACTION, mslub_id),
    ):
        perm = rng.permutation(n)
        n_val = _n_val(n, fraction)
        splits[f"{prefix}_val"] = [lesion_row(folder, name_of(i)) for i in sorted(perm[:n_val])]
        splits[f"{prefix}_test"] = [lesion_row(folder, name_of(i)) for i in sorted(perm[n_val:])]
    paths = {}
    for name, rows in splits.items():
        paths[name] = root / "splits" / f"{name}.csv"
        _write_csv(paths[name], header, rows)
    return paths
