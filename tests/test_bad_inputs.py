"""The bad-input catalogue: every case runs a real ``pddpm`` command in a subprocess.

For each case: a non-zero exit code, exactly one line on stderr that names the offending file (or
option) and the problem, no Python traceback, and no partial output left behind. The count of
cases tried / passing is printed by ``test_catalogue_count`` (run with ``-s`` to see it).
"""

from __future__ import annotations

import csv
import os
import re
import resource
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

pytestmark = pytest.mark.slow

SHAPE = (48, 48, 40)


def _nifti(path: Path, array: np.ndarray, affine: np.ndarray | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, np.eye(4) if affine is None else affine), str(path))
    return path


def _brain() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    zz, yy, xx = np.meshgrid(*(np.linspace(-1, 1, s) for s in SHAPE), indexing="ij")
    mask = (zz**2 + yy**2 + xx**2) < 0.7
    img = np.where(mask, 100 + 20 * rng.random(SHAPE), 0).astype(np.float32)
    return img, mask.astype(np.uint8)


@dataclass
class Env:
    root: Path
    image: Path
    mask: Path
    checkpoint: Path
    data_root: Path


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> Env:
    from pddpm_monai.methods import build_method
    from pddpm_monai.methods.checkpoint import save_method_checkpoint

    root = tmp_path_factory.mktemp("bad_inputs")
    img, mask = _brain()
    image = _nifti(root / "scan_t2.nii.gz", img)
    mask_path = _nifti(root / "scan_mask.nii.gz", mask)
    torch.manual_seed(0)
    tiny = {
        "model_channels": 8,
        "channel_mult": [1],
        "num_res_blocks": 1,
        "num_groups": 4,
        "num_head_channels": 8,
    }
    method = build_method("pddpm", {"patch_size": 48, "network": tiny})
    checkpoint = save_method_checkpoint(root / "tiny.pt", method)
    data_root = _tiny_data_root(root / "data_root", img, mask)
    return Env(root, image, mask_path, checkpoint, data_root)


def _tiny_data_root(root: Path, img: np.ndarray, mask: np.ndarray) -> Path:
    rows: dict[str, list[dict]] = {}
    seg = np.zeros_like(mask)
    seg[20:26, 20:26, 18:24] = 1
    for i in range(3):
        name = f"IXI00{i}-Synth-000{i}"
        _nifti(root / f"Train/ixi/t2/{name}_t2.nii.gz", img)
        _nifti(root / f"Train/ixi/mask/{name}_mask.nii.gz", mask)
        row = dict(img_name=f"{name}_t2.nii.gz", age=30 + i, label=0, seg_path="")
        row.update(
            img_path=f"/Train/ixi/t2/{name}_t2.nii.gz", mask_path=f"/Train/ixi/mask/{name}_mask.nii.gz"
        )
        rows.setdefault("IXI_train_fold0" if i < 2 else "IXI_val_fold0", []).append(row)
    for i in range(2):
        name = f"BraTS2021_0000{i}"
        for kind, arr in (("t2", img), ("mask", mask), ("seg", seg)):
            _nifti(root / f"Test/Brats21/{kind}/{name}_{kind}.nii.gz", arr)
        row = dict(img_name=name, age="", label=1, img_path=f"/Test/Brats21/t2/{name}_t2.nii.gz")
        row.update(
            mask_path=f"/Test/Brats21/mask/{name}_mask.nii.gz",
            seg_path=f"/Test/Brats21/seg/{name}_seg.nii.gz",
        )
        rows.setdefault("Brats21_val" if i == 0 else "Brats21_test", []).append(row)
    (root / "splits").mkdir(parents=True, exist_ok=True)
    for split, items in rows.items():
        with (root / "splits" / f"{split}.csv").open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(items[0]))
            writer.writeheader()
            writer.writerows(items)
    return root


def _run(args: list[str], *, limit_file_size: int | None = None) -> subprocess.CompletedProcess:
    """``python -m pddpm_monai ARGS`` (or ``python -m MODULE ...`` when ARGS starts with ``-m``)."""

    def limits() -> None:
        if limit_file_size is not None:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit_file_size, limit_file_size))

    environ = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    return subprocess.run(
        [sys.executable, *(args if args[0] == "-m" else ["-m", "pddpm_monai", *args])],
        capture_output=True,
        text=True,
        encoding="utf-8",
        errors="replace",
        timeout=300,
        env=environ,
        preexec_fn=limits,
    )


