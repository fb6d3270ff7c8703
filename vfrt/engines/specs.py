"""One spec per network an engine runs: its inputs and outputs, their dtypes, its dynamic axes.

The networks (:class:`Networks`, built from a loaded Zero123 by :func:`build_networks`) are the
single source of truth: the torch executors call them, the exporters trace them, the tests compare
every backend with them. A :class:`NetworkSpec` describes one of them without running it, so an
executor can check what it is given, an exporter can name graph inputs and size optimisation
profiles, and a test can draw fresh inputs (:meth:`NetworkSpec.sample_inputs`).

=================  ======================================================  ===========================
network            inputs -> outputs                                       dynamic axes
=================  ======================================================  ===========================
``clip_image``     image (B, 3, H, W) f32 -> embedding (B, D) f32          batch
``vae_encoder``    image (B, 3, H, W) f32 -> latent (B, 4, h, w) f32       batch
``vae_decoder``    latent (B, 4, h, w) f32 -> image (B, 3, H, W) f32       batch
``conditioning``   clip (R, D), pose (R, 4), latent (R, 4, h, w),          rows
                   keep (R,) f32 -> consts (R, A), h0 (R, C0, h, w)
``time_embedding`` timesteps (S,) i64 -> emb (S, E)                        steps
``unet_step``      x (R, 4, h, w) f32, h0 (R, C0, h, w), emb (1, E),        rows
                   consts (R, A) -> eps (R, 4, h, w)
=================  ======================================================  ===========================

Tensors not marked f32/i64 are in the engine's compute precision. ``R`` = K + 1 rows (K references
plus the unconditional row); by default K <= 25, what a 36-view orbit needs (``max_refs``).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Literal, Mapping

import torch
from torch import nn

from vfrt.engines.encoders import ClipImage, VaeDecoder, VaeEncoder
from vfrt.engines.unet_rewrite import Conditioning, TimeEmbedding, UNetStep, prepare_unet

NETWORK_NAMES = ("clip_image", "vae_encoder", "vae_decoder", "conditioning", "time_embedding", "unet_step")
#: references a 36-view orbit needs at most (the input + 24 generated views within 125 degrees)
DEFAULT_MAX_REFS = 25
#: images per call of the per-view networks an engine is built for
DEFAULT_MAX_BATCH = 8

ProfilePoint = Literal["min", "opt", "max"]


class SpecMismatchError(ValueError):
    """Inputs handed to a network do not fit its spec (names, dtypes or shapes)."""


@dataclass(frozen=True)
class AxisRange:
    """Sizes a dynamic axis takes: an engine is built for ``min..max`` and tuned for ``opt``."""

    min: int
    opt: int
    max: int

    def __post_init__(self):
        if not 1 <= self.min <= self.opt <= self.max:
            raise ValueError(f"need 1 <= min <= opt <= max, got {self.min}, {self.opt}, {self.max}")


@dataclass(frozen=True)
class TensorSpec:
    """One input or output: ``shape`` entries are sizes or the name of a dynamic axis."""

    name: str
    shape: tuple[int | str, ...]
    dtype: torch.dtype


@dataclass(frozen=True)
class NetworkSpec:
    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    axes: tuple[tuple[str, AxisRange], ...]

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.inputs)

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.outputs)

    def axis(self, name: str) -> AxisRange:
        return dict(self.axes)[name]

    def shape(self, tensor: TensorSpec, sizes: Mapping[str, int]) -> tuple[int, ...]:
        """``tensor``'s concrete shape for the given axis sizes."""
        return tuple(sizes[d] if isinstance(d, str) else d for d in tensor.shape)

    def sizes_at(self, point: ProfilePoint) -> dict[str, int]:
        """Every dynamic axis at its min, opt or max size."""
        return {name: getattr(rng, point) for name, rng in self.axes}

    def input_shapes(self, point: ProfilePoint) -> dict[str, tuple[int, ...]]:
        sizes = self.sizes_at(point)
        return {t.name: self.shape(t, sizes) for t in self.inputs}

    def dynamic_dims(self, tensor: TensorSpec) -> dict[int, str]:
        """{dimension index: axis name} of a tensor's dynamic dimensions."""
        return {i: d for i, d in enumerate(tensor.shape) if isinstance(d, str)}

    def check_inputs(self, inputs: Mapping[str, torch.Tensor]) -> dict[str, int]:
        """Raise :class:`SpecMismatchError` unless ``inputs`` fit; returns the axis sizes they imply."""
        if set(inputs) != set(self.input_names):
            raise SpecMismatchError(f"{self.name} takes inputs {list(self.input_names)}, got {sorted(inputs)}")
        sizes: dict[str, int] = {}
        for t in self.inputs:
            value = inputs[t.name]
            if value.dtype != t.dtype:
                raise SpecMismatchError(f"{self.name}.{t.name}: dtype {value.dtype}, expected {t.dtype}")
            if value.dim() != len(t.shape):
                raise SpecMismatchError(f"{self.name}.{t.name}: shape {tuple(value.shape)}, expected {t.shape}")
            for got, want in zip(value.shape, t.shape):
                if isinstance(want, str):
                    if sizes.setdefault(want, int(got)) != got:
                        raise SpecMismatchError(f"{self.name}: axis {want!r} is {sizes[want]} in one input and {got} "
                                                f"in {t.name}")
                elif got != want:
                    raise SpecMismatchError(f"{self.name}.{t.name}: shape {tuple(value.shape)}, expected {t.shape}")
        for name, size in sizes.items():
            rng = self.axis(name)
            if not rng.min <= size <= rng.max:
                raise SpecMismatchError(f"{self.name}: {name} = {size} is outside the built range {rng.min}..{rng.max}")
        return sizes

    def sample_inputs(self, sizes: Mapping[str, int] | None = None, *, device="cpu",
                      generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Fresh random inputs of realistic range (opt sizes unless given), on ``device``.

        Images are uniform in [-1, 1], timesteps uniform in 1..999, ``keep`` is 0 on row 0 (the
        unconditional row) and 1 elsewhere, everything else standard normal (``emb``/``consts``/``h0``
        scaled by 0.5, the order of their real values).
        """
        sizes = {**self.sizes_at("opt"), **(sizes or {})}
        out = {}
        for t in self.inputs:
            shape = self.shape(t, sizes)
            if t.name == "image":
                value = torch.rand(shape, generator=generator) * 2 - 1
            elif t.name == "timesteps":
                value = torch.randint(1, 1000, shape, generator=generator)
            elif t.name == "keep":
                value = torch.ones(shape)
                value[0] = 0.0
            else:
                value = torch.randn(shape, generator=generator)
                if t.name in ("emb", "consts", "h0"):
                    value = value * 0.5
            out[t.name] = value.to(device=device, dtype=t.dtype)
        return out


@dataclass
class Networks:
    """The six networks of one engine (see the module table), sharing one set of weights."""

    clip_image: ClipImage
    vae_encoder: VaeEncoder
    vae_decoder: VaeDecoder
    conditioning: Conditioning
    time_embedding: TimeEmbedding
    unet_step: UNetStep
    latent_size: int
    image_size: int

    def module(self, name: str) -> nn.Module:
        if name not in NETWORK_NAMES:
            raise KeyError(f"unknown network {name!r}; one of {', '.join(NETWORK_NAMES)}")
        return getattr(self, name)

    def specs(self, max_refs: int = DEFAULT_MAX_REFS, max_batch: int = DEFAULT_MAX_BATCH) -> dict[str, NetworkSpec]:
        """The spec of every network, with ``rows`` up to ``max_refs + 1`` and ``batch`` up to ``max_batch``."""
        if max_refs < 1 or max_batch < 1:
            raise ValueError(f"max_refs and max_batch must be >= 1, got {max_refs} and {max_batch}")
        dtype = self.unet_step.first_conv_x.dtype
        f32, i64 = torch.float32, torch.int64
        lat, img = self.latent_size, self.image_size
        channels = self.unet_step.latent_channels
        c0 = self.unet_step.first_conv_x.shape[0]
        dim = self.clip_image.clip.output_dim
        rows = (("rows", AxisRange(1, max(1, (max_refs + 2) // 2), max_refs + 1)),)
        batch = (("batch", AxisRange(1, 1, max_batch)),)
        image = TensorSpec("image", ("batch", 3, img, img), f32)
        latent_b = TensorSpec("latent", ("batch", channels, lat, lat), f32)
        h0 = TensorSpec("h0", ("rows", c0, lat, lat), dtype)
        consts = TensorSpec("consts", ("rows", self.conditioning.width), dtype)
        return {
            "clip_image": NetworkSpec("clip_image", (image,), (TensorSpec("embedding", ("batch", dim), f32),), batch),
            "vae_encoder": NetworkSpec("vae_encoder", (image,), (latent_b,), batch),
            "vae_decoder": NetworkSpec("vae_decoder", (latent_b,), (image,), batch),
            "conditioning": NetworkSpec(
                "conditioning",
                (TensorSpec("clip", ("rows", dim), f32), TensorSpec("pose", ("rows", 4), f32),
                 TensorSpec("latent", ("rows", channels, lat, lat), f32), TensorSpec("keep", ("rows",), f32)),
                (consts, h0), rows),
            "time_embedding": NetworkSpec(
                "time_embedding", (TensorSpec("timesteps", ("steps",), i64),),
                (TensorSpec("emb", ("steps", self.time_embedding.width), dtype),), (("steps", AxisRange(1, 76, 1000)),)),
            "unet_step": NetworkSpec(
                "unet_step",
                (TensorSpec("x", ("rows", channels, lat, lat), f32), h0, TensorSpec("emb", (1, self.time_embedding.width), dtype),
                 consts),
                (TensorSpec("eps", ("rows", channels, lat, lat), dtype),), rows),
        }


def build_networks(model, device, dtype: torch.dtype, vae_dtype: torch.dtype, *, channels_last: bool,
                   attention: str = "auto", fused_geglu: bool = False, triton_conv: bool = False,
                   copy_weights: bool = True) -> Networks:
    """The engine networks of a loaded :class:`vfrt.models.Zero123`, on ``device``.

    UNet and CLIP run in ``dtype``, the VAE in ``vae_dtype``, the camera projection in float32.
    ``copy_weights=False`` converts the model's modules in place (no second host copy of a 15 GB
    checkpoint when the caller owns the model); otherwise ``model`` is left untouched.
    """
    own = (lambda m: copy.deepcopy(m)) if copy_weights else (lambda m: m)
    device = torch.device(device)
    unet = prepare_unet(model.unet, device, dtype, channels_last, copy_weights=copy_weights)
    projection = own(model.cc_projection).to(device, torch.float32)
    clip = own(model.clip).to(device, dtype)
    vae = own(model.vae).to(device, vae_dtype)
    for m in (projection, clip, vae):
        m.eval().requires_grad_(False)
    return Networks(
        clip_image=ClipImage(clip), vae_encoder=VaeEncoder(vae),
        vae_decoder=VaeDecoder(vae, model.config.schedule.scale_factor),
        conditioning=Conditioning(unet, projection), time_embedding=TimeEmbedding(unet),
        unet_step=UNetStep(unet, attention=attention, fused_geglu=fused_geglu, triton_conv=triton_conv),
        latent_size=int(model.config.unet.image_size), image_size=int(model.config.unet.image_size) * 8)
