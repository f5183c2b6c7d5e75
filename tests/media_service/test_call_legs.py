"""media.calls without sockets: supervisors, malformed RTP, masking on every call."""

from __future__ import annotations

import numpy as np
import pytest

from media.calls import BARGE, MONITOR, Call
from media.codecs import ulaw_decode
from media.dtmf import detect
from media.rtp import MalformedPacket, RtpPacket, parse_rtp
from media.softphone import caller_packets


def run(call: Call, keys: str = "123", mode: str = "inband") -> dict[str, np.ndarray]:
    heard: dict[str, list[np.ndarray]] = {}
    for at, data in caller_packets(keys, mode)[0]:
        for leg, out in call.receive(call.caller, data, at).datagrams:
            packet = parse_rtp(out)
            heard.setdefault(leg.name, []).append(ulaw_decode(packet.payload))
    return {name: np.concatenate(chunks) for name, chunks in heard.items()}


def test_monitoring_supervisor_hears_flat_tones_and_barging_one_hears_nothing_of_the_caller():
    call = Call("c1")
    call.add_supervisor("watcher", MONITOR)
    call.add_supervisor("boss", BARGE)
    call.session_open = True
    heard = run(call)
    assert detect(heard["agent"]) == [] and detect(heard["watcher"]) == []
    assert np.array_equal(heard["agent"], heard["watcher"])  # the same flat tones
    assert np.abs(heard["agent"]).max() > 1000  # ... which are audible
    assert not heard["boss"].any()  # nothing from the caller while the session is open


def test_barging_supervisor_hears_the_caller_again_without_a_session():
    call = Call("c1")
    call.add_supervisor("boss", BARGE)
    heard = run(call)
    assert np.array_equal(heard["boss"], heard["agent"])


def test_keys_are_masked_on_every_call_even_unlinked():
    call = Call("c1")
    assert [k.digit for k in detect(run(call, "0123456789*#")["agent"])] == []


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"\x80\x00", "short"),
        (b"\x40" + bytes(20), "version"),
        (b"\x8f" + bytes(15), "csrc"),
        (bytes([0xA0]) + bytes(11) + b"\xff", "padding"),
        (RtpPacket(0, 1, 1, 1, bytes(1600)).build(), "oversized"),
    ],
)
def test_malformed_rtp_raises_a_clear_error(data, reason):
    with pytest.raises(MalformedPacket) as caught:
        parse_rtp(data)
    assert caught.value.reason == reason


def test_malformed_unknown_and_oversized_packets_are_counted_and_dropped():
    call = Call("c1")
    garbage = [b"", b"\x00" * 5, b"\x40" + bytes(20), RtpPacket(13, 1, 1, 1, bytes(160)).build(),
               RtpPacket(0, 2, 1, 1, bytes(800)).build()]  # fmt: skip
    for data in garbage:
        assert call.receive(call.caller, data, 0.0).datagrams == []
    assert call.dropped == {"short": 2, "version": 1, "payload_type": 1, "oversized": 1}
    assert call.last_activity is None
