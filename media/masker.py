"""Key-tone masking with a fixed hold-back: nothing of a DTMF tone leaves.

Output lags input by exactly ``HOLDBACK_MS`` (30 ms).  A fast, deliberately loose
onset detector (10 ms windows every 2.5 ms at the 8 DTMF frequencies and 3 %
either side of them: both groups present, twist within +12/-8 dB, the two tones
>= 65 % of the window energy) flags dual-tone-like bursts; it is looser than the receiver in ``dtmf.py`` so
that anything the receiver could accept is masked (fail closed).  A burst is
confirmed after 4 flagged frames (10 ms); its start is placed at the rising
50 % crossing of the tone envelope minus half the window, less a 2.5 ms guard.

``StreamingMasker`` masks one call; ``BatchStreamingMasker`` masks many calls
with one set of numpy operations per 20 ms frame (one core then serves
hundreds of calls).  Both run the same ``_MaskCore``, so a stream's output is
the same bit for bit whichever is used.

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
    window_sum,
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
# reshape to (..., 3, 2, 4) picks the groups without fancy indexing.
_GROUPS = (3, 2, 4)
assert [f < 1100 for f in FLAG_FREQS] == [True] * 4 + [False] * 4 + [True] * 4 + [False] * 4 + [True] * 4 + [False] * 4
_MAX_TWIST = 10 ** (FLAG_MAX_NORMAL_TWIST_DB / 20)
_MIN_TWIST = 10 ** (-FLAG_MAX_REVERSE_TWIST_DB / 20)
_DEADLINE_OFFSET = HOLDBACK + 1


def frame_of_sample(n: np.ndarray | int) -> np.ndarray | int:
    """Last analysed frame allowed to decide output sample n (input at n + hold-back)."""
    return (n + _DEADLINE_OFFSET) // BLOCK - 1


@dataclass
class _Interval:
    start: int  # samples, inclusive
    end: int | None  # exclusive; None while open
    start_frame: int  # frame at which the start was decided
    end_frame: int | None = None  # frame at which the end was decided
    refreshed: int = 0  # frame of the last note_event() for an open event


@dataclass
class _Run:
    first: int
    last: int
    count: int
    peak: float
    interval: _Interval | None = None


class _MaskCore:
    """Masking decisions for n streams fed in lock-step: the DSP shared by
    StreamingMasker (n = 1, any chunk size) and BatchStreamingMasker.

    Every stream has its own clock (sample 0 = its first sample), so streams
    can start at different times.  Python only runs for streams that have a
    flagged frame, an open burst, an event or a masked interval: in a batch of
    mostly-speech calls the per-frame cost is the vectorised numpy part.
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
        return self.analyzer.blocks_done - int(self.analyzer.origin[i])

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

    # -- input side -------------------------------------------------------
    def analyse(self, samples: np.ndarray) -> list[list[KeyPress]]:
        """Take (n, m) int16 samples; return the key presses that ended, per stream."""
        self.buffer = np.concatenate([self.buffer, samples], axis=1)
        k0, x, e = self.analyzer.push(samples)
        k0s = k0 - self.analyzer.origin
        presses = self.detector.process(k0s, x[..., : len(FREQS)], e)
        self._flag(k0s, x, e)
        self.expire_events()
        return presses

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
        self.expire_events(i)
        if iv.end is None:
            iv.end, iv.end_frame = (end, now) if end is not None else (None, None)
            iv.refreshed = now

    def expire_events(self, only: int | None = None) -> None:
        # Ends at a frame fixed by the last refresh, so chunking cannot move it.
        for i, events in self.events.items() if only is None else [(only, self.events.get(only, {}))]:
            last = self.frames(i) - 1
            for iv in events.values():
                expiry = iv.refreshed + EVENT_TIMEOUT_FRAMES + 1
                if iv.end is None and last >= expiry:
                    iv.end, iv.end_frame = (expiry + 1) * BLOCK, expiry

    def _flag(self, k0s: np.ndarray, x: np.ndarray, e: np.ndarray) -> None:
        count = x.shape[1] - HISTORY_BLOCKS
        if count <= 0:
            return
        amp = np.abs(window_sum(x, HIGH_BLOCKS, count)) * (2.0 / WINDOW)
        energy = window_sum(e, HIGH_BLOCKS, count)
        groups = amp.reshape(self.n, count, *_GROUPS).max(axis=(2, 4))  # max is exact in any order
        lo, hi = groups[..., 0], groups[..., 1]
        twist = lo / np.maximum(hi, 1e-9)
        power = lo**2 + hi**2
        flags = (
            (lo >= FLAG_MIN_LEVEL)
            & (hi >= FLAG_MIN_LEVEL)
            & (twist <= _MAX_TWIST)
            & (twist >= _MIN_TWIST)
            & (power * (WINDOW / 2) >= FLAG_MIN_CONCENTRATION * energy)
        )
        env = np.concatenate([self.env, np.sqrt(power)], axis=1)
        self.env = env[:, -ENV_RING:]
        rows, rels = np.nonzero(flags)
        todo: dict[int, list[int]] = {i: [] for i in self.runs}
        for i, rel in zip(rows.tolist(), rels.tolist(), strict=True):
            todo.setdefault(i, []).append(rel)
        for i, flagged in todo.items():
            k0 = int(k0s[i])
            self._flag_stream(i, k0, flagged, env[i], k0 - ENV_RING, k0 + count)

    def _flag_stream(self, i: int, k0: int, flagged: list[int], env: np.ndarray, base: int, end_frame: int) -> None:
        """Bursts of stream i from its flagged frames; env[0] is frame `base`."""
        run = self.runs.get(i)
        for rel in flagged:
            k = k0 + rel
            if run is not None and k - run.last > GAP_FRAMES + 1:
                self._close_run(i, run, env, base)
                run = None
            if run is None:
                run = self.runs[i] = _Run(k, k, 0, 0.0)
            run.last = k
            run.count += 1
            run.peak = max(run.peak, float(env[k - base]))
            if run.interval is None and run.count >= CONFIRM_FRAMES:
                run.interval = _Interval(self._onset(run, env, base, k), None, k)
                self.intervals.setdefault(i, []).append(run.interval)
        if run is not None and end_frame - 1 - run.last > GAP_FRAMES:
            self._close_run(i, run, env, base)

    @staticmethod
    def _onset(run: _Run, env: np.ndarray, base: int, now: int) -> int:
        lo_frame = max(run.first - 5, base)
        seg = env[lo_frame - base : now - base + 1]
        half = 0.5 * run.peak
        j = int(np.argmax(seg >= half)) - 1
        if j < 0:
            t = (lo_frame + 1) * BLOCK - WINDOW
        else:
            a0, a1 = seg[j], seg[j + 1]
            t = (lo_frame + j + 1) * BLOCK + BLOCK * (half - a0) / (a1 - a0) - WINDOW / 2
        return max(int(np.floor(t)) - GUARD, 0)

    def _close_run(self, i: int, run: _Run, env: np.ndarray, base: int) -> None:
        del self.runs[i]
        if run.interval is None:
            return  # too short to be a key press
        closing = run.last + GAP_FRAMES + 1
        seg = env[run.last - base : closing - base + 1]
        half = 0.5 * run.peak
        j = int(np.argmax(seg < half))
        if j == 0:
            t = (run.last + 1) * BLOCK - WINDOW / 2
        else:
            a0, a1 = seg[j - 1], seg[j]
            t = (run.last + j) * BLOCK + BLOCK * (a0 - half) / (a0 - a1) - WINDOW / 2
        run.interval.end = int(np.ceil(t)) + GUARD
        run.interval.end_frame = closing

    # -- output side ------------------------------------------------------
    def emit(self, count: int) -> tuple[np.ndarray, np.ndarray]:
        """Output the next `count` (> 0) samples of every stream: (int16, masked)."""
        out = self.buffer[:, :count].copy()
        self.buffer = self.buffer[:, count:]
        masked = np.zeros((self.n, count), dtype=bool)
        busy = sorted(set(self.intervals) | set(self.tone_start))
        if busy:
            self._emit_streams(busy, count, out, masked)
        self.out_pos += count
        return out, masked

    def _emit_streams(self, busy: list[int], count: int, out: np.ndarray, masked: np.ndarray) -> None:
        """Mask the next `count` samples of the streams in `busy` (in place), all
        at once: one row per stream, one row per interval."""
        rows = np.array(busy)
        first = self.out_pos[rows]
        n = first[:, None] + np.arange(count)[None, :]
        decided = frame_of_sample(n)
        # Intervals already over before this output started are skipped, as ever.
        live = [
            (r, iv)
            for r, i in enumerate(busy)
            for iv in self.intervals.get(i, ())
            if iv.end is None or iv.end > first[r]
        ]
        mask = np.zeros((rows.size, count), dtype=bool)
        if live:
            never = np.iinfo(np.int64).max  # open interval: no end yet
            r_iv = np.array([r for r, _ in live])
            params = np.array(
                [
                    (iv.start, iv.start_frame, never, never)
                    if iv.end is None
                    else (iv.start, iv.start_frame, iv.end, iv.end_frame)
                    for _, iv in live
                ],
                dtype=np.int64,
            )
            n_iv, d_iv = n[r_iv], decided[r_iv]
            hit = (
                (n_iv >= params[:, 0:1])
                & (d_iv >= params[:, 1:2])
                & ((n_iv < params[:, 2:3]) | (d_iv < params[:, 3:4]))
            )
            # live is grouped by row: OR each row's intervals in one reduceat.
            groups, offsets = np.unique(r_iv, return_index=True)
            mask[groups] = np.logical_or.reduceat(hit, offsets, axis=0)
        ends = first + count
        for r, i in enumerate(busy):
            until = int(ends[r])
            kept = [iv for iv in self.intervals.pop(i, ()) if iv.end is None or iv.end > until]
            if kept:
                self.intervals[i] = kept
            events = {k: iv for k, iv in self.events.pop(i, {}).items() if iv.end is None or iv.end > until}
            if events:
                self.events[i] = events
        tone_start = np.array([self.tone_start.pop(i, -1) for i in busy], dtype=np.int64)  # -1: none
        if not mask.any():
            return
        # Index of the first sample of each masked run, carried across calls.
        starts = mask & ~np.concatenate([(tone_start >= 0)[:, None], mask[:, :-1]], axis=1)
        run_id = np.maximum.accumulate(np.where(starts, n, -1), axis=1)
        run_id = np.where(run_id < 0, tone_start[:, None], run_id)
        t = (n - run_id)[mask]
        amplitude = np.broadcast_to(self.amplitude[rows][:, None], mask.shape)[mask]
        tone_hz = np.broadcast_to(self.tone_hz[rows][:, None], mask.shape)[mask]
        sub = out[rows]
        # Same operations, in the same order, as for one stream: bit-identical.
        sub[mask] = np.round(amplitude * np.sin(2 * np.pi * tone_hz * t / SAMPLE_RATE))
        out[rows] = sub
        masked[rows] = mask
        for r in np.flatnonzero(mask[:, -1]).tolist():
            self.tone_start[busy[r]] = int(run_id[r, -1])


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
        self.key_presses.extend(self._core.analyse(samples[None, :])[0])
        count = min(self._in_pos - HOLDBACK, emit_until) - int(self._core.out_pos[0])
        if count <= 0:
            self.last_masked = np.zeros(0, dtype=bool)
            return np.zeros(0, dtype=np.int16)
        out, masked = self._core.emit(count)
        self.last_masked = masked[0]
        return out[0]


