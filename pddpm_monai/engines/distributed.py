"""Multi-GPU / multi-node training helpers (``torchrun`` + DistributedDataParallel).

What the bundle's ``configs/multi_gpu_train.json`` wires on top of ``configs/train.json``:

- :func:`init_distributed` joins the process group that ``torchrun`` describes in the environment
  (``nccl`` on CUDA, ``gloo`` on the CPU) and returns this rank's device;
- :func:`partition_items` gives every rank its own share of the training volumes (MONAI
  ``partition_dataset``, even-divisible so that every rank runs the same number of iterations) and
  records which volumes each rank got;
- :class:`DistributedTrainingStep` runs the method's training step through
  ``DistributedDataParallel`` so that gradients are averaged over the ranks;
- :func:`main_process_handlers` keeps checkpoints, validation, TensorBoard and log lines on rank 0.

Outside ``torchrun`` every helper degrades to the single-process behaviour (rank 0 of 1).

Example (2 processes on the CPU, gloo)::

    torchrun --nproc_per_node 2 -m monai.bundle run training \\
        --config_file "['configs/train.json','configs/multi_gpu_train.json']" --data_root ROOT
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
import torch.distributed as dist
from monai.data import partition_dataset
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from pddpm_monai.engines.steps import TrainingStep
from pddpm_monai.methods import Method, StepOutput

__all__ = [
    "Backend",
    "is_distributed",
    "get_rank",
    "get_world_size",
    "is_main_process",
    "local_device",
    "init_distributed",
    "finalize_distributed",
    "rank_generator",
    "partition_items",
    "main_process_handlers",
    "main_process_writer",
    "read_rank_records",
    "DistributedTrainingStep",
]

Backend = Literal["auto", "nccl", "gloo"]


def is_distributed() -> bool:
    """Whether a process group is initialised (``torchrun`` + :func:`init_distributed`)."""
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    """This process's rank (0 outside a process group)."""
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    """Number of processes (1 outside a process group)."""
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    """Rank 0: the process that writes checkpoints and logs."""
    return get_rank() == 0


def local_device() -> torch.device:
    """``cuda:<LOCAL_RANK>`` when CUDA is available, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def init_distributed(backend: Backend = "auto") -> torch.device:
    """Join the ``torchrun`` process group (once) and return this rank's device.

    Args:
        backend: ``"auto"`` (``nccl`` with CUDA, ``gloo`` on the CPU), ``"nccl"`` or ``"gloo"``.

    Returns:
        the device of this rank (its CUDA device is made current).

    Raises:
        RuntimeError: when the ``torchrun`` environment (``RANK``, ``WORLD_SIZE``) is missing.
    """
    if backend not in ("auto", "nccl", "gloo"):
        raise ValueError(f"backend must be 'auto', 'nccl' or 'gloo', got {backend!r}.")
    device = local_device()
    if not is_distributed():
        if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
            raise RuntimeError(
                "multi_gpu_train.json needs the torchrun environment: run it with "
                "`torchrun --nproc_per_node N -m monai.bundle run training --config_file ...`."
            )
        chosen = backend if backend != "auto" else ("nccl" if device.type == "cuda" else "gloo")
        dist.init_process_group(backend=chosen)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return device


def finalize_distributed() -> None:
    """Leave the process group (no-op outside one)."""
    if is_distributed():
        dist.destroy_process_group()


def rank_generator(seed: int) -> torch.Generator:
    """A CPU generator seeded with ``seed + rank``: each rank draws its own noise and timesteps.

    On a single process this is ``torch.Generator().manual_seed(seed)``, as ``pddpm train`` uses.
    """
    return torch.Generator().manual_seed(int(seed) + get_rank())


def partition_items(
    items: Sequence[Mapping[str, Any]],
    *,
    seed: int = 0,
    shuffle: bool = True,
    even_divisible: bool = True,
    record_dir: str | os.PathLike | None = None,
) -> list[Mapping[str, Any]]:
    """This rank's share of a data list (MONAI ``partition_dataset``); all of it on one process.

    Args:
        items: the data list (dicts with at least ``"name"``).
        seed: seed of the shuffle (the same on every rank, so the shares are disjoint).
        shuffle: shuffle before partitioning.
        even_divisible: repeat items so that every rank gets as many (equal iterations per epoch,
            which DDP needs), also when there are fewer items than ranks.
        record_dir: when given, each rank writes ``rank<r>.json`` there with the names it got.

    Returns:
        the items of this rank.
    """
    world, rank = get_world_size(), get_rank()
    if world == 1:
        share = list(items)
    else:
        data = list(items)
        if even_divisible and 0 < len(data) < world:  # fewer items than ranks: every rank gets one
            data = (data * world)[:world]
        parts = partition_dataset(
            data=data, num_partitions=world, shuffle=shuffle, seed=seed, even_divisible=even_divisible
        )
        share = list(parts[rank])
    if record_dir is not None:
        path = Path(record_dir) / f"rank{rank}.json"
        from pddpm_monai.utils import save_json

        save_json({"rank": rank, "world_size": world, "names": [str(i.get("name")) for i in share]}, path)
    return share


def main_process_handlers(handlers: Sequence[Any], others: Sequence[Any] = ()) -> list[Any]:
    """``handlers`` on rank 0, ``others`` on the other ranks (rank-0-only logging and checkpoints)."""
    return list(handlers) if is_main_process() else list(others)


class _NullSummaryWriter:
    """A stand-in for TensorBoard's ``SummaryWriter`` on ranks > 0: every method does nothing."""

    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: None


