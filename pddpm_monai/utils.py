"""Shared helpers: user-facing errors, validated NIfTI reading, atomic writes and safe checkpoints.

Every stage uses these so that bad input always surfaces as one line naming the file and the
problem (:class:`InputError`), and so that no partial output file is ever visible (:func:`atomic_path`).
"""

from __future__ import annotations

import contextlib
import csv
import glob
import io
import json
import os
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

__all__ = [
    "EXIT_USER_ERROR",
    "resolve_device",
    "PddpmError",
    "InputError",
    "atomic_path",
    "ensure_output_dir",
    "read_nifti",
    "checked_volume",
    "save_nifti",
    "save_json",
    "save_csv",
    "plain_json",
    "check_same_grid",
    "save_checkpoint",
    "load_checkpoint",
]

#: exit code of a user error (bad input, bad option): one line on stderr, as argparse's errors
EXIT_USER_ERROR = 2


class PddpmError(Exception):
    """An error meant for the user: the CLI prints ``str(err)`` on one line and exits non-zero."""


class InputError(PddpmError, ValueError):
    """Bad input file or value.

    Args:
        path: the offending file (or a short name of the offending option).
        problem: what is wrong with it, ideally with a remedy.
    """

    def __init__(self, path: str | os.PathLike | None, problem: str):
        self.path = None if path is None else str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}" if self.path else problem)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    The temporary name keeps the final suffixes (``.nii.gz``, ``.pt``) so that writers that infer
    the format from the name work; it starts with ``.`` and contains ``.tmp-<pid>-`` so that it is
    never mistaken for a finished output. On error the temporary file is removed; temporaries of the
    same output left by a writer that was killed (its process is gone) are removed after the next
    successful write.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(path.suffixes[-2:]) if path.name.endswith(".nii.gz") else path.suffix
    fd, tmp = tempfile.mkstemp(prefix=f"{_tmp_prefix(path)}{os.getpid()}-", suffix=suffix, dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if tmp_path.exists():  # mkstemp creates 0600: give the output the usual umask permissions
            os.chmod(tmp_path, _default_file_mode())
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise
    _remove_orphans(path)


def _default_file_mode() -> int:
    """``0o666`` less the process umask (the mode ``open()`` would give a new file)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def _tmp_prefix(path: Path) -> str:
    return f".{path.stem}.tmp-"


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def _remove_orphans(path: Path) -> None:
    """Remove temporaries of ``path`` whose writer process no longer exists (it was killed)."""
    prefix = _tmp_prefix(path)
    for candidate in path.parent.glob(f"{glob.escape(prefix)}*"):
        pid = candidate.name[len(prefix) :].split("-", 1)[0]
        if pid.isdigit() and not _process_exists(int(pid)):
            candidate.unlink(missing_ok=True)


def ensure_output_dir(path: str | os.PathLike) -> Path:
    """Create the output folder ``path`` if needed and check that files can be written in it.

    Called before any expensive work so that an unwritable output location fails at once with a
    one-line :class:`InputError` naming it (instead of after minutes of computation).
    """
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test.tmp-", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise InputError(path, f"output folder is not writable ({err.strerror or err})") from None
    return path


def read_nifti(
    path: str | os.PathLike, *, allow_empty: bool = False, dtype: type = np.float32
) -> tuple[np.ndarray, np.ndarray]:
    """Read a 3-D NIfTI volume and validate it.

    A trailing singleton 4th axis (as in the SRI24 files) is squeezed. Raises :class:`InputError`
    naming the file for: a missing or unreadable file, a truncated archive, a file that is not
    NIfTI, a 2-D image, a 4-D image with more than one volume, NaN/Inf voxels, and (unless
    ``allow_empty``) an all-zero image.

    Returns:
        ``(array, affine)`` with the array in the file's voxel order, as ``dtype``.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "file not found")
    try:
        img = nib.load(str(path))
        data = np.asarray(img.dataobj)
    except Exception as err:  # nibabel raises many types for unreadable files
        raise InputError(path, f"not a readable NIfTI image ({type(err).__name__}: {err})") from None
    if not isinstance(img, nib.Nifti1Image | nib.Nifti2Image):
        raise InputError(path, f"not a NIfTI image (read as {type(img).__name__})")
    return checked_volume(path, data, img.affine, allow_empty=allow_empty, dtype=dtype)


def checked_volume(
    path: str | os.PathLike,
    array: np.ndarray,
    affine: np.ndarray,
    *,
    allow_empty: bool = False,
    dtype: type = np.float32,
) -> tuple[np.ndarray, np.ndarray]:
    """``(array, affine)`` read from ``path`` (any format) through the checks of :func:`read_nifti`."""
    while array.ndim > 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim != 3:
        raise InputError(path, f"expected a 3-D image, got shape {tuple(array.shape)}")
    array = array.astype(dtype, copy=False)
    if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
        raise InputError(path, f"image contains {int((~np.isfinite(array)).sum())} NaN/Inf voxels")
    if not allow_empty and not np.any(array):
        raise InputError(path, "image is all zeros")
    return array, np.asarray(affine, dtype=np.float64)


def save_nifti(array: np.ndarray, affine: np.ndarray, path: str | os.PathLike) -> Path:
    """Write ``array`` with ``affine`` to ``path`` atomically (temporary name, then rename)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        nib.save(nib.Nifti1Image(np.asarray(array), np.asarray(affine, dtype=np.float64)), str(tmp))
    return path


def save_json(obj: Any, path: str | os.PathLike) -> Path:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, default=str) + "\n", encoding="utf-8")
    return path


def save_csv(
    header: Sequence[str],
    rows: Iterable[Sequence],
    path: str | os.PathLike,
    *,
    index: bool = False,
    lineterminator: str = "\r\n",
) -> Path:
    """Write a CSV with ``header`` to ``path`` atomically; ``index``: a first, unnamed 0, 1, ... column (pandas')."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator=lineterminator)
    writer.writerow(([""] if index else []) + list(header))
    writer.writerows(([i] if index else []) + list(row) for i, row in enumerate(rows))
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(buf.getvalue(), encoding="utf-8", newline="")
    return path


def plain_json(obj: Any) -> Any:
    """``obj`` as it reads back from a file of :func:`save_json` (tuples become lists), for comparisons."""
    return json.loads(json.dumps(obj, default=str))


def check_same_grid(
    reference: tuple[np.ndarray, np.ndarray],
    other: tuple[np.ndarray, np.ndarray],
    other_path: str | os.PathLike,
    *,
    atol: float = 1e-3,
) -> None:
    """Raise :class:`InputError` naming ``other_path`` if ``other`` is not on the grid of ``reference``.

    Both arguments are ``(array, affine)`` pairs as returned by :func:`read_nifti`.
    """
    (ref_arr, ref_aff), (arr, aff) = reference, other
    if ref_arr.shape != arr.shape:
        raise InputError(
            other_path, f"grid mismatch: shape {arr.shape} differs from the image's {ref_arr.shape}"
        )
    if not np.allclose(ref_aff, aff, atol=atol):
        raise InputError(other_path, "grid mismatch: affine differs from the image's")


def save_checkpoint(state: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """Save a checkpoint dict (tensors, numbers, strings, nested dicts/lists only) atomically."""
    import torch

    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(dict(state), tmp)
    return path


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """Load a checkpoint with ``torch.load(..., weights_only=True)``.

    Raises :class:`InputError` naming the file when it is missing, corrupt, or contains pickled
    code (which ``weights_only=True`` refuses to execute).
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise InputError(path, "checkpoint not found")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:
        first = first_line(err)
        if "weights_only" in str(err) or "Unsupported global" in str(err):
            first = "refused: it contains pickled objects that are not plain weights (weights_only=True)"
        raise InputError(path, f"cannot load checkpoint: {first}") from None
    if not isinstance(obj, dict):
        raise InputError(path, f"not a pddpm checkpoint (a {type(obj).__name__}, expected a dict)")
    return obj


def first_line(err: BaseException) -> str:
    """The first line of an error's message (its type name when the message is empty)."""
    return (str(err).strip() or type(err).__name__).splitlines()[0]


def resolve_device(name: str | Any) -> Any:
    """``"auto"`` -> CUDA when available else CPU; any other name as ``torch.device``."""
    import torch  # this module stays light for ``pddpm --help``

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise InputError("--device", f"unknown device {name!r} ({err})") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError("--device", "CUDA was requested but is not available")
    return device