class BatchStreamingMasker:
    """Masks n calls at once, one 20 ms frame of every call per ``push``.

    ``push(block)`` takes an (n_streams, frame) int16 array (row i = next frame
    of stream i) and returns the (n_streams, frame) masked output.  Row i of the
    output is what a StreamingMasker fed stream i's frames returns, delayed so
    that every push yields a full frame: the first HOLDBACK samples of each
    stream's output are silence (the hold-back), then its masker output follows
    bit for bit.  ``last_masked`` (n_streams, frame) marks replaced samples.

    Slots: the n_streams slots start active.  ``remove_stream(i)`` frees a slot
    (its rows are then ignored on input and zero on output); ``add_stream()``
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
        return presses

    def push(self, block: np.ndarray) -> np.ndarray:
        """Mask one frame of every stream: (n_streams, frame) in, same shape out."""
        block = np.asarray(block, dtype=np.int16)
        if block.shape != (self._core.n, self.frame):
            raise ValueError(f"expected shape ({self._core.n}, {self.frame}), got {block.shape}")
        if not self._active.all():
            block = np.where(self._active[:, None], block, np.int16(0))  # free slots stay silent
        for i, presses in enumerate(self._core.analyse(block)):
            if presses:
                self._presses[i].extend(presses)
        out, self.last_masked = self._core.emit(self.frame)
        return out

    def note_event(self, index: int, start_ms: float, end_ms: float | None) -> None:
        """StreamingMasker.note_event for the stream in slot `index`."""
        self._check(index)
        self._core.note_event(index, start_ms, end_ms)

    def drain_key_presses(self, index: int) -> list[KeyPress]:
        """Key presses the receiver decoded in slot `index` since the last drain."""
        self._check(index)
        presses, self._presses[index] = self._presses[index], []
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
