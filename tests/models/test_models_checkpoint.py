"""Loading original-format checkpoints: prefixes, EMA, schedule checks, trust, error reports."""
from __future__ import annotations

import argparse
from dataclasses import replace

import pytest
import torch
from safetensors.torch import save_file

from vfrt.models import (
    CheckpointError,
    Zero123,
    load_state_dict_file,
    load_zero123,
    tiny_config,
    write_tiny_checkpoint,
)
from vfrt.models.checkpoint import ema_key, split_original_state_dict, to_original_state_dict
from vfrt.models.testing import init_nontrivial_


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_tiny_checkpoint(tmp_path_factory.mktemp("tiny"), seed=0)


@pytest.fixture(scope="module")
def tiny_sd(tiny):
    return torch.load(tiny.ckpt, map_location="cpu", weights_only=True)["state_dict"]


def _save(tmp_path, sd, name="x.safetensors"):
    path = tmp_path / name
    if name.endswith(".safetensors"):
        save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    else:
        torch.save({"state_dict": sd, "global_step": 1}, path)
    return path


def _assert_model_equal(a: Zero123, b: Zero123):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


# ----------------------------------------------------------------------------- formats


def test_tiny_files_are_weights_only_loadable(tiny):
    obj = torch.load(tiny.ckpt, map_location="cpu", weights_only=True)
    assert {"state_dict", "global_step", "epoch", "optimizer_states"} <= obj.keys()
    sd = obj["state_dict"]
    groups = split_original_state_dict(sd)
    assert not groups["unexpected"]
    assert {"model_ema.decay", "model_ema.num_updates", "cond_stage_model.model.logit_scale"} <= groups["ignored"].keys()
    assert {"betas", "alphas_cumprod", "posterior_variance"} <= groups["schedule"].keys()
    assert "model.diffusion_model.out.2.weight" in sd and "cc_projection.weight" in sd
    assert sd["model.diffusion_model.out.2.weight"].abs().min() > 0  # not zero-initialised
    safe = load_state_dict_file(tiny.safetensors)
    assert safe.keys() == sd.keys() and all(torch.equal(safe[k], sd[k]) for k in sd)


def test_ckpt_and_safetensors_give_identical_models(tiny):
    _assert_model_equal(load_zero123(tiny.ckpt, tiny.yaml), load_zero123(tiny.safetensors, tiny.yaml))


def test_config_as_object_path_or_parsed(tiny):
    a = load_zero123(tiny.safetensors, tiny.config)
    b = load_zero123(tiny.safetensors, str(tiny.yaml))
    _assert_model_equal(a, b)
    assert a.config == b.config == tiny.config
    assert not a.training and not any(p.requires_grad for p in a.parameters())


def test_bare_state_dict_pickle(tiny_sd, tmp_path):
    path = tmp_path / "bare.pt"
    torch.save(dict(tiny_sd), path)
    _assert_model_equal(load_zero123(path, tiny_config()), load_zero123(_save(tmp_path, tiny_sd), tiny_config()))


def test_dtype_argument(tiny):
    m = load_zero123(tiny.safetensors, tiny.yaml, dtype=torch.float64)
    assert all(p.dtype == torch.float64 for p in m.parameters())
    out = m.denoise(torch.zeros(1, 8, 8, 8, dtype=torch.float64), torch.tensor([10]), torch.zeros(1, 1, 32, dtype=torch.float64))
    assert out.dtype == torch.float64


# ----------------------------------------------------------------------------- EMA


