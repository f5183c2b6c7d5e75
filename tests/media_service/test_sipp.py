"""A third-party RTP sender: SIPp plays its own RFC 2833 captures as the caller.

A SIPp UAS answers with SDP that points the media at the worker's caller port;
a SIPp UAC calls it and replays Debian's `dtmf_2833_<digit>.pcap` files there,
one per key, byte for byte as captured (one SSRC, each capture with its own
sequence numbers and timestamps - the worker must follow the restarts).
"""

from __future__ import annotations

import asyncio
import socket
import struct
import subprocess
from pathlib import Path

import pytest

from media.phones import Phones
from media.rfc4733 import parse_event
from media.rtp import parse_rtp
from media.softphone import silence_packets
from securepay.live import session_group
from tests.media_service.test_call_flow import link, start_call, wait_secure
from tests.support import missing, require_binary

SCENARIOS = Path(__file__).parent / "sipp"
CAPTURES = Path("/usr/share/sip-tester")
KEYS = "42019"  # distinct keys: a replayed capture repeats its RTP timestamp, which marks a duplicate press


def capture_rtp(path: Path) -> list[bytes]:
    """The UDP payloads of a classic pcap of Ethernet/IPv4/UDP packets."""
    data = path.read_bytes()
    assert struct.unpack_from("<I", data)[0] == 0xA1B2C3D4 and struct.unpack_from("<I", data, 20)[0] == 1
    offset, payloads = 24, []
    while offset < len(data):
        length = struct.unpack_from("<I", data, offset + 8)[0]
        frame = data[offset + 16 : offset + 16 + length]
        ip_header = (frame[14] & 0x0F) * 4
        payloads.append(frame[14 + ip_header + 8 :])
        offset += 16 + length
    return payloads


def capture_digits(path: Path) -> set[str]:
    """The keys a capture carries, read with our own RFC 4733 parser."""
    return {event.digit for payload in capture_rtp(path) for event in parse_event(parse_rtp(payload).payload)}


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_sipp_playing_rfc2833_captures_keys_the_card(media_worker, alpha, session, listen, tmp_path):
    sipp = require_binary("sipp")
    captures = [CAPTURES / f"dtmf_2833_{key}.pcap" for key in KEYS]
    if not all(path.exists() for path in captures):
        missing(f"SIPp's DTMF captures in {CAPTURES} (apt-get install sip-tester)")
    assert [capture_digits(path) for path in captures] == [{key} for key in KEYS]

    pages = listen(session_group(session.pk))
    call = start_call(alpha, media_worker)
    link(alpha, call, session.code)
    wait_secure(pages, "secured")
    scenario = (SCENARIOS / "call_and_key.xml").read_text()
    plays = "\n".join(
        f'  <nop><action><exec play_pcap_audio="{path}"/></action></nop>\n  <pause milliseconds="350"/>'
        for path in captures
    )
    (tmp_path / "call_and_key.xml").write_text(scenario.replace("  <!-- KEYS -->", plays))
    uas_port, uac_port = free_udp_port(), free_udp_port()
    common = ["-i", "127.0.0.1", "-m", "1", "-nostdin", "-timeout", "20s", "-timeout_error"]
    uas = subprocess.Popen(
        [sipp, "-sf", str(SCENARIOS / "answer_to_worker.xml"), "-p", str(uas_port),
         "-key", "worker_port", str(call["caller_port"]), *common],
        cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    agent = Phones(["agent"])  # the agent's handset: up, latched by the worker, listening
    agent_port = (call["host"], call["agent_port"])
    asyncio.run(agent.play([(at, "agent", data, agent_port) for at, data in silence_packets(0.1)]))
    try:
        uac = subprocess.run(
            [sipp, f"127.0.0.1:{uas_port}", "-sf", str(tmp_path / "call_and_key.xml"), "-p", str(uac_port),
             "-mi", "127.0.0.1", "-mp", str(free_udp_port()), *common],
            cwd=tmp_path, capture_output=True, timeout=30,
        )  # fmt: skip
        assert uac.returncode == 0, uac.stdout[-2000:]
        assert uas.wait(10) == 0, uas.stderr.read()[-2000:]
    finally:
        if uas.poll() is None:
            uas.kill()
            uas.wait()
        uas.stderr.close()
    state = pages.wait_for(lambda m: m.get("type") == "card.state" and m["fields"]["pan"]["length"] == len(KEYS))
    assert state["active"] == "pan" and state["brand"] == "visa"  # 5 digits, the first a 4, in the number
    assert state["rejected_keys"] == 0
    agent.drain()
    agent.close()
    event_pt = call["event_payload_type"]
    assert not [data for _at, data in agent.received["agent"] if data[1] & 0x7F == event_pt]
