"""Self-describing checkpoints: weights_only loading, one-line errors, the volume scorer."""

from __future__ import annotations

import pytest
import torch

from pddpm_monai.methods.checkpoint import (
    CHECKPOINT_VERSION,
    load_method,
    load_scorer,
    make_checkpoint,
    save_method_checkpoint,
)
from pddpm_monai.utils import InputError, save_checkpoint
from tests.engines.toys import SIZE, randomize, tiny


@pytest.fixture()
def saved(tmp_path):
    method = randomize(tiny("pddpm"))
    optimizer = method.configure_optimizer(1e-3)
    method.train_iteration(
        torch.rand(2, 1, SIZE, SIZE), optimizer, generator=torch.Generator().manual_seed(0)
    )
    path = save_method_checkpoint(
        tmp_path / "run" / "best.pt", method, optimizer=optimizer, trainer={"epoch": 3}
    )
    return method, optimizer, path


def test_checkpoint_is_plain_and_loads_with_weights_only(saved):
    method, optimizer, path = saved
    raw = torch.load(path, weights_only=True)
    assert raw["method"] == "pddpm" and raw["version"] == CHECKPOINT_VERSION
    assert raw["config"]["patch_size"] == 16 and raw["config"]["network"]["channel_mult"] == [1, 2]
    assert raw["trainer"] == {"epoch": 3}
    assert set(raw["optimizer"]["state"]) == set(optimizer.state_dict()["state"])
    loaded = load_method(path)
    assert not loaded.training
    slices = torch.rand(2, 1, SIZE, SIZE)
    torch.testing.assert_close(
        loaded.reconstruct(slices, torch.Generator().manual_seed(4)),
        method.reconstruct(slices, torch.Generator().manual_seed(4)),
    )
    assert not list(path.parent.glob(".*tmp-*"))  # atomic write leaves no temporary file


def test_corrupt_checkpoint_is_a_one_line_error_naming_the_file(saved, tmp_path):
    _, _, path = saved
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    for bad in (corrupt, tmp_path / "missing.pt"):
        with pytest.raises(InputError) as err:
            load_scorer(bad)
        assert str(bad) in str(err.value) and "\n" not in str(err.value)


def test_pickled_code_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"format": "pddpm-monai", "payload": InputError("x", "y")}, path)
    with pytest.raises(InputError, match="weights_only"):
        load_method(path)


def test_wrong_method_or_architecture_is_refused(saved, tmp_path):
    method, _, path = saved
    with pytest.raises(InputError, match="holds method 'pddpm', but 'ddpm' was requested") as err:
        load_scorer(path, method="ddpm")
    assert str(path) in str(err.value)
    state = make_checkpoint(method)
    state["config"]["network"]["model_channels"] = 32  # config says a wider network than the weights
    wrong = save_checkpoint(state, tmp_path / "wrong.pt")
    with pytest.raises(InputError, match="weights do not match the pddpm architecture") as err:
        load_method(wrong)
    assert str(wrong) in str(err.value) and "\n" not in str(err.value)
    not_ours = save_checkpoint({"state_dict": method.state_dict()}, tmp_path / "other.pt")
    with pytest.raises(InputError, match="not a pddpm-monai checkpoint"):
        load_method(not_ours)
    ddpm_path = save_method_checkpoint(tmp_path / "ddpm.pt", tiny("ddpm"))
    with pytest.raises(InputError, match="patch_size does not apply to method 'ddpm'"):
        load_scorer(ddpm_path, patch_size=48)


def test_scorer_reconstructs_every_slice_of_a_volume(saved):
    method, _, path = saved
    scorer = load_scorer(path, name="tiny")
    assert scorer.name == "tiny" and load_scorer(path).name == "pddpm"
    volume = torch.rand(1, SIZE, SIZE, 5)
    mask = torch.zeros_like(volume)
    mask[:, 4:28, 4:28] = 1
    recon, amap = scorer(volume, mask)
    assert recon.shape == volume.shape and amap.shape == volume.shape
    torch.testing.assert_close(amap, (volume - recon).abs() * mask)
    # slice k of the volume is the method's reconstruction of that slice (one seeded generator per volume)
    expected = method.reconstruct(volume.permute(3, 0, 1, 2), torch.Generator().manual_seed(0))
    torch.testing.assert_close(recon, expected.permute(1, 2, 3, 0))
    again, _ = scorer(volume)
    torch.testing.assert_close(again, recon)  # deterministic per volume
    other_t, _ = load_scorer(path, t_test=50)(volume)
    assert not torch.allclose(other_t, recon)  # t_test override is applied