# ---- the cases: (id, builder(env, tmp) -> (argv, text the error must contain, output dir or None)) ----


def _reconstruct(env: Env, image: Path, out: Path, mask: Path | None = None, ckpt: Path | None = None):
    args = [
        "reconstruct",
        "--checkpoint",
        str(ckpt or env.checkpoint),
        "--image",
        str(image),
        "--out",
        str(out),
    ]
    return args + (["--mask", str(mask)] if mask else [])


def case_unreadable(env, tmp):
    bad = tmp / "folder.nii.gz"
    bad.mkdir()
    return _reconstruct(env, bad, tmp / "out"), "folder.nii.gz", tmp / "out"


def case_truncated(env, tmp):
    bad = tmp / "truncated.nii.gz"
    bad.write_bytes(env.image.read_bytes()[:200])
    return _reconstruct(env, bad, tmp / "out"), "truncated.nii.gz", tmp / "out"


def case_not_nifti(env, tmp):
    bad = tmp / "notes.nii.gz"
    bad.write_text("this is not an image\n")
    return _reconstruct(env, bad, tmp / "out"), "notes.nii.gz", tmp / "out"


def case_2d(env, tmp):
    bad = _nifti(tmp / "flat.nii.gz", np.ones((48, 48), np.float32))
    return _reconstruct(env, bad, tmp / "out"), "flat.nii.gz: expected a 3-D image", tmp / "out"


def case_4d(env, tmp):
    bad = _nifti(tmp / "series.nii.gz", np.ones((*SHAPE, 3), np.float32))
    return _reconstruct(env, bad, tmp / "out"), "series.nii.gz: expected a 3-D image", tmp / "out"


def case_nan(env, tmp):
    img, _ = _brain()
    img[10, 10, 10] = np.nan
    bad = _nifti(tmp / "nan.nii.gz", img)
    return _reconstruct(env, bad, tmp / "out"), "nan.nii.gz: image contains 1 NaN/Inf", tmp / "out"


def case_inf(env, tmp):
    img, _ = _brain()
    img[1, 2, 3] = np.inf
    bad = _nifti(tmp / "inf.nii.gz", img)
    return _reconstruct(env, bad, tmp / "out"), "inf.nii.gz: image contains 1 NaN/Inf", tmp / "out"


def case_all_zero(env, tmp):
    bad = _nifti(tmp / "zeros.nii.gz", np.zeros(SHAPE, np.float32))
    return _reconstruct(env, bad, tmp / "out"), "zeros.nii.gz: image is all zeros", tmp / "out"


def case_grid_mismatch(env, tmp):
    bad = _nifti(tmp / "small_mask.nii.gz", np.ones((30, 30, 30), np.uint8))
    return (
        _reconstruct(env, env.image, tmp / "out", mask=bad),
        "small_mask.nii.gz: grid mismatch",
        tmp / "out",
    )


def case_affine_mismatch(env, tmp):
    _, mask = _brain()
    bad = _nifti(tmp / "shifted_mask.nii.gz", mask, np.diag([2.0, 2.0, 2.0, 1.0]))
    args = _reconstruct(env, env.image, tmp / "out", mask=bad)
    return args, "shifted_mask.nii.gz: grid mismatch", tmp / "out"


def case_empty_mask(env, tmp):
    bad = _nifti(tmp / "empty_mask.nii.gz", np.zeros(SHAPE, np.uint8))
    return (
        _reconstruct(env, env.image, tmp / "out", mask=bad),
        "empty_mask.nii.gz: (brain mask is empty|image is all zeros)",
        tmp / "out",
    )


def case_corrupt_checkpoint(env, tmp):
    bad = tmp / "corrupt.pt"
    bad.write_bytes(env.checkpoint.read_bytes()[:100])
    return (
        _reconstruct(env, env.image, tmp / "out", ckpt=bad),
        "corrupt.pt: cannot load checkpoint",
        tmp / "out",
    )


