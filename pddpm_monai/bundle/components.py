"""Components that the MONAI bundle ``bundles/pddpm_brain_uad`` wires with ``_target_`` (beyond training).

The bundle configs hold no logic of their own. Training wires the engines' objects directly
(:mod:`pddpm_monai.engines.trainer`, ``steps``, ``handlers``: the same ones ``pddpm train`` builds);
what is left for the other configs is here:

- data: :func:`inference_items` (one scan or a folder), :func:`run_preprocessing` (raw dataset ->
  data root);
- deployment: :func:`checkpoint_inferer` (the method's inferer with the trained diffusion settings),
  :func:`inference_network` (``network_def``: the checkpoint's UNet, also callable with one tensor),
  :func:`read_threshold` (the binarisation threshold of ``run evaluating``); ``models/model.pt`` is
  written by :func:`~pddpm_monai.methods.checkpoint.export_bundle_model`;
- evaluation: :class:`BundleEvaluation` (``evaluate_method`` + the Table-1 row + the threshold file).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import SimpleITK as sitk
import torch

from pddpm_monai.data.prepare import parse_shard, run_preprocess
from pddpm_monai.diffusion.patches import patch_masks, patch_weights
from pddpm_monai.engines.handlers import LOGGER_NAME
from pddpm_monai.evaluation.evaluate import evaluate_method
from pddpm_monai.evaluation.table import write_table
from pddpm_monai.evaluation.threshold import read_threshold_file
from pddpm_monai.inferers import DiffusionReconstructionInferer, PatchedDiffusionInferer
from pddpm_monai.methods.checkpoint import inference_method
from pddpm_monai.networks.patched_anomaly import PatchedAnomalyUNet
from pddpm_monai.transforms.config import PreprocessConfig
from pddpm_monai.transforms.loading import ModelGridConfig
from pddpm_monai.transforms.scan_io import SCAN_SUFFIXES, is_scan_path
from pddpm_monai.utils import InputError, PddpmError, save_json

__all__ = [
    "THRESHOLD_FILE",
    "inference_items",
    "checkpoint_inferer",
    "MODEL_GRID",
    "inference_network",
    "read_threshold",
    "run_preprocessing",
    "BundleEvaluation",
]

#: file (beside ``model.pt``) in which ``run evaluating`` stores the validation thresholds
THRESHOLD_FILE = "threshold.json"


def inference_items(image: str | None = None, dataset_dir: str | None = None) -> list[dict[str, str]]:
    """The data list of ``run inference``: one scan (``image``) or every scan in ``dataset_dir``.

    A scan is a NIfTI, NRRD or MetaImage file, or a folder holding one DICOM series
    (:mod:`~pddpm_monai.transforms.scan_io`). In ``dataset_dir``, every file with such a suffix and
    every sub-folder holding DICOM files is a scan.

    Raises:
        InputError: when neither is given, the scan does not exist or has an unknown format, or the
            folder has no scan.
    """
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


def checkpoint_inferer(
    path: str | os.PathLike,
    *,
    t_test: int | None = None,
    patch_size: int | None = None,
    patch_grid: str | None = None,
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
        patch_grid: patch grid (pDDPM; ``None``: the checkpoint's).
        return_anomaly_map: return ``|x - x_hat|`` (else the reconstruction).
        seed: seed of the test-time noise (the same scan always gets the same map).
        slice_batch: slices per batch of a volume.
        max_batch: most images per network call (``None``: the checkpoint's).

    Raises:
        InputError: naming ``path`` for a missing/bad checkpoint or a method without diffusion inferer.
    """
    method = inference_method(
        path, t_test=t_test, patch_size=patch_size, patch_grid=patch_grid, max_batch=max_batch
    )
    config = method.config
    common = dict(
        t_test=config.t_test,
        max_batch=config.max_batch,
        return_anomaly_map=return_anomaly_map,
        seed=seed,
        slice_batch=slice_batch,
    )
    if method.name == "pddpm":
        return PatchedDiffusionInferer(
            method.process, patch_size=config.patch_size, grid=config.patch_grid, **common
        )
    if method.name == "ddpm":
        return DiffusionReconstructionInferer(method.process, **common)
    raise InputError(path, f"method {method.name!r} has no diffusion inferer for the bundle")


_LOADING = ModelGridConfig()
#: the model grid of one preprocessed volume (``ModelGridConfig``: 96 x 96 axial slices, 50 of them)
MODEL_GRID: tuple[int, ...] = tuple(int(round(n / _LOADING.downsample)) for n in _LOADING.crop_size)


def inference_network(
    path: str | os.PathLike,
    *,
    spatial_size: Sequence[int] = MODEL_GRID,
    t_test: int | None = None,
    patch_size: int | None = None,
    patch_grid: str | None = None,
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
        patch_grid: patch grid (pDDPM; ``None``: the checkpoint's).
        seed: seed of the noise fields.
        anomaly_map: the one-tensor call returns ``|x - x_hat|`` (else the reconstruction).

    Raises:
        InputError: naming ``path`` for a missing/bad checkpoint or a method without a diffusion UNet.
    """
    method = inference_method(path, t_test=t_test, patch_size=patch_size, patch_grid=patch_grid)
    name = method.name
    if name not in ("pddpm", "ddpm"):
        raise InputError(path, f"method {name!r} has no diffusion UNet for the bundle's network_def")
    config, process = method.config, method.process
    height, width, depth = (int(v) for v in spatial_size)
    if name == "pddpm":
        size = int(config.patch_size)
        masks = patch_masks(height, width, size, size, grid=config.patch_grid)
        weights = patch_weights(height, width, size, size, grid=config.patch_grid)
    else:  # plain DDPM: the whole slice is noised
        masks = weights = torch.ones(1, 1, height, width)
    generator = torch.Generator().manual_seed(int(seed))
    noise = process.noise_like(torch.zeros(depth, 1, height, width), generator=generator)
    net = PatchedAnomalyUNet(
        masks=masks,
        weights=weights,
        noise=noise,
        t_index=config.t_test - 1,
        alpha_bar=float(process.alphas_cumprod[config.t_test - 1]),
        rescale=process.config.rescale_to_minus_one_one,
        anomaly_map=anomaly_map,
        **config.network.network_kwargs(),
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
    if path is not None and Path(path).is_file():
        return read_threshold_file(path, dataset)
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
