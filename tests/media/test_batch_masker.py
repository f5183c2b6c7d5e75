"""BatchStreamingMasker: every stream's output is exactly a StreamingMasker's.

The reference for a stream is a StreamingMasker fed the same 20 ms frames (and
the same RFC 4733 events, before the same frames); its output, preceded by
HOLDBACK samples of silence, must equal the batch's row for that stream bit
for bit, and so must the masked flags and the key presses.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pytest

from media.dtmf import KEYS, KeyPress
from media.masker import HOLDBACK, BatchStreamingMasker, StreamingMasker
from tests.media.signals import band_noise, music, sequence, to_pcm

FRAME = 160


@dataclass
class Plan:
    """One stream: its samples, settings, the frame it joins at (batch time), the
    frame it leaves at (None: stays) and its events {own frame: (start, end)}."""

    pcm: np.ndarray
    settings: dict = field(default_factory=dict)
    join: int = 0
    leave: int | None = None
    events: dict[int, tuple[float, float | None]] = field(default_factory=dict)


def mixed_signal(rng: np.random.Generator, frames: int, speech: np.ndarray | None = None) -> np.ndarray:
    """A random mix of DTMF (levels, durations, drop-outs), noise, music, speech."""
    n = frames * FRAME
    digits = "".join(rng.choice(list(KEYS), size=int(rng.integers(2, 6))))
    level = float(rng.uniform(-36, -3))
    seq = sequence(
        digits,
        level=level,
        on_ms=float(rng.uniform(15, 90)),
        off_ms=float(rng.uniform(30, 120)),
        lead_ms=float(rng.uniform(0, 300)),
        gap_ms=float(rng.choice([0, 0, 6, 10])),
        twist_db=float(rng.uniform(-6, 10)),
        dev=float(rng.uniform(-0.03, 0.03)),
    )
    x = np.zeros(n)
    x[: min(n, seq.samples.size)] = seq.samples[:n]
    x += band_noise(n, level, float(rng.uniform(3, 25)), rng)
    kind = rng.integers(0, 3)
    if kind == 1:
        x += 0.4 * music(n / 8000 + 1, rng)[:n]
    elif kind == 2 and speech is not None:
        start = int(rng.integers(0, speech.size - n))
        x += speech[start : start + n].astype(float)
    return to_pcm(x)


def reference(plan: Plan, frames: int) -> tuple[np.ndarray, np.ndarray, list[KeyPress]]:
    """StreamingMasker over the stream's first `frames` frames, delayed by HOLDBACK."""
    m = StreamingMasker(**plan.settings)
    outs, flags = [np.zeros(HOLDBACK, dtype=np.int16)], [np.zeros(HOLDBACK, dtype=bool)]
    for j in range(frames):
        if j in plan.events:
            m.note_event(*plan.events[j])
        outs.append(m.push(plan.pcm[j * FRAME : (j + 1) * FRAME]))
        flags.append(m.last_masked)
    return np.concatenate(outs)[: frames * FRAME], np.concatenate(flags)[: frames * FRAME], m.key_presses


def run_batch(plans: list[Plan], total: int, initial: int) -> dict[int, tuple[np.ndarray, np.ndarray, list[KeyPress]]]:
    """Drive one BatchStreamingMasker through the plans; per plan its output,
    flags and key presses while it was in the batch."""
    batch = BatchStreamingMasker(initial, frame=FRAME)
    slot_of: dict[int, int] = {}
    for p, plan in enumerate(plans[:initial]):
        assert plan.join == 0
        slot_of[p] = p
        if plan.settings:
            batch.configure(p, **plan.settings)
    outs: dict[int, list[np.ndarray]] = {p: [] for p in range(len(plans))}
    flags: dict[int, list[np.ndarray]] = {p: [] for p in range(len(plans))}
    presses: dict[int, list[KeyPress]] = {p: [] for p in range(len(plans))}
    for f in range(total):
        for p, plan in enumerate(plans):
            if p in slot_of and plan.leave == f:
                presses[p] += batch.remove_stream(slot_of.pop(p))
        for p, plan in enumerate(plans):
            if plan.join == f and p not in slot_of and (plan.leave is None or plan.leave > f):
                slot_of[p] = batch.add_stream(**plan.settings)
        block = np.zeros((batch.n_streams, FRAME), dtype=np.int16)
        block[~batch.active] = 12345  # whatever sits in a free slot is ignored
        for p, slot in slot_of.items():
            j = f - plans[p].join
            block[slot] = plans[p].pcm[j * FRAME : (j + 1) * FRAME]
            if j in plans[p].events:
                batch.note_event(slot, *plans[p].events[j])
        out = batch.push(block)
        assert out.shape == (batch.n_streams, FRAME) and out.dtype == np.int16
        assert not out[~batch.active].any() and not batch.last_masked[~batch.active].any()
        for p, slot in slot_of.items():
            outs[p].append(out[slot])
            flags[p].append(batch.last_masked[slot])
            if f % 7 == 0:
                presses[p] += batch.drain_key_presses(slot)
    for p, slot in slot_of.items():
        presses[p] += batch.drain_key_presses(slot)
    return {p: (np.concatenate(outs[p]), np.concatenate(flags[p]), presses[p]) for p in range(len(plans)) if outs[p]}


