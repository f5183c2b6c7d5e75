"""Process payment, eager Celery: the task charges each attempt exactly once."""

from __future__ import annotations

import pytest

from gateways import processing
from gateways.sandbox import adapter as sandbox
from gateways.tasks import charge_attempt
from securepay.card import Card
from securepay.models import PaymentAttempt, Status
from securepay.vault import get_vault
from tests.gateways.conftest import key_card, open_card_entry, press_process_payment

pytestmark = pytest.mark.usefixtures("fast_retries")


def pay(session, pan: str, capture, cvv: str = "123") -> PaymentAttempt:
    key_card(session, pan, cvv)
    with capture(execute=True):
        attempt = press_process_payment(session)
    attempt.refresh_from_db()
    session.refresh_from_db()
    return attempt


def test_approved(alpha, django_capture_on_commit_callbacks):
    session = open_card_entry(alpha)
    attempt = pay(session, "4242424242424242", django_capture_on_commit_callbacks)

    assert attempt.status == "approved" and session.status == Status.APPROVED
    assert (attempt.brand, attempt.last4) == ("visa", "4242")
    assert attempt.gateway == "sandbox" and attempt.gateway_reference.startswith("sbx_") and attempt.auth_code
    assert sandbox.charges_count() == 1
    assert not get_vault().has_card(str(session.pk)), "the card left the vault when it was charged"
    assert session.events.filter(to_state="approved", actor="gateway-task").exists()


def test_declined_then_another_card_is_approved(alpha, django_capture_on_commit_callbacks):
    session = open_card_entry(alpha)
    first = pay(session, "4000000000009995", django_capture_on_commit_callbacks)
    assert first.status == "declined" and first.reason_code == "insufficient_funds"
    assert "insufficient funds" in first.message and session.status == Status.DECLINED

    session.start_card_entry("user:agent")  # Back
    second = pay(session, "5555555555554444", django_capture_on_commit_callbacks)

    assert second.status == "approved" and second.last4 == "4444" and session.status == Status.APPROVED
    assert list(session.attempts.values_list("number", "status")) == [(1, "declined"), (2, "approved")]
    assert first.idempotency_key != second.idempotency_key
    assert sandbox.charges_count() == 1


def test_timeout_after_charging_is_reconciled_not_charged_again(alpha, django_capture_on_commit_callbacks):
    session = open_card_entry(alpha)
    attempt = pay(session, sandbox.TIMEOUT_CHARGED_CARD, django_capture_on_commit_callbacks)

    assert attempt.status == "approved" and attempt.gateway_reference
    assert sandbox.charges_count() == 1


def test_timeout_before_charging_is_retried_with_the_same_key(alpha, django_capture_on_commit_callbacks):
    session = open_card_entry(alpha)
    attempt = pay(session, sandbox.TIMEOUT_NOT_CHARGED_CARD, django_capture_on_commit_callbacks)

    assert attempt.status == "approved"
    assert sandbox.charges_count() == 1
    assert attempt.gateway_reference == sandbox.SandboxAdapter({"merchant_id": "alpha"}).reconcile(
        attempt.idempotency_key, reference="").gateway_reference


def test_vault_empty_is_an_error_without_a_gateway_call(alpha, django_capture_on_commit_callbacks):
    session = open_card_entry(alpha)
    key_card(session, "4242424242424242")
    with django_capture_on_commit_callbacks(execute=False) as enqueued:
        attempt = press_process_payment(session)
    get_vault().discard(str(session.pk))  # the card expired before the worker got to it
    for callback in enqueued:
        callback()
    attempt.refresh_from_db()
    session.refresh_from_db()

    assert attempt.status == "error" and attempt.reason_code == "card_entry_expired"
    assert "key the card again" in attempt.message and session.status == Status.ERROR
    assert sandbox.charges_count() == 0
    assert sandbox.SandboxAdapter({"merchant_id": "alpha"}).reconcile(attempt.idempotency_key, reference="") is None


def test_a_card_of_another_call_that_replaced_the_confirmed_one_is_not_charged(
    alpha, django_capture_on_commit_callbacks
):
    """Between Process and the task, a copy keyed on another call (a key racing a claim) lands
    in the vault: the task charges only the copy the attempt was started for."""
    session = open_card_entry(alpha)
    key_card(session, "4242424242424242")
    with django_capture_on_commit_callbacks(execute=False) as enqueued:
        attempt = press_process_payment(session)
    assert attempt.card_keyed_on == ""  # keyed here without a call (as the keypad simulator does)
    get_vault().put(str(session.pk), Card("5555555555554444", "1230", "123"), keyed_on="another-call")
    for callback in enqueued:
        callback()
    attempt.refresh_from_db()

    assert attempt.status == "error" and attempt.reason_code == "card_entry_expired"
    assert sandbox.charges_count() == 0
    assert not get_vault().has_card(str(session.pk))


