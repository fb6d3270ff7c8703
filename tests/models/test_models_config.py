"""Parsing original ldm YAML configs into Zero123Config."""
from __future__ import annotations

import pytest

from vfrt.models import CLIPConfig, ScheduleConfig, UNetConfig, VAEConfig, Zero123Config, tiny_config, write_tiny_checkpoint

# The model part of zero123's configs/sd-objaverse-finetune-c_concat-256.yaml (data / lightning omitted).
ZERO123_YAML = """
model:
  base_learning_rate: 1.0e-04
  target: ldm.models.diffusion.ddpm.LatentDiffusion
  params:
    linear_start: 0.00085
    linear_end: 0.0120
    num_timesteps_cond: 1
    log_every_t: 200
    timesteps: 1000
    first_stage_key: "image_target"
    cond_stage_key: "image_cond"
    image_size: 32
    channels: 4
    cond_stage_trainable: false   # Note: different from the one we trained before
    conditioning_key: hybrid
    monitor: val/loss_simple_ema
    scale_factor: 0.18215

    scheduler_config: # 10000 warmup steps
      target: ldm.lr_scheduler.LambdaLinearScheduler
      params:
        warm_up_steps: [ 100 ]
        cycle_lengths: [ 10000000000000 ] # incredibly large number to prevent corner cases
        f_start: [ 1.e-6 ]
        f_max: [ 1. ]
        f_min: [ 1. ]

    unet_config:
      target: ldm.modules.diffusionmodules.openaimodel.UNetModel
      params:
        image_size: 32 # unused
        in_channels: 8
        out_channels: 4
        model_channels: 320
        attention_resolutions: [ 4, 2, 1 ]
        num_res_blocks: 2
        channel_mult: [ 1, 2, 4, 4 ]
        num_heads: 8
        use_spatial_transformer: True
        transformer_depth: 1
        context_dim: 768
        use_checkpoint: True
        legacy: False

    first_stage_config:
      target: ldm.models.autoencoder.AutoencoderKL
      params:
        embed_dim: 4
        monitor: val/rec_loss
        ddconfig:
          double_z: true
          z_channels: 4
          resolution: 256
          in_channels: 3
          out_ch: 3
          ch: 128
          ch_mult:
          - 1
          - 2
          - 4
          - 4
          num_res_blocks: 2
          attn_resolutions: []
          dropout: 0.0
        lossconfig:
          target: torch.nn.Identity

    cond_stage_config:
      target: ldm.modules.encoders.modules.FrozenCLIPImageEmbedder
"""


def test_real_zero123_yaml_is_the_default_architecture():
    cfg = Zero123Config.from_yaml_text(ZERO123_YAML)
    assert cfg.clip is None  # inferred from the weights
    default = Zero123Config.default()
    assert cfg.schedule == ScheduleConfig() == default.schedule
    assert cfg.vae == default.vae == VAEConfig()
    # legacy: False in the YAML; with num_heads=8 the head layout is the same as legacy's
    assert cfg.unet.legacy is False
    for ch in (320, 640, 1280):
        assert cfg.unet.attention_layout(ch) == default.unet.attention_layout(ch)
    assert cfg.unet.attention_resolutions == (4, 2, 1) and cfg.unet.channel_mult == (1, 2, 4, 4)
    assert cfg.unet.num_res_blocks == 2 and cfg.unet.context_dim == 768 and cfg.unet.in_channels == 8
    assert cfg.use_ema is True


def test_viewfusion_swap_attention_targets_are_accepted():
    text = ZERO123_YAML.replace(
        "ldm.models.diffusion.ddpm.LatentDiffusion", "ldm.models.diffusion.ddpm_swap_att.LatentDiffusion"
    ).replace(
        "ldm.modules.diffusionmodules.openaimodel.UNetModel",
        "ldm.modules.diffusionmodules.openaimodel_swap_attention.UNetModel",
    )
    assert Zero123Config.from_yaml_text(text) == Zero123Config.from_yaml_text(ZERO123_YAML)


def test_yaml_overrides_are_read():
    text = (
        ZERO123_YAML.replace("linear_end: 0.0120", "linear_end: 0.02")
        .replace("timesteps: 1000", "timesteps: 500")
        .replace("scale_factor: 0.18215", "scale_factor: 0.5\n    use_ema: False")
        .replace("num_res_blocks: 2\n        channel_mult", "num_res_blocks: [ 1, 2, 2, 1 ]\n        channel_mult")
        .replace("transformer_depth: 1", "transformer_depth: 2")
        .replace("num_heads: 8", "num_heads: -1\n        num_head_channels: 64")
    )
    cfg = Zero123Config.from_yaml_text(text)
    assert cfg.schedule == ScheduleConfig(timesteps=500, linear_start=0.00085, linear_end=0.02, scale_factor=0.5)
    assert cfg.use_ema is False
    assert cfg.unet.num_res_blocks == (1, 2, 2, 1) and cfg.unet.res_blocks_per_level == (1, 2, 2, 1)
    assert cfg.unet.transformer_depth == 2
    assert cfg.unet.attention_layout(320).heads == 5


