"""Training with MONAI engines (paper §4.2): ``SupervisedTrainer`` + ``SupervisedEvaluator``.

One trainer for every registered :class:`~pddpm_monai.engines.methods.Method`: each iteration calls
``method.train_iteration`` (which samples ``t``, the noise and the patch positions from one CPU
generator, so a run is reproducible from its seed). Around it, MONAI/ignite handlers:

- ``ValidationHandler`` runs a ``SupervisedEvaluator`` computing the validation loss (the training
  loss on healthy validation slices, with a fixed noise seed so epochs compare) every
  ``val_interval`` epochs;
- :class:`TrainingCheckpointer` writes ``<out>/last.pt`` (every epoch, optionally every N
  iterations) and ``<out>/best.pt`` (lowest validation loss) in the self-describing format of
  :mod:`pddpm_monai.engines.checkpoint`, atomically; a new run in the same ``out_dir`` resumes from
  ``last.pt`` (iteration counter, optimiser state, generator state, best validation loss);
- ``StatsHandler`` (log lines), ``TensorBoardStatsHandler`` (train/val losses) and
  :class:`TensorBoardImageGridHandler` (input / noised / reconstruction / error grid);
  an ignite progress bar on request.

MONAI's ``CheckpointSaver`` is not used: it saves a dict of ``state_dict()`` s under names it
derives, while our checkpoints must be plain self-describing dicts (method name, config, version)
that ``load_scorer`` reads; a 40-line handler over :func:`~pddpm_monai.utils.save_checkpoint` does it.

Every default lives in :class:`TrainConfig` (CLI and bundle override it). The learning rate is the
authors' configured 1e-4 (``configs/datamodule/IXI.yaml``, which produced Table 1), not the
paper text's 1e-5: with batch 32 and ~11 iterations per epoch, 1e-5 needs far more than the
1600 epochs to converge.

Example:
    >>> config = TrainConfig(data_root="data", out_dir="runs/fold0", fold=0)  # doctest: +SKIP
    >>> best = train(config)  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events
from ignite.metrics import Average
from monai.engines import SupervisedEvaluator, SupervisedTrainer
from monai.handlers import StatsHandler, TensorBoardStatsHandler, ValidationHandler
from torch import Tensor
from torch.utils.data import DataLoader

from pddpm_monai.data.datalist import read_split_csv, split_path
from pddpm_monai.data.dataset import AllSlicesDataset, CacheMode, RandomSliceDataset, volume_dataset
from pddpm_monai.engines.checkpoint import make_checkpoint, read_checkpoint
from pddpm_monai.engines.config import apply_overrides, config_to_dict
from pddpm_monai.engines.methods import Method, build_method
from pddpm_monai.names import method_label
from pddpm_monai.utils import InputError, PddpmError, save_checkpoint, save_json

__all__ = [
    "TrainConfig",
    "RunLogFormatter",
    "warn_unfilled_batch",
    "TrainingCheckpointer",
    "TensorBoardImageGridHandler",
    "resolve_device",
    "load_volumes",
    "build_loaders",
    "build_method_for",
    "build_trainer",
    "prepare_training",
    "train",
    "LAST_CHECKPOINT",
    "BEST_CHECKPOINT",
]

LAST_CHECKPOINT = "last.pt"
BEST_CHECKPOINT = "best.pt"
LOGGER_NAME = "pddpm"
#: images of the grid logged to TensorBoard, as columns (keys of ``StepOutput.images``)
IMAGE_GRID_KEYS = ("input", "noised", "reconstruction", "error")


@dataclass
class TrainConfig:
    """Every default of a training run (paper §4.2 and the authors' configuration).

    Attributes:
        data_root: the data root (``Train/ixi``, ``splits/``); not needed when volumes are passed.
        out_dir: checkpoints, TensorBoard logs and the run's config go here.
        fold: cross-validation fold (``splits/IXI_train_fold<fold>.csv``, ``IXI_val_fold<fold>.csv``).
        method: a key of :data:`~pddpm_monai.engines.methods.METHODS`.
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


def resolve_device(name: str) -> torch.device:
    """``"auto"`` -> CUDA when available else CPU; any other name as ``torch.device``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise InputError("--device", f"unknown device {name!r} ({err})") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError("--device", "CUDA was requested but is not available")
    return device


def load_volumes(config: TrainConfig) -> tuple[Sequence[Mapping[str, Any]], Sequence[Mapping[str, Any]]]:
    """The cached model-grid volumes of the fold's training and validation splits.

    Returns:
        ``(train_volumes, val_volumes)`` datasets of dicts with ``(1, 96, 96, 50)`` image and mask.
    """
    if config.data_root is None:
        raise InputError("--data-root", "a data root is required to train")
    root = Path(config.data_root)
    if not root.is_dir():
        raise InputError(root, "data root not found")
    train_items = read_split_csv(split_path(root, f"IXI_train_fold{config.fold}"), root)
    val_items = read_split_csv(split_path(root, f"IXI_val_fold{config.fold}"), root)
    for name, items in (("training", train_items), ("validation", val_items)):
        if not items:
            raise InputError(root / "splits", f"the {name} split of fold {config.fold} is empty")
    cache_dir = Path(config.out_dir) / "cache"
    options = {"cache": config.cache, "cache_dir": cache_dir, "num_workers": config.cache_workers}
    return volume_dataset(train_items, **options), volume_dataset(val_items, **options)


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
    train_ds = RandomSliceDataset(
        train_volumes,
        slices_per_volume=config.slices_per_volume,
        skip_empty=config.skip_empty_slices,
        seed=config.seed,
        context=context,
    )
    drop_last = config.drop_last and len(train_ds) >= config.batch_size
    pin = resolve_device(config.device).type == "cuda"
    train_loader = DataLoader(
        train_ds,
        batch_size=config.batch_size,
        shuffle=False,  # the dataset shuffles per epoch, reproducibly
        drop_last=drop_last,
        num_workers=config.num_workers,
        pin_memory=pin,
    )
    val_loader = None
    if val_volumes is not None and len(val_volumes) > 0 and config.val_interval > 0:
        val_ds = AllSlicesDataset(
            val_volumes,
            slices_per_volume=config.val_slices_per_volume,
            skip_empty=config.skip_empty_slices,
            seed=config.seed,
            context=context,
        )
        val_loader = DataLoader(
            val_ds,
            batch_size=config.batch_size,
            shuffle=False,
            num_workers=config.num_workers,
            pin_memory=pin,
        )
    return train_loader, val_loader


def build_method_for(config: TrainConfig) -> Method:
    """The (untrained) method that ``config`` describes, its weights initialised from ``config.seed``.

    The global torch generator is left as it was (the initialisation runs in ``fork_rng``).

    Raises:
        InputError: for invalid options, including a network that cannot be built from them (e.g.
            GroupNorm groups that do not divide the channels: ``--channels 16`` with the default 32
            groups).
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        try:
            return build_method(
                config.method, apply_overrides({}, config.method_options), source="method options"
            )
        except ValueError as err:
            if isinstance(err, InputError):
                raise
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise InputError(
                "method options", f"cannot build the {method_label(config.method)} network: {first}"
            ) from None


class TrainingCheckpointer:
    """Writes ``last.pt`` / ``best.pt`` of a run and restores a run from ``last.pt``.

    Resuming restores the weights, the optimiser (Adam moments and step), the generator of the
    training draws, the best validation loss and ignite's iteration counter. A run resumed from an
    epoch-end checkpoint continues exactly; one resumed from a mid-epoch checkpoint
    (``checkpoint_every``) finishes that epoch with the remaining number of iterations, drawn from
    the start of the epoch's slice order (ignite does not fast-forward the data loader).

    Args:
        out_dir: folder of the checkpoints.
        method: the trained method.
        optimizer: its optimiser.
        rng: the generator of the training draws.
        train_config: the run's configuration (stored in every checkpoint).
        every: also save ``last.pt`` every N iterations (0: only at the end of epochs).
    """

    def __init__(
        self,
        out_dir: str | os.PathLike,
        method: Method,
        optimizer: torch.optim.Optimizer,
        rng: torch.Generator,
        train_config: Mapping[str, Any] | None = None,
        *,
        every: int = 0,
    ) -> None:
        self.out_dir = Path(out_dir)
        self.method, self.optimizer, self.rng = method, optimizer, rng
        self.train_config = dict(train_config or {})
        self.every = every
        self.evaluator: Engine | None = None

    @property
    def last_path(self) -> Path:
        return self.out_dir / LAST_CHECKPOINT

    @property
    def best_path(self) -> Path:
        return self.out_dir / BEST_CHECKPOINT

    def attach(self, trainer: Engine, evaluator: Engine | None = None) -> None:
        """Save ``last.pt`` after each epoch (after validation) and ``best.pt`` when validation improves."""
        trainer.add_event_handler(Events.EPOCH_COMPLETED, self.save_last)
        if self.every > 0:
            trainer.add_event_handler(Events.ITERATION_COMPLETED(every=self.every), self.save_last)
        if evaluator is not None:
            self.evaluator = evaluator
            evaluator.add_event_handler(Events.EPOCH_COMPLETED, lambda _: self.save_best(trainer))

    def _trainer_state(self, trainer: Engine) -> dict[str, Any]:
        best, best_epoch = None, None
        if self.evaluator is not None and self.evaluator.state.best_metric_epoch != -1:
            best, best_epoch = (
                float(self.evaluator.state.best_metric),
                int(self.evaluator.state.best_metric_epoch),
            )
        return {
            "epoch": int(trainer.state.epoch),
            "iteration": int(trainer.state.iteration),
            "epoch_length": int(trainer.state.epoch_length),
            "max_epochs": int(trainer.state.max_epochs),
            "best_val_loss": best,
            "best_epoch": best_epoch,
        }

    def _save(self, trainer: Engine, path: Path) -> None:
        state = make_checkpoint(
            self.method,
            optimizer=self.optimizer,
            trainer=self._trainer_state(trainer),
            rng=self.rng,
            train_config=self.train_config,
        )
        save_checkpoint(state, path)

    def save_last(self, trainer: Engine) -> None:
        """Write ``last.pt`` (atomic)."""
        self._save(trainer, self.last_path)

    def save_best(self, trainer: Engine) -> None:
        """Write ``best.pt`` when the evaluator's last validation loss is its best."""
        ev = self.evaluator
        if ev is not None and ev.state.best_metric_epoch == ev.state.epoch:
            self._save(trainer, self.best_path)
            logging.getLogger(LOGGER_NAME).info(
                "epoch %d: best validation loss %.5f -> %s",
                ev.state.epoch,
                ev.state.best_metric,
                self.best_path,
            )

    def restore(self, trainer: Engine, path: str | os.PathLike | None = None) -> dict[str, Any]:
        """Load ``last.pt`` (or ``path``) into the method, optimiser, generator and trainer state.

        Raises:
            InputError: naming the file when it holds another method or configuration, or when
                the number of iterations per epoch changed (other data or batch size).

        Returns:
            the checkpoint's trainer state.
        """
        path = Path(path) if path is not None else self.last_path
        state = read_checkpoint(path, method=self.method.name)
        if state["config"] != self.method.config_dict():
            keys = sorted(
                k for k in self.method.config_dict() if state["config"].get(k) != self.method.config_dict()[k]
            )
            raise InputError(
                path,
                f"was trained with other {self.method.name} options ({', '.join(keys)}): "
                "use another --out, or --no-resume to start over",
            )
        for key in ("optimizer", "trainer"):
            if key not in state:
                raise InputError(path, f"cannot resume: the checkpoint has no {key} state")
        info = state["trainer"]
        if int(info["epoch_length"]) != int(trainer.state.epoch_length):
            raise InputError(
                path,
                f"cannot resume: {info['epoch_length']} iterations per epoch in the checkpoint, "
                f"{trainer.state.epoch_length} now (data or batch size changed): use another --out",
            )
        self.method.load_state_dict(state["network"])
        self.optimizer.load_state_dict(state["optimizer"])
        if "rng" in state:
            self.rng.set_state(state["rng"])
        iteration, epoch_length = int(info["iteration"]), int(info["epoch_length"])
        done_epochs = -(-iteration // epoch_length)  # ceil: an epoch in progress counts
        trainer.load_state_dict(
            {
                "iteration": iteration,
                "epoch_length": epoch_length,
                "max_epochs": max(int(trainer.state.max_epochs), done_epochs),
            }
        )
        if self.evaluator is not None and info.get("best_epoch") is not None:
            self.evaluator.state.best_metric = float(info["best_val_loss"])
            self.evaluator.state.best_metric_epoch = int(info["best_epoch"])
        return dict(info)


def image_grid(
    images: Mapping[str, Tensor], keys: Sequence[str] = IMAGE_GRID_KEYS, max_images: int = 4
) -> Tensor:
    """A ``(H * n, W * k)`` grid: one row per sample, one column per key, values clipped to [0, 1]."""
    columns = [images[k][:max_images, 0].float().clamp(0, 1).cpu() for k in keys if k in images]
    if not columns:
        raise KeyError(f"none of the image keys {tuple(keys)} were logged.")
    rows = [torch.cat([col[i] for col in columns], dim=1) for i in range(columns[0].shape[0])]
    return torch.cat(rows, dim=0)


class TensorBoardImageGridHandler:
    """Log a grid of the last training batch (input / noised / reconstruction / error) to TensorBoard.

    Args:
        summary_writer: the TensorBoard writer.
        interval: every N epochs.
        keys: image keys of the step output, as columns.
        max_images: rows (samples) of the grid.
        tag: TensorBoard tag.
    """

    def __init__(
        self,
        summary_writer: Any,
        *,
        interval: int = 10,
        keys: Sequence[str] = IMAGE_GRID_KEYS,
        max_images: int = 4,
        tag: str = "train/images",
    ) -> None:
        self.writer = summary_writer
        self.interval, self.keys, self.max_images, self.tag = interval, tuple(keys), max_images, tag

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.interval), self)

    def __call__(self, engine: Engine) -> None:
        output = engine.state.output
        if not isinstance(output, Mapping) or not output.get("images"):
            return
        grid = image_grid(output["images"], self.keys, self.max_images)
        self.writer.add_image(self.tag, grid, engine.state.epoch, dataformats="HW")
        self.writer.flush()


