"""Components that the MONAI bundle ``bundles/pddpm_brain_uad`` wires with ``_target_``.

The bundle configs hold no logic of their own: every step that is more than a constructor call is
a small documented object here, built on the same pieces as ``pddpm train`` / ``pddpm evaluate``:

- data: :func:`fold_items` (the split CSV of a fold, one-line errors for a data root without splits),
  :func:`inference_items` (one scan or a folder), :func:`run_preprocessing` (raw dataset -> data root);
- method: :func:`build_bundle_method` (the method from the bundle's flat hyper-parameter keys);
- training: :class:`TrainingStep` / :class:`ValidationStep` (``iteration_update`` of MONAI's
  ``SupervisedTrainer`` / ``SupervisedEvaluator``), :class:`SetEpochHandler` (fresh slice draws per
  epoch), :class:`CheckpointHandler` (``last.pt`` / ``best.pt``, resume, rank-0-only writes, and the
  bundle's ``models/model.pt`` at the end), small ``output_transform`` / ``metric_cmp_fn`` helpers;
- deployment: :func:`export_bundle_model` (``models/model.pt``: a self-describing pddpm checkpoint
  that also holds the UNet weights under ``"model"``, the key MONAI Label and ``CheckpointLoader``
  read), :func:`checkpoint_inferer` (the method's inferer with the trained diffusion settings),
  :func:`inference_network` (``network_def``: the checkpoint's UNet, also callable with one tensor),
  :func:`read_threshold` (the binarisation threshold of ``run evaluating``);
- evaluation: :class:`BundleEvaluation` (``evaluate_method`` + the Table-1 row + the threshold file).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from ignite.engine import Engine, Events
from torch import Tensor

from pddpm_monai.data.datalist import read_split_csv, split_path
from pddpm_monai.engines.checkpoint import make_checkpoint, method_from_checkpoint, read_checkpoint
from pddpm_monai.engines.methods import Method, StepOutput
from pddpm_monai.engines.trainer import TrainingCheckpointer
from pddpm_monai.inferers import DiffusionReconstructionInferer, PatchedDiffusionInferer
from pddpm_monai.networks.patched_anomaly import PatchedAnomalyUNet
from pddpm_monai.utils import InputError, save_checkpoint, save_json

__all__ = [
    "MODEL_KEY",
    "THRESHOLD_FILE",
    "fold_items",
    "output_loss",
    "output_loss_tensor",
    "no_output",
    "lower_is_better",
    "build_bundle_method",
    "inference_items",
    "autocast_context",
    "TrainingStep",
    "ValidationStep",
    "SetEpochHandler",
    "CheckpointHandler",
    "export_bundle_model",
    "checkpoint_inferer",
    "MODEL_GRID",
    "inference_network",
    "read_threshold",
    "run_preprocessing",
    "BundleEvaluation",
]

#: key of the network weights in ``models/model.pt`` (what MONAI Label and ``CheckpointLoader`` read)
MODEL_KEY = "model"
#: file (beside ``model.pt``) in which ``run evaluating`` stores the validation thresholds
THRESHOLD_FILE = "threshold.json"
LOGGER_NAME = "pddpm"

FoldPart = Literal["train", "val"]


def fold_items(
    data_root: str | os.PathLike | None, fold: int, part: FoldPart = "train"
) -> list[dict[str, Any]]:
    """The data list of a fold's IXI training or validation split (``splits/IXI_<part>_fold<k>.csv``).

    Args:
        data_root: the data root (DESIGN.md layout).
        fold: the cross-validation fold.
        part: ``"train"`` or ``"val"``.

    Returns:
        dicts with ``name``, ``image``, ``mask`` (absolute paths), ...

    Raises:
        InputError: no data root given, data root or ``splits/`` missing, or an empty split.
    """
    if data_root in (None, ""):
        raise InputError("data_root", "no data root given: pass --data_root ROOT")
    root = Path(data_root)
    if not root.is_dir():
        raise InputError(root, "data root not found")
    if part not in ("train", "val"):
        raise ValueError(f"part must be 'train' or 'val', got {part!r}.")
    csv = split_path(root, f"IXI_{part}_fold{int(fold)}")
    items = read_split_csv(csv, root)
    if not items:
        raise InputError(csv, f"the {part} split of fold {fold} is empty")
    return items


def output_loss(output: Mapping[str, Any]) -> float:
    """The ``"loss"`` of a step output as a float (``output_transform`` of the log handlers)."""
    return float(output["loss"])


def output_loss_tensor(output: Mapping[str, Any]) -> Tensor:
    """The ``"loss"`` of a step output as a tensor (``output_transform`` of ignite's ``Average``)."""
    return torch.as_tensor(output["loss"]).detach().float()


def no_output(output: Any) -> None:
    """Log nothing per iteration (``output_transform`` of epoch-level handlers of the evaluator)."""
    return None


def lower_is_better(current: float, best: float) -> bool:
    """``metric_cmp_fn`` of the validation loss: a lower loss is better."""
    return current < best


def build_bundle_method(name: str, options: Mapping[str, Any], device: str | torch.device = "cpu") -> Method:
    """Build a registered method from the bundle's flat hyper-parameter keys, on ``device``.

    The bundle lists every option of every method (``patch_size``, ``sampling`` ... for pDDPM); the
    options that the chosen method's configuration does not have are dropped (DDPM has no patches),
    so ``--method ddpm`` works with the same config file.

    Args:
        name: a key of :data:`~pddpm_monai.engines.methods.METHODS`.
        options: nested config dict (``{"patch_size": 48, "network": {"model_channels": 128}}``).
        device: where to put the method.
    """
    from pddpm_monai.engines.methods import METHODS, build_method

    if name not in METHODS:
        raise InputError("method", f"unknown method {name!r}; available: {', '.join(sorted(METHODS))}")
    kept = _known_fields(METHODS[name].config_class, options)
    return build_method(name, kept, source="bundle hyper-parameters").to(device)


def _known_fields(cls: type, options: Mapping[str, Any]) -> dict[str, Any]:
    import dataclasses
    import typing

    hints = typing.get_type_hints(cls)
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name not in options:
            continue
        value, hint = options[f.name], hints[f.name]
        if dataclasses.is_dataclass(hint) and isinstance(value, Mapping):
            value = _known_fields(hint, value)
        out[f.name] = list(value) if isinstance(value, tuple) else value
    return out


def inference_items(image: str | None = None, dataset_dir: str | None = None) -> list[dict[str, str]]:
    """The data list of ``run inference``: one scan (``image``) or every scan in ``dataset_dir``.

    A scan is a NIfTI, NRRD or MetaImage file, or a folder holding one DICOM series
    (:mod:`~pddpm_monai.transforms.scan_io`). In ``dataset_dir``, every file with such a suffix and
    every sub-folder holding DICOM files is a scan.

    Raises:
        InputError: when neither is given, the scan does not exist or has an unknown format, or the
            folder has no scan.
    """
    from pddpm_monai.transforms.scan_io import SCAN_SUFFIXES, is_scan_path

    if image:
        path = Path(image)
        if not path.exists():
            raise InputError(image, "scan not found")
        if not is_scan_path(path):
            raise InputError(
                image, f"unsupported scan format (expected {', '.join(SCAN_SUFFIXES)} or a DICOM folder)"
            )
        return [{"image": str(image)}]
    if dataset_dir:
        import SimpleITK as sitk

        folder = Path(dataset_dir)
        if not folder.is_dir():
            raise InputError(folder, "dataset_dir not found")
        scans = sorted(
            p
            for p in folder.iterdir()
            if (p.is_file() and p.name.lower().endswith(SCAN_SUFFIXES))
            or (p.is_dir() and sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(p)))
        )
        if not scans:
            raise InputError(
                folder, f"no scans ({', '.join(SCAN_SUFFIXES)} files or DICOM series folders) in dataset_dir"
            )
        return [{"image": str(p)} for p in scans]
    raise InputError(
        "image", "no input: pass --image SCAN (a file or a DICOM folder) or --dataset_dir FOLDER"
    )


