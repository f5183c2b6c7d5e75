"""Webhooks: signed, retried until delivered, de-duplicable, logged for admins."""

from __future__ import annotations

import json
import time

import pytest

from gateways import webhooks
from gateways.config import WEBHOOK_MAX_TRIES
from gateways.models import WebhookDelivery
from gateways.recovery import recover_stuck_work
from gateways.tasks import deliver_webhook
from gateways.webhooks import sign
from tests.gateways.conftest import (
    documented_verifier,
    key_card,
    open_card_entry,
    pay_but_lose_the_webhook,
    press_process_payment,
)

pytestmark = pytest.mark.usefixtures("fast_retries")

BODY_FIELDS = {"id", "event", "session", "reference", "amount", "currency", "status", "gateway_reference", "brand",
               "last4", "created"}


def approved_payment(world, callback_url, capture, pan="4242424242424242"):
    session = open_card_entry(world, callback_url=callback_url, amount_minor=1250)
    key_card(session, pan)
    with capture(execute=True):
        attempt = press_process_payment(session)
    return session, attempt


def test_approved_payment_is_delivered_signed(alpha, webhook_receiver, django_capture_on_commit_callbacks):
    url, inbox = webhook_receiver(alpha.tenant.webhook_secret)
    session, attempt = approved_payment(alpha, url, django_capture_on_commit_callbacks)

    [request] = inbox.wait_for(1)
    assert request["valid"], "the documented check accepts our signature"
    event = request["json"]
    assert BODY_FIELDS <= set(event)
    assert event["event"] == "payment.approved" and event["session"] == str(session.pk)
    assert (event["reference"], event["amount"], event["currency"], event["status"]) == ("INV-1", "12.50", "GBP",
                                                                                         "approved")
    attempt.refresh_from_db()
    assert (event["brand"], event["last4"], event["gateway_reference"]) == ("visa", "4242", attempt.gateway_reference)
    assert abs(event["created"] - time.time()) < 60
    delivery = WebhookDelivery.objects.get(event_id=event["id"])
    assert delivery.delivered and delivery.attempts == 1 and delivery.last_status_code == 200
    assert delivery.tenant == alpha.tenant and json.loads(delivery.body) == event


def test_declined_payment_event(alpha, webhook_receiver, django_capture_on_commit_callbacks):
    url, inbox = webhook_receiver(alpha.tenant.webhook_secret)
    approved_payment(alpha, url, django_capture_on_commit_callbacks, pan="4000000000000119")
    [request] = inbox.wait_for(1)
    assert request["json"]["event"] == "payment.declined" and request["json"]["reason_code"] == "do_not_honour"


def test_endpoint_down_is_retried_then_delivered(alpha, webhook_receiver, django_capture_on_commit_callbacks):
    """Eager Celery (the demo): one try per call; the recovery sweep sends each due retry."""
    url, inbox = webhook_receiver(alpha.tenant.webhook_secret)
    inbox.failures_to_fake = 2
    approved_payment(alpha, url, django_capture_on_commit_callbacks)
    assert [r["answered"] for r in inbox.received] == [500], "the agent's request made one try only"

    for _ in range(3):
        with django_capture_on_commit_callbacks(execute=True):
            recover_stuck_work()

    accepted = inbox.wait_for(1)
    assert [r["answered"] for r in inbox.received] == [500, 500, 200]
    assert len({r["json"]["id"] for r in inbox.received}) == 1, "a retry is the same event"
    assert {r["body"] for r in inbox.received} == {accepted[0]["body"]}
    delivery = WebhookDelivery.objects.get()
    assert delivery.delivered and delivery.attempts == 3 and delivery.last_status_code == 200
    assert delivery.next_retry_at is None


def test_worker_retries_with_exponential_backoff(alpha, settings, monkeypatch, webhook_receiver,
                                                 django_capture_on_commit_callbacks):
    """Outside eager mode the task schedules its own retries: 30 s, then 60 s (see also test_real_worker)."""
    url, inbox = webhook_receiver(alpha.tenant.webhook_secret)
    inbox.failures_to_fake = 2
    _session, delivery = pay_but_lose_the_webhook(alpha, url, django_capture_on_commit_callbacks)
    settings.WEBHOOK_RETRY_BASE_SECONDS = 30
    countdowns: list[float] = []
    monkeypatch.setattr(deliver_webhook, "retry", lambda countdown, throw: countdowns.append(countdown))

    for _ in range(3):
        deliver_webhook(str(delivery.pk))  # called the way a worker calls it: request.is_eager is False

    assert [r["answered"] for r in inbox.received] == [500, 500, 200]
    assert len(countdowns) == 2 and 29 < countdowns[0] <= 30 and 59 < countdowns[1] <= 60
    delivery.refresh_from_db()
    assert delivery.delivered and delivery.attempts == 3 and delivery.next_retry_at is None


