"""Patch seams in the reconstructions, measured instead of judged from an overlay (issue 14).

pDDPM reconstructs each patch of a slice in its own pass and stitches the patches; an under-trained
network leaves a visible step along the patch borders. A step at a border is only a seam if it is
larger than what the same network draws at the same anatomy when no border lies there, so every
healthy test volume is reconstructed twice: as it is, and moved by ``--shift`` pixels along the
first in-plane axis (zero-filled; the brain has room there) and moved back afterwards, which puts
the patch borders elsewhere. On the rows where the unmoved grid has a box edge:

    seam excess = mean |step across the border|, unmoved / mean |step at the same pixels|, moved

over brain pixel pairs (1 = no seam; 1.5 = the borders add half of the anatomy's own step). DDPM,
which noises the whole slice, is the control (about 1 up to its noise). The script also prints the
same ratio for the input image (the anatomy moved and moved back: exactly 1 by construction, a
check of the bookkeeping).

    python benchmarks/bench_seams.py --root ROOT --checkpoint "pDDPM=RUN/best.pt" --checkpoint "DDPM=..."
    python benchmarks/bench_seams.py --root ROOT --checkpoint "pDDPM=RUN/best.pt" \
        --checkpoint "pDDPM blend=RUN/best.pt" --patch-grid "pDDPM blend=blend"

``--patch-grid NAME=GRID`` evaluates checkpoint ``NAME`` with another patch grid (``blend``:
half-stride boxes stitched with a Gaussian window); the borders are then that grid's box edges.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from _common import cpu_model, load_average

from pddpm_monai.data.datalist import read_split_csv, split_path
from pddpm_monai.diffusion.patches import PatchGrid, axis_starts
from pddpm_monai.evaluation.evaluate import EvaluationConfig, VolumeLoader
from pddpm_monai.methods.checkpoint import load_scorer
from pddpm_monai.utils import InputError


def border_positions(size: int, patch: int, grid: PatchGrid = "overlap") -> set[int]:
    """Indices ``b`` (0 < b < size) where a box edge of ``grid`` lies between pixel ``b - 1`` and ``b``."""
    starts = axis_starts(size, patch, grid)
    edges = set(starts) | {min(s + patch, size) for s in starts}
    return {b for b in edges if 0 < b < size}


def shift_rows(volume: np.ndarray, shift: int) -> np.ndarray:
    """``volume`` moved by ``shift`` pixels along axis 0, zero-filled (``shift`` may be negative)."""
    moved = np.zeros_like(volume)
    if shift >= 0:
        moved[shift:] = volume[: volume.shape[0] - shift]
    else:
        moved[:shift] = volume[-shift:]
    return moved


def border_steps(
    volume: np.ndarray, valid: np.ndarray, patch: int, grid: PatchGrid = "overlap"
) -> np.ndarray:
    """|step| along axis 0 between rows ``b - 1`` and ``b`` at every patch border ``b``, valid pairs only."""
    rows = sorted(border_positions(volume.shape[0], patch, grid))
    steps = np.abs(volume[rows] - volume[[b - 1 for b in rows]])
    pairs = valid[rows] & valid[[b - 1 for b in rows]]
    return steps[pairs]


def seam_excess(
    reconstruct: Callable[[np.ndarray], np.ndarray],
    image: np.ndarray,
    mask: np.ndarray,
    patch: int,
    shift: int,
    grid: PatchGrid = "overlap",
) -> tuple[float, float]:
    """``(mean border step unmoved, mean step at the same pixels when moved by shift)`` of one volume.

    Args:
        reconstruct: ``(H, W, D)`` image -> ``(H, W, D)`` reconstruction.
        image: ``(H, W, D)`` intensities, axial slices along the last axis.
        mask: ``(H, W, D)`` brain mask.
        patch: the square patch size whose grid defines the borders.
        shift: pixels the second reconstruction's input is moved along axis 0.
        grid: the patch grid whose box edges are the borders.
    """
    if mask[: abs(shift)].any() or mask[mask.shape[0] - abs(shift) :].any():
        raise ValueError(
            f"the brain reaches within {abs(shift)} pixels of the edge: choose a smaller --shift"
        )
    unmoved = reconstruct(image)
    moved = shift_rows(reconstruct(shift_rows(image, shift)), -shift)
    unmoved_step = float(border_steps(unmoved, mask, patch, grid).mean())
    return unmoved_step, float(border_steps(moved, mask, patch, grid).mean())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True, type=Path, help="synthetic data root (bench_quality's)")
    parser.add_argument("--checkpoint", action="append", required=True, help="NAME=PATH, repeatable")
    parser.add_argument("--split", default="IXI_test", help="split CSV of healthy volumes")
    parser.add_argument("--patch-size", type=int, default=48, help="patch grid the borders come from")
    parser.add_argument("--shift", type=int, default=8, help="pixels the second input is moved (axis 0)")
    parser.add_argument(
        "--patch-grid", action="append", default=[], help="NAME=GRID: evaluate checkpoint NAME with GRID"
    )
    args = parser.parse_args(argv)
    if any(not path for _, _, path in (spec.partition("=") for spec in args.checkpoint)):
        parser.error("--checkpoint takes NAME=PATH")
    names = {spec.partition("=")[0] for spec in args.checkpoint}
    args.grids = dict(spec.partition("=")[::2] for spec in args.patch_grid)
    if any(name not in names or not grid for name, grid in args.grids.items()):
        parser.error("--patch-grid takes NAME=GRID with the NAME of a --checkpoint")
    try:
        return _run(args)
    except (InputError, ValueError) as error:  # one line naming the file or the problem, exit 2
        print(f"bench_seams: {error}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    """Print the seam table of every checkpoint (and of the image, as a check)."""
    subjects = read_split_csv(split_path(args.root, args.split), args.root)
    loader = VolumeLoader(EvaluationConfig(datasets=("ixi",), progress=False), cache=True)
    volumes = [loader.load({k: subject[k] for k in ("image", "mask")}) for subject in subjects]
    volumes = [(np.asarray(v["image"])[0], np.asarray(v["mask"])[0] > 0) for v in volumes]
    print(
        f"# {cpu_model()}, load {load_average()}; {len(subjects)} volumes of {args.split}, shift {args.shift}"
    )
    print("| method | border step, unmoved | same pixels, moved | seam excess | seconds |")
    print("|---|---|---|---|---|")
    rows: list[tuple[str, Callable[[np.ndarray], np.ndarray], PatchGrid]] = [
        ("image (check)", lambda image: image, "overlap")
    ]
    for spec in args.checkpoint:
        name, _, path = spec.partition("=")
        scorer = load_scorer(path, name=name, patch_grid=args.grids.get(name))
        grid = getattr(scorer.method.config, "patch_grid", "overlap")
        rows.append(
            (name, lambda image, scorer=scorer: scorer(torch.from_numpy(image[None]))[0].numpy()[0], grid)
        )
    for name, reconstruct, grid in rows:
        start = time.perf_counter()
        pairs = [
            seam_excess(reconstruct, image, mask, args.patch_size, args.shift, grid)
            for image, mask in volumes
        ]
        unmoved, moved = (float(np.mean(x)) for x in zip(*pairs))
        seconds = time.perf_counter() - start
        print(f"| {name} | {unmoved:.4f} | {moved:.4f} | {unmoved / moved:.3f} | {seconds:.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
