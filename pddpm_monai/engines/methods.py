"""Methods: a network plus its training step and reconstruction rule, on one shared trainer.

A :class:`Method` is an ``nn.Module`` that owns its network(s) and a configuration dataclass and
implements three things the trainer, the checkpoints and the evaluation need:

- :meth:`Method.training_step` ``(images (B,1,H,W), generator) -> StepOutput(loss, images)``
- :meth:`Method.validation_loss` ``(images, generator) -> loss`` (the training loss, no gradient)
- :meth:`Method.reconstruct` ``(slices (B,1,H,W), generator) -> reconstruction`` (via its inferer)

plus :meth:`Method.config_dict` / :meth:`Method.from_config` so that a checkpoint can rebuild it.
Methods register themselves by name in :data:`METHODS` with :func:`register_method`; a baseline
(AE, VAE, f-AnoGAN, ...) is one more subclass, and it may override :meth:`Method.configure_optimizer`
and :meth:`Method.train_iteration` when one optimiser step per batch does not fit (GANs).

Implemented here: ``"pddpm"`` (patched DDPM, paper §3) and ``"ddpm"`` (AnoDDPM: the whole slice
noised, ``L_rec``), both on the same :class:`~pddpm_monai.networks.DiffusionUNet`.

Example:
    >>> method = build_method("pddpm", {"patch_size": 16, "network": {"model_channels": 16,
    ...     "channel_mult": [1, 2], "num_res_blocks": 1, "num_groups": 8}})  # doctest: +SKIP
    >>> loss, images = method.training_step(torch.rand(4, 1, 32, 32))  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import importlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, NamedTuple

import torch
from torch import Tensor, nn

from pddpm_monai.diffusion.patches import PatchGrid, sample_patch_masks
from pddpm_monai.diffusion.process import (
    DiffusionConfig,
    DiffusionProcess,
    LossReduction,
    full_l1_loss,
    partly_noised,
    patch_l1_loss,
)
from pddpm_monai.engines.config import config_from_dict, config_to_dict
from pddpm_monai.inferers import DiffusionReconstructionInferer, PatchedDiffusionInferer
from pddpm_monai.networks import DiffusionUNet
from pddpm_monai.utils import InputError

__all__ = [
    "METHODS",
    "Method",
    "StepOutput",
    "UNetConfig",
    "PDDPMConfig",
    "DDPMConfig",
    "PDDPMMethod",
    "DDPMMethod",
    "register_method",
    "build_method",
    "load_method_plugins",
]

PatchSampling = Literal["fixed", "random"]
PatchLoss = Literal["patch", "full"]

#: registry of the available methods by name (filled by :func:`register_method`)
METHODS: dict[str, type[Method]] = {}

#: modules whose import registers more methods (the Table 1 baselines); see :func:`load_method_plugins`
METHOD_MODULES: tuple[str, ...] = ("pddpm_monai.engines.baselines",)


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
        with _eval_mode(self), torch.no_grad():
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
    ) -> StepOutput:
        """One optimisation step: zero grads, :meth:`training_step`, backward, step.

        Override for methods with several optimisers (f-AnoGAN).

        Args:
            images: ``(B, 1, H, W)`` training slices.
            optimizer: from :meth:`configure_optimizer`.
            generator: CPU generator of the step's random draws.
            autocast: context for mixed precision of the forward pass (``None``: full precision).

        Returns:
            the step output with the loss detached.
        """
        self.train()
        optimizer.zero_grad(set_to_none=True)
        with autocast if autocast is not None else contextlib.nullcontext():
            out = self.training_step(images, generator)
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


@contextlib.contextmanager
def _eval_mode(module: nn.Module):
    was_training = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was_training)


@dataclass
class UNetConfig:
    """Keyword arguments of :class:`~pddpm_monai.networks.DiffusionUNet` (the authors' configuration).

    The paper's text says levels of [128, 128, 256]; the authors' code (which produced Table 1)
    uses multipliers [1, 2, 2], the default here.
    """

    model_channels: int = 128
    channel_mult: tuple[int, ...] = (1, 2, 2)
    num_res_blocks: int = 3
    num_head_channels: int = 64
    num_groups: int = 32
    dropout: float = 0.0
    mid_attention: bool = True

    def build(self) -> DiffusionUNet:
        """The single-channel 2-D network predicting ``x0``."""
        return DiffusionUNet(
            in_channels=1,
            out_channels=1,
            model_channels=self.model_channels,
            channel_mult=tuple(self.channel_mult),
            num_res_blocks=self.num_res_blocks,
            num_head_channels=self.num_head_channels,
            num_groups=self.num_groups,
            dropout=self.dropout,
            mid_attention=self.mid_attention,
        )


@dataclass
class PDDPMConfig:
    """Everything that defines a pDDPM (paper §3, §4.2; defaults: the paper's best setting).

    Attributes:
        network: the UNet.
        diffusion: the forward process (schedule, noise type).
        patch_size: side of the square patch ``h = w`` on the 96x96 slices (ablation best: 60).
        sampling: ``"fixed"``: a grid position per training sample; ``"random"``: any box inside.
        patch_grid: ``"overlap"`` (default: equal-size boxes spread evenly, overlaps averaged) or
            ``"tile"`` (the authors' BoxSampler: no overlap, last box truncated); they differ only
            when the patch size does not divide the slice (see ``diffusion.patches``).
        loss: ``"patch"``: ``L_p`` (error inside the patch only); ``"full"``: ``L_rec``.
        loss_reduction: normalisation of ``L_p`` (``"image"``: the authors' mean over all pixels).
        t_test: the paper's test timestep (the network runs at index ``t_test - 1``).
        max_batch: largest network batch of the inferer (memory bound).
    """

    network: UNetConfig = field(default_factory=UNetConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    patch_size: int = 48
    sampling: PatchSampling = "fixed"
    patch_grid: PatchGrid = "overlap"
    loss: PatchLoss = "patch"
    loss_reduction: LossReduction = "image"
    t_test: int = 500
    max_batch: int = 64

    def __post_init__(self) -> None:
        _check_choice("sampling", self.sampling, ("fixed", "random"))
        _check_choice("patch_grid", self.patch_grid, ("overlap", "tile"))
        _check_choice("loss", self.loss, ("patch", "full"))
        _check_choice("diffusion.noise_type", self.diffusion.noise_type, ("simplex", "gaussian"))
        _check_t_test(self.t_test, self.diffusion.num_train_timesteps)
        if self.patch_size < 1:
            raise ValueError(f"patch_size must be positive, got {self.patch_size}.")


@dataclass
class DDPMConfig:
    """A plain DDPM for anomaly detection (AnoDDPM): the whole slice noised, ``L_rec``.

    Attributes:
        network: the UNet (the same as pDDPM's).
        diffusion: the forward process.
        t_test: the test timestep (the network runs at index ``t_test - 1``).
        max_batch: largest network batch of the inferer (memory bound).
    """

    network: UNetConfig = field(default_factory=UNetConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    t_test: int = 500
    max_batch: int = 64

    def __post_init__(self) -> None:
        _check_choice("diffusion.noise_type", self.diffusion.noise_type, ("simplex", "gaussian"))
        _check_t_test(self.t_test, self.diffusion.num_train_timesteps)


def _check_choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(allowed)}; got {value!r}.")


def _check_t_test(t_test: int, num_train_timesteps: int) -> None:
    if not 1 <= t_test <= num_train_timesteps:
        raise ValueError(
            f"t_test must be in 1..{num_train_timesteps} (the number of timesteps), got {t_test}."
        )


class _DiffusionMethod(Method):
    """Shared parts of the diffusion methods: the UNet, the process and the noising of a batch."""

    config: PDDPMConfig | DDPMConfig

    def __init__(self, config: Any | None = None) -> None:
        super().__init__(config)
        self.network = self.config.network.build()
        self.process = DiffusionProcess(self.config.diffusion)

    def _noised(self, x0: Tensor, generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
        """``(x_t, t)`` for model-space images ``x0`` with random timesteps and noise."""
        t = self.process.sample_timesteps(x0.shape[0], device=x0.device, generator=generator)
        noise = self.process.noise_like(x0, generator=generator)
        return self.process.add_noise(x0, noise, t), t

    def _log_images(self, images: Tensor, noised: Tensor, x0_hat: Tensor) -> dict[str, Tensor]:
        recon = self.process.from_model_space(x0_hat.float()).clamp(0, 1)
        return {
            "input": images,
            "noised": self.process.from_model_space(noised.float()).clamp(0, 1),
            "reconstruction": recon,
            "error": (images - recon).abs(),
        }


@register_method("pddpm")
class PDDPMMethod(_DiffusionMethod):
    """Patched diffusion model (pDDPM): noise one patch, predict ``x0`` from the clean context.

    Training (paper Eq. 3): ``x~_t = x_t * M_p + x_0 * (1 - M_p)`` with one patch per sample
    (``fixed`` grid or ``random`` position), ``t ~ U{1..T}``, loss ``L_p`` or ``L_rec``.
    Reconstruction: :class:`~pddpm_monai.inferers.PatchedDiffusionInferer` at ``t_test``.

    Args:
        config: a :class:`PDDPMConfig` (``None``: the paper's setting).
    """

    config_class = PDDPMConfig
    inference_options = ("t_test", "patch_size", "patch_grid", "max_batch")
    config: PDDPMConfig

    def __init__(self, config: PDDPMConfig | None = None) -> None:
        super().__init__(config)
        self.inferer = PatchedDiffusionInferer(
            self.process,
            t_test=self.config.t_test,
            patch_size=self.config.patch_size,
            max_batch=self.config.max_batch,
            grid=self.config.patch_grid,
        )

    def training_step(self, images: Tensor, generator: torch.Generator | None = None) -> StepOutput:
        x0 = self.process.to_model_space(images)
        x_t, t = self._noised(x0, generator)
        batch, _, height, width = images.shape
        size = self.config.patch_size
        mask = sample_patch_masks(
            batch,
            height,
            width,
            size,
            size,
            sampling=self.config.sampling,
            generator=generator,
            device=x0.device,
            grid=self.config.patch_grid,
        ).to(x0.dtype)
        noised = partly_noised(x_t, x0, mask)
        x0_hat = self.network(noised, t)
        if self.config.loss == "patch":
            loss = patch_l1_loss(x0, x0_hat.float(), mask, reduction=self.config.loss_reduction)
        else:
            loss = full_l1_loss(x0, x0_hat.float())
        return StepOutput(loss, self._log_images(images, noised, x0_hat))

    def reconstruct(self, slices: Tensor, generator: torch.Generator | None = None) -> Tensor:
        with _eval_mode(self), torch.no_grad():
            return self.inferer(slices, self.network, generator=generator)


@register_method("ddpm")
class DDPMMethod(_DiffusionMethod):
    """Plain DDPM (AnoDDPM): the whole slice noised at ``t ~ U{1..T}``, loss ``L_rec``.

    Reconstruction: :class:`~pddpm_monai.inferers.DiffusionReconstructionInferer`, one pass at
    ``t_test``.

    Args:
        config: a :class:`DDPMConfig`.
    """

    config_class = DDPMConfig
    inference_options = ("t_test", "max_batch")
    config: DDPMConfig

    def __init__(self, config: DDPMConfig | None = None) -> None:
        super().__init__(config)
        self.inferer = DiffusionReconstructionInferer(
            self.process, t_test=self.config.t_test, max_batch=self.config.max_batch
        )

    def training_step(self, images: Tensor, generator: torch.Generator | None = None) -> StepOutput:
        x0 = self.process.to_model_space(images)
        x_t, t = self._noised(x0, generator)
        x0_hat = self.network(x_t, t)
        return StepOutput(full_l1_loss(x0, x0_hat.float()), self._log_images(images, x_t, x0_hat))

    def reconstruct(self, slices: Tensor, generator: torch.Generator | None = None) -> Tensor:
        with _eval_mode(self), torch.no_grad():
            return self.inferer(slices, self.network, generator=generator)


def load_method_plugins() -> dict[str, type[Method]]:
    """Import :data:`METHOD_MODULES` so that every method is in :data:`METHODS`; returns the registry.

    Done lazily (by :func:`build_method` and the checkpoint loader) so that importing this module
    stays cheap and free of import cycles; a module that does not exist (yet) is skipped.
    """
    for module in METHOD_MODULES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as err:
            if err.name != module:
                raise
    return METHODS


def build_method(name: str, config: Mapping[str, Any] | None = None, *, source: str = "config") -> Method:
    """Build a registered method from its name and a (partial) config dict.

    Args:
        name: a key of :data:`METHODS`.
        config: plain config dict; missing keys take the method's defaults.
        source: where the config came from, for error messages.

    Returns:
        the method (on the CPU, in training mode).

    Raises:
        InputError: for an unknown method name or invalid options.
    """
    if name not in load_method_plugins():
        raise InputError(source, f"unknown method {name!r}; available: {', '.join(sorted(METHODS))}")
    return METHODS[name].from_config(dict(config or {}), source=source)
