"""The (patched) forward diffusion process of pDDPM and its losses (paper §3, Eq. 1-3).

``q(x_t | x_0) = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps`` with MONAI's ``DDPMScheduler`` (T = 1000,
prediction type ``SAMPLE``: the network predicts ``x_0``) and ``eps`` simplex (default) or Gaussian
noise. Timesteps are 0-based indices ``0..T-1`` into the schedule (the paper's ``t = 1..T``), so the
paper's ``t_test = 500`` is index 499.

Schedule: **cosine** (Nichol & Dhariwal 2021, ``s = 0.008``, betas clipped at 0.999; MONAI's
``"cosine"``), because the authors' code runs it: their ``GaussianDiffusion`` defaults to
``beta_schedule='cosine'`` and their pDDPM never overrides it. The paper's §4.2 *text* names a
linear schedule (1e-4 .. 2e-2); that puts ``abar`` at index 499 at 0.079 instead of 0.494, about six
times the noise variance, and a lesion under the noised patch is no longer partly visible. The code
produced Table 1, so the code wins; ``DiffusionConfig(schedule="linear_beta")`` (with
``SimplexNoiseConfig(standardize=True)``) is the paper-text variant for ablations. The schedule
tables and ``add_noise`` run in float32, as the authors' registered buffers do.

Intensity range: the authors' diffusion code maps images from ``[0, 1]`` to ``[-1, 1]`` before
noising (``x * 2 - 1``) and maps the prediction back (``(x + 1) / 2``). ``DiffusionConfig``'s
``rescale_to_minus_one_one`` (default on) keeps that convention; use :meth:`to_model_space` on the
clean images before :meth:`add_noise` and the losses, and :meth:`from_model_space` on the network
output to get an image in the data range again. The inferers do both.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Literal

import torch
from monai.networks.schedulers import DDPMScheduler, NoiseSchedules
from monai.networks.schedulers.ddpm import DDPMPredictionType
from torch import Tensor

from pddpm_monai.diffusion.noise import NoiseType, SimplexNoiseConfig, make_noise

__all__ = [
    "DiffusionConfig",
    "DiffusionProcess",
    "LossReduction",
    "full_l1_loss",
    "partly_noised",
    "patch_l1_loss",
    "schedule_arguments",
]

LossReduction = Literal["image", "patch"]


@dataclass
class DiffusionConfig:
    """Everything that defines the forward process (the authors' code; see the module docstring).

    Attributes:
        num_train_timesteps: ``T``.
        beta_start: first beta of a beta schedule (``"linear_beta"``, ``"scaled_linear_beta"``,
            ``"sigmoid_beta"``); unused by ``"cosine"``.
        beta_end: last beta of a beta schedule; unused by ``"cosine"``.
        schedule: a MONAI noise schedule name: ``"cosine"`` (default, the authors' code) or a beta
            schedule such as ``"linear_beta"`` (the paper's text).
        noise_type: ``"simplex"`` (AnoDDPM, pDDPM) or ``"gaussian"``.
        simplex: simplex noise parameters (raw amplitude by default, as the authors' code).
        rescale_to_minus_one_one: map ``[0, 1]`` images to ``[-1, 1]`` for the diffusion, as the
            authors do.
    """

    num_train_timesteps: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 2e-2
    schedule: str = "cosine"
    noise_type: NoiseType = "simplex"
    simplex: SimplexNoiseConfig = field(default_factory=SimplexNoiseConfig)
    rescale_to_minus_one_one: bool = True

    def __post_init__(self) -> None:
        schedule_arguments(self)  # an unknown schedule name fails here, not at first use


def schedule_arguments(config: DiffusionConfig) -> dict[str, float]:
    """The keyword arguments of MONAI's schedule function named by ``config.schedule``.

    Only the beta schedules take ``beta_start``/``beta_end``; ``"cosine"`` takes none (MONAI's
    default ``s = 0.008`` is the authors' value).

    Raises:
        ValueError: for a schedule name MONAI does not know.
    """
    if config.schedule not in NoiseSchedules.names:
        known = ", ".join(sorted(NoiseSchedules.names))
        raise ValueError(f"unknown noise schedule {config.schedule!r}; MONAI has: {known}.")
    parameters = inspect.signature(NoiseSchedules[config.schedule]).parameters
    values = {"beta_start": config.beta_start, "beta_end": config.beta_end}
    return {name: value for name, value in values.items() if name in parameters}


class DiffusionProcess:
    """The forward process ``q(x_t | x_0)`` built on MONAI's ``DDPMScheduler``.

    Args:
        config: the process configuration; ``None`` means ``DiffusionConfig()``.

    Example:
        >>> process = DiffusionProcess()
        >>> x0 = process.to_model_space(torch.rand(2, 1, 96, 96))
        >>> t = process.sample_timesteps(2, device="cpu")
        >>> x_t = process.add_noise(x0, process.noise_like(x0), t)
    """

    def __init__(self, config: DiffusionConfig | None = None) -> None:
        self.config = config if config is not None else DiffusionConfig()
        self.scheduler = DDPMScheduler(
            num_train_timesteps=self.config.num_train_timesteps,
            schedule=self.config.schedule,
            prediction_type=DDPMPredictionType.SAMPLE,
            **schedule_arguments(self.config),
        )

    @property
    def alphas_cumprod(self) -> Tensor:
        """``abar_t`` for the indices ``0..T-1`` (float32, on the CPU)."""
        return self.scheduler.alphas_cumprod

    @property
    def num_train_timesteps(self) -> int:
        """``T``."""
        return self.config.num_train_timesteps

    def sample_timesteps(
        self,
        batch: int,
        *,
        device: torch.device | str | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Training timesteps ``t ~ U{0..T-1}`` (index ``t`` is the paper's ``t + 1``).

        Args:
            batch: number of samples.
            device: device of the result.
            generator: generator for a reproducible draw (drawn on its device).

        Returns:
            ``(batch,)`` long tensor.
        """
        draw_device = generator.device if generator is not None else device
        t = torch.randint(self.num_train_timesteps, (batch,), generator=generator, device=draw_device)
        return t.to(device)

    def noise_like(self, x0: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
        """Noise of the configured type (an independent field per sample), shaped like ``x0``.

        Args:
            x0: ``(B, C, H, W)`` clean images.
            generator: generator for reproducible noise.

        Returns:
            noise with ``x0``'s shape, device and dtype.
        """
        return make_noise(x0, self.config.noise_type, generator=generator, config=self.config.simplex)

    def add_noise(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        """``x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise`` via ``DDPMScheduler.add_noise``.

        The product is computed in float32 (the scheduler casts its table to the input dtype, so a
        bf16 input would otherwise degrade the table for later calls) and cast back.

        Args:
            x0: clean images (in model space, see :meth:`to_model_space`).
            noise: noise of the same shape.
            t: ``(B,)`` timestep indices, or a scalar applied to the whole batch.

        Returns:
            the noised images ``x_t`` in ``x0``'s dtype.
        """
        t = torch.as_tensor(t, device=x0.device).long()
        if t.ndim == 0:
            t = t.expand(x0.shape[0])
        noised = self.scheduler.add_noise(x0.float(), noise.float(), t)
        return noised.to(x0.dtype)

    def to_model_space(self, x: Tensor) -> Tensor:
        """Images in ``[0, 1]`` to the diffusion's range (``x * 2 - 1`` when configured)."""
        return x * 2 - 1 if self.config.rescale_to_minus_one_one else x

    def from_model_space(self, x: Tensor) -> Tensor:
        """Inverse of :meth:`to_model_space`."""
        return (x + 1) / 2 if self.config.rescale_to_minus_one_one else x


def partly_noised(x_t: Tensor, x0: Tensor, mask: Tensor) -> Tensor:
    """Eq. 3: ``x~_t = x_t * M + x0 * (1 - M)``, noise only inside the patch.

    Args:
        x_t: noised images ``(B, C, H, W)``.
        x0: clean images of the same shape.
        mask: binary patch masks ``(B, 1, H, W)`` (broadcast over channels).

    Returns:
        the partly noised images.
    """
    return x_t * mask + x0 * (1 - mask)


def patch_l1_loss(x0: Tensor, x0_hat: Tensor, mask: Tensor, *, reduction: LossReduction = "image") -> Tensor:
    """``L_p``: the l1 error of the ``x0`` prediction inside the patch only.

    Args:
        x0: clean images ``(B, C, H, W)``.
        x0_hat: predicted clean images.
        mask: binary patch masks ``(B, 1, H, W)``.
        reduction: ``"image"`` (default, the authors' reduction: their code replaces the
            prediction outside the box by ``x0`` and takes the mean over *all* pixels, i.e.
            ``sum(|x0 - x0_hat| * M) / (B * C * H * W)``), or ``"patch"``: the mean over the
            patch pixels only, ``sum(|x0 - x0_hat| * M) / sum(M * C)``.

    Returns:
        scalar loss.
    """
    error = (x0 - x0_hat).abs() * mask
    if reduction == "image":
        return error.mean()
    if reduction == "patch":
        return error.sum() / (mask.expand_as(error).sum()).clamp(min=1)
    raise ValueError(f"reduction must be 'image' or 'patch', got {reduction!r}.")


def full_l1_loss(x0: Tensor, x0_hat: Tensor) -> Tensor:
    """``L_rec``: mean l1 error over the whole image.

    Args:
        x0: clean images.
        x0_hat: predicted clean images.

    Returns:
        scalar loss.
    """
    return (x0 - x0_hat).abs().mean()
