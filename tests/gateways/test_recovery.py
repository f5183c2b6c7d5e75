"""The recovery sweep: work whose Celery message was lost is finished, exactly once."""

from __future__ import annotations

from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import call_command
from django.utils import timezone

from gateways import processing
from gateways.base import GatewayError
from gateways.config import WEBHOOK_MAX_TRIES
from gateways.models import Refund, WebhookDelivery
from gateways.recovery import Recovered, recover_stuck_work, requeue_due_webhooks
from gateways.sandbox import adapter as sandbox
from gateways.tasks import deliver_webhook
from securepay.models import PaymentAttempt, Status
from securepay.vault import get_vault
from tests.gateways.conftest import (
    documented_verifier,
    key_card,
    open_card_entry,
    pay_but_lose_the_webhook,
    press_process_payment,
    wait_until,
)

pytestmark = pytest.mark.usefixtures("fast_retries")

NOTHING = Recovered(0, 0, 0)


def age(model, pk, seconds: int = 600) -> None:
    """Make a row look as old as work whose message was lost long ago."""
    model.objects.filter(pk=pk).update(created_at=timezone.now() - timedelta(seconds=seconds))


def sweep(capture) -> Recovered:
    with capture(execute=True):  # what the sweep commits is delivered, as outside a test transaction
        return recover_stuck_work()


def lost_charge(world, capture, pan: str = "4242424242424242", **session_fields) -> tuple:
    """Process payment was pressed and committed; the charge message never reached a worker."""
    session = open_card_entry(world, **session_fields)
    key_card(session, pan)
    with capture(execute=False):
        attempt = press_process_payment(session)
    age(PaymentAttempt, attempt.pk)
    return session, attempt


# --- payment attempts ---------------------------------------------------------------------
def test_lost_charge_message_is_charged_exactly_once(alpha, django_capture_on_commit_callbacks):
    session, attempt = lost_charge(alpha, django_capture_on_commit_callbacks)
    session.refresh_from_db()
    assert session.status == Status.PROCESSING and sandbox.charges_count() == 0

    assert sweep(django_capture_on_commit_callbacks) == Recovered(1, 0, 0)

    attempt.refresh_from_db()
    session.refresh_from_db()
    assert attempt.status == "approved" and attempt.last4 == "4242"
    assert session.status == Status.APPROVED and sandbox.charges_count() == 1
    assert sweep(django_capture_on_commit_callbacks) == NOTHING, "idempotent: a second sweep finds nothing"
    assert sandbox.charges_count() == 1


def test_recent_attempt_is_left_to_its_own_message(alpha, django_capture_on_commit_callbacks):
    session = open_card_entry(alpha)
    key_card(session, "4242424242424242")
    with django_capture_on_commit_callbacks(execute=False):
        attempt = press_process_payment(session)

    assert sweep(django_capture_on_commit_callbacks) == NOTHING
    attempt.refresh_from_db()
    assert attempt.status == "pending" and sandbox.charges_count() == 0


def test_sent_attempt_that_reached_the_gateway_is_reconciled_not_charged_again(
        alpha, monkeypatch, django_capture_on_commit_callbacks):
    """The worker timed out after the gateway charged and died; the broker lost the redelivery."""
    session, attempt = lost_charge(alpha, django_capture_on_commit_callbacks, pan=sandbox.TIMEOUT_CHARGED_CARD)
    with pytest.raises(processing.OutcomeStillUnknown), monkeypatch.context() as patch:
        # The gateway cannot be asked at that moment either: the attempt stays `sent`.
        patch.setattr(sandbox.SandboxAdapter, "reconcile", _unreachable)
        processing.charge(str(attempt.pk))
    attempt.refresh_from_db()
    assert attempt.status == "sent" and sandbox.charges_count() == 1
    assert not get_vault().has_card(str(session.pk)), "the card left the vault with the first try"

    assert sweep(django_capture_on_commit_callbacks) == Recovered(1, 0, 0)

    attempt.refresh_from_db()
    session.refresh_from_db()
    assert attempt.status == "approved" and attempt.gateway_reference.startswith("sbx_")
    assert session.status == Status.APPROVED and sandbox.charges_count() == 1
    assert sweep(django_capture_on_commit_callbacks) == NOTHING


def _unreachable(*args, **kwargs):
    raise GatewayError("sandbox: unreachable")


def test_card_gone_from_the_vault_asks_for_it_again_and_never_charges(alpha, django_capture_on_commit_callbacks):
    session, attempt = lost_charge(alpha, django_capture_on_commit_callbacks)
    get_vault().discard(str(session.pk))  # its time in the vault ran out before the sweep

    assert sweep(django_capture_on_commit_callbacks) == Recovered(1, 0, 0)

    attempt.refresh_from_db()
    session.refresh_from_db()
    assert attempt.status == "error" and attempt.reason_code == "card_entry_expired"
    assert "key the card again" in attempt.message and session.status == Status.ERROR
    assert sandbox.charges_count() == 0