def test_ema_weights_are_applied(tiny, tiny_sd):
    m = load_zero123(tiny.ckpt, tiny.yaml)
    raw = load_zero123(tiny.ckpt, tiny.yaml, use_ema=False)
    n = 0
    for name, p in m.unet.named_parameters():
        ema = tiny_sd[ema_key(name)]
        assert torch.equal(p, ema), name
        assert not torch.equal(ema, tiny_sd["model.diffusion_model." + name]), name
        assert torch.equal(dict(raw.unet.named_parameters())[name], tiny_sd["model.diffusion_model." + name])
        n += 1
    assert n > 50
    for k, v in m.vae.state_dict().items():  # EMA only concerns the UNet
        assert torch.equal(v, tiny_sd["first_stage_model." + k])
    for k, v in m.clip.state_dict().items():
        assert torch.equal(v, tiny_sd["cond_stage_model.model.visual." + k])
    assert torch.equal(m.cc_projection.weight, tiny_sd["cc_projection.weight"])
    x = torch.randn(1, 8, 8, 8, generator=torch.Generator().manual_seed(0))
    ctx = torch.randn(1, 1, 32, generator=torch.Generator().manual_seed(1))
    assert not torch.allclose(m.denoise(x, torch.tensor([500]), ctx), raw.denoise(x, torch.tensor([500]), ctx))


def test_yaml_use_ema_false_ignores_ema(tiny, tmp_path):
    text = tiny.yaml.read_text().replace("scale_factor: 0.18215", "scale_factor: 0.18215\n    use_ema: False")
    (tmp_path / "noema.yaml").write_text(text)
    m = load_zero123(tiny.safetensors, tmp_path / "noema.yaml")
    _assert_model_equal(m, load_zero123(tiny.safetensors, tiny.yaml, use_ema=False))


def test_checkpoint_without_ema_uses_raw_weights(tmp_path):
    tc = write_tiny_checkpoint(tmp_path, seed=1, ema=False)
    sd = load_state_dict_file(tc.ckpt)
    assert not any(k.startswith("model_ema.") for k in sd)
    m = load_zero123(tc.ckpt, tc.yaml)
    for name, p in m.unet.named_parameters():
        assert torch.equal(p, sd["model.diffusion_model." + name])


def test_partial_ema_is_an_error(tiny_sd, tmp_path):
    sd = dict(tiny_sd)
    del sd[ema_key("out.2.bias")]
    path = _save(tmp_path, sd)
    with pytest.raises(CheckpointError, match=r"missing.*\n.*diffusion_modelout2bias.*out\.2\.bias"):
        load_zero123(path, tiny_config())
    load_zero123(path, tiny_config(), use_ema=False)  # without EMA the file is fine


def test_ema_mapping_with_ambiguous_dot_free_names(tmp_path):
    # 4 levels x 2 res blocks -> input_blocks.0 .. input_blocks.11, attention at full resolution, so
    # 'input_blocks.1.1.*' (a SpatialTransformer) and 'input_blocks.11.*' (a ResBlock) both exist and
    # 'diffusion_modelinput_blocks11...' cannot be split back into names by parsing.
    base = tiny_config()
    unet = replace(base.unet, channel_mult=(1, 1, 1, 1), num_res_blocks=2, attention_resolutions=(1,))
    cfg = replace(base, unet=unet)
    model = Zero123(cfg)
    init_nontrivial_(model, torch.Generator().manual_seed(5))
    names = [n for n, _ in model.unet.named_parameters()]
    assert any(n.startswith("input_blocks.1.1.") for n in names)
    assert any(n.startswith("input_blocks.11.") for n in names)
    ambiguous = [n for n in names if ema_key(n).startswith("model_ema.diffusion_modelinput_blocks11")]
    assert {n.split(".")[1] + "." + n.split(".")[2] for n in ambiguous} >= {"1.1", "11.0"}

    # a distinct constant per parameter, so a mix-up cannot go unnoticed
    ema = {n: torch.full_like(p, float(i + 1)) for i, (n, p) in enumerate(model.unet.named_parameters())}
    path = _save(tmp_path, to_original_state_dict(model, ema))
    loaded = load_zero123(path, cfg)
    for i, (name, p) in enumerate(loaded.unet.named_parameters()):
        assert torch.all(p == float(i + 1)), name


# ----------------------------------------------------------------------------- errors


