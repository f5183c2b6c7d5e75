"""Signed launch links: a valid link opens a session for the logged-in agent; anything else creates nothing."""

from __future__ import annotations

import hashlib
import hmac
import time
from urllib.parse import parse_qsl

from django.test import Client
from django.urls import reverse

from securepay.launch import canonical_launch_string, sign_launch_params
from securepay.models import PaymentSession, SessionEvent
from tests.walls import wall_test

PARAMS = {"template": "default", "amount": "12.50", "first_name": "Ada", "last_name": "Lovelace", "reference": "INV-1"}


def launch_url(world, params: dict | None = None, ts: int | None = None) -> str:
    return reverse("session-launch") + "?" + sign_launch_params(world.tenant, params or PARAMS, ts=ts)


def assert_refused(response, status: int, code: str) -> None:
    assert response.status_code == status
    assert f'data-code="{code}"' in response.content.decode()
    assert not PaymentSession.objects.exists()


def test_a_valid_link_opens_a_session_and_goes_to_the_agent_page(alpha):
    response = alpha.client_for("agent").get(launch_url(alpha))
    session = PaymentSession.objects.get()
    assert response.status_code == 302
    assert response["Location"] == reverse("agent-session", args=[session.pk])
    assert (session.tenant, session.agent, session.reference, session.amount_minor) == (
        alpha.tenant, alpha.agent, "INV-1", 1250,
    )
    assert session.details == {"amount": "12.50", "first_name": "Ada", "last_name": "Lovelace"}
    assert SessionEvent.objects.get(session=session).actor == "user:alpha-agent"


def test_opening_the_same_link_again_returns_to_its_session(alpha):
    client, url = alpha.client_for("agent"), launch_url(alpha)
    first, second = client.get(url), client.get(url)
    assert first["Location"] == second["Location"] and PaymentSession.objects.count() == 1


def test_the_documented_signing_string(alpha):
    query = dict(parse_qsl(sign_launch_params(alpha.tenant, {"b": "2 3", "a": "é"}, ts=1767225600)))
    expected_string = "a=é&b=2 3&tenant=alpha&ts=1767225600"
    assert canonical_launch_string(query) == expected_string
    digest = hmac.new(alpha.tenant.webhook_secret.encode(), expected_string.encode("utf-8"), hashlib.sha256)
    assert query["sig"] == digest.hexdigest()


def test_anonymous_users_are_sent_to_log_in_and_the_link_resumes_after(alpha):
    client = Client()
    url = launch_url(alpha)
    response = client.get(url)
    assert response.status_code == 302 and response["Location"].startswith(reverse("login"))
    assert not PaymentSession.objects.exists()
    # The link's query stays on the server: not in `next`, so not in the login page or the logs.
    query = url.split("?", 1)[1]
    assert "sig=" not in response["Location"] and query not in response["Location"]
    login_page = client.get(response["Location"]).content.decode()
    assert "sig=" not in login_page and "Ada" not in login_page
    client.force_login(alpha.agent)
    resumed = client.get(reverse("session-launch") + "?resume=1")
    session = PaymentSession.objects.get()
    assert resumed.status_code == 302 and str(session.pk) in resumed["Location"]
    assert session.tenant == alpha.tenant


@wall_test("session-launch")
def test_another_tenants_agent_gets_the_same_page_as_a_forged_link(alpha, beta):
    assert_refused(beta.client_for("agent").get(launch_url(alpha)), 403, "invalid_link")
    assert_refused(alpha.client_for("agent").get(launch_url(beta)), 403, "invalid_link")


def test_supervisors_cannot_open_links(alpha):
    assert_refused(alpha.client_for("supervisor").get(launch_url(alpha)), 403, "invalid_link")


def test_a_tampered_or_unsigned_link_is_refused(alpha):
    client = alpha.client_for("agent")
    assert_refused(client.get(launch_url(alpha).replace("12.50", "1.50")), 403, "invalid_link")
    assert_refused(client.get(launch_url(alpha) + "&extra=1"), 403, "invalid_link")
    assert_refused(client.get(reverse("session-launch") + "?tenant=alpha&amount=12.50"), 403, "invalid_link")
    assert_refused(client.get(launch_url(alpha) + "&amount=99"), 400, "malformed")


def test_expired_and_future_links_are_refused(alpha):
    client, now = alpha.client_for("agent"), int(time.time())
    assert_refused(client.get(launch_url(alpha, ts=now - 330)), 403, "expired")
    assert_refused(client.get(launch_url(alpha, ts=now + 90)), 403, "not_yet_valid")
    assert client.get(launch_url(alpha, ts=now - 240)).status_code == 302


def test_unknown_template_and_missing_prefill_are_refused(alpha):
    client = alpha.client_for("agent")
    assert_refused(client.get(launch_url(alpha, {**PARAMS, "template": "nope"})), 400, "unknown_template")
    response = client.get(launch_url(alpha, {"first_name": "Ada"}))
    assert_refused(response, 400, "invalid_prefill")
    assert "amount" in response.content.decode() and "last_name" in response.content.decode()


def test_card_data_in_a_link_is_refused_and_not_shown(alpha):
    response = alpha.client_for("agent").get(launch_url(alpha, {**PARAMS, "pan": "4111111111111111"}))
    assert_refused(response, 400, "invalid_prefill")
    assert "4111111111111111" not in response.content.decode()


def test_a_link_made_for_another_agent_is_refused(alpha):
    for_admin = launch_url(alpha, {**PARAMS, "agent": "alpha-admin"})
    assert_refused(alpha.client_for("agent").get(for_admin), 403, "other_agent")
    assert alpha.client_for("admin").get(for_admin).status_code == 302
