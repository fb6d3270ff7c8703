"""Loading diffusers-format Zero123 folders, checked numerically against diffusers / transformers.

Tiny random models are built with the real libraries, saved with ``save_pretrained`` and
loaded with :func:`vfrt.models.load_zero123`; every sub-network must then give the libraries'
own outputs on fresh random inputs.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

from safetensors.torch import load_file, save_file  # noqa: E402

from vfrt.models import (  # noqa: E402
    CheckpointError,
    Zero123,
    load_zero123,
    load_zero123_diffusers,
)
from vfrt.models.state_dict import PREFIXES  # noqa: E402
from vfrt.models.config import Zero123Config  # noqa: E402
from vfrt.models.diffusers_format import (  # noqa: E402
    clip_config_from_transformers,
    config_from_diffusers_folder,
    convert_diffusers_state_dicts,
    schedule_from_diffusers,
    unet_config_from_diffusers,
    vae_config_from_diffusers,
)

CTX = 32  # cross_attention_dim of the tiny UNet = cc_projection out_features
PROJ = 28  # CLIP projection_dim; cc_projection in_features = PROJ + 4


@torch.no_grad()
def _randomise_(module: torch.nn.Module, seed: int) -> None:
    """Seeded values with no parameter left at 0 / 1 and O(1) activations."""
    g = torch.Generator().manual_seed(seed)
    for name, p in module.named_parameters():
        leaf = name.rsplit(".", 1)[-1]
        if p.ndim == 1 and leaf == "weight":  # norm scales
            p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
        elif p.ndim == 1:  # biases, class embedding
            p.copy_(0.2 * torch.randn(p.shape, generator=g))
        else:
            fan_in = p[0].numel() if "position_embedding" not in name else p.shape[1]
            p.copy_(torch.randn(p.shape, generator=g) / fan_in**0.5)


def _tiny_unet(**overrides):
    kw = dict(
        sample_size=8,
        in_channels=8,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=CTX,
        attention_head_dim=2,
        norm_num_groups=32,
        use_linear_projection=False,
    )
    kw.update(overrides)
    return diffusers.UNet2DConditionModel(**kw)


def _tiny_vae():
    return diffusers.AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=(32, 64, 64, 64),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=32,
        sample_size=32,
        scaling_factor=0.2,
    )


def _tiny_clip(hidden_act="quick_gelu"):
    cfg = transformers.CLIPVisionConfig(
        hidden_size=64,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        patch_size=8,
        image_size=32,
        projection_dim=PROJ,
        hidden_act=hidden_act,
    )
    return transformers.CLIPVisionModelWithProjection(cfg)


def _save_bin(model, sub: Path, name: str) -> None:
    """``save_pretrained`` config + weights as a ``.bin`` pickle instead of safetensors."""
    model.save_pretrained(sub)
    for f in sub.glob("*.safetensors"):
        f.unlink()
    torch.save({k: v.contiguous() for k, v in model.state_dict().items()}, sub / name)


def build_folder(root: Path, *, seed: int = 0, layout: str = "threestudio", bin_weights: bool = False, **unet_kw):
    """A tiny diffusers Zero123 folder; returns ``(root, models)``."""
    unet, vae, clip = _tiny_unet(**unet_kw), _tiny_vae(), _tiny_clip()
    proj = torch.nn.Linear(PROJ + 4, CTX)
    for i, m in enumerate((unet, vae, clip, proj)):
        _randomise_(m, seed * 10 + i)
        m.eval()
    root.mkdir(parents=True, exist_ok=True)
    if bin_weights:
        _save_bin(unet, root / "unet", "diffusion_pytorch_model.bin")
        _save_bin(clip, root / "image_encoder", "pytorch_model.bin")
    else:
        unet.save_pretrained(root / "unet")
        clip.save_pretrained(root / "image_encoder")
    vae.save_pretrained(root / "vae")
    if layout == "threestudio":
        proj_dir, prefix = "clip_camera_projection", "proj."
        proj_cfg = {"_class_name": "CLIPCameraProjection", "embedding_dim": PROJ, "additional_embeddings": 4}
    else:  # diffusers community pipeline_zero1to3
        proj_dir, prefix = "cc_projection", "projection."
        proj_cfg = {"_class_name": "CCProjection", "in_channel": PROJ + 4, "out_channel": CTX}
    (root / proj_dir).mkdir()
    (root / proj_dir / "config.json").write_text(json.dumps(proj_cfg))
    save_file({prefix + k: v.contiguous() for k, v in proj.state_dict().items()},
              str(root / proj_dir / "diffusion_pytorch_model.safetensors"))
    sched = diffusers.DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                    clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    sched.save_pretrained(root / "scheduler")
    (root / "model_index.json").write_text(json.dumps({
        "_class_name": "Zero123Pipeline",
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
        "image_encoder": ["transformers", "CLIPVisionModelWithProjection"],
        proj_dir: ["pipeline", type(proj).__name__],
        "scheduler": ["diffusers", "DDIMScheduler"],
        "feature_extractor": ["transformers", "CLIPImageProcessor"],
    }))
    return root, {"unet": unet, "vae": vae, "clip": clip, "proj": proj}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return build_folder(tmp_path_factory.mktemp("zero123_diffusers") / "model")


@pytest.fixture(scope="module")
def loaded(folder):
    return load_zero123(folder[0])


def _close(got: torch.Tensor, want: torch.Tensor, rtol: float = 1e-4):
    assert got.shape == want.shape
    scale = want.abs().max().item()
    assert scale > 1e-3, "degenerate reference output"
    err = (got - want).abs().max().item()
    assert err <= rtol * scale, f"max abs error {err:.3g} vs reference scale {scale:.3g}"


def _copy(folder: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "copy"
    shutil.copytree(folder, dst)
    return dst


def _edit_json(path: Path, **changes) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


# ----------------------------------------------------------------------------- config


def test_config_from_folder(folder, loaded):
    cfg = config_from_diffusers_folder(folder[0])
    assert loaded.config == cfg
    u = cfg.unet
    assert (u.in_channels, u.out_channels, u.model_channels, u.channel_mult) == (8, 4, 32, (1, 2))
    assert (u.num_res_blocks, u.attention_resolutions, u.num_heads, u.context_dim) == (1, (1,), 2, CTX)
    assert u.image_size == 8 and u.transformer_depth == 1
    v = cfg.vae
    assert (v.ch, v.ch_mult, v.num_res_blocks, v.z_channels, v.embed_dim) == (32, (1, 2, 2, 2), 1, 4, 4)
    c = cfg.clip
    assert (c.width, c.layers, c.heads, c.patch_size, c.image_resolution, c.output_dim) == (64, 2, 2, 8, 32, PROJ)
    s = cfg.schedule
    assert (s.timesteps, s.linear_start, s.linear_end, s.scale_factor) == (1000, 0.00085, 0.012, 0.2)
    assert loaded.cc_projection.in_features == PROJ + 4 and loaded.context_dim == CTX
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())


FULL_UNET = {
    "_class_name": "UNet2DConditionModel", "sample_size": 32, "in_channels": 8, "out_channels": 4,
    "block_out_channels": [320, 640, 1280, 1280], "layers_per_block": 2, "attention_head_dim": 8,
    "cross_attention_dim": 768, "use_linear_projection": False, "norm_num_groups": 32,
    "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
    "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
    "flip_sin_to_cos": True, "freq_shift": 0, "act_fn": "silu", "norm_eps": 1e-05,
}
FULL_VAE = {
    "_class_name": "AutoencoderKL", "block_out_channels": [128, 256, 512, 512], "layers_per_block": 2,
    "latent_channels": 4, "sample_size": 256, "norm_num_groups": 32, "act_fn": "silu",
    "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
}
FULL_CLIP = {  # openai/clip-vit-large-patch14 vision tower, as in the Zero123 image_encoder/config.json
    "model_type": "clip_vision_model", "hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24,
    "num_attention_heads": 16, "patch_size": 14, "image_size": 224, "projection_dim": 768,
    "hidden_act": "quick_gelu", "layer_norm_eps": 1e-05,
}
FULL_SCHEDULER = {"_class_name": "DDIMScheduler", "beta_schedule": "scaled_linear", "beta_start": 0.00085,
                  "beta_end": 0.012, "num_train_timesteps": 1000, "prediction_type": "epsilon"}


def test_full_size_configs_give_zero123_default():
    """The Zero123(-XL) diffusers configs map to the default (full-size) ldm config."""
    default = Zero123Config.default()
    u, attn = unet_config_from_diffusers(FULL_UNET)
    assert u == default.unet and attn == [True, True, True, False]
    v, scale = vae_config_from_diffusers(FULL_VAE)
    assert v == default.vae and scale == default.schedule.scale_factor
    assert clip_config_from_transformers(FULL_CLIP) == default.clip
    assert schedule_from_diffusers(FULL_SCHEDULER, scale) == default.schedule


def test_full_size_name_map_is_exact():
    """On the meta device: the full-size libraries' state dicts convert 1:1 (every key used, every shape right)."""
    default = Zero123Config.default()
    lib_unet_kw = {k: v for k, v in FULL_UNET.items() if not k.startswith("_")}
    lib_vae_kw = {k: v for k, v in FULL_VAE.items() if not k.startswith("_")}
    clip_kw = {k: v for k, v in FULL_CLIP.items() if k != "model_type"}
    with torch.device("meta"):
        parts = {
            "unet": diffusers.UNet2DConditionModel(**lib_unet_kw).state_dict(),
            "vae": diffusers.AutoencoderKL(**lib_vae_kw).state_dict(),
            "image_encoder": transformers.CLIPVisionModelWithProjection(
                transformers.CLIPVisionConfig(**clip_kw)
            ).state_dict(),
            "clip_camera_projection": {"proj." + k: v for k, v in torch.nn.Linear(772, 768).state_dict().items()},
        }
        model = Zero123(default)
    _, attn = unet_config_from_diffusers(FULL_UNET)
    state = convert_diffusers_state_dicts(model, attn, parts)
    assert state.keys() == model.state_dict().keys()
    assert len(model.unet.input_blocks) == 12 and len(model.clip.transformer.resblocks) == 24


