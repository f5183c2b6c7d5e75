"""media.calls without sockets: supervisors, malformed RTP, masking on every call."""

from __future__ import annotations

import numpy as np
import pytest

from media.calls import BARGE, CODECS, MONITOR, Call, CallAudioBatch, Received
from media.codecs import ulaw_decode, ulaw_encode
from media.dtmf import detect
from media.rfc4733 import build_event
from media.rtp import MalformedPacket, RtpPacket, parse_rtp
from media.softphone import caller_packets


def packets_to(listener: str, received: Received) -> list[RtpPacket]:
    """The packets one leg (by name) gets of what a call sent for one datagram."""
    return [parse_rtp(out) for to, out in received.datagrams if to.name == listener]


def ahead_of_real_time_ms(heard: list[tuple[float, int]]) -> float:
    """How far a leg's last packet is ahead of real time (negative: behind), counted from its
    first: `heard` holds (when it was sent, its RTP timestamp)."""
    (first_at, first), (last_at, last) = heard[0], heard[-1]
    return ((last - first) % 2**32) / 8 - (last_at - first_at) * 1000


def never_back_in_time(stamps: list[int]) -> bool:
    """Each RTP timestamp after the one before (modulo 2**32)."""
    return all(0 < (b - a) % 2**32 < 2**31 for a, b in zip(stamps, stamps[1:], strict=False))


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


# --- many calls in one CallAudioBatch (what the relay does) -------------------------------


def agent_audio(call: Call, datagrams) -> np.ndarray:
    return np.concatenate([ulaw_decode(parse_rtp(out).payload) for leg, out in datagrams if leg is call.agent])


def test_calls_sharing_a_batch_hear_and_key_exactly_what_each_call_alone_would():
    keys = ["123", "4#", "0*9"]
    alone = []
    for index, digits in enumerate(keys):
        call = Call(f"alone{index}")
        datagrams, pressed = [], []
        for at, data in caller_packets(digits)[0]:
            received = call.receive(call.caller, data, at)
            datagrams += received.datagrams
            pressed += [k.digit for k in received.caller_keys]
        alone.append((agent_audio(call, datagrams), "".join(pressed)))

    batch = CallAudioBatch()
    calls = [Call(f"shared{index}", audio=batch) for index in range(len(keys))]
    streams = [caller_packets(digits)[0] for digits in keys]
    datagrams: dict[Call, list] = {call: [] for call in calls}
    pressed = {call: "" for call in calls}
    # Calls start at different moments and sometimes deliver two packets to one flush.
    for tick in range(max(len(s) for s in streams) + 10):
        for index, (call, stream) in enumerate(zip(calls, streams, strict=True)):
            position = tick - 3 * index
            count = 2 if position % 7 == 0 else 1
            for at, data in stream[max(position, 0) : max(position + count, 0)] if position >= 0 else []:
                assert call.receive(call.caller, data, at).datagrams == []  # nothing until the flush
        for call, received in batch.flush().items():
            datagrams[call] += received.datagrams
            pressed[call] += "".join(k.digit for k in received.caller_keys)
    for call, (audio, digits) in zip(calls, alone, strict=True):
        heard = agent_audio(call, datagrams[call])
        assert np.array_equal(heard[: audio.size], audio)
        assert pressed[call] == digits == keys[calls.index(call)]
        assert detect(heard) == []


def test_odd_packet_sizes_are_carried_over_without_losing_or_moving_a_sample():
    reference, odd = Call("ref"), Call("odd")
    packets = caller_packets("5")[0]
    pcm = np.concatenate([ulaw_decode(parse_rtp(data).payload) for _at, data in packets])
    heard_ref = agent_audio(reference, sum((reference.receive(reference.caller, d, at).datagrams
                                            for at, d in packets), []))  # fmt: skip
    # The same audio cut into 170-sample packets (not whole 2.5 ms blocks).
    heard_odd = []
    for index, start in enumerate(range(0, pcm.size - 170, 170)):
        data = RtpPacket(0, index, start, 7, ulaw_encode(pcm[start : start + 170]).tobytes()).build()
        for _leg, out in odd.receive(odd.caller, data, 0.0).datagrams:
            heard_odd.append(ulaw_decode(parse_rtp(out).payload))
    heard = np.concatenate(heard_odd)
    assert {chunk.size for chunk in heard_odd} <= {160, 180}
    assert np.array_equal(heard, heard_ref[: heard.size])


def test_a_call_closed_with_audio_queued_sends_nothing_and_its_slot_serves_the_next_call():
    batch = CallAudioBatch()
    gone, stays = Call("gone", audio=batch), Call("stays", audio=batch)
    packets = caller_packets("1")[0]
    gone.receive(gone.caller, packets[0][1], 0.0)
    stays.receive(stays.caller, packets[0][1], 0.0)
    slot = gone.mask_slot
    gone.close()
    assert set(batch.flush()) == {stays}
    newcomer = Call("new", audio=batch)
    assert newcomer.mask_slot == slot
    pressed = []
    for at, data in packets:
        newcomer.receive(newcomer.caller, data, at)
        pressed += [k.digit for r in batch.flush().values() for k in r.caller_keys]
    assert pressed == ["1"]


