"""The Zero123 UNet rewritten with the exact identities of the interpolated sampler (SPEC §6).

Three modules share one (EMA-applied) :class:`vfrt.models.unet.UNet` copy and change none of its
weights' values:

* :class:`TimeEmbedding` - per schedule: every ResBlock's ``emb_layers`` output depends on the
  timestep only, so one ``(S, E)`` table replaces the time MLP inside the step.
* :class:`Conditioning` - per target view: with one context token cross-attention's softmax is
  exactly 1, so ``attn2`` is ``to_out(to_v(context))``, a constant ``(R, C)`` per transformer block;
  the first convolution's share of the conditioning latent ``conv(c, W_c) + b`` does not depend on
  the noisy latent either.
* :class:`UNetStep` - per step: the first convolution is ``conv(x, W_x)`` plus the cached share
  (the noisy latent comes per row, so rows of several objects can share one call; for one object
  all rows carry the same x, and that conv is 0.01 % of the step's work); self-attention uses fused
  q/k/v and ``scaled_dot_product_attention``.

Row layout of a batch (``R`` rows): row 0 = the unconditional branch (zero latent, zero context)
when guidance is used, then one row per reference. These modules are what every backend runs: the
torch executors call them, the exporters trace them (docs/ARCHITECTURE.md).

Kernel choices of :class:`UNetStep` (measured reasons in docs/PERF.md): ``attention`` "auto" lets
PyTorch choose the SDPA backend (cuDNN on Hopper, which plans each new shape once), "flash" never
uses cuDNN; ``fused_geglu`` runs each GEGLU projection as one Triton GEMM
(:mod:`vfrt.engines.geglu_triton`); ``triton_conv`` sends the 8x8 / 4x4 3x3 convolutions through
:func:`vfrt.engines.conv_triton.conv2d_small`. Exporters use the plain choices (no custom ops).
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from vfrt.models.unet import (BasicTransformerBlock, Downsample, ResBlock, SpatialTransformer, Upsample, UNet,
                              timestep_embedding)

ATTENTION_CHOICES = ("auto", "flash")
# "flash": every SDPA backend but cuDNN's, whose per-shape plan costs ~0.2 s per new K (docs/PERF.md run 6)
_NO_CUDNN_SDPA = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


def prepare_unet(unet: UNet, device, dtype: torch.dtype, channels_last: bool, copy_weights: bool = True) -> UNet:
    """The UNet the rewrite runs on: on ``device`` in ``dtype`` (NHWC weights when ``channels_last``).

    ``copy_weights=False`` converts ``unet`` in place (saves a full host copy when the caller owns it).
    """
    u = (copy.deepcopy(unet) if copy_weights else unet).to(device=device, dtype=dtype).eval()
    u.requires_grad_(False)
    if channels_last:
        u = u.to(memory_format=torch.channels_last)
    return u


class TimeEmbedding(nn.Module):
    """``timesteps (S,) int64 -> (S, E)``: every ResBlock's ``emb_layers`` output, concatenated in
    ResBlock order (E = sum of their widths), in the UNet's dtype."""

    def __init__(self, unet: UNet):
        super().__init__()
        self.unet = unet
        self.resblocks = [m for m in unet.modules() if isinstance(m, ResBlock)]
        self.widths = [m.emb_layers[1].out_features for m in self.resblocks]

    @property
    def width(self) -> int:
        return sum(self.widths)

    def forward(self, timesteps: torch.Tensor) -> torch.Tensor:
        dtype = self.unet.time_embed[0].weight.dtype
        emb = self.unet.time_embed(timestep_embedding(timesteps, self.unet.model_channels).to(dtype))
        return torch.cat([rb.emb_layers(emb) for rb in self.resblocks], dim=1)