def _autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    if enabled and device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def build_trainer(
    config: TrainConfig,
    method: Method,
    train_loader: DataLoader,
    val_loader: DataLoader | None = None,
    *,
    summary_writer: Any | None = None,
) -> SupervisedTrainer:
    """A MONAI ``SupervisedTrainer`` for ``method`` with validation, checkpoints and logging attached.

    The trainer's :class:`TrainingCheckpointer` is ``trainer.checkpointer`` and its evaluator (or
    ``None``) ``trainer.evaluator``; call ``trainer.checkpointer.restore(trainer)`` to resume.

    Args:
        config: the run configuration (epochs, lr, device, seed, intervals, out_dir).
        method: the method to train (moved to the device).
        train_loader: batches of ``{"image": (B, 1, H, W)}``; a dataset with ``set_epoch`` gets the epoch.
        val_loader: validation batches (``None``: no validation, no ``best.pt``).
        summary_writer: a TensorBoard ``SummaryWriter`` (``None``: no TensorBoard logging).

    Returns:
        the trainer; ``trainer.run()`` trains.
    """
    device = resolve_device(config.device)
    method.to(device)
    optimizer = method.configure_optimizer(config.lr)
    rng = torch.Generator().manual_seed(config.seed)
    val_rng = torch.Generator()

    def train_step(engine: Engine, batch: Mapping[str, Tensor]) -> dict[str, Any]:
        images = batch["image"].to(device, non_blocking=True)
        out = method.train_iteration(images, optimizer, generator=rng, autocast=_autocast(device, config.amp))
        return {"loss": out.loss, "images": out.images}

    def val_step(engine: Engine, batch: Mapping[str, Tensor]) -> dict[str, Any]:
        images = batch["image"].to(device, non_blocking=True)
        with _autocast(device, config.amp):
            loss = method.validation_loss(images, val_rng)
        return {"loss": loss.detach().float()}

    evaluator = None
    if val_loader is not None:
        evaluator = SupervisedEvaluator(
            device=device,
            val_data_loader=val_loader,
            network=method,
            iteration_update=val_step,
            key_val_metric={"val_loss": Average(output_transform=lambda out: out["loss"])},
            metric_cmp_fn=lambda current, best: current < best,
            decollate=False,
        )
        evaluator.add_event_handler(Events.STARTED, lambda _: val_rng.manual_seed(config.seed + 1))
        StatsHandler(name=f"{LOGGER_NAME}.val", iteration_log=False, output_transform=lambda _: None).attach(
            evaluator
        )
        if summary_writer is not None:
            TensorBoardStatsHandler(
                summary_writer, iteration_log=False, output_transform=lambda _: None
            ).attach(evaluator)

    trainer = SupervisedTrainer(
        device=device,
        max_epochs=config.epochs,
        train_data_loader=train_loader,
        network=method,
        optimizer=optimizer,
        loss_function=None,  # the method computes its own loss in train_step
        iteration_update=train_step,
        decollate=False,
    )
    dataset = train_loader.dataset
    if hasattr(dataset, "set_epoch"):
        trainer.add_event_handler(Events.EPOCH_STARTED, lambda engine: dataset.set_epoch(engine.state.epoch))
    every = max(config.log_interval, 1)
    StatsHandler(
        name=f"{LOGGER_NAME}.train",
        iteration_log=lambda engine, it: it % every == 0,
        tag_name="loss",
        output_transform=lambda out: float(out["loss"]),
    ).attach(trainer)
    if summary_writer is not None:
        TensorBoardStatsHandler(
            summary_writer,
            iteration_log=lambda engine, it: it % every == 0,
            epoch_log=False,
            tag_name="train/loss",
            output_transform=lambda out: float(out["loss"]),
        ).attach(trainer)
        if config.image_interval > 0:
            TensorBoardImageGridHandler(summary_writer, interval=config.image_interval).attach(trainer)
    if evaluator is not None:
        ValidationHandler(interval=config.val_interval, validator=evaluator, epoch_level=True).attach(trainer)
    checkpointer = TrainingCheckpointer(
        config.out_dir, method, optimizer, rng, config_to_dict(config), every=config.checkpoint_every
    )
    checkpointer.attach(trainer, evaluator)  # after validation: last.pt holds this epoch's best loss
    if config.progress:
        from ignite.contrib.handlers import ProgressBar

        ProgressBar(persist=True).attach(trainer, output_transform=lambda out: {"loss": float(out["loss"])})
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
        :func:`train` checks).
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
    last = trainer.checkpointer.last_path
    if config.resume and last.is_file():
        info = trainer.checkpointer.restore(trainer)
        logging.getLogger(LOGGER_NAME).info(
            "resumed from %s at epoch %d, iteration %d", last, info["epoch"], info["iteration"]
        )
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