def test_the_agent_keying_the_code_is_detected_in_the_shared_batch_until_linked():
    batch = CallAudioBatch()
    call = Call("c1", audio=batch)
    keys = []
    for at, data in caller_packets("4321")[0]:
        call.receive(call.agent, data, at)
        keys += [k.digit for r in batch.flush().values() for k in r.agent_keys]
    assert keys == list("4321")
    call.listen_for_agent_code = False
    for at, data in caller_packets("99")[0]:
        call.receive(call.agent, data, at)
        assert not any(r.agent_keys for r in batch.flush().values())


def test_supervisors_hear_the_agent_while_the_caller_sends_nothing():
    call = Call("c1")
    call.add_supervisor("watcher", MONITOR)
    agent_voice = np.round(8000 * np.sin(np.arange(160 * 20) * 0.05)).astype(np.int16)
    heard, to_agent, to_caller = [], [], []
    for index in range(20):  # 400 ms of the agent talking to a silent (silence-suppressing) caller
        payload = ulaw_encode(agent_voice[index * 160 : (index + 1) * 160]).tobytes()
        for leg, out in call.receive(call.agent, RtpPacket(0, index, index * 160, 9, payload).build(), 0.0).datagrams:
            {"watcher": heard, "agent": to_agent, "caller": to_caller}[leg.name].append(parse_rtp(out).payload)
    heard = [ulaw_decode(payload) for payload in heard]
    # Sent on its own once 100 ms had backed up, then packet by packet.
    assert len(heard) >= 14
    voice = ulaw_decode(ulaw_encode(agent_voice))
    assert np.array_equal(np.concatenate(heard), voice[: 160 * len(heard)])
    assert to_agent == []  # the agent never hears themselves
    assert len(to_caller) == 20  # ... and the caller hears every word


def voice(packets: int, step: float = 0.05) -> np.ndarray:
    return np.round(8000 * np.sin(np.arange(160 * packets) * step)).astype(np.int16)


def test_a_barging_supervisor_is_heard_by_the_caller_while_the_agent_sends_nothing():
    call = Call("c1")
    boss = call.add_supervisor("boss", BARGE)
    speech = voice(20)
    to_caller: list[RtpPacket] = []

    def receive(leg, data, at):
        to_caller.extend(packets_to("caller", call.receive(leg, data, at)))

    receive(call.agent, RtpPacket(0, 1, 0, 9, ulaw_encode(np.zeros(160, np.int16)).tobytes()).build(), 0.0)
    for index in range(20):  # 400 ms of the supervisor talking; the agent's phone suppresses its silence
        chunk = ulaw_encode(speech[index * 160 : (index + 1) * 160]).tobytes()
        receive(boss, RtpPacket(0, index, index * 160, 5, chunk).build(), 0.02 * (index + 1))
    sent_alone = to_caller[1:]
    assert len(sent_alone) == 20  # once the agent had sent nothing for 100 ms: what waited, then each packet
    heard = np.concatenate([ulaw_decode(p.payload) for p in sent_alone])
    assert np.array_equal(heard, ulaw_decode(ulaw_encode(speech)))
    # The agent speaks again (its clock ran on less than the supervisor's audio we sent):
    # its packets follow on one stream, never stepping back in time.
    for index in range(2, 5):
        receive(call.agent, RtpPacket(0, index, 160 * (index + 15), 9, bytes(160)).build(), 0.4 + 0.02 * index)
    stamps = [p.timestamp for p in to_caller]
    assert never_back_in_time(stamps)
    assert len({p.ssrc for p in to_caller}) == 1
    assert all((b.sequence - a.sequence) % 65536 == 1 for a, b in zip(to_caller, to_caller[1:], strict=False))


def test_a_new_agent_stream_continues_the_callers_timeline():
    call = Call("c1")
    sent = []
    for ssrc, first_timestamp in ((9, 1000), (10, 777_000)):  # a transfer: new SSRC, unrelated timestamps
        for index in range(5):
            data = RtpPacket(0, 100 + index, first_timestamp + 160 * index, ssrc, bytes(160)).build()
            sent += packets_to("caller", call.receive(call.agent, data, 0.0))
    stamps = [p.timestamp - sent[0].timestamp for p in sent]
    assert stamps == [160 * index for index in range(10)]


