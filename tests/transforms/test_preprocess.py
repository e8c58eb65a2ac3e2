"""Preprocessing transforms: geometry helpers, N4 shrink equivalence, and the chain on real scans.

Real-data tests use ../shared/data (skipped when absent); HD-BET runs once per module (fixture).
"""

from __future__ import annotations

import dataclasses

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from parameterized import parameterized

from pddpm_monai.data.atlas import resolve_atlas
from pddpm_monai.transforms.preprocess import (
    CropToBraind,
    PreprocessConfig,
    RegisterToAtlasd,
    RegistrationError,
    array_to_sitk,
    crop_or_pad,
    itk_threads,
    load_subject,
    n4_correct,
    preprocess_scan,
    preprocessing_transforms,
    register_affine,
    resample_to_spacing,
    sitk_to_array,
    to_metatensor,
    to_native,
)
from pddpm_monai.utils import InputError, read_nifti

#: measured: healthy head (HD-BET fast, T2 atlas) 0.945; MSLUB patient07 0.947
MIN_BRAIN_DICE = 0.92
#: fewer N4/registration iterations than the defaults keep the real-data tests within budget
FAST = dataclasses.replace(PreprocessConfig(), n4_iterations=(20, 20, 20), reg_iterations=50)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * np.logical_and(a, b).sum() / (a.sum() + b.sum()))


AFFINES = [
    [np.diag([-1.0, 1.0, 1.0, 1.0])],
    [np.array([[-1.0, 0, 0, 112], [0, 0.99, -0.22, -96.7], [0, 0.11, 1.99, -62.5], [0, 0, 0, 1]])],
    [np.array([[0, 0, 1.2, -10], [-0.9, 0, 0, 20], [0, 1.1, 0, 5], [0, 0, 0, 1]])],
]


@parameterized.expand(AFFINES)
def test_sitk_round_trip_keeps_world_coordinates(affine):
    arr = np.random.default_rng(0).random((5, 6, 7)).astype(np.float32)
    img = array_to_sitk(arr, affine)
    back, back_aff = sitk_to_array(img)
    np.testing.assert_array_equal(back, arr)
    np.testing.assert_allclose(back_aff, affine, atol=1e-6)
    # voxel (1, 2, 3) is at the same world point for nibabel (RAS) and ITK (LPS)
    ras = (affine @ [1, 2, 3, 1])[:3]
    lps = np.asarray(img.TransformIndexToPhysicalPoint((1, 2, 3)))
    np.testing.assert_allclose(lps, ras * [-1, -1, 1], atol=1e-5)


def test_crop_or_pad_is_exactly_invertible():
    arr = np.random.default_rng(1).random((20, 18, 9)).astype(np.float32)
    aff = np.diag([-1.0, 1.0, 2.0, 1.0])
    start, size = (3, -2, -4), (12, 22, 16)
    out, out_aff = crop_or_pad(arr, aff, start, size)
    assert out.shape == size
    np.testing.assert_array_equal(out[0:12, 2:20, 4:13], arr[3:15, 0:18, 0:9])
    np.testing.assert_allclose(out_aff @ [0, 0, 0, 1], aff @ [*start, 1])
    back = CropToBraind.inverse_array(out, {"start": list(start), "source_shape": list(arr.shape)})
    np.testing.assert_array_equal(back[3:15], arr[3:15])
    assert not back[:3].any() and not back[15:].any()


@pytest.fixture(scope="module")
def atlas(shared_data):
    return resolve_atlas(shared_data / "sri24", channel="t2")


@pytest.mark.slow
def test_n4_shrink_gives_the_same_correction(atlas):
    """N4 on a grid shrunk x2 corrects like full resolution (3 mm atlas T2 with a known bias field)."""
    arr, aff = atlas.image
    img = resample_to_spacing(array_to_sitk(arr, aff), 3.0)
    tissues = read_nifti(atlas.mask_path)[0]
    brain = resample_to_spacing(array_to_sitk((tissues > 0).astype(np.uint8), aff), 3.0, mode="nearest")
    wm = (
        sitk_to_array(
            resample_to_spacing(array_to_sitk((tissues == 3).astype(np.uint8), aff), 3.0, mode="nearest")
        )[0]
        > 0
    )
    mask = sitk_to_array(brain)[0] > 0
    data, grid = sitk_to_array(img)
    x, y, z = np.meshgrid(*[np.linspace(-1, 1, s) for s in data.shape], indexing="ij")
    biased = data * np.exp(0.3 * x + 0.2 * y**2 - 0.25 * z)
    cv = lambda v: v[wm].std() / v[wm].mean()  # noqa: E731
    out = {
        s: sitk_to_array(
            n4_correct(
                array_to_sitk(biased.astype(np.float32), grid), brain, shrink=s, iterations=(25, 25, 25)
            )
        )[0]
        for s in (1, 2)
    }
    ratio = out[2][mask] / out[1][mask]
    assert np.abs(ratio - 1).max() < 0.05  # measured 0.022
    assert ratio.std() < 0.015  # measured 0.007
    for s in (
        1,
        2,
    ):  # both remove the bias: WM coefficient of variation drops (measured 0.155 -> 0.126/0.129)
        assert cv(out[s]) < 0.9 * cv(biased)
        assert not out[s][~mask].any()