def test_endpoint_not_listening_yet_is_retried(alpha, django_capture_on_commit_callbacks, webhook_receiver):
    from tests.gateways.conftest import free_port

    dead_url = f"http://127.0.0.1:{free_port()}/hook"
    approved_payment(alpha, dead_url, django_capture_on_commit_callbacks)
    for _ in range(WEBHOOK_MAX_TRIES):  # the last sweep finds nothing left to try
        with django_capture_on_commit_callbacks(execute=True):
            recover_stuck_work()
    delivery = WebhookDelivery.objects.get()
    assert not delivery.delivered and delivery.attempts == 8, "bounded: eight tries, then it stops"
    assert delivery.last_status_code is None and "ConnectionError" in delivery.last_error
    assert delivery.next_retry_at is None

    # The endpoint comes up; the admin's log shows what happened. A later
    # delivery of the same row (e.g. re-queued by an operator) succeeds.
    url, inbox = webhook_receiver(alpha.tenant.webhook_secret)
    WebhookDelivery.objects.filter(pk=delivery.pk).update(url=url)

    deliver_webhook.delay(str(delivery.pk))
    assert len(inbox.wait_for(1)) == 1
    delivery.refresh_from_db()
    assert delivery.delivered and delivery.attempts == 9


def test_replayed_delivery_is_detectable(alpha, webhook_receiver, django_capture_on_commit_callbacks):
    url, inbox = webhook_receiver(alpha.tenant.webhook_secret)
    approved_payment(alpha, url, django_capture_on_commit_callbacks)
    [original] = inbox.wait_for(1)
    verify = documented_verifier()

    # An attacker replays the captured request byte for byte after 5 minutes: rejected.
    header = original["headers"]["SecurePay-Signature"]
    stale = sign(alpha.tenant.webhook_secret, int(time.time()) - 301, original["body"])
    assert verify(header, original["body"], alpha.tenant.webhook_secret)
    assert not verify(stale, original["body"], alpha.tenant.webhook_secret)
    # ... or a moved timestamp: the signature no longer matches.
    forged = header.replace(header.split(",")[0], f"t={int(time.time()) + 1}")
    assert not verify(forged, original["body"], alpha.tenant.webhook_secret)
    # Within 5 minutes, the same event id tells the receiver it saw it already.
    WebhookDelivery.objects.filter(event_id=original["json"]["id"]).update(delivered_at=None)
    deliver_webhook.delay(str(WebhookDelivery.objects.get().pk))
    assert inbox.received[-1]["replay"] and inbox.received[-1]["valid"]


def test_wrong_secret_does_not_verify(alpha, beta, webhook_receiver, django_capture_on_commit_callbacks):
    url, inbox = webhook_receiver(beta.tenant.webhook_secret)
    approved_payment(alpha, url, django_capture_on_commit_callbacks)
    assert inbox.received and not any(r["valid"] for r in inbox.received)


def test_session_ended_is_sent(alpha, webhook_receiver, django_capture_on_commit_callbacks):
    url, inbox = webhook_receiver(alpha.tenant.webhook_secret)
    session, _attempt = approved_payment(alpha, url, django_capture_on_commit_callbacks)
    with django_capture_on_commit_callbacks(execute=True):
        session.end("api:test")

    events = [r["json"] for r in inbox.wait_for(2)]
    assert [e["event"] for e in events] == ["payment.approved", "session.ended"]
    ended = events[1]
    assert ended["status"] == "ended" and ended["payment_status"] == "approved" and ended["last4"] == "4242"
    assert ended["id"] != events[0]["id"]


def test_no_callback_url_no_delivery(alpha, django_capture_on_commit_callbacks):
    session, _attempt = approved_payment(alpha, "", django_capture_on_commit_callbacks)
    with django_capture_on_commit_callbacks(execute=True):
        session.end("api:test")
    assert not WebhookDelivery.objects.exists()


def test_delivery_log_is_read_only_and_walled_in_the_admin(alpha, beta, webhook_receiver,
                                                            django_capture_on_commit_callbacks):
    url, _inbox = webhook_receiver(alpha.tenant.webhook_secret)
    approved_payment(alpha, url, django_capture_on_commit_callbacks)
    delivery = WebhookDelivery.objects.get()

    own = alpha.client_for("admin").get("/admin/gateways/webhookdelivery/")
    assert own.status_code == 200 and delivery.event_id in own.content.decode()
    other = beta.client_for("admin").get("/admin/gateways/webhookdelivery/")
    assert other.status_code == 200 and delivery.event_id not in other.content.decode()
    assert beta.client_for("admin").get(f"/admin/gateways/webhookdelivery/{delivery.pk}/change/").status_code in (
        302, 404)
    assert alpha.client_for("admin").get("/admin/gateways/webhookdelivery/add/").status_code == 403


def test_callbacks_to_non_public_addresses_are_refused_in_production(
    alpha, webhook_receiver, django_capture_on_commit_callbacks, settings
):
    settings.WEBHOOK_ALLOW_PRIVATE_ADDRESSES = False  # the production default
    url, inbox = webhook_receiver(alpha.tenant.webhook_secret)  # a receiver on 127.0.0.1
    session, _attempt = approved_payment(alpha, url, django_capture_on_commit_callbacks)

    time.sleep(0.3)
    assert inbox.received == []  # nothing was sent into our own network
    delivery = WebhookDelivery.objects.get(session=session)
    assert not delivery.delivered and "non-public address" in delivery.last_error
    assert delivery.next_retry_at is None  # refused for good, not retried
    assert webhooks.non_public_address("https://8.8.8.8/hook") == ""
    assert webhooks.non_public_address("https://169.254.169.254/latest/meta-data/").startswith("refused")