def test_an_agent_key_after_a_barging_supervisor_spoke_alone_is_not_sent_back_in_time():
    call = Call("c1")
    boss = call.add_supervisor("boss", BARGE)
    speech = voice(100)
    to_caller: list[RtpPacket] = []

    def receive(leg, data, at):
        to_caller.extend(packets_to("caller", call.receive(leg, data, at)))

    for index in range(10):  # the agent talks, then its phone suppresses its silence ...
        receive(call.agent, RtpPacket(0, index, 1000 + 160 * index, 9, bytes([0xFF]) * 160).build(), index * 0.02)
    for index in range(100):  # ... for the 2 s the supervisor talks (sent to the caller on its own)
        chunk = ulaw_encode(speech[index * 160 : (index + 1) * 160]).tobytes()
        receive(boss, RtpPacket(0, index, 5000 + index * 160, 5, chunk).build(), 0.2 + index * 0.02)
    heard_until = to_caller[-1].timestamp + 160
    press = 1000 + 1600 + 16000  # then the agent presses a key: events at its clock, 2 s on
    for index in range(3):
        event = build_event("5", 160 * (index + 1), end=False)
        receive(call.agent, RtpPacket(101, 10 + index, press, 9, event, marker=not index).build(), 2.2 + index * 0.02)
    events = [packet for packet in to_caller if packet.payload_type == 101]
    assert len(events) == 3 and {packet.timestamp for packet in events} == {heard_until}  # from now, one press


@pytest.mark.parametrize(
    ("mode", "talker", "listener"),
    [(MONITOR, "agent", "watcher"), (BARGE, "watcher", "agent")],  # who talks while the caller is silent
)
def test_a_pause_of_the_caller_is_not_counted_twice_on_the_legs_that_heard_others_meanwhile(mode, talker, listener):
    call = Call("c1")
    call.add_supervisor("watcher", mode)
    speech = ulaw_encode(voice(1)).tobytes()
    heard: list[tuple[float, int]] = []  # (when, timestamp) of what the listener heard
    events, caller_sequence = [], 0
    for index in range(150):  # 3 s: the talker all along, the caller silent from 1.0 to 1.8 s
        at = index * 0.02
        events.append((at, call.leg(talker), RtpPacket(0, index, 160 * index, 9, speech).build()))
        if not 1.0 <= at < 1.8:  # silence suppression: sequence numbers go on, timestamps jump
            caller = RtpPacket(0, caller_sequence, 160 * index, 8, bytes([0xFF]) * 160).build()
            events.append((at + 0.001, call.caller, caller))
            caller_sequence += 1
    for at, leg, data in sorted(events, key=lambda event: event[0]):
        heard += [(at, packet.timestamp) for packet in packets_to(listener, call.receive(leg, data, at))]
    assert -40 <= ahead_of_real_time_ms(heard) <= 120  # within the 100 ms secondary audio waits to go out alone
    assert len(heard) <= 152  # one packet per 20 ms, and one more at each hand-over


def test_a_barging_supervisor_whose_clock_runs_fast_adds_no_packets_to_the_callers_stream():
    call = Call("c1")
    boss = call.add_supervisor("boss", BARGE)
    speech = ulaw_encode(voice(1)).tobytes()
    to_caller: list[tuple[float, RtpPacket]] = []
    events = [(index * 0.02, call.agent, index) for index in range(3000)]  # 60 s of the agent
    events += [(index * 0.02 / 1.005, boss, index) for index in range(3015)]  # 0.5 % fast
    for at, leg, index in sorted(events, key=lambda event: event[0]):
        payload = bytes([0xFF]) * 160 if leg is call.agent else speech
        received = call.receive(leg, RtpPacket(0, index, 160 * index, 5 + (leg is boss), payload).build(), at)
        to_caller += [(at, packet) for packet in packets_to("caller", received)]
    (first_at, first), (last_at, last) = to_caller[0], to_caller[-1]
    assert len(to_caller) == 3000  # the agent's packets, the supervisor mixed in: nothing extra
    assert abs(((last.timestamp - first.timestamp) % 2**32) / 8 - (last_at - first_at) * 1000) <= 20


def test_a_short_word_of_the_agent_reaches_a_monitoring_supervisor_while_the_caller_is_silent():
    call = Call("c1")
    call.add_supervisor("watcher", MONITOR)
    heard: list[tuple[float, np.ndarray]] = []

    def receive(leg, data, at):
        heard.extend((at, ulaw_decode(packet.payload)) for packet in packets_to("watcher", call.receive(leg, data, at)))

    for index in range(10):  # the caller speaks, then its phone suppresses its silence
        receive(call.caller, RtpPacket(0, index, 160 * index, 8, bytes([0xFF]) * 160).build(), index * 0.02)
    word = voice(3)  # 60 ms from the agent, a second later
    for index in range(3):
        chunk = ulaw_encode(word[160 * index : 160 * (index + 1)]).tobytes()
        receive(call.agent, RtpPacket(0, index, 160 * index, 9, chunk).build(), 1.0 + 0.02 * index)
    late = [samples for at, samples in heard if at >= 1.0]
    assert len(late) == 3 and np.array_equal(np.concatenate(late), ulaw_decode(ulaw_encode(word)))  # at once


