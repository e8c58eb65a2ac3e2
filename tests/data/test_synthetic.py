"""Tests of the synthetic cohort: layouts, determinism, realism against independent references, errors."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from parameterized import parameterized
from scipy import ndimage

from pddpm_monai.cli import main as cli_main
from pddpm_monai.data.datalist import SPLIT_NAMES, read_split_csv
from pddpm_monai.data.synthetic import (
    brats_id,
    ixi_id,
    make_synthetic_raw,
    make_synthetic_root,
    mslub_id,
    synthetic_atlas,
    write_root_splits,
)
from pddpm_monai.utils import InputError

SEED = 3
ROOT_COUNTS = {"n_healthy": 3, "n_tumour": 2, "n_ms": 2}  # the smallest root with no empty split
#: DESIGN.md / shared data README facts that the cohort is calibrated on
TUMOUR_ML = (38.0, 101.0)
SRI24_GM_WM, SRI24_CSF_WM = 1.37, 2.08


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return make_synthetic_root(tmp_path_factory.mktemp("root"), seed=SEED, **ROOT_COUNTS)


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    return make_synthetic_raw(tmp_path_factory.mktemp("raw"), n_healthy=1, n_tumour=1, n_ms=1, seed=SEED)


# ---------------------------------------------------------------- data root ----------------


def test_root_layout_and_splits(root):
    for i in range(ROOT_COUNTS["n_healthy"]):
        img = nib.load(root / "Train/ixi/t2" / f"{ixi_id(i)}_t2.nii.gz")
        assert img.shape == (192, 192, 160)
        assert np.allclose(np.abs(np.diag(img.affine)[:3]), 1.0)
        assert (root / "Train/ixi/mask" / f"{ixi_id(i)}_mask.nii.gz").is_file()
    for folder, name in (("Brats21", brats_id(1)), ("MSLUB", mslub_id(1))):
        for part in ("t2", "mask", "seg"):
            assert nib.load(root / f"Test/{folder}/{part}/{name}_{part}.nii.gz").shape == (192, 192, 160)
    # the lead's reader accepts every split; splits are disjoint and cover each dataset
    per_split = {}
    for name in SPLIT_NAMES:
        items = read_split_csv(root / "splits" / f"{name}.csv", root)
        assert items, f"split {name} is empty"
        per_split[name] = {it["name"] for it in items}
        assert all(it["label"] == (0 if name.startswith("IXI") else 1) for it in items)
        assert all((it["seg"] is None) == name.startswith("IXI") for it in items)
    ixi = {ixi_id(i) for i in range(ROOT_COUNTS["n_healthy"])}
    for fold in range(5):
        train, val, test = (per_split[f"IXI_{s}"] for s in (f"train_fold{fold}", f"val_fold{fold}", "test"))
        assert not (train & val) and not (train & test) and not (val & test)
        assert train | val | test == ixi
    assert per_split["Brats21_val"] | per_split["Brats21_test"] == {brats_id(0), brats_id(1)}


def test_root_rerun_skips_and_is_deterministic(root, tmp_path):
    # a second, smaller cohort with the same seed and 2 workers: its subjects are bit-identical
    small = make_synthetic_root(tmp_path / "small", n_healthy=1, n_tumour=1, n_ms=0, seed=SEED, workers=2)
    for rel in (f"Train/ixi/t2/{ixi_id(0)}_t2.nii.gz", f"Test/Brats21/seg/{brats_id(0)}_seg.nii.gz"):
        assert _md5(small / rel) == _md5(root / rel)
    other = make_synthetic_root(tmp_path / "other", n_healthy=1, n_tumour=0, n_ms=0, seed=SEED + 1)
    rel = f"Train/ixi/t2/{ixi_id(0)}_t2.nii.gz"
    assert _md5(other / rel) != _md5(root / rel)
    # re-running leaves finished files untouched
    target = root / rel
    before = target.stat().st_mtime_ns
    make_synthetic_root(root, seed=SEED, **ROOT_COUNTS)
    assert target.stat().st_mtime_ns == before


def test_tumour_contrast_and_volume(root):
    name = brats_id(0)
    t2 = nib.load(root / f"Test/Brats21/t2/{name}_t2.nii.gz").get_fdata()
    seg = np.asarray(nib.load(root / f"Test/Brats21/seg/{name}_seg.nii.gz").dataobj)
    brain = np.asarray(nib.load(root / f"Test/Brats21/mask/{name}_mask.nii.gz").dataobj) > 0
    assert set(np.unique(seg)) <= {0, 1, 2, 4} and {2, 4} <= set(np.unique(seg))
    assert not np.any(seg[~brain])
    median = np.median(t2[brain & (seg == 0)])
    oedema, whole = np.median(t2[seg == 2]) / median, np.median(t2[seg > 0]) / median
    core = np.median(t2[(seg == 1) | (seg == 4)]) / median
    assert 1.1 < oedema < 1.5  # BraTS T2: 1.19-1.42
    assert 1.4 < core < 2.5  # BraTS core 1.57-2.39, enhancing 1.49-1.72
    assert whole > 1.15
    # brighter than the tissue around it (a 5 mm shell outside the tumour)
    shell = ndimage.binary_dilation(seg > 0, iterations=5) & (seg == 0) & brain
    assert np.median(t2[seg > 0]) > 1.1 * np.median(t2[shell])
    volume_ml = (seg > 0).sum() / 1000.0
    assert 0.7 * TUMOUR_ML[0] < volume_ml < 1.1 * TUMOUR_ML[1]


def test_ms_lesions(root):
    name = mslub_id(0)
    t2 = nib.load(root / f"Test/MSLUB/t2/{name}_t2.nii.gz").get_fdata()
    seg = np.asarray(nib.load(root / f"Test/MSLUB/seg/{name}_seg.nii.gz").dataobj)
    brain = np.asarray(nib.load(root / f"Test/MSLUB/mask/{name}_mask.nii.gz").dataobj) > 0
    assert set(np.unique(seg)) == {0, 1}
    ratio = np.median(t2[seg > 0]) / np.median(t2[brain & (seg == 0)])
    assert 1.2 < ratio < 1.6  # MSLUB patient07: 1.38
    _, n_components = ndimage.label(seg)
    assert n_components >= 4
    assert 0.2 < seg.sum() / 1000.0 < 8.0  # several small lesions (MSLUB patient07: 1.3 ml)


def test_healthy_histogram_has_three_tissue_modes(root):
    from sklearn.mixture import GaussianMixture

    t2 = nib.load(root / "Train/ixi/t2" / f"{ixi_id(0)}_t2.nii.gz").get_fdata(dtype=np.float32)
    mask = np.asarray(nib.load(root / "Train/ixi/mask" / f"{ixi_id(0)}_mask.nii.gz").dataobj) > 0
    core = ndimage.binary_erosion(mask)  # without the partial-volume rim (checked below)
    values = t2[core]
    sample = np.random.default_rng(0).choice(values, 60_000, replace=False)[:, None]
    gmm = GaussianMixture(3, random_state=0).fit(sample)
    order = np.argsort(gmm.means_[:, 0])
    means, sds = gmm.means_[order, 0], np.sqrt(gmm.covariances_[order, 0, 0])
    wm, gm, csf = means
    assert 1.2 < gm / wm < 1.5 and 1.5 < csf / wm < 2.3  # SRI24: GM 1.37, CSF 2.08 x WM
    assert gm - wm > sds[0] + sds[1] and csf - gm > max(sds[1], sds[2])  # separated modes
    assert np.all(gmm.weights_ > 0.05)
    # the mask keeps a dark partial-volume rim, as HD-BET masks of the raw healthy scans do: the
    # masked 1st percentile (the intensity normalisation's low anchor) lies below white matter
    rim = mask & ~core
    assert np.median(t2[rim]) < 0.8 * wm and np.percentile(t2[mask], 1) < 0.6 * wm


# ---------------------------------------------------------------- raw layouts ----------------


def test_raw_layout_and_demographics(raw):
    name = ixi_id(0)
    img = nib.load(raw / "IXI" / f"{name}-T2.nii.gz")
    params = json.loads((raw / "truth/IXI" / f"{name}.json").read_text(encoding="utf-8"))
    assert img.get_data_dtype() == np.int16
    assert np.allclose(sorted(img.header.get_zooms()), sorted(params["spacing"]))
    with (raw / "IXI/IXI.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert rows[0]["IXI_ID"] == "2" and 20 <= float(rows[0]["AGE"]) <= 86
    assert {"SEX_ID [1=m, 2=f]", "AGE"} <= set(rows[0])
    tumour = raw / "BraTS21" / brats_id(0)
    assert (tumour / f"{brats_id(0)}_t2.nii.gz").is_file() and (
        tumour / f"{brats_id(0)}_seg.nii.gz"
    ).is_file()
    ms = raw / "MSLUB" / mslub_id(0)
    assert (ms / "T2.nii.gz").is_file() and (ms / "consensus_gt.nii.gz").is_file()


def test_raw_mask_matches_transformed_template(raw):
    """The written brain mask = the template mask through the recorded pose and scale (Dice)."""
    from nilearn.datasets import load_mni152_brain_mask

    name = ixi_id(0)
    params = json.loads((raw / "truth/IXI" / f"{name}.json").read_text(encoding="utf-8"))
    mask_img = nib.load(raw / "truth/IXI" / f"{name}_mask.nii.gz")
    mask = np.asarray(mask_img.dataobj) > 0
    template = load_mni152_brain_mask(resolution=1)
    # native voxel -> scanner mm -> head frame (inverse pose) -> template mm (inverse scale about the centre)
    ijk = np.stack(np.meshgrid(*[np.arange(0, s, 2) for s in mask.shape], indexing="ij"), -1).reshape(-1, 3)
    world = ijk @ mask_img.affine[:3, :3].T + mask_img.affine[:3, 3]
    pose = np.asarray(params["pose"])
    head = (world - pose[:3, 3]) @ np.linalg.inv(pose[:3, :3]).T
    centre = np.asarray(params["scale_centre_mm"])
    template_mm = centre + (head - centre) / np.asarray(params["scale"])
    vox = (template_mm - template.affine[:3, 3]) @ np.linalg.inv(template.affine[:3, :3]).T
    expected = ndimage.map_coordinates(template.get_fdata(), vox.T, order=0, cval=0.0) > 0.5
    got = mask[tuple(ijk.T)]
    assert _dice(got, expected) > 0.9
    # ... and the scan is really posed: the mask differs from the unposed template
    vox0 = (world - template.affine[:3, 3]) @ np.linalg.inv(template.affine[:3, :3]).T
    unposed = ndimage.map_coordinates(template.get_fdata(), vox0.T, order=0, cval=0.0) > 0.5
    assert _dice(got, unposed) < _dice(got, expected) - 0.05


def test_raw_has_skull_brighter_scalp_and_bias(raw):
    name = ixi_id(0)
    image = np.asarray(nib.load(raw / "IXI" / f"{name}-T2.nii.gz").dataobj).astype(np.float32)
    mask = np.asarray(nib.load(raw / "truth/IXI" / f"{name}_mask.nii.gz").dataobj) > 0
    params = json.loads((raw / "truth/IXI" / f"{name}.json").read_text(encoding="utf-8"))
    outside = ndimage.binary_dilation(mask, iterations=12) & ~mask
    assert np.mean(image[outside] > params["wm_level"] * 0.5) > 0.2  # scalp/CSF signal outside the brain
    far = ~ndimage.binary_dilation(mask, iterations=30)
    assert np.median(image[far]) < 0.2 * params["wm_level"]  # background is dark (noise + offset)


def test_synthetic_atlas(tmp_path):
    t2_path = synthetic_atlas(tmp_path)
    t2, mask = nib.load(t2_path), nib.load(tmp_path / "template_mask.nii.gz")
    assert t2.shape == mask.shape == (197, 233, 189)
    data, m = t2.get_fdata(), np.asarray(mask.dataobj) > 0
    assert not np.any(data[~m]) and np.median(data[m]) > 0
    mtime = t2_path.stat().st_mtime_ns
    synthetic_atlas(tmp_path)
    assert t2_path.stat().st_mtime_ns == mtime


# ---------------------------------------------------------------- splits ----------------

SPLIT_CASES = [(7, 2, 2), (20, 5, 3), (3, 1, 1), (2, 0, 0), (60, 13, 30)]


@parameterized.expand(SPLIT_CASES)
def test_split_sizes(n_healthy, n_tumour, n_ms):
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        ages = np.linspace(20, 80, n_healthy)
        paths = write_root_splits(tmp, n_healthy=n_healthy, n_tumour=n_tumour, n_ms=n_ms, ages=ages, seed=0)
        sizes = {k: len(read_split_csv(p, tmp, check_files=False)) for k, p in paths.items()}
    assert set(sizes) == set(SPLIT_NAMES)
    assert sizes["Brats21_val"] + sizes["Brats21_test"] == n_tumour
    assert sizes["MSLUB_val"] + sizes["MSLUB_test"] == n_ms
    for fold in range(5):
        assert sizes[f"IXI_train_fold{fold}"] + sizes[f"IXI_val_fold{fold}"] + sizes["IXI_test"] == n_healthy
    if n_healthy >= 3:
        assert min(sizes[f"IXI_{s}"] for s in ("test", "val_fold0", "train_fold4")) >= 1
    if n_healthy == 60:  # DESIGN.md proportions, scaled: 158/560 test, 44/402 val
        assert sizes["IXI_test"] == round(60 * 158 / 560) and sizes["MSLUB_val"] == 10


# ---------------------------------------------------------------- errors ----------------


def test_bad_arguments(tmp_path, capsys):
    with pytest.raises(InputError, match="n_tumour"):
        make_synthetic_root(tmp_path / "x", n_healthy=1, n_tumour=-1, n_ms=0, seed=0)
    blocker = tmp_path / "file.txt"
    blocker.write_text("not a folder")
    with pytest.raises(InputError, match="not writable"):
        make_synthetic_raw(blocker / "sub", n_healthy=1, n_tumour=0, n_ms=0, seed=0)
    code = cli_main(["synth", "root", "--out", str(tmp_path / "y"), "--n-healthy", "-2"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "n_healthy" in err


def test_preview(root, tmp_path):
    import matplotlib.image as mpimg

    out = tmp_path / "preview.png"
    assert cli_main(["synth", "preview", "--input", str(root), "--out", str(out), "--n", "1"]) == 0
    png = mpimg.imread(out)
    assert png.ndim == 3 and png.shape[0] > 500 and png.shape[1] > 400  # 3 rows (ixi, brats, mslub) x 3 views
    assert png[..., :3].std() > 0.05  # not blank
