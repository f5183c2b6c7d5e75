"""Call.receive takes the common packet in one step (`Call._receive_in_line`); it must do
exactly what the general path does. Random impaired calls are played twice, with and
without the in-line step: everything they send, key and count, and every call's whole
state after each flush, must be the same."""

from __future__ import annotations

import random
from collections import Counter, deque

import numpy as np
import pytest

from media.calls import BARGE, MAX_AUDIO_SAMPLES, MONITOR, Call, CallAudioBatch, Codec
from media.codecs import alaw_encode, ulaw_encode
from media.rtp import RtpPacket, parse_rtp
from media.softphone import caller_packets, silence_packets

CALLS = 4
TICK_S = 0.02
ENCODE = {"PCMU": ulaw_encode, "PCMA": alaw_encode}


def caller_stream(rng: random.Random, index: int, codec: str) -> list[bytes]:
    """A caller keying (in-band or RFC 4733: sometimes with every end packet lost), re-cut
    at odd sizes up to one over the limit, with losses, markers, reordering, duplicates,
    a new SSRC half-way, timestamp jumps, and sequence numbers and timestamps that wrap."""
    keys = rng.choice(["12", "5#", "0", "987"])
    sent, _ = caller_packets(keys, rng.choice(["inband", "rfc4733"]), codec=codec, rng=rng)
    packets = [parse_rtp(data) for _at, data in sent]
    audio_type = packets[0].payload_type
    codes = b"".join(p.payload for p in packets if p.payload_type == audio_type)
    events = [p for p in packets if p.payload_type != audio_type]
    if rng.random() < 0.3:  # the end packets of every press lost: presses expire with the audio
        events = [p for p in events if not p.payload[1] & 0x80]
    audio, position, timestamp = [], 0, 0
    while position < len(codes):
        size = rng.choice([160, 160, 160, 160, 80, 170, 240, MAX_AUDIO_SAMPLES, MAX_AUDIO_SAMPLES + 1])
        if rng.random() < 0.02:  # lost
            position, timestamp = position + size, timestamp + size
            continue
        if rng.random() < 0.01:
            timestamp += rng.choice([4000, 16000])  # a jump: within a second, or a restart
        audio.append((timestamp, audio_type, codes[position : position + size], rng.random() < 0.05))
        position, timestamp = position + size, timestamp + size
    base = packets[0].timestamp
    items = audio + [(p.timestamp - base, p.payload_type, p.payload, p.marker) for p in events]
    items.sort(key=lambda item: item[0])
    ssrc, half = 0x1000 + index, len(items) // 2
    first_sequence, first_timestamp = rng.choice([(0, 0), (65500, 2**32 - 8000)])  # wrapping, or not
    out = []
    for number, (stamp, payload_type, payload, marker) in enumerate(items):
        if number == half and rng.random() < 0.5:
            ssrc += 1  # the phone started a new stream
        sequence, stamp = (first_sequence + number) & 0xFFFF, (first_timestamp + stamp) & 0xFFFFFFFF
        out.append(RtpPacket(payload_type, sequence, stamp, ssrc, payload, marker=marker).build())
    for k in range(len(out) - 1):
        if rng.random() < 0.03:
            out[k], out[k + 1] = out[k + 1], out[k]
        elif rng.random() < 0.02:
            out.insert(k, out[k])  # a duplicate
    return out


def agent_stream(rng: random.Random, ticks: int, codec: str) -> list[bytes]:
    """The agent's handset: silence, sometimes keying the session code (in-band or events),
    talkspurts (marker bits) and now and then a lost or reordered packet."""
    silence = [data for _at, data in silence_packets(ticks * TICK_S, codec=codec, rng=rng)]
    if rng.random() < 0.5:
        code, mode = rng.choice(["1234", "0007"]), rng.choice(["inband", "rfc4733"])
        sent = [data for _at, data in caller_packets(code, mode, codec=codec, rng=rng)[0]]
        silence = sent + silence[len(sent) :]
    out = []
    for data in silence:
        packet = parse_rtp(data)
        if rng.random() < 0.05:
            data = RtpPacket(packet.payload_type, packet.sequence, packet.timestamp, packet.ssrc,
                             packet.payload, marker=not packet.marker).build()  # fmt: skip
        if rng.random() < 0.01:
            continue  # lost
        out.append(data)
    for k in range(len(out) - 1):
        if rng.random() < 0.01:
            out[k], out[k + 1] = out[k + 1], out[k]
    return out


