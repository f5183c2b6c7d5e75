"""Shared set-up of the live-page tests: in-process media hub, in-memory channel layer."""

from __future__ import annotations

import pytest

from securepay.live import hub
from securepay.models import PaymentSession
from securepay.vault import generate_key, get_vault
from tenants.models import PageTemplate

AGENT_ACTOR = "user:test"
VISA_OK = "4242424242424242"
FUTURE_EXPIRY = "1239"


@pytest.fixture(autouse=True)
def _live_settings(settings, monkeypatch):
    settings.MEDIA_WORKER_MODE = "inprocess"
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    settings.VAULT_KEY = generate_key()
    get_vault.cache_clear()
    # A fresh media worker per test: no capture or listener leaks between tests.
    monkeypatch.setattr(hub, "_captures", {})
    monkeypatch.setattr(hub, "_listener", None)
    yield
    get_vault.cache_clear()


def open_session(world, actor: str = AGENT_ACTOR, **fields) -> PaymentSession:
    """A new session on the tenant's default page, opened by `actor` (an agent by default)."""
    template = PageTemplate.objects.get(tenant=world.tenant, slug="default")
    return PaymentSession.open_for(tenant=world.tenant, template=template, actor=actor, **fields)


def session_in_card_entry(world, amount_minor: int = 1250, **fields) -> PaymentSession:
    session = open_session(world, **fields)
    session.open_details(AGENT_ACTOR)
    session.start_card_entry(AGENT_ACTOR, details={"first_name": "Ada"}, amount_minor=amount_minor)
    return session


def key_card(session_id, digits: str) -> None:
    for digit in digits:
        assert hub.press_key(session_id, digit)
