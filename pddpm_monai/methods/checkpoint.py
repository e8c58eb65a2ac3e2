"""Self-describing checkpoints, and the scorer that evaluation and ``pddpm reconstruct`` use.

A checkpoint is a plain dict saved atomically with :func:`~pddpm_monai.utils.save_checkpoint` and
read with :func:`~pddpm_monai.utils.load_checkpoint` (``torch.load(..., weights_only=True)``)::

    {"format": "pddpm-monai", "version": 2,
     "method": "pddpm",                      # a key of methods.METHODS
     "config": {...},                        # JSON-able: rebuilds the method and its network
     "network": {...},                       # the method's state_dict (all its networks)
     "optimizer": {...},                     # optimiser state (training checkpoints)
     "trainer": {"epoch", "iteration", "epoch_length", "max_epochs", "best_val_loss", "best_epoch"},
     "rng": ByteTensor,                      # state of the training generator
     "train_config": {...}}                  # the TrainConfig of the run (information)

:func:`load_method` rebuilds the method from it; :func:`load_scorer` wraps it as a volume scorer:
``scorer(image (1,H,W,D), mask) -> (reconstruction, anomaly_map)`` on the model grid.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from monai.data import MetaTensor
from torch import Tensor

from pddpm_monai.inferers import reconstruct_volume
from pddpm_monai.methods.base import METHODS, Method, build_method
from pddpm_monai.methods.config import apply_overrides
from pddpm_monai.utils import InputError, first_line, load_checkpoint, resolve_device, save_checkpoint

__all__ = [
    "MODEL_KEY",
    "export_bundle_model",
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_VERSION",
    "make_checkpoint",
    "save_method_checkpoint",
    "read_checkpoint",
    "upgrade_checkpoint",
    "inference_method",
    "load_method",
    "VolumeScorer",
    "load_scorer",
]

CHECKPOINT_FORMAT = "pddpm-monai"
#: 2: the diffusion defaults became the authors' (cosine schedule, raw simplex amplitude) and
#: ``diffusion.simplex.standardize`` exists; version-1 checkpoints are read as trained (see
#: :func:`upgrade_checkpoint`)
CHECKPOINT_VERSION = 2
#: what version-1 checkpoints were trained with where their config is silent
_V1_DIFFUSION = {"schedule": "linear_beta", "beta_start": 1e-4, "beta_end": 2e-2}
_V1_SIMPLEX = {"standardize": True}
#: keys every checkpoint must have
REQUIRED_KEYS = ("format", "version", "method", "config", "network")
#: key of the network weights in a bundle's ``models/model.pt`` (what MONAI Label and ``CheckpointLoader`` read)
MODEL_KEY = "model"


def make_checkpoint(
    method: Method,
    *,
    optimizer: torch.optim.Optimizer | None = None,
    trainer: Mapping[str, Any] | None = None,
    rng: torch.Generator | None = None,
    train_config: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The checkpoint dict of ``method`` (weights on the CPU) and optionally its training state.

    Args:
        method: the method (any registered :class:`Method`).
        optimizer: its optimiser, to resume training.
        trainer: plain numbers of the trainer state (epoch, iteration, best validation loss, ...).
        rng: the training generator, whose state is saved.
        train_config: the run's training configuration as a plain dict.

    Returns:
        a dict that ``torch.load(..., weights_only=True)`` can read.
    """
    optional = {
        "optimizer": None if optimizer is None else optimizer.state_dict(),
        "trainer": None if trainer is None else dict(trainer),
        "rng": None if rng is None else rng.get_state(),
        "train_config": None if train_config is None else dict(train_config),
    }
    return {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "method": method.name,
        "config": method.config_dict(),
        "network": {k: v.detach().cpu() for k, v in method.state_dict().items()},
        **{k: v for k, v in optional.items() if v is not None},
    }


def save_method_checkpoint(path: str | os.PathLike, method: Method, **kwargs: Any) -> Path:
    """Save :func:`make_checkpoint` ``(method, **kwargs)`` atomically to ``path``."""
    return save_checkpoint(make_checkpoint(method, **kwargs), path)


