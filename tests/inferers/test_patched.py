"""Patched inference: stitching, batched == sequential == a per-slice reference loop, call counts."""

from __future__ import annotations

import math

import pytest
import torch
from numpy.testing import assert_allclose

from pddpm_monai.diffusion import DiffusionConfig, DiffusionProcess, patch_grid
from pddpm_monai.inferers import PatchedDiffusionInferer, patched_reconstruction
from pddpm_monai.networks import DiffusionUNet

TINY = dict(model_channels=16, channel_mult=(1, 2), num_res_blocks=1, num_groups=8, num_head_channels=16)


class CountingNetwork(torch.nn.Module):
    """Wraps a network and records the batch size of every call."""

    def __init__(self, network):
        super().__init__()
        self.network = network
        self.sizes: list[int] = []

    def forward(self, x, t):
        self.sizes.append(x.shape[0])
        return self.network(x, t)


def identity(x, t):
    return x


def tiny_network(seed: int = 0) -> DiffusionUNet:
    net = DiffusionUNet(**TINY).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    return net


def reference_loop(inputs, network, process, noise, t_test, patch):
    """The authors' procedure: per position, run the batch, copy each slice's box, average overlaps."""
    x0 = process.to_model_space(inputs)
    t = torch.full((inputs.shape[0],), t_test - 1)
    x_t = process.add_noise(x0, noise, t)
    total, count = torch.zeros_like(x0), torch.zeros_like(x0)
    for y0, x0_ in patch_grid(*inputs.shape[-2:], patch, patch):
        box = (slice(None), slice(y0, y0 + patch), slice(x0_, x0_ + patch))
        noised = x0.clone()
        for j in range(inputs.shape[0]):
            noised[j][box] = x_t[j][box]
        prediction = network(noised, t)
        for j in range(inputs.shape[0]):
            total[j][box] += prediction[j][box]
            count[j][box] += 1
    return process.from_model_space(total / count)


@pytest.mark.parametrize("patch", [16, 20])  # 32/16: 2 x 2 tiles; 32/20: overlapping 2 x 2
def test_identity_network_reconstructs_the_noised_image(patch):
    """Each pixel gets the noised value of the patch(es) covering it, averaged: exactly x_t."""
    process = DiffusionProcess()
    inputs = torch.rand(2, 1, 32, 32, dtype=torch.float64)
    noise = process.noise_like(inputs, generator=torch.Generator().manual_seed(0))
    out = patched_reconstruction(
        inputs, identity, process, t_test=300, patch_size=patch, max_batch=3, noise=noise
    )
    x_t = process.add_noise(process.to_model_space(inputs), noise, torch.tensor(299))
    assert_allclose(out.numpy(), process.from_model_space(x_t).numpy(), atol=1e-6)


def test_overlaps_are_averaged_with_hand_computed_values():
    """A network that outputs its position index k: 96/60 overlaps average 0..3 by coverage."""
    process = DiffusionProcess(DiffusionConfig(rescale_to_minus_one_one=False))

    def position_index(x, t):
        return torch.arange(x.shape[0], dtype=x.dtype).view(-1, 1, 1, 1).expand_as(x)

    out = patched_reconstruction(
        torch.zeros(1, 1, 96, 96), position_index, process, patch_size=60, max_batch=4
    )[0, 0]
    # grid (0,0), (0,36), (36,0), (36,36) -> k = 0, 1, 2, 3
    assert out[0, 0] == 0 and out[0, 95] == 1 and out[95, 0] == 2 and out[95, 95] == 3
    assert out[0, 40] == 0.5 and out[40, 0] == 1.0 and out[40, 95] == 2.0 and out[40, 40] == 1.5


