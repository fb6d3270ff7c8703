"""Noise bank: round trip, shape checks, exact replay of recorded draws."""
import numpy as np
import pytest
import torch

from vfrt.runtime.noise import NoiseBank, NoiseBankError, NoiseSource, SeededNoiseBank


def _bank(rng, Ks=(1, 2, 3), S=4, shape=(4, 2, 2)):
    return NoiseBank(x_T=[rng.standard_normal((1, *shape)).astype(np.float32) for _ in Ks],
                     step_noise=[rng.standard_normal((S, k, *shape)).astype(np.float32) for k in Ks])


def test_round_trip(tmp_path):
    b = _bank(np.random.default_rng(0))
    path = b.save(tmp_path / "bank.npz")
    with np.load(path) as raw:
        assert sorted(raw.keys()) == ["K", "step_noise_v00", "step_noise_v01", "step_noise_v02", "x_T"]
        assert raw["x_T"].shape == (3, 1, 4, 2, 2) and raw["K"].tolist() == [1, 2, 3]
    b2 = NoiseBank.load(path)
    for a, c in zip(b.x_T + b.step_noise, b2.x_T + b2.step_noise):
        np.testing.assert_array_equal(a, c)


def test_replay_returns_the_recorded_draws():
    src = NoiseSource.from_seed(7)
    draws = [src.view(v, k, 4, (4, 2, 2)) for v, k in enumerate((1, 2))]
    replay = NoiseSource.from_bank(src.recorded)
    for v, k in enumerate((1, 2)):
        x, s = replay.view(v, k, 4, (4, 2, 2))
        assert torch.equal(x, draws[v][0]) and torch.equal(s, draws[v][1])
    # a different seed gives different draws; the same seed the same
    assert not torch.equal(NoiseSource.from_seed(8).view(0, 1, 4, (4, 2, 2))[0], draws[0][0])
    assert torch.equal(NoiseSource.from_seed(7).view(0, 1, 4, (4, 2, 2))[0], draws[0][0])


def test_a_seeded_record_holds_no_arrays_until_read_and_then_the_very_draws():
    """A seeded run's record is redrawn from the seed on first read (a 36-view orbit's draws are 0.75 GB)."""
    src = NoiseSource.from_seed(11)
    draws = [src.view(v, k, 3, (4, 2, 2)) for v, k in enumerate((2, 1, 3))]
    rec = src.recorded
    assert isinstance(rec, SeededNoiseBank) and not rec.materialised
    assert rec.num_views == 3 and rec.K.tolist() == [2, 1, 3] and not rec.materialised
    for (x, s), x_rec, s_rec in zip(draws, rec.x_T, rec.step_noise):
        np.testing.assert_array_equal(x.numpy(), x_rec)
        np.testing.assert_array_equal(s.numpy(), s_rec)
    assert rec.materialised


def test_a_seeded_record_saves_and_reloads_the_draws(tmp_path):
    src = NoiseSource.from_seed(5)
    draws = [src.view(v, k, 2, (4, 2, 2)) for v, k in enumerate((1, 2))]
    back = NoiseBank.load(src.recorded.save(tmp_path / "noise.npz"))
    for (x, s), x2, s2 in zip(draws, back.x_T, back.step_noise):
        np.testing.assert_array_equal(x.numpy(), x2)
        np.testing.assert_array_equal(s.numpy(), s2)


def test_a_replays_record_is_the_banks_first_views_without_copies():
    bank = _bank(np.random.default_rng(3))
    src = NoiseSource.from_bank(bank)
    src.view(0, 1, 4, (4, 2, 2))
    src.view(1, 2, 4, (4, 2, 2))
    rec = src.recorded
    assert rec.num_views == 2 and all(a is b for a, b in zip(rec.x_T + rec.step_noise,
                                                              bank.x_T[:2] + bank.step_noise[:2]))


def test_views_are_drawn_in_order_with_one_shape():
    src = NoiseSource.from_seed(1)
    with pytest.raises(ValueError, match="in order"):
        src.view(1, 1, 4, (4, 2, 2))
    src.view(0, 1, 4, (4, 2, 2))
    with pytest.raises(ValueError, match="earlier views"):
        src.view(1, 1, 5, (4, 2, 2))


def test_mismatched_bank_is_rejected_before_compute(tmp_path):
    src = NoiseSource.from_bank(_bank(np.random.default_rng(1)))
    src.check_plan([1, 2, 3], 4, (4, 2, 2))
    with pytest.raises(NoiseBankError, match="view 1"):
        src.check_plan([1, 3, 3], 4, (4, 2, 2))
    with pytest.raises(NoiseBankError, match="holds 3 views"):
        src.check_plan([1, 2, 3, 4], 4, (4, 2, 2))
    with pytest.raises(NoiseBankError):
        src.check_plan([1, 2, 3], 5, (4, 2, 2))


def test_load_errors(tmp_path):
    with pytest.raises(NoiseBankError, match="not found"):
        NoiseBank.load(tmp_path / "missing.npz")
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(NoiseBankError, match="is not a noise bank"):
        NoiseBank.load(bad)
    np.savez(tmp_path / "partial.npz", x_T=np.zeros((2, 1, 4, 2, 2), np.float32), K=np.array([1, 1]),
             step_noise_v00=np.zeros((3, 1, 4, 2, 2), np.float32))
    with pytest.raises(NoiseBankError, match="step_noise_v01"):
        NoiseBank.load(tmp_path / "partial.npz")
    np.savez(tmp_path / "k.npz", x_T=np.zeros((1, 1, 4, 2, 2), np.float32), K=np.array([2]),
             step_noise_v00=np.zeros((3, 1, 4, 2, 2), np.float32))
    with pytest.raises(NoiseBankError, match="expected"):
        NoiseBank.load(tmp_path / "k.npz")


def test_noise_directory_round_trip_and_errors(tmp_path):
    """The raw format the C++ runtime reads and records (noise.json + little-endian float32 files)."""
    import json
    b = _bank(np.random.default_rng(2))
    folder = b.save_raw(tmp_path / "noise")
    index = json.loads((folder / "noise.json").read_text())
    assert index["format"] == "vfrt-noise-raw" and index["views"][2]["step_noise_shape"] == [4, 3, 4, 2, 2]
    assert (folder / "step_noise_v02.f32").stat().st_size == 4 * 3 * 4 * 2 * 2 * 4
    for loaded in (NoiseBank.load_raw(folder), NoiseBank.load(folder)):      # load() takes a directory too
        for a, c in zip(b.x_T + b.step_noise, loaded.x_T + loaded.step_noise):
            np.testing.assert_array_equal(a, c)
    b.save_raw(folder)                                   # a noise directory is replaced, anything else is not
    (tmp_path / "other").mkdir()
    with pytest.raises(NoiseBankError, match="not a noise directory"):
        b.save_raw(tmp_path / "other")
    with open(folder / "x_T_v01.f32", "r+b") as f:
        f.truncate(8)
    with pytest.raises(NoiseBankError, match="x_T_v01.f32 holds 2 floats"):
        NoiseBank.load_raw(folder)
    (folder / "noise.json").write_text('{"format": "other"}')
    with pytest.raises(NoiseBankError, match="not a 'vfrt-noise-raw' version 1 index"):
        NoiseBank.load_raw(folder)
    with pytest.raises(NoiseBankError, match="no readable noise.json"):
        NoiseBank.load_raw(tmp_path / "other")
