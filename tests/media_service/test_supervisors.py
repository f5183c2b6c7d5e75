"""Supervisor legs on real sockets (DESIGN.md "Telephony rules"): what each party hears."""

from __future__ import annotations

import numpy as np
import pytest

from media.calls import CODECS
from media.dtmf import SAMPLE_RATE
from media.rtp import RTCP_BYE, is_rtcp, parse_rtcp
from media.softphone import FRAME, RtpStream, caller_packets
from securepay.live import session_group
from securepay.models import PaymentSession
from tests.media.signals import FLAT_TONE_HZ, assert_no_digit_heard, band_share
from tests.media_service.conftest import wait_until
from tests.media_service.test_call_flow import (
    CARD_KEYS,
    add_supervisor,
    api,
    event,
    link,
    play,
    start_call,
    wait_secure,
)
from tests.support import udp_port_bound

AGENT_VOICE_HZ = 440


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


def assert_agent_and_caller_unaffected(phones, keys: str, voice_audio: np.ndarray) -> None:
    """What a supervisor does changes nothing for them: the agent hears flat tones for the
    caller's keys, the caller hears the agent's audio unchanged (a silent supervisor adds nothing)."""
    agent = phones.audio("agent")
    assert_no_digit_heard(agent, caller_packets(keys)[1], keys)
    assert band_share(agent, FLAT_TONE_HZ) > 0.5
    caller = phones.audio("caller")
    assert caller.size >= voice_audio.size - FRAME
    assert np.array_equal(caller[: voice_audio.size], voice_audio[: caller.size])


def forget_what_was_heard(phones) -> None:
    """From here on each phone's recording holds only what comes next."""
    phones.drain()
    for datagrams in phones.received.values():
        datagrams.clear()


def sue_monitoring_a_secured_call(media_worker, world, session, listen):
    """A secured call the caller keyed "12" on while supervisor sue monitored it (she heard the
    flat tones); her recording is emptied. Returns (the session's pages, call, her port, phones)."""
    pages = listen(session_group(session.pk))
    call = start_call(world, media_worker)
    port = add_supervisor(world, call, "sue", "monitor")
    link(world, call, session.code)
    wait_secure(pages, "secured")
    phones = play(call, "12", extra_legs={"sue": port})
    assert band_share(phones.audio("sue"), FLAT_TONE_HZ) > 0.5, "monitoring, she hears the caller's flat tones"
    forget_what_was_heard(phones)
    return pages, call, port, phones


@pytest.mark.slow
def test_supervisor_monitoring_before_the_session_hears_flat_tones(media_worker, alpha, session, listen):
    pages = listen(session_group(session.pk))
    call = start_call(alpha, media_worker)
    port = add_supervisor(alpha, call, "sue", "monitor")
    link(alpha, call, session.code)
    wait_secure(pages, "secured")

    phones = play(call, extra_legs={"sue": port})

    state = pages.wait_for(lambda m: m.get("type") == "card.state" and m["ready"], timeout=8)
    assert state["fields"]["pan"]["length"] == 16
    heard = phones.audio("sue")
    assert_no_digit_heard(heard, caller_packets(CARD_KEYS)[1], CARD_KEYS)
    assert band_share(heard, FLAT_TONE_HZ) > 0.5, "the supervisor hears a flat tone for each key"
    assert not any(m.get("secure_state") == "unsecured" for _t, m in pages.messages), "monitoring breaks nothing"


@pytest.mark.slow
def test_supervisor_barging_during_the_session_hears_nothing_of_the_caller(media_worker, alpha, session, listen):
    pages = listen(session_group(session.pk))
    call = start_call(alpha, media_worker)
    link(alpha, call, session.code)
    wait_secure(pages, "secured")
    port = add_supervisor(alpha, call, "boss", "barge")
    wait_secure(pages, "unsecured", "barge")

    voice, voice_audio = agent_voice(3.0)
    phones = play(call, "123456", extra_legs={"boss": port}, leg_packets={"agent": voice})

    caller_audio = caller_packets("123456")[1]
    boss = phones.audio("boss")
    assert_no_digit_heard(boss, caller_audio, "123456")
    assert band_share(boss, FLAT_TONE_HZ) < 0.01, "not even the flat tones: nothing from the caller"
    assert band_share(boss, AGENT_VOICE_HZ) > 0.9, "the supervisor hears the agent"
    assert_agent_and_caller_unaffected(phones, "123456", voice_audio)


@pytest.mark.slow
def test_a_monitoring_supervisor_removed_hears_no_more_and_the_session_is_unsecured(
    media_worker, alpha, session, listen
):
    pages, call, port, phones = sue_monitoring_a_secured_call(media_worker, alpha, session, listen)
    pages.wait_for(lambda m: m.get("type") == "card.state" and m["fields"]["pan"]["length"] == 2)
    assert api(alpha, "delete", f"/api/v1/calls/{call['id']}/supervisors/sue/").status_code == 204
    wait_secure(pages, "unsecured", "monitor_stop")
    wait_until(lambda: not udp_port_bound(port), what="the supervisor's port released")
    voice, voice_audio = agent_voice(2.0)
    play(call, "34", phones=phones, leg_packets={"agent": voice})

    # Her phone got our RTCP goodbye and no RTP after it.
    assert not [data for _at, data in phones.received["sue"] if not is_rtcp(data)]
    assert any(p.packet_type == RTCP_BYE for _at, data in phones.received["sue"] for p in parse_rtcp(data))
    assert_agent_and_caller_unaffected(phones, "34", voice_audio)
    # Not secured any more: the keys are refused.
    refused = pages.wait_for(lambda m: m.get("type") == "card.state" and m["rejected_keys"] == 2)
    assert refused["fields"]["pan"]["length"] == 2


@pytest.mark.slow
def test_a_monitoring_supervisor_who_barges_in_hears_nothing_of_the_caller(media_worker, alpha, session, listen):
    pages, call, port, phones = sue_monitoring_a_secured_call(media_worker, alpha, session, listen)
    assert event(alpha, call, "barge", supervisor="sue").status_code == 202
    wait_secure(pages, "unsecured", "barge")
    voice, voice_audio = agent_voice(2.0)
    play(call, "345", phones=phones, extra_legs={"sue": port}, leg_packets={"agent": voice})

    caller_audio = caller_packets("345")[1]
    sue = phones.audio("sue")
    assert_no_digit_heard(sue, caller_audio, "345")
    assert band_share(sue, FLAT_TONE_HZ) < 0.01, "not even the flat tones: nothing from the caller"
    assert band_share(sue, AGENT_VOICE_HZ) > 0.9, "she hears the agent"
    assert_agent_and_caller_unaffected(phones, "345", voice_audio)
    assert PaymentSession.objects.get(pk=session.pk).is_open, "all along the session was open"
