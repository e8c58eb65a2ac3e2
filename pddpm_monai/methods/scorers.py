"""The seam between a method and the evaluator: :class:`AnomalyScorer`.

The evaluator never knows how a method reconstructs. A scorer takes one model-grid volume and its
brain mask (channel-first ``(1, H, W, D)`` tensors, image in [0, 1]) and returns
``(reconstruction or None, anomaly_map)`` on the same grid. pDDPM, DDPM and the learned baselines
come from :func:`pddpm_monai.methods.checkpoint.load_scorer`; the Thresh baseline lives here.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch

__all__ = ["AnomalyScorer", "ThreshScorer"]


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
