"""Results to the integration: signed webhook events and their delivery.

An event is written as a `WebhookDelivery` row in the same transaction as the
change it reports, then handed to Celery by id once that transaction commits.
The row is the record of truth (tries made, when the next is due): a Celery
message lost on the way is sent again by the recovery sweep (gateways.recovery).
Header (DESIGN.md [interface] webhooks):
``SecurePay-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<raw body>">``
keyed by the tenant's webhook secret. See WEBHOOKS.md for receivers.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import logging
import socket
import time
import uuid
from datetime import timedelta
from urllib.parse import urlsplit

import requests
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from gateways.config import WEBHOOK_MAX_TRIES, WEBHOOK_TIMEOUT_SECONDS, webhook_retry_base_seconds
from gateways.models import Refund, WebhookDelivery
from securepay.models import PaymentAttempt, PaymentSession, Status
from securepay.money import amount_from_minor

logger = logging.getLogger(__name__)

SIGNATURE_HEADER = "SecurePay-Signature"
PAYMENT_EVENTS = {
    Status.APPROVED: "payment.approved",
    Status.DECLINED: "payment.declined",
    Status.ERROR: "payment.error",
}
SESSION_ENDED = "session.ended"
PAYMENT_REFUNDED = "payment.refunded"


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The value of the SecurePay-Signature header for `body` sent at `timestamp`."""
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def retry_delay_seconds(retries_done: int) -> float:
    """Exponential backoff: base, 2x base, 4x base, ..."""
    return webhook_retry_base_seconds() * 2**retries_done


# --- events ---------------------------------------------------------------------------
def payment_result_event(attempt: PaymentAttempt) -> WebhookDelivery | None:
    """payment.approved / .declined / .error for a finished attempt."""
    return _record(attempt.session, PAYMENT_EVENTS[attempt.status], {
        "amount": amount_from_minor(attempt.amount_minor, attempt.currency),
        "currency": attempt.currency,
        "status": attempt.status,
        "reason_code": attempt.reason_code,
        **_card_result(attempt),
    })


def refund_event(refund: Refund) -> WebhookDelivery | None:
    attempt = refund.attempt
    fully = attempt.refunded_minor >= attempt.amount_minor
    return _record(attempt.session, PAYMENT_REFUNDED, {
        "amount": amount_from_minor(refund.amount_minor, attempt.currency),
        "currency": attempt.currency,
        "status": "refunded" if fully else "partially_refunded",
        "refund": str(refund.id),
        "refund_reference": refund.gateway_reference,
        "refunded_total": amount_from_minor(attempt.refunded_minor, attempt.currency),
        **_card_result(attempt),
    })


def session_ended_event(session: PaymentSession) -> WebhookDelivery | None:
    attempt = session.latest_attempt
    return _record(session, SESSION_ENDED, {
        "amount": session.amount or "",
        "currency": session.currency,
        "status": Status.ENDED,
        "payment_status": attempt.status if attempt else "",
        **(_card_result(attempt) if attempt else {"gateway_reference": "", "brand": "", "last4": ""}),
    })


def on_session_transitioned(sender, session: PaymentSession, to_state: str, **kwargs) -> None:
    """session.ended; payment results are written with the result itself (gateways.processing)."""
    if to_state == Status.ENDED:
        session_ended_event(session)


def _card_result(attempt: PaymentAttempt) -> dict[str, str]:
    # What PCI DSS allows after authorisation, and nothing else.
    return {"gateway_reference": attempt.gateway_reference, "brand": attempt.brand, "last4": attempt.last4}


def _record(session: PaymentSession, event_type: str, fields: dict) -> WebhookDelivery | None:
    """Write the event (in the caller's transaction) and enqueue its delivery on commit."""
    if not session.callback_url:
        return None
    event_id = f"evt_{uuid.uuid4().hex}"
    body = {"id": event_id, "event": event_type, "session": str(session.pk), "reference": session.reference,
            **fields, "created": int(time.time())}
    delivery = WebhookDelivery.objects.create(
        tenant_id=session.tenant_id, session=session, event_id=event_id, event_type=event_type,
        url=session.callback_url, body=json.dumps(body, separators=(",", ":")),
    )
    from gateways.tasks import deliver_webhook  # the tasks module imports this one

    transaction.on_commit(lambda: deliver_webhook.delay(str(delivery.id)))
    return delivery


# --- delivery ---------------------------------------------------------------------------
def non_public_address(url: str) -> str:
    """Why `url` must not be called from inside our network, or "" when it may.

    A tenant chooses its callback URLs; without this check a webhook could probe
    our own services (metadata endpoints, Redis, the database) from the worker.
    Checked at each try, since DNS answers change. Demo/development may allow it.
    """
    if settings.WEBHOOK_ALLOW_PRIVATE_ADDRESSES:
        return ""
    host = urlsplit(url).hostname or ""
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except OSError:
        return ""  # unresolvable: the POST itself fails and is retried like any outage
    for address in sorted(addresses):
        if not ipaddress.ip_address(address.split("%", 1)[0]).is_global:
            return f"refused: {host} resolves to a non-public address ({address})"
    return ""


def attempt_delivery(delivery_id: str) -> WebhookDelivery:
    """POST the event once and log the try. The row's `next_retry_at` says when
    to try again: None once delivered or out of tries."""
    delivery = WebhookDelivery.objects.select_related("tenant").get(pk=delivery_id)
    if delivery.delivered:
        return delivery  # a redelivered task
    body = delivery.body.encode()
    headers = {"Content-Type": "application/json", "User-Agent": "SecurePay-Webhooks/1",
               SIGNATURE_HEADER: sign(delivery.tenant.webhook_secret, int(time.time()), body)}
    status_code, error = None, non_public_address(delivery.url)
    refused = bool(error)
    if not refused:
        try:
            response = requests.post(delivery.url, data=body, headers=headers, timeout=WEBHOOK_TIMEOUT_SECONDS,
                                     allow_redirects=False)
            status_code = response.status_code
            if not 200 <= status_code < 300:
                error = f"HTTP {status_code}"
        except requests.RequestException as exc:
            error = f"{type(exc).__name__}: {exc}"
    now = timezone.now()
    delivery.attempts += 1
    delivery.last_status_code = status_code
    delivery.last_error = error[:300]
    delivery.delivered_at = now if not error else None
    tries_left = delivery.attempts < WEBHOOK_MAX_TRIES and not refused
    delivery.next_retry_at = (
        now + timedelta(seconds=retry_delay_seconds(delivery.attempts - 1)) if error and tries_left else None
    )
    delivery.save(update_fields=["attempts", "last_status_code", "last_error", "delivered_at", "next_retry_at"])
    if error:
        logger.warning("webhook %s to tenant %s: try %d failed: %s", delivery.event_id, delivery.tenant.slug,
                       delivery.attempts, error)
    return delivery

