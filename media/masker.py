"""Key-tone masking with a fixed hold-back: nothing of a DTMF tone leaves.

Output lags input by exactly ``HOLDBACK_MS`` (30 ms).  A fast, deliberately loose
onset detector (10 ms windows every 2.5 ms at the 8 DTMF frequencies and 3 %
either side of them: both groups present, twist within +12/-8 dB, the two tones
>= 65 % of the window energy) flags dual-tone-like bursts; it is looser than the receiver in ``dtmf.py`` so
that anything the receiver could accept is masked (fail closed).  A burst is
confirmed after 4 flagged frames (10 ms); its start is placed at the rising
50 % crossing of the tone envelope minus half the window, less a 2.5 ms guard.

``StreamingMasker`` masks one call; ``BatchStreamingMasker`` masks many calls
with one set of numpy operations per push (one core then serves hundreds of
calls): every call's 20 ms frame at once, or with ``push_rows`` only the calls
whose packets just arrived.  Both run the same ``_MaskCore``, so a stream's
output is the same bit for bit whichever is used and however it was grouped.

Why 30 ms: the worst case is a tone first flagged one full window (10 ms) plus
one block (2.5 ms) after its onset, confirmed 7.5 ms later, with a 2.5 ms guard:
22.5 ms of look-ahead are needed; 30 ms leave a margin for late flags in noise
while staying under the 40 ms budget (measured leak: 0 ms, see BENCHMARKS.md).
Every output sample is decided from the frames complete when the input had
reached that sample + hold-back, never later, so the output does not depend on
how the input was chunked.

Masked intervals (bursts and RFC 4733 events) are replaced by one flat tone per
contiguous interval (or silence); everything else passes bit-exact.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from media.dtmf import (
    BLOCK,
    DBM0_PEAK,
    FREQS,
    HIGH_BLOCKS,
    HISTORY_BLOCKS,
    LOW_BLOCKS,
    SAMPLE_RATE,
    BatchDtmfDetector,
    BlockAnalyzer,
    KeyPress,
    _first_at_least,
    _first_below,
    check_rows,
    joint_windows,
    keep_rows,
)
from media.dtmf import GAP_FRAMES as RECEIVER_GAP_FRAMES

HOLDBACK_MS = 30.0
HOLDBACK = int(HOLDBACK_MS * SAMPLE_RATE / 1000)
DEFAULT_TONE_HZ = 1000.0  # one pure tone: no DTMF receiver can read it as a digit
DEFAULT_LEVEL_DBFS = -20.0

WINDOW = HIGH_BLOCKS * BLOCK  # 10 ms onset window
FLAG_MIN_LEVEL = DBM0_PEAK * 10 ** (-45 / 20)
FLAG_MAX_NORMAL_TWIST_DB = 12.0
FLAG_MAX_REVERSE_TWIST_DB = 8.0
FLAG_MIN_CONCENTRATION = 0.65  # as the receiver, but measured at 24 frequencies: never stricter
CONFIRM_FRAMES = 4  # 10 ms of persistence: bursts of >= 10 ms are hidden, speech rarely
GAP_FRAMES = 8  # bridge up to 20 ms of unflagged frames: a 10 ms drop-out stays one tone
GUARD = BLOCK  # 2.5 ms each side
ENV_RING = 16
EVENT_TIMEOUT_MS = 250.0  # RFC 4733 senders refresh every ~50 ms
EVENT_TIMEOUT_FRAMES = int(EVENT_TIMEOUT_MS * SAMPLE_RATE / 1000) // BLOCK
# The onset detector also looks 3 % either side of each DTMF frequency, so that
# off-frequency tones a lenient receiver might still accept get masked as well.
FLAG_FREQS = FREQS + tuple(round(f * 0.97) for f in FREQS) + tuple(round(f * 1.03) for f in FREQS)
# FLAG_FREQS is 3 sets (x1, x0.97, x1.03) of 4 low + 4 high tones, so that a
# reshape of the (tone-major) amplitudes to (3, 2, 4, ...) picks the groups.
_GROUPS = (3, 2, 4)
assert [f < 1100 for f in FLAG_FREQS] == [True] * 4 + [False] * 4 + [True] * 4 + [False] * 4 + [True] * 4 + [False] * 4
_MAX_TWIST = 10 ** (FLAG_MAX_NORMAL_TWIST_DB / 20)
_MIN_TWIST = 10 ** (-FLAG_MAX_REVERSE_TWIST_DB / 20)
_DEADLINE_OFFSET = HOLDBACK + 1


def frame_of_sample(n: np.ndarray | int) -> np.ndarray | int:
    """Last analysed frame allowed to decide output sample n (input at n + hold-back)."""
    return (n + _DEADLINE_OFFSET) // BLOCK - 1


def first_sample_decided_at(frame: int) -> int:
    """First output sample n with frame_of_sample(n) >= frame (it is monotonic):
    (n + offset) // BLOCK >= frame + 1  <=>  n >= BLOCK * (frame + 1) - offset."""
    return BLOCK * (frame + 1) - _DEADLINE_OFFSET


