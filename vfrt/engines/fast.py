"""The fast engine: exact-math interpolated DDIM on the GPU (issue 3).

Per step and target view with K references it evaluates the UNet on K+1 rows (one shared
unconditional row instead of K - SPEC §6) through :class:`FastUNet`, forms the guided weighted
eps ``e_bar = e_u + s (sum_k w_k e_ck - e_u)`` and applies the DDIM update once to the shared
latent with the combined coefficients::

    x <- c_x[i] x + c_eps[i] e_bar + sigma[i] n_bar[i]          (exact: the weights sum to 1)

``n_bar[i]`` is ``sum_k w_k n_ik`` of the K per-reference draws (``noise_mode="exact"``, replayable
from a noise bank) or one draw scaled by ``sqrt(sum_k w_k^2)`` (``noise_mode="fast"``, the same
distribution, SPEC §6).

On CUDA the whole step - table look-ups, UNet, guidance, update, step counter - is captured in a
CUDA graph per K (lazily, sharing one memory pool). A graph freezes shapes and buffer addresses:
each view copies its conditioning into the graph's static buffers before replaying it S times,
with no host synchronisation inside the loop.
"""
from __future__ import annotations

import copy
import logging
from typing import Sequence

import torch

from vfrt.engines.base import ViewEncoding, combined_update_coefficients
from vfrt.engines.fast_unet import FastUNet

log = logging.getLogger(__name__)

_DTYPES = {"float16": torch.float16, "fp16": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
           "float32": torch.float32, "fp32": torch.float32}


def _triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def _dtype(d) -> torch.dtype:
    if isinstance(d, torch.dtype):
        return d
    if d not in _DTYPES:
        raise ValueError(f"unknown dtype {d!r}; choose one of {', '.join(_DTYPES)}")
    return _DTYPES[d]


