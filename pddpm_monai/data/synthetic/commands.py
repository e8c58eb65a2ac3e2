"""``pddpm synth {raw,root,atlas,preview}``: the synthetic cohort on the command line."""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["add_commands"]

#: default cohort sizes of ``synth raw`` / ``synth root``
DEFAULT_COUNTS = {"n_healthy": 40, "n_tumour": 10, "n_ms": 10}
DEFAULT_SEED = 0
#: subjects per dataset shown by ``synth preview``
DEFAULT_PREVIEW = 2


def _counts(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    for name, default in DEFAULT_COUNTS.items():
        flag = "--" + name.replace("_", "-")
        parser.add_argument(flag, dest=name, type=int, default=default, help=f"(default {default})")
    parser.add_argument(
        "--seed", type=int, default=DEFAULT_SEED, help=f"cohort seed (default {DEFAULT_SEED})"
    )
    parser.add_argument("--workers", type=int, default=1, help="parallel processes (default 1)")


def _cohort(args: argparse.Namespace) -> dict:
    """The keyword arguments of ``make_synthetic_raw`` / ``make_synthetic_root`` that both take."""
    return {name: getattr(args, name) for name in (*DEFAULT_COUNTS, "seed", "workers")}


def _raw(args: argparse.Namespace) -> int:
    from pddpm_monai.data.synthetic.cohort import make_synthetic_raw, synthetic_atlas

    out = make_synthetic_raw(args.out, skull=not args.no_skull, **_cohort(args))
    atlas = synthetic_atlas(out / "atlas")
    print(f"raw cohort in {out} (atlas: {atlas})")
    return 0


def _root(args: argparse.Namespace) -> int:
    from pddpm_monai.data.synthetic.cohort import make_synthetic_root

    print(f"data root in {make_synthetic_root(args.out, **_cohort(args))}")
    return 0


def _atlas(args: argparse.Namespace) -> int:
    from pddpm_monai.data.synthetic.cohort import synthetic_atlas

    print(synthetic_atlas(args.out))
    return 0


def _preview(args: argparse.Namespace) -> int:
    from pddpm_monai.data.synthetic.preview import find_preview_volumes, write_preview

    volumes = find_preview_volumes(args.input, per_dataset=args.n)
    volumes += [(Path(p), None) for p in args.compare or []]
    print(write_preview(volumes, args.out))
    return 0


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    """Register ``pddpm synth`` and its sub-commands ``raw``, ``root``, ``atlas``, ``preview``."""
    synth = subparsers.add_parser("synth", help="generate the synthetic brain MRI cohort (offline)")
    sub = synth.add_subparsers(dest="synth_command", metavar="WHAT", parser_class=type(synth))
    synth.set_defaults(func=lambda args: synth.print_help() or 2)

    raw = sub.add_parser("raw", help="raw IXI/BraTS21/MSLUB-like layouts (+ truth/ and atlas/)")
    _counts(raw)
    raw.add_argument("--no-skull", action="store_true", help="healthy scans without skull and scalp")
    raw.set_defaults(func=_raw)

    root = sub.add_parser("root", help="a preprocessed data root (DESIGN.md layout) with split CSVs")
    _counts(root)
    root.set_defaults(func=_root)

    atlas = sub.add_parser("atlas", help="the cohort's T2-like atlas template + mask")
    atlas.add_argument("--out", required=True, type=Path, help="output folder")
    atlas.set_defaults(func=_atlas)

    preview = sub.add_parser("preview", help="PNG of mid-slices of a few subjects")
    preview.add_argument("--input", required=True, type=Path, help="a raw cohort or data root")
    preview.add_argument("--out", required=True, type=Path, help="output PNG")
    preview.add_argument(
        "--n", type=int, default=DEFAULT_PREVIEW, help=f"subjects per dataset (default {DEFAULT_PREVIEW})"
    )
    preview.add_argument(
        "--compare", nargs="*", type=Path, help="extra volumes (e.g. real scans) to show below"
    )
    preview.set_defaults(func=_preview)