def positions(row_list: list[int] | None, slots: dict | set, more: dict | set = frozenset()) -> list[tuple[int, int]]:
    """(slot, j) for each slot in `slots` or `more` that is row_list[j] (None:
    every slot, j = slot), in row order.  A lookup per row: O(k) for k rows."""
    if not slots and not more:
        return []
    if row_list is None:
        return [(s, s) for s in sorted({*slots, *more})]
    if not more:
        return [(i, j) for j, i in enumerate(row_list) if i in slots]
    return [(i, j) for j, i in enumerate(row_list) if i in slots or i in more]


@dataclass(slots=True)
class _Interval:
    start: int  # samples, inclusive
    end: int | None  # exclusive; None while open
    start_frame: int  # frame at which the start was decided
    end_frame: int | None = None  # frame at which the end was decided
    refreshed: int = 0  # frame of the last note_event() for an open event


@dataclass(slots=True)
class _Run:
    first: int
    last: int
    count: int
    peak: float
    interval: _Interval | None = None


class _MaskCore:
    """Masking decisions for n streams: the DSP shared by StreamingMasker
    (n = 1, any chunk size) and BatchStreamingMasker.

    ``push`` advances every stream (lock-step) or only the streams in `rows`
    (whole blocks): their state rows are gathered, updated and written back,
    so a push of k streams costs O(k) whatever n is.  Every stream has its own
    clock (sample 0 = its first sample), so streams can start at different
    times and advance at different moments.  Python only runs for streams of
    the push that have a flagged frame, an open burst, an event or a masked
    interval: in a batch of mostly-speech calls the cost is the numpy part.
    ``prefix`` zero samples are output ahead of each stream (StreamingMasker:
    0, it returns fewer samples instead; batch: HOLDBACK, so every push returns
    a full frame per stream).
    """

    def __init__(self, n_streams: int, prefix: int) -> None:
        self.n = n_streams
        self.prefix = prefix
        self.analyzer = BlockAnalyzer(n_streams, FLAG_FREQS)
        self.detector = BatchDtmfDetector(n_streams)
        self.env = np.zeros((n_streams, ENV_RING))  # envelope of the last frames, for crossings
        self.buffer = np.zeros((n_streams, prefix), dtype=np.int16)  # input not yet output
        self.out_pos = np.full(n_streams, -prefix, dtype=np.int64)  # next sample to output, per stream
        self.amplitude = np.zeros(n_streams)
        self.tone_hz = np.full(n_streams, DEFAULT_TONE_HZ)
        # Sparse per-stream state, keyed by stream: absent = nothing going on.
        self.runs: dict[int, _Run] = {}
        self.intervals: dict[int, list[_Interval]] = {}
        self.events: dict[int, dict[float, _Interval]] = {}
        self.tone_start: dict[int, int] = {}  # start of the masked run being output

    def frames(self, i: int) -> int:
        """Frames (blocks) of stream i analysed so far."""
        return int(self.analyzer.blocks_done[i])

    def reset_stream(self, i: int) -> None:
        """Stream i starts afresh at its sample 0 (a new call in a reused slot)."""
        self.analyzer.reset_stream(i)
        self.detector.reset_stream(i)
        self.env[i] = 0
        self.buffer[i] = 0
        self.out_pos[i] = -self.prefix
        for state in (self.runs, self.intervals, self.events, self.tone_start):
            state.pop(i, None)

    def resize(self, n_streams: int) -> None:
        """Add streams (starting now) at the end."""
        extra = n_streams - self.n
        self.analyzer.resize(n_streams)
        self.detector.resize(n_streams)
        self.env = np.concatenate([self.env, np.zeros((extra, ENV_RING))])
        self.buffer = np.concatenate([self.buffer, np.zeros((extra, self.buffer.shape[1]), dtype=np.int16)])
        self.out_pos = np.concatenate([self.out_pos, np.full(extra, -self.prefix, dtype=np.int64)])
        self.amplitude = np.concatenate([self.amplitude, np.zeros(extra)])
        self.tone_hz = np.concatenate([self.tone_hz, np.full(extra, DEFAULT_TONE_HZ)])
        self.n = n_streams

    def push(
        self, samples: np.ndarray, count: int, rows: np.ndarray | None = None
    ) -> tuple[dict[int, list[KeyPress]], np.ndarray, np.ndarray]:
        """Take int16 samples (k, m) of the streams `rows` (None: all n, any m;
        else distinct slots, m whole blocks and count == m so that the hold-back
        buffer keeps its width), then output their next `count` samples (0: none
        yet).  Returns ({row j: key presses that ended}, int16 (k, count), masked
        (k, count)); row j is stream rows[j] (rows None: stream j)."""
        sel = slice(None) if rows is None else rows
        if rows is None:
            k0s, xe = self.analyzer.push_joint(samples)
        elif count != samples.shape[1]:
            raise ValueError(f"a push of some rows outputs the {samples.shape[1]} samples it takes, not {count}")
        else:
            k0s, xe = self.analyzer.push_rows_joint(rows, samples)
        row_list = None if rows is None else rows.tolist()
        frames = xe.shape[1] - HISTORY_BLOCKS
        # The 10 ms windows of the 24 flag frequencies include the receiver's 8
        # (FLAG_FREQS starts with FREQS): computed once, used by both.
        windows = joint_windows(xe, frames) if frames > 0 else None
        presses = self.detector.process_sparse(k0s, xe[..., : len(FREQS)], xe[..., -1].real, rows, windows)
        if windows is not None:
            self._flag(k0s, windows, rows, row_list)
        if self.events:
            self.expire_events([i for i, _ in positions(row_list, self.events)])
        data = np.concatenate([self.buffer[sel], samples], axis=1)
        out = data[:, :count].copy()
        self.buffer = keep_rows(self.buffer, rows, data[:, count:])
        masked = np.zeros(out.shape, dtype=bool)
        if count > 0:
            busy = positions(row_list, self.intervals, self.tone_start)
            if busy:
                self._emit_streams(busy, count, out, masked)
            self.out_pos[sel] += count
        return presses, out, masked

    def note_event(self, i: int, start_ms: float, end_ms: float | None) -> None:
        """See StreamingMasker.note_event (times on stream i's own clock)."""
        start = max(int(np.floor(start_ms * SAMPLE_RATE / 1000)) - GUARD, 0)
        end = None if end_ms is None else int(np.ceil(end_ms * SAMPLE_RATE / 1000)) + GUARD
        now = self.frames(i) - 1
        events = self.events.setdefault(i, {})
        iv = events.get(start_ms)
        if iv is None:
            iv = events[start_ms] = _Interval(start, end, now, None if end is None else now, now)
            self.intervals.setdefault(i, []).append(iv)
            return
        self.expire_events([i])
        if iv.end is None:
            iv.end, iv.end_frame = (end, now) if end is not None else (None, None)
            iv.refreshed = now

    def expire_events(self, streams: Iterable[int] | None = None) -> None:
        """End the open events of `streams` (None: all) not refreshed in time."""
        # Ends at a frame fixed by the last refresh, so chunking cannot move it.
        for i in list(self.events) if streams is None else streams:
            last = self.frames(i) - 1
            for iv in self.events.get(i, {}).values():
                expiry = iv.refreshed + EVENT_TIMEOUT_FRAMES + 1
                if iv.end is None and last >= expiry:
                    iv.end, iv.end_frame = (expiry + 1) * BLOCK, expiry

    def _flag(
        self,
        k0s: np.ndarray,
        windows: tuple[np.ndarray, np.ndarray, np.ndarray],
        rows: np.ndarray | None,
        row_list: list[int] | None,
    ) -> None:
        """Onset flags of the new frames from their 10 ms windows (joint_windows);
        row j is stream rows[j] (None: j)."""
        _, energy, amp = windows
        n, count = amp.shape[1:]
        # Strongest tone of each group over the 3 frequency sets and 4 tones (max
        # is exact in any order); tone-major amplitudes: one reduction of slabs.
        lo, hi = amp.reshape(*_GROUPS, n, count).max(axis=(0, 2))
        twist = lo / np.maximum(hi, 1e-9)
        power = lo**2 + hi**2
        flags = (
            (np.minimum(lo, hi) >= FLAG_MIN_LEVEL)
            & (twist <= _MAX_TWIST)
            & (twist >= _MIN_TWIST)
            & (power * (WINDOW / 2) >= FLAG_MIN_CONCENTRATION * energy)
        )
        env = np.empty((n, ENV_RING + count))
        env[:, :ENV_RING] = self.env[slice(None) if rows is None else rows]
        level = env[:, ENV_RING:]
        np.sqrt(power, out=level)
        self.env = keep_rows(self.env, rows, env[:, -ENV_RING:])
        hit_rows, rels = flags.nonzero()
        todo: dict[int, tuple[int, int, int]] = {}  # row j -> its slice a:b of the flagged frames, its row index r
        if hit_rows.size:
            levels = level[hit_rows, rels]
            head = np.empty(hit_rows.size, dtype=bool)  # first flagged frame of its row
            head[0] = True
            np.not_equal(hit_rows[1:], hit_rows[:-1], out=head[1:])
            starts = head.nonzero()[0]
            # Per row: first/last flagged frame and the strongest envelope (max
            # is exact), all the common case needs.
            first_rels = rels[starts].tolist()
            last_rels = np.maximum.reduceat(rels, starts).tolist()
            peaks = np.maximum.reduceat(levels, starts).tolist()
            cuts = [*starts.tolist(), hit_rows.size]
            todo = {j: (cuts[r], cuts[r + 1], r) for r, j in enumerate(hit_rows[starts].tolist())}
        for _, j in positions(row_list, self.runs):
            todo.setdefault(j, (0, 0, -1))  # open bursts may end without flags
        if not todo:
            return
        k0_list = k0s.tolist()
        runs = self.runs
        for j, (a, b, r) in todo.items():
            k0 = k0_list[j]
            i = j if row_list is None else row_list[j]
            run = runs.get(i)
            if (
                a < b
                and run is not None
                and run.interval is not None
                and k0 + first_rels[r] - run.last <= GAP_FRAMES + 1
                and last_rels[r] - first_rels[r] <= GAP_FRAMES + 1
            ):
                # Most common: a confirmed burst goes on (_flag_stream's bulk path, inline).
                if peaks[r] > run.peak:
                    run.peak = peaks[r]
                run.count += b - a
                run.last = k0 + last_rels[r]
                if k0 + count - 1 - run.last > GAP_FRAMES:
                    self._close_run(i, run, env[j], k0 - ENV_RING)
            else:
                flagged = (rels[a:b].tolist(), levels[a:b].tolist()) if a < b else ([], [])
                self._flag_stream(i, k0, *flagged, env, j, k0 + count)

    def _flag_stream(
        self, i: int, k0: int, rels: list[int], levels: list[float], env: np.ndarray, j: int, end_frame: int
    ) -> None:
        """Bursts of stream i from its flagged frames k0 + rels (envelope `levels`);
        env[j, 0] is frame k0 - ENV_RING."""
        run = self.runs.get(i)
        base = k0 - ENV_RING
        if rels and rels[-1] - rels[0] <= GAP_FRAMES + 1 and (run is None or k0 + rels[0] - run.last <= GAP_FRAMES + 1):
            # Common cases: no gap ends the burst, it starts or goes on: the loop
            # below in bulk (max is exact), split where the burst gets confirmed.
            if run is None:
                run = self.runs[i] = _Run(k0 + rels[0], k0 + rels[0], 0, 0.0)
            until = CONFIRM_FRAMES - run.count if run.interval is None else 0  # frames until confirmed
            if 0 < until <= len(rels):
                peak = max(levels[:until])
                if peak > run.peak:
                    run.peak = peak
                run.count += until
                run.last = k = k0 + rels[until - 1]
                run.interval = _Interval(self._onset(run, env[j], base, k), None, k)
                self.intervals.setdefault(i, []).append(run.interval)
                rels, levels = rels[until:], levels[until:]
            if rels:
                peak = max(levels)
                if peak > run.peak:
                    run.peak = peak
                run.count += len(rels)
                run.last = k0 + rels[-1]
        else:
            for rel, level in zip(rels, levels, strict=True):
                k = k0 + rel
                if run is not None and k - run.last > GAP_FRAMES + 1:
                    self._close_run(i, run, env[j], base)
                    run = None
                if run is None:
                    run = self.runs[i] = _Run(k, k, 0, 0.0)
                run.last = k
                run.count += 1
                run.peak = max(run.peak, level)
                if run.interval is None and run.count >= CONFIRM_FRAMES:
                    run.interval = _Interval(self._onset(run, env[j], base, k), None, k)
                    self.intervals.setdefault(i, []).append(run.interval)
        if run is not None and end_frame - 1 - run.last > GAP_FRAMES:
            self._close_run(i, run, env[j], base)

    @staticmethod
    def _onset(run: _Run, env: np.ndarray, base: int, now: int) -> int:
        lo_frame = max(run.first - 5, base)
        seg = env[lo_frame - base : now - base + 1].tolist()  # Python floats: same IEEE operations
        half = 0.5 * run.peak
        j = _first_at_least(seg, half) - 1  # np.argmax(seg >= half) - 1
        if j < 0:
            t = (lo_frame + 1) * BLOCK - WINDOW
        else:
            a0, a1 = seg[j], seg[j + 1]
            t = (lo_frame + j + 1) * BLOCK + BLOCK * (half - a0) / (a1 - a0) - WINDOW / 2
        return max(math.floor(t) - GUARD, 0)

    def _close_run(self, i: int, run: _Run, env: np.ndarray, base: int) -> None:
        del self.runs[i]
        if run.interval is None:
            return  # too short to be a key press
        closing = run.last + GAP_FRAMES + 1
        seg = env[run.last - base : closing - base + 1].tolist()
        half = 0.5 * run.peak
        j = _first_below(seg, half) or 0  # np.argmax(seg < half)
        if j == 0:
            t = (run.last + 1) * BLOCK - WINDOW / 2
        else:
            a0, a1 = seg[j - 1], seg[j]
            t = (run.last + j) * BLOCK + BLOCK * (a0 - half) / (a0 - a1) - WINDOW / 2
        run.interval.end = math.ceil(t) + GUARD
        run.interval.end_frame = closing

    # -- output side ------------------------------------------------------
    def _emit_streams(self, busy: list[tuple[int, int]], count: int, out: np.ndarray, masked: np.ndarray) -> None:
        """Mask the next `count` samples of the streams in `busy`, (stream, row
        of out) pairs, in place.

        frame_of_sample is monotonic, so an interval masks one contiguous range:
        n >= start once its start frame is decided, and (n < end or its end
        frame not decided yet), i.e. max(start, first_sample_decided_at(start_frame))
        <= n < max(end, first_sample_decided_at(end_frame)).  Each stream's
        masked runs are written as slices of a cached tone."""
        streams = [i for i, _ in busy]
        firsts = self.out_pos[streams].tolist()
        settings = zip(self.amplitude[streams].tolist(), self.tone_hz[streams].tolist(), strict=True)
        decided = first_sample_decided_at(0)  # first_sample_decided_at(f) == BLOCK * f + decided
        intervals, events, tone_starts = self.intervals, self.events, self.tone_start
        # Rows masked from start to end with the first stream's setting (usually all).
        setting = (float(self.amplitude[busy[0][0]]), float(self.tone_hz[busy[0][0]]))
        whole_rows: list[int] = []
        whole_t0: list[int] = []
        for (i, j), first, (amplitude, tone_hz) in zip(busy, firsts, settings, strict=True):
            until = first + count
            spans = []
            ending = False  # an interval ends within this output: drop it afterwards
            for iv in intervals.get(i, ()):
                end = iv.end
                if end is not None:
                    ending = ending or end <= until
                    if end <= first:
                        continue  # already over before this output started: skipped, as ever
                lo = BLOCK * iv.start_frame + decided
                lo = (iv.start if iv.start > lo else lo) - first
                if end is None:
                    hi = count
                else:
                    hi = BLOCK * iv.end_frame + decided
                    hi = (end if end > hi else hi) - first
                if lo < hi and lo < count and hi > 0:
                    spans.append([lo if lo > 0 else 0, hi if hi < count else count])
            if ending:
                kept = [iv for iv in intervals.pop(i) if iv.end is None or iv.end > until]
                if kept:
                    intervals[i] = kept
            if events and i in events:
                kept_events = {k: iv for k, iv in events.pop(i).items() if iv.end is None or iv.end > until}
                if kept_events:
                    events[i] = kept_events
            tone_start = tone_starts.pop(i, -1)  # -1: the last output did not end in a tone
            if len(spans) > 1:
                spans.sort()
                merged = [spans[0]]
                for a, b in spans[1:]:
                    if a <= merged[-1][1]:  # overlapping or touching: one masked run
                        merged[-1][1] = max(merged[-1][1], b)
                    else:
                        merged.append([a, b])
                spans = merged
            for a, b in spans:
                # A run masked from sample 0 continues the last output's tone.
                start = tone_start if a == 0 and tone_start >= 0 else first + a
                t0 = first + a - start  # tone sample number of out[j, a]
                if b == count:
                    tone_starts[i] = start
                    if a == 0 and (amplitude, tone_hz) == setting and t0 + count <= _TONE_CACHE_SAMPLES:
                        whole_rows.append(j)  # all of the row: written below, all at once
                        whole_t0.append(t0)
                        continue
                cached = _TONE_CACHE.get((amplitude, tone_hz))
                if cached is not None and t0 + b - a <= cached.size:
                    out[j, a:b] = cached[t0 : t0 + b - a]
                else:
                    out[j, a:b] = _tone(amplitude, tone_hz, t0, t0 + b - a)
                masked[j, a:b] = True
        if len(whole_rows) >= 8:  # one gather pays off over many rows
            tone = _tone(*setting, 0, max(whole_t0) + count)
            out[whole_rows] = tone[np.add.outer(whole_t0, np.arange(count))]
            masked[whole_rows] = True
        else:
            for j, t0 in zip(whole_rows, whole_t0, strict=True):
                out[j] = _tone(*setting, t0, t0 + count)
                masked[j] = True