@pytest.fixture(scope="module")
def healthy(shared_data, atlas):
    """The real head scan with skull through HD-BET -> registration -> crop -> N4 (once)."""
    path = shared_data / "healthy" / "T2w_head.nii.gz"
    return path, preprocess_scan(path, atlas=atlas, skull_stripped=False, device="cpu", config=FAST)


@pytest.mark.slow
def test_healthy_head_ends_in_atlas_space_with_a_good_brain_mask(healthy, atlas):
    _, (t2, mask, affine, record) = healthy
    assert t2.shape == mask.shape == (192, 192, 160) and t2.dtype == np.float32
    assert record["steps"] == ["resample", "skull_strip", "register", "crop", "n4"]
    # the atlas brain mask on the same (cropped) grid
    atlas_mask, _ = crop_or_pad(atlas.mask, atlas.image[1], record["crop"]["start"], record["crop"]["size"])
    assert _dice(mask > 0, atlas_mask) > MIN_BRAIN_DICE
    np.testing.assert_allclose(affine[:3, :3], atlas.image[1][:3, :3])  # atlas orientation and 1 mm
    assert not t2[mask == 0].any() and (t2[mask > 0] > 0).mean() > 0.99


@pytest.mark.slow
def test_to_native_maps_back_onto_the_raw_scan(healthy):
    path, (t2, mask, _, record) = healthy
    raw, raw_aff = read_nifti(path)
    native, native_aff = to_native(t2, record)
    native_mask, _ = to_native(mask, record, mode="nearest")
    assert native.shape == raw.shape and np.allclose(native_aff, raw_aff)
    inside = native_mask > 0
    assert 0.2 < inside.mean() < 0.6  # a brain, not the whole head nor nothing
    # the back-mapped image lines up with the raw scan: strong voxelwise correlation inside the brain
    assert np.corrcoef(native[inside], raw[inside])[0, 1] > 0.8
    with pytest.raises(InputError, match="not the preprocessed grid"):
        to_native(t2[:10], record)


@pytest.fixture(scope="module")
def mslub(shared_data, atlas):
    folder = shared_data / "mslub" / "patient07"
    d = load_subject(folder / "T2.nii.gz", folder / "consensus_gt.nii.gz")
    return folder, preprocessing_transforms(atlas, skull_stripped=True, config=FAST)(d)


@pytest.mark.slow
def test_mslub_registers_and_its_lesion_mask_follows(mslub, atlas):
    folder, d = mslub
    rec = d["record"]
    assert rec["registration"]["brain_dice"] > MIN_BRAIN_DICE
    raw_seg, _ = read_nifti(folder / "consensus_gt.nii.gz", allow_empty=True)
    # MNI brains are larger than SRI24: the voxel count scales by 1 / det(A) of the affine
    matrix = np.asarray(rec["registration"]["parameters"][:9]).reshape(3, 3)
    expected = (raw_seg > 0).sum() / np.linalg.det(matrix)
    seg = d["seg"].numpy()[0]
    assert set(np.unique(seg)) <= {0, 1}
    assert abs((seg > 0).sum() / expected - 1) < 0.1
    # and maps back: the lesions overlap the original ones
    np.testing.assert_allclose(rec["root_grid"]["affine"], d["seg"].affine.numpy())
    native, _ = to_native(seg, rec, mode="nearest")
    assert _dice(native > 0, raw_seg > 0) > 0.6