def autocast_context(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA when ``enabled``; nothing on the CPU."""
    if enabled and torch.device(device).type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


class TrainingStep:
    """``iteration_update`` of the bundle's ``SupervisedTrainer``: one optimisation step of a method.

    Args:
        method: the method being trained (already on ``device``).
        optimizer: its optimiser (``method.configure_optimizer(lr)``).
        generator: CPU generator of the step's random draws (timesteps, noise, patch positions).
        device: where the batches go.
        amp: bf16 autocast on CUDA (opt-in; fp32 as the authors train).

    Returns (when called with ``(engine, batch)``): ``{"loss": scalar, "images": {...}}``.
    """

    def __init__(
        self,
        method: Method,
        optimizer: torch.optim.Optimizer,
        *,
        generator: torch.Generator | None = None,
        device: str | torch.device = "cpu",
        amp: bool = False,
    ) -> None:
        self.method, self.optimizer = method, optimizer
        self.generator = generator if generator is not None else torch.Generator()
        self.device = torch.device(device)
        self.amp = amp

    def autocast(self) -> contextlib.AbstractContextManager:
        return autocast_context(self.device, self.amp)

    def step(self, images: Tensor) -> StepOutput:
        """One optimisation step on ``(B, 1, H, W)`` slices."""
        return self.method.train_iteration(
            images, self.optimizer, generator=self.generator, autocast=self.autocast()
        )

    def __call__(self, engine: Engine, batch: Mapping[str, Tensor]) -> dict[str, Any]:
        out = self.step(batch["image"].to(self.device, non_blocking=True))
        return {"loss": out.loss, "images": out.images}


class ValidationStep:
    """``iteration_update`` of the validation ``SupervisedEvaluator``: the training loss, no gradient.

    The noise generator is re-seeded with ``seed`` at the first iteration of every validation run,
    so that the validation losses of different epochs compare.

    Args:
        method: the method.
        device: where the batches go.
        amp: bf16 autocast on CUDA (opt-in; fp32 as the authors train).
        seed: seed of the validation noise.
    """

    def __init__(
        self, method: Method, *, device: str | torch.device = "cpu", amp: bool = False, seed: int = 0
    ):
        self.method = method
        self.device = torch.device(device)
        self.amp, self.seed = amp, seed
        self.generator = torch.Generator()

    def __call__(self, engine: Engine, batch: Mapping[str, Tensor]) -> dict[str, Any]:
        if engine.state.iteration == 1:
            self.generator.manual_seed(self.seed)
        images = batch["image"].to(self.device, non_blocking=True)
        with autocast_context(self.device, self.amp):
            loss = self.method.validation_loss(images, self.generator)
        return {"loss": loss.detach().float()}


class SetEpochHandler:
    """Calls ``dataset.set_epoch(epoch)`` at the start of every epoch (fresh random slices).

    Args:
        dataset: a dataset with ``set_epoch`` (e.g. ``RandomSliceDataset``).
    """

    def __init__(self, dataset: Any) -> None:
        if not hasattr(dataset, "set_epoch"):
            raise TypeError(f"{type(dataset).__name__} has no set_epoch().")
        self.dataset = dataset

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self)

    def __call__(self, engine: Engine) -> None:
        self.dataset.set_epoch(engine.state.epoch)


class CheckpointHandler:
    """Checkpoints of a bundle training run: resume, ``last.pt`` / ``best.pt``, ``model.pt``.

    Attached to the trainer (as a ``train_handlers`` entry) it

    - at ``STARTED``, on every rank: loads ``<out_dir>/last.pt`` when ``resume`` and it exists
      (weights, optimiser, generator, iteration, best validation loss);
    - on rank 0 only: writes ``last.pt`` after every epoch (after validation when the
      ``ValidationHandler`` comes first in the handler list), ``best.pt`` when the validation loss
      improves, and at ``COMPLETED`` exports the best (else last) checkpoint to ``model_path``
      with :func:`export_bundle_model`.

    Args:
        out_dir: folder of ``last.pt`` / ``best.pt``.
        method: the trained method.
        optimizer: its optimiser.
        generator: the training generator (its state is saved).
        evaluator: the validation evaluator (``None``: no ``best.pt``).
        model_path: where to export the final model (``None``: no export).
        resume: continue from ``last.pt`` when present.
        every: also write ``last.pt`` every N iterations (0: only after epochs).
        train_config: facts about the run stored in every checkpoint.
    """

    def __init__(
        self,
        out_dir: str | os.PathLike,
        method: Method,
        optimizer: torch.optim.Optimizer,
        generator: torch.Generator,
        *,
        evaluator: Engine | None = None,
        model_path: str | os.PathLike | None = None,
        resume: bool = True,
        every: int = 0,
        train_config: Mapping[str, Any] | None = None,
    ) -> None:
        self.checkpointer = TrainingCheckpointer(
            out_dir, method, optimizer, generator, dict(train_config or {}), every=every
        )
        self.evaluator = evaluator
        self.model_path = None if model_path is None else Path(model_path)
        self.resume = resume

    def attach(self, engine: Engine) -> None:
        from pddpm_monai.engines.distributed import is_main_process

        self.checkpointer.evaluator = self.evaluator  # restore() needs it on every rank
        engine.add_event_handler(Events.STARTED, self.restore)
        if is_main_process():
            self.checkpointer.attach(engine, self.evaluator)
            engine.add_event_handler(Events.COMPLETED, self.export)

    def restore(self, engine: Engine) -> None:
        """Resume from ``last.pt`` (when ``resume`` and the file exists)."""
        last = self.checkpointer.last_path
        if not (self.resume and last.is_file()):
            return
        info = self.checkpointer.restore(engine)
        logging.getLogger(LOGGER_NAME).info(
            "resumed from %s at epoch %d, iteration %d", last, info["epoch"], info["iteration"]
        )

    def export(self, engine: Engine) -> None:
        """Export the best (else the last) checkpoint to ``model_path``."""
        if self.model_path is None:
            return
        best, last = self.checkpointer.best_path, self.checkpointer.last_path
        source = best if best.is_file() else last
        if source.is_file():
            export_bundle_model(source, self.model_path)
            logging.getLogger(LOGGER_NAME).info("exported %s -> %s", source, self.model_path)


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
    exported = make_checkpoint(method, train_config=state.get("train_config"))
    if "trainer" in state:
        exported["trainer"] = state["trainer"]
    network = getattr(method, "network", None)
    if network is None:
        raise InputError(checkpoint, f"method {method.name!r} has no single network to export")
    exported[MODEL_KEY] = {k: v.detach().cpu() for k, v in network.state_dict().items()}
    return save_checkpoint(exported, out)


def checkpoint_inferer(
    path: str | os.PathLike,
    *,
    t_test: int | None = None,
    patch_size: int | None = None,
    return_anomaly_map: bool = True,
    seed: int | None = 0,
    slice_batch: int = 50,
    max_batch: int | None = None,
) -> PatchedDiffusionInferer | DiffusionReconstructionInferer:
    """The inferer of the method in a checkpoint, with the diffusion settings it was trained with.

    The bundle's ``inferer``: called as ``inferer(image, network)`` (MONAI Label, ``SupervisedEvaluator``)
    on slices ``(B, 1, H, W)`` or volumes ``(B, 1, H, W, D)``, it returns the anomaly map.

    Args:
        path: the checkpoint (``models/model.pt``).
        t_test: test timestep (``None``: the checkpoint's).
        patch_size: patch size (pDDPM; ``None``: the checkpoint's).
        return_anomaly_map: return ``|x - x_hat|`` (else the reconstruction).
        seed: seed of the test-time noise (the same scan always gets the same map).
        slice_batch: slices per batch of a volume.
        max_batch: most images per network call (``None``: the checkpoint's).

    Raises:
        InputError: naming ``path`` for a missing/bad checkpoint or a method without diffusion inferer.
    """
    state = read_checkpoint(path)
    overrides = {"t_test": t_test, "max_batch": max_batch}
    if state["method"] == "pddpm":
        overrides["patch_size"] = patch_size
    elif patch_size is not None:
        raise InputError(path, f"patch_size does not apply to method {state['method']!r}")
    method = method_from_checkpoint(state, path, overrides=overrides)
    config = method.config
    common = dict(
        t_test=config.t_test,
        max_batch=config.max_batch,
        return_anomaly_map=return_anomaly_map,
        seed=seed,
        slice_batch=slice_batch,
    )
    if state["method"] == "pddpm":
        return PatchedDiffusionInferer(
            method.process, patch_size=config.patch_size, grid=config.patch_grid, **common
        )
    if state["method"] == "ddpm":
        return DiffusionReconstructionInferer(method.process, **common)
    raise InputError(path, f"method {state['method']!r} has no diffusion inferer for the bundle")


def _model_grid_size() -> tuple[int, int, int]:
    from pddpm_monai.transforms.loading import ModelGridConfig

    grid = ModelGridConfig()
    return tuple(int(round(n / grid.downsample)) for n in grid.crop_size)  # type: ignore[return-value]


#: the model grid of one preprocessed volume (``ModelGridConfig``: 96 x 96 axial slices, 50 of them)
MODEL_GRID: tuple[int, int, int] = _model_grid_size()


def inference_network(
    path: str | os.PathLike,
    *,
    spatial_size: Sequence[int] = MODEL_GRID,
    t_test: int | None = None,
    patch_size: int | None = None,
    seed: int = 0,
    anomaly_map: bool = True,
) -> PatchedAnomalyUNet:
    """The bundle's ``network_def``: the checkpoint's UNet, callable with one tensor (and TorchScript-able).

    Built from the checkpoint itself (architecture, schedule, noise type, ``t_test``, patch size and
    grid), so the config cannot disagree with the weights. ``net(x, timesteps)`` is the UNet (what
    :func:`checkpoint_inferer`, MONAI Label and ``CheckpointLoader`` use); ``net(volume)`` returns
    the anomaly map of a ``(B, 1, H, W, D)`` model-grid volume, with the noise fields that
    :func:`checkpoint_inferer` draws from the same ``seed`` for one volume of ``D`` slices (so both
    give the same map) — what MONAI's ``verify_net_in_out`` and ``ckpt_export`` (model zoo) call.

    Args:
        path: the checkpoint (``models/model.pt``).
        spatial_size: ``(H, W, D)`` of the model-grid volume (``D``: number of noise fields).
        t_test: test timestep (``None``: the checkpoint's).
        patch_size: patch size (pDDPM; ``None``: the checkpoint's).
        seed: seed of the noise fields.
        anomaly_map: the one-tensor call returns ``|x - x_hat|`` (else the reconstruction).

    Raises:
        InputError: naming ``path`` for a missing/bad checkpoint or a method without a diffusion UNet.
    """
    import dataclasses

    from pddpm_monai.diffusion.patches import patch_masks

    state = read_checkpoint(path)
    name = state["method"]
    if name not in ("pddpm", "ddpm"):
        raise InputError(path, f"method {name!r} has no diffusion UNet for the bundle's network_def")
    overrides: dict[str, Any] = {"t_test": t_test}
    if name == "pddpm":
        overrides["patch_size"] = patch_size
    elif patch_size is not None:
        raise InputError(path, f"patch_size does not apply to method {name!r}")
    method = method_from_checkpoint(state, path, overrides=overrides)
    config, process = method.config, method.process
    height, width, depth = (int(v) for v in spatial_size)
    if name == "pddpm":
        size = int(config.patch_size)
        masks = patch_masks(height, width, size, size, grid=config.patch_grid)
    else:  # plain DDPM: the whole slice is noised
        masks = torch.ones(1, 1, height, width)
    generator = torch.Generator().manual_seed(int(seed))
    noise = process.noise_like(torch.zeros(depth, 1, height, width), generator=generator)
    net = PatchedAnomalyUNet(
        masks=masks,
        noise=noise,
        t_index=config.t_test - 1,
        alpha_bar=float(process.alphas_cumprod[config.t_test - 1]),
        rescale=process.config.rescale_to_minus_one_one,
        anomaly_map=anomaly_map,
        in_channels=1,
        out_channels=1,
        **{k: tuple(v) if isinstance(v, list) else v for k, v in dataclasses.asdict(config.network).items()},
    )
    net.load_state_dict(method.network.state_dict(), strict=True)
    return net.eval()


def read_threshold(
    path: str | os.PathLike | None,
    dataset: str = "brats21",
    default: float | None = None,
) -> float:
    """The binarisation threshold: ``<path>[dataset]["threshold"]`` (written by ``run evaluating``).

    Args:
        path: the threshold JSON (``models/threshold.json``); ``None`` uses ``default``.
        dataset: which validation set's threshold (``"brats21"``: tumours, ``"mslub"``: MS lesions).
        default: used when the file does not exist.

    Raises:
        InputError: when neither the file (with that dataset) nor a default is available.
    """
    import json

    if path is not None and Path(path).is_file():
        try:
            entry = json.loads(Path(path).read_text(encoding="utf-8"))[dataset]
            return float(entry["threshold"] if isinstance(entry, Mapping) else entry)
        except (KeyError, TypeError, ValueError, json.JSONDecodeError) as err:
            raise InputError(
                path, f"no threshold for dataset {dataset!r} ({type(err).__name__}: {err})"
            ) from None
    if default is not None:
        logging.getLogger(LOGGER_NAME).warning(
            "no validated threshold in %s: using the default %s (run `run evaluating` for a validated one)",
            path,
            default,
        )
        return float(default)
    raise InputError(
        path or "threshold",
        "no threshold: run `python -m monai.bundle run evaluating ...` first, or pass --threshold VALUE",
    )


def run_preprocessing(
    dataset: str,
    raw_dir: str | os.PathLike,
    data_root: str | os.PathLike,
    atlas: Any,
    *,
    workers: int = 1,
    shard: str | None = None,
    device: Literal["cpu", "cuda"] = "cpu",
    config: Any = None,
    progress: bool = True,
) -> Any:
    """``run preprocessing``: raw scans of one dataset -> the data root (``pddpm preprocess``'s code).

    Args:
        dataset: ``"ixi"``, ``"brats21"`` or ``"mslub"``.
        raw_dir: the raw download.
        data_root: the output data root.
        atlas: the registration target (``resolve_atlas(...)``).
        workers: subjects in parallel.
        shard: ``"i/n"``: this machine's share of the subjects (``None``: all).
        device: HD-BET device.
        config: a :class:`~pddpm_monai.transforms.config.PreprocessConfig` (``None``: defaults).
        progress: show a progress bar.

    Returns:
        the run's :class:`~pddpm_monai.data.prepare.Summary`.

    Raises:
        PddpmError: when a subject failed (each failure is listed in the log; finished subjects stay).
    """
    from pddpm_monai.data.prepare import parse_shard, run_preprocess
    from pddpm_monai.transforms.config import PreprocessConfig
    from pddpm_monai.utils import PddpmError

    if raw_dir in (None, "") or not Path(raw_dir).is_dir():
        raise InputError(raw_dir or "raw_dir", "raw dataset folder not found: pass --raw_dir FOLDER")
    if data_root in (None, ""):
        raise InputError("data_root", "no data root given: pass --data_root ROOT")
    summary = run_preprocess(
        dataset, raw_dir, data_root, atlas, workers=workers, shard_spec=parse_shard(shard),
        device=device, config=config if config is not None else PreprocessConfig(), progress=progress,
    )  # fmt: skip
    logging.getLogger(LOGGER_NAME).warning(summary.report())
    if summary.failed:
        raise PddpmError(f"{len(summary.failed)} subject(s) of {dataset} failed; see the log above")
    return summary


class BundleEvaluation:
    """``run evaluating``: ``evaluate_method`` on the data root, then the table row and the threshold.

    Writes ``<output_dir>/<method>/fold<k>/`` (per-volume CSV, summary, NIfTIs, figures; see
    :func:`~pddpm_monai.evaluation.evaluate.evaluate_method`), ``<output_dir>/table.md`` /
    ``table.csv`` (the Table-1 row of the run), and copies the validation thresholds to
    ``threshold_path`` for ``configs/inference.json``.

    Args:
        scorer: the scorer (``load_scorer(models/model.pt)``).
        data_root: the data root with ``splits/``.
        output_dir: results folder.
        fold: the fold the model was trained on (a label of the results).
        config: an :class:`~pddpm_monai.evaluation.evaluate.EvaluationConfig`.
        threshold_path: where to write the thresholds (``None``: do not write).
        extra: facts recorded in ``run.json``.
    """

    def __init__(
        self,
        scorer: Any,
        data_root: str | os.PathLike,
        output_dir: str | os.PathLike,
        *,
        fold: int = 0,
        config: Any = None,
        threshold_path: str | os.PathLike | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        if data_root in (None, ""):
            raise InputError("data_root", "no data root given: pass --data_root ROOT")
        if not Path(data_root).is_dir():
            raise InputError(data_root, "data root not found")
        self.scorer, self.data_root, self.output_dir = scorer, Path(data_root), Path(output_dir)
        self.fold, self.config, self.extra = fold, config, dict(extra or {})
        self.threshold_path = None if threshold_path is None else Path(threshold_path)

    def run(self) -> Path:
        """Evaluate; return the run folder."""
        import json

        from pddpm_monai.evaluation.evaluate import evaluate_method
        from pddpm_monai.evaluation.table import write_table

        run_dir = evaluate_method(
            self.scorer, self.data_root, self.output_dir, fold=self.fold, config=self.config, extra=self.extra
        )
        write_table([self.output_dir], self.output_dir, figures=False)
        thresholds = run_dir / "thresholds.json"
        if self.threshold_path is not None and thresholds.is_file():
            entries = json.loads(thresholds.read_text(encoding="utf-8"))
            save_json(
                {k: {"threshold": v["threshold"], "val_dice": v.get("val_dice"), "run": str(run_dir)}
                 for k, v in entries.items()},
                self.threshold_path,
            )  # fmt: skip
        return run_dir
