"""RFC 4733 telephone-events: payload parsing/building, key-press tracking, and
merging of event and in-band key presses so that each key counts once."""

from __future__ import annotations

import struct
from dataclasses import dataclass

from media.dtmf import KeyPress

EVENT_DIGITS = "0123456789*#ABCD"  # RFC 4733 event codes 0-15
MAX_VOLUME = 63


@dataclass(frozen=True)
class TelephoneEvent:
    """One 4-byte telephone-event block (duration in RTP timestamp units)."""

    event: int
    end: bool
    volume: int
    duration: int

    @property
    def digit(self) -> str | None:
        """The DTMF key for events 0-15, None for other events (flash, ...)."""
        return EVENT_DIGITS[self.event] if self.event < len(EVENT_DIGITS) else None


def parse_event(payload: bytes) -> list[TelephoneEvent]:
    """Parse a telephone-event payload (one or more 4-byte blocks).

    Raises ValueError for an empty payload or one whose length is not a multiple
    of 4; the reserved bit is ignored, as RFC 4733 asks receivers to do."""
    data = bytes(payload)
    if not data:
        raise ValueError("telephone-event payload is empty")
    if len(data) % 4:
        raise ValueError(f"telephone-event payload is {len(data)} bytes, not a multiple of 4")
    events = []
    for offset in range(0, len(data), 4):
        event, flags, duration = struct.unpack_from("!BBH", data, offset)
        events.append(TelephoneEvent(event, bool(flags & 0x80), flags & 0x3F, duration))
    return events


def build_event(event: int | str, duration: int, end: bool = False, volume: int = 10) -> bytes:
    """Build one 4-byte telephone-event block; event is a code 0-255 or a key."""
    code = EVENT_DIGITS.index(event) if isinstance(event, str) else event
    if not 0 <= code <= 255:
        raise ValueError(f"event code {code} out of range 0-255")
    if not 0 <= volume <= MAX_VOLUME:
        raise ValueError(f"volume {volume} out of range 0-{MAX_VOLUME}")
    if not 0 <= duration <= 0xFFFF:
        raise ValueError(f"duration {duration} out of range 0-65535")
    return struct.pack("!BBH", code, (0x80 if end else 0) | volume, duration)


@dataclass
class _Open:
    timestamp: int
    digit: str
    duration: int
    seen_ms: float
    start_ms: float  # placed when its first packet came (the base may move before it ends)


class EventTracker:
    """Turns telephone-event RTP packets into key presses, exactly once each.

    Packets of one key press share its RTP timestamp; the end packet (sent three
    times) closes it.  Duplicates and late packets of finished presses are
    ignored; a press whose end packets were lost ends when another event starts
    or when ``expire(now_ms)`` finds it silent for ``timeout_ms``.  Times are ms
    from ``base_timestamp`` (the RTP timestamp of the call's first audio sample;
    defaults to the first event packet's).
    """

    def __init__(self, clock_rate: int = 8000, base_timestamp: int | None = None, timeout_ms: float = 200.0) -> None:
        self.clock_rate = clock_rate
        self.base = base_timestamp
        self.timeout_ms = timeout_ms
        self._open: _Open | None = None
        self._done: list[int] = []  # recent finished timestamps (bounded)

    def _ms(self, ticks: int) -> float:
        return 1000.0 * ticks / self.clock_rate

    def _start_ms(self, timestamp: int) -> float:
        return self._ms((timestamp - self.base) % 2**32)

    @property
    def pressing(self) -> bool:
        return self._open is not None

    @property
    def active_start_ms(self) -> float | None:
        """Start of the key press in progress (for masking), if any."""
        return None if self._open is None else self._open.start_ms

    def feed(self, timestamp: int, marker: bool, payload: bytes, now_ms: float | None = None) -> list[KeyPress]:
        """One telephone-event packet; returns the key presses it completes.

        Raises ValueError for a malformed payload (nothing is changed)."""
        events = parse_event(payload)
        if self.base is None:
            self.base = timestamp
        out: list[KeyPress] = []
        ev = events[-1]  # with several blocks the last describes this timestamp
        if ev.digit is None or timestamp in self._done:
            return out
        cur = self._open
        if cur is not None and cur.timestamp != timestamp:
            if ((timestamp - cur.timestamp) % 2**32) >= 2**31:
                return out  # a reordered packet from before the open press
            out.append(self._finish())
            cur = None
        start = self._start_ms(timestamp) if cur is None else cur.start_ms
        seen = start + self._ms(ev.duration) if now_ms is None else now_ms
        if cur is None:
            cur = self._open = _Open(timestamp, ev.digit, ev.duration, seen, start)
        cur.duration = max(cur.duration, ev.duration)
        cur.seen_ms = seen
        if ev.end:
            out.append(self._finish())
        return out

    def expire(self, now_ms: float) -> list[KeyPress]:
        """Close a press whose packets stopped (end lost) more than timeout_ms ago."""
        if self._open is not None and now_ms - self._open.seen_ms > self.timeout_ms:
            return [self._finish()]
        return []

    def abandon(self) -> str | None:
        """Never report the press in progress (its later packets are ignored too); its digit."""
        return None if self._open is None else self._close().digit

    def flush(self) -> list[KeyPress]:
        """End of stream: close the open press, if any."""
        return [self._finish()] if self._open is not None else []

    def _finish(self) -> KeyPress:
        cur = self._close()
        return KeyPress(cur.digit, cur.start_ms, cur.start_ms + self._ms(cur.duration))

    def _close(self) -> _Open:
        """Take the open press off; its later packets are ignored (recent timestamps only)."""
        cur = self._open
        assert cur is not None
        self._open = None
        self._done = (self._done + [cur.timestamp])[-16:]
        return cur


def same_press(a: KeyPress, b: KeyPress, slack_ms: float = 20.0) -> bool:
    """Same digit and overlapping in time (within slack_ms)."""
    return a.digit == b.digit and a.start_ms <= b.end_ms + slack_ms and b.start_ms <= a.end_ms + slack_ms


class KeyPressMerger:
    """Counts a key once when it arrives both in-band and as an RFC 4733 event:
    ``add(press)`` returns the press if it is new, None if it duplicates one
    already accepted. Presses ending more than ``memory_ms`` before the latest
    start seen are forgotten, and at most ``max_recent`` are kept (a sender
    making up timestamps cannot grow the list, nor the time each add takes)."""

    def __init__(self, slack_ms: float = 20.0, memory_ms: float = 5000.0, max_recent: int | None = 64) -> None:
        self.slack_ms = slack_ms
        self.memory_ms = memory_ms
        self.max_recent = max_recent
        self._recent: list[KeyPress] = []
        self._latest_start = float("-inf")

    def add(self, press: KeyPress) -> KeyPress | None:
        self._latest_start = max(self._latest_start, press.start_ms)
        horizon = self._latest_start - self.memory_ms
        self._recent = [p for p in self._recent if p.end_ms >= horizon]
        if any(same_press(p, press, self.slack_ms) for p in self._recent):
            return None
        self._recent.append(press)
        if self.max_recent is not None and len(self._recent) > self.max_recent:
            del self._recent[0]
        return press


def merge_key_presses(inband: list[KeyPress], events: list[KeyPress], slack_ms: float = 20.0) -> list[KeyPress]:
    """Merge two whole lists: events win over overlapping in-band duplicates."""
    merger = KeyPressMerger(slack_ms, memory_ms=float("inf"), max_recent=None)
    kept = [p for p in events if merger.add(p)] + [p for p in inband if merger.add(p)]
    return sorted(kept, key=lambda p: p.start_ms)
