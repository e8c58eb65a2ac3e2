"""Table-1-style quality benchmark of every method on the synthetic cohort (fixed seed).

Trains each method of the paper's Table 1 with a small network for a few hundred iterations on
fold 0 of a synthetic data root (``make_synthetic_root``), evaluates every one through the shared
evaluator (threshold on the validation split, Dice / AUPRC on test, l1 on healthy IXI test), adds
Thresh, writes the table with ``pddpm table``'s code, then runs the Fig. 3 sweeps and an ensemble
of the main pDDPM (``pddpm ablate``'s code).

Usage::

    python benchmarks/bench_quality.py --out /tmp/bench_quality            # Table 1 rows (CPU)
    python benchmarks/bench_quality.py --out /tmp/bench_quality --variants # + the pDDPM variants (resumes)
    python benchmarks/bench_quality.py --out /tmp/bench_quality --quick    # smoke check
    python benchmarks/bench_quality.py --device cuda --scale 4 --folds 3  # larger, with ± std over folds (GPU)
    python benchmarks/bench_quality.py --out /tmp/bench_quality --extra-grid blend  # + the main pDDPM on the blend grid
    python benchmarks/bench_quality.py --out /tmp/bq_seed1 --root /tmp/bench_quality/root --train-seed 1  # same cohort, other training seed

The paper's expected ordering (Dice and AUPRC): pDDPM (fixed + L_p) > DDPM > AE > Thresh. Hyper-
parameters are the methods' defaults (t_test 500, patch 48, beta 0.001, ...); only the network
widths and the number of iterations are scaled down. Nothing is tuned to force the ordering.
Everything is resumable: re-running skips finished training runs and evaluated volumes. Every
subject is loaded once (a shared cached :class:`~pddpm_monai.evaluation.VolumeLoader`) and scored
by every method, fold and ablation setting.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from _common import cpu_model

from pddpm_monai.data.synthetic import make_synthetic_root
from pddpm_monai.engines.trainer import TrainConfig, load_volumes, train
from pddpm_monai.evaluation import EvaluationConfig, VolumeLoader, evaluate_method
from pddpm_monai.evaluation.ablation import AblationConfig, Setting, run_ablation
from pddpm_monai.evaluation.stats import PermutationConfig
from pddpm_monai.evaluation.table import write_table
from pddpm_monai.methods.checkpoint import load_scorer
from pddpm_monai.methods.scorers import ThreshScorer
from pddpm_monai.utils import save_json


@dataclass(frozen=True)
class BenchConfig:
    """Sizes of the benchmark (the default run; ``--quick`` and ``--scale`` derive from it).

    The ensemble's members are fixed a priori: the paper's default setting (48, 500) and its
    Fig. 3 optimum (60, 400).
    """

    n_healthy: int = 14
    n_tumour: int = 8
    n_ms: int = 6
    iterations: int = 1000
    batch_size: int = 8
    slices_per_volume: int = 8
    lr: float = 1e-3
    unet_channels: int = 16
    ae_channels: tuple[int, ...] = (8, 16, 32, 32)
    latent_size: int = 64
    variants: bool = False
    ablation_patch_sizes: tuple[int, ...] = (32, 48, 60)
    ablation_t_tests: tuple[int, ...] = (100, 200, 300, 400, 500, 600, 700)
    ensemble: tuple[Setting, ...] = (Setting(48, 500), Setting(60, 400))
    permutation_rounds: int = 1000
    datasets: tuple[str, ...] = ("brats21", "mslub", "ixi")
    folds: int = 1
    max_minutes: float = 0.0
    amp: bool = False
    paper_text_noise: bool = False
    methods: tuple[str, ...] = ()
    extra_grids: tuple[str, ...] = ()
    ablation: bool = True
    workers: int = 2
    seed: int = 0
    train_seed: int | None = None


QUICK = BenchConfig(
    n_healthy=10,
    n_tumour=4,
    n_ms=4,
    iterations=40,
    latent_size=32,
    ablation_patch_sizes=(48,),
    ablation_t_tests=(400,),
    ensemble=(Setting(48, 400), Setting(48, 500)),
    permutation_rounds=200,
    datasets=("brats21", "ixi"),
)


def method_options(cfg: BenchConfig) -> dict[str, tuple[str, dict[str, Any]]]:
    """Run name -> (registered method, options): the rows of the table."""
    unet = {
        "model_channels": cfg.unet_channels,
        "channel_mult": [1, 2, 2],
        "num_res_blocks": 1,
        "num_groups": 8,
        "num_head_channels": cfg.unet_channels,
    }
    if cfg.paper_text_noise:  # the paper's text: linear schedule, unit-variance simplex noise
        diffusion = {"schedule": "linear_beta", "simplex": {"standardize": True}}
        diffusion_options = {"network": unet, "diffusion": diffusion}
    else:  # the defaults: the authors' code (cosine schedule, raw simplex amplitude)
        diffusion_options = {"network": unet}
    dense = {"channels": list(cfg.ae_channels), "latent_size": cfg.latent_size}
    runs: dict[str, tuple[str, dict[str, Any]]] = {  # the required ordering's rows first
        "AE": ("ae", {"network": dense}),
        "DDPM": ("ddpm", dict(diffusion_options)),
        "pDDPM fixed L_p": ("pddpm", {**diffusion_options, "sampling": "fixed", "loss": "patch"}),
        "VAE": ("vae", {"network": dense}),
        "SVAE": ("svae", {"network": dense}),
        "DAE": ("dae", {"network": {"channels": list(cfg.ae_channels)}}),
        "f-AnoGAN": (
            "fanogan",
            {
                "network": {"channels": list(cfg.ae_channels), "latent_size": cfg.latent_size},
                "gan_iterations": cfg.iterations // 2,
            },
        ),
    }
    if cfg.variants:
        runs["pDDPM random L_p"] = ("pddpm", {**diffusion_options, "sampling": "random", "loss": "patch"})
        runs["pDDPM fixed L_rec"] = ("pddpm", {**diffusion_options, "sampling": "fixed", "loss": "full"})
        runs["pDDPM random L_rec"] = ("pddpm", {**diffusion_options, "sampling": "random", "loss": "full"})
    return runs


def _slug(name: str) -> str:
    return name.replace(" ", "_").replace("-", "")


def _train_fold(
    cfg: BenchConfig, base: TrainConfig, out: Path, fold: int, timings: dict[str, float]
) -> tuple[list[dict], list[dict], int, int]:
    """The cached training/validation volumes of one fold, and its epochs and iterations."""
    t0 = time.perf_counter()
    train_volumes, val_volumes = load_volumes(replace(base, fold=fold, out_dir=str(out / "train")))
    train_volumes = [dict(train_volumes[i]) for i in range(len(train_volumes))]
    val_volumes = [dict(val_volumes[i]) for i in range(len(val_volumes))]
    timings[f"fold{fold} load volumes"] = time.perf_counter() - t0
    per_epoch = max(1, len(train_volumes) * cfg.slices_per_volume // cfg.batch_size)
    epochs = max(1, -(-cfg.iterations // per_epoch))
    return train_volumes, val_volumes, epochs, per_epoch


def run(cfg: BenchConfig, out: Path, device: str, root: Path | None = None) -> dict[str, Any]:
    """Generate, train, evaluate, tabulate (after every method) and ablate; returns timings and paths."""
    timings: dict[str, float] = {}
    root = root or out / "root"
    t0 = time.perf_counter()
    if not (root / "splits" / "MSLUB_test.csv").is_file():
        make_synthetic_root(
            root, n_healthy=cfg.n_healthy, n_tumour=cfg.n_tumour, n_ms=cfg.n_ms, seed=cfg.seed,
            workers=cfg.workers,
        )  # fmt: skip
    timings["cohort"] = time.perf_counter() - t0

    base = TrainConfig(
        data_root=str(root),
        fold=0,
        batch_size=cfg.batch_size,
        lr=cfg.lr,
        device=device,
        seed=cfg.seed if cfg.train_seed is None else cfg.train_seed,
        slices_per_volume=cfg.slices_per_volume,
        skip_empty_slices=True,
        val_slices_per_volume=4,
        image_interval=0,
        log_interval=10,
        cache_workers=cfg.workers,
        amp=cfg.amp,
    )
    evaluation = EvaluationConfig(datasets=cfg.datasets, save_nifti=False, figures=False, progress=False)
    loader = VolumeLoader(evaluation, cache=True)
    permutation = PermutationConfig(rounds=cfg.permutation_rounds)
    results = out / "results"
    t0 = time.perf_counter()
    evaluate_method(ThreshScorer(), root, results, config=evaluation, loader=loader)
    timings["evaluate Thresh"] = time.perf_counter() - t0
    main_checkpoints: list[Path] = []
    table: dict[str, Path] = {}
    epochs = per_epoch = 0
    start = time.perf_counter()
    for fold in range(cfg.folds):
        if fold and cfg.max_minutes and time.perf_counter() - start > 60 * cfg.max_minutes:
            print(f"time budget of {cfg.max_minutes} min spent: folds 0..{fold - 1} only", flush=True)
            break
        train_volumes, val_volumes, epochs, per_epoch = _train_fold(cfg, base, out, fold, timings)
        for name, (method, options) in method_options(cfg).items():
            if cfg.methods and name not in cfg.methods:
                continue
            t0 = time.perf_counter()
            config = replace(
                base, out_dir=str(out / "train" / f"fold{fold}" / _slug(name)), fold=fold, method=method,
                method_options=options, epochs=epochs, val_interval=max(1, epochs // 5),
            )  # fmt: skip
            checkpoint = train(config, train_volumes=train_volumes, val_volumes=val_volumes)
            timings[f"fold{fold} train {name}"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            scorer = load_scorer(checkpoint, device=device, name=name)
            extra = {"checkpoint": str(checkpoint)}
            evaluate_method(scorer, root, results, fold=fold, config=evaluation, extra=extra, loader=loader)
            timings[f"fold{fold} evaluate {name}"] = time.perf_counter() - t0
            if name == "pDDPM fixed L_p":
                main_checkpoints.append(checkpoint)
                for grid in cfg.extra_grids:  # the same checkpoint scored on another patch grid
                    t0 = time.perf_counter()
                    row = f"{name} {grid}"
                    scorer = load_scorer(checkpoint, device=device, name=row, patch_grid=grid)
                    evaluate_method(
                        scorer, root, results, fold=fold, config=evaluation, extra=extra, loader=loader
                    )
                    timings[f"fold{fold} evaluate {row}"] = time.perf_counter() - t0
            table = write_table([results], out, config=permutation, figures=False)  # the table so far
            save_json(timings, out / "timings.json")
            print(f"fold {fold} {name}: trained and evaluated ({table['table.md']})", flush=True)

    ablation_csv = None
    if main_checkpoints and cfg.ablation:
        t0 = time.perf_counter()
        ablation = AblationConfig(
            patch_sizes=cfg.ablation_patch_sizes,
            t_tests=cfg.ablation_t_tests,
            ensemble=cfg.ensemble,
            evaluation=replace(evaluation, datasets=tuple(d for d in cfg.datasets if d != "ixi")),
            device=device,
        )
        ablation_csv = run_ablation(main_checkpoints, root, out / "ablation", ablation)
        timings["ablation + ensemble"] = time.perf_counter() - t0
        save_json(timings, out / "timings.json")
    return {
        "timings": timings,
        "table": str(table["table.md"]),
        "ablation": ablation_csv,
        "epochs": epochs,
        "iterations": epochs * per_epoch,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", type=Path, default=Path("/tmp/bench_quality"), help="work and results folder"
    )
    parser.add_argument("--quick", action="store_true", help="tiny cohort and networks: a smoke check")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--scale", type=int, default=1, help="multiply cohort, widths and iterations (GPU)")
    parser.add_argument("--iterations", type=int, default=None, help="training iterations per method")
    parser.add_argument(
        "--variants", action="store_true", help="also the pDDPM variants (random sampling, L_rec)"
    )
    parser.add_argument("--root", type=Path, default=None, help="an existing synthetic data root to reuse")
    parser.add_argument(
        "--train-seed", type=int, default=None, help="seed of the training runs (default: the cohort's, 0)"
    )
    parser.add_argument("--folds", type=int, default=None, help="train/evaluate folds 0..N-1 (± std)")
    parser.add_argument("--workers", type=int, default=None, help="processes for the cohort and the cache")
    parser.add_argument(
        "--amp", action="store_true", help="bf16 autocast on CUDA (default: float32, as the authors)"
    )
    parser.add_argument(
        "--paper-text-noise",
        action="store_true",
        help="diffusion models with the paper text's linear schedule and unit-variance noise (ablation)",
    )
    parser.add_argument("--no-ablation", action="store_true", help="skip the Fig. 3 sweeps and the ensemble")
    parser.add_argument("--methods", nargs="+", help="only these rows, e.g. 'pDDPM fixed L_p' DDPM AE")
    parser.add_argument(
        "--extra-grid",
        nargs="+",
        default=[],
        choices=("tile", "blend"),
        help="also score the main pDDPM's checkpoint on these patch grids (rows, no extra training)",
    )
    parser.add_argument(
        "--max-minutes",
        type=float,
        default=None,
        help="start no further fold after this (ablation still runs)",
    )
    args = parser.parse_args()
    cfg = QUICK if args.quick else BenchConfig()
    if args.scale > 1:
        s = args.scale
        cfg = replace(
            cfg, n_healthy=cfg.n_healthy * s, n_tumour=cfg.n_tumour * s, n_ms=cfg.n_ms * s,
            iterations=cfg.iterations * s, unet_channels=cfg.unet_channels * 2,
            ae_channels=tuple(c * 2 for c in cfg.ae_channels),
        )  # fmt: skip
    given = {k: getattr(args, k) for k in ("iterations", "folds", "workers", "max_minutes", "train_seed")}
    cfg = replace(
        cfg,
        **{k: v for k, v in given.items() if v is not None},
        variants=args.variants,
        amp=args.amp,
        paper_text_noise=args.paper_text_noise,
        methods=tuple(args.methods or ()),
        extra_grids=tuple(args.extra_grid),
        ablation=not args.no_ablation,
    )
    torch.manual_seed(cfg.seed)
    start = time.perf_counter()
    info = run(cfg, args.out, args.device, args.root)
    total = time.perf_counter() - start
    print(
        f"device: {cpu_model()}, torch threads {torch.get_num_threads()}, {args.device}; total {total / 60:.1f} min"
    )
    print(f"config: {cfg}")
    print(f"training: {info['epochs']} epochs = {info['iterations']} iterations per method")
    for key, seconds in info["timings"].items():
        print(f"  {key:28s} {seconds:7.1f} s")
    print(Path(info["table"]).read_text(encoding="utf-8"))
    if info["ablation"] is None:
        return
    print(Path(info["ablation"]).read_text(encoding="utf-8"))
    ensemble = Path(info["ablation"]).parent / "ensemble.json"
    if ensemble.is_file():
        print(json.dumps(json.loads(ensemble.read_text(encoding="utf-8")), indent=1))


if __name__ == "__main__":
    main()
