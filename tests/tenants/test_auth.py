"""Log-in, Argon2, failed-login throttling, idle expiry for agents, role checks, API keys."""

from __future__ import annotations

import time

import pytest
from django.contrib.auth import get_user_model
from django.core.cache import cache
from django.test import Client, override_settings
from django.urls import reverse

from tenants.middleware import IdleSessionMiddleware
from tenants.models import ApiKey
from tests.conftest import PASSWORD


@pytest.fixture(autouse=True)
def _fresh_cache():
    cache.clear()
    yield
    cache.clear()


def test_login_page_and_agent_login(alpha):
    client = Client()
    page = client.get(reverse("login"))
    assert page.status_code == 200 and b'name="password"' in page.content
    response = client.post(reverse("login"), {"username": "alpha-agent", "password": PASSWORD})
    assert response.status_code == 302
    assert client.get(reverse("home")).status_code == 200


@pytest.mark.real_password_hashing
def test_passwords_are_hashed_with_argon2(alpha):
    assert get_user_model().objects.get(username="alpha-agent").password.startswith("argon2$")


@override_settings(LOGIN_FAILURE_LIMIT=3)
def test_failed_logins_are_throttled_even_with_the_right_password(alpha):
    client = Client()
    for _ in range(3):
        bad = client.post(reverse("login"), {"username": "alpha-agent", "password": "wrong"})
        assert bad.status_code == 200 and b"Too many" not in bad.content
    locked = client.post(reverse("login"), {"username": "alpha-agent", "password": PASSWORD})
    assert locked.status_code == 200 and b"Too many failed log-in attempts" in locked.content
    assert "_auth_user_id" not in client.session


@override_settings(LOGIN_FAILURE_LIMIT=3)
def test_successful_login_clears_the_failure_count(alpha):
    client = Client()
    for _ in range(2):
        client.post(reverse("login"), {"username": "alpha-agent", "password": "wrong"})
    assert client.post(reverse("login"), {"username": "alpha-agent", "password": PASSWORD}).status_code == 302
    client.logout()
    for _ in range(2):
        client.post(reverse("login"), {"username": "alpha-agent", "password": "wrong"})
    assert client.post(reverse("login"), {"username": "alpha-agent", "password": PASSWORD}).status_code == 302


@override_settings(AGENT_IDLE_TIMEOUT_SECONDS=60)
def test_idle_agent_is_logged_out(alpha):
    client = alpha.client_for("agent")
    assert client.get(reverse("home")).status_code == 200
    session = client.session
    session[IdleSessionMiddleware.SESSION_KEY] = time.time() - 120
    session.save()
    response = client.get(reverse("home"))
    assert response.status_code == 302 and "idle=1" in response["Location"]
    assert client.get(reverse("home")).status_code == 302  # really logged out


@override_settings(AGENT_IDLE_TIMEOUT_SECONDS=60)
def test_active_agent_stays_logged_in(alpha):
    client = alpha.client_for("agent")
    for _ in range(3):
        assert client.get(reverse("home")).status_code == 200


def test_anonymous_user_is_sent_to_login(db):
    response = Client().get(reverse("home"))
    assert response.status_code == 302 and response["Location"].startswith(reverse("login"))


def test_role_required_lets_only_listed_roles_and_admins_through(alpha, rf):
    from django.contrib.sessions.middleware import SessionMiddleware
    from django.core.exceptions import PermissionDenied
    from django.http import HttpResponse

    from tenants.access import role_required

    @role_required("supervisor")
    def watch(request):
        return HttpResponse("ok")

    def call(user):
        request = rf.get("/watch")
        SessionMiddleware(lambda r: None).process_request(request)
        request.user, request.tenant, request.role = user, alpha.tenant, user.membership.role
        return watch(request)

    assert call(alpha.supervisor).status_code == 200
    assert call(alpha.admin).status_code == 200
    with pytest.raises(PermissionDenied):
        call(alpha.agent)


def test_api_key_is_stored_hashed_and_revocable(alpha):
    assert ApiKey.authenticate(alpha.api_key_plain) == alpha.api_key
    assert alpha.api_key_plain not in (alpha.api_key.key_hash, alpha.api_key.prefix)
    assert ApiKey.authenticate(alpha.api_key_plain[:-1] + "x") is None
    assert ApiKey.authenticate("garbage") is None
    alpha.api_key.revoke()
    assert ApiKey.authenticate(alpha.api_key_plain) is None


def test_api_key_records_last_use(alpha):
    assert alpha.api_key.last_used_at is None
    ApiKey.authenticate(alpha.api_key_plain)
    alpha.api_key.refresh_from_db()
    assert alpha.api_key.last_used_at is not None


@override_settings(AGENT_IDLE_TIMEOUT_SECONDS=60)
def test_live_page_keepalive_refreshes_the_idle_timer(alpha):
    client = alpha.client_for("agent")
    assert client.get(reverse("keepalive")).status_code == 204
    session = client.session
    session[IdleSessionMiddleware.SESSION_KEY] = time.time() - 50
    session.save()
    assert client.get(reverse("keepalive")).status_code == 204
    assert time.time() - client.session[IdleSessionMiddleware.SESSION_KEY] < 5
    session = client.session
    session[IdleSessionMiddleware.SESSION_KEY] = time.time() - 120
    session.save()
    assert client.get(reverse("keepalive")).status_code == 302  # too late: logged out


def test_home_links_follow_the_role(alpha):
    agent_page = alpha.client_for("agent").get(reverse("home")).content.decode()
    supervisor_page = alpha.client_for("supervisor").get(reverse("home")).content.decode()
    assert reverse("agent-home") in agent_page and reverse("agent-live") not in agent_page
    assert reverse("agent-live") in supervisor_page and f'href="{reverse("agent-home")}"' not in supervisor_page
