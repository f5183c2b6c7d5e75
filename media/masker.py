"""Key-tone masking with a fixed hold-back: nothing of a DTMF tone leaves.

Output lags input by exactly ``HOLDBACK_MS`` (30 ms).  A fast, deliberately loose
onset detector (10 ms windows every 2.5 ms at the 8 DTMF frequencies and 3 %
either side of them: both groups present, twist within +12/-8 dB, the two tones
>= 65 % of the window energy) flags dual-tone-like bursts; it is looser than the receiver in ``dtmf.py`` so
that anything the receiver could accept is masked (fail closed).  A burst is
confirmed after 4 flagged frames (10 ms); its start is placed at the rising
50 % crossing of the tone envelope minus half the window, less a 2.5 ms guard.

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
_LOW_COLS = [i for i, f in enumerate(FLAG_FREQS) if f < 1100]
_HIGH_COLS = [i for i, f in enumerate(FLAG_FREQS) if f >= 1100]
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
        if not 0 < tone_hz < sample_rate / 2:
            raise ValueError(f"tone_hz must be between 0 and {sample_rate // 2}")
        self.mode = mode
        self.tone_hz = float(tone_hz)
        self.amplitude = 0.0 if mode == "silence" else 32767.0 * 10 ** (level_dbfs / 20)
        self.key_presses: list[KeyPress] = []
        self.last_masked = np.zeros(0, dtype=bool)  # which samples of the last output were replaced
        self._analyzer = BlockAnalyzer(1, FLAG_FREQS)
        self._detector = BatchDtmfDetector(1)
        self._env = np.zeros(ENV_RING)  # envelope of the last frames, for crossings
        self._buffer = np.zeros(0, dtype=np.int16)  # input not yet output
        self._out_pos = 0  # samples output so far
        self._in_pos = 0
        self._frames = 0  # frames analysed
        self._run: _Run | None = None
        self._intervals: list[_Interval] = []
        self._events: dict[float, _Interval] = {}
        self._tone_start: int | None = None  # start of the masked run being output
        self._flushed = False

    # -- input side -------------------------------------------------------
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
        start = max(int(np.floor(start_ms * SAMPLE_RATE / 1000)) - GUARD, 0)
        end = None if end_ms is None else int(np.ceil(end_ms * SAMPLE_RATE / 1000)) + GUARD
        now = self._frames - 1
        iv = self._events.get(start_ms)
        if iv is None:
            iv = self._events[start_ms] = _Interval(start, end, now, None if end is None else now, now)
            self._intervals.append(iv)
            return
        self._expire_events()
        if iv.end is None:
            iv.end, iv.end_frame = (end, now) if end is not None else (None, None)
            iv.refreshed = now

    def _push(self, samples: np.ndarray, emit_until: int) -> np.ndarray:
        self._in_pos += samples.size
        self._buffer = np.concatenate([self._buffer, samples])
        k0, x, e = self._analyzer.push(samples[None, :].astype(np.float64))
        self.key_presses.extend(self._detector.process(k0, x[..., : len(FREQS)], e)[0])
        self._flag(k0, x, e)
        self._expire_events()
        return self._emit(min(self._in_pos - HOLDBACK, emit_until))

    def _expire_events(self) -> None:
        # Ends at a frame fixed by the last refresh, so chunking cannot move it.
        for iv in self._events.values():
            expiry = iv.refreshed + EVENT_TIMEOUT_FRAMES + 1
            if iv.end is None and self._frames - 1 >= expiry:
                iv.end, iv.end_frame = (expiry + 1) * BLOCK, expiry

    def _flag(self, k0: int, x: np.ndarray, e: np.ndarray) -> None:
        count = x.shape[1] - HISTORY_BLOCKS
        if count <= 0:
            return
        amp = np.abs(window_sum(x, HIGH_BLOCKS, count)[0]) * (2.0 / WINDOW)
        energy = window_sum(e, HIGH_BLOCKS, count)[0]
        lo, hi = amp[:, _LOW_COLS].max(axis=1), amp[:, _HIGH_COLS].max(axis=1)
        twist = lo / np.maximum(hi, 1e-9)
        power = lo**2 + hi**2
        flags = (
            (lo >= FLAG_MIN_LEVEL)
            & (hi >= FLAG_MIN_LEVEL)
            & (twist <= 10 ** (FLAG_MAX_NORMAL_TWIST_DB / 20))
            & (twist >= 10 ** (-FLAG_MAX_REVERSE_TWIST_DB / 20))
            & (power * (WINDOW / 2) >= FLAG_MIN_CONCENTRATION * energy)
        )
        env = np.concatenate([self._env, np.sqrt(power)])
        base = k0 - ENV_RING  # frame number of env[0]
        for rel in np.flatnonzero(flags).tolist():
            k = k0 + rel
            run = self._run
            if run is not None and k - run.last > GAP_FRAMES + 1:
                self._close_run(run, env, base)
                run = None
            if run is None:
                run = self._run = _Run(k, k, 0, 0.0)
            run.last = k
            run.count += 1
            run.peak = max(run.peak, float(env[k - base]))
            if run.interval is None and run.count >= CONFIRM_FRAMES:
                run.interval = _Interval(self._onset(run, env, base, k), None, k)
                self._intervals.append(run.interval)
        end_frame = k0 + count
        if self._run is not None and end_frame - 1 - self._run.last > GAP_FRAMES:
            self._close_run(self._run, env, base)
        self._env = env[-ENV_RING:]
        self._frames = end_frame

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

    def _close_run(self, run: _Run, env: np.ndarray, base: int) -> None:
        self._run = None
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
    def _emit(self, until: int) -> np.ndarray:
        count = until - self._out_pos
        if count <= 0:
            self.last_masked = np.zeros(0, dtype=bool)
            return np.zeros(0, dtype=np.int16)
        n = np.arange(self._out_pos, until)
        decided = frame_of_sample(n)
        masked = np.zeros(count, dtype=bool)
        for iv in self._intervals:
            if iv.end is not None and iv.end <= self._out_pos:
                continue
            hit = (n >= iv.start) & (decided >= iv.start_frame)
            if iv.end is not None:
                hit &= (n < iv.end) | (decided < iv.end_frame)
            masked |= hit
        self._intervals = [iv for iv in self._intervals if iv.end is None or iv.end > until]
        self._events = {k: iv for k, iv in self._events.items() if iv.end is None or iv.end > until}
        out = self._buffer[:count].copy()
        self._buffer = self._buffer[count:]
        if masked.any():
            # Index of the first sample of each masked run, carried across calls.
            starts = masked & ~np.concatenate([[self._tone_start is not None], masked[:-1]])
            run_id = np.maximum.accumulate(np.where(starts, n, -1))
            if self._tone_start is not None:
                run_id = np.where(run_id < 0, self._tone_start, run_id)
            t = (n - run_id)[masked]
            out[masked] = np.round(self.amplitude * np.sin(2 * np.pi * self.tone_hz * t / SAMPLE_RATE))
        self._tone_start = int(run_id[-1]) if masked[-1] else None
        self.last_masked = masked
        self._out_pos = until
        return out


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