def _is_finished(trainer: Engine, epochs: int) -> bool:
    return trainer.state.iteration >= epochs * trainer.state.epoch_length


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
    from torch.utils.tensorboard import SummaryWriter

    _setup_logging(config.method)
    out = Path(config.out_dir)
    # bad options and bad data fail before anything is written: no output folder is left behind
    method = build_method_for(config)
    if train_volumes is None:
        train_volumes, val_volumes = load_volumes(config)
    out.mkdir(parents=True, exist_ok=True)
    save_json(config_to_dict(config), out / "train_config.json")
    writer = SummaryWriter(log_dir=str(out / "tensorboard"))
    try:
        trainer = prepare_training(
            config,
            train_volumes=train_volumes,
            val_volumes=val_volumes,
            summary_writer=writer,
            method=method,
        )
        if _is_finished(trainer, config.epochs):
            logging.getLogger(LOGGER_NAME).info(
                "%s is already at epoch %d: nothing to do", out, config.epochs
            )
        else:
            trainer.run()
    except torch.cuda.OutOfMemoryError as err:
        raise PddpmError(f"out of GPU memory ({err}); lower --batch-size") from None
    finally:
        writer.close()
    best, last = out / BEST_CHECKPOINT, out / LAST_CHECKPOINT
    return best if best.is_file() else last
