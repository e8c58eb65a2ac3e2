"""Run-to-run equality of the §4.1 preprocessing on the real head scan, and what it costs.

Usage::

    python benchmarks/bench_determinism.py [--data ../shared/data] [--threads 2] [--repeats 3]
        [--fresh-processes]

On the real healthy head scan with skull (``healthy/T2w_head.nii.gz``, registered to SRI24 T2):

1. registration, alternating in the same run: "before" = the registration as it was until
   2026-12-02 (SimpleITK seed 0, which SimpleITK reads as "seed from the wall clock", on ITK's
   global default threads) against the default :class:`PreprocessConfig` (seed + 1, 1 ITK thread):
   seconds, and how far the repeats of each differ (transform parameters, registered voxels);
2. N4 (on the registered, cropped scan) twice at ``--threads`` ITK threads, and once at 1 thread:
   equal run to run? how far does the thread count move it?
3. ``--fresh-processes``: :func:`preprocess_scan` (HD-BET, registration, crop, N4) in two new
   processes at ``--threads`` threads: are the outputs (t2, mask, registration record) identical?
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import nibabel as nib
import numpy as np
import SimpleITK as sitk
from _common import DATA, cpu_model

from pddpm_monai.data.prepare import load_subject
from pddpm_monai.threads import set_threads
from pddpm_monai.transforms.atlas import resolve_atlas
from pddpm_monai.transforms.bias import n4_correct
from pddpm_monai.transforms.config import PreprocessConfig
from pddpm_monai.transforms.registration import RegisterToAtlasd, register_affine
from pddpm_monai.transforms.sitk_convert import array_to_sitk, sitk_to_array
from pddpm_monai.transforms.skull_strip import SkullStripd
from pddpm_monai.transforms.spatial import CropToBraind, ResampleToSpacingd

SCAN = Path("healthy") / "T2w_head.nii.gz"

#: a child process: preprocess the scan, save the arrays and the record, print their digest
CHILD = """
import json, sys, numpy as np
from pddpm_monai.transforms.atlas import resolve_atlas
from pddpm_monai.threads import set_threads
from pddpm_monai.data.prepare import preprocess_scan
set_threads(int(sys.argv[3]))
t2, mask, affine, record = preprocess_scan(sys.argv[1], atlas=resolve_atlas(sys.argv[2]), skull_stripped=False)
np.savez(sys.argv[4], t2=t2, mask=mask, affine=affine)
print(json.dumps({"registration": record["registration"], "seconds": record["seconds"]}))
"""


@contextlib.contextmanager
def wall_clock_seed() -> Iterator[None]:
    """Registrations inside the block get SimpleITK's seed 0 (the wall clock), as before the fix."""
    original = sitk.ImageRegistrationMethod.SetMetricSamplingPercentagePerLevel

    def seed_zero(self, percentages, seed=0):  # noqa: ARG001
        return original(self, percentages, sitk.sitkWallClock)

    sitk.ImageRegistrationMethod.SetMetricSamplingPercentagePerLevel = seed_zero
    try:
        yield
    finally:
        sitk.ImageRegistrationMethod.SetMetricSamplingPercentagePerLevel = original


def _digest(*arrays: np.ndarray) -> str:
    h = hashlib.sha1()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:12]


def _spread(runs: list[tuple[np.ndarray, np.ndarray]]) -> tuple[float, float, int]:
    """Max parameter difference, max voxel difference and differing voxels of the runs vs the first."""
    p0, v0 = runs[0]
    dp = max(float(np.abs(p - p0).max()) for p, _ in runs[1:])
    dv = max(float(np.abs(v - v0).max()) for _, v in runs[1:])
    n = max(int((v != v0).sum()) for _, v in runs[1:])
    return dp, dv, n