def test_missing_unexpected_and_misshaped_reported_together(tiny_sd, tmp_path):
    sd = dict(tiny_sd)
    del sd["model.diffusion_model.input_blocks.1.1.proj_in.weight"]
    del sd["first_stage_model.decoder.conv_out.bias"]
    sd["model.diffusion_model.extra.weight"] = torch.zeros(3)
    sd["something_else"] = torch.zeros(1)
    sd["cond_stage_model.model.visual_extra"] = torch.zeros(1)
    sd["cc_projection.weight"] = torch.zeros(32, 35)
    with pytest.raises(CheckpointError) as info:
        load_zero123(_save(tmp_path, sd), tiny_config())
    msg = str(info.value)
    assert "2 missing tensors" in msg
    assert "model.diffusion_model.input_blocks.1.1.proj_in.weight" in msg
    assert "first_stage_model.decoder.conv_out.bias" in msg
    assert "3 unexpected tensors" in msg
    assert "model.diffusion_model.extra.weight" in msg and "something_else" in msg
    assert "cond_stage_model.model.visual_extra" in msg
    assert "1 tensors with the wrong shape" in msg
    assert "cc_projection.weight: expected (32, 36), got (32, 35)" in msg


@pytest.mark.parametrize(
    "edit, pattern",
    [
        (lambda sd: sd.pop("model.diffusion_model.out.0.weight"), r"1 missing tensors:\n\s+model\.diffusion_model\.out\.0\.weight"),
        (lambda sd: sd.__setitem__("first_stage_model.bogus", torch.ones(2)), r"1 unexpected tensors:\n\s+first_stage_model\.bogus"),
        (
            lambda sd: sd.__setitem__("first_stage_model.quant_conv.weight", torch.ones(8, 8, 3, 3)),
            r"first_stage_model\.quant_conv\.weight: expected \(8, 8, 1, 1\), got \(8, 8, 3, 3\)",
        ),
        (
            lambda sd: sd.__setitem__(ema_key("time_embed.0.weight"), torch.ones(3)),
            r"EMA of unet time_embed\.0\.weight\): expected \(128, 32\), got \(3,\)",
        ),
        (lambda sd: sd.__setitem__("model_ema.diffusion_modelnope", torch.ones(1)), r"unexpected.*\n\s+model_ema\.diffusion_modelnope"),
    ],
)
def test_single_problem_errors(tiny_sd, tmp_path, edit, pattern):
    sd = dict(tiny_sd)
    edit(sd)
    with pytest.raises(CheckpointError, match=pattern):
        load_zero123(_save(tmp_path, sd), tiny_config())


def test_many_problems_are_truncated(tiny_sd, tmp_path):
    sd = {k: v for k, v in tiny_sd.items() if not k.startswith("first_stage_model.encoder.")}
    with pytest.raises(CheckpointError, match=r"missing tensors:(\n.*){8}\n\s+\.\.\. and \d+ more"):
        load_zero123(_save(tmp_path, sd), tiny_config())


def test_bad_schedule_buffers(tiny_sd, tmp_path):
    sd = dict(tiny_sd)
    sd["betas"] = sd["betas"] * 1.01
    with pytest.raises(CheckpointError, match="betas differs from the configured linear schedule"):
        load_zero123(_save(tmp_path, sd), tiny_config())
    sd = dict(tiny_sd)
    sd["alphas_cumprod"] = sd["alphas_cumprod"][:500]
    with pytest.raises(CheckpointError, match="alphas_cumprod: \\(500,\\) entries"):
        load_zero123(_save(tmp_path, sd), tiny_config())
    # the schedule in the file is fine; the config disagrees
    cfg = replace(tiny_config(), schedule=replace(tiny_config().schedule, linear_end=0.02))
    with pytest.raises(CheckpointError, match="schedule buffers disagree"):
        load_zero123(_save(tmp_path, dict(tiny_sd)), cfg)
    # other schedule buffers are ignored, whatever their values
    sd = dict(tiny_sd)
    sd["posterior_variance"] = torch.zeros(3)
    sd["logvar"] = torch.zeros(1000)
    load_zero123(_save(tmp_path, sd), tiny_config())