def snapshot(value: object) -> object:
    """Everything a Call holds, as plain comparable values (the shared batch and the
    random source aside: the batch's queues are compared by the calls in them)."""
    if value is None or isinstance(value, int | float | str | bytes):
        return value
    if isinstance(value, np.ndarray):
        return value.dtype.str, value.shape, value.tobytes()
    if isinstance(value, list | tuple | deque):
        return [snapshot(item) for item in value]
    if isinstance(value, set | frozenset):
        return sorted(value)
    if isinstance(value, dict):
        return [(snapshot(key), snapshot(item)) for key, item in value.items()]
    if isinstance(value, Call):
        return value.call_id
    if isinstance(value, Codec):
        return value.name  # shared by every call (and its cached silence filled on first use)
    names = getattr(value, "__slots__", ()) or vars(value)
    return type(value).__name__, [(name, snapshot(getattr(value, name, None))) for name in names]


def call_state(call: Call) -> object:
    own = {name: item for name, item in vars(call).items() if name not in ("audio", "_rng")}
    return snapshot(own), call in call.audio._callers, call in call.audio._agents


def play(seed: int) -> list:
    rng = random.Random(seed)
    codec = rng.choice(["PCMU", "PCMA"])
    batch = CallAudioBatch()
    calls = [Call(f"c{index}", codec=codec, audio=batch, rng=random.Random(seed * 100 + index))
             for index in range(CALLS)]  # fmt: skip
    callers = [caller_stream(rng, index, codec) for index in range(CALLS)]
    ticks = max(len(stream) for stream in callers) + 20
    agents = [agent_stream(rng, ticks, codec) for _ in calls]
    for call in calls:
        call.session_open = rng.random() < 0.5
        call.listen_for_agent_code = rng.random() < 0.3
    voice = ENCODE[codec]((np.sin(np.arange(160) * 0.3) * 3000).astype(np.int16)).tobytes()
    log: list = []
    read = [0] * CALLS

    def note(kind: str, call: Call, received) -> None:
        sent = [(leg.name, data) for leg, data in received.datagrams]
        log.append((kind, call.call_id, sent, received.caller_keys, received.agent_keys))

    for tick in range(ticks):
        now = 100.0 + tick * TICK_S + rng.random() * 0.01
        for index, call in enumerate(calls):
            if tick == ticks // 4 and rng.random() < 0.6:
                call.add_supervisor("sup", rng.choice([MONITOR, BARGE, BARGE]))
            if tick == ticks // 2 and rng.random() < 0.5:
                call.remove_supervisor("sup")  # a barging supervisor's last words may still be queued
            if tick == ticks // 2 and rng.random() < 0.3:
                call.listen_for_agent_code = not call.listen_for_agent_code
            count = 0 if rng.random() < 0.03 else 2 if rng.random() < 0.1 else 1  # late, or a burst
            for data in callers[index][read[index] : read[index] + count]:
                note("caller", call, call.receive(call.caller, data, now))
            read[index] += count
            if tick < len(agents[index]) and rng.random() < 0.95:
                note("agent", call, call.receive(call.agent, agents[index][tick], now))
            if "sup" in call.supervisors and rng.random() < 0.6:
                packet = RtpPacket(call.codec.payload_type, tick & 0xFFFF, tick * 160, 99, voice).build()
                note("supervisor", call, call.receive(call.supervisors["sup"], packet, now))
        if rng.random() < 0.7:
            for call, received in batch.flush().items():
                note("flush", call, received)
            log.append(("state", [call_state(call) for call in calls]))
    for call in calls:  # RTCP reports carry the reception statistics
        log.append(("reports", call.call_id, [(leg.name, data) for leg, data in call.sender_reports(1e4, 1.7e9)]))
    log.append(("state", [call_state(call) for call in calls]))
    return log


@pytest.mark.parametrize("seed", range(24))
def test_the_in_line_step_does_what_the_general_path_does(seed, monkeypatch):
    taken: Counter = Counter()
    in_line = Call._receive_in_line

    def counted(self, leg, data, now):
        out = in_line(self, leg, data, now)
        taken[leg.name, out is not None] += 1
        return out

    monkeypatch.setattr(Call, "_receive_in_line", counted)
    with_in_line = play(seed)
    monkeypatch.setattr(Call, "_receive_in_line", lambda self, leg, data, now: None)
    general = play(seed)
    assert with_in_line == general
    # Events, losses, reordering, code listening and supervisors take the general path; the
    # in-line step still took a good share of both legs: the comparison means something.
    for leg in ("caller", "agent"):
        assert taken[leg, True] > (taken[leg, True] + taken[leg, False]) / 10, (leg, taken)