_TONE_CACHE: dict[tuple[float, float], np.ndarray] = {}  # per (amplitude, tone_hz): samples 0..size-1
_TONE_CACHE_SAMPLES = SAMPLE_RATE  # longest tone cached (1 s); later samples are computed as needed


def _tone(amplitude: float, tone_hz: float, t0: int, t1: int) -> np.ndarray:
    """Masking tone samples t0..t1-1 (float64, before the int16 cast) by the one
    expression np.round(amplitude * sin(2 pi f t / fs)).  np.sin is elementwise,
    so a sample's value does not depend on the array it was computed in: cached
    samples are the very values computing them on the spot gives."""
    if t1 > _TONE_CACHE_SAMPLES:
        return _tone_samples(amplitude, tone_hz, np.arange(t0, t1))
    cached = _TONE_CACHE.get((amplitude, tone_hz))
    if cached is None or cached.size < t1:
        size = min(max(1024, 1 << (t1 - 1).bit_length()), _TONE_CACHE_SAMPLES)
        if cached is None and len(_TONE_CACHE) >= 64:
            _TONE_CACHE.clear()  # many settings in turn: keep the cache bounded
        cached = _TONE_CACHE[(amplitude, tone_hz)] = _tone_samples(amplitude, tone_hz, np.arange(size))
        cached.flags.writeable = False
    return cached[t0:t1]


