"""The registration atlas (SRI24 by default): resolving it from ``--atlas`` / ``$PDDPM_ATLAS`` and fetching it.

The atlas is never shipped with the project. A user points at it with ``--atlas PATH`` (a folder
holding the SRI24 channels, or a single NIfTI template with an optional brain mask) or the
``PDDPM_ATLAS`` environment variable, or downloads it once with ``pddpm fetch-atlas``.

Example:
    >>> atlas = resolve_atlas("/data/sri24", channel="t2")  # doctest: +SKIP
    >>> atlas.image_path.name  # doctest: +SKIP
    'late.nii.gz'
"""

from __future__ import annotations

import hashlib
import os
import urllib.request
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import numpy as np

from pddpm_monai.transforms.scan_io import NIFTI_SUFFIXES
from pddpm_monai.utils import InputError, atomic_path, read_nifti

__all__ = [
    "ATLAS_ENV",
    "SRI24_CHANNELS",
    "SRI24_URL",
    "SRI24_SHA256",
    "Atlas",
    "resolve_atlas",
    "fetch_atlas",
]

#: environment variable naming the atlas folder or file
ATLAS_ENV = "PDDPM_ATLAS"
#: SRI24 channel name -> file stem in the official distribution
SRI24_CHANNELS: dict[str, str] = {"t2": "late", "t1": "spgr", "pd": "erly"}
#: SRI24 tissue label file (0 background, 1 CSF, 2 GM, 3 WM): its non-zero voxels are the brain mask
SRI24_TISSUES = "tissues"
#: file stems tried for a generic (non-SRI24) template folder, e.g. the synthetic cohort's atlas
GENERIC_IMAGE_STEMS: tuple[str, ...] = ("t2", "template_t2", "template", "atlas", "image")
GENERIC_MASK_STEMS: tuple[str, ...] = ("mask", "brain_mask", "template_mask", "atlas_mask")

#: official distribution of the skull-stripped SRI24 anatomy channels (NITRC project "sri24",
#: https://www.nitrc.org/projects/sri24/, CC BY-SA 3.0); it unpacks to ``sri24/{spgr,late,erly}.nii``
SRI24_URL = "https://www.nitrc.org/frs/download.php/4499/sri24_anatomy_nifti.zip"
#: sha256 of ``sri24_anatomy_nifti.zip`` (6,522,201 bytes)
SRI24_SHA256 = "c2a66abd5bb37ba443b935ef4732a3e3a2f34ca57bedcdac6cf5902b50f013b6"

AtlasChannel = Literal["t2", "t1", "pd"]


def _find_nifti(folder: Path, stems: tuple[str, ...]) -> Path | None:
    for stem in stems:
        for suffix in NIFTI_SUFFIXES:
            for candidate in (folder / f"{stem}{suffix}", folder / "sri24" / f"{stem}{suffix}"):
                if candidate.is_file():
                    return candidate
    return None


@dataclass(frozen=True)
class Atlas:
    """A registration template: the image, an optional brain mask file, and the channel name.

    Args:
        image_path: the template image (skull-stripped).
        mask_path: a label/mask file whose non-zero voxels are the brain; ``None``: the template's
            non-zero voxels.
        channel: which contrast the template is (``"t2"``, ``"t1"``, ``"pd"``), for the record.
    """

    image_path: Path
    mask_path: Path | None = None
    channel: str = "t2"

    @cached_property
    def image(self) -> tuple[np.ndarray, np.ndarray]:
        """``(array, affine)`` of the template (validated by :func:`read_nifti`)."""
        return read_nifti(self.image_path)

    @cached_property
    def mask(self) -> np.ndarray:
        """Boolean brain mask on the template grid."""
        if self.mask_path is None:
            return self.image[0] > 0
        arr, aff = read_nifti(self.mask_path)
        if arr.shape != self.image[0].shape or not np.allclose(aff, self.image[1], atol=1e-3):
            raise InputError(self.mask_path, "atlas mask is not on the atlas image's grid")
        return arr > 0

    def describe(self) -> dict[str, str | None]:
        """Plain-data description stored in every subject record."""
        return {
            "image": str(self.image_path),
            "mask": None if self.mask_path is None else str(self.mask_path),
            "channel": self.channel,
        }


