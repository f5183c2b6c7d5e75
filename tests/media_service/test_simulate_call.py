"""`manage.py simulate_call` in the demo profile: its media worker runs inside the
command (MEDIA_WORKER_MODE=inprocess, in-memory channel layer, no Redis)."""

from __future__ import annotations

import io

import pytest
from django.core.management import call_command

from securepay.calls import Call, CallState, EndReason
from securepay.live import hub
from securepay.models import BreakReason, PaymentSession
from securepay.vault import generate_key, get_vault
from tenants.models import PageTemplate


@pytest.fixture(autouse=True)
def _demo_profile(settings, monkeypatch, transactional_db):
    """The demo's settings; a fresh in-process hub (no capture or listener from another test)."""
    settings.MEDIA_WORKER_MODE = "inprocess"
    settings.MEDIA_WORKER_ID = "main"
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    settings.VAULT_KEY = generate_key()
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    get_vault.cache_clear()
    monkeypatch.setattr(hub, "_captures", {})
    monkeypatch.setattr(hub, "_listener", None)
    yield
    get_vault.cache_clear()


def open_session(world) -> PaymentSession:
    template = PageTemplate.objects.get(tenant=world.tenant, slug="default")
    return PaymentSession.open_for(tenant=world.tenant, template=template, actor="user:test")


def web_worker_call(world) -> Call:
    """A live, secured call of the web process's in-process worker (`main`)."""
    session = open_session(world)
    session.mark_secured("media-worker")
    return Call.objects.create(
        tenant=world.tenant, worker_id="main", host="127.0.0.1", caller_port=40000, agent_port=40001, session=session
    )


def simulate(session: PaymentSession, *options: str) -> str:
    out = io.StringIO()
    call_command("simulate_call", "--code", session.code, "--keys", "12", *options, stdout=out)
    return out.getvalue()


def test_links_the_call_through_its_own_worker_and_leaves_the_web_workers_calls_alone(alpha, beta):
    other = web_worker_call(beta)
    session = open_session(alpha)

    output = simulate(session)

    assert "sent 2 keys (inband)" in output
    call = Call.objects.get(reference="simulate_call")
    assert call.worker_id.startswith("simulate-") and call.worker_id != "main"
    assert call.tenant == alpha.tenant and call.session == session
    # Its worker stopped with the command: the call ended with it, never left secured with nobody relaying it.
    assert call.state == CallState.ENDED and call.end_reason == EndReason.HANGUP
    session.refresh_from_db()
    assert not session.is_secured and session.break_reason == BreakReason.HANGUP
    other.refresh_from_db()
    assert other.state == CallState.LIVE and other.end_reason == ""
    assert other.session.is_secured


def test_hangup_is_handled_by_the_commands_worker_before_it_stops(alpha):
    session = open_session(alpha)

    simulate(session, "--hangup")

    call = Call.objects.get(reference="simulate_call")
    assert call.state == CallState.ENDED and call.end_reason == EndReason.HANGUP
    session.refresh_from_db()
    assert not session.is_secured and session.break_reason == BreakReason.HANGUP