@pytest.mark.parametrize("codec", ["PCMU", "PCMA"])
def test_a_speaking_callers_pauses_keep_the_supervisors_stream_on_real_time(codec):
    call = Call("c1", codec=codec)
    call.add_supervisor("watcher", MONITOR)
    encode = CODECS[codec].encode
    payload_type = CODECS[codec].payload_type
    heard: list[tuple[float, int]] = []
    events, caller_sequence = [], 0
    for index in range(250):  # 5 s of the agent; the caller speaks, with four 0.5 s pauses
        at = index * 0.02
        agent_speech = encode(voice(1)).tobytes()
        events.append((at, call.agent, RtpPacket(payload_type, index, 160 * index, 9, agent_speech).build()))
        if not any(start <= at < start + 0.5 for start in (0.5, 1.5, 2.5, 3.5)):
            caller_speech = encode(voice(1, step=0.09)).tobytes()
            caller_packet = RtpPacket(payload_type, caller_sequence, 160 * index, 8, caller_speech)
            events.append((at + 0.001, call.caller, caller_packet.build()))
            caller_sequence += 1
    for at, leg, data in sorted(events, key=lambda event: event[0]):
        heard += [(at, packet.timestamp) for packet in packets_to("watcher", call.receive(leg, data, at))]
    assert abs(ahead_of_real_time_ms(heard)) <= 20  # no pause counted twice
    assert never_back_in_time([stamp for _at, stamp in heard])


def test_stalls_of_a_callers_stream_do_not_push_the_supervisors_stream_ever_further_ahead():
    """A caller's line with a little noise (no silence suppression, never digital silence) stalls
    for 160 ms five times (a jitter spike: its packets then arrive at once) while the agent
    speaks: each time, the agent's voice goes out alone and the caller's late packets follow
    it. Quiet caller audio is dropped while the leg is ahead, so the lead does not add up."""
    call = Call("c1")
    call.add_supervisor("watcher", MONITOR)
    rng = np.random.default_rng(5)
    heard: list[tuple[float, int]] = []
    events = []
    for index in range(500):  # 10 s; stalls at 1, 3, 5, 7 and 9 s
        at = index * 0.02
        events.append((at, call.agent, RtpPacket(0, index, 160 * index, 9, ulaw_encode(voice(1)).tobytes()).build()))
        noise = ulaw_encode(rng.normal(0, 25, 160).astype(np.int16)).tobytes()  # about -56 dBm0
        stalled_until = next((start + 0.16 for start in (1, 3, 5, 7, 9) if start <= at < start + 0.16), at)
        events.append((stalled_until + 0.001, call.caller, RtpPacket(0, index, 160 * index, 8, noise).build()))
    for at, leg, data in sorted(events, key=lambda event: event[0]):
        heard += [(at, packet.timestamp) for packet in packets_to("watcher", call.receive(leg, data, at))]
    assert -20 <= ahead_of_real_time_ms(heard) <= 60  # paid back in the quiet moments after each stall
    assert never_back_in_time([stamp for _at, stamp in heard])


@pytest.mark.parametrize("caller", ["pause_of_2_s", "starts_3_s_late"])
def test_a_leg_ahead_of_a_callers_timeline_that_lost_time_does_not_fall_behind_real_time(caller):
    """The caller's timeline can lose time (a pause of its phone beyond the gap it fills
    restarts it; a caller whose stream starts after the agent's): a monitoring supervisor who
    heard the agent alone meanwhile is on real time, not ahead, so the caller's quiet audio
    after it is not skipped."""
    call = Call("c1")
    call.add_supervisor("watcher", MONITOR)
    rng = np.random.default_rng(8)
    heard: list[tuple[float, int]] = []
    events = []
    for index in range(500):  # 10 s; the agent speaks while the caller's phone sends nothing
        at = index * 0.02
        silent = 2 <= at < 4 if caller == "pause_of_2_s" else at < 3
        agent = voice(1) if silent else rng.normal(0, 25, 160).astype(np.int16)  # else a quiet line
        events.append((at, call.agent, RtpPacket(0, index, 160 * index, 9, ulaw_encode(agent).tobytes()).build()))
        if not silent:  # the caller's line: a little noise (about -56 dBm0)
            noise = ulaw_encode(rng.normal(0, 25, 160).astype(np.int16)).tobytes()
            events.append((at + 0.001, call.caller, RtpPacket(0, index, 5000 + 160 * index, 8, noise).build()))
    for at, leg, data in sorted(events, key=lambda event: event[0]):
        heard += [(at, packet.timestamp) for packet in packets_to("watcher", call.receive(leg, data, at))]
    assert -60 <= ahead_of_real_time_ms(heard) <= 60
    assert len(heard) >= 495  # a packet per 20 ms: nothing skipped


