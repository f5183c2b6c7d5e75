"""One phone call in the media worker: its legs and what flows between them.

Pure (numpy, no sockets, no Django): `Call.receive(leg, datagram, now)` takes
one datagram a leg sent and returns what to send to which leg, plus the key
presses it completed. The relay wires sockets around it.

Flows (DESIGN.md "Telephony rules"):
* caller -> agent and supervisors: always through the masker, for every call
  (fail closed: no call ever carries a key tone to the agent side, linked or
  not). RFC 4733 packets are consumed (the flat tone is in the audio instead).
  The masking and the agent-leg key detection of all calls of a worker run in
  one `CallAudioBatch`: audio is queued per call as it arrives and the batch
  processes every call with something queued in one set of numpy operations
  (`flush`). The relay flushes after reading what arrived (at most every
  `relay.BATCH_INTERVAL_S` under load); a Call used on its own flushes its own
  batch on every packet.
* agent -> caller: payload unchanged (re-encoded only when a barging
  supervisor's voice is mixed in), telephone-events included.
* agent -> supervisors: mixed under the caller's masked audio.
* barging supervisor -> agent and caller: mixed in (sent on its own while the
  other side is silent). While a session is open on the call, a barging
  supervisor hears nothing from the caller (agent only).

Outbound streams are our own: a fresh SSRC, sequence and timestamp base per
destination leg, advanced consistently whatever the inbound streams do.
The caller's masked audio leaves exactly `HOLDBACK_MS` late (the batch masker
outputs that much silence ahead of each stream, so each inbound packet yields
one outbound packet of the same size). RTCP is ours too: each leg gets
reports on our stream to it and on its stream to us (`sender_reports`), and a
BYE when it goes away (`goodbye`); incoming RTCP is not relayed.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable, Iterator
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from media.codecs import alaw_decode, alaw_encode, ulaw_decode, ulaw_encode
from media.dtmf import BLOCK, SAMPLE_RATE, BatchDtmfDetector, KeyPress
from media.jitter import ReorderBuffer
from media.masker import BatchStreamingMasker
from media.rfc4733 import EventTracker, KeyPressMerger
from media.rtp import (
    RTCP_SR,
    RTP_HEADER,
    MalformedPacket,
    ReceptionStats,
    RtpPacket,
    SenderInfo,
    build_report,
    is_rtcp,
    parse_rtcp,
    parse_rtp,
    parse_sender_info,
)

CALLER, AGENT, SUPERVISOR = "caller", "agent", "supervisor"
MONITOR, BARGE = "monitor", "barge"
SUPERVISOR_MODES = (MONITOR, BARGE)
SUPERVISOR_EVENTS = ("barge", "monitor_stop")  # telephony events (media.service) that may name a supervisor leg


@dataclass(frozen=True)
class Codec:
    name: str
    payload_type: int
    decode: Callable[[bytes | np.ndarray], np.ndarray]
    encode: Callable[[np.ndarray], np.ndarray]

    @cached_property
    def silence(self) -> np.ndarray:
        """Codes of MAX_GAP_SAMPLES zero samples: what fills a gap before decoding (shared, read-only)."""
        codes = self.encode(np.zeros(MAX_GAP_SAMPLES, dtype=np.int16))
        codes.flags.writeable = False
        return codes


CODECS = {
    "PCMU": Codec("PCMU", 0, ulaw_decode, ulaw_encode),
    "PCMA": Codec("PCMA", 8, alaw_decode, alaw_encode),
}
MAX_AUDIO_SAMPLES = 480  # 60 ms at 8 kHz: the longest G.711 packet we relay
MAX_GAP_SAMPLES = SAMPLE_RATE  # a jump beyond 1 s restarts the timeline instead of filling silence
# Silence is filled for a gap only as far as time really passed since the stream's last
# audio (plus network jitter): a sender jumping its timestamps ahead cannot make the
# worker mask and send seconds of audio per packet.
GAP_JITTER_SAMPLES = 800  # 100 ms
# A telephone-event is timed by its start: behind the audio by the press so far (long
# presses are re-segmented every ~8 s, RFC 4733 2.5.1.3), never far ahead of it. An
# event out of that reach (a sender sending only events, restarting its timestamps for
# each key) restarts the timeline at the audio's position, as an audio jump does: it is
# masked where the audio is, and made-up timestamps cannot pile up masking intervals
# that the audio would never reach.
EVENT_MAX_BEHIND_SAMPLES = 10 * SAMPLE_RATE
EVENT_MAX_AHEAD_SAMPLES = SAMPLE_RATE
MIX_LIMIT_SAMPLES = 1600  # 200 ms of queued audio to mix in; older is dropped (it would only add delay)
# Secondary audio rides on the main stream's packets; when that stream has sent nothing
# for this long (a caller's phone suppressing silence, a muted handset) the secondary
# audio goes out on its own so the listener still hears it.
MIX_STANDALONE_S = 0.1  # more than network jitter between the two streams
# While the main stream flows, secondary audio waits for it at most this much; older is
# dropped, so a secondary clock running fast adds neither packets nor delay.
MIX_WAIT_SAMPLES = 480
# A relayed stream's shift (see Call._forward) changes only this long after its last
# telephone-event packet (an event's end is sent three times, 50 ms apart at most).
EVENT_QUIET_S = 0.2
# A leg's stream behind real time by more than this (network jitter) for CLOCK_RESYNC_S lost
# that time at its source (a long pause, a new stream): its real time is moved to it.
REAL_TIME_SLACK_SAMPLES = 480  # 60 ms
CLOCK_RESYNC_S = 2.0  # longer than late packets take to catch up (a burst at once, a backlog at 1.5x)
CLOCK_SENDING_GAP_S = 0.1  # of packets sent one after the other (a talkspurt)
# Audio below this mean power (dBm0; 0 dBm0 is a sine of peak 22747) is quiet: a leg that
# runs ahead of real time may skip it to get back (Call._skippable).
QUIET_DBM0 = -50.0
QUIET_MEAN_SQUARE = (22747 / 2**0.5) ** 2 * 10 ** (QUIET_DBM0 / 10)
RTCP_INTERVAL_S = 5.0
# A phone that switched streams (re-INVITE, transfer) may still have packets of the old one
# in flight: for this long they are dropped rather than taken for a switch back.
STRAGGLER_S = 0.5
NTP_EPOCH_OFFSET = 2_208_988_800
_pack_header = RTP_HEADER.pack


class OutboundStream:
    """Our RTP stream towards one leg: own SSRC, contiguous sequence numbers."""

    def __init__(self, rng: random.Random) -> None:
        self.ssrc = rng.getrandbits(32)
        self.sequence = rng.getrandbits(16)
        self.timestamp_base = rng.getrandbits(32)
        self.packets = 0
        self.octets = 0
        self.last_timestamp = self.timestamp_base
        self.last_sent_at: float | None = None  # monotonic s
        self.last_report = 0.0
        # (monotonic s, position) the stream is on real time from: its first packet, moved to a
        # packet once the stream has been behind it for CLOCK_RESYNC_S (see `lead`).
        self.clock_anchor: tuple[float, int] | None = None
        self.behind_since: float | None = None

    def packet(self, payload_type: int, position: int, payload: bytes, marker: bool, now: float | None) -> bytes:
        """`position` is the media time in samples on this stream's own timeline."""
        timestamp = self.last_timestamp = (self.timestamp_base + position) & 0xFFFFFFFF
        if now is not None:
            anchor = self.clock_anchor
            if anchor is None:
                self.clock_anchor = (now, position)
            elif position - anchor[1] - (now - anchor[0]) * SAMPLE_RATE >= -REAL_TIME_SLACK_SAMPLES:
                self.behind_since = None
            elif self.behind_since is None or now - (self.last_sent_at or now) > CLOCK_SENDING_GAP_S:
                self.behind_since = now  # behind from here (a pause in sending starts the count again)
            elif now - self.behind_since >= CLOCK_RESYNC_S:
                # Behind all along, not for a late burst that caught up: its source lost that time.
                self.clock_anchor, self.behind_since = (now, position), None
        self.last_sent_at = now
        sequence, packets = self.sequence, self.packets
        self.sequence, self.packets = (sequence + 1) & 0xFFFF, packets + 1
        self.octets += len(payload)
        # The plain header (no CSRC, extension or padding), packed directly: this runs for every packet.
        second = payload_type | 0x80 if marker or not packets else payload_type
        return _pack_header(0x80, second, sequence, timestamp, self.ssrc) + payload

    def lead(self, position: int, now: float | None) -> int:
        """How far audio sent now at `position` would be ahead of real time, in samples (0:
        not ahead). Real time is the clock anchor's: a stream that stayed behind it for
        CLOCK_RESYNC_S lost that time at its source (a long pause, a new stream, a late start)
        and is on time from then on, so a leg is never made to fall behind real time; a late
        burst that catches up (network jitter, a stall) moves nothing."""
        if self.clock_anchor is None or now is None:
            return 0
        since, origin = self.clock_anchor
        return max(0, position - origin - round((now - since) * SAMPLE_RATE))