class Conditioning(nn.Module):
    """Per-row conditioning of one target view: the attention constants and the first-conv share.

    Inputs (R rows): ``clip (R, D) float32`` CLIP embeddings, ``pose (R, 4) float32`` the pose
    deltas ``[d_polar, sin d_az, cos d_az, d_radius]``, ``latent (R, 4, h, w) float32`` VAE posterior
    means, ``keep (R,) float32`` 1 for a conditional row, 0 for the unconditional row (zero
    context and zero latent, SPEC §2 - exact, as 0 * finite = 0).
    Outputs: ``consts (R, A)`` the exact cross-attention outputs of every transformer block (A =
    sum of their widths, see :attr:`widths`), and ``h0 (R, C0, h, w)`` = ``keep * conv(latent, W_c) + b0``,
    both in the UNet's dtype. ``cc_projection`` runs in float32, as in the original.
    """

    def __init__(self, unet: UNet, cc_projection: nn.Linear):
        super().__init__()
        self.unet = unet
        self.cc_projection = cc_projection
        self.blocks = [m for m in unet.modules() if isinstance(m, BasicTransformerBlock)]
        conv0 = unet.input_blocks[0][0]
        self.latent_channels = unet.out_channels      # x has the channels of eps; the rest is c_concat
        self.first_conv_cond = nn.Parameter(conv0.weight[:, self.latent_channels:].detach().clone().contiguous(
            memory_format=_memory_format(conv0.weight)), requires_grad=False)
        self.first_conv_bias = conv0.bias
        self.widths = []
        for b in self.blocks:   # attn2, then attn1 when it is a cross-attention too
            self.widths.append(b.attn2.to_out[0].out_features)
            if b.disable_self_attn:
                self.widths.append(b.attn1.to_out[0].out_features)

    @property
    def width(self) -> int:
        return sum(self.widths)

    def forward(self, clip: torch.Tensor, pose: torch.Tensor, latent: torch.Tensor,
                keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        dtype = self.first_conv_cond.dtype
        proj_dtype = self.cc_projection.weight.dtype
        ctx = self.cc_projection(torch.cat([clip.to(proj_dtype), pose.to(proj_dtype)], dim=-1))
        ctx = (ctx * keep.to(proj_dtype)[:, None]).to(dtype)[:, None]             # (R, 1, D)
        consts = []
        for b in self.blocks:
            consts.append(b.attn2.to_out(b.attn2.to_v(ctx))[:, 0])
            if b.disable_self_attn:
                consts.append(b.attn1.to_out(b.attn1.to_v(ctx))[:, 0])
        lat = latent.to(dtype).contiguous(memory_format=_memory_format(self.first_conv_cond))
        share = F.conv2d(lat, self.first_conv_cond, None, padding=1)
        h0 = keep.to(dtype).view(-1, 1, 1, 1) * share + self.first_conv_bias.view(1, -1, 1, 1)
        return torch.cat(consts, dim=1), h0


def _memory_format(t: torch.Tensor) -> torch.memory_format:
    return torch.channels_last if t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last) \
        and not t.is_contiguous() else torch.contiguous_format


