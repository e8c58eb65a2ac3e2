"""Mid-slice previews (axial, coronal, sagittal; through the lesion when a label map is given) of NIfTI volumes, for a human to judge realism.

Volumes are reoriented to RAS (nibabel's closest canonical orientation) so that synthetic scans in
any voxel order and real scans look alike; intensities are windowed per volume at the 1st/99th
percentile of non-zero voxels; a lesion label map, when given, is drawn as a red contour.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np

from pddpm_monai.utils import InputError, atomic_path

__all__ = ["find_preview_volumes", "write_preview"]

#: percentiles of the display window
WINDOW_PERCENTILES = (1.0, 99.0)
#: panel size (inches) of one slice in the figure
PANEL_INCHES = 2.4

#: (image glob relative to the input folder, rule turning an image path into its seg path) per dataset,
#: for the raw layouts and the data root written by :mod:`pddpm_monai.data.synthetic.cohort`
_PATTERNS: tuple[tuple[str, str | None], ...] = (
    ("IXI/*-T2.nii.gz", None),
    ("BraTS21/*/BraTS2021_*_t2.nii.gz", "_t2.nii.gz->_seg.nii.gz"),
    ("MSLUB/*/T2.nii.gz", "T2.nii.gz->consensus_gt.nii.gz"),
    ("Train/ixi/t2/*_t2.nii.gz", None),
    ("Test/Brats21/t2/*_t2.nii.gz", "/t2/->/seg/;_t2.nii.gz->_seg.nii.gz"),
    ("Test/MSLUB/t2/*_t2.nii.gz", "/t2/->/seg/;_t2.nii.gz->_seg.nii.gz"),
)


def _seg_for(image: Path, rule: str | None) -> Path | None:
    if rule is None:
        return None
    text = str(image)
    for part in rule.split(";"):
        old, new = part.split("->")
        text = text.replace(old, new)
    return Path(text) if Path(text).is_file() and Path(text) != image else None


def find_preview_volumes(folder: str | os.PathLike, per_dataset: int = 2) -> list[tuple[Path, Path | None]]:
    """Up to ``per_dataset`` (image, seg-or-None) pairs of each dataset found under ``folder``."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(folder, "input folder not found")
    found: list[tuple[Path, Path | None]] = []
    for pattern, rule in _PATTERNS:
        hits = [p for p in sorted(folder.glob(pattern)) if not p.name.startswith(".")]
        found += [(image, _seg_for(image, rule)) for image in hits[:per_dataset]]
    if not found:
        raise InputError(folder, "no T2 volumes found (expected a synthetic raw cohort or data root)")
    return found


def _canonical(path: Path) -> np.ndarray:
    try:
        img = nib.as_closest_canonical(nib.load(str(path)))
        data = np.asarray(img.dataobj, dtype=np.float32)
    except Exception as err:
        raise InputError(path, f"not a readable NIfTI image ({type(err).__name__})") from None
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise InputError(path, f"expected a 3-D image, got shape {data.shape}")
    return data


def _centre(volume: np.ndarray) -> tuple[int, int, int]:
    """Centre of the bounding box of the non-zero voxels (of the grid when all zero)."""
    nz = np.argwhere(volume > 0)
    centre = ((nz.min(0) + nz.max(0)) // 2) if len(nz) else np.asarray(volume.shape) // 2
    return tuple(int(c) for c in centre)  # type: ignore[return-value]


def _mid_slices(volume: np.ndarray, centre: tuple[int, int, int]) -> list[np.ndarray]:
    """Axial, coronal, sagittal slices through ``centre`` (display orientation)."""
    x, y, z = centre
    return [np.rot90(volume[:, :, z]), np.rot90(volume[:, y, :]), np.rot90(volume[x, :, :])]


def write_preview(
    volumes: Sequence[tuple[str | os.PathLike, str | os.PathLike | None]],
    out_png: str | os.PathLike,
    *,
    titles: Sequence[str] | None = None,
) -> Path:
    """Write a PNG with one row per volume: axial, coronal and sagittal mid-slices.

    Args:
        volumes: ``(image, seg or None)`` paths.
        out_png: output PNG (written atomically).
        titles: row titles (default: the file names).

    Returns:
        the PNG path.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not volumes:
        raise InputError(out_png, "nothing to preview")
    fig, axes = plt.subplots(
        len(volumes), 3, figsize=(3 * PANEL_INCHES, len(volumes) * PANEL_INCHES), squeeze=False
    )
    for row, (image, seg) in enumerate(volumes):
        data = _canonical(Path(image))
        values = data[data > 0]
        lo, hi = np.percentile(values, WINDOW_PERCENTILES) if values.size else (0.0, 1.0)
        seg_data = _canonical(Path(seg)) if seg else None
        # through the lesion when there is one, else through the middle of the head
        centre = _centre(seg_data if seg_data is not None and np.any(seg_data) else data)
        seg_slices = _mid_slices(seg_data, centre) if seg_data is not None else [None] * 3
        for col, (sl, sg) in enumerate(zip(_mid_slices(data, centre), seg_slices)):
            ax = axes[row, col]
            ax.imshow(sl, cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
            if sg is not None and np.any(sg > 0):
                ax.contour(sg > 0, levels=[0.5], colors="red", linewidths=0.6)
            ax.set_axis_off()
        title = titles[row] if titles else Path(image).name.replace(".nii.gz", "")
        axes[row, 0].set_title(title, fontsize=7, loc="left")
    fig.tight_layout()
    out_png = Path(out_png)
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)
    return out_png