class MixQueue:
    """Audio from a secondary source waiting to be mixed into a stream."""

    def __init__(self) -> None:
        self._chunks: deque[np.ndarray] = deque()
        self._size = 0

    def add(self, pcm: np.ndarray) -> None:
        self._chunks.append(pcm)
        self._size += pcm.size
        self.keep_latest(MIX_LIMIT_SAMPLES)

    def keep_latest(self, samples: int) -> None:
        """Drop the oldest chunks while more than `samples` are queued."""
        while self._size > samples:
            self._size -= self._chunks.popleft().size

    @property
    def queued(self) -> int:
        return self._size

    def take(self, count: int, keep: int | None = None) -> np.ndarray | None:
        """`count` samples (zero-padded), or None when nothing is queued; then at most `keep`
        samples stay queued (the oldest go)."""
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
        if keep is not None:
            self.keep_latest(keep)
        return out


def is_quiet(pcm: np.ndarray) -> bool:
    """Below QUIET_DBM0: line noise, a pause - nothing a listener misses for 20 ms."""
    samples = pcm.astype(np.float64)
    return float(np.dot(samples, samples)) <= QUIET_MEAN_SQUARE * samples.size


def mix(pcm: np.ndarray, other: np.ndarray | None) -> np.ndarray:
    if other is None:
        return pcm
    return np.clip(pcm.astype(np.int32) + other, -32768, 32767).astype(np.int16)


