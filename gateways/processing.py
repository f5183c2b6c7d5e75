"""Charge a payment attempt exactly once.

The task that runs this carries the attempt id only. The attempt row is the
record of truth: `pending` -> `sent` is committed *before* the card leaves the
vault, so a task that finds `sent` knows an earlier run may have reached the
gateway and asks it (reconcile, same idempotency key) before anything else.
The card lives only in this module's stack frames between `Vault.take` and
the gateway's answer: it can ride no Celery message, so every retry that needs
it happens here, in process. After a worker crash the card is gone; reconcile
then decides, and a gateway without a record of the attempt means "key the
card again" - never a second charge, never a lost one.
"""

from __future__ import annotations

import logging
import os
import time

from django.core.exceptions import ImproperlyConfigured
from django.db import transaction
from django.utils import timezone

from gateways import webhooks
from gateways.base import (
    BillingDetails,
    GatewayAdapter,
    GatewayConfigError,
    GatewayError,
    GatewayOutcomeUnknown,
    GatewayResult,
    GatewayTransportError,
    agent_message,
)
from gateways.config import gateway_retry_delays
from gateways.models import active_adapter, adapter_for_attempt
from securepay.card import Card
from securepay.models import UNCONFIRMED_OUTCOME, AttemptStatus, PaymentAttempt
from securepay.vault import get_vault

logger = logging.getLogger(__name__)

ACTOR = "gateway-task"
FINAL_STATUSES = frozenset({AttemptStatus.APPROVED, AttemptStatus.DECLINED, AttemptStatus.ERROR})
CARD_ENTRY_EXPIRED = GatewayResult(
    "error", "card_entry_expired", "The card entry expired. Please ask the caller to key the card again.")
OUTCOME_UNCONFIRMED = GatewayResult(
    "error", UNCONFIRMED_OUTCOME,
    "The payment gateway did not confirm the outcome. Check this payment with the gateway before taking it again.")
# Test hook for the worker-crash test (tests/gateways/test_real_worker.py): inert unless set to "1".
CRASH_AFTER_GATEWAY_CALL_ENV = "SECUREPAY_TEST_CRASH_AFTER_GATEWAY_CALL"


class OutcomeStillUnknown(Exception):
    """The gateway cannot say yet whether the attempt was charged: ask again later."""


def charge(attempt_id: str) -> None:
    """Take the attempt from pending (or an interrupted `sent`) to a stored result.
    Raises OutcomeStillUnknown when the gateway cannot be asked right now."""
    with transaction.atomic():
        attempt = PaymentAttempt.objects.select_for_update().select_related("tenant").get(pk=attempt_id)
        if attempt.status in FINAL_STATUSES:
            return  # a redelivered task: the result is stored already
        resuming = attempt.status == AttemptStatus.SENT
        if not resuming:
            try:
                attempt.gateway, adapter = active_adapter(attempt.tenant)
            except (GatewayConfigError, ImproperlyConfigured) as exc:
                # Nothing was sent: say so now rather than leave the session processing forever.
                logger.error("attempt %s: tenant gateway account unusable (%s)", attempt.pk, exc)
                get_vault().discard(attempt.session_id)
                unsent = PaymentAttempt.objects.select_related("session").get(pk=attempt.pk)
                _store(unsent, _failure("processing_error"))
                return
            attempt.status = AttemptStatus.SENT
            attempt.save(update_fields=["gateway", "status"])
    if resuming:
        adapter = adapter_for_attempt(attempt)
    with transaction.atomic():
        # Held across the gateway call: a second delivery of this task waits
        # here and then finds the stored result.
        attempt = PaymentAttempt.objects.select_for_update().select_related("session", "tenant").get(pk=attempt_id)
        if attempt.status != AttemptStatus.SENT:
            return
        result = _reconcile_then_charge(adapter, attempt) if resuming else _charge_from_vault(adapter, attempt)
        if result is None:
            raise OutcomeStillUnknown(f"attempt {attempt_id}: gateway outcome unknown")
        _store(attempt, result)


def give_up(attempt_id: str) -> None:
    """The gateway never confirmed the outcome: say so, so nobody charges the caller again blindly."""
    with transaction.atomic():
        attempt = PaymentAttempt.objects.select_for_update().select_related("session").get(pk=attempt_id)
        if attempt.status == AttemptStatus.SENT:
            _store(attempt, OUTCOME_UNCONFIRMED)


