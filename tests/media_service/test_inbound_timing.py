"""How a call places what its phones send on each leg's timeline: gaps, jumps,
RFC 4733 events next to in-band audio, lost end packets, made-up timestamps.
(Found by review: each test here failed on the code before its fix.)"""

from __future__ import annotations

import numpy as np

from media.calls import Call
from media.codecs import ulaw_decode, ulaw_encode
from media.rfc4733 import KeyPress, KeyPressMerger, build_event
from media.rtp import RtpPacket, parse_rtp

SILENCE = ulaw_encode(np.zeros(160, dtype=np.int16)).tobytes()
KEYS = {"1": (697, 1209), "2": (697, 1336), "3": (697, 1477), "4": (770, 1209), "5": (770, 1336)}


def tone(digit: str, frame: int, amplitude: float = 6000) -> bytes:
    t = (np.arange(160) + frame * 160) / 8000
    low, high = KEYS[digit]
    return ulaw_encode(
        (amplitude * (np.sin(2 * np.pi * low * t) + np.sin(2 * np.pi * high * t))).astype(np.int16)
    ).tobytes()


class Phone:
    """One leg's handset sending 20 ms packets in real time (now advances with the timestamps)."""

    def __init__(self, call: Call, leg_name: str, ssrc: int) -> None:
        self.call, self.leg, self.ssrc = call, call.leg(leg_name), ssrc
        self.sequence, self.timestamp, self.now = 0, 0, 0.0
        self.keys: list[KeyPress] = []
        self.heard: dict[str, list[bytes]] = {}
        self.stamps: dict[str, list[int]] = {}  # timestamps each leg heard

    def send(self, payload: bytes, payload_type: int = 0, timestamp: int | None = None, marker: bool = False) -> None:
        stamp = self.timestamp if timestamp is None else timestamp
        data = RtpPacket(payload_type, self.sequence & 0xFFFF, stamp & 0xFFFFFFFF, self.ssrc, payload, marker).build()
        self.sequence += 1
        received = self.call.receive(self.leg, data, self.now)
        self.keys += received.caller_keys + received.agent_keys
        for leg, out in received.datagrams:
            packet = parse_rtp(out)
            self.heard.setdefault(leg.name, []).append(packet.payload)
            self.stamps.setdefault(leg.name, []).append(packet.timestamp)

    def timeline(self, leg_name: str) -> list[int]:
        """The timestamps a leg heard, from its first packet's."""
        first = self.stamps[leg_name][0]
        return [(stamp - first) % 2**32 for stamp in self.stamps[leg_name]]

    def audio(self, payload: bytes = SILENCE) -> None:
        self.send(payload)
        self.timestamp += 160
        self.now += 0.02

    def pause(self, samples: int) -> None:
        """Nothing sent for a while (silence suppression, a lost burst): time passes."""
        self.timestamp += samples
        self.now += samples / 8000

    def key(self, digit: str, frames: int = 6, inband_amplitude: float = 6000, end_packets: int = 3) -> None:
        """An RFC 4733 press with the phone's in-band tone (possibly attenuated) under it."""
        start = self.timestamp
        for frame in range(frames):
            self.send(build_event(digit, 160 * (frame + 1)), 101, start, marker=frame == 0)
            self.audio(tone(digit, frame, inband_amplitude))
        for _ in range(end_packets):
            self.send(build_event(digit, 160 * frames, end=True), 101, start)


def strongest(samples: np.ndarray, hz: float) -> float:
    """Amplitude of the strongest 20 ms stretch of one frequency."""
    t = np.arange(160) / 8000
    reference = np.exp(-2j * np.pi * hz * t)
    return max(abs((samples[i : i + 160] * reference).sum()) / 80 for i in range(0, samples.size - 160, 40))


def test_events_after_a_timeline_restart_are_timed_on_it_so_their_tone_is_masked_and_counted_once():
    call = Call("c1", mask_mode="silence")
    caller = Phone(call, "caller", ssrc=0x1111)
    for _ in range(10):
        caller.audio()
    caller.key("1", inband_amplitude=80)  # the phone leaves a weak in-band tone under its events
    for _ in range(20):
        caller.audio()
    caller.pause(16000)  # 2 s of silence suppression: longer than a gap is filled, so the timeline restarts
    caller.key("5", inband_amplitude=80)
    for _ in range(20):
        caller.audio()
    assert [k.digit for k in caller.keys] == ["1", "5"]  # each key once
    heard = np.concatenate([ulaw_decode(p) for p in caller.heard["agent"]]).astype(float)
    assert strongest(heard, 770) < 5 and strongest(heard, 1336) < 5  # the weak tone of "5" is masked too


def voice(frame: int) -> bytes:
    t = (np.arange(160) + frame * 160) / 8000
    return ulaw_encode((4000 * np.sin(2 * np.pi * 440 * t)).astype(np.int16)).tobytes()