@pytest.mark.slow
def test_brats_passes_through_unchanged_except_the_crop(shared_data, atlas):
    folder = shared_data / "brats18" / "Brats18_2013_3_1"
    d = load_subject(folder / "Brats18_2013_3_1_t2.nii.gz", folder / "Brats18_2013_3_1_seg.nii.gz")
    out = preprocessing_transforms(atlas, skull_stripped=True, in_atlas_space=True, config=FAST)(d)
    assert "registration" not in out["record"] and out["t2"].shape[1:] == (192, 192, 160)
    raw_seg, raw_aff = read_nifti(folder / "Brats18_2013_3_1_seg.nii.gz", allow_empty=True)
    seg, seg_aff = out["seg"].numpy()[0], np.asarray(out["seg"].affine)
    # each output voxel's world position falls exactly on a raw voxel with the same label
    vox_map = np.linalg.inv(raw_aff) @ seg_aff
    np.testing.assert_allclose(vox_map, np.round(vox_map), atol=1e-6)
    idx = np.stack(np.meshgrid(*[np.arange(s) for s in seg.shape], indexing="ij"), -1).reshape(-1, 3)
    src = np.rint(idx @ vox_map[:3, :3].T + vox_map[:3, 3]).astype(int)
    inside = np.all((src >= 0) & (src < raw_seg.shape), axis=1)
    expected = np.zeros(len(idx), np.uint8)
    expected[inside] = raw_seg[tuple(src[inside].T)]
    np.testing.assert_array_equal(seg.reshape(-1), expected)
    assert (raw_seg > 0).sum() == (seg > 0).sum()  # the crop keeps the whole tumour