# ----------------------------------------------------------------------------- numerics


@torch.no_grad()
def test_unet_matches_diffusers(folder, loaded):
    _, ref = folder
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 8, 16, 16, generator=g)
    t = torch.tensor([17, 903])
    ctx = torch.randn(2, 1, CTX, generator=g)
    _close(loaded.unet(x, t, ctx), ref["unet"](x, t, encoder_hidden_states=ctx).sample)


@torch.no_grad()
def test_vae_matches_diffusers(folder, loaded):
    _, ref = folder
    g = torch.Generator().manual_seed(2)
    img = torch.rand(2, 3, 32, 32, generator=g) * 2 - 1
    _close(loaded.vae.encode_mode(img), ref["vae"].encode(img).latent_dist.mean)
    z = torch.randn(2, 4, 4, 4, generator=g)
    _close(loaded.vae.decode(z), ref["vae"].decode(z).sample)


@torch.no_grad()
def test_clip_matches_transformers(folder, loaded):
    _, ref = folder
    px = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    _close(loaded.clip(px), ref["clip"](pixel_values=px).image_embeds)


@torch.no_grad()
def test_projection_matches(folder, loaded):
    _, ref = folder
    g = torch.Generator().manual_seed(4)
    emb, T = torch.randn(2, PROJ, generator=g), torch.randn(2, 4, generator=g)
    _close(loaded.project(emb, T)[:, 0], ref["proj"](torch.cat([emb, T], -1)))


