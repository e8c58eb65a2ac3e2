"""Networks of f-AnoGAN (Schlegl et al., 2019): generator, WGAN-GP critic and encoder.

Small DCGAN-style networks built from MONAI ``Convolution`` blocks, sized for 96x96 slices:

- :class:`Generator`: ``z (B, latent)`` -> linear -> ``(C0, H/16, W/16)`` -> 4 transposed-conv
  upsamplings (BatchNorm + ReLU) -> 3x3 conv -> sigmoid, an image in ``[0, 1]``;
- :class:`Critic`: 4 stride-2 convolutions (LeakyReLU 0.2, no normalisation: the gradient penalty
  of WGAN-GP forbids batch statistics) -> linear score; :meth:`Critic.features` gives the last
  convolutional features (the izif feature residual);
- :class:`Encoder`: the critic's body -> linear -> ``z``.

Schlegl et al. use residual networks of this layout on 64x64 images; we keep plain convolutions
to stay small. Latent size 128 as in the paper's Table 1 set-up.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from monai.networks.blocks import Convolution
from torch import Tensor, nn

__all__ = ["FAnoGANNetConfig", "Generator", "Critic", "Encoder"]

LEAKY_SLOPE = 0.2


@dataclass
class FAnoGANNetConfig:
    """Sizes of the three f-AnoGAN networks.

    Attributes:
        image_size: ``(H, W)`` of the slices.
        latent_size: dimension of ``z`` (the paper: 128).
        channels: channels of the critic/encoder levels (coarse to fine reversed for the generator).
    """

    image_size: tuple[int, int] = (96, 96)
    latent_size: int = 128
    channels: tuple[int, ...] = (32, 64, 128, 256)

    def __post_init__(self) -> None:
        factor = 2 ** len(self.channels)
        if any(size % factor for size in self.image_size):
            raise ValueError(
                f"image_size {tuple(self.image_size)} must be divisible by 2**len(channels) = {factor}."
            )

    @property
    def base_size(self) -> tuple[int, int]:
        """Spatial size at the coarsest level."""
        factor = 2 ** len(self.channels)
        return (self.image_size[0] // factor, self.image_size[1] // factor)


def _down_body(channels: tuple[int, ...]) -> nn.Sequential:
    layers, c_in = [], 1
    for c_out in channels:
        layers.append(
            Convolution(
                2,
                c_in,
                c_out,
                strides=2,
                kernel_size=3,
                act=("leakyrelu", {"negative_slope": LEAKY_SLOPE}),
                norm=None,
            )
        )
        c_in = c_out
    return nn.Sequential(*layers)


class Generator(nn.Module):
    """``G(z)``: a latent code to an image in ``[0, 1]``.

    Args:
        config: the network sizes.
    """

    def __init__(self, config: FAnoGANNetConfig) -> None:
        super().__init__()
        self.config = config
        widths = tuple(reversed(config.channels))
        bh, bw = config.base_size
        self.project = nn.Linear(config.latent_size, widths[0] * bh * bw)
        layers = []
        for c_in, c_out in zip(widths, (*widths[1:], widths[-1])):
            layers.append(
                Convolution(
                    2, c_in, c_out, strides=2, kernel_size=3, is_transposed=True, act="relu", norm="batch"
                )
            )
        layers.append(Convolution(2, widths[-1], 1, kernel_size=3, conv_only=True))
        self.body = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        bh, bw = self.config.base_size
        x = torch.relu(self.project(z)).view(z.shape[0], -1, bh, bw)
        return torch.sigmoid(self.body(x))


class Critic(nn.Module):
    """WGAN critic ``D(x)`` (unbounded score) with access to its features.

    Args:
        config: the network sizes.
    """

    def __init__(self, config: FAnoGANNetConfig) -> None:
        super().__init__()
        self.body = _down_body(tuple(config.channels))
        bh, bw = config.base_size
        self.score = nn.Linear(config.channels[-1] * bh * bw, 1)

    def features(self, x: Tensor) -> Tensor:
        """Flattened features of the last convolution ``(B, C * h * w)``."""
        return self.body(x).flatten(1)

    def forward(self, x: Tensor) -> Tensor:
        return self.score(self.features(x)).squeeze(1)


class Encoder(nn.Module):
    """``E(x)``: an image to a latent code (trained after the GAN, izif).

    Args:
        config: the network sizes.
    """

    def __init__(self, config: FAnoGANNetConfig) -> None:
        super().__init__()
        self.body = _down_body(tuple(config.channels))
        bh, bw = config.base_size
        self.latent = nn.Linear(config.channels[-1] * bh * bw, config.latent_size)

    def forward(self, x: Tensor) -> Tensor:
        return self.latent(self.body(x).flatten(1))
