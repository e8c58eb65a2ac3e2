"""A diffusion UNet that maps a whole slice or volume to pDDPM's anomaly map in one call.

MONAI's model-zoo checks (``verify_net_in_out``, ``ckpt_export`` -> TorchScript) and plain
``torch.jit.load`` users call a bundle's network with one tensor. :class:`PatchedAnomalyUNet` is the
:class:`~pddpm_monai.networks.DiffusionUNet` (same parameters, same ``state_dict`` keys, so the
bundle's ``models/model.pt`` loads into it strictly) with a second calling convention:

- ``net(x, timesteps)``: the UNet's ``x_0`` prediction, as the inferers, the training and MONAI
  Label's inferer call it;
- ``net(x)``: patched inference at a fixed timestep with fixed noise fields (built by
  :func:`~pddpm_monai.bundle.components.inference_network` from the checkpoint: its ``t_test``, patch
  size and grid, schedule and noise type), returning ``|x - x_hat|`` (or ``x_hat``) with ``x``'s
  shape, for slices ``(B, 1, H, W)`` or volumes ``(B, 1, H, W, D)`` (every axial slice).

The one-tensor path is the computation of
:func:`~pddpm_monai.inferers.patched.patched_reconstruction` (noise the slice at ``t_test - 1``,
Eq. 3 per grid position, keep each position's patch, average overlaps), written without Python-only
objects so that ``torch.jit.script`` compiles it. Its noise is a buffer: slice ``j`` of every volume
gets field ``j`` (cyclically when a volume has more slices than fields), which is what the
:class:`~pddpm_monai.inferers.PatchedDiffusionInferer` draws for one volume of as many slices from the
same seed; tests check the two agree.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Optional

import torch
from torch import Tensor

from pddpm_monai.networks.diffusion_unet import DiffusionUNet

__all__ = ["PatchedAnomalyUNet"]


class PatchedAnomalyUNet(DiffusionUNet):
    """:class:`DiffusionUNet` whose one-tensor call is pDDPM's patched anomaly map (TorchScript-able).

    Args:
        masks: ``(K, 1, H, W)`` binary masks of the grid positions
            (:func:`~pddpm_monai.diffusion.patches.patch_masks`; one mask of ones for plain DDPM).
        weights: ``(K, 1, H, W)`` stitching weights
            (:func:`~pddpm_monai.diffusion.patches.patch_weights`; ``None``: the masks, a plain
            average of overlaps).
        noise: ``(N, 1, H, W)`` noise fields; slice ``j`` of a volume uses field ``j % N``.
        t_index: the network's timestep index (``t_test - 1``).
        alpha_bar: ``abar`` at ``t_index`` (the schedule's cumulative product).
        rescale: images in ``[0, 1]`` go to ``[-1, 1]`` for the network (the diffusion's
            ``rescale_to_minus_one_one``).
        anomaly_map: the one-tensor call returns ``|x - x_hat|`` (else the reconstruction ``x_hat``).
        unet_kwargs: the :class:`DiffusionUNet` arguments (the trained network's).

    Example:
        >>> masks = torch.zeros(4, 1, 32, 32); masks[0, :, :16, :16] = 1  # ... (patch_masks)
        >>> net = PatchedAnomalyUNet(masks=masks, noise=torch.randn(8, 1, 32, 32), t_index=499,
        ...                          alpha_bar=0.5, model_channels=16, channel_mult=(1, 2), num_groups=8)
        >>> net(torch.rand(1, 1, 32, 32, 8)).shape  # doctest: +SKIP
        torch.Size([1, 1, 32, 32, 8])
    """

    #: key of the weights in a nested checkpoint dict (the bundle's ``models/model.pt``)
    weights_key: str = "model"

    def __init__(
        self,
        *,
        masks: Tensor,
        noise: Tensor,
        t_index: int,
        alpha_bar: float,
        rescale: bool = True,
        anomaly_map: bool = True,
        weights: Tensor | None = None,
        **unet_kwargs: Any,
    ) -> None:
        super().__init__(**unet_kwargs)
        if masks.ndim != 4 or masks.shape[1] != 1 or masks.shape[0] < 1:
            raise ValueError(f"masks must be (K, 1, H, W), got shape {tuple(masks.shape)}.")
        if noise.ndim != 4 or noise.shape[1:] != masks.shape[1:] or noise.shape[0] < 1:
            raise ValueError(f"noise must be (N, 1, H, W) with the masks' H, W, got {tuple(noise.shape)}.")
        if not 0.0 < float(alpha_bar) <= 1.0:
            raise ValueError(f"alpha_bar must be in (0, 1], got {alpha_bar}.")
        masks = masks.detach().float()
        weights = masks if weights is None else weights.detach().float()
        if weights.shape != masks.shape or bool((weights < 0).any()):
            raise ValueError(
                f"weights must be non-negative with the masks' shape, got {tuple(weights.shape)}."
            )
        coverage = weights.sum(dim=0)
        if bool((coverage == 0).any()):
            raise ValueError("the masks must cover every pixel.")
        abar = torch.tensor(float(alpha_bar), dtype=torch.float32)
        # non-persistent: the state_dict stays the UNet's (models/model.pt loads strictly)
        self.register_buffer("masks", masks, persistent=False)
        self.register_buffer("weights", weights, persistent=False)
        self.register_buffer("coverage", coverage, persistent=False)
        self.register_buffer("noise", noise.detach().float(), persistent=False)
        # the scheduler's arithmetic (DDPMScheduler.add_noise in float32)
        self.register_buffer("sqrt_alpha_bar", abar**0.5, persistent=False)
        self.register_buffer("sqrt_one_minus_alpha_bar", (1 - abar) ** 0.5, persistent=False)
        self.t_index = int(t_index)
        self.rescale = bool(rescale)
        self.anomaly_map = bool(anomaly_map)

    def forward(self, x: Tensor, timesteps: Optional[Tensor] = None) -> Tensor:  # noqa: UP045 (TorchScript)
        """``net(x, timesteps)``: the UNet; ``net(x)``: the anomaly map (or reconstruction) of ``x``.

        Args:
            x: with ``timesteps``, the network input ``(B, C, H, W)``; without, clean images in
                ``[0, 1]``: slices ``(B, 1, H, W)`` or volumes ``(B, 1, H, W, D)`` with the masks' H, W.
            timesteps: ``(B,)`` timestep indices, or ``None`` for the one-tensor call.

        Returns:
            the ``x_0`` prediction, or a tensor of ``x``'s shape (float32).
        """
        if timesteps is not None:
            return self.predict_x0(x, timesteps)
        if x.dim() == 5:
            b, c, h, w, d = x.shape[0], x.shape[1], x.shape[2], x.shape[3], x.shape[4]
            slices = x.permute(0, 4, 1, 2, 3).reshape(b * d, c, h, w)
            index = torch.arange(b * d, device=x.device) % d
            out = self._score_slices(slices, index)
            return out.reshape(b, d, c, h, w).permute(0, 2, 3, 4, 1)
        if x.dim() == 4:
            return self._score_slices(x, torch.arange(x.shape[0], device=x.device))
        raise ValueError("PatchedAnomalyUNet(x): x must be slices (B, 1, H, W) or volumes (B, 1, H, W, D).")

    def _score_slices(self, slices: Tensor, index: Tensor) -> Tensor:
        """The anomaly map (or reconstruction) of clean slices; ``index``: each slice's position."""
        if slices.shape[1] != 1 or slices.shape[2:] != self.masks.shape[2:]:
            raise ValueError("PatchedAnomalyUNet(x): the slices must be (1, H, W) with the masks' H, W.")
        slices = slices.float()
        x0 = slices * 2 - 1 if self.rescale else slices
        noise = self.noise[index % self.noise.shape[0]]
        x_t = self.sqrt_alpha_bar * x0 + self.sqrt_one_minus_alpha_bar * noise
        timesteps = torch.full([x0.shape[0]], self.t_index, dtype=torch.long, device=x0.device)
        total = torch.zeros_like(x0)
        for k in range(self.masks.shape[0]):
            mask = self.masks[k]
            noised = x_t * mask + x0 * (1 - mask)
            total = total + self.predict_x0(noised, timesteps).float() * self.weights[k]
        reconstruction = total / self.coverage
        if self.rescale:
            reconstruction = (reconstruction + 1) / 2
        if self.anomaly_map:
            return (slices - reconstruction).abs()
        return reconstruction

    def load_state_dict(
        self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False
    ) -> Any:
        """Load UNet weights; a nested checkpoint (weights under :attr:`weights_key`) is unwrapped.

        MONAI's ``ckpt_export`` (the model-zoo TorchScript check) loads the whole ``models/model.pt``
        dict into the network; its weights sit under ``"model"``, beside the method's configuration.
        """
        nested = state_dict.get(self.weights_key) if isinstance(state_dict, Mapping) else None
        if isinstance(nested, Mapping):
            state_dict = nested
        return super().load_state_dict(state_dict, strict=strict, assign=assign)
