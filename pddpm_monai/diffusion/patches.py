"""The patch grid of pDDPM and the binary patch masks ``M_p`` (paper §3, Eq. 3).

A slice of ``H x W`` pixels is covered by boxes of ``h x w`` pixels. Per axis there are
``n = ceil((W - w) / w) + 1`` start positions, evenly spaced from ``0`` to ``W - w``; the boxes
overlap when ``w`` does not divide ``W``. The grid is the **product** of the two axes, so it has
``K = n_y * n_x`` boxes. The paper prints ``K = ceil((W-w)/w) + ceil((H-h)/h) + 2`` (that is
``n_x + n_y``), which equals the product only for the 2 x 2 grid of 96/48; the authors' code
(``BoxSampler.sample_grid``) builds the product grid, which is what covers the image.

Two grids for a patch size that does not divide the slice (they agree when it does, e.g. 96/48):

- ``"overlap"`` (default): the ``n`` starts are spread evenly from ``0`` to ``W - w``, so every box
  has the full ``h x w`` size that training used and the overlaps are averaged when stitching
  (96/60: starts 0 and 36). The default because every noised region then has the trained size and
  the paper's default 48 is unaffected.
- ``"tile"``: the authors' ``BoxSampler`` tiles from 0 in steps of ``w`` without overlap and
  truncates the last box at the border (96/60: a 60 box and a 36 box). Use it to reproduce the
  authors' Fig. 3 patch-size sweep the way their code ran it.

A third grid goes beyond the authors (an option, never the default of training):

- ``"blend"``: boxes of the full size at about half the stride, ``n = ceil((W - w) / ceil(w / 2)) + 1``
  starts spread evenly from ``0`` to ``W - w`` (96/48: 0, 24, 48, so ``K = 9``), stitched with
  MONAI's Gaussian importance map (``compute_importance_map``, ``sigma_scale = 0.125``, the weights
  of MONAI's sliding-window inference) instead of a plain average. Every stitched patch comes from
  its own pass, so with the authors' grid the patches' intensities differ by a step at every
  border (``benchmarks/bench_seams.py`` measures ~1.46x the anatomy's own step); here each pixel is
  dominated by the box it is most central in, and the weight falls to ~0 at a box's edge, so no
  border produces a step. The authors' code has an ``overlap`` option with ``agg_overlap='avg'``
  (plain averaging of evenly spread boxes, as ``"overlap"`` here); it adds no boxes when ``w``
  divides ``W`` and so does not remove the seams of the default 48. ``K`` is 2.25x the default's
  on 96/48, and so is the inference time.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from monai.data.utils import compute_importance_map
from torch import Tensor

from pddpm_monai.names import PATCH_GRIDS

__all__ = [
    "PATCH_GRIDS",
    "PatchGrid",
    "PatchSampling",
    "axis_starts",
    "boxes_to_masks",
    "patch_grid",
    "patch_masks",
    "patch_weights",
    "sample_patch_boxes",
    "sample_patch_masks",
]

PatchSampling = Literal["fixed", "random"]
PatchGrid = Literal["overlap", "tile", "blend"]


def axis_starts(size: int, patch: int, grid: PatchGrid = "overlap") -> list[int]:
    """Start offsets of the patches along one axis.

    ``n = ceil((size - patch) / patch) + 1`` starts. ``"overlap"``: evenly spaced from ``0`` to
    ``size - patch``; position ``i`` is ``i * (size - patch) / (n - 1)`` rounded half up to an
    integer (exact integer arithmetic, so the first start is 0 and the last is ``size - patch``).
    ``"tile"``: ``0, patch, 2 * patch, ...`` (the last box is truncated at the border).
    ``"blend"``: as ``"overlap"`` with the stride ``ceil(patch / 2)`` instead of ``patch``, so
    ``n = ceil((size - patch) / ceil(patch / 2)) + 1``.

    Args:
        size: image size along the axis (pixels).
        patch: patch size along the axis (pixels), ``1 <= patch <= size``.
        grid: ``"overlap"``, ``"tile"`` or ``"blend"`` (see the module docstring).

    Returns:
        the sorted start offsets.

    Raises:
        ValueError: when the patch does not fit in the image, or for an unknown grid.
    """
    if not 1 <= patch <= size:
        raise ValueError(f"patch size {patch} must be between 1 and the image size {size}.")
    if grid == "tile":
        return list(range(0, size, patch))
    if grid not in ("overlap", "blend"):
        raise ValueError(f"grid must be one of {', '.join(PATCH_GRIDS)}, got {grid!r}.")
    span = size - patch
    stride = patch if grid == "overlap" else -(-patch // 2)
    n = math.ceil(span / stride) + 1
    if n == 1:
        return [0]
    return [(2 * i * span + (n - 1)) // (2 * (n - 1)) for i in range(n)]


def patch_grid(
    height: int, width: int, patch_h: int, patch_w: int, grid: PatchGrid = "overlap"
) -> list[tuple[int, int]]:
    """The ``K = n_y * n_x`` box positions of the product grid (row-major: y outer, x inner).

    Args:
        height: image height ``H``.
        width: image width ``W``.
        patch_h: patch height ``h``.
        patch_w: patch width ``w``.
        grid: ``"overlap"`` (default), ``"tile"`` (the authors' BoxSampler) or ``"blend"``.

    Returns:
        ``(y0, x0)`` top-left corners; box ``k`` covers ``[y0, y0 + h) x [x0, x0 + w)`` (clipped
        to the image).

    Example:
        >>> patch_grid(96, 96, 48, 48)
        [(0, 0), (0, 48), (48, 0), (48, 48)]
        >>> patch_grid(96, 96, 60, 60)
        [(0, 0), (0, 36), (36, 0), (36, 36)]
        >>> patch_grid(96, 96, 60, 60, grid="tile")
        [(0, 0), (0, 60), (60, 0), (60, 60)]
        >>> len(patch_grid(96, 96, 48, 48, grid="blend"))
        9
    """
    ys = axis_starts(height, patch_h, grid)
    xs = axis_starts(width, patch_w, grid)
    return [(y0, x0) for y0 in ys for x0 in xs]


def boxes_to_masks(
    starts: Tensor,
    height: int,
    width: int,
    patch_h: int,
    patch_w: int,
    *,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Binary masks of boxes given by their top-left corners.

    Args:
        starts: ``(N, 2)`` integer tensor of ``(y0, x0)``.
        height: image height.
        width: image width.
        patch_h: box height.
        patch_w: box width.
        dtype: dtype of the masks.

    Returns:
        ``(N, 1, H, W)`` masks on ``starts.device``: 1 inside the box (clipped to the image), 0
        outside.
    """
    device = starts.device
    rows = torch.arange(height, device=device)
    cols = torch.arange(width, device=device)
    y0 = starts[:, 0, None]
    x0 = starts[:, 1, None]
    in_rows = (rows[None] >= y0) & (rows[None] < y0 + patch_h)  # (N, H)
    in_cols = (cols[None] >= x0) & (cols[None] < x0 + patch_w)  # (N, W)
    return (in_rows[:, :, None] & in_cols[:, None, :]).unsqueeze(1).to(dtype)


def patch_masks(
    height: int,
    width: int,
    patch_h: int,
    patch_w: int,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    grid: PatchGrid = "overlap",
) -> Tensor:
    """One binary mask per grid position.

    Args:
        height: image height.
        width: image width.
        patch_h: patch height.
        patch_w: patch width.
        device: device of the masks.
        dtype: dtype of the masks.
        grid: ``"overlap"``, ``"tile"`` or ``"blend"`` (see :func:`patch_grid`).

    Returns:
        ``(K, 1, H, W)`` masks in the order of :func:`patch_grid`.
    """
    starts = torch.tensor(patch_grid(height, width, patch_h, patch_w, grid), device=device)
    return boxes_to_masks(starts, height, width, patch_h, patch_w, dtype=dtype)


def patch_weights(
    height: int,
    width: int,
    patch_h: int,
    patch_w: int,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    grid: PatchGrid = "overlap",
) -> Tensor:
    """Stitching weights of the grid positions: what each patch's prediction is multiplied by.

    The stitched image is ``sum_k weights_k * prediction_k / sum_k weights_k``. For ``"overlap"``
    and ``"tile"`` the weights are the binary masks of :func:`patch_masks` (a plain average of
    overlaps, as the authors' ``agg_overlap='avg'``). For ``"blend"`` each box carries MONAI's
    Gaussian importance map (``compute_importance_map(mode="gaussian", sigma_scale=0.125)``: ~1 at
    the box centre, 0.001 at its edge), which removes the step at the patch borders.

    Args:
        height, width, patch_h, patch_w, device, dtype, grid: as :func:`patch_masks`.

    Returns:
        ``(K, 1, H, W)`` non-negative weights in the order of :func:`patch_grid`, zero outside
        each box.
    """
    masks = patch_masks(height, width, patch_h, patch_w, device=device, dtype=dtype, grid=grid)
    if grid != "blend":
        return masks
    window = compute_importance_map(
        (patch_h, patch_w), mode="gaussian", sigma_scale=0.125, device=masks.device
    )
    weights = torch.zeros_like(masks)
    for k, (y0, x0) in enumerate(patch_grid(height, width, patch_h, patch_w, grid)):
        weights[k, 0, y0 : y0 + patch_h, x0 : x0 + patch_w] = window.to(dtype)
    return weights


def sample_patch_boxes(
    batch: int,
    height: int,
    width: int,
    patch_h: int,
    patch_w: int,
    *,
    sampling: PatchSampling,
    generator: torch.Generator | None = None,
    grid: PatchGrid = "overlap",
) -> Tensor:
    """Top-left corners of one training box per sample.

    Args:
        batch: number of samples.
        height: image height.
        width: image width.
        patch_h: patch height.
        patch_w: patch width.
        sampling: ``"fixed"``: a uniformly drawn position of the grid (:func:`patch_grid`);
            ``"random"``: a uniformly random box that lies fully inside the image.
        generator: CPU generator for reproducible draws.
        grid: the grid of ``"fixed"`` sampling (see :func:`patch_grid`; ``"blend"`` draws from its
            denser grid).

    Returns:
        ``(batch, 2)`` long tensor of ``(y0, x0)`` on the CPU.
    """
    if sampling == "fixed":
        starts = torch.tensor(patch_grid(height, width, patch_h, patch_w, grid))
        index = torch.randint(len(starts), (batch,), generator=generator)
        return starts[index]
    if sampling == "random":
        axis_starts(height, patch_h), axis_starts(width, patch_w)  # validates the sizes
        y0 = torch.randint(height - patch_h + 1, (batch,), generator=generator)
        x0 = torch.randint(width - patch_w + 1, (batch,), generator=generator)
        return torch.stack([y0, x0], dim=1)
    raise ValueError(f"sampling must be 'fixed' or 'random', got {sampling!r}.")


def sample_patch_masks(
    batch: int,
    height: int,
    width: int,
    patch_h: int,
    patch_w: int,
    *,
    sampling: PatchSampling,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    grid: PatchGrid = "overlap",
) -> Tensor:
    """Binary masks ``M_p`` of one training box per sample (see :func:`sample_patch_boxes`).

    Args:
        batch, height, width, patch_h, patch_w, sampling, generator, grid: as
            :func:`sample_patch_boxes` (the draw happens on the CPU: the result does not depend on
            ``device``).
        device: device of the masks.
        dtype: dtype of the masks.

    Returns:
        ``(batch, 1, H, W)`` binary masks.
    """
    starts = sample_patch_boxes(
        batch, height, width, patch_h, patch_w, sampling=sampling, generator=generator, grid=grid
    )
    return boxes_to_masks(starts.to(device), height, width, patch_h, patch_w, dtype=dtype)
