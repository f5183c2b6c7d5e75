"""Scripted phones on real UDP sockets: send scheduled RTP, record what comes back.

The I/O half of `media.softphone` (which only builds datagrams); used by
`simulate_call`, the media worker tests and the benchmark.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time

import numpy as np

from media.calls import CODECS
from media.rtp import MalformedPacket, parse_rtp
from media.softphone import FRAME


class Phones:
    """One UDP socket per phone, named like the call's legs."""

    def __init__(self, names: list[str], host: str = "127.0.0.1") -> None:
        self.sockets: dict[str, socket.socket] = {}
        for name in names:
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.bind((host, 0))
            sock.setblocking(False)
            self.sockets[name] = sock
        self.received: dict[str, list[tuple[float, bytes]]] = {name: [] for name in names}

    async def play(self, schedule: list[tuple[float, str, bytes, tuple[str, int]]], linger_s: float = 0.3) -> None:
        """Send each (at seconds, phone, datagram, destination) on time; collect replies meanwhile."""
        start = time.monotonic()
        for at, name, data, destination in sorted(schedule, key=lambda item: item[0]):
            delay = start + at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            self.sockets[name].sendto(data, destination)
            self.drain()
        end = time.monotonic() + linger_s
        while time.monotonic() < end:
            await asyncio.sleep(0.01)
            self.drain()

    def drain(self) -> None:
        now = time.monotonic()
        for name, sock in self.sockets.items():
            while True:
                try:
                    self.received[name].append((now, sock.recv(2048)))
                except BlockingIOError:
                    break

    def audio(self, name: str, codec: str = "PCMU") -> np.ndarray:
        """What a phone heard, each payload placed at its RTP timestamp (a perfect jitter buffer)."""
        placed = []
        for _at, data in self.received[name]:
            with contextlib.suppress(MalformedPacket):
                packet = parse_rtp(data)
                if packet.payload_type == CODECS[codec].payload_type:
                    placed.append((packet.timestamp, CODECS[codec].decode(packet.payload)))
        if not placed:
            return np.zeros(0, dtype=np.int16)
        base = min(ts for ts, _pcm in placed)
        length = max(((ts - base) & 0xFFFFFFFF) + pcm.size for ts, pcm in placed)
        out = np.zeros(max(length, FRAME), dtype=np.int16)
        for ts, pcm in placed:
            position = (ts - base) & 0xFFFFFFFF
            out[position : position + pcm.size] = pcm
        return out

    def close(self) -> None:
        for sock in self.sockets.values():
            sock.close()