def test_late_bursts_of_the_caller_do_not_move_a_legs_real_time():
    """A supervisor on real time but behind the caller's timeline (the caller's stream started
    3 s late) hears four 400 ms stalls of the caller, each caught up by a burst: the bursts are
    heard whole; real time does not move to the late packets (nothing to catch up after)."""
    call = Call("c1")
    call.add_supervisor("watcher", MONITOR)
    rng = np.random.default_rng(8)
    events, heard = [], []
    for index in range(500):
        at = index * 0.02
        if at < 3:  # the agent speaks; the caller's stream has not started
            speech = ulaw_encode(voice(1)).tobytes()
            events.append((at, call.agent, RtpPacket(0, index, 160 * index, 9, speech).build()))
            continue
        arrive = next((start + 0.4 for start in (5, 6, 7, 8) if start <= at < start + 0.4), at)
        noise = ulaw_encode(rng.normal(0, 25, 160).astype(np.int16)).tobytes()
        events.append((arrive + 0.001, call.caller, RtpPacket(0, index, 5000 + 160 * index, 8, noise).build()))
    for at, leg, data in sorted(events, key=lambda event: event[0]):
        heard += [(at, packet.timestamp) for packet in packets_to("watcher", call.receive(leg, data, at))]
    assert len(heard) == 500
    assert abs(ahead_of_real_time_ms(heard)) <= 20


def test_a_lead_is_paid_back_after_the_legs_stream_lost_time_earlier():
    """The caller pauses 2 s with nothing sent to the agent's leg (its stream loses that time),
    later its packets stall 300 ms while a barging supervisor is heard alone: that lead is still
    paid back in the caller's quiet moments (real time moved to the stream after the pause)."""
    call = Call("c1")
    boss = call.add_supervisor("boss", BARGE)
    rng = np.random.default_rng(1)
    events, heard = [], []
    for index in range(500):
        at = index * 0.02
        if 1.0 <= at < 3.0:
            continue  # the caller's phone sends nothing, nobody else either
        audio = voice(1) if 5.3 <= at < 6.0 else rng.normal(0, 25, 160).astype(np.int16)
        arrive = 5.8 if 5.5 <= at < 5.8 else at
        data = RtpPacket(0, index, 160 * index, 8, ulaw_encode(audio).tobytes()).build()
        events.append((arrive + 0.001, call.caller, data))
        if 5.5 <= at < 5.8:
            events.append((at, boss, RtpPacket(0, index, 160 * index, 5, ulaw_encode(voice(1)).tobytes()).build()))
    for at, leg, data in sorted(events, key=lambda event: event[0]):
        heard += [(at, packet.timestamp) for packet in packets_to("agent", call.receive(leg, data, at))]
    assert abs(ahead_of_real_time_ms([(at, stamp) for at, stamp in heard if at >= 5.2])) <= 20  # on time at 5.2 s


def test_the_first_packet_of_a_talkspurt_skipped_to_catch_up_passes_its_marker_on():
    call = Call("c1")
    watcher = call.add_supervisor("watcher", MONITOR)
    quiet = ulaw_encode(np.zeros(160, np.int16)).tobytes()
    loud = ulaw_encode(voice(1)).tobytes()
    heard = []
    for index in range(16):  # speech, a quiet stretch whose last packet starts a talkspurt, speech
        if index == 4:
            watcher.outbound.clock_anchor = (0.0, -16000)  # from here the leg is 2 s ahead of real time
            watcher.out_position += 16000
        data = RtpPacket(0, index, 160 * index, 8, quiet if 4 <= index < 10 else loud, marker=index == 9).build()
        heard += packets_to("watcher", call.receive(call.caller, data, 0.02 * index))
    assert len(heard) < 16  # the quiet stretch was skipped ...
    markers = [index for index, packet in enumerate(heard) if packet.marker]
    assert markers[0] == 0 and len(markers) == 2  # ... not the talkspurt's marker: the next packet has it
    assert heard[markers[1]].timestamp - heard[markers[1] - 1].timestamp == 160


