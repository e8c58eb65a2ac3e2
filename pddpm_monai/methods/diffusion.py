"""The diffusion methods: pDDPM (paper §3) and DDPM (AnoDDPM), on one :class:`~pddpm_monai.networks.DiffusionUNet`.

``"pddpm"`` noises one patch of the slice and trains ``L_p`` (or ``L_rec``) on ``x0``; ``"ddpm"``
noises the whole slice with ``L_rec``. Both registered in :data:`~pddpm_monai.methods.base.METHODS`.

Example:
    >>> from pddpm_monai.methods import build_method
    >>> method = build_method("pddpm", {"patch_size": 16, "network": {"model_channels": 16,
    ...     "channel_mult": [1, 2], "num_res_blocks": 1, "num_groups": 8}})  # doctest: +SKIP
    >>> loss, images = method.training_step(torch.rand(4, 1, 32, 32))  # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor

from pddpm_monai.diffusion.patches import PATCH_GRIDS, PatchGrid, sample_patch_masks
from pddpm_monai.diffusion.process import (
    DiffusionConfig,
    DiffusionProcess,
    LossReduction,
    full_l1_loss,
    partly_noised,
    patch_l1_loss,
)
from pddpm_monai.inferers import DiffusionReconstructionInferer, PatchedDiffusionInferer
from pddpm_monai.inferers.patched import DEFAULT_PATCH_SIZE
from pddpm_monai.inferers.reconstruction import DEFAULT_T_TEST
from pddpm_monai.methods.base import Method, StepOutput, eval_mode, register_method
from pddpm_monai.networks import DiffusionUNet

__all__ = ["UNetConfig", "PDDPMConfig", "DDPMConfig", "PDDPMMethod", "DDPMMethod"]

PatchSampling = Literal["fixed", "random"]
PatchLoss = Literal["patch", "full"]


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

    def network_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of the single-channel 2-D network predicting ``x0``."""
        return {**asdict(self), "channel_mult": tuple(self.channel_mult), "in_channels": 1, "out_channels": 1}

    def build(self) -> DiffusionUNet:
        """The single-channel 2-D network predicting ``x0``."""
        return DiffusionUNet(**self.network_kwargs())


@dataclass
class DDPMConfig:
    """A plain DDPM for anomaly detection (AnoDDPM): the whole slice noised, ``L_rec``.

    Attributes:
        network: the UNet (the same as pDDPM's).
        diffusion: the forward process (schedule, noise type).
        t_test: the paper's test timestep (the network runs at index ``t_test - 1``).
        max_batch: largest network batch of the inferer (memory bound).
    """

    network: UNetConfig = field(default_factory=UNetConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    t_test: int = DEFAULT_T_TEST
    max_batch: int = 64

    def __post_init__(self) -> None:
        _check_choice("diffusion.noise_type", self.diffusion.noise_type, ("simplex", "gaussian"))
        steps = self.diffusion.num_train_timesteps
        if not 1 <= self.t_test <= steps:
            raise ValueError(f"t_test must be in 1..{steps} (the number of timesteps), got {self.t_test}.")


@dataclass
class PDDPMConfig(DDPMConfig):
    """Everything that defines a pDDPM (paper §3, §4.2; defaults: the paper's best setting): the
    :class:`DDPMConfig` fields plus the patches.

    Attributes:
        patch_size: side of the square patch ``h = w`` on the 96x96 slices (ablation best: 60).
        sampling: ``"fixed"``: a grid position per training sample; ``"random"``: any box inside.
        patch_grid: ``"overlap"`` (default: equal-size boxes spread evenly, overlaps averaged) or
            ``"tile"`` (the authors' BoxSampler: no overlap, last box truncated); they differ only
            when the patch size does not divide the slice. ``"blend"`` (beyond the authors): boxes
            at half the stride, stitched with a Gaussian window, which removes the patch seams at
            2.25x the inference cost; usually set at inference only (``--patch-grid blend``), but
            a training with it draws ``"fixed"`` boxes from its denser grid (see
            ``diffusion.patches``).
        loss: ``"patch"``: ``L_p`` (error inside the patch only); ``"full"``: ``L_rec``.
        loss_reduction: normalisation of ``L_p`` (``"image"``: the authors' mean over all pixels).
    """

    patch_size: int = DEFAULT_PATCH_SIZE
    sampling: PatchSampling = "fixed"
    patch_grid: PatchGrid = "overlap"
    loss: PatchLoss = "patch"
    loss_reduction: LossReduction = "image"

    def __post_init__(self) -> None:
        _check_choice("sampling", self.sampling, ("fixed", "random"))
        _check_choice("patch_grid", self.patch_grid, PATCH_GRIDS)
        _check_choice("loss", self.loss, ("patch", "full"))
        super().__post_init__()
        if self.patch_size < 1:
            raise ValueError(f"patch_size must be positive, got {self.patch_size}.")


def _check_choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(allowed)}; got {value!r}.")


class _DiffusionMethod(Method):
    """Shared parts of the diffusion methods: the UNet, the process and the noising of a batch."""

    config: DDPMConfig

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

    def reconstruct(self, slices: Tensor, generator: torch.Generator | None = None) -> Tensor:
        with eval_mode(self):
            return self.inferer(slices, self.network, generator=generator)


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
