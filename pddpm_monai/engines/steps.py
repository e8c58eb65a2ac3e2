"""The iteration functions of MONAI's engines and the small helpers their handlers take.

:class:`TrainingStep` / :class:`ValidationStep` are the ``iteration_update`` of the
``SupervisedTrainer`` / ``SupervisedEvaluator`` that both ``pddpm train``
(:func:`~pddpm_monai.engines.trainer.build_trainer`) and the bundle's ``configs/train.json`` build;
the ``output_transform`` / ``metric_cmp_fn`` / event-filter helpers are named functions so that a
bundle config can reference them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from typing import Any

import torch
from ignite.engine import Engine
from torch import Tensor

from pddpm_monai.methods import Method, StepOutput
from pddpm_monai.utils import resolve_device

__all__ = [
    "resolve_device",
    "autocast_context",
    "TrainingStep",
    "ValidationStep",
    "output_loss",
    "output_loss_tensor",
    "no_output",
    "lower_is_better",
    "every_n",
]


def output_loss(output: Mapping[str, Any]) -> float:
    """The ``"loss"`` of a step output as a float (``output_transform`` of the log handlers)."""
    return float(output["loss"])


def output_loss_tensor(output: Mapping[str, Any]) -> Tensor:
    """The ``"loss"`` of a step output as a tensor (``output_transform`` of ignite's ``Average``)."""
    return torch.as_tensor(output["loss"]).detach().float()


def no_output(output: Any) -> None:
    """Log nothing per iteration (``output_transform`` of epoch-level handlers of the evaluator)."""
    return None


def lower_is_better(current: float, best: float) -> bool:
    """``metric_cmp_fn`` of the validation loss: a lower loss is better."""
    return current < best


def autocast_context(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA when ``enabled``; nothing on the CPU."""
    if enabled and torch.device(device).type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


class TrainingStep:
    """``iteration_update`` of the bundle's ``SupervisedTrainer``: one optimisation step of a method.

    Args:
        method: the method being trained (already on ``device``).
        optimizer: its optimiser (``method.configure_optimizer(lr)``).
        generator: CPU generator of the step's random draws (timesteps, noise, patch positions).
        device: where the batches go.
        amp: bf16 autocast on CUDA (opt-in; fp32 as the authors train).

    Returns (when called with ``(engine, batch)``): ``{"loss": scalar, "images": {...}}``.
    """

    def __init__(
        self,
        method: Method,
        optimizer: torch.optim.Optimizer,
        *,
        generator: torch.Generator | None = None,
        device: str | torch.device = "cpu",
        amp: bool = False,
    ) -> None:
        self.method, self.optimizer = method, optimizer
        self.generator = generator if generator is not None else torch.Generator()
        self.device = torch.device(device)
        self.amp = amp

    def autocast(self) -> contextlib.AbstractContextManager:
        return autocast_context(self.device, self.amp)

    def step(self, images: Tensor) -> StepOutput:
        """One optimisation step on ``(B, 1, H, W)`` slices."""
        return self.method.train_iteration(
            images, self.optimizer, generator=self.generator, autocast=self.autocast()
        )

    def __call__(self, engine: Engine, batch: Mapping[str, Tensor]) -> dict[str, Any]:
        out = self.step(batch["image"].to(self.device, non_blocking=True))
        return {"loss": out.loss, "images": out.images}


class ValidationStep:
    """``iteration_update`` of the validation ``SupervisedEvaluator``: the training loss, no gradient.

    The noise generator is re-seeded with ``seed`` at the first iteration of every validation run,
    so that the validation losses of different epochs compare.

    Args:
        method: the method.
        device: where the batches go.
        amp: bf16 autocast on CUDA (opt-in; fp32 as the authors train).
        seed: seed of the validation noise.
    """

    def __init__(
        self, method: Method, *, device: str | torch.device = "cpu", amp: bool = False, seed: int = 0
    ):
        self.method = method
        self.device = torch.device(device)
        self.amp, self.seed = amp, seed
        self.generator = torch.Generator()

    def __call__(self, engine: Engine, batch: Mapping[str, Tensor]) -> dict[str, Any]:
        if engine.state.iteration == 1:
            self.generator.manual_seed(self.seed)
        images = batch["image"].to(self.device, non_blocking=True)
        with autocast_context(self.device, self.amp):
            loss = self.method.validation_loss(images, self.generator)
        return {"loss": loss.detach().float()}


def every_n(n: int) -> Callable[[Engine, int], bool]:
    """Event filter ``(engine, iteration) -> bool`` true every ``n`` iterations (``iteration_log``)."""
    n = max(int(n), 1)
    return lambda engine, event: event % n == 0
