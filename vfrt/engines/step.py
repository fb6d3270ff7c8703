"""The one denoising step every fast backend shares, and the cache of its CUDA graphs.

One step advances N objects in lockstep: target views of N different orbits (N = 1 for one orbit),
all at the same step index of the same schedule. Object n is a :class:`BoundView` with ``rows_n``
UNet rows (K_n references, plus the unconditional row when guided); the R = sum_n rows_n rows of all
objects run in one UNet call (SPEC §3, §4, §6)::

    eps          = unet_step(x[object(r)], h0, emb[i], consts)             (R rows; each row gets its object's latent)
    e_bar        = M eps                                                   M (N, R): the mixing matrix below
    x_n          <- c_x[i] x_n + c_eps[i] e_bar_n + sigma[i] n_bar_n[i]      (exact: the weights sum to 1)

Guidance is linear in the rows' eps, so it is a row of M per object: ``e_u + s (sum_k w_k e_ck - e_u)
= (1 - s) e_u + sum_k s w_k e_ck``; without guidance M holds the w_k (:meth:`BoundView.row_coefficients`).
One small fp32 GEMM replaces the per-object sums: deterministic (no atomics) and the same formula for one
object, a batch, and a split across GPUs. ``n_bar[i] = sum_k w_k n_ik`` (:func:`combined_noise`).

Several GPUs (:class:`vfrt.engines.distributed.RowSplit`): every rank holds all objects' latents and
runs the rows ``[lo, hi)`` of each step, multiplies them by its columns of M, and sums the (N, C, h, w)
partials with one all-reduce inside the captured graph; every rank then applies the same update. The
UNet is whatever :class:`~vfrt.engines.executors.Executor` the engine was given (several calls when R
exceeds its built row range); the rest is a handful of small PyTorch kernels.

:class:`StepGraphCache` owns the static buffers the step reads and writes, one CUDA memory pool, and
one captured graph per total row count R. The row -> object map, M, the latents and the noise are data
in static buffers, so the objects' K and guidance do not multiply the graphs. A graph freezes shapes
and buffer addresses: ``load``/``load_batch`` copy the views' conditioning, tables and noise into the
static buffers, ``replay`` runs the S steps with no host synchronisation, ``latent``/``latents`` read
the result. Buffers grow (and graphs are dropped and re-captured) when a load needs more rows,
objects or steps than any before it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol, Sequence

import torch

from vfrt.engines.base import combined_update_coefficients
from vfrt.engines.executors.base import Executor



class RowShare(Protocol):
    """This process's share of every step's rows when one orbit runs on several GPUs (implemented by
    :class:`vfrt.engines.distributed.RowSplit`): the step computes eps for rows ``rows(total)`` only and
    ``reduce`` sums the partial guided eps over the processes, in place."""

    def rows(self, total: int) -> tuple[int, int]: ...

    def reduce(self, partial: torch.Tensor) -> None: ...

#: rows the step buffers start with: a 36-view orbit needs up to K = 25 (+1 unconditional row)
INITIAL_ROWS = 26
#: fewest rows one UNet call gets: a lone row runs with a zero-weight copy beside it, because a one-row
#: call makes torch.compile specialise a second graph (dynamo's 0/1 rule: a second compile of tens of
#: seconds), while the copy costs at most one row's share of a latency-bound step (docs/PERF.md).
#: Lone rows happen on the ranks of a split step (2 rows on 2 GPUs) and for an unguided K = 1 view.
MIN_CALL_ROWS = 2


@dataclass
class BoundView:
    """One target view's conditioning, ready for the step (all tensors on the engine's device).

    Attributes:
        K: references; ``rows`` = K + 1 when guided, else K.
        guidance: classifier-free guidance scale s (guided when != 1).
        h0: (rows, C0, h, w) first-conv share incl. bias, compute dtype.
        consts: (rows, A) attention constants, compute dtype.
        weights: (K,) float32 interpolation weights (sum 1).
        emb_table: (S, E) the schedule's time-embedding rows, compute dtype.
        coefficients: (3, S) float32 rows c_x, c_eps, sigma of the combined update.
    """

    K: int
    guidance: float
    h0: torch.Tensor
    consts: torch.Tensor
    weights: torch.Tensor
    emb_table: torch.Tensor
    coefficients: torch.Tensor

    @property
    def guided(self) -> bool:
        return self.guidance != 1.0

    @property
    def rows(self) -> int:
        return self.K + 1 if self.guided else self.K

    @property
    def num_steps(self) -> int:
        return int(self.emb_table.shape[0])

    def row_coefficients(self) -> torch.Tensor:
        """(rows,) float32: this view's guided eps is ``sum_r a_r eps_r`` over its rows.

        Guided: ``a = [1 - s, s w_1, ..., s w_K]`` (row 0 unconditional); unguided: ``a = w``.
        """
        w = self.weights.to(torch.float32)
        if not self.guided:
            return w
        s = float(self.guidance)
        return torch.cat([torch.full((1,), 1.0 - s, dtype=torch.float32, device=w.device), s * w])


def step_coefficients(schedule, device) -> torch.Tensor:
    """(3, S) float32: c_x, c_eps (computed in float64 from the float32 schedule) and sigma per step."""
    c = schedule.coefficients("cpu")
    c64 = {k: v.double() for k, v in c.items()}
    c_x, c_eps = combined_update_coefficients(c64["a_t"], c64["a_prev"], c64["sigma"], c64["sqrt_one_minus_a_t"])
    return torch.stack([c_x.float(), c_eps.float(), c["sigma"].float()]).to(device)


def combined_noise(weights: torch.Tensor, num_steps: int, latent_shape: tuple[int, int, int],
                   step_noise: torch.Tensor | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """n_bar per step, (S, 1, C, h, w) float32 on ``weights.device``.

    ``step_noise`` (S, K, C, h, w) per-reference draws gives ``sum_k w_k n_k`` (exact, replayable; a
    (S, 1, ...) draw is shared by all references). Without it one draw from ``generator`` scaled by
    ``sqrt(sum_k w_k^2)``: the same distribution (SPEC §6), not replayable.
    """
    device = weights.device
    K = weights.shape[0]
    if step_noise is None:
        scale = torch.sqrt((weights ** 2).sum())
        return scale * torch.randn((num_steps, 1, *latent_shape), device=device, generator=generator)
    n = step_noise.to(device, torch.float32)
    if n.shape[0] == num_steps and n.shape[1] == 1:
        n = n.expand(num_steps, K, *n.shape[2:])
    if tuple(n.shape) != (num_steps, K, *latent_shape):
        raise ValueError(f"step noise must be (S={num_steps}, K={K}, {', '.join(map(str, latent_shape))}), "
                         f"got {tuple(n.shape)}")
    return torch.einsum("skchw,k->schw", n, weights)[:, None]


def split_rows(total: int, parts: int, part: int) -> tuple[int, int]:
    """Rows ``[lo, hi)`` of ``part`` when ``total`` rows are cut into ``parts`` contiguous slices whose
    sizes differ by at most one (a slice may be empty when total < parts)."""
    if not 0 <= part < parts:
        raise ValueError(f"part must be in [0, {parts}), got {part}")
    return total * part // parts, total * (part + 1) // parts


class StepGraphCache:
    """Static buffers + one CUDA graph per total row count for the step above.

    Args:
        unet: executor of the ``unet_step`` spec.
        device: the engine's device.
        use_graphs: capture and replay CUDA graphs (CUDA only, and only if the executor is capturable);
            otherwise ``replay`` runs the step body eagerly.
        split: this process's share of a step split across GPUs (None: all rows here).
    """

    def __init__(self, unet: Executor, device: torch.device, use_graphs: bool, split: RowShare | None = None):
        self.device = torch.device(device)
        self.use_graphs = bool(use_graphs)
        #: ``(done, total)`` after each step of a replay (progress bars); None: no calls
        self.on_step: Callable[[int, int], None] | None = None
        if self.use_graphs and (self.device.type != "cuda" or not unet.capturable):
            raise ValueError(f"CUDA graphs need a CUDA device and a capturable executor ({unet.kind} on {device})")
        self.unet = unet
        self.split = split
        #: most rows one UNet call takes (the executor's built range); more rows run as several calls
        self.max_call_rows = int(unet.spec.axis("rows").max)
        self._pool = torch.cuda.graph_pool_handle() if self.use_graphs else None
        self._buffers: dict[str, torch.Tensor] | None = None
        self._graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self._loaded_views: tuple[BoundView, ...] = ()
        self._total_rows = 0          # R of the loaded views (all ranks)
        self._local_rows = 0          # the rows this process runs (incl. a padded copy of a lone row)

    # ------------------------------------------------------------------ lifecycle
    def load(self, view: BoundView, x_T: torch.Tensor, noise_bar: torch.Tensor) -> None:
        """Copy one view's inputs into the static buffers; the next ``replay`` starts at step 0.

        x_T: (1, C, h, w) float32; noise_bar: (S, 1, C, h, w) float32 (:func:`combined_noise`).
        """
        self.load_batch([view], x_T, noise_bar)

    def load_batch(self, views: Sequence[BoundView], x_T: torch.Tensor, noise_bar: torch.Tensor) -> None:
        """Copy N views' inputs into the static buffers (N objects advancing together from step 0).

        views: N bound views of one schedule (same S, time-embedding table and update coefficients);
        x_T: (N, C, h, w) float32 initial latents; noise_bar: (S, N, C, h, w) float32 combined noise.
        """
        views = tuple(views)
        check_one_schedule(views)
        first = views[0]
        N, S = len(views), first.num_steps
        if x_T.shape[0] != N or tuple(noise_bar.shape[:2]) != (S, N) or noise_bar.shape[2:] != x_T.shape[1:]:
            raise ValueError(f"{N} views need x_T (N, C, h, w) and noise_bar (S={S}, N, C, h, w); got "
                             f"{tuple(x_T.shape)} and {tuple(noise_bar.shape)}")
        total = sum(v.rows for v in views)
        lo, hi = (0, total) if self.split is None else self.split.rows(total)
        call_rows = MIN_CALL_ROWS if hi - lo == 1 else hi - lo
        self._ensure_buffers(first, call_rows, N, tuple(x_T.shape[1:]))
        b = self._buffers
        b["x"].zero_()
        b["noise"].zero_()
        b["mix"].zero_()
        offset = 0
        for n, v in enumerate(views):     # copy the part of each view's rows that falls into [lo, hi)
            a, c = max(lo, offset), min(hi, offset + v.rows)
            if a < c:
                dst = slice(a - lo, c - lo)
                src = slice(a - offset, c - offset)
                b["h0"][dst].copy_(v.h0[src])
                b["consts"][dst].copy_(v.consts[src])
                b["row_object"][dst].fill_(n)
                b["mix"][n, dst].copy_(v.row_coefficients()[src])
            offset += v.rows
        for pad in range(hi - lo, call_rows):      # a copy of the lone row, with weight 0 in every object's mix
            for name in ("h0", "consts", "row_object"):
                b[name][pad].copy_(b[name][0])
        b["emb_table"][:S].copy_(first.emb_table)
        b["coefficients"][:, :S].copy_(first.coefficients)
        b["noise"][:S, :N].copy_(noise_bar)
        b["x"][:N].copy_(x_T)
        b["step"].zero_()
        self._loaded_views = views
        self._total_rows, self._local_rows = total, call_rows if hi > lo else 0

    def capture(self) -> bool:
        """Capture the graph for the loaded row count unless it exists; True if a capture happened.

        Two eager warm-up steps on a side stream (kernel selection, lazy compiles) come first; the
        static buffers' contents are restored afterwards, so the loaded views are unchanged. With a
        row split every rank captures at the same loads (the key is the total row count), so the
        ranks' collectives stay in step.
        """
        self._loaded()
        key = self._total_rows
        if not self.use_graphs or key in self._graphs:
            return False
        saved = {name: self._buffers[name].clone() for name in ("x", "step")}
        side = torch.cuda.Stream(device=self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(2):
                self._body(self._local_rows)
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        # thread_local: NCCL's watchdog thread may query events while this thread captures
        mode = "global" if self.split is None else "thread_local"
        with torch.cuda.graph(graph, pool=self._pool, capture_error_mode=mode):
            self._body(self._local_rows)
        self._graphs[key] = graph
        for name, value in saved.items():
            self._buffers[name].copy_(value)
        return True

    def replay(self, steps: int | None = None) -> None:
        """Run ``steps`` steps (default: all S of the loaded views) from the current step index.

        ``on_step(done, steps)``, when set, is called after each step: for progress only (with graphs a
        step is "done" once launched; nothing waits for the GPU here)."""
        views = self._loaded()
        steps = views[0].num_steps if steps is None else int(steps)
        graph = None
        if self.use_graphs:
            self.capture()
            graph = self._graphs[self._total_rows]
        for i in range(steps):
            if graph is not None:
                graph.replay()
            else:
                self._body(self._local_rows)
            if self.on_step is not None:
                self.on_step(i + 1, steps)

    def step_eager(self) -> None:
        """One step without the graph (the same kernels launched from Python): for benchmarks."""
        self._loaded()
        self._body(self._local_rows)

    def rewind(self) -> None:
        """Set the step index back to 0 (the latents are left as they are): for timing repeated replays."""
        self._loaded()
        self._buffers["step"].zero_()

    def latent(self) -> torch.Tensor:
        """The current shared latent of a single loaded view, (1, C, h, w) float32 (a copy the caller owns)."""
        if len(self._loaded()) != 1:
            raise RuntimeError(f"{len(self._loaded_views)} views are loaded: use latents()")
        return self.latents()

    def latents(self) -> torch.Tensor:
        """The current latents of the N loaded views, (N, C, h, w) float32 (a copy the caller owns)."""
        N = len(self._loaded())
        return self._buffers["x"][:N].clone()

    def run(self, view: BoundView, x_T: torch.Tensor, noise_bar: torch.Tensor) -> torch.Tensor:
        """load + replay all steps + latent: the final latent z_0 of one target view, (1, C, h, w)."""
        return self.run_batch([view], x_T, noise_bar)

    def run_batch(self, views: Sequence[BoundView], x_T: torch.Tensor, noise_bar: torch.Tensor) -> torch.Tensor:
        """load_batch + replay all steps + latents: the final latents of N views, (N, C, h, w)."""
        self.load_batch(views, x_T, noise_bar)
        self.replay()
        return self.latents()

    def clear(self) -> None:
        """Drop every captured graph and the static buffers (e.g. when the executor changes)."""
        self._drop_graphs()
        self._buffers = None
        self._loaded_views = ()

    def _drop_graphs(self) -> None:
        """Forget the graphs and start a new memory pool: once its last graph is gone, PyTorch frees a
        private pool and it cannot be captured into again."""
        self._graphs.clear()
        if self.use_graphs:
            self._pool = torch.cuda.graph_pool_handle()

    @property
    def captured(self) -> list[int]:
        """Total row count R of every captured graph."""
        return sorted(self._graphs)

    @property
    def capacity(self) -> dict[str, int]:
        """Rows (this process's), objects and steps the static buffers hold now (0 before the first load)."""
        if self._buffers is None:
            return {"rows": 0, "objects": 0, "steps": 0}
        return {"rows": int(self._buffers["h0"].shape[0]), "objects": int(self._buffers["x"].shape[0]),
                "steps": int(self._buffers["emb_table"].shape[0])}

    # ------------------------------------------------------------------ internals
    def _loaded(self) -> tuple[BoundView, ...]:
        if not self._loaded_views:
            raise RuntimeError("no view is loaded into the step buffers: call load() first")
        return self._loaded_views

    def _ensure_buffers(self, view: BoundView, rows: int, objects: int, latent_shape: tuple[int, int, int]) -> None:
        b = self._buffers
        fits = (b is not None and b["x"].shape[1:] == latent_shape and b["h0"].shape[0] >= rows
                and b["x"].shape[0] >= objects
                and b["h0"].shape[1:] == view.h0.shape[1:] and b["consts"].shape[1] == view.consts.shape[1]
                and b["emb_table"].shape[0] >= view.num_steps and b["emb_table"].shape[1] == view.emb_table.shape[1]
                and b["h0"].dtype == view.h0.dtype)
        if fits:
            return
        rows = max(rows, INITIAL_ROWS, 0 if b is None else b["h0"].shape[0])
        objects = max(objects, 0 if b is None else b["x"].shape[0])
        steps = max(view.num_steps, 0 if b is None else b["emb_table"].shape[0])
        dev, dtype = self.device, view.h0.dtype
        memory_format = torch.channels_last if view.h0.is_contiguous(memory_format=torch.channels_last) and \
            not view.h0.is_contiguous() else torch.contiguous_format
        self._drop_graphs()           # graphs captured on the old buffers would read freed memory
        self._buffers = {
            "x": torch.zeros((objects, *latent_shape), device=dev),
            "step": torch.zeros((1,), dtype=torch.long, device=dev),
            "row_object": torch.zeros((rows,), dtype=torch.long, device=dev),
            "mix": torch.zeros((objects, rows), device=dev),
            "h0": torch.zeros((rows, *view.h0.shape[1:]), device=dev, dtype=dtype).contiguous(
                memory_format=memory_format),
            "consts": torch.zeros((rows, view.consts.shape[1]), device=dev, dtype=dtype),
            "emb_table": torch.zeros((steps, view.emb_table.shape[1]), device=dev, dtype=view.emb_table.dtype),
            "coefficients": torch.zeros((3, steps), device=dev),
            "noise": torch.zeros((steps, objects, *latent_shape), device=dev),
        }

    def _eps(self, rows: int) -> torch.Tensor:
        """eps of this process's first ``rows`` buffer rows, (rows, C, h, w) float32 contiguous (several UNet
        calls of near-equal size when ``rows`` exceeds the executor's built range; the cast also leaves a
        channels-last output row-major, as the mixing GEMM needs)."""
        b = self._buffers
        x_rows = b["x"].index_select(0, b["row_object"][:rows])
        emb = b["emb_table"].index_select(0, b["step"])
        calls = -(-rows // self.max_call_rows)
        parts = []
        for c in range(calls):
            lo, hi = split_rows(rows, calls, c)
            parts.append(self.unet.run({"x": x_rows[lo:hi], "h0": b["h0"][lo:hi], "emb": emb,
                                        "consts": b["consts"][lo:hi]})["eps"].to(torch.float32,
                                                                                 memory_format=torch.contiguous_format))
        return parts[0] if calls == 1 else torch.cat(parts)

    @torch.no_grad()
    def _body(self, rows: int) -> None:
        """One step on the static buffers (what a graph captures); ``rows``: this process's rows."""
        b = self._buffers
        i = b["step"]
        if rows:
            eps = self._eps(rows)
            e_bar = torch.mm(b["mix"][:, :rows], eps.view(rows, -1)).view(b["x"].shape)
        else:             # a rank without rows this view (R < GPUs) still joins the all-reduce
            e_bar = torch.zeros_like(b["x"])
        if self.split is not None:
            self.split.reduce(e_bar)
        coef = b["coefficients"].index_select(1, i).view(3, 1, 1, 1, 1)
        x_next = coef[0] * b["x"] + coef[1] * e_bar + coef[2] * b["noise"].index_select(0, i)[0]
        b["x"].copy_(x_next)
        b["step"].add_(1)


def check_one_schedule(views: Sequence[BoundView]) -> None:
    """Raise ValueError unless the views (at least one) can advance together: one sampler schedule."""
    if not views:
        raise ValueError("a step needs at least one bound view")
    first = views[0]
    for v in views[1:]:
        if v.num_steps != first.num_steps or not _same(v.emb_table, first.emb_table) \
                or not _same(v.coefficients, first.coefficients):
            raise ValueError("views advancing together must share one sampler schedule (steps and eta)")


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Same values (the engine caches one table per schedule, so usually the same tensor)."""
    return a is b or (a.shape == b.shape and a.dtype == b.dtype and bool(torch.equal(a, b)))
