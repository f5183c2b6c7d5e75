"""One phone call in the media worker: its legs and what flows between them.

Pure (numpy, no sockets, no Django): `Call.receive(leg, datagram, now)` takes
one datagram a leg sent and returns what to send to which leg, plus the key
presses it completed. The relay wires sockets around it.

Flows (DESIGN.md "Telephony rules"):
* caller -> agent and supervisors: always through the masker, for every call
  (fail closed: no call ever carries a key tone to the agent side, linked or
  not). RFC 4733 packets are consumed (the flat tone is in the audio instead).
* agent -> caller: payload unchanged (re-encoded only when a barging
  supervisor's voice is mixed in), telephone-events included.
* agent -> supervisors: mixed under the caller's masked audio.
* barging supervisor -> agent and caller: mixed in. While a session is open on
  the call, a barging supervisor hears nothing from the caller (agent only).

Outbound streams are our own: a fresh SSRC, sequence and timestamp base per
destination leg, advanced consistently whatever the inbound streams do.
The caller's masked audio leaves exactly `HOLDBACK_MS` late (the masker is
primed with that much silence, so each inbound packet yields one outbound
packet of the same size).
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from media.codecs import alaw_decode, alaw_encode, ulaw_decode, ulaw_encode
from media.dtmf import SAMPLE_RATE, DtmfDetector, KeyPress
from media.jitter import ReorderBuffer
from media.masker import HOLDBACK, HOLDBACK_MS, StreamingMasker
from media.rfc4733 import EventTracker, KeyPressMerger
from media.rtp import MalformedPacket, RtpPacket, build_sender_report, is_rtcp, parse_rtcp, parse_rtp

CALLER, AGENT, SUPERVISOR = "caller", "agent", "supervisor"
MONITOR, BARGE = "monitor", "barge"
SUPERVISOR_MODES = (MONITOR, BARGE)


@dataclass(frozen=True)
class Codec:
    name: str
    payload_type: int
    decode: Callable[[bytes], np.ndarray]
    encode: Callable[[np.ndarray], np.ndarray]


CODECS = {
    "PCMU": Codec("PCMU", 0, ulaw_decode, ulaw_encode),
    "PCMA": Codec("PCMA", 8, alaw_decode, alaw_encode),
}
MAX_AUDIO_SAMPLES = 480  # 60 ms at 8 kHz: the longest G.711 packet we relay
MAX_GAP_SAMPLES = SAMPLE_RATE  # a jump beyond 1 s restarts the timeline instead of filling silence
MIX_LIMIT_SAMPLES = 1600  # 200 ms of queued audio to mix in; older is dropped (it would only add delay)
RTCP_INTERVAL_S = 5.0
NTP_EPOCH_OFFSET = 2_208_988_800


class OutboundStream:
    """Our RTP stream towards one leg: own SSRC, contiguous sequence numbers."""

    def __init__(self, rng: random.Random) -> None:
        self.ssrc = rng.getrandbits(32)
        self.sequence = rng.getrandbits(16)
        self.timestamp_base = rng.getrandbits(32)
        self.packets = 0
        self.octets = 0
        self.last_timestamp = self.timestamp_base
        self.last_report = 0.0

    def packet(self, payload_type: int, position: int, payload: bytes, marker: bool) -> bytes:
        """`position` is the media time in samples on this stream's own timeline."""
        self.last_timestamp = (self.timestamp_base + position) & 0xFFFFFFFF
        data = RtpPacket(
            payload_type, self.sequence, self.last_timestamp, self.ssrc, payload, marker=marker or not self.packets
        ).build()
        self.sequence = (self.sequence + 1) & 0xFFFF
        self.packets += 1
        self.octets += len(payload)
        return data


