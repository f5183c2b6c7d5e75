"""The keypad simulator: link by code (tenant-scoped), keys, hold/unhold/hang-up."""

from __future__ import annotations

import importlib

import pytest
from django.urls import Resolver404, clear_url_caches, resolve, reverse

from securepay.live import hub
from securepay.models import BreakReason, Status
from tests.live.conftest import session_in_card_entry
from tests.walls import wall_test


@wall_test("simulator-home", "simulator-keypad")
def test_linking_by_code_secures_the_session_of_the_users_tenant_only(alpha, beta):
    session = session_in_card_entry(alpha)
    response = beta.client_for("agent").post(reverse("simulator-home"), {"code": session.code})
    assert response.status_code == 404 and not hub.is_linked(session.pk)
    keypad = reverse("simulator-keypad", args=[session.pk])
    assert beta.client_for("supervisor").get(keypad).status_code == 404

    response = alpha.client_for("supervisor").post(reverse("simulator-home"), {"code": session.code})
    assert response.status_code == 302 and response.url == keypad
    session.refresh_from_db()
    assert session.is_secured and session.break_reason == ""
    assert hub.is_linked(session.pk)
    page = alpha.client_for("agent").get(keypad).content.decode()
    assert 'data-key="#"' in page and 'id="hold"' in page


@wall_test("simulator-key")
def test_keys_reach_the_capture_and_are_not_echoed(alpha, beta):
    session = session_in_card_entry(alpha)
    url = reverse("simulator-key", args=[session.pk])
    client = alpha.client_for("agent")
    assert client.post(url, {"key": "4"}).status_code == 409  # no call linked yet
    hub.link(session.pk)
    assert beta.client_for("agent").post(url, {"key": "4"}).status_code == 404
    for key in "4242":
        response = client.post(url, {"key": key})
        assert response.status_code == 204 and response.content == b""
    assert client.post(url, {"key": "A"}).status_code == 400
    assert hub._captures[str(session.pk)].state()["fields"]["pan"]["length"] == 4


@wall_test("simulator-call")
def test_hold_unhold_and_hangup_break_and_restore_the_secure_state(alpha, beta):
    session = session_in_card_entry(alpha)
    hub.link(session.pk)
    url = reverse("simulator-call", args=[session.pk])
    client = alpha.client_for("agent")
    assert beta.client_for("agent").post(url, {"event": "hold"}).status_code == 404

    client.post(url, {"event": "hold"})
    session.refresh_from_db()
    assert not session.is_secured and session.break_reason == BreakReason.HOLD
    client.post(reverse("simulator-key", args=[session.pk]), {"key": "4"})
    state = hub._captures[str(session.pk)].state()
    assert state["fields"]["pan"]["length"] == 0 and state["rejected_keys"] == 1

    client.post(url, {"event": "unhold"})
    session.refresh_from_db()
    assert session.is_secured
    response = client.post(url, {"event": "hangup"})
    assert response.url == reverse("simulator-home")
    session.refresh_from_db()
    assert session.break_reason == BreakReason.HANGUP and session.status == Status.CARD_ENTRY
    assert client.post(url, {"event": "transfer"}).status_code == 400


def test_the_simulator_is_not_routed_when_disabled(settings):
    import securepay.urls

    enabled = settings.KEYPAD_SIMULATOR_ENABLED
    settings.KEYPAD_SIMULATOR_ENABLED = False
    try:
        importlib.reload(securepay.urls)
        clear_url_caches()
        with pytest.raises(Resolver404):
            resolve("/simulator/")
    finally:
        settings.KEYPAD_SIMULATOR_ENABLED = enabled
        importlib.reload(securepay.urls)
        clear_url_caches()