class _Payload:
    def __reduce__(self):
        return (os.system, ("touch /tmp/pddpm_pwned",))


def case_pickle_with_code(env, tmp):
    bad = tmp / "evil.pt"
    torch.save({"format": "pddpm-monai", "payload": _Payload()}, bad)
    return (
        _reconstruct(env, env.image, tmp / "out", ckpt=bad),
        r"evil.pt: cannot load checkpoint: refused",
        tmp / "out",
    )


def case_other_architecture(env, tmp):
    state = torch.load(env.checkpoint, weights_only=True)
    state["config"]["network"]["model_channels"] = 16  # the weights are for 8 channels
    bad = tmp / "other_arch.pt"
    torch.save(state, bad)
    args = _reconstruct(env, env.image, tmp / "out", ckpt=bad)
    return args, "other_arch.pt: weights do not match", tmp / "out"


def case_not_a_checkpoint(env, tmp):
    bad = tmp / "weights_only.pt"
    torch.save({"conv.weight": torch.zeros(2)}, bad)
    return (
        _reconstruct(env, env.image, tmp / "out", ckpt=bad),
        "weights_only.pt: not a pddpm-monai checkpoint",
        tmp / "out",
    )


def case_unknown_option(env, tmp):
    return (
        ["train", "--data-root", str(env.data_root), "--out", str(tmp / "run"), "--bogus", "1"],
        "unrecognized arguments: --bogus",
        tmp / "run",
    )


def case_root_without_splits(env, tmp):
    root = tmp / "no_splits"
    (root / "Train/ixi/t2").mkdir(parents=True)
    args = ["train", "--data-root", str(root), "--out", str(tmp / "run"), "--epochs", "1"]
    return args, "no_splits: data root has no splits/ folder", tmp / "run"


def _copy_root(env: Env, tmp: Path) -> Path:
    import shutil

    return Path(shutil.copytree(env.data_root, tmp / "root"))


def case_split_missing_file(env, tmp):
    root = _copy_root(env, tmp)
    (root / "Train/ixi/t2/IXI000-Synth-0000_t2.nii.gz").unlink()
    args = ["train", "--data-root", str(root), "--out", str(tmp / "run"), "--epochs", "1"]
    return args, "IXI_train_fold0.csv: image of 'IXI000-Synth-0000' not found", tmp / "run"


def case_split_missing_column(env, tmp):
    root = _copy_root(env, tmp)
    path = root / "splits/IXI_val_fold0.csv"
    lines = path.read_text(encoding="utf-8").splitlines()
    path.write_text("\n".join(line.rsplit(",", 2)[0] for line in lines) + "\n")  # drops mask_path, seg_path
    args = ["train", "--data-root", str(root), "--out", str(tmp / "run"), "--epochs", "1"]
    return args, "IXI_val_fold0.csv: split CSV lacks column", tmp / "run"


def case_seg_unexpected_labels(env, tmp):
    root = _copy_root(env, tmp)
    seg = root / "Test/Brats21/seg/BraTS2021_00000_seg.nii.gz"
    _nifti(seg, np.full(SHAPE, 9, np.uint8))
    args = ["evaluate", "--method", "thresh", "--data-root", str(root), "--out", str(tmp / "eval")]
    return (
        args + ["--datasets", "brats21", "--no-figures"],
        "BraTS2021_00000_seg.nii.gz: unexpected seg labels",
        None,
    )


def case_out_not_writable(env, tmp):
    blocker = tmp / "a_file"
    blocker.write_text("x")
    return _reconstruct(env, env.image, blocker / "out"), "a_file/out: output folder is not writable", None


def case_negative_count(env, tmp):
    return ["synth", "root", "--out", str(tmp / "synth"), "--n-healthy", "-3"], "-3", tmp / "synth"


def case_missing_atlas(env, tmp):
    raw = tmp / "raw"
    raw.mkdir()
    _nifti(raw / "IXI001-Guys-0001-T2.nii.gz", _brain()[0])
    args = [
        "preprocess",
        "ixi",
        "--input",
        str(raw),
        "--data-root",
        str(tmp / "root"),
        "--atlas",
        str(tmp / "nowhere"),
    ]
    return args, "nowhere", tmp / "root"


