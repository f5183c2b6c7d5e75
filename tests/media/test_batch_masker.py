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
from hypothesis import given, settings
from hypothesis import strategies as st

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


def test_pressed_slots_name_the_slots_with_presses_to_drain_until_drained_or_removed():
    seq = sequence("5", lead_ms=100, on_ms=80)
    x = np.concatenate([seq.pcm(), np.zeros(1600, dtype=np.int16)])
    x = x[: x.size - x.size % 160]
    batch = BatchStreamingMasker(3)
    silent = np.zeros(160, dtype=np.int16)
    seen = set()
    for pos in range(0, x.size, 160):
        batch.push(np.stack([silent, x[pos : pos + 160], x[pos : pos + 160]]))
        seen |= batch.pressed_slots
    assert seen == batch.pressed_slots == {1, 2}  # kept until drained, whatever came after
    assert [k.digit for k in batch.drain_key_presses(1)] == ["5"] and batch.pressed_slots == {2}
    batch.remove_stream(2)
    assert batch.pressed_slots == set() and batch.drain_key_presses(0) == []


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


# -- push_rows: streams advance at their own moments ---------------------------
# A stream's history is the list of what happened to it, in its own order:
# ("push", samples) or ("event", start_ms, end_ms).  The reference replays that
# list through a StreamingMasker; the batch must agree bit for bit however the
# pushes were grouped with other streams', and whatever the chunk sizes.


def replay(settings: dict, history: list[tuple]) -> tuple[np.ndarray, np.ndarray, list[KeyPress]]:
    """StreamingMasker over one stream's history: output and flags delayed by
    HOLDBACK (as BatchStreamingMasker outputs them), key presses."""
    m = StreamingMasker(**settings)
    outs, flags, fed = [np.zeros(HOLDBACK, dtype=np.int16)], [np.zeros(HOLDBACK, dtype=bool)], 0
    for op in history:
        if op[0] == "event":
            m.note_event(op[1], op[2])
        else:
            fed += op[1].size
            outs.append(m.push(op[1]))
            flags.append(m.last_masked)
    return np.concatenate(outs)[:fed], np.concatenate(flags)[:fed], m.key_presses


@dataclass
class Schedule:
    """What one random run did, for the checks and the 'has teeth' assertions."""

    out: dict[int, list[np.ndarray]] = field(default_factory=dict)
    flags: dict[int, list[np.ndarray]] = field(default_factory=dict)
    presses: dict[int, list[KeyPress]] = field(default_factory=dict)
    history: dict[int, list[tuple]] = field(default_factory=dict)
    sizes: set[int] = field(default_factory=set)
    reused: int = 0  # add_stream calls that got a slot some earlier stream had
    events: int = 0
    split_ticks: int = 0  # ticks whose streams were pushed in >= 2 groups
    whole_pushes: int = 0  # push() calls mixed in


def random_plans(rng: np.random.Generator, ticks: int, count: int, speech: np.ndarray | None = None) -> list[Plan]:
    """Streams joining at different ticks, some leaving early (their slots get reused)."""
    plans = []
    for p in range(count):
        join = 0 if p < count // 2 else int(rng.integers(1, 2 * ticks // 3))
        leave = int(join + rng.integers(8, 40)) if rng.random() < 0.4 else None
        settings: dict = {}
        if p % 4 == 1:
            settings = {"mode": "silence"}
        elif p % 4 == 2:
            settings = {"tone_hz": float(rng.uniform(300, 3000)), "level_dbfs": float(rng.uniform(-30, -6))}
        plans.append(Plan(mixed_signal(rng, 2 * ticks, speech), settings, join, leave))
    return plans


