"""Q.24 / ES 201 235-3 limits on both sides, noise, interruptions, streaming."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from media.dtmf import KEYS, BatchDtmfDetector, DtmfDetector, KeyPress, detect
from tests.media.signals import band_noise, sequence, to_pcm

ALL = KEYS  # every key, 0-9 * # A-D


def digits_of(x: np.ndarray) -> str:
    return "".join(kp.digit for kp in detect(to_pcm(x)))


def test_all_keys_and_timing():
    seq = sequence(ALL, on_ms=50, off_ms=50)
    presses = detect(seq.pcm())
    assert "".join(kp.digit for kp in presses) == ALL
    for kp, (a, b) in zip(presses, seq.intervals, strict=True):
        assert abs(kp.start_ms - a / 8) <= 2.0 and abs(kp.end_ms - b / 8) <= 2.0


@pytest.mark.parametrize("dev", [0.015, -0.015])
def test_frequency_deviation_accepted(dev):
    assert digits_of(sequence(ALL, dev=dev).samples) == ALL


@pytest.mark.parametrize("dev", [0.035, -0.035, 0.05, -0.05])
def test_frequency_deviation_rejected(dev):
    assert digits_of(sequence(ALL, dev=dev).samples) == ""


@pytest.mark.parametrize("on_ms", [40, 45, 100, 1000])
def test_duration_accepted(on_ms):
    assert digits_of(sequence(ALL, on_ms=on_ms).samples) == ALL


@pytest.mark.parametrize("on_ms", [10, 20, 23])
def test_duration_rejected(on_ms):
    assert digits_of(sequence(ALL, on_ms=on_ms).samples) == ""


def test_pause_of_40ms_separates_presses():
    seq = sequence("5555", on_ms=40, off_ms=40)
    assert digits_of(seq.samples) == "5555"


@pytest.mark.parametrize("twist", [8, 4, 0, -2, -4])
def test_twist_accepted(twist):
    assert digits_of(sequence(ALL, twist_db=twist).samples) == ALL


@pytest.mark.parametrize("twist", [10, 12, -6, -8])
def test_twist_rejected(twist):
    assert digits_of(sequence(ALL, twist_db=twist).samples) == ""


@pytest.mark.parametrize("level", [-36, -30, -20, 0])
def test_levels_accepted(level):
    assert digits_of(sequence(ALL, level=level).samples) == ALL


def test_very_low_level_ignored():
    assert digits_of(sequence(ALL, level=-50).samples) == ""


@pytest.mark.parametrize("snr", [6, 10, 20])
def test_noise(snr):
    rng = np.random.default_rng(snr)
    for level in (-10, -30):
        seq = sequence(ALL * 2, level=level)
        x = seq.samples + band_noise(seq.samples.size, level, snr, rng)
        assert digits_of(x) == ALL * 2


def test_noise_alone_gives_nothing():
    rng = np.random.default_rng(7)
    assert digits_of(rng.normal(0, 3000, 8000 * 20)) == ""


@pytest.mark.parametrize("gap_ms", [5, 10])
def test_interruption_is_one_press(gap_ms):
    rng = np.random.default_rng(gap_ms)
    seq = sequence(ALL, on_ms=80, gap_ms=gap_ms)
    assert digits_of(seq.samples) == ALL
    assert digits_of(seq.samples + band_noise(seq.samples.size, -10, 10, rng)) == ALL
    presses = detect(seq.pcm())
    for kp, (a, b) in zip(presses, seq.intervals, strict=True):
        assert abs(kp.start_ms - a / 8) <= 2.0 and abs(kp.end_ms - b / 8) <= 2.0


def test_interruption_with_phase_jump_is_one_press():
    seq = sequence("7", on_ms=40, lead_ms=50)
    b = sequence("7", on_ms=40, lead_ms=0, phase=2.0)
    x = np.concatenate([seq.samples[:720], np.zeros(80), b.samples])
    assert digits_of(x) == "7"


def test_back_to_back_digits_without_pause():
    x = np.concatenate([sequence("1", on_ms=60, off_ms=0).samples, sequence("9", on_ms=60, lead_ms=0).samples])
    assert digits_of(x) == "19"


def _feed_chunked(x: np.ndarray, sizes: list[int]) -> list[KeyPress]:
    det = DtmfDetector()
    out: list[KeyPress] = []
    pos, i = 0, 0
    while pos < x.size:
        size = sizes[i % len(sizes)]
        out += det.feed(x[pos : pos + size])
        pos += size
        i += 1
    return out + det.flush()


_CHUNK_SEQ = sequence("159D*0", on_ms=45, off_ms=45)
_CHUNK_SIGNAL = to_pcm(_CHUNK_SEQ.samples + band_noise(_CHUNK_SEQ.samples.size, -10, 8, np.random.default_rng(3)))


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(1, 1000), min_size=1, max_size=8))
def test_any_chunking_equals_one_shot(sizes):
    assert _feed_chunked(_CHUNK_SIGNAL, sizes) == detect(_CHUNK_SIGNAL)


@pytest.mark.parametrize("size", [1, 7, 160, 1000])
def test_fixed_chunk_sizes(size):
    assert _feed_chunked(_CHUNK_SIGNAL, [size]) == detect(_CHUNK_SIGNAL)


def test_batch_equals_single_stream_on_random_mixes():
    rng = np.random.default_rng(11)
    n, length = 24, 8000 * 3
    streams = np.zeros((n, length))
    for i in range(n):
        digits = "".join(rng.choice(list(ALL), size=8))
        seq = sequence(
            digits,
            on_ms=rng.uniform(25, 90),
            off_ms=rng.uniform(30, 90),
            level=rng.uniform(-38, -5),
            twist_db=rng.uniform(-6, 10),
            dev=rng.uniform(-0.04, 0.04),
        )
        x = seq.samples[:length]
        streams[i, : x.size] = x
        streams[i] += band_noise(length, -20, rng.uniform(0, 30), rng)
    pcm = to_pcm(streams)
    batch = BatchDtmfDetector(n)
    got: list[list[KeyPress]] = [[] for _ in range(n)]
    for pos in range(0, length, 160):
        for i, presses in enumerate(batch.feed(pcm[:, pos : pos + 160])):
            got[i] += presses
    for i, presses in enumerate(batch.flush()):
        got[i] += presses
    expected = [detect(pcm[i]) for i in range(n)]
    assert got == expected
    assert sum(map(len, expected)) > 40  # the mix has real detections to compare


def test_rejects_other_sample_rates():
    with pytest.raises(ValueError):
        DtmfDetector(sample_rate=16000)
