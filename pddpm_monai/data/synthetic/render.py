"""Render the template on a subject's grid through one inverse warp (pose, scale, smooth deformation).

For every output voxel: its world position (output affine) -> the subject's head frame (inverse pose)
-> the template position it comes from (inverse deformation: smooth random displacement, ventricle
expansion, tumour mass effect) -> trilinear sampling of the template channels with
``torch.nn.functional.grid_sample``. Everything is float32 on the CPU and independent of the thread
count, so the same seed gives bit-identical volumes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "Deformation",
    "smooth_field",
    "grid_points",
    "sample_volume",
    "render",
    "rotation_matrix",
    "box_points",
    "upsample_field",
    "source_map",
    "apply_affine",
    "render_stepped",
]

#: output slices rendered at once (bounds the memory of the sampling grid)
CHUNK_SLICES = 24
#: the source map (pose + deformation) is evaluated every this many output voxels, then upsampled
SOURCE_STEP = 4

Warp = Callable[[torch.Tensor], torch.Tensor]


def smooth_field(rng: np.random.Generator, channels: int, cells: int) -> np.ndarray:
    """A smooth random field: standard normal control points (unit std), trilinearly interpolated later.

    Returns:
        array of shape ``(channels, cells, cells, cells)``.
    """
    return rng.standard_normal((channels, cells, cells, cells)).astype(np.float32)


def rotation_matrix(angles_deg: Sequence[float]) -> np.ndarray:
    """3x3 rotation about x, then y, then z (degrees)."""
    ax, ay, az = np.deg2rad(np.asarray(angles_deg, dtype=np.float64))
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def apply_affine(points: torch.Tensor, matrix: np.ndarray | torch.Tensor) -> torch.Tensor:
    """``points @ A.T + b`` for a 4x4 (or 3x4) ``matrix``, as explicit multiply-adds over the last axis.

    Unlike a BLAS matmul, the summation order never depends on the thread count, so results are
    bit-identical with any ``torch.set_num_threads``.
    """
    m = torch.as_tensor(np.asarray(matrix, dtype=np.float32)[:3])
    return points[..., 0:1] * m[:, 0] + points[..., 1:2] * m[:, 1] + points[..., 2:3] * m[:, 2] + m[:, 3]


def grid_points(
    shape: Sequence[int], affine: np.ndarray, start: int = 0, stop: int | None = None
) -> torch.Tensor:
    """World (mm) positions of the voxels ``[start:stop]`` (first axis) of a grid, shape ``(n, Y, Z, 3)``."""
    stop = shape[0] if stop is None else stop
    axes = [torch.arange(start, stop, dtype=torch.float32)] + [
        torch.arange(s, dtype=torch.float32) for s in shape[1:3]
    ]
    ijk = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1)
    return apply_affine(ijk, affine)


def box_points(lo: np.ndarray, hi: np.ndarray, affine: np.ndarray) -> torch.Tensor:
    """World positions of the voxel box ``[lo, hi)`` of a grid, shape ``(*(hi - lo), 3)``."""
    axes = [torch.arange(int(a), int(b), dtype=torch.float32) for a, b in zip(lo, hi)]
    ijk = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1)
    return apply_affine(ijk, affine)


def _normalise(points_mm: torch.Tensor, affine: np.ndarray, shape: Sequence[int]) -> torch.Tensor:
    """World mm -> grid_sample coordinates in [-1, 1] (last axis ordered as grid_sample wants: k, j, i)."""
    vox = apply_affine(points_mm, np.linalg.inv(affine))
    size = torch.tensor([max(s - 1, 1) for s in shape], dtype=torch.float32)
    return (2.0 * vox / size - 1.0).flip(-1)


def sample_volume(
    volume: torch.Tensor, affine: np.ndarray, points_mm: torch.Tensor, mode: str = "bilinear"
) -> torch.Tensor:
    """Sample a ``(C, X, Y, Z)`` volume with voxel->mm ``affine`` at world points ``(..., 3)``; zeros outside.

    Returns:
        tensor of shape ``(C, ...)``.
    """
    spatial = points_mm.shape[:-1]
    grid = _normalise(points_mm.reshape(1, -1, 1, 1, 3), affine, volume.shape[1:])
    out = F.grid_sample(volume[None], grid, mode=mode, padding_mode="zeros", align_corners=True)
    return out.reshape(volume.shape[0], *spatial)


@dataclass
class Deformation:
    """Inverse warp from the subject's head frame to the template (all in mm).

    ``source(x) = x - scale_part - displacement - ventricle_expansion - extra`` where every term is
    smooth; ``extra`` (e.g. a tumour's mass effect) is any additional displacement callable.

    Args:
        centre: centre of the global scale (mm).
        scale: per-axis scale of the subject relative to the template (>1 = bigger head).
        field: ``(3, c, c, c)`` displacement control points (mm), spanning ``field_box``.
        field_box: ``(lo_mm, hi_mm)`` corners of the box that the control points span.
        ventricle_centre: centre of the ventricle expansion (mm).
        ventricle_scale: relative expansion at the ventricles (negative shrinks).
        ventricle_sigma: Gaussian extent of the expansion (mm).
        extra: further displacements ``u(x)`` (mm) subtracted from ``x``.
    """

    centre: np.ndarray
    scale: np.ndarray
    field: np.ndarray
    field_box: tuple[np.ndarray, np.ndarray]
    ventricle_centre: np.ndarray
    ventricle_scale: float
    ventricle_sigma: float
    extra: list[Warp] = field(default_factory=list)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        centre = torch.as_tensor(self.centre, dtype=torch.float32)
        src = centre + (x - centre) / torch.as_tensor(self.scale, dtype=torch.float32)
        lo, hi = (np.asarray(b, dtype=np.float64) for b in self.field_box)
        box_affine = np.diag([*((hi - lo) / (np.asarray(self.field.shape[1:]) - 1)), 1.0])
        box_affine[:3, 3] = lo
        disp = sample_volume(torch.as_tensor(self.field), box_affine, x)
        src = src - disp.movedim(0, -1)
        vc = torch.as_tensor(self.ventricle_centre, dtype=torch.float32)
        rel = src - vc
        weight = torch.exp(-(rel * rel).sum(-1, keepdim=True) / (2.0 * self.ventricle_sigma**2))
        src = src - self.ventricle_scale * weight * rel
        for extra in self.extra:
            src = src - extra(x)
        return src


def render(
    channels: np.ndarray,
    channel_affine: np.ndarray,
    out_shape: Sequence[int],
    out_affine: np.ndarray,
    world_to_head: np.ndarray,
    deformation: Warp | None,
) -> np.ndarray:
    """Sample template ``channels`` ``(C, X, Y, Z)`` on an output grid through pose and deformation.

    Args:
        channels: template channels (float32).
        channel_affine: voxel -> mm of the template grid.
        out_shape: output grid shape.
        out_affine: output voxel -> world mm.
        world_to_head: 4x4 map from world mm to the subject's head frame (inverse pose).
        deformation: head frame -> template mm (``None``: identity).

    Returns:
        ``(C, *out_shape)`` float32 array.
    """
    volume = torch.as_tensor(np.ascontiguousarray(channels, dtype=np.float32))
    source = source_map(out_shape, out_affine, world_to_head, deformation)
    out = np.empty((channels.shape[0], *out_shape), dtype=np.float32)
    for start in range(0, out_shape[0], CHUNK_SLICES):
        stop = min(start + CHUNK_SLICES, out_shape[0])
        src = source[:, start:stop].permute(1, 2, 3, 0)
        out[:, start:stop] = sample_volume(volume, channel_affine, src).numpy()
    return out


def source_map(
    out_shape: Sequence[int], out_affine: np.ndarray, world_to_head: np.ndarray, deformation: Warp | None
) -> torch.Tensor:
    """Template position (mm) of every output voxel, shape ``(3, *out_shape)``.

    The map is evaluated every ``SOURCE_STEP`` voxels and upsampled trilinearly: exact for the pose
    and the scale (affine), and accurate for the smooth deformations (whose scale is centimetres).
    """
    n = [(s - 1 + SOURCE_STEP - 1) // SOURCE_STEP + 1 for s in out_shape]
    coarse_affine = np.asarray(out_affine, dtype=np.float64) @ np.diag([SOURCE_STEP] * 3 + [1])
    x = apply_affine(grid_points(n, coarse_affine), world_to_head)
    src = deformation(x) if deformation is not None else x
    size = [(k - 1) * SOURCE_STEP + 1 for k in n]
    full = F.interpolate(src.permute(3, 0, 1, 2)[None], size=size, mode="trilinear", align_corners=True)[0]
    return full[:, : out_shape[0], : out_shape[1], : out_shape[2]]


def render_stepped(
    channels: np.ndarray,
    channel_affine: np.ndarray,
    out_shape: Sequence[int],
    out_affine: np.ndarray,
    world_to_head: np.ndarray,
    deformation: Warp | None,
    step: int,
) -> np.ndarray:
    """:func:`render` on every ``step``-th output voxel, then trilinear upsampling to ``out_shape``.

    ``step=2`` renders 8x fewer voxels; the template is smooth at 2 mm, so little is lost.
    """
    if step <= 1:
        return render(channels, channel_affine, out_shape, out_affine, world_to_head, deformation)
    n = [(s - 1 + step - 1) // step + 1 for s in out_shape]
    coarse_affine = np.asarray(out_affine, dtype=np.float64) @ np.diag([step] * 3 + [1])
    coarse = render(channels, channel_affine, n, coarse_affine, world_to_head, deformation)
    size = [(k - 1) * step + 1 for k in n]
    full = F.interpolate(torch.as_tensor(coarse)[None], size=size, mode="trilinear", align_corners=True)[0]
    return full[:, : out_shape[0], : out_shape[1], : out_shape[2]].numpy().copy()


def upsample_field(field_cp: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Trilinearly upsample control points ``(C, c, c, c)`` to ``(C, *shape)`` (corners aligned)."""
    t = torch.as_tensor(field_cp, dtype=torch.float32)[None]
    return F.interpolate(t, size=tuple(shape), mode="trilinear", align_corners=True)[0].numpy()
