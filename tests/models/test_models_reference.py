"""End-to-end wiring checks: the tiny UNet and VAE against functional re-implementations in fp64.

The references below are written directly from the ldm sources' forward passes, reading
weights by their original state-dict names; they share no code with ``vfrt.models``.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from vfrt.models import Zero123, tiny_config
from vfrt.models.testing import init_nontrivial_


def _silu(x):
    return x * torch.sigmoid(x)


class _Ops:
    def __init__(self, sd):
        self.sd = sd

    def gn(self, h, p, eps):
        return F.group_norm(h, 32, self.sd[p + ".weight"], self.sd[p + ".bias"], eps)

    def ln(self, h, p):
        return F.layer_norm(h, h.shape[-1:], self.sd[p + ".weight"], self.sd[p + ".bias"], 1e-5)

    def conv(self, h, p, **kw):
        return F.conv2d(h, self.sd[p + ".weight"], self.sd.get(p + ".bias"), **kw)

    def lin(self, h, p):
        return F.linear(h, self.sd[p + ".weight"], self.sd.get(p + ".bias"))


@pytest.fixture(scope="module")
def model64():
    m = Zero123(tiny_config(64))
    init_nontrivial_(m, torch.Generator().manual_seed(21))
    return m.double().eval()


def _ref_unet(sd, x, t, ctx, heads=2, mc=32):
    o = _Ops(sd)
    half = mc // 2
    # the original computes the sinusoid in fp32 whatever the model dtype
    freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    temb = torch.cat([torch.cos(args), torch.sin(args)], dim=1).double()
    emb = o.lin(_silu(o.lin(temb, "time_embed.0")), "time_embed.2")

    def res(h, p):
        a = o.conv(_silu(o.gn(h, p + ".in_layers.0", 1e-5)), p + ".in_layers.2", padding=1)
        a = a + o.lin(_silu(emb), p + ".emb_layers.1")[:, :, None, None]
        a = o.conv(_silu(o.gn(a, p + ".out_layers.0", 1e-5)), p + ".out_layers.3", padding=1)
        skip = o.conv(h, p + ".skip_connection") if p + ".skip_connection.weight" in sd else h
        return skip + a

    def attention(xq, xc, p):
        q, k, v = o.lin(xq, p + ".to_q"), o.lin(xc, p + ".to_k"), o.lin(xc, p + ".to_v")
        d = q.shape[-1] // heads
        outs = []
        for i in range(heads):
            s = slice(i * d, (i + 1) * d)
            w = torch.softmax(q[..., s] @ k[..., s].transpose(1, 2) * d**-0.5, dim=-1)
            outs.append(w @ v[..., s])
        return o.lin(torch.cat(outs, -1), p + ".to_out.0")

    def transformer(h, p):
        B, C, H, W = h.shape
        a = o.conv(o.gn(h, p + ".norm", 1e-6), p + ".proj_in").flatten(2).transpose(1, 2)
        bp = p + ".transformer_blocks.0"
        n1 = o.ln(a, bp + ".norm1")
        a = a + attention(n1, n1, bp + ".attn1")
        a = a + attention(o.ln(a, bp + ".norm2"), ctx, bp + ".attn2")
        y, gate = o.lin(o.ln(a, bp + ".norm3"), bp + ".ff.net.0.proj").chunk(2, -1)
        a = a + o.lin(y * F.gelu(gate), bp + ".ff.net.2")
        return o.conv(a.transpose(1, 2).reshape(B, C, H, W), p + ".proj_out") + h

    h0 = o.conv(x, "input_blocks.0.0", padding=1)
    h1 = transformer(res(h0, "input_blocks.1.0"), "input_blocks.1.1")
    h2 = o.conv(h1, "input_blocks.2.0.op", stride=2, padding=1)
    h3 = transformer(res(h2, "input_blocks.3.0"), "input_blocks.3.1")
    h = res(transformer(res(h3, "middle_block.0"), "middle_block.1"), "middle_block.2")
    h = transformer(res(torch.cat([h, h3], 1), "output_blocks.0.0"), "output_blocks.0.1")
    h = transformer(res(torch.cat([h, h2], 1), "output_blocks.1.0"), "output_blocks.1.1")
    h = o.conv(F.interpolate(h, scale_factor=2, mode="nearest"), "output_blocks.1.2.conv", padding=1)
    h = transformer(res(torch.cat([h, h1], 1), "output_blocks.2.0"), "output_blocks.2.1")
    h = transformer(res(torch.cat([h, h0], 1), "output_blocks.3.0"), "output_blocks.3.1")
    return o.conv(_silu(o.gn(h, "out.0", 1e-5)), "out.2", padding=1)


def _vae_res(o, h, p):
    a = o.conv(_silu(o.gn(h, p + ".norm1", 1e-6)), p + ".conv1", padding=1)
    a = o.conv(_silu(o.gn(a, p + ".norm2", 1e-6)), p + ".conv2", padding=1)
    skip = o.conv(h, p + ".nin_shortcut") if p + ".nin_shortcut.weight" in o.sd else h
    return skip + a


def _vae_attn(o, h, p):
    B, C, H, W = h.shape
    n = o.gn(h, p + ".norm", 1e-6)
    q, k, v = (o.conv(n, p + s).flatten(2) for s in (".q", ".k", ".v"))
    w = torch.softmax(q.transpose(1, 2) @ k / math.sqrt(C), dim=-1)  # (B, query, key)
    return h + o.conv((v @ w.transpose(1, 2)).reshape(B, C, H, W), p + ".proj_out")


def _ref_vae_encode_mean(sd, img, levels=4):
    o = _Ops(sd)
    h = o.conv(img, "encoder.conv_in", padding=1)
    for i in range(levels):
        h = _vae_res(o, h, f"encoder.down.{i}.block.0")
        if i != levels - 1:
            h = o.conv(F.pad(h, (0, 1, 0, 1)), f"encoder.down.{i}.downsample.conv", stride=2)
    h = _vae_res(o, h, "encoder.mid.block_1")
    h = _vae_attn(o, h, "encoder.mid.attn_1")
    h = _vae_res(o, h, "encoder.mid.block_2")
    h = o.conv(_silu(o.gn(h, "encoder.norm_out", 1e-6)), "encoder.conv_out", padding=1)
    return o.conv(h, "quant_conv")[:, :4]


def _ref_vae_decode(sd, z, levels=4):
    o = _Ops(sd)
    h = o.conv(o.conv(z, "post_quant_conv"), "decoder.conv_in", padding=1)
    h = _vae_res(o, h, "decoder.mid.block_1")
    h = _vae_attn(o, h, "decoder.mid.attn_1")
    h = _vae_res(o, h, "decoder.mid.block_2")
    for i in reversed(range(levels)):
        for j in range(2):
            h = _vae_res(o, h, f"decoder.up.{i}.block.{j}")
        if i != 0:
            h = o.conv(F.interpolate(h, scale_factor=2.0, mode="nearest"), f"decoder.up.{i}.upsample.conv", padding=1)
    return o.conv(_silu(o.gn(h, "decoder.norm_out", 1e-6)), "decoder.conv_out", padding=1)


def test_unet_matches_functional_reference(model64):
    g = torch.Generator().manual_seed(22)
    x = torch.randn(2, 8, 8, 8, generator=g, dtype=torch.float64)
    t = torch.tensor([981, 14])
    ctx = torch.randn(2, 1, 32, generator=g, dtype=torch.float64)
    ctx3 = torch.randn(2, 3, 32, generator=g, dtype=torch.float64)
    sd = model64.unet.state_dict()
    with torch.no_grad():
        torch.testing.assert_close(model64.unet(x, t, ctx), _ref_unet(sd, x, t, ctx), rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(model64.unet(x, t, ctx3), _ref_unet(sd, x, t, ctx3), rtol=1e-9, atol=1e-9)


def test_vae_matches_functional_reference(model64):
    g = torch.Generator().manual_seed(23)
    img = torch.rand(1, 3, 64, 64, generator=g, dtype=torch.float64) * 2 - 1
    z = torch.randn(1, 4, 8, 8, generator=g, dtype=torch.float64)
    sd = model64.vae.state_dict()
    with torch.no_grad():
        torch.testing.assert_close(model64.vae.encode_mode(img), _ref_vae_encode_mean(sd, img), rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(model64.vae.decode(z), _ref_vae_decode(sd, z), rtol=1e-9, atol=1e-9)
