from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from media.dtmf import KeyPress
from media.rfc4733 import (
    EventTracker,
    KeyPressMerger,
    TelephoneEvent,
    build_event,
    merge_key_presses,
    parse_event,
)


def test_build_and_parse_roundtrip():
    payload = build_event("5", duration=800, end=True, volume=10)
    assert payload == bytes([5, 0x80 | 10, 0x03, 0x20])
    assert parse_event(payload) == [TelephoneEvent(5, True, 10, 800)]
    assert parse_event(payload)[0].digit == "5"
    assert parse_event(build_event("#", 0))[0].digit == "#"
    assert parse_event(build_event(16, 0))[0].digit is None  # flash: not a key


def test_reserved_bit_ignored():
    assert parse_event(bytes([1, 0x40 | 7, 0, 160])) == [TelephoneEvent(1, False, 7, 160)]


@pytest.mark.parametrize("payload", [b"", b"\x01", b"\x01\x02\x03", b"\x01\x02\x03\x04\x05"])
def test_malformed_payloads(payload):
    with pytest.raises(ValueError, match="telephone-event payload"):
        parse_event(payload)


@pytest.mark.parametrize("kw", [{"volume": 64}, {"duration": 70000}, {"event": 300}])
def test_build_rejects_out_of_range(kw):
    args = {"event": 1, "duration": 10} | kw
    with pytest.raises(ValueError):
        build_event(**args)


@given(st.binary(max_size=64))
def test_parser_never_crashes(data):
    try:
        events = parse_event(data)
    except ValueError:
        return
    assert len(events) == len(data) // 4
    assert all(0 <= e.volume <= 63 and 0 <= e.event <= 255 for e in events)


def packets(ts: int, digit: str, total: int, step: int = 160):
    """RFC 4733 packet train of one key press: updates, then 3 end packets."""
    out = [(ts, True, build_event(digit, step))]
    out += [(ts, False, build_event(digit, d)) for d in range(2 * step, total, step)]
    out += [(ts, False, build_event(digit, total, end=True))] * 3
    return out


def run(tracker: EventTracker, pkts) -> list[KeyPress]:
    found = []
    for p in pkts:
        found += tracker.feed(*p)
    return found + tracker.flush()


def test_each_press_once_despite_repeated_end_packets():
    pkts = packets(1000, "1", 800) + packets(3000, "2", 640)
    found = run(EventTracker(base_timestamp=0), pkts)
    assert found == [KeyPress("1", 125.0, 225.0), KeyPress("2", 375.0, 455.0)]


def test_reordered_and_late_packets():
    a, b = packets(1000, "1", 800), packets(3000, "2", 640)
    pkts = a[:2] + [a[3]] + [a[2]] + a[4:5] + b[:2] + a[5:] + b[2:]
    found = run(EventTracker(base_timestamp=0), pkts)
    assert found == [KeyPress("1", 125.0, 225.0), KeyPress("2", 375.0, 455.0)]


def test_lost_end_closes_on_next_event_or_timeout():
    a = packets(1000, "7", 800)[:-3]  # all end packets lost
    b = packets(3000, "8", 640)
    tracker = EventTracker(base_timestamp=0)
    found = run(tracker, a + b)
    assert found == [KeyPress("7", 125.0, 125.0 + 640 / 8), KeyPress("8", 375.0, 455.0)]
    tracker = EventTracker(base_timestamp=0)
    for p in a:
        assert tracker.feed(*p) == []
    assert tracker.active_start_ms == 125.0
    assert tracker.expire(now_ms=300.0) == []
    assert tracker.expire(now_ms=500.0) == [KeyPress("7", 125.0, 205.0)]
    assert tracker.active_start_ms is None


def test_timestamp_wraparound():
    base = 2**32 - 400
    found = run(EventTracker(base_timestamp=base), packets(2**32 - 160, "3", 480))
    assert found == [KeyPress("3", 30.0, 90.0)]


def test_malformed_packet_changes_nothing():
    tracker = EventTracker(base_timestamp=0)
    with pytest.raises(ValueError):
        tracker.feed(100, True, b"\x01\x02")
    assert tracker.active_start_ms is None


def test_inband_and_event_counted_once():
    inband = [KeyPress("4", 101.0, 160.5), KeyPress("1", 300.0, 360.0), KeyPress("1", 500.0, 560.0)]
    events = [KeyPress("4", 100.0, 160.0), KeyPress("1", 500.0, 560.0), KeyPress("9", 700.0, 760.0)]
    merged = merge_key_presses(inband, events)
    assert [k.digit for k in merged] == ["4", "1", "1", "9"]
    assert merged[0] == events[0]  # the event's timing wins
    merger = KeyPressMerger()
    assert merger.add(inband[0]) == inband[0]
    assert merger.add(events[0]) is None
    assert merger.add(KeyPress("4", 400.0, 450.0)) is not None  # a new press of the same key
