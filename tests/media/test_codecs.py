from __future__ import annotations

import struct
import wave

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from media.codecs import (
    ALAW_DECODE,
    ULAW_DECODE,
    WavError,
    alaw_decode,
    alaw_encode,
    read_wav,
    ulaw_decode,
    ulaw_encode,
    write_wav,
)

ALL_CODES = np.arange(256, dtype=np.uint8)


def test_known_g711_values():
    # Reference points of ITU-T G.711 (16-bit scaling): silence and overload codes.
    assert ulaw_encode(np.array([0], dtype=np.int16))[0] == 0xFF
    assert ULAW_DECODE[0x00] == -32124 and ULAW_DECODE[0x80] == 32124
    assert ULAW_DECODE[0x7F] == 0 and ULAW_DECODE[0xFF] == 0
    assert alaw_encode(np.array([0], dtype=np.int16))[0] == 0xD5
    assert ALAW_DECODE[0xD5] == 8 and ALAW_DECODE[0x55] == -8
    assert ALAW_DECODE[0xAA] == 32256 and ALAW_DECODE[0x2A] == -32256
    assert ulaw_encode(np.array([32767, -32768], dtype=np.int16)).tolist() == [0x80, 0x00]
    assert alaw_encode(np.array([32767, -32768], dtype=np.int16)).tolist() == [0xAA, 0x2A]


def test_encode_decode_code_roundtrip_all_codes():
    ulaw_back = ulaw_encode(ulaw_decode(ALL_CODES))
    # 0x7F is mu-law "negative zero": it decodes to 0, which encodes as 0xFF.
    assert np.flatnonzero(ulaw_back != ALL_CODES).tolist() == [0x7F]
    assert ulaw_back[0x7F] == 0xFF
    assert np.array_equal(alaw_encode(alaw_decode(ALL_CODES)), ALL_CODES)


def test_decode_tables_are_monotonic():
    # Codes sorted by decoded value must be strictly increasing per sign half.
    for table in (ULAW_DECODE, ALAW_DECODE):
        values = np.unique(table.astype(int))
        assert values.size == 255 + (table is ALAW_DECODE)


def _step(table: np.ndarray, value: int) -> int:
    levels = np.unique(table.astype(int))
    i = np.searchsorted(levels, value)
    lo = levels[max(i - 1, 0)]
    hi = levels[min(i, levels.size - 1)]
    return max(hi - lo, levels[1] - levels[0])


@given(st.lists(st.integers(-32768, 32767), min_size=1, max_size=64))
def test_decode_encode_within_quantisation(values):
    x = np.array(values, dtype=np.int16)
    for enc, dec, table, peak in (
        (ulaw_encode, ulaw_decode, ULAW_DECODE, 32124),
        (alaw_encode, alaw_decode, ALAW_DECODE, 32256),
    ):
        y = dec(enc(x)).astype(int)
        for xi, yi in zip(x.astype(int).tolist(), y.tolist(), strict=True):
            clipped = max(-peak, min(peak, xi))
            # Error below one quantisation step of the segment the value falls in.
            assert abs(clipped - yi) <= _step(table, clipped), (xi, yi)
            assert yi * xi >= 0 or abs(xi) < 8  # A-law has no zero level: 0 -> +8


def test_encode_rejects_non_int16():
    with pytest.raises(TypeError):
        ulaw_encode(np.zeros(4, dtype=np.float64))


def test_wav_roundtrip(tmp_path):
    x = (np.arange(-500, 500) * 30).astype(np.int16)
    write_wav(tmp_path / "a.wav", x)
    assert np.array_equal(read_wav(tmp_path / "a.wav"), x)


def _wav(path, rate=8000, channels=1, width=2, frames=b"\x00\x00" * 100):
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(frames)
    return path


def _float_wav(path):
    data = struct.pack("<4f", 0.0, 0.1, -0.1, 0.0)
    fmt = struct.pack("<HHIIHH", 3, 1, 8000, 32000, 4, 32)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(data)) + data
    path.write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)
    return path


@pytest.mark.parametrize(
    "make, fragment",
    [
        (lambda p: p.with_suffix(".missing"), "no such file"),
        (lambda p: (p.write_bytes(b"hello, not a wav file at all"), p)[1], "not a valid WAV"),
        (lambda p: (p.write_bytes(b""), p)[1], "not a valid WAV"),
        (lambda p: _wav(p, rate=16000), "16000 Hz"),
        (lambda p: _wav(p, channels=2, frames=b"\x00\x00" * 200), "2 channels"),
        (lambda p: _wav(p, width=1, frames=b"\x80" * 100), "8-bit"),
        (lambda p: _wav(p, width=3, frames=b"\x00" * 300), "24-bit"),
        (lambda p: _float_wav(p), "not a valid WAV"),
        (lambda p: (p.write_bytes(_wav(p).read_bytes()[:-50]), p)[1], "truncated"),
        (lambda p: (p.write_bytes(_wav(p).read_bytes()[:30]), p)[1], "not a valid WAV"),
        (lambda p: (p.write_bytes(_wav(p).read_bytes()[:-1]), p)[1], "truncated"),
    ],
)
def test_read_wav_rejects(tmp_path, make, fragment):
    path = make(tmp_path / "bad.wav")
    with pytest.raises(WavError) as info:
        read_wav(path)
    message = str(info.value)
    assert fragment in message and "\n" not in message
    assert isinstance(info.value, ValueError)
