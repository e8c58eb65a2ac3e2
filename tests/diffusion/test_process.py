"""The forward process on MONAI's DDPMScheduler, Eq. 3 and the losses."""

from __future__ import annotations

import pytest
import torch
from numpy.testing import assert_allclose

from pddpm_monai.diffusion.patches import boxes_to_masks
from pddpm_monai.diffusion.process import (
    DiffusionConfig,
    DiffusionProcess,
    full_l1_loss,
    partly_noised,
    patch_l1_loss,
)
from tests.diffusion.test_calibration import authors_alphas_cumprod


def reference_alpha_bar(t: int, steps: int = 1000, beta_start: float = 1e-4, beta_end: float = 2e-2) -> float:
    """``prod_{s<=t} (1 - beta_s)`` for the linear schedule, in float64."""
    betas = torch.linspace(beta_start, beta_end, steps, dtype=torch.float64)
    return torch.cumprod(1 - betas, 0)[t].item()


@pytest.mark.parametrize("schedule", ["cosine", "linear_beta"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_add_noise_matches_the_closed_form(schedule, seed):
    """Eq. 3 in float64 on the process's float32 table, and that table against the schedule.

    The table is float32, as the authors' buffers are. Near ``t = 0`` its rounding (about 6e-8) is
    a large part of ``1 - abar`` (1e-4 or less), so ``sqrt(1 - abar)`` moves by up to 1e-3
    relative: a reference built on the float64 schedule failed by chance on a large unseeded noise
    draw (CI: 1.01e-5 > atol 1e-5). So Eq. 3 is checked on the table itself (float32 arithmetic
    left, a few ulps), and the table is checked against the float64 schedule on its own.
    """
    generator = torch.Generator().manual_seed(seed)
    process = DiffusionProcess(DiffusionConfig(schedule=schedule))
    x0 = torch.rand(3, 1, 8, 8, generator=generator)
    noise = 4 * torch.randn(3, 1, 8, 8, generator=generator)  # wide draws: the worst case of t = 0
    t = torch.tensor([0, 499, 999])
    x_t = process.add_noise(x0, noise, t)
    for i, step in enumerate(t.tolist()):
        a = float(process.alphas_cumprod[step])
        expected = a**0.5 * x0[i].double() + (1 - a) ** 0.5 * noise[i].double()
        assert_allclose(x_t[i].double().numpy(), expected.numpy(), rtol=1e-6, atol=1e-6)
        schedule_value = (
            reference_alpha_bar(step) if schedule == "linear_beta" else authors_alphas_cumprod()[step]
        )
        assert_allclose(a, schedule_value, rtol=1e-6 if step < 999 else 1e-4)


def test_default_schedule_is_cosine_and_unknown_schedules_fail_early():
    assert DiffusionConfig().schedule == "cosine"
    cosine = DiffusionProcess(DiffusionConfig(schedule="cosine", beta_start=0.5, beta_end=0.9))
    assert_allclose(cosine.alphas_cumprod.double().numpy(), authors_alphas_cumprod(), atol=1e-5)
    with pytest.raises(ValueError, match="unknown noise schedule 'cosin'"):
        DiffusionConfig(schedule="cosin")


def test_add_noise_scalar_timestep_and_bf16_keeps_the_table():
    process = DiffusionProcess()
    x0, noise = torch.rand(2, 1, 4, 4), torch.randn(2, 1, 4, 4)
    scalar = process.add_noise(x0, noise, torch.tensor(499))
    assert torch.equal(scalar, process.add_noise(x0, noise, torch.tensor([499, 499])))
    process.add_noise(x0.bfloat16(), noise.bfloat16(), torch.tensor(10))
    assert process.scheduler.alphas_cumprod.dtype == torch.float32


def test_process_configuration_and_noise():
    process = DiffusionProcess(DiffusionConfig(num_train_timesteps=50, noise_type="gaussian"))
    assert process.scheduler.prediction_type == "sample"
    assert len(process.scheduler.alphas_cumprod) == 50
    t = process.sample_timesteps(4000, device="cpu", generator=torch.Generator().manual_seed(0))
    assert t.min() == 0 and t.max() == 49 and t.dtype == torch.long
    x0 = torch.zeros(2, 1, 16, 16)
    noise = process.noise_like(x0, generator=torch.Generator().manual_seed(0))
    assert noise.shape == x0.shape and not torch.equal(noise[0], noise[1])


def test_model_space_round_trip():
    process = DiffusionProcess()
    x = torch.rand(2, 1, 4, 4)
    assert_allclose(process.to_model_space(x).numpy(), (2 * x - 1).numpy())
    assert_allclose(process.from_model_space(process.to_model_space(x)).numpy(), x.numpy(), atol=1e-7)
    identity = DiffusionProcess(DiffusionConfig(rescale_to_minus_one_one=False))
    assert torch.equal(identity.to_model_space(x), x)


def test_partly_noised_is_eq3():
    x0, x_t = torch.zeros(1, 1, 6, 6), torch.ones(1, 1, 6, 6)
    mask = boxes_to_masks(torch.tensor([[1, 2]]), 6, 6, 3, 2)
    mixed = partly_noised(x_t, x0, mask)
    assert mixed.sum() == 6 and torch.equal(mixed[0, 0, 1:4, 2:4], torch.ones(3, 2))


def test_losses():
    x0 = torch.zeros(2, 1, 4, 4)
    x0_hat = torch.zeros(2, 1, 4, 4)
    x0_hat[:, :, :2, :2] = 2.0  # error 2 on 4 pixels inside the patch
    x0_hat[:, :, 3, 3] = 5.0  # error outside the patch
    mask = boxes_to_masks(torch.tensor([[0, 0], [0, 0]]), 4, 4, 2, 2)
    assert patch_l1_loss(x0, x0_hat, mask).item() == pytest.approx(
        2 * 4 / 16
    )  # authors: mean over all pixels
    assert patch_l1_loss(x0, x0_hat, mask, reduction="patch").item() == pytest.approx(2.0)
    assert full_l1_loss(x0, x0_hat).item() == pytest.approx((8 + 5) / 16)
    with pytest.raises(ValueError, match="reduction"):
        patch_l1_loss(x0, x0_hat, mask, reduction="sum")  # type: ignore[arg-type]