@dataclass
class InboundTimeline:
    """Maps one inbound stream's RTP timestamps to sample positions from its start.
    `next_position` is where the stream's audio has reached: the masker's and the
    key detector's clock, which events are timed on too."""

    base: int | None = None
    next_position: int = 0
    last_audio_at: float | None = None  # when audio last arrived (monotonic s)

    def place(self, timestamp: int) -> int:
        """Signed position of a timestamp relative to the timeline's start."""
        if self.base is None:
            self.base = timestamp
        position = (timestamp - self.base) & 0xFFFFFFFF
        return position - (1 << 32) if position & 0x80000000 else position

    def restart(self, timestamp: int) -> None:
        self.base = (timestamp - self.next_position) & 0xFFFFFFFF

    def fit(self, timestamp: int, size: int, now: float) -> tuple[int, int, int]:
        """Place an audio packet of `size` samples: (its position, silence to
        insert before it for lost packets, samples at its start already played).
        A jump back past all its samples, or ahead further than MAX_GAP_SAMPLES
        or than the time since the last audio explains, restarts the timeline at
        the packet (the stream goes on seamlessly, nothing inserted)."""
        if self.base is not None and (timestamp - self.base) & 0xFFFFFFFF == self.next_position:
            position = self.next_position  # contiguous with what came before: nearly every packet
            self.last_audio_at = now
            self.next_position = position + size
            return position, 0, 0
        position = self.place(timestamp)
        gap = position - self.next_position
        if gap:
            elapsed = MAX_GAP_SAMPLES if self.last_audio_at is None else (now - self.last_audio_at) * SAMPLE_RATE
            if gap + size <= 0 or gap > min(MAX_GAP_SAMPLES, elapsed + GAP_JITTER_SAMPLES):
                self.restart(timestamp)
                position, gap = self.next_position, 0
        self.last_audio_at = now
        skip = -gap if gap < 0 else 0
        self.next_position = position + size
        return position, max(gap, 0), skip

    def place_event(self, timestamp: int) -> int:
        """Position of a telephone-event's start; one out of reach of the audio
        (or before the timeline's start) restarts the timeline at the audio's position."""
        position = self.place(timestamp)
        ahead = position - self.next_position
        if position < 0 or not -EVENT_MAX_BEHIND_SAMPLES <= ahead <= EVENT_MAX_AHEAD_SAMPLES:
            self.restart(timestamp)
            position = self.next_position
        return position


class Leg:
    """One party's RTP endpoint: where it sends from (learned), what we send it."""

    def __init__(self, name: str, role: str, rng: random.Random, mode: str | None = None) -> None:
        self.name = name
        self.role = role
        self.mode = mode
        self.peer: tuple[str, int] | None = None
        self.ssrc: int | None = None  # of the inbound stream
        self.previous_ssrc: int | None = None  # the stream it replaced ...
        self.ssrc_since = 0.0  # ... when (monotonic s)
        self.stats: ReceptionStats | None = None  # of the inbound stream, for our RTCP report blocks
        self.reorder = ReorderBuffer()
        self.timeline = InboundTimeline()
        self.outbound = OutboundStream(rng)
        self.out_position = 0  # samples sent on the outbound stream
        self.forward_offset = 0  # added to a relayed stream's positions (see Call._forward)
        self.forwarded_until = 0  # where the relayed stream's last audio ended (after the offset)
        self.event_forwarded_at: float | None = None  # a relayed telephone-event's last packet
        self.event_until = 0  # where the relayed telephone-events heard so far end (after the offset)
        self.marker_pending = False  # a talkspurt's first packet was skipped: the next one says so
        # When it last got its main stream (the caller's audio, or events of a key press whose
        # tone is still to come; the agent's audio for the caller's leg).
        self.main_sent_at: float | None = None
        self.mix_in = MixQueue()  # secondary audio mixed into what this leg hears
        self.received = 0

    def accept_source(self, address: tuple) -> bool:
        """Symmetric RTP: latch the first source; ignore others (no injection).
        `address` as a socket reports it: (host, port), plus flow info and scope for IPv6."""
        if self.peer is None:
            self.peer = address[:2]
        return self.peer == address or self.peer == address[:2]


@dataclass(slots=True)
class Received:
    """What one inbound datagram produced."""

    datagrams: list[tuple[Leg, bytes]] = field(default_factory=list)
    caller_keys: list[KeyPress] = field(default_factory=list)
    agent_keys: list[KeyPress] = field(default_factory=list)

    def extend(self, other: Received) -> None:
        self.datagrams += other.datagrams
        self.caller_keys += other.caller_keys
        self.agent_keys += other.agent_keys


class KeySource:
    """Key presses of one leg from in-band audio and RFC 4733 events, each once.
    Both are timed on the leg's inbound timeline (ms from its first sample)."""

    def __init__(self, event_payload_type: int) -> None:
        self.event_payload_type = event_payload_type
        self.tracker: EventTracker | None = None
        self.merger = KeyPressMerger()

    def restart(self) -> None:
        """A new inbound stream: its event timestamps are placed from the restarted timeline."""
        self.tracker = None

    def event(self, packet: RtpPacket, base: int) -> tuple[list[KeyPress], float | None]:
        """Feed a telephone-event packet: (presses completed, start of the press in progress).
        `base` is the timeline's current base: it moves when the timeline restarts."""
        if self.tracker is None:
            self.tracker = EventTracker(base_timestamp=base)
        self.tracker.base = base
        done = self.tracker.feed(packet.timestamp, packet.marker, packet.payload)
        return self.accept(done), self.tracker.active_start_ms

    def abandon_press(self) -> str | None:
        """The RFC 4733 press in progress began before now and must not count (the call was
        not secured yet): its digit, if any. Positions alone cannot tell: with no audio
        flowing (events only, silence suppression) the timeline stands still."""
        return None if self.tracker is None else self.tracker.abandon()

    def expire(self, position_ms: float) -> list[KeyPress]:
        """The press in progress, if its packets stopped (end packets lost) by position_ms."""
        if self.tracker is None or not self.tracker.pressing:
            return []
        return self.accept(self.tracker.expire(position_ms))

    def accept(self, presses: list[KeyPress]) -> list[KeyPress]:
        return [press for press in presses if self.merger.add(press)]


