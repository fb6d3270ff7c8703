"""The one denoising step every fast backend shares, and the cache of its CUDA graphs.

For a target view bound to K references (:class:`BoundView`) one step is (SPEC §3, §4, §6)::

    eps          = unet_step(x, h0, emb[i], consts)                   (R = K + 1 rows, row 0 unconditional;
                                                                        x expanded to the R rows)
    e_bar        = e_u + s (sum_k w_k e_ck - e_u)                     (guidance s; without it sum_k w_k eps_k)
    x            <- c_x[i] x + c_eps[i] e_bar + sigma[i] n_bar[i]       (exact: the weights sum to 1)

with ``n_bar[i] = sum_k w_k n_ik`` (:func:`combined_noise`). The UNet is whatever
:class:`~vfrt.engines.executors.Executor` the engine was given; the rest is a handful of small
PyTorch kernels.

:class:`StepGraphCache` owns the static buffers the step reads and writes, one CUDA memory pool,
and one captured graph per (rows, guided). A graph freezes shapes and buffer addresses: ``load``
copies a view's conditioning, tables and noise into the static buffers, ``replay`` runs the S
steps with no host synchronisation, ``latent`` reads the result. Buffers grow (and graphs are
dropped and re-captured) when a view needs more rows or steps than any before it.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from vfrt.engines.base import combined_update_coefficients
from vfrt.engines.executors.base import Executor

#: rows the step buffers start with: a 36-view orbit needs up to K = 25 (+1 unconditional row)
INITIAL_ROWS = 26


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


class StepGraphCache:
    """Static buffers + one CUDA graph per (rows, guided) for the step above.

    Args:
        unet: executor of the ``unet_step`` spec.
        device: the engine's device.
        use_graphs: capture and replay CUDA graphs (CUDA only, and only if the executor is capturable);
            otherwise ``replay`` runs the step body eagerly.
    """

    def __init__(self, unet: Executor, device: torch.device, use_graphs: bool):
        self.device = torch.device(device)
        self.use_graphs = bool(use_graphs)
        if self.use_graphs and (self.device.type != "cuda" or not unet.capturable):
            raise ValueError(f"CUDA graphs need a CUDA device and a capturable executor ({unet.kind} on {device})")
        self.unet = unet
        self._pool = torch.cuda.graph_pool_handle() if self.use_graphs else None
        self._buffers: dict[str, torch.Tensor] | None = None
        self._graphs: dict[tuple[int, bool], torch.cuda.CUDAGraph] = {}
        self._view: BoundView | None = None

    # ------------------------------------------------------------------ lifecycle
    def load(self, view: BoundView, x_T: torch.Tensor, noise_bar: torch.Tensor) -> None:
        """Copy one view's inputs into the static buffers; the next ``replay`` starts at step 0.

        x_T: (1, C, h, w) float32; noise_bar: (S, 1, C, h, w) float32 (:func:`combined_noise`).
        """
        self._ensure_buffers(view, tuple(x_T.shape[1:]))
        b, rows = self._buffers, view.rows
        b["h0"][:rows].copy_(view.h0)
        b["consts"][:rows].copy_(view.consts)
        b["weights"][:view.K].copy_(view.weights)
        b["guidance"].fill_(view.guidance)
        S = view.num_steps
        b["emb_table"][:S].copy_(view.emb_table)
        b["coefficients"][:, :S].copy_(view.coefficients)
        b["noise"][:S].copy_(noise_bar)
        b["x"].copy_(x_T)
        b["step"].zero_()
        self._view = view

    def capture(self) -> bool:
        """Capture the loaded view's graph unless it exists; True if a capture happened.

        Two eager warm-up steps on a side stream (kernel selection, lazy compiles) come first; the
        static buffers' contents are restored afterwards, so the loaded view is unchanged.
        """
        view = self._loaded()
        key = (view.rows, view.guided)
        if not self.use_graphs or key in self._graphs:
            return False
        saved = {name: self._buffers[name].clone() for name in ("x", "step")}
        side = torch.cuda.Stream(device=self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(2):
                self._body(view.K, view.guided)
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            self._body(view.K, view.guided)
        self._graphs[key] = graph
        for name, value in saved.items():
            self._buffers[name].copy_(value)
        return True

    def replay(self, steps: int | None = None) -> None:
        """Run ``steps`` steps (default: all S of the loaded view) from the current step index."""
        view = self._loaded()
        steps = view.num_steps if steps is None else int(steps)
        if self.use_graphs:
            self.capture()
            graph = self._graphs[(view.rows, view.guided)]
            for _ in range(steps):
                graph.replay()
        else:
            for _ in range(steps):
                self._body(view.K, view.guided)

    def step_eager(self) -> None:
        """One step without the graph (the same kernels launched from Python): for benchmarks."""
        view = self._loaded()
        self._body(view.K, view.guided)

    def rewind(self) -> None:
        """Set the step index back to 0 (the latent is left as it is): for timing repeated replays."""
        self._loaded()
        self._buffers["step"].zero_()

    def latent(self) -> torch.Tensor:
        """The current shared latent, (1, C, h, w) float32 (a copy the caller owns)."""
        self._loaded()
        return self._buffers["x"].clone()

    def run(self, view: BoundView, x_T: torch.Tensor, noise_bar: torch.Tensor) -> torch.Tensor:
        """load + replay all steps + latent: the final latent z_0 of one target view."""
        self.load(view, x_T, noise_bar)
        self.replay()
        return self.latent()

    def clear(self) -> None:
        """Drop every captured graph and the static buffers (e.g. when the executor changes)."""
        self._drop_graphs()
        self._buffers = None
        self._view = None

    def _drop_graphs(self) -> None:
        """Forget the graphs and start a new memory pool: once its last graph is gone, PyTorch frees a
        private pool and it cannot be captured into again."""
        self._graphs.clear()
        if self.use_graphs:
            self._pool = torch.cuda.graph_pool_handle()

    @property
    def captured(self) -> list[tuple[int, bool]]:
        """(rows, guided) of every captured graph."""
        return sorted(self._graphs)

    @property
    def capacity(self) -> dict[str, int]:
        """Rows and steps the static buffers hold now (0 before the first load)."""
        if self._buffers is None:
            return {"rows": 0, "steps": 0}
        return {"rows": int(self._buffers["h0"].shape[0]), "steps": int(self._buffers["emb_table"].shape[0])}

    # ------------------------------------------------------------------ internals
    def _loaded(self) -> BoundView:
        if self._view is None:
            raise RuntimeError("no view is loaded into the step buffers: call load() first")
        return self._view

    def _ensure_buffers(self, view: BoundView, latent_shape: tuple[int, int, int]) -> None:
        b = self._buffers
        fits = (b is not None and b["x"].shape[1:] == latent_shape and b["h0"].shape[0] >= view.rows
                and b["h0"].shape[1:] == view.h0.shape[1:] and b["consts"].shape[1] == view.consts.shape[1]
                and b["emb_table"].shape[0] >= view.num_steps and b["emb_table"].shape[1] == view.emb_table.shape[1]
                and b["h0"].dtype == view.h0.dtype)
        if fits:
            return
        rows = max(view.rows, INITIAL_ROWS, 0 if b is None else b["h0"].shape[0])
        steps = max(view.num_steps, 0 if b is None else b["emb_table"].shape[0])
        dev, dtype = self.device, view.h0.dtype
        memory_format = torch.channels_last if view.h0.is_contiguous(memory_format=torch.channels_last) and \
            not view.h0.is_contiguous() else torch.contiguous_format
        self._drop_graphs()           # graphs captured on the old buffers would read freed memory
        self._buffers = {
            "x": torch.zeros((1, *latent_shape), device=dev),
            "step": torch.zeros((1,), dtype=torch.long, device=dev),
            "guidance": torch.zeros((), device=dev),
            "h0": torch.zeros((rows, *view.h0.shape[1:]), device=dev, dtype=dtype).contiguous(
                memory_format=memory_format),
            "consts": torch.zeros((rows, view.consts.shape[1]), device=dev, dtype=dtype),
            "weights": torch.zeros((rows,), device=dev),
            "emb_table": torch.zeros((steps, view.emb_table.shape[1]), device=dev, dtype=view.emb_table.dtype),
            "coefficients": torch.zeros((3, steps), device=dev),
            "noise": torch.zeros((steps, 1, *latent_shape), device=dev),
        }

    @torch.no_grad()
    def _body(self, K: int, guided: bool) -> None:
        """One step on the static buffers (what a graph captures)."""
        b = self._buffers
        rows = K + 1 if guided else K
        i = b["step"]
        eps = self.unet.run({"x": b["x"].expand(rows, -1, -1, -1).contiguous(), "h0": b["h0"][:rows], "emb": b["emb_table"].index_select(0, i),
                             "consts": b["consts"][:rows]})["eps"].float()
        w = b["weights"][:K].view(-1, 1, 1, 1)
        if guided:
            e_u, e_c = eps[:1], eps[1:]
            e_bar = e_u + b["guidance"] * ((w * e_c).sum(0, keepdim=True) - e_u)
        else:
            e_bar = (w * eps).sum(0, keepdim=True)
        coef = b["coefficients"].index_select(1, i).view(3, 1, 1, 1, 1)
        x_next = coef[0] * b["x"] + coef[1] * e_bar + coef[2] * b["noise"].index_select(0, i)[0]
        b["x"].copy_(x_next)
        b["step"].add_(1)
