"""Seconds per step of the §4.1 preprocessing on real scans, and N4 shrink 4 vs full resolution.

Usage::

    python benchmarks/bench_preprocess.py [--data ../shared/data] [--threads 2] [--full-n4]

Steps timed on the real healthy head scan (with skull: resample, HD-BET fast mode on CPU,
registration to SRI24 T2, crop, N4) and on an IXI-sized volume (the synthetic cohort's IXI-like
head, 150x256x256 at 1.2x0.94x0.94 mm). ``--full-n4`` adds N4 at full resolution on the cropped
1 mm volume (minutes) and reports the time ratio and the difference of the corrected images
against shrink 4, measured in the same run.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
from _common import DATA, cpu_model

from pddpm_monai.data.prepare import load_subject
from pddpm_monai.data.synthetic.cohort import make_synthetic_raw
from pddpm_monai.threads import set_threads
from pddpm_monai.transforms.atlas import resolve_atlas
from pddpm_monai.transforms.bias import N4BiasCorrection, N4BiasCorrectiond, n4_correct
from pddpm_monai.transforms.config import PreprocessConfig
from pddpm_monai.transforms.registration import RegisterToAtlasd
from pddpm_monai.transforms.sitk_convert import array_to_sitk, sitk_to_array
from pddpm_monai.transforms.skull_strip import BrainMaskFromImaged, SkullStrip, SkullStripd
from pddpm_monai.transforms.spatial import CropToBraind, ResampleToSpacingd


def time_chain(path: Path, atlas, *, skull_stripped: bool, config: PreprocessConfig) -> dict[str, float]:
    """Seconds of each step for one scan."""
    axcodes = "".join(nib.aff2axcodes(atlas.image[1]))
    keys = ("t2", "mask", "seg")
    steps = [
        ("resample", ResampleToSpacingd(keys, config.spacing, axcodes)),
        (
            "skull_strip",
            BrainMaskFromImaged("t2")
            if skull_stripped
            else SkullStripd("t2", stripper=SkullStrip("cpu", config.hd_bet_folds, config.hd_bet_tta)),
        ),
        ("register", RegisterToAtlasd(keys, atlas, config=config)),
        ("crop", CropToBraind(keys, roi_size=config.roi_size)),
        ("n4", N4BiasCorrectiond("t2", corrector=N4BiasCorrection(config.n4_shrink, config.n4_iterations))),
    ]
    d = load_subject(path)
    out = {}
    for name, step in steps:
        if name == "n4":
            out["_before_n4"] = d  # type: ignore[assignment]
        start = time.perf_counter()
        d = step(d)
        out[name] = time.perf_counter() - start
    out["total"] = sum(v for k, v in out.items() if not k.startswith("_"))
    return out


def n4_comparison(d: dict, config: PreprocessConfig) -> dict[str, float]:
    """N4 shrink ``config.n4_shrink`` vs 1 on the cropped 1 mm volume (before N4): times and differences."""
    img, mask = (array_to_sitk(d[k].numpy()[0], d[k].affine.numpy()) for k in ("t2", "mask"))
    res, secs = {}, {}
    for shrink in (config.n4_shrink, 1):
        start = time.perf_counter()
        res[shrink] = sitk_to_array(n4_correct(img, mask, shrink=shrink, iterations=config.n4_iterations))[0]
        secs[shrink] = time.perf_counter() - start
    brain = sitk_to_array(mask)[0] > 0
    a, b = res[config.n4_shrink][brain], res[1][brain]
    return {
        "t_shrink": secs[config.n4_shrink],
        "t_full": secs[1],
        "ratio": secs[1] / secs[config.n4_shrink],
        "max_abs_diff_rel_to_p99": float(np.abs(a - b).max() / np.percentile(b, 99)),
        "p99_rel_diff": float(np.percentile(np.abs(a - b) / np.maximum(b, 1e-6), 99)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--full-n4", action="store_true")
    args = parser.parse_args()
    set_threads(args.threads)
    data = args.data
    atlas = resolve_atlas(data / "sri24")
    config = PreprocessConfig()
    print(f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {cpu_model()}, {args.threads} threads")
    cases = [("healthy head 224x224x60 @1x1x2 mm", data / "healthy" / "T2w_head.nii.gz", False)]
    cases.append(("MSLUB patient07 (MNI, stripped)", data / "mslub" / "patient07" / "T2.nii.gz", True))
    with tempfile.TemporaryDirectory() as tmp:
        raw = make_synthetic_raw(Path(tmp) / "raw", n_healthy=1, n_tumour=0, n_ms=0, seed=0)
        cases.append(("IXI-sized synthetic head 150x256x256", next((raw / "IXI").glob("*-T2.nii.gz")), False))
        print("| scan | resample | HD-BET | register | crop | N4 | total (s) |")
        print("|---|---|---|---|---|---|---|")
        last = None
        for label, path, stripped in cases:
            t = time_chain(path, atlas, skull_stripped=stripped, config=config)
            strip = "-" if stripped else f"{t['skull_strip']:.1f}"
            print(
                f"| {label} | {t['resample']:.1f} | {strip} | {t['register']:.1f} | {t['crop']:.2f} "
                f"| {t['n4']:.1f} | {t['total']:.1f} |"
            )
            last = t["_before_n4"]
    if args.full_n4 and last is not None:
        cmp = n4_comparison(last, config)
        print(
            f"\nN4 shrink {config.n4_shrink}: {cmp['t_shrink']:.1f} s, full resolution: {cmp['t_full']:.1f} s "
            f"(x{cmp['ratio']:.1f}); corrected images: max |diff| = {cmp['max_abs_diff_rel_to_p99']:.3f} of the "
            f"99th percentile, 99th percentile of the relative difference {cmp['p99_rel_diff']:.3f}"
        )


if __name__ == "__main__":
    main()
