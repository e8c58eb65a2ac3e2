"""Training with MONAI engines (paper §4.2): ``SupervisedTrainer`` + ``SupervisedEvaluator``.

One path for every registered :class:`~pddpm_monai.methods.Method`, baselines included:
:func:`build_trainer` assembles exactly the objects that the bundle's ``configs/train.json`` wires
(``python -m monai.bundle run training``), in the same order, so the two give the same weights:

- the method (:func:`training_method`: weights initialised from the seed), its optimiser and the
  CPU generator of the training draws (:func:`~pddpm_monai.engines.distributed.rank_generator`);
- :class:`~pddpm_monai.engines.steps.TrainingStep` / :class:`~pddpm_monai.engines.steps.ValidationStep`
  as the engines' ``iteration_update``;
- trainer handlers: :class:`~pddpm_monai.engines.handlers.SetEpochHandler`, MONAI's
  ``ValidationHandler``, :class:`~pddpm_monai.engines.handlers.CheckpointHandler`, ``StatsHandler``,
  ``TensorBoardStatsHandler``, :class:`~pddpm_monai.engines.handlers.TensorBoardImageGridHandler`,
  :class:`~pddpm_monai.engines.handlers.ProgressHandler`; evaluator handlers: ``StatsHandler`` and
  ``TensorBoardStatsHandler`` of the validation loss.

Every default lives in :class:`TrainConfig` (the CLI and the bundle's ``train.json`` read or match
it; a test checks). The learning rate is the authors' configured 1e-4
(``configs/datamodule/IXI.yaml``, which produced Table 1), not the paper text's 1e-5: with batch 32
and ~11 iterations per epoch, 1e-5 needs far more than the 1600 epochs to converge.

Example:
    >>> config = TrainConfig(data_root="data", out_dir="runs/fold0", fold=0)  # doctest: +SKIP
    >>> best = train(config)  # doctest: +SKIP
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from ignite.metrics import Average
from monai.engines import SupervisedEvaluator, SupervisedTrainer
from monai.handlers import StatsHandler, TensorBoardStatsHandler, ValidationHandler
from torch.utils.data import DataLoader

from pddpm_monai.data.datalist import fold_items
from pddpm_monai.data.dataset import AllSlicesDataset, CacheMode, RandomSliceDataset, volume_dataset
from pddpm_monai.engines.distributed import rank_generator
from pddpm_monai.engines.handlers import (
    BEST_CHECKPOINT,
    LAST_CHECKPOINT,
    LOGGER_NAME,
    CheckpointHandler,
    ProgressHandler,
    SetEpochHandler,
    TensorBoardImageGridHandler,
)
from pddpm_monai.engines.steps import (
    TrainingStep,
    ValidationStep,
    every_n,
    lower_is_better,
    no_output,
    output_loss,
    output_loss_tensor,
    resolve_device,
)
from pddpm_monai.methods import Method, build_method, known_options
from pddpm_monai.methods.config import apply_overrides, config_to_dict
from pddpm_monai.names import method_label
from pddpm_monai.utils import InputError, PddpmError

__all__ = [
    "TrainConfig",
    "RunLogFormatter",
    "warn_unfilled_batch",
    "load_volumes",
    "build_loaders",
    "training_method",
    "build_method_for",
    "build_trainer",
    "prepare_training",
    "run_training",
    "train",
    "LAST_CHECKPOINT",
    "BEST_CHECKPOINT",
]


@dataclass
class TrainConfig:
    """Every default of a training run (paper §4.2 and the authors' configuration).

    Attributes:
        data_root: the data root (``Train/ixi``, ``splits/``); not needed when volumes are passed.
        out_dir: checkpoints, TensorBoard logs and the run's config go here.
        fold: cross-validation fold (``splits/IXI_train_fold<fold>.csv``, ``IXI_val_fold<fold>.csv``).
        method: a key of :data:`~pddpm_monai.methods.METHODS`.
        method_options: the method's config (partial; dotted keys such as
            ``"network.model_channels"`` reach nested options; unset options keep their defaults).
        epochs: epochs to train (the authors: 1600).
        batch_size: slices per training batch (the authors: 32).
        lr: Adam learning rate (the authors' config: 1e-4; the paper's text: 1e-5; see module doc).
        device: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ...
        amp: bf16 autocast on CUDA (ignored on the CPU). Off by default: the authors train in
            fp32 (``precision: 32``; their fp16 conversion is a no-op).
        seed: seed of the slice draws, the noise, the timesteps and the patch positions (the authors: 3141).
        slices_per_volume: training slices per volume and epoch (the authors: 1).
        skip_empty_slices: draw only slices with brain (the authors do not skip).
        val_slices_per_volume: fixed seeded subset of validation slices per volume
            (``None``: every slice; 10 keeps validation about as costly as a training epoch).
        val_interval: validate every N epochs (0: never; then ``best.pt`` is not written).
        cache: ``"memory"``, ``"disk"`` (``<out>/cache``, reused by later runs) or ``"none"``.
        cache_workers: threads preprocessing the volumes.
        num_workers: DataLoader workers (slicing cached volumes is cheap: 0 is fine).
        drop_last: drop the last incomplete batch (the authors do), unless there is no complete one.
        checkpoint_every: also write ``last.pt`` every N iterations (0: only at the end of epochs).
        image_interval: log the image grid every N epochs (0: never).
        log_interval: log the training loss every N iterations.
        progress: show an ignite/tqdm progress bar.
        resume: continue from ``<out>/last.pt`` when it exists.
    """

    data_root: str | None = None
    out_dir: str = "runs/pddpm"
    fold: int = 0
    method: str = "pddpm"
    method_options: dict[str, Any] = field(default_factory=dict)
    epochs: int = 1600
    batch_size: int = 32
    lr: float = 1e-4
    device: str = "auto"
    amp: bool = False
    seed: int = 3141
    slices_per_volume: int = 1
    skip_empty_slices: bool = False
    val_slices_per_volume: int | None = 10
    val_interval: int = 1
    cache: CacheMode = "memory"
    cache_workers: int = 2
    num_workers: int = 0
    drop_last: bool = True
    checkpoint_every: int = 0
    image_interval: int = 10
    log_interval: int = 10
    progress: bool = False
    resume: bool = True


def load_volumes(config: TrainConfig) -> tuple[Sequence[Mapping[str, Any]], Sequence[Mapping[str, Any]]]:
    """The cached model-grid volumes of the fold's training and validation splits.

    Returns:
        ``(train_volumes, val_volumes)`` datasets of dicts with ``(1, 96, 96, 50)`` image and mask.
    """
    cache_dir = Path(config.out_dir) / "cache"
    options = {"cache": config.cache, "cache_dir": cache_dir, "num_workers": config.cache_workers}
    return tuple(  # type: ignore[return-value]
        volume_dataset(fold_items(config.data_root, config.fold, part), **options)
        for part in ("train", "val")
    )


def build_loaders(
    config: TrainConfig,
    train_volumes: Sequence[Mapping[str, Any]],
    val_volumes: Sequence[Mapping[str, Any]] | None = None,
    *,
    context: int = 0,
) -> tuple[DataLoader, DataLoader | None]:
    """DataLoaders of random training slices and of the fixed validation slices.

    Args:
        config: the run configuration.
        train_volumes: dicts with ``(1, H, W, D)`` ``"image"`` (and optionally ``"mask"``) tensors.
        val_volumes: the same for validation (``None``: no validation).
        context: neighbouring slices stacked as image channels (a method's ``context_slices``: SVAE).

    Returns:
        ``(train_loader, val_loader or None)``; the training dataset is a :class:`RandomSliceDataset`
        whose epoch the trainer sets.
    """
    common = {"skip_empty": config.skip_empty_slices, "seed": config.seed, "context": context}
    loader = {
        "batch_size": config.batch_size,
        "shuffle": False,  # the training dataset shuffles per epoch, reproducibly
        "num_workers": config.num_workers,
        "pin_memory": resolve_device(config.device).type == "cuda",
    }
    train_ds = RandomSliceDataset(train_volumes, slices_per_volume=config.slices_per_volume, **common)
    train_loader = DataLoader(
        train_ds, drop_last=config.drop_last and len(train_ds) >= config.batch_size, **loader
    )
    val_loader = None
    if val_volumes and config.val_interval > 0:
        val_ds = AllSlicesDataset(val_volumes, slices_per_volume=config.val_slices_per_volume, **common)
        val_loader = DataLoader(val_ds, **loader)
    return train_loader, val_loader


def training_method(
    name: str,
    options: Mapping[str, Any] | None = None,
    *,
    seed: int,
    device: str | torch.device = "cpu",
    drop_unknown: bool = False,
) -> Method:
    """The untrained method ``name``, its weights initialised from ``seed``, on ``device``.

    The bundle's ``network`` (``configs/train.json``) and :func:`build_method_for` (``pddpm train``).

    Args:
        name: a key of :data:`~pddpm_monai.methods.METHODS`.
        options: the method's config (partial; dotted keys such as ``"network.model_channels"``).
        seed: seed of the weight initialisation (the global generator is left as it was).
        device: where to put the method.
        drop_unknown: drop the options the method does not have (the bundle lists every method's
            options in one file); else they are an error.

    Raises:
        InputError: for an unknown method or invalid options, including a network that cannot be
            built from them (e.g. GroupNorm groups that do not divide the channels).
    """
    config = apply_overrides({}, options or {})
    if drop_unknown:
        config = known_options(name, config)
    return build_method(name, config, source="method options", seed=seed).to(device)


def build_method_for(config: TrainConfig) -> Method:
    """The (untrained) method that ``config`` describes, on the CPU (see :func:`training_method`)."""
    return training_method(config.method, config.method_options, seed=config.seed)


def build_trainer(
    config: TrainConfig,
    method: Method,
    train_loader: DataLoader,
    val_loader: DataLoader | None = None,
    *,
    summary_writer: Any | None = None,
) -> SupervisedTrainer:
    """A MONAI ``SupervisedTrainer`` for ``method``: the objects of the bundle's ``train.json``.

    The trainer's :class:`~pddpm_monai.engines.handlers.CheckpointHandler` is ``trainer.checkpointer``
    and its evaluator (or ``None``) ``trainer.evaluator``; ``trainer.checkpointer.restore(trainer)``
    resumes before ``run`` (else the trainer resumes when it starts).

    Args:
        config: the run configuration (epochs, lr, device, seed, intervals, out_dir).
        method: the method to train (moved to the device).
        train_loader: batches of ``{"image": (B, 1, H, W)}`` from a dataset with ``set_epoch``.
        val_loader: validation batches (``None``: no validation, no ``best.pt``).
        summary_writer: a TensorBoard ``SummaryWriter`` (``None``: no TensorBoard logging).

    Returns:
        the trainer; :func:`run_training` trains.
    """
    device = resolve_device(config.device)
    method.to(device)
    optimizer = method.configure_optimizer(config.lr)
    generator = rank_generator(config.seed)
    evaluator = None
    if val_loader is not None:
        val_handlers: list[Any] = [
            StatsHandler(name=f"{LOGGER_NAME}.val", iteration_log=False, output_transform=no_output)
        ]
        if summary_writer is not None:
            val_handlers.append(
                TensorBoardStatsHandler(summary_writer, iteration_log=False, output_transform=no_output)
            )
        evaluator = SupervisedEvaluator(
            device=device,
            val_data_loader=val_loader,
            network=method,
            iteration_update=ValidationStep(method, device=device, amp=config.amp, seed=config.seed + 1),
            key_val_metric={"val_loss": Average(output_transform=output_loss_tensor)},
            metric_cmp_fn=lower_is_better,
            decollate=False,
            val_handlers=val_handlers,
        )
    checkpointer = CheckpointHandler(
        config.out_dir,
        method,
        optimizer,
        generator,
        evaluator=evaluator,
        resume=config.resume,
        every=config.checkpoint_every,
        train_config=config_to_dict(config),
    )
    handlers: list[Any] = [SetEpochHandler(train_loader.dataset)]
    if evaluator is not None:
        handlers.append(
            ValidationHandler(interval=config.val_interval, validator=evaluator, epoch_level=True)
        )
    handlers += [  # after validation: last.pt holds this epoch's best loss
        checkpointer,
        StatsHandler(
            name=f"{LOGGER_NAME}.train",
            iteration_log=every_n(config.log_interval),
            tag_name="loss",
            output_transform=output_loss,
        ),
    ]
    if summary_writer is not None:
        handlers += [
            TensorBoardStatsHandler(
                summary_writer,
                iteration_log=every_n(config.log_interval),
                epoch_log=False,
                tag_name="train/loss",
                output_transform=output_loss,
            ),
            TensorBoardImageGridHandler(summary_writer, interval=config.image_interval),
        ]
    handlers.append(ProgressHandler(config.progress))
    trainer = SupervisedTrainer(
        device=device,
        max_epochs=config.epochs,
        train_data_loader=train_loader,
        network=method,
        optimizer=optimizer,
        loss_function=None,  # the method computes its own loss in the step
        iteration_update=TrainingStep(method, optimizer, generator=generator, device=device, amp=config.amp),
        decollate=False,
        train_handlers=handlers,
    )
    trainer.checkpointer = checkpointer
    trainer.evaluator = evaluator
    return trainer


class RunLogFormatter(logging.Formatter):
    """``HH:MM:SS <method> [train|val|data] message``: log lines name the method as the paper does.

    The logger names under ``pddpm`` (``pddpm.train``, ``pddpm.val``, ...) become the stage word, so a
    DDPM run's lines say ``DDPM``, never ``pddpm``.

    Args:
        label: the method's display name (:func:`~pddpm_monai.names.method_label`).
    """

    def __init__(self, label: str) -> None:
        super().__init__("%(asctime)s %(message)s", "%H:%M:%S")
        self.label = label

    def format(self, record: logging.LogRecord) -> str:
        stage = record.name[len(LOGGER_NAME) + 1 :] if record.name.startswith(f"{LOGGER_NAME}.") else ""
        text = super().format(record)
        time, _, message = text.partition(" ")
        return " ".join(part for part in (time, self.label, stage, message) if part)


def _setup_logging(method: str) -> None:
    """Log ``pddpm.*`` records of this run to stderr, each line naming ``method`` as the paper does."""
    logger = logging.getLogger(LOGGER_NAME)
    handler = next((h for h in logger.handlers if getattr(h, "pddpm_run_handler", False)), None)
    if handler is None and not logger.handlers:
        handler = logging.StreamHandler()
        handler.pddpm_run_handler = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
    if handler is not None:
        handler.setFormatter(RunLogFormatter(method_label(method)))
    logger.setLevel(logging.INFO)


def prepare_training(
    config: TrainConfig,
    *,
    train_volumes: Sequence[Mapping[str, Any]] | None = None,
    val_volumes: Sequence[Mapping[str, Any]] | None = None,
    summary_writer: Any | None = None,
    method: Method | None = None,
) -> SupervisedTrainer:
    """Build data, method and trainer of a run, resumed from ``<out>/last.pt`` when present.

    Args:
        config: the run configuration.
        train_volumes: training volumes (dicts with ``(1, H, W, D)`` tensors) instead of the data root.
        val_volumes: validation volumes (with ``train_volumes``; ``None``: no validation).
        summary_writer: TensorBoard writer (``None``: none).
        method: the method, already built by :func:`build_method_for` (``None``: built here).

    Returns:
        the trainer, possibly already at its last epoch (then ``trainer.run()`` must not be called;
        :func:`run_training` checks).
    """
    if method is None:
        method = build_method_for(config)  # first: bad options fail before the volumes are loaded
    if train_volumes is None:
        train_volumes, val_volumes = load_volumes(config)
    context = getattr(method, "context_slices", 0)
    train_loader, val_loader = build_loaders(config, train_volumes, val_volumes, context=context)
    if len(train_loader) == 0:
        raise InputError("--batch-size", "no training batch: fewer training slices than the batch size")
    warn_unfilled_batch(config, len(train_volumes))
    trainer = build_trainer(config, method, train_loader, val_loader, summary_writer=summary_writer)
    trainer.checkpointer.restore(trainer)
    return trainer


def warn_unfilled_batch(config: TrainConfig, n_volumes: int) -> str:
    """One-line warning when an epoch draws fewer slices than one batch holds; returns it ("" if none).

    An epoch draws ``slices_per_volume`` slices per training volume (the authors: one), so 8 volumes
    give 8-slice batches whatever batch size is asked. The run goes on with the smaller batches.
    """
    per_epoch = n_volumes * config.slices_per_volume
    if config.batch_size <= per_epoch:
        return ""
    message = (
        f"warning: batch size {config.batch_size} is larger than the {per_epoch} slices an epoch draws "
        f"({n_volumes} training volumes x {config.slices_per_volume} slice(s) per volume): every batch "
        f"holds {per_epoch} slices; draw more slices per volume and epoch (--slices-per-volume) "
        "or lower --batch-size"
    )
    logging.getLogger(LOGGER_NAME).warning(message)
    return message


def run_training(trainer: SupervisedTrainer) -> SupervisedTrainer:
    """``trainer.run()``, unless it is already at its last epoch; out of GPU memory is one line.

    The bundle's ``training`` expression and :func:`train` both call it.
    """
    state = trainer.state
    if state.iteration >= state.max_epochs * state.epoch_length > 0:
        logging.getLogger(LOGGER_NAME).info("the run is already at epoch %d: nothing to do", state.max_epochs)
        return trainer
    try:
        trainer.run()
    except torch.cuda.OutOfMemoryError as err:
        raise PddpmError(f"out of GPU memory ({err}); lower --batch-size") from None
    return trainer


def train(
    config: TrainConfig,
    *,
    train_volumes: Sequence[Mapping[str, Any]] | None = None,
    val_volumes: Sequence[Mapping[str, Any]] | None = None,
) -> Path:
    """Train (or resume training) and return the checkpoint to use: ``best.pt``, else ``last.pt``.

    Writes ``<out>/train_config.json``, ``<out>/last.pt``, ``<out>/best.pt`` and TensorBoard logs in
    ``<out>/tensorboard``. A run whose ``last.pt`` is already at ``config.epochs`` does nothing.

    Args:
        config: the run configuration.
        train_volumes: training volumes instead of the data root (tests, notebooks).
        val_volumes: validation volumes (with ``train_volumes``).

    Returns:
        the path of the best (or, without validation, the last) checkpoint.
    """
    from torch.utils.tensorboard import SummaryWriter  # loads TensorBoard: only when training

    _setup_logging(config.method)
    out = Path(config.out_dir)
    # bad options and bad data fail before anything is written: no output folder is left behind
    method = build_method_for(config)
    if train_volumes is None:
        train_volumes, val_volumes = load_volumes(config)
    out.mkdir(parents=True, exist_ok=True)
    with SummaryWriter(log_dir=str(out / "tensorboard")) as writer:
        run_training(
            prepare_training(
                config,
                train_volumes=train_volumes,
                val_volumes=val_volumes,
                summary_writer=writer,
                method=method,
            )
        )
    best, last = out / BEST_CHECKPOINT, out / LAST_CHECKPOINT
    return best if best.is_file() else last
