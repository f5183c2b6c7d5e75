"""A scripted phone: the RTP a caller's handset sends when keying digits.

Used by `simulate_call`, the media worker tests and the benchmark. Pure: it
returns (send time, datagram) pairs; the caller of it owns the socket.
Key presses go in-band (dual tones in the G.711 audio), as RFC 4733
telephone-events, or both at once (as many gateways do).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np

from media.calls import CODECS
from media.dtmf import DBM0_PEAK, HIGH_FREQS, KEYS, LOW_FREQS, SAMPLE_RATE
from media.rfc4733 import build_event
from media.rtp import RtpPacket

FRAME = 160  # 20 ms packets
KEY_MODES = ("inband", "rfc4733", "both")
END_REPEATS = 3  # RFC 4733 2.5.1.4: the end packet is sent three times


def dtmf_tone(digit: str, ms: float, level_dbm0: float = -10.0) -> np.ndarray:
    """One key's dual tone, each tone at level_dbm0 (int16)."""
    row, col = divmod(KEYS.index(digit), 4)
    n = np.arange(int(round(ms * SAMPLE_RATE / 1000)))
    amplitude = DBM0_PEAK * 10 ** (level_dbm0 / 20)
    wave = np.sin(2 * np.pi * LOW_FREQS[row] * n / SAMPLE_RATE) + np.sin(2 * np.pi * HIGH_FREQS[col] * n / SAMPLE_RATE)
    return np.round(amplitude * wave).astype(np.int16)


@dataclass(frozen=True)
class KeyedSpan:
    digit: str
    start: int  # samples
    end: int


def keypad_audio(
    keys: str, tone_ms: float = 100, gap_ms: float = 100, lead_ms: float = 200
) -> tuple[np.ndarray, list[KeyedSpan]]:
    """The caller's audio for a key sequence (tones between silences) and where each key is."""
    parts = [np.zeros(int(lead_ms * 8), dtype=np.int16)]
    spans = []
    position = parts[0].size
    for digit in keys:
        tone = dtmf_tone(digit, tone_ms)
        spans.append(KeyedSpan(digit, position, position + tone.size))
        gap = np.zeros(int(gap_ms * 8), dtype=np.int16)
        parts += [tone, gap]
        position += tone.size + gap.size
    audio = np.concatenate(parts)
    return np.concatenate([audio, np.zeros(-audio.size % FRAME, dtype=np.int16)]), spans


class RtpStream:
    """One outgoing RTP stream with its own SSRC, sequence and timestamp base."""

    def __init__(self, rng: random.Random | None = None) -> None:
        rng = rng or random.Random()
        self.ssrc = rng.getrandbits(32)
        self.sequence = rng.getrandbits(16)
        self.timestamp_base = rng.getrandbits(32)

    def packet(self, payload_type: int, position: int, payload: bytes, marker: bool = False) -> bytes:
        data = RtpPacket(
            payload_type, self.sequence, (self.timestamp_base + position) & 0xFFFFFFFF, self.ssrc, payload, marker
        ).build()
        self.sequence = (self.sequence + 1) & 0xFFFF
        return data


def caller_packets(
    keys: str,
    mode: str = "inband",
    codec: str = "PCMU",
    event_payload_type: int = 101,
    tail_ms: float = 300,
    rng: random.Random | None = None,
    lead_ms: float = 200,
) -> tuple[list[tuple[float, bytes]], np.ndarray]:
    """(send time in s, datagram) for the whole key sequence (after lead_ms of
    silence), and the audio sent.

    In rfc4733 mode the audio carries silence where the tones would be."""
    if mode not in KEY_MODES:
        raise ValueError(f"mode must be one of {KEY_MODES}")
    audio, spans = keypad_audio(keys, lead_ms=lead_ms)
    audio = np.concatenate([audio, np.zeros(int(tail_ms * 8) // FRAME * FRAME, dtype=np.int16)])
    sent = audio.copy()
    if mode == "rfc4733":
        for span in spans:
            sent[span.start : span.end] = 0
    encode = CODECS[codec].encode
    stream = RtpStream(rng)
    packets: list[tuple[float, bytes]] = []
    for start in range(0, sent.size, FRAME):
        at = start / SAMPLE_RATE
        packets.append(
            (at, stream.packet(CODECS[codec].payload_type, start, encode(sent[start : start + FRAME]).tobytes()))
        )
        if mode == "inband":
            continue
        for span in spans:
            if span.start <= start < span.end:
                duration = min(start + FRAME, span.end) - span.start
                ended = start + FRAME >= span.end
                payload = build_event(span.digit, duration, end=ended)
                repeats = END_REPEATS if ended else 1
                for _ in range(repeats):
                    packets.append(
                        (at, stream.packet(event_payload_type, span.start, payload, marker=start == span.start))
                    )
    return packets, sent


def silence_packets(
    duration_s: float, codec: str = "PCMU", rng: random.Random | None = None
) -> list[tuple[float, bytes]]:
    """A quiet phone: what the agent's handset sends so the worker learns its address."""
    stream = RtpStream(rng)
    payload = CODECS[codec].encode(np.zeros(FRAME, dtype=np.int16)).tobytes()
    count = int(duration_s * SAMPLE_RATE / FRAME)
    return [
        (i * FRAME / SAMPLE_RATE, stream.packet(CODECS[codec].payload_type, i * FRAME, payload)) for i in range(count)
    ]
