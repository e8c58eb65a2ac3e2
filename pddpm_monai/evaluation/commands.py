"""``pddpm evaluate`` and ``pddpm table`` (registered by :mod:`pddpm_monai.cli`).

Examples::

    pddpm evaluate --method thresh --data-root ROOT --out results
    pddpm evaluate --checkpoint f0.pt --checkpoint f1.pt --data-root ROOT --out results --t-test 500 --patch-size 48
    pddpm evaluate --checkpoint runs/fold0 --data-root ROOT --out results     # a run folder: its best.pt
    pddpm table results
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pddpm_monai.diffusion.patches import PATCH_GRIDS
from pddpm_monai.utils import InputError

#: methods that need no checkpoint
CHECKPOINT_FREE_METHODS = ("thresh",)


def resolve_checkpoint(path: Path) -> Path:
    """A checkpoint file, or a training run folder's ``best.pt`` (``last.pt`` when it has no ``best.pt``).

    ``pddpm train`` prints the same choice (training without validation writes no ``best.pt``); the
    fallback is said on stderr.

    Raises:
        InputError: naming the folder when it holds neither checkpoint, or the path when it is absent.
    """
    from pddpm_monai.engines.trainer import BEST_CHECKPOINT, LAST_CHECKPOINT

    path = Path(path)
    if not path.is_dir():
        if not path.exists():
            raise InputError(path, "checkpoint not found")
        return path
    if (path / BEST_CHECKPOINT).is_file():
        return path / BEST_CHECKPOINT
    if (path / LAST_CHECKPOINT).is_file():
        sys.stderr.write(
            f"pddpm evaluate: {path} has no {BEST_CHECKPOINT} (no validation): using {LAST_CHECKPOINT}\n"
        )
        return path / LAST_CHECKPOINT
    raise InputError(
        path,
        f"run folder holds no {BEST_CHECKPOINT} or {LAST_CHECKPOINT}: train first, or pass a checkpoint file",
    )


def _evaluate(args: argparse.Namespace) -> int:
    from pddpm_monai.evaluation.evaluate import EvaluationConfig, VolumeLoader, evaluate_method
    from pddpm_monai.methods.checkpoint import load_scorer
    from pddpm_monai.methods.scorers import ThreshScorer

    checkpoints = [resolve_checkpoint(c) for c in args.checkpoint or []]
    if bool(checkpoints) == bool(args.method):
        raise InputError(
            "--checkpoint/--method", "give either --checkpoint CKPT (repeatable) or --method thresh"
        )
    if not Path(args.data_root).is_dir():
        raise InputError(args.data_root, "data root not found")
    config = EvaluationConfig(
        datasets=tuple(args.datasets),
        grid=args.grid,
        voxels=args.voxels,
        save_nifti=not args.no_nifti,
        figures=not args.no_figures,
        progress=not args.quiet,
        healthy_fpr=tuple(args.healthy_fpr or ()),
    )
    folds = args.fold if args.fold is not None else list(range(max(1, len(checkpoints))))
    if args.method:
        extra = {"method_option": args.method}
        evaluate_method(ThreshScorer(), args.data_root, args.out, fold=folds[0], config=config, extra=extra)
        return 0
    if len(folds) != len(checkpoints):
        raise InputError("--fold", f"{len(checkpoints)} checkpoint(s) but {len(folds)} fold number(s)")
    loader = VolumeLoader(config, cache=len(checkpoints) > 1)  # folds score the same test volumes
    for checkpoint, fold in zip(checkpoints, folds):
        scorer = load_scorer(
            checkpoint,
            t_test=args.t_test,
            patch_size=args.patch_size,
            patch_grid=args.patch_grid,
            device=args.device,
        )
        extra = {
            "checkpoint": str(checkpoint),
            "t_test": args.t_test,
            "patch_size": args.patch_size,
            "patch_grid": args.patch_grid,
        }
        run = evaluate_method(
            scorer, args.data_root, args.out, fold=fold, config=config, extra=extra, loader=loader
        )
        print(run)
    return 0


def _table(args: argparse.Namespace) -> int:
    from pddpm_monai.evaluation.stats import PermutationConfig
    from pddpm_monai.evaluation.table import write_table

    config = PermutationConfig(rounds=args.rounds, seed=args.seed)
    out = Path(args.out or args.results[0])
    written = write_table(
        args.results, out, reference=args.reference, config=config, figures=not args.no_figures
    )
    print(written["table.md"].read_text(encoding="utf-8"), end="")
    return 0


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    """Register ``evaluate`` and ``table``."""
    from pddpm_monai.data.adapters import DATASETS

    p = subparsers.add_parser(
        "evaluate",
        help="threshold on validation, metrics, NIfTIs and figures on test (resumable)",
        description="Evaluate checkpoints (one per fold) or the Thresh baseline on a data root.",
    )
    p.add_argument(
        "--checkpoint",
        action="append",
        type=Path,
        help="trained checkpoint, or a training run folder (its best.pt); repeat for folds",
    )
    p.add_argument("--method", choices=CHECKPOINT_FREE_METHODS, help="a method without checkpoint")
    p.add_argument("--data-root", required=True, type=Path, help="data root with splits/")
    p.add_argument("--out", required=True, type=Path, help="results root (<out>/<method>/fold<k>/)")
    p.add_argument(
        "--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS), help="datasets to evaluate"
    )
    p.add_argument("--fold", nargs="+", type=int, help="fold number of each checkpoint (default 0, 1, ...)")
    p.add_argument("--t-test", type=int, default=None, help="test timestep (default: the checkpoint's)")
    p.add_argument("--patch-size", type=int, default=None, help="patch size (default: the checkpoint's)")
    p.add_argument(
        "--patch-grid",
        choices=PATCH_GRIDS,
        default=None,
        help="patch grid (pddpm; default: the checkpoint's; blend: half-stride boxes, Gaussian-weighted)",
    )
    p.add_argument("--device", default="cpu", help="torch device, e.g. cuda")
    p.add_argument(
        "--grid", choices=("model", "full"), default="model", help="evaluation grid (default model)"
    )
    p.add_argument("--voxels", choices=("brain", "all"), default="brain", help="voxels ranked by AUPRC/AUROC")
    p.add_argument(
        "--healthy-fpr",
        nargs="+",
        type=float,
        metavar="RATE",
        help="extra Dice columns at these false-positive rates on healthy validation scans, e.g. 0.01 0.05 0.1",
    )
    p.add_argument("--no-nifti", action="store_true", help="do not write per-volume NIfTIs")
    p.add_argument("--no-figures", action="store_true", help="do not draw figures")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_evaluate)

    t = subparsers.add_parser(
        "table",
        help="aggregate evaluation runs (mean ± std over folds) with permutation tests",
        description="Aggregate results folders into table.md / table.csv / permutation_tests.csv.",
    )
    t.add_argument("results", nargs="+", type=Path, help="results folders of `pddpm evaluate`")
    t.add_argument("--out", type=Path, default=None, help="output folder (default: the first results folder)")
    t.add_argument("--reference", default=None, help="method the significance marks compare with")
    t.add_argument("--rounds", type=int, default=10_000, help="permutation rounds (default 10000)")
    t.add_argument("--seed", type=int, default=0, help="permutation seed")
    t.add_argument("--no-figures", action="store_true", help="do not draw PR curves")
    t.set_defaults(func=_table)
