"""Call control API: tenant walls, field errors. No worker needed (messages go nowhere)."""

from __future__ import annotations

import pytest
from django.test import Client

from securepay.calls import Call
from tests.walls import wall_test


@pytest.fixture(autouse=True)
def _external_worker(settings):
    settings.MEDIA_WORKER_MODE = "external"
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def api(world, method: str, path: str, data: dict | None = None):
    return getattr(Client(), method)(path, data or {}, content_type="application/json", **world.api_headers())


@wall_test(
    "api-call-list", "api-call-detail", "api-call-link", "api-call-events",
    "api-call-supervisors", "api-call-supervisor-detail",
)  # fmt: skip
def test_calls_are_walled_between_tenants(alpha, beta):
    created = api(alpha, "post", "/api/v1/calls/", {"codec": "PCMA"})
    assert created.status_code == 201
    body = created.json()
    assert body["caller_port"] != body["agent_port"] and body["codec"] == "PCMA"
    base = f"/api/v1/calls/{body['id']}/"
    assert api(alpha, "post", base + "supervisors/", {"name": "sue", "mode": "monitor"}).status_code == 201
    for method, path, data in [
        ("get", base, None),
        ("post", base + "link/", {"code": "1234"}),
        ("post", base + "events/", {"event": "hold"}),
        ("post", base + "supervisors/", {"name": "bob", "mode": "barge"}),
        ("delete", base + "supervisors/sue/", None),
    ]:
        assert api(beta, method, path, data).status_code == 404, path
    assert api(alpha, "get", base).json()["supervisors"][0]["name"] == "sue"
    assert api(alpha, "delete", base + "supervisors/sue/").status_code == 204


def test_bad_input_gets_field_errors(alpha):
    bad = api(alpha, "post", "/api/v1/calls/", {"codec": "G729", "event_payload_type": 13, "caller_address": "x"})
    assert bad.status_code == 400
    assert set(bad.json()) == {"codec", "event_payload_type", "caller_address"}
    call = api(alpha, "post", "/api/v1/calls/").json()
    base = f"/api/v1/calls/{call['id']}/"
    assert set(api(alpha, "post", base + "events/", {"event": "dance"}).json()) == {"event"}
    assert set(api(alpha, "post", base + "link/", {"code": "12"}).json()) == {"code"}
    assert set(api(alpha, "post", base + "supervisors/", {"name": "agent", "mode": "x"}).json()) == {"name", "mode"}
    assert Call.objects.get(pk=call["id"]).session is None


def test_needs_an_api_key(alpha):
    client = alpha.client_for("admin")
    assert client.post("/api/v1/calls/", {}, content_type="application/json").status_code in (401, 403)
