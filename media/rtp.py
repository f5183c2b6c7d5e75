"""RTP (RFC 3550) and RTCP packets: parse, validate, build. Pure: no sockets.

RTP and RTCP may share one port (RFC 5761 multiplexing): `is_rtcp` tells them
apart by the second byte (RTCP packet types 192-223 sit where RTP would carry a
marker bit plus payload types 64-95, which no audio profile uses).

Every problem with an incoming datagram raises `MalformedPacket` with a short
machine-readable `reason`, so the relay can count drops per reason and never
crash on what a peer sends.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field, replace

RTP_VERSION = 2
RTP_HEADER = struct.Struct("!BBHII")
RTCP_HEADER = struct.Struct("!BBH")
MAX_DATAGRAM = 1500  # larger than an Ethernet MTU: not audio we relay
RTCP_SR = 200
RTCP_RR = 201
RTCP_SDES = 202
RTCP_BYE = 203
SDES_CNAME = 1


class MalformedPacket(ValueError):
    """A datagram that is not a valid RTP/RTCP packet; `reason` is a short code."""

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        super().__init__(f"{reason}: {detail}" if detail else reason)


@dataclass(slots=True)  # not frozen: a frozen dataclass costs ~0.7 us more per packet; never mutated
class RtpPacket:
    payload_type: int
    sequence: int
    timestamp: int
    ssrc: int
    payload: bytes
    marker: bool = False
    csrcs: tuple[int, ...] = ()
    extension: tuple[int, bytes] | None = None  # (profile-defined id, data of 4-byte words)
    padding: int = 0  # padding bytes to add when building (not part of payload)

    def with_header(self, **changes) -> RtpPacket:
        return replace(self, **changes)

    def build(self) -> bytes:
        return build_rtp(self)


def is_rtcp(data: bytes) -> bool:
    return len(data) >= 2 and 192 <= data[1] <= 223


def parse_rtp(data: bytes) -> RtpPacket:
    """Parse one RTP packet; raises MalformedPacket (reason: short, oversized,
    version, csrc, extension, padding)."""
    size = len(data)
    if size > MAX_DATAGRAM:
        raise MalformedPacket("oversized", f"{size} bytes")
    if size < RTP_HEADER.size:
        raise MalformedPacket("short", f"{size} bytes")
    first, second, sequence, timestamp, ssrc = RTP_HEADER.unpack_from(data)
    if first == 0x80:  # version 2, no padding, extension or CSRC: nearly every packet
        return RtpPacket(second & 0x7F, sequence, timestamp, ssrc, bytes(data[12:]), bool(second & 0x80))
    if first >> 6 != RTP_VERSION:
        raise MalformedPacket("version", f"version {first >> 6}")
    offset = RTP_HEADER.size
    csrc_count = first & 0x0F
    if size < offset + 4 * csrc_count:
        raise MalformedPacket("csrc", f"{csrc_count} CSRCs do not fit in {size} bytes")
    csrcs = struct.unpack_from(f"!{csrc_count}I", data, offset)
    offset += 4 * csrc_count
    extension = None
    if first & 0x10:
        if size < offset + 4:
            raise MalformedPacket("extension", "extension header cut short")
        profile, words = struct.unpack_from("!HH", data, offset)
        offset += 4
        if size < offset + 4 * words:
            raise MalformedPacket("extension", f"{words} extension words do not fit")
        extension = (profile, bytes(data[offset : offset + 4 * words]))
        offset += 4 * words
    end = size
    padding = 0
    if first & 0x20:
        padding = data[-1]
        if padding == 0 or offset + padding > size:
            raise MalformedPacket("padding", f"padding count {padding}")
        end -= padding
    return RtpPacket(
        payload_type=second & 0x7F,
        sequence=sequence,
        timestamp=timestamp,
        ssrc=ssrc,
        payload=bytes(data[offset:end]),
        marker=bool(second & 0x80),
        csrcs=tuple(csrcs),
        extension=extension,
        padding=padding,
    )


def build_rtp(packet: RtpPacket) -> bytes:
    if not 0 <= packet.payload_type <= 127:
        raise ValueError(f"payload type {packet.payload_type} out of range")
    if len(packet.csrcs) > 15:
        raise ValueError("at most 15 CSRCs")
    first = (RTP_VERSION << 6) | len(packet.csrcs)
    if packet.padding:
        first |= 0x20
    if packet.extension is not None:
        first |= 0x10
    parts = [
        RTP_HEADER.pack(
            first,
            (0x80 if packet.marker else 0) | packet.payload_type,
            packet.sequence & 0xFFFF,
            packet.timestamp & 0xFFFFFFFF,
            packet.ssrc & 0xFFFFFFFF,
        )
    ]
    parts.extend(struct.pack("!I", csrc) for csrc in packet.csrcs)
    if packet.extension is not None:
        profile, data = packet.extension
        if len(data) % 4:
            raise ValueError("extension data must be whole 4-byte words")
        parts.append(struct.pack("!HH", profile, len(data) // 4) + data)
    parts.append(packet.payload)
    if packet.padding:
        parts.append(bytes(packet.padding - 1) + bytes([packet.padding]))
    return b"".join(parts)


@dataclass(frozen=True)
class RtcpPacket:
    """One packet of an RTCP compound datagram (header fields + raw body)."""

    packet_type: int
    count: int
    body: bytes = field(repr=False)

    @property
    def sender_ssrc(self) -> int | None:
        return struct.unpack_from("!I", self.body)[0] if len(self.body) >= 4 else None


def parse_rtcp(data: bytes) -> list[RtcpPacket]:
    """Parse a compound RTCP datagram; raises MalformedPacket (short, oversized,
    version, length)."""
    size = len(data)
    if size > MAX_DATAGRAM:
        raise MalformedPacket("oversized", f"{size} bytes")
    packets = []
    offset = 0
    while offset < size:
        if size - offset < 4:
            raise MalformedPacket("short", "RTCP header cut short")
        first, packet_type, length_words = RTCP_HEADER.unpack_from(data, offset)
        if first >> 6 != RTP_VERSION:
            raise MalformedPacket("version", f"version {first >> 6}")
        end = offset + 4 * (length_words + 1)
        if end > size:
            raise MalformedPacket("length", f"RTCP length {length_words} beyond datagram")
        packets.append(RtcpPacket(packet_type, first & 0x1F, bytes(data[offset + 4 : end])))
        offset = end
    if not packets:
        raise MalformedPacket("short", "empty datagram")
    return packets


@dataclass(frozen=True)
class SenderInfo:
    """The sender-info part of an SR: the stream's wallclock/RTP time pair and counts."""

    ntp_seconds: float
    rtp_timestamp: int
    packets: int
    octets: int


