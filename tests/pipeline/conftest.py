"""A tiny pDDPM trained on a small synthetic healthy data root, with its validation threshold.

Shared by the detect tests (session scope: trained once). The threshold is the one ``pddpm
evaluate`` finds on the root's BraTS-like validation volume; it is written beside the checkpoint
(``thresholds.json``) where ``pddpm detect`` looks for it.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

#: the engine tests' tiny UNet
TINY_NET = {
    "model_channels": 16,
    "channel_mult": [1, 2],
    "num_res_blocks": 1,
    "num_groups": 8,
    "num_head_channels": 16,
}
TINY_PDDPM = {"network": TINY_NET, "t_test": 250, "patch_size": 48}
#: 4 healthy subjects: 1 test, 1 validation, 2 training; 2 tumour subjects: 1 validation, 1 test
COHORT = {"n_healthy": 4, "n_tumour": 2, "n_ms": 0}
TRAIN_EPOCHS = 12
TRAIN_BATCH = 8
SLICES_PER_VOLUME = 16


@dataclass(frozen=True)
class TinyModel:
    """The trained checkpoint, the atlas folder its data live in, and the data root."""

    checkpoint: Path
    atlas_dir: Path
    data_root: Path
    threshold: float


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> TinyModel:
    import json

    from pddpm_monai.data.synthetic import make_synthetic_root, synthetic_atlas
    from pddpm_monai.engines.checkpoint import load_scorer
    from pddpm_monai.engines.trainer import TrainConfig, train
    from pddpm_monai.evaluation.evaluate import EvaluationConfig, evaluate_method

    base = tmp_path_factory.mktemp("tiny_model")
    atlas_dir = base / "atlas"
    synthetic_atlas(atlas_dir)
    root = make_synthetic_root(base / "root", seed=0, **COHORT)
    config = TrainConfig(
        data_root=str(root),
        out_dir=str(base / "run"),
        method_options=TINY_PDDPM,
        epochs=TRAIN_EPOCHS,
        batch_size=TRAIN_BATCH,
        lr=2e-3,
        slices_per_volume=SLICES_PER_VOLUME,
        val_slices_per_volume=8,
        image_interval=0,
        cache_workers=1,
        device="cpu",
        seed=0,
    )
    checkpoint = train(config)
    scorer = load_scorer(checkpoint)
    eval_config = EvaluationConfig(datasets=("brats21",), save_nifti=False, figures=False, progress=False)
    run = evaluate_method(scorer, root, base / "results", config=eval_config)
    shutil.copy(run / "thresholds.json", checkpoint.parent / "thresholds.json")
    threshold = json.loads((run / "thresholds.json").read_text())["brats21"]["threshold"]
    return TinyModel(checkpoint, atlas_dir, root, float(threshold))