@pytest.mark.parametrize("tail", ["silence", "noise"])
def test_a_talkspurt_after_a_pause_of_the_caller_keeps_its_marker(tail):
    """The gap before the talkspurt is filled (masked, then not sent): the marker of the packet
    after it is on the first packet the agent gets of the new talkspurt."""
    call = Call("c1")
    rng = np.random.default_rng(1)
    out: list[tuple[int, RtpPacket]] = []
    for index in range(60):
        if 20 <= index < 30:
            continue  # a pause of 200 ms: sequence numbers go on, timestamps jump
        if index < 15 or index >= 30:
            pcm = voice(1)
        else:
            pcm = np.zeros(160, np.int16) if tail == "silence" else rng.normal(0, 25, 160).astype(np.int16)
        data = RtpPacket(0, index, 160 * index, 8, ulaw_encode(pcm).tobytes(), marker=index in (0, 30)).build()
        out += [(index, packet) for packet in packets_to("agent", call.receive(call.caller, data, index * 0.02))]
    markers = [position for position, (_index, packet) in enumerate(out) if packet.marker]
    assert len(markers) == 2
    before, after = out[markers[1] - 1][1], out[markers[1]][1]
    assert after.timestamp - before.timestamp > 160  # on the first packet after the jump over the pause
    talkspurt = [packet.timestamp for _index, packet in out[markers[1] :]]
    assert all(b - a == 160 for a, b in zip(talkspurt, talkspurt[1:], strict=False))  # no jump inside it


def test_a_new_caller_stream_that_lost_time_and_then_pauses_keeps_the_legs_real_time():
    """The caller's new stream continues its timeline 300 ms late (the agent's leg is behind by
    that from then on), then pauses 0.8 s: the masker's held-back tail sent after the pause is
    not taken for real time (the leg would then seem ahead for good and skip the caller's quiet
    audio). Later a barging supervisor alone covers a 2 s hole of the caller: nothing skipped."""
    call = Call("c1")
    boss = call.add_supervisor("boss", BARGE)
    rng = np.random.default_rng(8)
    events = []
    for index in range(500):
        at = index * 0.02
        if 5.0 <= at < 7.0:
            speech = ulaw_encode(voice(1)).tobytes()
            events.append((at + 0.002, boss, RtpPacket(0, index, 160 * index, 5, speech).build()))
            continue
        if 1.0 <= at < 1.3 or 2.0 <= at < 2.8:
            continue
        ssrc = 8 if at < 1.3 else 18 if at < 7 else 28  # new streams at 1.3 s and 7 s
        timestamp = 160 * index + {8: 0, 18: 777_000, 28: 5_000_000}[ssrc]
        noise = ulaw_encode(rng.normal(0, 25, 160).astype(np.int16)).tobytes()  # a quiet line, about -56 dBm0
        events.append((at + 0.001, call.caller, RtpPacket(0, index, timestamp, ssrc, noise).build()))
    heard = []
    for at, leg, data in sorted(events, key=lambda event: event[0]):
        heard += [(at, packet.timestamp) for packet in packets_to("agent", call.receive(leg, data, at))]
    assert len([at for at, _stamp in heard if at >= 7.0]) == 150
    assert -320 <= ahead_of_real_time_ms(heard) <= -280  # behind by the 300 ms the caller's new stream lost, no more


def test_the_flat_tone_of_a_key_is_never_dropped_to_catch_up():
    """A leg ahead of the caller's timeline drops only quiet audio: a key's flat tone is heard."""
    call = Call("c1")
    call.add_supervisor("watcher", MONITOR)
    call.session_open = True
    call.leg("watcher").out_position = 16000  # 2 s ahead of anything the caller sent
    watcher = []
    for at, data in caller_packets("5")[0]:
        received = call.receive(call.caller, data, at)
        watcher += [ulaw_decode(packet.payload) for packet in packets_to("watcher", received)]
    loud = [chunk for chunk in watcher if np.abs(chunk).max() > 1000]
    assert len(loud) * 160 >= 0.8 * 8000 * 0.1  # the flat tone of a key of at least 100 ms


def test_an_agent_key_whose_first_event_comes_late_does_not_shift_the_agents_audio():
    call = Call("c1")
    to_caller: list[tuple[float, RtpPacket]] = []
    frame, sequence = 0, 0
    for _press in range(5):  # the phone dates each press 100 ms back (its tone's start) while audio flows
        for _ in range(25):
            at = frame * 0.02
            data = RtpPacket(0, sequence, 160 * frame, 9, bytes([0xFF]) * 160).build()
            to_caller += [(at, packet) for packet in packets_to("caller", call.receive(call.agent, data, at))]
            frame, sequence = frame + 1, sequence + 1
        event = RtpPacket(101, sequence, 160 * (frame - 5), 9, build_event("5", 800), marker=True).build()
        call.receive(call.agent, event, frame * 0.02)
        sequence += 1
    audio = [(at, packet) for at, packet in to_caller if packet.payload_type == 0]
    (first_at, first), (last_at, last) = audio[0], audio[-1]
    assert ((last.timestamp - first.timestamp) % 2**32) / 8 == round((last_at - first_at) * 1000)