@dataclass(frozen=True)
class ReportBlock:
    """One reception report block (RFC 3550 6.4.1) about a stream we receive."""

    ssrc: int
    fraction_lost: int  # 8-bit fixed point
    cumulative_lost: int  # 24-bit signed (duplicates can make it negative)
    highest_sequence: int  # extended: cycles << 16 | highest sequence number
    jitter: int  # timestamp units
    last_sr: int  # middle 32 bits of the NTP time of the last SR received, 0 if none
    delay_since_last_sr: int  # 1/65536 s since that SR arrived, 0 if none

    def pack(self) -> bytes:
        lost = max(-(1 << 23), min((1 << 23) - 1, self.cumulative_lost)) & 0xFFFFFF
        return struct.pack(
            "!IIIIII",
            self.ssrc & 0xFFFFFFFF,
            (self.fraction_lost & 0xFF) << 24 | lost,
            self.highest_sequence & 0xFFFFFFFF,
            self.jitter & 0xFFFFFFFF,
            self.last_sr & 0xFFFFFFFF,
            self.delay_since_last_sr & 0xFFFFFFFF,
        )

    @classmethod
    def unpack(cls, data: bytes, offset: int = 0) -> ReportBlock:
        ssrc, lost, highest, jitter, last_sr, delay = struct.unpack_from("!IIIIII", data, offset)
        cumulative = lost & 0xFFFFFF
        if cumulative & 0x800000:
            cumulative -= 1 << 24
        return cls(ssrc, lost >> 24, cumulative, highest, jitter, last_sr, delay)


MAX_DROPOUT = 3000  # RFC 3550 A.1: a jump ahead of at most this many packets is loss
MAX_MISORDER = 100  # ... and this far behind, a late or duplicate packet


