"""Methods: registry, training-step losses against hand-computed values, Eq. 3 noising, configs."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from parameterized import parameterized
from torch import nn

from pddpm_monai.methods import METHODS, DDPMMethod, PDDPMMethod, build_method, register_method
from pddpm_monai.utils import InputError
from tests.engines.toys import PATCH, SIZE, randomize, tiny


class _Constant(nn.Module):
    """A 'network' predicting a constant x0 (in model space), whatever its input."""

    def __init__(self, value: float):
        super().__init__()
        self.value = value
        self.weight = nn.Parameter(torch.zeros(()))

    def forward(self, x, t):
        return torch.full_like(x, self.value) + 0 * self.weight


def test_registry_has_both_methods_and_refuses_duplicates():
    assert METHODS["pddpm"] is PDDPMMethod and METHODS["ddpm"] is DDPMMethod
    with pytest.raises(ValueError, match="already registered"):
        register_method("pddpm")(DDPMMethod)
    with pytest.raises(InputError, match="unknown method 'gan2000'"):
        build_method("gan2000")


def test_a_fresh_interpreter_has_every_method_registered():
    """No side-effect import needed: importing the registry's module registers the baselines too."""
    code = (
        "from pddpm_monai.methods.base import METHODS, build_method; "
        "build_method('ae', {}, seed=0); print(' '.join(sorted(METHODS)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, encoding="utf-8", timeout=300
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["ae", "dae", "ddpm", "fanogan", "pddpm", "svae", "vae"]


# constant image 0.75 -> 0.5 in model space; prediction 0 -> error 0.5 on every pixel.
# L_p (authors' reduction: mean over all pixels of the masked error) = 0.5 * patch area / image area.
LOSS_CASES = [
    ("pddpm", {"loss": "patch", "sampling": "fixed"}, 0.5 * PATCH**2 / SIZE**2),
    ("pddpm", {"loss": "patch", "sampling": "random"}, 0.5 * PATCH**2 / SIZE**2),
    ("pddpm", {"loss": "patch", "loss_reduction": "patch"}, 0.5),
    ("pddpm", {"loss": "full"}, 0.5),
    ("ddpm", {}, 0.5),
]


@parameterized.expand(LOSS_CASES)
def test_training_loss_matches_hand_computed_value(name, options, expected):
    method = tiny(name, **options)
    method.network = _Constant(0.0)
    images = torch.full((4, 1, SIZE, SIZE), 0.75)
    out = method.training_step(images, torch.Generator().manual_seed(0))
    assert out.loss.ndim == 0
    assert out.loss.item() == pytest.approx(expected, rel=1e-6)
    assert set(out.images) == {"input", "noised", "reconstruction", "error"}
    torch.testing.assert_close(out.images["reconstruction"], torch.full_like(images, 0.5))
    torch.testing.assert_close(out.images["error"], torch.full_like(images, 0.25))


@parameterized.expand([("fixed",), ("random",)])
def test_pddpm_noises_exactly_one_patch_per_sample(sampling):
    method = tiny("pddpm", sampling=sampling, diffusion={"noise_type": "gaussian"})
    images = torch.rand(8, 1, SIZE, SIZE) * 0.8 + 0.1
    out = method.training_step(images, torch.Generator().manual_seed(3))
    changed = (out.images["noised"] - images).abs() > 1e-6
    aligned = []
    for i in range(images.shape[0]):
        rows = torch.nonzero(changed[i, 0].any(1)).flatten()
        cols = torch.nonzero(changed[i, 0].any(0)).flatten()
        y0, x0 = int(rows.min()), int(cols.min())
        # all changes lie in one PATCH x PATCH box (noise may leave a few pixels nearly unchanged)
        assert int(rows.max()) - y0 < PATCH and int(cols.max()) - x0 < PATCH
        assert changed[i, 0].sum() > 0.9 * PATCH**2
        aligned.append(y0 // PATCH == int(rows.max()) // PATCH and x0 // PATCH == int(cols.max()) // PATCH)
    if sampling == "fixed":
        assert all(aligned)  # boxes of the 2x2 grid
    else:
        assert not all(aligned)  # random boxes: P(all 8 on the grid) = (2/17)^16
    ddpm = tiny("ddpm", diffusion={"noise_type": "gaussian"})
    whole = ddpm.training_step(images, torch.Generator().manual_seed(3))
    assert ((whole.images["noised"] - images).abs() > 1e-6).float().mean() > 0.9  # the whole slice


def test_training_step_is_reproducible_from_the_generator():
    method = tiny("pddpm")
    images = torch.rand(4, 1, SIZE, SIZE)
    a = method.training_step(images, torch.Generator().manual_seed(5))
    b = method.training_step(images, torch.Generator().manual_seed(5))
    c = method.training_step(images, torch.Generator().manual_seed(6))
    torch.testing.assert_close(a.images["noised"], b.images["noised"])
    assert a.loss.item() == b.loss.item()
    assert not torch.allclose(a.images["noised"], c.images["noised"])


@parameterized.expand([("pddpm",), ("ddpm",)])
def test_reconstruct_shape_determinism_and_eval_mode(name):
    method = randomize(tiny(name))
    method.train()
    slices = torch.rand(3, 1, SIZE, SIZE)
    r1 = method.reconstruct(slices, torch.Generator().manual_seed(1))
    r2 = method.reconstruct(slices, torch.Generator().manual_seed(1))
    r3 = method.reconstruct(slices, torch.Generator().manual_seed(2))
    assert r1.shape == slices.shape and not r1.requires_grad
    torch.testing.assert_close(r1, r2)
    assert not torch.allclose(r1, r3)
    assert method.training  # restored after reconstruction
    recon, amap = method.anomaly_map(slices, torch.Generator().manual_seed(1))
    torch.testing.assert_close(amap, (slices - r1).abs())


def test_train_iteration_updates_weights_and_decreases_loss_on_one_batch():
    method = tiny("pddpm", loss="full")
    images = torch.rand(4, 1, SIZE, SIZE)
    optimizer = method.configure_optimizer(1e-2)
    losses = [
        method.train_iteration(images, optimizer, generator=torch.Generator().manual_seed(0)).loss.item()
        for _ in range(15)
    ]
    assert losses[-1] < 0.7 * losses[0]


def test_config_round_trip_and_errors():
    method = tiny("pddpm", sampling="random", loss="full")
    data = json.loads(json.dumps(method.config_dict()))  # JSON-able
    rebuilt = PDDPMMethod.from_config(data)
    assert rebuilt.config == method.config
    assert rebuilt.config.network.channel_mult == (1, 2)  # lists come back as tuples
    assert sum(p.numel() for p in rebuilt.parameters()) == sum(p.numel() for p in method.parameters())
    with pytest.raises(InputError, match="unknown PDDPMConfig option"):
        build_method("pddpm", {"patch_sise": 16})
    with pytest.raises(InputError, match="sampling must be one of"):
        build_method("pddpm", {"sampling": "grid"})
    with pytest.raises(InputError, match="t_test must be in 1..1000"):
        build_method("ddpm", {"t_test": 1001})
    with pytest.raises(InputError, match="unknown DDPMConfig option"):
        build_method("ddpm", {"patch_size": 48})
