"""Figures and the results report of the pipeline: the detect PNG and the demo's ``report.md`` / ``report.html``.

- :func:`plot_detection`: axial / coronal / sagittal slices of a native scan through the centre of
  its largest detected component, with the anomaly map and the lesion outline on top.
- :func:`read_training_curves` / :func:`plot_training_curves`: the loss curves that the trainer logs
  to TensorBoard (``<run>/tensorboard``), read back with TensorBoard's ``EventAccumulator``.
- :func:`write_report`: a markdown report (and an HTML twin) with the Table-1-style table, PR
  curves, best/median/worst overlays, training curves and the ``tensorboard --logdir`` command.
"""

from __future__ import annotations

import html
import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402
from scipy import ndimage  # noqa: E402

from pddpm_monai.evaluation.figures import save_figure  # noqa: E402
from pddpm_monai.names import method_label  # noqa: E402
from pddpm_monai.utils import atomic_path  # noqa: E402

__all__ = [
    "ReportConfig",
    "to_ras",
    "largest_component_centre",
    "plot_detection",
    "read_training_curves",
    "plot_training_curves",
    "ReportSection",
    "write_report",
    "build_demo_report",
]


@dataclass(frozen=True)
class ReportConfig:
    """Figure defaults of the pipeline's reports."""

    dpi: int = 110
    panel_size: float = 3.2
    map_cmap: str = "hot"
    map_alpha: float = 0.55
    outline_colour: str = "cyan"
    #: anomaly-map values below this fraction of its maximum are transparent
    map_floor: float = 0.05


