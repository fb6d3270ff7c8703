"""Architecture and numerics of the Zero123 networks against independent formulas."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vfrt.models import (
    AutoencoderKL,
    CLIPVisionTower,
    UNet,
    UNetConfig,
    VAEConfig,
    Zero123,
    Zero123Config,
    clip_preprocess,
    tiny_config,
    timestep_embedding,
)
from vfrt.models.checkpoint import ema_key
from vfrt.models.clip import CLIP_MEAN, CLIP_STD, SelfAttention
from vfrt.models.config import CLIPConfig
from vfrt.models.testing import init_nontrivial_
from vfrt.models.unet import CrossAttention, GroupNorm32, ResBlock, SpatialTransformer
from vfrt.models.vae import AttnBlock


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def full_model() -> Zero123:
    with torch.device("meta"):
        return Zero123(Zero123Config.default())


@pytest.fixture(scope="module")
def tiny_model() -> Zero123:
    m = Zero123(tiny_config(64))
    init_nontrivial_(m, _gen(3))
    return m.eval()


# ----------------------------------------------------------------------------- full-size architecture


def test_full_size_parameter_counts(full_model):
    assert sum(p.numel() for p in full_model.unet.parameters()) == 859_532_484
    assert sum(p.numel() for p in full_model.vae.parameters()) == 83_653_863
    assert full_model.cc_projection.weight.shape == (768, 772)


def test_full_size_state_dict_names_and_shapes(full_model):
    unet = {k: tuple(v.shape) for k, v in full_model.unet.state_dict().items()}
    assert unet["input_blocks.0.0.weight"] == (320, 8, 3, 3)
    assert unet["time_embed.0.weight"] == (1280, 320)
    assert unet["input_blocks.1.1.proj_in.weight"] == (320, 320, 1, 1)  # 1x1 conv, not linear
    assert unet["input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"] == (320, 768)
    assert unet["input_blocks.1.1.transformer_blocks.0.attn1.to_k.weight"] == (320, 320)
    assert unet["input_blocks.1.1.transformer_blocks.0.ff.net.0.proj.weight"] == (2560, 320)  # GEGLU
    assert unet["input_blocks.1.1.transformer_blocks.0.ff.net.2.weight"] == (320, 1280)
    assert unet["input_blocks.3.0.op.weight"] == (320, 320, 3, 3)
    assert unet["input_blocks.4.0.skip_connection.weight"] == (640, 320, 1, 1)
    assert unet["middle_block.1.proj_out.weight"] == (1280, 1280, 1, 1)
    assert unet["output_blocks.2.1.conv.weight"] == (1280, 1280, 3, 3)
    assert unet["output_blocks.11.1.norm.weight"] == (320,)
    assert unet["out.2.weight"] == (4, 320, 3, 3)
    # no attention at the lowest resolution (ds = 8)
    assert not any(k.startswith(("input_blocks.10.1.", "input_blocks.11.1.", "output_blocks.0.1.")) for k in unet)
    assert len([k for k in unet if k.endswith("attn2.to_v.weight")]) == 16
    # 8 heads of width channels / 8 everywhere
    for m in full_model.unet.modules():
        if isinstance(m, CrossAttention):
            assert m.heads == 8 and m.heads * m.dim_head == m.to_q.out_features

    vae = {k: tuple(v.shape) for k, v in full_model.vae.state_dict().items()}
    assert vae["encoder.conv_out.weight"] == (8, 512, 3, 3)
    assert vae["quant_conv.weight"] == (8, 8, 1, 1)
    assert vae["post_quant_conv.weight"] == (4, 4, 1, 1)
    assert vae["decoder.mid.attn_1.q.weight"] == (512, 512, 1, 1)
    assert vae["encoder.down.1.block.0.nin_shortcut.weight"] == (256, 128, 1, 1)
    assert vae["decoder.up.3.upsample.conv.weight"] == (512, 512, 3, 3)
    assert "encoder.down.3.downsample.conv.weight" not in vae

    clip = {k: tuple(v.shape) for k, v in full_model.clip.state_dict().items()}
    assert clip["conv1.weight"] == (1024, 3, 14, 14) and "conv1.bias" not in clip
    assert clip["positional_embedding"] == (257, 1024)
    assert clip["proj"] == (1024, 768)
    assert clip["transformer.resblocks.23.attn.in_proj_weight"] == (3072, 1024)
    assert clip["transformer.resblocks.23.attn.out_proj.weight"] == (1024, 1024)
    assert clip["transformer.resblocks.0.mlp.c_fc.weight"] == (4096, 1024)
    assert "transformer.resblocks.24.ln_1.weight" not in clip


def test_full_size_ema_names_are_unique(full_model):
    names = [n for n, _ in full_model.unet.named_parameters()]
    assert len({ema_key(n) for n in names}) == len(names)
    assert ema_key("input_blocks.0.0.weight") == "model_ema.diffusion_modelinput_blocks00weight"


def test_norm_layers_have_original_eps(full_model):
    rb = full_model.unet.input_blocks[1][0]
    assert isinstance(rb, ResBlock) and isinstance(rb.in_layers[0], GroupNorm32)
    assert rb.in_layers[0].eps == 1e-5 and rb.in_layers[0].num_groups == 32
    st = full_model.unet.input_blocks[1][1]
    assert isinstance(st, SpatialTransformer) and type(st.norm) is torch.nn.GroupNorm and st.norm.eps == 1e-6
    assert st.transformer_blocks[0].norm1.eps == 1e-5
    assert full_model.vae.encoder.norm_out.eps == 1e-6
    assert full_model.clip.ln_pre.eps == 1e-5


def test_clip_config_inferred_from_shapes(full_model):
    sd = full_model.clip.state_dict()
    assert CLIPVisionTower.config_from_state_dict(sd) == CLIPConfig()
    tiny = CLIPConfig(image_resolution=32, patch_size=8, width=128, layers=2, heads=2, output_dim=32)
    tower = CLIPVisionTower(tiny)
    assert CLIPVisionTower.from_state_dict_shapes(tower.state_dict()).config == tiny


# ----------------------------------------------------------------------------- shapes


def test_tiny_network_shapes(tiny_model):
    g = _gen(1)
    img = torch.rand(2, 3, 64, 64, generator=g) * 2 - 1
    with torch.no_grad():
        emb = tiny_model.embed_image(img)
        z = tiny_model.encode_latent(img)
        ctx = tiny_model.project(emb, torch.randn(2, 4, generator=g))
        eps = tiny_model.denoise(torch.cat([torch.randn(2, 4, 8, 8, generator=g), z], 1), torch.tensor([999, 3]), ctx)
        eps_f = tiny_model.denoise(torch.cat([torch.randn(2, 4, 8, 8, generator=g), z], 1), torch.tensor([5.5, 3.0]), ctx)
        img2 = tiny_model.decode_latent(z)
    assert emb.shape == (2, 32) and z.shape == (2, 4, 8, 8) and ctx.shape == (2, 1, 32)
    assert eps.shape == (2, 4, 8, 8) and eps_f.shape == (2, 4, 8, 8) and img2.shape == (2, 3, 64, 64)
    assert 0.1 < eps.std().item() < 10  # non-trivial init: eps is O(1), not identically zero


def test_shape_errors(tiny_model):
    with pytest.raises(ValueError, match="multiple of"):
        tiny_model.unet(torch.zeros(1, 8, 7, 8), torch.zeros(1), torch.zeros(1, 1, 32))
    with pytest.raises(ValueError, match=r"\(B, 8, h, w\)"):
        tiny_model.unet(torch.zeros(1, 4, 8, 8), torch.zeros(1), torch.zeros(1, 1, 32))
    with pytest.raises(ValueError, match="multiple of 8"):
        tiny_model.encode_latent(torch.zeros(1, 3, 60, 64))
    with pytest.raises(ValueError, match="4 entries"):
        tiny_model.project(torch.zeros(1, 32), torch.zeros(1, 3))
    with pytest.raises(ValueError, match="pixels must be"):
        tiny_model.clip(torch.zeros(1, 3, 31, 31))
    with pytest.raises(ValueError, match="1-D"):
        timestep_embedding(torch.zeros(2, 1), 8)
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        clip_preprocess(torch.zeros(1, 1, 8, 8))
    with pytest.raises(ValueError, match="z must be"):
        tiny_model.vae.decode(torch.zeros(1, 3, 8, 8))
    with pytest.raises(ValueError, match="clip_emb"):
        tiny_model.project(torch.zeros(2, 32), torch.zeros(3, 4))


# ----------------------------------------------------------------------------- numerics vs independent formulas


@pytest.mark.parametrize("dim", [320, 7])
def test_timestep_embedding_cos_first(dim):
    t = torch.tensor([0, 1, 17, 500, 999], dtype=torch.int64)
    got = timestep_embedding(t, dim).numpy()
    half = dim // 2
    freqs = np.exp(-math.log(10000) * np.arange(half) / half)
    args = t.numpy()[:, None].astype(np.float64) * freqs[None]
    want = np.concatenate([np.cos(args), np.sin(args)], axis=1)
    if dim % 2:
        want = np.concatenate([want, np.zeros((len(t), 1))], axis=1)
    assert got.shape == (5, dim) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, atol=2e-4, rtol=0)  # fp32 args up to 999 rad
    assert got[0, 0] == 1.0 and got[0, half] == 0.0  # cos(0) first, then sin(0)
    tf = torch.tensor([2.5])
    np.testing.assert_allclose(timestep_embedding(tf, dim).numpy()[0, 0], 1.0 * math.cos(2.5), atol=1e-6)


def test_cross_attention_single_token_is_value_projection():
    attn = CrossAttention(64, context_dim=48, heads=4, dim_head=16)
    init_nontrivial_(attn, _gen(2))
    g = _gen(3)
    x = torch.randn(3, 10, 64, generator=g)
    ctx = torch.randn(3, 1, 48, generator=g)
    with torch.no_grad():
        got = attn(x, ctx)
        want = attn.to_out(attn.to_v(ctx)).expand(3, 10, 64)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


def test_cross_attention_matches_per_head_formula():
    attn = CrossAttention(32, context_dim=24, heads=2, dim_head=8)
    init_nontrivial_(attn, _gen(4))
    g = _gen(5)
    x = torch.randn(2, 6, 32, generator=g, dtype=torch.float64)
    ctx = torch.randn(2, 5, 24, generator=g, dtype=torch.float64)
    attn = attn.double()
    with torch.no_grad():
        got = attn(x, ctx)
        Wq, Wk, Wv = attn.to_q.weight, attn.to_k.weight, attn.to_v.weight
        Wo, bo = attn.to_out[0].weight, attn.to_out[0].bias
        heads = []
        for h in range(2):
            sl = slice(8 * h, 8 * h + 8)
            q, k, v = x @ Wq[sl].T, ctx @ Wk[sl].T, ctx @ Wv[sl].T
            w = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(8), dim=-1)
            heads.append(w @ v)
        want = torch.cat(heads, -1) @ Wo.T + bo
        scrambled = attn(x, ctx.flip(1))  # the keys matter: permuting tokens changes nothing...
        shifted = attn(x, ctx + 1.0)  # ...but changing them does
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(scrambled, got, rtol=1e-10, atol=1e-10)
    assert not torch.allclose(shifted, got, atol=1e-3)


def test_group_norm32_matches_formula():
    gn = GroupNorm32(32, 64)
    init_nontrivial_(gn, _gen(6))
    x = torch.randn(2, 64, 5, 3, generator=_gen(7))
    xd = x.double().reshape(2, 32, -1)
    mu = xd.mean(-1, keepdim=True)
    var = xd.var(-1, unbiased=False, keepdim=True)
    want = ((xd - mu) / torch.sqrt(var + 1e-5)).reshape(2, 64, 5, 3)
    want = want * gn.weight.double()[:, None, None] + gn.bias.double()[:, None, None]
    with torch.no_grad():
        torch.testing.assert_close(gn(x).double(), want, rtol=1e-5, atol=1e-5)
        assert gn(x.half()).dtype == torch.float16


def test_vae_attention_block_matches_formula():
    blk = AttnBlock(32)
    init_nontrivial_(blk, _gen(8))
    x = torch.randn(1, 32, 3, 4, generator=_gen(9))
    with torch.no_grad():
        h = F.group_norm(x.double(), 32, blk.norm.weight.double(), blk.norm.bias.double(), eps=1e-6)

        def conv(m, t):
            return torch.einsum("oc,bcn->bon", m.weight.double()[:, :, 0, 0], t) + m.bias.double()[None, :, None]

        hf = h.reshape(1, 32, 12)
        q, k, v = conv(blk.q, hf), conv(blk.k, hf), conv(blk.v, hf)
        w = torch.softmax(torch.einsum("bci,bcj->bij", q, k) / math.sqrt(32), dim=-1)  # (query, key)
        out = torch.einsum("bij,bcj->bci", w, v)
        want = x.double() + conv(blk.proj_out, out).reshape(1, 32, 3, 4)
        torch.testing.assert_close(blk(x).double(), want, rtol=1e-5, atol=1e-5)


def test_spatial_transformer_matches_manual_composition():
    st = SpatialTransformer(32, 2, 16, depth=2, context_dim=12)
    init_nontrivial_(st, _gen(10))
    g = _gen(11)
    x = torch.randn(2, 32, 3, 3, generator=g)
    ctx = torch.randn(2, 3, 12, generator=g)
    with torch.no_grad():
        h = F.group_norm(x, 32, st.norm.weight, st.norm.bias, eps=1e-6)
        h = F.conv2d(h, st.proj_in.weight, st.proj_in.bias).flatten(2).transpose(1, 2)
        for blk in st.transformer_blocks:
            h = h + blk.attn1(F.layer_norm(h, (32,), blk.norm1.weight, blk.norm1.bias))
            h = h + blk.attn2(F.layer_norm(h, (32,), blk.norm2.weight, blk.norm2.bias), ctx)
            a, gate = F.linear(F.layer_norm(h, (32,), blk.norm3.weight, blk.norm3.bias), blk.ff.net[0].proj.weight,
                               blk.ff.net[0].proj.bias).chunk(2, -1)
            h = h + F.linear(a * F.gelu(gate), blk.ff.net[2].weight, blk.ff.net[2].bias)
        want = F.conv2d(h.transpose(1, 2).reshape(2, 32, 3, 3), st.proj_out.weight, st.proj_out.bias) + x
        torch.testing.assert_close(st(x, ctx), want, rtol=1e-5, atol=1e-5)


def test_clip_attention_matches_torch_multihead_attention():
    attn = SelfAttention(128, 2)
    init_nontrivial_(attn, _gen(12))
    mha = torch.nn.MultiheadAttention(128, 2)
    mha.load_state_dict(attn.state_dict())  # same parameter names
    x = torch.randn(17, 3, 128, generator=_gen(13))
    with torch.no_grad():
        torch.testing.assert_close(attn(x), mha(x, x, x, need_weights=False)[0], rtol=1e-6, atol=1e-6)


def test_clip_tower_matches_reference_vit():
    cfg = CLIPConfig(image_resolution=32, patch_size=8, width=128, layers=2, heads=2, output_dim=24)
    tower = CLIPVisionTower(cfg)
    init_nontrivial_(tower, _gen(14))
    px = torch.randn(2, 3, 32, 32, generator=_gen(15))
    with torch.no_grad():
        x = F.conv2d(px, tower.conv1.weight, stride=8).flatten(2).transpose(1, 2)  # (B, 16, 128)
        x = torch.cat([tower.class_embedding.expand(2, 1, 128), x], 1) + tower.positional_embedding
        x = F.layer_norm(x, (128,), tower.ln_pre.weight, tower.ln_pre.bias)
        for blk in tower.transformer.resblocks:
            mha = torch.nn.MultiheadAttention(128, 2, batch_first=True)
            mha.load_state_dict(blk.attn.state_dict())
            y = F.layer_norm(x, (128,), blk.ln_1.weight, blk.ln_1.bias)
            x = x + mha(y, y, y, need_weights=False)[0]
            y = F.layer_norm(x, (128,), blk.ln_2.weight, blk.ln_2.bias)
            y = F.linear(y, blk.mlp.c_fc.weight, blk.mlp.c_fc.bias)
            y = y * torch.sigmoid(1.702 * y)
            x = x + F.linear(y, blk.mlp.c_proj.weight, blk.mlp.c_proj.bias)
        want = F.layer_norm(x[:, 0], (128,), tower.ln_post.weight, tower.ln_post.bias) @ tower.proj
        torch.testing.assert_close(tower(px), want, rtol=1e-5, atol=1e-5)


def test_clip_preprocess_matches_direct_computation():
    img = torch.rand(2, 3, 40, 50, generator=_gen(16)) * 2 - 1
    got = clip_preprocess(img, 32)
    resized = F.interpolate(img.double(), size=(32, 32), mode="bicubic", align_corners=True)
    mean = torch.tensor(CLIP_MEAN, dtype=torch.float64)[:, None, None]
    std = torch.tensor(CLIP_STD, dtype=torch.float64)[:, None, None]
    want = ((resized + 1) / 2 - mean) / std
    assert got.shape == (2, 3, 32, 32)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)
    # align_corners=True keeps the corner pixels exactly
    corners = ((img[..., [0, -1]][..., [0, -1], :].double() + 1) / 2 - mean) / std
    torch.testing.assert_close(got[..., [0, -1]][..., [0, -1], :].double(), corners, rtol=1e-5, atol=1e-5)
    # already at the tower resolution: normalisation only
    same = torch.rand(1, 3, 32, 32, generator=_gen(17)) * 2 - 1
    torch.testing.assert_close(
        clip_preprocess(same, 32).double(), ((same.double() + 1) / 2 - mean) / std, rtol=1e-6, atol=1e-6
    )


def test_zero123_project_and_decode_latent(tiny_model):
    g = _gen(18)
    emb, T = torch.randn(3, 32, generator=g), torch.randn(3, 4, generator=g)
    z = torch.randn(1, 4, 8, 8, generator=g)
    with torch.no_grad():
        want_ctx = emb @ tiny_model.cc_projection.weight[:, :32].T + T @ tiny_model.cc_projection.weight[:, 32:].T
        want_ctx = want_ctx + tiny_model.cc_projection.bias
        torch.testing.assert_close(tiny_model.project(emb, T), want_ctx[:, None], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(tiny_model.decode_latent(z), tiny_model.vae.decode(z / 0.18215), rtol=1e-5, atol=1e-5)
        assert not torch.allclose(tiny_model.decode_latent(z), tiny_model.vae.decode(z), atol=1e-3)
        moments = tiny_model.vae.encode_moments(torch.zeros(1, 3, 64, 64))
        torch.testing.assert_close(tiny_model.encode_latent(torch.zeros(1, 3, 64, 64)), moments[:, :4])


# ----------------------------------------------------------------------------- UNet options


@pytest.mark.parametrize(
    "kw, ch, want",
    [
        (dict(num_heads=8), 320, (8, 40)),
        (dict(num_heads=8, legacy=False), 640, (8, 80)),
        (dict(num_heads=-1, num_head_channels=64, legacy=False), 96, (1, 64)),
        (dict(num_heads=-1, num_head_channels=64, legacy=True), 96, (1, 96)),
        (dict(num_heads=-1, num_head_channels=64, legacy=True), 320, (5, 64)),
    ],
)
def test_attention_layout_follows_openaimodel(kw, ch, want):
    layout = UNetConfig(**kw).attention_layout(ch)
    assert (layout.heads, layout.dim_head) == want


def test_unet_options_build_and_run():
    cfg = UNetConfig(
        in_channels=8, out_channels=4, model_channels=32, channel_mult=(1, 2), num_res_blocks=(1, 2),
        attention_resolutions=(1, 2), num_heads=-1, num_head_channels=16, context_dim=12,
        disable_self_attentions=(True, False), num_attention_blocks=(1, 1),
        use_scale_shift_norm=True, resblock_updown=True, transformer_depth=2,
    )
    unet = UNet(cfg)
    init_nontrivial_(unet, _gen(19))
    sd = unet.state_dict()
    assert sd["input_blocks.1.1.transformer_blocks.0.attn1.to_k.weight"].shape == (32, 12)  # self-attn disabled
    assert sd["input_blocks.3.1.transformer_blocks.0.attn1.to_k.weight"].shape == (64, 64)
    assert "input_blocks.4.1.norm.weight" not in sd  # num_attention_blocks = 1 at level 1
    assert "input_blocks.4.0.in_layers.0.weight" in sd
    assert "input_blocks.1.1.transformer_blocks.1.norm1.weight" in sd  # depth 2
    assert sd["input_blocks.2.0.emb_layers.1.weight"].shape == (64, 128)  # scale-shift: 2 x channels
    assert isinstance(unet.input_blocks[2][0], ResBlock) and unet.input_blocks[2][0].updown
    out = unet(torch.randn(2, 8, 8, 8, generator=_gen(20)), torch.tensor([1, 900]), torch.randn(2, 3, 12))
    assert out.shape == (2, 4, 8, 8) and torch.isfinite(out).all()


@pytest.mark.parametrize(
    "kw, msg",
    [
        (dict(use_linear_in_transformer=True), "use_linear_in_transformer"),
        (dict(use_spatial_transformer=False), "use_spatial_transformer"),
        (dict(num_heads=-1, num_head_channels=-1), "num_heads or num_head_channels"),
        (dict(num_res_blocks=(2, 2)), "num_res_blocks"),
        (dict(num_attention_blocks=(3, 1, 1, 1)), "num_attention_blocks"),
        (dict(disable_self_attentions=(True,)), "disable_self_attentions"),
        (dict(num_classes=10), "num_classes"),
    ],
)
def test_unet_config_rejects_unsupported(kw, msg):
    with pytest.raises(ValueError, match=msg):
        UNetConfig(**kw)


def test_vae_and_bundle_config_validation():
    with pytest.raises(ValueError, match="double_z"):
        VAEConfig(double_z=False)
    with pytest.raises(ValueError, match="in_channels"):
        Zero123Config(unet=UNetConfig(in_channels=4))
    vae = AutoencoderKL(VAEConfig(ch=32, ch_mult=(1, 2), num_res_blocks=1, resolution=16, attn_resolutions=(16, 8)))
    assert len(vae.encoder.down[0].attn) == 1 and len(vae.decoder.up[1].attn) == 2
    assert vae.decode(vae.encode_mode(torch.zeros(1, 3, 16, 16))).shape == (1, 3, 16, 16)
