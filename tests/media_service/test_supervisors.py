"""Supervisor legs on real sockets (DESIGN.md "Telephony rules"): what each party hears."""

from __future__ import annotations

import numpy as np
import pytest

from media.calls import CODECS
from media.dtmf import SAMPLE_RATE
from media.softphone import FRAME, RtpStream
from securepay.live import session_group
from tests.media_service.conftest import wait_until
from tests.media_service.test_call_flow import api, link, multimon_digits, play, start_call, wait_secure
from tests.support import udp_port_bound

FLAT_TONE_HZ = 1000  # media.masker's default flat tone
AGENT_VOICE_HZ = 440


def add_supervisor(world, call: dict, name: str, mode: str) -> int:
    response = api(world, "post", f"/api/v1/calls/{call['id']}/supervisors/", {"name": name, "mode": mode})
    assert response.status_code == 201, response.content
    port = response.json()["port"]
    wait_until(lambda: udp_port_bound(port), what="supervisor port bound")
    return port


def band_share(samples: np.ndarray, hz: float, width: float = 30.0) -> float:
    """Share of the signal's energy within `width` Hz of `hz`."""
    spectrum = np.abs(np.fft.rfft(samples.astype(float))) ** 2
    freqs = np.fft.rfftfreq(samples.size, 1 / SAMPLE_RATE)
    return float(spectrum[np.abs(freqs - hz) < width].sum() / max(spectrum.sum(), 1e-9))


def agent_voice(duration_s: float) -> tuple[list[tuple[float, bytes]], np.ndarray]:
    """The agent talking (a 440 Hz tone stands in for speech) as PCMU RTP, and the G.711 audio sent."""
    count = int(duration_s * SAMPLE_RATE) // FRAME
    n = np.arange(count * FRAME)
    pcm = np.round(6000 * np.sin(2 * np.pi * AGENT_VOICE_HZ * n / SAMPLE_RATE)).astype(np.int16)
    codec = CODECS["PCMU"]
    sent = codec.decode(codec.encode(pcm).tobytes())
    stream = RtpStream()
    packets = [
        (i * FRAME / SAMPLE_RATE, stream.packet(0, i * FRAME, codec.encode(pcm[i * FRAME : (i + 1) * FRAME]).tobytes()))
        for i in range(count)
    ]
    return packets, sent


@pytest.mark.slow
def test_supervisor_monitoring_before_the_session_hears_flat_tones(media_worker, alpha, session, listen, tmp_path):
    pages = listen(session_group(session.pk))
    call = start_call(alpha, media_worker)
    port = add_supervisor(alpha, call, "sue", "monitor")
    link(alpha, call, session.code)
    wait_secure(pages, "secured")

    phones = play(call, extra_legs={"sue": port})

    state = pages.wait_for(lambda m: m.get("type") == "card.state" and m["ready"], timeout=8)
    assert state["fields"]["pan"]["length"] == 16
    heard = phones.audio("sue")
    assert multimon_digits(heard, tmp_path, "supervisor") == ""
    assert band_share(heard, FLAT_TONE_HZ) > 0.5, "the supervisor hears a flat tone for each key"
    assert not any(m.get("secure_state") == "unsecured" for _t, m in pages.messages), "monitoring breaks nothing"


@pytest.mark.slow
def test_supervisor_barging_during_the_session_hears_nothing_of_the_caller(
    media_worker, alpha, session, listen, tmp_path
):
    pages = listen(session_group(session.pk))
    call = start_call(alpha, media_worker)
    link(alpha, call, session.code)
    wait_secure(pages, "secured")
    port = add_supervisor(alpha, call, "boss", "barge")
    wait_secure(pages, "unsecured", "barge")

    voice, voice_audio = agent_voice(3.0)
    phones = play(call, "123456", extra_legs={"boss": port}, leg_packets={"agent": voice})

    boss = phones.audio("boss")
    assert boss.size > SAMPLE_RATE
    assert multimon_digits(boss, tmp_path, "boss") == ""
    assert band_share(boss, FLAT_TONE_HZ) < 0.01, "not even the flat tones: nothing from the caller"
    assert band_share(boss, AGENT_VOICE_HZ) > 0.9, "the supervisor hears the agent"
    # The agent is unaffected: flat tones instead of digits.
    agent = phones.audio("agent")
    assert multimon_digits(agent, tmp_path, "agent") == "" and band_share(agent, FLAT_TONE_HZ) > 0.5
    # The caller is unaffected: the agent's audio arrives unchanged (a silent supervisor adds nothing).
    caller = phones.audio("caller")
    assert caller.size >= voice_audio.size - FRAME
    assert np.array_equal(caller[: voice_audio.size], voice_audio[: caller.size])