def registration_comparison(d: dict, atlas, config: PreprocessConfig, repeats: int) -> dict[str, dict]:
    """Before/after registrations alternated ``repeats`` times on the stripped, resampled scan."""
    fixed = array_to_sitk(*atlas.image)
    arr, aff = d["t2"].numpy()[0], d["t2"].affine.numpy()
    mask = array_to_sitk(d["mask"].numpy()[0], aff)
    moving = sitk.Mask(sitk.Cast(array_to_sitk(arr, aff), sitk.sitkFloat32), sitk.Cast(mask, sitk.sitkUInt8))
    variants = {
        "before (seed 0 = wall clock, all ITK threads)": (True, dataclasses.replace(config, reg_threads=0)),
        "after (seed + 1, 1 ITK thread)": (False, config),
    }
    runs: dict[str, list] = {k: [] for k in variants}
    seconds: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(repeats):
        for name, (wall_clock, cfg) in variants.items():
            with wall_clock_seed() if wall_clock else contextlib.nullcontext():
                start = time.perf_counter()
                tx, _ = register_affine(fixed, moving, cfg)
                seconds[name].append(time.perf_counter() - start)
            out = sitk.Resample(moving, fixed, tx, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
            runs[name].append((np.array(tx.GetParameters()), sitk.GetArrayFromImage(out)))
    result = {}
    for name in variants:
        dp, dv, n = _spread(runs[name])
        result[name] = {"median_s": float(np.median(seconds[name])), "param": dp, "voxel": dv, "n_voxels": n}
    return result


def n4_comparison(d: dict, config: PreprocessConfig, threads: int) -> dict[str, float]:
    """N4 twice at ``threads`` ITK threads and once at 1: equal? max relative difference in the brain."""
    img, mask = (array_to_sitk(d[k].numpy()[0], d[k].affine.numpy()) for k in ("t2", "mask"))

    def run(n: int) -> tuple[np.ndarray, float]:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(n)
        start = time.perf_counter()
        out = n4_correct(img, mask, shrink=config.n4_shrink, iterations=config.n4_iterations)
        return sitk_to_array(out)[0], time.perf_counter() - start

    (a, ta), (b, tb), (c, tc) = run(threads), run(threads), run(1)
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
    brain = sitk_to_array(mask)[0] > 0
    return {
        "equal": bool(np.array_equal(a, b)),
        "seconds": (ta + tb) / 2,
        "seconds_1": tc,
        "rel_diff_vs_1_thread": float(np.abs(a - c)[brain].max() / np.percentile(a[brain], 99)),
    }


def fresh_processes(data: Path, threads: int) -> str:
    """Preprocess the scan in two new processes; a line saying whether their outputs are identical."""
    with tempfile.TemporaryDirectory() as tmp:
        outs, records = [], []
        for i in range(2):
            path = Path(tmp) / f"run{i}.npz"
            cmd = [sys.executable, "-c", CHILD, *map(str, (data / SCAN, data / "sri24", threads, path))]
            env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
            proc = subprocess.run(
                cmd, capture_output=True, text=True, encoding="utf-8", errors="replace", check=True, env=env
            )
            records.append(json.loads(proc.stdout.strip().splitlines()[-1]))
            with np.load(path) as z:
                outs.append({k: z[k] for k in z.files})
    same = {k: np.array_equal(outs[0][k], outs[1][k]) for k in ("t2", "mask", "affine")}
    same["registration"] = records[0]["registration"] == records[1]["registration"]
    digests = [_digest(o["t2"], o["mask"]) for o in outs]
    return (
        f"two processes, {threads} thread(s): identical {same}; digests (t2, mask) {digests}; "
        f"seconds per step {records[0]['seconds']} / {records[1]['seconds']}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--fresh-processes", action="store_true")
    args = parser.parse_args()
    set_threads(args.threads)
    data = args.data
    atlas = resolve_atlas(data / "sri24")
    config = PreprocessConfig()
    print(f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {cpu_model()}, {args.threads} threads")
    print(f"# load average before: {os.getloadavg()}")
    axcodes = "".join(nib.aff2axcodes(atlas.image[1]))
    keys = ("t2", "mask", "seg")
    d = ResampleToSpacingd(keys, config.spacing, axcodes)(load_subject(data / SCAN))
    d = SkullStripd("t2")(d)
    reg = registration_comparison(d, atlas, config, args.repeats)
    print(f"\nregistration, {args.repeats} alternated repeats each:")
    print("| registration | median s | max param diff | max voxel diff | differing voxels |")
    print("|---|---|---|---|---|")
    for name, r in reg.items():
        print(f"| {name} | {r['median_s']:.1f} | {r['param']:.2g} | {r['voxel']:.4g} | {r['n_voxels']} |")
    names = list(reg)
    print(f"time ratio after / before: {reg[names[1]]['median_s'] / reg[names[0]]['median_s']:.2f}")
    d = RegisterToAtlasd(keys, atlas, config=config)(d)
    d = CropToBraind(keys, roi_size=config.roi_size)(d)
    n4 = n4_comparison(d, config, args.threads)
    print(
        f"\nN4 at {args.threads} threads twice: equal {n4['equal']} ({n4['seconds']:.1f} s); at 1 thread "
        f"({n4['seconds_1']:.1f} s) max |diff| in the brain = {n4['rel_diff_vs_1_thread']:.2g} of the p99"
    )
    if args.fresh_processes:
        print("\n" + fresh_processes(data, args.threads))
    print(f"# load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
