"""Reconstruction rule of the autoencoder-like baselines (AE, VAE, SVAE, DAE, f-AnoGAN).

The network is any callable mapping inputs ``(B, C, H, W)`` to reconstructions ``(B, 1, H, W)``
(a deterministic pass: the VAE decodes ``mu``, f-AnoGAN computes ``G(E(x))``). For the slice-context
SVAE the input of slice ``i`` is the stack of slices ``i - k .. i + k`` (:func:`slice_context`),
taken from the consecutive axial slices of the batch; slices outside the batch are replaced by
the nearest slice of the batch (edge replication), as in training at the ends of a volume.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from monai.inferers import Inferer
from torch import Tensor

from pddpm_monai.inferers.reconstruction import reconstruct_volume

__all__ = ["AutoEncoderInferer", "autoencoder_reconstruction", "slice_context"]

Network = Callable[[Tensor], Tensor]

DEFAULT_MAX_BATCH = 64
DEFAULT_SLICE_BATCH = 50


def slice_context(slices: Tensor, context: int) -> Tensor:
    """Stack each slice with its ``context`` neighbours on each side as channels.

    Args:
        slices: consecutive axial slices ``(B, 1, H, W)``.
        context: neighbours on each side (0: the slices unchanged).

    Returns:
        ``(B, 2 * context + 1, H, W)``; channel ``context`` is the slice itself.
    """
    if context < 0:
        raise ValueError(f"context must be non-negative, got {context}.")
    if context == 0:
        return slices
    if slices.shape[1] != 1:
        raise ValueError(f"slice_context expects single-channel slices, got shape {tuple(slices.shape)}.")
    index = torch.arange(slices.shape[0], device=slices.device)
    offsets = torch.arange(-context, context + 1, device=slices.device)
    neighbours = (index[:, None] + offsets[None, :]).clamp(0, slices.shape[0] - 1)  # (B, 2k+1)
    return slices[neighbours, 0]


def autoencoder_reconstruction(
    inputs: Tensor, network: Network, *, context: int = 0, max_batch: int = DEFAULT_MAX_BATCH
) -> Tensor:
    """The one-pass reconstruction of slices ``(B, 1, H, W)`` in chunks of ``max_batch``.

    Args:
        inputs: consecutive slices ``(B, 1, H, W)`` in ``[0, 1]``.
        network: maps ``(N, 2 * context + 1, H, W)`` to ``(N, 1, H, W)``.
        context: neighbouring slices on each side given to the network (SVAE).
        max_batch: most slices per network call.

    Returns:
        the reconstruction, ``(B, 1, H, W)`` float32.
    """
    if max_batch < 1:
        raise ValueError(f"max_batch must be positive, got {max_batch}.")
    stacked = slice_context(inputs, context)
    outputs = [
        network(stacked[start : start + max_batch]).float() for start in range(0, stacked.shape[0], max_batch)
    ]
    return torch.cat(outputs, dim=0)


class AutoEncoderInferer(Inferer):
    """MONAI inferer for reconstruction baselines: slices or volumes in, reconstruction (or map) out.

    Args:
        context: neighbouring slices on each side stacked as channels (SVAE; 0 otherwise).
        max_batch: most slices per network call.
        return_anomaly_map: return ``|x - x_rec|`` instead of the reconstruction.
        slice_batch: consecutive slices per batch for volume inputs ``(B, C, H, W, D)``.

    Example:
        >>> inferer = AutoEncoderInferer()
        >>> reconstruction = inferer(slices, lambda x: network(x))  # doctest: +SKIP
    """

    def __init__(
        self,
        *,
        context: int = 0,
        max_batch: int = DEFAULT_MAX_BATCH,
        return_anomaly_map: bool = False,
        slice_batch: int = DEFAULT_SLICE_BATCH,
    ) -> None:
        super().__init__()
        self.context = context
        self.max_batch = max_batch
        self.return_anomaly_map = return_anomaly_map
        self.slice_batch = slice_batch

    def __call__(self, inputs: Tensor, network: Network, *args: Any, **kwargs: Any) -> Tensor:  # type: ignore[override]
        """Reconstruct slices ``(B, 1, H, W)`` or every axial slice of volumes ``(B, 1, H, W, D)``."""

        def slice_fn(slices: Tensor) -> Tensor:
            return autoencoder_reconstruction(slices, network, context=self.context, max_batch=self.max_batch)

        if inputs.ndim == 5:
            recon = torch.stack(
                [reconstruct_volume(v, slice_fn, slice_batch=self.slice_batch) for v in inputs]
            )
        elif inputs.ndim == 4:
            recon = slice_fn(inputs)
        else:
            raise ValueError(
                f"inputs must be slices (B, C, H, W) or volumes (B, C, H, W, D), got shape {tuple(inputs.shape)}."
            )
        recon = recon.to(inputs.dtype)
        return (inputs - recon).abs() if self.return_anomaly_map else recon
