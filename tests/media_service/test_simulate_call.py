"""`manage.py simulate_call` in the demo profile: its media worker runs inside the
command (MEDIA_WORKER_MODE=inprocess, in-memory channel layer, no Redis)."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys

import pytest
from django.core.management import CommandError, call_command
from django.db import connection

from securepay.calls import Call, CallState, EndReason, MediaWorkerBeat
from securepay.live import hub
from securepay.models import BreakReason, PaymentSession
from securepay.vault import generate_key, get_vault
from tests.live.conftest import open_session
from tests.media_service.conftest import ROOT, database_url, wait_until
from tests.support import missing, require_tcp


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


def test_a_stopped_command_hangs_up_its_call(alpha, vault_key):
    """SIGTERM (kill, systemd, docker stop) mid-call: the call is hung up, the session not left secured."""
    require_tcp("127.0.0.1", 6379, "Redis")
    if connection.vendor != "postgresql":  # the command is another process: it cannot see in-memory SQLite
        missing("simulate_call as a process needs PostgreSQL (DATABASE_URL), as in CI")
    session = open_session(alpha)
    env = {**os.environ, "MEDIA_WORKER_MODE": "inprocess", "VAULT_KEY": vault_key, "DATABASE_URL": database_url()}
    command = [sys.executable, "manage.py", "simulate_call", "--code", session.code, "--keys", "4" * 64]
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_until(lambda: PaymentSession.objects.get(pk=session.pk).is_secured, 30, "the call to be secured")
        process.send_signal(signal.SIGTERM)
        output = process.communicate(timeout=20)[0]
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 1 and "stopped (SIGTERM): the call was hung up" in output
    call = Call.objects.get(reference="simulate_call")
    assert call.state == CallState.ENDED and call.end_reason == EndReason.HANGUP
    assert not PaymentSession.objects.get(pk=session.pk).is_secured


def test_with_no_media_worker_running_it_fails_with_one_line_and_starts_no_call(alpha, settings):
    settings.MEDIA_WORKER_MODE = "external"  # the web tier's worker is a separate process: none runs
    session = open_session(alpha)
    with pytest.raises(CommandError) as failed:
        simulate(session)
    assert str(failed.value) == "media worker main is not running (is `manage.py media_worker` running?)"
    assert not Call.objects.exists()


def test_on_a_busy_media_worker_it_fails_with_one_line_and_starts_no_call(alpha, settings):
    settings.MEDIA_WORKER_MODE = "external"
    MediaWorkerBeat.beat("main", load=0.95, calls=0)  # running, but its core is nearly full
    session = open_session(alpha)
    with pytest.raises(CommandError) as failed:
        simulate(session)
    assert str(failed.value) == "media worker main is busy (95% of its core in use, limit 70%)"
    assert not Call.objects.exists()