def make_plans(rng: np.random.Generator, total: int, speech: np.ndarray | None = None) -> list[Plan]:
    plans = []
    for p in range(12):
        join = 0 if p < 8 else int(rng.integers(5, total // 2))  # 4 streams join mid-way
        leave = int(rng.integers(join + 10, total)) if p in (2, 5, 9) else None
        settings: dict = {}
        if p % 4 == 1:
            settings = {"mode": "silence"}
        elif p % 4 == 2:
            settings = {"tone_hz": float(rng.uniform(300, 3000)), "level_dbfs": float(rng.uniform(-30, -6))}
        events: dict[int, tuple[float, float | None]] = {}
        if p % 3 == 0:
            a = int(rng.integers(2, 60))
            start_ms = float(a * 20 + rng.uniform(-30, 10))
            events[a] = (start_ms, None)
            if p % 2 == 0:  # the end arrives; otherwise the event times out
                events[a + int(rng.integers(1, 8))] = (start_ms, start_ms + float(rng.uniform(20, 120)))
        plans.append(Plan(mixed_signal(rng, total, speech), settings, join, leave, events))
    return plans


def check_identical(plans: list[Plan], got: dict) -> None:
    for p, (out, flags, presses) in got.items():
        frames = out.size // FRAME
        ref_out, ref_flags, ref_presses = reference(plans[p], frames)
        assert np.array_equal(out, ref_out), f"stream {p}: output differs"
        assert np.array_equal(flags, ref_flags), f"stream {p}: masked flags differ"
        assert presses == ref_presses, f"stream {p}: key presses differ"


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_batch_equals_single_stream_maskers(seed):
    rng = np.random.default_rng(seed)
    total = 150  # 3 s
    plans = make_plans(rng, total)
    got = run_batch(plans, total, initial=8)
    assert len(got) == 12
    check_identical(plans, got)
    # The check has teeth: masking happened, and key presses were decoded.
    assert sum(int(flags.sum()) for _, flags, _ in got.values()) > 0
    assert sum(len(presses) for _, _, presses in got.values()) > 0


def test_batch_equals_single_stream_maskers_with_speech(speech):
    rng = np.random.default_rng(11)
    voice = np.concatenate(list(speech.values())).astype(float) * 0.5
    total = 150
    plans = make_plans(rng, total, speech=voice)
    check_identical(plans, run_batch(plans, total, initial=8))


def test_slots_are_reused_then_appended():
    batch = BatchStreamingMasker(3)
    assert batch.n_streams == 3 and batch.active.all()
    assert batch.remove_stream(1) == []
    assert batch.active.tolist() == [True, False, True]
    assert batch.add_stream() == 1
    assert batch.add_stream(mode="silence") == 3
    assert batch.n_streams == 4
    assert batch.push(np.zeros((4, 160), dtype=np.int16)).shape == (4, 160)


def test_reused_slot_starts_a_new_stream_from_scratch():
    # A press in the old stream must not leak into the new one (state, clock, presses).
    seq = sequence("5", lead_ms=100, on_ms=80)
    x = np.concatenate([seq.pcm(), np.zeros(1600, dtype=np.int16)])
    batch = BatchStreamingMasker(1)
    for pos in range(0, 880, 160):  # the old call hangs up in the middle of the tone
        batch.push(x[None, pos : pos + 160])
    batch.remove_stream(0)
    assert batch.add_stream() == 0
    out = [batch.push(x[None, pos : pos + 160])[0] for pos in range(0, x.size - x.size % 160, 160)]
    ref, _, presses = reference(Plan(x), x.size // 160)
    assert np.array_equal(np.concatenate(out), ref)
    assert batch.drain_key_presses(0) == presses and [k.digit for k in presses] == ["5"]


def test_bad_arguments():
    with pytest.raises(ValueError):
        BatchStreamingMasker(2, frame=150)  # not whole 2.5 ms blocks
    with pytest.raises(ValueError):
        BatchStreamingMasker(2, mode="beep")
    batch = BatchStreamingMasker(2)
    with pytest.raises(ValueError):
        batch.push(np.zeros((3, 160), dtype=np.int16))
    with pytest.raises(ValueError):
        batch.add_stream(tone_hz=4000)
    batch.remove_stream(0)
    for call in (
        lambda: batch.remove_stream(0),
        lambda: batch.note_event(0, 0.0, None),
        lambda: batch.drain_key_presses(5),
    ):
        with pytest.raises(IndexError):
            call()


def test_reset_stream_restarts_the_analysis_phase_reference():
    # A stream started later must see the very block values a fresh stream sees
    # (absolute phase counted from its own sample 0), not merely close ones.
    from media.dtmf import BlockAnalyzer

    rng = np.random.default_rng(3)
    x = rng.integers(-9000, 9000, size=(2, 1600)).astype(np.float64)
    shared = BlockAnalyzer(2)
    shared.push(x[:, :460])
    shared.reset_stream(1)
    fresh = BlockAnalyzer(1)
    for pos in range(0, 1600, 160):
        _, got, _ = shared.push(np.stack([x[0, pos : pos + 160], x[1, pos : pos + 160]]))
        _, want, _ = fresh.push(x[1:, pos : pos + 160])
        assert np.array_equal(got[1], want[0])