def test_scorer_takes_model_grid_metatensors(saved):
    from monai.data import MetaTensor

    _, _, path = saved
    scorer = load_scorer(path, device="auto")
    volume = torch.rand(1, SIZE, SIZE, 3)
    recon, amap = scorer(MetaTensor(volume, affine=torch.eye(4) * 2))
    plain, _ = scorer(volume)
    assert type(recon) is torch.Tensor and type(amap) is torch.Tensor
    torch.testing.assert_close(recon, plain)


def test_version_1_checkpoint_evaluates_with_what_it_was_trained_with(tmp_path):
    """A checkpoint written before the authors' defaults (linear schedule, unit-variance noise)."""
    paper_text = {"diffusion": {"schedule": "linear_beta", "simplex": {"standardize": True}}}
    trained = randomize(tiny("pddpm", **paper_text))
    old = make_checkpoint(trained)
    old["version"] = 1
    del old["config"]["diffusion"]["simplex"]["standardize"]  # version 1 had no such field
    path = save_checkpoint(old, tmp_path / "v1.pt")
    loaded = load_method(path)
    assert loaded.config.diffusion.schedule == "linear_beta"
    assert loaded.config.diffusion.simplex.standardize is True
    slices = torch.rand(2, 1, SIZE, SIZE)
    expected = trained.reconstruct(slices, torch.Generator().manual_seed(4))
    torch.testing.assert_close(loaded.reconstruct(slices, torch.Generator().manual_seed(4)), expected)
    # the same weights read with today's defaults would score differently: the upgrade matters
    today = tiny("pddpm")
    today.load_state_dict(trained.state_dict())
    assert not torch.allclose(today.reconstruct(slices, torch.Generator().manual_seed(4)), expected)
    scorer = load_scorer(path)
    assert scorer.method.config.diffusion.simplex.standardize is True


def test_new_checkpoints_record_schedule_and_noise_amplitude(saved):
    _, _, path = saved
    diffusion = torch.load(path, weights_only=True)["config"]["diffusion"]
    assert diffusion["schedule"] == "cosine" and diffusion["simplex"]["standardize"] is False


def test_patch_grid_is_an_inference_option_of_pddpm_only(saved, tmp_path, capsys):
    """``--patch-grid blend`` at inference: a checkpoint trained on the default grid is scored on the
    blend grid (its result differs from the trained grid's); DDPM has no patch grid."""
    method, _, path = saved
    assert method.config.patch_grid == "overlap"
    blend = load_scorer(path, patch_grid="blend")
    assert blend.method.config.patch_grid == "blend" and blend.method.inferer.grid == "blend"
    volume = torch.rand(1, SIZE, SIZE, 3, generator=torch.Generator().manual_seed(1))
    trained, _ = load_scorer(path)(volume)
    blended, _ = blend(volume)
    assert blended.shape == trained.shape and not torch.allclose(blended, trained)
    ddpm_path = save_method_checkpoint(tmp_path / "ddpm.pt", tiny("ddpm"))
    with pytest.raises(InputError, match="patch_grid does not apply to method 'ddpm'"):
        load_scorer(ddpm_path, patch_grid="blend")
    from pddpm_monai.cli import build_parser
    from pddpm_monai.pipeline.commands import detect_config_from_args

    parser = build_parser()
    args = parser.parse_args(
        ["evaluate", "--checkpoint", str(path), "--data-root", ".", "--out", "o", "--patch-grid", "blend"]
    )
    assert args.patch_grid == "blend"
    args = parser.parse_args(
        ["detect", "scan.nii.gz", "--checkpoint", str(path), "--out", "o", "--patch-grid", "blend"]
    )
    assert detect_config_from_args(args).patch_grid == "blend"
    with pytest.raises(SystemExit):
        parser.parse_args(["evaluate", "--data-root", ".", "--out", "o", "--patch-grid", "sliding"])
    assert "invalid choice: 'sliding'" in capsys.readouterr().err
