"""The diffusion UNet: the paper configuration's size, shapes, time conditioning, checkpoints."""

from __future__ import annotations

import math

import pytest
import torch
from numpy.testing import assert_allclose
from torch.nn import functional as F

from pddpm_monai.networks import DiffusionUNet
from pddpm_monai.networks.diffusion_unet import ScaleShiftResBlock, SelfAttentionBlock

PAPER_PARAMETERS = 37_513_857
TINY = dict(model_channels=16, channel_mult=(1, 2), num_res_blocks=1, num_groups=8, num_head_channels=16)


def resblock_parameters(c_in: int, c_out: int, emb: int) -> int:
    """GN(c_in), conv3x3, Linear(emb, 2 c_out), GN(c_out), conv3x3, 1x1 skip when widths differ."""
    skip = c_in * c_out + c_out if c_in != c_out else 0
    return (
        2 * c_in
        + 9 * c_in * c_out
        + c_out
        + emb * 2 * c_out
        + 2 * c_out
        + 2 * c_out
        + 9 * c_out**2
        + c_out
        + skip
    )


def attention_parameters(c: int) -> int:
    """GN, qkv projection, output projection."""
    return 2 * c + 3 * c * c + 3 * c + c * c + c


def openai_unet_parameters(mc=128, mult=(1, 2, 2), blocks=3, in_ch=1, out_ch=1) -> int:
    """Parameter count of the OpenAI UNet (scale-shift, resblock_updown, mid attention only)."""
    emb = 4 * mc
    total = mc * emb + emb + emb * emb + emb  # time MLP
    total += 9 * in_ch * mc + mc  # input conv
    chans, ch = [mc], mc
    for level, m in enumerate(mult):
        for _ in range(blocks):
            total += resblock_parameters(ch, m * mc, emb)
            ch = m * mc
            chans.append(ch)
        if level < len(mult) - 1:
            total += resblock_parameters(ch, ch, emb)
            chans.append(ch)
    total += 2 * resblock_parameters(ch, ch, emb) + attention_parameters(ch)
    for level, m in reversed(list(enumerate(mult))):
        for i in range(blocks + 1):
            total += resblock_parameters(ch + chans.pop(), m * mc, emb)
            ch = m * mc
            if level and i == blocks:
                total += resblock_parameters(ch, ch, emb)
    return total + 2 * ch + 9 * ch * out_ch + out_ch  # GN, output conv


def randomize(net: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Replace the zero initialisation so the output depends on everything."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    return net


@pytest.mark.slow
def test_paper_configuration_size_and_shape():
    net = DiffusionUNet()  # the paper configuration
    count = sum(p.numel() for p in net.parameters())
    assert count == openai_unet_parameters() == PAPER_PARAMETERS
    with torch.no_grad():
        out = net(torch.rand(1, 1, 32, 32), torch.tensor([499]))
    assert out.shape == (1, 1, 32, 32)
    assert torch.count_nonzero(out) == 0  # the output convolution starts at zero, as OpenAI's
    assert all(type(v) is torch.Tensor for v in net.state_dict().values())


def test_tiny_configuration_count_matches_formula():
    net = DiffusionUNet(**TINY)
    assert sum(p.numel() for p in net.parameters()) == openai_unet_parameters(mc=16, mult=(1, 2), blocks=1)


def test_output_depends_on_timestep_and_input():
    net = randomize(DiffusionUNet(**TINY)).eval()
    x = torch.rand(2, 1, 16, 16)
    with torch.no_grad():
        a = net(x, torch.tensor([0, 0]))
        b = net(x, torch.tensor([999, 999]))
        c = net(x, torch.tensor(0))  # a scalar timestep is broadcast
    assert a.shape == x.shape
    assert not torch.allclose(a, b, atol=1e-4)
    assert torch.equal(a, c)


def test_3d_network_shape():
    net = DiffusionUNet(spatial_dims=3, mid_attention=True, attention_levels=(False, True), **TINY)
    with torch.no_grad():
        out = net(torch.rand(1, 1, 8, 8, 8), torch.tensor([10]))
    assert out.shape == (1, 1, 8, 8, 8)


def test_resblock_is_scale_shift():
    """The block equals a hand-written GN-SiLU-conv, FiLM ``GN(h) * (1 + s) + b``, conv, skip."""
    block = randomize(ScaleShiftResBlock(2, 8, 16, 12, num_groups=4, dropout=0.0, resample="down"))
    x, emb = torch.randn(2, 8, 8, 8), torch.randn(2, 12)
    h = F.silu(F.group_norm(x, 4, block.in_norm.weight, block.in_norm.bias, eps=1e-5))
    h = F.conv2d(F.avg_pool2d(h, 2), block.in_conv.weight, block.in_conv.bias, padding=1)
    scale, shift = F.linear(F.silu(emb), block.emb_proj.weight, block.emb_proj.bias)[:, :, None, None].chunk(
        2, 1
    )
    h = F.group_norm(h, 4, block.out_norm.weight, block.out_norm.bias, eps=1e-5) * (1 + scale) + shift
    h = F.conv2d(F.silu(h), block.out_conv.weight, block.out_conv.bias, padding=1)
    skip = F.conv2d(F.avg_pool2d(x, 2), block.skip.weight, block.skip.bias)
    with torch.no_grad():
        assert_allclose(block(x, emb).numpy(), (skip + h).numpy(), atol=1e-5)


def test_attention_matches_manual_softmax():
    block = randomize(SelfAttentionBlock(2, 8, num_head_channels=4, num_groups=2))
    x = torch.randn(1, 8, 3, 3)
    tokens = F.group_norm(x, 2, block.norm.weight, block.norm.bias, eps=1e-5).reshape(1, 8, 9).transpose(1, 2)
    q, k, v = F.linear(tokens, block.qkv.weight, block.qkv.bias).view(1, 9, 3, 2, 4).unbind(2)
    heads = []
    for head in range(2):
        weights = torch.softmax(q[0, :, head] @ k[0, :, head].T / math.sqrt(4), dim=-1)
        heads.append(weights @ v[0, :, head])
    out = F.linear(torch.cat(heads, dim=1), block.proj.weight, block.proj.bias).T.reshape(1, 8, 3, 3)
    with torch.no_grad():
        assert_allclose(block(x).numpy(), (x + out).numpy(), atol=1e-5)


def test_state_dict_loads_with_weights_only(tmp_path):
    net = randomize(DiffusionUNet(**TINY)).eval()
    path = tmp_path / "model.pt"
    torch.save(net.state_dict(), path)
    restored = DiffusionUNet(**TINY).eval()
    restored.load_state_dict(torch.load(path, weights_only=True))
    x = torch.rand(1, 1, 16, 16)
    with torch.no_grad():
        assert torch.equal(net(x, torch.tensor([3])), restored(x, torch.tensor([3])))


def test_bad_configuration():
    with pytest.raises(ValueError, match="num_groups"):
        DiffusionUNet(model_channels=20, num_groups=8)
