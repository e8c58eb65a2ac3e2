"""``pddpm detect``: anomaly map and lesion mask of one new scan, in the scan's native space.

The chain, for one raw scan of any orientation and spacing, is the bundle's and MONAI Label's
(:mod:`~pddpm_monai.evaluation.detection`), with the checkpoint's scorer as the model:

1. validate the scan (:func:`~pddpm_monai.transforms.scan_io.read_scan`: NIfTI, NRRD/MetaImage or a
   folder holding one DICOM series; 3-D, finite, not empty) and the checkpoint
   (:func:`~pddpm_monai.methods.checkpoint.load_scorer`: a pddpm-monai checkpoint whose weights fit
   its method and whose patches fit the model grid), before any heavy work;
2. ``scan_preprocessing(raw=True)``: paper §4.1 (1 mm, HD-BET unless ``skull_stripped``, affine
   registration to the atlas, crop to 192x192x160, N4), cached in ``<out>/<name>_preprocessed/`` so
   that a re-run (e.g. with another threshold) skips it, then the model grid (96x96x50);
3. patched inference (the checkpoint's scorer: any method, baselines included);
4. ``scan_postprocessing``: as in the evaluation (eroded brain mask, median filter, threshold, small
   components removed), then back to the native grid (model grid -> data-root grid -> inverse
   registration and crop); the outputs have the input's shape and affine, so ITK-SNAP and 3D
   Slicer overlay them on the scan.

Outputs in ``out_dir`` (``<name>`` = the scan's file name without ``.nii[.gz]`` / its suffix, or the
DICOM folder's name), always NIfTI on the scan's grid::

    <name>_anomaly.nii.gz      post-processed anomaly map (float32, native grid)
    <name>_lesions.nii.gz      binary lesion mask (uint8, native grid, inside the brain)
    <name>_brain.nii.gz        brain mask of the preprocessing (uint8, native grid)
    <name>_report.png          axial / coronal / sagittal slices through the largest lesion
    <name>_summary.json        lesion volume (ml), components, threshold and its source, model, version

The threshold comes from ``--threshold``, else from the ``thresholds.json`` that ``pddpm evaluate``
writes in its run folder (the Dice-optimal threshold on the validation set of ``dataset``), given
explicitly or found beside the checkpoint; the summary says which.

Example:
    >>> result = detect_scan("sub-01_T2w.nii.gz", "out", checkpoint="runs/pddpm/best.pt",
    ...                      atlas=resolve_atlas("sri24"), config=DetectConfig(threshold=0.12))  # doctest: +SKIP
    >>> result.summary["lesion_volume_ml"]  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from scipy import ndimage

from pddpm_monai import __version__
from pddpm_monai.evaluation.detection import ANOMALY_KEY, BRAIN_KEY, scan_postprocessing, scan_preprocessing
from pddpm_monai.evaluation.postprocess import PostprocessConfig
from pddpm_monai.evaluation.threshold import read_threshold_file
from pddpm_monai.transforms.config import Device, PreprocessConfig
from pddpm_monai.transforms.inference import SCAN_RECORD_KEY, cache_folder
from pddpm_monai.transforms.loading import ModelGridConfig
from pddpm_monai.transforms.scan_io import read_scan, scan_name
from pddpm_monai.utils import InputError, plain_json, save_json, save_nifti

__all__ = [
    "DetectConfig",
    "DetectResult",
    "THRESHOLD_FILES",
    "BUNDLE_CHECKPOINT",
    "output_paths",
    "resolve_threshold",
    "bundle_checkpoint",
    "lesion_statistics",
    "detect_scan",
]

#: threshold files looked for beside a checkpoint (``pddpm evaluate`` writes ``thresholds.json``)
THRESHOLD_FILES: tuple[str, ...] = ("thresholds.json", "threshold.json")
#: the checkpoint of a bundle folder (MONAI bundle convention)
BUNDLE_CHECKPOINT = Path("models") / "model.pt"
#: components are counted with the 26-neighbourhood, as the evaluation's post-processing
COMPONENT_CONNECTIVITY = 3
#: cubic millimetres per millilitre
MM3_PER_ML = 1000.0
#: names of the outputs, by kind
OUTPUT_SUFFIXES: dict[str, str] = {
    "anomaly": "_anomaly.nii.gz",
    "lesions": "_lesions.nii.gz",
    "brain": "_brain.nii.gz",
    "report": "_report.png",
    "summary": "_summary.json",
}


@dataclass(frozen=True)
class DetectConfig:
    """Every default of ``pddpm detect`` in one place.

    Attributes:
        skull_stripped: the scan is already skull-stripped (no HD-BET; brain = non-zero voxels).
        threshold: explicit threshold of the post-processed map (``None``: from a thresholds file).
        thresholds_file: a ``thresholds.json`` of ``pddpm evaluate`` (or ``{"threshold": x}``);
            ``None``: look beside the checkpoint.
        dataset: key of the thresholds file to use (the validation set the threshold was tuned on).
        device: where HD-BET and the network run (``"cpu"`` or ``"cuda"``).
        t_test: test timestep instead of the checkpoint's (``None``: keep it).
        patch_size: patch size instead of the checkpoint's (pDDPM; ``None``: keep it).
        patch_grid: patch grid instead of the checkpoint's (pDDPM; ``None``: keep it; ``"blend"``:
            half-stride boxes, Gaussian-weighted, no seams).
        seed: seed of the test-time noise (the same scan always gets the same map).
        slice_batch: axial slices per network batch.
        smooth: apply the loader's CurvatureFlow, as in training and evaluation.
        mask_level: the binary lesion mask is resampled linearly and kept where it is ``>= mask_level``.
        overwrite: recompute even when the summary of this scan exists (the cached preprocessing too).
        preprocess: the preprocessing chain (HD-BET folds, registration, N4).
        loading: the model-grid settings (must be the training's).
        postprocess: erosion, median filter and connected components (must be the evaluation's).
    """

    skull_stripped: bool = False
    threshold: float | None = None
    thresholds_file: str | None = None
    dataset: str = "brats21"
    device: Device = "cpu"
    t_test: int | None = None
    patch_size: int | None = None
    patch_grid: str | None = None
    seed: int = 0
    slice_batch: int = 50
    smooth: bool = True
    mask_level: float = 0.5
    overwrite: bool = False
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    loading: ModelGridConfig = field(default_factory=ModelGridConfig)
    postprocess: PostprocessConfig = field(default_factory=PostprocessConfig)


@dataclass
class DetectResult:
    """What :func:`detect_scan` produced: the output paths and the summary (as written)."""

    paths: dict[str, Path]
    summary: dict[str, Any]
    skipped: bool = False


def output_paths(scan: str | os.PathLike, out_dir: str | os.PathLike) -> dict[str, Path]:
    """The output files of ``scan`` in ``out_dir``, by kind (see the module docstring)."""
    name = scan_name(scan)
    return {kind: Path(out_dir) / f"{name}{suffix}" for kind, suffix in OUTPUT_SUFFIXES.items()}


def bundle_checkpoint(bundle_dir: str | os.PathLike) -> Path:
    """The checkpoint of a bundle folder (``models/model.pt``); one-line error when absent."""
    path = Path(bundle_dir) / BUNDLE_CHECKPOINT
    if not Path(bundle_dir).is_dir():
        raise InputError(bundle_dir, "bundle folder not found")
    if not path.is_file():
        raise InputError(path, "the bundle has no trained model: train it or copy a checkpoint there")
    return path


def bundle_atlas(bundle_dir: str | os.PathLike) -> str | None:
    """The ``"atlas"`` of a bundle's ``configs/inference.json`` (``None`` when unset or absent).

    The atlas is never shipped in a bundle, but the person who trained it can record which one its
    data were registered to (a path, relative to the bundle folder or absolute, or a name that
    :func:`~pddpm_monai.transforms.atlas.resolve_atlas` knows) so that ``pddpm detect --bundle`` needs no
    ``--atlas``.
    """
    config = Path(bundle_dir) / "configs" / "inference.json"
    if not config.is_file():
        return None
    try:
        value = json.loads(config.read_text(encoding="utf-8")).get("atlas")
    except (OSError, json.JSONDecodeError, AttributeError) as err:
        raise InputError(config, f"not a readable bundle config ({err})") from None
    if value is None or value == "":
        return None
    if not isinstance(value, str) or value.startswith(("$", "@", "%")):
        raise InputError(config, f'"atlas" must be a plain path or atlas name, got {value!r}')
    relative = Path(bundle_dir) / value
    return str(relative) if not Path(value).is_absolute() and relative.exists() else value


# --------------------------------------------------------------------------------------- threshold


def resolve_threshold(
    checkpoint: str | os.PathLike,
    *,
    threshold: float | None = None,
    thresholds_file: str | os.PathLike | None = None,
    dataset: str = "brats21",
) -> tuple[float, str]:
    """The threshold of the post-processed anomaly map and where it came from.

    Order: an explicit ``threshold``; else ``thresholds_file``; else a ``thresholds.json`` /
    ``threshold.json`` beside the checkpoint.

    Args:
        checkpoint: the checkpoint (its folder is searched).
        threshold: explicit value.
        thresholds_file: a ``thresholds.json`` of ``pddpm evaluate`` or ``{"threshold": x}``.
        dataset: key of the thresholds file (the validation set).

    Returns:
        ``(threshold, source)``; ``source`` is ``"--threshold"`` or the file (and dataset) used.

    Raises:
        InputError: no threshold anywhere, or an unreadable/incomplete thresholds file.
    """
    if threshold is not None:
        if not np.isfinite(threshold):
            raise InputError("--threshold", f"must be a finite number, got {threshold}")
        return float(threshold), "--threshold"
    if thresholds_file is not None:
        path = Path(thresholds_file)
        if not path.is_file():
            raise InputError(path, "thresholds file not found")
        return read_threshold_file(path, dataset), f"{path} ({dataset} validation)"
    for name in THRESHOLD_FILES:
        path = Path(checkpoint).parent / name
        if path.is_file():
            return read_threshold_file(path, dataset), f"{path} ({dataset} validation)"
    raise InputError(
        checkpoint,
        "no threshold: pass --threshold VALUE, or --thresholds RUN/thresholds.json written by "
        "`pddpm evaluate` (or put that file beside the checkpoint)",
    )


# --------------------------------------------------------------------------------------- outputs


def lesion_statistics(lesions: np.ndarray, affine: np.ndarray) -> dict[str, Any]:
    """Volume (ml), number of 26-connected components and the largest one of a binary mask.

    Returns:
        ``lesion_volume_ml``, ``n_components``, ``largest_component_ml``, ``component_volumes_ml``
        (descending), ``largest_component_centroid_voxel`` (or ``None``).
    """
    voxel_ml = abs(float(np.linalg.det(np.asarray(affine)[:3, :3]))) / MM3_PER_ML
    structure = ndimage.generate_binary_structure(3, COMPONENT_CONNECTIVITY)
    labels, n = ndimage.label(np.asarray(lesions) > 0, structure=structure)
    sizes = np.bincount(labels.ravel())[1:]
    order = np.argsort(-sizes, kind="stable")
    centroid = None
    if n:
        centroid = [round(float(c), 2) for c in ndimage.center_of_mass(labels == order[0] + 1)]
    return {
        "lesion_volume_ml": round(float(sizes.sum() * voxel_ml), 4),
        "n_components": int(n),
        "largest_component_ml": round(float(sizes[order[0]] * voxel_ml), 4) if n else 0.0,
        "component_volumes_ml": [round(float(sizes[i] * voxel_ml), 4) for i in order],
        "largest_component_centroid_voxel": centroid,
        "voxel_ml": voxel_ml,
    }


# ------------------------------------------------------------------------------------ the stages


def _load_scorer(checkpoint: Path, config: DetectConfig) -> Any:
    """The checkpoint's scorer; refuses patches that do not fit the model grid."""
    from pddpm_monai.methods.checkpoint import load_scorer

    scorer = load_scorer(
        checkpoint,
        t_test=config.t_test,
        patch_size=config.patch_size,
        patch_grid=config.patch_grid,
        device=config.device,
        slice_batch=config.slice_batch,
        seed=config.seed,
    )
    patch = getattr(scorer.method.config, "patch_size", None)
    side = int(min(config.loading.crop_size[:2]) // config.loading.downsample)
    if patch is not None and int(patch) > side:
        raise InputError(
            checkpoint,
            f"patch size {patch} does not fit the {side}x{side} model grid: the checkpoint was "
            "trained for another image size",
        )
    return scorer


def _run_chain(
    scan: Path, out: Path, scorer: Any, threshold: float, atlas: Any, config: DetectConfig
) -> dict:
    """The detection chain of :mod:`~pddpm_monai.evaluation.detection` with the checkpoint's scorer.

    The preprocessing is cached in ``<out>/<name>_preprocessed/`` (``overwrite`` starts it afresh).
    """
    if config.overwrite:
        shutil.rmtree(cache_folder(out, scan), ignore_errors=True)
    pre = scan_preprocessing(
        raw=True,
        atlas=atlas,
        skull_stripped=config.skull_stripped,
        device=config.device,
        preprocess=config.preprocess,
        loading=config.loading,
        smooth=config.smooth,
        cache_dir=out,
    )
    data = pre({"image": str(scan)})
    image = data["image"]
    with torch.no_grad():
        _, raw = scorer(image.as_tensor(), data["mask"].as_tensor())
    data["pred"] = MetaTensor(torch.as_tensor(raw).reshape(image.shape).float(), meta=dict(image.meta))
    post = scan_postprocessing(threshold, config=config.postprocess, mask_level=config.mask_level)
    return post(data)


def _model_summary(scorer: Any, checkpoint: Path) -> dict[str, Any]:
    cfg = scorer.method.config
    return {
        "method": scorer.method.name,
        "checkpoint": str(checkpoint),
        "t_test": getattr(cfg, "t_test", None),
        "patch_size": getattr(cfg, "patch_size", None),
        "patch_grid": getattr(cfg, "patch_grid", None),
        "config": scorer.method.config_dict(),
    }


def detect_scan(
    scan: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    checkpoint: str | os.PathLike,
    atlas: Any,
    config: DetectConfig = DetectConfig(),
) -> DetectResult:
    """Anomaly map, lesion mask, PNG report and JSON summary of one raw scan, on its native grid.

    Args:
        scan: the raw T2 scan (any orientation and spacing; with skull unless ``skull_stripped``):
            NIfTI, ``.nrrd`` / ``.mha`` / ``.mhd``, or a folder holding one DICOM series.
        out_dir: output folder (created).
        checkpoint: a trained pddpm-monai checkpoint (``best.pt`` of ``pddpm train``).
        atlas: the registration target the model's training data were registered to
            (:func:`~pddpm_monai.transforms.atlas.resolve_atlas`).
        config: every option (threshold, device, preprocessing, post-processing).

    Returns:
        the :class:`DetectResult`; ``skipped`` when the summary of the same scan, checkpoint and
        configuration existed (and not ``overwrite``).

    Raises:
        InputError: a bad scan (unreadable, no or several DICOM series in the folder, not 3-D,
            empty, NaN), a bad checkpoint (missing, corrupt,
            unknown method, weights of another size, patches larger than the grid), no threshold.
    """
    start = time.perf_counter()
    scan, checkpoint, out = Path(scan), Path(checkpoint), Path(out_dir)
    paths = output_paths(scan, out)
    config_json = plain_json(dataclasses.asdict(config))
    if not config.overwrite and all(p.is_file() for p in paths.values()):
        previous = json.loads(paths["summary"].read_text(encoding="utf-8"))
        model = previous.get("model", {})
        if previous.get("config") == config_json and model.get("checkpoint") == str(checkpoint):
            return DetectResult(paths, previous, skipped=True)
    native_image, native_affine = read_scan(scan)  # one-line errors before any heavy work
    scorer = _load_scorer(checkpoint, config)
    threshold, source = resolve_threshold(
        checkpoint, threshold=config.threshold, thresholds_file=config.thresholds_file, dataset=config.dataset
    )
    data = _run_chain(scan, out, scorer, threshold, atlas, config)
    from pddpm_monai.pipeline.report import plot_detection

    record = json.loads(data[SCAN_RECORD_KEY])
    anomaly, lesions, brain = (data[k].numpy()[0] for k in (ANOMALY_KEY, "pred", BRAIN_KEY))
    lesions, brain = lesions > 0, brain > 0
    save_nifti(anomaly.astype(np.float32), native_affine, paths["anomaly"])
    save_nifti(lesions.astype(np.uint8), native_affine, paths["lesions"])
    save_nifti(brain.astype(np.uint8), native_affine, paths["brain"])
    stats = lesion_statistics(lesions, native_affine)
    plot_detection(native_image, anomaly, lesions, native_affine, paths["report"], title=scan.name)
    summary = {
        "scan": str(scan),
        "native_shape": list(native_image.shape),
        **stats,
        "brain_volume_ml": round(float(brain.sum() * stats["voxel_ml"]), 2),
        "threshold": threshold,
        "threshold_source": source,
        "model": _model_summary(scorer, checkpoint),
        "pddpm_monai_version": __version__,
        "skull_stripped": config.skull_stripped,
        "atlas": record.get("atlas"),
        "registration": {
            k: v
            for k, v in (record.get("registration") or {}).items()
            if k in ("metric", "brain_dice", "volume_ratio")
        },
        "preprocessing_seconds": record.get("seconds", {}),
        "seconds": round(time.perf_counter() - start, 2),
        "outputs": {k: str(p) for k, p in paths.items()},
        "config": config_json,
    }
    save_json(summary, paths["summary"])  # last: marks the scan finished
    return DetectResult(paths, summary)