@pytest.mark.parametrize("patch", [16, 20])
def test_batched_equals_sequential_equals_reference(patch):
    process = DiffusionProcess()
    net = tiny_network()
    inputs = torch.rand(3, 1, 32, 32)
    noise = process.noise_like(inputs, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        batched = patched_reconstruction(inputs, net, process, patch_size=patch, max_batch=5, noise=noise)
        sequential = patched_reconstruction(
            inputs, net, process, patch_size=patch, max_batch=5, noise=noise, mode="sequential"
        )
        reference = reference_loop(inputs, net, process, noise, 500, patch)
    assert (batched - sequential).abs().max() <= 1e-5
    assert (batched - reference).abs().max() <= 1e-5
    assert batched.std() > 1e-3  # not a trivial output


@pytest.mark.parametrize("batch,max_batch", [(3, 5), (2, 8), (1, 64), (5, 1)])
def test_batched_call_count(batch, max_batch):
    process = DiffusionProcess(DiffusionConfig(noise_type="gaussian"))
    net = CountingNetwork(identity)
    num_positions = len(patch_grid(32, 32, 16, 16))
    patched_reconstruction(torch.rand(batch, 1, 32, 32), net, process, patch_size=16, max_batch=max_batch)
    assert len(net.sizes) == math.ceil(batch * num_positions / max_batch)
    assert sum(net.sizes) == batch * num_positions and max(net.sizes) <= max_batch


def test_inferer_is_deterministic_and_returns_the_anomaly_map():
    process = DiffusionProcess()
    net = tiny_network()
    inputs = torch.rand(2, 1, 32, 32)
    inferer = PatchedDiffusionInferer(process, t_test=500, patch_size=16, seed=7)
    with torch.no_grad():
        first, again = inferer(inputs, net), inferer(inputs, net)
        other = inferer(inputs, net, generator=torch.Generator().manual_seed(8))
        anomaly = PatchedDiffusionInferer(process, patch_size=16, seed=7, return_anomaly_map=True)(
            inputs, net
        )
    assert torch.equal(first, again)
    assert not torch.allclose(first, other)
    assert_allclose(anomaly.numpy(), (inputs - first).abs().numpy(), atol=1e-6)


def test_inferer_on_a_volume_goes_slice_by_slice():
    process = DiffusionProcess()
    net = tiny_network()
    volume = torch.rand(1, 1, 32, 32, 5)
    inferer = PatchedDiffusionInferer(process, patch_size=(16, 32), seed=3, slice_batch=2)
    with torch.no_grad():
        out = inferer(volume, net)
        gen = torch.Generator().manual_seed(3)
        slices = volume[0].permute(3, 0, 1, 2)
        expected = torch.cat([inferer.reconstruct(slices[i : i + 2], net, generator=gen) for i in (0, 2, 4)])
    assert out.shape == volume.shape
    assert_allclose(out[0].permute(3, 0, 1, 2).numpy(), expected.numpy(), atol=1e-6)


def test_bad_arguments():
    process = DiffusionProcess()
    with pytest.raises(ValueError, match="t_test"):
        patched_reconstruction(torch.rand(1, 1, 16, 16), identity, process, t_test=0, patch_size=8)
    with pytest.raises(ValueError, match="patch size"):
        patched_reconstruction(torch.rand(1, 1, 16, 16), identity, process, patch_size=20)
    with pytest.raises(ValueError, match="mode"):
        patched_reconstruction(torch.rand(1, 1, 16, 16), identity, process, patch_size=8, mode="loop")
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        PatchedDiffusionInferer(process, patch_size=8)(torch.rand(16, 16), identity)


def _offset_by_position(x, t):
    """A network whose prediction is 1 + (row of the noised box's centre) / 96 over the whole slice:
    every position predicts its own brightness, as separately reconstructed patches do."""
    noised = (x < 0.999).to(x.dtype)  # clean pixels are 1, noised ones sqrt(abar) < 1 (zero noise)
    rows = torch.arange(x.shape[-2], dtype=x.dtype).view(1, 1, -1, 1)
    centre = (noised * rows).sum(dim=(1, 2, 3)) / noised.sum(dim=(1, 2, 3))
    return torch.ones_like(x) + (centre / x.shape[-2]).view(-1, 1, 1, 1)


def test_blend_grid_removes_the_step_at_the_patch_border():
    """The default grid stitches a step of 0.5 at row 48; the blend grid goes from the first to the
    last patch's value smoothly, in steps of at most a tenth of that."""
    process = DiffusionProcess(DiffusionConfig(rescale_to_minus_one_one=False))
    inputs, noise = torch.ones(2, 1, 96, 96), torch.zeros(2, 1, 96, 96)
    steps = {}
    for grid in ("overlap", "blend"):
        for mode in ("batched", "sequential"):
            out = patched_reconstruction(
                inputs, _offset_by_position, process, patch_size=48, noise=noise, grid=grid, mode=mode
            )[0, 0, :, 40]
            assert float(out[0]) == pytest.approx(1 + 23.5 / 96, abs=1e-4)  # only the first box here
            assert float(out[-1]) == pytest.approx(1 + 71.5 / 96, abs=1e-4)
            assert bool((out.diff() >= -1e-6).all())  # monotone: the same total rise of 0.5
            steps[grid, mode] = float(out.diff().max())
    assert steps["overlap", "batched"] == pytest.approx(0.5, abs=1e-5)
    assert steps["blend", "batched"] < 0.05
    assert steps["blend", "sequential"] == pytest.approx(steps["blend", "batched"], abs=1e-6)