def drive_rows(rng: np.random.Generator, plans: list[Plan], ticks: int) -> Schedule:
    """One BatchStreamingMasker through the plans: every tick a random subset of
    the streams advances, in 1-3 groups of random order, each group by its own
    random multiple of 20 samples (now and then one push() of every stream
    instead); RFC 4733 events are noted on random streams between pushes."""
    initial = [p for p, plan in enumerate(plans) if plan.join == 0]
    batch = BatchStreamingMasker(len(initial), frame=FRAME)
    run = Schedule()
    slot_of: dict[int, int] = {}
    used_slots: set[int] = set()
    fed: dict[int, int] = {}
    open_event: dict[int, float] = {}

    def start(p: int, slot: int) -> None:
        run.reused += slot in used_slots
        used_slots.add(slot)
        slot_of[p], fed[p] = slot, 0
        run.out[p], run.flags[p], run.presses[p], run.history[p] = [], [], [], []

    for slot, p in enumerate(initial):
        batch.configure(slot, **plans[p].settings)
        start(p, slot)
    for tick in range(ticks):
        for p in [p for p in slot_of if plans[p].leave == tick]:
            run.presses[p] += batch.remove_stream(slot_of.pop(p))
        for p, plan in enumerate(plans):
            if plan.join == tick and tick and p not in run.out:
                start(p, batch.add_stream(**plan.settings))
        for p in list(slot_of):
            if rng.random() < 0.04:  # an RFC 4733 packet for this call
                if p in open_event and rng.random() < 0.5:
                    start_ms = open_event.pop(p)
                    event = ("event", start_ms, start_ms + float(rng.uniform(20, 120)))
                elif p in open_event:
                    event = ("event", open_event[p], None)  # refresh
                else:
                    open_event[p] = fed[p] / 8 + float(rng.uniform(-30, 10))
                    event = ("event", open_event[p], None)
                batch.note_event(slot_of[p], event[1], event[2])
                run.history[p].append(event)
                run.events += 1
        if slot_of and rng.random() < 0.15 and all(fed[p] + FRAME <= plans[p].pcm.size for p in slot_of):
            block = np.full((batch.n_streams, FRAME), 12345, dtype=np.int16)  # free slots: ignored
            for p, slot in slot_of.items():
                block[slot] = plans[p].pcm[fed[p] : fed[p] + FRAME]
            out = batch.push(block)
            assert not out[~batch.active].any() and not batch.last_masked[~batch.active].any()
            slots = list(slot_of.values())
            groups = [(list(slot_of), FRAME, out[slots], batch.last_masked[slots])]
            run.whole_pushes += 1
        else:
            moving = [p for p in slot_of if rng.random() < 0.7]
            rng.shuffle(moving)
            n_cuts = min(int(rng.integers(0, 3)), max(len(moving) - 1, 0))
            cuts = np.sort(rng.choice(np.arange(1, len(moving)), size=n_cuts, replace=False)) if n_cuts else []
            groups = []
            for group in np.split(np.array(moving, dtype=int), cuts):
                m = 20 * int(rng.integers(1, 17))
                group = [int(p) for p in group if fed[p] + m <= plans[p].pcm.size]
                if not group:
                    continue
                rows = [slot_of[p] for p in group]
                block = np.stack([plans[p].pcm[fed[p] : fed[p] + m] for p in group])
                out = batch.push_rows(rows, block)
                assert out.shape == (len(rows), m) and out.dtype == np.int16
                assert batch.last_masked.shape == (len(rows), m)
                groups.append((group, m, out, batch.last_masked))
                run.sizes.add(m)
            run.split_ticks += len(groups) > 1
        for group, m, out, flags in groups:  # row j of out/flags is stream group[j]
            for j, p in enumerate(group):
                run.out[p].append(out[j])
                run.flags[p].append(flags[j])
                run.history[p].append(("push", plans[p].pcm[fed[p] : fed[p] + m]))
                fed[p] += m
        if tick % 9 == 0:
            for p, slot in slot_of.items():
                run.presses[p] += batch.drain_key_presses(slot)
    for p, slot in slot_of.items():
        run.presses[p] += batch.drain_key_presses(slot)
    return run


def check_rows_identical(plans: list[Plan], run: Schedule) -> None:
    for p, history in run.history.items():
        ref_out, ref_flags, ref_presses = replay(plans[p].settings, history)
        out = np.concatenate(run.out[p]) if run.out[p] else np.zeros(0, dtype=np.int16)
        flags = np.concatenate(run.flags[p]) if run.flags[p] else np.zeros(0, dtype=bool)
        assert np.array_equal(out, ref_out), f"stream {p}: output differs"
        assert np.array_equal(flags, ref_flags), f"stream {p}: masked flags differ"
        assert run.presses[p] == ref_presses, f"stream {p}: key presses differ"


def assert_has_teeth(run: Schedule) -> None:
    assert sum(int(f.sum()) for flags in run.flags.values() for f in flags) > 0  # masking happened
    assert sum(map(len, run.presses.values())) > 0  # key presses decoded
    assert run.events > 0 and run.reused > 0 and run.split_ticks > 0 and run.whole_pushes > 0
    assert len(run.sizes) > 5


@pytest.mark.parametrize("seed", [4, 5, 6])
def test_push_rows_equals_single_stream_maskers(seed):
    rng = np.random.default_rng(seed)
    plans = random_plans(rng, ticks=120, count=14)
    run = drive_rows(rng, plans, ticks=120)
    check_rows_identical(plans, run)
    assert_has_teeth(run)


