"""TorchScript of the diffusion UNet and the one-tensor network entry of the bundle.

The scale-shift reshape was rewritten for TorchScript (a loop of ``unsqueeze`` instead of a
``view`` with a runtime-length shape); the golden numbers below were computed with the previous
code (``view(*shape, *[1] * (ndim - 2))``) on the same seeded weights, so the rewrite changed no
number. :class:`PatchedAnomalyUNet` is checked against the library's patched inference
(``patched_reconstruction`` via ``PatchedDiffusionInferer``) on the same noise.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pddpm_monai.bundle.components import checkpoint_inferer, inference_network
from pddpm_monai.diffusion.patches import patch_masks
from pddpm_monai.diffusion.process import DiffusionConfig, DiffusionProcess
from pddpm_monai.engines.trainer import training_method
from pddpm_monai.inferers import PatchedDiffusionInferer
from pddpm_monai.methods.checkpoint import save_method_checkpoint
from pddpm_monai.networks import DiffusionUNet
from pddpm_monai.networks.patched_anomaly import PatchedAnomalyUNet
from pddpm_monai.utils import InputError

SMALL = {
    "model_channels": 16,
    "channel_mult": (1, 2),
    "num_res_blocks": 1,
    "num_groups": 8,
    "num_head_channels": 16,
}
TINY = {
    "model_channels": 8,
    "channel_mult": [1, 2, 2],
    "num_res_blocks": 1,
    "num_groups": 4,
    "num_head_channels": 8,
}


def _randomise(net: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Non-zero weights everywhere (the output convolutions start at zero)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.1)
    return net.eval()


def _inputs() -> tuple[torch.Tensor, torch.Tensor]:
    return torch.rand((2, 1, 16, 16), generator=torch.Generator().manual_seed(1)), torch.tensor([499, 3])


def test_unet_numbers_unchanged_by_the_torchscript_rewrite() -> None:
    net = _randomise(DiffusionUNet(spatial_dims=2, **SMALL))
    x, t = _inputs()
    with torch.no_grad():
        y = net(x, t)
    # golden values of the code before the rewrite (same weights, same input)
    assert y.sum().item() == pytest.approx(22.267166137695312, abs=1e-4)
    assert y.abs().sum().item() == pytest.approx(25.435382843017578, abs=1e-4)
    torch.testing.assert_close(
        y[0, 0, 0, :4], torch.tensor([0.016489, 0.025338, 0.038006, 0.059257]), atol=2e-6, rtol=0
    )
    torch.testing.assert_close(
        y[1, 0, -1, -4:], torch.tensor([0.066518, 0.119094, 0.097822, 0.039154]), atol=2e-6, rtol=0
    )


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_scripted_unet_equals_eager(spatial_dims: int, tmp_path: Path) -> None:
    net = _randomise(DiffusionUNet(spatial_dims=spatial_dims, **SMALL))
    x = torch.rand((2, 1) + (8,) * spatial_dims, generator=torch.Generator().manual_seed(2))
    t = torch.tensor([499, 3])
    scripted = torch.jit.script(net)
    torch.jit.save(scripted, str(tmp_path / "unet.ts"))
    loaded = torch.jit.load(str(tmp_path / "unet.ts"))
    with torch.no_grad():
        expected = net(x, t)
        assert torch.equal(scripted(x, t), expected)
        assert torch.equal(loaded(x, t), expected)


def _checkpoint(tmp_path: Path, method: str, **options) -> Path:
    m = training_method(method, {**options, "network": TINY}, seed=0, drop_unknown=True)
    _randomise(m.network, seed=3)
    return save_method_checkpoint(tmp_path / f"{method}.pt", m)


@pytest.mark.parametrize(
    ("method", "options"),
    [
        ("pddpm", {"patch_size": 20, "t_test": 300}),  # overlapping grid (20 does not divide 32)
        ("pddpm", {"patch_size": 20, "t_test": 500, "patch_grid": "tile"}),  # truncated last box
        ("pddpm", {"patch_size": 16, "t_test": 400, "patch_grid": "blend"}),  # Gaussian-weighted
        ("ddpm", {"t_test": 200}),
    ],
)
def test_one_tensor_call_equals_the_patched_inferer(method: str, options: dict, tmp_path: Path) -> None:
    path = _checkpoint(tmp_path, method, **options)
    net = inference_network(path, spatial_size=(32, 32, 6), seed=5)
    assert set(net.state_dict()) == set(DiffusionUNet(**TINY).state_dict())  # model.pt loads strictly
    volume = torch.rand(1, 1, 32, 32, 6, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        got = net(volume)
        reference = checkpoint_inferer(path, seed=5)(volume, net)  # net(x, t) is the UNet
        scripted = torch.jit.script(net)(volume)
        slices = net(volume[0].permute(3, 0, 1, 2))  # (D, 1, H, W): slice j gets noise field j
    assert got.shape == volume.shape and got.abs().mean() > 0.01
    torch.testing.assert_close(got, reference, atol=1e-6, rtol=0)
    assert torch.equal(scripted, got)
    torch.testing.assert_close(slices.permute(1, 2, 3, 0)[None], got)


def test_reconstruction_output_and_checks() -> None:
    process = DiffusionProcess(DiffusionConfig(noise_type="gaussian"))
    masks = patch_masks(16, 16, 8, 8)
    noise = process.noise_like(torch.zeros(3, 1, 16, 16), generator=torch.Generator().manual_seed(0))
    common = dict(
        masks=masks, noise=noise, t_index=299, alpha_bar=float(process.alphas_cumprod[299]), **SMALL
    )
    unet = _randomise(DiffusionUNet(**SMALL))
    recon = PatchedAnomalyUNet(anomaly_map=False, **common)
    recon.load_state_dict(unet.state_dict())
    x = torch.rand(3, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    reference = PatchedDiffusionInferer(process, t_test=300, patch_size=8)
    with torch.no_grad():
        expected = reference.reconstruct(x, unet, generator=torch.Generator().manual_seed(0))
        torch.testing.assert_close(recon.eval()(x), expected, atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="cover every pixel"):
        PatchedAnomalyUNet(**{**common, "masks": torch.zeros(1, 1, 16, 16)})
    with pytest.raises(ValueError, match="noise must be"):
        PatchedAnomalyUNet(**{**common, "noise": torch.zeros(3, 1, 8, 8)})


def test_load_state_dict_unwraps_the_bundle_model_file(tmp_path: Path) -> None:
    """MONAI's ``ckpt_export`` loads the whole ``models/model.pt`` dict into ``network_def``."""
    from pddpm_monai.methods.checkpoint import export_bundle_model

    model_pt = export_bundle_model(_checkpoint(tmp_path, "pddpm", patch_size=16), tmp_path / "model.pt")
    whole = torch.load(model_pt, weights_only=True)
    net = inference_network(model_pt, spatial_size=(32, 32, 2))
    fresh = PatchedAnomalyUNet(masks=net.masks, noise=net.noise, t_index=net.t_index, alpha_bar=0.5, **TINY)
    fresh.load_state_dict(whole)  # strict
    for key, value in net.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value)
    with pytest.raises(RuntimeError, match="Unexpected key"):
        fresh.load_state_dict({**whole["model"], "extra.weight": torch.zeros(1)})


def test_inference_network_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not found"):
        inference_network(tmp_path / "missing.pt")
    with pytest.raises(InputError, match="patch_size"):
        inference_network(_checkpoint(tmp_path, "ddpm"), patch_size=8)