def test_filled_gaps_are_masked_but_only_what_they_hold_is_sent():
    call = Call("c1")
    caller = Phone(call, "caller", ssrc=0x1111)
    for frame in range(5):
        caller.audio(voice(frame))
    caller.pause(160 * 7)  # seven packets lost
    for frame in range(5):
        caller.audio(voice(frame))
    # The 30 ms of speech the masker still held when the gap began go out (in the gap's first
    # two packets); the made-up silence does not: the agent's timestamps jump over it.
    assert caller.timeline("agent") == [160 * n for n in (*range(7), *range(12, 17))]
    assert {len(payload) for payload in caller.heard["agent"]} == {160}


def test_timestamps_jumping_ahead_of_real_time_are_not_filled():
    call = Call("c1")
    caller = Phone(call, "caller", ssrc=0x1111)
    for _ in range(5):
        caller.audio()
    for _ in range(20):  # each packet claims 1 s more than the 20 ms that passed
        caller.timestamp += 8000 - 160
        caller.audio()
    assert sum(len(p) for p in caller.heard["agent"]) == 25 * 160  # one packet out per packet in


def test_events_far_from_the_audio_are_masked_at_it_and_made_up_timestamps_hold_nothing():
    call = Call("c1")
    caller = Phone(call, "caller", ssrc=0x1111)
    for _ in range(5):
        caller.audio()
    for k in range(1, 2001):  # each with a new timestamp 10 s further in the future, or before the stream's start
        caller.send(build_event("1", 160), 101, caller.timestamp + (k if k % 2 else -k) * 80000)
    core = call.audio.masker._core
    assert len(core.intervals.get(call.mask_slot, [])) <= 1  # all placed where the audio is: one span
    for _ in range(30):
        caller.audio()
    assert [k.digit for k in caller.keys] == ["1"]  # the same key at the same place: counted once
    assert not core.intervals.get(call.mask_slot)  # passed by the audio, forgotten


def test_a_sender_of_events_only_restarting_its_timestamps_for_each_key_is_followed():
    call = Call("c1")
    caller = Phone(call, "caller", ssrc=0x1111)
    for digit, start in zip("42019", (37120, 23200, 17632, 13280, 67840), strict=True):  # SIPp's RFC 2833 captures
        for frame in range(7):
            caller.send(build_event(digit, 320 * frame, end=frame >= 4), 101, start)
        caller.now += 0.35
    assert [k.digit for k in caller.keys] == list("42019")


def test_the_key_merger_stays_bounded_whatever_the_timestamps():
    merger = KeyPressMerger()
    for k in range(1000):  # made-up presses, each starting earlier than the last
        merger.add(KeyPress("1", 4000.0 - k, 4000.0 - k + 0.5))
    assert len(merger._recent) <= merger.max_recent


def test_a_press_whose_end_packets_were_lost_is_reported_once_it_times_out():
    call = Call("c1")
    caller = Phone(call, "caller", ssrc=0x1111)
    for _ in range(10):
        caller.audio()
    caller.key("2", inband_amplitude=0, end_packets=0)  # the three end packets are lost
    for _ in range(30):
        caller.audio()
    assert [k.digit for k in caller.keys] == ["2"]


def test_agent_keys_after_a_silent_spell_are_counted_once_from_events_and_tones():
    call = Call("c1")
    agent = Phone(call, "agent", ssrc=0x2222)
    for _ in range(10):
        agent.audio()
    agent.pause(3200)  # the agent's softphone sent nothing for 400 ms (voice activity detection)
    for digit in "1234":
        agent.key(digit, frames=5)
        for _ in range(5):
            agent.audio()
    assert [k.digit for k in agent.keys] == ["1", "2", "3", "4"]


def test_an_empty_audio_payload_is_dropped_as_short():
    call = Call("c1")
    caller = Phone(call, "caller", ssrc=0x1111)
    caller.audio(b"")
    caller.audio()
    assert call.dropped == {"short": 1}
    assert [len(p) for p in caller.heard["agent"]] == [160]


def test_late_packets_of_a_replaced_stream_do_not_switch_it_back():
    call = Call("c1")
    caller = Phone(call, "caller", ssrc=0x1111)
    for _ in range(5):
        caller.audio()
    straggler = RtpPacket(0, 5, caller.timestamp, 0x1111, SILENCE).build()
    caller.ssrc, caller.sequence = 0x2222, 9000  # a re-INVITE: the phone's new stream
    caller.audio()
    call.receive(call.caller, straggler, caller.now)  # the old stream's last packet, late
    for _ in range(4):
        caller.audio()
    assert call.dropped == {"old_stream": 1}
    assert call.caller.ssrc == 0x2222
    stamps = [len(p) for p in caller.heard["agent"]]
    assert stamps == [160] * 10  # every packet of both streams relayed once, none lost to a switch back
    caller.now += 1.0  # long after the switch, the old SSRC is a new stream again (a phone going back)
    caller.ssrc = 0x1111
    caller.audio()
    assert call.caller.ssrc == 0x1111 and call.dropped == {"old_stream": 1}
