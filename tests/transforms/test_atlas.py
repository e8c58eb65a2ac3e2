"""The registration atlas: resolving ``--atlas`` / ``$PDDPM_ATLAS``, SRI24 channels, and fetching it."""

from __future__ import annotations

import hashlib
import io
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from pddpm_monai.transforms.atlas import fetch_atlas, resolve_atlas
from pddpm_monai.utils import InputError


def _write(path, arr, affine=np.eye(4)):
    nib.save(nib.Nifti1Image(np.asarray(arr), affine), str(path))
    return path


def test_missing_atlas_points_to_fetch_atlas(tmp_path, monkeypatch):
    monkeypatch.delenv("PDDPM_ATLAS", raising=False)
    with pytest.raises(InputError, match="fetch-atlas"):
        resolve_atlas(None)
    with pytest.raises(InputError, match="fetch-atlas"):
        resolve_atlas(tmp_path / "nowhere")
    with pytest.raises(InputError, match="no atlas template in this folder"):
        resolve_atlas(tmp_path)
    monkeypatch.setenv("PDDPM_ATLAS", str(_write(tmp_path / "t2.nii.gz", np.ones((4, 4, 4), np.float32))))
    assert resolve_atlas(None).image_path.name == "t2.nii.gz"


def test_atlas_channels_and_mask(atlas, shared_data):
    t1 = resolve_atlas(shared_data / "sri24", channel="t1")
    assert (atlas.image_path.name, t1.image_path.name) == ("late.nii.gz", "spgr.nii.gz")
    assert atlas.mask_path.name == "tissues.nii.gz" and atlas.mask.shape == (240, 240, 155)
    assert 1.2e6 < atlas.mask.sum() < 1.8e6  # an adult brain in 1 mm voxels
    with pytest.raises(InputError, match="unknown channel"):
        resolve_atlas(shared_data / "sri24", channel="flair")  # type: ignore[arg-type]


def _zip_bytes() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        img = nib.Nifti1Image(np.ones((4, 4, 4), np.float32), np.eye(4))
        zf.writestr("sri24/late.nii", img.to_bytes())
    return buf.getvalue()


def test_fetch_atlas_checks_the_checksum_before_unpacking(tmp_path):
    payload = _zip_bytes()

    def download(url: str, dest: Path) -> None:
        dest.write_bytes(payload)

    with pytest.raises(InputError, match="checksum mismatch"):
        fetch_atlas(tmp_path / "bad", sha256="0" * 64, download=download)
    assert not list((tmp_path / "bad").rglob("*.nii")) and not list((tmp_path / "bad").glob("*.zip"))
    out = fetch_atlas(tmp_path / "good", sha256=hashlib.sha256(payload).hexdigest(), download=download)
    assert resolve_atlas(out).image_path == out / "sri24" / "late.nii"
