"""The Table 1 baselines: each trains on a synthetic data root, its loss falls, it reconstructs and
it goes through the shared evaluator; plus the pieces (coarse noise, SVAE context, f-AnoGAN phases)."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
import torch

from pddpm_monai.data.datalist import read_split_csv, split_path
from pddpm_monai.data.dataset import RandomSliceDataset
from pddpm_monai.engines.trainer import TrainConfig, load_volumes, train
from pddpm_monai.evaluation import EvaluationConfig, evaluate_method
from pddpm_monai.methods import METHODS, build_method
from pddpm_monai.methods.baselines import FAnoGANMethod, coarse_noise
from pddpm_monai.methods.checkpoint import load_scorer, read_checkpoint
from tests.evaluation.conftest import write_root

SMALL_AE = {"channels": [8, 16, 16, 16], "latent_size": 16}
#: tiny configurations of every baseline (96x96 slices of the model grid)
TINY = {
    "ae": {"network": SMALL_AE},
    "vae": {"network": SMALL_AE},
    "svae": {"network": SMALL_AE},
    "dae": {"network": {"channels": [8, 16, 16], "strides": [2, 2]}},
    "fanogan": {"network": SMALL_AE, "gan_iterations": 8, "critic_iterations": 2},
}
EPOCHS = 20  # 2 iterations per epoch


def test_every_table1_method_is_registered_and_trainable_from_the_command_line():
    from pddpm_monai.cli import build_parser
    from pddpm_monai.engines.commands import TRAIN_METHODS, train_config_from_args

    assert {"pddpm", "ddpm", "ae", "vae", "svae", "dae", "fanogan"} == set(METHODS) == set(TRAIN_METHODS)
    argv = ["train", "--data-root", "r", "--out", "o", "--method", "svae", "--context", "2", "--beta", "0.01"]
    argv += ["--latent-size", "32", "--ae-channels", "8", "16"]
    config = train_config_from_args(build_parser().parse_args(argv))
    assert config.method == "svae"
    assert config.method_options == {
        "context": 2,
        "beta": 0.01,
        "network.latent_size": 32,
        "network.channels": [8, 16],
    }


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory) -> Path:
    """The evaluation tests' tiny data root plus a training fold made of its healthy IXI subjects."""
    root = write_root(tmp_path_factory.mktemp("baseline_root"))
    for split in ("IXI_train_fold0", "IXI_val_fold0"):
        shutil.copy(split_path(root, "IXI_test"), root / "splits" / f"{split}.csv")
    return root


@pytest.fixture(scope="module")
def healthy_volumes(synthetic_root, tmp_path_factory):
    """The fold's training volumes on the model grid, loaded once."""
    config = TrainConfig(
        data_root=str(synthetic_root), out_dir=str(tmp_path_factory.mktemp("cache")), cache_workers=1
    )
    train_volumes, _ = load_volumes(config)
    return [dict(train_volumes[i]) for i in range(len(train_volumes))]


def _fixed_batch(volumes, context: int) -> torch.Tensor:
    dataset = RandomSliceDataset(volumes, slices_per_volume=8, skip_empty=True, seed=7, context=context)
    return torch.stack([dataset[i]["image"] for i in range(len(dataset))])


def _train(method: str, root: Path, volumes, out: Path, **changes) -> Path:
    config = TrainConfig(
        data_root=str(root),
        out_dir=str(out),
        method=method,
        method_options=TINY[method],
        epochs=EPOCHS,
        batch_size=8,
        lr=5e-3,
        slices_per_volume=8,
        skip_empty_slices=True,
        val_slices_per_volume=4,
        image_interval=0,
        log_interval=100,
        seed=0,
        **changes,
    )
    return train(config, train_volumes=volumes, val_volumes=volumes)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["ae", "vae", "svae", "dae", "fanogan"])
def test_baseline_trains_reconstructs_and_evaluates(name, synthetic_root, healthy_volumes, tmp_path):
    torch.manual_seed(0)
    untrained = build_method(name, TINY[name])
    best = _train(name, synthetic_root, healthy_volumes, tmp_path / "run")
    state = read_checkpoint(best, method=name)
    assert state["config"] == untrained.config_dict()

    # the training loss on fixed healthy slices fell (f-AnoGAN: its encoder loss after the GAN phase)
    method = build_method(name, state["config"])
    method.load_state_dict(state["network"])
    context = getattr(method, "context_slices", 0)
    batch = _fixed_batch(healthy_volumes, context)
    generator = torch.Generator().manual_seed(0)
    after = float(method.validation_loss(batch, generator))
    if name == "fanogan":
        assert int(state["network"]["iterations"]) == EPOCHS * 2 > TINY[name]["gan_iterations"]
        before_encoder = build_method(name, state["config"])
        before_encoder.load_state_dict({**state["network"], **_untrained_encoder(before_encoder)})
        before = float(before_encoder.validation_loss(batch, generator))
    else:
        before = float(untrained.validation_loss(batch, torch.Generator().manual_seed(0)))
    assert after < 0.8 * before, (before, after)

    # it reconstructs volumes on the model grid, and the anomaly map is |x - x_rec| inside the mask
    scorer = load_scorer(best)
    volume = healthy_volumes[0]
    recon, anomaly = scorer(volume["image"], volume["mask"])
    assert recon.shape == anomaly.shape == (1, 96, 96, 50)
    expected = (volume["image"].as_tensor() - recon).abs() * (volume["mask"].as_tensor() > 0)
    torch.testing.assert_close(anomaly, expected)

    # and it runs through the shared evaluator
    config = EvaluationConfig(datasets=("mslub",), save_nifti=False, figures=False, progress=False)
    run = evaluate_method(scorer, synthetic_root, tmp_path / "results", config=config)
    with (run / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["name"] for r in rows] == [
        i["name"] for i in read_split_csv(split_path(synthetic_root, "MSLUB_test"), synthetic_root)
    ]
    summary = json.loads((run / "summary.json").read_text(encoding="utf-8"))["mslub"]
    assert 0.0 <= summary["dice"]["mean"] <= 1.0 and 0.0 <= summary["auprc"]["mean"] <= 1.0