@pytest.mark.slow
def test_a_failed_registration_is_reported_not_written(atlas):
    """A scan holding only a slab of brain cannot match the atlas brain: RegistrationError."""
    arr, aff = atlas.image
    img = resample_to_spacing(array_to_sitk(arr, aff), 2.0)
    data, grid = sitk_to_array(img)
    data[:, :, : data.shape[2] // 2 + 5] = 0
    data[:, :, data.shape[2] // 2 + 12 :] = 0
    d = {"t2": to_metatensor(data, grid), "record": {"source": "slab.nii.gz"}}
    cfg = dataclasses.replace(PreprocessConfig(), reg_iterations=30)
    with pytest.raises(
        RegistrationError, match=r"slab\.nii\.gz: registration to the atlas failed: brain-mask Dice"
    ):
        RegisterToAtlasd(("t2",), atlas, config=cfg)(d)


def _write(path, arr, affine=np.eye(4)):
    nib.save(nib.Nifti1Image(np.asarray(arr), affine), str(path))
    return path


BAD_INPUTS = [
    ("two_d", lambda p: _write(p, np.ones((8, 8), np.float32)), "expected a 3-D image"),
    ("four_d", lambda p: _write(p, np.ones((8, 8, 8, 2), np.float32)), "expected a 3-D image"),
    ("nan", lambda p: _write(p, np.full((8, 8, 8), np.nan, np.float32)), "NaN/Inf"),
    (
        "inf",
        lambda p: _write(
            p, np.where(np.eye(8)[..., None] > 0, np.inf, 1.0).astype(np.float32) * np.ones((8, 8, 8))
        ),
        "NaN/Inf",
    ),
    ("zeros", lambda p: _write(p, np.zeros((8, 8, 8), np.float32)), "all zeros"),
]


@pytest.mark.parametrize("name, make, message", BAD_INPUTS)
def test_bad_scans_give_one_line_errors_naming_the_file(tmp_path, name, make, message):
    path = make(tmp_path / f"{name}.nii.gz")
    with pytest.raises(InputError, match=message) as err:
        load_subject(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_truncated_file_and_grid_mismatch_and_singleton_axis(tmp_path):
    good = _write(tmp_path / "img.nii.gz", np.ones((8, 8, 8, 1), np.float32))
    assert load_subject(good)["t2"].shape == (1, 8, 8, 8)  # trailing singleton squeezed
    truncated = tmp_path / "cut.nii.gz"
    truncated.write_bytes(good.read_bytes()[:60])
    with pytest.raises(InputError, match="cut.nii.gz: not a readable NIfTI"):
        load_subject(truncated)
    seg = _write(tmp_path / "seg.nii.gz", np.zeros((8, 8, 7), np.uint8))
    with pytest.raises(InputError, match="seg.nii.gz: grid mismatch"):
        load_subject(good, seg)
    shifted = _write(tmp_path / "seg2.nii.gz", np.zeros((8, 8, 8), np.uint8), np.diag([2.0, 1, 1, 1]))
    with pytest.raises(InputError, match="seg2.nii.gz: grid mismatch"):
        load_subject(good, shifted)


def test_empty_brain_mask_is_refused():
    d = {
        "t2": to_metatensor(np.ones((8, 8, 8), np.float32), np.eye(4)),
        "mask": to_metatensor(np.zeros((8, 8, 8), np.uint8), np.eye(4)),
        "record": {"source": "scan.nii.gz"},
    }
    with pytest.raises(InputError, match="scan.nii.gz: empty brain mask"):
        CropToBraind(("t2", "mask"), roi_size=(4, 4, 4))(d)


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


def test_resample_is_a_no_op_at_target_spacing_and_reorients_exactly():
    arr = np.random.default_rng(2).random((6, 5, 4)).astype(np.float32)
    aff = np.diag([-1.0, -1.0, 1.0, 1.0])  # LPS codes
    out = resample_to_spacing(array_to_sitk(arr, aff), 1.0, axcodes="LAS")
    back, back_aff = sitk_to_array(out)
    np.testing.assert_array_equal(back, arr[:, ::-1, :])  # a flip, no interpolation
    assert "".join(nib.aff2axcodes(back_aff)) == "LAS"
    up = resample_to_spacing(array_to_sitk(arr, np.diag([2.0, 2.0, 2.0, 1.0])), 1.0)
    assert up.GetSize() == (12, 10, 8) and up.GetSpacing() == (1.0, 1.0, 1.0)
    assert sitk.GetArrayFromImage(up).max() <= arr.max() + 1e-6


def test_atlas_channels_and_mask(atlas, shared_data):
    t1 = resolve_atlas(shared_data / "sri24", channel="t1")
    assert (atlas.image_path.name, t1.image_path.name) == ("late.nii.gz", "spgr.nii.gz")
    assert atlas.mask_path.name == "tissues.nii.gz" and atlas.mask.shape == (240, 240, 155)
    assert 1.2e6 < atlas.mask.sum() < 1.8e6  # an adult brain in 1 mm voxels
    with pytest.raises(InputError, match="unknown channel"):
        resolve_atlas(shared_data / "sri24", channel="flair")  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------- determinism


def _registration_pair() -> tuple[sitk.Image, sitk.Image]:
    """A small structured ellipsoid and a copy moved by a known affine (2 mm voxels)."""
    grid = np.mgrid[:48, :48, :40].astype(np.float32)
    centre = np.array([24, 24, 20])[:, None, None, None]
    radii = np.array([16, 19, 14])[:, None, None, None]
    r = np.sqrt((((grid - centre) / radii) ** 2).sum(0))
    image = np.where(r < 1, 1.0 + 0.8 * (r < 0.5) + 0.3 * np.sin(grid[0] / 3), 0).astype(np.float32)
    fixed = array_to_sitk(image, np.diag([2.0, 2.0, 2.0, 1.0]))
    tx = sitk.AffineTransform(3)
    tx.SetMatrix([1.02, 0.05, 0, -0.04, 0.97, 0.02, 0, 0.01, 1.0])
    tx.SetTranslation([2.5, -1.5, 1.0])
    tx.SetCenter([-48.0, -48.0, 40.0])
    return fixed, sitk.Resample(fixed, fixed, tx, sitk.sitkLinear, 0.0)


def test_registration_is_bit_identical_run_to_run():
    """Seed 0 used to mean "the wall clock" to SimpleITK: three runs gave three transforms."""
    fixed, moving = _registration_pair()
    before = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    runs = [register_affine(fixed, moving, PreprocessConfig(reg_seed=0)) for _ in range(3)]
    params = [np.array(tx.GetParameters()) for tx, _ in runs]
    for tx_params, (_, metric) in zip(params[1:], runs[1:]):
        np.testing.assert_array_equal(tx_params, params[0])
        assert metric == runs[0][1]
    assert sitk.ProcessObject.GetGlobalDefaultNumberOfThreads() == before, "ITK threads not restored"
    # the seed is used: another seed samples other points (another optimum)
    other = np.array(register_affine(fixed, moving, PreprocessConfig(reg_seed=1))[0].GetParameters())
    assert not np.array_equal(other, params[0])
    with pytest.raises(ValueError, match="reg_seed must be >= 0"):
        register_affine(fixed, moving, PreprocessConfig(reg_seed=-1))


def test_itk_threads_is_restored_even_after_an_error():
    before = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    with pytest.raises(RuntimeError, match="inside"):
        with itk_threads(1):
            assert sitk.ProcessObject.GetGlobalDefaultNumberOfThreads() == 1
            raise RuntimeError("inside")
    assert sitk.ProcessObject.GetGlobalDefaultNumberOfThreads() == before
    with itk_threads(0):  # 0 leaves the default alone
        assert sitk.ProcessObject.GetGlobalDefaultNumberOfThreads() == before
