"""The sandbox gateway: a deterministic, in-memory stand-in for a real one.

Behaviour is chosen by the test card (see README.md beside this file). All
tenants share one module-level store, namespaced by the tenant's `merchant_id`
the way a real gateway scopes idempotency keys to an account. The store keeps
brand and last four only, never a PAN or CVV.
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass, replace

from gateways.base import (
    BillingDetails,
    ConfigField,
    GatewayAdapter,
    GatewayError,
    GatewayOutcomeUnknown,
    GatewayResult,
    agent_message,
    card_fields,
    check_amount,
)
from securepay.card import Card, expiry_ok, luhn_ok

# Test card -> the reason it is declined with (or the timeout it simulates).
DECLINING_CARDS: dict[str, str] = {
    "4000000000009995": "insufficient_funds",
    "4000000000000119": "do_not_honour",
    "4000000000000069": "expired_card",
    "4000000000000002": "card_declined",
}
TIMEOUT_CHARGED_CARD = "4000000000000259"  # times out, but the charge went through
TIMEOUT_NOT_CHARGED_CARD = "4000000000000408"  # times out before the gateway charged
CVV_MISMATCH_DIGIT = "9"  # a CVV of all nines (999 / 9999) fails the CVV check


@dataclass
class _Payment:
    """One authorisation the sandbox approved (what a gateway ledger keeps)."""

    reference: str
    amount_minor: int
    currency: str
    captured_minor: int = 0
    refunded_minor: int = 0
    voided: bool = False


class _Ledger:
    """Thread-safe store of payments and of answers by idempotency key."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.payments: dict[str, _Payment] = {}
        # (merchant_id, idempotency key) -> (what was asked, what was answered)
        self.answers: dict[tuple[str, str], tuple[tuple, GatewayResult]] = {}
        # keys whose first attempt already "timed out"
        self.timed_out: set[tuple[str, str]] = set()

    def clear(self) -> None:
        with self.lock:
            self.payments.clear()
            self.answers.clear()
            self.timed_out.clear()


_ledger = _Ledger()


def charges_count() -> int:
    """How many authorisations the sandbox has approved (sale + preauthorise)."""
    with _ledger.lock:
        return len(_ledger.payments)


def clear() -> None:
    """Forget everything (test isolation; demo reset)."""
    _ledger.clear()


def _digest(*parts: str) -> str:
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()


