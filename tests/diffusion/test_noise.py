"""Simplex noise: the torch fields against the ``opensimplex`` package, and their statistics."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from numpy.testing import assert_allclose
from opensimplex import OpenSimplex

from pddpm_monai.diffusion.noise import (
    SimplexNoiseConfig,
    make_noise,
    simplex_fields,
    simplex_noise_like,
    simplex_noise_reference,
)

SIZE = 64
LAGS = (1, 2, 4, 8, 16)
NUM_FIELDS = 12


def opensimplex_perm(seed: int) -> torch.Tensor:
    """The permutation table that ``opensimplex`` builds for ``seed``."""
    return torch.as_tensor(OpenSimplex(seed)._perm).long()


def autocorrelation(fields: np.ndarray, lags=LAGS) -> np.ndarray:
    """Mean autocorrelation of standardised fields ``(N, H, W)`` at the lags, along x and y."""
    fields = (fields - fields.mean(axis=(1, 2), keepdims=True)) / fields.std(axis=(1, 2), keepdims=True)
    values = []
    for lag in lags:
        along_x = (fields[:, :, :-lag] * fields[:, :, lag:]).mean()
        along_y = (fields[:, :-lag, :] * fields[:, lag:, :]).mean()
        values.append((along_x + along_y) / 2)
    return np.array(values)


@pytest.mark.parametrize("seed", [0, 42])
@pytest.mark.parametrize("normalize", [False, True])
def test_torch_fields_equal_opensimplex(seed, normalize):
    """Same permutation table -> the same fractal field as opensimplex (float64 to round-off)."""
    perm = opensimplex_perm(seed)[None]
    ours = simplex_fields(40, 56, perm, dtype=torch.float64, normalize=normalize)[0].numpy()
    reference = simplex_noise_reference(40, 56, seed=seed, normalize=normalize)
    assert_allclose(ours, reference, atol=1e-10)
    ours32 = simplex_fields(40, 56, perm, dtype=torch.float32, normalize=normalize)[0].numpy()
    assert_allclose(ours32, reference, atol=1e-4)


def test_config_changes_the_field():
    """Octaves/frequency are honoured: one octave at frequency 8 is opensimplex at (x/8, y/8)."""
    config = SimplexNoiseConfig(octaves=1, persistence=0.5, frequency=8.0)
    perm = opensimplex_perm(3)[None]
    ours = simplex_fields(20, 30, perm, config=config, dtype=torch.float64, normalize=False)[0].numpy()
    reference = OpenSimplex(3).noise2array(np.arange(30) / 8.0, np.arange(20) / 8.0)
    assert_allclose(ours, reference, atol=1e-10)


def test_noise_like_shape_moments_and_independence():
    x = torch.zeros(4, 2, SIZE, SIZE, dtype=torch.float64)
    standardized = SimplexNoiseConfig(standardize=True)
    noise = simplex_noise_like(x, config=standardized, generator=torch.Generator().manual_seed(0))
    assert noise.shape == x.shape and noise.dtype == torch.float64
    flat = noise.reshape(8, -1)
    assert_allclose(flat.mean(dim=1).numpy(), 0, atol=1e-6)
    assert_allclose(flat.std(dim=1, unbiased=False).numpy(), 1, atol=1e-6)
    # the default is the raw octave sum (the authors' amplitude): the same fields, not rescaled
    raw = simplex_noise_like(x, generator=torch.Generator().manual_seed(0)).reshape(8, -1)
    rescaled = (raw - raw.mean(dim=1, keepdim=True)) / raw.std(dim=1, unbiased=False, keepdim=True)
    assert_allclose(rescaled.numpy(), flat.numpy(), atol=1e-9)
    assert 0.3 < raw.std(dim=1, unbiased=False).mean().item() < 0.8
    correlation = torch.corrcoef(flat).abs() - torch.eye(8, dtype=torch.float64)
    # independent smooth fields of 64 x 64 still correlate by chance (opensimplex fields of
    # different seeds: mean |r| ~0.23, max ~0.65); a repeated field (the authors) has r = 1
    assert correlation.max() < 0.9, "fields of different samples/channels must differ"
    assert correlation.sum() / (8 * 7) < 0.4


def test_noise_is_reproducible_from_the_generator():
    x = torch.zeros(2, 1, 32, 32)
    first = simplex_noise_like(x, generator=torch.Generator().manual_seed(5))
    again = simplex_noise_like(x, generator=torch.Generator().manual_seed(5))
    other = simplex_noise_like(x, generator=torch.Generator().manual_seed(6))
    assert torch.equal(first, again)
    assert not torch.allclose(first, other)


def test_distribution_agrees_with_opensimplex():
    """Mean, variance and autocorrelation at lags 1..16 of torch fields vs opensimplex fields."""
    standardized = SimplexNoiseConfig(standardize=True)  # moments comparable with few fields
    ours = simplex_noise_like(
        torch.zeros(NUM_FIELDS, 1, SIZE, SIZE),
        config=standardized,
        generator=torch.Generator().manual_seed(1),
    )[:, 0].double()
    reference = np.stack(
        [simplex_noise_reference(SIZE, SIZE, seed=100 + s, normalize=True) for s in range(NUM_FIELDS)]
    )
    assert abs(ours.mean().item() - reference.mean()) < 1e-6
    assert abs(ours.var(unbiased=False).item() - reference.var()) < 1e-5
    acf_ours, acf_ref = autocorrelation(ours.numpy()), autocorrelation(reference)
    assert_allclose(acf_ours, acf_ref, atol=0.1)
    # the test can fail: white noise has no correlation at lag 1, simplex noise a strong one
    acf_white = autocorrelation(np.random.default_rng(0).standard_normal((NUM_FIELDS, SIZE, SIZE)))
    assert acf_ref[0] > 0.5 and abs(acf_white[0]) < 0.05


def test_make_noise_gaussian_and_errors():
    x = torch.zeros(8, 1, 32, 32)
    gaussian = make_noise(x, "gaussian", generator=torch.Generator().manual_seed(0))
    assert gaussian.shape == x.shape
    assert abs(gaussian.std().item() - 1) < 0.05
    assert autocorrelation(gaussian[:, 0].double().numpy())[0] < 0.05
    with pytest.raises(ValueError, match="noise_type"):
        make_noise(x, "pink")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        simplex_noise_like(torch.zeros(32, 32))