def test_a_key_sent_as_events_only_sounds_as_long_for_a_monitoring_supervisor_as_for_the_agent():
    call = Call("c1")
    call.add_supervisor("watcher", MONITOR)
    agent_voice = ulaw_encode(np.zeros(160, np.int16)).tobytes()  # the agent's phone sends silence
    heard: dict[str, list[np.ndarray]] = {"agent": [], "watcher": []}
    sequence, press_at, press_packets = 0, 100, 10  # a 200 ms key, events only: no audio meanwhile
    for index in range(200):
        at = index * 0.02
        received = call.receive(call.agent, RtpPacket(0, index, 160 * index, 9, agent_voice).build(), at + 0.005)
        for name in heard:
            heard[name] += [ulaw_decode(packet.payload) for packet in packets_to(name, received)]
        if press_at <= index < press_at + press_packets:
            end = index == press_at + press_packets - 1
            for repeat in range(3 if end else 1):
                event = build_event("5", 160 * (index - press_at + 1), end=end)
                first = index == press_at and not repeat
                data = RtpPacket(101, sequence, 160 * press_at, 8, event, marker=first).build()
                call.receive(call.caller, data, at)
                sequence += 1
            continue
        received = call.receive(call.caller, RtpPacket(0, sequence, 160 * index, 8, bytes([0xFF]) * 160).build(), at)
        for name in heard:
            heard[name] += [ulaw_decode(packet.payload) for packet in packets_to(name, received)]
        sequence += 1
    tone_ms = {name: np.count_nonzero(np.abs(np.concatenate(chunks)) > 50) / 8 for name, chunks in heard.items()}
    assert tone_ms["agent"] >= 140 and tone_ms["watcher"] == tone_ms["agent"]  # was 24 ms for the supervisor


def test_paying_back_the_callers_lead_never_moves_audio_into_a_key_sent_as_events_only():
    """The agent's phone sends a key as telephone-events only, then speaks after a pause: the
    pause is paid into the lead, not the key's time - its audio never overlaps the key."""
    call = Call("c1")
    boss = call.add_supervisor("boss", BARGE)
    words = ulaw_encode(voice(1)).tobytes()
    events, sequence = [], 0
    for index in range(20):  # she speaks from 0 to 0.4 s; the agent too, its packets late (at 0.38 s)
        events.append((index * 0.02, boss, RtpPacket(0, index, 160 * index, 5, words).build()))
        events.append((0.381, call.agent, RtpPacket(0, index, 160 * index, 9, words).build()))
    sequence = 20
    for press in range(10):  # from 0.42 s a 200 ms key, events only; the end sent three times
        end = press == 9
        for _ in range(3 if end else 1):
            event = build_event("5", 160 * (press + 1), end=end)
            data = RtpPacket(101, sequence, 160 * 21, 9, event, marker=press == 0).build()
            events.append((0.422 + 0.02 * press, call.agent, data))
            sequence += 1
    for index in range(41, 80):  # it speaks again from 0.82 s
        events.append((index * 0.02, call.agent, RtpPacket(0, sequence, 160 * index, 9, words).build()))
        sequence += 1
    to_caller = []
    for at, leg, data in sorted(events, key=lambda event: event[0]):
        to_caller += [(at, packet) for packet in packets_to("caller", call.receive(leg, data, at))]
    press = [packet for _at, packet in to_caller if packet.payload_type == 101]
    key_end = press[0].timestamp + int.from_bytes(press[-1].payload[2:4], "big")
    after = [packet.timestamp for at, packet in to_caller if packet.payload_type == 0 and at > 0.7]
    assert after and all((stamp - key_end) % 2**32 < 2**31 for stamp in after)


@pytest.mark.parametrize("arrival", ["in_time", "first_late", "first_lost"])
def test_audio_after_a_long_key_sent_as_events_only_never_overlaps_it(arrival):
    """The caller's leg is ahead (a barging supervisor was heard alone while the agent's words
    came late); the agent holds a key 0.9 s, events only, its first 0.4 s of event packets
    coming in one burst or lost, and speaks again 250 ms late: its audio follows the key."""
    call = Call("c1")
    boss = call.add_supervisor("boss", BARGE)
    words = ulaw_encode(voice(1)).tobytes()
    events, sequence = [], 100
    for index in range(20):
        events.append((index * 0.02, boss, RtpPacket(0, index, 160 * index, 5, words).build()))
        events.append((0.381, call.agent, RtpPacket(0, index, 160 * index, 9, words).build()))
    first, last = 21, 21 + 45  # the key: one event packet per 20 ms, the end three times
    for index in range(first, last):
        at = index * 0.02 + 0.001
        if arrival == "first_lost" and index < first + 20:
            continue
        if arrival == "first_late" and index < first + 20:
            at = first * 0.02 + 0.4
        end = index == last - 1
        for again in range(3 if end else 1):
            event = build_event("5", 160 * (index - first + 1), end=end)
            data = RtpPacket(101, sequence, 160 * first, 9, event, marker=index == first and not again).build()
            events.append((at + again * 0.001, call.agent, data))
            sequence += 1
    for index in range(last, last + 50):
        at = max(index * 0.02, last * 0.02 + 0.25) + 0.001
        events.append((at, call.agent, RtpPacket(0, sequence, 160 * index, 9, words).build()))
        sequence += 1
    to_caller = []
    for at, leg, data in sorted(events, key=lambda event: event[0]):
        to_caller += [(at, packet) for packet in packets_to("caller", call.receive(leg, data, at))]
    press = [packet for _at, packet in to_caller if packet.payload_type == 101]
    key_end = press[0].timestamp + int.from_bytes(press[-1].payload[2:4], "big")
    after = [packet.timestamp for at, packet in to_caller if packet.payload_type == 0 and at > last * 0.02]
    assert after and all((stamp - key_end) % 2**32 < 2**31 for stamp in after)