@torch.no_grad()
@pytest.mark.parametrize("variant", ["community_bin", "all_cross_attn"])
def test_variants(tmp_path, variant):
    """cc_projection/ layout + .bin weights; a UNet with attention at every level and 4 heads."""
    if variant == "community_bin":
        root, ref = build_folder(tmp_path / "m", seed=1, layout="community", bin_weights=True)
    else:
        root, ref = build_folder(
            tmp_path / "m", seed=2, down_block_types=("CrossAttnDownBlock2D",) * 2,
            up_block_types=("CrossAttnUpBlock2D",) * 2, attention_head_dim=4, layers_per_block=2,
        )
    model = load_zero123_diffusers(root)
    assert model.config.unet.attention_resolutions == ((1,) if variant == "community_bin" else (2, 1))
    g = torch.Generator().manual_seed(5)
    x, t, ctx = torch.randn(1, 8, 8, 8, generator=g), torch.tensor([250]), torch.randn(1, 1, CTX, generator=g)
    _close(model.unet(x, t, ctx), ref["unet"](x, t, encoder_hidden_states=ctx).sample)
    px = torch.randn(1, 3, 32, 32, generator=g)
    _close(model.clip(px), ref["clip"](pixel_values=px).image_embeds)
    inp = torch.randn(1, PROJ + 4, generator=g)
    _close(model.cc_projection(inp), ref["proj"](inp))


