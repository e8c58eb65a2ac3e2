"""``pddpm preprocess | splits | fetch-atlas`` (registered by :mod:`pddpm_monai.cli`)."""

from __future__ import annotations

import argparse
import dataclasses
import sys

from pddpm_monai.transforms.config import PreprocessConfig

__all__ = ["add_commands", "add_preprocess_options", "preprocess_config"]


def add_preprocess_options(parser: argparse.ArgumentParser, *, bias_help: str) -> None:
    """Add the chain options that ``pddpm preprocess`` and ``pddpm detect`` share (read by :func:`preprocess_config`)."""
    parser.add_argument(
        "--atlas-channel", choices=("t2", "t1", "pd"), default="t2", help="SRI24 channel (default t2)"
    )
    parser.add_argument("--atlas-mask", default=None, help="atlas brain mask (default: SRI24 tissues > 0)")
    parser.add_argument(
        "--hd-bet-mode", choices=("fast", "accurate"), default="fast", help="1 or 5 HD-BET folds"
    )
    parser.add_argument("--bias-correction", choices=("n4", "robust"), default=None, help=bias_help)


def preprocess_config(
    args: argparse.Namespace, config: PreprocessConfig = PreprocessConfig()
) -> PreprocessConfig:
    """``config`` with the ``--hd-bet-mode`` and ``--bias-correction`` of :func:`add_preprocess_options`."""
    folds = {"hd_bet_folds": (0, 1, 2, 3, 4)} if args.hd_bet_mode == "accurate" else {}
    bias = {} if args.bias_correction is None else {"bias_correction": args.bias_correction}
    return dataclasses.replace(config, **folds, **bias)


def _preprocess(args: argparse.Namespace) -> int:
    from pddpm_monai.data.prepare import parse_shard, run_preprocess
    from pddpm_monai.transforms.atlas import resolve_atlas

    atlas = resolve_atlas(args.atlas, channel=args.atlas_channel, mask=args.atlas_mask)
    config = preprocess_config(args, PreprocessConfig(hd_bet_tta=args.hd_bet_tta))
    if args.n4_shrink is not None:
        config = dataclasses.replace(config, n4_shrink=args.n4_shrink)
    summary = run_preprocess(
        args.dataset, args.input, args.data_root, atlas, workers=args.workers,
        shard_spec=parse_shard(args.shard), device=args.device, config=config,
        progress=not args.no_progress,
    )  # fmt: skip
    print(summary.report(), file=sys.stderr)
    return 1 if summary.failed else 0


def _splits(args: argparse.Namespace) -> int:
    from pddpm_monai.data.splits import SplitConfig, make_splits

    written = make_splits(args.data_root, seed=args.seed, config=SplitConfig(n_folds=args.folds))
    print(f"wrote {len(written)} split CSVs to {next(iter(written.values())).parent}", file=sys.stderr)
    return 0


def _fetch_atlas(args: argparse.Namespace) -> int:
    from pddpm_monai.transforms.atlas import ATLAS_ENV, fetch_atlas

    out = fetch_atlas(args.out)
    print(f"SRI24 atlas in {out}; use --atlas {out} or export {ATLAS_ENV}={out}", file=sys.stderr)
    return 0


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    """Register ``preprocess``, ``splits`` and ``fetch-atlas``."""
    p = subparsers.add_parser(
        "preprocess",
        help="raw IXI/BraTS21/MSLUB scans -> data root (paper §4.1)",
        description="Resample to 1 mm, HD-BET skull stripping, affine registration to the atlas, crop to "
        "192x192x160 and N4, per subject (resumable, parallel, shardable).",
    )
    p.add_argument("dataset", choices=("ixi", "brats21", "mslub"))
    p.add_argument("--input", required=True, help="raw download folder")
    p.add_argument("--data-root", required=True, help="output data root")
    p.add_argument("--atlas", default=None, help="atlas folder or NIfTI (default: $PDDPM_ATLAS)")
    add_preprocess_options(
        p,
        bias_help="robust (default): lesion-robust two-pass N4 that keeps a large tumour's contrast "
        "(transforms/bias.py); n4: the authors' masked N4; detect needs the same option",
    )
    p.add_argument("--workers", type=int, default=1, help="subjects in parallel (default 1)")
    p.add_argument("--shard", default=None, help="i/n: process every n-th subject from i (many machines)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="HD-BET device (default cpu)")
    p.add_argument("--hd-bet-tta", action="store_true", help="HD-BET mirroring test-time augmentation")
    p.add_argument(
        "--n4-shrink", type=int, default=None, help="N4 shrink factor (default: PreprocessConfig's, 4)"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_preprocess)

    s = subparsers.add_parser("splits", help="write the split CSVs of a data root (seeded)")
    s.add_argument("--data-root", required=True)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--folds", type=int, default=5, help="IXI cross-validation folds (default 5)")
    s.set_defaults(func=_splits)

    f = subparsers.add_parser("fetch-atlas", help="download the SRI24 atlas (NITRC, sha256-checked)")
    f.add_argument("--out", required=True, help="destination folder")
    f.set_defaults(func=_fetch_atlas)
