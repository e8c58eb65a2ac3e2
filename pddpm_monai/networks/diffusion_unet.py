"""The diffusion UNet of pDDPM: the Dhariwal & Nichol (OpenAI) UNet as the authors configure it.

Configuration of the paper (the authors' code): ``model_channels=128``, ``channel_mult=(1, 2, 2)``
(levels of 128, 256, 256 channels), 3 residual blocks per level in the encoder and 4 in the
decoder, GroupNorm(32) + SiLU before every convolution, dropout 0, a sinusoidal timestep embedding
followed by an MLP to ``4 * model_channels`` that enters every residual block by scale-shift
normalisation (``norm(h) * (1 + scale) + shift``), down/up sampling inside residual blocks
(average pooling / nearest upsampling), no attention in the levels, and a middle block of
ResBlock -> self-attention (heads of 64 channels) -> ResBlock. The output is the ``x_0``
prediction.

MONAI's ``DiffusionModelUNet`` adds the time embedding instead of the scale-shift, and samples
with separate convolutions, so it is not this network; its sinusoidal embedding
(``get_timestep_embedding``) and its convolution/pooling factories are reused here.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.layers.factories import Conv, Pool
from monai.networks.nets.diffusion_model_unet import get_timestep_embedding
from torch import Tensor, nn
from torch.nn import functional as F

__all__ = ["DiffusionUNet", "ScaleShiftResBlock", "SelfAttentionBlock"]

_TIME_EMBED_MULT = 4
_NORM_EPS = 1e-5


def _zero(module: nn.Module) -> nn.Module:
    """Zero the parameters of ``module`` (the last layer of each residual branch, as OpenAI)."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class _Resample(nn.Module):
    """Parameter-free 2x resampling: average pooling (down) or nearest neighbour (up)."""

    def __init__(self, spatial_dims: int, direction: str) -> None:
        super().__init__()
        self.direction = direction
        self.pool = Pool[Pool.AVG, spatial_dims](kernel_size=2, stride=2) if direction == "down" else None

    def forward(self, x: Tensor) -> Tensor:
        if self.pool is not None:
            return self.pool(x)
        return F.interpolate(x, scale_factor=2.0, mode="nearest")


