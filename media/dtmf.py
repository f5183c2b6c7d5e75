"""In-band DTMF receiver (ITU-T Q.24, ETSI ES 201 235-3), streaming and batched.

Level convention (G.711): a full-scale 16-bit sine (peak 32767) is +3.17 dBm0, so
0 dBm0 is a sine of peak ``DBM0_PEAK`` = 32767 * 10**(-3.17/20) ~= 22747, and a
tone at L dBm0 has peak ``DBM0_PEAK * 10**(L/20)`` (-36 dBm0 -> peak ~360).

How it works (spandsp-like ``init -> feed -> events``, but finer in time):

* Input is cut into fixed 2.5 ms blocks (20 samples).  Each block is correlated
  with the 8 DTMF frequencies (one matmul).  The basis is quantised to 2**-24 so
  the int16 x basis products and their sums are exact in float64: results do not
  depend on BLAS blocking, chunk size or batch size, which is what makes
  streaming, one-shot and batched detection give identical decisions.
* Block sums are rotated to absolute stream phase and added into sliding
  rectangular windows: 15 ms for the low group (resolves the 73 Hz spacing),
  10 ms for the high group (less loss at +-1.5 % deviation), one frame every
  2.5 ms.
* A frame is a candidate digit when both group peaks are above the level floor,
  each dominates its group, the twist is inside +9 dB normal / -5 dB reverse,
  and the two tones carry most of the window energy (talk-off guard: speech and
  music spread their energy over many components, harmonics included).
* Candidate frames with the same digit form a segment; drop-outs of up to
  ``GAP_FRAMES`` frames (> 10 ms interruption) are bridged, a 40 ms pause is not.
  A segment becomes a ``KeyPress`` when it ends, if the frequency offset measured
  from the phase advance over 7.5 ms (pulse-pair estimate over the whole segment)
  is below 2.5 % for both tones, the phase is coherent, the frequency does not
  drift between the two halves (glides), the high tone is not the second
  harmonic of the low one (music), the mean twist is inside the limits, and the
  duration, taken between the 50 % crossings of the tone envelopes, is >= 30 ms.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache, reduce
from operator import add

import numpy as np

SAMPLE_RATE = 8000
DBM0_PEAK = 32767.0 * 10 ** (-3.17 / 20)
LOW_FREQS = (697, 770, 852, 941)
HIGH_FREQS = (1209, 1336, 1477, 1633)
FREQS = LOW_FREQS + HIGH_FREQS
KEYS = "123A456B789C*0#D"  # row = low tone, column = high tone

BLOCK = 20  # samples per block / frame hop (2.5 ms)
LOW_BLOCKS = 6  # 15 ms low-group window
HIGH_BLOCKS = 4  # 10 ms high-group window
HISTORY_BLOCKS = LOW_BLOCKS - 1
LAG_FRAMES = 3  # pulse-pair lag (7.5 ms): no phase aliasing below ~4 % at 1633 Hz
RING = 32  # frames of amplitude history kept for the envelope crossings

MIN_LEVEL = DBM0_PEAK * 10 ** (-42 / 20)  # per-tone floor (accept -36 dBm0 with margin)
MAX_NORMAL_TWIST_DB = 9.0  # accept 8 dB, reject 10 dB (mean over the segment)
MAX_REVERSE_TWIST_DB = 5.0  # accept 4 dB, reject 6 dB
FRAME_TWIST_SLACK_DB = 3.0  # per frame, sidelobe ripple of the other tone is ~+-1.5 dB
GROUP_PEAK_RATIO = 2.5  # peak >= 8 dB above the rest of its group
MIN_CONCENTRATION = 0.65  # tone power / total power in the window
MAX_DEVIATION = 0.025  # accept 1.5 %, reject 3.5 %
MIN_COHERENCE = 0.8
# A high tone at twice the low one is a harmonic (music, glides), never a key:
# valid pairs stay below a ratio of 1.977 even at +-1.5 % opposite deviations.
HARMONIC_RATIO_TOLERANCE = 0.012
MAX_DRIFT = 0.015  # first vs second half of a press: keys are steady, glides are not
MIN_DURATION_MS = 30.0  # accept 40 ms, reject 23 ms
GAP_FRAMES = 9  # bridge gaps up to 22.5 ms of frames (10 ms drop-out + windows)
SWITCH_FRAMES = 3  # another digit must persist this long to cut a segment
ONSET_FRAMES = 12  # estimate onset once the envelope has surely plateaued

_BASIS_SCALE = 2.0**24
# Per-frame twist limits (the segment's mean twist is held to the tighter ones).
_MAX_FRAME_TWIST = 10 ** ((MAX_NORMAL_TWIST_DB + FRAME_TWIST_SLACK_DB) / 20)
_MIN_FRAME_TWIST = 10 ** (-(MAX_REVERSE_TWIST_DB + FRAME_TWIST_SLACK_DB) / 20)
_PER_RAD = SAMPLE_RATE / (2 * np.pi * LAG_FRAMES * BLOCK)  # Hz per radian of pulse-pair phase


@dataclass(frozen=True)
class KeyPress:
    """One key press; times in ms from the start of the stream."""

    digit: str
    start_ms: float
    end_ms: float


def _basis(freqs: tuple[int, ...]) -> np.ndarray:
    n = np.arange(BLOCK)[:, None]
    w = 2 * np.pi * np.array(freqs)[None, :] / SAMPLE_RATE
    basis = np.concatenate([np.cos(w * n), -np.sin(w * n)], axis=1)
    return np.round(basis * _BASIS_SCALE) / _BASIS_SCALE


_ROT_PERIOD = SAMPLE_RATE // math.gcd(BLOCK, SAMPLE_RATE)  # blocks per whole second
# Rows per correlation matmul: OpenBLAS runs a gemm on floor(M*N*K / 262144) threads
# (default GEMM_MULTITHREAD_THRESHOLD), so 512 x 48 x 20 stays on one.
_GEMM_ROWS = 512


def _rotation(freqs: np.ndarray) -> np.ndarray:
    """exp(-j 2 pi f t0) for the start t0 of every block of one second (integer f)."""
    starts = (np.arange(_ROT_PERIOD, dtype=np.int64) * BLOCK) % SAMPLE_RATE
    phase = 2 * np.pi * ((starts[:, None] * freqs[None, :]) % SAMPLE_RATE) / SAMPLE_RATE
    return np.cos(phase) - 1j * np.sin(phase)


class BlockAnalyzer:
    """Cuts n parallel streams into 2.5 ms blocks and correlates them with a set
    of integer frequencies (default: the 8 DTMF ones, in FREQS order).

    ``push`` advances every stream by the same samples (any count: a partial
    block waits in ``pending``); ``push_rows`` advances only some streams, by
    whole blocks.  Each stream counts its own blocks (``blocks_done``), so a
    block's phase reference is its start on that stream's own clock.
    ``push_joint``/``push_rows_joint`` return X and E as one array (see there).
    """

    def __init__(self, n_streams: int, freqs: tuple[int, ...] = FREQS) -> None:
        self.n = n_streams
        self.freqs = np.array(freqs, dtype=np.int64)
        self.basis = _basis(freqs)
        # The same columns interleaved (cos f0, -sin f0, cos f1, ...): the product,
        # viewed as complex128, is the block's correlation without a copy.
        nf = len(freqs)
        self._pairs = np.ascontiguousarray(self.basis[:, np.arange(2 * nf).reshape(2, nf).T.ravel()])
        self.rotation = _rotation(self.freqs)
        self.pending = np.zeros((n_streams, 0), dtype=np.float64)
        # Blocks analysed per stream since it (re)started: its block clock.
        self.blocks_done = np.zeros(n_streams, dtype=np.int64)
        # Last HISTORY_BLOCKS blocks: X, then E as one more (real) complex column.
        self.hist = np.zeros((n_streams, HISTORY_BLOCKS, nf + 1), dtype=np.complex128)

    def reset_stream(self, i: int) -> None:
        """Start stream i afresh (its block 0, silent history).  Only between
        blocks: with a partial block pending, streams would disagree."""
        if self.pending.shape[1]:
            raise RuntimeError("reset_stream needs block-aligned input (a multiple of BLOCK samples)")
        self.blocks_done[i] = 0
        self.hist[i] = 0

    def resize(self, n_streams: int) -> None:
        """Grow to n_streams streams; new streams start at their block 0."""
        if self.pending.shape[1]:
            raise RuntimeError("resize needs block-aligned input (a multiple of BLOCK samples)")
        extra = n_streams - self.n
        if extra < 0:
            raise ValueError("streams can only be added")
        self.pending = np.zeros((n_streams, 0), dtype=np.float64)
        self.blocks_done = np.concatenate([self.blocks_done, np.zeros(extra, dtype=np.int64)])
        self.hist = np.concatenate([self.hist, np.zeros((extra, *self.hist.shape[1:]), self.hist.dtype)])
        self.n = n_streams

    def push(self, samples: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Add samples (n, m) to every stream; return (k0, X, E): k0[i] is stream
        i's own index of its first new block, X/E hold the HISTORY_BLOCKS previous
        blocks followed by the new complete blocks."""
        return split_joint(*self.push_joint(samples))

    def push_rows(self, rows: np.ndarray, samples: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """As push, for the streams `rows` only (distinct indices; row j of samples
        and of the results is stream rows[j]); whole blocks only, so that the
        streams left out stay block-aligned."""
        return split_joint(*self.push_rows_joint(rows, samples))

    def push_joint(self, samples: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """As push, but X and E in one array XE (n, blocks, nf + 1): XE[..., :nf]
        is X, XE[..., nf] is E (imaginary part 0), so that one window sum covers
        both (joint_windows)."""
        data = np.concatenate([self.pending, np.asarray(samples, dtype=np.float64)], axis=1)
        k = data.shape[1] // BLOCK
        self.pending = data[:, k * BLOCK :]
        return self._analyse(None, data[:, : k * BLOCK])

    def push_rows_joint(self, rows: np.ndarray, samples: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """As push_rows, with X and E in one array (push_joint)."""
        if self.pending.shape[1]:
            raise RuntimeError("push_rows needs block-aligned streams: push() left a partial block")
        samples = np.asarray(samples, dtype=np.float64)
        if samples.ndim != 2 or samples.shape[0] != len(rows) or samples.shape[1] % BLOCK:
            raise ValueError(f"expected shape ({len(rows)}, a multiple of {BLOCK}), got {samples.shape}")
        return self._analyse(np.asarray(rows, dtype=np.int64), samples)

    def _analyse(self, rows: np.ndarray | None, data: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Whole blocks `data` (k, blocks * BLOCK) of the streams `rows` (None: all).
        Only those rows' state is gathered and written back: O(k) work."""
        sel = slice(None) if rows is None else rows
        n, k = data.shape[0], data.shape[1] // BLOCK
        k0 = self.blocks_done.copy() if rows is None else self.blocks_done[rows]  # a copy: blocks_done moves on
        nf = self.freqs.size
        blocks = data.reshape(n * k, BLOCK)  # 2-D products: a stacked matmul costs a BLAS call per row
        # Exact (integer samples x 2**-24-quantised basis), so layout and BLAS
        # blocking cannot change a bit; re/im interleaved = complex values.
        # At most _GEMM_ROWS rows per call: OpenBLAS keeps those on one thread
        # (a threaded call leaves a helper thread spinning, burning a second core).
        corr = np.empty((n * k, 2 * nf))
        for a in range(0, n * k, _GEMM_ROWS):
            np.matmul(blocks[a : a + _GEMM_ROWS], self._pairs, out=corr[a : a + _GEMM_ROWS])
        corr = corr.view(np.complex128).reshape(n, k, nf)
        # Block start -> phase on the stream's own clock; a table lookup (the
        # phases repeat every second) gives the very values _rotation's formula gives.
        if rows is None and k0.size and (k0 == k0[0]).all():
            rot = self.rotation[(k0[0] + np.arange(k)) % _ROT_PERIOD][None]  # lock-step: one row for all
        else:
            rot = self.rotation[(k0[:, None] + np.arange(k)[None, :]) % _ROT_PERIOD]
        # History then new blocks, written in place (no concatenate temporaries).
        xe = np.empty((n, HISTORY_BLOCKS + k, nf + 1), dtype=np.complex128)
        xe[:, :HISTORY_BLOCKS] = self.hist[sel]
        np.multiply(corr, rot, out=xe[:, HISTORY_BLOCKS:, :nf])
        xe[:, HISTORY_BLOCKS:, nf] = np.vecdot(blocks, blocks).reshape(n, k)  # exact: sums of integer squares
        self.hist = keep_rows(self.hist, rows, xe[:, -HISTORY_BLOCKS:])
        self.blocks_done[sel] += k
        return k0, xe


def split_joint(k0: np.ndarray, xe: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(k0, X, E) views of a joint analysis (k0, XE)."""
    return k0, xe[..., :-1], xe[..., -1].real


def keep_rows(state: np.ndarray, rows: np.ndarray | None, new: np.ndarray) -> np.ndarray:
    """Updated per-stream state: `new` itself when every stream took part (no
    copy), else `state` with the rows `rows` overwritten by `new`."""
    if rows is None:
        return new
    state[rows] = new
    return state


def check_rows(rows: Sequence[int] | np.ndarray, block: np.ndarray, n_slots: int) -> tuple[np.ndarray, np.ndarray]:
    """Validate a push to some streams: `rows` distinct slot indices in [0, n_slots),
    `block` (len(rows), m) with m a positive multiple of BLOCK.  Returns (rows as
    a fresh int64 array, block as an array); raises ValueError/IndexError."""
    r = np.asarray(rows)
    if r.ndim != 1:
        raise ValueError(f"rows must be a 1-D sequence of slot indices, got shape {r.shape}")
    if r.size and r.dtype.kind not in "iu":
        raise ValueError(f"rows must be integer slot indices, got dtype {r.dtype}")
    r = r.astype(np.int64)
    listed = r.tolist()  # plain min/max/set on a list: cheaper than numpy calls for a push of tens of rows
    if listed and (min(listed) < 0 or max(listed) >= n_slots):
        outside = (r < 0) | (r >= n_slots)
        raise IndexError(f"no stream in slot {int(r[outside][0])} (slots are 0..{n_slots - 1})")
    if len(set(listed)) != len(listed):
        ordered = np.sort(r)
        twice = ordered[1:][ordered[1:] == ordered[:-1]]
        raise ValueError(f"rows must be distinct: slot {int(twice[0])} appears more than once")
    block = np.asarray(block)
    if block.ndim != 2 or block.shape[0] != r.size:
        raise ValueError(f"expected a block of shape ({r.size}, m) for {r.size} rows, got {block.shape}")
    if block.shape[1] <= 0 or block.shape[1] % BLOCK:
        raise ValueError(f"samples per row must be a positive multiple of {BLOCK}, got {block.shape[1]}")
    return r, block


def window_sum(values: np.ndarray, length: int, count: int) -> np.ndarray:
    """Sums of `length` consecutive entries along axis 1, for the last `count`
    positions, added in a fixed order (bit-identical however input was chunked)."""
    total = values.shape[1]
    if length == 1:
        return values[:, total - count :].copy()
    out = values[:, total - count :] + values[:, total - count - 1 : total - 1]  # = copy, then +=
    for lag in range(2, length):
        out += values[:, total - count - lag : total - lag]
    return out


def short_windows(x: np.ndarray, e: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """10 ms (HIGH_BLOCKS) windows of the last `count` frames: (W (n, count, nf),
    energy (n, count), amplitude |W| * 2 / window, tone-major (nf, n, count)).
    The masker's onset detector and the receiver share them: elementwise, so a
    column is the same bit for bit whether computed alone or with others."""
    w = window_sum(x, HIGH_BLOCKS, count)
    return w, window_sum(e, HIGH_BLOCKS, count), _amplitudes(w)


def joint_windows(xe: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """short_windows of a joint analysis XE (BlockAnalyzer.push_joint): one
    window sum for X and E.  E's column is real (imaginary parts 0), so its
    complex sums have the very real parts window_sum(E) gives."""
    w = window_sum(xe, HIGH_BLOCKS, count)
    return w[..., :-1], np.ascontiguousarray(w[..., -1].real), _amplitudes(w[..., :-1])


def _amplitudes(w: np.ndarray) -> np.ndarray:
    """|W| * 2 / (10 ms window), tone-major (nf, n, count): each tone's values are
    one contiguous slab, which keeps the many small elementwise steps cheap."""
    n, count, nf = w.shape
    amp = np.empty((nf, n, count))
    np.abs(w.transpose(2, 0, 1), out=amp)
    amp *= 2.0 / (HIGH_BLOCKS * BLOCK)
    return amp


@lru_cache(maxsize=64)
def _arange(n: int) -> np.ndarray:
    """Read-only np.arange(n), cached (index vectors for fancy indexing)."""
    out = np.arange(n)
    out.flags.writeable = False
    return out


def _first_at_least(values: list[float], level: float) -> int:
    """Index of the first value >= level, 0 if none (np.argmax(values >= level))."""
    for j, v in enumerate(values):
        if v >= level:
            return j
    return 0


def _first_below(values: list[float], level: float) -> int | None:
    """Index of the first value < level, None if none."""
    for j, v in enumerate(values):
        if v < level:
            return j
    return None


@dataclass(slots=True)  # slots: faster attribute access in the per-frame loops
class _Segment:
    digit: int
    first: int
    last: int
    peak_lo: float = 0.0
    peak_hi: float = 0.0
    pp_lo: list[complex] = field(default_factory=list)
    pp_hi: list[complex] = field(default_factory=list)
    sum_lo: float = 0.0  # 10 ms amplitudes, for the segment's mean twist
    sum_hi: float = 0.0
    onset: float | None = None  # samples
    other: int = -1
    other_first: int = -1
    other_count: int = 0


class _StreamState:
    __slots__ = ("segment", "last_press")

    def __init__(self) -> None:
        self.segment: _Segment | None = None
        self.last_press: KeyPress | None = None


class BatchDtmfDetector:
    """DTMF receiver for n_streams parallel streams.

    ``feed(block)`` takes an (n_streams, n_samples) array of int16-range samples
    and returns, per stream, the key presses that ended in this block.
    ``feed_rows(rows, block)`` feeds some streams only (whole 2.5 ms blocks), so
    that streams whose packets arrive at different moments can share one
    detector; the others do not advance.  Every stream has its own clock: key
    press times are ms from its first sample (``reset_stream`` restarts it).
    A stream's key presses do not depend on how its pushes were grouped with
    other streams' (bit-identical to a DtmfDetector fed the same chunks).
    """

    def __init__(self, n_streams: int, sample_rate: int = SAMPLE_RATE) -> None:
        if sample_rate != SAMPLE_RATE:
            raise ValueError(f"only {SAMPLE_RATE} Hz is supported, got {sample_rate}")
        self.n = n_streams
        self.analyzer = BlockAnalyzer(n_streams)
        # Last LAG_FRAMES windows of the 8 tones (15 ms low, 10 ms high), for the pulse pairs.
        self.w_hist = np.zeros((n_streams, LAG_FRAMES, 8), dtype=np.complex128)
        self.cand_hist = np.full((n_streams, LAG_FRAMES), -1, dtype=np.int64)
        self.amp_ring = np.zeros((n_streams, 8, RING), dtype=np.float64)  # per stream: tone, frame
        self.states = [_StreamState() for _ in range(n_streams)]
        self.open: set[int] = set()  # streams with an open segment: the only ones Python visits unasked
        self.samples_in = np.zeros(n_streams, dtype=np.int64)  # per stream, since it (re)started
        self.flushed = False

    def feed(self, block: np.ndarray) -> list[list[KeyPress]]:
        """Feed (n_streams, n_samples) samples; any n_samples, including 0 or 1."""
        block = np.asarray(block)
        if block.ndim != 2 or block.shape[0] != self.n:
            raise ValueError(f"expected shape ({self.n}, n_samples), got {block.shape}")
        if self.flushed:
            raise RuntimeError("detector already flushed")
        self.samples_in += block.shape[1]
        return self._process_joint(*self.analyzer.push_joint(block))

    def feed_rows(self, rows: Sequence[int] | np.ndarray, block: np.ndarray) -> list[list[KeyPress]]:
        """Feed the streams `rows` (distinct indices, any order) with block
        (len(rows), m), m a positive multiple of BLOCK; return the key presses
        that ended, one list per row.  Other streams do not advance.  Bad
        arguments raise ValueError/IndexError and change nothing."""
        rows, block = check_rows(rows, block, self.n)
        if self.flushed:
            raise RuntimeError("detector already flushed")
        k0, xe = self.analyzer.push_rows_joint(rows, block)  # checks that no partial block is pending
        self.samples_in[rows] += block.shape[1]
        return self._process_joint(k0, xe, rows)

    def flush(self) -> list[list[KeyPress]]:
        """End of stream: pad with silence so open key presses end, return them."""
        if self.flushed:
            return [[] for _ in range(self.n)]
        pad = (-self.analyzer.pending.shape[1]) % BLOCK + (GAP_FRAMES + LOW_BLOCKS + 4) * BLOCK
        out = self._process_joint(*self.analyzer.push_joint(np.zeros((self.n, pad))))
        self.flushed = True
        limits = (1000.0 * self.samples_in / SAMPLE_RATE).tolist()  # each stream ends at its own last sample
        return [[_clip(kp, limit) for kp in presses] for presses, limit in zip(out, limits, strict=True)]

    def reset_stream(self, i: int) -> None:
        """Start stream i afresh (a new call in a reused slot): its next sample
        is its sample 0, so its key press times count from there."""
        self.analyzer.reset_stream(i)
        self.w_hist[i] = 0
        self.cand_hist[i] = -1
        self.amp_ring[i] = 0
        self.states[i] = _StreamState()
        self.open.discard(i)
        self.samples_in[i] = 0

    def resize(self, n_streams: int) -> None:
        """Grow to n_streams streams; the new ones start at their sample 0."""
        extra = n_streams - self.n
        self.analyzer.resize(n_streams)

        def grow(a: np.ndarray, fill: float) -> np.ndarray:
            return np.concatenate([a, np.full((extra, *a.shape[1:]), fill, dtype=a.dtype)])

        self.w_hist = grow(self.w_hist, 0)
        self.cand_hist, self.amp_ring = grow(self.cand_hist, -1), grow(self.amp_ring, 0)
        self.samples_in = grow(self.samples_in, 0)
        self.states += [_StreamState() for _ in range(extra)]
        self.n = n_streams

    def process(
        self, k0: int | np.ndarray, x: np.ndarray, e: np.ndarray, rows: np.ndarray | None = None
    ) -> list[list[KeyPress]]:
        """Frame decisions for blocks k0.. (output of BlockAnalyzer.push or
        push_rows); k0 may be one number per row (streams started at different
        blocks).  Row j of x/e is stream rows[j] (rows None: all, j = stream)."""
        out: list[list[KeyPress]] = [[] for _ in range(x.shape[0])]
        for j, presses in self.process_sparse(k0, x, e, rows).items():
            out[j] = presses
        return out

    def _process_joint(self, k0: np.ndarray, xe: np.ndarray, rows: np.ndarray | None = None) -> list[list[KeyPress]]:
        """process() of a joint analysis (BlockAnalyzer.push_joint)."""
        count = xe.shape[1] - HISTORY_BLOCKS
        windows = joint_windows(xe, count) if count > 0 else None
        out: list[list[KeyPress]] = [[] for _ in range(xe.shape[0])]
        for j, presses in self.process_sparse(*split_joint(k0, xe), rows, windows).items():
            out[j] = presses
        return out

    def process_sparse(
        self,
        k0: int | np.ndarray,
        x: np.ndarray,
        e: np.ndarray,
        rows: np.ndarray | None = None,
        windows: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
    ) -> dict[int, list[KeyPress]]:
        """As process, but only the rows that have key presses: {row j: presses}.
        `windows`: short_windows(x', e, count) of an analysis x' whose first 8
        frequencies are FREQS (the masker's), instead of computing them here."""
        count = x.shape[1] - HISTORY_BLOCKS
        if count <= 0:
            return {}
        w4, e4, a4 = short_windows(x, e, count) if windows is None else windows
        sel = slice(None) if rows is None else rows
        n = x.shape[0]
        frames = n * count  # (stream, frame) pairs, flattened
        # Windows of the 8 tones (15 ms low, 10 ms high) after the last LAG_FRAMES
        # ones, for the pulse pairs.  15 ms low-group windows: window_sum(x[..., :4],
        # LOW_BLOCKS) adds blocks k..k-3 (= the 10 ms sums) then k-4 and k-5.
        w_lo = w4[..., :4] + x[:, 1 : count + 1, :4]
        w_lo += x[:, :count, :4]
        wp = np.empty((n, LAG_FRAMES + count, 8), dtype=np.complex128)
        wp[:, :LAG_FRAMES] = self.w_hist[sel]
        wp[:, LAG_FRAMES:, :4] = w_lo
        wp[:, LAG_FRAMES:, 4:] = w4[..., 4:8]
        self.w_hist = keep_rows(self.w_hist, rows, wp[:, -LAG_FRAMES:])
        # Tone amplitudes, tone-major (8, n, count) like a4: contiguous slabs.
        tones = np.empty((8, n, count))
        np.abs(w_lo.transpose(2, 0, 1), out=tones[:4])
        tones[:4] *= 2.0 / (LOW_BLOCKS * BLOCK)
        tones[4:] = a4[4:8]
        amps = np.empty((n, 8, RING + count))  # the ring's history, then the new frames
        amps[:, :, :RING] = self.amp_ring[sel]
        amps[:, :, RING:] = tones.transpose(1, 0, 2)
        self.amp_ring = keep_rows(self.amp_ring, rows, amps[:, :, -RING:])
        groups = tones.reshape(2, 4, frames)  # (low, high) x 4 tones
        best = groups.argmax(axis=1)  # i_lo, i_hi
        peak = groups.max(axis=1)  # p_lo, p_hi
        # Dominance, p >= GROUP_PEAK_RATIO * (second strongest), without a sort:
        # rounding is monotonic, so that holds iff no tone but the strongest has
        # GROUP_PEAK_RATIO * a > p (the strongest always has, unless p == 0).
        dominant = (GROUP_PEAK_RATIO * groups > peak[:, None]).sum(axis=1) <= 1
        p_hi = peak[1]
        # Level, twist and energy share one 10 ms window so that partly filled
        # windows at a tone's edges cannot fake a smaller twist.
        q_lo = a4.reshape(a4.shape[0], frames)[best[0], _arange(frames)]
        twist = q_lo / np.maximum(p_hi, 1e-9)
        valid = (
            (np.minimum(q_lo, p_hi) >= MIN_LEVEL)
            & dominant[0]
            & dominant[1]
            & (twist <= _MAX_FRAME_TWIST)
            & (twist >= _MIN_FRAME_TWIST)
            & ((q_lo**2 + p_hi**2) * (HIGH_BLOCKS * BLOCK / 2) >= MIN_CONCENTRATION * e4.reshape(frames))
        )
        digit = best[0] * 4 + best[1]
        ch = np.concatenate([self.cand_hist[sel], np.where(valid, digit, -1).reshape(n, count)], axis=1)
        self.cand_hist = keep_rows(self.cand_hist, rows, ch[:, -LAG_FRAMES:])

        # Python only touches candidate frames and open segments, as column lists
        # (one slice per row) of the candidate frames' values.
        flat = valid.nonzero()[0]  # (the method: np.flatnonzero adds a Python-level wrapper)
        todo: dict[int, tuple[int, int, int]] = {}  # row j -> its slice a:b of the hit lists, its row index r
        hits: tuple[list, ...] = ()
        if flat.size:
            h = flat.size
            hit_rows = np.empty(h, dtype=np.int64)
            frame_digit = np.empty((2, h), dtype=np.int64)  # candidate frames' rel frame, digit
            np.divmod(flat, count, out=(hit_rows, frame_digit[0]))
            rels, dig = frame_digit
            digit.take(flat, out=dig)
            # Pulse-pair products W[k] * conj(W[k - LAG]) at the frame's own tones,
            # kept only when the lagged frame had the same digit.
            cols = best[:, flat]
            cols[1] += 4
            pp = wp[hit_rows, rels + LAG_FRAMES, cols] * np.conj(wp[hit_rows, rels, cols])
            pp[:, ch[hit_rows, rels] != dig] = 0
            peak_h = peak[:, flat]
            head = np.empty(h, dtype=bool)  # first candidate frame of its row
            head[0] = True
            np.not_equal(hit_rows[1:], hit_rows[:-1], out=head[1:])
            starts = head.nonzero()[0]
            # Per row: first/last frame, lowest/highest digit, peak levels (reduceat
            # of selections: exact), so the common case needs no per-frame lists.
            lows = np.minimum.reduceat(frame_digit, starts, axis=1).tolist()
            highs = np.maximum.reduceat(frame_digit, starts, axis=1).tolist()
            peaks = np.maximum.reduceat(peak_h, starts, axis=1).tolist()
            pp_lo, pp_hi = pp.tolist()
            hits = (peak_h[1].tolist(), q_lo[flat].tolist(), pp_lo, pp_hi)
            cuts = [*starts.tolist(), h]
            first_rows = hit_rows[starts].tolist()
            todo = {j: (cuts[r], cuts[r + 1], r) for r, j in enumerate(first_rows)}
        row_list = None if rows is None else rows.tolist()
        if self.open:
            if row_list is None:
                for j in self.open:
                    todo.setdefault(j, (0, 0, -1))  # open segments may end (or get their onset) without candidates
            else:
                for j, i in enumerate(row_list):
                    if i in self.open:
                        todo.setdefault(j, (0, 0, -1))
        if not todo:
            return {}
        k0s = np.asarray(k0, dtype=np.int64)
        k0s = k0s.tolist() if k0s.ndim else [int(k0s)] * n
        p_his, q_los, pp_los, pp_his = hits or ((),) * 4
        if hits:
            (first_rels, low_digits), (last_rels, high_digits), (peaks_lo, peaks_hi) = lows, highs, peaks
        states, open_segments = self.states, self.open
        out: dict[int, list[KeyPress]] = {}
        for j, (a, b, r) in todo.items():
            i = j if row_list is None else row_list[j]
            st = states[i]
            k0 = k0s[j]
            seg = was = st.segment
            presses: list[KeyPress] = []
            if a < b:
                # Common cases: the frames all carry one digit, no gap to bridge:
                # a segment starts or goes on.  _run_items' updates in bulk (max
                # is exact; reduce(add) adds left to right like its +=).
                first, d = first_rels[r], low_digits[r]
                bulk = last_rels[r] - first <= GAP_FRAMES and high_digits[r] == d
                if bulk and seg is None:
                    seg = st.segment = _Segment(d, k0 + first, k0 + first)
                elif bulk:
                    bulk = k0 + first - seg.last <= GAP_FRAMES and d == seg.digit
                if bulk:
                    seg.last = k0 + last_rels[r]
                    seg.other_count = 0
                    peak = peaks_lo[r]
                    if peak > seg.peak_lo:
                        seg.peak_lo = peak
                    peak = peaks_hi[r]
                    if peak > seg.peak_hi:
                        seg.peak_hi = peak
                    seg.sum_lo = reduce(add, q_los[a:b], seg.sum_lo)
                    seg.sum_hi = reduce(add, p_his[a:b], seg.sum_hi)
                    los, his = pp_los[a:b], pp_his[a:b]
                    if 0 in los:  # only frames whose lagged partner had the same digit
                        his = [hi for lo, hi in zip(los, his, strict=True) if lo]
                        los = [lo for lo in los if lo]
                    seg.pp_lo += los
                    seg.pp_hi += his
                else:
                    items = zip(
                        rels[a:b].tolist(),
                        dig[a:b].tolist(),
                        peak_h[0, a:b].tolist(),
                        *(column[a:b] for column in hits),
                        strict=True,
                    )
                    self._run_items(st, k0, k0 - RING, amps[j], presses, items)
                seg = st.segment
            if seg is not None:
                end_frame = k0 + count
                if end_frame - 1 - seg.last > GAP_FRAMES:
                    self._close(st, k0 - RING, amps[j], presses, seg.last + GAP_FRAMES + 1)
                elif seg.onset is None and seg.first + ONSET_FRAMES < end_frame:
                    seg.onset = self._onset(seg, k0 - RING, amps[j], seg.first + ONSET_FRAMES)
            if presses:
                out[j] = presses
            if st.segment is None:
                if was is not None:
                    open_segments.discard(i)
            elif st.segment is not was:
                open_segments.add(i)
        return out

    def _run_items(
        self, st: _StreamState, k0: int, base: int, amps: np.ndarray, presses: list[KeyPress], items: Iterable[tuple]
    ) -> None:
        """Candidate frames one by one (base: frame number of amps[0]): bridging,
        digit switches, new segments."""
        for rel, c, p_lo, p_hi, q_lo, pp_lo, pp_hi in items:
            k = k0 + rel
            seg = st.segment
            if seg is not None and k - seg.last > GAP_FRAMES:
                self._close(st, base, amps, presses, seg.last + GAP_FRAMES + 1)
                seg = None
            if seg is not None and c != seg.digit:
                if seg.other == c and k == seg.other_first + seg.other_count:
                    seg.other_count += 1
                else:
                    seg.other, seg.other_first, seg.other_count = c, k, 1
                if seg.other_count < SWITCH_FRAMES:
                    continue
                first = seg.other_first
                self._close(st, base, amps, presses, k)
                seg = st.segment = _Segment(c, first, first)
                # The switch frames seen so far only count for level and timing.
                seg.peak_lo, seg.peak_hi = p_lo, p_hi
                seg.last = k
                continue
            if seg is None:
                seg = st.segment = _Segment(c, k, k)
            seg.last = k
            seg.other_count = 0
            seg.peak_lo = max(seg.peak_lo, p_lo)
            seg.peak_hi = max(seg.peak_hi, p_hi)
            seg.sum_lo += q_lo
            seg.sum_hi += p_hi
            if pp_lo:  # frames whose lagged partner had the same digit
                seg.pp_lo.append(pp_lo)
                seg.pp_hi.append(pp_hi)

    @staticmethod
    def _onset(seg: _Segment, base: int, amps: np.ndarray, upto: int) -> float:
        """Onset in samples: rising 50 % crossing of each tone's window envelope,
        minus half that window (exact for a rectangular window and a clean edge)."""
        lo, hi = divmod(seg.digit, 4)
        lo_first = max(seg.first - 10, base)
        estimates = []
        for col, blocks in ((lo, LOW_BLOCKS), (4 + hi, HIGH_BLOCKS)):
            env = amps[col, lo_first - base : upto - base + 1].tolist()  # Python floats: same IEEE operations
            half = 0.5 * max(env)
            j = _first_at_least(env, half) - 1  # last frame below half before the rise
            if j < 0:
                t = (lo_first + 1) * BLOCK
            else:
                a0, a1 = env[j], env[j + 1]
                t = (lo_first + j + 1) * BLOCK + BLOCK * (half - a0) / (a1 - a0)
            estimates.append(t - blocks * BLOCK / 2)
        return sum(estimates) / 2

    def _close(self, st: _StreamState, base: int, amps: np.ndarray, presses: list[KeyPress], upto: int) -> None:
        """End the open segment, judged on frames up to `upto` only (chunk-invariant)."""
        seg = st.segment
        st.segment = None
        if seg is None or len(seg.pp_lo) < 2:
            return
        twist_db = 20 * np.log10(seg.sum_lo / seg.sum_hi)
        if not -MAX_REVERSE_TWIST_DB <= twist_db <= MAX_NORMAL_TWIST_DB:
            return
        lo, hi = divmod(seg.digit, 4)
        # Pulse-pair sums: whole press, second half, first half, per tone.
        sums = []
        for pps in (seg.pp_lo, seg.pp_hi):
            half = len(pps) // 2
            sums += [sum(pps), sum(pps[half:]), sum(pps[:half])]
        # All six phases in one call: np.angle of each sum (arctan2 gives the same
        # value element by element, scalar or array).
        sums_array = np.array(sums)
        angles = np.arctan2(sums_array.imag, sums_array.real).tolist()
        measured = []
        for m, pps, freq in ((0, seg.pp_lo, LOW_FREQS[lo]), (3, seg.pp_hi, HIGH_FREQS[hi])):
            if abs(sums[m]) < MIN_COHERENCE * sum(map(abs, pps)):
                return
            offset = angles[m] * _PER_RAD
            if abs(offset) > MAX_DEVIATION * freq:
                return
            drift = (angles[m + 1] - angles[m + 2]) * _PER_RAD
            if abs(drift) > MAX_DRIFT * freq:
                return
            measured.append(freq + offset)
        if abs(measured[1] / measured[0] - 2.0) < 2.0 * HARMONIC_RATIO_TOLERANCE:
            return
        onset = seg.onset
        if onset is None:
            onset = self._onset(seg, base, amps, min(upto, seg.first + ONSET_FRAMES))
        ends = []
        stop = upto + 1
        for col, blocks in ((lo, LOW_BLOCKS), (4 + hi, HIGH_BLOCKS)):
            env = amps[col, seg.last - base : stop - base].tolist()  # Python floats: same IEEE operations
            half = 0.5 * (seg.peak_lo if col < 4 else seg.peak_hi)
            j = _first_below(env, half)
            if j is None:
                t = float(stop * BLOCK)
            elif j == 0:
                t = (seg.last + 1) * BLOCK
            else:
                a0, a1 = env[j - 1], env[j]
                t = (seg.last + j) * BLOCK + BLOCK * (a0 - half) / (a0 - a1)
            ends.append(t - blocks * BLOCK / 2)
        end = sum(ends) / 2
        start_ms = round(max(onset, 0.0)) * 1000.0 / SAMPLE_RATE
        end_ms = round(end) * 1000.0 / SAMPLE_RATE
        if end_ms - start_ms < MIN_DURATION_MS:
            return
        press = KeyPress(KEYS[seg.digit], start_ms, end_ms)
        prev = st.last_press
        if prev is not None and prev.digit == press.digit and press.start_ms < prev.end_ms:
            return  # the same press split by a flicker: count it once
        st.last_press = press
        presses.append(press)


def _clip(kp: KeyPress, limit_ms: float) -> KeyPress:
    if kp.end_ms <= limit_ms:
        return kp
    return KeyPress(kp.digit, kp.start_ms, limit_ms)


class DtmfDetector:
    """Single-stream DTMF receiver: ``feed(samples) -> [KeyPress]``, any chunking."""

    def __init__(self, sample_rate: int = SAMPLE_RATE) -> None:
        self._batch = BatchDtmfDetector(1, sample_rate)

    def feed(self, samples: np.ndarray) -> list[KeyPress]:
        """Feed int16-range samples of any length; returns key presses that ended."""
        return self._batch.feed(np.asarray(samples).reshape(1, -1))[0]

    def flush(self) -> list[KeyPress]:
        """End of stream: return the key presses still open."""
        return self._batch.flush()[0]


def detect(samples: np.ndarray, sample_rate: int = SAMPLE_RATE) -> list[KeyPress]:
    """All key presses in a whole signal (feed + flush)."""
    det = DtmfDetector(sample_rate)
    return det.feed(samples) + det.flush()
