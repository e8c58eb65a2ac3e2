import gzip

import nibabel as nib
import numpy as np
import pytest
import torch

from pddpm_monai.utils import (
    InputError,
    atomic_path,
    check_same_grid,
    load_checkpoint,
    read_nifti,
    save_checkpoint,
    save_json,
    save_nifti,
)


def _write(path, array, affine=None):
    nib.save(nib.Nifti1Image(array, np.eye(4) if affine is None else affine), str(path))
    return path


def test_read_nifti_roundtrip_and_singleton_squeeze(tmp_path):
    arr = np.arange(24, dtype=np.float32).reshape(2, 3, 4, 1)
    data, affine = read_nifti(_write(tmp_path / "a.nii.gz", arr))
    assert data.shape == (2, 3, 4)
    np.testing.assert_array_equal(data, arr[..., 0])
    np.testing.assert_array_equal(affine, np.eye(4))


@pytest.mark.parametrize(
    "array, message",
    [
        (np.ones((4, 4), np.float32), "expected a 3-D image"),
        (np.ones((4, 4, 4, 2), np.float32), "expected a 3-D image"),
        (np.full((3, 3, 3), np.nan, np.float32), "NaN/Inf"),
        (np.zeros((3, 3, 3), np.float32), "all zeros"),
    ],
)
def test_read_nifti_rejects_bad_volumes(tmp_path, array, message):
    path = _write(tmp_path / "bad.nii.gz", array)
    with pytest.raises(InputError, match=message) as info:
        read_nifti(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_read_nifti_rejects_truncated_and_non_nifti(tmp_path):
    good = _write(tmp_path / "g.nii.gz", np.ones((8, 8, 8), np.float32))
    truncated = tmp_path / "t.nii.gz"
    truncated.write_bytes(good.read_bytes()[:60])
    text = tmp_path / "x.nii.gz"
    text.write_bytes(gzip.compress(b"hello"))
    for path in (truncated, text, tmp_path / "missing.nii.gz"):
        with pytest.raises(InputError, match=str(path.name)):
            read_nifti(path)


def test_atomic_path_leaves_nothing_on_error(tmp_path):
    target = tmp_path / "out.nii.gz"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("partial")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    save_nifti(np.ones((2, 2, 2), np.float32), np.eye(4), target)
    assert [p.name for p in tmp_path.iterdir()] == ["out.nii.gz"]


def test_atomic_path_removes_temporaries_of_killed_writers_only(tmp_path):
    import os
    import subprocess
    import sys

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()  # its pid now names no process (a killed writer's)
    target = tmp_path / "out.json"
    dead = tmp_path / f".out.tmp-{child.pid}-abc.json"
    alive = tmp_path / f".out.tmp-{os.getppid()}-def.json"  # a writer that is still running
    other = tmp_path / f".other.tmp-{child.pid}-ghi.json"  # another output's temporary
    for p in (dead, alive, other):
        p.write_text("partial")
    save_json({"a": 1}, target)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["out.json", alive.name, other.name])


def test_check_same_grid(tmp_path):
    a = (np.zeros((2, 2, 2)), np.eye(4))
    check_same_grid(a, (np.zeros((2, 2, 2)), np.eye(4)), "m.nii.gz")
    with pytest.raises(InputError, match="shape"):
        check_same_grid(a, (np.zeros((2, 2, 3)), np.eye(4)), "m.nii.gz")
    with pytest.raises(InputError, match="affine"):
        check_same_grid(a, (np.zeros((2, 2, 2)), np.diag([2.0, 1, 1, 1])), "m.nii.gz")


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_checkpoints_are_weights_only(tmp_path):
    path = save_checkpoint({"w": torch.arange(3), "step": 7}, tmp_path / "c.pt")
    state = load_checkpoint(path)
    assert state["step"] == 7 and torch.equal(state["w"], torch.arange(3))
    evil = tmp_path / "evil.pt"
    torch.save({"x": _Evil()}, evil)
    with pytest.raises(InputError, match="evil.pt.*refused"):
        load_checkpoint(evil)
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(path.read_bytes()[:40])
    with pytest.raises(InputError, match="corrupt.pt: cannot load"):
        load_checkpoint(corrupt)
