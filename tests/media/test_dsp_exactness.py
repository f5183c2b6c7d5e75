"""The numerical shortcuts of the batched DSP give the very bits of the plain
formulas they replace (checked against straightforward reference code)."""

from __future__ import annotations

import numpy as np

from media.dtmf import (
    _ROT_PERIOD,
    BLOCK,
    FREQS,
    GROUP_PEAK_RATIO,
    HIGH_BLOCKS,
    HISTORY_BLOCKS,
    BatchDtmfDetector,
    BlockAnalyzer,
    _basis,
    _rotation,
    joint_windows,
    window_sum,
)
from media.masker import FLAG_FREQS, SAMPLE_RATE, _tone
from tests.media.signals import band_noise, sequence, to_pcm


def reference_analysis(samples: np.ndarray, freqs: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Blocks of one push from silence, the plain way: X = (cos + j (-sin)) * rotation, E = sum x**2."""
    n, m = samples.shape
    k = m // BLOCK
    blocks = samples.astype(np.float64).reshape(n, k, BLOCK)
    corr = blocks @ _basis(freqs)
    nf = len(freqs)
    x = (corr[..., :nf] + 1j * corr[..., nf:]) * _rotation(np.array(freqs))[np.arange(k) % _ROT_PERIOD][None]
    e = np.einsum("nkb,nkb->nk", blocks, blocks)
    silence = np.zeros((n, HISTORY_BLOCKS, nf), dtype=np.complex128)  # history of fresh streams
    return np.concatenate([silence, x], axis=1), np.concatenate([silence[..., 0].real, e], axis=1)


def test_joint_analysis_matches_the_plain_formulas():
    rng = np.random.default_rng(1)
    samples = rng.integers(-32768, 32768, size=(700, 160)).astype(np.int16)  # > 512 rows x blocks: chunked gemm
    samples[3] = 0
    k0, xe = BlockAnalyzer(700, FLAG_FREQS).push_rows_joint(np.arange(700), samples)
    x, e = reference_analysis(samples, FLAG_FREQS)
    assert np.array_equal(xe[..., :-1], x)
    assert np.array_equal(xe[..., -1].real, e) and not xe[..., -1].imag.any()
    assert np.array_equal(k0, np.zeros(700))
    # One window sum of X and E together: the same sums as separately.
    w, energy, amp = joint_windows(xe, 8)
    assert np.array_equal(w, window_sum(x, HIGH_BLOCKS, 8))
    assert np.array_equal(energy, window_sum(e, HIGH_BLOCKS, 8))
    want = np.abs(window_sum(x, HIGH_BLOCKS, 8)) * (2.0 / (HIGH_BLOCKS * BLOCK))
    assert np.array_equal(amp, want.transpose(2, 0, 1))  # tone-major


def test_dominance_count_equals_the_sorted_second_peak():
    rng = np.random.default_rng(2)
    a = rng.random((2, 4, 20000)) ** 4 * 1000
    a[:, :, :500] = 0  # silence
    a[:, 1, 500:1000] = a[:, 2, 500:1000]  # ties
    a[:, 0, 1000:1500] = 2.5 * a[:, 3, 1000:1500]  # exactly at the ratio
    peak = a.max(axis=1)
    counted = (GROUP_PEAK_RATIO * a > peak[:, None]).sum(axis=1) <= 1
    ranked = np.sort(a, axis=1)
    assert np.array_equal(counted, ranked[:, 3] >= GROUP_PEAK_RATIO * ranked[:, 2])


def test_batched_angles_equal_scalar_np_angle():
    rng = np.random.default_rng(3)
    z = rng.normal(size=20000) * 10 ** rng.uniform(-2, 9, 20000) + 1j * rng.normal(size=20000) * 10 ** rng.uniform(
        -2, 9, 20000
    )
    batched = np.arctan2(z.imag, z.real).tolist()
    assert batched == [float(np.angle(v)) for v in z.tolist()]


def test_cached_masking_tone_equals_the_formula():
    for amplitude, tone_hz in ((3276.7, 1000.0), (0.0, 1000.0), (65000.0, 1234.5)):
        for t0, length in ((0, 160), (7, 1), (5000, 160), (7990, 20), (9000, 333)):
            t = np.arange(t0, t0 + length)
            want = np.round(np.full(length, amplitude) * np.sin(2 * np.pi * np.full(length, tone_hz) * t / SAMPLE_RATE))
            assert np.array_equal(_tone(amplitude, tone_hz, t0, t0 + length), want)


def test_receiver_process_path_equals_feed():
    # process() takes separate X/E (short_windows); feed() the joint analysis.
    rng = np.random.default_rng(4)
    streams = []
    for digits in ("1234567890*#ABCD", "5555", "1A2B3C"):
        s = sequence(digits, level=-20)
        streams.append(to_pcm(s.samples + band_noise(s.samples.size, -20, 15, rng)))
    block = np.stack([x[: min(map(len, streams))] for x in streams])
    fed, processed, analyzer = BatchDtmfDetector(3), BatchDtmfDetector(3), BlockAnalyzer(3, FREQS)
    got_fed, got_processed = [[], [], []], [[], [], []]
    for pos in range(0, block.shape[1], 140):
        for j, presses in enumerate(fed.feed(block[:, pos : pos + 140])):
            got_fed[j] += presses
        for j, presses in enumerate(processed.process(*analyzer.push(block[:, pos : pos + 140]))):
            got_processed[j] += presses
    assert got_fed == got_processed and any(got_fed)