class FastEngine:
    """Exact-math fast backend.

    Args:
        model: a loaded :class:`vfrt.models.Zero123` (stays on the CPU; copies go to ``device``).
        dtype: UNet compute dtype ("float16" default on CUDA, "float32" on CPU).
        noise_mode: "exact" (K draws per step, bank-replayable) or "fast" (one scaled draw).
        use_graphs: capture each step in a CUDA graph (default: True on CUDA).
        channels_last: NHWC activations for the UNet (default: True on CUDA, where it measured
            faster at every K on the H100 - docs/PERF.md).
        fast_noise_seed: seed of the device generator used by ``noise_mode="fast"``.
        compile: compile the UNet forward with TorchInductor (inside the CUDA graphs). Default:
            on for CUDA when Triton is importable (1.7x faster steps, docs/PERF.md). The first step
            compiles: 55-100 s with an empty Inductor cache, 20-35 s when an earlier process filled
            it (on disk). If compiling fails, the engine warns once and runs the uncompiled forward
            (same results).
        gemm_conv_max_pixels: convolutions with at most this many output pixels per image run as
            one GEMM over gathered taps (:mod:`vfrt.engines.conv_gemm`); default 0 (off: inside the
            compiled step it measured slower than cuDNN, docs/PERF.md).
        fused_geglu: one fused Triton GEMM per feed-forward GEGLU projection (default None: on for
            fp16/bf16 on CUDA when Triton is importable; docs/PERF.md run 6).
        triton_conv: split-reduction Triton kernel for the 8x8 / 4x4 3x3 convolutions where it
            measured faster than cuDNN (:mod:`vfrt.engines.conv_triton`; default None: on for
            fp16/bf16 channels-last on CUDA when the UNet is not compiled; see FastUNet).
        attention: "auto" (PyTorch's SDPA choice: cuDNN on the H100) or "flash" (never cuDNN: no
            ~0.2 s of plan building at each new K's first step, slightly slower steps); see FastUNet.
        compile_options: Inductor config overrides for ``compile`` (e.g. ``{"conv_1x1_as_mm": True}``).
        vae_dtype: VAE dtype (default: float16 on CUDA, as the original under autocast; float32 on CPU).
        k_buckets: pad K up to the next bucket with zero-weight references, so fewer graphs are
            captured (e.g. (1, 2, 4, 8, 12, 16, 20, 25)); None captures one graph per distinct K
            (no padded compute). A K above the largest bucket gets its own graph.
        copy_weights: leave ``model`` untouched (default); False converts its modules in place
            (``Pipeline.from_checkpoint`` does this: it owns the model, and a 15 GB checkpoint
            then needs no second fp32 copy in host memory).
    """

    name = "fast"

    def __init__(self, model, device="cuda", dtype=None, noise_mode: str = "exact", use_graphs: bool | None = None,
                 channels_last: bool | None = None, fast_noise_seed: int = 0, compile: bool | None = None,
                 vae_dtype=None, k_buckets: tuple[int, ...] | None = None, copy_weights: bool = True,
                 gemm_conv_max_pixels: int = 0, compile_options: dict | None = None,
                 fused_geglu: bool | None = None, attention: str = "auto", triton_conv: bool | None = None):
        self.device = torch.device(device)
        cuda = self.device.type == "cuda"
        self.dtype = _dtype(dtype if dtype is not None else ("float16" if cuda else "float32"))
        if self.dtype is not torch.float32 and not cuda:
            raise ValueError("fp16/bf16 needs a CUDA device; use dtype='float32' on the CPU")
        if noise_mode not in ("exact", "fast"):
            raise ValueError(f"noise_mode must be 'exact' or 'fast', got {noise_mode!r}")
        self.noise_mode = noise_mode
        if k_buckets is not None and (not k_buckets or any(int(b) < 1 for b in k_buckets)):
            raise ValueError(f"k_buckets must be positive integers, got {k_buckets}")
        self.k_buckets = tuple(sorted(int(b) for b in k_buckets)) if k_buckets else None
        self.use_graphs = cuda if use_graphs is None else bool(use_graphs)
        if self.use_graphs and not cuda:
            raise ValueError("CUDA graphs need a CUDA device")
        self.config = model.config
        channels_last = cuda if channels_last is None else bool(channels_last)
        self.unet = FastUNet(model.unet, self.device, self.dtype, channels_last=channels_last,
                             copy_weights=copy_weights, gemm_conv_max_pixels=gemm_conv_max_pixels,
                             fused_geglu=fused_geglu, attention=attention, triton_conv=triton_conv)
        if compile is None:
            compile = cuda and _triton_available()
        if compile:
            self.unet.compile(options=compile_options)
        self.vae_dtype = _dtype(vae_dtype if vae_dtype is not None else ("float16" if cuda else "float32"))
        # Encoders (once per view): CLIP in the compute dtype (the original runs it in fp16 on CUDA
        # too), the VAE in vae_dtype, the tiny projection in fp32.
        own = (lambda m: copy.deepcopy(m)) if copy_weights else (lambda m: m)
        self._clip = own(model.clip).to(self.device, self.dtype)
        self._vae = own(model.vae).to(self.device, self.vae_dtype)
        self._proj = own(model.cc_projection).to(self.device, torch.float32)
        self._emb_tables: dict[tuple, torch.Tensor] = {}
        self._coef_tables: dict[tuple, dict[str, torch.Tensor]] = {}
        self._graphs: dict[tuple, _StepGraph] = {}
        self._pool = torch.cuda.graph_pool_handle() if self.use_graphs else None
        self._gen = torch.Generator(device=self.device)
        self._gen.manual_seed(int(fast_noise_seed))
        for mod in (self._clip, self._vae, self._proj):
            mod.eval().requires_grad_(False)

    # ------------------------------------------------------------------ encoders
    @torch.no_grad()
    def encode_view(self, image: torch.Tensor) -> ViewEncoding:
        from vfrt.models.clip import clip_preprocess
        img = image.to(self.device, torch.float32)
        pix = clip_preprocess(img, self._clip.input_resolution).to(next(self._clip.parameters()).dtype)
        clip = self._clip(pix).float()
        latent = self._vae.encode_mode(img.to(self.vae_dtype)).float()
        return ViewEncoding(clip=clip, latent=latent, extra={"h0": self.unet.cond_first_conv(latent)})

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        sf = self.config.schedule.scale_factor
        z = ((1.0 / sf) * z.to(self.device, torch.float32)).to(self.vae_dtype)
        return torch.clamp(self._vae.decode(z).float(), -1.0, 1.0)

    # ------------------------------------------------------------------ per-schedule tables
    def _tables(self, schedule):
        """The schedule's time-embedding table and combined update coefficients (cached per schedule)."""
        key = (tuple(int(t) for t in schedule.timesteps),)
        if key not in self._emb_tables:
            self._emb_tables[key] = self.unet.emb_table(schedule.timesteps)
        ckey = key + (tuple(schedule.sigma.tolist()),)
        if ckey not in self._coef_tables:
            c = schedule.coefficients("cpu")
            c64 = {k: v.double() for k, v in c.items()}
            c_x, c_eps = combined_update_coefficients(c64["a_t"], c64["a_prev"], c64["sigma"],
                                                      c64["sqrt_one_minus_a_t"])
            self._coef_tables[ckey] = {"c_x": c_x.float().to(self.device), "c_eps": c_eps.float().to(self.device),
                                       "sigma": c["sigma"].float().to(self.device)}
        return self._emb_tables[key], self._coef_tables[ckey]

    # ------------------------------------------------------------------ binding a view
    @torch.no_grad()
    def bind(self, refs: Sequence[ViewEncoding], T: torch.Tensor, weights: torch.Tensor, schedule,
             guidance: float) -> "_FastDenoiser":
        K = len(refs)
        pad = self._padded_k(K) - K
        if pad:  # zero-weight copies of the last reference: they add exactly 0 * eps
            refs = list(refs) + [refs[-1]] * pad
            T = torch.cat([T.reshape(K, 4), T.reshape(K, 4)[-1:].expand(pad, 4)], 0)
            weights = torch.cat([weights.reshape(K).float(), torch.zeros(pad)], 0)
            K += pad
        guided = float(guidance) != 1.0
        emb_table, coef = self._tables(schedule)
        clip = torch.cat([r.clip for r in refs], 0)
        ctx = self._proj(torch.cat([clip, T.to(self.device, torch.float32).reshape(K, 4)], -1))[:, None]  # (K,1,D)
        h0 = torch.cat([r.extra["h0"] if r.extra and "h0" in r.extra else self.unet.cond_first_conv(r.latent)
                        for r in refs], 0)                                                          # (K,C0,h,w)
        if guided:
            ctx = torch.cat([torch.zeros_like(ctx[:1]), ctx], 0)
            h0 = torch.cat([torch.zeros_like(h0[:1]), h0], 0)
        h0 = h0 + self.unet.b0.view(1, -1, 1, 1)
        consts = self.unet.context_constants(ctx)
        w = weights.to(self.device, torch.float32).reshape(K)
        return _FastDenoiser(self, K, guided, float(guidance), h0, consts, w, emb_table, coef, schedule.num_steps)

    def _padded_k(self, K: int) -> int:
        if self.k_buckets is None:
            return K
        return next((b for b in self.k_buckets if b >= K), K)

    def static_buffers(self, rows: int, S: int, latent_shape, h0_shape) -> dict:
        """Graph input buffers shared by all captured graphs; grown (with re-capture) when too small."""
        key = (S, tuple(latent_shape), tuple(h0_shape[1:]))
        buf = getattr(self, "_static", None)
        if buf is None or buf["key"] != key or buf["rows"] < rows:
            rows = max(rows, 26)  # the 36-view orbit needs up to K = 25 (+1 unconditional row)
            dev, dt, u = self.device, self.dtype, self.unet
            ctx_dim = u.blocks[0].attn2.to_v.in_features
            widths = [c.shape[-1] for c in u.context_constants(torch.zeros((1, 1, ctx_dim), device=dev))]
            buf = {"key": key, "rows": rows,
                   "x": torch.zeros((1, *latent_shape), device=dev),
                   "step_idx": torch.zeros((1,), dtype=torch.long, device=dev),
                   "s": torch.zeros((), device=dev),
                   "h0": torch.zeros((rows, *h0_shape[1:]), device=dev, dtype=dt).contiguous(
                       memory_format=u.memory_format),
                   "consts": [torch.zeros((rows, 1, wd), device=dev, dtype=dt) for wd in widths],
                   "w": torch.zeros((rows,), device=dev),
                   "noise": torch.zeros((S, 1, *latent_shape), device=dev)}
            self._static = buf
            self._graphs.clear()  # graphs captured on the old buffers are invalid
        return buf

    def step_graph(self, K: int, guided: bool, S: int, latent_shape, h0_shape) -> "_StepGraph":
        key = (K, guided, S, tuple(latent_shape))
        g = self._graphs.get(key)
        if g is None:
            g = _StepGraph(self, K, guided, S, latent_shape, h0_shape)
            self._graphs[key] = g
        return g


