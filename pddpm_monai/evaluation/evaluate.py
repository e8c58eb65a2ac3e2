"""Evaluate one method (an :class:`~pddpm_monai.methods.scorers.AnomalyScorer`) on a data root.

For every unhealthy dataset: score the validation split, post-process, pool the voxels and find the
exact Dice-optimal threshold; then score each test volume, binarise at that threshold, drop small
components and compute the per-volume metrics. The healthy IXI test split gives the l1 error.

Results of ``evaluate_method(scorer, root, out, fold=k)`` go to ``out/<method>/fold<k>/``::

    run.json                     method, fold, data root, configuration
    thresholds.json              per dataset: threshold, pooled validation Dice, PR bin edges;
                                 "healthy_fpr": thresholds at healthy FPRs (when configured)
    metrics.csv                  one row per test volume: name, dataset, dice, auprc, auroc, l1, threshold, ...,
                                 and the image, mask and seg files that were scored (+ grid_warning)
    summary.json                 per dataset: nanmean/std of each metric, volume counts, NaN counts
    pr_<dataset>.npz             pooled test histogram of lesion/non-lesion scores (PR curve)
    volumes/<dataset>/<name>.json    per-volume record (what makes the run resumable)
    nifti/<dataset>/<name>_{reconstruction,anomaly,prediction}.nii.gz   on the evaluation grid
    nifti/<dataset>_val/<name>_{anomaly,seg}.nii.gz                     cached validation maps
    figures/pr_<dataset>.png, figures/overlay_<dataset>_{best,median,worst}.png

A killed run continues where it stopped: finished volumes (validation maps and test records) are
skipped; a record scored on other image/mask/seg files than the split now lists is scored again.
Files of one subject that disagree in shape or affine after loading by less than the loader refuses
(``ValidateVolumed``: any shape difference, affines beyond 1e-3) are scored with a one-line warning
(logger ``pddpm.evaluation``) and the disagreement is kept in the record's ``grid_warning``. All files are written atomically. The NIfTIs carry the affine of the evaluation grid in
the data root's world coordinates, so ITK-SNAP / 3D Slicer overlay them on the data-root image.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from monai.data import Dataset
from tqdm.auto import tqdm

from pddpm_monai.data.adapters import DATASETS, DatasetSpec
from pddpm_monai.data.datalist import read_split_csv, split_path
from pddpm_monai.data.dataset import volume_dataset
from pddpm_monai.evaluation.metrics import VoxelSet, dice_score, pr_histogram, volume_metrics
from pddpm_monai.evaluation.postprocess import PostprocessConfig, binarize, postprocess_anomaly_map
from pddpm_monai.evaluation.threshold import ValidationPool, fpr_threshold
from pddpm_monai.methods.scorers import AnomalyScorer
from pddpm_monai.names import method_label
from pddpm_monai.transforms.loading import ModelGridConfig, model_grid_transforms
from pddpm_monai.utils import InputError, atomic_path, read_nifti, save_csv, save_json, save_nifti

__all__ = [
    "EvaluationConfig",
    "METRIC_COLUMNS",
    "FILE_COLUMNS",
    "grid_disagreement",
    "run_dir_for",
    "VolumeLoader",
    "evaluate_method",
]


#: anomaly scores down to minus this are round-off and clipped to 0; below it they are refused
NEGATIVE_TOLERANCE = 1e-6

#: columns of the per-volume ``metrics.csv``
METRIC_COLUMNS = (
    "name",
    "dataset",
    "dice",
    "auprc",
    "auroc",
    "best_dice",
    "l1",
    "threshold",
    "lesion_voxels",
    "predicted_voxels",
)

#: columns of ``metrics.csv`` after the metrics: which files were scored, and any grid disagreement
FILE_COLUMNS = ("image", "mask", "seg", "grid_warning")

#: loaded image/mask/seg affines differing by more than this (but within the loader's 1e-3) are warned about
GRID_WARN_TOLERANCE = 1e-6

_log = logging.getLogger("pddpm.evaluation")
_warned: set[tuple[str, ...]] = set()


@dataclass(frozen=True)
class EvaluationConfig:
    """Every default of an evaluation run.

    Attributes:
        datasets: keys of :data:`DATASETS` to evaluate.
        postprocess: erosion, median filter and connected-component settings.
        voxels: voxels ranked by AUPRC/AUROC (``"brain"`` mask or ``"all"``, see metrics).
        grid: ``"model"`` evaluates on the 96x96x50 model grid (the authors' ``resizedEvaluation``);
            ``"full"`` upsamples anomaly map and reconstruction (trilinear) to the 192x192x100 grid
            and compares there with the full-resolution mask and ground truth.
        loading: the model-grid loading settings (crop, percentiles, downsampling).
        smooth: apply the loader's CurvatureFlow to the image (the authors do).
        save_nifti: write reconstruction, anomaly map and prediction per test volume.
        figures: write PR curves and best/median/worst overlays.
        pr_bins: quantile bins of the pooled PR histogram.
        healthy_fpr: false-positive rates on the healthy validation split (``IXI_val_fold<fold>``,
            brain voxels) whose thresholds give extra columns ``dice_fpr_<rate>`` (the authors log
            0.01, 0.05, 0.1); empty = off, which saves scoring the healthy validation scans.
        progress: show progress bars.
    """

    datasets: tuple[str, ...] = ("brats21", "mslub", "ixi")
    postprocess: PostprocessConfig = field(default_factory=PostprocessConfig)
    voxels: VoxelSet = "brain"
    grid: Literal["model", "full"] = "model"
    loading: ModelGridConfig = field(default_factory=ModelGridConfig)
    smooth: bool = True
    save_nifti: bool = True
    figures: bool = True
    pr_bins: int = 512
    healthy_fpr: tuple[float, ...] = ()
    progress: bool = True

    def __post_init__(self):
        unknown = [d for d in self.datasets if d not in DATASETS]
        if unknown:
            raise InputError("--datasets", f"unknown dataset(s) {unknown}; choose from {sorted(DATASETS)}")
        if self.grid not in ("model", "full"):
            raise InputError("--grid", f"grid must be 'model' or 'full', got {self.grid!r}")


def run_dir_for(out_dir: str | os.PathLike, method: str, fold: int) -> Path:
    """The results folder of one (method, fold)."""
    return Path(out_dir) / method / f"fold{fold}"


@dataclass
class _Volume:
    """One subject on the evaluation grid, scored."""

    image: np.ndarray
    mask: np.ndarray
    seg: np.ndarray | None
    reconstruction: np.ndarray | None
    raw_map: np.ndarray
    scores: np.ndarray
    affine: np.ndarray
    grid_warning: str = ""


def grid_disagreement(data: dict[str, Any], tolerance: float = GRID_WARN_TOLERANCE) -> str:
    """How the loaded ``mask``/``seg`` of a subject disagree with its ``image`` in shape or affine ("" if not).

    Args:
        data: loaded channel-first tensors (``MetaTensor`` s carry their affine).
        tolerance: largest absolute affine difference taken as equal.
    """
    ref = data["image"]
    problems = []
    for key in ("mask", "seg"):
        other = data.get(key)
        if other is None:
            continue
        if tuple(other.shape) != tuple(ref.shape):
            problems.append(f"{key} shape {tuple(other.shape[1:])} vs image {tuple(ref.shape[1:])}")
            continue
        a, b = getattr(ref, "affine", None), getattr(other, "affine", None)
        if a is None or b is None:
            continue
        diff = float(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)).max())
        if diff > tolerance:
            problems.append(f"{key} affine differs from the image's by up to {diff:.3g}")
    return "; ".join(problems)


def _warn_grid(item: dict[str, Any], problem: str) -> None:
    files = tuple(str(item.get(k)) for k in ("image", "mask", "seg") if item.get(k))
    if problem and (files, problem) not in _warned:
        _warned.add((files, problem))
        _log.warning(
            "warning: %s: the subject's files disagree after loading (%s); scored anyway: %s",
            files[0],
            problem,
            ", ".join(files[1:]),
        )


class VolumeLoader:
    """Loads subjects onto the evaluation grid (and, for ``grid="full"``, the full grid).

    Loading one subject costs about 2 s on a CPU (CurvatureFlow and spline resampling) and does not
    depend on the method, so evaluating several methods or inference settings on one data root in
    one process should share one ``VolumeLoader(config, cache=True)``: every subject is then loaded
    once and served from memory afterwards (about 5 MB per subject on the 96x96x50 model grid,
    8x as much with ``grid="full"``: mind the memory on large real test sets).
    Served tensors are copies: a scorer that writes into its input cannot change the cache.

    Args:
        config: the evaluation settings whose ``loading``, ``smooth`` and ``grid`` apply.
        cache: keep loaded subjects in memory.

    Example:
        >>> loader = VolumeLoader(EvaluationConfig(), cache=True)  # doctest: +SKIP
        >>> for scorer in scorers:  # doctest: +SKIP
        ...     evaluate_method(scorer, root, out, config=config, loader=loader)
    """

    keys: tuple[str, ...] = ("image", "mask", "seg")

    def __init__(self, config: EvaluationConfig, cache: bool = False) -> None:
        self.settings = (config.loading, config.smooth, config.grid)
        self.cache = cache
        self._model = model_grid_transforms(self.keys, config=config.loading, smooth=config.smooth)
        self._full = None
        if config.grid == "full":
            full = ModelGridConfig(**{**asdict(config.loading), "downsample": 1.0})
            self._full = model_grid_transforms(self.keys, config=full, smooth=config.smooth)
        self._memory: dict[tuple[str, tuple[tuple[str, str], ...]], Dataset] = {}

    @property
    def has_full_grid(self) -> bool:
        """Whether metrics are computed on the full grid (``grid="full"``)."""
        return self._full is not None

    def check(self, config: EvaluationConfig) -> None:
        """Raise ``ValueError`` when ``config`` loads subjects differently from this loader."""
        if (config.loading, config.smooth, config.grid) != self.settings:
            raise ValueError("the VolumeLoader was built for other loading/smooth/grid settings")

    def load(self, subject: dict[str, str], grid: Literal["model", "full"] = "model") -> dict[str, Any]:
        """``{"image", "mask"[, "seg"]}`` of one subject on the model grid or the full grid (only with
        ``grid="full"``), through the data package's :func:`~pddpm_monai.data.dataset.volume_dataset`.

        With ``cache``, each subject's dataset (an in-memory ``CacheDataset``) is kept, keyed by its
        files, so that every method and setting scored in this process reuses it.
        """
        transform = self._model if grid == "model" else self._full
        if not self.cache:
            return volume_dataset([subject], keys=self.keys, cache="none", transform=transform)[0]
        key = (grid, tuple(sorted(subject.items())))
        if key not in self._memory:
            self._memory[key] = volume_dataset([subject], keys=self.keys, cache="memory", transform=transform)
        return {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in self._memory[key][0].items()}


class _Scoring:
    """Loads subjects, runs the scorer and post-processes (shared by validation and test)."""

    def __init__(self, scorer: AnomalyScorer, config: EvaluationConfig, loader: VolumeLoader | None = None):
        self.scorer = scorer
        self.config = config
        self.loader = loader or VolumeLoader(config)
        self.loader.check(config)

    @staticmethod
    def _subject(item: dict[str, Any]) -> dict[str, str]:
        return {k: item[k] for k in VolumeLoader.keys if item.get(k)}

    def reference(self, item: dict[str, Any]) -> tuple[np.ndarray, np.ndarray | None]:
        """``(image, seg or None)`` of a subject on the evaluation grid (for figures)."""
        data = self.loader.load(self._subject(item), "full" if self.loader.has_full_grid else "model")
        seg = data.get("seg")
        return _np(data["image"]), None if seg is None else _np(seg) > 0

    def __call__(self, item: dict[str, Any]) -> _Volume:
        data = self.loader.load(self._subject(item))
        grid_warning = grid_disagreement(data)
        _warn_grid(item, grid_warning)
        image, mask = data["image"], data["mask"]
        with torch.no_grad():
            reconstruction, raw = self.scorer(image, mask)
        gt_file, label = item.get("seg") or item["image"], method_label(self.scorer.name)
        raw = _checked(raw, image, gt_file, "anomaly map", label)
        if reconstruction is not None:
            reconstruction = _checked(reconstruction, image, gt_file, "reconstruction", label)
        grid = data  # the evaluation grid
        if self.loader.has_full_grid:
            grid = self.loader.load(self._subject(item), "full")
            shape = tuple(grid["image"].shape[1:])
            raw = _upsample(raw, shape)
            reconstruction = None if reconstruction is None else _upsample(reconstruction, shape)
        image_np, mask_np, seg = _np(grid["image"]), _np(grid["mask"]), grid.get("seg")
        scores = postprocess_anomaly_map(raw, mask_np, self.config.postprocess)
        affine = np.asarray(grid["image"].affine, dtype=np.float64)
        seg_np = None if seg is None else _np(seg) > 0
        return _Volume(image_np, mask_np > 0, seg_np, reconstruction, raw, scores, affine, grid_warning)


def _np(x: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().float().numpy()
    return np.squeeze(np.asarray(x))


def _checked(out: Any, image: torch.Tensor, gt_file: str, what: str, method: str) -> np.ndarray:
    """The scorer's output as a 3-D array on the image grid, or a one-line error naming the file."""
    arr = _np(torch.as_tensor(out))
    expected = tuple(image.shape[1:])
    if arr.shape != expected:
        raise InputError(
            gt_file,
            f"{method}'s {what} has grid {arr.shape}, which differs from the ground truth's {expected}",
        )
    if not np.isfinite(arr).all():
        raise InputError(gt_file, f"{method}'s {what} contains NaN/Inf voxels")
    if what == "anomaly map":
        # the pooled threshold search considers thresholds >= 0 (masked-out voxels score 0);
        # round-off below 0 (e.g. -1e-17 from resampling) is clipped, real negative scores refused
        if (arr < -NEGATIVE_TOLERANCE).any():
            raise InputError(gt_file, f"{method}'s anomaly map has negative scores; scores must be >= 0")
        arr = np.maximum(arr, 0.0)
    return arr.astype(np.float32)


def _upsample(arr: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    t = torch.as_tensor(arr, dtype=torch.float32)[None, None]
    return F.interpolate(t, size=shape, mode="trilinear", align_corners=True)[0, 0].numpy()


def _bar(items: Sequence, desc: str, config: EvaluationConfig):
    return tqdm(items, desc=desc, disable=not config.progress, leave=False)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def _cache_thresholds(run_dir: Path, key: str, entry: dict[str, Any]) -> dict[str, Any]:
    """Store ``entry`` under ``key`` in the run's thresholds.json (other keys kept) and return it."""
    path = run_dir / "thresholds.json"
    save_json({**(_read_json(path) or {}), key: entry}, path)
    return entry


def _find_threshold(
    scoring: _Scoring, key: str, spec: DatasetSpec, data_root: Path, run_dir: Path
) -> dict[str, Any]:
    """Threshold of one unhealthy dataset from its validation split (cached in thresholds.json)."""
    cached = (_read_json(run_dir / "thresholds.json") or {}).get(key)
    if cached is not None:
        return cached
    config = scoring.config
    items = read_split_csv(split_path(data_root, spec.val_split), data_root)
    if not items:
        raise InputError(split_path(data_root, spec.val_split), "validation split is empty")
    pool = ValidationPool(floor=0.0)
    cache_dir = run_dir / "nifti" / f"{key}_val"
    for item in _bar(items, f"{method_label(scoring.scorer.name)} {spec.title} val", config):
        map_path = cache_dir / f"{item['name']}_anomaly.nii.gz"
        seg_path = cache_dir / f"{item['name']}_seg.nii.gz"
        if map_path.is_file() and seg_path.is_file():
            scores, _ = read_nifti(map_path, allow_empty=True)
            seg, _ = read_nifti(seg_path, allow_empty=True)
        else:
            vol = scoring(item)
            if vol.seg is None:
                raise InputError(item["image"], f"validation subject of {spec.title} has no seg_path")
            scores, seg = vol.scores, vol.seg.astype(np.uint8)
            save_nifti(seg, vol.affine, seg_path)
            save_nifti(scores, vol.affine, map_path)
        pool.add(scores, seg)
    try:
        best = pool.best()
    except ValueError:
        raise InputError(
            split_path(data_root, spec.val_split), "no lesion voxel in the validation split: no threshold"
        ) from None
    entry = {
        "threshold": best.threshold,
        "val_dice": best.dice,
        "n_val": pool.n_volumes,
        "bin_edges": pool.bin_edges(config.pr_bins).tolist(),
    }
    return _cache_thresholds(run_dir, key, entry)


def _fpr_column(rate: float) -> str:
    return f"dice_fpr_{rate:g}"


def _healthy_thresholds(scoring: _Scoring, data_root: Path, run_dir: Path, fold: int) -> dict[str, float]:
    """Thresholds at the configured healthy FPRs, from ``IXI_val_fold<fold>`` (cached in thresholds.json)."""
    rates = scoring.config.healthy_fpr
    if not rates:
        return {}
    cached = (_read_json(run_dir / "thresholds.json") or {}).get("healthy_fpr") or {}
    if all(_fpr_column(r) in cached for r in rates):
        return {_fpr_column(r): float(cached[_fpr_column(r)]) for r in rates}
    csv_path = split_path(data_root, f"IXI_val_fold{fold}")
    items = read_split_csv(csv_path, data_root)
    if not items:
        raise InputError(csv_path, "healthy validation split is empty")
    scores = [
        (vol := scoring(item)).scores[vol.mask]
        for item in _bar(items, f"{method_label(scoring.scorer.name)} IXI val", scoring.config)
    ]
    pooled = np.concatenate(scores)
    return _cache_thresholds(
        run_dir, "healthy_fpr", {_fpr_column(r): fpr_threshold(pooled, r) for r in rates}
    )


def _test_volume(
    scoring: _Scoring,
    item: dict[str, Any],
    key: str,
    threshold: float | None,
    edges: np.ndarray | None,
    run_dir: Path,
    fpr_thresholds: dict[str, float],
) -> dict[str, Any]:
    """Score, binarise and measure one test volume; write its NIfTIs; return its record."""
    config = scoring.config
    vol = scoring(item)
    prediction = binarize(vol.scores, np.inf if threshold is None else threshold, config.postprocess)
    metrics = volume_metrics(
        vol.scores,
        prediction,
        vol.seg,
        vol.mask,
        image=vol.image,
        reconstruction=vol.reconstruction,
        raw_anomaly_map=vol.raw_map,
        voxels=config.voxels,
    )
    record: dict[str, Any] = {
        "name": item["name"],
        "dataset": key,
        **asdict(metrics),
        "threshold": threshold,
        "image": item["image"],
        "mask": item.get("mask"),
        "seg": item.get("seg"),
        "grid_warning": vol.grid_warning,
    }
    lesion = vol.seg is not None and vol.seg.any()
    for column, t in fpr_thresholds.items():
        record[column] = (
            dice_score(binarize(vol.scores, t, config.postprocess), vol.seg) if lesion else np.nan
        )
    if edges is not None and vol.seg is not None:
        pos, neg = pr_histogram(vol.scores, vol.seg, edges, vol.mask if config.voxels == "brain" else None)
        record["pr_pos"], record["pr_neg"] = pos.tolist(), neg.tolist()
    if config.save_nifti:
        maps = {
            "reconstruction": vol.reconstruction,
            "anomaly": vol.scores,
            "prediction": prediction.astype(np.uint8),
        }
        for suffix, array in maps.items():
            if array is not None:
                save_nifti(array, vol.affine, run_dir / "nifti" / key / f"{item['name']}_{suffix}.nii.gz")
    return record


def _summary(records: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"n_volumes": len(records)}
    for column in ("dice", "auprc", "auroc", "best_dice", "l1"):
        values = np.array([np.nan if r[column] is None else r[column] for r in records], dtype=np.float64)
        finite = values[np.isfinite(values)]
        out[column] = {
            "mean": float(finite.mean()) if finite.size else None,
            "std": float(finite.std()) if finite.size else None,
            "n_nan": int(values.size - finite.size),
        }
    return out


def write_csv(rows: Sequence[dict[str, Any]], path: Path, columns: Sequence[str]) -> None:
    """Write ``rows`` atomically as a CSV of ``columns`` (other keys of a row are left out)."""
    save_csv(columns, ([row.get(c, "") for c in columns] for row in rows), path)


def evaluate_method(
    scorer: AnomalyScorer,
    data_root: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    fold: int = 0,
    config: EvaluationConfig | None = None,
    extra: dict[str, Any] | None = None,
    loader: VolumeLoader | None = None,
) -> Path:
    """Evaluate ``scorer`` on the data root's splits; resumable per volume.

    Args:
        scorer: the method (volume in, ``(reconstruction or None, anomaly map)`` out).
        data_root: data root with ``splits/`` (DESIGN.md layout).
        out_dir: results root; this run goes to ``out_dir/<scorer.name>/fold<fold>``.
        fold: the training fold of the checkpoint (a label for the results; Thresh has one fold).
        config: evaluation settings.
        extra: free-form facts recorded in ``run.json`` (checkpoint path, t_test, patch size, ...).
        loader: a :class:`VolumeLoader` shared by several evaluations (``cache=True`` loads each
            subject once); by default a fresh, uncached one.

    Returns:
        the run folder.
    """
    config = config or EvaluationConfig()
    data_root = Path(data_root)
    run_dir = run_dir_for(out_dir, scorer.name, fold)
    run_dir.mkdir(parents=True, exist_ok=True)
    run_info = {"method": scorer.name, "fold": fold, "data_root": str(data_root), "config": asdict(config)}
    save_json({**run_info, **(extra or {})}, run_dir / "run.json")
    scoring = _Scoring(scorer, config, loader)
    fpr_thresholds = _healthy_thresholds(scoring, data_root, run_dir, fold)
    all_rows: list[dict[str, Any]] = []
    summary: dict[str, Any] = {}
    for key in config.datasets:
        spec = DATASETS[key]
        test_csv = split_path(data_root, spec.test_split)
        items = read_split_csv(test_csv, data_root)
        threshold, edges = None, None
        if spec.unhealthy:
            entry = _find_threshold(scoring, key, spec, data_root, run_dir)
            threshold, edges = float(entry["threshold"]), np.asarray(entry["bin_edges"])
        records = []
        for item in _bar(items, f"{method_label(scorer.name)} {spec.title} test", config):
            record_path = run_dir / "volumes" / key / f"{item['name']}.json"
            record = _read_json(record_path)
            stale = (
                record is None
                or record.get("threshold") != threshold
                or any(record.get(k) != item.get(k) for k in ("image", "mask", "seg"))
            )
            if stale or any(c not in record for c in fpr_thresholds):
                record = _test_volume(scoring, item, key, threshold, edges, run_dir, fpr_thresholds)
                save_json(record, record_path)
            records.append(record)
        all_rows.extend(records)
        summary[key] = {"threshold": threshold, **_summary(records)}
        if edges is not None:
            _save_pr(records, edges, run_dir / f"pr_{key}.npz")
        if config.figures:
            from pddpm_monai.evaluation.figures import run_figures

            run_figures(run_dir, key, spec.title, records, method_label(scorer.name), scoring.reference)
    write_csv(all_rows, run_dir / "metrics.csv", [*METRIC_COLUMNS, *fpr_thresholds, *FILE_COLUMNS])
    save_json(summary, run_dir / "summary.json")
    return run_dir


def _save_pr(records: list[dict[str, Any]], edges: np.ndarray, path: Path) -> None:
    with_hist = [r for r in records if "pr_pos" in r]
    if not with_hist:
        return
    pos = np.sum([r["pr_pos"] for r in with_hist], axis=0)
    neg = np.sum([r["pr_neg"] for r in with_hist], axis=0)
    with atomic_path(path) as tmp, tmp.open("wb") as f:
        np.savez(f, pos=pos, neg=neg, edges=edges)