class MixQueue:
    """Audio from a secondary source waiting to be mixed into a stream."""

    def __init__(self) -> None:
        self._chunks: deque[np.ndarray] = deque()
        self._size = 0

    def add(self, pcm: np.ndarray) -> None:
        self._chunks.append(pcm)
        self._size += pcm.size
        while self._size > MIX_LIMIT_SAMPLES:
            self._size -= self._chunks.popleft().size

    def take(self, count: int) -> np.ndarray | None:
        """`count` samples (zero-padded), or None when nothing is queued."""
        if not self._size:
            return None
        out = np.zeros(count, dtype=np.int32)
        filled = 0
        while filled < count and self._chunks:
            chunk = self._chunks.popleft()
            used = min(count - filled, chunk.size)
            out[filled : filled + used] = chunk[:used]
            if used < chunk.size:
                self._chunks.appendleft(chunk[used:])
            filled += used
            self._size -= used
        return out


def mix(pcm: np.ndarray, other: np.ndarray | None) -> np.ndarray:
    if other is None:
        return pcm
    return np.clip(pcm.astype(np.int32) + other, -32768, 32767).astype(np.int16)


@dataclass
class InboundTimeline:
    """Maps one inbound stream's RTP timestamps to sample positions from its start."""

    base: int | None = None
    next_position: int = 0

    def place(self, timestamp: int) -> int:
        if self.base is None:
            self.base = timestamp
        return (timestamp - self.base) & 0xFFFFFFFF

    def restart(self, timestamp: int) -> None:
        self.base = (timestamp - self.next_position) & 0xFFFFFFFF


class Leg:
    """One party's RTP endpoint: where it sends from (learned), what we send it."""

    def __init__(self, name: str, role: str, rng: random.Random, mode: str | None = None) -> None:
        self.name = name
        self.role = role
        self.mode = mode
        self.peer: tuple[str, int] | None = None
        self.ssrc: int | None = None  # of the inbound stream
        self.reorder = ReorderBuffer()
        self.timeline = InboundTimeline()
        self.outbound = OutboundStream(rng)
        self.out_position = 0  # samples sent on the outbound stream
        self.mix_in = MixQueue()  # secondary audio mixed into what this leg hears
        self.received = 0

    def accept_source(self, address: tuple[str, int]) -> bool:
        """Symmetric RTP: latch the first source; ignore others (no injection)."""
        if self.peer is None:
            self.peer = address
        return self.peer == address


@dataclass
class Received:
    """What one inbound datagram produced."""

    datagrams: list[tuple[Leg, bytes]] = field(default_factory=list)
    caller_keys: list[KeyPress] = field(default_factory=list)
    agent_keys: list[KeyPress] = field(default_factory=list)


class KeySource:
    """Key presses of one leg from in-band audio and RFC 4733 events, each once."""

    def __init__(self, event_payload_type: int, offset_ms: float = 0.0) -> None:
        self.event_payload_type = event_payload_type
        self.offset_ms = offset_ms  # subtract: detector times run ahead of the stream by this
        self.tracker: EventTracker | None = None
        self.merger = KeyPressMerger()

    def restart(self) -> None:
        """A new inbound stream: its event timestamps are placed from the restarted timeline."""
        self.tracker = None

    def event(self, packet: RtpPacket, base: int) -> tuple[list[KeyPress], float | None]:
        """Feed a telephone-event packet: (presses completed, start of the press in progress)."""
        if self.tracker is None:
            self.tracker = EventTracker(base_timestamp=base)
        done = self.tracker.feed(packet.timestamp, packet.marker, packet.payload)
        return self.accept(done, from_stream=True), self.tracker.active_start_ms

    def accept(self, presses: list[KeyPress], from_stream: bool = False) -> list[KeyPress]:
        shift = 0.0 if from_stream else self.offset_ms
        out = []
        for press in presses:
            press = KeyPress(press.digit, press.start_ms - shift, press.end_ms - shift)
            if self.merger.add(press):
                out.append(press)
        return out