def resolve_atlas(
    path: str | os.PathLike | None = None,
    *,
    channel: AtlasChannel = "t2",
    mask: str | os.PathLike | None = None,
) -> Atlas:
    """Find the atlas from ``path``, else ``$PDDPM_ATLAS``.

    Args:
        path: a folder with the SRI24 files (``late``/``spgr``/``erly`` + optional ``tissues``,
            ``.nii`` or ``.nii.gz``, possibly in an ``sri24/`` sub-folder), a folder with a generic
            template (``t2``/``template`` + ``mask``), or a single NIfTI template.
        channel: SRI24 channel used as the registration target: ``"t2"`` (default, same contrast
            as the scans) or ``"t1"`` (what the authors' ANTs scripts used for IXI T2).
        mask: optional explicit brain mask file; default: SRI24 ``tissues`` > 0, a ``mask`` file
            beside a generic template, else the template's non-zero voxels.

    Returns:
        The :class:`Atlas`.

    Raises:
        InputError: no atlas given or found (the message points to ``pddpm fetch-atlas``).
    """
    if channel not in SRI24_CHANNELS:
        raise InputError("--atlas-channel", f"unknown channel {channel!r}; use one of {list(SRI24_CHANNELS)}")
    source = path if path is not None else os.environ.get(ATLAS_ENV)
    if not source:
        raise InputError(
            "--atlas",
            f"no atlas given: pass --atlas PATH or set {ATLAS_ENV}; "
            "download SRI24 once with `pddpm fetch-atlas --out DIR`",
        )
    root = Path(source)
    mask_path = Path(mask) if mask is not None else None
    if root.is_file():
        return Atlas(root, mask_path or _find_nifti(root.parent, GENERIC_MASK_STEMS), channel)
    if not root.is_dir():
        raise InputError(root, "atlas not found; download SRI24 with `pddpm fetch-atlas --out DIR`")
    image = _find_nifti(root, (SRI24_CHANNELS[channel],))
    if image is not None:
        return Atlas(image, mask_path or _find_nifti(root, (SRI24_TISSUES,)), channel)
    image = _find_nifti(root, GENERIC_IMAGE_STEMS)
    if image is None:
        raise InputError(
            root,
            f"no atlas template in this folder (looked for SRI24 {SRI24_CHANNELS[channel]}.nii[.gz] "
            f"or {'/'.join(GENERIC_IMAGE_STEMS)}.nii[.gz]); fetch SRI24 with `pddpm fetch-atlas`",
        )
    return Atlas(image, mask_path or _find_nifti(root, GENERIC_MASK_STEMS), channel)


def fetch_atlas(
    out_dir: str | os.PathLike,
    *,
    url: str = SRI24_URL,
    sha256: str = SRI24_SHA256,
    download: Callable[[str, Path], Any] = urllib.request.urlretrieve,
) -> Path:
    """Download the SRI24 anatomy archive, verify its checksum, and unpack it into ``out_dir``.

    Nothing is unpacked unless the sha256 matches; a finished folder is not downloaded again.

    Args:
        out_dir: destination folder; afterwards ``resolve_atlas(out_dir)`` finds the channels.
        url: archive address (default: the official NITRC distribution).
        sha256: expected checksum of the archive.
        download: ``download(url, dest_path)``; replaceable for mirrors and tests.

    Returns:
        ``out_dir``.

    Raises:
        InputError: checksum mismatch or an archive that is not a zip.
    """
    out = Path(out_dir)
    if _find_nifti(out, (SRI24_CHANNELS["t2"],)) is not None:
        return out
    out.mkdir(parents=True, exist_ok=True)
    archive = out / Path(url.split("?")[0]).name
    with atomic_path(archive) as tmp:
        download(url, tmp)
        actual = hashlib.sha256(tmp.read_bytes()).hexdigest()  # the archive is 6.5 MB
        if actual != sha256:
            raise InputError(url, f"checksum mismatch: sha256 {actual}, expected {sha256}; not unpacked")
    try:
        with zipfile.ZipFile(archive) as zf:
            zf.extractall(out)
    except zipfile.BadZipFile:
        raise InputError(archive, "downloaded atlas is not a zip archive") from None
    return out
