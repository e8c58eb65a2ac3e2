"""The §4.1 chain on files: one scan (``pddpm detect``), a raw dataset into a data root (``pddpm preprocess``).

:func:`load_subject` reads and validates a scan (and its seg) into the dict the chain
(:func:`~pddpm_monai.transforms.chain.preprocessing_transforms`) takes; :func:`preprocess_scan`
runs the chain on one scan without a data root. For a dataset, each subject runs the chain and
writes its volumes and a JSON record (the registration transform, the crop box and the grids that
:func:`~pddpm_monai.transforms.native.to_native` needs). A subject's outputs appear together:
volumes are written under temporary names and renamed, the record last; a subject whose record and
volumes exist is skipped. One failing subject is reported and the run goes on.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
import traceback
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import Any, Literal

import nibabel as nib
import numpy as np
from tqdm import tqdm

from pddpm_monai.data.adapters import DATASETS, Subject, find_subjects, output_paths
from pddpm_monai.threads import resolve_threads, set_threads
from pddpm_monai.transforms.atlas import Atlas
from pddpm_monai.transforms.chain import preprocessing_transforms
from pddpm_monai.transforms.config import Device, PreprocessConfig
from pddpm_monai.transforms.sitk_convert import RECORD_KEY, to_metatensor, unpack
from pddpm_monai.utils import InputError, PddpmError, atomic_path, check_same_grid, read_nifti, save_json

__all__ = [
    "load_subject",
    "preprocess_scan",
    "Summary",
    "parse_shard",
    "shard",
    "process_subject",
    "run_preprocess",
]

Status = Literal["done", "skipped", "failed"]
OUTPUT_DTYPES = {"t2": np.float32, "mask": np.uint8, "seg": np.uint8}


def load_subject(
    image: str | os.PathLike,
    seg: str | os.PathLike | None = None,
    *,
    image_key: str = "t2",
    seg_key: str = "seg",
) -> dict:
    """Read and validate a scan (and its seg) into the dict the chain expects, with a fresh record.

    Raises:
        InputError: unreadable file, not 3-D (a trailing singleton axis is squeezed), NaN/Inf,
            empty image, or a seg not on the image's grid.
    """
    arr, aff = read_nifti(image)
    d: dict = {image_key: to_metatensor(arr, aff), RECORD_KEY: {"source": str(image)}}
    if seg is not None:
        seg_arr, seg_aff = read_nifti(seg, allow_empty=True)
        check_same_grid((arr, aff), (seg_arr, seg_aff), seg)
        d[seg_key] = to_metatensor(np.rint(seg_arr).astype(np.uint8), seg_aff)
        d[RECORD_KEY]["seg_source"] = str(seg)
    return d


def preprocess_scan(
    image_path: str | os.PathLike,
    *,
    atlas: Any,
    skull_stripped: bool,
    device: Device = "cpu",
    seg_path: str | os.PathLike | None = None,
    in_atlas_space: bool = False,
    config: PreprocessConfig = PreprocessConfig(),
) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """Preprocess one scan into the data-root grid, without a data root (used by ``pddpm detect``).

    Returns:
        ``(t2, mask, affine, record)``: float32 and uint8 arrays of ``config.roi_size``, their
        affine, and the JSON record that :func:`~pddpm_monai.transforms.native.to_native` needs. (A
        seg given by ``seg_path`` follows the chain; use
        :func:`~pddpm_monai.transforms.chain.preprocessing_transforms` directly to get it back.)
    """
    chain = preprocessing_transforms(
        atlas, skull_stripped=skull_stripped, in_atlas_space=in_atlas_space, device=device, config=config
    )
    d = chain(load_subject(image_path, seg_path))
    d[RECORD_KEY]["config"] = dataclasses.asdict(config)
    t2, aff = unpack(d["t2"])
    mask = unpack(d["mask"])[0].astype(np.uint8)
    return t2.astype(np.float32), mask, aff, d[RECORD_KEY]


@dataclass
class Summary:
    """Outcome of a preprocessing run: names per status and the reason of each failure."""

    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)

    def add(self, name: str, status: Status, reason: str = "") -> None:
        if status == "failed":
            self.failed[name] = reason
        else:
            getattr(self, status).append(name)

    def report(self) -> str:
        """Human-readable summary (one line per failure)."""
        lines = [
            f"done {len(self.done)}, skipped {len(self.skipped)} (already finished), failed {len(self.failed)}"
        ]
        lines += [f"  FAILED {name}: {reason}" for name, reason in sorted(self.failed.items())]
        return "\n".join(lines)


def shard(subjects: Sequence[Subject], index: int, count: int) -> list[Subject]:
    """Every ``count``-th subject starting at ``index`` (a stable, name-sorted partition)."""
    return list(subjects[index::count])


def parse_shard(text: str | None) -> tuple[int, int]:
    """``"i/n"`` (0 <= i < n) -> ``(i, n)``; ``None`` -> ``(0, 1)``."""
    if not text:
        return 0, 1
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise InputError("--shard", f"expected i/n (e.g. 0/4), got {text!r}") from None
    if not 0 <= i < n:
        raise InputError("--shard", f"shard index must satisfy 0 <= i < n, got {text!r}")
    return i, n


def process_subject(
    subject: Subject,
    data_root: str | os.PathLike,
    atlas: Atlas,
    *,
    device: Device = "cpu",
    config: PreprocessConfig = PreprocessConfig(),
) -> Status:
    """Preprocess one subject into the data root (skip it when finished).

    Raises:
        PddpmError: bad input or a failed registration (nothing is written for this subject).
    """
    paths = output_paths(data_root, subject)
    if all(p.is_file() for p in paths.values()):  # finished: its record and all its volumes exist
        return "skipped"
    spec = DATASETS[subject.dataset]
    chain = preprocessing_transforms(
        atlas,
        skull_stripped=spec.skull_stripped,
        in_atlas_space=spec.in_atlas_space,
        device=device,
        config=config,
    )
    d = chain(load_subject(subject.image, subject.seg))
    record = dict(d[RECORD_KEY])
    t2 = d["t2"]
    affine = np.asarray(t2.affine, dtype=np.float64)
    record.update(
        name=subject.name,
        dataset=subject.dataset,
        age=subject.age,
        atlas=atlas.describe(),
        root_grid={"shape": list(t2.shape[1:]), "affine": affine.tolist()},
        files={k: str(p.relative_to(data_root)) for k, p in paths.items() if k != "record"},
        config=dataclasses.asdict(config),
    )
    with contextlib.ExitStack() as stack:  # every volume under a temporary name, then all renamed
        for key, path in paths.items():
            if key != "record":
                arr = d[key].detach().cpu().numpy()[0].astype(OUTPUT_DTYPES[key])
                nib.save(nib.Nifti1Image(arr, affine), str(stack.enter_context(atomic_path(path))))
    save_json(record, paths["record"])  # last: marks the subject finished
    return "done"


def _run_one(
    subject: Subject, data_root: str, atlas: Atlas, device: str, config: PreprocessConfig
) -> tuple[str, Status, str]:
    try:
        return subject.name, process_subject(subject, data_root, atlas, device=device, config=config), ""
    except PddpmError as err:
        return subject.name, "failed", str(err)
    except Exception as err:  # one bad subject must not stop the run: report it
        where = traceback.extract_tb(err.__traceback__)[-1]
        return subject.name, "failed", f"{subject.image}: {type(err).__name__}: {err} ({where.name})"


def run_preprocess(
    dataset: str,
    raw_dir: str | os.PathLike,
    data_root: str | os.PathLike,
    atlas: Atlas,
    *,
    workers: int = 1,
    shard_spec: tuple[int, int] = (0, 1),
    device: Literal["cpu", "cuda"] = "cpu",
    config: PreprocessConfig = PreprocessConfig(),
    progress: bool = True,
) -> Summary:
    """Preprocess every subject of ``dataset`` under ``raw_dir`` (this shard) into ``data_root``.

    Args:
        dataset: ``"ixi"``, ``"brats21"`` or ``"mslub"``.
        raw_dir: the raw download.
        data_root: output data root.
        atlas: registration target.
        workers: subjects processed in parallel (processes; CPU threads are split among them, see
            :func:`pddpm_monai.threads.resolve_threads`).
        shard_spec: ``(i, n)``: this machine does subjects ``i, i+n, i+2n, ...``.
        device: HD-BET device.
        config: preprocessing parameters.
        progress: show a progress bar on stderr.

    Returns:
        The :class:`Summary`.
    """
    subjects = shard(find_subjects(dataset, raw_dir), *shard_spec)
    atlas.image, atlas.mask  # noqa: B018  (validate the atlas once, before any work)
    summary = Summary()
    bar = tqdm(total=len(subjects), desc=f"preprocess {dataset}", disable=not progress, file=sys.stderr)
    if workers <= 1:
        for subject in subjects:
            summary.add(*_run_one(subject, str(data_root), atlas, device, config))
            bar.update()
    else:
        threads = resolve_threads(workers=workers)  # per worker: $OMP_NUM_THREADS, else cores // workers
        with ProcessPoolExecutor(workers, initializer=set_threads, initargs=(threads,)) as pool:
            futures = [pool.submit(_run_one, s, str(data_root), atlas, device, config) for s in subjects]
            for future in as_completed(futures):
                summary.add(*future.result())
                bar.update()
    bar.close()
    return summary
