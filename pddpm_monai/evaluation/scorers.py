"""The seam between a method and the evaluator: :class:`AnomalyScorer`.

The evaluator never knows how a method reconstructs. A scorer takes one model-grid volume and its
brain mask (channel-first ``(1, H, W, D)`` tensors, image in [0, 1]) and returns
``(reconstruction or None, anomaly_map)`` on the same grid. pDDPM, DDPM and the learned baselines
come from :func:`pddpm_monai.engines.checkpoint.load_scorer`; the Thresh baseline lives here.
"""

from __future__ import annotations

import os
from typing import Protocol, runtime_checkable

import torch

from pddpm_monai.utils import InputError

__all__ = ["AnomalyScorer", "ThreshScorer", "load_checkpoint_scorer"]


@runtime_checkable
class AnomalyScorer(Protocol):
    """What the evaluator needs from a method.

    Attributes:
        name: method name used for the results folder and the table row.
    """

    name: str

    def __call__(self, image: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
        """Return ``(reconstruction or None, anomaly_map)``, each shaped like ``image``."""
        ...


class ThreshScorer:
    """The Thresh baseline (Meissen et al., 2022): the normalised intensity is the anomaly score.

    Lesions are bright in T2, so thresholding the [0, 1] percentile-normalised image is a strong
    trivial baseline; it has no reconstruction.

    Args:
        name: method name in results and tables.
    """

    def __init__(self, name: str = "Thresh"):
        self.name = name

    def __call__(self, image: torch.Tensor, mask: torch.Tensor) -> tuple[None, torch.Tensor]:
        intensity = torch.as_tensor(image, dtype=torch.float32).clamp(min=0.0)
        return None, intensity * (torch.as_tensor(mask) > 0)


def load_checkpoint_scorer(
    checkpoint: str | os.PathLike,
    *,
    t_test: int | None = None,
    patch_size: int | None = None,
    device: str = "cpu",
) -> AnomalyScorer:
    """Build a scorer from a training checkpoint via ``pddpm_monai.engines.checkpoint.load_scorer``.

    The import is lazy so that evaluation works (``--method thresh``) without the engines package.

    Raises:
        InputError: naming the checkpoint when no checkpoint loader is installed.
    """
    try:
        from pddpm_monai.engines.checkpoint import load_scorer
    except ImportError as err:
        raise InputError(
            checkpoint,
            f"cannot evaluate checkpoints: pddpm_monai.engines.checkpoint.load_scorer is unavailable ({err})",
        ) from None
    return load_scorer(checkpoint, t_test=t_test, patch_size=patch_size, device=device)