def _detect(env: Env, scan: Path, out: Path) -> list[str]:
    return ["detect", str(scan), "--checkpoint", str(env.checkpoint), "--out", str(out), "--skull-stripped"]


def case_detect_4d(env, tmp):
    bad = _nifti(tmp / "dwi_series.nii.gz", np.ones((*SHAPE, 4), np.float32))
    return _detect(env, bad, tmp / "out"), "dwi_series.nii.gz: expected a 3-D image", tmp / "out"


def case_detect_not_nifti(env, tmp):
    bad = tmp / "report.pdf"
    bad.write_bytes(b"%PDF-1.4 not an image")
    return _detect(env, bad, tmp / "out"), "report.pdf", tmp / "out"


def case_ablate_ddpm_checkpoint(env, tmp):
    from pddpm_monai.methods import build_method
    from pddpm_monai.methods.checkpoint import save_method_checkpoint

    tiny = {
        "model_channels": 8,
        "channel_mult": [1],
        "num_res_blocks": 1,
        "num_groups": 4,
        "num_head_channels": 8,
    }
    ckpt = save_method_checkpoint(tmp / "ddpm.pt", build_method("ddpm", {"network": tiny}))
    args = ["ablate", "--checkpoint", str(ckpt), "--data-root", str(env.data_root), "--out", str(tmp / "abl")]
    return args + ["--patch-sizes", "32", "--t-test", "400"], "ddpm.pt", tmp / "abl"


def case_splits_without_images(env, tmp):
    (tmp / "empty_root").mkdir()
    return ["splits", "--data-root", str(tmp / "empty_root")], "empty_root", tmp / "empty_root"


def case_table_not_a_results_folder(env, tmp):
    (tmp / "nothing_here").mkdir()
    return ["table", str(tmp / "nothing_here"), "--out", str(tmp / "tab")], "nothing_here", tmp / "tab"


def case_bundle_unknown_key(env, tmp):
    bundle = Path(__file__).resolve().parents[1] / "bundles" / "pddpm_brain_uad"
    config = str(bundle / "configs" / "train.json")
    args = [
        "-m",
        "pddpm_monai.bundle.check",
        "check",
        "training",
        "--config_file",
        config,
        "--bundle_root",
        str(bundle),
    ]
    return (
        args + ["--data_root", str(env.data_root), "--pach_size", "60"],
        "unknown override key.*pach_size",
        None,
    )


def _write_csv(path: Path, rows: list[dict]) -> None:
    with path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def case_split_row_pairs_two_subjects(env, tmp):
    """A split converted with a blind replace("t1", "t2"): patient15's row names patient25's scan."""
    root = _copy_root(env, tmp)
    img, mask = _brain()
    seg = np.zeros_like(mask)
    seg[20:26, 20:26, 18:24] = 1
    for patient in ("patient15", "patient25"):
        for kind, arr in (("t2", img), ("mask", mask), ("seg", seg)):
            _nifti(root / f"Test/MSLUB/{kind}/{patient}_{kind}.nii.gz", arr)
    row = dict(img_name="patient15", age=57, label=1, img_path="/Test/MSLUB/t2/patient25_t2.nii.gz")
    row.update(
        mask_path="/Test/MSLUB/mask/patient15_mask.nii.gz", seg_path="/Test/MSLUB/seg/patient15_seg.nii.gz"
    )
    _write_csv(root / "splits/MSLUB_val.csv", [row])
    test = {k: v.replace("patient15", "patient25") for k, v in row.items() if isinstance(v, str)}
    _write_csv(root / "splits/MSLUB_test.csv", [{**row, **test}])
    args = ["evaluate", "--method", "thresh", "--data-root", str(root), "--out", str(tmp / "eval")]
    return (
        args + ["--datasets", "mslub", "--no-figures"],
        r"MSLUB_val.csv: line 2 \('patient15'\) pairs files of different subjects \(name patient15, image patient25",
        tmp / "eval",
    )