def _tone_samples(amplitude: float, tone_hz: float, t: np.ndarray) -> np.ndarray:
    amplitudes, tones = np.full(t.size, amplitude), np.full(t.size, tone_hz)
    return np.round(amplitudes * np.sin(2 * np.pi * tones * t / SAMPLE_RATE))


def _amplitude(mode: str, tone_hz: float, level_dbfs: float) -> float:
    """Peak of the masking tone; checks the settings."""
    if mode not in ("tone", "silence"):
        raise ValueError(f"mode must be 'tone' or 'silence', got {mode!r}")
    if not 0 < tone_hz < SAMPLE_RATE / 2:
        raise ValueError(f"tone_hz must be between 0 and {SAMPLE_RATE // 2}")
    return 0.0 if mode == "silence" else 32767.0 * 10 ** (level_dbfs / 20)


class StreamingMasker:
    """Per-call masker: ``push(samples) -> output``, ``flush() -> rest``.

    ``mode`` is "tone" (flat tone at ``tone_hz``/``level_dbfs``) or "silence".
    ``key_presses`` lists the digits the DTMF receiver decoded so far.
    """

    def __init__(
        self,
        mode: str = "tone",
        tone_hz: float = DEFAULT_TONE_HZ,
        level_dbfs: float = DEFAULT_LEVEL_DBFS,
        sample_rate: int = SAMPLE_RATE,
    ) -> None:
        if mode not in ("tone", "silence"):
            raise ValueError(f"mode must be 'tone' or 'silence', got {mode!r}")
        if sample_rate != SAMPLE_RATE:
            raise ValueError(f"only {SAMPLE_RATE} Hz is supported, got {sample_rate}")
        self._core = _MaskCore(1, prefix=0)
        self.mode = mode
        self.amplitude = _amplitude(mode, tone_hz, level_dbfs)
        self.tone_hz = float(tone_hz)
        self.key_presses: list[KeyPress] = []
        self.last_masked = np.zeros(0, dtype=bool)  # which samples of the last output were replaced
        self._in_pos = 0
        self._flushed = False

    # The tone settings live in the core (per stream there); kept as attributes.
    @property
    def amplitude(self) -> float:
        return float(self._core.amplitude[0])

    @amplitude.setter
    def amplitude(self, value: float) -> None:
        self._core.amplitude[0] = value

    @property
    def tone_hz(self) -> float:
        return float(self._core.tone_hz[0])

    @tone_hz.setter
    def tone_hz(self, value: float) -> None:
        self._core.tone_hz[0] = value

    def push(self, samples: np.ndarray) -> np.ndarray:
        """Add int16 samples (any length); return the output now due (int16)."""
        if self._flushed:
            raise RuntimeError("masker already flushed")
        samples = np.asarray(samples, dtype=np.int16).reshape(-1)
        return self._push(samples, self._in_pos + samples.size)

    def flush(self) -> np.ndarray:
        """End of stream: return the held-back output (as if silence followed)."""
        if self._flushed:
            return np.zeros(0, dtype=np.int16)
        real_end = self._in_pos
        seen = len(self.key_presses)
        # Enough silence to close open bursts here and open key presses in the receiver.
        pad = (-real_end) % BLOCK + HOLDBACK + (max(GAP_FRAMES, RECEIVER_GAP_FRAMES) + LOW_BLOCKS + 4) * BLOCK
        out = self._push(np.zeros(pad, dtype=np.int16), real_end)
        limit = 1000.0 * real_end / SAMPLE_RATE
        self.key_presses[seen:] = [KeyPress(k.digit, k.start_ms, min(k.end_ms, limit)) for k in self.key_presses[seen:]]
        self._flushed = True
        return out

    def note_event(self, start_ms: float, end_ms: float | None) -> None:
        """Mask [start_ms, end_ms) of the input (an RFC 4733 key press); call with
        end_ms=None when the event starts and again with the same start_ms when it
        ends; repeat the open call on every update packet: an open event not
        refreshed for EVENT_TIMEOUT_MS (lost end packets) stops masking by itself.
        Only samples not yet output can still be masked."""
        self._core.note_event(0, start_ms, end_ms)

    def _push(self, samples: np.ndarray, emit_until: int) -> np.ndarray:
        self._in_pos += samples.size
        count = min(self._in_pos - HOLDBACK, emit_until) - int(self._core.out_pos[0])
        presses, out, masked = self._core.push(samples[None, :], max(count, 0))
        self.key_presses.extend(presses.get(0, ()))
        self.last_masked = masked[0]
        return out[0]