@pytest.mark.parametrize(
    "old, new, msg",
    [
        ("ldm.models.diffusion.ddpm.LatentDiffusion", "ldm.models.diffusion.ddpm.DDPM", "LatentDiffusion"),
        ("openaimodel.UNetModel", "openaimodel.EncoderUNetModel\n      x: 1", "UNetModel"),
        ("ldm.models.autoencoder.AutoencoderKL", "ldm.models.autoencoder.VQModel", "AutoencoderKL"),
        ("conditioning_key: hybrid", "conditioning_key: crossattn", "hybrid"),
        ("legacy: False", "legacy: False\n        use_linear_in_transformer: True", "use_linear_in_transformer"),
        ("legacy: False", "legacy: False\n        use_spatial_transformer: False", "use_spatial_transformer"),
        ("legacy: False", "legacy: False\n        num_classes: 10", "num_classes"),
        ("legacy: False", "legacy: False\n        mystery_option: 3", "mystery_option"),
        ("dropout: 0.0", "dropout: 0.0\n          attn_type: linear", "vanilla"),
        ("embed_dim: 4\n", "\n", "embed_dim"),
    ],
)
def test_bad_yaml_raises(old, new, msg):
    assert old in ZERO123_YAML
    with pytest.raises(ValueError, match=msg):
        Zero123Config.from_yaml_text(ZERO123_YAML.replace(old, new, 1))


def test_not_an_ldm_config():
    with pytest.raises(ValueError, match="'model'"):
        Zero123Config.from_yaml_text("data:\n  x: 1\n")


def test_tiny_yaml_round_trip(tmp_path):
    tc = write_tiny_checkpoint(tmp_path, image_size=64)
    parsed = Zero123Config.from_yaml(tc.yaml)
    assert parsed.with_clip(tc.config.clip) == tc.config == tiny_config(64)
    assert parsed.unet.attention_resolutions == (2, 1)


def test_yaml_file_errors_name_the_file(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text(ZERO123_YAML.replace("conditioning_key: hybrid", "conditioning_key: concat"))
    with pytest.raises(ValueError, match="bad.yaml"):
        Zero123Config.from_yaml(p)


def test_default_config_values():
    cfg = Zero123Config.default()
    assert cfg.unet == UNetConfig() and cfg.clip == CLIPConfig()
    assert (cfg.schedule.timesteps, cfg.schedule.linear_start, cfg.schedule.linear_end) == (1000, 0.00085, 0.012)
    assert cfg.schedule.scale_factor == 0.18215
    assert cfg.clip.heads == 16 and cfg.clip.grid_size == 16
    b = cfg.schedule.betas()
    assert b.dtype.is_floating_point and b.shape == (1000,)
    assert abs(b[0].item() - 0.00085) < 1e-12 and abs(b[-1].item() - 0.012) < 1e-12


@pytest.mark.parametrize(
    "factory, msg",
    [
        (lambda: ScheduleConfig(beta_schedule="cosine"), "linear"),
        (lambda: ScheduleConfig(linear_start=0.1, linear_end=0.01), "linear_start"),
        (lambda: ScheduleConfig(timesteps=0), "timesteps"),
        (lambda: ScheduleConfig(scale_factor=0.0), "scale_factor"),
        (lambda: VAEConfig(ch=48), "multiple of 32"),
        (lambda: CLIPConfig(image_resolution=225), "multiple of patch_size"),
        (lambda: CLIPConfig(width=100, heads=16), "divisible"),
        (lambda: UNetConfig(model_channels=48), "multiple of 32"),
        (lambda: UNetConfig(transformer_depth=0), "transformer_depth"),
        (lambda: UNetConfig(dims=3), "dims"),
        (lambda: UNetConfig(n_embed=16), "n_embed"),
        (lambda: UNetConfig(num_heads=640), "heads=640, dim_head=0"),
        (lambda: UNetConfig(channel_mult="1244"), "channel_mult"),
        (lambda: Zero123Config(unet=UNetConfig(out_channels=3)), "out_channels"),
        (lambda: tiny_config(60), "multiple of 16"),
    ],
)
def test_config_validation_errors(factory, msg):
    with pytest.raises(ValueError, match=msg):
        factory()


@pytest.mark.parametrize(
    "old, new, msg",
    [
        ("scale_factor: 0.18215", "scale_factor: 0.18215\n    scale_by_std: true", "scale_by_std"),
        ("scale_factor: 0.18215", "scale_factor: 0.18215\n    parameterization: x0", "eps"),
        ("scale_factor: 0.18215", "scale_factor: 0.18215\n    given_betas: [0.1, 0.2]", "given_betas"),
        ("scale_factor: 0.18215", "scale_factor: 0.18215\n    beta_schedule: cosine", "linear"),
        ("first_stage_config:", "first_stage_configuration:", "first_stage_config"),
        ("dropout: 0.0", "dropout: 0.0\n          tanh_out: true", "tanh_out"),
        ("double_z: true", "double_z: false", "double_z"),
    ],
)
def test_more_bad_yaml(old, new, msg):
    assert old in ZERO123_YAML
    with pytest.raises(ValueError, match=msg):
        Zero123Config.from_yaml_text(ZERO123_YAML.replace(old, new, 1))
