"""benchmarks/bench_seams.py: the seam excess is 1 without seams and grows with a step at the borders."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from bench_seams import border_positions, seam_excess, shift_rows  # noqa: E402


def _volume() -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.meshgrid(np.arange(32), np.arange(32), indexing="ij")
    image = np.repeat((np.sin(yy / 3.0) * np.cos(xx / 4.0) + 1.0)[..., None] / 2, 3, axis=-1)
    mask = np.zeros_like(image, dtype=bool)
    mask[4:28] = True
    return image, mask


def _with_seam(image: np.ndarray, step: float) -> np.ndarray:
    """A 'reconstruction' whose lower patch row is offset by ``step``: a seam at the border only."""
    out = image.copy()
    out[16:] += step
    return out


def test_border_positions_follow_the_patch_grid():
    assert border_positions(96, 48) == {48}
    assert border_positions(96, 60) == {36, 60}  # overlapping grid: both edges of the overlap
    assert border_positions(96, 32) == {32, 64}


def test_shift_rows_round_trip_and_zero_fill():
    image, _ = _volume()
    moved = shift_rows(image, 3)
    assert np.array_equal(moved[:3], np.zeros_like(moved[:3]))
    assert np.array_equal(moved[3:], image[:-3])
    assert np.array_equal(shift_rows(moved, -3)[:-3], image[:-3])


def test_no_seam_gives_one_and_a_seam_gives_more():
    image, mask = _volume()
    unmoved, moved = seam_excess(lambda x: x, image, mask, patch=16, shift=4)
    assert unmoved == pytest.approx(moved)
    # a step at the border of the unmoved grid but not when the borders lie elsewhere: excess > 1,
    # and exactly (anatomy step + seam) / anatomy step at every border pixel pair
    step = 0.5
    seams = {"calls": 0}

    def reconstruct(x: np.ndarray) -> np.ndarray:
        seams["calls"] += 1
        return _with_seam(x, step) if seams["calls"] % 2 == 1 else x

    with_seam, without = seam_excess(reconstruct, image, mask, patch=16, shift=4)
    expected = np.abs(image[16] - image[15] + step)[mask[16]].mean()
    assert with_seam == pytest.approx(expected)
    assert with_seam / without > 1.5


def test_brain_too_close_to_the_edge_is_refused():
    image, mask = _volume()
    with pytest.raises(ValueError, match="smaller --shift"):
        seam_excess(lambda x: x, image, mask, patch=16, shift=6)
