"""``JobSettings``: what a client asks for besides the photos - one model for the API form, the
page and ``job.json``.

Field names and defaults are ``vfrt run``'s options (the original's defaults: 36 views, 75 DDIM
steps, guidance 3, eta 1, temperatures 0.5). The values are validated by the runtime's own configs
(:class:`~vfrt.runtime.run.RunConfig`, :class:`~vfrt.runtime.sampler.SamplerConfig`) in
:meth:`JobSettings.run_config`, so the server accepts exactly what ``vfrt run`` accepts, within
the server's limits on views and steps.
"""
from __future__ import annotations

from typing import Any, Sequence

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from vfrt.runtime.run import Mode, RunConfig
from vfrt.runtime.sampler import NoiseMode, SamplerConfig
from vfrt.runtime.segment import SegmentMethod
from vfrt.serve.errors import SettingsError


class JobSettings(BaseModel):
    """The settings of one job (multipart form fields of ``POST /api/jobs``)."""

    model_config = ConfigDict(frozen=True)

    mode: Mode = Field("orbit", description="orbit: a 360-degree orbit; single: one target pose; multi: an orbit "
                                            "from the photo plus extra input views (extra_images + extra_poses).")
    views: int = Field(36, description="Views in the orbit, input included.")
    generate: int | None = Field(None, description="Stop the orbit after this many generated views.")
    polar: float = Field(0.0, description="Single mode: polar delta in degrees (negative = up).")
    azimuth: float = Field(0.0, description="Single mode: azimuth delta in degrees.")
    radius: float = Field(0.0, description="Single mode: radius delta.")
    extra_poses: list[str] = Field(default_factory=list, description="Multi mode: 'POLAR,AZIMUTH[,RADIUS]' "
                                   "(degrees, relative to the photo) of each extra image, in order.")
    steps: int = Field(75, description="DDIM steps (75 runs 76 UNet steps per view, as the original).")
    guidance: float = Field(3.0, description="Classifier-free guidance scale.")
    eta: float = Field(1.0, description="DDIM eta.")
    inference_temp: float = Field(0.5, description="Temperature of the input view's weight.")
    auto_temp: float | None = Field(None, description="Temperature of the generated references [0.5; 1.0 in multi mode].")
    seed: int = Field(0, description="Seed of every random draw (same seed + settings + photo = same views).")
    noise_mode: NoiseMode = Field("exact", description="exact (replayable, the original), shared, or fast.")
    segment: SegmentMethod = Field("auto", description="How to find the object in a photo without alpha.")
    preprocess: bool = Field(True, description="Zero123's crop and recentre of the object.")
    elevation: float = Field(30.0, description="Elevation of the input camera above the horizon, degrees.")
    low_ring: int = Field(0, description="Orbit mode: this many more views on a second ring below the orbit, so "
                                         "that a reconstruction sees under the object (0: none).")
    low_ring_polar: float = Field(45.0, description="How many degrees below the input's elevation the low ring is.")
    reconstruct: bool = Field(False, description="Also reconstruct a mesh once the views are done.")

    @classmethod
    def parse(cls, values: dict[str, Any]) -> "JobSettings":
        """Build from plain values (the page's widgets), as a :class:`SettingsError` on bad ones."""
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
            raise SettingsError(problems) from None

    def poses(self) -> list[tuple[float, float, float]]:
        """``extra_poses`` as (polar, azimuth, radius) degrees, one per extra image."""
        out = []
        for text in self.extra_poses:
            try:
                nums = [float(x) for x in text.replace(" ", "").split(",")]
            except ValueError:
                nums = []
            if len(nums) not in (2, 3):
                raise SettingsError(f"extra pose {text!r}: expected POLAR,AZIMUTH[,RADIUS] in degrees")
            out.append((nums[0], nums[1], nums[2] if len(nums) == 3 else 0.0))
        return out

    def run_config(self, extra_paths: Sequence[str] = (), *, max_views: int | None = None,
                   max_steps: int | None = None) -> RunConfig:
        """The :class:`RunConfig` of these settings with the extra images at ``extra_paths``.

        Raises:
            SettingsError: a value out of range (the runtime's message), beyond the server's
                ``max_views`` / ``max_steps``, or extra images and poses that do not pair up.
        """
        poses = self.poses()
        if self.mode == "multi":
            if len(poses) != len(extra_paths):
                raise SettingsError(f"multi mode pairs each extra image with one extra pose: got "
                                    f"{len(extra_paths)} image(s) and {len(poses)} pose(s)")
            extras = tuple((str(p), *pose) for p, pose in zip(extra_paths, poses))
        elif extra_paths or poses:
            raise SettingsError(f"extra images and poses are for mode 'multi', not {self.mode!r}")
        else:
            extras = ()
        if max_views is not None and self.mode != "single" and self.views > max_views:
            raise SettingsError(f"views must be <= {max_views} on this server, got {self.views}")
        if max_steps is not None and self.steps > max_steps:
            raise SettingsError(f"steps must be <= {max_steps} on this server, got {self.steps}")
        try:
            sampler = SamplerConfig.for_mode(self.mode, steps=self.steps, eta=self.eta, guidance=self.guidance,
                                             inference_temp=self.inference_temp, seed=self.seed,
                                             noise_mode=self.noise_mode,
                                             **({} if self.auto_temp is None else {"auto_temp": self.auto_temp}))
            cfg = RunConfig(mode=self.mode, views=self.views, generate=self.generate, delta_polar=self.polar,
                            delta_azimuth=self.azimuth, delta_radius=self.radius, elevation=self.elevation,
                            preprocess=self.preprocess, extra_inputs=extras, sampler=sampler, segment=self.segment,
                            low_ring=self.low_ring, low_ring_polar=self.low_ring_polar)
        except ValueError as exc:
            raise SettingsError(str(exc)) from None
        if max_views is not None and cfg.generated_views > max_views - 1:   # e.g. a single pose far away
            raise SettingsError(f"this job would generate {cfg.generated_views} views; this server generates at "
                                f"most {max_views - 1} per job")
        return cfg
