"""Engine directories: manifest round trip, every check that keeps a bad directory from loading, the
cache key and lookup policy, and checkpoint fingerprints computed once. Artifacts come from the
'fake' backend (tests/conftest.py), so nothing here compiles; the AOTInductor build is tested in
tests/export/test_aoti_engines.py."""
import dataclasses
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from vfrt.engines import engine_dir, fingerprint
from vfrt.engines.config import EngineConfig, EngineConfigError
from vfrt.engines.engine_cache import checkpoint_entry, engine_key, select_engines
from vfrt.engines.engine_dir import (CorruptEngineError, EngineMismatchError, Manifest, Platform, check_engine_dir,
                                     load_engine, read_manifest, write_manifest)
from vfrt.engines.fingerprint import DigestIndex, JsonStore, sha256_file
from vfrt.engines.specs import SpecMismatchError
from vfrt.export.build import BuildConfig, build_engines


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A cache of this module's own (the session's stays free of fake engines)."""
    with pytest.MonkeyPatch.context() as mp:
        path = tmp_path_factory.mktemp("engine_dir_cache")
        mp.setenv("VFRT_CACHE_DIR", str(path))
        yield path


@pytest.fixture(scope="module")
def built(cache, fake_backend, tiny_checkpoint):
    return build_engines(tiny_checkpoint.ckpt, BuildConfig(backend="fake", device="cpu", max_refs=6),
                         config=tiny_checkpoint.yaml)


@pytest.fixture
def copy(built, tmp_path):
    """A private copy of the built engine directory (outside the cache) to damage."""
    target = tmp_path / "engines"
    shutil.copytree(built.directory, target)
    return target


def _edit_manifest(directory: Path, change) -> None:
    data = json.loads((directory / "manifest.json").read_text())
    change(data)
    (directory / "manifest.json").write_text(json.dumps(data))


def test_the_build_lands_in_the_cache_under_its_key(built, cache, tiny_checkpoint):
    m = built.manifest
    assert not built.reused and built.directory.parent == cache / "engines"
    entry = checkpoint_entry(tiny_checkpoint.ckpt, use_ema=True, config=tiny_checkpoint.yaml)
    assert built.directory.name == engine_key(entry, backend="fake", precision="float32", platform=Platform.here(
        torch.device("cpu")), max_refs=6, max_batch=8)
    assert m.checkpoint.fingerprint == sha256_file(tiny_checkpoint.ckpt) and m.checkpoint.use_ema
    assert m.backend == "fake" and m.backend_version == "fake 1" and m.platform.torch == torch.__version__
    assert [n.name for n in m.networks] == list(engine_dir.NETWORK_NAMES)
    assert all(n.max_error == 0.0 for n in m.networks)         # verified: eager vs eager
    for n in m.networks:
        assert (built.directory / n.file).stat().st_size == n.size and sha256_file(built.directory / n.file) == n.sha256
    assert m.zero123_config() == tiny_checkpoint.config.with_clip(m.zero123_config().clip)
    assert not list(cache.joinpath("engines").glob(".*tmp*"))      # nothing temporary left


def test_manifest_round_trip_reproduces_the_specs(built, tiny_model):
    from vfrt.engines.specs import build_networks
    again = Manifest.from_json(built.manifest.to_json())
    assert again == built.manifest
    nets = build_networks(tiny_model, "cpu", torch.float32, torch.float32, channels_last=False)
    assert again.specs() == nets.specs(max_refs=6, max_batch=8)


def test_second_build_reuses_and_force_rebuilds(built, tiny_checkpoint):
    again = build_engines(tiny_checkpoint.ckpt, BuildConfig(backend="fake", device="cpu", max_refs=6),
                          config=tiny_checkpoint.yaml)
    assert again.reused and again.directory == built.directory and again.manifest == built.manifest


@pytest.mark.parametrize("damage, match", [
    (lambda d: (d / "manifest.json").write_text("{not json"), "manifest.json is corrupt"),
    (lambda d: (d / "manifest.json").unlink(), "no readable manifest.json"),
    (lambda d: _edit_manifest(d, lambda m: m.pop("platform")), "missing field 'platform'"),
    (lambda d: _edit_manifest(d, lambda m: m.__setitem__("schema", 99)), "schema 99"),
    (lambda d: _edit_manifest(d, lambda m: m["networks"].pop()), "expected"),
    (lambda d: _edit_manifest(d, lambda m: m["networks"][0]["inputs"][0].__setitem__("dtype", "float99")),
     "unknown dtype"),
])
def test_a_corrupt_manifest_is_reported_with_the_rebuild(copy, damage, match):
    damage(copy)
    with pytest.raises(CorruptEngineError, match=match) as info:
        load_engine(copy)
    assert "rebuild with: vfrt build-engines" in str(info.value)


def test_truncated_missing_and_altered_artifacts_are_refused(copy, built):
    files = [copy / n.file for n in built.manifest.networks]
    with open(files[0], "r+b") as f:
        f.truncate(10)
    files[1].unlink()
    data = bytearray(files[2].read_bytes())
    data[5] ^= 0xFF
    files[2].write_bytes(bytes(data))                   # same size, other bytes, new mtime
    with pytest.raises(CorruptEngineError) as info:
        load_engine(copy)
    msg = str(info.value)
    assert "has 10 bytes" in msg and "truncated" in msg and "is missing" in msg and "altered" in msg
    assert f"--out {copy}" in msg and "--backend fake --precision fp32 --device cpu --max-refs 6" in msg


def test_engines_of_another_machine_or_software_are_refused_listing_every_mismatch(copy):
    def change(m):
        m["platform"].update(torch="1.0.0", vfrt="0.0.1")
        m["backend_version"] = "fake 0"
    _edit_manifest(copy, change)
    with pytest.raises(EngineMismatchError) as info:
        load_engine(copy)
    assert len(info.value.problems) == 3
    msg = str(info.value)
    assert "built with torch 1.0.0" in msg and "vfrt 0.0.1" in msg and "fake fake 0 built it, fake 1" in msg
    assert info.value.rebuild.startswith("vfrt build-engines -c ")
    _edit_manifest(copy, lambda m: m["platform"].update(device="cuda", gpu_name="NVIDIA H200", compute_capability="9.0"))
    with pytest.raises(EngineMismatchError, match="built for cuda, this run is on cpu"):
        load_engine(copy, EngineConfig(device="cpu"))
    if not torch.cuda.is_available():
        with pytest.raises(EngineMismatchError, match=r"the fake engines run on a CUDA GPU \(NVIDIA H200, compute "
                                                      r"capability 9\.0\), and PyTorch sees none on this machine"):
            load_engine(copy)                      # the device follows the engines: CUDA, absent here


def test_requested_options_the_engines_cannot_honour(built):
    with pytest.raises(EngineMismatchError, match="compile=True asks for the PyTorch path"):
        check_engine_dir(built.directory, EngineConfig(device="cpu", compile=True))
    with pytest.raises(EngineMismatchError, match="dtype=bfloat16 was asked, the engines compute in float32"):
        check_engine_dir(built.directory, EngineConfig(device="cpu", dtype="bfloat16"))
    with pytest.raises(EngineConfigError, match="backend='reference' runs in PyTorch"):
        EngineConfig(backend="reference", engines=built.directory)
    with pytest.raises(EngineConfigError, match="engines must be"):
        EngineConfig(engines=3)
    assert EngineConfig(engines=str(built.directory)).engines == built.directory


def test_a_loaded_engine_runs_like_the_torch_path(built, tiny_model):
    from vfrt.runtime.pipeline import Pipeline
    from vfrt.runtime.sampler import SamplerConfig
    image = torch.rand((1, 3, 64, 64), generator=torch.Generator().manual_seed(0)) * 2 - 1
    sampler = SamplerConfig(steps=4, seed=2)
    pipe = Pipeline.from_engines(built.directory)
    assert pipe.engine.describe()["engines"]["dir"] == str(built.directory) and pipe.resolution == 64
    out = pipe.orbit(image, views=8, generate=3, sampler=sampler, preprocess=False)
    ref = Pipeline(tiny_model, EngineConfig(device="cpu")).orbit(image, views=8, generate=3, sampler=sampler,
                                                                 noise=out.noise, preprocess=False)
    np.testing.assert_allclose(out.images, ref.images, atol=1e-6)


def test_a_view_beyond_the_built_rows_says_how_to_rebuild(built):
    from vfrt.engines.base import ViewEncoding
    from vfrt.runtime.schedule import make_ddim_schedule
    engine = load_engine(built.directory)
    refs = [ViewEncoding(torch.zeros(1, 32), torch.zeros(1, 4, 8, 8))] * 7
    with pytest.raises(SpecMismatchError, match=r"needs 8 UNet rows.*at most 7.*--max-refs 7"):
        engine.bind(refs, torch.zeros(7, 4), torch.full((7,), 1 / 7), make_ddim_schedule(4, 1.0), 3.0)


def test_a_generation_beyond_the_built_rows_is_refused_before_any_view(built):
    """A low ring of 6 views 30 degrees down after an 8-view orbit needs up to 10 references (11 rows): the
    engines take 7, so the generation stops before its first view, with the rebuild command."""
    from vfrt.runtime.pipeline import Pipeline
    from vfrt.runtime.sampler import SamplerConfig
    image = torch.rand((1, 3, 64, 64), generator=torch.Generator().manual_seed(0)) * 2 - 1
    pipe = Pipeline.from_engines(built.directory)
    made = []
    with pytest.raises(SpecMismatchError, match=r"needs 11 UNet rows.*at most 7.*--max-refs 10"):
        pipe.orbit(image, views=8, low_ring=6, low_ring_polar=30.0, sampler=SamplerConfig(steps=4, seed=2),
                   preprocess=False, on_view=lambda v, im, plan: made.append(v))
    assert made == []


# ------------------------------------------------------------------------------------------ the policy
def test_auto_finds_the_engines_of_the_checkpoint(built, tiny_checkpoint):
    chosen = select_engines(tiny_checkpoint.ckpt, EngineConfig(device="cpu"), config=tiny_checkpoint.yaml)
    assert chosen.note is None and chosen.engine.source.directory == built.directory
    for requested, kwargs in [(EngineConfig(device="cpu", engines="off"), {}),
                              (EngineConfig(device="cpu", backend="reference"), {}),
                              (EngineConfig(device="cpu"), {"use_ema": False}),
                              (EngineConfig(device="cpu"), {"config": None})]:
        kwargs = {"config": tiny_checkpoint.yaml, **kwargs}
        chosen = select_engines(tiny_checkpoint.ckpt, requested, **kwargs)
        assert chosen.engine is None and chosen.note is None, (requested, kwargs)


def test_auto_does_not_hash_unrelated_checkpoints(built, tmp_path, monkeypatch):
    other = tmp_path / "other.ckpt"
    other.write_bytes(b"x" * 1000)
    monkeypatch.setattr(fingerprint, "sha256_file", lambda path: pytest.fail(f"hashed {path}"))
    assert select_engines(other, EngineConfig(device="cpu")).engine is None


def test_auto_falls_back_with_one_note_when_found_engines_do_not_fit(built, tiny_checkpoint, tmp_path, monkeypatch):
    root = tmp_path / "cache"
    shutil.copytree(built.directory, root / "engines" / built.directory.name)
    _edit_manifest(root / "engines" / built.directory.name, lambda m: m["platform"].update(torch="1.0.0"))
    monkeypatch.setenv("VFRT_CACHE_DIR", str(root))
    chosen = select_engines(tiny_checkpoint.ckpt, EngineConfig(device="cpu"), config=tiny_checkpoint.yaml)
    assert chosen.engine is None
    assert "\n" not in chosen.note and "built with torch 1.0.0" in chosen.note and "rebuild with: vfrt build-engines" \
        in chosen.note and chosen.note.endswith("running the PyTorch path")


def test_auto_skips_engines_for_another_device_kind_quietly(built, tiny_checkpoint, tmp_path, monkeypatch):
    root = tmp_path / "cache"
    shutil.copytree(built.directory, root / "engines" / "gpu")
    _edit_manifest(root / "engines" / "gpu", lambda m: m["platform"].update(device="cuda", gpu_name="NVIDIA H200",
                                                                            compute_capability="9.0"))
    monkeypatch.setenv("VFRT_CACHE_DIR", str(root))
    chosen = select_engines(tiny_checkpoint.ckpt, EngineConfig(device="cpu"), config=tiny_checkpoint.yaml)
    assert chosen.engine is None and chosen.note is None        # built for another kind of run, not a mismatch


def test_explicit_engines_must_fit_the_given_weights(built, tiny_checkpoint, tmp_path):
    from vfrt.models import write_tiny_checkpoint
    other = write_tiny_checkpoint(tmp_path / "other", seed=1)
    with pytest.raises(EngineMismatchError, match="built from other weights"):
        select_engines(other.ckpt, EngineConfig(device="cpu", engines=built.directory), config=other.yaml)
    with pytest.raises(EngineMismatchError, match="built with the EMA weights"):
        select_engines(tiny_checkpoint.ckpt, EngineConfig(device="cpu", engines=built.directory), use_ema=False,
                       config=tiny_checkpoint.yaml)
    chosen = select_engines(tiny_checkpoint.ckpt, EngineConfig(device="cpu", engines=built.directory),
                            config=tiny_checkpoint.yaml)
    assert chosen.engine.source.directory == built.directory


def test_from_checkpoint_uses_built_engines_unless_told_not_to(built, tiny_checkpoint):
    from vfrt.runtime.pipeline import Pipeline
    pipe = Pipeline.from_checkpoint(tiny_checkpoint.ckpt, tiny_checkpoint.yaml, engine=EngineConfig(device="cpu"))
    assert pipe.engine.source.directory == built.directory
    pipe = Pipeline.from_checkpoint(tiny_checkpoint.ckpt, tiny_checkpoint.yaml,
                                    engine=EngineConfig(device="cpu", engines="off"))
    assert getattr(pipe.engine, "source", None) is None


def test_from_engines_without_built_engines_says_how_to_build_them(tmp_path):
    from vfrt.runtime.pipeline import Pipeline
    ckpt = tmp_path / "weights.ckpt"
    ckpt.write_bytes(b"0" * 100)
    with pytest.raises(engine_dir.EngineError, match=f"no built engines for {ckpt}.*vfrt build-engines -c {ckpt}"):
        Pipeline.from_engines(ckpt)
    with pytest.raises(CorruptEngineError, match="has no readable manifest.json"):
        Pipeline.from_engines(tmp_path)           # a folder that is neither engines nor diffusers weights


# ------------------------------------------------------------------------------------------ fingerprints
def test_digests_are_computed_once_per_file_state(tmp_path, monkeypatch):
    calls = []
    real = fingerprint.sha256_file
    monkeypatch.setattr(fingerprint, "sha256_file", lambda p: calls.append(p) or real(p))
    index = DigestIndex(tmp_path / "index.json")
    f = tmp_path / "weights.bin"
    f.write_bytes(b"a" * 1000)
    first = index.digest(f)
    assert index.digest(f) == first and DigestIndex(tmp_path / "index.json").digest(f) == first and len(calls) == 1
    f.write_bytes(b"b" * 1000)
    os.utime(f, ns=(1, 1))                              # another state of the same path
    assert index.digest(f) != first and len(calls) == 2
    assert len(JsonStore(tmp_path / "index.json").read()) == 1     # the stale entry was dropped
    folder = tmp_path / "folder"
    (folder / "sub").mkdir(parents=True)
    (folder / "a").write_text("1")
    (folder / "sub" / "b").write_text("2")
    d = index.digest(folder)
    (folder / "sub" / "b").write_text("3")
    assert index.digest(folder) != d and index.total_size(folder) == 2


def test_a_corrupt_or_unwritable_index_only_costs_a_rehash(tmp_path):
    path = tmp_path / "index.json"
    path.write_text("[broken")
    f = tmp_path / "w.bin"
    f.write_bytes(b"w")
    assert DigestIndex(path).digest(f) == sha256_file(f)
    unwritable = DigestIndex(f / "index.json")          # its folder would be a file: no cache, same answer
    assert unwritable.digest(f) == sha256_file(f) and unwritable.lookup(f) is None


def test_engine_key_changes_with_every_choice(built):
    m = built.manifest
    base = dict(backend="aoti", precision="float16", platform=dataclasses.replace(m.platform, device="cuda",
                compute_capability="9.0", gpu_name="H200"), max_refs=25, max_batch=8)
    key = engine_key(m.checkpoint, **base)
    assert key.startswith(m.checkpoint.fingerprint[:12] + "-aoti-fp16-sm90-r25-")
    variants = [dict(precision="bfloat16"), dict(max_refs=30), dict(max_batch=4), dict(backend="fake"),
                dict(platform=dataclasses.replace(base["platform"], compute_capability="8.0"))]
    keys = {engine_key(m.checkpoint, **{**base, **v}) for v in variants}
    keys.add(engine_key(dataclasses.replace(m.checkpoint, use_ema=False), **base))
    assert key not in keys and len(keys) == len(variants) + 1
    # versions are not in the key: an upgrade rebuilds into the same directory
    assert engine_key(m.checkpoint, **{**base, "platform": dataclasses.replace(base["platform"], torch="9")}) == key


def test_write_manifest_is_atomic(built, tmp_path):
    write_manifest(tmp_path, built.manifest)
    assert read_manifest(tmp_path) == built.manifest and [p.name for p in tmp_path.iterdir()] == ["manifest.json"]