def test_redelivered_task_after_the_result_does_nothing(alpha, django_capture_on_commit_callbacks, monkeypatch):
    session = open_card_entry(alpha)
    attempt = pay(session, "4242424242424242", django_capture_on_commit_callbacks)
    calls = []
    monkeypatch.setattr(sandbox.SandboxAdapter, "sale", lambda *a, **k: calls.append(a))
    monkeypatch.setattr(sandbox.SandboxAdapter, "reconcile", lambda *a, **k: calls.append(a))

    charge_attempt.delay(str(attempt.id))

    attempt.refresh_from_db()
    assert attempt.status == "approved" and calls == [] and sandbox.charges_count() == 1


def test_interrupted_attempt_is_reconciled_before_anything_else(alpha, django_capture_on_commit_callbacks):
    """A worker died after the gateway charged: the redelivered task finds `sent`,
    asks the gateway, and stores its answer without taking a card."""
    session = open_card_entry(alpha)
    key_card(session, "4242424242424242")
    with django_capture_on_commit_callbacks(execute=False):
        attempt = press_process_payment(session)
    card = get_vault().take(str(session.pk))
    adapter = sandbox.SandboxAdapter({"merchant_id": "alpha"})
    adapter.sale(card, 1250, "GBP", idempotency_key=attempt.idempotency_key, reference="INV-1",
                 billing=processing._billing(attempt))
    PaymentAttempt.objects.filter(pk=attempt.pk).update(status="sent")

    with django_capture_on_commit_callbacks(execute=True):
        charge_attempt.delay(str(attempt.id))

    attempt.refresh_from_db()
    assert attempt.status == "approved" and attempt.last4 == "4242"
    assert sandbox.charges_count() == 1


def test_interrupted_attempt_unknown_to_the_gateway_asks_for_the_card_again(alpha, django_capture_on_commit_callbacks):
    session = open_card_entry(alpha)
    key_card(session, "4242424242424242")
    with django_capture_on_commit_callbacks(execute=False):
        attempt = press_process_payment(session)
    get_vault().discard(str(session.pk))  # the crashed worker had taken it
    PaymentAttempt.objects.filter(pk=attempt.pk).update(status="sent")

    with django_capture_on_commit_callbacks(execute=True):
        charge_attempt.delay(str(attempt.id))

    attempt.refresh_from_db()
    assert attempt.status == "error" and attempt.reason_code == "card_entry_expired"
    assert sandbox.charges_count() == 0


def test_gateway_unreachable_is_an_error_after_bounded_retries(alpha, django_capture_on_commit_callbacks,
                                                                closed_port_url):
    from gateways.models import GatewayAccount

    account = GatewayAccount(tenant=alpha.tenant, adapter="stripe", display_name="Stripe")
    account.credentials = {"api_key": "sk_test_x", "api_base": closed_port_url, "localstripe_compat": True}
    account.save()
    session = open_card_entry(alpha)
    attempt = pay(session, "4242424242424242", django_capture_on_commit_callbacks)

    assert attempt.gateway == "stripe"
    assert attempt.status == "error" and attempt.reason_code == "gateway_unavailable"


def test_unusable_gateway_account_ends_the_attempt_in_error_without_a_call(alpha, django_capture_on_commit_callbacks):
    from gateways.models import GatewayAccount

    account = GatewayAccount(tenant=alpha.tenant, adapter="stripe", display_name="Stripe")
    account.credentials = {"api_key": "sk_test_x"}
    account.credentials_encrypted = "not-a-token-this-key-can-open"  # e.g. GATEWAY_CREDENTIALS_KEY was rotated
    account.save()
    session = open_card_entry(alpha)
    attempt = pay(session, "4242424242424242", django_capture_on_commit_callbacks)

    session.refresh_from_db()
    assert attempt.status == "error" and attempt.reason_code == "processing_error"
    assert session.status == Status.ERROR  # not stuck in processing: the agent can tell the caller
    assert not get_vault().has_card(session.pk)
    assert sandbox.charges_count() == 0


def test_an_unconfirmed_outcome_allows_no_second_attempt_on_the_session(alpha, django_capture_on_commit_callbacks):
    from securepay.models import IllegalTransition

    session = open_card_entry(alpha)
    key_card(session, "4242424242424242")
    with django_capture_on_commit_callbacks(execute=False):
        attempt = press_process_payment(session)  # enqueued, never run: the gateway never answered
    PaymentAttempt.objects.filter(pk=attempt.pk).update(status="sent")
    processing.give_up(str(attempt.pk))
    session.refresh_from_db()
    assert session.status == Status.ERROR and session.latest_attempt.reason_code == "outcome_unconfirmed"
    with pytest.raises(IllegalTransition):
        session.start_card_entry("user:agent")  # the first attempt may yet have charged the card
    session.refresh_from_db()
    assert session.status == Status.ERROR
    session.end("user:agent")  # the agent checks with the gateway and ends the session
    session.refresh_from_db()
    assert session.status == Status.ENDED
