"""A fast, exact re-evaluation of the Zero123 UNet for the interpolated sampler (SPEC §6).

It walks the modules of :class:`vfrt.models.unet.UNet` (no weights are changed) and exploits:

* **shared latent**: all K+1 batch rows see the same noisy latent x, so the first convolution
  splits into ``conv(x, W_x)`` (batch 1) + ``conv(c_k, W_c) + b`` (cached per reference);
* **one timestep per step**: the time embedding and every ResBlock's ``emb_layers`` output are
  the same for all rows and depend on t only -> one precomputed (S, sum C) table per schedule;
* **one context token**: cross-attention's softmax over one key is exactly 1, so ``attn2`` is
  ``to_out(to_v(context))`` -> a per-view constant (rows, 1, C) per transformer block;
* fused q/k/v projection + ``F.scaled_dot_product_attention`` for self-attention (PyTorch's
  backend choice, or never cuDNN with ``attention="flash"``), in fp16 or bf16, optionally
  channels-last;
* on CUDA, each feed-forward's GEGLU projection as one fused Triton GEMM
  (:mod:`vfrt.engines.geglu_triton`).

The forward always runs without autograd, so a compiled forward is compiled once per process.

Row layout of a batch: row 0 = the unconditional branch (zero latent, zero context) when
guidance is used, then one row per reference.
"""
from __future__ import annotations

import copy
import logging

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from vfrt.engines.conv_gemm import conv2d_as_gemm
from vfrt.engines.conv_triton import conv2d_small, conv_triton_available, may_use_triton
from vfrt.engines.conv_triton import supports as conv_triton_supports
from vfrt.engines.geglu_triton import geglu_available, geglu_projection
from vfrt.models.unet import (BasicTransformerBlock, Downsample, ResBlock, SpatialTransformer, Upsample,
                              timestep_embedding)

log = logging.getLogger(__name__)

ATTENTION_BACKENDS = ("auto", "flash")
# "flash": every SDPA backend but cuDNN's, whose plan for each new (rows, heads, tokens, dim) shape takes
# ~65 ms to build on the H100 (3 new shapes per new K: ~0.2 s per first step, docs/PERF.md run 6).
_NO_CUDNN_SDPA = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


def default_triton_conv(device, dtype, channels_last: bool, compiled: bool) -> bool:
    """The ``triton_conv`` default: fp16/bf16 channels-last on CUDA with Triton, uncompiled forward only.

    Measured on the H100 (docs/PERF.md, run 7): uncompiled, the op only ever replaces a cuDNN call by a
    faster kernel (K = 1: 4.92 -> 4.73 ms); compiled, the same op costs Inductor its handling of those
    convolutions at large K (K = 25: +0.12 ms in both A/B orders) for -0.12 to -0.15 ms at K = 1, a net
    loss over an orbit (most of its steps have K >= 8).
    """
    return (not compiled and torch.device(device).type == "cuda" and conv_triton_available(device) and channels_last
            and dtype in (torch.float16, torch.bfloat16))


