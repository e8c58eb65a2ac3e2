"""Fast paths of the patched inferer: channels-last fp32 and bf16 autocast against the fp32 reference.

Quality guard (issue 18): on a small synthetic case (toy brains with a bright lesion), the anomaly
map binarised at a threshold has Dice >= 0.98 against the fp32 eager mask, and the AUPRC of the
map against the lesion changes by less than 0.5 points. The Dice bound depends on the CPU's bf16
kernels: >= 0.99 where oneDNN emulates bf16 (AVX2, e.g. AMD EPYC Zen 3), 0.9888 with native
AVX512-BF16 kernels (AMD EPYC with avx512_bf16, 2026-12-04), where voxels at the 95th-percentile
threshold flip (max |map difference| 2.3e-4, AUPRC difference 0.0002).
"""

from __future__ import annotations

import copy

import pytest
import torch
from numpy.testing import assert_allclose

from pddpm_monai.diffusion import DiffusionProcess
from pddpm_monai.evaluation.metrics import average_precision
from pddpm_monai.inferers import PatchedDiffusionInferer
from pddpm_monai.inferers.precision import (
    get_inference_precision,
    precision_network,
    resolve_precision,
    set_inference_precision,
)
from pddpm_monai.networks import DiffusionUNet
from tests.engines.toys import TINY_NET, healthy_images, with_lesion
from tests.inferers.test_patched import CountingNetwork

PATCH, T_TEST, QUANTILE = 16, 250, 0.95


def _network() -> DiffusionUNet:
    net = DiffusionUNet(**TINY_NET).eval()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    return net


def _case() -> tuple[torch.Tensor, torch.Tensor]:
    images, masks = healthy_images(6, seed=3)
    return with_lesion(images, masks, seed=4)


def _anomaly_map(images, network, precision):
    inferer = PatchedDiffusionInferer(
        DiffusionProcess(), t_test=T_TEST, patch_size=PATCH, return_anomaly_map=True, precision=precision
    )
    with torch.inference_mode():
        return inferer(images, network, generator=torch.Generator().manual_seed(0))


def _dice(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(2 * (a & b).sum() / (a.sum() + b.sum()))


@pytest.fixture(scope="module")
def reference():
    images, lesions = _case()
    return images, lesions, _anomaly_map(images, _network(), "fp32")


@pytest.mark.parametrize("precision", ["auto", "bf16"])
def test_fast_path_keeps_the_binarised_anomaly_map(reference, precision):
    images, lesions, ref_map = reference
    fast_map = _anomaly_map(images, _network(), precision)
    assert fast_map.dtype == torch.float32
    threshold = torch.quantile(ref_map.flatten(), QUANTILE)
    ref_mask, fast_mask = ref_map > threshold, fast_map > threshold
    assert ref_mask.sum() > 0.04 * ref_map.numel()
    assert _dice(ref_mask, fast_mask) >= 0.98
    auprc = [average_precision(m.numpy(), lesions.numpy() > 0, voxels="all") for m in (ref_map, fast_map)]
    assert abs(auprc[0] - auprc[1]) < 0.005
    if precision == "auto":  # fp32 in another layout: the same numbers up to summation order
        assert_allclose(fast_map.numpy(), ref_map.numpy(), atol=1e-5)
    else:  # bf16 really changes the numbers (the guard above is not vacuous)
        assert (fast_map - ref_map).abs().max() > 1e-4


def _is_channels_last(module: torch.nn.Module) -> list[bool]:
    """For each 3x3 convolution with several input channels: is its weight channels-last?"""
    kernels = [p for p in module.parameters() if p.ndim == 4 and p.shape[1] > 1 and p.shape[-1] > 1]
    assert kernels
    return [p.is_contiguous(memory_format=torch.channels_last) for p in kernels]


def test_channels_last_runs_a_copy_and_leaves_the_network_as_it_is():
    net = _network()
    before = copy.deepcopy(net.state_dict())
    run = precision_network(net, "auto", "cpu")
    copies = [c.cell_contents for c in run.__closure__ or () if isinstance(c.cell_contents, torch.nn.Module)]
    assert len(copies) == 1 and copies[0] is not net
    assert all(_is_channels_last(copies[0]))
    assert not any(_is_channels_last(net))
    for key, value in net.state_dict().items():
        assert torch.equal(value, before[key]), key
    x, t = torch.rand(2, 1, 32, 32), torch.full((2,), 10)
    with torch.inference_mode():
        assert_allclose(run(x, t).numpy(), net(x, t).numpy(), atol=1e-5)


def test_precision_resolution_and_process_default():
    assert resolve_precision("fp32", "cpu") == (torch.float32, False)
    assert resolve_precision("auto", "cpu") == (torch.float32, True)
    assert resolve_precision("bf16", "cpu") == (torch.bfloat16, True)
    assert resolve_precision("auto", "cuda") == (torch.float32, False)  # the reference on a GPU
    assert get_inference_precision() == "fp32"  # library default: the reference
    assert resolve_precision(None, "cpu") == (torch.float32, False)
    try:
        set_inference_precision("auto")
        assert resolve_precision(None, "cpu") == (torch.float32, True)
    finally:
        set_inference_precision("fp32")
    with pytest.raises(ValueError, match="precision must be one of"):
        set_inference_precision("fp16")


def test_fp32_is_the_plain_network_and_batching_is_unchanged():
    net = _network()
    assert precision_network(net, "fp32", "cpu") is net
    counting = CountingNetwork(net)
    images, _ = _case()
    inferer = PatchedDiffusionInferer(DiffusionProcess(), t_test=T_TEST, patch_size=PATCH, max_batch=8)
    with torch.inference_mode():
        inferer(images, counting, generator=torch.Generator().manual_seed(0))
    assert counting.sizes == [8, 8, 8]  # 6 slices x K=4 positions in chunks of 8


def test_cli_precision_option_sets_the_process_default(monkeypatch, tmp_path):
    from pddpm_monai import cli

    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name in ("reconstruct", "evaluate", "detect", "demo"):
        assert name in cli.PRECISION_COMMANDS
    for name in cli.PRECISION_COMMANDS:
        option = next(a for a in sub.choices[name]._actions if "--precision" in a.option_strings)
        assert option.default == "auto" and tuple(option.choices) == ("auto", "fp32", "bf16")
    seen = []
    sub.choices["demo"].set_defaults(func=lambda args: seen.append(get_inference_precision()) or 0)
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    monkeypatch.setenv("OMP_NUM_THREADS", str(torch.get_num_threads()))
    try:
        assert cli.main(["demo", "--out", str(tmp_path)]) == 0
        assert cli.main(["demo", "--out", str(tmp_path), "--precision", "bf16"]) == 0
    finally:
        set_inference_precision("fp32")
    assert seen == ["auto", "bf16"]