class SandboxAdapter(GatewayAdapter):
    code = "sandbox"
    supports_moto = True

    @classmethod
    def config_fields(cls) -> list[ConfigField]:
        return [ConfigField("merchant_id", "Sandbox merchant id", required=False,
                            help="Namespaces idempotency keys; any text.")]

    @property
    def _merchant(self) -> str:
        return str(self.config.get("merchant_id") or "demo")

    # --- operations ---------------------------------------------------------
    def sale(self, card: Card, amount_minor: int, currency: str, *, idempotency_key: str,
             reference: str, billing: BillingDetails) -> GatewayResult:
        return self._authorise(card, amount_minor, currency, idempotency_key, reference, capture=True)

    def preauthorise(self, card: Card, amount_minor: int, currency: str, *, idempotency_key: str,
                     reference: str, billing: BillingDetails) -> GatewayResult:
        return self._authorise(card, amount_minor, currency, idempotency_key, reference, capture=False)

    def capture(self, gateway_reference: str, amount_minor: int, *, idempotency_key: str) -> GatewayResult:
        check_amount(amount_minor)

        def run() -> GatewayResult:
            payment = _ledger.payments.get(gateway_reference)
            if payment is None:
                return _refused("invalid_request", "no_such_payment")
            if payment.voided or payment.captured_minor:
                return _refused("invalid_request", "not_capturable")
            if amount_minor > payment.amount_minor:
                return _refused("invalid_request", "amount_too_large")
            payment.captured_minor = amount_minor
            return _approved(gateway_reference, amount_minor, payment.currency, "captured")

        return self._once(idempotency_key, ("capture", gateway_reference, amount_minor), run)

    def void(self, gateway_reference: str, *, idempotency_key: str) -> GatewayResult:
        def run() -> GatewayResult:
            payment = _ledger.payments.get(gateway_reference)
            if payment is None:
                return _refused("invalid_request", "no_such_payment")
            if payment.voided or payment.captured_minor:
                return _refused("invalid_request", "not_voidable")
            payment.voided = True
            return _approved(gateway_reference, payment.amount_minor, payment.currency, "voided")

        return self._once(idempotency_key, ("void", gateway_reference), run)

    def refund(self, gateway_reference: str, amount_minor: int, *, idempotency_key: str) -> GatewayResult:
        check_amount(amount_minor)

        def run() -> GatewayResult:
            payment = _ledger.payments.get(gateway_reference)
            if payment is None:
                return _refused("invalid_request", "no_such_payment")
            if amount_minor > payment.captured_minor - payment.refunded_minor:
                return _refused("over_refund", "amount_exceeds_refundable")
            payment.refunded_minor += amount_minor
            refund_reference = "sbx_re_" + _digest(self._merchant, idempotency_key)[:16]
            return _approved(refund_reference, amount_minor, payment.currency, "refunded")

        return self._once(idempotency_key, ("refund", gateway_reference, amount_minor), run)

    def tokenize(self, card: Card, *, idempotency_key: str, billing: BillingDetails) -> GatewayResult:
        def run() -> GatewayResult:
            decline = _decline_reason(card)
            if decline:
                return replace(_refused(decline, decline), **card_fields(card))
            token = "sbx_tok_" + _digest(self._merchant, idempotency_key)[:16]
            return replace(_approved("", 0, "", "saved"), token=token, **card_fields(card))

        return self._once(idempotency_key, ("tokenize", card.last4), run)

    def reconcile(self, idempotency_key: str, *, reference: str, refund_of: str = "") -> GatewayResult | None:
        # Every operation's answer is kept by its key, so the key alone finds a refund too.
        with _ledger.lock:
            answer = _ledger.answers.get((self._merchant, idempotency_key))
        return answer[1] if answer else None

    # --- internals ------------------------------------------------------------
    def _authorise(self, card: Card, amount_minor: int, currency: str, idempotency_key: str,
                   reference: str, *, capture: bool) -> GatewayResult:
        check_amount(amount_minor)
        key = (self._merchant, idempotency_key)
        operation = "sale" if capture else "preauthorise"
        request = (operation, amount_minor, currency.upper(), reference, card.last4)

        def run() -> GatewayResult:
            if card.pan in (TIMEOUT_CHARGED_CARD, TIMEOUT_NOT_CHARGED_CARD) and key not in _ledger.timed_out:
                _ledger.timed_out.add(key)
                if card.pan == TIMEOUT_CHARGED_CARD:
                    # The gateway did the work; only its answer was lost.
                    _ledger.answers[key] = (request, charge())
                raise GatewayOutcomeUnknown("sandbox: simulated timeout after sending; reconcile first")
            return charge()

        def charge() -> GatewayResult:
            amounts = {"amount_minor": amount_minor, "currency": currency.upper(), **card_fields(card)}
            decline = _decline_reason(card)
            if decline:
                return replace(_refused(decline, decline), **amounts)
            if card.cvv and set(card.cvv) == {CVV_MISMATCH_DIGIT}:
                return replace(_refused("cvv_mismatch", "cvv_mismatch"), cvv_result="N", **amounts)
            gateway_reference = "sbx_" + _digest(self._merchant, idempotency_key)[:20]
            _ledger.payments[gateway_reference] = _Payment(
                reference, amount_minor, currency.upper(), captured_minor=amount_minor if capture else 0)
            return replace(
                _approved(gateway_reference, amount_minor, currency.upper(), "captured" if capture else "authorised"),
                auth_code=str(int(_digest(gateway_reference)[:8], 16) % 1_000_000).zfill(6),
                avs_result="Y", cvv_result="M" if card.cvv else "", **card_fields(card))

        return self._once(idempotency_key, request, run)

    def _once(self, idempotency_key: str, request: tuple, run) -> GatewayResult:
        """Run `run` once per idempotency key; replay its answer after that."""
        if not idempotency_key:
            raise ValueError("idempotency_key is required")
        key = (self._merchant, idempotency_key)
        with _ledger.lock:
            if key in _ledger.answers:
                first_request, result = _ledger.answers[key]
                if first_request != request:
                    # Same rule as Stripe: a key belongs to one request forever.
                    raise GatewayError("sandbox: idempotency key reused for a different request")
                return result
            result = run()
            _ledger.answers[key] = (request, result)
            return result


def _decline_reason(card: Card) -> str:
    if not luhn_ok(card.pan):
        return "invalid_card_number"
    if not expiry_ok(card.expiry):
        return "expired_card"
    return DECLINING_CARDS.get(card.pan, "")


def _approved(gateway_reference: str, amount_minor: int, currency: str, raw_status: str) -> GatewayResult:
    return GatewayResult("approved", "approved", agent_message("approved"), gateway_reference=gateway_reference,
                         amount_minor=amount_minor, currency=currency, raw_status=raw_status)


def _refused(reason_code: str, raw_status: str) -> GatewayResult:
    return GatewayResult("declined", reason_code, agent_message(reason_code), raw_status=raw_status)
