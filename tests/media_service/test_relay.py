"""media.relay on real loopback UDP, in-process (no Django): many calls share
one epoll set and one masking batch, and each is still its own call."""

from __future__ import annotations

import asyncio
import socket
import time

import numpy as np

from media.calls import MAX_ROWS_PER_PUSH, Call
from media.codecs import ulaw_decode
from media.dtmf import detect
from media.relay import Relay
from media.rtp import RtpPacket, is_rtcp, parse_rtp
from media.softphone import caller_packets, silence_packets

HOST = "127.0.0.1"


def phone() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((HOST, 0))
    sock.setblocking(False)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    return sock


def read_all(sock: socket.socket) -> list[bytes]:
    out = []
    while True:
        try:
            out.append(sock.recv(2048))
        except BlockingIOError:
            return out


async def open_call(relay: Relay, name: str) -> tuple[Call, tuple[str, int], tuple[str, int]]:
    call = Call(name, audio=relay.audio)
    caller_port = await relay.open_leg(call, call.caller, HOST, 0)
    agent_port = await relay.open_leg(call, call.agent, HOST, 0)
    return call, (HOST, caller_port), (HOST, agent_port)


def test_many_calls_share_one_relay_and_each_is_masked_and_keyed_on_its_own():
    keys = ["4242", "1#", "0*9", "57", "8", "36#"] * 4
    pressed: dict[str, str] = {}

    def on_keys(call, received):
        pressed[call.call_id] = pressed.get(call.call_id, "") + "".join(k.digit for k in received.caller_keys)

    async def scenario() -> list[tuple[list[bytes], int]]:
        relay = Relay(on_keys)
        calls = [await open_call(relay, str(index)) for index in range(len(keys))]
        callers, agents = [phone() for _ in calls], [phone() for _ in calls]
        streams = [caller_packets(digits)[0] for digits in keys]
        for (_call, _caller_at, agent_at), agent in zip(calls, agents, strict=True):
            agent.sendto(silence_packets(0.02)[0][1], agent_at)  # the worker learns the agent's address
        await asyncio.sleep(0.05)
        for tick in range(max(len(stream) for stream in streams)):
            for (_call, caller_at, _agent_at), sock, stream in zip(calls, callers, streams, strict=True):
                if tick < len(stream):
                    sock.sendto(stream[tick][1], caller_at)
            await asyncio.sleep(0.002)  # the relay batches whatever arrived meanwhile
        await asyncio.sleep(0.1)
        heard = [(read_all(agent), len(stream)) for agent, stream in zip(agents, streams, strict=True)]
        relay.close()
        for sock in callers + agents:
            sock.close()
        assert relay.errors == 0
        return heard

    heard = asyncio.run(scenario())
    for index, (datagrams, sent) in enumerate(heard):
        assert len(datagrams) == sent  # one masked packet per caller packet, none lost or doubled
        packets = [parse_rtp(data) for data in datagrams]
        assert len({p.ssrc for p in packets}) == 1
        assert all((b.sequence - a.sequence) % 65536 == 1 for a, b in zip(packets, packets[1:], strict=False))
        assert all(b.timestamp - a.timestamp == 160 for a, b in zip(packets, packets[1:], strict=False))
        audio = np.concatenate([ulaw_decode(p.payload) for p in packets])
        assert np.abs(audio).max() > 1000  # the flat tones are there ...
        assert detect(audio) == []  # ... and no digit
        assert pressed.get(str(index)) == keys[index]


def test_garbage_and_foreign_sources_are_counted_and_closing_releases_everything():
    async def scenario():
        relay = Relay(lambda call, received: None)
        call, caller_at, agent_at = await open_call(relay, "c1")
        caller, stranger, agent = phone(), phone(), phone()
        agent.sendto(silence_packets(0.02)[0][1], agent_at)
        good = RtpPacket(0, 1, 0, 7, bytes(160)).build()
        caller.sendto(good, caller_at)
        await asyncio.sleep(0.05)
        for data in (b"", b"\x00" * 5, b"\x40" + bytes(20), RtpPacket(13, 2, 160, 7, bytes(160)).build()):
            caller.sendto(data, caller_at)
        stranger.sendto(RtpPacket(0, 3, 320, 7, bytes(160)).build(), caller_at)  # not the latched caller
        await asyncio.sleep(0.05)
        heard = read_all(agent)
        slot = call.mask_slot
        relay.close_call("c1")
        reused_slot = (await open_call(relay, "c2"))[0].mask_slot
        relay.close()
        for sock in (caller, stranger, agent):
            sock.close()
        return call, heard, slot, reused_slot

    call, heard, slot, reused_slot = asyncio.run(scenario())
    assert len(heard) == 1  # the one good packet, masked and relayed
    assert call.dropped == {"short": 2, "version": 1, "payload_type": 1, "foreign_source": 1}
    assert call.mask_slot is None and reused_slot == slot  # the DSP slot went back to the pool


def test_a_call_over_ipv6_latches_its_phones_and_relays():
    """IPv6 sockets report (host, port, flow info, scope id): a peer given as (host, port) or
    latched from its first packet is matched by host and port."""

    def phone6() -> socket.socket:
        sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        sock.bind(("::1", 0))
        sock.setblocking(False)
        return sock

    async def scenario():
        relay = Relay(lambda call, received: None)
        call = Call("c6", audio=relay.audio)
        caller_at = ("::1", await relay.open_leg(call, call.caller, "::1", 0))
        agent_at = ("::1", await relay.open_leg(call, call.agent, "::1", 0))
        caller, agent = phone6(), phone6()
        call.caller.peer = caller.getsockname()[:2]  # given by the control API, as media.service sets it
        agent.sendto(silence_packets(0.02)[0][1], agent_at)
        await asyncio.sleep(0.02)
        for _at, data in caller_packets("1")[0][:10]:
            caller.sendto(data, caller_at)
            await asyncio.sleep(0.003)
        await asyncio.sleep(0.05)
        heard = [data for data in read_all(agent) if not is_rtcp(data)]
        relay.close()
        caller.close()
        agent.close()
        return call, heard

    call, heard = asyncio.run(scenario())
    assert len(heard) == 10 and call.dropped == {}
    assert call.caller.peer[0] == call.agent.peer[0] == "::1"


def test_a_backlog_is_masked_and_sent_a_full_push_at_a_time_while_reading():
    """After a busy spell hundreds of packets wait: the first ones go out as soon as a
    whole push is read, not after the last one."""

    async def scenario():
        relay = Relay(lambda call, received: None)
        calls = [await open_call(relay, str(index)) for index in range(130)]
        caller = phone()
        packet = caller_packets("1")[0][0][1]
        for _call, caller_at, _agent_at in calls:
            caller.sendto(packet, caller_at)
        time.sleep(0.1)  # they all arrive while the event loop is busy elsewhere
        queued_at_flush: list[int] = []
        flush = relay.flush

        def counting_flush() -> None:
            queued_at_flush.append(len(relay.audio._callers))
            flush()

        relay.flush = counting_flush
        relay._on_ready()
        left = len(relay.audio._callers)
        relay.close()
        caller.close()
        return queued_at_flush, left

    queued_at_flush, left = asyncio.run(scenario())
    assert queued_at_flush == [MAX_ROWS_PER_PUSH, MAX_ROWS_PER_PUSH]
    assert left == 2  # the rest waits for the batch interval, as any packets read then
