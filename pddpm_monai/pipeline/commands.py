"""``pddpm detect`` and ``pddpm demo`` (registered by :mod:`pddpm_monai.cli`).

Thin wrappers over :func:`~pddpm_monai.pipeline.detect.detect_scan` and
:func:`~pddpm_monai.pipeline.demo.run_demo`; options left out keep the defaults of
:class:`~pddpm_monai.pipeline.detect.DetectConfig` / :class:`~pddpm_monai.pipeline.demo.DemoConfig`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from pddpm_monai.data.commands import add_preprocess_options, preprocess_config
from pddpm_monai.diffusion.patches import PATCH_GRIDS
from pddpm_monai.pipeline.demo import DemoConfig, run_demo
from pddpm_monai.pipeline.detect import DetectConfig, bundle_atlas, bundle_checkpoint, detect_scan
from pddpm_monai.transforms.atlas import resolve_atlas
from pddpm_monai.transforms.scan_io import read_scan
from pddpm_monai.utils import InputError

#: the defaults of ``pddpm detect`` (help texts and unset options read them)
DEFAULTS = DetectConfig()


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    """Register ``detect`` and ``demo``."""
    _add_detect(subparsers)
    _add_demo(subparsers)


def _add_detect(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "detect",
        help="anomaly map + lesion mask of one raw scan, in its native space",
        description="Preprocess one raw T2 scan (HD-BET unless --skull-stripped, registration to the atlas, "
        "crop, N4), run the trained model patch by patch, post-process, and map the anomaly map and the "
        "binary lesion mask back onto the scan's own grid (same shape and affine). Writes "
        "<name>_{anomaly,lesions,brain}.nii.gz, <name>_report.png and <name>_summary.json.",
    )
    p.add_argument(
        "scan",
        type=Path,
        help="raw T2 scan (any orientation and spacing): NIfTI, .nrrd/.mha/.mhd, or a folder holding one "
        "DICOM series; the outputs are NIfTI on its grid",
    )
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", type=Path, help="trained checkpoint (best.pt of `pddpm train`)")
    source.add_argument("--bundle", type=Path, help="a bundle folder (uses its models/model.pt)")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument(
        "--skull-stripped", action="store_true", help="the scan is already skull-stripped (no HD-BET)"
    )
    p.add_argument(
        "--atlas",
        help="atlas the model's data were registered to (default: the bundle's inference.json \"atlas\", then $PDDPM_ATLAS)",
    )
    p.add_argument("--threshold", type=float, help="threshold of the post-processed map")
    p.add_argument(
        "--thresholds", type=Path, help="thresholds.json of `pddpm evaluate` (default: beside the checkpoint)"
    )
    p.add_argument("--dataset", help=f"which validation set's threshold to use (default {DEFAULTS.dataset})")
    p.add_argument(
        "--device", choices=("cpu", "cuda"), help=f"HD-BET and network device (default {DEFAULTS.device})"
    )
    p.add_argument("--t-test", type=int, help="test timestep (default: the checkpoint's)")
    p.add_argument("--patch-size", type=int, help="patch size (pddpm; default: the checkpoint's)")
    p.add_argument(
        "--patch-grid",
        choices=PATCH_GRIDS,
        help="patch grid (pddpm; default: the checkpoint's; blend: half-stride boxes, Gaussian-weighted)",
    )
    add_preprocess_options(
        p,
        bias_help="bias correction of the chain: the one the model's data root was preprocessed with "
        f"(default {DEFAULTS.preprocess.bias_correction}, transforms/bias.py; n4: the authors' masked N4)",
    )
    p.add_argument("--overwrite", action="store_true", help="recompute when the outputs exist")
    p.set_defaults(func=run_detect)


def detect_config_from_args(args: argparse.Namespace) -> DetectConfig:
    """The :class:`~pddpm_monai.pipeline.detect.DetectConfig` that ``pddpm detect`` options describe."""
    given = {k: getattr(args, k) for k in ("dataset", "device", "t_test", "patch_size", "patch_grid")}
    return dataclasses.replace(
        DEFAULTS,
        skull_stripped=args.skull_stripped,
        overwrite=args.overwrite,
        threshold=args.threshold,
        thresholds_file=None if args.thresholds is None else str(args.thresholds),
        preprocess=preprocess_config(args, DEFAULTS.preprocess),
        **{k: v for k, v in given.items() if v is not None},
    )


def run_detect(args: argparse.Namespace) -> int:
    """``pddpm detect``: prints the outputs and the summary's key figures."""
    read_scan(args.scan)  # a bad scan is reported before anything else
    checkpoint = bundle_checkpoint(args.bundle) if args.bundle is not None else args.checkpoint
    atlas_arg = args.atlas
    if atlas_arg is None and args.bundle is not None:
        atlas_arg = bundle_atlas(args.bundle)  # the atlas the bundle's training data were registered to
    atlas = resolve_atlas(atlas_arg, channel=args.atlas_channel, mask=args.atlas_mask)
    result = detect_scan(
        args.scan, args.out, checkpoint=checkpoint, atlas=atlas, config=detect_config_from_args(args)
    )
    s = result.summary
    if result.skipped:
        print(f"{result.paths['summary']}: finished before, skipped (use --overwrite to recompute)")
    print(
        f"{s['n_components']} lesion component(s), {s['lesion_volume_ml']:.2f} ml "
        f"(threshold {s['threshold']:.4g} from {s['threshold_source']})"
    )
    for kind, path in result.paths.items():
        print(f"{kind:8s} {path}")
    return 0


def _add_demo(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "demo",
        help="the whole pipeline on an offline synthetic cohort, with a report (resumable)",
        description="Synthetic raw cohort -> preprocess -> splits -> train pDDPM, DDPM (and AE) -> patched "
        "inference -> evaluation -> Table-1-style table -> report.md/report.html. Re-running reuses "
        "finished stages.",
    )
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument(
        "--quick",
        action="store_true",
        help="a much smaller run: synthetic data root, tiny pDDPM vs Thresh (what the test runs)",
    )
    demo = DemoConfig()
    p.add_argument("--device", help=f"auto, cpu, cuda (default {demo.device})")
    p.add_argument(
        "--workers", type=int, help=f"processes for synthesis/preprocessing (default {demo.workers})"
    )
    p.add_argument("--seed", type=int, help=f"seed of the cohort and the training (default {demo.seed})")
    p.set_defaults(func=run_demo_command)


def run_demo_command(args: argparse.Namespace) -> int:
    """``pddpm demo``: run (or resume) the demo and print the table and where the outputs are."""
    config = DemoConfig.quick() if args.quick else DemoConfig()
    changes = {k: getattr(args, k) for k in ("device", "workers", "seed") if getattr(args, k) is not None}
    if changes.get("workers", 1) < 1:
        raise InputError("--workers", f"must be >= 1, got {changes['workers']}")
    result = run_demo(args.out, dataclasses.replace(config, **changes))
    print(result.table_markdown, end="")
    print(json.dumps({k: str(v) for k, v in result.outputs.items()}, indent=2))
    return 0