class _Queued:
    """Audio of one leg of a call waiting for the next batch: samples (the agent's)
    or G.711 codes (the caller's, decoded for the whole batch at once). Only whole
    blocks go to the DSP; a remainder (odd packet sizes) waits for the next packet."""

    __slots__ = ("chunks", "markers", "carry", "fills")

    def __init__(self, dtype: type = np.int16) -> None:
        self.chunks: list[np.ndarray] = []
        self.markers: set[int] = set()  # indexes of chunks whose packet had the marker bit
        self.carry = np.zeros(0, dtype=dtype)
        self.fills: set[int] = set()  # indexes of chunks that fill a gap (no packet came)

    def add(self, chunk: np.ndarray, marker: bool = False, fill: bool = False) -> None:
        if marker:
            self.markers.add(len(self.chunks))
        if fill:
            self.fills.add(len(self.chunks))
        self.chunks.append(chunk)

    def take(self) -> tuple[np.ndarray, list[int], AbstractSet[int], AbstractSet[int]]:
        """(queued samples or codes cut to whole blocks, the packet sizes they came in, which of
        them filled a gap, which of them had the marker)."""
        chunks, fills, markers = self.chunks, self.fills, self.markers
        if len(chunks) == 1 and not self.carry.size:
            pcm = chunks[0]  # one packet of whole blocks: nearly always
            if not pcm.size % BLOCK:
                chunks.clear()
                if fills or markers:
                    self.fills, self.markers = set(), set()
                    return pcm, [pcm.size], fills, markers
                return pcm, [pcm.size], _NONE, _NONE
        else:
            pcm = np.concatenate([self.carry, *chunks])
        sizes = [chunk.size for chunk in chunks]
        usable = pcm.size - pcm.size % BLOCK
        self.carry = pcm[usable:]
        self.chunks, self.fills, self.markers = [], set(), set()
        return pcm[:usable], sizes, fills, markers


_NONE: AbstractSet[int] = frozenset()  # no fills, no markers: shared, never changed


class CallAudioBatch:
    """The DSP of many calls run as one: caller-leg masking (one
    `BatchStreamingMasker` slot per call) and agent-leg key detection while the
    call listens for the agent's code (one `BatchDtmfDetector` slot).

    Calls queue decoded audio as it arrives; `flush()` pushes every call with
    audio queued, grouped by length, one numpy pass per group, and returns what
    each call sends and the keys it completed. `immediate=True` (a Call used on
    its own, tests) flushes on every packet.
    """

    def __init__(self, immediate: bool = False) -> None:
        self.immediate = immediate
        self.masker = BatchStreamingMasker(0)
        self.detector = BatchDtmfDetector(0)
        self._free_detector_slots: list[int] = []
        self._callers: dict[Call, _Queued] = {}  # calls with caller audio queued, in arrival order
        self._agents: dict[Call, _Queued] = {}

    @property
    def pending(self) -> bool:
        return bool(self._callers or self._agents)

    @property
    def full_push_queued(self) -> bool:
        """Enough callers queued for a whole push: masking them now costs no more per call."""
        return len(self._callers) >= MAX_ROWS_PER_PUSH

    def add_call(self, call: Call, mask_mode: str) -> None:
        call.mask_slot = self.masker.add_stream(mode=mask_mode)
        if self._free_detector_slots:
            call.detector_slot = self._free_detector_slots.pop()
            self.detector.reset_stream(call.detector_slot)
        else:
            call.detector_slot = self.detector.n
            self.detector.resize(self.detector.n + 1)

    def remove_call(self, call: Call) -> None:
        if call.mask_slot is None:
            return
        self._callers.pop(call, None)
        self._agents.pop(call, None)
        self.masker.remove_stream(call.mask_slot)
        self.detector.reset_stream(call.detector_slot)  # an idle slot costs no Python work
        self._free_detector_slots.append(call.detector_slot)
        call.mask_slot = call.detector_slot = None

    def queue_caller(self, call: Call, codes: np.ndarray, marker: bool, fill: bool = False) -> None:
        """Caller audio as codes of the call's codec (uint8); `fill`: silence for a gap."""
        call.caller_audio.add(codes, marker, fill)
        self._callers[call] = call.caller_audio

    def queue_agent(self, call: Call, pcm: np.ndarray) -> None:
        call.agent_audio.add(pcm)
        self._agents[call] = call.agent_audio

    def flush(self) -> dict[Call, Received]:
        """Run the DSP over everything queued; what each call that sent something or completed
        keys sends, and its keys (per call: the relay takes `flush_in_pushes` as it comes, this
        is for a Call on its own and tests)."""
        owner = {leg: call for queued in (self._callers, self._agents) for call in queued for leg in call.legs}
        results: dict[Call, Received] = {}
        for datagrams, keyed in self.flush_in_pushes():
            for leg, data in datagrams:
                results.setdefault(owner[leg], Received()).datagrams.append((leg, data))
            for call, received in keyed.items():
                results.setdefault(call, Received()).extend(received)
        return results

    def flush_in_pushes(self) -> Iterator[tuple[list[tuple[Leg, bytes]], dict[Call, Received]]]:
        """Run the DSP one push at a time: per push, what its calls send (all of them in one
        list: the relay sends each push's packets before running the next push) and the
        calls that completed keys, with those keys."""
        callers, self._callers = self._callers, {}
        agents, self._agents = self._agents, {}
        masker = self.masker
        for group in _by_length(callers, by_codec=True):
            rows = np.array([call.mask_slot for call, *_ in group])
            codec = group[0][0].codec  # one per push: decoded and encoded at once
            pcm = codec.decode(np.stack([codes for _call, codes, *_ in group]))
            masked = masker.push_rows(rows, pcm)
            encoded = codec.encode(masked)
            out = Received()
            for index, (call, _codes, sizes, fills, markers) in enumerate(group):
                call.deliver_masked(masked[index], encoded[index], sizes, fills, markers, out)
            keyed: dict[Call, Received] = {}
            if masker.pressed_slots:
                for call, *_ in group:
                    if call.mask_slot in masker.pressed_slots:
                        presses = call.caller_keys.accept(masker.drain_key_presses(call.mask_slot))
                        if presses:
                            keyed[call] = Received(caller_keys=presses)
            yield out.datagrams, keyed
        for group in _by_length(agents):
            rows = np.array([call.detector_slot for call, *_ in group])
            presses = self.detector.feed_rows(rows, np.stack([pcm for _call, pcm, *_ in group]))
            yield (
                [],
                {
                    call: Received(agent_keys=call.agent_keys.accept(done))
                    for (call, *_), done in zip(group, presses, strict=True)
                    if done and call.listen_for_agent_code
                },
            )