def read_checkpoint(path: str | os.PathLike, *, method: str | None = None) -> dict[str, Any]:
    """Load and validate a pddpm checkpoint (``weights_only=True``).

    Args:
        path: the checkpoint file.
        method: the expected method name; ``None`` accepts any registered method.

    Raises:
        InputError: naming ``path`` when it is missing, corrupt, not a pddpm checkpoint, of a newer
            version, of an unknown method, or of another method than ``method``.
    """
    state = load_checkpoint(path)
    missing = [k for k in REQUIRED_KEYS if k not in state]
    if missing or state.get("format") != CHECKPOINT_FORMAT:
        raise InputError(path, f"not a pddpm-monai checkpoint (missing {', '.join(missing) or 'format tag'})")
    if int(state["version"]) > CHECKPOINT_VERSION:
        raise InputError(
            path,
            f"checkpoint version {state['version']} is newer than this pddpm-monai ({CHECKPOINT_VERSION})",
        )
    state = upgrade_checkpoint(state)
    name = state["method"]
    if name not in METHODS:
        raise InputError(
            path, f"checkpoint of unknown method {name!r}; available: {', '.join(sorted(METHODS))}"
        )
    if method is not None and name != method:
        raise InputError(path, f"checkpoint holds method {name!r}, but {method!r} was requested")
    return state


def upgrade_checkpoint(state: dict[str, Any]) -> dict[str, Any]:
    """Fill in what an older checkpoint's config leaves to defaults that have changed since.

    Version 1 (before the diffusion defaults followed the authors' code) trained the diffusion
    models with the linear 1e-4..2e-2 schedule and unit-variance simplex noise; its config records
    the schedule but not the noise amplitude, which is now a config field whose default changed.
    The upgraded config says what the network was trained with, so it evaluates as trained.

    Args:
        state: a checkpoint dict (not modified).

    Returns:
        the dict with ``config`` completed and ``version`` set to :data:`CHECKPOINT_VERSION`.
    """
    if int(state["version"]) >= CHECKPOINT_VERSION:
        return state
    config = dict(state["config"])
    if isinstance(config.get("diffusion"), Mapping):
        diffusion = {**_V1_DIFFUSION, **config["diffusion"]}
        diffusion["simplex"] = {**_V1_SIMPLEX, **diffusion.get("simplex", {})}
        config["diffusion"] = diffusion
    return {**state, "config": config, "version": CHECKPOINT_VERSION}


def method_from_checkpoint(
    state: Mapping[str, Any],
    path: str | os.PathLike,
    *,
    overrides: Mapping[str, Any] | None = None,
) -> Method:
    """Rebuild a method from a checkpoint dict and load its weights.

    Raises:
        InputError: naming ``path`` when the config is invalid or the weights do not fit the
            architecture the config describes.
    """
    config = apply_overrides(state["config"], overrides or {})
    method = build_method(state["method"], config, source=str(path))
    try:
        method.load_state_dict(state["network"], strict=True)
    except (RuntimeError, KeyError, TypeError) as err:
        raise InputError(
            path, f"weights do not match the {state['method']} architecture: {first_line(err)}"
        ) from None
    return method


def inference_method(path: str | os.PathLike, *, method: str | None = None, **options: Any) -> Method:
    """The trained method of a checkpoint with some of its ``inference_options`` changed.

    Args:
        path: the checkpoint.
        method: the expected method name (``None``: any).
        options: inference options (``t_test``, ``patch_size``, ...); ``None`` keeps the trained value.

    Raises:
        InputError: naming ``path`` for a bad checkpoint, a method mismatch, or an option that the
            method does not have (``patch_size`` for ``ddpm``).
    """
    state = read_checkpoint(path, method=method)
    allowed = METHODS[state["method"]].inference_options
    for key, value in options.items():
        if value is not None and key not in allowed:
            raise InputError(path, f"option {key} does not apply to method {state['method']!r}")
    return method_from_checkpoint(state, path, overrides=options)


