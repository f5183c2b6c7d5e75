"""RTCP of the media worker: reception statistics (RFC 3550 A.1, A.3, A.8), the
compound reports each leg gets, the BYE when a leg goes away, incoming SRs."""

from __future__ import annotations

import asyncio
import struct

import pytest

from media.calls import Call
from media.relay import Relay
from media.rtp import (
    RTCP_BYE,
    RTCP_RR,
    RTCP_SDES,
    RTCP_SR,
    SDES_CNAME,
    ReceptionStats,
    ReportBlock,
    SenderInfo,
    build_report,
    is_rtcp,
    parse_rtcp,
    parse_sender_info,
)
from media.softphone import caller_packets
from tests.media_service.test_relay import open_call, phone, read_all

RATE = 8000


def feed(stats: ReceptionStats, sequences, start_timestamp: int = 0, interval: float = 0.02) -> None:
    for index, sequence in enumerate(sequences):
        stats.packet(sequence & 0xFFFF, (start_timestamp + 160 * index) & 0xFFFFFFFF, 1.0 + index * interval, RATE)


def cname(packets) -> str:
    sdes = next(p for p in packets if p.packet_type == RTCP_SDES)
    _ssrc, item, length = struct.unpack_from("!IBB", sdes.body)
    assert item == SDES_CNAME
    return sdes.body[6 : 6 + length].decode()


def test_a_stream_received_whole_reports_no_loss_and_its_highest_sequence():
    stats = ReceptionStats(ssrc=7, sequence=1000)
    feed(stats, range(1000, 1100))
    block = stats.block(now=3.0)
    assert (block.ssrc, block.fraction_lost, block.cumulative_lost) == (7, 0, 0)
    assert block.highest_sequence == 1099
    assert block.jitter == 0  # packets arrived exactly at their sampling pace