def case_split_subject_twice_with_other_files(env, tmp):
    root = _copy_root(env, tmp)
    path = root / "splits/IXI_train_fold0.csv"
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    other = dict(rows[0], mask_path=rows[0]["mask_path"].replace("/mask/", "/mask_v2/"))
    _nifti(root / other["mask_path"].lstrip("/"), _brain()[1])
    _write_csv(path, [*rows, other])
    args = ["train", "--data-root", str(root), "--out", str(tmp / "run"), "--epochs", "1"]
    return (
        args,
        "IXI_train_fold0.csv: lines 2 and 4 list subject 'IXI000-Synth-0000' with different files",
        tmp / "run",
    )


def case_channels_groups_do_not_divide(env, tmp):
    args = ["train", "--data-root", str(env.data_root), "--out", str(tmp / "run"), "--channels", "16"]
    return (
        args,
        "cannot build the pDDPM network: num_groups=32 must divide every level's channels",
        tmp / "run",
    )


def case_slices_per_volume_zero(env, tmp):
    args = ["train", "--data-root", str(env.data_root), "--out", str(tmp / "run"), "--slices-per-volume", "0"]
    return args, "--slices-per-volume: must be a positive integer", tmp / "run"


def case_evaluate_run_folder_without_checkpoint(env, tmp):
    (tmp / "run").mkdir()
    args = [
        "evaluate",
        "--checkpoint",
        str(tmp / "run"),
        "--data-root",
        str(env.data_root),
        "--out",
        str(tmp / "e"),
    ]
    return args, "run: run folder holds no best.pt or last.pt", tmp / "e"


#: cases refused before any output: their output folder must not exist afterwards
NO_OUTPUT_FOLDER = (
    "channels_groups_do_not_divide",
    "slices_per_volume_zero",
    "split_subject_twice_with_other_files",
    "evaluate_run_folder_without_checkpoint",
)


CASES: dict[str, Callable] = {
    name[len("case_") :]: fn for name, fn in globals().items() if name.startswith("case_")
}


PROGRESS_BAR = re.compile(r"\d+%\|.*\|")


def _assert_one_line_error(result: subprocess.CompletedProcess, must_contain: str) -> None:
    # progress bars (tqdm, on stderr) are not error lines
    stderr_lines = [
        line for line in result.stderr.splitlines() if line.strip() and not PROGRESS_BAR.search(line)
    ]
    assert result.returncode != 0, f"exit code 0; stdout={result.stdout[-500:]}"
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    assert len(stderr_lines) == 1, result.stderr[-2000:]
    assert re.search(must_contain, stderr_lines[0]), stderr_lines[0]


def _partial_files(folder: Path | None) -> list[Path]:
    if folder is None or not folder.exists():
        return []
    return [
        p
        for p in folder.rglob("*")
        if p.is_file() and (".tmp-" in p.name or p.suffix in (".nii", ".gz", ".pt"))
    ]


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input(env, tmp_path, case):
    args, must_contain, out_dir = CASES[case](env, tmp_path)
    result = _run(args)
    _assert_one_line_error(result, must_contain)
    assert _partial_files(out_dir) == []
    if case in NO_OUTPUT_FOLDER:
        assert not out_dir.exists(), sorted(out_dir.rglob("*"))
    assert not Path("/tmp/pddpm_pwned").exists()


def test_disk_full_leaves_no_partial_output(env, tmp_path):
    """Writes fail with EFBIG past a 4 KiB file-size limit (a stand-in for a full disk)."""
    out = tmp_path / "out"
    result = _run(_reconstruct(env, env.image, out), limit_file_size=4096)
    _assert_one_line_error(result, "File too large")
    assert [p for p in out.rglob("*") if p.is_file() and p.stat().st_size] == [] if out.exists() else True
    assert not any(".tmp-" in p.name for p in out.rglob("*")) if out.exists() else True


def test_debug_shows_the_traceback(env, tmp_path):
    result = _run(["--debug", *_reconstruct(env, tmp_path / "missing.nii.gz", tmp_path / "out")])
    assert result.returncode != 0 and "Traceback" in result.stderr


def test_catalogue_count(capsys):
    # the cases above plus disk-full; reported for the reliability note
    with capsys.disabled():
        print(f"\nbad-input catalogue: {len(CASES) + 1} cases")
    assert len(CASES) >= 20
