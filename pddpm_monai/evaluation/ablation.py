"""Inference-time ablations of a trained pDDPM (paper Fig. 3) and ensembles of settings (``pddpm ablate``).

Patch size and ``t_test`` are inference-time choices, so one trained pDDPM (one checkpoint per
fold) is evaluated over two sweeps, as in Fig. 3: the patch sizes at the checkpoint's ``t_test``
and the ``t_test`` values at the checkpoint's patch size. Every setting is an ordinary evaluation
run (:func:`~pddpm_monai.evaluation.evaluate.evaluate_method`, threshold from the validation set,
resumable) under ``<out>/runs/<name>/fold<k>/``; then::

    <out>/ablation.csv                      sweep, setting, patch_size, t_test, fold, dataset, dice, auprc
    <out>/figures/dice_vs_patch_size_<dataset>.png, dice_vs_t_test_<dataset>.png   (mean ± std over folds)
    <out>/ensemble.json                     the ensemble against the best single setting per dataset

The **ensemble** (the paper's §6 names it as future work) averages the anomaly maps of several
``(patch size, t_test)`` settings of the same model (:class:`EnsembleScorer`) and is evaluated like
any method; ``ensemble.json`` says whether its mean Dice beats the best single setting of the sweeps.

Example::

    pddpm ablate --checkpoint f0/best.pt --checkpoint f1/best.pt --data-root ROOT --out ablation \\
        --patch-sizes 16 32 48 60 72 --t-test 100 200 300 400 500 600 700 --ensemble 48:400 60:400
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np
import torch

from pddpm_monai.data.adapters import DATASETS
from pddpm_monai.diffusion.patches import PATCH_GRIDS
from pddpm_monai.evaluation.evaluate import EvaluationConfig, VolumeLoader, evaluate_method, write_csv
from pddpm_monai.methods.checkpoint import load_scorer, read_checkpoint
from pddpm_monai.methods.scorers import AnomalyScorer
from pddpm_monai.utils import InputError, save_json

__all__ = [
    "Setting",
    "AblationConfig",
    "EnsembleScorer",
    "ablation_settings",
    "parse_setting",
    "run_ablation",
    "write_ablation_figures",
    "compare_ensemble",
    "add_commands",
]

Sweep = Literal["patch_size", "t_test", "ensemble"]

#: columns of ``ablation.csv``
ABLATION_COLUMNS = ("sweep", "setting", "patch_size", "t_test", "fold", "dataset", "dice", "auprc")
#: metrics read from each run's ``summary.json``
ABLATION_METRICS = ("dice", "auprc")
ENSEMBLE_NAME = "ensemble"


class Setting(NamedTuple):
    """One inference setting of a pDDPM."""

    patch_size: int
    t_test: int

    @property
    def name(self) -> str:
        """Run name, e.g. ``pddpm_p48_t500``."""
        return f"pddpm_p{self.patch_size}_t{self.t_test}"


def parse_setting(text: str) -> Setting:
    """``"48:400"`` -> ``Setting(48, 400)`` (``InputError`` naming ``--ensemble`` otherwise)."""
    try:
        patch, t_test = (int(v) for v in text.split(":"))
    except ValueError:
        raise InputError("--ensemble", f"expected PATCH:T_TEST such as 48:400, got {text!r}") from None
    return Setting(patch, t_test)


@dataclass(frozen=True)
class AblationConfig:
    """Every default of an ablation run (paper Fig. 3 values).

    Attributes:
        patch_sizes: patch sizes of the patch sweep (at the checkpoint's ``t_test``).
        t_tests: test timesteps of the ``t_test`` sweep (at the checkpoint's patch size).
        ensemble: settings whose anomaly maps the ensemble averages (empty: no ensemble).
        evaluation: the evaluation settings of every run (datasets, post-processing, ...).
        device: where the network runs.
        slice_batch: slices per network batch.
        patch_grid: ``"overlap"`` or ``"tile"`` (the authors' grid, to reproduce their Fig. 3 for
            patch sizes that do not divide 96); ``None``: the checkpoint's.
    """

    patch_sizes: tuple[int, ...] = (16, 32, 48, 60, 72)
    t_tests: tuple[int, ...] = (100, 200, 300, 400, 500, 600, 700)
    ensemble: tuple[Setting, ...] = ()
    evaluation: EvaluationConfig = field(
        default_factory=lambda: EvaluationConfig(
            datasets=("brats21", "mslub"), save_nifti=False, figures=False
        )
    )
    device: str = "cpu"
    slice_batch: int = 50
    patch_grid: str | None = None


def ablation_settings(
    base: Setting, patch_sizes: Sequence[int], t_tests: Sequence[int]
) -> list[tuple[Sweep, Setting]]:
    """The two sweeps of Fig. 3 through ``base``: ``(sweep, setting)`` pairs (a shared setting is listed once per sweep)."""
    out: list[tuple[Sweep, Setting]] = [("patch_size", Setting(p, base.t_test)) for p in patch_sizes]
    out += [("t_test", Setting(base.patch_size, t)) for t in t_tests]
    return out


class EnsembleScorer:
    """Average the anomaly maps (and reconstructions) of several scorers of one volume.

    Args:
        scorers: the members (e.g. one pDDPM at several patch sizes and ``t_test``).
        name: the ensemble's method name.
    """

    def __init__(self, scorers: Sequence[AnomalyScorer], name: str = ENSEMBLE_NAME) -> None:
        if not scorers:
            raise ValueError("an ensemble needs at least one scorer.")
        self.scorers = list(scorers)
        self.name = name

    def __call__(self, image: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
        recons, maps = [], []
        for scorer in self.scorers:
            recon, anomaly = scorer(image, mask)
            maps.append(torch.as_tensor(anomaly, dtype=torch.float32))
            if recon is not None:
                recons.append(torch.as_tensor(recon, dtype=torch.float32))
        mean_recon = torch.stack(recons).mean(0) if len(recons) == len(maps) else None
        return mean_recon, torch.stack(maps).mean(0)


def _checkpoint_base(checkpoint: Path) -> Setting:
    state = read_checkpoint(checkpoint, method="pddpm")
    return Setting(int(state["config"]["patch_size"]), int(state["config"]["t_test"]))


def _scorer(checkpoint: Path, setting: Setting, config: AblationConfig, name: str) -> AnomalyScorer:
    return load_scorer(
        checkpoint,
        t_test=setting.t_test,
        patch_size=setting.patch_size,
        device=config.device,
        method="pddpm",
        name=name,
        slice_batch=config.slice_batch,
        patch_grid=config.patch_grid,
    )


def _summary_rows(
    run_dir: Path, sweep: Sweep, name: str, setting: Setting | None, fold: int
) -> list[dict[str, Any]]:
    summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
    sizes = {"patch_size": None, "t_test": None} if setting is None else setting._asdict()
    return [
        {"sweep": sweep, "setting": name, **sizes, "fold": fold, "dataset": dataset}
        | {m: entry[m]["mean"] for m in ABLATION_METRICS}
        for dataset, entry in summary.items()
        if DATASETS[dataset].unhealthy
    ]


def write_ablation_figures(
    rows: Sequence[dict[str, Any]], out_dir: str | os.PathLike, metric: str = "dice"
) -> list[Path]:
    """Metric against patch size and against ``t_test`` (mean ± std over folds), one figure per dataset and sweep.

    Args:
        rows: rows of ``ablation.csv``.
        out_dir: figures go to ``out_dir/figures``.
        metric: ``"dice"`` or ``"auprc"``.

    Returns:
        the written PNGs.
    """
    from pddpm_monai.evaluation.figures import plot_ablation

    written = []
    for sweep in ("patch_size", "t_test"):
        for dataset in sorted({r["dataset"] for r in rows if r["sweep"] == sweep}):
            sub = [r for r in rows if r["sweep"] == sweep and r["dataset"] == dataset]
            values = sorted({int(r[sweep]) for r in sub})
            per_value = [[_nan(r[metric]) for r in sub if int(r[sweep]) == v] for v in values]
            label = DATASETS[dataset].title
            path = Path(out_dir) / "figures" / f"{metric}_vs_{sweep}_{dataset}.png"
            xlabel = "patch size" if sweep == "patch_size" else "t_test"
            title = f"{label}: {metric.upper()} vs {sweep.replace('_', ' ')} (mean ± std over folds)"
            curves = {label: per_value}
            written.append(
                plot_ablation(values, curves, path, xlabel=xlabel, ylabel=metric.upper(), title=title)
            )
    return written


def _nan(value: Any) -> float:
    return float("nan") if value is None else float(value)


def compare_ensemble(rows: Sequence[dict[str, Any]], metric: str = "dice") -> dict[str, Any]:
    """Per dataset: the ensemble's mean ``metric`` over folds against the best single setting's.

    Returns:
        ``{dataset: {"ensemble": x, "best_setting": name, "best_single": y, "ensemble_beats_best": bool}}``.
    """
    out: dict[str, Any] = {}
    for dataset in sorted({r["dataset"] for r in rows}):
        means: dict[str, float] = {}
        for name in {r["setting"] for r in rows if r["dataset"] == dataset}:
            values = [_nan(r[metric]) for r in rows if r["dataset"] == dataset and r["setting"] == name]
            means[name] = float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")
        singles = {k: v for k, v in means.items() if k != ENSEMBLE_NAME and np.isfinite(v)}
        if ENSEMBLE_NAME not in means or not singles:
            continue
        best = max(singles, key=singles.get)
        out[dataset] = {
            "metric": metric,
            "ensemble": means[ENSEMBLE_NAME],
            "best_setting": best,
            "best_single": singles[best],
            "ensemble_beats_best": bool(means[ENSEMBLE_NAME] > singles[best]),
        }
    return out


def run_ablation(
    checkpoints: Sequence[str | os.PathLike],
    data_root: str | os.PathLike,
    out_dir: str | os.PathLike,
    config: AblationConfig | None = None,
) -> Path:
    """Evaluate trained pDDPMs (one checkpoint per fold) over the Fig. 3 sweeps and the ensemble.

    Args:
        checkpoints: ``best.pt`` of each fold (fold ``k`` is the ``k``-th checkpoint).
        data_root: the data root with ``splits/``.
        out_dir: results folder (see the module doc).
        config: sweeps, ensemble and evaluation settings.

    Returns:
        the path of ``ablation.csv``.

    Raises:
        InputError: naming a checkpoint that is not a pDDPM, or an empty sweep without ensemble.
    """
    config = config or AblationConfig()
    if not checkpoints:
        raise InputError("--checkpoint", "give at least one pDDPM checkpoint")
    if not (config.patch_sizes or config.t_tests or config.ensemble):
        raise InputError(
            "--patch-sizes/--t-test", "nothing to evaluate: give patch sizes, t_test values or --ensemble"
        )
    out, runs = Path(out_dir), Path(out_dir) / "runs"
    loader = VolumeLoader(config.evaluation, cache=True)  # every setting scores the same volumes
    rows: list[dict[str, Any]] = []
    for fold, checkpoint in enumerate(map(Path, checkpoints)):
        common = {"fold": fold, "config": config.evaluation, "loader": loader}
        done: dict[Setting, Path] = {}
        for sweep, setting in ablation_settings(
            _checkpoint_base(checkpoint), config.patch_sizes, config.t_tests
        ):
            if setting not in done:
                scorer = _scorer(checkpoint, setting, config, setting.name)
                extra = {"checkpoint": str(checkpoint), **setting._asdict()}
                done[setting] = evaluate_method(scorer, data_root, runs, extra=extra, **common)
            rows += _summary_rows(done[setting], sweep, setting.name, setting, fold)
        if config.ensemble:
            members = [_scorer(checkpoint, s, config, s.name) for s in config.ensemble]
            extra = {"checkpoint": str(checkpoint), "members": [s._asdict() for s in config.ensemble]}
            run = evaluate_method(EnsembleScorer(members), data_root, runs, extra=extra, **common)
            rows += _summary_rows(run, "ensemble", ENSEMBLE_NAME, None, fold)
    csv_path = out / "ablation.csv"
    write_csv(rows, csv_path, ABLATION_COLUMNS)
    write_ablation_figures(rows, out)
    if config.ensemble:
        comparison = compare_ensemble(rows)
        save_json(
            {"members": [s.name for s in config.ensemble], "datasets": comparison}, out / "ensemble.json"
        )
    return csv_path


def _ablate(args: argparse.Namespace) -> int:
    if not Path(args.data_root).is_dir():
        raise InputError(args.data_root, "data root not found")
    defaults = AblationConfig()
    config = AblationConfig(
        patch_sizes=tuple(args.patch_sizes) if args.patch_sizes is not None else defaults.patch_sizes,
        t_tests=tuple(args.t_test) if args.t_test is not None else defaults.t_tests,
        ensemble=tuple(parse_setting(s) for s in args.ensemble or ()),
        evaluation=EvaluationConfig(
            datasets=tuple(args.datasets), save_nifti=False, figures=False, progress=not args.quiet
        ),
        device=args.device,
        patch_grid=args.patch_grid,
    )
    csv_path = run_ablation(args.checkpoint, args.data_root, args.out, config)
    print(csv_path)
    ensemble = csv_path.parent / "ensemble.json"
    if config.ensemble and ensemble.is_file():
        for dataset, entry in json.loads(ensemble.read_text(encoding="utf-8"))["datasets"].items():
            verdict = "beats" if entry["ensemble_beats_best"] else "does not beat"
            print(
                f"{dataset}: ensemble Dice {entry['ensemble']:.4f} {verdict} the best single setting "
                f"{entry['best_setting']} ({entry['best_single']:.4f})"
            )
    return 0


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    """Register ``ablate``."""
    defaults = AblationConfig()
    p = subparsers.add_parser(
        "ablate",
        help="evaluate a trained pDDPM over patch sizes and t_test (Fig. 3), and an ensemble of settings",
        description="Patch size and t_test are inference-time choices: each setting is evaluated like a method "
        "(threshold on validation, metrics on test; resumable). Writes ablation.csv, Dice-vs-patch-size and "
        "Dice-vs-t_test figures (mean ± std over the checkpoints = folds) and ensemble.json.",
    )
    p.add_argument(
        "--checkpoint", action="append", required=True, type=Path, help="pDDPM checkpoint (repeat for folds)"
    )
    p.add_argument("--data-root", required=True, type=Path, help="data root with splits/")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument(
        "--patch-sizes",
        type=int,
        nargs="*",
        help=f"patch sizes at the checkpoint's t_test (default {' '.join(map(str, defaults.patch_sizes))})",
    )
    p.add_argument(
        "--t-test",
        type=int,
        nargs="*",
        help=f"t_test values at the checkpoint's patch size (default {' '.join(map(str, defaults.t_tests))})",
    )
    p.add_argument(
        "--ensemble", nargs="+", metavar="PATCH:T_TEST", help="settings whose anomaly maps are averaged"
    )
    p.add_argument(
        "--datasets",
        nargs="+",
        default=[d for d in DATASETS if DATASETS[d].unhealthy],
        choices=[d for d in DATASETS if DATASETS[d].unhealthy],
        help="unhealthy datasets to evaluate (default brats21 mslub)",
    )
    p.add_argument("--device", default="cpu", help="torch device, e.g. cuda (default cpu)")
    p.add_argument(
        "--patch-grid",
        choices=PATCH_GRIDS,
        help="patch grid (default: the checkpoint's; tile = the authors' BoxSampler, as in their Fig. 3; "
        "blend = half-stride boxes, Gaussian-weighted: no seams)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_ablate)
