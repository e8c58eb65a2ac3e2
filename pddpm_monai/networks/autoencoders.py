"""Networks of the autoencoder baselines of Table 1: dense AE / VAE / SVAE and the DAE UNet.

Both are thin builders around MONAI networks (``monai.networks.nets``):

- :class:`DenseVAENetConfig` builds a :class:`monai.networks.nets.VarAutoEncoder`: a strided
  convolutional encoder, a *dense* bottleneck (``mu`` / ``logvar`` linear layers of
  ``latent_size``), a mirrored decoder and a sigmoid output in ``[0, 1]``. The AE (Baur et al.,
  2021) uses the same network deterministically (``z = mu``, no KL term), the VAE samples ``z``
  with the reparameterisation trick, and the SVAE feeds neighbouring slices as input channels.
  Defaults (Baur et al., 2021 "dense" models, sized for 96x96 slices): 4 stride-2 levels of
  32/64/128/256 channels (96 -> 6 pixels) and a 128-dimensional latent (the latent size of the
  paper's f-AnoGAN; Baur et al. vary it).
- :class:`DAENetConfig` builds a :class:`monai.networks.nets.UNet` (Kascenas et al., 2022 use a
  UNet with skip connections; their channel widths 64..1024 are scaled down to 32..256 here).

The dense bottleneck fixes the input size: ``image_size`` must match the slices (96x96 on the
model grid); the UNet is fully convolutional.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from monai.networks.nets import UNet, VarAutoEncoder
from torch import Tensor

__all__ = ["DenseVAENetConfig", "DAENetConfig", "vae_encode", "vae_decode"]


@dataclass
class DenseVAENetConfig:
    """Keyword arguments of the dense (variational) autoencoder.

    Attributes:
        image_size: ``(H, W)`` of the slices (the dense layer's size depends on it).
        channels: encoder channels per level (the decoder mirrors them).
        strides: stride of each level (``2**len`` must divide the image size for an exact decode).
        latent_size: dimension of the dense bottleneck.
        num_res_units: residual units per level (0: plain convolutions, as Baur et al.).
        norm: MONAI norm layer name of the convolutions.
    """

    image_size: tuple[int, int] = (96, 96)
    channels: tuple[int, ...] = (32, 64, 128, 256)
    strides: tuple[int, ...] = (2, 2, 2, 2)
    latent_size: int = 128
    num_res_units: int = 0
    norm: str = "BATCH"

    def __post_init__(self) -> None:
        if len(self.channels) != len(self.strides):
            raise ValueError(
                f"channels {self.channels} and strides {self.strides} must have the same length."
            )
        factor = 1
        for s in self.strides:
            factor *= s
        if any(size % factor for size in self.image_size):
            raise ValueError(
                f"image_size {tuple(self.image_size)} must be divisible by the total stride {factor} "
                "(set network.image_size to the slice size)."
            )

    def build(self, in_channels: int = 1) -> VarAutoEncoder:
        """The MONAI ``VarAutoEncoder`` mapping ``(B, in_channels, H, W)`` to one output channel."""
        return VarAutoEncoder(
            spatial_dims=2,
            in_shape=(in_channels, *self.image_size),
            out_channels=1,
            latent_size=self.latent_size,
            channels=tuple(self.channels),
            strides=tuple(self.strides),
            num_res_units=self.num_res_units,
            norm=self.norm,
            use_sigmoid=True,
        )


def vae_encode(network: VarAutoEncoder, x: Tensor) -> tuple[Tensor, Tensor]:
    """``(mu, logvar)`` of the dense bottleneck for ``x`` ``(B, C, H, W)``."""
    return network.encode_forward(x)


def vae_decode(network: VarAutoEncoder, z: Tensor) -> Tensor:
    """The decoded image in ``[0, 1]`` for latent codes ``z`` ``(B, latent_size)``."""
    return network.decode_forward(z, use_sigmoid=True)


@dataclass
class DAENetConfig:
    """Keyword arguments of the denoising autoencoder's MONAI ``UNet`` (Kascenas et al., 2022).

    Attributes:
        channels: channels per level.
        strides: strides between levels (one fewer than ``channels``).
        num_res_units: residual units per level.
        norm: MONAI norm layer name.
    """

    channels: tuple[int, ...] = (32, 64, 128, 256)
    strides: tuple[int, ...] = (2, 2, 2)
    num_res_units: int = 1
    norm: str = "BATCH"

    def __post_init__(self) -> None:
        if len(self.strides) != len(self.channels) - 1:
            raise ValueError(
                f"the UNet needs one stride fewer than channels; got channels {self.channels}, strides {self.strides}."
            )

    def build(self) -> UNet:
        """The single-channel 2-D UNet (linear output: the reconstruction)."""
        return UNet(
            spatial_dims=2,
            in_channels=1,
            out_channels=1,
            channels=tuple(self.channels),
            strides=tuple(self.strides),
            num_res_units=self.num_res_units,
            norm=self.norm,
        )


def reparameterize(mu: Tensor, logvar: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """``mu + eps * exp(logvar / 2)`` with ``eps ~ N(0, I)`` drawn on the CPU from ``generator``."""
    eps = torch.randn(mu.shape, generator=generator, dtype=torch.float32).to(mu.device, mu.dtype)
    return mu + eps * torch.exp(0.5 * logvar)


def kl_divergence(mu: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)), summed over the latent dimensions, mean over the batch."""
    return (-0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(dim=1)).mean()


__all__ += ["reparameterize", "kl_divergence"]
