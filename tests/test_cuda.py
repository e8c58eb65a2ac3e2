"""CUDA paths against their CPU references (skipped where no GPU is present, as in CI).

Run on a GPU machine with ``python -m pytest -q tests/test_cuda.py``; the device figures and the
date of the last run are in ``benchmarks/RESULTS.md`` ("CUDA checks").
"""

from __future__ import annotations

import pytest
import torch

from pddpm_monai.diffusion import DiffusionProcess
from pddpm_monai.diffusion.noise import random_permutations, simplex_fields
from pddpm_monai.engines.trainer import train
from pddpm_monai.inferers import patched_reconstruction
from pddpm_monai.methods.checkpoint import load_method
from tests.engines.test_trainer import blob_config
from tests.engines.toys import as_volumes, healthy_images, tiny
from tests.inferers.test_patched import tiny_network

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")


def test_simplex_fields_on_cuda_equal_the_cpu_fields():
    perms = random_permutations(4, generator=torch.Generator().manual_seed(0))
    cpu = simplex_fields(64, 64, perms, dtype=torch.float64)
    gpu = simplex_fields(64, 64, perms.cuda(), dtype=torch.float64)
    assert cpu.std() > 0.1
    assert (gpu.cpu() - cpu).abs().max() < 1e-10


def test_batched_patched_inference_on_cuda_equals_the_cpu():
    process = DiffusionProcess()
    net = tiny_network()
    inputs = torch.rand(3, 1, 32, 32)
    noise = process.noise_like(inputs, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        cpu = patched_reconstruction(inputs, net, process, patch_size=16, max_batch=5, noise=noise)
        gpu = patched_reconstruction(
            inputs.cuda(), net.cuda(), process, patch_size=16, max_batch=64, noise=noise.cuda()
        )
    assert cpu.std() > 1e-3
    assert (gpu.cpu() - cpu).abs().max() < 1e-4


def test_bf16_training_on_cuda_learns_and_its_checkpoint_loads_on_the_cpu(tmp_path):
    images, masks = healthy_images(128, seed=0)
    val_images, val_masks = healthy_images(16, seed=5)
    config = blob_config(tmp_path / "run", epochs=10, device="cuda", amp=True, image_interval=0)
    best = train(
        config, train_volumes=as_volumes(images, masks, 16), val_volumes=as_volumes(val_images, val_masks, 16)
    )
    state = torch.load(best, weights_only=True)
    assert all(v.device.type == "cpu" for v in state["network"].values())
    test, _ = healthy_images(8, seed=99)
    errors = {}
    for name, method in (("trained", load_method(best)), ("untrained", tiny("pddpm"))):  # on the CPU
        recon = method.reconstruct(test, torch.Generator().manual_seed(0))
        assert torch.isfinite(recon).all()
        errors[name] = (recon - test).abs().mean().item()
    assert errors["trained"] < 0.5 * errors["untrained"], errors
