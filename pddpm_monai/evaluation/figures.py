"""Figures (matplotlib, Agg backend): PR curves, per-volume overlays, ablation plots.

Every function writes one PNG atomically and returns its path.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from pddpm_monai.evaluation.metrics import pr_curve_from_histogram  # noqa: E402
from pddpm_monai.utils import atomic_path, read_nifti  # noqa: E402

__all__ = [
    "FigureConfig",
    "save_figure",
    "plot_pr_curves",
    "plot_overlay",
    "plot_ablation",
    "pick_cases",
    "run_figures",
]


@dataclass(frozen=True)
class FigureConfig:
    """Figure defaults."""

    dpi: int = 120
    panel_size: float = 3.0
    map_cmap: str = "inferno"


def save_figure(fig: plt.Figure, path: str | os.PathLike, config: Any) -> Path:
    """Write ``fig`` as a PNG at ``config.dpi`` (atomically), close it and return ``path``."""
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=config.dpi, bbox_inches="tight", format="png")
    plt.close(fig)
    return path


def plot_pr_curves(
    curves: Mapping[str, tuple[np.ndarray, np.ndarray]],
    out_path: str | os.PathLike,
    *,
    title: str = "",
    prevalence: float | None = None,
    config: FigureConfig = FigureConfig(),
) -> Path:
    """Precision-recall curves, one per method.

    Args:
        curves: ``label -> (precision, recall)``.
        out_path: the PNG.
        title: figure title (e.g. the dataset).
        prevalence: draw the no-skill line at this lesion prevalence.
    """
    fig, ax = plt.subplots(figsize=(4.5, 4.0))
    for label, (precision, recall) in curves.items():
        ax.plot(recall, precision, label=label)
    if prevalence is not None:
        ax.axhline(prevalence, color="grey", linestyle=":", label="prevalence")
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02), title=title)
    ax.legend(fontsize="small")
    return save_figure(fig, out_path, config)


def _best_slice(seg: np.ndarray | None, scores: np.ndarray) -> int:
    volume = seg if seg is not None and seg.any() else scores
    return int(np.argmax(volume.reshape(-1, volume.shape[-1]).sum(0)))


def plot_overlay(
    image: np.ndarray,
    reconstruction: np.ndarray | None,
    anomaly_map: np.ndarray,
    prediction: np.ndarray,
    ground_truth: np.ndarray | None,
    out_path: str | os.PathLike,
    *,
    title: str = "",
    slice_index: int | None = None,
    config: FigureConfig = FigureConfig(),
) -> Path:
    """Input | reconstruction | anomaly map | binarised | ground truth, on one axial slice.

    Args:
        image, reconstruction, anomaly_map, prediction, ground_truth: 3-D volumes on one grid
            (``reconstruction``/``ground_truth`` may be ``None``: the panel says "n/a").
        out_path: the PNG.
        title: suptitle (e.g. name and Dice).
        slice_index: axial slice (last axis); default: the largest lesion area (else largest score).
    """
    z = _best_slice(ground_truth, anomaly_map) if slice_index is None else slice_index
    panels = [
        ("input", image, "gray"),
        ("reconstruction", reconstruction, "gray"),
        ("anomaly map", anomaly_map, config.map_cmap),
        ("binarised", prediction, "gray"),
        ("ground truth", ground_truth, "gray"),
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(config.panel_size * len(panels), config.panel_size))
    for ax, (name, vol, cmap) in zip(axes, panels):
        ax.set_title(name, fontsize="small")
        ax.axis("off")
        if vol is None:
            ax.text(0.5, 0.5, "n/a", ha="center", va="center", transform=ax.transAxes)
            continue
        ax.imshow(np.rot90(np.asarray(vol, dtype=np.float32)[..., z]), cmap=cmap)
    fig.suptitle(f"{title} (slice {z})" if title else f"slice {z}", fontsize="small")
    return save_figure(fig, out_path, config)


def plot_ablation(
    values: Sequence[float],
    fold_scores: Mapping[str, Sequence[Sequence[float]]],
    out_path: str | os.PathLike,
    *,
    xlabel: str = "patch size",
    ylabel: str = "DICE",
    title: str = "",
    config: FigureConfig = FigureConfig(),
) -> Path:
    """Mean over folds with a ±std envelope against an ablated parameter (paper Fig. 3 / 6).

    Args:
        values: the parameter values (x axis), e.g. patch sizes or t_test.
        fold_scores: ``curve label -> [per value: the per-fold scores]``.
        out_path: the PNG.
    """
    fig, ax = plt.subplots(figsize=(4.5, 3.5))
    x = np.asarray(values, dtype=np.float64)
    for label, per_value in fold_scores.items():
        mean = np.array([np.nanmean(v) for v in per_value])
        std = np.array([np.nanstd(v) for v in per_value])
        ax.plot(x, mean, marker="o", label=label)
        ax.fill_between(x, mean - std, mean + std, alpha=0.25)
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    if len(fold_scores) > 1:
        ax.legend(fontsize="small")
    return save_figure(fig, out_path, config)


def pick_cases(
    records: Sequence[Mapping[str, Any]], column: str, *, higher_is_better: bool = True
) -> dict[str, Any]:
    """The best, median and worst records by ``column`` (NaN rows ignored); ``{}`` when none."""
    valid = [r for r in records if r.get(column) is not None and np.isfinite(r[column])]
    if not valid:
        return {}
    ordered = sorted(valid, key=lambda r: r[column], reverse=higher_is_better)
    return {"best": ordered[0], "median": ordered[len(ordered) // 2], "worst": ordered[-1]}


def run_figures(
    run_dir: Path,
    key: str,
    label: str,
    records: Sequence[Mapping[str, Any]],
    method: str,
    reference: Callable[[Mapping[str, Any]], tuple[np.ndarray, np.ndarray | None]],
) -> list[Path]:
    """The figures of one (run, dataset): PR curve (unhealthy data) and best/median/worst overlays.

    Args:
        run_dir: the run folder (reads ``pr_<key>.npz`` and ``nifti/<key>/``).
        key, label: dataset key and display label.
        records: the per-volume records.
        method: method name for titles.
        reference: loads ``(image, ground truth)`` of a record on the evaluation grid.
    """
    written = []
    figures = run_dir / "figures"
    pr = run_dir / f"pr_{key}.npz"
    if pr.is_file():
        data = np.load(pr)
        curves = {method: pr_curve_from_histogram(data["pos"], data["neg"])}
        prevalence = data["pos"].sum() / max(1, data["pos"].sum() + data["neg"].sum())
        written.append(plot_pr_curves(curves, figures / f"pr_{key}.png", title=label, prevalence=prevalence))
    unhealthy = any(r.get("lesion_voxels") for r in records)
    cases = pick_cases(records, "dice" if unhealthy else "l1", higher_is_better=unhealthy)
    nifti = run_dir / "nifti" / key
    for which, record in cases.items():
        anomaly = nifti / f"{record['name']}_anomaly.nii.gz"
        if not anomaly.is_file():
            continue
        image, seg = reference(record)
        recon_path = nifti / f"{record['name']}_reconstruction.nii.gz"
        recon = read_nifti(recon_path, allow_empty=True)[0] if recon_path.is_file() else None
        anomaly_map = read_nifti(anomaly, allow_empty=True)[0]
        pred = read_nifti(nifti / f"{record['name']}_prediction.nii.gz", allow_empty=True)[0]
        score = f"Dice {record['dice']:.3f}" if unhealthy else f"l1 {record['l1']:.4f}"
        title = f"{method} {label} {which}: {record['name']} ({score})"
        out = figures / f"overlay_{key}_{which}.png"
        written.append(plot_overlay(image, recon, anomaly_map, pred, seg, out, title=title))
    return written
