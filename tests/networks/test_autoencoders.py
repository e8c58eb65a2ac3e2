"""Baseline networks: MONAI-built dense (V)AE and DAE UNet, f-AnoGAN generator/critic/encoder, KL term."""

from __future__ import annotations

import pytest
import torch
from torch.distributions import Normal
from torch.distributions import kl_divergence as torch_kl

from pddpm_monai.networks.autoencoders import (
    DAENetConfig,
    DenseVAENetConfig,
    kl_divergence,
    reparameterize,
    vae_decode,
    vae_encode,
)
from pddpm_monai.networks.fanogan import Critic, Encoder, FAnoGANNetConfig, Generator

SMALL = {"image_size": (32, 32), "channels": (4, 8), "strides": (2, 2), "latent_size": 6}


@pytest.mark.parametrize("in_channels", [1, 3])
def test_dense_vae_maps_slices_to_a_latent_and_back_into_unit_range(in_channels):
    net = DenseVAENetConfig(**SMALL).build(in_channels=in_channels).eval()
    mu, logvar = vae_encode(net, torch.rand(5, in_channels, 32, 32))
    assert mu.shape == logvar.shape == (5, 6)
    out = vae_decode(net, mu).detach()
    assert out.shape == (5, 1, 32, 32) and 0.0 <= float(out.min()) and float(out.max()) <= 1.0


def test_dense_vae_config_refuses_sizes_the_strides_cannot_decode():
    with pytest.raises(ValueError, match="divisible by the total stride 4"):
        DenseVAENetConfig(image_size=(30, 32), channels=(4, 8), strides=(2, 2))
    with pytest.raises(ValueError, match="same length"):
        DenseVAENetConfig(channels=(4, 8), strides=(2,))
    with pytest.raises(ValueError, match="one stride fewer"):
        DAENetConfig(channels=(4, 8), strides=(2, 2))


def test_dae_unet_keeps_the_slice_shape():
    net = DAENetConfig(channels=(4, 8, 8), strides=(2, 2)).build()
    assert net(torch.rand(2, 1, 96, 96)).shape == (2, 1, 96, 96)


def test_kl_divergence_matches_torch_distributions():
    g = torch.Generator().manual_seed(0)
    mu, logvar = torch.randn(7, 5, generator=g), torch.randn(7, 5, generator=g)
    expected = torch_kl(Normal(mu, (0.5 * logvar).exp()), Normal(0.0, 1.0)).sum(1).mean()
    torch.testing.assert_close(kl_divergence(mu, logvar), expected)
    assert float(kl_divergence(torch.zeros(3, 4), torch.zeros(3, 4))) == 0.0


def test_reparameterize_is_reproducible_and_has_the_posterior_moments():
    mu, logvar = torch.full((20000, 2), 1.5), torch.full((20000, 2), torch.log(torch.tensor(0.25)))
    a = reparameterize(mu, logvar, torch.Generator().manual_seed(1))
    b = reparameterize(mu, logvar, torch.Generator().manual_seed(1))
    torch.testing.assert_close(a, b)
    assert float(a.mean()) == pytest.approx(1.5, abs=0.01) and float(a.std()) == pytest.approx(0.5, abs=0.01)


def test_fanogan_networks_shapes_ranges_and_features():
    config = FAnoGANNetConfig(image_size=(32, 32), latent_size=8, channels=(4, 8))
    generator, critic, encoder = Generator(config).eval(), Critic(config), Encoder(config)
    images = generator(torch.randn(3, 8))
    assert images.shape == (3, 1, 32, 32) and 0.0 <= float(images.min()) and float(images.max()) <= 1.0
    assert critic(images).shape == (3,)
    assert critic.features(images).shape == (3, 8 * 8 * 8)
    assert encoder(images).shape == (3, 8)
    with pytest.raises(ValueError, match="divisible by 2\\*\\*len"):
        FAnoGANNetConfig(image_size=(30, 32), channels=(4, 8))
