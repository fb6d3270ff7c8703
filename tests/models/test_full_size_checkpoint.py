"""A full-size original-format Lightning checkpoint (UNet + EMA, VAE, CLIP ViT-L/14, cc_projection,
schedule buffers) loads with the EMA weights applied. ~8 GB on disk and ~14 GB of RAM: slow."""
import gc

import pytest
import torch

pytestmark = pytest.mark.slow


def test_full_size_ckpt_with_ema_loads(tmp_path):
    from vfrt.models import Zero123, load_zero123
    from vfrt.models.checkpoint import to_original_state_dict
    from vfrt.models.testing import schedule_buffers

    torch.manual_seed(0)
    model = Zero123.from_config(None)
    names = ["input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight", "out.2.weight", "time_embed.0.bias"]
    ema = {n: p.detach() + 0.5 for n, p in model.unet.named_parameters()}   # EMA differs from raw weights
    expected = {n: ema[n].clone() for n in names}
    raw = {n: dict(model.unet.named_parameters())[n].detach().clone() for n in names}
    vae_w = model.vae.decoder.conv_out.weight.detach().clone()
    sd = to_original_state_dict(model, ema)
    sd.update({f"model_ema.{k}": v for k, v in {"decay": torch.tensor(0.9999),
                                               "num_updates": torch.tensor(105000)}.items()})
    sd.update(schedule_buffers(model.config.schedule))
    path = tmp_path / "zero123-full.ckpt"
    torch.save({"state_dict": sd, "global_step": 105000}, path)
    del model, ema, sd
    gc.collect()

    loaded = load_zero123(path)
    params = dict(loaded.unet.named_parameters())
    for n in names:
        assert torch.equal(params[n], expected[n]) and not torch.equal(params[n], raw[n])
    assert torch.equal(loaded.vae.decoder.conv_out.weight, vae_w)
    assert sum(p.numel() for p in loaded.unet.parameters()) == 859_532_484
    assert loaded.clip.output_dim == 768 and loaded.cc_projection.in_features == 772