class ReceptionStats:
    """What arrived of one inbound RTP stream, for its reception report block:
    the extended highest sequence number and loss of RFC 3550 A.1/A.3 and the
    interarrival jitter of A.8 (audio packets only: a telephone-event repeats
    its start timestamp, which is not a sampling instant)."""

    __slots__ = (
        "ssrc", "base_sequence", "max_sequence", "cycles", "received", "jitter",
        "_expected_prior", "_received_prior", "_transit", "_bad_sequence", "_last_sr", "_last_sr_arrival",
    )  # fmt: skip

    def __init__(self, ssrc: int, sequence: int) -> None:
        self.ssrc = ssrc
        self._restart(sequence)
        self.jitter = 0.0
        self._last_sr: int = 0
        self._last_sr_arrival: float | None = None

    def _restart(self, sequence: int) -> None:
        self.base_sequence = self.max_sequence = sequence
        self.cycles = 0
        self.received = 0
        self._expected_prior = self._received_prior = 0
        self._transit: int | None = None
        self._bad_sequence: int | None = None

    def packet(self, sequence: int, timestamp: int, arrival: float | None, rate: int) -> None:
        """One packet of the stream; arrival in seconds (None: not audio, no jitter sample).
        Runs for every packet: kept to plain arithmetic."""
        delta = (sequence - self.max_sequence) & 0xFFFF
        if delta < MAX_DROPOUT:
            if sequence < self.max_sequence:
                self.cycles += 1 << 16  # wrapped
            self.max_sequence = sequence
        elif delta <= (1 << 16) - MAX_MISORDER:
            # A big jump: the sender restarted, if the next packet follows this one.
            if sequence != self._bad_sequence:
                self._bad_sequence = (sequence + 1) & 0xFFFF
                return
            self._restart(sequence)
        self.received += 1
        if arrival is not None:
            # Transit times and their change in 32-bit arithmetic, as RFC 3550 A.8's C:
            # a timestamp wrapping inside the stream is no jump in transit.
            transit = (round(arrival * rate) - timestamp) & 0xFFFFFFFF
            previous, self._transit = self._transit, transit
            if previous is not None:
                change = (transit - previous) & 0xFFFFFFFF
                if change & 0x80000000:
                    change = 0x100000000 - change
                self.jitter += (change - self.jitter) / 16

    def sender_report(self, ntp_whole: int, ntp_fraction: int, arrival: float) -> None:
        """The sender's own SR arrived: echoed in our next block (round-trip time)."""
        self._last_sr = (ntp_whole & 0xFFFF) << 16 | ntp_fraction >> 16
        self._last_sr_arrival = arrival

    def block(self, now: float) -> ReportBlock:
        """The report block as of now; starts the next loss interval."""
        highest = self.cycles + self.max_sequence
        expected = highest - self.base_sequence + 1
        expected_interval = expected - self._expected_prior
        lost_interval = expected_interval - (self.received - self._received_prior)
        self._expected_prior, self._received_prior = expected, self.received
        fraction = (lost_interval << 8) // expected_interval if expected_interval > 0 and lost_interval > 0 else 0
        delay = 0
        if self._last_sr_arrival is not None:
            delay = int(max(0.0, now - self._last_sr_arrival) * 65536)
        return ReportBlock(
            self.ssrc,
            min(fraction, 255),
            expected - self.received,
            highest,
            int(self.jitter),
            self._last_sr,
            delay,
        )


def ntp_time(ntp_seconds: float) -> tuple[int, int]:
    """NTP seconds as (whole seconds mod 2**32, 32-bit fraction)."""
    whole = int(ntp_seconds)
    return whole & 0xFFFFFFFF, int((ntp_seconds - whole) * 2**32) & 0xFFFFFFFF


def parse_sender_info(packet: RtcpPacket) -> tuple[int, int, int]:
    """(sender SSRC, NTP whole seconds, NTP fraction) of an SR; raises MalformedPacket."""
    if packet.packet_type != RTCP_SR or len(packet.body) < 24 + 24 * packet.count:
        raise MalformedPacket("short", "sender report cut short")
    ssrc, whole, fraction = struct.unpack_from("!III", packet.body)
    return ssrc, whole, fraction


def build_report(
    ssrc: int,
    cname: str,
    sender: SenderInfo | None = None,
    blocks: tuple[ReportBlock, ...] = (),
    bye: bool = False,
) -> bytes:
    """A compound RTCP packet (RFC 3550 6.1): an SR (we sent media: `sender`)
    or an RR, with reception report blocks, then an SDES with our CNAME, then
    a BYE when the stream ends."""
    if len(blocks) > 31:
        raise ValueError("at most 31 report blocks")
    body = struct.pack("!I", ssrc & 0xFFFFFFFF)
    if sender is not None:
        whole, fraction = ntp_time(sender.ntp_seconds)
        body += struct.pack(
            "!IIIII",
            whole,
            fraction,
            sender.rtp_timestamp & 0xFFFFFFFF,
            sender.packets & 0xFFFFFFFF,
            sender.octets & 0xFFFFFFFF,
        )
    body += b"".join(block.pack() for block in blocks)
    packet_type = RTCP_SR if sender is not None else RTCP_RR
    parts = [RTCP_HEADER.pack(RTP_VERSION << 6 | len(blocks), packet_type, len(body) // 4) + body]
    name = cname.encode()
    if not 0 < len(name) <= 255:
        raise ValueError("a CNAME is 1-255 bytes")
    item = struct.pack("!IBB", ssrc & 0xFFFFFFFF, SDES_CNAME, len(name)) + name
    item += bytes(4 - len(item) % 4)  # the item list ends with a null octet, padded to 32 bits
    parts.append(RTCP_HEADER.pack(RTP_VERSION << 6 | 1, RTCP_SDES, len(item) // 4) + item)
    if bye:
        parts.append(RTCP_HEADER.pack(RTP_VERSION << 6 | 1, RTCP_BYE, 1) + struct.pack("!I", ssrc & 0xFFFFFFFF))
    return b"".join(parts)