@settings(max_examples=5, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_push_rows_equals_single_stream_maskers_any_schedule(seed):
    rng = np.random.default_rng(seed)
    plans = random_plans(rng, ticks=80, count=10)
    check_rows_identical(plans, drive_rows(rng, plans, ticks=80))


def test_push_rows_equals_single_stream_maskers_with_speech(speech):
    rng = np.random.default_rng(12)
    voice = np.concatenate(list(speech.values())).astype(float) * 0.5
    plans = random_plans(rng, ticks=120, count=12, speech=voice)
    check_rows_identical(plans, drive_rows(rng, plans, ticks=120))


def test_push_is_push_rows_of_every_active_slot():
    # Same streams, one masker driven by push(), the other by push_rows of the
    # active slots (in a shuffled order): same rows out, same flags, same presses.
    rng = np.random.default_rng(8)
    pcm = np.stack([mixed_signal(rng, 60) for _ in range(5)])
    a, b = BatchStreamingMasker(5), BatchStreamingMasker(5)
    for m in (a, b):
        m.remove_stream(2)
        m.note_event(3, 100.0, 300.0)
    active = np.array([0, 1, 3, 4])
    for f in range(60):
        frame = pcm[:, f * FRAME : (f + 1) * FRAME]
        out = a.push(frame)
        order = rng.permutation(active)
        got = b.push_rows(order, frame[order])
        assert np.array_equal(out[order], got) and not out[2].any()
        assert np.array_equal(a.last_masked[order], b.last_masked)
    presses = [a.drain_key_presses(i) for i in active]
    assert presses == [b.drain_key_presses(i) for i in active] and any(presses)


def test_push_rows_leaves_other_streams_where_they_were():
    # Stream 1 gets nothing for a while: it then continues exactly where it stopped.
    rng = np.random.default_rng(9)
    x = np.stack([mixed_signal(rng, 40) for _ in range(2)])
    batch = BatchStreamingMasker(2)
    out1 = [batch.push_rows([1], x[1:, :800])]
    for pos in range(0, 3200, 160):
        batch.push_rows([0], x[:1, pos : pos + 160])
    out1.append(batch.push_rows(np.array([1]), x[1:, 800:6400]))
    ref, _, _ = replay({}, [("push", x[1, :800]), ("push", x[1, 800:6400])])
    assert np.array_equal(np.concatenate(out1, axis=1)[0], ref)


def test_push_rows_bad_arguments_raise_and_change_nothing():
    rng = np.random.default_rng(10)
    pcm = np.stack([mixed_signal(rng, 40) for _ in range(4)])
    good, bad = BatchStreamingMasker(4), BatchStreamingMasker(4)
    for m in (good, bad):
        m.remove_stream(3)
        m.push_rows([0, 2], pcm[[0, 2], :400])
    before = bad.last_masked.copy()
    block2 = pcm[:2, 400:560]
    calls = {
        "duplicate": (ValueError, lambda: bad.push_rows([0, 0], block2)),
        "free slot": (IndexError, lambda: bad.push_rows([0, 3], block2)),
        "unknown slot": (IndexError, lambda: bad.push_rows([0, 4], block2)),
        "negative slot": (IndexError, lambda: bad.push_rows([-1, 0], block2)),
        "a mask, not indices": (ValueError, lambda: bad.push_rows(np.array([True, False, True, False]), block2)),
        "float indices": (ValueError, lambda: bad.push_rows([0.0, 1.0], block2)),
        "2-D rows": (ValueError, lambda: bad.push_rows([[0, 1]], block2)),
        "rows/block mismatch": (ValueError, lambda: bad.push_rows([0, 1, 2], block2)),
        "1-D block": (ValueError, lambda: bad.push_rows([0], pcm[0, :160])),
        "not whole blocks": (ValueError, lambda: bad.push_rows([0, 1], pcm[:2, :150])),
        "no samples": (ValueError, lambda: bad.push_rows([0, 1], pcm[:2, :0])),
    }
    for name, (error, call) in calls.items():
        with pytest.raises(error, match=r"slot|rows|shape|multiple|distinct|indices"):
            call()
        assert np.array_equal(bad.last_masked, before), name
    empty = bad.push_rows([], np.zeros((0, 40), dtype=np.int16))  # nothing to do is not an error
    assert empty.shape == (0, 40) and bad.last_masked.shape == (0, 40)
    # The failed calls left no trace: both maskers go on identically.
    for pos in range(400, pcm.shape[1] - 159, 160):
        rows, block = [2, 1, 0], pcm[[2, 1, 0], pos : pos + 160]
        assert np.array_equal(good.push_rows(rows, block), bad.push_rows(rows, block))
        assert np.array_equal(good.last_masked, bad.last_masked)
    for i in range(3):
        assert good.drain_key_presses(i) == bad.drain_key_presses(i)