# --- webhooks ------------------------------------------------------------------------------
def test_lost_webhook_is_delivered_once_and_signed(alpha, webhook_receiver, django_capture_on_commit_callbacks):
    url, inbox = webhook_receiver(alpha.tenant.webhook_secret)
    session, delivery = pay_but_lose_the_webhook(alpha, url, django_capture_on_commit_callbacks)
    assert inbox.received == [] and delivery.attempts == 0
    assert sweep(django_capture_on_commit_callbacks) == NOTHING, "not stale yet: its message may still come"

    age(WebhookDelivery, delivery.pk)
    assert sweep(django_capture_on_commit_callbacks) == Recovered(0, 1, 0)

    [request] = inbox.wait_for(1)
    assert request["valid"] and request["json"]["event"] == "payment.approved"
    assert request["json"]["session"] == str(session.pk)
    delivery.refresh_from_db()
    assert delivery.delivered and delivery.attempts == 1
    assert sweep(django_capture_on_commit_callbacks) == NOTHING
    assert len(inbox.received) == 1


def test_overdue_retry_is_sent_again_once_per_claim(alpha, settings, monkeypatch, webhook_receiver,
                                                    django_capture_on_commit_callbacks):
    """With a broker: a retry overdue by more than the stale age was lost. A second
    sweep while the re-sent message is on its way does not send it again."""
    deliver_webhook.app.conf.task_always_eager = False  # restored by tests/conftest.py
    url, _inbox = webhook_receiver(alpha.tenant.webhook_secret)
    _session, delivery = pay_but_lose_the_webhook(alpha, url, django_capture_on_commit_callbacks)
    due = timezone.now() - timedelta(seconds=settings.RECOVERY_STALE_SECONDS + 1)
    WebhookDelivery.objects.filter(pk=delivery.pk).update(attempts=2, next_retry_at=due)
    published: list[str] = []
    monkeypatch.setattr(deliver_webhook, "delay", published.append)  # a broker that accepts, then loses it

    assert requeue_due_webhooks() == 1
    assert requeue_due_webhooks() == 0, "claimed: the first re-sent message is on its way"
    assert published == [str(delivery.pk)]

    later = timezone.now() + timedelta(seconds=settings.RECOVERY_STALE_SECONDS + 1)
    assert requeue_due_webhooks(now=later) == 1, "lost again: sent again one stale age later"


def test_not_yet_due_retry_is_left_alone(alpha, webhook_receiver, django_capture_on_commit_callbacks):
    url, inbox = webhook_receiver(alpha.tenant.webhook_secret)
    _session, delivery = pay_but_lose_the_webhook(alpha, url, django_capture_on_commit_callbacks)
    WebhookDelivery.objects.filter(pk=delivery.pk).update(attempts=1,
                                                          next_retry_at=timezone.now() + timedelta(minutes=5))
    assert sweep(django_capture_on_commit_callbacks) == NOTHING and inbox.received == []


def test_webhook_out_of_tries_is_not_sent_again(alpha, webhook_receiver, django_capture_on_commit_callbacks):
    url, inbox = webhook_receiver(alpha.tenant.webhook_secret)
    _session, delivery = pay_but_lose_the_webhook(alpha, url, django_capture_on_commit_callbacks)
    WebhookDelivery.objects.filter(pk=delivery.pk).update(attempts=WEBHOOK_MAX_TRIES, next_retry_at=None,
                                                          last_error="HTTP 500")
    age(WebhookDelivery, delivery.pk)

    assert sweep(django_capture_on_commit_callbacks) == NOTHING
    assert inbox.received == []


def test_eager_delivery_makes_one_try_and_leaves_the_next_to_the_sweep(alpha, webhook_receiver,
                                                                      django_capture_on_commit_callbacks):
    url, inbox = webhook_receiver(alpha.tenant.webhook_secret)
    inbox.failures_to_fake = WEBHOOK_MAX_TRIES
    session = open_card_entry(alpha, callback_url=url)
    key_card(session, "4242424242424242")
    with django_capture_on_commit_callbacks(execute=True):
        press_process_payment(session)

    assert [r["answered"] for r in inbox.received] == [500]
    delivery = WebhookDelivery.objects.get()
    assert delivery.attempts == 1 and not delivery.delivered and delivery.next_retry_at is not None
    assert sweep(django_capture_on_commit_callbacks) == Recovered(0, 1, 0)
    assert [r["answered"] for r in inbox.received] == [500, 500]


