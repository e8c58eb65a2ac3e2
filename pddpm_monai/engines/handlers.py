"""Event handlers of the training engines: fresh slices per epoch, checkpoints, image grids, progress.

Each handler has ``attach(engine)``, so that a bundle config lists it in ``train_handlers`` and
:func:`~pddpm_monai.engines.trainer.build_trainer` attaches the same objects in the same order.

MONAI's ``CheckpointSaver`` is not used: it saves a dict of ``state_dict()`` s under names it
derives, while our checkpoints must be plain self-describing dicts (method name, config, version)
that :func:`~pddpm_monai.methods.checkpoint.load_scorer` reads.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events
from torch import Tensor

from pddpm_monai.engines.distributed import is_main_process
from pddpm_monai.methods import Method
from pddpm_monai.methods.checkpoint import export_bundle_model, make_checkpoint, read_checkpoint
from pddpm_monai.utils import InputError, save_checkpoint, save_json

__all__ = [
    "LOGGER_NAME",
    "LAST_CHECKPOINT",
    "BEST_CHECKPOINT",
    "TRAIN_CONFIG",
    "SetEpochHandler",
    "CheckpointHandler",
    "TensorBoardImageGridHandler",
    "ProgressHandler",
    "image_grid",
]

LOGGER_NAME = "pddpm"
LAST_CHECKPOINT = "last.pt"
BEST_CHECKPOINT = "best.pt"
#: the run's configuration, written beside the checkpoints
TRAIN_CONFIG = "train_config.json"
#: images of the grid logged to TensorBoard, as columns (keys of ``StepOutput.images``)
IMAGE_GRID_KEYS = ("input", "noised", "reconstruction", "error")


class SetEpochHandler:
    """Calls ``dataset.set_epoch(epoch)`` at the start of every epoch (fresh random slices).

    Args:
        dataset: a dataset with ``set_epoch`` (e.g. ``RandomSliceDataset``).
    """

    def __init__(self, dataset: Any) -> None:
        if not hasattr(dataset, "set_epoch"):
            raise TypeError(f"{type(dataset).__name__} has no set_epoch().")
        self.dataset = dataset

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self)

    def __call__(self, engine: Engine) -> None:
        self.dataset.set_epoch(engine.state.epoch)


class CheckpointHandler:
    """Checkpoints of a training run: ``train_config.json``, ``last.pt`` / ``best.pt``, resume, export.

    Attached to the trainer it

    - at ``STARTED``, on every rank: resumes from ``<out_dir>/last.pt`` when ``resume`` and it
      exists, unless :meth:`load` already did (weights, optimiser, generator, iteration, best
      validation loss);
    - on rank 0 only: writes ``train_config.json`` at ``STARTED``, ``last.pt`` after every epoch
      (after validation when the ``ValidationHandler`` is attached first) and every ``every``
      iterations, ``best.pt`` when the validation loss improves, and at ``COMPLETED`` exports the
      best (else last) checkpoint to ``model_path`` (the bundle's ``models/model.pt``).

    A run resumed from an epoch-end checkpoint continues exactly; one resumed from a mid-epoch
    checkpoint (``every``) finishes that epoch with the remaining number of iterations, drawn from
    the start of the epoch's slice order (ignite does not fast-forward the data loader).

    Args:
        out_dir: folder of the checkpoints.
        method: the trained method.
        optimizer: its optimiser.
        generator: the generator of the training draws (its state is saved).
        evaluator: the validation evaluator (``None``: no ``best.pt``).
        model_path: where to export the final model (``None``: no export).
        resume: continue from ``last.pt`` when present.
        every: also write ``last.pt`` every N iterations (0: only after epochs).
        train_config: the run's configuration (stored in every checkpoint and ``train_config.json``).
    """

    def __init__(
        self,
        out_dir: str | os.PathLike,
        method: Method,
        optimizer: torch.optim.Optimizer,
        generator: torch.Generator,
        *,
        evaluator: Engine | None = None,
        model_path: str | os.PathLike | None = None,
        resume: bool = True,
        every: int = 0,
        train_config: Mapping[str, Any] | None = None,
    ) -> None:
        self.out_dir = Path(out_dir)
        self.last_path, self.best_path = self.out_dir / LAST_CHECKPOINT, self.out_dir / BEST_CHECKPOINT
        self.method, self.optimizer, self.rng = method, optimizer, generator
        self.evaluator = evaluator
        self.model_path = None if model_path is None else Path(model_path)
        self.resume, self.every = resume, every
        self.train_config = dict(train_config or {})
        self.resumed: dict[str, Any] | None = None

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self.restore)
        if not is_main_process():
            return
        engine.add_event_handler(Events.STARTED, self.write_config)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.save_last)
        if self.every > 0:
            engine.add_event_handler(Events.ITERATION_COMPLETED(every=self.every), self.save_last)
        if self.evaluator is not None:
            self.evaluator.add_event_handler(Events.EPOCH_COMPLETED, lambda _: self.save_best(engine))
        engine.add_event_handler(Events.COMPLETED, self.export)

    def restore(self, engine: Engine) -> dict[str, Any] | None:
        """Resume from ``last.pt`` once (when ``resume`` and the file exists); its trainer state or ``None``."""
        if self.resumed is None and self.resume and self.last_path.is_file():
            info = self.load(engine)
            logging.getLogger(LOGGER_NAME).info(
                "resumed from %s at epoch %d, iteration %d", self.last_path, info["epoch"], info["iteration"]
            )
        return self.resumed

    def write_config(self, engine: Engine) -> None:
        """Write ``train_config.json`` (atomic)."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        save_json(self.train_config, self.out_dir / TRAIN_CONFIG)

    def _trainer_state(self, trainer: Engine) -> dict[str, Any]:
        ev = self.evaluator
        validated = ev is not None and ev.state.best_metric_epoch != -1
        state: dict[str, Any] = {
            k: int(getattr(trainer.state, k)) for k in ("epoch", "iteration", "epoch_length", "max_epochs")
        }
        state["best_val_loss"] = float(ev.state.best_metric) if validated else None
        state["best_epoch"] = int(ev.state.best_metric_epoch) if validated else None
        return state

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

    def load(self, trainer: Engine) -> dict[str, Any]:
        """Load ``last.pt`` into the method, optimiser, generator and trainer state.

        Raises:
            InputError: naming the file when it holds another method or configuration, or when
                the number of iterations per epoch changed (other data or batch size).

        Returns:
            the checkpoint's trainer state.
        """
        path = self.last_path
        state = read_checkpoint(path, method=self.method.name)
        config = self.method.config_dict()
        if state["config"] != config:
            keys = sorted(k for k in config if state["config"].get(k) != config[k])
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
        self.resumed = dict(info)
        return self.resumed

    def export(self, engine: Engine) -> None:
        """Export the best (else the last) checkpoint to ``model_path``."""
        if self.model_path is None:
            return
        source = self.best_path if self.best_path.is_file() else self.last_path
        if source.is_file():
            export_bundle_model(source, self.model_path)
            logging.getLogger(LOGGER_NAME).info("exported %s -> %s", source, self.model_path)


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
        interval: every N epochs (0: never).
    """

    def __init__(self, summary_writer: Any, *, interval: int = 10) -> None:
        self.writer, self.interval = summary_writer, interval

    def attach(self, engine: Engine) -> None:
        if self.interval > 0:  # 0: never
            engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.interval), self)

    def __call__(self, engine: Engine) -> None:
        output = engine.state.output
        if not isinstance(output, Mapping) or not output.get("images"):
            return
        self.writer.add_image(
            "train/images", image_grid(output["images"]), engine.state.epoch, dataformats="HW"
        )
        self.writer.flush()


class ProgressHandler:
    """An ignite/tqdm progress bar with the training loss (``enabled=False``: nothing).

    Args:
        enabled: show the bar (the bars of finished epochs are kept).
    """

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled

    def attach(self, engine: Engine) -> None:
        if not self.enabled:
            return
        from ignite.handlers import ProgressBar  # tqdm's bar: only when asked

        ProgressBar(persist=True).attach(engine, output_transform=lambda out: {"loss": float(out["loss"])})
