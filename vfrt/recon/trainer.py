"""NeuS training loop on loaded views (no SDS: the generated views are the supervision).

Loss per batch (NeuS eq. 14, with the mask term of NeuS' "w/ mask" setting as BCE):
``L = |C - C_gt|_1 + eikonal_weight * mean((|grad f| - 1)^2) + mask_weight * BCE(O, M)``.
Batches: ``rays_per_batch`` rays drawn uniformly over all pixels of all views plus
``foreground_rays_per_batch`` rays drawn from mask pixels. Learning rate: linear warm-up,
then cosine annealing to ``lr * final_lr_factor``. Coarse-to-fine: the hash grid starts with
``progressive_start_levels`` levels and gains one every ``progressive_level_steps`` steps.

Determinism: on the CPU the same seed gives the same model, bit for bit, at any thread count:
training runs under ``torch.use_deterministic_algorithms`` (the table-gradient scatter of the
reference encoding otherwise adds in a thread-dependent order). On CUDA it does not: the fused
Triton backward scatters with ``atomic_add``, whose order varies from run to run.

Per-step schedules (cos-annealing, sharpness floor, finite-difference eps, level mask, loss slot; the
learning rates too when captured) are written into device tensors before each step, so the step itself
reads nothing from the host: with ``cfg.cuda_graph`` (CUDA and the Triton encoding) it is captured once as
a CUDA graph and replayed (:class:`_Recipe`; not yet run on a GPU, docs/RECON.md).

Non-finite losses are detected on the device every step and checked on the host every
``nan_check_every`` steps (one sync); training then stops with
:class:`~vfrt.recon.errors.TrainingDivergedError` naming the first bad step.
"""
from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from vfrt import hardware
import torch.nn.functional as F

from vfrt.recon.rays import pixel_rays
from vfrt.recon.config import ReconConfig
from vfrt.recon.data import ReconData
from vfrt.recon.errors import ConfigError, TrainingDivergedError
from vfrt.recon.fields import NeuSFields, build_fields
from vfrt.recon.hashgrid import resolve_backend
from vfrt.recon.hull import VisualHull, carve_hull
from vfrt.recon.renderer import CosAnneal, render_rays

log = logging.getLogger(__name__)

ProgressFn = Callable[[int, float], None]  # (steps done, latest loss)


@dataclass
class TrainResult:
    """A trained NeuS model and how training went."""

    fields: NeuSFields
    device: torch.device
    backend: str
    steps: int
    seconds: float
    final_loss: float
    loss_history: list[tuple[int, float]] = field(default_factory=list)
    hull: VisualHull | None = None
    final_inv_s: float = 0.0


def resolve_device(name: str) -> torch.device:
    """``auto`` -> ``cuda`` when torch sees a GPU, else ``cpu``; ``cuda[:N]`` must exist (the same rule as
    every vfrt command: :func:`vfrt.hardware.resolve_device`), as a recon :class:`ConfigError`."""
    try:
        return hardware.resolve_device(name)
    except hardware.DeviceError as exc:
        raise ConfigError(str(exc)) from None


