"""Methods: a network plus its training step and reconstruction rule, on one shared trainer.

A :class:`Method` is an ``nn.Module`` that owns its network(s) and a configuration dataclass and
implements three things the trainer, the checkpoints and the evaluation need:

- :meth:`Method.training_step` ``(images (B,1,H,W), generator) -> StepOutput(loss, images)``
- :meth:`Method.validation_loss` ``(images, generator) -> loss`` (the training loss, no gradient)
- :meth:`Method.reconstruct` ``(slices (B,1,H,W), generator) -> reconstruction`` (via its inferer)

plus :meth:`Method.config_dict` / :meth:`Method.from_config` so that a checkpoint can rebuild it.
Methods register by name in :data:`METHODS` with :func:`register_method`; the package
(:mod:`pddpm_monai.methods`) imports every method module, so the registry is complete as soon as
anything from it is imported. A baseline (AE, VAE, f-AnoGAN, ...) is one more subclass; it may
override :meth:`Method.configure_optimizer` and :meth:`Method.train_iteration` when one optimiser
step per batch does not fit (GANs).
"""

from __future__ import annotations

import contextlib
import dataclasses
import typing
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, NamedTuple

import torch
from monai.networks.utils import eval_mode
from torch import Tensor, nn

from pddpm_monai.methods.config import config_from_dict, config_to_dict
from pddpm_monai.names import method_label
from pddpm_monai.utils import InputError, first_line

__all__ = [
    "METHODS",
    "Method",
    "StepOutput",
    "register_method",
    "build_method",
    "known_options",
    "eval_mode",
]

#: registry of the available methods by name (filled by :func:`register_method`)
METHODS: dict[str, type[Method]] = {}


class StepOutput(NamedTuple):
    """What a training step returns: the loss to minimise and images for logging.

    Attributes:
        loss: scalar loss tensor (with gradient in training).
        images: named ``(B, 1, H, W)`` images in the data range for the image log, e.g.
            ``input``, ``noised``, ``reconstruction``, ``error``.
    """

    loss: Tensor
    images: dict[str, Tensor]


def register_method(name: str) -> Callable[[type[Method]], type[Method]]:
    """Class decorator that registers a :class:`Method` subclass under ``name`` in :data:`METHODS`."""

    def decorate(cls: type[Method]) -> type[Method]:
        if name in METHODS and METHODS[name] is not cls:
            raise ValueError(f"method name {name!r} is already registered by {METHODS[name].__name__}.")
        cls.name = name
        METHODS[name] = cls
        return cls

    return decorate


