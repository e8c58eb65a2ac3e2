import nibabel as nib
import numpy as np
import pytest
import torch

from pddpm_monai.transforms.loading import (
    CurvatureFlow,
    MaskedPercentileRescale,
    ModelGridConfig,
    model_grid_transforms,
)
from pddpm_monai.utils import InputError


def _write(path, array):
    nib.save(nib.Nifti1Image(array, np.eye(4)), str(path))
    return str(path)


@pytest.fixture
def subject(tmp_path):
    rng = np.random.default_rng(0)
    img = np.zeros((192, 192, 160), np.float32)
    img[40:150, 30:160, 20:140] = rng.random((110, 130, 120)) * 100 + 50
    mask = (img > 0).astype(np.uint8)
    seg = np.zeros_like(mask)
    seg[90:100, 90:100, 70:80] = 2
    return {k: _write(tmp_path / f"{k}.nii.gz", a) for k, a in (("image", img), ("mask", mask), ("seg", seg))}


def test_masked_percentile_rescale_matches_numpy():
    rng = np.random.default_rng(1)
    img = torch.as_tensor(rng.normal(100, 20, (1, 8, 8, 8)).astype(np.float32))
    mask = torch.zeros_like(img)
    mask[:, 2:6, 2:6, 2:6] = 1
    out = MaskedPercentileRescale(1, 99)(img, mask)
    lo, hi = np.percentile(img[mask > 0].numpy(), [1, 99])
    expected = np.clip((img.numpy() - lo) / (hi - lo), 0, 1)
    np.testing.assert_allclose(out.numpy(), expected, atol=1e-5)


def test_curvature_flow_keeps_axis_order_and_smooths():
    img = torch.zeros(1, 12, 10, 8)
    img[:, 6:, :, :] = 1.0  # a step along the first axis
    img += torch.randn_like(img) * 0.1
    out = CurvatureFlow(0.125, 3)(img)
    assert out.shape == img.shape
    # the step survives (edge preserving) and noise in the flat part goes down
    assert float(out[0, 9:, :, :].mean() - out[0, :3, :, :].mean()) > 0.8
    assert float(out[0, :3].std()) < float(img[0, :3].std())


def test_model_grid_shapes_affine_and_values(subject):
    out = model_grid_transforms(("image", "mask", "seg"))(subject)
    for key in ("image", "mask", "seg"):
        assert tuple(out[key].shape) == (1, 96, 96, 50)
    assert float(out["image"].max()) <= 1.0 + 1e-3 and float(out["image"].min()) >= -1e-3
    assert set(torch.unique(out["seg"]).tolist()) == {0.0, 1.0}
    # 10x10x10 lesion at 1 mm -> 5x5x5 on the 2 mm grid
    assert int(out["seg"].sum()) == 125
    spacing = np.sqrt((out["image"].affine[:3, :3].numpy() ** 2).sum(0))
    np.testing.assert_allclose(spacing, [2, 2, 2])


def test_crop_drops_30_slices_each_side(tmp_path):
    img = np.broadcast_to(np.arange(1, 161, dtype=np.float32), (192, 192, 160)).copy()  # slice k holds k + 1
    cfg = ModelGridConfig(downsample=1.0, percentiles=(0.0, 100.0))
    out = model_grid_transforms(("image",), config=cfg, smooth=False)(
        {"image": _write(tmp_path / "i.nii.gz", img)}
    )
    assert out["image"].shape[-1] == 100
    # slices 30..129 are kept (values 31..130), rescaled linearly to [0, 1]
    expected = (np.arange(31, 131, dtype=np.float32) - 31) / 99
    np.testing.assert_allclose(out["image"][0, 0, 0, :].numpy(), expected, atol=1e-5)


@pytest.mark.parametrize(
    "bad, message",
    [
        ("empty_mask", "brain mask is empty"),
        ("grid", "grid mismatch"),
        ("labels", "unexpected seg labels"),
    ],
)
def test_bad_subjects_give_one_line_errors(tmp_path, subject, bad, message):
    img = nib.load(subject["image"]).get_fdata()
    if bad == "empty_mask":
        subject["mask"] = _write(tmp_path / "m0.nii.gz", np.zeros(img.shape, np.uint8))
    elif bad == "grid":
        subject["mask"] = _write(tmp_path / "m1.nii.gz", np.ones((100, 100, 100), np.uint8))
    else:
        subject["seg"] = _write(tmp_path / "s7.nii.gz", np.full(img.shape, 7, np.uint8))
    with pytest.raises(InputError, match=message) as info:
        model_grid_transforms(("image", "mask", "seg"))(subject)
    assert "\n" not in str(info.value) and ".nii.gz" in str(info.value)