@torch.no_grad()
def test_legacy_names(folder, tmp_path):
    """diffusers < 0.14 VAE attention names (query/key/value/proj_attn) and a saved CLIP position_ids buffer."""
    root, ref = folder
    root = _copy(root, tmp_path)
    legacy = {"to_q.": "query.", "to_k.": "key.", "to_v.": "value.", "to_out.0.": "proj_attn."}
    path = root / "vae" / "diffusion_pytorch_model.safetensors"
    sd = {}
    for k, v in load_file(str(path)).items():
        for new, old in legacy.items():
            k = k.replace(".attentions.0." + new, ".attentions.0." + old)
        sd[k] = v
    assert "encoder.mid_block.attentions.0.query.weight" in sd
    save_file(sd, str(path))
    clip_path = root / "image_encoder" / "model.safetensors"
    clip_sd = load_file(str(clip_path))
    clip_sd["vision_model.embeddings.position_ids"] = torch.arange(17)[None]
    save_file(clip_sd, str(clip_path))
    model = load_zero123(root)
    img = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(6)) * 2 - 1
    _close(model.vae.encode_mode(img), ref["vae"].encode(img).latent_dist.mean)


def test_device_and_dtype(folder):
    model = load_zero123_diffusers(folder[0], dtype=torch.float64)
    assert all(p.dtype == torch.float64 for p in model.parameters())


def test_folder_to_original_names(folder, loaded):
    from vfrt.models.diffusers_format import diffusers_folder_to_original
    sd = diffusers_folder_to_original(folder[0])
    want = {PREFIXES[m] + k for m in PREFIXES for k in getattr(loaded, m).state_dict()}
    assert set(sd) == want
    for m, prefix in PREFIXES.items():
        for k, v in getattr(loaded, m).state_dict().items():
            assert torch.equal(sd[prefix + k].float(), v), prefix + k


# ----------------------------------------------------------------------------- errors


def test_linear_projection_rejected(folder, tmp_path):
    root = _copy(folder[0], tmp_path)
    _edit_json(root / "unet" / "config.json", use_linear_projection=True)
    with pytest.raises(CheckpointError, match="use_linear_projection"):
        load_zero123(root)


def test_missing_tensor_named(folder, tmp_path):
    root = _copy(folder[0], tmp_path)
    path = root / "unet" / "diffusion_pytorch_model.safetensors"
    sd = load_file(str(path))
    del sd["down_blocks.0.resnets.0.conv1.weight"]
    sd["down_blocks.0.extra.weight"] = torch.zeros(3)
    sd["conv_out.bias"] = torch.zeros(5)
    save_file(sd, str(path))
    with pytest.raises(CheckpointError) as info:
        load_zero123(root)
    msg = str(info.value)
    assert "missing" in msg and "unet/down_blocks.0.resnets.0.conv1.weight" in msg
    assert "unet.input_blocks.1.0.in_layers.2.weight" in msg  # the vfrt tensor it feeds
    assert "unexpected" in msg and "unet/down_blocks.0.extra.weight" in msg
    assert "wrong shape" in msg and "unet/conv_out.bias" in msg


def test_wrong_hidden_act_rejected(folder, tmp_path):
    root = _copy(folder[0], tmp_path)
    _edit_json(root / "image_encoder" / "config.json", hidden_act="gelu")
    with pytest.raises(CheckpointError, match="quick_gelu"):
        load_zero123(root)


def test_other_config_errors(folder, tmp_path):
    root = _copy(folder[0], tmp_path)
    with pytest.raises(CheckpointError, match="own config"):
        load_zero123(root, config=config_from_diffusers_folder(root))
    _edit_json(root / "scheduler" / "scheduler_config.json", beta_schedule="linear")
    with pytest.raises(CheckpointError, match="scaled_linear"):
        load_zero123(root)
    _edit_json(root / "scheduler" / "scheduler_config.json", beta_schedule="scaled_linear")
    _edit_json(root / "unet" / "config.json", up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D"])
    with pytest.raises(CheckpointError, match="mirror"):
        load_zero123(root)
    shutil.rmtree(root / "clip_camera_projection")
    with pytest.raises(CheckpointError, match="projection"):
        load_zero123(root)


def test_plain_directory_rejected(tmp_path):
    with pytest.raises(CheckpointError, match="not a diffusers folder"):
        load_zero123(tmp_path)