def main_process_writer(log_dir: str | os.PathLike) -> Any:
    """A TensorBoard ``SummaryWriter`` on rank 0; a writer that writes nothing on the other ranks."""
    if not is_main_process():
        return _NullSummaryWriter()
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(log_dir=str(log_dir))


class _StepModule(nn.Module):
    """``forward(images, generator) = method.training_step(images, generator)``, for DDP to wrap."""

    def __init__(self, method: Method) -> None:
        super().__init__()
        self.method = method

    def forward(self, images: Tensor, generator: torch.Generator | None = None) -> StepOutput:
        return self.method.training_step(images, generator)


class DistributedTrainingStep(TrainingStep):
    """:class:`~pddpm_monai.engines.steps.TrainingStep` whose forward pass runs through DDP.

    The method's weights are broadcast from rank 0 when this is built, and gradients are averaged
    over the ranks in ``backward``. Checkpoints keep saving ``method`` itself (no ``module.``
    prefixes). Methods with a custom ``train_iteration`` (several optimisers) are not supported.

    Args: as :class:`~pddpm_monai.engines.steps.TrainingStep`.
    """

    def __init__(self, method: Method, optimizer: torch.optim.Optimizer, **kwargs: Any) -> None:
        super().__init__(method, optimizer, **kwargs)
        if type(method).train_iteration is not Method.train_iteration:
            raise ValueError(
                f"method {method.name!r} has its own train_iteration: DDP training is not supported."
            )
        ids = [self.device] if self.device.type == "cuda" else None
        self.ddp = DistributedDataParallel(_StepModule(method), device_ids=ids)

    def step(self, images: Tensor) -> StepOutput:
        return self.method.train_iteration(
            images, self.optimizer, generator=self.generator, autocast=self.autocast(), forward=self.ddp
        )


def read_rank_records(record_dir: str | os.PathLike) -> dict[int, list[str]]:
    """``rank -> names`` from the ``rank<r>.json`` files that :func:`partition_items` wrote."""
    out = {}
    for path in sorted(Path(record_dir).glob("rank*.json")):
        data = json.loads(path.read_text(encoding="utf-8"))
        out[int(data["rank"])] = list(data["names"])
    return out