# Rows per DSP push. Per-row cost is lowest around 64 rows (all calls keying, this
# machine: ~11 us a row at 64, ~15 us at 100-300 as a push's numpy temporaries
# outgrow the CPU caches; ~16 us at 25, where the fixed cost of a push shows), so
# a big batch runs as several pushes, and the first calls' packets leave sooner.
MAX_ROWS_PER_PUSH = 64


def _by_length(
    queues: dict[Call, _Queued], by_codec: bool = False
) -> list[list[tuple[Call, np.ndarray, list[int], AbstractSet[int], AbstractSet[int]]]]:
    """Queued audio taken and grouped by length (and codec: queues of codes), one
    push per group, at most MAX_ROWS_PER_PUSH rows."""
    groups: dict[tuple[int, str], list[tuple[Call, np.ndarray, list[int], AbstractSet[int], AbstractSet[int]]]] = {}
    for call, queued in queues.items():
        if call.mask_slot is None:
            continue  # the call ended meanwhile
        audio, sizes, fills, markers = queued.take()
        if audio.size:
            key = (audio.size, call.codec.name if by_codec else "")
            groups.setdefault(key, []).append((call, audio, sizes, fills, markers))
    return [
        group[start : start + MAX_ROWS_PER_PUSH]
        for group in groups.values()
        for start in range(0, len(group), MAX_ROWS_PER_PUSH)
    ]