class UNetStep(nn.Module):
    """eps of every row for one denoising step.

    Inputs: ``x (R, 4, h, w) float32`` each row's noisy latent; ``h0 (R, C0, h, w)`` the first-conv
    share incl. bias (:class:`Conditioning`); ``emb (1, E)`` this step's row of the
    :class:`TimeEmbedding` table; ``consts (R, A)`` the attention constants (:class:`Conditioning`).
    Output: ``eps (R, 4, h, w)`` in the UNet's dtype. Holds no state between calls.

    Args:
        unet: the prepared UNet (:func:`prepare_unet`); self-attention q/k/v weights are fused and
            the originals (and ``attn2``'s q/k, never needed with one token) are dropped from it.
        attention, fused_geglu, triton_conv: kernel choices (module docstring); see :meth:`configure`.
    """

    def __init__(self, unet: UNet, *, attention: str = "auto", fused_geglu: bool = False, triton_conv: bool = False):
        super().__init__()
        self.unet = unet
        conv0 = unet.input_blocks[0][0]
        self.latent_channels = unet.out_channels      # x has the channels of eps; the rest is c_concat
        self.memory_format = _memory_format(conv0.weight)
        self.first_conv_x = nn.Parameter(conv0.weight[:, : self.latent_channels].detach().clone().contiguous(
            memory_format=self.memory_format), requires_grad=False)
        self.resblocks = [m for m in unet.modules() if isinstance(m, ResBlock)]
        self._res_index = {id(m): i for i, m in enumerate(self.resblocks)}
        self.emb_widths = [m.emb_layers[1].out_features for m in self.resblocks]
        self.blocks = [m for m in unet.modules() if isinstance(m, BasicTransformerBlock)]
        self._const_slices = {}
        offset = 0
        for b in self.blocks:
            width = b.attn2.to_out[0].out_features
            self._const_slices[id(b)] = [(offset, width)]
            offset += width
            if b.disable_self_attn:
                self._const_slices[id(b)].append((offset, b.attn1.to_out[0].out_features))
                offset += b.attn1.to_out[0].out_features
        self.const_width = offset
        self.qkv = nn.ParameterList()
        self._qkv_index = {}
        empty = torch.empty(0, device=conv0.weight.device, dtype=conv0.weight.dtype)
        for b in self.blocks:
            a = b.attn1
            if not b.disable_self_attn:
                if not a.to_q.weight.numel():
                    raise ValueError("this UNet was already rewritten by another UNetStep (its q/k/v are fused)")
                self._qkv_index[id(b)] = len(self.qkv)
                self.qkv.append(nn.Parameter(torch.cat([a.to_q.weight, a.to_k.weight, a.to_v.weight], 0).contiguous(),
                                             requires_grad=False))
                for lin in (a.to_q, a.to_k, a.to_v):
                    lin.weight = nn.Parameter(empty, requires_grad=False)
            for lin in (b.attn2.to_q, b.attn2.to_k):
                lin.weight = nn.Parameter(empty, requires_grad=False)
        self.configure(attention=attention, fused_geglu=fused_geglu, triton_conv=triton_conv)

    def configure(self, *, attention: str, fused_geglu: bool, triton_conv: bool) -> None:
        """Set the kernel choices (the engine's resolved config decides them; a compiled forward
        traces the choices in force at its first call)."""
        if attention not in ATTENTION_CHOICES:
            raise ValueError(f"attention must be one of {', '.join(ATTENTION_CHOICES)}, got {attention!r}")
        if triton_conv and self.memory_format is not torch.channels_last:
            raise ValueError("triton_conv needs channels_last weights")
        self.attention, self.fused_geglu, self.triton_conv = attention, bool(fused_geglu), bool(triton_conv)
        # the Triton kernel modules are imported only when chosen: importing Triton is start-up time that a
        # run on built engines (they trace the plain choices) or on the CPU never needs
        self._geglu_projection = self._conv_supports = self._conv_may_use_triton = self._conv2d_small = None
        if self.fused_geglu:
            from vfrt.engines import geglu_triton
            self._geglu_projection = geglu_triton.geglu_projection
        if self.triton_conv:
            from vfrt.engines import conv_triton
            self._conv_supports, self._conv_may_use_triton = conv_triton.supports, conv_triton.may_use_triton
            self._conv2d_small = conv_triton.conv2d_small

    @property
    def emb_width(self) -> int:
        return sum(self.emb_widths)

    def forward(self, x: torch.Tensor, h0: torch.Tensor, emb: torch.Tensor, consts: torch.Tensor) -> torch.Tensor:
        dtype = self.first_conv_x.dtype
        xs = x.to(dtype).contiguous(memory_format=self.memory_format)
        h = F.conv2d(xs, self.first_conv_x, None, padding=1) + h0
        embs = [e[..., None, None] for e in torch.split(emb, self.emb_widths, dim=1)]
        hs = [h]
        for block in self.unet.input_blocks[1:]:
            h = self._sequence(block, h, embs, consts)
            hs.append(h)
        h = self._sequence(self.unet.middle_block, h, embs, consts)
        for block in self.unet.output_blocks:
            h = self._sequence(block, torch.cat([h, hs.pop()], dim=1), embs, consts)
        out = self.unet.out
        return self._conv(out[2], out[1](out[0](h)))

    def _sequence(self, seq, h, embs, consts):
        for layer in seq:
            if isinstance(layer, ResBlock):
                h = self._resblock(layer, h, embs[self._res_index[id(layer)]])
            elif isinstance(layer, SpatialTransformer):
                h = self._transformer(layer, h, consts)
            elif isinstance(layer, Downsample):
                h = self._conv(layer.op, h) if layer.use_conv else layer(h)
            elif isinstance(layer, Upsample):
                h = F.interpolate(h, scale_factor=2, mode="nearest")
                if layer.use_conv:
                    h = self._conv(layer.conv, h)
            else:  # pragma: no cover - the UNet has no other layer kinds
                raise TypeError(f"unexpected UNet layer {type(layer).__name__}")
        return h

    def _conv(self, conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
        """``conv(x)``: cuDNN, or with ``triton_conv`` the 8x8 / 4x4 3x3 convolutions through
        :func:`vfrt.engines.conv_triton.conv2d_small` (the split-reduction kernel at small row counts, cuDNN above)."""
        stride, padding, k = conv.stride[0], conv.padding[0], conv.kernel_size[0]
        if self.triton_conv and conv.bias is not None and self._conv_supports(x.shape, conv.weight.shape, stride,
                                                                              padding):
            ho = (x.shape[-2] + 2 * padding - k) // stride + 1
            wo = (x.shape[-1] + 2 * padding - k) // stride + 1
            # static sizes pick the convs; the op picks per row count
            if self._conv_may_use_triton(x.shape[1], k, ho * wo):
                # channels-last input: under torch.compile the op gets exactly these strides, and Inductor then
                # writes the producing kernel's output in this layout (the GroupNorm output is NCHW)
                x = x.contiguous(memory_format=torch.channels_last)
                if torch.compiler.is_compiling():   # the bias add fuses into the next Inductor kernel
                    return self._conv2d_small(x, conv.weight, None, stride, padding) + conv.bias.view(1, -1, 1, 1)
                return self._conv2d_small(x, conv.weight, conv.bias, stride, padding)
        return F.conv2d(x, conv.weight, conv.bias, stride, padding)

    def _resblock(self, rb: ResBlock, x, emb_out):
        h = rb.in_layers[1](rb.in_layers[0](x))
        if rb.updown:
            h = rb.h_upd(h)
            x = rb.x_upd(x)
        h = self._conv(rb.in_layers[2], h)
        if rb.use_scale_shift_norm:
            scale, shift = torch.chunk(emb_out, 2, dim=1)
            h = rb.out_layers[0](h) * (1 + scale) + shift
            h = self._conv(rb.out_layers[3], rb.out_layers[1](h))
        else:
            h = self._conv(rb.out_layers[3], rb.out_layers[1](rb.out_layers[0](h + emb_out)))
        skip = self._conv(rb.skip_connection, x) if isinstance(rb.skip_connection, nn.Conv2d) else x
        return skip + h

    def _transformer(self, st: SpatialTransformer, x, consts):
        rows, _, height, width = x.shape
        x_in = x
        h = self._conv(st.proj_in, st.norm(x))
        inner = h.shape[1]
        tokens = h.permute(0, 2, 3, 1).reshape(rows, height * width, inner)
        for blk in st.transformer_blocks:
            slices = self._const_slices[id(blk)]
            if blk.disable_self_attn:
                start, size = slices[1]
                tokens = tokens + consts[:, None, start:start + size]
            else:
                tokens = tokens + self._self_attention(blk, blk.norm1(tokens))
            start, size = slices[0]
            tokens = tokens + consts[:, None, start:start + size]
            tokens = tokens + self._feed_forward(blk.ff, blk.norm3(tokens))
        h = tokens.reshape(rows, height, width, inner).permute(0, 3, 1, 2)
        if self.memory_format is torch.contiguous_format:
            h = h.contiguous()
        return self._conv(st.proj_out, h) + x_in

    def _feed_forward(self, ff, x):
        """``ff(x)`` (dropout is the identity at inference), with the GEGLU fused when chosen."""
        if not self.fused_geglu:
            return ff(x)
        proj = ff.net[0].proj
        return ff.net[2](self._geglu_projection(x, proj.weight, proj.bias))

    def _self_attention(self, blk: BasicTransformerBlock, x):
        a = blk.attn1
        rows, tokens, _ = x.shape
        qkv = F.linear(x, self.qkv[self._qkv_index[id(blk)]]).view(rows, tokens, 3, a.heads, a.dim_head)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)                                  # (rows, heads, tokens, dim) each
        if self.attention == "flash":
            with sdpa_kernel(_NO_CUDNN_SDPA):
                out = F.scaled_dot_product_attention(q, k, v)
        else:
            out = F.scaled_dot_product_attention(q, k, v)
        return a.to_out(out.transpose(1, 2).reshape(rows, tokens, a.heads * a.dim_head))