class _StepGraph:
    """Static buffers + (on CUDA) a captured graph of one full interpolated step for one K."""

    def __init__(self, engine: FastEngine, K: int, guided: bool, S: int, latent_shape, h0_shape):
        self.engine, self.K, self.guided, self.S = engine, K, guided, S
        rows = K + 1 if guided else K
        # Static inputs are views into buffers shared by every graph of the engine (graphs replay
        # one at a time, and each view loads its data before replaying), so memory does not grow
        # with the number of captured K.
        buf = engine.static_buffers(rows, S, latent_shape, h0_shape)
        self.x, self.step_idx, self.s = buf["x"], buf["step_idx"], buf["s"]
        self.h0 = buf["h0"][:rows]
        self.consts = [c[:rows] for c in buf["consts"]]
        self.w = buf["w"][:K]
        self.noise = buf["noise"]
        self.emb_table = None  # set per view (same object for a schedule)
        self.coef = None
        self.graph = None

    def load(self, den: "_FastDenoiser", x_T: torch.Tensor, nbar: torch.Tensor) -> None:
        self.h0.copy_(den.h0)
        for dst, src in zip(self.consts, den.consts):
            dst.copy_(src)
        self.w.copy_(den.w)
        self.s.fill_(den.guidance)
        self.noise.copy_(nbar)
        self.x.copy_(x_T)
        self.step_idx.zero_()
        if self.emb_table is not den.emb_table or self.coef is not den.coef:
            # tables are part of the captured graph: a new schedule needs a new capture
            self.emb_table, self.coef, self.graph = den.emb_table, den.coef, None

    @torch.no_grad()
    def body(self) -> None:
        """One step on the static buffers (what the CUDA graph captures)."""
        u = self.engine.unet
        i = self.step_idx
        eps = u.forward(self.x, self.h0, self.emb_table.index_select(0, i), self.consts).float()
        if self.guided:
            e_u, e_c = eps[:1], eps[1:]
            e_bar = e_u + self.s * ((self.w.view(-1, 1, 1, 1) * e_c).sum(0, keepdim=True) - e_u)
        else:
            e_bar = (self.w.view(-1, 1, 1, 1) * eps).sum(0, keepdim=True)
        c_x = self.coef["c_x"].index_select(0, i).view(1, 1, 1, 1)
        c_eps = self.coef["c_eps"].index_select(0, i).view(1, 1, 1, 1)
        sig = self.coef["sigma"].index_select(0, i).view(1, 1, 1, 1)
        x_next = c_x * self.x + c_eps * e_bar + sig * self.noise.index_select(0, i)[0]
        self.x.copy_(x_next)
        self.step_idx.add_(1)

    @torch.no_grad()
    def capture(self) -> None:
        saved = (self.x.clone(), self.step_idx.clone())
        s = torch.cuda.Stream(device=self.engine.device)
        s.wait_stream(torch.cuda.current_stream(self.engine.device))
        with torch.cuda.stream(s):
            for _ in range(2):  # warm-up (cuBLAS / SDPA kernel selection) outside the capture
                self.body()
        torch.cuda.current_stream(self.engine.device).wait_stream(s)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph, pool=self.engine._pool):
            self.body()
        self.x.copy_(saved[0])
        self.step_idx.copy_(saved[1])

    @torch.no_grad()
    def run(self) -> torch.Tensor:
        if self.engine.use_graphs:
            if self.graph is None:
                self.capture()
            for _ in range(self.S):
                self.graph.replay()
        else:
            for _ in range(self.S):
                self.body()
        return self.x.clone()


