"""The learned baselines of Table 1 as :class:`~pddpm_monai.methods.Method` s.

Each is one small network module (:mod:`pddpm_monai.networks.autoencoders`,
:mod:`pddpm_monai.networks.fanogan`) plus its training step here and its reconstruction rule
(:class:`~pddpm_monai.inferers.autoencoder.AutoEncoderInferer`); training, checkpoints and
evaluation are the shared ones (``pddpm train --method ae`` ... ``pddpm evaluate --checkpoint``).
Every method minimises an l1 reconstruction error as in the paper (§4.3); the anomaly map is
``|x - x_rec|``. Thresh needs no training: it is
:class:`~pddpm_monai.methods.scorers.ThreshScorer`.

=========  ===========================================================================================
``ae``     dense AE (Baur et al., 2021): l1 loss, ``x_rec = D(mu)``.
``vae``    dense VAE (Baur et al., 2021): l1 + ``beta`` KL with ``beta_VAE = 0.001`` (paper §4.3);
           reconstruction from the posterior mean.
``svae``   slice-context VAE (after Behrendt et al., 2022): the encoder sees ``context`` slices on
           each side as extra channels and decodes the centre slice; ``beta = 0.001``.
``dae``    denoising AE (Kascenas et al., 2022): a UNet trained to remove coarse noise (Gaussian at
           16x16, std 0.2, bilinearly upsampled and randomly shifted); reconstruction of the clean
           input.
``fanogan`` f-AnoGAN (Schlegl et al., 2019): WGAN-GP (5 critic updates per generator update,
           gradient penalty 10, Adam lr from the trainer = 1e-4 as the paper, betas (0, 0.9)),
           then the izif encoder (image l1 + feature residual of the critic) with G and D frozen;
           latent 128; ``x_rec = G(E(x))``.
=========  ===========================================================================================

Simplifications (say so when reporting): the SVAE of Behrendt et al. models the sequence of slice
latents of a whole volume (recurrent/transformer); here the slice context enters through the
encoder's input channels, which needs no volume batches. f-AnoGAN's two phases share one
optimiser (param groups; a phase steps only its own networks) and are switched by the iteration
counter stored in the checkpoint; it trains in full precision (the gradient penalty needs double
backward). Where the cited papers give no value for our 96x96 slices, the network sizes are ours
(see the config dataclasses).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pddpm_monai.inferers.autoencoder import AutoEncoderInferer
from pddpm_monai.methods.base import Method, StepOutput, eval_mode, register_method
from pddpm_monai.networks.autoencoders import (
    DAENetConfig,
    DenseVAENetConfig,
    kl_divergence,
    reparameterize,
    vae_decode,
    vae_encode,
)
from pddpm_monai.networks.fanogan import Critic, Encoder, FAnoGANNetConfig, Generator

__all__ = [
    "AEConfig",
    "VAEConfig",
    "SVAEConfig",
    "DAEConfig",
    "FAnoGANConfig",
    "AEMethod",
    "VAEMethod",
    "SVAEMethod",
    "DAEMethod",
    "FAnoGANMethod",
    "coarse_noise",
]

#: the paper's beta_VAE for VAE and SVAE (§4.3)
BETA_VAE = 1e-3


def _log_images(images: Tensor, recon: Tensor, noised: Tensor | None = None) -> dict[str, Tensor]:
    out = {"input": images.detach(), "reconstruction": recon.detach().float().clamp(0, 1)}
    if noised is not None:
        out["noised"] = noised.detach().clamp(0, 1)
    out["error"] = (out["input"] - out["reconstruction"]).abs()
    return out


@dataclass
class AEConfig:
    """Dense autoencoder (Baur et al., 2021).

    Attributes:
        network: the dense autoencoder network.
        max_batch: most slices per network call at inference.
    """

    network: DenseVAENetConfig = field(default_factory=DenseVAENetConfig)
    max_batch: int = 64


@dataclass
class VAEConfig(AEConfig):
    """Dense variational autoencoder (Baur et al., 2021): :class:`AEConfig` plus

    Attributes:
        beta: weight of the KL term (the paper: 0.001).
    """

    beta: float = BETA_VAE


@dataclass
class SVAEConfig(VAEConfig):
    """Slice-context VAE (after Behrendt et al., 2022): :class:`VAEConfig` plus

    Attributes:
        context: neighbouring axial slices on each side given to the encoder (the network's
            input channels are ``2 * context + 1``).
    """

    context: int = 1

    def __post_init__(self) -> None:
        if self.context < 1:
            raise ValueError(f"context must be at least 1 slice (0 is the VAE), got {self.context}.")


@dataclass
class DAEConfig:
    """Denoising autoencoder (Kascenas et al., 2022: coarse noise, UNet).

    Attributes:
        network: the UNet.
        noise_std: standard deviation of the coarse Gaussian noise (Kascenas et al.: 0.2).
        noise_resolution: side of the noise grid before upsampling (Kascenas et al.: 16).
        max_batch: most slices per network call at inference.
    """

    network: DAENetConfig = field(default_factory=DAENetConfig)
    noise_std: float = 0.2
    noise_resolution: int = 16
    max_batch: int = 64


@dataclass
class FAnoGANConfig:
    """f-AnoGAN (Schlegl et al., 2019) with the paper's latent size 128 (lr 1e-4: the trainer's ``lr``).

    Attributes:
        network: generator, critic and encoder sizes.
        gan_iterations: training iterations of the WGAN-GP phase; later iterations train the
            encoder (default: about half of the authors' 1600 epochs x 11 iterations).
        critic_iterations: critic updates per generator update (WGAN-GP: 5).
        gradient_penalty: weight of the gradient penalty (WGAN-GP: 10).
        feature_weight: ``kappa``, weight of the critic-feature residual in izif (Schlegl: 1).
        gan_betas: Adam betas of generator and critic (WGAN-GP: (0, 0.9)).
        encoder_betas: Adam betas of the encoder.
        max_batch: most slices per network call at inference.
    """

    network: FAnoGANNetConfig = field(default_factory=FAnoGANNetConfig)
    gan_iterations: int = 8000
    critic_iterations: int = 5
    gradient_penalty: float = 10.0
    feature_weight: float = 1.0
    gan_betas: tuple[float, float] = (0.0, 0.9)
    encoder_betas: tuple[float, float] = (0.9, 0.999)
    max_batch: int = 64


class _ReconstructionMethod(Method):
    """Shared parts: the inferer and the deterministic reconstruction pass."""

    #: neighbouring slices on each side that the data loaders must stack (SVAE)
    context_slices: int = 0
    inference_options = ("max_batch",)

    def __init__(self, config: Any | None = None) -> None:
        super().__init__(config)
        self.inferer = AutoEncoderInferer(context=self.context_slices, max_batch=self.config.max_batch)

    def forward_reconstruction(self, x: Tensor) -> Tensor:
        """The deterministic reconstruction of network inputs ``(B, C, H, W)``."""
        raise NotImplementedError

    def reconstruct(self, slices: Tensor, generator: torch.Generator | None = None) -> Tensor:
        with eval_mode(self):
            return self.inferer(slices, self.forward_reconstruction)


@register_method("ae")
class AEMethod(_ReconstructionMethod):
    """Dense autoencoder: ``x_rec = D(mu(x))``, loss ``|x - x_rec|``.

    Args:
        config: an :class:`AEConfig`.
    """

    config_class = AEConfig
    config: AEConfig

    def __init__(self, config: AEConfig | None = None) -> None:
        super().__init__(config)
        self.network = self.config.network.build(in_channels=2 * self.context_slices + 1)

    def forward_reconstruction(self, x: Tensor) -> Tensor:
        mu, _ = vae_encode(self.network, x)
        return vae_decode(self.network, mu)

    def training_step(self, images: Tensor, generator: torch.Generator | None = None) -> StepOutput:
        recon = self.forward_reconstruction(images)
        return StepOutput(F.l1_loss(recon.float(), images), _log_images(images, recon))


@register_method("vae")
class VAEMethod(AEMethod):
    """Dense VAE: loss ``|x - D(z)| + beta * KL``, ``z = mu + eps * sigma``; reconstruction ``D(mu)``.

    Args:
        config: a :class:`VAEConfig`.
    """

    config_class = VAEConfig
    config: VAEConfig  # type: ignore[assignment]

    def _target(self, images: Tensor) -> Tensor:
        return images

    def training_step(self, images: Tensor, generator: torch.Generator | None = None) -> StepOutput:
        target = self._target(images)
        mu, logvar = vae_encode(self.network, images)
        recon = vae_decode(self.network, reparameterize(mu, logvar, generator))
        loss = F.l1_loss(recon.float(), target) + self.config.beta * kl_divergence(mu.float(), logvar.float())
        return StepOutput(loss, _log_images(target, recon))


@register_method("svae")
class SVAEMethod(VAEMethod):
    """Slice-context VAE: inputs ``(B, 2k + 1, H, W)`` (the trainer's loaders stack ``k`` neighbours
    on each side because of :attr:`context_slices`), target the centre slice.

    Args:
        config: an :class:`SVAEConfig`.
    """

    config_class = SVAEConfig
    config: SVAEConfig

    def __init__(self, config: SVAEConfig | None = None) -> None:
        config = config if config is not None else SVAEConfig()
        self.context_slices = config.context
        super().__init__(config)

    def _target(self, images: Tensor) -> Tensor:
        expected = 2 * self.context_slices + 1
        if images.shape[1] != expected:
            raise ValueError(
                f"svae expects {expected} stacked slices per sample (context {self.context_slices}), "
                f"got {images.shape[1]} channels: build the loaders with context={self.context_slices}."
            )
        return images[:, self.context_slices : self.context_slices + 1]


def coarse_noise(
    shape: tuple[int, ...],
    *,
    std: float,
    resolution: int,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Coarse Gaussian noise (Kascenas et al., 2022): ``N(0, std^2)`` on a ``resolution`` grid,
    bilinearly upsampled to ``shape = (B, C, H, W)`` and cyclically shifted by a random offset.

    Args:
        shape: the output shape.
        std: noise standard deviation.
        resolution: side of the coarse grid.
        generator: CPU generator of the draws.

    Returns:
        a CPU float32 tensor of ``shape``.
    """
    batch, channels, height, width = shape
    coarse = torch.randn(batch, channels, resolution, resolution, generator=generator) * std
    noise = F.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=False)
    shifts = torch.randint(0, max(height, width), (batch, 2), generator=generator)
    return torch.stack(
        [torch.roll(n, shifts=(int(s[0]), int(s[1])), dims=(-2, -1)) for n, s in zip(noise, shifts)]
    )


