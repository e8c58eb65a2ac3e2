"""Post-processing, threshold search, metrics, permutation tests, tables and figures (paper §4.3-§4.4).

Everything after the anomaly map, shared by every method: a method is an
:class:`~pddpm_monai.methods.scorers.AnomalyScorer` and
:func:`~pddpm_monai.evaluation.evaluate.evaluate_method` does the rest.
"""

from pddpm_monai.evaluation.evaluate import EvaluationConfig, VolumeLoader, evaluate_method
from pddpm_monai.evaluation.metrics import (
    VolumeMetrics,
    average_precision,
    dice_score,
    roc_auc,
    volume_metrics,
)
from pddpm_monai.evaluation.postprocess import PostprocessConfig, binarize, postprocess_anomaly_map
from pddpm_monai.evaluation.threshold import ThresholdResult, ValidationPool, best_dice_threshold

__all__ = [
    "EvaluationConfig",
    "evaluate_method",
    "VolumeLoader",
    "VolumeMetrics",
    "average_precision",
    "dice_score",
    "roc_auc",
    "volume_metrics",
    "PostprocessConfig",
    "binarize",
    "postprocess_anomaly_map",
    "ThresholdResult",
    "ValidationPool",
    "best_dice_threshold",
]
