"""The payment-session REST API: shapes, per-field errors, the tenant wall, no card data."""

from __future__ import annotations

import json
import uuid

import pytest
from django.conf import settings
from django.core import serializers as django_serializers
from django.test import Client
from django.urls import reverse

from securepay.models import AttemptStatus, PaymentAttempt, PaymentSession, SessionEvent, Status
from tests.walls import wall_test

PAN = "4111111111111111"
GOOD = {
    "template": "default",
    "prefill": {"amount": "12.50", "first_name": "Ada", "last_name": "Lovelace", "email": "ada@example.com"},
    "reference": "INV-1",
    "callback_url": "https://crm.example/hook",
}


def post_session(world, body: dict):
    return Client().post(
        reverse("api-session-list"), data=json.dumps(body), content_type="application/json", **world.api_headers()
    )


def create(world, **overrides) -> dict:
    response = post_session(world, {**GOOD, **overrides})
    assert response.status_code == 201, response.json()
    return response.json()


def api_get(world, url: str):
    return Client().get(url, **world.api_headers())


def api_end(world, session_id):
    return Client().post(reverse("api-session-end", args=[session_id]), **world.api_headers())


def test_create_returns_the_session_and_stores_the_prefill(alpha):
    body = create(alpha, agent="alpha-agent")
    promised = {"id", "code", "status", "launch_url", "secure_state", "amount", "currency", "reference", "created_at"}
    assert promised <= set(body)
    assert (body["status"], body["secure_state"], body["amount"], body["currency"]) == (
        "created", "unsecured", "12.50", "GBP",
    )
    assert len(body["code"]) == 4 and body["code"].isdigit()
    assert body["launch_url"] == f"{settings.SITE_URL}/pay/s/{body['id']}/"
    assert (body["agent"], body["reference"], body["result"]) == ("alpha-agent", "INV-1", None)
    session = PaymentSession.objects.get(pk=body["id"])
    assert (session.tenant, session.amount_minor, session.callback_url) == (
        alpha.tenant, 1250, "https://crm.example/hook",
    )
    assert session.details == {**GOOD["prefill"]}
    assert SessionEvent.objects.get(session=session).actor == f"api:{alpha.api_key.prefix}"


def test_create_uses_the_prefill_mappings(alpha):
    template = alpha.tenant.page_templates.get(slug="default")
    template.prefill_mappings.create(source_name="InvoiceTotal", field_key="amount", transform="minor_to_amount")
    body = create(alpha, prefill={"InvoiceTotal": 999, "first_name": "Ada", "last_name": "Lovelace"})
    assert body["amount"] == "9.99"


@pytest.mark.parametrize(
    ("overrides", "errors"),
    [
        ({"template": "nope"}, {"template"}),
        ({"prefill": {"first_name": "Ada", "last_name": "Lovelace"}}, {"prefill"}),
        ({"prefill": {**GOOD["prefill"], "amount": "12.345"}}, {"prefill"}),
        ({"prefill": {**GOOD["prefill"], "amount": "-5"}}, {"prefill"}),
        ({"prefill": {**GOOD["prefill"], "amount": "lots"}}, {"prefill"}),
        ({"callback_url": "ftp://crm.example/hook"}, {"callback_url"}),
        ({"callback_url": "not a url"}, {"callback_url"}),
        ({"agent": "nobody"}, {"agent"}),
        ({"agent": "beta-agent"}, {"agent"}),
        ({"agent": "alpha-supervisor"}, {"agent"}),
        ({"prefill": "amount=12.50"}, {"prefill"}),
    ],
)
def test_bad_input_is_a_400_with_per_field_errors_and_creates_nothing(alpha, beta, overrides, errors):
    response = post_session(alpha, {**GOOD, **overrides})
    assert response.status_code == 400
    assert set(response.json()) == errors
    assert not PaymentSession.objects.exists()


def test_missing_required_prefill_is_reported_by_template_key(alpha):
    response = post_session(alpha, {**GOOD, "prefill": {"first_name": "Ada"}})
    assert response.json() == {
        "prefill": {"amount": ["This field is required."], "last_name": ["This field is required."]}
    }


def test_production_profile_wants_https_callbacks(alpha, settings):
    settings.DEBUG = False
    response = post_session(alpha, {**GOOD, "callback_url": "http://crm.example/hook"})
    assert response.status_code == 400 and "callback_url" in response.json()
    settings.DEBUG = True
    assert post_session(alpha, {**GOOD, "callback_url": "http://crm.example/hook"}).status_code == 201


def test_card_data_in_prefill_is_refused_and_never_stored(alpha):
    response = post_session(alpha, {**GOOD, "prefill": {**GOOD["prefill"], "pan": PAN, "cvv": "123"}})
    assert response.status_code == 400
    assert set(response.json()["prefill"]) == {"pan", "cvv"}
    assert PAN not in response.content.decode()
    everything = django_serializers.serialize("json", [*PaymentSession.objects.all(), *SessionEvent.objects.all()])
    assert PAN not in everything and not PaymentSession.objects.exists()


