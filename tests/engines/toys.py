"""Toys for fast engine tests: tiny methods and synthetic 2-D "brains" (smooth ellipses with blobs).

Healthy images vary in ellipse size and position and in the position and sign of the blobs;
a lesion is a bright disc (intensity 1, brighter than any healthy tissue) inside the ellipse.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from pddpm_monai.methods import DDPMMethod, PDDPMMethod, build_method

SIZE = 32
PATCH = 16
BRAIN_INTENSITY = 0.5
BLOB_AMPLITUDE = 0.2
LESION_INTENSITY = 1.0
LESION_RADIUS = 4.0

TINY_NET = {
    "model_channels": 16,
    "channel_mult": [1, 2],
    "num_res_blocks": 1,
    "num_groups": 8,
    "num_head_channels": 16,
}


def tiny(name: str = "pddpm", **options) -> PDDPMMethod | DDPMMethod:
    config = {"network": TINY_NET, "t_test": 250, **options}
    if name == "pddpm":
        config.setdefault("patch_size", PATCH)
    return build_method(name, config)


def randomize(method: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights everywhere (the UNet's output layer starts at zero: its output would be constant)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in method.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return method


def _grid(size: int) -> tuple[Tensor, Tensor]:
    coords = torch.arange(size, dtype=torch.float32)
    return torch.meshgrid(coords, coords, indexing="ij")


def healthy_images(count: int, *, size: int = SIZE, seed: int = 0) -> tuple[Tensor, Tensor]:
    """``count`` healthy images and their brain masks, each ``(count, 1, size, size)`` in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = _grid(size)
    images, masks = [], []
    for _ in range(count):
        cy, cx = (size / 2 + torch.randn(2, generator=g) * 1.0).tolist()
        ry, rx = (size * 0.36 + torch.rand(2, generator=g) * size * 0.06).tolist()
        r = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2
        brain = torch.sigmoid((1 - r) * 12)
        img = BRAIN_INTENSITY * brain
        for sign in (1.0, -1.0):
            by, bx = (torch.tensor([cy, cx]) + (torch.rand(2, generator=g) - 0.5) * size * 0.3).tolist()
            blob = torch.exp(-((yy - by) ** 2 + (xx - bx) ** 2) / (2 * 3.0**2))
            img = img + sign * BLOB_AMPLITUDE * blob * brain
        images.append(img.clamp(0, 1))
        masks.append((r < 1).float())
    return torch.stack(images)[:, None], torch.stack(masks)[:, None]


def with_lesion(images: Tensor, masks: Tensor, *, seed: int = 1) -> tuple[Tensor, Tensor]:
    """Insert one bright disc per image inside its brain; returns ``(images, lesion_masks)``."""
    g = torch.Generator().manual_seed(seed)
    size = images.shape[-1]
    yy, xx = _grid(size)
    out, lesions = images.clone(), torch.zeros_like(images)
    for i in range(images.shape[0]):
        inside = torch.nonzero(masks[i, 0] > 0)
        centre = (yy - size / 2) ** 2 + (xx - size / 2) ** 2
        candidates = inside[centre[inside[:, 0], inside[:, 1]] < (size * 0.2) ** 2]
        cy, cx = candidates[torch.randint(len(candidates), (1,), generator=g)][0].tolist()
        disc = ((yy - cy) ** 2 + (xx - cx) ** 2) <= LESION_RADIUS**2
        out[i, 0][disc] = LESION_INTENSITY
        lesions[i, 0][disc] = 1.0
    return out, lesions


def as_volumes(images: Tensor, masks: Tensor, slices_per_volume: int) -> list[dict[str, Tensor]]:
    """Stack images into volumes ``(1, H, W, D)`` (one image per axial slice) for the trainer."""
    volumes = []
    for start in range(0, images.shape[0] - slices_per_volume + 1, slices_per_volume):
        part = slice(start, start + slices_per_volume)
        volumes.append(
            {"image": images[part, 0].permute(1, 2, 0)[None], "mask": masks[part, 0].permute(1, 2, 0)[None]}
        )
    return volumes
