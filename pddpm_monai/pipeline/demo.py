"""``pddpm demo``: the whole pipeline on an offline synthetic cohort, ending in a report.

Stages, in order (each calls the library function of its stage, not a subprocess)::

    cohort      synthetic raw IXI/BraTS21/MSLUB-like scans (healthy ones with skull) + the atlas
    preprocess  HD-BET (healthy scans), registration to the atlas, crop, N4 -> data root
    splits      split CSVs of the data root (seeded)
    train       a small pDDPM, DDPM and AE (the AE when the baselines are installed), one fold
    evaluate    threshold on validation, patched inference and metrics on test, per method + Thresh
    table       Table-1-style table with permutation tests, PR curves
    detect      ``pddpm detect`` on one raw test scan, mapped back to its native space
    report      report.md / report.html: table, PR curves, overlays, training curves, TensorBoard

Every stage is resumable: a finished stage is recorded in ``<out>/stages.json`` (written
atomically) and skipped on a re-run ("skipped (already finished)"); inside a stage the library's
own resume logic applies (finished subjects, ``last.pt``, per-volume evaluation records). The
configuration of a demo folder is recorded in its ``demo_config.json``: another configuration needs
another ``--out`` once a stage that depends on it has finished (changing, say, the training
settings after the data stages is fine: those are reused).

``--quick`` (:meth:`DemoConfig.quick`) generates a small data root directly instead of raw scans
(no preprocessing, no detect: HD-BET and registration cost most of the time), trains a tiny pDDPM
for a few dozen iterations and compares it with Thresh: what the test runs.

Example:
    >>> result = run_demo("demo_output", DemoConfig.quick())  # doctest: +SKIP
    >>> print(result.table_markdown)  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pddpm_monai.names import method_label
from pddpm_monai.transforms.config import PreprocessConfig
from pddpm_monai.utils import InputError, PddpmError, plain_json, save_json

__all__ = ["DemoConfig", "DemoResult", "STAGES", "DemoPaths", "run_demo", "demo_methods"]

#: the stages, in order
STAGES: tuple[str, ...] = ("cohort", "preprocess", "splits", "train", "evaluate", "table", "detect", "report")

#: the demo's small diffusion UNet (the paper's is 128 channels, 3 blocks per level: ~35 M parameters)
DEMO_UNET: dict[str, Any] = {
    "model_channels": 16,
    "channel_mult": [1, 2, 2],
    "num_res_blocks": 1,
    "num_groups": 8,
    "num_head_channels": 16,
}
#: the quick mode's tiny UNet (as the engine tests')
QUICK_UNET: dict[str, Any] = {**DEMO_UNET, "channel_mult": [1, 2]}
#: method options per method name; the AE is the baselines' dense autoencoder, narrowed
DEMO_METHOD_OPTIONS: dict[str, dict[str, Any]] = {
    "pddpm": {"network": DEMO_UNET},
    "ddpm": {"network": DEMO_UNET},
    "ae": {"network": {"channels": [16, 32, 64, 128]}},
}
QUICK_METHOD_OPTIONS: dict[str, dict[str, Any]] = {
    "pddpm": {"network": QUICK_UNET},
    "ddpm": {"network": QUICK_UNET},
    "ae": {"network": {"channels": [8, 16, 32, 64], "latent_size": 32}},
}


@dataclass(frozen=True)
class DemoConfig:
    """Every default of the demo (sized for <= 15 minutes on 2 CPU cores).

    Attributes:
        seed: seed of the cohort, the splits and the training.
        raw: start from raw scans and run the preprocessing (``False``: write a data root directly).
        n_healthy: healthy subjects (with skull when ``raw``): IXI test, validation and training.
        n_tumour: BraTS21-like subjects (validation + test).
        n_ms: MSLUB-like subjects (validation + test).
        workers: processes for synthesis and preprocessing.
        device: ``"auto"``, ``"cpu"``, ``"cuda"`` (training, inference, HD-BET).
        preprocess: the preprocessing chain (HD-BET fast mode, N4 on a shrunk grid).
        methods: methods to train, in table order (those not registered are left out, with a note).
        method_options: method options per method (network sizes).
        epochs: training epochs of every method.
        val_interval: validate (and update ``best.pt``) every N epochs.
        batch_size: slices per training batch.
        lr: Adam learning rate (small networks, few steps: higher than the paper's).
        slices_per_volume: training slices drawn per volume and epoch.
        skip_empty_slices: draw training slices with brain only (the few iterations go to anatomy).
        val_slices_per_volume: validation slices per volume.
        thresh_baseline: also evaluate the Thresh baseline (no training).
        pddpm_grids: patch grids on which the trained pDDPM is also scored, each a row of its own
            (``pddpm_<grid>``; no extra training). ``"blend"``: half-stride boxes stitched with a
            Gaussian window, reconstructions without patch seams (``diffusion.patches``); the
            ``pDDPM`` row is the authors' grid.
        permutation_rounds: rounds of the permutation tests of the table.
        log_interval: log the training loss every N iterations (TensorBoard, report curves).
        detect: run ``pddpm detect`` on one raw test scan (needs ``raw``).
        progress: progress bars.
    """

    seed: int = 0
    raw: bool = True
    n_healthy: int = 10
    n_tumour: int = 4
    n_ms: int = 4
    workers: int = 2
    device: str = "auto"
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    methods: tuple[str, ...] = ("pddpm", "ddpm", "ae")
    method_options: dict[str, dict[str, Any]] = field(default_factory=lambda: dict(DEMO_METHOD_OPTIONS))
    epochs: int = 40
    val_interval: int = 5
    batch_size: int = 16
    lr: float = 1e-3
    slices_per_volume: int = 16
    skip_empty_slices: bool = True
    val_slices_per_volume: int = 10
    thresh_baseline: bool = True
    pddpm_grids: tuple[str, ...] = ("blend",)
    permutation_rounds: int = 1000
    log_interval: int = 5
    detect: bool = True
    progress: bool = True

    @classmethod
    def quick(cls) -> DemoConfig:
        """A much smaller run: data root generated directly, a tiny pDDPM against Thresh (what the test runs)."""
        return cls(
            raw=False,
            n_healthy=4,
            n_tumour=2,
            n_ms=2,
            workers=1,
            methods=("pddpm",),
            method_options=dict(QUICK_METHOD_OPTIONS),
            epochs=8,
            val_interval=1,
            batch_size=8,
            lr=2e-3,
            slices_per_volume=8,
            val_slices_per_volume=4,
            permutation_rounds=200,
            log_interval=1,
            detect=False,
        )


class DemoPaths:
    """Where each stage writes, under the demo's output folder ``out``."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.raw = out / "raw"
        self.atlas = out / "atlas"
        self.data_root = out / "data_root"
        self.runs = out / "runs"
        self.results = out / "results"
        self.detect = out / "detect"
        self.stages = out / "stages.json"
        self.config = out / "demo_config.json"


@dataclass
class DemoResult:
    """What the demo produced: the table (markdown), the main outputs, and each stage's status."""

    table_markdown: str
    outputs: dict[str, Path]
    status: dict[str, str]


# ------------------------------------------------------------------------------------------ helpers


def _say(message: str) -> None:
    print(f"[pddpm demo] {message}", file=sys.stderr, flush=True)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except json.JSONDecodeError:
        raise InputError(path, "corrupt JSON: delete it to start this demo over") from None


#: the fields that :class:`DemoConfig` passes on to every method's ``TrainConfig`` as they are
TRAIN_FIELDS: tuple[str, ...] = (
    "epochs", "batch_size", "lr", "device", "seed", "slices_per_volume", "skip_empty_slices",
    "val_slices_per_volume", "val_interval", "log_interval", "progress",
)  # fmt: skip
#: the configuration fields each stage's outputs depend on (a later stage depends on the earlier ones)
STAGE_FIELDS: dict[str, tuple[str, ...]] = {
    "cohort": ("seed", "raw", "n_healthy", "n_tumour", "n_ms"),
    "preprocess": ("preprocess",),
    "splits": (),
    "train": ("methods", "method_options", "epochs", "batch_size", "lr", "slices_per_volume",
              "val_slices_per_volume", "log_interval", "device"),
    "evaluate": ("thresh_baseline", "pddpm_grids"),
    "table": ("permutation_rounds",),
    "detect": ("detect",),
    "report": (),
}  # fmt: skip


def _check_config(paths: DemoPaths, config: DemoConfig) -> None:
    """Refuse a configuration that changes what a finished stage (or one before it) depended on.

    Changing only options of stages that have not finished is allowed (e.g. the training settings
    after the data stages): the finished stages are reused and ``demo_config.json`` is updated.
    """
    wanted = {
        k: v for k, v in plain_json(dataclasses.asdict(config)).items() if k not in ("progress", "workers")
    }
    stored = _read_json(paths.config)
    changed = {k for k in set(stored) | set(wanted) if stored.get(k) != wanted.get(k)} if stored else set()
    finished = _read_json(paths.stages)
    depended: set[str] = set()
    for stage in STAGES:
        depended.update(STAGE_FIELDS[stage])
        if stage in finished and changed & depended:
            raise InputError(
                paths.out,
                f"holds a demo whose finished stage {stage!r} used another configuration "
                f"({', '.join(sorted(changed & depended))}): use another --out "
                "(e.g. --quick and the full demo need separate folders)",
            )
    if stored != wanted:
        save_json(wanted, paths.config)


def demo_methods(config: DemoConfig) -> tuple[list[str], list[str]]:
    """``(available, missing)``: the configured methods that are registered, and those that are not."""
    from pddpm_monai.methods import METHODS

    available = [m for m in config.methods if m in METHODS]
    return available, [m for m in config.methods if m not in METHODS]


# ------------------------------------------------------------------------------------------- stages


def _stage_cohort(paths: DemoPaths, config: DemoConfig) -> str:
    from pddpm_monai.data.synthetic import make_synthetic_raw, make_synthetic_root, synthetic_atlas

    counts = {"n_healthy": config.n_healthy, "n_tumour": config.n_tumour, "n_ms": config.n_ms}
    synthetic_atlas(paths.atlas)
    if config.raw:
        make_synthetic_raw(paths.raw, seed=config.seed, skull=True, workers=config.workers, **counts)
        return f"raw scans in {paths.raw}, atlas in {paths.atlas}"
    make_synthetic_root(paths.data_root, seed=config.seed, workers=config.workers, **counts)
    return f"data root written directly in {paths.data_root} (--quick: no raw scans)"


def _stage_preprocess(paths: DemoPaths, config: DemoConfig) -> str:
    if not config.raw:
        return "not needed (--quick: the data root was generated preprocessed)"
    from pddpm_monai.data.prepare import run_preprocess
    from pddpm_monai.transforms.atlas import resolve_atlas
    from pddpm_monai.utils import resolve_device

    atlas = resolve_atlas(paths.atlas)
    device = "cuda" if resolve_device(config.device).type == "cuda" else "cpu"
    notes = []
    for dataset, folder in (("ixi", "IXI"), ("brats21", "BraTS21"), ("mslub", "MSLUB")):
        summary = run_preprocess(
            dataset, paths.raw / folder, paths.data_root, atlas, workers=config.workers,
            device=device, config=config.preprocess, progress=config.progress,
        )  # fmt: skip
        notes.append(f"{dataset}: {summary.report().splitlines()[0]}")
        for line in summary.report().splitlines()[1:]:
            _say(line.strip())
    return "; ".join(notes)


def _stage_splits(paths: DemoPaths, config: DemoConfig) -> str:
    if not config.raw:
        return "written with the synthetic data root"
    from pddpm_monai.data.splits import make_splits

    written = make_splits(paths.data_root, seed=config.seed)
    return f"{len(written)} split CSVs in {paths.data_root / 'splits'}"


def _train_config(paths: DemoPaths, config: DemoConfig, method: str) -> Any:
    from pddpm_monai.engines.trainer import TrainConfig

    shared = {name: getattr(config, name) for name in TRAIN_FIELDS}
    return TrainConfig(
        data_root=str(paths.data_root),
        out_dir=str(paths.runs / method),
        fold=0,
        method=method,
        method_options=config.method_options.get(method, {}),
        cache_workers=max(1, config.workers),
        image_interval=max(1, config.epochs // 4),
        **shared,
    )


def _stage_train(paths: DemoPaths, config: DemoConfig) -> str:
    from pddpm_monai.engines.trainer import train

    methods, missing = demo_methods(config)
    notes = []
    for method in methods:
        _say(f"training {method_label(method)} ({config.epochs} epochs) -> {paths.runs / method}")
        checkpoint = train(_train_config(paths, config, method))
        notes.append(f"{method_label(method)}: {checkpoint.name}")
    if missing:
        notes.append(f"not installed, left out: {', '.join(missing)}")
    return "; ".join(notes)


def _checkpoint(paths: DemoPaths, method: str) -> Path:
    from pddpm_monai.engines.trainer import BEST_CHECKPOINT, LAST_CHECKPOINT

    best = paths.runs / method / BEST_CHECKPOINT
    return best if best.is_file() else paths.runs / method / LAST_CHECKPOINT


def _stage_evaluate(paths: DemoPaths, config: DemoConfig) -> str:
    from pddpm_monai.evaluation.evaluate import EvaluationConfig, VolumeLoader, evaluate_method
    from pddpm_monai.methods.checkpoint import load_scorer
    from pddpm_monai.methods.scorers import ThreshScorer
    from pddpm_monai.utils import resolve_device

    eval_config = EvaluationConfig(progress=config.progress)
    loader = VolumeLoader(eval_config, cache=True)  # every method scores the same volumes
    device = resolve_device(config.device)
    scorers: list[tuple[Any, dict[str, Any]]] = []
    for method in demo_methods(config)[0]:
        checkpoint = _checkpoint(paths, method)
        extra = {"checkpoint": str(checkpoint)}
        scorers.append((load_scorer(checkpoint, device=device), extra))
        if method == "pddpm":  # the same network on other patch grids
            for grid in config.pddpm_grids:
                scorer = load_scorer(checkpoint, device=device, name=f"pddpm_{grid}", patch_grid=grid)
                scorers.append((scorer, {**extra, "patch_grid": grid}))
    if config.thresh_baseline:
        scorers.append((ThreshScorer(), {}))
    for scorer, extra in scorers:
        _say(f"evaluating {method_label(scorer.name)}")
        # overlays (best/median/worst) for the pDDPM rows, the ones the report shows
        config_i = dataclasses.replace(eval_config, figures=scorer.name.startswith("pddpm"))
        evaluate_method(
            scorer, paths.data_root, paths.results, fold=0, config=config_i, extra=extra, loader=loader
        )
    return f"{len(scorers)} method(s) in {paths.results}"


def _stage_table(paths: DemoPaths, config: DemoConfig) -> str:
    from pddpm_monai.evaluation.stats import PermutationConfig
    from pddpm_monai.evaluation.table import write_table

    write_table(
        [paths.results],
        paths.results,
        config=PermutationConfig(rounds=config.permutation_rounds, seed=config.seed),
    )
    return f"{paths.results / 'table.md'}"


def _detect_scan(paths: DemoPaths) -> Path | None:
    """The first BraTS21-like test subject's raw scan (skull-stripped; native grid = its raw file)."""
    from pddpm_monai.data.datalist import read_split_csv, split_path

    items = read_split_csv(split_path(paths.data_root, "Brats21_test"), paths.data_root)
    for item in items:
        name = item["name"]
        raw = paths.raw / "BraTS21" / name / f"{name}_t2.nii.gz"
        if raw.is_file():
            return raw
    return None


def _stage_detect(paths: DemoPaths, config: DemoConfig) -> str:
    if not (config.raw and config.detect):
        return "not run (--quick has no raw scans; see `pddpm detect --help`)"
    from pddpm_monai.evaluation.evaluate import run_dir_for
    from pddpm_monai.pipeline.detect import DetectConfig, detect_scan
    from pddpm_monai.transforms.atlas import resolve_atlas

    method = demo_methods(config)[0][0]
    scan = _detect_scan(paths)
    if scan is None:
        return "no raw BraTS21-like test scan found"
    thresholds = run_dir_for(paths.results, method, 0) / "thresholds.json"
    detect_config = DetectConfig(
        skull_stripped=True,
        thresholds_file=str(thresholds),
        dataset="brats21",
        device="cuda" if config.device.startswith("cuda") else "cpu",
        preprocess=config.preprocess,
    )
    result = detect_scan(
        scan,
        paths.detect,
        checkpoint=_checkpoint(paths, method),
        atlas=resolve_atlas(paths.atlas),
        config=detect_config,
    )
    s = result.summary
    return f"{scan.name}: {s['n_components']} component(s), {s['lesion_volume_ml']:.1f} ml -> {paths.detect}"


def _stage_report(paths: DemoPaths, config: DemoConfig) -> str:
    from pddpm_monai.pipeline.report import build_demo_report

    methods = demo_methods(config)[0]
    rows = [f"pddpm_{grid}" for grid in config.pddpm_grids] if "pddpm" in methods else []
    written = build_demo_report(paths, methods, _read_json(paths.stages), scored=rows)
    return ", ".join(str(p) for p in written.values())


STAGE_FUNCTIONS: dict[str, Callable[[DemoPaths, DemoConfig], str]] = {
    "cohort": _stage_cohort,
    "preprocess": _stage_preprocess,
    "splits": _stage_splits,
    "train": _stage_train,
    "evaluate": _stage_evaluate,
    "table": _stage_table,
    "detect": _stage_detect,
    "report": _stage_report,
}


# ---------------------------------------------------------------------------------------- the demo


def run_demo(out_dir: str | os.PathLike, config: DemoConfig = DemoConfig()) -> DemoResult:
    """Run (or resume) the demo in ``out_dir``.

    Args:
        out_dir: the demo's folder (created); a folder of a finished demo is re-used as is.
        config: the demo's size and options (:meth:`DemoConfig.quick` for the small run).

    Returns:
        the :class:`DemoResult`: the table as markdown, the main outputs, each stage's status.

    Raises:
        InputError: the folder holds a demo of another configuration, or is not writable.
        PddpmError: a stage failed (its message names the stage); re-running resumes there.
    """
    paths = DemoPaths(Path(out_dir))
    try:
        paths.out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise InputError(paths.out, f"cannot create the demo folder ({err.strerror or err})") from None
    _check_config(paths, config)
    status: dict[str, str] = {}
    for index, stage in enumerate(STAGES, 1):
        done = _read_json(paths.stages)
        header = f"stage {index}/{len(STAGES)} {stage}"
        if stage in done:
            status[stage] = "skipped"
            _say(f"{header}: skipped (already finished {done[stage]['finished']})")
            continue
        _say(f"{header}: running")
        start = time.perf_counter()
        try:
            note = STAGE_FUNCTIONS[stage](paths, config)
        except PddpmError as err:
            raise PddpmError(
                f"demo stage {stage!r} failed: {err} (re-run the same command to resume)"
            ) from err
        seconds = round(time.perf_counter() - start, 1)
        done[stage] = {
            "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "seconds": seconds,
            "note": note,
        }
        save_json(done, paths.stages)
        status[stage] = "done"
        _say(f"{header}: done in {seconds:.0f} s ({note})")
    table = paths.results / "table.md"
    outputs = {
        "report": paths.out / "report.md",
        "report_html": paths.out / "report.html",
        "table": table,
        "results": paths.results,
        "data_root": paths.data_root,
        "runs": paths.runs,
        "tensorboard": f"tensorboard --logdir {paths.runs}",  # type: ignore[dict-item]
    }
    if config.raw and config.detect:
        outputs["detect"] = paths.detect
    return DemoResult(table.read_text(encoding="utf-8") if table.is_file() else "", outputs, status)
