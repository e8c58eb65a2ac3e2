"""Benchmark of the synthetic cohort: wall time of a raw cohort and of a data root, per volume.

Reference measured in the same run: warping one template channel onto an IXI-sized grid with
``scipy.ndimage.map_coordinates`` (order 1, the textbook way) against our ``grid_sample`` renderer
on the same source map, and gzip-writing one IXI-sized int16 volume (the I/O floor of a subject).

Usage:
    python benchmarks/bench_synthetic.py [--n-healthy 40 --n-tumour 10 --n-ms 10 --workers 2]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from _common import cpu_model, cpu_seconds
from scipy import ndimage

from pddpm_monai.data.synthetic import make_synthetic_raw, make_synthetic_root
from pddpm_monai.data.synthetic.anatomy import load_atlas
from pddpm_monai.data.synthetic.render import sample_volume, source_map


def _reference() -> dict[str, float]:
    """Seconds of: scipy map_coordinates warp, our grid_sample warp (same map), one int16 gz write."""
    atlas = load_atlas()
    shape, affine = (256, 256, 150), np.diag([0.9375, 0.9375, 1.2, 1.0])
    affine[:3, 3] = -np.asarray(shape) * np.diag(affine)[:3] / 2
    src = source_map(shape, affine, np.eye(4), None)
    t0 = time.perf_counter()
    ours = sample_volume(torch.as_tensor(atlas.mask)[None], atlas.affine, src.permute(1, 2, 3, 0))
    t_ours = time.perf_counter() - t0
    inv = np.linalg.inv(atlas.affine)
    t0 = time.perf_counter()
    vox = np.tensordot(inv[:3, :3], src.numpy(), axes=1) + inv[:3, 3, None, None, None]
    ref = ndimage.map_coordinates(atlas.mask, vox, order=1, cval=0.0)
    t_scipy = time.perf_counter() - t0
    assert np.abs(ref - ours[0].numpy()).max() < 1e-3
    data = (np.random.default_rng(0).random(shape) * 500).astype(np.int16)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        nib.save(nib.Nifti1Image(data, affine), str(Path(tmp) / "x.nii.gz"))
        t_write = time.perf_counter() - t0
    return {"scipy_warp_s": t_scipy, "grid_sample_warp_s": t_ours, "write_int16_gz_s": t_write}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-healthy", type=int, default=40)
    parser.add_argument("--n-tumour", type=int, default=10)
    parser.add_argument("--n-ms", type=int, default=10)
    parser.add_argument("--root-healthy", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    ref = _reference()
    raw_args = {"n_healthy": args.n_healthy, "n_tumour": args.n_tumour, "n_ms": args.n_ms, "seed": 0}
    with tempfile.TemporaryDirectory(prefix="bench_synth_", ignore_cleanup_errors=True) as name:
        tmp = Path(name)
        t0, c0 = time.perf_counter(), cpu_seconds()
        make_synthetic_raw(tmp / "raw", workers=args.workers, **raw_args)
        t_raw, c_raw = time.perf_counter() - t0, cpu_seconds() - c0
        t0, c0 = time.perf_counter(), cpu_seconds()
        make_synthetic_root(
            tmp / "root", n_healthy=args.root_healthy, n_tumour=3, n_ms=3, seed=0, workers=args.workers
        )
        t_root, c_root = time.perf_counter() - t0, cpu_seconds() - c0
        t0 = time.perf_counter()
        make_synthetic_raw(tmp / "raw", workers=args.workers, **raw_args)
        t_rerun = time.perf_counter() - t0
    n_raw = args.n_healthy + args.n_tumour + args.n_ms
    n_root = args.root_healthy + 6
    print(
        f"device: {cpu_model()}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}, workers={args.workers}"
    )
    print(f"date {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print(
        f"raw cohort {args.n_healthy}+{args.n_tumour}+{args.n_ms}: wall {t_raw:.1f} s, CPU {c_raw:.1f} s "
        f"({c_raw / n_raw:.2f} CPU-s/volume; on {args.workers} idle cores ~{c_raw / args.workers:.0f} s)"
    )
    print(
        f"data root {args.root_healthy}+3+3: wall {t_root:.1f} s, CPU {c_root:.1f} s ({c_root / n_root:.2f} CPU-s/volume)"
    )
    print(f"re-run of the finished raw cohort (skips): {t_rerun:.1f} s")
    print(
        "reference, one IXI-sized warp: scipy map_coordinates {scipy_warp_s:.2f} s, grid_sample {grid_sample_warp_s:.2f} s"
        " (ratio {r:.1f}x); int16 .nii.gz write {write_int16_gz_s:.2f} s".format(
            r=ref["scipy_warp_s"] / ref["grid_sample_warp_s"], **ref
        )
    )
    print(f"raw volume CPU time / gz-write floor: {c_raw / n_raw / ref['write_int16_gz_s']:.1f}x")


if __name__ == "__main__":
    main()