class BatchStreamingMasker:
    """Masks n calls at once with one set of numpy operations per push.

    ``push(block)`` takes an (n_streams, frame) int16 array (row i = next frame
    of stream i) and returns the (n_streams, frame) masked output.  Row i of the
    output is what a StreamingMasker fed stream i's frames returns, delayed so
    that every push yields a full frame: the first HOLDBACK samples of each
    stream's output are silence (the hold-back), then its masker output follows
    bit for bit.  ``last_masked`` (n_streams, frame) marks replaced samples.

    ``push_rows(rows, block)`` advances only the streams in `rows` (calls whose
    packets arrived), by any whole number of 2.5 ms blocks, and returns as many
    output samples for each; the other streams do not move.  Each stream's clock
    is its own count of input samples, so its output (delayed by HOLDBACK as
    above) and key presses are the same bit for bit however its pushes were
    grouped with other streams', and equal to a StreamingMasker fed the same
    chunks.  After push_rows, ``last_masked`` is (len(rows), m), row j for slot
    rows[j].  ``push`` is push_rows of every active slot, in slot order.
    ``pressed_slots``: the slots with key presses not drained yet
    (``drain_key_presses``); any other slot's drain would return nothing.

    Slots: the n_streams slots start active.  ``remove_stream(i)`` frees a slot
    (its rows are then ignored on input, zero on output, and it does not
    advance); ``add_stream()``
    starts a new stream, at its sample 0, in the lowest free slot or in a new
    slot appended at the end (n_streams grows by one: size the next block by
    ``n_streams``).  Each stream has its own clock: ``note_event`` times and
    key press times are ms from that stream's first frame.
    """

    def __init__(
        self,
        n_streams: int,
        mode: str = "tone",
        tone_hz: float = DEFAULT_TONE_HZ,
        level_dbfs: float = DEFAULT_LEVEL_DBFS,
        frame: int = 160,
    ) -> None:
        if frame <= 0 or frame % BLOCK:
            # Whole blocks per frame keep every stream block-aligned, so streams
            # can be (re)started between any two frames.
            raise ValueError(f"frame must be a positive multiple of {BLOCK} samples, got {frame}")
        self.frame = frame
        self._defaults = (mode, float(tone_hz), float(level_dbfs))
        amplitude = _amplitude(mode, tone_hz, level_dbfs)
        self._core = _MaskCore(n_streams, prefix=HOLDBACK)
        self._core.amplitude[:] = amplitude
        self._core.tone_hz[:] = float(tone_hz)
        self._active = np.ones(n_streams, dtype=bool)
        self._presses: list[list[KeyPress]] = [[] for _ in range(n_streams)]
        self.last_masked = np.zeros((n_streams, frame), dtype=bool)
        self.pressed_slots: set[int] = set()  # slots with key presses not drained yet

    @property
    def n_streams(self) -> int:
        """Number of slots (rows of the blocks pushed), active or free."""
        return self._core.n

    @property
    def active(self) -> np.ndarray:
        """Which slots hold a stream (a copy)."""
        return self._active.copy()

    def add_stream(self, mode: str | None = None, tone_hz: float | None = None, level_dbfs: float | None = None) -> int:
        """Start a new stream (its sample 0 is in the next push); return its slot.
        Unset settings default to the ones given to the constructor."""
        _amplitude(*self._settings(mode, tone_hz, level_dbfs))  # check before taking a slot
        free = np.flatnonzero(~self._active)
        if free.size:
            index = int(free[0])
            self._core.reset_stream(index)
        else:
            index = self._core.n
            self._core.resize(index + 1)
            self._active = np.append(self._active, False)
            self._presses.append([])
            self.last_masked = np.zeros((index + 1, self.frame), dtype=bool)
        self._active[index] = True
        self._presses[index] = []
        self.configure(index, mode, tone_hz, level_dbfs)
        return index

    def configure(
        self, index: int, mode: str | None = None, tone_hz: float | None = None, level_dbfs: float | None = None
    ) -> None:
        """Set the masking tone of the stream in slot `index` (unset: constructor's
        settings); it applies to the samples output from the next push on."""
        self._check(index)
        mode, tone_hz, level_dbfs = self._settings(mode, tone_hz, level_dbfs)
        self._core.amplitude[index] = _amplitude(mode, tone_hz, level_dbfs)
        self._core.tone_hz[index] = tone_hz

    def _settings(self, mode: str | None, tone_hz: float | None, level_dbfs: float | None) -> tuple[str, float, float]:
        return (
            self._defaults[0] if mode is None else mode,
            self._defaults[1] if tone_hz is None else float(tone_hz),
            self._defaults[2] if level_dbfs is None else float(level_dbfs),
        )

    def remove_stream(self, index: int) -> list[KeyPress]:
        """End the stream in slot `index` and free the slot; return its key presses
        not drained yet.  The held-back last 30 ms of its audio are dropped (the
        call is gone) and a press still open at that moment is not reported."""
        self._check(index)
        self._active[index] = False
        self._core.reset_stream(index)  # an idle slot costs no Python work
        presses, self._presses[index] = self._presses[index], []
        self.pressed_slots.discard(index)
        return presses

    def push(self, block: np.ndarray) -> np.ndarray:
        """Mask one frame of every stream: (n_streams, frame) in, same shape out
        (free slots: ignored, zero out).  ``last_masked`` becomes (n_streams, frame)."""
        block = np.asarray(block, dtype=np.int16)
        if block.shape != (self._core.n, self.frame):
            raise ValueError(f"expected shape ({self._core.n}, {self.frame}), got {block.shape}")
        if self._active.all():
            return self._push(None, block)  # every slot: whole arrays, no gather/scatter
        rows = np.flatnonzero(self._active)
        out = np.zeros(block.shape, dtype=np.int16)
        masked = np.zeros(block.shape, dtype=bool)
        out[rows] = self._push(rows, block[rows])
        masked[rows] = self.last_masked
        self.last_masked = masked
        return out

    def push_rows(self, rows: Sequence[int] | np.ndarray, block: np.ndarray) -> np.ndarray:
        """Mask the next m samples of the streams in `rows` only (distinct active
        slots, any order): block (len(rows), m) int16, m a positive multiple of
        BLOCK (20 samples), any m from push to push.  Returns the (len(rows), m)
        output, row j for slot rows[j]; ``last_masked`` becomes the (len(rows), m)
        flags of this push.  Streams not in `rows` do not advance.  Bad arguments
        raise ValueError (shape, duplicates) or IndexError (free or unknown slot)
        and change nothing."""
        rows, block = check_rows(rows, block, self._core.n)
        if not self._active[rows].all():
            raise IndexError(f"no active stream in slot {int(rows[~self._active[rows]][0])}")
        return self._push(rows, block.astype(np.int16, copy=False))

    def _push(self, rows: np.ndarray | None, block: np.ndarray) -> np.ndarray:
        presses, out, self.last_masked = self._core.push(block, block.shape[1], rows)
        for j, found in presses.items():
            slot = j if rows is None else int(rows[j])
            self._presses[slot].extend(found)
            self.pressed_slots.add(slot)
        return out

    def note_event(self, index: int, start_ms: float, end_ms: float | None) -> None:
        """StreamingMasker.note_event for the stream in slot `index`."""
        self._check(index)
        self._core.note_event(index, start_ms, end_ms)

    def drain_key_presses(self, index: int) -> list[KeyPress]:
        """Key presses the receiver decoded in slot `index` since the last drain."""
        self._check(index)
        presses, self._presses[index] = self._presses[index], []
        self.pressed_slots.discard(index)
        return presses

    def _check(self, index: int) -> None:
        if not (0 <= index < self._core.n and self._active[index]):
            raise IndexError(f"no active stream in slot {index}")


def mask_pcm(
    samples: np.ndarray,
    mode: str = "tone",
    tone_hz: float = DEFAULT_TONE_HZ,
    level_dbfs: float = DEFAULT_LEVEL_DBFS,
) -> np.ndarray:
    """Mask a whole signal with the streaming masker; the output is time-aligned
    with the input (hold-back compensated) and has the same length."""
    masker = StreamingMasker(mode, tone_hz, level_dbfs)
    return np.concatenate([masker.push(samples), masker.flush()])