@register_method("dae")
class DAEMethod(_ReconstructionMethod):
    """Denoising autoencoder: loss ``|x - UNet(x + coarse noise)|``; reconstruction ``UNet(x)``.

    Args:
        config: a :class:`DAEConfig`.
    """

    config_class = DAEConfig
    config: DAEConfig

    def __init__(self, config: DAEConfig | None = None) -> None:
        super().__init__(config)
        self.network = self.config.network.build()

    def forward_reconstruction(self, x: Tensor) -> Tensor:
        return self.network(x)

    def training_step(self, images: Tensor, generator: torch.Generator | None = None) -> StepOutput:
        cfg = self.config
        noise = coarse_noise(
            tuple(images.shape), std=cfg.noise_std, resolution=cfg.noise_resolution, generator=generator
        )
        noised = images + noise.to(images.device, images.dtype)
        recon = self.network(noised)
        return StepOutput(F.l1_loss(recon.float(), images), _log_images(images, recon, noised))


Phase = Literal["gan", "encoder"]


@register_method("fanogan")
class FAnoGANMethod(_ReconstructionMethod):
    """f-AnoGAN: WGAN-GP training of ``G`` and ``D``, then izif training of ``E``; ``x_rec = G(E(x))``.

    The iteration counter (a buffer, saved in checkpoints) selects the phase. The loss of a step
    is the critic's WGAN-GP loss in the GAN phase and the izif loss in the encoder phase; the
    validation loss is the izif loss in the encoder phase and ``inf`` before (so that ``best.pt``
    is an encoder-phase checkpoint).

    Args:
        config: an :class:`FAnoGANConfig`.
    """

    config_class = FAnoGANConfig
    config: FAnoGANConfig

    def __init__(self, config: FAnoGANConfig | None = None) -> None:
        super().__init__(config)
        self.generator = Generator(self.config.network)
        self.critic = Critic(self.config.network)
        self.encoder = Encoder(self.config.network)
        self.register_buffer("iterations", torch.zeros((), dtype=torch.long))

    @property
    def phase(self) -> Phase:
        """``"gan"`` for the first ``gan_iterations`` iterations, then ``"encoder"``."""
        return "gan" if int(self.iterations) < self.config.gan_iterations else "encoder"

    def forward_reconstruction(self, x: Tensor) -> Tensor:
        return self.generator(self.encoder(x))

    def configure_optimizer(self, lr: float) -> torch.optim.Optimizer:
        """One Adam with a param group per network (each phase steps only its own networks)."""
        cfg = self.config
        return torch.optim.Adam(
            [
                {"params": self.generator.parameters(), "betas": tuple(cfg.gan_betas)},
                {"params": self.critic.parameters(), "betas": tuple(cfg.gan_betas)},
                {"params": self.encoder.parameters(), "betas": tuple(cfg.encoder_betas)},
            ],
            lr=lr,
        )

    def _latent(self, batch: int, device: torch.device, generator: torch.Generator | None) -> Tensor:
        return torch.randn(batch, self.config.network.latent_size, generator=generator).to(device)

    def critic_loss(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """WGAN-GP critic loss ``D(G(z)) - D(x) + lambda (|grad D(x^)| - 1)^2`` (batch means)."""
        batch = images.shape[0]
        with torch.no_grad():
            fake = self.generator(self._latent(batch, images.device, generator))
        alpha = torch.rand(batch, 1, 1, 1, generator=generator).to(images.device)
        mixed = (alpha * images + (1 - alpha) * fake).requires_grad_(True)
        with torch.enable_grad():
            grads = torch.autograd.grad(self.critic(mixed).sum(), mixed, create_graph=True)[0]
        penalty = (grads.flatten(1).norm(dim=1) - 1).pow(2).mean()
        return self.critic(fake).mean() - self.critic(images).mean() + self.config.gradient_penalty * penalty

    def generator_loss(
        self, batch: int, device: torch.device, generator: torch.Generator | None = None
    ) -> Tensor:
        """``-D(G(z))`` (batch mean)."""
        return -self.critic(self.generator(self._latent(batch, device, generator))).mean()

    def encoder_loss(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """izif: ``|x - G(E(x))|`` + ``kappa`` * MSE of the critic features; returns ``(loss, x_rec)``."""
        recon = self.forward_reconstruction(images)
        features = F.mse_loss(self.critic.features(recon), self.critic.features(images))
        return F.l1_loss(recon, images) + self.config.feature_weight * features, recon

    def training_step(self, images: Tensor, generator: torch.Generator | None = None) -> StepOutput:
        """The loss of the current phase (no optimisation; see :meth:`train_iteration`)."""
        if self.phase == "gan":
            loss = self.critic_loss(images, generator)
            with torch.no_grad():
                recon = self.generator(self._latent(images.shape[0], images.device, generator))
            return StepOutput(loss, {"input": images.detach(), "reconstruction": recon})
        loss, recon = self.encoder_loss(images)
        return StepOutput(loss, _log_images(images, recon))

    def validation_loss(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        if self.phase == "gan":
            return torch.tensor(float("inf"), device=images.device)
        with eval_mode(self):
            return self.encoder_loss(images)[0]

    @staticmethod
    def _step(optimizer: torch.optim.Optimizer, loss: Tensor, module: nn.Module) -> None:
        """Backpropagate ``loss`` into ``module``'s parameters only and step them."""
        optimizer.zero_grad(set_to_none=True)
        params = [p for p in module.parameters() if p.requires_grad]
        for p, g in zip(params, torch.autograd.grad(loss, params)):
            p.grad = g
        optimizer.step()

    def train_iteration(
        self,
        images: Tensor,
        optimizer: torch.optim.Optimizer,
        *,
        generator: torch.Generator | None = None,
        autocast: contextlib.AbstractContextManager | None = None,
    ) -> StepOutput:
        """One iteration: a critic update (+ a generator update every ``critic_iterations``), or an
        encoder update; full precision (``autocast`` is ignored)."""
        self.train()
        if self.phase == "gan":
            loss = self.critic_loss(images, generator)
            self._step(optimizer, loss, self.critic)
            if int(self.iterations) % self.config.critic_iterations == 0:
                self._step(
                    optimizer, self.generator_loss(images.shape[0], images.device, generator), self.generator
                )
            with torch.no_grad():
                fake = self.generator(self._latent(min(images.shape[0], 4), images.device, generator))
            logged = {"input": images.detach(), "reconstruction": fake}
        else:
            self.generator.eval()
            self.critic.eval()
            loss, recon = self.encoder_loss(images)
            self._step(optimizer, loss, self.encoder)
            logged = _log_images(images, recon)
        self.iterations += 1
        optimizer.zero_grad(set_to_none=True)
        return StepOutput(loss.detach(), logged)
