"""The patch grid and masks against hand-computed positions."""

from __future__ import annotations

import pytest
import torch
from parameterized import parameterized

from pddpm_monai.diffusion.patches import (
    axis_starts,
    boxes_to_masks,
    patch_grid,
    patch_masks,
    patch_weights,
    sample_patch_boxes,
    sample_patch_masks,
)

# (size, patch, expected starts): n = ceil((size - patch) / patch) + 1, evenly spaced, rounded half up
AXIS_CASES = [
    (96, 48, [0, 48]),  # the paper: 2 per axis, no overlap
    (96, 60, [0, 36]),  # ablation best: overlap of 24
    (96, 96, [0]),
    (96, 32, [0, 32, 64]),
    (100, 30, [0, 23, 47, 70]),  # 70/3 = 23.33 -> 23, 46.67 -> 47
    (10, 4, [0, 3, 6]),  # 6/2 = 3
    (11, 4, [0, 4, 7]),  # 3.5 -> 4 (half up)
]


@parameterized.expand(AXIS_CASES)
def test_axis_starts(size, patch, expected):
    assert axis_starts(size, patch) == expected


def test_grid_96_48_is_the_papers_2x2():
    assert patch_grid(96, 96, 48, 48) == [(0, 0), (0, 48), (48, 0), (48, 48)]


def test_grid_96_60_overlaps():
    assert patch_grid(96, 96, 60, 60) == [(0, 0), (0, 36), (36, 0), (36, 36)]


def test_grid_is_a_product_not_a_sum():
    """K = n_y * n_x (3 * 2 = 6 here), not the paper's n_x + n_y."""
    grid = patch_grid(96, 64, 32, 32)
    assert grid == [(y, x) for y in (0, 32, 64) for x in (0, 32)]


def test_masks_96_48_tile_the_image_once():
    masks = patch_masks(96, 96, 48, 48)
    assert masks.shape == (4, 1, 96, 96)
    assert torch.equal(masks.sum(0), torch.ones(1, 96, 96))
    expected = torch.zeros(96, 96)
    expected[48:, :48] = 1
    assert torch.equal(masks[2, 0], expected)


def test_masks_96_60_coverage():
    masks = patch_masks(96, 96, 60, 60)
    coverage = masks.sum(0)[0]
    assert masks.sum(dim=(1, 2, 3)).tolist() == [3600.0] * 4
    # the centre band 36..59 is covered by both boxes of an axis
    assert coverage[0, 0] == 1 and coverage[0, 40] == 2 and coverage[40, 40] == 4 and coverage[95, 95] == 1
    assert coverage[:, 36:60].min() == 2 and coverage[36:60, 36:60].min() == 4


def test_fixed_sampling_uses_grid_positions():
    boxes = sample_patch_boxes(
        200, 96, 96, 60, 60, sampling="fixed", generator=torch.Generator().manual_seed(0)
    )
    assert {tuple(b) for b in boxes.tolist()} == set(patch_grid(96, 96, 60, 60))


def test_random_sampling_stays_inside_and_varies():
    boxes = sample_patch_boxes(
        500, 96, 80, 48, 20, sampling="random", generator=torch.Generator().manual_seed(0)
    )
    assert boxes[:, 0].min() >= 0 and boxes[:, 0].max() <= 48
    assert boxes[:, 1].min() >= 0 and boxes[:, 1].max() <= 60
    assert len({tuple(b) for b in boxes.tolist()}) > 100
    masks = sample_patch_masks(
        6, 96, 80, 48, 20, sampling="random", generator=torch.Generator().manual_seed(1), dtype=torch.float64
    )
    assert masks.shape == (6, 1, 96, 80) and masks.dtype == torch.float64
    assert masks.sum(dim=(1, 2, 3)).tolist() == [48.0 * 20] * 6


def test_boxes_to_masks_matches_slicing():
    starts = torch.tensor([[3, 5], [0, 0]])
    masks = boxes_to_masks(starts, 10, 12, 4, 6)
    expected = torch.zeros(2, 1, 10, 12)
    expected[0, 0, 3:7, 5:11] = 1
    expected[1, 0, 0:4, 0:6] = 1
    assert torch.equal(masks, expected)