class Call:
    """Legs, masker and key detection of one call. `now` is monotonic seconds."""

    def __init__(
        self,
        call_id: str,
        codec: str = "PCMU",
        event_payload_type: int = 101,
        mask_mode: str = "tone",
        rng: random.Random | None = None,
        audio: CallAudioBatch | None = None,
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
        self.caller_keys = KeySource(event_payload_type)
        self.agent_keys = KeySource(event_payload_type)
        # The worker's shared DSP (a call on its own gets a batch of its own).
        self.audio = audio if audio is not None else CallAudioBatch(immediate=True)
        self.mask_slot: int | None = None
        self.detector_slot: int | None = None
        self.caller_audio, self.agent_audio = _Queued(np.uint8), _Queued(np.int16)
        # Where the next masked caller audio sits on the caller's timeline (queued audio has no
        # holes: gaps are filled), so each leg places it by time, not by what it was sent.
        self.masked_position = 0
        self.audio.add_call(self, mask_mode)
        self.dropped: dict[str, int] = {}
        self.last_activity: float | None = None
        # RTCP CNAME of all our outbound streams of this call (RFC 7022: random, per call).
        self.cname = f"securepay-{self._rng.getrandbits(64):016x}"

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

    def close(self) -> None:
        """The call is over: free its DSP slots (audio still held back is dropped)."""
        self.audio.remove_call(self)

    # --- input ------------------------------------------------------------
    def receive(self, leg: Leg, data: bytes, now: float) -> Received:
        if len(data) > RTP_HEADER.size and data[0] == 0x80 and not self.audio.immediate:
            out = self._receive_in_line(leg, data, now)
            if out is not None:
                return out
        out = Received()
        if is_rtcp(data):
            self._receive_rtcp(leg, data, now)
            return out
        try:
            packet = parse_rtp(data)
        except MalformedPacket as exc:
            self._drop(exc.reason)
            return out
        audio = packet.payload_type == self.codec.payload_type
        if audio:
            if not 0 < len(packet.payload) <= MAX_AUDIO_SAMPLES:
                self._drop("oversized" if packet.payload else "short")
                return out
        elif packet.payload_type != self.event_payload_type:
            self._drop("payload_type")
            return out
        if packet.ssrc != leg.ssrc:
            if packet.ssrc == leg.previous_ssrc and now - leg.ssrc_since < STRAGGLER_S:
                self._drop("old_stream")  # late packets of the stream the phone just replaced
                return out
            if leg.ssrc is not None:
                self._new_inbound_stream(leg, packet)
            leg.previous_ssrc, leg.ssrc, leg.ssrc_since = leg.ssrc, packet.ssrc, now
            leg.stats = ReceptionStats(packet.ssrc, packet.sequence)
        self.last_activity = now
        leg.received += 1
        leg.stats.packet(packet.sequence, packet.timestamp, now if audio else None, SAMPLE_RATE)
        handle = self._from_caller if leg is self.caller else self._from_agent if leg is self.agent else None
        for ordered in leg.reorder.push(packet):
            if handle is None:
                self._from_supervisor(leg, ordered, out)
            else:
                handle(ordered, out, now)
        if self.audio.immediate and self.audio.pending:
            for received in self.audio.flush().values():
                out.extend(received)
        return out

    def _receive_in_line(self, leg: Leg, data: bytes, now: float) -> Received | None:
        """The common packet in one step, exactly as `receive` handles it: audio in the call's
        codec with a plain header, of the leg's current stream, next in sequence and in time,
        from the caller (no RFC 4733 press in progress) or from the agent (relayed as it is: no
        code listened for, no supervisor, no barge audio to mix in). Any other packet: None,
        and nothing changed. Per packet this saves the general path's layers (~1.5 us).
        The caller's audio is queued as a view of `data`: it must be immutable (bytes)."""
        _first, second, sequence, timestamp, ssrc = RTP_HEADER.unpack_from(data)  # first: 0x80, checked
        size = len(data) - RTP_HEADER.size
        timeline = leg.timeline
        position = timeline.next_position
        if (
            second & 0x7F != self.codec.payload_type
            or ssrc != leg.ssrc
            or size > MAX_AUDIO_SAMPLES
            or timeline.base is None
            or (timestamp - timeline.base) & 0xFFFFFFFF != position
        ):
            return None
        if leg is self.caller:
            tracker = self.caller_keys.tracker
            if tracker is not None and tracker.pressing:
                return None  # a press of events may expire with this audio
        elif leg is not self.agent or self.listen_for_agent_code or self.supervisors or self.caller.mix_in.queued:
            return None
        if not leg.reorder.release_next(sequence):
            return None
        self.last_activity = timeline.last_audio_at = now
        timeline.next_position = position + size
        leg.received += 1
        leg.stats.packet(sequence, timestamp, now, SAMPLE_RATE)
        out = Received()
        if leg is self.caller:
            self.audio.queue_caller(self, np.frombuffer(data, dtype=np.uint8, offset=RTP_HEADER.size), second > 0x7F)
        else:
            self._forward(self.caller, second & 0x7F, second > 0x7F, position, data[RTP_HEADER.size :], out, size)
        return out

    def _receive_rtcp(self, leg: Leg, data: bytes, now: float) -> None:
        """RTCP is not relayed (each leg hears our own streams, with our own reports);
        a sender report of the leg's stream is noted for our next report's round-trip fields."""
        try:
            packets = parse_rtcp(data)
            for packet in packets:
                if packet.packet_type == RTCP_SR:
                    ssrc, whole, fraction = parse_sender_info(packet)
                    if leg.stats is not None and ssrc == leg.stats.ssrc:
                        leg.stats.sender_report(whole, fraction, now)
        except MalformedPacket as exc:
            self._drop(exc.reason)
            return
        self._drop("rtcp_consumed")

    def _new_inbound_stream(self, leg: Leg, packet: RtpPacket) -> None:
        """The peer's phone started a new stream (new SSRC: re-INVITE, transfer, a
        second handset): its own sequence and timestamps, continuing our timeline."""
        leg.reorder = ReorderBuffer()
        leg.timeline.restart(packet.timestamp)
        if leg is self.caller:
            self.caller_keys.restart()
        elif leg is self.agent:
            self.agent_keys.restart()

    def _from_caller(self, packet: RtpPacket, out: Received, now: float) -> None:
        timeline = self.caller.timeline
        if packet.payload_type == self.event_payload_type:
            timeline.place_event(packet.timestamp)
            try:
                done, active_start = self.caller_keys.event(packet, timeline.base)
            except ValueError:
                self._drop("event_payload")
                return
            # A phone may send only events while a key is down: its stream is alive all the same
            # (the key's flat tone fills this time once its audio resumes), so the agent's and
            # supervisors' legs do not take secondary audio sent on its own for that time.
            for leg in (self.agent, *self.supervisors.values()):
                leg.main_sent_at = now
            # Mask the event's span in the audio too (the masker runs on the same timeline);
            # noted at once, before audio still queued: the queued audio is masked too.
            if active_start is not None:
                self.audio.masker.note_event(self.mask_slot, active_start, None)
            self._caller_event_presses(done, out)
            return
        codes = np.frombuffer(packet.payload, dtype=np.uint8)  # decoded with the whole batch
        _position, gap, skip = timeline.fit(packet.timestamp, codes.size, now)
        if skip:
            codes = codes[skip:]  # overlap with audio already played: keep the new part
        if gap:  # lost packets: silence, masked in pieces of this packet's size (sent if not silent after)
            for start in range(0, gap, codes.size):
                self.audio.queue_caller(self, self.codec.silence[: min(codes.size, gap - start)], False, fill=True)
        if self.caller_keys.tracker is not None:
            self._caller_event_presses(self.caller_keys.expire(1000.0 * timeline.next_position / SAMPLE_RATE), out)
        self.audio.queue_caller(self, codes, packet.marker)

    def _caller_event_presses(self, presses: list[KeyPress], out: Received) -> None:
        """RFC 4733 presses the caller completed: their spans are masked, the keys reported."""
        for press in presses:
            self.audio.masker.note_event(self.mask_slot, press.start_ms, press.end_ms)
        out.caller_keys += presses

    def deliver_masked(
        self,
        masked: np.ndarray,
        codes: np.ndarray,
        sizes: list[int],
        fills: AbstractSet[int],
        markers: AbstractSet[int],
        out: Received,
    ) -> None:
        """The batch masked this call's queued caller audio (`codes`: encoded in
        the call's codec): send it on, one packet per inbound packet (the sizes
        they came in; `markers`: which had the marker bit). A packet
        of silence that only filled a gap is not sent (a flat tone or held-back audio in
        it is): the legs' timestamps jump over it, as over the sender's own silence
        suppression, and the next packet sent has the marker bit (RFC 3550 5.1: the first
        packet after a silence period)."""
        if len(sizes) == 1 and not fills:  # one packet in, one out: nearly always
            self._send_caller_audio(masked, codes, bool(markers), out)
            return
        start, marker = 0, False
        for index, size in enumerate(sizes):
            if start >= masked.size:
                break
            end = start + size if start + size + min(sizes) <= masked.size else masked.size
            marker = marker or index in markers
            if index in fills and (codes[start:end] == self.codec.silence[0]).all():
                self.masked_position += end - start  # made-up silence with nothing in it after masking
                marker = True
            else:
                # Audio held back when the caller's stream paused comes out in the gap's first packets.
                late = index in fills
                self._send_caller_audio(masked[start:end], codes[start:end], marker, out, late)
                marker = False
            start = end

    def _send_caller_audio(
        self, masked: np.ndarray, codes: np.ndarray, marker: bool, out: Received, late: bool = False
    ) -> None:
        payload, position = codes.tobytes(), self.masked_position
        self.masked_position += masked.size
        self._send(self.agent, masked, payload, marker, out, position, late)
        if not self.supervisors:
            return
        for supervisor in self.supervisors.values():
            if supervisor.mode == BARGE and self.session_open:
                heard = np.zeros_like(masked)  # nothing from the caller
                self._send(supervisor, heard, None, marker, out, position, late)
            else:
                self._send(supervisor, masked, payload, marker, out, position, late)

    def _from_agent(self, packet: RtpPacket, out: Received, now: float) -> None:
        timeline = self.agent.timeline
        if packet.payload_type == self.event_payload_type:
            position = timeline.place_event(packet.timestamp)
            if self.listen_for_agent_code:
                try:
                    out.agent_keys += self.agent_keys.event(packet, timeline.base)[0]
                except ValueError:
                    self._drop("event_payload")
                    return
            self._forward(self.caller, packet.payload_type, packet.marker, position, packet.payload, out)
            return
        payload = packet.payload
        size = len(payload)  # G.711: one byte a sample
        position, gap, skip = timeline.fit(packet.timestamp, size, now)
        # A barging supervisor's voice rides on the agent's packet.
        barge = self.caller.mix_in.take(size, keep=MIX_WAIT_SAMPLES) if self.caller.mix_in.queued else None
        if self.listen_for_agent_code or self.supervisors or barge is not None:
            pcm = self.codec.decode(payload)  # only when someone needs the samples
            if self.listen_for_agent_code:
                # The detector's clock is the agent's timeline, as the events' (one key, once).
                if gap:
                    self.audio.queue_agent(self, np.zeros(gap, dtype=np.int16))
                self.audio.queue_agent(self, pcm[skip:])
                if self.agent_keys.tracker is not None:
                    out.agent_keys += self.agent_keys.expire(1000.0 * timeline.next_position / SAMPLE_RATE)
            for supervisor in self.supervisors.values():
                supervisor.mix_in.add(pcm)
                self._send_if_main_stream_silent(supervisor, pcm.size, out)
            if barge is not None:
                payload = self.codec.encode(mix(pcm, barge)).tobytes()
        self._forward(self.caller, packet.payload_type, packet.marker, position, payload, out, samples=size)

    def _from_supervisor(self, leg: Leg, packet: RtpPacket, out: Received) -> None:
        if leg.mode != BARGE or packet.payload_type != self.codec.payload_type:
            self._drop("supervisor_not_barging" if leg.mode != BARGE else "supervisor_event")
            return
        pcm = self.codec.decode(packet.payload)
        self.caller.mix_in.add(pcm)
        self.agent.mix_in.add(pcm)
        self._send_if_main_stream_silent(self.agent, pcm.size, out)
        self._send_if_main_stream_silent(self.caller, pcm.size, out)

    # --- output -----------------------------------------------------------
    def _send_if_main_stream_silent(self, leg: Leg, count: int, out: Received) -> None:
        """Secondary audio just queued for the leg (`count` samples): it rides on the main stream
        while that flows (waiting at most MIX_WAIT_SAMPLES); once the main stream has sent nothing
        for MIX_STANDALONE_S it goes out on its own - what waited first, so nothing is lost."""
        main = leg.main_sent_at
        if main is not None and self.last_activity - main <= MIX_STANDALONE_S:
            return
        while leg.mix_in.queued >= count:
            self._send(leg, np.zeros(count, dtype=np.int16), None, False, out)

    def _send(
        self,
        leg: Leg,
        pcm: np.ndarray,
        payload: bytes | None,
        marker: bool,
        out: Received,
        position: int | None = None,
        late: bool = False,
    ) -> None:
        """Masked caller audio at `position` on the caller's timeline (None: secondary audio
        alone), with this leg's secondary audio mixed in, to one leg. Never before what the leg
        already heard: after audio sent alone (the caller was silent, or its packets late) it
        follows on, until the caller's timeline passes it again: no time counts twice. While the
        leg is ahead so, caller audio is dropped if `late` (speech held back when the caller's
        stream paused, out of its place by now), or if what the leg would hear is quiet while
        its stream is ahead of real time: the lead is paid back in the caller's quiet moments, a
        noisy line included, not only at its next pause. A key's flat tone is never quiet."""
        mix_in = leg.mix_in
        if mix_in.queued:
            # On the main stream, at most MIX_WAIT_SAMPLES stay queued: it flows, no backlog.
            other = mix_in.take(pcm.size, None if position is None else MIX_WAIT_SAMPLES)
            heard = mix(pcm, other)
            payload = self.codec.encode(heard).tobytes()
        else:
            heard = pcm
            if payload is None:
                payload = self.codec.encode(pcm).tobytes()
        now = self.last_activity
        if position is None:
            position = leg.out_position
        else:
            leg.main_sent_at = now
            if position < leg.out_position:
                if late or self._skippable(leg, heard):
                    leg.marker_pending = leg.marker_pending or marker
                    return
                position = leg.out_position
        if leg.marker_pending:
            marker, leg.marker_pending = True, False
        out.datagrams.append((leg, leg.outbound.packet(self.codec.payload_type, position, payload, marker, now)))
        leg.out_position = position + pcm.size

    def _forward(
        self,
        leg: Leg,
        payload_type: int,
        marker: bool,
        position: int,
        payload: bytes,
        out: Received,
        samples: int = 0,
    ) -> None:
        """Relay a packet with our own SSRC/sequence; timestamps keep the sender's
        spacing. Audio (`samples` > 0), and a new telephone-event, never start before
        what the leg already heard: after audio we sent on our own (a barging
        supervisor while the agent was silent, or the agent's packets late) the sender's
        timestamps are shifted past it. The shift is paid back, outside key presses, at the
        sender's next pause and by skipping its quiet audio, so the lead does not add up."""
        position += leg.forward_offset
        if samples:
            leg.main_sent_at = self.last_activity
            if position < leg.out_position:
                leg.forward_offset += leg.out_position - position
                position = leg.out_position
            elif leg.forward_offset and self._may_shift(leg):
                heard_until = max(leg.out_position, leg.event_until)  # a key sent as events only included
                if position > heard_until:  # the sender paused: part of the pause is the lead
                    lead = leg.outbound.lead(position, self.last_activity)
                    repaid = min(leg.forward_offset, position - heard_until, lead)
                    leg.forward_offset -= repaid
                    position -= repaid
                if leg.forward_offset >= samples and position >= heard_until and self._skippable(leg, payload):
                    leg.forward_offset -= samples
                    leg.marker_pending = leg.marker_pending or marker
                    return
            leg.out_position = leg.forwarded_until = position + samples
            if leg.marker_pending:
                marker, leg.marker_pending = True, False
        else:
            leg.event_forwarded_at = self.last_activity
            if marker and leg.forwarded_until < leg.out_position and position < leg.out_position:
                # A new telephone-event behind audio we sent on our own since this sender's last
                # audio (it was silent): it starts now, and the rest of its press with it.
                leg.forward_offset += leg.out_position - position
                position = leg.out_position
            if len(payload) >= 4:  # RFC 4733: the duration so far, in samples, from the event's start
                leg.event_until = max(leg.event_until, position + int.from_bytes(payload[2:4], "big"))
        data = leg.outbound.packet(payload_type, position, payload, marker, self.last_activity)
        out.datagrams.append((leg, data))

    def _skippable(self, leg: Leg, heard: np.ndarray | bytes) -> bool:
        """Audio (samples, or codes of the call's codec) the leg may miss to get back to real
        time: quiet, while its stream is ahead of real time (not merely of a source whose
        timeline lost time). The clock first: it is cheap, and nearly always says no."""
        if leg.outbound.lead(leg.out_position, self.last_activity) <= 0:
            return False
        return is_quiet(self.codec.decode(heard) if isinstance(heard, bytes) else heard)

    def _may_shift(self, leg: Leg) -> bool:
        """No telephone-event relayed to the leg lately: its packets all carry the timestamp
        of its start, so the shift must not change in the middle of one."""
        last_event = leg.event_forwarded_at
        return last_event is None or self.last_activity - last_event > EVENT_QUIET_S

    def sender_reports(self, now: float, wall_time: float) -> list[tuple[Leg, bytes]]:
        """RTCP reports every RTCP_INTERVAL_S to each leg (RFC 5761 muxed): an SR for
        our stream to it (an RR while we sent nothing), with a reception report
        block about its stream to us, and our CNAME."""
        reports = []
        for leg in self.legs:
            if (leg.outbound.packets or leg.stats) and now - leg.outbound.last_report >= RTCP_INTERVAL_S:
                leg.outbound.last_report = now
                reports.append((leg, self._report(leg, now, wall_time)))
        return reports

    def goodbye(self, leg: Leg, now: float, wall_time: float) -> bytes | None:
        """The last report to a leg that is going away, with an RTCP BYE (None: no stream either way)."""
        if not (leg.outbound.packets or leg.stats):
            return None
        return self._report(leg, now, wall_time, bye=True)

    def _report(self, leg: Leg, now: float, wall_time: float, bye: bool = False) -> bytes:
        stream = leg.outbound
        sender = None
        # An SR while we sent in the last two intervals (RFC 3550 6.4), its RTP time
        # carried on from the last packet to the instant of its NTP time.
        if stream.last_sent_at is not None and now - stream.last_sent_at < 2 * RTCP_INTERVAL_S:
            rtp_now = stream.last_timestamp + round((now - stream.last_sent_at) * SAMPLE_RATE)
            sender = SenderInfo(wall_time + NTP_EPOCH_OFFSET, rtp_now, stream.packets, stream.octets)
        blocks = (leg.stats.block(now),) if leg.stats is not None else ()
        return build_report(stream.ssrc, self.cname, sender, blocks, bye)

    def _drop(self, reason: str) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + 1