def lr_factor(step: int, cfg: ReconConfig) -> float:
    """Linear warm-up to 1, then cosine annealing to ``final_lr_factor``."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    span = max(1, cfg.steps - cfg.warmup_steps)
    t = min(1.0, (step - cfg.warmup_steps) / span)
    return cfg.final_lr_factor + (1.0 - cfg.final_lr_factor) * 0.5 * (1.0 + math.cos(math.pi * t))


def inv_s_floor(step: int, cfg: ReconConfig) -> float:
    """Sharpness floor at ``step``: 0 during warm-up, then geometric from start to end (0 if disabled)."""
    if cfg.inv_s_floor_end <= 0 or step < cfg.warmup_steps:
        return 0.0
    t = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps))
    start = max(cfg.inv_s_floor_start, 1e-3)
    return start * (cfg.inv_s_floor_end / start) ** t


class _RayBank:
    """All training rays on the device; draws a mixed batch of random and foreground rays."""

    def __init__(self, data: ReconData, device: torch.device, seed: int) -> None:
        c2w = torch.as_tensor(data.c2w)
        o, d = pixel_rays(c2w, data.intrinsics)
        self.origins = o.reshape(-1, 3).to(device)
        self.dirs = d.reshape(-1, 3).to(device)
        self.rgb = torch.as_tensor(data.images).reshape(-1, 3).to(device)
        self.mask = torch.as_tensor(data.masks).reshape(-1).to(device)
        self.fg = torch.nonzero(self.mask > 0.5).squeeze(1)
        self.gen = torch.Generator(device=device).manual_seed(seed)

    def sample(self, n_random: int, n_fg: int, generator: torch.Generator | None) -> torch.Tensor:
        """(n_random + n_fg,) ray indices drawn with ``generator`` (None: the device's default generator,
        the one a CUDA graph may draw from)."""
        dev = self.origins.device
        idx = torch.randint(0, self.origins.shape[0], (n_random,), device=dev, generator=generator)
        if n_fg > 0 and self.fg.numel() > 0:
            j = torch.randint(0, self.fg.numel(), (n_fg,), device=dev, generator=generator)
            idx = torch.cat([idx, self.fg[j]])
        return idx


@contextlib.contextmanager
def deterministic_on_cpu(device: torch.device):
    """Deterministic kernels while training on the CPU (see module docstring); restores the setting."""
    before = torch.are_deterministic_algorithms_enabled()
    if device.type == "cpu":
        torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before)


def train_neus(data: ReconData, cfg: ReconConfig, progress: ProgressFn | None = None) -> TrainResult:
    """Train NeuS on ``data`` with ``cfg``; returns the fields (on ``cfg.device``).

    Raises:
        TrainingDivergedError: the loss became NaN/inf (the message names the step).
    """
    device = resolve_device(cfg.device)
    with deterministic_on_cpu(device):
        return _train(data, cfg, device, progress)


@dataclass(frozen=True)
class _Recipe:
    """How the training step runs, decided once from the config and the device.

    Eager (the default): the bank's own generator, fp16 colour net with a GradScaler on CUDA, float learning
    rates. Captured (``cfg.cuda_graph`` on CUDA with the Triton encoding): the step is recorded once as a
    CUDA graph and replayed; everything it reads per step lives on the device (schedules as 0-d tensors,
    learning rates as tensors of a capturable fused Adam, the loss slot index), rays come from the default
    CUDA generator (the one graphs may draw from), and the colour net runs in bf16 without a GradScaler
    (whose skip-a-step decision is made on the host).
    """

    captured: bool
    color_autocast: torch.dtype | None

    @classmethod
    def decide(cls, cfg: ReconConfig, device: torch.device, backend: str) -> "_Recipe":
        amp = bool(cfg.mixed_precision and device.type == "cuda")
        if cfg.cuda_graph and device.type == "cuda" and backend == "triton":
            return cls(True, torch.bfloat16 if amp else None)
        if cfg.cuda_graph:
            log.info("cuda_graph: needs CUDA and the Triton encoding (here %s, %s): training eagerly", device, backend)
        return cls(False, torch.float16 if amp else None)


class _StepInputs:
    """What one training step reads besides the networks: the schedules at this step, as device scalars
    filled before each step (``fill_`` launches a tiny kernel; nothing waits for the GPU)."""

    def __init__(self, device: torch.device) -> None:
        self.cos_anneal = CosAnneal.zeros(device)
        self.slot = torch.zeros(1, dtype=torch.int64, device=device)   # where the step writes its loss

    def set(self, step: int, cfg: ReconConfig, fields: NeuSFields) -> None:
        fields.sdf.set_progress(cfg.progressive_start_levels + step // max(1, cfg.progressive_level_steps))
        fields.variance.set_floor(inv_s_floor(step, cfg))
        self.cos_anneal.fill_(min(1.0, step / max(1, cfg.cos_anneal_steps)))
        self.slot.fill_(step)


def _train(data: ReconData, cfg: ReconConfig, device: torch.device, progress: ProgressFn | None) -> TrainResult:
    backend = resolve_backend(cfg.backend, device)
    torch.manual_seed(cfg.seed)
    fields = build_fields(cfg, backend).to(device)
    bank = _RayBank(data, device, cfg.seed)
    hull = carve_hull(data, cfg.hull_resolution, cfg.hull_tolerance, device) if cfg.hull_resolution else None
    if hull is not None:
        log.info("visual hull: %.1f %% of %d^3 cells occupied", 100 * float(hull.occupied.float().mean()),
                 hull.resolution)
    recipe = _Recipe.decide(cfg, device, backend)
    log.info("NeuS: %d views %dx%d, %d steps, hash-grid backend %s, device %s, colour net %s, step %s",
             data.n_views, data.intrinsics.width, data.intrinsics.height, cfg.steps, backend, device,
             recipe.color_autocast or "float32", "CUDA graph" if recipe.captured else "eager")

    enc_params = list(fields.sdf.encoding.parameters())
    enc_ids = {id(p) for p in enc_params}
    mlp_params = [p for p in fields.sdf.parameters() if id(p) not in enc_ids] + list(fields.color.parameters())
    groups = [(enc_params, cfg.lr), (mlp_params, cfg.lr), (list(fields.variance.parameters()), cfg.lr_variance)]
    if recipe.captured:
        opt = torch.optim.Adam([{"params": p, "lr": torch.tensor(lr, device=device)} for p, lr in groups],
                               betas=(0.9, 0.99), eps=1e-15, fused=True, capturable=True)
    else:
        opt = torch.optim.Adam([{"params": p, "lr": lr} for p, lr in groups], betas=(0.9, 0.99), eps=1e-15,
                               fused=device.type == "cuda")
    base_lrs = [lr for _, lr in groups]
    scaler = torch.amp.GradScaler(device.type, enabled=recipe.color_autocast is torch.float16)
    generator = None if recipe.captured else bank.gen
    inputs = _StepInputs(device)
    losses = torch.zeros(cfg.steps, device=device)

    def step_body(zero_grad: bool) -> None:
        """One step: draw rays, render, losses, backward, Adam (reads only device state: capturable)."""
        idx = bank.sample(cfg.rays_per_batch, cfg.foreground_rays_per_batch, generator)
        out = render_rays(fields, bank.origins[idx], bank.dirs[idx], n_samples=cfg.n_samples,
                          n_importance=cfg.n_importance, up_sample_steps=cfg.up_sample_steps,
                          cos_anneal_ratio=inputs.cos_anneal, perturb=True, color_autocast=recipe.color_autocast,
                          autocast_cache=not recipe.captured, hull=hull)
        loss_rgb = F.l1_loss(out.color, bank.rgb[idx])
        loss_eik = ((out.gradients.norm(dim=-1) - 1.0) ** 2).mean()
        o, m = out.opacity.clamp(1e-3, 1.0 - 1e-3), bank.mask[idx]
        loss_mask = -(m * torch.log(o) + (1.0 - m) * torch.log(1.0 - o)).mean()  # BCE; NaN-safe (no device assert)
        loss = loss_rgb + cfg.eikonal_weight * loss_eik + cfg.mask_weight * loss_mask
        losses.index_copy_(0, inputs.slot, loss.detach().reshape(1))
        if zero_grad:
            opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()

    def set_learning_rates(step: int) -> None:
        factor = lr_factor(step, cfg)
        for group, base in zip(opt.param_groups, base_lrs):
            if isinstance(group["lr"], torch.Tensor):
                group["lr"].fill_(base * factor)
            else:
                group["lr"] = base * factor

    graph = _StepGraph(step_body, lambda: opt.zero_grad(set_to_none=True), device, WARMUP_STEPS) \
        if recipe.captured else None
    history: list[tuple[int, float]] = []
    t0 = time.perf_counter()
    checked = 0
    for step in range(cfg.steps):
        inputs.set(step, cfg, fields)
        set_learning_rates(step)
        if graph is not None:
            graph.run()
        else:
            step_body(zero_grad=True)

        if (step + 1) % cfg.nan_check_every == 0 or step + 1 == cfg.steps:
            window = losses[checked:step + 1]
            bad = torch.nonzero(~torch.isfinite(window))
            if bad.numel():
                raise TrainingDivergedError(checked + int(bad[0, 0]))
            checked = step + 1
            latest = float(window[-1])
            history.append((step + 1, latest))
            if progress is not None:
                progress(step + 1, latest)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - t0
    return TrainResult(fields, device, backend, cfg.steps, seconds, history[-1][1], history, hull,
                       float(fields.variance.inv_s().detach()))


#: eager steps on a side stream before the capture (Triton compiles, autograd and Adam state are set up)
WARMUP_STEPS = 3


class _StepGraph:
    """Runs ``step_body`` eagerly for the first ``warmup`` steps (on a side stream, as CUDA graph capture
    requires), then captures one step and replays it for that and every later step. Gradients are set to
    None once before the capture (``zero_grad``): the captured backward then writes them afresh at each
    replay instead of adding to them."""

    def __init__(self, step_body: Callable[[bool], None], zero_grad: Callable[[], None], device: torch.device,
                 warmup: int) -> None:
        self.body, self.zero_grad, self.device, self.warmup = step_body, zero_grad, device, warmup
        self.done = 0
        self.graph: torch.cuda.CUDAGraph | None = None
        self.side = torch.cuda.Stream(device)

    def run(self) -> None:
        if self.graph is None and self.done < self.warmup:
            self.side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(self.side):
                self.body(True)
            torch.cuda.current_stream(self.device).wait_stream(self.side)
        else:
            if self.graph is None:
                self._capture()
            self.graph.replay()
        self.done += 1

    def _capture(self) -> None:
        torch.cuda.synchronize(self.device)
        graph = torch.cuda.CUDAGraph()
        self.zero_grad()
        with torch.cuda.graph(graph):
            self.body(False)
        self.graph = graph
