"""Numeric precision and memory layout of the network calls at inference (the fast paths).

``precision`` of the diffusion inferers:

- ``"fp32"``: the reference: float32, the network's own (contiguous) layout, eager;
- ``"bf16"``: ``torch.autocast`` to bfloat16 around each network call, channels-last layout on the
  CPU; never chosen automatically (on a CPU without AVX512-BF16/AMX, e.g. AMD EPYC Zen 3, oneDNN
  emulates bfloat16 and a pass is ~10-30x slower; on an H200 bf16 + channels_last was slower than
  fp32, benchmarks/RESULTS.md); allowed where the quality guard holds (binarised anomaly map
  Dice >= 0.98 against fp32, tests/inferers/test_precision.py);
- ``"auto"``: float32 with channels-last convolutions on the CPU (oneDNN's preferred layout; the
  same numbers up to float32 summation order, <= 1e-5), the reference elsewhere.

The process-wide default is ``"fp32"`` for library use (bundles, tests: the reference numbers);
the ``pddpm`` commands that run inference set it to ``--precision`` (default ``"auto"``) through
:func:`set_inference_precision`, in the way ``torch.set_float32_matmul_precision`` works: an
inferer built with ``precision=None`` reads it at each call, one given explicitly wins.

With channels-last, the network runs as a channels-last copy made per call (the caller's module is
left as it is, so training or a TorchScript export of it is unaffected; copying the paper's UNet
costs well under 1 % of the 200 passes of a volume on a CPU). The weights must be converted too:
the first convolution has one input channel, so a channels-last input alone is still contiguous.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable
from typing import Literal, get_args

import torch
from torch import Tensor, nn

__all__ = [
    "Precision",
    "get_inference_precision",
    "precision_network",
    "resolve_precision",
    "set_inference_precision",
]

Precision = Literal["auto", "fp32", "bf16"]
PRECISIONS: tuple[str, ...] = get_args(Precision)
Network = Callable[[Tensor, Tensor], Tensor]

_default: list[str] = ["fp32"]


def _check(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}.")
    return precision


def set_inference_precision(precision: Precision) -> None:
    """Set the process-wide default of the inferers built with ``precision=None``."""
    _default[0] = _check(precision)


def get_inference_precision() -> Precision:
    """The process-wide default (``"fp32"`` unless :func:`set_inference_precision` changed it)."""
    return _default[0]  # type: ignore[return-value]


def resolve_precision(precision: Precision | None, device: torch.device | str) -> tuple[torch.dtype, bool]:
    """``(compute dtype, channels_last)`` of ``precision`` (``None``: the default) on ``device``.

    Raises:
        ValueError: for an unknown precision.
    """
    chosen = _check(get_inference_precision() if precision is None else precision)
    on_cpu = torch.device(device).type == "cpu"
    if chosen == "fp32":
        return torch.float32, False
    if chosen == "bf16":
        return torch.bfloat16, on_cpu
    return torch.float32, on_cpu


def _channels_last(network: Network) -> Network:
    """A channels-last copy of a module (itself when already so, or when not a copyable module)."""
    if not isinstance(network, nn.Module):
        return network
    if all(p.ndim != 4 or p.is_contiguous(memory_format=torch.channels_last) for p in network.parameters()):
        return network
    try:
        return copy.deepcopy(network).to(memory_format=torch.channels_last)
    except Exception:  # e.g. a wrapper that cannot be copied: run it as it is (the reference layout)
        return network


def precision_network(network: Network, precision: Precision | None, device: torch.device | str) -> Network:
    """``network`` called in ``precision`` (see the module docstring); the plain network for fp32.

    The returned callable gives the network's output dtype (bfloat16 under autocast); callers
    accumulate in float32.
    """
    dtype, channels_last = resolve_precision(precision, device)
    if dtype == torch.float32 and not channels_last:
        return network
    if channels_last:
        network = _channels_last(network)
    device_type = torch.device(device).type

    def run(x: Tensor, timesteps: Tensor) -> Tensor:
        if channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        context = (
            torch.autocast(device_type=device_type, dtype=dtype)
            if dtype != torch.float32
            else contextlib.nullcontext()
        )
        with context:
            return network(x, timesteps)

    return run