class Call:
    """Legs, masker and key detection of one call. `now` is monotonic seconds."""

    def __init__(
        self,
        call_id: str,
        codec: str = "PCMU",
        event_payload_type: int = 101,
        mask_mode: str = "tone",
        rng: random.Random | None = None,
    ) -> None:
        if codec not in CODECS:
            raise ValueError(f"unknown codec {codec!r}")
        if not 96 <= event_payload_type <= 127:
            raise ValueError("telephone-event payload type must be dynamic (96-127)")
        self.call_id = call_id
        self.codec = CODECS[codec]
        self.event_payload_type = event_payload_type
        self._rng = rng or random.SystemRandom()
        self.caller = Leg(CALLER, CALLER, self._rng)
        self.agent = Leg(AGENT, AGENT, self._rng)
        self.supervisors: dict[str, Leg] = {}
        self.session_open = False  # set by the service while a session is linked
        self.listen_for_agent_code = True  # the service stops this once linked
        self.masker = StreamingMasker(mode=mask_mode)
        self.masker.push(np.zeros(HOLDBACK, dtype=np.int16))  # prime: one packet in, one packet out
        self._inband_seen = 0
        self.caller_keys = KeySource(event_payload_type, offset_ms=HOLDBACK_MS)
        self.agent_keys = KeySource(event_payload_type)
        self.agent_detector = DtmfDetector()
        self.dropped: dict[str, int] = {}
        self.last_activity: float | None = None

    # --- legs -------------------------------------------------------------
    def leg(self, name: str) -> Leg:
        if name == CALLER:
            return self.caller
        if name == AGENT:
            return self.agent
        return self.supervisors[name]

    def add_supervisor(self, name: str, mode: str) -> Leg:
        if mode not in SUPERVISOR_MODES:
            raise ValueError(f"supervisor mode must be one of {SUPERVISOR_MODES}")
        if name in (CALLER, AGENT):
            raise ValueError(f"{name!r} is reserved")
        leg = self.supervisors.get(name) or Leg(name, SUPERVISOR, self._rng)
        leg.mode = mode
        self.supervisors[name] = leg
        return leg

    def remove_supervisor(self, name: str) -> Leg | None:
        return self.supervisors.pop(name, None)

    @property
    def legs(self) -> list[Leg]:
        return [self.caller, self.agent, *self.supervisors.values()]

    # --- input ------------------------------------------------------------
    def receive(self, leg: Leg, data: bytes, now: float) -> Received:
        out = Received()
        if is_rtcp(data):
            try:
                parse_rtcp(data)
                self._drop("rtcp_consumed")  # our outbound streams carry our own SR
            except MalformedPacket as exc:
                self._drop(exc.reason)
            return out
        try:
            packet = parse_rtp(data)
        except MalformedPacket as exc:
            self._drop(exc.reason)
            return out
        if packet.payload_type not in (self.codec.payload_type, self.event_payload_type):
            self._drop("payload_type")
            return out
        if packet.payload_type == self.codec.payload_type and len(packet.payload) > MAX_AUDIO_SAMPLES:
            self._drop("oversized")
            return out
        self.last_activity = now
        leg.received += 1
        if packet.ssrc != leg.ssrc:
            if leg.ssrc is not None:
                self._new_inbound_stream(leg, packet)
            leg.ssrc = packet.ssrc
        for ordered in leg.reorder.push(packet):
            if leg is self.caller:
                self._from_caller(ordered, out)
            elif leg is self.agent:
                self._from_agent(ordered, out)
            else:
                self._from_supervisor(leg, ordered)
        return out

    def _new_inbound_stream(self, leg: Leg, packet: RtpPacket) -> None:
        """The peer's phone started a new stream (new SSRC: re-INVITE, transfer, a
        second handset): its own sequence and timestamps, continuing our timeline."""
        leg.reorder = ReorderBuffer()
        leg.timeline.restart(packet.timestamp)
        if leg is self.caller:
            self.caller_keys.restart()
        elif leg is self.agent:
            self.agent_keys.restart()

    def _from_caller(self, packet: RtpPacket, out: Received) -> None:
        timeline = self.caller.timeline
        position = timeline.place(packet.timestamp)
        if packet.payload_type == self.event_payload_type:
            try:
                done, active_start = self.caller_keys.event(packet, timeline.base)
            except ValueError:
                self._drop("event_payload")
                return
            # Mask the event's span in the audio too (masker time runs HOLDBACK ahead).
            if active_start is not None:
                self.masker.note_event(active_start + HOLDBACK_MS, None)
            for press in done:
                self.masker.note_event(press.start_ms + HOLDBACK_MS, press.end_ms + HOLDBACK_MS)
            out.caller_keys += done
            return
        pcm = self.codec.decode(packet.payload)
        gap = position - timeline.next_position
        if gap < 0 or gap > MAX_GAP_SAMPLES:
            if gap < 0 and gap + pcm.size > 0:
                pcm = pcm[-gap:]  # overlap with audio already played: keep the new part
            else:
                timeline.restart(packet.timestamp)  # a new timeline: no silence filling
            gap = 0
        if gap:
            pcm = np.concatenate([np.zeros(gap, dtype=np.int16), pcm])  # lost packets: silence
        timeline.next_position += pcm.size
        masked = self.masker.push(pcm)
        presses = self.masker.key_presses[self._inband_seen :]
        self._inband_seen = len(self.masker.key_presses)
        out.caller_keys += self.caller_keys.accept(presses)
        payload = self.codec.encode(masked).tobytes()
        self._send(self.agent, masked, payload, packet.marker, out)
        for supervisor in self.supervisors.values():
            if supervisor.mode == BARGE and self.session_open:
                heard = np.zeros_like(masked)  # nothing from the caller
                self._send(supervisor, heard, None, packet.marker, out)
            else:
                self._send(supervisor, masked, payload, packet.marker, out)

    def _from_agent(self, packet: RtpPacket, out: Received) -> None:
        timeline = self.agent.timeline
        position = timeline.place(packet.timestamp)
        if packet.payload_type == self.event_payload_type:
            if self.listen_for_agent_code:
                try:
                    out.agent_keys += self.agent_keys.event(packet, timeline.base)[0]
                except ValueError:
                    self._drop("event_payload")
                    return
            self._forward(self.caller, packet, position, packet.payload, out)
            return
        pcm = self.codec.decode(packet.payload)
        if self.listen_for_agent_code:
            out.agent_keys += self.agent_keys.accept(self.agent_detector.feed(pcm))
        for supervisor in self.supervisors.values():
            supervisor.mix_in.add(pcm)
        barge = self.caller.mix_in.take(pcm.size)
        payload = packet.payload if barge is None else self.codec.encode(mix(pcm, barge)).tobytes()
        self._forward(self.caller, packet, position, payload, out)

    def _from_supervisor(self, leg: Leg, packet: RtpPacket) -> None:
        if leg.mode != BARGE or packet.payload_type != self.codec.payload_type:
            self._drop("supervisor_not_barging" if leg.mode != BARGE else "supervisor_event")
            return
        pcm = self.codec.decode(packet.payload)
        self.caller.mix_in.add(pcm)
        self.agent.mix_in.add(pcm)

    # --- output -----------------------------------------------------------
    def _send(self, leg: Leg, pcm: np.ndarray, payload: bytes | None, marker: bool, out: Received) -> None:
        """Masked caller audio (with this leg's secondary audio mixed in) to one leg."""
        other = leg.mix_in.take(pcm.size)
        if other is not None or payload is None:
            payload = self.codec.encode(mix(pcm, other)).tobytes()
        out.datagrams.append((leg, leg.outbound.packet(self.codec.payload_type, leg.out_position, payload, marker)))
        leg.out_position += pcm.size

    def _forward(self, leg: Leg, packet: RtpPacket, position: int, payload: bytes, out: Received) -> None:
        """Relay a packet with our own SSRC/sequence; timestamps keep the sender's spacing."""
        data = leg.outbound.packet(packet.payload_type, position, payload, packet.marker)
        out.datagrams.append((leg, data))

    def sender_reports(self, now: float, wall_time: float) -> list[tuple[Leg, bytes]]:
        """RTCP SRs for our outbound streams every RTCP_INTERVAL_S (RFC 5761 muxed)."""
        reports = []
        for leg in self.legs:
            stream = leg.outbound
            if stream.packets and now - stream.last_report >= RTCP_INTERVAL_S:
                stream.last_report = now
                report = build_sender_report(
                    stream.ssrc, wall_time + NTP_EPOCH_OFFSET, stream.last_timestamp, stream.packets, stream.octets
                )
                reports.append((leg, report))
        return reports

    def _drop(self, reason: str) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + 1