class Method(nn.Module, ABC):
    """Base class of the anomaly detection methods trained by :mod:`pddpm_monai.engines.trainer`.

    Args:
        config: an instance of the subclass's :attr:`config_class` (``None``: its defaults).
    """

    #: registry name, set by :func:`register_method`
    name: ClassVar[str] = ""
    #: the configuration dataclass of the method
    config_class: ClassVar[type] = object
    #: config fields that may be changed at inference time without retraining (``load_scorer``)
    inference_options: ClassVar[tuple[str, ...]] = ()

    def __init__(self, config: Any | None = None) -> None:
        super().__init__()
        self.config = config if config is not None else self.config_class()

    @abstractmethod
    def training_step(self, images: Tensor, generator: torch.Generator | None = None) -> StepOutput:
        """The training loss on a batch of healthy slices.

        Args:
            images: ``(B, 1, H, W)`` slices in ``[0, 1]``.
            generator: CPU generator for every random draw of the step (reproducible training).

        Returns:
            the loss and images for logging.
        """

    @abstractmethod
    def reconstruct(self, slices: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """The method's pseudo-healthy reconstruction of ``slices`` ``(B, 1, H, W)`` (same shape)."""

    def validation_loss(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """The training loss without gradients, in eval mode (for the validation loss)."""
        with eval_mode(self):
            return self.training_step(images, generator).loss

    def anomaly_map(self, slices: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """``(reconstruction, |slices - reconstruction|)`` for ``(B, 1, H, W)`` slices."""
        recon = self.reconstruct(slices, generator)
        return recon, (slices - recon).abs()

    def configure_optimizer(self, lr: float) -> torch.optim.Optimizer:
        """The optimiser of the method (Adam over every parameter, as the authors)."""
        return torch.optim.Adam(self.parameters(), lr=lr)

    def train_iteration(
        self,
        images: Tensor,
        optimizer: torch.optim.Optimizer,
        *,
        generator: torch.Generator | None = None,
        autocast: contextlib.AbstractContextManager | None = None,
        forward: Callable[[Tensor, torch.Generator | None], StepOutput] | None = None,
    ) -> StepOutput:
        """One optimisation step: zero grads, :meth:`training_step`, backward, step.

        Override for methods with several optimisers (f-AnoGAN).

        Args:
            images: ``(B, 1, H, W)`` training slices.
            optimizer: from :meth:`configure_optimizer`.
            generator: CPU generator of the step's random draws.
            autocast: context for mixed precision of the forward pass (``None``: full precision).
            forward: what computes the step output (``None``: :meth:`training_step`; DDP passes its
                wrapper so that gradients are averaged over the ranks).

        Returns:
            the step output with the loss detached.
        """
        self.train()
        optimizer.zero_grad(set_to_none=True)
        with autocast if autocast is not None else contextlib.nullcontext():
            out = (forward or self.training_step)(images, generator)
        out.loss.backward()
        optimizer.step()
        return StepOutput(out.loss.detach(), {k: v.detach() for k, v in out.images.items()})

    def config_dict(self) -> dict[str, Any]:
        """The configuration as a plain JSON-able dict (what a checkpoint stores)."""
        return config_to_dict(self.config)

    @classmethod
    def from_config(cls, config: Mapping[str, Any], *, source: str = "config") -> Method:
        """Build the method from :meth:`config_dict` output (unknown keys -> ``InputError`` naming ``source``)."""
        return cls(config_from_dict(cls.config_class, config, source=source))


def known_options(name: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """The entries of ``options`` that method ``name``'s configuration has (nested dicts filtered too).

    The bundle lists the options of every method (``patch_size``, ``sampling`` ... for pDDPM); the
    ones the chosen method does not have are dropped (DDPM has no patches), so that one config file
    trains any method.
    """
    return _known_fields(_method_class(name, "options").config_class, options)


def _known_fields(cls: type, options: Mapping[str, Any]) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name not in options:
            continue
        value, hint = options[f.name], hints[f.name]
        if dataclasses.is_dataclass(hint) and isinstance(value, Mapping):
            value = _known_fields(hint, value)
        out[f.name] = list(value) if isinstance(value, tuple) else value
    return out


def _method_class(name: str, source: str) -> type[Method]:
    if name not in METHODS:
        raise InputError(source, f"unknown method {name!r}; available: {', '.join(sorted(METHODS))}")
    return METHODS[name]


def build_method(
    name: str,
    config: Mapping[str, Any] | None = None,
    *,
    source: str = "config",
    seed: int | None = None,
) -> Method:
    """Build a registered method from its name and a (partial) config dict.

    Args:
        name: a key of :data:`METHODS`.
        config: plain config dict; missing keys take the method's defaults.
        source: where the config came from, for error messages.
        seed: initialise the weights from this seed (in ``torch.random.fork_rng``: the global
            generator is left as it was); ``None``: from the global generator.

    Returns:
        the method (on the CPU, in training mode).

    Raises:
        InputError: for an unknown method name or invalid options, including a network that cannot
            be built from them (e.g. GroupNorm groups that do not divide the channels).
    """
    cls = _method_class(name, source)
    with torch.random.fork_rng(devices=[], enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed)
        try:
            return cls.from_config(dict(config or {}), source=source)
        except InputError:
            raise
        except ValueError as err:
            raise InputError(
                source, f"cannot build the {method_label(name)} network: {first_line(err)}"
            ) from None
