"""Refunds through the API: admins and integration keys, never above what is left."""

from __future__ import annotations

import json

import pytest

from gateways.models import Refund, WebhookDelivery
from gateways.sandbox import adapter as sandbox
from tests.gateways.conftest import key_card, open_card_entry, press_process_payment
from tests.walls import wall_test

pytestmark = pytest.mark.usefixtures("fast_retries")


@pytest.fixture
def paid_session(alpha, django_capture_on_commit_callbacks):
    session = open_card_entry(alpha, amount_minor=1250)
    key_card(session, "4242424242424242")
    with django_capture_on_commit_callbacks(execute=True):
        press_process_payment(session)
    session.refresh_from_db()
    assert session.status == "approved"
    return session


def refund(client, session, amount, **headers):
    return client.post(f"/api/v1/sessions/{session.pk}/refunds/", data=json.dumps({"amount": amount}),
                       content_type="application/json", **headers)


def test_partial_then_the_rest(alpha, paid_session, client, django_capture_on_commit_callbacks):
    first = refund(client, paid_session, "5.00", **alpha.api_headers())
    assert first.status_code == 201, first.content
    assert first.json()["amount"] == "5.00" and first.json()["status"] == "approved"
    assert first.json()["refunded_total"] == "5.00" and first.json()["gateway_reference"].startswith("sbx_re_")

    rest = refund(client, paid_session, "7.50", **alpha.api_headers())
    assert rest.status_code == 201 and rest.json()["refunded_total"] == "12.50"
    attempt = paid_session.latest_attempt
    assert attempt.refunded_minor == 1250
    assert list(Refund.objects.filter(attempt=attempt).values_list("amount_minor", flat=True)) == [750, 500]
    assert first.json()["id"] != rest.json()["id"]

    over = refund(client, paid_session, "0.01", **alpha.api_headers())
    assert over.status_code == 400 and "amount" in over.json()


def test_over_refund_is_refused_and_nothing_moves(alpha, paid_session, client):
    response = refund(client, paid_session, "12.51", **alpha.api_headers())
    assert response.status_code == 400
    assert response.json() == {"amount": ["At most 12.50 GBP is left to refund."]}
    assert not Refund.objects.exists() and paid_session.latest_attempt.refunded_minor == 0


@pytest.mark.parametrize("amount", ["0", "-1.00", "abc", "1.001", "1e999999", "NaN"])
def test_bad_amounts(alpha, paid_session, client, amount):
    response = refund(client, paid_session, amount, **alpha.api_headers())
    assert response.status_code == 400 and "amount" in response.json()


def test_full_refund_by_a_tenant_admin(alpha, paid_session):
    response = refund(alpha.client_for("admin"), paid_session, "12.50")
    assert response.status_code == 201 and response.json()["refunded_total"] == "12.50"


def test_agent_may_not_refund(alpha, paid_session):
    assert refund(alpha.client_for("agent"), paid_session, "1.00").status_code == 403
    assert refund(alpha.client_for("supervisor"), paid_session, "1.00").status_code == 403
    assert not Refund.objects.exists()


def test_anonymous_may_not_refund(paid_session, client):
    assert refund(client, paid_session, "1.00").status_code in (401, 403)


@wall_test("api-session-refunds")
def test_other_tenant_gets_404(alpha, beta, paid_session, client):
    assert refund(client, paid_session, "1.00", **beta.api_headers()).status_code == 404
    assert refund(beta.client_for("admin"), paid_session, "1.00").status_code == 404
    assert not Refund.objects.exists()


def test_no_approved_payment_is_a_conflict(alpha, client, django_capture_on_commit_callbacks):
    session = open_card_entry(alpha)
    key_card(session, "4000000000000002")
    with django_capture_on_commit_callbacks(execute=True):
        press_process_payment(session)
    response = refund(client, session, "1.00", **alpha.api_headers())
    assert response.status_code == 409 and response.json()["code"] == "nothing_to_refund"


def test_refund_webhook(alpha, client, webhook_receiver, django_capture_on_commit_callbacks):
    url, inbox = webhook_receiver(alpha.tenant.webhook_secret)
    session = open_card_entry(alpha, callback_url=url)
    key_card(session, "4242424242424242")
    with django_capture_on_commit_callbacks(execute=True):
        press_process_payment(session)
    with django_capture_on_commit_callbacks(execute=True):
        assert refund(client, session, "2.50", **alpha.api_headers()).status_code == 201

    events = [r["json"] for r in inbox.wait_for(2)]
    assert [e["event"] for e in events] == ["payment.approved", "payment.refunded"]
    refunded = events[1]
    assert (refunded["amount"], refunded["status"], refunded["refunded_total"]) == ("2.50", "partially_refunded",
                                                                                    "2.50")
    assert all(r["valid"] for r in inbox.received)
    assert WebhookDelivery.objects.filter(event_type="payment.refunded").count() == 1


def test_gateway_refund_is_keyed_by_the_refund(alpha, paid_session, client):
    refund(client, paid_session, "5.00", **alpha.api_headers())
    made = Refund.objects.get()
    adapter = sandbox.SandboxAdapter({"merchant_id": "alpha"})
    # Replaying the same key returns the same refund: a retried call never refunds twice.
    again = adapter.refund(paid_session.latest_attempt.gateway_reference, 500, idempotency_key=made.idempotency_key)
    assert again.gateway_reference == made.gateway_reference
    assert adapter.refund(paid_session.latest_attempt.gateway_reference, 751,
                          idempotency_key="another").reason_code == "over_refund"
