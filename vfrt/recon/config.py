"""Typed, validated configuration of a reconstruction (STYLE pattern 6).

:class:`ReconConfig` is frozen and validated once in ``__post_init__``. Build one with
:func:`ReconConfig.from_preset`, which starts from a named preset and applies overrides.

Defaults follow the spirit of ViewFusion's recon (SyncDreamer's instant-nsr-pl NeuS): 2000
steps, 3584 random rays + 512 foreground rays per batch, a 16-level hash grid.
"""
from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from typing import Literal

from vfrt.recon.errors import ConfigError

Backend = Literal["auto", "reference", "triton", "tcnn"]
ColourSource = Literal["views", "field"]
Preset = Literal["default", "quick"]
DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:\d+)?")

PRESETS: tuple[str, ...] = ("default", "quick")


@dataclass(frozen=True)
class HashGridConfig:
    """Multiresolution hash encoding (Müller et al. 2022, instant-ngp, eq. 2-3).

    Level ``l`` has resolution ``floor(base_resolution * b**l)`` with
    ``b = exp((ln finest_resolution - ln base_resolution) / (n_levels - 1))``.
    """

    n_levels: int = 16
    n_features_per_level: int = 2
    log2_hashmap_size: int = 19
    base_resolution: int = 16
    finest_resolution: int = 2048

    def __post_init__(self) -> None:
        if not 1 <= self.n_levels <= 32:
            raise ConfigError(f"hash grid n_levels must be in [1, 32], got {self.n_levels}")
        if self.n_features_per_level not in (1, 2, 4, 8):
            raise ConfigError(f"n_features_per_level must be 1, 2, 4 or 8, got {self.n_features_per_level}")
        if not 8 <= self.log2_hashmap_size <= 24:
            raise ConfigError(f"log2_hashmap_size must be in [8, 24], got {self.log2_hashmap_size}")
        if self.base_resolution < 2 or self.finest_resolution < self.base_resolution:
            raise ConfigError("need 2 <= base_resolution <= finest_resolution")

    @property
    def per_level_scale(self) -> float:
        if self.n_levels == 1:
            return 1.0
        return math.exp((math.log(self.finest_resolution) - math.log(self.base_resolution)) / (self.n_levels - 1))

    @property
    def resolutions(self) -> tuple[int, ...]:
        b = self.per_level_scale
        return tuple(int(math.floor(self.base_resolution * b**lvl + 1e-6)) for lvl in range(self.n_levels))

    @property
    def table_size(self) -> int:
        return 2**self.log2_hashmap_size

    @property
    def output_dim(self) -> int:
        return self.n_levels * self.n_features_per_level