def test_untrusted_pickle_needs_opt_in(tiny_sd, tmp_path):
    path = tmp_path / "lightning.ckpt"
    torch.save({"state_dict": dict(tiny_sd), "hyper_parameters": argparse.Namespace(lr=1e-4)}, path)
    with pytest.raises(CheckpointError, match="trust_checkpoint=True") as info:
        load_zero123(path, tiny_config())
    assert "--trust-checkpoint" in str(info.value)
    m = load_zero123(path, tiny_config(), trust_checkpoint=True)
    _assert_model_equal(m, load_zero123(_save(tmp_path, tiny_sd), tiny_config()))


def test_default_config_mismatch_suggests_yaml(tiny):
    with pytest.raises(CheckpointError, match="pass the model's original YAML") as info:
        load_zero123(tiny.ckpt)
    assert "wrong shape" in str(info.value)


def test_explicit_clip_config_must_match(tiny):
    bad = tiny_config().with_clip(replace(tiny_config().clip, heads=4))
    with pytest.raises(CheckpointError, match="CLIP tower"):
        load_zero123(tiny.safetensors, bad)


def test_unreadable_inputs(tmp_path, tiny):
    with pytest.raises(FileNotFoundError):
        load_zero123(tmp_path / "nope.ckpt", tiny.yaml)
    with pytest.raises(CheckpointError, match="diffusers"):
        load_zero123(tmp_path, tiny.yaml)
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"not a pickle at all")
    with pytest.raises(CheckpointError, match="junk.ckpt"):
        load_zero123(junk, tiny.yaml)
    junk_st = tmp_path / "junk.safetensors"
    junk_st.write_bytes(b"\x00" * 16)
    with pytest.raises(CheckpointError, match="safetensors"):
        load_zero123(junk_st, tiny.yaml)
    no_clip = tmp_path / "noclip.safetensors"
    save_file({"model.diffusion_model.x": torch.zeros(1)}, str(no_clip))
    with pytest.raises(CheckpointError, match="no CLIP image tower"):
        load_zero123(no_clip, tiny.yaml)
    not_tensors = tmp_path / "nt.ckpt"
    torch.save({"state_dict": {"a": 1, "b": torch.zeros(1)}}, not_tensors)
    with pytest.raises(CheckpointError, match="not tensors"):
        load_zero123(not_tensors, tiny.yaml)
    with pytest.raises(TypeError, match="config"):
        load_zero123(tiny.ckpt, 42)


def test_head_count_comes_from_the_config(tiny):
    cfg = replace(tiny_config(), unet=replace(tiny_config().unet, num_heads=4))  # same shapes, other head split
    m = load_zero123(tiny.safetensors, cfg)  # shapes cannot reveal the head count: it loads...
    attn = m.unet.input_blocks[1][1].transformer_blocks[0].attn1
    assert attn.heads == 4 and attn.dim_head == 8  # ...with the configured layout


def test_ignorable_leftovers_do_not_matter(tiny_sd, tmp_path):
    sd = dict(tiny_sd)
    sd["first_stage_model.loss.logvar"] = torch.zeros(())
    sd["cond_stage_model.model.transformer.resblocks.0.ln_1.weight"] = torch.ones(16)
    sd["cond_stage_model.model.context_length"] = torch.tensor(77)
    groups = split_original_state_dict(sd)
    assert not groups["unexpected"] and "first_stage_model.loss.logvar" in groups["ignored"]
    _assert_model_equal(load_zero123(_save(tmp_path, sd), tiny_config()), load_zero123(_save(tmp_path, tiny_sd, "b.safetensors"), tiny_config()))


def test_a_file_that_is_not_a_checkpoint_is_named_so_not_called_unsafe(tmp_path):
    """An 8-byte text file is not 'a pickle with Python objects': never steer the user to --trust-checkpoint."""
    from vfrt.models import CheckpointError, load_zero123
    path = tmp_path / "notes.ckpt"
    path.write_text("hello!!!")
    with pytest.raises(CheckpointError, match="is not a PyTorch checkpoint") as info:
        load_zero123(path)
    assert "trust" not in str(info.value)
    with pytest.raises(CheckpointError, match="is a folder"):
        from vfrt.models import load_state_dict_file
        load_state_dict_file(tmp_path)