def test_sampling_is_reproducible_and_errors():
    a = sample_patch_masks(4, 32, 32, 16, 16, sampling="fixed", generator=torch.Generator().manual_seed(2))
    b = sample_patch_masks(4, 32, 32, 16, 16, sampling="fixed", generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="sampling"):
        sample_patch_masks(4, 32, 32, 16, 16, sampling="grid")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="patch size"):
        patch_grid(32, 32, 40, 16)


def test_tile_grid_is_the_authors_boxsampler():
    """96/60: tiles at 0 and 60 without overlap, the second box truncated to 36 (their Fig. 3 runs)."""
    assert patch_grid(96, 96, 60, 60, "tile") == [(0, 0), (0, 60), (60, 0), (60, 60)]
    masks = patch_masks(96, 96, 60, 60, grid="tile")
    assert masks.sum(dim=(1, 2, 3)).tolist() == [3600.0, 60.0 * 36, 36.0 * 60, 36.0 * 36]
    assert torch.equal(masks.sum(dim=0), torch.ones(1, 96, 96))  # covers once: no overlap
    overlap = patch_masks(96, 96, 60, 60)
    assert overlap.sum(dim=0).max() == 4  # the default grid overlaps
    for size in (16, 32, 48):  # where the patch divides the slice both grids agree
        assert patch_grid(96, 96, size, size, "tile") == patch_grid(96, 96, size, size)
    boxes = sample_patch_boxes(
        200, 96, 96, 60, 60, sampling="fixed", generator=torch.Generator().manual_seed(0), grid="tile"
    )
    assert {tuple(b) for b in boxes.tolist()} == {(0, 0), (0, 60), (60, 0), (60, 60)}
    with pytest.raises(ValueError, match="grid"):
        patch_grid(96, 96, 60, 60, "sliding")  # type: ignore[arg-type]


def test_blend_grid_has_half_the_stride_and_gaussian_weights():
    """96/48: 3 x 3 full-size boxes at 0, 24, 48; each weighted by a Gaussian of sigma 48 / 8."""
    assert axis_starts(96, 48, "blend") == [0, 24, 48]
    assert axis_starts(96, 60, "blend") == [0, 18, 36]
    assert axis_starts(96, 32, "blend") == [0, 16, 32, 48, 64]
    assert axis_starts(48, 48, "blend") == [0]
    assert len(patch_grid(96, 96, 48, 48, "blend")) == 9
    masks = patch_masks(96, 96, 48, 48, grid="blend")
    weights = patch_weights(96, 96, 48, 48, grid="blend")
    assert weights.shape == masks.shape == (9, 1, 96, 96)
    assert torch.equal(weights * masks, weights) and bool((weights[masks > 0] > 0).all())
    # box 4 (24..72 on both axes) carries an independent separable Gaussian: centre 23.5, sigma 6
    box = weights[4, 0, 24:72, 24:72].double()
    gauss = torch.exp(-((torch.arange(48, dtype=torch.float64) - 23.5) ** 2) / (2 * 6.0**2))
    reference = gauss[:, None] * gauss[None, :]
    assert (box / box.max() - reference).abs().max() < 0.01  # MONAI floors the map at 0.001
    assert float(box[0, 24] / box.max()) < 0.002  # ~0 at the box edge: no step where a box ends
    # the other grids weight by their binary masks (a plain average, as before)
    for grid in ("overlap", "tile"):
        assert torch.equal(patch_weights(96, 96, 60, 60, grid=grid), patch_masks(96, 96, 60, 60, grid=grid))
    boxes = sample_patch_boxes(
        400, 96, 96, 48, 48, sampling="fixed", generator=torch.Generator().manual_seed(0), grid="blend"
    )
    assert {tuple(b) for b in boxes.tolist()} == set(patch_grid(96, 96, 48, 48, "blend"))
