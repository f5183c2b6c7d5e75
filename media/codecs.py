"""G.711 (ITU-T) mu-law / A-law codecs and 8 kHz mono 16-bit WAV I/O.

The G.711 tables are generated once with the reference integer algorithm (the
one of the ITU-T G.711 / Sun ``g711.c`` code) and then used as numpy lookup
tables: decoding is a 256-entry table, encoding a 65536-entry table indexed by
the int16 sample viewed as uint16, so both directions are one vectorised take().
"""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np

SAMPLE_RATE = 8000

_SEG_UEND = (0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF)
_SEG_AEND = (0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF)


class WavError(ValueError):
    """A file that is not an 8 kHz mono 16-bit PCM WAV (one-line message)."""


def _segment(value: int, ends: tuple[int, ...]) -> int:
    for seg, end in enumerate(ends):
        if value <= end:
            return seg
    return len(ends)


def _ulaw_encode_one(pcm: int) -> int:
    pcm >>= 2  # G.711 mu-law works on 14-bit magnitudes
    if pcm < 0:
        pcm, mask = -pcm, 0x7F
    else:
        mask = 0xFF
    pcm = min(pcm, 8159) + 0x21
    seg = _segment(pcm, _SEG_UEND)
    if seg >= 8:
        return 0x7F ^ mask
    return ((seg << 4) | ((pcm >> (seg + 1)) & 0x0F)) ^ mask


def _ulaw_decode_one(code: int) -> int:
    code = ~code & 0xFF
    t = (((code & 0x0F) << 3) + 0x84) << ((code & 0x70) >> 4)
    return 0x84 - t if code & 0x80 else t - 0x84


def _alaw_encode_one(pcm: int) -> int:
    pcm >>= 3  # G.711 A-law works on 13-bit magnitudes
    if pcm >= 0:
        mask = 0xD5
    else:
        mask, pcm = 0x55, -pcm - 1
    seg = _segment(pcm, _SEG_AEND)
    if seg >= 8:
        return 0x7F ^ mask
    aval = seg << 4
    aval |= (pcm >> 1 if seg < 2 else pcm >> seg) & 0x0F
    return aval ^ mask


def _alaw_decode_one(code: int) -> int:
    code ^= 0x55
    t = (code & 0x0F) << 4
    seg = (code & 0x70) >> 4
    if seg == 0:
        t += 8
    elif seg == 1:
        t += 0x108
    else:
        t = (t + 0x108) << (seg - 1)
    return t if code & 0x80 else -t


def _tables() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    pcm = np.arange(65536, dtype=np.uint16).view(np.int16).tolist()
    ulaw_enc = np.array([_ulaw_encode_one(v) for v in pcm], dtype=np.uint8)
    alaw_enc = np.array([_alaw_encode_one(v) for v in pcm], dtype=np.uint8)
    ulaw_dec = np.array([_ulaw_decode_one(c) for c in range(256)], dtype=np.int16)
    alaw_dec = np.array([_alaw_decode_one(c) for c in range(256)], dtype=np.int16)
    return ulaw_enc, ulaw_dec, alaw_enc, alaw_dec


ULAW_ENCODE, ULAW_DECODE, ALAW_ENCODE, ALAW_DECODE = _tables()


def _as_int16(samples: np.ndarray) -> np.ndarray:
    arr = np.asarray(samples)
    if arr.dtype != np.int16:
        raise TypeError(f"expected int16 PCM samples, got {arr.dtype}")
    return arr


def _as_codes(codes: bytes | np.ndarray) -> np.ndarray:
    if isinstance(codes, (bytes, bytearray, memoryview)):
        return np.frombuffer(codes, dtype=np.uint8)
    return np.asarray(codes, dtype=np.uint8)


def ulaw_encode(samples: np.ndarray) -> np.ndarray:
    """int16 PCM -> mu-law codes (uint8)."""
    return ULAW_ENCODE[_as_int16(samples).view(np.uint16)]


def ulaw_decode(codes: bytes | np.ndarray) -> np.ndarray:
    """mu-law codes (bytes or uint8) -> int16 PCM."""
    return ULAW_DECODE[_as_codes(codes)]


def alaw_encode(samples: np.ndarray) -> np.ndarray:
    """int16 PCM -> A-law codes (uint8)."""
    return ALAW_ENCODE[_as_int16(samples).view(np.uint16)]


def alaw_decode(codes: bytes | np.ndarray) -> np.ndarray:
    """A-law codes (bytes or uint8) -> int16 PCM."""
    return ALAW_DECODE[_as_codes(codes)]


def read_wav(path: str | Path) -> np.ndarray:
    """Read an 8 kHz mono 16-bit PCM WAV file into int16 samples.

    Raises WavError (one-line message) for anything else, including a missing
    file and a data chunk shorter than its header says.
    """
    path = Path(path)
    try:
        with wave.open(str(path), "rb") as wav:
            channels, width, rate = wav.getnchannels(), wav.getsampwidth(), wav.getframerate()
            nframes = wav.getnframes()
            if wav.getcomptype() != "NONE":
                raise WavError(f"{path}: not PCM ({wav.getcompname()})")
            if channels != 1:
                raise WavError(f"{path}: {channels} channels, expected mono")
            if width != 2:
                raise WavError(f"{path}: {8 * width}-bit samples, expected 16-bit PCM")
            if rate != SAMPLE_RATE:
                raise WavError(f"{path}: {rate} Hz, expected {SAMPLE_RATE} Hz")
            data = wav.readframes(nframes)
    except WavError:
        raise
    except FileNotFoundError:
        raise WavError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise WavError(f"{path}: is a directory") from None
    except (wave.Error, EOFError) as exc:
        raise WavError(f"{path}: not a valid WAV file ({exc})") from None
    except OSError as exc:
        raise WavError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if len(data) != 2 * nframes:
        raise WavError(f"{path}: truncated data chunk ({len(data)} of {2 * nframes} bytes)")
    return np.frombuffer(data, dtype="<i2").astype(np.int16)


def write_wav(path: str | Path, samples: np.ndarray) -> None:
    """Write int16 samples as an 8 kHz mono 16-bit PCM WAV file."""
    data = _as_int16(samples).astype("<i2").tobytes()
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(SAMPLE_RATE)
        wav.writeframes(data)