def load_method(
    path: str | os.PathLike,
    *,
    device: str | torch.device = "cpu",
    method: str | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Method:
    """Rebuild the trained method stored in a checkpoint, in eval mode on ``device``.

    Args:
        path: the checkpoint (``best.pt`` or ``last.pt`` of a training run).
        device: where to put the method.
        method: the expected method name (``None``: whatever the checkpoint holds).
        overrides: config changes applied before building (dotted keys reach nested options).

    Raises:
        InputError: naming ``path`` for an unreadable checkpoint or a method/architecture mismatch.
    """
    state = read_checkpoint(path, method=method)
    return method_from_checkpoint(state, path, overrides=overrides).to(device).eval()


def export_bundle_model(checkpoint: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Write the bundle's ``models/model.pt`` from a training checkpoint (``best.pt`` / ``last.pt``).

    The file is a pddpm-monai checkpoint without optimiser state (``load_scorer`` and
    ``pddpm evaluate`` read it) that also holds the UNet's ``state_dict`` under ``"model"``: the key
    that MONAI Label's ``BundleInferTask`` and MONAI's ``CheckpointLoader`` load into ``network_def``.

    Args:
        checkpoint: the training checkpoint.
        out: the ``model.pt`` to write (atomically).

    Returns:
        ``out``.
    """
    state = read_checkpoint(checkpoint)
    method = method_from_checkpoint(state, checkpoint)
    exported = make_checkpoint(method, trainer=state.get("trainer"), train_config=state.get("train_config"))
    network = getattr(method, "network", None)
    if network is None:
        raise InputError(checkpoint, f"method {method.name!r} has no single network to export")
    exported[MODEL_KEY] = {k: v.detach().cpu() for k, v in network.state_dict().items()}
    return save_checkpoint(exported, out)


class VolumeScorer:
    """A trained method as a volume scorer on the model grid.

    ``scorer(image, mask)`` reconstructs every axial slice (last axis) of ``image`` ``(1, H, W, D)``
    (or ``(H, W, D)``) in batches of ``slice_batch`` and returns ``(reconstruction, anomaly_map)``
    of the same shape, the anomaly map being ``|image - reconstruction|``; when a brain ``mask`` is
    given the anomaly map is zero outside it (post-processing erodes the mask further). Each call
    uses a fresh generator seeded with ``seed``: the same volume always gets the same scores.

    Args:
        method: the trained method.
        name: the scorer's name (tables, file names).
        device: where the method runs (``"auto"``: CUDA when available).
        slice_batch: slices per batch.
        seed: seed of the noise drawn for each volume.
    """

    def __init__(
        self,
        method: Method,
        *,
        name: str,
        device: str | torch.device = "cpu",
        slice_batch: int = 50,
        seed: int = 0,
    ) -> None:
        self.device = resolve_device(device)
        self.method = method.to(self.device).eval()
        self.name = name
        self.slice_batch = slice_batch
        self.seed = seed

    def __call__(self, image: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        volume = torch.as_tensor(image)
        volume = (volume.as_tensor() if isinstance(volume, MetaTensor) else volume).float()
        if volume.ndim not in (3, 4) or (volume.ndim == 4 and volume.shape[0] != 1):
            raise ValueError(f"expected a (1, H, W, D) or (H, W, D) volume, got shape {tuple(volume.shape)}.")
        out_device = volume.device
        generator = torch.Generator().manual_seed(self.seed)

        def slice_fn(slices: Tensor) -> Tensor:
            return self.method.reconstruct(slices.to(self.device), generator).to(out_device)

        recon = torch.as_tensor(reconstruct_volume(volume, slice_fn, slice_batch=self.slice_batch)).float()
        anomaly = (volume - recon).abs()
        if mask is not None:
            anomaly = anomaly * (torch.as_tensor(mask).to(out_device).reshape(anomaly.shape) > 0)
        return recon, anomaly

    def __repr__(self) -> str:
        return f"VolumeScorer(name={self.name!r}, method={self.method.name!r}, device={str(self.device)!r})"


def load_scorer(
    path: str | os.PathLike,
    *,
    t_test: int | None = None,
    patch_size: int | None = None,
    device: str | torch.device = "cpu",
    method: str | None = None,
    name: str | None = None,
    slice_batch: int = 50,
    seed: int = 0,
    patch_grid: str | None = None,
) -> VolumeScorer:
    """The volume scorer of a trained checkpoint (what ``pddpm evaluate`` and ``pddpm reconstruct`` call).

    Args:
        path: the checkpoint.
        t_test: test timestep to use instead of the trained config's (``None``: keep it).
        patch_size: patch size to use instead of the trained one (pDDPM only; ``None``: keep it).
        device: where the network runs.
        method: the expected method name (``None``: any).
        name: the scorer's name (``None``: the method name).
        slice_batch: slices per network batch.
        seed: seed of the test-time noise.
        patch_grid: ``"overlap"`` or ``"tile"`` instead of the trained grid (pDDPM only).

    Raises:
        InputError: naming ``path`` for a bad checkpoint, a method mismatch, or an option that the
            method does not have (``patch_size`` for ``ddpm``).
    """
    scorer_method = inference_method(
        path, method=method, t_test=t_test, patch_size=patch_size, patch_grid=patch_grid
    )
    return VolumeScorer(
        scorer_method, name=name or scorer_method.name, device=device, slice_batch=slice_batch, seed=seed
    )
