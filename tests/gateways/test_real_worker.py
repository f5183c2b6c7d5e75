"""A real Celery worker process and a real broker: the payment as production runs it."""

from __future__ import annotations

import time

import pytest

from gateways.models import GatewayAccount, WebhookDelivery
from securepay.models import PaymentAttempt
from tests.gateways.conftest import (
    CRASH_ENV,
    LOCALSTRIPE_KEY,
    WORKER_VISIBILITY_TIMEOUT,
    key_card,
    localstripe_get,
    open_card_entry,
    press_process_payment,
    wait_until,
)
from tests.support import require_tcp

pytestmark = [
    pytest.mark.celery_worker,
    pytest.mark.postgres,
    pytest.mark.redis,
    pytest.mark.slow,
    pytest.mark.timeout(120),
]


def final_attempt(attempt: PaymentAttempt, timeout: float = 30.0) -> PaymentAttempt:
    def stored() -> bool:
        attempt.refresh_from_db()
        return attempt.status in ("approved", "declined", "error")

    wait_until(stored, timeout, f"attempt {attempt.pk} to get a result")
    return attempt


def all_localstripe_charges(base_url: str) -> list[dict]:
    """Every Charge localstripe made (its own records, paged)."""
    found, after = [], ""
    while True:
        page = localstripe_get(base_url, "/v1/charges?limit=100" + after)
        found += page["data"]
        if not page["has_more"]:
            return found
        after = f"&starting_after={page['data'][-1]['id']}"


def test_approved_end_to_end_with_the_redis_broker(alpha, start_worker, webhook_receiver):
    start_worker()
    url, inbox = webhook_receiver(alpha.tenant.webhook_secret)
    session = open_card_entry(alpha, callback_url=url)
    key_card(session, "4242424242424242")

    attempt = final_attempt(press_process_payment(session))

    assert attempt.status == "approved" and attempt.last4 == "4242" and attempt.gateway_reference
    session.refresh_from_db()
    assert session.status == "approved"
    [request] = inbox.wait_for(1)
    assert request["valid"] and request["json"]["event"] == "payment.approved"
    wait_until(lambda: WebhookDelivery.objects.filter(delivered_at__isnull=False).exists(), 10, "delivery logged")


def test_webhook_endpoint_down_is_retried_by_the_worker(alpha, start_worker, webhook_receiver):
    """With a broker the task schedules its own retries (WEBHOOK_RETRY_BASE_SECONDS=0.2 in the worker)."""
    start_worker()
    url, inbox = webhook_receiver(alpha.tenant.webhook_secret)
    inbox.failures_to_fake = 2
    session = open_card_entry(alpha, callback_url=url)
    key_card(session, "4242424242424242")

    final_attempt(press_process_payment(session))

    assert len(inbox.wait_for(1)) == 1
    assert [r["answered"] for r in inbox.received] == [500, 500, 200]
    assert len({r["json"]["id"] for r in inbox.received}) == 1, "a retry is the same event"
    wait_until(lambda: WebhookDelivery.objects.filter(delivered_at__isnull=False, attempts=3).exists(), 10,
               "delivery logged after three tries")


def test_worker_killed_after_the_gateway_call_charges_exactly_once(alpha, start_worker, localstripe_server):
    account = GatewayAccount(tenant=alpha.tenant, adapter="stripe", display_name="Stripe (localstripe)")
    account.credentials = {"api_key": LOCALSTRIPE_KEY, "api_base": localstripe_server, "localstripe_compat": True}
    account.save()
    charges_before = len(all_localstripe_charges(localstripe_server))
    doomed = start_worker(**{CRASH_ENV: "1"})
    session = open_card_entry(alpha)
    key_card(session, "4242424242424242")

    attempt = press_process_payment(session)
    delivered_at = time.monotonic()
    assert doomed.wait_exit(30) == 1, doomed.log()[-2000:]

    attempt.refresh_from_db()
    assert attempt.status == "sent", "the worker died between the gateway's answer and storing it"
    assert len(all_localstripe_charges(localstripe_server)) == charges_before + 1

    # acks_late: the unacknowledged task comes back to the new worker once it is
    # older than the visibility timeout (see WORKER_VISIBILITY_TIMEOUT).
    time.sleep(max(0.0, delivered_at + WORKER_VISIBILITY_TIMEOUT + 0.5 - time.monotonic()))
    start_worker()
    attempt = final_attempt(attempt, 30)

    assert attempt.status == "approved" and attempt.gateway == "stripe"
    assert attempt.gateway_reference.startswith("pi_") and attempt.last4 == "4242"
    charges = all_localstripe_charges(localstripe_server)
    assert len(charges) == charges_before + 1, "reconciled, not charged again"
    assert [c["payment_intent"] for c in charges if c["payment_intent"] == attempt.gateway_reference]
    session.refresh_from_db()
    assert session.status == "approved"


def test_approved_with_the_rabbitmq_broker(alpha, start_worker, worker_env):
    from securepay.celery import app
    from tests.gateways.conftest import _use_broker

    require_tcp("127.0.0.1", 5672, "RabbitMQ")
    broker_url = "amqp://guest:guest@127.0.0.1:5672//"
    _use_broker(app, broker_url)
    worker = start_worker(CELERY_BROKER_URL=broker_url)
    assert "amqp://guest:**@127.0.0.1:5672//" in worker.log()
    session = open_card_entry(alpha)
    key_card(session, "5555555555554444")

    attempt = final_attempt(press_process_payment(session))

    assert attempt.status == "approved" and attempt.last4 == "4444"
