"""End to end on loopback UDP: control API -> media worker -> masked audio, stars, secure state."""

from __future__ import annotations

import asyncio
import io

import pytest
from django.core.management import call_command
from django.test import Client

from media.phones import Phones
from media.rtp import is_rtcp
from media.softphone import caller_packets, silence_packets
from securepay.calls import Call, CallState, EndReason
from securepay.live import session_group
from securepay.models import BreakReason, PaymentSession, SecureState
from tests.media.signals import FLAT_TONE_HZ, assert_no_digit_heard, band_share
from tests.media_service.conftest import OPEN_PHONES, wait_until
from tests.support import udp_port_bound

CARD_KEYS = "4242424242424242#1228123"


def api(world, method: str, path: str, data: dict | None = None):
    client = Client()
    return getattr(client, method)(path, data or {}, content_type="application/json", **world.api_headers())


def start_call(world, media_worker, **fields) -> dict:
    response = api(world, "post", "/api/v1/calls/", fields)
    assert response.status_code == 201, response.content
    body = response.json()
    wait_until(lambda: udp_port_bound(body["caller_port"]) and udp_port_bound(body["agent_port"]), what="ports bound")
    return body


def add_supervisor(world, call: dict, name: str, mode: str) -> int:
    """A supervisor leg (monitor | barge); the port the supervisor's phone uses, once the worker bound it."""
    response = api(world, "post", f"/api/v1/calls/{call['id']}/supervisors/", {"name": name, "mode": mode})
    assert response.status_code == 201, response.content
    port = response.json()["port"]
    wait_until(lambda: udp_port_bound(port), what="supervisor port bound")
    return port


def link(world, call: dict, code: str):
    return api(world, "post", f"/api/v1/calls/{call['id']}/link/", {"code": code})


def event(world, call: dict, name: str, **extra):
    return api(world, "post", f"/api/v1/calls/{call['id']}/events/", {"event": name, **extra})


def play(
    call: dict,
    keys: str = CARD_KEYS,
    mode: str = "inband",
    extra_legs: dict | None = None,
    phones: Phones | None = None,
    extra_schedule: list | None = None,
    transform_caller=None,
    leg_packets: dict | None = None,
) -> Phones:
    """Caller keys `keys`; the agent's (and supervisors') handsets send silence and record.
    Pass the same `phones` to go on with the same handsets (the worker latches their addresses).
    `transform_caller` rewrites the caller's (send time, datagram) list (jitter, duplicates);
    `leg_packets` gives a leg other packets than silence; `extra_schedule` adds raw sends."""
    sent, _audio = caller_packets(keys, mode, event_payload_type=call["event_payload_type"])
    duration = sent[-1][0] + 0.4
    if transform_caller is not None:
        sent = transform_caller(sent)
    host = call["host"]
    schedule = [(at, "caller", data, (host, call["caller_port"])) for at, data in sent]
    legs = {"agent": call["agent_port"], **(extra_legs or {})}
    for name, port in legs.items():
        packets = (leg_packets or {}).get(name) or silence_packets(duration)
        schedule += [(at, name, data, (host, port)) for at, data in packets]
    schedule += extra_schedule or []
    if phones is None:
        phones = Phones(["caller", *legs])
        OPEN_PHONES.append(phones)
    asyncio.run(phones.play(schedule))
    return phones


def secure_state(session) -> tuple[str, str]:
    fresh = PaymentSession.objects.get(pk=session.pk)
    return fresh.secure_state, fresh.break_reason


def wait_secure(pages, state: str, reason: str | None = None) -> dict:
    """The secure state as the agent page receives it (no DB polling while the worker writes)."""
    return pages.wait_for(
        lambda m: m.get("type") == "session.state"
        and m["secure_state"] == state
        and (reason is None or m["break_reason"] == reason)
    )


@pytest.mark.slow
def test_simulated_call_fills_stars_and_agent_hears_no_digit(media_worker, alpha, session, listen):
    pages = listen(session_group(session.pk))
    call = start_call(alpha, media_worker)
    assert link(alpha, call, session.code).status_code == 200
    # The page turns green (how fast is measured by bench/link_latency.py, not by a timed test).
    pages.wait_for(lambda m: m.get("type") == "session.state" and m["secure_state"] == "secured")

    phones = play(call)

    final = pages.wait_for(lambda m: m.get("type") == "card.state" and m["ready"])
    assert final["fields"]["pan"] == {"length": 16, "complete": True, "valid": True, "hint": None}
    assert final["fields"]["expiry"]["length"] == 4 and final["fields"]["cvv"]["length"] == 3
    assert final["brand"] == "visa"
    frames = str([m for _t, m in pages.messages])
    assert "4242424242424242" not in frames and "1228" not in frames
    # What the agent heard decodes to nothing (the caller's own audio does: the check can fail),
    # and it is the flat tone, one per key: a worker sending silence instead would fail here.
    _packets, caller_audio = caller_packets(CARD_KEYS)
    agent_audio = phones.audio("agent")
    assert_no_digit_heard(agent_audio, caller_audio, CARD_KEYS)
    assert band_share(agent_audio, FLAT_TONE_HZ) > 0.5, "the agent hears a flat tone for each key"