def test_lost_packets_count_in_total_and_in_the_fraction_of_their_own_interval():
    stats = ReceptionStats(ssrc=7, sequence=0)
    feed(stats, [s for s in range(100) if s not in (10, 20, 30, 40, 50)])
    first = stats.block(now=3.0)
    assert (first.cumulative_lost, first.fraction_lost) == (5, 5 * 256 // 100)
    feed(stats, range(100, 150))
    second = stats.block(now=4.0)
    assert (second.cumulative_lost, second.fraction_lost) == (5, 0)  # nothing lost since the last report


def test_sequence_wrap_extends_the_highest_sequence_and_duplicates_make_loss_negative():
    stats = ReceptionStats(ssrc=7, sequence=65530)
    feed(stats, range(65530, 65540))  # wraps after 65535
    feed(stats, [65539, 65539])  # two duplicates of the last one
    block = stats.block(now=2.0)
    assert block.highest_sequence == (1 << 16) + 3
    assert block.cumulative_lost == -2
    packed = ReportBlock.unpack(block.pack())
    assert packed == block  # the 24-bit signed field carries the negative count


def test_jitter_follows_rfc3550_a8():
    stats = ReceptionStats(ssrc=7, sequence=0)
    for index in range(10):
        late = 0.01 if index == 5 else 0.0  # one packet 10 ms (80 timestamp units) late
        stats.packet(index, 160 * index, 1.0 + 0.02 * index + late, RATE)
    # J += (|D| - J) / 16: 80/16 = 5 at the late packet, 5 + (80 - 5)/16 at the next, then decaying.
    expected = 0.0
    for change in (80, 80, 0, 0, 0):
        expected += (change - expected) / 16
    assert stats.block(now=2.0).jitter == int(expected) == 7


def test_telephone_events_count_as_received_but_not_as_jitter_samples():
    stats = ReceptionStats(ssrc=7, sequence=0)
    stats.packet(0, 0, 1.0, RATE)
    for index in range(1, 6):
        stats.packet(index, 0, None, RATE)  # an event repeats its start timestamp
    block = stats.block(now=2.0)
    assert (block.cumulative_lost, block.highest_sequence, block.jitter) == (0, 5, 0)


def test_a_sender_that_restarts_its_sequence_is_followed_after_two_packets():
    stats = ReceptionStats(ssrc=7, sequence=100)
    feed(stats, range(100, 110))
    stats.packet(40000, 0, 2.0, RATE)  # a lone jump: not counted
    assert stats.block(now=2.0).highest_sequence == 109
    stats.packet(40000, 0, 2.0, RATE)
    stats.packet(40001, 160, 2.02, RATE)  # ... confirmed by the next: a new start
    block = stats.block(now=2.1)
    assert (block.highest_sequence, block.cumulative_lost) == (40001, 0)


def test_the_last_sender_report_is_echoed_with_the_delay_since_it_arrived():
    stats = ReceptionStats(ssrc=7, sequence=0)
    stats.sender_report(0x12345678, 0x9ABCDEF0, arrival=10.0)
    block = stats.block(now=10.5)
    assert block.last_sr == 0x56789ABC  # middle 32 bits of the NTP timestamp
    assert block.delay_since_last_sr == 32768  # 0.5 s in 1/65536 s


def test_reports_are_valid_compound_rtcp():
    block = ReportBlock(7, 12, 5, 1099, 3, 0, 0)
    sender = SenderInfo(ntp_seconds=3_900_000_000.25, rtp_timestamp=1234, packets=50, octets=8000)
    sr = build_report(0xAABBCCDD, "securepay-1", sender, (block,))
    assert is_rtcp(sr) and len(sr) % 4 == 0
    packets = parse_rtcp(sr)
    assert [(p.packet_type, p.count) for p in packets] == [(RTCP_SR, 1), (RTCP_SDES, 1)]
    ssrc, whole, fraction = parse_sender_info(packets[0])
    assert (ssrc, whole, fraction) == (0xAABBCCDD, 3_900_000_000, 1 << 30)
    assert struct.unpack_from("!III", packets[0].body, 12) == (1234, 50, 8000)
    assert ReportBlock.unpack(packets[0].body, 24) == block
    assert cname(packets) == "securepay-1"

    rr_bye = build_report(0xAABBCCDD, "securepay-1", None, (block,), bye=True)
    packets = parse_rtcp(rr_bye)
    assert [p.packet_type for p in packets] == [RTCP_RR, RTCP_SDES, RTCP_BYE]
    assert ReportBlock.unpack(packets[0].body, 4) == block
    assert packets[2].sender_ssrc == 0xAABBCCDD


@pytest.mark.parametrize(
    ("name", "blocks"), [("", ()), ("x" * 256, ()), ("ok", (ReportBlock(1, 0, 0, 0, 0, 0, 0),) * 32)]
)
def test_impossible_reports_are_refused(name, blocks):
    with pytest.raises(ValueError):
        build_report(1, name, None, blocks)


def test_each_leg_hears_a_report_about_its_own_stream():
    call = Call("c1")
    packets = [data for _at, data in caller_packets("1")[0]]
    del packets[10]  # lost on the way
    for index, data in enumerate(packets):
        call.receive(call.caller, data, 100.0 + 0.02 * index)
    reports = dict(call.sender_reports(now=110.0, wall_time=1_800_000_000.0))
    # To the caller: we sent it nothing yet, so an RR about its stream to us.
    to_caller = parse_rtcp(reports[call.caller])
    assert to_caller[0].packet_type == RTCP_RR and to_caller[0].count == 1
    block = ReportBlock.unpack(to_caller[0].body, 4)
    assert block.ssrc == call.caller.ssrc and block.cumulative_lost == 1
    # To the agent: an SR for the masked audio we sent, no block (the agent sent nothing).
    to_agent = parse_rtcp(reports[call.agent])
    assert to_agent[0].packet_type == RTCP_SR and to_agent[0].count == 0
    assert parse_sender_info(to_agent[0])[0] == call.agent.outbound.ssrc
    assert struct.unpack_from("!II", to_agent[0].body, 16) == (
        call.agent.outbound.packets,
        call.agent.outbound.octets,
    )
    assert cname(to_caller) == cname(to_agent) == call.cname
    assert call.sender_reports(now=111.0, wall_time=1_800_000_001.0) == []  # the next is due in 5 s


def test_a_senders_report_carries_its_rtp_clock_to_the_report_and_a_silent_stream_gets_an_rr():
    call = Call("c1")
    packets = [data for _at, data in caller_packets("1")[0]]
    for index, data in enumerate(packets):
        call.receive(call.caller, data, 100.0 + 0.02 * index)
    last_sent = 100.0 + 0.02 * (len(packets) - 1)
    last_timestamp = call.agent.outbound.last_timestamp
    sr = parse_rtcp(dict(call.sender_reports(now=last_sent + 2.0, wall_time=0.0))[call.agent])[0]
    assert sr.packet_type == RTCP_SR
    assert struct.unpack_from("!I", sr.body, 12)[0] == (last_timestamp + 16000) & 0xFFFFFFFF  # 2 s at 8 kHz on
    # Nothing sent for two report intervals: no longer a sender (RFC 3550 6.4), an RR.
    rr = parse_rtcp(dict(call.sender_reports(now=last_sent + 12.0, wall_time=0.0))[call.agent])[0]
    assert rr.packet_type == RTCP_RR


def test_a_callers_sender_report_is_noted_and_a_malformed_one_is_dropped():
    call = Call("c1")
    first = caller_packets("1")[0][0][1]
    call.receive(call.caller, first, 1.0)
    peer_ssrc = call.caller.ssrc
    sr = build_report(peer_ssrc, "phone", SenderInfo(3_900_000_000.5, 0, 1, 160))
    call.receive(call.caller, sr, 100.0)
    block = ReportBlock.unpack(parse_rtcp(dict(call.sender_reports(101.0, 0.0))[call.caller])[0].body, 4)
    assert block.last_sr == ((3_900_000_000 & 0xFFFF) << 16 | 0x8000)
    assert block.delay_since_last_sr == 65536  # 1 s after it arrived
    cut = bytearray(sr[:28])
    cut[0] |= 1  # claims a report block it does not carry
    cut[2:4] = struct.pack("!H", 6)
    call.receive(call.caller, bytes(cut), 4.0)
    assert call.dropped == {"rtcp_consumed": 1, "short": 1}


def test_closing_a_call_sends_each_phone_a_bye():
    async def scenario():
        relay = Relay(lambda call, received: None)
        call, caller_at, agent_at = await open_call(relay, "c1")
        caller, agent = phone(), phone()
        for _at, data in caller_packets("1")[0][:5]:
            caller.sendto(data, caller_at)
            await asyncio.sleep(0.005)
        await asyncio.sleep(0.05)
        call.agent.peer = agent.getsockname()  # as the control API sets it
        call.agent.accept_source(call.agent.peer)
        read_all(agent)
        relay.close_call("c1")
        await asyncio.sleep(0.05)
        heard = {"caller": read_all(caller), "agent": read_all(agent)}
        relay.close()
        caller.close()
        agent.close()
        return call, heard

    call, heard = asyncio.run(scenario())
    for name, datagrams in heard.items():
        reports = [parse_rtcp(data) for data in datagrams if is_rtcp(data)]
        assert len(reports) == 1, name
        assert [p.packet_type for p in reports[0]][-1] == RTCP_BYE
        assert reports[0][-1].sender_ssrc == call.leg(name).outbound.ssrc


def test_a_timestamp_wrapping_inside_the_stream_is_no_jitter():
    stats = ReceptionStats(ssrc=7, sequence=0)
    feed(stats, range(20), start_timestamp=2**32 - 160 * 10)  # wraps after the 10th packet
    timestamps_wrapped = stats.block(now=2.0)
    assert timestamps_wrapped.jitter == 0 and timestamps_wrapped.cumulative_lost == 0