def test_get_shows_status_and_the_latest_result_without_card_data(alpha):
    body = create(alpha)
    session = PaymentSession.objects.get(pk=body["id"])
    for number, outcome in [(1, AttemptStatus.DECLINED), (2, AttemptStatus.APPROVED)]:
        PaymentAttempt.objects.create(
            session=session, tenant=alpha.tenant, number=number, status=outcome, gateway="sandbox",
            amount_minor=1250, currency="GBP", reason_code=str(outcome), message="m", gateway_reference=f"ref{number}",
            brand="visa", last4="1111",
        )
    response = api_get(alpha, reverse("api-session-detail", args=[body["id"]]))
    assert response.status_code == 200
    result = response.json()["result"]
    assert result["status"] == "approved"
    assert {k: result[k] for k in ["reason_code", "gateway_reference", "brand", "last4", "amount", "currency"]} == {
        "reason_code": "approved", "gateway_reference": "ref2", "brand": "visa", "last4": "1111",
        "amount": "12.50", "currency": "GBP",
    }
    assert not {"pan", "cvv", "expiry", "card_number"} & set(result)


def test_end_ends_once_then_409(alpha):
    body = create(alpha)
    response = api_end(alpha, body["id"])
    assert response.status_code == 200 and response.json()["status"] == "ended"
    again = api_end(alpha, body["id"])
    assert again.status_code == 409 and again.json()["code"] == "illegal_transition"
    assert PaymentSession.objects.get(pk=body["id"]).events.filter(to_state="ended").count() == 1


def test_a_processing_session_cannot_be_ended(alpha):
    body = create(alpha)
    PaymentSession.objects.filter(pk=body["id"]).update(status=Status.PROCESSING)
    assert api_end(alpha, body["id"]).status_code == 409
    assert PaymentSession.objects.get(pk=body["id"]).status == Status.PROCESSING


@wall_test("api-session-detail", "api-session-end", "api-session-list")
def test_another_tenants_session_is_404_and_never_listed(alpha, beta):
    theirs = create(beta)
    ours = create(alpha)
    for url in [reverse("api-session-detail", args=[theirs["id"]]), reverse("api-session-detail", args=[uuid.uuid4()])]:
        assert api_get(alpha, url).status_code == 404
    assert api_get(alpha, "/api/v1/sessions/not-a-uuid/").status_code == 404
    assert api_end(alpha, theirs["id"]).status_code == 404
    assert PaymentSession.objects.get(pk=theirs["id"]).status == Status.CREATED
    listed = api_get(alpha, reverse("api-session-list")).json()
    assert [s["id"] for s in listed["results"]] == [ours["id"]] and listed["count"] == 1
    # A logged-in user of the other tenant is walled the same way.
    assert alpha.client_for("agent").get(reverse("api-session-detail", args=[theirs["id"]])).status_code == 404


def test_list_is_paginated_and_filters_by_reference(alpha):
    for n in range(3):
        create(alpha, reference=f"INV-{n}")
    page = api_get(alpha, reverse("api-session-list") + "?page_size=2").json()
    assert (page["count"], len(page["results"]), page["next"] is not None) == (3, 2, True)
    only = api_get(alpha, reverse("api-session-list") + "?reference=INV-1").json()
    assert [s["reference"] for s in only["results"]] == ["INV-1"]


def test_revoked_or_missing_key_is_401(alpha):
    alpha.api_key.revoke()
    assert post_session(alpha, GOOD).status_code == 401
    assert Client().get(reverse("api-session-list")).status_code in (401, 403)
    assert not PaymentSession.objects.exists()


def test_tenant_users_may_read_but_not_write(alpha):
    body = create(alpha)
    agent = alpha.client_for("agent")
    assert agent.get(reverse("api-session-detail", args=[body["id"]])).status_code == 200
    assert agent.get(reverse("api-session-list")).json()["count"] == 1
    response = agent.post(reverse("api-session-list"), data=json.dumps(GOOD), content_type="application/json")
    assert response.status_code == 403
    assert PaymentSession.objects.count() == 1


def test_schema_documents_the_session_endpoints(alpha):
    schema = Client().get(reverse("api-schema") + "?format=json").json()
    paths = schema["paths"]
    assert {"/api/v1/sessions/", "/api/v1/sessions/{session_id}/", "/api/v1/sessions/{session_id}/end/"} <= set(paths)
    create_op = paths["/api/v1/sessions/"]["post"]
    assert create_op["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/SessionCreate")
    assert "201" in create_op["responses"]
    assert "409" in paths["/api/v1/sessions/{session_id}/end/"]["post"]["responses"]
    create_fields = set(schema["components"]["schemas"]["SessionCreate"]["properties"])
    assert {"template", "prefill", "reference", "callback_url", "agent"} <= create_fields
    assert Client().get(reverse("api-docs")).status_code == 200
