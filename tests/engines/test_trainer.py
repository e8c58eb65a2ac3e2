"""The MONAI trainer: a tiny pDDPM learns healthy blobs; a killed run resumes from last.pt."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from ignite.engine import Events

from pddpm_monai.engines.trainer import TrainConfig, build_loaders, prepare_training, train
from pddpm_monai.methods.checkpoint import load_method
from pddpm_monai.utils import InputError
from tests.conftest import REPO_ROOT
from tests.engines.toys import TINY_NET, as_volumes, healthy_images, tiny, with_lesion

TINY_OPTIONS = {"patch_size": 16, "t_test": 250, "network": TINY_NET}


def blob_config(out_dir: Path, **changes) -> TrainConfig:
    base = TrainConfig(
        out_dir=str(out_dir),
        method_options=TINY_OPTIONS,
        epochs=2,
        batch_size=8,
        lr=2e-3,
        slices_per_volume=8,
        val_slices_per_volume=4,
        image_interval=1,
        log_interval=5,
        seed=0,
    )
    return dataclasses.replace(base, **changes)


def _scalars(log_dir: Path) -> dict[str, list[float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    tags = acc.Tags()
    out = {tag: [e.value for e in acc.Scalars(tag)] for tag in tags["scalars"]}
    out.update({tag: [] for tag in tags["images"]})
    return out


@pytest.mark.slow
def test_tiny_pddpm_learns_healthy_blobs_and_flags_a_lesion(tmp_path):
    images, masks = healthy_images(256, seed=0)
    val_images, val_masks = healthy_images(32, seed=5)
    config = blob_config(tmp_path / "run", epochs=12)  # 16 iterations per epoch: 192 steps
    best = train(
        config, train_volumes=as_volumes(images, masks, 16), val_volumes=as_volumes(val_images, val_masks, 16)
    )
    assert best.name == "best.pt"
    trained, untrained = load_method(best), tiny("pddpm")
    test, test_masks = healthy_images(16, seed=99)  # held out
    errors = {}
    for name, method in (("trained", trained), ("untrained", untrained)):
        recon = method.reconstruct(test, torch.Generator().manual_seed(0))
        errors[name] = (recon - test).abs().mean().item()
    assert errors["trained"] < 0.5 * errors["untrained"], errors

    lesioned, lesions = with_lesion(test, test_masks)
    _, anomaly = trained.anomaly_map(lesioned, torch.Generator().manual_seed(0))
    inside = anomaly[lesions > 0].mean().item()
    outside = anomaly[(lesions == 0) & (test_masks > 0)].mean().item()
    assert inside > 2 * outside, (inside, outside)

    logged = _scalars(tmp_path / "run" / "tensorboard")
    assert {"train/loss", "val_loss", "train/images"} <= set(logged)
    assert len(logged["val_loss"]) == config.epochs
    state = torch.load(best, weights_only=True)["trainer"]
    assert state["best_val_loss"] == pytest.approx(min(logged["val_loss"]), rel=1e-5)
    assert logged["val_loss"].index(min(logged["val_loss"])) + 1 == state["best_epoch"]
    assert logged["val_loss"][-1] < logged["val_loss"][0]


CHILD = """
import sys, torch
sys.path.insert(0, {root!r})
torch.set_num_threads(1)
from tests.engines.test_trainer import blob_config, small_volumes
from pddpm_monai.engines.trainer import train
train(blob_config({out!r}, epochs=1000, checkpoint_every=2), train_volumes=small_volumes(), val_volumes=None)
"""


def small_volumes():
    images, masks = healthy_images(64, seed=0)
    return as_volumes(images, masks, 16)  # 4 volumes x 8 slices per epoch / batch 8 = 4 iterations per epoch


def _wait_for_iteration(path: Path, iteration: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    start = time.time()
    while time.time() - start < timeout:
        if proc.poll() is not None:
            raise AssertionError(f"training process exited early: {proc.stderr.read().decode()[-2000:]}")
        if path.is_file() and torch.load(path, weights_only=True)["trainer"]["iteration"] >= iteration:
            return
        time.sleep(0.2)
    raise AssertionError("no checkpoint in time")


@pytest.mark.slow
def test_killed_run_resumes_from_its_last_checkpoint(tmp_path):
    out = tmp_path / "run"
    script = CHILD.format(root=str(REPO_ROOT), out=str(out))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(script)], stderr=subprocess.PIPE, env=env)
    try:
        _wait_for_iteration(out / "last.pt", 6, proc)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    saved = torch.load(out / "last.pt", weights_only=True)
    done = saved["trainer"]["iteration"]
    assert done >= 6 and saved["trainer"]["epoch_length"] == 4

    config = blob_config(out, epochs=done // 4 + 2, checkpoint_every=2)
    trainer = prepare_training(config, train_volumes=small_volumes())
    assert trainer.state.iteration == done and trainer.state.epoch == done // 4
    method, optimizer = trainer.network, trainer.optimizer
    for key, value in method.state_dict().items():
        torch.testing.assert_close(value, saved["network"][key])
    state = optimizer.state_dict()
    assert set(state["state"]) == set(saved["optimizer"]["state"])
    for index, moments in saved["optimizer"]["state"].items():
        assert int(state["state"][index]["step"]) == int(moments["step"]) == done
        torch.testing.assert_close(state["state"][index]["exp_avg"], moments["exp_avg"])
    assert torch.equal(trainer.checkpointer.rng.get_state(), saved["rng"])

    first = []
    trainer.add_event_handler(
        Events.ITERATION_STARTED(once=done + 1), lambda e: first.append(e.state.iteration)
    )
    trainer.run()
    assert first == [done + 1]  # the step counter continues
    final = torch.load(out / "last.pt", weights_only=True)["trainer"]
    assert final["iteration"] == config.epochs * 4 and final["epoch"] == config.epochs

    before = (out / "last.pt").stat().st_mtime_ns
    train(config, train_volumes=small_volumes())  # already finished: nothing to do
    assert (out / "last.pt").stat().st_mtime_ns == before


def test_resume_refuses_other_options_and_other_data(tmp_path):
    config = blob_config(tmp_path / "run", epochs=1, val_slices_per_volume=None, image_interval=0)
    train(config, train_volumes=small_volumes())
    wider = dataclasses.replace(config, method_options={**TINY_OPTIONS, "patch_size": 8}, epochs=2)
    with pytest.raises(InputError, match="other pddpm options \\(patch_size\\)") as err:
        prepare_training(wider, train_volumes=small_volumes())
    assert "last.pt" in str(err.value)
    with pytest.raises(InputError, match="iterations per epoch"):
        prepare_training(dataclasses.replace(config, batch_size=4), train_volumes=small_volumes())
    fresh = prepare_training(dataclasses.replace(wider, resume=False), train_volumes=small_volumes())
    assert fresh.state.iteration == 0


def test_loaders_drop_last_only_with_a_complete_batch():
    volumes = small_volumes()  # 4 volumes
    config = TrainConfig(batch_size=3, slices_per_volume=1, val_slices_per_volume=2, device="cpu")
    train_loader, val_loader = build_loaders(config, volumes, volumes[:1])
    assert len(train_loader) == 1  # 4 items, batch 3, last dropped (the authors' drop_last)
    assert len(val_loader.dataset) == 2
    big = dataclasses.replace(config, batch_size=32)
    assert len(build_loaders(big, volumes)[0]) == 1  # no complete batch: keep the partial one
    batch = next(iter(train_loader))
    assert batch["image"].shape == (3, 1, 32, 32)


def test_resuming_at_an_epoch_end_equals_an_uninterrupted_run(tmp_path):
    options = {"val_slices_per_volume": None, "image_interval": 0}
    straight = train(blob_config(tmp_path / "a", epochs=2, **options), train_volumes=small_volumes())
    train(blob_config(tmp_path / "b", epochs=1, **options), train_volumes=small_volumes())
    resumed = train(blob_config(tmp_path / "b", epochs=2, **options), train_volumes=small_volumes())
    a, b = torch.load(straight, weights_only=True), torch.load(resumed, weights_only=True)
    assert a["trainer"]["iteration"] == b["trainer"]["iteration"] == 8
    for key, value in a["network"].items():
        torch.testing.assert_close(b["network"][key], value, rtol=0, atol=0)