@dataclass(frozen=True)
class ReconConfig:
    """Everything that changes a reconstruction. Units: world (object in the unit sphere)."""

    preset: Preset = "default"
    # data
    elevation_deg: float = 30.0  # used only when the input has no transforms.json (SPEC §8)
    image_size: int | None = None  # resize views to this square size (None: native)
    min_views: int = 4
    # optimisation
    steps: int = 2000
    rays_per_batch: int = 3584
    foreground_rays_per_batch: int = 512
    lr: float = 1e-2
    lr_variance: float = 1e-3
    warmup_steps: int = 200
    cos_anneal_steps: int = 500  # NeuS cos_anneal_ratio goes 0 -> 1 over these steps
    final_lr_factor: float = 0.05  # cosine annealing ends at lr * this
    eikonal_weight: float = 0.1
    mask_weight: float = 0.1
    variance_init: float = 0.3  # inv_s = exp(10 * variance)
    # sharpness schedule: inv_s >= a floor rising geometrically from start to end after warm-up (0: learned only)
    inv_s_floor_start: float = 0.0
    inv_s_floor_end: float = 0.0
    # sampling (NeuS hierarchical sampling, Wang et al. 2021 §3.4), inside the visual hull
    n_samples: int = 32
    n_importance: int = 32
    up_sample_steps: int = 2
    hull_resolution: int = 96  # occupancy grid carved from the masks (0: sample the whole unit sphere)
    hull_tolerance: float = 0.1  # a cell stays when at most this fraction of the views that see it disagree
    # networks
    hashgrid: HashGridConfig = HashGridConfig()
    backend: Backend = "auto"
    sdf_hidden: int = 64
    sdf_layers: int = 1
    feature_dim: int = 13
    color_hidden: int = 64
    color_layers: int = 2
    color_hashgrid: HashGridConfig | None = None  # the colour network's own position encoding (None: SDF features only)
    init_radius: float = 0.5  # geometric init: SDF of a sphere of this radius
    progressive_start_levels: int = 4  # coarse-to-fine: levels enabled at step 0
    progressive_level_steps: int = 100  # one more level every this many steps
    # numerics
    mixed_precision: bool = True  # fp16 autocast for the colour net on CUDA only (SDF stays fp32)
    cuda_graph: bool = False  # capture the training step as a CUDA graph (CUDA + Triton encoding; docs/RECON.md)
    nan_check_every: int = 25
    # mesh
    mc_resolution: int = 256  # samples along the longest side of the object's box
    mc_bound: float = 1.0
    min_component_fraction: float = 0.01  # drop pieces smaller than this fraction of the largest (floaters)
    flat_base: bool = True  # nothing below the lowest surface point a view sees (vfrt/recon/ground.py)
    colour_source: ColourSource = "views"  # bake from the views by visibility, or the radiance field
    texture_size: int = 0  # > 0: also a UV-textured .glb/.obj with a texture of this many texels a side
    turntable_frames: int = 24
    turntable_size: int = 256
    # misc
    device: str = "auto"  # auto, cpu, cuda or cuda:N
    seed: int = 0

    def __post_init__(self) -> None:
        checks: list[tuple[bool, str]] = [
            (self.steps >= 1, f"steps must be >= 1, got {self.steps}"),
            (self.rays_per_batch >= 1, "rays_per_batch must be >= 1"),
            (self.foreground_rays_per_batch >= 0, "foreground_rays_per_batch must be >= 0"),
            (math.isfinite(self.lr) and self.lr > 0, f"lr must be a positive number, got {self.lr}"),
            (math.isfinite(self.lr_variance) and self.lr_variance > 0, "lr_variance must be positive"),
            (self.warmup_steps >= 0, "warmup_steps must be >= 0"),
            (self.n_samples >= 2, "n_samples must be >= 2"),
            (self.n_importance >= 0, "n_importance must be >= 0"),
            (self.up_sample_steps >= 1, "up_sample_steps must be >= 1"),
            (self.n_importance % self.up_sample_steps == 0, "n_importance must be a multiple of up_sample_steps"),
            (self.min_views >= 1, "min_views must be >= 1"),
            (self.image_size is None or self.image_size >= 8, "image_size must be >= 8"),
            (-90.0 < self.elevation_deg < 90.0, f"elevation must be in (-90, 90) degrees, got {self.elevation_deg}"),
            (self.mc_resolution >= 16, "mc_resolution must be >= 16"),
            (self.mc_bound > 0, "mc_bound must be positive"),
            (0 < self.init_radius < 1, "init_radius must be in (0, 1)"),
            (self.nan_check_every >= 1, "nan_check_every must be >= 1"),
            (self.turntable_frames >= 0, "turntable_frames must be >= 0"),
            (self.sdf_layers >= 1 and self.color_layers >= 1, "networks need at least one hidden layer"),
            (0.0 <= self.inv_s_floor_start <= self.inv_s_floor_end <= 1e5,
             "need 0 <= inv_s_floor_start <= inv_s_floor_end <= 1e5"),
            (self.hull_resolution == 0 or 16 <= self.hull_resolution <= 512, "hull_resolution must be 0 or in [16, 512]"),
            (0.0 <= self.hull_tolerance < 1.0, "hull_tolerance must be in [0, 1)"),
            (0.0 <= self.min_component_fraction <= 1.0, "min_component_fraction must be in [0, 1]"),
            (self.colour_source in ("views", "field"), f"colour_source must be views or field, got {self.colour_source!r}"),
            (self.texture_size == 0 or 64 <= self.texture_size <= 8192, "texture_size must be 0 or in [64, 8192]"),
            (isinstance(self.device, str) and DEVICE_PATTERN.fullmatch(self.device) is not None,
             f"device must be auto, cpu, cuda or cuda:N, got {self.device!r}"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ConfigError(msg)

    @classmethod
    def from_preset(cls, preset: str = "default", **overrides) -> "ReconConfig":
        """A preset with ``overrides`` applied (``None`` values are ignored)."""
        if preset not in PRESETS:
            raise ConfigError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
        base = _PRESET_FIELDS[preset]
        fields = {**base, **{k: v for k, v in overrides.items() if v is not None}}
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(fields) - names)
        if unknown:
            raise ConfigError(f"unknown ReconConfig field(s): {', '.join(unknown)}")
        return cls(preset=preset, **fields)  # type: ignore[arg-type]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


_PRESET_FIELDS: dict[str, dict] = {
    # GPU: 256 px views, 1000 steps of 4096 rays; samples inside the visual hull; docs/RECON.md has the numbers.
    "default": dict(
        steps=1000,
        warmup_steps=100,
        cos_anneal_steps=300,
        n_samples=24,
        n_importance=24,
        progressive_level_steps=50,
        lr_variance=5e-3,
        inv_s_floor_start=30.0,
        inv_s_floor_end=2000.0,
        mask_weight=0.3,
        hull_resolution=128,
        color_hashgrid=HashGridConfig(n_levels=12, log2_hashmap_size=18, base_resolution=16, finest_resolution=1024),
    ),
    # CPU: 96 px views, a small grid, 600 steps of 320 rays (2-3 minutes on 2 idle CPU cores).
    "quick": dict(
        image_size=96,
        steps=600,
        rays_per_batch=256,
        foreground_rays_per_batch=64,
        warmup_steps=50,
        cos_anneal_steps=150,
        n_samples=16,
        n_importance=16,
        hashgrid=HashGridConfig(n_levels=8, log2_hashmap_size=15, base_resolution=8, finest_resolution=128),
        color_hashgrid=HashGridConfig(n_levels=6, log2_hashmap_size=14, base_resolution=8, finest_resolution=128),
        progressive_start_levels=3,
        progressive_level_steps=50,
        lr_variance=1e-2,
        inv_s_floor_start=20.0,
        inv_s_floor_end=600.0,
        mask_weight=0.3,
        hull_resolution=64,
        sdf_hidden=32,
        color_hidden=32,
        mc_resolution=128,
        turntable_frames=8,
        turntable_size=96,
    ),
}