class _FastDenoiser:
    def __init__(self, engine: FastEngine, K, guided, guidance, h0, consts, w, emb_table, coef, S):
        self.engine, self.K, self.guided, self.guidance = engine, K, guided, guidance
        self.h0, self.consts, self.w, self.emb_table, self.coef, self.S = h0, consts, w, emb_table, coef, S

    @torch.no_grad()
    def combined_noise(self, step_noise: torch.Tensor | None, latent_shape) -> torch.Tensor:
        """(S, 1, C, h, w) n_bar per step: sum_k w_k n_k (exact) or sqrt(sum w^2) N(0, 1) (fast)."""
        dev = self.engine.device
        if self.engine.noise_mode == "exact":
            if step_noise is None:
                raise ValueError("noise_mode='exact' needs the per-reference step noise")
            n = step_noise.to(dev, torch.float32)
            if n.shape[0] == self.S and n.shape[1] == 1:       # one draw shared by all references
                n = n.expand(self.S, self.K, *n.shape[2:])
            elif n.shape[0] == self.S and n.shape[1] < self.K:  # bucket padding: zero-weight rows
                n = torch.cat([n, n.new_zeros((self.S, self.K - n.shape[1], *n.shape[2:]))], 1)
            if n.shape[:2] != (self.S, self.K):
                raise ValueError(f"step noise must be (S={self.S}, K={self.K}, ...), got {tuple(n.shape)}")
            return torch.einsum("skchw,k->schw", n, self.w)[:, None]
        scale = torch.sqrt((self.w ** 2).sum())
        return scale * torch.randn((self.S, 1, *latent_shape), device=dev, generator=self.engine._gen)

    @torch.no_grad()
    def run(self, x_T: torch.Tensor, step_noise: torch.Tensor | None) -> torch.Tensor:
        latent_shape = tuple(x_T.shape[1:])
        g = self.engine.step_graph(self.K, self.guided, self.S, latent_shape, tuple(self.h0.shape))
        g.load(self, x_T.to(self.engine.device, torch.float32), self.combined_noise(step_noise, latent_shape))
        return g.run()
