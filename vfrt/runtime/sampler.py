"""The sampler's settings in one validated value: :class:`SamplerConfig` (SPEC §3-§5 defaults).

It is made once (by the CLI from its options, or by an API caller) and passed whole from
``vfrt run`` to :func:`vfrt.runtime.run.run_to_folder` to :class:`vfrt.runtime.pipeline.Pipeline` and on
to the engine as a schedule and a guidance scale.

Noise modes (what is drawn per DDIM step for a target view with K references):

==========  ================================================================================
"exact"     K independent normal draws, one per reference (the original ``my_ddim``), drawn on
            the host from the seed (torch's CPU generator: the same seed draws them again) and recorded:
            ``vfrt run --save-noise`` writes them to ``noise.npz``, which replays bit-exactly.
"shared"    one draw shared by the K references (ViewFusion's real-image script,
            ``my_ddim_pred_e``); recorded and replayable.
"fast"      the weighted sum ``sum_k w_k n_k`` drawn directly on the device as one normal scaled
            by ``sqrt(sum_k w_k^2)``: the same distribution as "exact" (SPEC §6), no host draws,
            not replayable (no noise bank is written).
==========  ================================================================================
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, get_args

from vfrt.runtime.schedule import DDIMSchedule, ddim_timesteps, make_ddim_schedule

NoiseMode = Literal["exact", "shared", "fast"]


class SamplerConfigError(ValueError):
    """A sampler setting is out of range."""


@dataclass(frozen=True)
class SamplerConfig:
    """How each view is sampled.

    Attributes:
        steps: DDIM steps S (75 runs 76 UNet steps per view, as the original; >= 2).
        eta: DDIM eta (1 = DDPM-like noise, 0 = deterministic); >= 0.
        guidance: classifier-free guidance scale (1 = none); >= 0.
        inference_temp: tau_inf of the input view's weight (SPEC §5); > 0.
        auto_temp: tau_auto of the generated references' softmax; > 0 (the original's multi-input
            script uses 1.0: :meth:`for_mode`).
        seed: seed of every random draw of the run; >= 0.
        noise_mode: "exact", "shared" or "fast" (module docstring).
    """

    steps: int = 75
    eta: float = 1.0
    guidance: float = 3.0
    inference_temp: float = 0.5
    auto_temp: float = 0.5
    seed: int = 0
    noise_mode: NoiseMode = "exact"

    def __post_init__(self):
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 2:
            raise SamplerConfigError(f"steps must be an integer >= 2, got {self.steps!r}")
        try:
            ddim_timesteps(self.steps)   # counts the original discretisation cannot run
        except ValueError as exc:
            raise SamplerConfigError(str(exc)) from None
        for name, low, strict in (("eta", 0.0, False), ("guidance", 0.0, False), ("inference_temp", 0.0, True),
                                  ("auto_temp", 0.0, True)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                    or value < low or (strict and value == low):
                raise SamplerConfigError(f"{name} must be a finite number {'>' if strict else '>='} {low:g}, "
                                         f"got {value!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise SamplerConfigError(f"seed must be an integer >= 0, got {self.seed!r}")
        if self.noise_mode not in get_args(NoiseMode):
            raise SamplerConfigError(f"noise_mode must be one of {', '.join(get_args(NoiseMode))}, "
                                     f"got {self.noise_mode!r}")

    @classmethod
    def for_mode(cls, mode: Literal["orbit", "single", "multi"], **settings) -> "SamplerConfig":
        """The original script's defaults for a mode (auto_temp 1.0 for several inputs), then ``settings``."""
        defaults = {"auto_temp": 1.0} if mode == "multi" else {}
        return cls(**{**defaults, **settings})

    @property
    def replayable(self) -> bool:
        """True when the run's draws are recorded into a noise bank."""
        return self.noise_mode != "fast"

    def schedule(self, model_schedule) -> DDIMSchedule:
        """The DDIM schedule for a model's training schedule (:class:`vfrt.models.ScheduleConfig`)."""
        return make_ddim_schedule(self.steps, self.eta, num_train_timesteps=model_schedule.timesteps,
                                  linear_start=model_schedule.linear_start, linear_end=model_schedule.linear_end)
