"""No silent surprises in training options: unfilled batches, unbuildable networks, method names in logs."""

from __future__ import annotations

import dataclasses
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pddpm_monai.cli import build_parser, main
from pddpm_monai.engines.commands import train_config_from_args
from pddpm_monai.engines.trainer import (
    LOGGER_NAME,
    RunLogFormatter,
    TrainConfig,
    _setup_logging,
    build_method_for,
    prepare_training,
    warn_unfilled_batch,
)
from pddpm_monai.names import METHOD_LABELS, method_label, method_order
from pddpm_monai.utils import InputError
from tests.engines.toys import TINY_NET, as_volumes, healthy_images

TINY = {"patch_size": 16, "t_test": 250, "network": TINY_NET}


def _config(tmp_path: Path, **changes) -> TrainConfig:
    base = TrainConfig(
        out_dir=str(tmp_path / "run"),
        method_options=TINY,
        epochs=1,
        batch_size=32,
        val_interval=0,
        image_interval=0,
        seed=0,
    )
    return dataclasses.replace(base, **changes)


@pytest.mark.parametrize(
    "volumes, slices, batch, expected",
    [
        (8, 1, 32, "larger than the 8 slices an epoch draws (8 training volumes x 1 slice(s)"),
        (8, 4, 32, ""),
        (8, 1, 8, ""),
    ],
)
def test_warn_unfilled_batch(tmp_path, volumes, slices, batch, expected):
    message = warn_unfilled_batch(_config(tmp_path, slices_per_volume=slices, batch_size=batch), volumes)
    assert expected in message and (message == "") == (expected == "")
    assert "\n" not in message


def test_unfilled_batch_warns_once_and_batches_hold_what_an_epoch_draws(tmp_path, caplog):
    images, masks = healthy_images(16, size=32, seed=0)
    volumes = as_volumes(images, masks, 2)  # 8 volumes of 2 slices
    with caplog.at_level(logging.WARNING, logger=LOGGER_NAME):
        trainer = prepare_training(_config(tmp_path), train_volumes=volumes)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "batch size 32" in warnings[0] and "8 slices" in warnings[0]
    batch = next(iter(trainer.data_loader))
    assert batch["image"].shape[0] == 8
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=LOGGER_NAME):
        trainer = prepare_training(
            _config(tmp_path, slices_per_volume=4, out_dir=str(tmp_path / "run2")), train_volumes=volumes
        )
    assert [r for r in caplog.records if r.levelno == logging.WARNING] == []
    assert next(iter(trainer.data_loader))["image"].shape[0] == 32


def test_slices_per_volume_option(tmp_path):
    args = build_parser().parse_args(
        ["train", "--data-root", "r", "--out", "o", "--slices-per-volume", "4", "--batch-size", "16"]
    )
    config = train_config_from_args(args)
    assert (config.slices_per_volume, config.batch_size) == (4, 16)
    assert (
        train_config_from_args(
            build_parser().parse_args(["train", "--data-root", "r", "--out", "o"])
        ).slices_per_volume
        == TrainConfig().slices_per_volume
    )
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--data-root", "r", "--out", "o", "--slices-per-volume", "0"])


def test_channels_the_groups_do_not_divide_is_an_input_error(tmp_path):
    config = _config(tmp_path, method="ddpm", method_options={"network": {"model_channels": 16}})
    with pytest.raises(InputError, match=r"cannot build the DDPM network: num_groups=32 must divide"):
        build_method_for(config)


def test_cli_channels_16_without_groups_is_one_line_and_leaves_no_folder(tmp_path, capsys):
    (tmp_path / "root" / "splits").mkdir(parents=True)
    out = tmp_path / "run"
    code = main(["train", "--data-root", str(tmp_path / "root"), "--out", str(out), "--channels", "16"])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(err) == 1
    assert err[0].startswith(
        "pddpm train: error: method options: cannot build the pDDPM network: num_groups=32"
    )
    assert not out.exists()


def test_log_lines_name_the_method_as_the_paper(tmp_path):
    record = logging.LogRecord(LOGGER_NAME, logging.INFO, __file__, 1, "epoch %d: best", (3,), None)
    line = RunLogFormatter("DDPM").format(record)
    assert line.split(" ", 1)[1] == "DDPM epoch 3: best"
    train_record = logging.LogRecord(f"{LOGGER_NAME}.train", logging.INFO, __file__, 1, "Epoch[1]", (), None)
    assert RunLogFormatter("AE").format(train_record).split(" ", 1)[1] == "AE train Epoch[1]"
    # one process training several methods (the demo): each run's lines carry its own name
    logger = logging.getLogger(LOGGER_NAME)
    saved = list(logger.handlers)
    for h in saved:
        logger.removeHandler(h)
    try:
        for method in ("pddpm", "ddpm"):
            _setup_logging(method)
            (handler,) = logger.handlers
            assert handler.format(record).split(" ", 1)[1] == f"{method_label(method)} epoch 3: best"
    finally:
        for h in list(logger.handlers):
            logger.removeHandler(h)
        for h in saved:
            logger.addHandler(h)


def test_method_labels_are_the_papers():
    assert [method_label(k) for k in ("pddpm", "ddpm", "ae", "vae", "svae", "dae", "fanogan", "thresh")] == [
        "pDDPM",
        "DDPM",
        "AE",
        "VAE",
        "SVAE",
        "DAE",
        "f-AnoGAN",
        "Thresh",
    ]
    assert method_label("pDDPM") == "pDDPM" and method_label("Perfect") == "Perfect"
    assert sorted(["pddpm", "Thresh", "ae", "Other"], key=method_order) == ["Thresh", "ae", "pddpm", "Other"]
    from pddpm_monai.engines.commands import TRAIN_METHODS

    assert set(TRAIN_METHODS) <= set(METHOD_LABELS)  # every CLI key has a paper name


@pytest.mark.slow
def test_ddpm_training_log_says_ddpm(tmp_path):
    """A real `pddpm train --method ddpm` run: its log names DDPM, never 'pddpm epoch'."""
    from tests.test_bad_inputs import _brain, _tiny_data_root

    img, mask = _brain()
    root = _tiny_data_root(tmp_path / "root", img, mask)
    args = ["train", "--data-root", str(root), "--out", str(tmp_path / "run"), "--method", "ddpm"]
    args += ["--channels", "8", "--channel-mult", "1", "1", "1", "--res-blocks", "1", "--groups", "4"]
    args += ["--head-channels", "8", "--epochs", "1", "--batch-size", "4"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    result = subprocess.run(
        [sys.executable, "-m", "pddpm_monai", *args],
        capture_output=True,
        text=True,
        encoding="utf-8",
        errors="replace",
        timeout=300,
        env=env,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "DDPM epoch 1: best validation loss" in result.stderr
    assert "pddpm epoch" not in result.stderr
    # 2 training volumes x 1 slice < batch 4: one warning line
    assert sum("larger than the 2 slices an epoch draws" in line for line in result.stderr.splitlines()) == 1
