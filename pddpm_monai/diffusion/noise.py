"""Simplex noise (AnoDDPM) as a batched torch op, its ``opensimplex`` reference, and Gaussian noise.

AnoDDPM (Wyatt et al. 2022) replaces the Gaussian noise of ``q(x_t | x_0)`` by fractal simplex
noise: ``sum_o persistence**o * noise(x / f_o, y / f_o)`` over ``octaves`` octaves, where the
pixel coordinates are *divided* by ``f_0 = frequency`` (64) and ``f`` halves every octave (64, 32,
..., 2 pixels per lattice unit), the amplitude shrinks by ``persistence`` (0.8) each octave.

:func:`simplex_noise_like` evaluates the 2-D OpenSimplex function of the ``opensimplex`` package
(Kurt Spencer's original algorithm: stretched lattice, kernel ``max(0, 2 - d^2)^4``, 8 gradients,
``/ 47``) for a whole batch at once. Instead of the per-point branch that picks the 3-4 lattice
vertices with a non-zero kernel, it sums the kernel over a fixed set of 8 vertices
around each point (a superset of those with a non-zero kernel); vertices outside the kernel radius contribute exactly zero, so for the same
permutation table the value equals ``opensimplex.noise2`` (tested to 1e-5). Each field (each
sample and channel) gets its own random permutation table, so the fields are independent (the
authors draw one field and repeat it over the batch).

Amplitude: by default the field is the **raw octave sum**, as the authors' code uses it
(``src/utils/generate_noise.py`` of FinnBehrendt/patched-Diffusion-Models-UAD: 6 octaves,
persistence 0.8, frequency 64, no standardisation). A raw field has a per-field standard deviation
of about 0.54 plus a random per-field offset (mean ``|offset|`` ~0.17), so its rms over a 48x48
patch is ~0.6. The paper's text calls it a replacement of unit Gaussian noise, which suggests unit
variance; we follow the code, which produced Table 1. ``SimplexNoiseConfig(standardize=True)``
gives zero-mean, unit-variance fields (the paper-text reading, ~1.7x the amplitude) for ablations.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from pddpm_monai.threads import keep_torch_threads

__all__ = [
    "NoiseType",
    "SimplexNoiseConfig",
    "make_noise",
    "random_permutations",
    "simplex_fields",
    "simplex_noise_like",
    "simplex_noise_reference",
]

NoiseType = Literal["simplex", "gaussian"]

# OpenSimplex 2-D constants, the same literals as the ``opensimplex`` package.
_STRETCH_2D = -0.211324865405187  # (1 / sqrt(2 + 1) - 1) / 2
_SQUISH_2D = 0.366025403784439  # (sqrt(2 + 1) - 1) / 2
_NORM_2D = 47.0
_KERNEL_RADIUS_SQ = 2.0
_GRADIENTS_2D = (5, 2, 2, 5, -5, 2, -2, 5, 5, -2, 2, -5, -5, -2, -2, -5)
_PERM_SIZE = 256
# The lattice vertices, relative to the floor of the stretched point, that can lie inside the
# kernel radius (found by dropping each of the 4 x 4 candidates in turn against opensimplex). A
# point misassigned to a neighbouring cell by float rounding lies within rounding error of the
# cell border, where any vertex outside this set contributes at most ~(1e-6)^4.
_VERTEX_OFFSETS = ((-1, 1), (0, 0), (0, 1), (0, 2), (1, -1), (1, 0), (1, 1), (2, 0))
_STD_EPS = 1e-12


@dataclass(frozen=True)
class SimplexNoiseConfig:
    """Fractal simplex noise parameters (AnoDDPM defaults, used by pDDPM).

    Attributes:
        octaves: number of octaves summed.
        persistence: amplitude factor from one octave to the next.
        frequency: divisor of the pixel coordinates in the first octave (pixels per lattice unit);
            it halves every octave.
        standardize: standardise every field to zero mean and unit variance. Off by default: the
            authors' code uses the raw octave sum (rms ~0.6 over a 48x48 patch), not the
            unit-variance noise the paper's text implies.
    """

    octaves: int = 6
    persistence: float = 0.8
    frequency: float = 64.0
    standardize: bool = False


def random_permutations(
    count: int, *, generator: torch.Generator | None = None, device: torch.device | str | None = None
) -> Tensor:
    """``count`` independent random permutations of ``0..255`` (one OpenSimplex seed each).

    Args:
        count: number of permutation tables.
        generator: generator for a reproducible draw (its device is used for the draw).
        device: device of the result.

    Returns:
        ``(count, 256)`` long tensor.
    """
    draw_device = generator.device if generator is not None else device
    keys = torch.rand(count, _PERM_SIZE, generator=generator, device=draw_device)
    return torch.argsort(keys, dim=1).to(device)


def _opensimplex_2d(xs: Tensor, ys: Tensor, perms: Tensor) -> Tensor:
    """OpenSimplex 2-D on the grid ``ys x xs`` for every permutation table.

    Args:
        xs: ``(W,)`` x coordinates (lattice units).
        ys: ``(H,)`` y coordinates.
        perms: ``(N, 256)`` permutation tables.

    Returns:
        ``(N, H, W)`` noise values in about ``[-1, 1]``.
    """
    n, height, width = perms.shape[0], ys.numel(), xs.numel()
    x = xs[None, :].expand(height, width)
    y = ys[:, None].expand(height, width)
    stretch = (x + y) * _STRETCH_2D
    xsb = torch.floor(x + stretch)
    ysb = torch.floor(y + stretch)
    gradients = torch.tensor(_GRADIENTS_2D, dtype=xs.dtype, device=xs.device)
    value = torch.zeros(n, height, width, dtype=xs.dtype, device=xs.device)
    for i, j in _VERTEX_OFFSETS:
        vx, vy = xsb + i, ysb + j
        squish = (vx + vy) * _SQUISH_2D
        dx = x - (vx + squish)
        dy = y - (vy + squish)
        attn = (_KERNEL_RADIUS_SQ - dx * dx - dy * dy).clamp(min=0)
        hx = perms[:, (vx.long() & 0xFF).reshape(-1)]  # (N, H*W)
        index = torch.gather(perms, 1, (hx + (vy.long() & 0xFF).reshape(1, -1)) & 0xFF) & 0x0E
        index = index.view(n, height, width)
        extrapolation = gradients[index] * dx + gradients[index + 1] * dy
        value = value + attn.square().square() * extrapolation
    return value / _NORM_2D


def simplex_fields(
    height: int,
    width: int,
    perms: Tensor,
    *,
    config: SimplexNoiseConfig = SimplexNoiseConfig(),
    dtype: torch.dtype = torch.float32,
    normalize: bool | None = None,
) -> Tensor:
    """Fractal simplex fields for given permutation tables (the deterministic core).

    Args:
        height: field height ``H``.
        width: field width ``W``.
        perms: ``(N, 256)`` permutation tables, one per field (device of the result).
        config: octaves, persistence and frequency.
        dtype: floating dtype of the computation and the result.
        normalize: standardise each field to zero mean and unit variance; ``None`` follows
            ``config.standardize``.

    Returns:
        ``(N, H, W)`` fields.
    """
    device = perms.device
    xs = torch.arange(width, device=device, dtype=dtype)
    ys = torch.arange(height, device=device, dtype=dtype)
    total = torch.zeros(perms.shape[0], height, width, device=device, dtype=dtype)
    frequency, amplitude = float(config.frequency), 1.0
    for _ in range(config.octaves):
        total = total + amplitude * _opensimplex_2d(xs / frequency, ys / frequency, perms)
        frequency /= 2
        amplitude *= config.persistence
    if config.standardize if normalize is None else normalize:
        total = _standardize(total)
    return total


def _standardize(fields: Tensor) -> Tensor:
    """Zero mean, unit (population) variance over the last two axes of each field."""
    mean = fields.mean(dim=(-2, -1), keepdim=True)
    std = fields.std(dim=(-2, -1), keepdim=True, unbiased=False)
    return (fields - mean) / std.clamp(min=_STD_EPS)


def simplex_noise_like(
    x: Tensor,
    *,
    config: SimplexNoiseConfig = SimplexNoiseConfig(),
    generator: torch.Generator | None = None,
) -> Tensor:
    """Independent simplex fields shaped like ``x``, on ``x``'s device and dtype.

    Args:
        x: ``(B, C, H, W)`` tensor (only its shape, device and dtype are used).
        config: octaves, persistence, frequency and whether to standardise.
        generator: generator for reproducible fields (one random permutation table is drawn per
            sample and channel, on the generator's device).

    Returns:
        ``(B, C, H, W)`` noise: raw octave sums, or zero-mean unit-variance fields when
        ``config.standardize``.

    Raises:
        ValueError: when ``x`` is not 4-D.
    """
    if x.ndim != 4:
        raise ValueError(f"simplex noise needs a (B, C, H, W) tensor, got shape {tuple(x.shape)}.")
    batch, channels, height, width = x.shape
    perms = random_permutations(batch * channels, generator=generator, device=x.device)
    compute_dtype = x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32
    fields = simplex_fields(height, width, perms, config=config, dtype=compute_dtype)
    return fields.view(batch, channels, height, width).to(x.dtype)


def simplex_noise_reference(
    height: int,
    width: int,
    *,
    config: SimplexNoiseConfig = SimplexNoiseConfig(),
    seed: int = 0,
    normalize: bool | None = None,
) -> np.ndarray:
    """The same field family with the ``opensimplex`` package (numba-accelerated when installed).

    Args:
        height: field height.
        width: field width.
        config: octaves, persistence and frequency.
        seed: the OpenSimplex seed.
        normalize: standardise the field to zero mean and unit variance; ``None`` follows
            ``config.standardize``.

    Returns:
        ``(H, W)`` float64 field.
    """
    from opensimplex import OpenSimplex

    generator = OpenSimplex(seed)
    xs = np.arange(width, dtype=np.float64)
    ys = np.arange(height, dtype=np.float64)
    total = np.zeros((height, width))
    frequency, amplitude = float(config.frequency), 1.0
    with keep_torch_threads():  # numba's first parallel call would leave torch on every core
        for _ in range(config.octaves):
            total += amplitude * generator.noise2array(xs / frequency, ys / frequency)
            frequency /= 2
            amplitude *= config.persistence
    if config.standardize if normalize is None else normalize:
        total = (total - total.mean()) / max(total.std(), _STD_EPS)
    return total


def make_noise(
    x: Tensor,
    noise_type: NoiseType = "simplex",
    *,
    generator: torch.Generator | None = None,
    config: SimplexNoiseConfig = SimplexNoiseConfig(),
) -> Tensor:
    """Noise for ``q(x_t | x_0)``: simplex (default) or standard Gaussian, shaped like ``x``.

    Args:
        x: ``(B, C, H, W)`` tensor.
        noise_type: ``"simplex"`` or ``"gaussian"``.
        generator: generator for reproducible noise (drawn on its device, moved to ``x``'s).
        config: simplex parameters (ignored for Gaussian noise).

    Returns:
        noise with ``x``'s shape, device and dtype.
    """
    if noise_type == "simplex":
        return simplex_noise_like(x, config=config, generator=generator)
    if noise_type == "gaussian":
        draw_device = generator.device if generator is not None else x.device
        noise = torch.randn(x.shape, generator=generator, device=draw_device, dtype=x.dtype)
        return noise.to(x.device)
    raise ValueError(f"noise_type must be 'simplex' or 'gaussian', got {noise_type!r}.")
