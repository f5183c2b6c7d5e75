"""Refund an approved payment, never above what was captured less what was refunded.

The attempt row is locked while the refundable amount is computed and the
refund reserved (a pending Refund counts against it), so two concurrent
requests cannot both take the last pound. The gateway call happens outside
that lock, keyed by the Refund's id: a retried call never refunds twice. A
refund whose outcome stayed unknown is settled later by the recovery sweep
(gateways.recovery), which asks the gateway with the same key.
"""

from __future__ import annotations

import logging
import time

from django.db import transaction
from django.utils import timezone

from gateways import webhooks
from gateways.base import GatewayError, GatewayOutcomeUnknown, GatewayResult, GatewayTransportError, agent_message
from gateways.config import gateway_retry_delays
from gateways.models import Refund, RefundStatus, adapter_for_attempt
from securepay.models import AttemptStatus, PaymentAttempt, PaymentSession

logger = logging.getLogger(__name__)

# The gateway certainly has no record of the refund: nothing moved, the amount is free again.
REFUND_NOT_RECEIVED = GatewayResult("error", "refund_not_received", agent_message("refund_not_received"))


class NothingToRefund(Exception):
    """The session has no approved payment."""


class RefundTooLarge(Exception):
    def __init__(self, refundable_minor: int):
        self.refundable_minor = refundable_minor
        super().__init__(f"at most {refundable_minor} minor units can be refunded")


class RefundOutcomeUnknown(Exception):
    """The gateway did not confirm the refund; it stays pending (reserved)."""

    def __init__(self, refund: Refund):
        self.refund = refund
        super().__init__(f"refund {refund.pk}: gateway outcome unknown")


def refund_payment(session: PaymentSession, amount_minor: int, actor: str) -> Refund:
    """Refund `amount_minor` of the session's approved payment; the Refund says how it went."""
    approved = session.attempts.filter(status=AttemptStatus.APPROVED).order_by("-number").first()
    if approved is None:
        raise NothingToRefund(f"session {session.pk} has no approved payment")
    with transaction.atomic():
        attempt = PaymentAttempt.objects.select_for_update().get(pk=approved.pk)
        refundable = Refund.refundable_minor(attempt)
        if amount_minor > refundable:
            raise RefundTooLarge(refundable)
        refund = Refund.objects.create(tenant_id=attempt.tenant_id, attempt=attempt, amount_minor=amount_minor,
                                       actor=actor)
    result = _refund_at_gateway(attempt, refund)
    if result is None:
        raise RefundOutcomeUnknown(refund)
    return _settle(refund, result)


def reconcile_refund(refund: Refund) -> Refund | None:
    """Ask the gateway what became of a pending refund and settle it; None when it
    cannot say now (the refund stays pending, its amount reserved)."""
    attempt = refund.attempt
    try:
        found = adapter_for_attempt(attempt).reconcile(refund.idempotency_key, reference=attempt.session.reference,
                                                       refund_of=attempt.gateway_reference)
    except GatewayError as exc:
        logger.warning("refund %s: reconcile failed (%s)", refund.pk, exc)
        return None
    return _settle(refund, found or REFUND_NOT_RECEIVED)


def _settle(refund: Refund, result: GatewayResult) -> Refund:
    """Store the gateway's answer once: an approved refund is booked, any other releases its reservation."""
    with transaction.atomic():
        attempt = PaymentAttempt.objects.select_for_update().select_related("session").get(pk=refund.attempt_id)
        refund = Refund.objects.select_for_update().get(pk=refund.pk)
        if refund.status != RefundStatus.PENDING:
            return refund  # the request and the recovery sweep both got an answer; the first one counts
        refund.attempt = attempt
        refund.status = result.status
        refund.gateway_reference = result.gateway_reference
        refund.reason_code = result.reason_code
        refund.message = result.message[:300]
        refund.completed_at = timezone.now()
        refund.save()
        if refund.status == RefundStatus.APPROVED:
            attempt.refunded_minor += refund.amount_minor
            attempt.save(update_fields=["refunded_minor"])
            webhooks.refund_event(refund)
    return refund


def _refund_at_gateway(attempt: PaymentAttempt, refund: Refund) -> GatewayResult | None:
    """The gateway's answer, retried with the same key; None when it may have refunded but did not say."""
    adapter = adapter_for_attempt(attempt)
    maybe_processed = False
    for pause in (*gateway_retry_delays(), None):
        try:
            return adapter.refund(attempt.gateway_reference, refund.amount_minor,
                                  idempotency_key=refund.idempotency_key)
        except GatewayTransportError as exc:
            logger.warning("refund %s: gateway not reached (%s)", refund.pk, exc)
        except GatewayOutcomeUnknown as exc:
            logger.warning("refund %s: outcome unknown (%s)", refund.pk, exc)
            maybe_processed = True
        except GatewayError as exc:
            logger.error("refund %s: gateway refused the request (%s)", refund.pk, exc)
            return GatewayResult("error", "processing_error", agent_message("processing_error"))
        if pause is not None:
            time.sleep(pause)
    if maybe_processed:
        return None
    return GatewayResult("error", "gateway_unavailable", agent_message("gateway_unavailable"))