def test_sweep_keeps_each_tenants_webhook_with_its_url_and_secret(alpha, beta, webhook_receiver,
                                                                  django_capture_on_commit_callbacks):
    alpha_url, alpha_inbox = webhook_receiver(alpha.tenant.webhook_secret)
    beta_url, beta_inbox = webhook_receiver(beta.tenant.webhook_secret)
    alpha_session, alpha_delivery = pay_but_lose_the_webhook(alpha, alpha_url, django_capture_on_commit_callbacks)
    beta_session, beta_delivery = pay_but_lose_the_webhook(beta, beta_url, django_capture_on_commit_callbacks)
    age(WebhookDelivery, alpha_delivery.pk)
    age(WebhookDelivery, beta_delivery.pk)

    assert sweep(django_capture_on_commit_callbacks) == Recovered(0, 2, 0)

    [to_alpha] = alpha_inbox.wait_for(1)
    [to_beta] = beta_inbox.wait_for(1)
    verify = documented_verifier()
    signature = to_alpha["headers"]["SecurePay-Signature"]
    assert to_alpha["json"]["session"] == str(alpha_session.pk)
    assert verify(signature, to_alpha["body"], alpha.tenant.webhook_secret)
    assert not verify(signature, to_alpha["body"], beta.tenant.webhook_secret)
    assert to_beta["json"]["session"] == str(beta_session.pk) and to_beta["valid"]
    assert alpha.tenant.webhook_secret != beta.tenant.webhook_secret


# --- refunds ---------------------------------------------------------------------------------
@pytest.fixture
def paid_attempt(alpha, django_capture_on_commit_callbacks) -> PaymentAttempt:
    session = open_card_entry(alpha, amount_minor=1250)
    key_card(session, "4242424242424242")
    with django_capture_on_commit_callbacks(execute=True):
        attempt = press_process_payment(session)
    attempt.refresh_from_db()
    assert attempt.status == "approved"
    return attempt


def pending_refund(attempt: PaymentAttempt, amount_minor: int) -> Refund:
    """A refund reserved and sent whose answer never came back (what refund_payment leaves)."""
    refund = Refund.objects.create(tenant=attempt.tenant, attempt=attempt, amount_minor=amount_minor, actor="api:test")
    age(Refund, refund.pk)
    return refund


def test_pending_refund_the_gateway_made_is_settled(alpha, paid_attempt, django_capture_on_commit_callbacks):
    refund = pending_refund(paid_attempt, 500)
    gateway = sandbox.SandboxAdapter({"merchant_id": alpha.tenant.slug})
    made = gateway.refund(paid_attempt.gateway_reference, 500, idempotency_key=refund.idempotency_key)
    assert Refund.refundable_minor(paid_attempt) == 750, "reserved while unknown"

    assert sweep(django_capture_on_commit_callbacks) == Recovered(0, 0, 1)

    refund.refresh_from_db()
    paid_attempt.refresh_from_db()
    assert refund.status == "approved" and refund.gateway_reference == made.gateway_reference
    assert paid_attempt.refunded_minor == 500 and Refund.refundable_minor(paid_attempt) == 750
    assert sweep(django_capture_on_commit_callbacks) == NOTHING
    paid_attempt.refresh_from_db()
    assert paid_attempt.refunded_minor == 500, "booked once"


def test_pending_refund_the_gateway_never_got_is_released(paid_attempt, django_capture_on_commit_callbacks):
    refund = pending_refund(paid_attempt, 500)

    assert sweep(django_capture_on_commit_callbacks) == Recovered(0, 0, 1)

    refund.refresh_from_db()
    paid_attempt.refresh_from_db()
    assert refund.status == "error" and refund.reason_code == "refund_not_received"
    assert paid_attempt.refunded_minor == 0 and Refund.refundable_minor(paid_attempt) == 1250


def test_pending_refund_stays_reserved_while_the_gateway_cannot_say(paid_attempt, monkeypatch,
                                                                   django_capture_on_commit_callbacks):
    refund = pending_refund(paid_attempt, 500)
    monkeypatch.setattr(sandbox.SandboxAdapter, "reconcile", _unreachable)

    assert sweep(django_capture_on_commit_callbacks) == NOTHING

    refund.refresh_from_db()
    assert refund.status == "pending" and Refund.refundable_minor(paid_attempt) == 750


# --- the command operators schedule -----------------------------------------------------------
def test_management_command_prints_what_it_recovered(alpha, django_capture_on_commit_callbacks):
    lost_charge(alpha, django_capture_on_commit_callbacks)
    out = StringIO()
    with django_capture_on_commit_callbacks(execute=True):
        call_command("recover_stuck_work", stdout=out)
    assert out.getvalue().strip() == (
        "requeued 1 payment attempt(s), 0 webhook delivery(ies); settled 0 refund(s); "
        "ended 0 call(s) of lost media workers"
    )
    assert sandbox.charges_count() == 1


@pytest.mark.celery_worker
@pytest.mark.slow
@pytest.mark.timeout(120)
def test_lost_charge_message_is_charged_by_a_real_worker(alpha, start_worker, monkeypatch):
    from gateways.tasks import charge_attempt

    start_worker()
    session = open_card_entry(alpha)
    key_card(session, "4242424242424242")
    with monkeypatch.context() as patch:
        patch.setattr(charge_attempt, "delay", lambda attempt_id: None)  # the publish after the commit is lost
        attempt = press_process_payment(session)
    age(PaymentAttempt, attempt.pk)

    call_command("recover_stuck_work", stdout=StringIO())  # publishes to the worker's broker

    def charged() -> bool:
        attempt.refresh_from_db()
        return attempt.status == "approved"

    wait_until(charged, 30, "the re-sent charge to be processed")
    session.refresh_from_db()
    assert session.status == Status.APPROVED
