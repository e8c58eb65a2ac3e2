"""Fixtures of the preprocessing tests: the SRI24 atlas and the real head scan through the chain (once)."""

from __future__ import annotations

import dataclasses

import pytest

from pddpm_monai.data.prepare import preprocess_scan
from pddpm_monai.transforms.atlas import resolve_atlas
from pddpm_monai.transforms.config import PreprocessConfig


@pytest.fixture(scope="session")
def atlas(shared_data):
    return resolve_atlas(shared_data / "sri24", channel="t2")


@pytest.fixture(scope="session")
def fast_config() -> PreprocessConfig:
    """Fewer N4/registration iterations than the defaults keep the real-data tests within budget."""
    return dataclasses.replace(PreprocessConfig(), n4_iterations=(20, 20, 20), reg_iterations=50)


@pytest.fixture(scope="session")
def healthy(shared_data, atlas, fast_config):
    """The real head scan with skull through HD-BET -> registration -> crop -> N4 (once)."""
    path = shared_data / "healthy" / "T2w_head.nii.gz"
    return path, preprocess_scan(path, atlas=atlas, skull_stripped=False, device="cpu", config=fast_config)
