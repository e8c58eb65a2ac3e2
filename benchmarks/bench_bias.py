"""Bias correction: lesion contrast on real BraTS and field removal on a synthetic bias field.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/bench_bias.py [--data ../shared/data] [--threads 1] [--seeds 3]

Two measures, raw vs the faithful masked N4 (``bias_correction="n4"``, the default) vs the
lesion-robust two-pass N4 (``"robust"``, :mod:`pddpm_monai.transforms.bias`), both with the chain's
defaults (shrink 4, 4 levels x 50 iterations, 4 control points):

* **lesion contrast** on the shared BraTS18 T2 cases: the brain is cropped as in the chain (mask =
  non-zero voxels, 192x192x160 box; the registration, an almost-identity on BraTS, is skipped) and
  corrected; reported is the median T2 in the tumour (seg > 0) over the median in the rest of the
  brain, its ratio to the raw one ("kept") and the kept fraction of the excess over 1, plus the
  seconds per scan of each correction (their ratio is the figure to compare across runs);
* **field removal**: the SRI24 T2 (cropped to the 192x192x160 brain box) multiplied by the
  synthetic cohort's IXI-like bias field (``SynthConfig().scanner``: log amplitude 0.18 on 4
  trilinear control points per axis, one random field per seed); reported is the white-matter
  (SRI24 tissue label 3) coefficient of variation before and after each correction.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from _common import DATA

from pddpm_monai.data.prepare import load_subject
from pddpm_monai.data.synthetic.config import SynthConfig
from pddpm_monai.data.synthetic.render import smooth_field, upsample_field
from pddpm_monai.transforms.atlas import resolve_atlas
from pddpm_monai.transforms.bias import n4_correct, robust_n4_correct
from pddpm_monai.transforms.config import PreprocessConfig
from pddpm_monai.transforms.sitk_convert import array_to_sitk, sitk_to_array
from pddpm_monai.transforms.skull_strip import BrainMaskFromImaged
from pddpm_monai.transforms.spatial import CropToBraind, brain_box, crop_or_pad
from pddpm_monai.utils import read_nifti

CASES = ("Brats18_2013_3_1", "Brats18_CBICA_ABM_1", "Brats18_TCIA01_425_1")
METHODS = {"n4": n4_correct, "robust": robust_n4_correct}


def _correct(row: dict, img: sitk.Image, mask: sitk.Image, cfg: PreprocessConfig, measure: Callable) -> dict:
    """``row`` with ``measure`` of each correction of ``img`` and its seconds (printed as it comes)."""
    n4 = {"shrink": cfg.n4_shrink, "iterations": cfg.n4_iterations, "control_points": cfg.n4_control_points}
    for method, correct in METHODS.items():
        start = time.perf_counter()
        out = correct(img, mask, **n4)
        seconds = time.perf_counter() - start
        row[method], row[f"{method}_s"] = measure(sitk_to_array(out)[0]), seconds
    print(json.dumps(row), flush=True)
    return row


def _ratio(v: np.ndarray, seg: np.ndarray, brain: np.ndarray) -> float:
    return float(np.median(v[seg & brain]) / np.median(v[brain & ~seg]))


def brats_contrast(data: Path, cfg: PreprocessConfig) -> list[dict]:
    """Tumour / healthy median ratio and seconds per scan on each BraTS case."""
    rows = []
    for case in CASES:
        folder = data / "brats18" / case
        d = load_subject(folder / f"{case}_t2.nii.gz", folder / f"{case}_seg.nii.gz")
        d = CropToBraind(("t2", "mask", "seg"), roi_size=cfg.roi_size)(BrainMaskFromImaged("t2")(d))
        t2, aff = d["t2"].numpy()[0].astype(np.float32), np.asarray(d["t2"].affine)
        brain = (d["mask"].numpy()[0] > 0) & (t2 > 0)
        seg = d["seg"].numpy()[0] > 0
        img, mask = array_to_sitk(t2, aff), array_to_sitk(brain.astype(np.uint8), aff)

        row = {"case": case, "raw": _ratio(t2, seg, brain), "tumour_ml": float((seg & brain).sum()) / 1000.0}
        rows.append(_correct(row, img, mask, cfg, partial(_ratio, seg=seg, brain=brain)))
    return rows


def field_removal(data: Path, cfg: PreprocessConfig, seeds: int) -> list[dict]:
    """White-matter CoV of the SRI24 T2 under a synthetic bias field, before and after correction."""
    atlas = resolve_atlas(data / "sri24", channel="t2")
    arr, aff = atlas.image
    tissues = read_nifti(atlas.mask_path)[0]
    start = brain_box(tissues > 0, cfg.roi_size)
    t2, grid = crop_or_pad(arr.astype(np.float32), aff, start, cfg.roi_size)
    tissues = crop_or_pad(tissues, aff, start, cfg.roi_size)[0]
    brain, wm = tissues > 0, tissues == 3
    mask = array_to_sitk(brain.astype(np.uint8), grid)
    scanner = SynthConfig().scanner

    def cov(v: np.ndarray) -> float:
        return float(v[wm].std() / v[wm].mean())

    rows = []
    for seed in range(seeds):
        cp = smooth_field(np.random.default_rng(seed), 1, scanner.bias_cells) * scanner.bias_amplitude
        biased = (t2 * np.exp(upsample_field(cp, t2.shape)[0])).astype(np.float32)
        row = {"seed": seed, "atlas": cov(t2), "biased": cov(biased)}
        rows.append(_correct(row, array_to_sitk(biased, grid), mask, cfg, cov))
    return rows


def _table(brats: list[dict], fields: list[dict]) -> str:
    lines = [
        "| BraTS18 case | tumour ml | raw | N4 (kept, excess kept) | robust (kept, excess kept) | N4 s | robust s |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in brats:
        cells = [f"{r[m]:.3f} ({r[m] / r['raw']:.2f}, {(r[m] - 1) / (r['raw'] - 1):.2f})" for m in METHODS]
        lines.append(
            f"| {r['case']} | {r['tumour_ml']:.0f} | {r['raw']:.3f} | {cells[0]} | {cells[1]} "
            f"| {r['n4_s']:.1f} | {r['robust_s']:.1f} |"
        )
    lines += [
        "",
        "| field seed | SRI24 T2 (no field) | biased | N4 | robust | N4 s | robust s |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in fields:
        lines.append(
            f"| {r['seed']} | {r['atlas']:.4f} | {r['biased']:.4f} | {r['n4']:.4f} | {r['robust']:.4f} "
            f"| {r['n4_s']:.1f} | {r['robust_s']:.1f} |"
        )
    times = [r["robust_s"] / r["n4_s"] for r in brats + fields]
    lines.append(
        f"\nrobust / N4 seconds (same run): {np.mean(times):.2f} (range {min(times):.2f}-{max(times):.2f})"
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--threads", type=int, default=1, help="SimpleITK threads (default 1)")
    parser.add_argument("--seeds", type=int, default=3, help="synthetic bias fields (default 3)")
    parser.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    args = parser.parse_args()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(args.threads)
    cfg = PreprocessConfig()
    load = os.getloadavg()
    brats = brats_contrast(args.data, cfg)
    fields = field_removal(args.data, cfg, args.seeds)
    print(_table(brats, fields))
    print(f"load average at start {load[0]:.1f}, at end {os.getloadavg()[0]:.1f}; threads {args.threads}")
    if args.out is not None:
        args.out.write_text(json.dumps({"brats": brats, "fields": fields, "load": load}, indent=1))


if __name__ == "__main__":
    main()
