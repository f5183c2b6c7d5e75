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



# -- feed_rows: streams fed at their own moments --------------------------------


def _dtmf_mix(rng: np.random.Generator, length: int) -> np.ndarray:
    digits = "".join(rng.choice(list(ALL), size=6))
    seq = sequence(
        digits,
        on_ms=rng.uniform(25, 90),
        off_ms=rng.uniform(30, 90),
        lead_ms=rng.uniform(0, 200),
        level=rng.uniform(-38, -5),
        twist_db=rng.uniform(-6, 10),
        dev=rng.uniform(-0.04, 0.04),
    )
    x = np.zeros(length)
    x[: min(length, seq.samples.size)] = seq.samples[:length]
    return to_pcm(x + band_noise(length, -20, rng.uniform(0, 30), rng))


def _replay(chunks: list[np.ndarray], flush: bool) -> list[KeyPress]:
    """A DtmfDetector fed one stream's chunks (then flushed if the stream was
    still there at the batch's flush)."""
    det = DtmfDetector()
    presses = [kp for chunk in chunks for kp in det.feed(chunk)]
    return presses + det.flush() if flush else presses


def _drive_rows(seed: int, count: int = 16, ticks: int = 140) -> dict:
    """Streams join (in a new slot by resize, or in a freed one by reset_stream)
    and leave at random ticks; each tick a random subset is fed in 1-3 groups of
    random order, each group by its own multiple of 20 samples, or every slot
    is fed in lock-step by feed(); the end is one flush().  Returns per stream
    its chunks, its key presses, whether it was flushed, and counters."""
    rng = np.random.default_rng(seed)
    pcm = [_dtmf_mix(rng, 8000 * 3) for _ in range(count)]
    join = [0 if p < count // 2 else int(rng.integers(1, ticks // 2)) for p in range(count)]
    leave = [int(join[p] + rng.integers(10, 60)) if rng.random() < 0.4 else None for p in range(count)]
    det = BatchDtmfDetector(count // 2)
    slot_of = {p: p for p in range(count // 2)}
    free: list[int] = []
    chunks: dict[int, list[np.ndarray]] = {p: [] for p in slot_of}
    got: dict[int, list[KeyPress]] = {p: [] for p in slot_of}
    fed = dict.fromkeys(slot_of, 0)
    stats = {"reused": 0, "lockstep": 0, "split": 0, "sizes": set()}

    def advance(p: int, m: int, presses: list[KeyPress]) -> None:
        got[p] += presses
        chunks[p].append(pcm[p][fed[p] : fed[p] + m])
        fed[p] += m

    for tick in range(ticks):
        for p in [p for p in slot_of if leave[p] == tick]:
            free.append(slot_of.pop(p))
        for p in range(count):
            if join[p] == tick and tick:
                if free:
                    slot_of[p] = free.pop(0)
                    det.reset_stream(slot_of[p])  # a new call in a reused slot
                    stats["reused"] += 1
                else:
                    slot_of[p] = det.n
                    det.resize(det.n + 1)
                chunks[p], got[p], fed[p] = [], [], 0
        m = 20 * int(rng.integers(1, 17))
        if rng.random() < 0.15 and all(fed[p] + m <= pcm[p].size for p in slot_of):
            block = rng.integers(-2000, 2000, size=(det.n, m))  # free slots: whatever
            for p, slot in slot_of.items():
                block[slot] = pcm[p][fed[p] : fed[p] + m]
            found = det.feed(block)
            for p, slot in slot_of.items():
                advance(p, m, found[slot])
            stats["lockstep"] += 1
            continue
        moving = [p for p in slot_of if rng.random() < 0.7]
        rng.shuffle(moving)
        groups = np.array_split(np.array(moving, dtype=int), int(rng.integers(1, 4)))
        stats["split"] += sum(g.size > 0 for g in groups) > 1
        for group in groups:
            m = 20 * int(rng.integers(1, 17))
            group = [int(p) for p in group if fed[p] + m <= pcm[p].size]
            if group:
                block = np.stack([pcm[p][fed[p] : fed[p] + m] for p in group])
                found = det.feed_rows([slot_of[p] for p in group], block)
                assert len(found) == len(group)
                for p, presses in zip(group, found, strict=True):
                    advance(p, m, presses)
                stats["sizes"].add(m)
    flushed = det.flush()
    for p, slot in slot_of.items():
        got[p] += flushed[slot]
    return {"chunks": chunks, "got": got, "flushed": set(slot_of), **stats}


@pytest.mark.parametrize("seed", [21, 22, 23])
def test_feed_rows_equals_single_stream_detectors(seed):
    run = _drive_rows(seed)
    for p, chunks in run["chunks"].items():
        assert run["got"][p] == _replay(chunks, p in run["flushed"]), f"stream {p}"
    # The comparison has teeth: presses, slot reuse, late joins, mixed feeds, groups.
    assert sum(map(len, run["got"].values())) > 15
    assert run["reused"] and run["lockstep"] and run["split"] > 10 and len(run["sizes"]) > 8
    assert len(run["chunks"]) == 16


@settings(max_examples=4, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_feed_rows_equals_single_stream_detectors_any_schedule(seed):
    run = _drive_rows(seed, count=10, ticks=100)
    for p, chunks in run["chunks"].items():
        assert run["got"][p] == _replay(chunks, p in run["flushed"]), f"stream {p}"


def test_reset_stream_restarts_the_clock_and_the_flush_limit():
    # A call in a reused slot: key press times count from its own first sample,
    # and a press still open at the flush ends at its own last sample.
    seq = sequence("48", on_ms=80, off_ms=60, lead_ms=120)
    x = seq.pcm()[: seq.intervals[-1][0] + 400]  # the call ends 50 ms into the "8"
    assert x.size % 20 == 0
    det = BatchDtmfDetector(2)
    det.feed(np.zeros((2, 8000)))  # 1 s before the call starts in slot 1
    det.reset_stream(1)
    got = det.feed_rows([1], x[None, :])[0] + det.flush()[1]
    assert got == detect(x)
    assert [k.digit for k in got] == ["4", "8"] and got[-1].end_ms == x.size / 8  # clipped at its own end
    assert abs(got[0].start_ms - seq.intervals[0][0] / 8) <= 2.0


def test_feed_rows_bad_arguments_raise_and_change_nothing():
    rng = np.random.default_rng(5)
    x = np.stack([_dtmf_mix(rng, 8000 * 2) for _ in range(3)])
    good, bad = BatchDtmfDetector(3), BatchDtmfDetector(3)
    for det in (good, bad):
        det.feed_rows([2, 0], x[[2, 0], :1600])
    block = x[:2, 1600:1760]
    calls = {
        "duplicate": (ValueError, lambda: bad.feed_rows([1, 1], block)),
        "unknown slot": (IndexError, lambda: bad.feed_rows([0, 3], block)),
        "negative slot": (IndexError, lambda: bad.feed_rows([0, -1], block)),
        "a mask, not indices": (ValueError, lambda: bad.feed_rows(np.array([True, True, False]), block)),
        "rows/block mismatch": (ValueError, lambda: bad.feed_rows([0], block)),
        "1-D block": (ValueError, lambda: bad.feed_rows([0], x[0, :160])),
        "not whole blocks": (ValueError, lambda: bad.feed_rows([0, 1], x[:2, :170])),
        "no samples": (ValueError, lambda: bad.feed_rows([0, 1], x[:2, :0])),
    }
    for name, (error, call) in calls.items():
        with pytest.raises(error, match=r"slot|rows|shape|multiple|distinct|indices"):
            call()
        assert bad.samples_in.tolist() == [1600, 0, 1600], name
    assert bad.feed_rows([], np.zeros((0, 20))) == []
    for pos in range(1600, x.shape[1], 160):  # the failed calls left no trace
        block = x[[1, 0, 2], pos : pos + 160]
        assert good.feed_rows([1, 0, 2], block) == bad.feed_rows([1, 0, 2], block)
    assert good.flush() == bad.flush()
    with pytest.raises(RuntimeError, match="flushed"):
        bad.feed_rows([0], x[:1, :160])
    partial = BatchDtmfDetector(2)
    partial.feed(x[:2, :30])  # lock-step feed left half a block pending
    with pytest.raises(RuntimeError, match="partial block"):
        partial.feed_rows([0], x[:1, 30:50])
