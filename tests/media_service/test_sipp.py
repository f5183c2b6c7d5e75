"""A third-party RTP sender: SIPp plays RFC 2833 captures as the caller.

A SIPp UAS answers with SDP that points the media at the worker's caller port;
a SIPp UAC calls it and replays pcap files there:

* Debian's `dtmf_2833_<digit>.pcap` files, one per key, byte for byte as
  captured (one SSRC, each capture with its own sequence numbers and
  timestamps - the worker must follow the restarts). Telephone-events only.
* A whole card as a gateway sends it: an audio stream (PCMU, the captures'
  SSRC) with each key's captured telephone-event payloads, byte for byte and
  at their captured pace, stamped at the audio's position when the key goes
  down. Only this way can a card be keyed: a capture replayed as it is
  repeats its RTP timestamp, which RFC 4733 makes a retransmission of the same
  press (so a card number, which repeats digits, cannot be keyed from them).
"""

from __future__ import annotations

import asyncio
import socket
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest

from media.calls import CODECS
from media.dtmf import SAMPLE_RATE
from media.phones import Phones
from media.rfc4733 import parse_event
from media.rtp import RtpPacket, is_rtcp, parse_rtp
from media.softphone import FRAME, silence_packets
from securepay.live import session_group
from tests.media.signals import FLAT_TONE_HZ, band_share
from tests.media_service.test_call_flow import link, start_call, wait_secure
from tests.support import missing, require_binary

SCENARIOS = Path(__file__).parent / "sipp"
CAPTURES = Path("/usr/share/sip-tester")
KEYS = "42019"  # distinct keys: a replayed capture repeats its RTP timestamp, which marks a duplicate press
CARD = "4242424242424242" + "1228" + "123"  # number, expiry (MMYY), CVV
KEY_SPACING_S = 0.36  # the captured presses last 280 ms (RTP time): each key clear of the one before
LEAD_S, TAIL_S = 0.3, 0.5


def capture_path(key: str) -> Path:
    name = {"#": "pound", "*": "star"}.get(key, key)
    return CAPTURES / f"dtmf_2833_{name}.pcap"


def capture_rtp(path: Path) -> list[tuple[float, bytes]]:
    """(capture time in s, UDP payload) of each packet of a classic pcap of Ethernet/IPv4/UDP packets."""
    data = path.read_bytes()
    assert struct.unpack_from("<I", data)[0] == 0xA1B2C3D4 and struct.unpack_from("<I", data, 20)[0] == 1
    offset, packets = 24, []
    while offset < len(data):
        seconds, micros, length = struct.unpack_from("<III", data, offset)
        frame = data[offset + 16 : offset + 16 + length]
        ip_header = (frame[14] & 0x0F) * 4
        packets.append((seconds + micros / 1e6, frame[14 + ip_header + 8 :]))
        offset += 16 + length
    return packets


def write_pcap(path: Path, packets: list[tuple[float, bytes]]) -> None:
    """A classic pcap of Ethernet/IPv4/UDP packets (SIPp rewrites the addresses and ports as it sends)."""
    out = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)]
    for at, payload in packets:
        udp = struct.pack("!HHHH", 40000, 10000, 8 + len(payload), 0) + payload
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0, bytes([127, 0, 0, 1]), bytes(4))
        frame = bytes(12) + b"\x08\x00" + ip + udp
        out.append(struct.pack("<IIII", int(at), round(at % 1 * 1e6), len(frame), len(frame)) + frame)
    path.write_bytes(b"".join(out))


def capture_digits(path: Path) -> set[str]:
    """The keys a capture carries, read with our own RFC 4733 parser."""
    return {event.digit for _at, payload in capture_rtp(path) for event in parse_event(parse_rtp(payload).payload)}


def captures_for(keys: str) -> dict[str, Path]:
    paths = {key: capture_path(key) for key in keys}
    if not all(path.exists() for path in paths.values()):
        missing(f"SIPp's DTMF captures in {CAPTURES} (apt-get install sip-tester)")
    assert {key: capture_digits(path) for key, path in paths.items()} == {key: {key} for key in keys}
    return paths