def test_simulate_call_with_hangup_has_ended_the_call_and_unsecured_the_session_when_it_returns(
    media_worker, alpha, session
):
    """Against a running worker (external mode), as the control API's hangup does: not a
    message the worker may handle later, or never if it is gone."""
    output = io.StringIO()
    call_command("simulate_call", "--code", session.code, "--keys", "12", "--hangup", stdout=output)
    assert "sent 2 keys" in output.getvalue()
    call = Call.objects.get(reference="simulate_call")
    assert call.worker_id == media_worker.worker_id
    assert call.state == CallState.ENDED and call.end_reason == EndReason.HANGUP
    session.refresh_from_db()
    assert not session.is_secured and session.break_reason == BreakReason.HANGUP
    # Recorded by the command itself, before its message could reach the worker.
    unsecured = session.events.filter(kind="secure", to_state=SecureState.UNSECURED).last()
    assert unsecured.actor == "simulate_call"


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["rfc4733", "both"])
def test_rfc4733_keys_count_once_and_are_stripped(media_worker, alpha, session, listen, mode):
    pages = listen(session_group(session.pk))
    call = start_call(alpha, media_worker)
    link(alpha, call, session.code)
    pages.wait_for(lambda m: m.get("secure_state") == "secured")
    phones = play(call, "4242424242424242", mode)
    state = pages.wait_for(lambda m: m.get("type") == "card.state" and m["fields"]["pan"]["complete"])
    assert state["fields"]["pan"]["length"] == 16 and state["active"] == "expiry"
    payload_types = {data[1] & 0x7F for _t, data in phones.received["agent"] if not is_rtcp(data)}
    assert payload_types == {0}, "telephone-events must not reach the agent"


def test_unknown_code_is_a_400_and_changes_nothing(media_worker, alpha, session):
    call = start_call(alpha, media_worker)
    wrong = "0000" if session.code != "0000" else "1111"
    response = link(alpha, call, wrong)
    assert response.status_code == 400 and "code" in response.json()
    assert Call.objects.get(pk=call["id"]).session is None
    assert secure_state(session)[0] == "unsecured"


def test_agent_keying_the_code_on_their_phone_links(media_worker, alpha, session, listen):
    pages = listen(session_group(session.pk))
    call = start_call(alpha, media_worker)
    sent, _ = caller_packets(session.code, "inband")
    host = call["host"]
    schedule = [(at, "agent", data, (host, call["agent_port"])) for at, data in sent]
    phones = Phones(["agent"])
    asyncio.run(phones.play(schedule))
    phones.close()
    wait_secure(pages, "secured")
    assert str(Call.objects.get(pk=call["id"]).session_id) == str(session.pk)


@pytest.mark.parametrize(
    ("event_name", "reason"),
    [
        ("hold", "hold"),
        ("switch_line", "line_switch"),
        ("monitor_stop", "monitor_stop"),
        ("barge", "barge"),
        ("hangup", "hangup"),
    ],
)
def test_breaking_events_unsecure_with_their_reason(media_worker, alpha, session, listen, event_name, reason):
    pages = listen(session_group(session.pk))
    call = start_call(alpha, media_worker)
    link(alpha, call, session.code)
    wait_secure(pages, "secured")
    assert event(alpha, call, event_name).status_code == 202
    wait_secure(pages, "unsecured", reason)
    if event_name == "hangup":
        wait_until(lambda: Call.objects.get(pk=call["id"]).state == CallState.ENDED)
        assert event(alpha, call, "hold").status_code == 409


@pytest.mark.parametrize(
    ("event_name", "reason", "supervisor"),
    [
        ("hold", "hold", False),
        ("switch_line", "line_switch", False),
        ("barge", "barge", True),  # a monitoring supervisor barges in (and stays on, barging)
        ("monitor_stop", "monitor_stop", True),  # the monitoring supervisor leaves
    ],
)
def test_digits_refused_after_a_break_and_accepted_once_secured_again(
    media_worker, alpha, session, listen, event_name, reason, supervisor
):
    pages = listen(session_group(session.pk))
    call = start_call(alpha, media_worker)
    legs = {"sue": add_supervisor(alpha, call, "sue", "monitor")} if supervisor else {}
    link(alpha, call, session.code)
    wait_secure(pages, "secured")
    assert event(alpha, call, event_name, **({"supervisor": "sue"} if supervisor else {})).status_code == 202
    wait_secure(pages, "unsecured", reason)
    if event_name == "monitor_stop":
        legs = {}  # her leg is gone
    phones = play(call, "42", extra_legs=legs)
    refused = pages.wait_for(lambda m: m.get("type") == "card.state" and m["rejected_keys"] == 2)
    assert refused["fields"]["pan"]["length"] == 0
    pages.messages.clear()
    # Secured again: unhold ends a hold; any other break needs the call linked again.
    if event_name == "hold":
        assert event(alpha, call, "unhold").status_code == 202
    else:
        assert link(alpha, call, session.code).status_code == 200
    wait_secure(pages, "secured")
    play(call, "42", phones=phones, extra_legs=legs)
    accepted = pages.wait_for(lambda m: m.get("type") == "card.state" and m["fields"]["pan"]["length"] == 2)
    assert accepted["rejected_keys"] == 2
