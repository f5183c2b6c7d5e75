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
from dataclasses import dataclass, field

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


def _rotation(freqs: np.ndarray) -> np.ndarray:
    """exp(-j 2 pi f t0) for the start t0 of every block of one second (integer f)."""
    starts = (np.arange(_ROT_PERIOD, dtype=np.int64) * BLOCK) % SAMPLE_RATE
    phase = 2 * np.pi * ((starts[:, None] * freqs[None, :]) % SAMPLE_RATE) / SAMPLE_RATE
    return np.cos(phase) - 1j * np.sin(phase)


class BlockAnalyzer:
    """Cuts n parallel streams into 2.5 ms blocks and correlates them with a set
    of integer frequencies (default: the 8 DTMF ones, in FREQS order)."""

    def __init__(self, n_streams: int, freqs: tuple[int, ...] = FREQS) -> None:
        self.n = n_streams
        self.freqs = np.array(freqs, dtype=np.int64)
        self.basis = _basis(freqs)
        self.rotation = _rotation(self.freqs)
        self.pending = np.zeros((n_streams, 0), dtype=np.float64)
        self.blocks_done = 0
        # Block index at which each stream (re)started: phases are per stream.
        self.origin = np.zeros(n_streams, dtype=np.int64)
        self.x_hist = np.zeros((n_streams, HISTORY_BLOCKS, len(freqs)), dtype=np.complex128)
        self.e_hist = np.zeros((n_streams, HISTORY_BLOCKS), dtype=np.float64)

    def reset_stream(self, i: int) -> None:
        """Start stream i afresh at the current block (its block 0, silent history).
        Only between blocks: with a partial block pending, streams would disagree."""
        if self.pending.shape[1]:
            raise RuntimeError("reset_stream needs block-aligned input (a multiple of BLOCK samples)")
        self.origin[i] = self.blocks_done
        self.x_hist[i] = 0
        self.e_hist[i] = 0

    def resize(self, n_streams: int) -> None:
        """Grow to n_streams streams; new streams start at the current block."""
        if self.pending.shape[1]:
            raise RuntimeError("resize needs block-aligned input (a multiple of BLOCK samples)")
        extra = n_streams - self.n
        if extra < 0:
            raise ValueError("streams can only be added")
        self.pending = np.zeros((n_streams, 0), dtype=np.float64)
        self.origin = np.concatenate([self.origin, np.full(extra, self.blocks_done, dtype=np.int64)])
        self.x_hist = np.concatenate([self.x_hist, np.zeros((extra, *self.x_hist.shape[1:]), self.x_hist.dtype)])
        self.e_hist = np.concatenate([self.e_hist, np.zeros((extra, HISTORY_BLOCKS))])
        self.n = n_streams

    def push(self, samples: np.ndarray) -> tuple[int, np.ndarray, np.ndarray]:
        """Add samples (n, m); return (first new block index, X, E) where X/E hold
        the HISTORY_BLOCKS previous blocks followed by the new complete blocks."""
        data = np.concatenate([self.pending, np.asarray(samples, dtype=np.float64)], axis=1)
        k = data.shape[1] // BLOCK
        self.pending = data[:, k * BLOCK :]
        k0 = self.blocks_done
        blocks = data[:, : k * BLOCK].reshape(self.n, k, BLOCK)
        corr = blocks @ self.basis  # exact: integer samples x 2**-24-quantised basis
        # Block start -> absolute stream phase; a table lookup (the phases repeat
        # every second) gives the very values the formula in _rotation gives.
        local = np.arange(k0, k0 + k, dtype=np.int64)
        if self.origin.any():
            rot = self.rotation[(local[None, :] - self.origin[:, None]) % _ROT_PERIOD]
        else:
            rot = self.rotation[local % _ROT_PERIOD][None]
        nf = self.freqs.size
        x_new = (corr[..., :nf] + 1j * corr[..., nf:]) * rot
        e_new = np.einsum("nkb,nkb->nk", blocks, blocks)
        x = np.concatenate([self.x_hist, x_new], axis=1)
        e = np.concatenate([self.e_hist, e_new], axis=1)
        self.x_hist = x[:, -HISTORY_BLOCKS:]
        self.e_hist = e[:, -HISTORY_BLOCKS:]
        self.blocks_done += k
        return k0, x, e


def window_sum(values: np.ndarray, length: int, count: int) -> np.ndarray:
    """Sums of `length` consecutive entries along axis 1, for the last `count`
    positions, added in a fixed order (bit-identical however input was chunked)."""
    total = values.shape[1]
    out = values[:, total - count :].copy()
    for lag in range(1, length):
        out += values[:, total - count - lag : total - lag]
    return out


@dataclass
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
    def __init__(self) -> None:
        self.segment: _Segment | None = None
        self.last_press: KeyPress | None = None