def to_ras(array: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(array, voxel sizes)`` reordered/flipped to the closest RAS orientation (for display)."""
    ornt = nib.orientations.io_orientation(np.asarray(affine))
    out = nib.orientations.apply_orientation(np.asarray(array), ornt)
    zooms = np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(0))
    return out, zooms[ornt[:, 0].astype(int)]


def largest_component_centre(binary: np.ndarray) -> tuple[int, ...] | None:
    """Voxel index of the centre of mass of the largest 26-connected component (``None`` if empty)."""
    labels, n = ndimage.label(np.asarray(binary) > 0, structure=np.ones((3, 3, 3), bool))
    if n == 0:
        return None
    largest = int(np.argmax(np.bincount(labels.ravel())[1:])) + 1
    return tuple(int(round(c)) for c in ndimage.center_of_mass(labels == largest))


def plot_detection(
    image: np.ndarray,
    anomaly_map: np.ndarray,
    lesions: np.ndarray,
    affine: np.ndarray,
    out_path: str | os.PathLike,
    *,
    title: str = "",
    config: ReportConfig = ReportConfig(),
) -> Path:
    """Axial, coronal and sagittal slices through the largest detected component (or the brain centre).

    Displayed in RAS (neurological convention: the subject's left on the left), with the voxel
    aspect ratio of the scan; the anomaly map is overlaid in ``config.map_cmap`` and the lesion
    mask outlined.

    Args:
        image, anomaly_map, lesions: 3-D arrays on the native grid of ``affine``.
        affine: the scan's affine.
        out_path: the PNG.
        title: figure title (e.g. the scan's name).
    """
    img, zooms = to_ras(image, affine)
    amap, _ = to_ras(anomaly_map, affine)
    les, _ = to_ras(lesions, affine)
    centre = largest_component_centre(les)
    where = "largest detected component"
    if centre is None:
        centre = tuple(int(s) // 2 for s in img.shape)
        where = "volume centre (no lesion detected)"
    top = float(amap.max()) or 1.0
    views = (("axial", 2, (0, 1)), ("coronal", 1, (0, 2)), ("sagittal", 0, (1, 2)))
    fig, axes = plt.subplots(1, 3, figsize=(config.panel_size * 3, config.panel_size))
    for ax, (name, axis, (a, b)) in zip(axes, views):
        index = [slice(None)] * 3
        index[axis] = centre[axis]
        cut = tuple(index)
        aspect = zooms[b] / zooms[a]
        ax.imshow(img[cut].T, cmap="gray", origin="lower", aspect=aspect)
        overlay = np.ma.masked_less(amap[cut].T, config.map_floor * top)
        ax.imshow(
            overlay,
            cmap=config.map_cmap,
            alpha=config.map_alpha,
            origin="lower",
            aspect=aspect,
            vmin=0,
            vmax=top,
        )
        if les[cut].any():
            ax.contour(les[cut].T.astype(float), levels=[0.5], colors=config.outline_colour, linewidths=0.8)
        ax.set_title(f"{name} {centre[axis]}", fontsize="small")
        ax.axis("off")
    fig.suptitle(f"{title}: slices through the {where}" if title else where, fontsize="small")
    return save_figure(fig, out_path, config)


# --------------------------------------------------------------------------------- training curves


def read_training_curves(log_dir: str | os.PathLike) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Scalar curves of a TensorBoard log folder: ``tag -> (steps, values)`` (empty if none)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    log_dir = Path(log_dir)
    if not log_dir.is_dir():
        return {}
    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    acc.Reload()
    curves = {}
    for tag in acc.Tags().get("scalars", []):
        events = acc.Scalars(tag)
        curves[tag] = (np.array([e.step for e in events]), np.array([e.value for e in events]))
    return curves


def plot_training_curves(
    runs: Mapping[str, str | os.PathLike],
    out_path: str | os.PathLike,
    *,
    config: ReportConfig = ReportConfig(),
) -> Path | None:
    """One row per run (its TensorBoard folder), one panel per logged loss against its step.

    Returns:
        the PNG, or ``None`` when no run has any scalar.
    """
    curves = {name: read_training_curves(folder) for name, folder in runs.items()}
    curves = {name: c for name, c in curves.items() if c}
    if not curves:
        return None
    tags = sorted({tag for c in curves.values() for tag in c})
    size = (config.panel_size * 1.4 * len(tags), config.panel_size * len(curves))
    fig, axes = plt.subplots(len(curves), len(tags), figsize=size, squeeze=False)
    for row, (name, run) in zip(axes, curves.items()):
        for ax, tag in zip(row, tags):
            if tag not in run:
                ax.axis("off")
                continue
            steps, values = run[tag]
            ax.plot(steps, values, marker="." if len(steps) < 30 else None)
            unit = "epoch" if tag.startswith("val") else "iteration"
            ax.set(title=f"{name}: {tag}", xlabel=unit, ylabel="loss")
    fig.tight_layout()
    return save_figure(fig, out_path, config)


# ------------------------------------------------------------------------------------------ report


@dataclass(frozen=True)
class ReportSection:
    """A section of the report: a heading, markdown text and images (paths relative to the report)."""

    title: str
    text: str = ""
    images: Sequence[str] = ()


def _md_table_to_html(lines: list[str]) -> str:
    rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in lines]
    rows = [r for r in rows if not all(re.fullmatch(r":?-{3,}:?", c) for c in r)]
    head = "".join(f"<th>{html.escape(c)}</th>" for c in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows[1:])
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _markdown_to_html(text: str) -> str:
    """Just enough markdown for the report: tables, fenced code, paragraphs, inline code."""
    out, table, code = [], [], None
    for line in text.splitlines() + [""]:
        if code is not None:
            if line.startswith("```"):
                out.append(f"<pre><code>{html.escape(chr(10).join(code))}</code></pre>")
                code = None
            else:
                code.append(line)
            continue
        if line.startswith("```"):
            code = []
            continue
        if line.lstrip().startswith("|"):
            table.append(line)
            continue
        if table:
            out.append(_md_table_to_html(table))
            table = []
        if line.strip():
            inline = re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(line))
            out.append(f"<p>{inline}</p>")
    return "\n".join(out)


def write_report(
    out_dir: str | os.PathLike, title: str, sections: Sequence[ReportSection]
) -> dict[str, Path]:
    """Write ``report.md`` and its HTML twin ``report.html`` in ``out_dir``; images are linked, not copied.

    Args:
        out_dir: where the report goes (image paths are relative to it).
        title: the report's title.
        sections: its sections, in order.

    Returns:
        ``{"report.md": path, "report.html": path}``.
    """
    out = Path(out_dir)
    md = [f"# {title}", ""]
    parts = [f"<h1>{html.escape(title)}</h1>"]
    for section in sections:
        md += [f"## {section.title}", ""]
        parts.append(f"<h2>{html.escape(section.title)}</h2>")
        if section.text:
            md += [section.text.rstrip(), ""]
            parts.append(_markdown_to_html(section.text))
        for image in section.images:
            alt = " ".join(Path(image).with_suffix("").parts[-4:])
            md += [f"![{alt}]({image})", ""]
            parts.append(
                f'<p><img src="{html.escape(image)}" alt="{html.escape(alt)}" style="max-width:100%"></p>'
            )
    style = "body{font-family:sans-serif;max-width:70em;margin:auto}table{border-collapse:collapse}td,th{border:1px solid #999;padding:2px 6px}"
    page = f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>{style}</style></head><body>{''.join(parts)}</body></html>\n"
    written = {"report.md": out / "report.md", "report.html": out / "report.html"}
    for text, path in zip(("\n".join(md), page), written.values()):
        with atomic_path(path) as tmp:
            tmp.write_text(text, encoding="utf-8")
    return written


# ------------------------------------------------------------------------------------- demo report

#: what the demo's numbers are (and are not)
DEMO_DISCLAIMER = (
    "Synthetic cohort, small networks trained for minutes on the CPU, one fold: the numbers show "
    "that the pipeline runs end to end, not the paper's results (Table 1 of Behrendt et al. needs "
    "IXI/BraTS21/MSLUB, the full networks and 5 folds: see the README). `pDDPM` is scored on the "
    "authors' patch grid; `pDDPM blend` is the same network on the blend grid (half-stride patches "
    "stitched with a Gaussian window: no seams along the patch borders; `--patch-grid blend`)."
)


def _rel(path: Path, out: Path) -> str:
    return path.relative_to(out).as_posix()


def _existing(paths: Sequence[Path], out: Path) -> list[str]:
    return [_rel(p, out) for p in paths if p.is_file()]


def build_demo_report(
    paths: Any, methods: Sequence[str], stages: Mapping[str, Any], scored: Sequence[str] = ()
) -> dict[str, Path]:
    """The demo's ``report.md`` / ``report.html`` from the files its stages wrote.

    Args:
        paths: the demo's :class:`~pddpm_monai.pipeline.demo.DemoPaths`.
        methods: the trained methods (their runs and results folders).
        stages: the content of ``stages.json`` (timings and notes per stage).
        scored: further results folders with overlays (``pddpm_blend``: pDDPM on another grid).

    Returns:
        ``name -> path`` of the written report files (and the training-curves PNG).
    """
    out = Path(paths.out)
    results = Path(paths.results)
    table = results / "table.md"
    datasets = ("brats21", "mslub")
    overlays = [
        results / method / "fold0" / "figures" / f"overlay_{d}_{w}.png"
        for method in [*methods, *scored, "Thresh"]
        for d in datasets
        for w in ("best", "median", "worst")
    ]
    sections = [
        ReportSection(
            "Table 1 (synthetic demo)",
            (table.read_text(encoding="utf-8") if table.is_file() else "(no table)")
            + "\n\n"
            + DEMO_DISCLAIMER,
        ),
        ReportSection(
            "Precision-recall curves",
            "Pooled test voxels inside the brain.",
            _existing([results / "figures" / f"pr_{d}.png" for d in datasets], out),
        ),
        ReportSection(
            "Best, median and worst test cases",
            "Input, reconstruction, anomaly map, binarised map (validation threshold) and ground truth "
            "(the PR curves above compare all methods).",
            _existing(overlays, out),
        ),
    ]
    written: dict[str, Path] = {}
    runs = {method_label(m): Path(paths.runs) / m / "tensorboard" for m in methods}
    curves = plot_training_curves(runs, out / "figures" / "training_curves.png")
    if curves is not None:
        written["training_curves"] = curves
    sections.append(
        ReportSection(
            "Training curves",
            f"Read from the TensorBoard logs. Browse them with:\n\n```\ntensorboard --logdir {paths.runs}\n```",
            _existing([out / "figures" / "training_curves.png"], out),
        )
    )
    detect_dir = Path(paths.detect)
    summaries = sorted(detect_dir.glob("*_summary.json")) if detect_dir.is_dir() else []
    if summaries:
        s = json.loads(summaries[0].read_text(encoding="utf-8"))
        text = (
            f"`pddpm detect` on `{Path(s['scan']).name}` (a raw test scan, mapped back to its own grid): "
            f"{s['n_components']} component(s), {s['lesion_volume_ml']:.2f} ml, threshold "
            f"{s['threshold']:.4g} from {s['threshold_source']}. Outputs: `{_rel(detect_dir, out)}/`."
        )
        sections.append(
            ReportSection(
                "Detection on a new scan", text, _existing(sorted(detect_dir.glob("*_report.png")), out)
            )
        )
    rows = ["| stage | seconds | note |", "|---|---|---|"]
    rows += [
        f"| {name} | {info.get('seconds', '')} | {info.get('note', '')} |" for name, info in stages.items()
    ]
    sections.append(ReportSection("Stages", "\n".join(rows)))
    written.update(write_report(out, "pddpm-monai demo report", sections))
    return written
