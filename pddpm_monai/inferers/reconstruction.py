"""Plain DDPM reconstruction (AnoDDPM) and slice-by-slice reconstruction of volumes.

:class:`DiffusionReconstructionInferer` noises the whole slice at ``t = t_test - 1`` and predicts
``x_0`` in one network pass (no iterative sampling, as pDDPM's DDPM baseline). The shared base
:class:`SliceDiffusionInferer` turns any slice reconstruction into a MONAI ``Inferer`` that takes
slices ``(B, C, H, W)`` or volumes ``(B, C, H, W, D)`` (every axial slice, in batches) and returns
the reconstruction or the anomaly map ``|x_0 - x^_0|``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from monai.data import MetaTensor
from monai.inferers import Inferer
from torch import Tensor

from pddpm_monai.diffusion.process import DiffusionProcess

__all__ = [
    "DiffusionReconstructionInferer",
    "SliceDiffusionInferer",
    "diffusion_reconstruction",
    "reconstruct_volume",
]

Network = Callable[[Tensor, Tensor], Tensor]

DEFAULT_T_TEST = 500
DEFAULT_MAX_BATCH = 64
DEFAULT_SLICE_BATCH = 50


def reconstruct_volume(
    volume: Tensor, slice_fn: Callable[[Tensor], Tensor], *, slice_batch: int = 50
) -> Tensor:
    """Apply a slice reconstruction to every axial slice (last axis) of a volume, in batches.

    Args:
        volume: ``(C, H, W, D)`` (typically ``C = 1``) or ``(H, W, D)``.
        slice_fn: maps slices ``(N, C, H, W)`` to slices of the same shape.
        slice_batch: slices per call of ``slice_fn``.

    Returns:
        a volume of ``volume``'s shape (dtype of ``slice_fn``'s output).

    Raises:
        ValueError: for a volume that is not 3-D or 4-D, or a non-positive ``slice_batch``.
    """
    if volume.ndim not in (3, 4):
        raise ValueError(f"volume must be (H, W, D) or (C, H, W, D), got shape {tuple(volume.shape)}.")
    if slice_batch < 1:
        raise ValueError(f"slice_batch must be positive, got {slice_batch}.")
    channels_first = volume if volume.ndim == 4 else volume.unsqueeze(0)
    slices = channels_first.permute(3, 0, 1, 2)  # (D, C, H, W)
    outputs = [
        slice_fn(slices[start : start + slice_batch]) for start in range(0, slices.shape[0], slice_batch)
    ]
    result = torch.cat(outputs, dim=0).permute(1, 2, 3, 0)  # (C, H, W, D)
    return result if volume.ndim == 4 else result[0]


def diffusion_reconstruction(
    inputs: Tensor,
    network: Network,
    process: DiffusionProcess,
    *,
    t_test: int = DEFAULT_T_TEST,
    max_batch: int = DEFAULT_MAX_BATCH,
    generator: torch.Generator | None = None,
    noise: Tensor | None = None,
) -> Tensor:
    """AnoDDPM / plain DDPM: noise the whole slice at ``t_test - 1``, predict ``x_0`` in one pass.

    Args:
        inputs: clean slices ``(B, C, H, W)`` in the data range.
        network: ``network(x, timesteps) -> x0_hat`` in model space.
        process: the forward process.
        t_test: the paper's test timestep (1-based).
        max_batch: most slices per network call.
        generator: generator for the noise.
        noise: a given noise field per slice instead of drawing one.

    Returns:
        the reconstruction ``(B, C, H, W)`` in the data range, float32 (float64 for float64 inputs).
    """
    _, x_t, t_index = noised_slices(inputs, process, t_test, max_batch, generator=generator, noise=noise)
    outputs = [
        run_network(network, x_t[start : start + max_batch], t_index)
        for start in range(0, len(x_t), max_batch)
    ]
    return process.from_model_space(torch.cat(outputs, dim=0))


def noised_slices(
    inputs: Tensor,
    process: DiffusionProcess,
    t_test: int,
    max_batch: int,
    *,
    generator: torch.Generator | None = None,
    noise: Tensor | None = None,
) -> tuple[Tensor, Tensor, int]:
    """``(x_0, x_t, t_index)``: checked slices in model space, noised at ``t_index = t_test - 1``."""
    if inputs.ndim != 4:
        raise ValueError(f"inputs must be slices (B, C, H, W), got shape {tuple(inputs.shape)}.")
    if not 1 <= t_test <= process.num_train_timesteps:
        raise ValueError(
            f"t_test={t_test} must be in 1..{process.num_train_timesteps} (the network runs at t_test - 1)."
        )
    if max_batch < 1:
        raise ValueError(f"max_batch must be positive, got {max_batch}.")
    x0 = process.to_model_space(inputs)
    if noise is None:
        noise = process.noise_like(x0, generator=generator)
    t_index = t_test - 1
    x_t = process.add_noise(x0, noise.to(device=x0.device, dtype=x0.dtype), torch.tensor(t_index))
    return x0, x_t, t_index


def run_network(network: Network, x: Tensor, t_index: int) -> Tensor:
    """One network call at a constant timestep; the prediction in float32 (float64 for float64 ``x``)."""
    timesteps = torch.full((x.shape[0],), t_index, device=x.device, dtype=torch.long)
    return network(x, timesteps).to(torch.promote_types(x.dtype, torch.float32))


class SliceDiffusionInferer(Inferer):
    """Base of the diffusion inferers: seeding, slice/volume dispatch and the anomaly map.

    Subclasses implement :meth:`reconstruct` for slices ``(B, C, H, W)``.

    Args:
        process: the forward process the network was trained with.
        t_test: the paper's test timestep (network at index ``t_test - 1``).
        max_batch: most images per network call.
        return_anomaly_map: return ``|x_0 - x^_0|`` instead of the reconstruction.
        seed: seed of a fresh CPU generator per call when no generator is passed (reproducible
            output from a bundle config); ``None`` uses torch's global generator.
        slice_batch: slices per batch for a volume input ``(B, C, H, W, D)``.
    """

    def __init__(
        self,
        process: DiffusionProcess,
        *,
        t_test: int = DEFAULT_T_TEST,
        max_batch: int = DEFAULT_MAX_BATCH,
        return_anomaly_map: bool = False,
        seed: int | None = None,
        slice_batch: int = DEFAULT_SLICE_BATCH,
    ) -> None:
        super().__init__()
        self.process = process
        self.t_test = t_test
        self.max_batch = max_batch
        self.return_anomaly_map = return_anomaly_map
        self.seed = seed
        self.slice_batch = slice_batch

    def reconstruct(
        self, inputs: Tensor, network: Network, *, generator: torch.Generator | None = None
    ) -> Tensor:
        """The reconstruction of slices ``(B, C, H, W)`` in the data range."""
        raise NotImplementedError

    def __call__(  # type: ignore[override]
        self,
        inputs: Tensor,
        network: Network,
        *args: Any,
        generator: torch.Generator | None = None,
        **kwargs: Any,
    ) -> Tensor:
        """Reconstruct (or score) slices ``(B, C, H, W)`` or volumes ``(B, C, H, W, D)``.

        Args:
            inputs: clean slices, or volumes reconstructed axial slice by axial slice (last axis)
                in batches of ``slice_batch``.
            network: the x0-predicting network ``network(x, timesteps)``.
            args: unused (MONAI's ``Inferer`` signature).
            generator: generator for the noise; default: a fresh one from ``seed`` when set.
            kwargs: unused.

        Returns:
            the reconstruction, or ``|inputs - reconstruction|`` with ``return_anomaly_map``, in
            ``inputs``' shape and dtype (a ``MetaTensor`` input keeps its metadata).
        """
        if generator is None and self.seed is not None:
            generator = torch.Generator().manual_seed(self.seed)

        def slice_fn(slices: Tensor) -> Tensor:
            return self.reconstruct(slices, network, generator=generator)

        if inputs.ndim == 5:
            reconstruction = torch.stack(
                [reconstruct_volume(volume, slice_fn, slice_batch=self.slice_batch) for volume in inputs]
            )
        elif inputs.ndim == 4:
            reconstruction = slice_fn(inputs)
        else:
            raise ValueError(
                f"inputs must be slices (B, C, H, W) or volumes (B, C, H, W, D), got shape {tuple(inputs.shape)}."
            )
        reconstruction = reconstruction.to(inputs.dtype)
        if self.return_anomaly_map:
            return (inputs - reconstruction).abs()
        if isinstance(inputs, MetaTensor):  # keep the affine and metadata for MONAI post-processing
            return MetaTensor(
                reconstruction.as_subclass(Tensor),
                meta=inputs.meta,
                applied_operations=inputs.applied_operations,
            )
        return reconstruction


class DiffusionReconstructionInferer(SliceDiffusionInferer):
    """MONAI inferer for plain DDPM (AnoDDPM): the whole slice noised at ``t_test``, one pass.

    Args: as :class:`SliceDiffusionInferer`.

    Example:
        >>> inferer = DiffusionReconstructionInferer(DiffusionProcess(), t_test=500)
        >>> reconstruction = inferer(slices, network)
    """

    def reconstruct(
        self, inputs: Tensor, network: Network, *, generator: torch.Generator | None = None
    ) -> Tensor:
        """The one-pass reconstruction of slices (see :func:`diffusion_reconstruction`)."""
        return diffusion_reconstruction(
            inputs,
            network,
            self.process,
            t_test=self.t_test,
            max_batch=self.max_batch,
            generator=generator,
        )
