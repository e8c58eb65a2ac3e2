"""Patched diffusion inference of pDDPM (paper §3, "Inference"): one denoising pass per grid patch.

For clean slices ``x_0`` the whole slice is noised once at ``t = t_test - 1`` (``t_test = 500`` in
the paper is index 499); for each of the ``K`` grid positions the partly noised copy
``x_t * M_k + x_0 * (1 - M_k)`` (Eq. 3) goes through the network, the patch region of the
``x_0`` prediction is kept, overlaps are averaged (weighted by a Gaussian window for the
``"blend"`` grid, see :mod:`pddpm_monai.diffusion.patches`), and the stitched image is the
reconstruction; the anomaly map is ``|x_0 - x^_0|``.

Noise: one field per slice, shared by all ``K`` positions of that slice, as in the authors' code
(they draw the noise once before their loop over positions; unlike them, every slice gets its own
field instead of one field repeated over the batch). Because each position only keeps its own
patch, sharing the field means the stitched result is the same as noising the whole slice once.

Two modes give the same result (same noise, fp32: max abs difference <= 1e-5):

- ``"batched"``: all ``B * K`` partly noised copies form one batch, run in chunks of
  ``max_batch`` (``ceil(B * K / max_batch)`` network calls) and are stitched with one
  ``index_add_``;
- ``"sequential"``: the authors' order, one position at a time over the slices (chunks of
  ``max_batch`` slices), accumulated position by position.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from pddpm_monai.diffusion.patches import PatchGrid, patch_masks, patch_weights
from pddpm_monai.diffusion.process import DiffusionProcess
from pddpm_monai.inferers.precision import Precision, precision_network
from pddpm_monai.inferers.reconstruction import (
    DEFAULT_MAX_BATCH,
    DEFAULT_SLICE_BATCH,
    DEFAULT_T_TEST,
    Network,
    SliceDiffusionInferer,
    noised_slices,
    run_network,
)

__all__ = ["InferenceMode", "PatchedDiffusionInferer", "patched_reconstruction"]

InferenceMode = Literal["batched", "sequential"]
DEFAULT_PATCH_SIZE = 48


def _pair(size: int | tuple[int, int]) -> tuple[int, int]:
    """``48 -> (48, 48)``; a pair stays as it is."""
    if isinstance(size, int):
        return size, size
    height, width = size
    return int(height), int(width)


def _accumulation_dtype(x: Tensor) -> torch.dtype:
    """float32 for half/bfloat16/float32 inputs, float64 for float64 inputs."""
    return torch.promote_types(x.dtype, torch.float32)


def _batched(
    network: Network, x0: Tensor, x_t: Tensor, masks: Tensor, weights: Tensor, t_index: int, max_batch: int
) -> Tensor:
    """Sum over positions of ``w_k * network(x~_t^k)``, all ``B * K`` copies in chunks."""
    batch, num_pos = x0.shape[0], masks.shape[0]
    total = torch.zeros(x0.shape, device=x0.device, dtype=_accumulation_dtype(x0))
    for start in range(0, batch * num_pos, max_batch):
        index = torch.arange(start, min(start + max_batch, batch * num_pos), device=x0.device)
        sample, pos = index // num_pos, index % num_pos
        mask = masks[pos]
        noised = x_t[sample] * mask + x0[sample] * (1 - mask)
        total.index_add_(0, sample, run_network(network, noised, t_index) * weights[pos])
    return total


def _sequential(
    network: Network, x0: Tensor, x_t: Tensor, masks: Tensor, weights: Tensor, t_index: int, max_batch: int
) -> Tensor:
    """The same sum, one position at a time (the authors' loop), slices in chunks of ``max_batch``."""
    total = torch.zeros(x0.shape, device=x0.device, dtype=_accumulation_dtype(x0))
    for mask, weight in zip(masks, weights, strict=True):
        for start in range(0, x0.shape[0], max_batch):
            part = slice(start, start + max_batch)
            noised = x_t[part] * mask + x0[part] * (1 - mask)
            total[part] += run_network(network, noised, t_index) * weight
    return total


def patched_reconstruction(
    inputs: Tensor,
    network: Network,
    process: DiffusionProcess,
    *,
    t_test: int = DEFAULT_T_TEST,
    patch_size: int | tuple[int, int] = DEFAULT_PATCH_SIZE,
    max_batch: int = DEFAULT_MAX_BATCH,
    generator: torch.Generator | None = None,
    mode: InferenceMode = "batched",
    noise: Tensor | None = None,
    grid: PatchGrid = "overlap",
    precision: Precision | None = None,
) -> Tensor:
    """Reconstruct slices patch by patch with a pDDPM network.

    Args:
        inputs: clean slices ``(B, C, H, W)`` in the data range (``[0, 1]``).
        network: ``network(x, timesteps) -> x0_hat`` (model space, see
            ``DiffusionProcess.to_model_space``).
        process: the forward process (schedule, noise type, intensity range).
        t_test: the paper's test timestep (1-based); the network runs at index ``t_test - 1``.
        patch_size: patch ``h`` (= ``w``) or ``(h, w)``; the grid is ``patch_grid``'s.
        max_batch: most images per network call.
        generator: generator for the noise (reproducible output).
        mode: ``"batched"`` (all positions in one batch) or ``"sequential"`` (one at a time).
        noise: a given noise field per slice ``(B, C, H, W)`` instead of drawing one.
        grid: ``"overlap"`` (default), ``"tile"`` (the authors' grid) or ``"blend"`` (half-stride
            boxes, Gaussian-weighted: no seams); see :mod:`pddpm_monai.diffusion.patches`.
        precision: ``"fp32"`` (the reference), ``"bf16"`` or ``"auto"`` (fp32, channels-last on
            the CPU); ``None``: the process default (see :mod:`pddpm_monai.inferers.precision`).

    Returns:
        the reconstruction ``(B, C, H, W)`` in the data range, float32 (float64 for float64
        inputs); overlaps averaged (Gaussian-weighted for ``"blend"``).

    Raises:
        ValueError: for a non-4-D input, a ``t_test`` outside ``1..T``, a patch larger than the
            slice, a non-positive ``max_batch`` or an unknown ``mode``.
    """
    patch = _pair(patch_size)
    x0, x_t, t_index = noised_slices(inputs, process, t_test, max_batch, generator=generator, noise=noise)
    height, width = inputs.shape[-2:]
    if not (1 <= patch[0] <= height and 1 <= patch[1] <= width):
        raise ValueError(f"patch size {patch} must fit in the slice size {(height, width)}.")
    if mode not in ("batched", "sequential"):
        raise ValueError(f"mode must be 'batched' or 'sequential', got {mode!r}.")
    masks = patch_masks(height, width, *patch, device=inputs.device, dtype=inputs.dtype, grid=grid)
    weights = patch_weights(height, width, *patch, device=inputs.device, dtype=inputs.dtype, grid=grid)
    network = precision_network(network, precision, inputs.device)
    run = _batched if mode == "batched" else _sequential
    total = run(network, x0, x_t, masks, weights, t_index, max_batch)
    coverage = weights.float().sum(dim=0)  # (1, H, W): the patches' total weight per pixel (> 0)
    return process.from_model_space(total / coverage)


class PatchedDiffusionInferer(SliceDiffusionInferer):
    """MONAI inferer for pDDPM: patched reconstruction (or anomaly map) of slices or volumes.

    Args:
        process, t_test, max_batch, return_anomaly_map, seed, slice_batch: as
            :class:`~pddpm_monai.inferers.reconstruction.SliceDiffusionInferer`.
        patch_size: patch size (int or ``(h, w)``).
        mode: ``"batched"`` or ``"sequential"`` (see :func:`patched_reconstruction`).
        grid: ``"overlap"`` (default), ``"tile"`` (the authors' grid) or ``"blend"``.
        precision: ``"fp32"``, ``"bf16"``, ``"auto"`` or ``None`` (the process default, read at
            each call; see :mod:`pddpm_monai.inferers.precision`).

    Example:
        >>> inferer = PatchedDiffusionInferer(DiffusionProcess(), t_test=500, patch_size=48)
        >>> reconstruction = inferer(slices, network)  # (B, 1, 96, 96)
    """

    def __init__(
        self,
        process: DiffusionProcess,
        *,
        t_test: int = DEFAULT_T_TEST,
        patch_size: int | tuple[int, int] = DEFAULT_PATCH_SIZE,
        max_batch: int = DEFAULT_MAX_BATCH,
        mode: InferenceMode = "batched",
        return_anomaly_map: bool = False,
        seed: int | None = None,
        slice_batch: int = DEFAULT_SLICE_BATCH,
        grid: PatchGrid = "overlap",
        precision: Precision | None = None,
    ) -> None:
        super().__init__(
            process,
            t_test=t_test,
            max_batch=max_batch,
            return_anomaly_map=return_anomaly_map,
            seed=seed,
            slice_batch=slice_batch,
        )
        self.patch_size = patch_size
        self.mode = mode
        self.grid = grid
        self.precision = precision

    def reconstruct(
        self, inputs: Tensor, network: Network, *, generator: torch.Generator | None = None
    ) -> Tensor:
        """The reconstruction of ``(B, C, H, W)`` slices (see :func:`patched_reconstruction`)."""
        return patched_reconstruction(
            inputs,
            network,
            self.process,
            t_test=self.t_test,
            patch_size=self.patch_size,
            max_batch=self.max_batch,
            generator=generator,
            mode=self.mode,
            grid=self.grid,
            precision=self.precision,
        )