class BatchDtmfDetector:
    """DTMF receiver for n_streams parallel streams fed in lock-step.

    ``feed(block)`` takes an (n_streams, n_samples) array of int16-range samples
    and returns, per stream, the key presses that ended in this block.
    """

    def __init__(self, n_streams: int, sample_rate: int = SAMPLE_RATE) -> None:
        if sample_rate != SAMPLE_RATE:
            raise ValueError(f"only {SAMPLE_RATE} Hz is supported, got {sample_rate}")
        self.n = n_streams
        self.analyzer = BlockAnalyzer(n_streams)
        self.w_lo_hist = np.zeros((n_streams, LAG_FRAMES, 4), dtype=np.complex128)
        self.w_hi_hist = np.zeros((n_streams, LAG_FRAMES, 4), dtype=np.complex128)
        self.cand_hist = np.full((n_streams, LAG_FRAMES), -1, dtype=np.int64)
        self.amp_ring = np.zeros((n_streams, RING, 8), dtype=np.float64)
        self.states = [_StreamState() for _ in range(n_streams)]
        self.samples_in = 0
        self.flushed = False

    def feed(self, block: np.ndarray) -> list[list[KeyPress]]:
        """Feed (n_streams, n_samples) samples; any n_samples, including 0 or 1."""
        block = np.asarray(block)
        if block.ndim != 2 or block.shape[0] != self.n:
            raise ValueError(f"expected shape ({self.n}, n_samples), got {block.shape}")
        if self.flushed:
            raise RuntimeError("detector already flushed")
        self.samples_in += block.shape[1]
        k0, x, e = self.analyzer.push(block)
        return self.process(k0 - self.analyzer.origin, x, e)

    def flush(self) -> list[list[KeyPress]]:
        """End of stream: pad with silence so open key presses end, return them."""
        if self.flushed:
            return [[] for _ in range(self.n)]
        pad = (-self.analyzer.pending.shape[1]) % BLOCK + (GAP_FRAMES + LOW_BLOCKS + 4) * BLOCK
        k0, x, e = self.analyzer.push(np.zeros((self.n, pad)))
        out = self.process(k0 - self.analyzer.origin, x, e)
        self.flushed = True
        limit = 1000.0 * self.samples_in / SAMPLE_RATE
        return [[_clip(kp, limit) for kp in presses] for presses in out]

    def reset_stream(self, i: int) -> None:
        """Start stream i afresh (a new call in a reused slot): its frame numbers,
        and so its key press times, count from the current block again."""
        self.analyzer.reset_stream(i)
        self.w_lo_hist[i] = 0
        self.w_hi_hist[i] = 0
        self.cand_hist[i] = -1
        self.amp_ring[i] = 0
        self.states[i] = _StreamState()

    def resize(self, n_streams: int) -> None:
        """Grow to n_streams streams; the new ones start at the current block."""
        extra = n_streams - self.n
        self.analyzer.resize(n_streams)

        def grow(a: np.ndarray, fill: float) -> np.ndarray:
            return np.concatenate([a, np.full((extra, *a.shape[1:]), fill, dtype=a.dtype)])

        self.w_lo_hist, self.w_hi_hist = grow(self.w_lo_hist, 0), grow(self.w_hi_hist, 0)
        self.cand_hist, self.amp_ring = grow(self.cand_hist, -1), grow(self.amp_ring, 0)
        self.states += [_StreamState() for _ in range(extra)]
        self.n = n_streams

    def process(self, k0: int | np.ndarray, x: np.ndarray, e: np.ndarray) -> list[list[KeyPress]]:
        """Frame decisions for blocks k0.. (output of BlockAnalyzer.push); k0 may
        be one number per stream (streams started at different blocks)."""
        count = x.shape[1] - HISTORY_BLOCKS
        out: list[list[KeyPress]] = [[] for _ in range(self.n)]
        if count <= 0:
            return out
        k0s = [int(k0)] * self.n if np.ndim(k0) == 0 else np.asarray(k0).tolist()
        # Plain fancy indexing instead of take_along_axis (same values, less overhead).
        ii, kk = np.arange(self.n)[:, None], np.arange(count)[None, :]
        w_lo = window_sum(x[..., :4], LOW_BLOCKS, count)
        w_hi = window_sum(x[..., 4:], HIGH_BLOCKS, count)
        a_lo = np.abs(w_lo) * (2.0 / (LOW_BLOCKS * BLOCK))
        a_hi = np.abs(w_hi) * (2.0 / (HIGH_BLOCKS * BLOCK))
        i_lo = a_lo.argmax(axis=2)
        i_hi = a_hi.argmax(axis=2)
        s_lo = np.sort(a_lo, axis=2)
        s_hi = np.sort(a_hi, axis=2)
        p_lo, p_hi = s_lo[..., 3], s_hi[..., 3]
        # Level, twist and energy share one 10 ms window so that partly filled
        # windows at a tone's edges cannot fake a smaller twist.
        w_lo10 = window_sum(x[..., :4], HIGH_BLOCKS, count)
        q_lo = np.abs(w_lo10[ii, kk, i_lo]) * (2.0 / (HIGH_BLOCKS * BLOCK))
        energy = window_sum(e, HIGH_BLOCKS, count)
        twist = q_lo / np.maximum(p_hi, 1e-9)
        valid = (
            (q_lo >= MIN_LEVEL)
            & (p_hi >= MIN_LEVEL)
            & (p_lo >= GROUP_PEAK_RATIO * s_lo[..., 2])
            & (p_hi >= GROUP_PEAK_RATIO * s_hi[..., 2])
            & (twist <= 10 ** ((MAX_NORMAL_TWIST_DB + FRAME_TWIST_SLACK_DB) / 20))
            & (twist >= 10 ** (-(MAX_REVERSE_TWIST_DB + FRAME_TWIST_SLACK_DB) / 20))
            & ((q_lo**2 + p_hi**2) * (HIGH_BLOCKS * BLOCK / 2) >= MIN_CONCENTRATION * energy)
        )
        cand = np.where(valid, i_lo * 4 + i_hi, -1)

        # Pulse-pair products W[k] * conj(W[k - LAG]) at the frame's own tones.
        wl = np.concatenate([self.w_lo_hist, w_lo], axis=1)
        wh = np.concatenate([self.w_hi_hist, w_hi], axis=1)
        ch = np.concatenate([self.cand_hist, cand], axis=1)
        now_lo = w_lo[ii, kk, i_lo]
        now_hi = w_hi[ii, kk, i_hi]
        then_lo = wl[ii, kk, i_lo]  # wl[:, :count]: LAG_FRAMES earlier
        then_hi = wh[ii, kk, i_hi]
        same = valid & (ch[:, :count] == cand)
        pp_lo = np.where(same, now_lo * np.conj(then_lo), 0)
        pp_hi = np.where(same, now_hi * np.conj(then_hi), 0)
        self.w_lo_hist = wl[:, -LAG_FRAMES:]
        self.w_hi_hist = wh[:, -LAG_FRAMES:]
        self.cand_hist = ch[:, -LAG_FRAMES:]

        amps = np.concatenate([self.amp_ring, np.concatenate([a_lo, a_hi], axis=2)], axis=1)
        self.amp_ring = amps[:, -RING:]
        # Python only touches candidate frames and open segments, in bulk lists.
        rows, rels = np.nonzero(valid)
        values = zip(
            rels.tolist(),
            cand[rows, rels].tolist(),
            p_lo[rows, rels].tolist(),
            p_hi[rows, rels].tolist(),
            q_lo[rows, rels].tolist(),
            pp_lo[rows, rels].tolist(),
            pp_hi[rows, rels].tolist(),
            strict=True,
        )
        per_stream: dict[int, list[tuple]] = {}
        for i, item in zip(rows.tolist(), values, strict=True):
            per_stream.setdefault(i, []).append(item)
        for i, st in enumerate(self.states):
            if st.segment is not None and i not in per_stream:
                per_stream[i] = []
        for i, items in per_stream.items():
            k = k0s[i]  # base = k - RING is the frame number of amps[i, 0]
            out[i] = self._run_stream(self.states[i], k, k + count, k - RING, amps[i], items)
        return out

    def _run_stream(self, st, k0, end_frame, base, amps, items) -> list[KeyPress]:
        presses: list[KeyPress] = []
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
        seg = st.segment
        if seg is not None:
            if end_frame - 1 - seg.last > GAP_FRAMES:
                self._close(st, base, amps, presses, seg.last + GAP_FRAMES + 1)
            elif seg.onset is None and seg.first + ONSET_FRAMES < end_frame:
                seg.onset = self._onset(seg, base, amps, seg.first + ONSET_FRAMES)
        return presses

    @staticmethod
    def _onset(seg: _Segment, base: int, amps: np.ndarray, upto: int) -> float:
        """Onset in samples: rising 50 % crossing of each tone's window envelope,
        minus half that window (exact for a rectangular window and a clean edge)."""
        lo, hi = divmod(seg.digit, 4)
        lo_first = max(seg.first - 10, base)
        estimates = []
        for col, blocks in ((lo, LOW_BLOCKS), (4 + hi, HIGH_BLOCKS)):
            env = amps[lo_first - base : upto - base + 1, col]
            half = 0.5 * env.max()
            j = int(np.argmax(env >= half)) - 1  # last frame below half before the rise
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
        per_rad = SAMPLE_RATE / (2 * np.pi * LAG_FRAMES * BLOCK)
        measured = []
        for pps, freq in ((seg.pp_lo, LOW_FREQS[lo]), (seg.pp_hi, HIGH_FREQS[hi])):
            pp = sum(pps)
            if abs(pp) < MIN_COHERENCE * sum(map(abs, pps)):
                return
            offset = np.angle(pp) * per_rad
            if abs(offset) > MAX_DEVIATION * freq:
                return
            half = len(pps) // 2
            drift = (np.angle(sum(pps[half:])) - np.angle(sum(pps[:half]))) * per_rad
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
            env = amps[seg.last - base : stop - base, col]
            half = 0.5 * (seg.peak_lo if col < 4 else seg.peak_hi)
            below = np.flatnonzero(env < half)
            if below.size == 0:
                t = float(stop * BLOCK)
            else:
                j = int(below[0])
                if j == 0:
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