class FastUNet:
    """Functional fast forward over a UNet copy in ``dtype`` on ``device``.

    Args:
        unet: the (EMA-applied) :class:`UNet`; it is copied, never modified.
        dtype: compute dtype of weights and activations (float16, bfloat16 or float32).
        channels_last: keep 4-D activations in NHWC memory format.
        copy_weights: work on a copy (default); False converts ``unet`` itself in place, which
            saves a full fp32 copy in host memory when the caller owns the model.
        gemm_conv_max_pixels: convolutions whose output has at most this many pixels per image
            (h' x w') run as one GEMM over gathered taps (:mod:`vfrt.engines.conv_gemm`) instead of
            cuDNN; 0 (default) disables it. Needs ``channels_last`` (the weights are used as views).
        fused_geglu: run each feed-forward's GEGLU projection as one fused Triton GEMM
            (:mod:`vfrt.engines.geglu_triton`). Default None: on for fp16/bf16 on CUDA when Triton is
            importable.
        triton_conv: route the 3x3 convolutions with small outputs (<= ``conv_triton.MAX_OUTPUT_PIXELS``
            pixels per image: the 8x8 and 4x4 levels) through :func:`vfrt.engines.conv_triton.conv2d_small`,
            which runs a split-reduction Triton kernel where it measured faster than cuDNN (up to
            128 output pixels in all: small K) and cuDNN otherwise. Needs ``channels_last``. Default
            None: on for fp16/bf16 on CUDA while the forward is uncompiled, off once :meth:`compile`
            is called (H100, run 7: uncompiled K = 1 4.92 -> 4.73 ms and no cost at K = 25; compiled
            K = 1 -0.12/-0.15 ms but K = 25 +0.12 ms, as the op hides those convolutions from Inductor).
        attention: self-attention backend. "auto": PyTorch's choice (cuDNN on the H100: the fastest
            steps, but ~0.2 s to plan each new K's shapes); "flash": never cuDNN (no per-shape
            planning; ~4 % slower orbits once warm) - for processes that run one orbit.
    """

    def __init__(self, unet, device, dtype=torch.float16, channels_last: bool = False, copy_weights: bool = True,
                 gemm_conv_max_pixels: int = 0, fused_geglu: bool | None = None, attention: str = "auto",
                 triton_conv: bool | None = None):
        if attention not in ATTENTION_BACKENDS:
            raise ValueError(f"attention must be one of {', '.join(ATTENTION_BACKENDS)}, got {attention!r}")
        self.attention = attention
        if gemm_conv_max_pixels and not channels_last:
            raise ValueError("gemm_conv_max_pixels needs channels_last=True")
        if fused_geglu is None:   # fp32 is the accuracy mode: it keeps cuBLAS's GEMM there
            fused_geglu = (torch.device(device).type == "cuda" and geglu_available(device)
                           and dtype in (torch.float16, torch.bfloat16))
        elif fused_geglu and not geglu_available(device):
            raise ValueError("fused_geglu needs Triton and a CUDA device (or TRITON_INTERPRET=1 on the CPU)")
        self.fused_geglu = bool(fused_geglu)
        self._triton_conv_auto = triton_conv is None
        if triton_conv is None:
            triton_conv = default_triton_conv(device, dtype, channels_last, compiled=False)
        elif triton_conv and not (conv_triton_available(device) and channels_last):
            raise ValueError("triton_conv needs Triton, channels_last=True and a CUDA device (or TRITON_INTERPRET=1)")
        self.triton_conv = bool(triton_conv)
        self.gemm_conv_max_pixels = int(gemm_conv_max_pixels)
        self.device = torch.device(device)
        self.dtype = dtype
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        u = (copy.deepcopy(unet) if copy_weights else unet).to(device=self.device, dtype=dtype).eval()
        for p in u.parameters():
            p.requires_grad_(False)
        if channels_last:
            u = u.to(memory_format=torch.channels_last)
        self.u = u
        conv0 = u.input_blocks[0][0]
        n_lat = u.in_channels - 4 if u.in_channels > 4 else 0
        self.x_channels = u.in_channels - n_lat
        self.w_x = conv0.weight[:, : self.x_channels].contiguous(memory_format=self.memory_format)
        self.w_c = conv0.weight[:, self.x_channels:].contiguous(memory_format=self.memory_format)
        self.b0 = conv0.bias
        self.resblocks = [m for m in u.modules() if isinstance(m, ResBlock)]
        self._res_index = {id(m): i for i, m in enumerate(self.resblocks)}
        self._res_width = [m.emb_layers[1].out_features for m in self.resblocks]
        self.blocks = [m for m in u.modules() if isinstance(m, BasicTransformerBlock)]
        self._const_slots, slot = {}, 0
        for b in self.blocks:               # attn2 constant, then attn1's when it is a cross-attention
            self._const_slots[id(b)] = slot
            slot += 2 if b.disable_self_attn else 1
        # fused q/k/v weights for self-attention blocks; weights the fast path never reads are
        # dropped from the copy (attn1 q/k/v after fusing, attn2 q/k: one context token)
        self._qkv = {}
        empty = torch.empty(0, device=self.device, dtype=dtype)
        for b in self.blocks:
            a = b.attn1
            if not b.disable_self_attn:
                self._qkv[id(b)] = torch.cat([a.to_q.weight, a.to_k.weight, a.to_v.weight], 0).contiguous()
                for lin in (a.to_q, a.to_k, a.to_v):
                    lin.weight = torch.nn.Parameter(empty, requires_grad=False)
            for lin in (b.attn2.to_q, b.attn2.to_k):
                lin.weight = torch.nn.Parameter(empty, requires_grad=False)
        self._forward_impl = self._forward_eager
        self.compiled = False

    def compile(self, mode: str | None = "default", options: dict | None = None, backend="inductor") -> None:
        """Compile the forward with TorchInductor (fused norms/activations), dynamic in the row count.

        The compiled function is still captured in the engine's CUDA graphs; compilation happens
        at the first call (55-100 s at full size; cached on disk by Inductor for later processes).
        ``backend`` is torch.compile's (another one only for debugging and tests).
        """
        if options:  # Inductor config overrides (torch.compile takes a mode or options, not both)
            self._forward_impl = torch.compile(self._forward_eager, options=dict(options), dynamic=None,
                                               backend=backend)
        else:
            self._forward_impl = torch.compile(self._forward_eager, mode=mode, dynamic=None, fullgraph=False,
                                               backend=backend)
        self.compiled = True
        self._compile_verified = False
        if self._triton_conv_auto:
            self.triton_conv = default_triton_conv(self.device, self.dtype,
                                                   self.memory_format is torch.channels_last, compiled=True)

    # ------------------------------------------------------------------ per-schedule / per-view tables
    @torch.no_grad()
    def emb_table(self, timesteps) -> torch.Tensor:
        """(S, sum_r C_r) ResBlock time-embedding outputs for every step's timestep."""
        t = torch.as_tensor(timesteps, device=self.device)
        temb = timestep_embedding(t, self.u.model_channels).to(self.dtype)
        emb = self.u.time_embed(temb)
        return torch.cat([rb.emb_layers(emb) for rb in self.resblocks], dim=1).contiguous()

    def split_emb(self, row: torch.Tensor) -> list[torch.Tensor]:
        """(1, sum C) -> per-ResBlock (1, C_r, 1, 1)."""
        return [r[..., None, None] for r in torch.split(row, self._res_width, dim=1)]

    @torch.no_grad()
    def cond_first_conv(self, latent: torch.Tensor) -> torch.Tensor:
        """(R, 4, h, w) conditioning latents -> (R, C0, h, w) their share of the first conv (no bias)."""
        lat = latent.to(self.device, self.dtype).contiguous(memory_format=self.memory_format)
        return F.conv2d(lat, self.w_c, None, padding=1)

    @torch.no_grad()
    def context_constants(self, context: torch.Tensor) -> list[torch.Tensor]:
        """context (R, 1, D) -> per transformer block the exact attention outputs (R, 1, C).

        Returns a flat list with one entry per block for ``attn2`` (and, for blocks with
        ``disable_self_attn``, a second entry for ``attn1``), in ``self.blocks`` order.
        """
        ctx = context.to(self.device, self.dtype)
        if ctx.shape[1] != 1:
            raise ValueError(f"the fast path needs exactly one context token, got {ctx.shape[1]}")
        out = []
        for b in self.blocks:
            out.append(b.attn2.to_out(b.attn2.to_v(ctx)))
            if b.disable_self_attn:
                out.append(b.attn1.to_out(b.attn1.to_v(ctx)))
        return out

    # ------------------------------------------------------------------ forward
    @torch.no_grad()
    def forward(self, x: torch.Tensor, h0_cond: torch.Tensor, emb_row: torch.Tensor,
                consts: list[torch.Tensor]) -> torch.Tensor:
        """eps for every row.

        Args:
            x: (1, 4, h, w) the shared noisy latent (any float dtype).
            h0_cond: (R, C0, h, w) per-row first-conv share incl. bias (row 0 = bias only for
                the unconditional branch).
            emb_row: (1, sum C) this step's row of :meth:`emb_table`.
            consts: per-row attention constants from :meth:`context_constants` (R, 1, C).
        Returns: (R, 4, h, w) in ``self.dtype``.

        Always runs without autograd, whatever the caller's grad mode: the compiled forward guards
        on that mode, and a caller with grad enabled used to cost a second compile (20-30 s, the
        "unexplained" part of run 5's first orbit - docs/PERF.md run 6).
        """
        if self.compiled:
            torch._dynamo.mark_dynamic(h0_cond, 0)
            for c in consts:
                torch._dynamo.mark_dynamic(c, 0)
            if not self._compile_verified:  # first call compiles: fall back to eager if that fails
                try:
                    out = self._forward_impl(x, h0_cond, emb_row, consts)
                except Exception as exc:  # noqa: BLE001 - any compiler failure; eager gives the same result
                    log.warning("torch.compile of the UNet failed (%s: %s); running it uncompiled (slower)",
                                type(exc).__name__, str(exc).splitlines()[0][:300] if str(exc) else "")
                    self._forward_impl, self.compiled = self._forward_eager, False
                    return self._forward_eager(x, h0_cond, emb_row, consts)
                self._compile_verified = True
                return out
        return self._forward_impl(x, h0_cond, emb_row, consts)

    def _forward_eager(self, x, h0_cond, emb_row, consts):
        xs = x.to(self.dtype).contiguous(memory_format=self.memory_format)
        h = F.conv2d(xs, self.w_x, None, padding=1) + h0_cond
        embs = self.split_emb(emb_row)
        state = {"embs": embs, "consts": consts}
        hs = [h]
        for block in self.u.input_blocks[1:]:
            h = self._seq(block, h, state)
            hs.append(h)
        h = self._seq(self.u.middle_block, h, state)
        for block in self.u.output_blocks:
            h = torch.cat([h, hs.pop()], dim=1)
            h = self._seq(block, h, state)
        out = self.u.out
        return self._conv(out[2], out[1](out[0](h)))

    def _seq(self, seq, h, state):
        for layer in seq:
            if isinstance(layer, ResBlock):
                h = self._res(layer, h, state["embs"][self._res_index[id(layer)]])
            elif isinstance(layer, SpatialTransformer):
                h = self._transformer(layer, h, state["consts"])
            elif isinstance(layer, Downsample):
                h = self._conv(layer.op, h) if layer.use_conv else layer(h)
            elif isinstance(layer, Upsample):
                h = F.interpolate(h, scale_factor=2, mode="nearest")
                if layer.use_conv:
                    h = self._conv(layer.conv, h)
            else:  # pragma: no cover - the UNet has no other layer kinds
                raise TypeError(f"unexpected UNet layer {type(layer).__name__}")
        return h

    def _conv(self, conv: torch.nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
        """``conv(x)``: cuDNN; with ``triton_conv``, the 8x8 / 4x4 3x3 convolutions through
        :func:`conv2d_small` (the split-reduction kernel at small row counts, cuDNN above); or one GEMM at
        output sizes up to ``gemm_conv_max_pixels`` (off by default: measured on the H100 it wins only for
        1x1 kernels without ``torch.compile`` and for 3x3 at 4x4 with K = 1, and loses inside the
        compiled step - docs/PERF.md)."""
        stride, padding, k = conv.stride[0], conv.padding[0], conv.kernel_size[0]
        if self.triton_conv and conv.bias is not None and conv_triton_supports(x.shape, conv.weight.shape, stride,
                                                                               padding):
            ho = (x.shape[-2] + 2 * padding - k) // stride + 1
            wo = (x.shape[-1] + 2 * padding - k) // stride + 1
            # static sizes decide which convs go through the op; the row count decides inside it
            if may_use_triton(x.shape[1], k, ho * wo):
                # channels-last input: under torch.compile the op gets exactly these strides, and Inductor
                # then writes the producing kernel's output in this layout (the GroupNorm output is NCHW)
                x = x.contiguous(memory_format=torch.channels_last)
                if torch.compiler.is_compiling():   # the bias add fuses into the next Inductor kernel
                    return conv2d_small(x, conv.weight, None, stride, padding) + conv.bias.view(1, -1, 1, 1)
                return conv2d_small(x, conv.weight, conv.bias, stride, padding)
        if self.gemm_conv_max_pixels:
            ho = (x.shape[-2] + 2 * padding - k) // stride + 1
            wo = (x.shape[-1] + 2 * padding - k) // stride + 1
            if ho * wo <= self.gemm_conv_max_pixels:
                return conv2d_as_gemm(x, conv.weight, conv.bias, stride, padding)
        return F.conv2d(x, conv.weight, conv.bias, stride, padding)

    def _res(self, rb: ResBlock, x, emb_out):
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
        skip = self._conv(rb.skip_connection, x) if isinstance(rb.skip_connection, torch.nn.Conv2d) else x
        return skip + h

    def _transformer(self, st: SpatialTransformer, x, consts):
        b, c, hh, ww = x.shape
        x_in = x
        h = self._conv(st.proj_in, st.norm(x))
        inner = h.shape[1]
        tokens = h.permute(0, 2, 3, 1).reshape(b, hh * ww, inner)
        for blk in st.transformer_blocks:
            idx = self._const_slots[id(blk)]
            if blk.disable_self_attn:
                tokens = tokens + consts[idx + 1]
            else:
                tokens = tokens + self._self_attention(blk, blk.norm1(tokens))
            tokens = tokens + consts[idx]
            tokens = tokens + self._feed_forward(blk.ff, blk.norm3(tokens))
        h = tokens.reshape(b, hh, ww, inner).permute(0, 3, 1, 2)
        if self.memory_format is torch.contiguous_format:
            h = h.contiguous()
        return self._conv(st.proj_out, h) + x_in

    def _feed_forward(self, ff, x):
        """``ff(x)`` (dropout is the identity at inference), with the GEGLU fused when enabled."""
        if not self.fused_geglu:
            return ff(x)
        proj = ff.net[0].proj
        return ff.net[2](geglu_projection(x, proj.weight, proj.bias))

    def _self_attention(self, blk: BasicTransformerBlock, x):
        a = blk.attn1
        b, n, _ = x.shape
        qkv = F.linear(x, self._qkv[id(blk)]).view(b, n, 3, a.heads, a.dim_head).permute(2, 0, 3, 1, 4)
        if self.attention == "flash":
            with sdpa_kernel(_NO_CUDNN_SDPA):
                out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])    # (b, heads, n, d)
        else:
            out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        out = out.transpose(1, 2).reshape(b, n, a.heads * a.dim_head)
        return a.to_out(out)
