"""Each default once (issue 16): the bundle's ``train.json`` says what the dataclasses say."""

from __future__ import annotations

import json

from pddpm_monai.diffusion.process import DiffusionConfig
from pddpm_monai.engines.trainer import TrainConfig
from pddpm_monai.inferers.patched import DEFAULT_PATCH_SIZE
from pddpm_monai.inferers.reconstruction import DEFAULT_T_TEST
from pddpm_monai.methods import DDPMConfig, PDDPMConfig, UNetConfig
from tests.bundle.conftest import CONFIGS

#: train.json key -> the TrainConfig field it sets
TRAIN_KEYS = {
    "fold": "fold",
    "method": "method",
    "epochs": "epochs",
    "batch_size": "batch_size",
    "learning_rate": "lr",
    "seed": "seed",
    "amp": "amp",
    "resume": "resume",
    "slices_per_volume": "slices_per_volume",
    "skip_empty_slices": "skip_empty_slices",
    "val_interval": "val_interval",
    "val_slices_per_volume": "val_slices_per_volume",
    "cache": "cache",
    "cache_workers": "cache_workers",
    "num_workers": "num_workers",
    "checkpoint_every": "checkpoint_every",
    "image_interval": "image_interval",
    "log_interval": "log_interval",
    "progress": "progress",
}
PDDPM_KEYS = ("patch_size", "t_test", "sampling", "loss")
DIFFUSION_KEYS = {"noise_type": "noise_type", "num_train_timesteps": "num_train_timesteps"}
UNET_KEYS = ("model_channels", "channel_mult", "num_res_blocks", "num_head_channels", "num_groups")


def _plain(value):
    return list(value) if isinstance(value, tuple) else value


def test_train_json_holds_the_dataclass_defaults():
    config = json.loads((CONFIGS / "train.json").read_text(encoding="utf-8"))
    train, pddpm = TrainConfig(), PDDPMConfig()
    unet, diffusion = UNetConfig(), DiffusionConfig()
    expected = {key: getattr(train, name) for key, name in TRAIN_KEYS.items()}
    expected |= {key: _plain(getattr(pddpm, key)) for key in PDDPM_KEYS}
    expected |= {key: getattr(diffusion, name) for key, name in DIFFUSION_KEYS.items()}
    expected |= {key: _plain(getattr(unet, key)) for key in UNET_KEYS}
    assert {key: config[key] for key in expected} == expected
    # every method option the file wires is one of these keys (nothing set behind the test's back)
    wired = config["method_options"]
    assert set(wired) == {*PDDPM_KEYS, "diffusion", "network"}
    assert set(wired["diffusion"]) == set(DIFFUSION_KEYS) and set(wired["network"]) == set(UNET_KEYS)
    assert all(v == f"@{k}" for k, v in wired.items() if isinstance(v, str))


def test_the_inferers_defaults_are_the_methods():
    assert (
        (PDDPMConfig().t_test, PDDPMConfig().patch_size) == (DEFAULT_T_TEST, DEFAULT_PATCH_SIZE) == (500, 48)
    )
    assert DDPMConfig().t_test == DEFAULT_T_TEST


def test_train_help_prints_the_dataclass_defaults():
    from pddpm_monai.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command").choices["train"]
    helps = {a.dest: a.help for a in sub._actions}
    assert f"(default {TrainConfig().epochs})" in helps["epochs"]
    assert f"(default {PDDPMConfig().patch_size};" in helps["patch_size"]
    assert "(default 1 2 2)" in helps["channel_mult"] and "{default}" not in " ".join(
        filter(None, helps.values())
    )
