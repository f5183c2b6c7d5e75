"""Call.receive takes the common packet in one step (`Call._receive_in_line`); it must do
exactly what the general path does. Random impaired calls are played twice, with and
without the in-line step, and everything they send, key and count must be the same."""

from __future__ import annotations

import random

import numpy as np
import pytest

from media.calls import BARGE, MONITOR, Call, CallAudioBatch
from media.codecs import ulaw_encode
from media.rtp import RtpPacket, parse_rtp
from media.softphone import caller_packets, silence_packets

CALLS = 4
TICK_S = 0.02


def caller_stream(rng: random.Random, index: int) -> list[bytes]:
    """A caller keying (in-band or RFC 4733), re-cut at odd sizes, with losses, markers,
    reordering, duplicates, a new SSRC half-way and sometimes a timestamp jump."""
    keys = rng.choice(["12", "5#", "0", "987"])
    sent, _ = caller_packets(keys, rng.choice(["inband", "rfc4733"]), rng=rng)
    packets = [parse_rtp(data) for _at, data in sent]
    base = packets[0].timestamp
    codes = b"".join(p.payload for p in packets if p.payload_type == 0)
    events = [p for p in packets if p.payload_type != 0]
    audio, position, timestamp = [], 0, 0
    while position < len(codes):
        size = rng.choice([160, 160, 160, 160, 80, 170, 240])
        if rng.random() < 0.02:  # lost
            position, timestamp = position + size, timestamp + size
            continue
        if rng.random() < 0.01:
            timestamp += rng.choice([4000, 16000])  # a jump: within a second, or a restart
        audio.append((timestamp, 0, codes[position : position + size], rng.random() < 0.05))
        position, timestamp = position + size, timestamp + size
    items = audio + [(p.timestamp - base, p.payload_type, p.payload, p.marker) for p in events]
    items.sort(key=lambda item: item[0])
    ssrc, half = 0x1000 + index, len(items) // 2
    out = []
    for sequence, (stamp, payload_type, payload, marker) in enumerate(items):
        if sequence == half and rng.random() < 0.5:
            ssrc += 1  # the phone started a new stream
        out.append(RtpPacket(payload_type, sequence & 0xFFFF, stamp, ssrc, payload, marker=marker).build())
    for k in range(len(out) - 1):
        if rng.random() < 0.03:
            out[k], out[k + 1] = out[k + 1], out[k]
        elif rng.random() < 0.02:
            out.insert(k, out[k])  # a duplicate
    return out


def agent_stream(rng: random.Random, ticks: int) -> list[bytes]:
    """The agent's handset: silence, sometimes keying the session code (in-band or events)."""
    silence = [data for _at, data in silence_packets(ticks * TICK_S, rng=rng)]
    if rng.random() < 0.5:
        return silence
    sent, _ = caller_packets(rng.choice(["1234", "0007"]), rng.choice(["inband", "rfc4733"]), rng=rng)
    return [data for _at, data in sent] + silence[len(sent) :]


def play(seed: int) -> list:
    rng = random.Random(seed)
    batch = CallAudioBatch()
    calls = [Call(f"c{index}", audio=batch, rng=random.Random(seed * 100 + index)) for index in range(CALLS)]
    callers = [caller_stream(rng, index) for index in range(CALLS)]
    ticks = max(len(stream) for stream in callers) + 20
    agents = [agent_stream(rng, ticks) for _ in calls]
    for call in calls:
        call.session_open = rng.random() < 0.5
        call.listen_for_agent_code = rng.random() < 0.3
    log: list = []
    read = [0] * CALLS

    def note(kind: str, call: Call, received) -> None:
        sent = [(leg.name, data) for leg, data in received.datagrams]
        log.append((kind, call.call_id, sent, received.caller_keys, received.agent_keys))

    for tick in range(ticks):
        now = 100.0 + tick * TICK_S + rng.random() * 0.01
        for index, call in enumerate(calls):
            if tick == ticks // 3 and rng.random() < 0.5:
                call.add_supervisor("sup", rng.choice([MONITOR, BARGE]))
            if tick == ticks // 2 and rng.random() < 0.3:
                call.listen_for_agent_code = not call.listen_for_agent_code
            count = 0 if rng.random() < 0.03 else 2 if rng.random() < 0.1 else 1  # late, or a burst
            for data in callers[index][read[index] : read[index] + count]:
                note("caller", call, call.receive(call.caller, data, now))
            read[index] += count
            if tick < len(agents[index]) and rng.random() < 0.95:
                note("agent", call, call.receive(call.agent, agents[index][tick], now))
            if "sup" in call.supervisors and rng.random() < 0.5:
                voice = ulaw_encode((np.sin(np.arange(160) * 0.3) * 3000).astype(np.int16)).tobytes()
                packet = RtpPacket(0, tick & 0xFFFF, tick * 160, 99, voice).build()
                note("supervisor", call, call.receive(call.supervisors["sup"], packet, now))
        if rng.random() < 0.7:
            for call, received in batch.flush().items():
                note("flush", call, received)
    for call in calls:  # what each leg got (counts, and RTCP reports: reception statistics included)
        log += [("dropped", call.call_id, sorted(call.dropped.items()), call.last_activity)]
        log += [("legs", call.call_id, [(leg.name, leg.received) for leg in call.legs])]
        log += [("reports", call.call_id, [(leg.name, data) for leg, data in call.sender_reports(1e4, 1.7e9)])]
    return log


@pytest.mark.parametrize("seed", range(30))
def test_the_in_line_step_does_what_the_general_path_does(seed, monkeypatch):
    taken = []
    in_line = Call._receive_in_line

    def counted(self, leg, data, now):
        out = in_line(self, leg, data, now)
        taken.append(out is not None)
        return out

    monkeypatch.setattr(Call, "_receive_in_line", counted)
    with_in_line = play(seed)
    monkeypatch.setattr(Call, "_receive_in_line", lambda self, leg, data, now: None)
    general = play(seed)
    assert with_in_line == general
    # Supervisor legs, code listening, events, losses and reordering take the general path;
    # the in-line step still took a good share: the comparison means something.
    assert sum(taken) > len(taken) / 5