def _reconcile_then_charge(adapter: GatewayAdapter, attempt: PaymentAttempt) -> GatewayResult | None:
    answered, result = _reconcile(adapter, attempt)
    if not answered:
        return None
    if result is not None:
        return result
    # The gateway certainly has no record: the earlier run stopped before reaching it.
    return _charge_from_vault(adapter, attempt)


def _charge_from_vault(adapter: GatewayAdapter, attempt: PaymentAttempt) -> GatewayResult | None:
    taken = get_vault().take_keyed(attempt.session_id)
    if taken is None:
        return CARD_ENTRY_EXPIRED
    card, keyed_on = taken
    if keyed_on != attempt.card_keyed_on:  # another call's card replaced it: not the one confirmed
        del card
        return CARD_ENTRY_EXPIRED
    result = _sale(adapter, attempt, card)
    del card  # PCI DSS: the card (and its CVV) ends with the authorisation attempt
    return result


def _sale(adapter: GatewayAdapter, attempt: PaymentAttempt, card: Card) -> GatewayResult | None:
    """Sell with the attempt's key, retrying in process while the gateway certainly
    did not charge. None when the outcome stays unknown."""
    pauses = (*gateway_retry_delays(), None)
    for pause in pauses:
        try:
            result = adapter.sale(card, attempt.amount_minor, attempt.currency, idempotency_key=attempt.idempotency_key,
                                  reference=attempt.session.reference, billing=_billing(attempt))
            _crash_here_if_testing()
            return result
        except GatewayTransportError as exc:
            logger.warning("attempt %s: gateway not reached (%s)", attempt.pk, exc)
        except GatewayOutcomeUnknown as exc:
            logger.warning("attempt %s: outcome unknown (%s); reconciling", attempt.pk, exc)
            answered, reconciled = _reconcile(adapter, attempt)
            if not answered:
                return None
            if reconciled is not None:
                return reconciled
        except GatewayError as exc:
            logger.error("attempt %s: gateway refused the request (%s)", attempt.pk, exc)
            return _failure("processing_error")
        if pause is None:
            return _failure("gateway_unavailable")  # every try certainly failed to charge
        time.sleep(pause)
    raise AssertionError("unreachable")  # the last pause is None


def _reconcile(adapter: GatewayAdapter, attempt: PaymentAttempt) -> tuple[bool, GatewayResult | None]:
    """(True, what the gateway knows of the attempt, None = nothing) or (False, None) when it cannot say."""
    for pause in (*gateway_retry_delays(), None):
        try:
            return True, adapter.reconcile(attempt.idempotency_key, reference=attempt.session.reference)
        except GatewayError as exc:
            logger.warning("attempt %s: reconcile failed (%s)", attempt.pk, exc)
        if pause is not None:
            time.sleep(pause)
    return False, None


def _store(attempt: PaymentAttempt, result: GatewayResult) -> None:
    """Write the result, move the session (whose signal pushes it to the agent's page) and tell the integration."""
    attempt.status = result.status
    attempt.reason_code = result.reason_code
    attempt.message = result.message[:300]
    attempt.gateway_reference = result.gateway_reference
    attempt.auth_code = result.auth_code
    attempt.brand = result.brand
    attempt.last4 = result.last4
    attempt.avs_result = result.avs_result
    attempt.cvv_result = result.cvv_result
    attempt.completed_at = timezone.now()
    attempt.save()
    attempt.session.record_result(result.status, ACTOR, detail=result.reason_code)
    webhooks.payment_result_event(attempt)


def _billing(attempt: PaymentAttempt) -> BillingDetails:
    details = attempt.session.details or {}
    name = " ".join(str(details.get(key, "")).strip() for key in ("first_name", "last_name")).strip()
    return BillingDetails(name=name, email=str(details.get("email", "")),
                          address_line=str(details.get("address", "")), postcode=str(details.get("postcode", "")))


def _failure(reason_code: str) -> GatewayResult:
    return GatewayResult("error", reason_code, agent_message(reason_code))


def _crash_here_if_testing() -> None:
    """Die like a killed worker between the gateway's answer and storing it."""
    if os.environ.get(CRASH_AFTER_GATEWAY_CALL_ENV) == "1":
        os._exit(1)