class ScaleShiftResBlock(nn.Module):
    """Residual block with scale-shift (FiLM) time conditioning and optional 2x resampling.

    ``h = conv(SiLU(GN(x)))`` (resampled between the activation and the convolution when
    ``resample`` is set), ``h = conv(dropout(SiLU(GN(h) * (1 + scale) + shift)))`` with
    ``(scale, shift) = Linear(SiLU(emb))``, output ``skip(x) + h``.

    Args:
        spatial_dims: 2 or 3.
        in_channels: input channels.
        out_channels: output channels.
        emb_channels: channels of the time embedding.
        num_groups: GroupNorm groups.
        dropout: dropout probability before the last convolution.
        resample: ``None``, ``"down"`` or ``"up"``.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        emb_channels: int,
        *,
        num_groups: int,
        dropout: float,
        resample: str | None = None,
    ) -> None:
        super().__init__()
        conv = Conv[Conv.CONV, spatial_dims]
        self.in_norm = nn.GroupNorm(num_groups, in_channels, eps=_NORM_EPS)
        self.in_conv = conv(in_channels, out_channels, kernel_size=3, padding=1)
        self.resample = _Resample(spatial_dims, resample) if resample else None
        self.emb_proj = nn.Linear(emb_channels, 2 * out_channels)
        self.out_norm = nn.GroupNorm(num_groups, out_channels, eps=_NORM_EPS)
        self.dropout = nn.Dropout(dropout)
        self.out_conv = _zero(conv(out_channels, out_channels, kernel_size=3, padding=1))
        self.skip = (
            nn.Identity() if in_channels == out_channels else conv(in_channels, out_channels, kernel_size=1)
        )

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = F.silu(self.in_norm(x))
        if self.resample is not None:
            h, x = self.resample(h), self.resample(x)
        h = self.in_conv(h)
        scale_shift = self.emb_proj(F.silu(emb)).to(h.dtype)
        for _ in range(h.dim() - 2):  # (B, 2C) -> (B, 2C, 1, 1[, 1]); a loop, as TorchScript needs
            scale_shift = scale_shift.unsqueeze(-1)
        scale, shift = scale_shift.chunk(2, dim=1)
        h = self.out_norm(h) * (1 + scale) + shift
        h = self.out_conv(self.dropout(F.silu(h)))
        return self.skip(x) + h


class SelfAttentionBlock(nn.Module):
    """Spatial multi-head self-attention with a residual connection (OpenAI's ``AttentionBlock``).

    ``x + proj(attention(qkv(GN(x))))`` over all spatial positions, heads of ``num_head_channels``
    channels, computed with ``scaled_dot_product_attention``; the output projection starts at zero.
    (MONAI's ``SpatialAttentionBlock`` is the same computation but needs ``einops``, which this
    project does not depend on.)

    Args:
        spatial_dims: 2 or 3.
        channels: input and output channels (divisible by ``num_head_channels``).
        num_head_channels: channels per head.
        num_groups: GroupNorm groups.
    """

    def __init__(self, spatial_dims: int, channels: int, *, num_head_channels: int, num_groups: int) -> None:
        super().__init__()
        if channels % num_head_channels:
            raise ValueError(
                f"channels={channels} must be divisible by num_head_channels={num_head_channels}."
            )
        self.num_heads = channels // num_head_channels
        self.norm = nn.GroupNorm(num_groups, channels, eps=_NORM_EPS)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.proj = _zero(nn.Linear(channels, channels))

    def forward(self, x: Tensor, emb: Tensor | None = None) -> Tensor:
        batch, channels = x.shape[:2]
        tokens = self.norm(x).reshape(batch, channels, -1).transpose(1, 2)  # (B, N, C)
        qkv = self.qkv(tokens).view(batch, -1, 3, self.num_heads, channels // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, heads, N, d)
        out = F.scaled_dot_product_attention(q, k, v)
        out = self.proj(out.transpose(1, 2).reshape(batch, -1, channels))
        return x + out.transpose(1, 2).reshape(x.shape)


class _Stage(nn.ModuleList):
    """A sequence of blocks that all receive the time embedding (OpenAI's ``TimestepEmbedSequential``)."""

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        for block in self:
            x = block(x, emb)
        return x


class DiffusionUNet(nn.Module):
    """The OpenAI diffusion UNet (scale-shift norm, resblock up/down) that predicts ``x_0``.

    Defaults are the paper's configuration (about 35 M parameters). Tests and the demo use a small
    one, e.g. ``model_channels=32, channel_mult=(1, 2), num_res_blocks=1, num_groups=8``.

    Args:
        spatial_dims: 2 (slices) or 3.
        in_channels: input channels.
        out_channels: output channels.
        model_channels: channels of the first level; the time embedding has 4x as many.
        channel_mult: channel multiplier per level (``len`` = number of levels; the spatial
            size must be divisible by ``2 ** (len - 1)``). The paper's text says (1, 1, 2); the
            authors' code, which produced Table 1, uses (1, 2, 2).
        num_res_blocks: residual blocks per encoder level (the decoder has one more).
        num_head_channels: channels per attention head.
        num_groups: GroupNorm groups (must divide every level's channels).
        dropout: dropout in the residual blocks.
        mid_attention: self-attention between the two middle residual blocks.
        attention_levels: self-attention after every residual block of these levels.

    Example:
        >>> net = DiffusionUNet(model_channels=32, channel_mult=(1, 2), num_res_blocks=1, num_groups=8)
        >>> net(torch.rand(2, 1, 32, 32), torch.tensor([499, 10])).shape
        torch.Size([2, 1, 32, 32])
    """

    def __init__(
        self,
        *,
        spatial_dims: int = 2,
        in_channels: int = 1,
        out_channels: int = 1,
        model_channels: int = 128,
        channel_mult: Sequence[int] = (1, 2, 2),
        num_res_blocks: int = 3,
        num_head_channels: int = 64,
        num_groups: int = 32,
        dropout: float = 0.0,
        mid_attention: bool = True,
        attention_levels: Sequence[bool] = (False, False, False),
    ) -> None:
        super().__init__()
        channel_mult = tuple(channel_mult)
        attention_levels = tuple(attention_levels)
        if len(attention_levels) != len(channel_mult):
            attention_levels = attention_levels[: len(channel_mult)] + (False,) * (
                len(channel_mult) - len(attention_levels)
            )
        widths = [model_channels * m for m in channel_mult]
        if any(w % num_groups for w in (model_channels, *widths)):
            raise ValueError(f"num_groups={num_groups} must divide every level's channels {widths}.")
        self.model_channels = model_channels
        self.num_levels = len(channel_mult)
        emb_channels = _TIME_EMBED_MULT * model_channels
        conv = Conv[Conv.CONV, spatial_dims]

        def resblock(c_in: int, c_out: int, resample: str | None = None) -> ScaleShiftResBlock:
            return ScaleShiftResBlock(
                spatial_dims,
                c_in,
                c_out,
                emb_channels,
                num_groups=num_groups,
                dropout=dropout,
                resample=resample,
            )

        def attention(c: int) -> SelfAttentionBlock:
            return SelfAttentionBlock(
                spatial_dims, c, num_head_channels=num_head_channels, num_groups=num_groups
            )

        self.time_embed = nn.Sequential(
            nn.Linear(model_channels, emb_channels), nn.SiLU(), nn.Linear(emb_channels, emb_channels)
        )
        self.input_conv = conv(in_channels, model_channels, kernel_size=3, padding=1)

        self.down = nn.ModuleList()
        skip_channels = [model_channels]
        ch = model_channels
        for level, width in enumerate(widths):
            for _ in range(num_res_blocks):
                stage = _Stage([resblock(ch, width)])
                ch = width
                if attention_levels[level]:
                    stage.append(attention(ch))
                self.down.append(stage)
                skip_channels.append(ch)
            if level < self.num_levels - 1:
                self.down.append(_Stage([resblock(ch, ch, "down")]))
                skip_channels.append(ch)

        middle = [resblock(ch, ch)]
        if mid_attention:
            middle.append(attention(ch))
        middle.append(resblock(ch, ch))
        self.middle = _Stage(middle)

        self.up = nn.ModuleList()
        for level in reversed(range(self.num_levels)):
            width = widths[level]
            for i in range(num_res_blocks + 1):
                stage = _Stage([resblock(ch + skip_channels.pop(), width)])
                ch = width
                if attention_levels[level]:
                    stage.append(attention(ch))
                if level > 0 and i == num_res_blocks:
                    stage.append(resblock(ch, ch, "up"))
                self.up.append(stage)

        self.output = nn.Sequential(
            nn.GroupNorm(num_groups, ch, eps=_NORM_EPS),
            nn.SiLU(),
            _zero(conv(ch, out_channels, kernel_size=3, padding=1)),
        )

    def forward(self, x: Tensor, timesteps: Tensor) -> Tensor:
        """Predict ``x_0`` from the (partly) noised ``x`` at ``timesteps`` (:meth:`predict_x0`)."""
        return self.predict_x0(x, timesteps)

    def predict_x0(self, x: Tensor, timesteps: Tensor) -> Tensor:
        """Predict ``x_0`` from the (partly) noised ``x`` at ``timesteps``.

        The body of :meth:`forward`, as a method of its own so that subclasses with another
        ``forward`` (:class:`~pddpm_monai.networks.patched_anomaly.PatchedAnomalyUNet`) call it;
        TorchScript-able (``torch.jit.script``).

        Args:
            x: ``(B, in_channels, *spatial)``; spatial sizes divisible by ``2 ** (levels - 1)``.
            timesteps: ``(B,)`` timestep indices (or a scalar for the whole batch).

        Returns:
            ``(B, out_channels, *spatial)``.
        """
        timesteps = torch.as_tensor(timesteps, device=x.device)
        if timesteps.ndim == 0:
            timesteps = timesteps.expand(x.shape[0])
        emb = get_timestep_embedding(timesteps, self.model_channels).to(self.time_embed[0].weight.dtype)
        emb = self.time_embed(emb)
        h = self.input_conv(x)
        skips = [h]
        for stage in self.down:
            h = stage(h, emb)
            skips.append(h)
        h = self.middle(h, emb)
        for stage in self.up:
            h = stage(torch.cat([h, skips.pop()], dim=1), emb)
        return self.output(h)
