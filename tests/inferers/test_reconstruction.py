"""Plain DDPM reconstruction and slice-by-slice volume reconstruction."""

from __future__ import annotations

import pytest
import torch
from monai.data import MetaTensor
from numpy.testing import assert_allclose

from pddpm_monai.diffusion import DiffusionProcess
from pddpm_monai.inferers import DiffusionReconstructionInferer, patched_reconstruction, reconstruct_volume
from pddpm_monai.inferers.reconstruction import diffusion_reconstruction
from tests.diffusion.test_calibration import authors_alphas_cumprod


def identity(x, t):
    return x


def test_one_pass_reconstruction_is_the_denoised_whole_slice():
    process = DiffusionProcess()
    inputs = torch.rand(3, 1, 16, 16, dtype=torch.float64)
    noise = process.noise_like(inputs, generator=torch.Generator().manual_seed(0))
    out = diffusion_reconstruction(inputs, identity, process, t_test=500, noise=noise)
    alpha_bar = torch.tensor(authors_alphas_cumprod()[499])  # the cosine schedule
    x_t = alpha_bar.sqrt() * (2 * inputs - 1) + (1 - alpha_bar).sqrt() * noise
    assert_allclose(out.numpy(), ((x_t + 1) / 2).numpy(), atol=1e-6)


def test_equals_a_single_whole_image_patch():
    process = DiffusionProcess()
    inputs = torch.rand(4, 1, 16, 16)

    def network(x, t):  # a non-trivial, pixel-wise function of x and t
        return torch.tanh(x * 1.5) + t.view(-1, 1, 1, 1) * 1e-3

    noise = process.noise_like(inputs, generator=torch.Generator().manual_seed(1))
    one_pass = diffusion_reconstruction(inputs, network, process, t_test=400, max_batch=3, noise=noise)
    patched = patched_reconstruction(inputs, network, process, t_test=400, patch_size=(16, 16), noise=noise)
    assert_allclose(one_pass.numpy(), patched.numpy(), atol=1e-6)


def test_inferer_seed_volume_and_anomaly_map():
    process = DiffusionProcess()
    inferer = DiffusionReconstructionInferer(process, t_test=500, seed=0, slice_batch=4)
    volume = torch.rand(2, 1, 16, 16, 6)
    out = inferer(volume, identity)
    assert out.shape == volume.shape and torch.equal(out, inferer(volume, identity))
    anomaly = DiffusionReconstructionInferer(process, seed=0, slice_batch=4, return_anomaly_map=True)(
        volume, identity
    )
    assert_allclose(anomaly.numpy(), (volume - out).abs().numpy(), atol=1e-6)


def test_meta_tensor_keeps_its_affine():
    affine = torch.diag(torch.tensor([2.0, 2.0, 2.0, 1.0]))
    volume = MetaTensor(torch.rand(1, 1, 16, 16, 3), affine=affine)
    for anomaly_map in (False, True):
        inferer = DiffusionReconstructionInferer(DiffusionProcess(), seed=0, return_anomaly_map=anomaly_map)
        out = inferer(volume, identity)
        assert isinstance(out, MetaTensor) and torch.equal(out.affine, volume.affine)


@pytest.mark.parametrize("shape", [(12, 10, 7), (1, 12, 10, 7)])
def test_reconstruct_volume_batches_every_axial_slice(shape):
    volume = torch.arange(torch.Size(shape).numel(), dtype=torch.float32).reshape(shape)
    sizes = []

    def flip_columns(slices):
        sizes.append(slices.shape[0])
        assert slices.shape[1:] == (1, 12, 10)
        return torch.flip(slices, dims=[-1])

    out = reconstruct_volume(volume, flip_columns, slice_batch=3)
    assert sizes == [3, 3, 1]
    assert torch.equal(out, torch.flip(volume, dims=[-2]))  # W is the second to last axis of a volume


def test_reconstruct_volume_errors():
    with pytest.raises(ValueError, match="volume"):
        reconstruct_volume(torch.rand(4, 4), identity)
    with pytest.raises(ValueError, match="slice_batch"):
        reconstruct_volume(torch.rand(4, 4, 2), identity, slice_batch=0)