def keyed_audio_stream(keys: str, captures: dict[str, Path]) -> tuple[list[tuple[float, bytes]], int]:
    """(send time, datagram) of a gateway's stream keying `keys`, and its audio length in samples:
    20 ms PCMU packets of silence from LEAD_S before the first key to TAIL_S after the last; each
    key's captured telephone-event packets go at their captured pace from its KEY_SPACING_S slot,
    with the same payloads (and the same retransmitted end packets), re-stamped with the audio's
    timestamp at the slot and the stream's next sequence numbers, as the sender's own packets."""
    events = {key: [(at, parse_rtp(data)) for at, data in capture_rtp(path)] for key, path in captures.items()}
    ssrc = next(iter(events.values()))[0][1].ssrc
    samples = round((LEAD_S + len(keys) * KEY_SPACING_S + TAIL_S) * SAMPLE_RATE) // FRAME * FRAME
    silence = CODECS["PCMU"].encode(np.zeros(FRAME, dtype=np.int16)).tobytes()
    # (send time, what the packet is: a capture's packet repeats under the same name, packet)
    planned = [
        (start / SAMPLE_RATE, ("audio", start), RtpPacket(0, 0, start, ssrc, silence, start == 0))
        for start in range(0, samples, FRAME)
    ]
    for n, key in enumerate(keys):
        slot = LEAD_S + n * KEY_SPACING_S
        first_at = events[key][0][0]
        for at, packet in events[key]:
            restamped = packet.with_header(timestamp=round(slot * SAMPLE_RATE))
            planned.append((slot + at - first_at, ("event", n, packet.sequence), restamped))
    planned.sort(key=lambda item: item[0])  # stable: audio before an event sent at the same instant
    sequences: dict[tuple, int] = {}
    stream = []
    for at, name, packet in planned:
        sequence = sequences.setdefault(name, len(sequences))
        stream.append((at, packet.with_header(sequence=sequence).build()))
    return stream, samples


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def sipp_calls_the_worker(call: dict, plays: list[tuple[Path, int]], tmp_path: Path) -> Phones:
    """SIPp calls the worker's caller port and plays each (pcap, pause ms after it) in turn;
    meanwhile the agent's handset (latched by the worker first) sends silence and records."""
    sipp = require_binary("sipp")
    scenario = (SCENARIOS / "call_and_key.xml").read_text()
    keyed = "\n".join(
        f'  <nop><action><exec play_pcap_audio="{path}"/></action></nop>\n  <pause milliseconds="{pause_ms}"/>'
        for path, pause_ms in plays
    )
    (tmp_path / "call_and_key.xml").write_text(scenario.replace("  <!-- KEYS -->", keyed))
    uas_port, uac_port = free_udp_port(), free_udp_port()
    common = ["-i", "127.0.0.1", "-m", "1", "-nostdin", "-timeout", "30s", "-timeout_error"]
    agent = Phones(["agent"])
    agent_at = (call["host"], call["agent_port"])
    asyncio.run(agent.play([(at, "agent", data, agent_at) for at, data in silence_packets(0.1)], linger_s=0.05))
    uas = subprocess.Popen(
        [sipp, "-sf", str(SCENARIOS / "answer_to_worker.xml"), "-p", str(uas_port),
         "-key", "worker_port", str(call["caller_port"]), *common],
        cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    uac_log = tmp_path / "uac.log"  # a file, not a pipe: nobody reads SIPp's screens while the agent plays
    with uac_log.open("wb") as log:
        uac = subprocess.Popen(
            [sipp, f"127.0.0.1:{uas_port}", "-sf", str(tmp_path / "call_and_key.xml"), "-p", str(uac_port),
             "-mi", "127.0.0.1", "-mp", str(free_udp_port()), *common],
            cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        # The agent talks (silence) and listens for as long as the caller keys.
        talking = silence_packets(sum(pause_ms for _path, pause_ms in plays) / 1000 + 0.5)
        asyncio.run(agent.play([(at, "agent", data, agent_at) for at, data in talking]))
        assert uac.wait(30) == 0, uac_log.read_text(errors="replace")[-2000:]
        assert uas.wait(10) == 0, uas.stderr.read()[-2000:]
    finally:
        for sipp_process in (uac, uas):
            if sipp_process.poll() is None:
                sipp_process.kill()
                sipp_process.wait()
        uas.stderr.close()
        agent.drain()
        agent.close()
    return agent


def agent_rtp(agent: Phones) -> list[RtpPacket]:
    return [parse_rtp(data) for _at, data in agent.received["agent"] if not is_rtcp(data)]


def tone_bursts(samples: np.ndarray, hz: float, ms: float = 10.0) -> int:
    """How many separate bursts of a tone at `hz` the audio holds (looked at in `ms` windows)."""
    size = int(ms * SAMPLE_RATE / 1000)
    windows = samples[: samples.size // size * size].reshape(-1, size)
    loud = np.sqrt((windows.astype(float) ** 2).mean(axis=1)) > 300
    on = loud & (np.array([band_share(window, hz, width=150) for window in windows]) > 0.8)
    return int(on[0]) + int(np.count_nonzero(on[1:] & ~on[:-1]))


@pytest.mark.slow
def test_sipp_playing_rfc2833_captures_keys_the_card(media_worker, alpha, session, listen, tmp_path):
    captures = captures_for(KEYS)
    pages = listen(session_group(session.pk))
    call = start_call(alpha, media_worker)
    link(alpha, call, session.code)
    wait_secure(pages, "secured")

    agent = sipp_calls_the_worker(call, [(captures[key], 350) for key in KEYS], tmp_path)

    state = pages.wait_for(lambda m: m.get("type") == "card.state" and m["fields"]["pan"]["length"] == len(KEYS))
    assert state["active"] == "pan" and state["brand"] == "visa"  # 5 digits, the first a 4, in the number
    assert state["rejected_keys"] == 0
    # SIPp sends these captures' telephone-events and no audio: the masker has no caller audio
    # to send the agent (the flat tones ride on the caller's audio), so the agent's phone gets
    # our RTCP reports and no RTP at all - a relayed telephone-event would show here.
    assert agent.received["agent"], "the agent's phone heard from the worker (its RTCP)"
    assert agent_rtp(agent) == []


@pytest.mark.slow
def test_sipp_keys_a_whole_card_with_captured_events_in_an_audio_stream(media_worker, alpha, session, listen, tmp_path):
    pages = listen(session_group(session.pk))
    call = start_call(alpha, media_worker)
    stream, samples = keyed_audio_stream(CARD, captures_for(set(CARD)))
    assert {parse_rtp(data).payload_type for _at, data in stream} == {0, call["event_payload_type"]}
    pcap = tmp_path / "card.pcap"
    write_pcap(pcap, stream)
    link(alpha, call, session.code)
    wait_secure(pages, "secured")

    agent = sipp_calls_the_worker(call, [(pcap, round(1000 * samples / SAMPLE_RATE) + 200)], tmp_path)

    state = pages.wait_for(lambda m: m.get("type") == "card.state" and m["ready"])
    assert state["fields"]["pan"] == {"length": 16, "complete": True, "valid": True, "hint": None}
    assert state["fields"]["expiry"]["length"] == 4 and state["fields"]["cvv"]["length"] == 3
    assert state["brand"] == "visa" and state["rejected_keys"] == 0
    # The agent got the caller's audio (masked): PCMU only, no telephone-event among it ...
    relayed = agent_rtp(agent)
    assert {packet.payload_type for packet in relayed} == {0}, "telephone-events must not reach the agent"
    heard = agent.audio("agent")
    assert heard.size >= 0.8 * samples
    # ... and in it one flat tone for each key the events carried (the audio itself was silent).
    assert tone_bursts(heard, FLAT_TONE_HZ) == len(CARD)
