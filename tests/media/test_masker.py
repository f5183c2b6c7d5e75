"""Masking: zero leak, one flat tone per press, bit-exact elsewhere, causality."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from media.dtmf import KEYS, detect
from media.masker import GUARD, HOLDBACK, HOLDBACK_MS, StreamingMasker, mask_pcm
from tests.media.signals import band_noise, music, sequence, to_pcm

CARD = "4111111111111111" + "1229" + "123"  # PAN, expiry MMYY, CVV
ACCEPTED = [
    {},
    {"level": -36},
    {"level": 0},
    {"twist_db": 8},
    {"twist_db": -4},
    {"dev": 0.015},
    {"dev": -0.015},
    {"on_ms": 40, "off_ms": 40},
]


def run(x: np.ndarray, chunk: int | None = None, **kw) -> tuple[np.ndarray, np.ndarray, StreamingMasker]:
    """Masked output and, per sample, whether it was replaced."""
    m = StreamingMasker(**kw)
    outs, flags = [], []
    step = chunk or max(x.size, 1)
    for pos in range(0, x.size, step):
        outs.append(m.push(x[pos : pos + step]))
        flags.append(m.last_masked)
    outs.append(m.flush())
    flags.append(m.last_masked)
    return np.concatenate(outs), np.concatenate(flags), m


def leaked_samples(masked: np.ndarray, intervals: list[tuple[int, int]]) -> int:
    """Output samples inside a true tone interval that are not masked output."""
    return sum(int(np.count_nonzero(~masked[a:b])) for a, b in intervals)


def test_holdback_budget():
    assert HOLDBACK_MS <= 40 and HOLDBACK == HOLDBACK_MS * 8


@pytest.mark.parametrize("params", ACCEPTED)
@pytest.mark.parametrize("snr", [None, 6, 10])
def test_zero_leak(params, snr):
    rng = np.random.default_rng(len(str(params)) * 31 + (snr or 0))
    seq = sequence(CARD, **params)
    x = seq.samples
    if snr is not None:
        x = x + band_noise(x.size, params.get("level", -10), snr, rng)
    y, masked, m = run(to_pcm(x), chunk=160)
    assert leaked_samples(masked, seq.intervals) == 0  # 0 ms leaked
    assert y.size == x.size


def test_zero_leak_low_level_in_noise_with_dropouts():
    rng = np.random.default_rng(5)
    seq = sequence(CARD, level=-36, on_ms=70, gap_ms=10)
    x = seq.samples + band_noise(seq.samples.size, -36, 6, rng)
    _, masked, _ = run(to_pcm(x), chunk=37)
    assert leaked_samples(masked, seq.intervals) == 0


def test_short_bursts_are_masked_too():
    # Fail closed: a 23 ms tone is not a key press for the receiver, but is hidden.
    seq = sequence(CARD, on_ms=23)
    _, masked, m = run(seq.pcm())
    assert leaked_samples(masked, seq.intervals) == 0
    assert m.key_presses == []


def test_one_flat_tone_of_the_same_length_per_press():
    seq = sequence(CARD, on_ms=70, gap_ms=10)  # 10 ms drop-out inside each press
    x = seq.pcm()
    y, masked, m = run(x, chunk=160)
    edges = np.flatnonzero(np.diff(masked.astype(np.int8)))
    runs = list(zip(edges[::2] + 1, edges[1::2] + 1, strict=True))
    assert len(runs) == len(CARD)
    for (a, b), (s, e) in zip(seq.intervals, runs, strict=True):
        assert 0 <= a - s <= 2 * GUARD and 0 <= e - b <= 2 * GUARD  # same length, +- guard
        out = y[s:e].astype(float)
        # One single-frequency tone (1000 Hz) at constant level: no DTMF left.
        spec = np.abs(np.fft.rfft(out * np.hanning(out.size)))
        peak = np.argmax(spec) * 8000 / out.size
        assert abs(peak - 1000) < 20
    assert "".join(k.digit for k in m.key_presses) == CARD
    assert detect(y) == []


def test_silence_mode():
    seq = sequence(CARD)
    y, masked, _ = run(seq.pcm(), mode="silence")
    assert not np.any(y[masked])
    assert leaked_samples(masked, seq.intervals) == 0


def test_speech_outside_presses_passes_bit_exact(speech):
    voice = np.concatenate(list(speech.values())).astype(float)
    seq = sequence(CARD, on_ms=60, off_ms=400, level=-10)
    bed = voice[: seq.samples.size] * 0.3
    x = to_pcm(seq.samples + bed)
    y, masked, _ = run(x, chunk=160)
    assert leaked_samples(masked, seq.intervals) == 0
    # Only masked samples change; outside the presses (+- guards) the fail-closed
    # onset detector may replace a few speech frames, but very few.
    assert np.array_equal(y[~masked], x[~masked])
    near = np.zeros(x.size, dtype=bool)
    for a, b in seq.intervals:
        near[max(a - 2 * GUARD, 0) : b + 2 * GUARD] = True
    assert np.count_nonzero(masked & ~near) < 0.01 * np.count_nonzero(~near)


def test_music_outside_presses_only_masked_samples_change():
    rng = np.random.default_rng(4)
    seq = sequence(CARD, on_ms=60, off_ms=300, level=-10)
    x = to_pcm(seq.samples + 0.3 * music(seq.samples.size / 8000, rng)[: seq.samples.size])
    y, masked, _ = run(x, chunk=160)
    assert leaked_samples(masked, seq.intervals) == 0
    assert np.array_equal(y[~masked], x[~masked])


def test_speech_altered_bound(speech):
    altered = [run(x, chunk=160)[1].mean() for x in speech.values()]
    assert float(np.mean(altered)) < 0.01  # < 1 % of speech samples replaced


def test_output_lags_by_exactly_the_holdback():
    m = StreamingMasker()
    total = 0
    for size in (1, 100, 139, 0, 1000, 7):
        total += m.push(np.zeros(size, dtype=np.int16)).size
    assert total == 1 + 100 + 139 + 1000 + 7 - HOLDBACK
    assert m.flush().size == HOLDBACK


_SIG_SEQ = sequence("73#D", on_ms=45, off_ms=45, gap_ms=6)
_SIGNAL = to_pcm(_SIG_SEQ.samples + band_noise(_SIG_SEQ.samples.size, -10, 8, np.random.default_rng(9)))


@settings(max_examples=20, deadline=None)
@given(st.lists(st.integers(1, 700), min_size=1, max_size=6))
def test_any_chunking_same_output(sizes):
    m = StreamingMasker()
    out, pos, i = [], 0, 0
    while pos < _SIGNAL.size:
        out.append(m.push(_SIGNAL[pos : pos + sizes[i % len(sizes)]]))
        pos += sizes[i % len(sizes)]
        i += 1
    out.append(m.flush())
    assert np.array_equal(np.concatenate(out), mask_pcm(_SIGNAL))


def test_causality_truncated_input_gives_same_prefix():
    full = run(_SIGNAL)[0]
    for cut in (1000, 1733, 2400, 3001):
        m = StreamingMasker()
        prefix = m.push(_SIGNAL[:cut])
        # Output up to t depends only on input up to t + hold-back.
        assert prefix.size == cut - HOLDBACK
        assert np.array_equal(prefix, full[: prefix.size])


def test_mask_pcm_is_time_aligned():
    seq = sequence("5", lead_ms=300)
    y = mask_pcm(seq.pcm())
    assert y.size == seq.samples.size
    a, b = seq.intervals[0]
    assert np.array_equal(y[: a - 2 * GUARD], seq.pcm()[: a - 2 * GUARD])
    assert np.array_equal(y[b + 2 * GUARD :], seq.pcm()[b + 2 * GUARD :])
    assert not np.array_equal(y[a:b], seq.pcm()[a:b])


def test_event_only_press_masks_inband_audio():
    # A tone too short for the in-band path's confirmation is still masked when
    # RFC 4733 reports the press (events are time-stamped from stream start).
    seq = sequence("9", on_ms=60, lead_ms=200)
    x = seq.pcm()
    x[seq.intervals[0][0] : seq.intervals[0][1]] //= 300  # far below any detector floor
    m = StreamingMasker()
    out = [m.push(x[:1200])]
    flags = [m.last_masked]
    m.note_event(200.0, None)
    out.append(m.push(x[1200:2100]))  # the end packet arrives as the tone ends
    flags.append(m.last_masked)
    m.note_event(200.0, 260.0)
    out.append(m.push(x[2100:]))
    flags.append(m.last_masked)
    out.append(m.flush())
    flags.append(m.last_masked)
    masked = np.concatenate(flags)
    assert leaked_samples(masked, seq.intervals) == 0
    assert masked.sum() <= (60 * 8) + 2 * GUARD + 2


def test_bad_arguments():
    with pytest.raises(ValueError):
        StreamingMasker(mode="beep")
    with pytest.raises(ValueError):
        StreamingMasker(tone_hz=5000)
    assert set(KEYS) == set("0123456789*#ABCD")


def test_masker_reports_the_receivers_key_presses():
    seq = sequence("0#9", on_ms=70, lead_ms=50)
    x = seq.pcm()[: seq.intervals[-1][1] - 80]  # the stream ends inside the last press
    _, _, m = run(x, chunk=160)
    assert m.key_presses == detect(x)
    assert [k.digit for k in m.key_presses] == list("0#9")
    assert abs(m.key_presses[-1].end_ms - x.size / 8) <= 1.0


def test_open_event_without_end_stops_masking_by_itself():
    x = np.full(8000, 100, dtype=np.int16)
    outputs = []
    for size in (1, 160, 999, 7200):
        m = StreamingMasker()
        out = [m.push(x[:800])]
        m.note_event(100.0, None)  # the end packets never arrive
        out += [m.push(x[pos : pos + size]) for pos in range(800, x.size, size)]
        out.append(m.flush())
        outputs.append(np.concatenate(out))
    changed = outputs[0] != x
    assert 0 < changed.sum() < 8 * 400  # masked for a while, then the audio is back
    assert not changed[-1000:].any()
    assert all(np.array_equal(o, outputs[0]) for o in outputs)  # chunking does not move the end
