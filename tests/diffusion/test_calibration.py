"""Calibration of the default forward process against the authors' code, computed independently.

The reference numbers are written out here from the authors' definitions, not taken from the code
under test: the cosine schedule of Nichol & Dhariwal as their ``cosine_beta_schedule`` defines it
(float64, ``s = 0.008``, betas clipped at 0.999) and their simplex noise as the raw sum of 6
``opensimplex`` octaves (persistence 0.8, coordinates divided by 64, halving per octave; no
standardisation). The old defaults (linear 1e-4..2e-2 schedule, unit-variance noise) fail all
three checks: abar[499] = 0.079, patch rms ~1.0 and a noise-to-signal ratio ~5x the authors'.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from opensimplex import OpenSimplex

from pddpm_monai.diffusion import DiffusionConfig, DiffusionProcess, SimplexNoiseConfig

T_TEST_INDEX = 499  # the paper's t_test = 500
SIZE, PATCH = 96, 48
NUM_FIELDS = 48


def authors_alphas_cumprod(timesteps: int = 1000, s: float = 0.008) -> np.ndarray:
    """Cosine schedule, written out: abar(t) = f(t) / f(0), f = cos^2(((t/T) + s) / (1 + s) * pi / 2)."""
    x = np.linspace(0, timesteps, timesteps + 1, dtype=np.float64)
    f = np.cos(((x / timesteps) + s) / (1 + s) * math.pi * 0.5) ** 2
    f = f / f[0]
    betas = np.clip(1 - f[1:] / f[:-1], 0, 0.999)
    return np.cumprod(1 - betas)


def authors_field(seed: int) -> np.ndarray:
    """Raw fractal simplex field: sum over 6 octaves of 0.8**o * noise2(x / f_o, y / f_o), f_0 = 64."""
    noise = OpenSimplex(seed)
    coords = np.arange(SIZE, dtype=np.float64)
    total, frequency, amplitude = np.zeros((SIZE, SIZE)), 64.0, 1.0
    for _ in range(6):
        total += amplitude * noise.noise2array(coords / frequency, coords / frequency)
        frequency, amplitude = frequency / 2, amplitude * 0.8
    return total


def patch_rms(fields: np.ndarray) -> float:
    """rms over the four 48x48 patches of the 96x96 grid, pooled over the fields."""
    patches = [fields[:, y : y + PATCH, x : x + PATCH] for y in (0, PATCH) for x in (0, PATCH)]
    return float(np.sqrt(np.mean(np.stack(patches) ** 2)))


def noise_to_signal(abar: float, rms: float) -> float:
    """Noise amplitude on the patch relative to the [0, 1] image range (model space is [-1, 1])."""
    return math.sqrt((1 - abar) / abar) * rms / 2


@pytest.fixture(scope="module")
def authors_rms() -> float:
    return patch_rms(np.stack([authors_field(seed) for seed in range(NUM_FIELDS)]))


def default_rms(config: DiffusionConfig) -> float:
    process = DiffusionProcess(config)
    x0 = torch.zeros(NUM_FIELDS, 1, SIZE, SIZE, dtype=torch.float64)
    noise = process.noise_like(x0, generator=torch.Generator().manual_seed(0))[:, 0].numpy()
    return patch_rms(noise)


def test_cosine_schedule_at_t_test():
    ours = DiffusionProcess().alphas_cumprod.double().numpy()
    reference = authors_alphas_cumprod()
    assert abs(reference[T_TEST_INDEX] - 0.4938) < 0.002  # the reference itself
    assert abs(ours[T_TEST_INDEX] - 0.4938) < 0.002
    np.testing.assert_allclose(ours, reference, atol=1e-5)


def test_default_noise_amplitude_and_noise_to_signal(authors_rms):
    assert 0.5 < authors_rms < 0.75  # the raw octave sum: ~0.6 including the per-field offset
    ours_rms = default_rms(DiffusionConfig())
    assert abs(ours_rms / authors_rms - 1) < 0.15
    abar_ours = DiffusionProcess().alphas_cumprod[T_TEST_INDEX].item()
    abar_authors = authors_alphas_cumprod()[T_TEST_INDEX]
    ours, authors = noise_to_signal(abar_ours, ours_rms), noise_to_signal(abar_authors, authors_rms)
    assert 0.2 < authors < 0.4
    assert abs(ours / authors - 1) < 0.2


def test_paper_text_variant_is_one_option_away_and_fails_the_calibration(authors_rms):
    """The old defaults (the paper's text) put ~5x the authors' noise on the patch."""
    paper = DiffusionConfig(schedule="linear_beta", simplex=SimplexNoiseConfig(standardize=True))
    abar = DiffusionProcess(paper).alphas_cumprod[T_TEST_INDEX].item()
    assert abs(abar - 0.0786) < 0.002
    rms = default_rms(paper)
    assert abs(rms - 1.0) < 0.05
    ratio = noise_to_signal(abar, rms) / noise_to_signal(authors_alphas_cumprod()[T_TEST_INDEX], authors_rms)
    assert ratio > 3