@pytest.mark.parametrize("line", ["noise", "pauses"])
def test_stalls_of_the_agents_stream_do_not_push_the_callers_stream_ever_further_ahead(line):
    """The caller hears a barging supervisor alone while the agent's packets are late (a jitter
    spike of 160 ms, four times, while she says a few words): the agent's late packets follow on
    after that. The lead is paid back once she is silent - in the agent's quiet moments on a
    line with a little noise, at its next pause on a phone that suppresses silence (the agent
    speaks in bursts) - so it does not add up."""
    call = Call("c1")
    boss = call.add_supervisor("boss", BARGE)
    rng = np.random.default_rng(6)
    stalls = (1, 3, 5, 7)
    heard: list[tuple[float, int]] = []
    events = []
    for index in range(500):  # 10 s
        at = index * 0.02
        if any(start - 0.1 <= at < start + 0.3 for start in stalls):  # she speaks around each stall
            events.append((at, boss, RtpPacket(0, index, 160 * index, 5, ulaw_encode(voice(1)).tobytes()).build()))
        if line == "noise":
            audio = rng.normal(0, 25, 160).astype(np.int16)  # about -56 dBm0
        elif any(start - 0.5 <= at < start + 0.5 for start in (*stalls, 9)):
            audio = voice(1, step=0.07)
        else:
            continue  # its phone sends nothing: a pause
        stalled_until = next((start + 0.16 for start in stalls if start <= at < start + 0.16), at)
        data = RtpPacket(0, index, 160 * index, 9, ulaw_encode(audio).tobytes()).build()
        events.append((stalled_until + 0.001, call.agent, data))
    for at, leg, data in sorted(events, key=lambda event: event[0]):
        heard += [(at, p.timestamp) for p in packets_to("caller", call.receive(leg, data, at)) if p.payload_type == 0]
    assert -20 <= ahead_of_real_time_ms(heard) <= 60
    assert never_back_in_time([stamp for _at, stamp in heard])


def test_paying_back_the_callers_lead_never_splits_an_agents_key_press():
    """While the caller's stream is ahead (the agent's words came late while a barging
    supervisor spoke alone), the agent's quiet audio is skipped - but not while the agent's
    phone sends a key's telephone-events: they all keep the one timestamp of the press."""
    call = Call("c1")
    boss = call.add_supervisor("boss", BARGE)
    rng = np.random.default_rng(7)
    to_caller: list[RtpPacket] = []
    events = []
    words = ulaw_encode(voice(1)).tobytes()
    for index in range(20):  # she speaks from 0 to 0.4 s
        events.append((index * 0.02, boss, RtpPacket(0, index, 160 * index, 5, words).build()))
    sequence = 0
    for index in range(60):  # the agent speaks until 0.38 s (those packets arrive at 0.38 s), then is quiet
        at = index * 0.02
        audio = voice(1) if index < 20 else rng.normal(0, 25, 160).astype(np.int16)
        data = RtpPacket(0, sequence, 160 * index, 9, ulaw_encode(audio).tobytes()).build()
        events.append((max(at, 0.38) + 0.001, call.agent, data))
        sequence += 1
        if 21 <= index < 31:  # a key from 0.42 s: events every 20 ms, the end sent three times
            end = index == 30
            for _ in range(3 if end else 1):
                event = build_event("5", 160 * (index - 20), end=end)
                data = RtpPacket(101, sequence, 160 * 21, 9, event, marker=index == 21).build()
                events.append((at + 0.002, call.agent, data))
                sequence += 1
    for at, leg, data in sorted(events, key=lambda event: event[0]):
        to_caller += packets_to("caller", call.receive(leg, data, at))
    press = [packet for packet in to_caller if packet.payload_type == 101]
    assert len(press) == 12 and len({packet.timestamp for packet in press}) == 1
    audio = [packet.timestamp for packet in to_caller if packet.payload_type == 0]
    assert len(audio) < 60 + 10  # some of the agent's quiet audio was skipped to pay the lead back
    assert never_back_in_time(audio)
