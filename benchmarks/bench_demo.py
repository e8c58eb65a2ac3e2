"""End-to-end time of ``pddpm demo`` (the README's first command) against its 15-minute budget.

Runs the demo in a fresh folder (or reads a finished one with ``--read``) and prints a markdown
table: wall seconds per stage (``stages.json``), the process CPU seconds (all threads and child
processes), the load average before and after, and the ratio of the total wall time to the budget.

Usage::

    python benchmarks/bench_demo.py --out /tmp/bench_demo            # the full demo
    python benchmarks/bench_demo.py --out /tmp/bench_demo_q --quick  # the --quick run
    python benchmarks/bench_demo.py --out /tmp/bench_demo --read     # report a finished run
    python benchmarks/bench_demo.py --out /tmp/bench_demo --redetect # detect again, current code

``--redetect`` runs the demo's ``detect`` stage of a finished full demo again with the current code
into ``<out>/detect_rerun`` and prints the lesion volume, components and Dice against the true
tumour of the scan (its raw seg).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from datetime import date
from pathlib import Path

import nibabel as nib
import numpy as np
from _common import cpu_model, cpu_seconds

from pddpm_monai.pipeline.demo import DemoConfig, DemoPaths, _detect_scan, _stage_detect, run_demo

#: the issue's budget for the whole demo on 2 CPU cores
BUDGET_S = 15 * 60


def redetect(out: Path) -> None:
    """The demo's detect stage again (current code) into ``out/detect_rerun``, against the true tumour."""
    paths = DemoPaths(out)
    paths.detect = out / "detect_rerun"
    start = time.perf_counter()
    print(_stage_detect(paths, DemoConfig()), f"({time.perf_counter() - start:.0f} s)")
    scan = _detect_scan(paths)
    seg = nib.load(str(scan).replace("_t2.nii.gz", "_seg.nii.gz"))
    truth = np.asarray(seg.dataobj) > 0
    name = scan.name.removesuffix(".nii.gz")
    found = np.asarray(nib.load(str(paths.detect / f"{name}_lesions.nii.gz")).dataobj) > 0
    summary = json.loads((paths.detect / f"{name}_summary.json").read_text(encoding="utf-8"))
    truth_ml = truth.sum() * abs(np.linalg.det(seg.affine[:3, :3])) / 1000
    dice = 2 * (truth & found).sum() / (truth.sum() + found.sum())
    print(f"lesions {summary['lesion_volume_ml']} ml in {summary['n_components']} components, truth "
          f"{truth_ml:.2f} ml (ratio {summary['lesion_volume_ml'] / truth_ml:.3f}), Dice {dice:.4f}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--read", action="store_true", help="only report the stages.json of a finished run")
    parser.add_argument("--redetect", action="store_true", help="detect again with the current code")
    args = parser.parse_args()
    if args.redetect:
        redetect(args.out)
        return
    load_before = os.getloadavg()
    start, cpu = time.perf_counter(), cpu_seconds()
    if not args.read:
        run_demo(args.out, DemoConfig.quick() if args.quick else DemoConfig())
    wall, cpu = time.perf_counter() - start, cpu_seconds() - cpu
    stages = json.loads((args.out / "stages.json").read_text(encoding="utf-8"))
    total = sum(float(s["seconds"]) for s in stages.values())
    print(f"{cpu_model()}, {os.cpu_count()} cores, {date.today()}, load average before {load_before[0]:.1f}, "
          f"after {os.getloadavg()[0]:.1f}")  # fmt: skip
    print("\n| stage | wall s | note |\n|---|---|---|")
    for name, info in stages.items():
        print(f"| {name} | {float(info['seconds']):.0f} | {info.get('note', '')} |")
    print(f"| **total** | **{total:.0f}** | {total / BUDGET_S:.2f}x the {BUDGET_S // 60}-minute budget |")
    if not args.read:
        print(f"\nthis process: wall {wall:.0f} s, CPU {cpu:.0f} s (all threads and children)")


if __name__ == "__main__":
    main()