def _untrained_encoder(method: FAnoGANMethod) -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    fresh = FAnoGANMethod(method.config)
    return {k: v for k, v in fresh.state_dict().items() if k.startswith("encoder.")}


def test_coarse_noise_is_smooth_reproducible_and_of_the_requested_scale():
    a = coarse_noise((64, 1, 96, 96), std=0.2, resolution=16, generator=torch.Generator().manual_seed(3))
    b = coarse_noise((64, 1, 96, 96), std=0.2, resolution=16, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(a, b)
    assert a.shape == (64, 1, 96, 96)
    assert abs(float(a.mean())) < 0.02
    # bilinear upsampling of 16 -> 96 keeps most of the variance of the coarse grid
    assert 0.12 < float(a.std()) < 0.2
    # neighbouring pixels are strongly correlated (white noise would give ~0)
    corr = torch.corrcoef(torch.stack([a[..., :-1].flatten(), a[..., 1:].flatten()]))[0, 1]
    assert corr > 0.9


def test_svae_decodes_the_centre_slice_and_refuses_single_slices():
    method = build_method("svae", {"network": SMALL_AE, "context": 2})
    assert method.context_slices == 2
    stack = torch.rand(3, 5, 96, 96)
    out = method.training_step(stack, torch.Generator().manual_seed(0))
    torch.testing.assert_close(out.images["input"], stack[:, 2:3])
    with pytest.raises(ValueError, match="5 stacked slices"):
        method.training_step(torch.rand(3, 1, 96, 96))
    # reconstruction takes consecutive single slices and builds the context itself
    assert method.reconstruct(torch.rand(6, 1, 96, 96)).shape == (6, 1, 96, 96)


def test_slice_datasets_stack_neighbouring_slices_with_edge_repetition():
    depth = torch.arange(5, dtype=torch.float32).reshape(1, 1, 1, 5).expand(1, 4, 4, 5)
    dataset = RandomSliceDataset([{"image": depth}], slices_per_volume=20, context=1, seed=0)
    seen = set()
    for i in range(len(dataset)):
        item = dataset[i]
        s = item["slice"]
        assert item["image"].shape == (3, 4, 4)
        assert item["image"][:, 0, 0].tolist() == [max(s - 1, 0), s, min(s + 1, 4)]
        seen.add(s)
    assert {0, 4} & seen  # an edge slice was drawn


def _snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.named_parameters()}


def _changed(before: dict[str, torch.Tensor], module: torch.nn.Module) -> bool:
    return any(not torch.equal(before[k], v) for k, v in module.named_parameters())


def test_fanogan_phases_update_only_their_own_networks():
    torch.manual_seed(0)
    method = FAnoGANMethod.from_config(
        {
            "network": {"image_size": [32, 32], "channels": [8, 8], "latent_size": 8},
            "gan_iterations": 2,
            "critic_iterations": 2,
        }
    )
    optimizer = method.configure_optimizer(1e-3)
    images, g = torch.rand(4, 1, 32, 32), torch.Generator().manual_seed(0)
    nets = {"generator": method.generator, "critic": method.critic, "encoder": method.encoder}

    def step() -> set[str]:
        before = {n: _snapshot(m) for n, m in nets.items()}
        method.train_iteration(images, optimizer, generator=g)
        return {n for n, m in nets.items() if _changed(before[n], m)}

    assert method.phase == "gan"
    assert step() == {"critic", "generator"}  # iteration 0: critic + generator (every 2nd)
    assert step() == {"critic"}  # iteration 1: critic only
    assert method.phase == "encoder" and int(method.iterations) == 2
    assert step() == {"encoder"}
    assert torch.isfinite(method.validation_loss(images))


def test_fanogan_gradient_penalty_matches_a_hand_computed_value():
    """With a linear critic D(x) = <w, x> + b the gradient is w everywhere: penalty = (|w| - 1)^2."""
    torch.manual_seed(0)
    method = FAnoGANMethod.from_config(
        {"network": {"image_size": [32, 32], "channels": [4, 4], "latent_size": 8}}
    )

    class Linear(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.randn(1, 1, 32, 32) * 0.01)

        def forward(self, x):
            return (x * self.w).flatten(1).sum(1)

        def features(self, x):
            return x.flatten(1)

    method.critic = Linear()
    images = torch.rand(6, 1, 32, 32)
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    loss = method.critic_loss(images, g1)
    fake = method.generator(method._latent(6, images.device, g2)).detach()
    w = method.critic.w.detach()
    expected = (fake * w).flatten(1).sum(1).mean() - (images * w).flatten(1).sum(1).mean()
    expected = expected + 10.0 * (w.norm() - 1) ** 2
    torch.testing.assert_close(loss, expected, rtol=1e-4, atol=1e-5)
