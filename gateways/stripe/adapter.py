"""Stripe through PaymentIntents: the only module that imports the Stripe SDK.

Each adapter instance (one per tenant) has its own `StripeClient`, pinned to
one API version; the global `stripe.api_key` is never used. Raw card numbers go
to Stripe as a PaymentMethod (the account needs raw card data APIs enabled) and
the PaymentIntent is flagged MOTO (the account needs MOTO enabled), which also
exempts it from SCA: there is no cardholder browser on a phone payment.

Every request carries an idempotency key derived from the caller's key, one per
step (`<key>:pm`, `<key>:pi`, ...), because Stripe ties a key to one request.
The SDK's own network retries are off: the caller holds the key and the duty
to reconcile, and decides when to retry.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import requests
import stripe
import urllib3

from gateways.base import (
    BillingDetails,
    ConfigField,
    GatewayAdapter,
    GatewayConfigError,
    GatewayError,
    GatewayOutcomeUnknown,
    GatewayResult,
    GatewayTransportError,
    agent_message,
    card_fields,
    check_amount,
)
from gateways.stripe.errors import reason_for
from securepay.card import Card

# The API version stripe==16.1.0 was generated for; bump both together.
STRIPE_API_VERSION = "2026-10-28.endive"
DEFAULT_TIMEOUT_SECONDS = 30.0
CONNECT_TIMEOUT_SECONDS = 5.0
# How far back `reconcile` lists PaymentIntents: longer than Stripe keeps
# idempotency keys (24 h), so any payment a retry could duplicate is covered.
RECONCILE_WINDOW_SECONDS = 48 * 3600
METADATA_KEY = "securepay_idempotency_key"
METADATA_REFERENCE = "securepay_reference"


class _Refused(Exception):
    """Internal: Stripe said no; carries the declined result to the public method."""

    def __init__(self, result: GatewayResult) -> None:
        super().__init__(result.reason_code)
        self.result = result


def _refusals_as_results(method: Callable[..., GatewayResult]) -> Callable[..., GatewayResult]:
    @functools.wraps(method)
    def wrapper(*args: Any, **kwargs: Any) -> GatewayResult:
        try:
            return method(*args, **kwargs)
        except _Refused as refused:
            return refused.result

    return wrapper


class StripeAdapter(GatewayAdapter):
    code = "stripe"
    supports_moto = True
    # localstripe (the test double) rejects list filters such as `created`;
    # with this set, `reconcile` lists every PaymentIntent instead. Tests only.
    extra_config_keys = ("localstripe_compat",)

    @classmethod
    def config_fields(cls) -> list[ConfigField]:
        return [
            ConfigField("api_key", "Secret key (sk_… or restricted rk_…)", secret=True),
            ConfigField("api_base", "API base URL", required=False, kind="url",
                        help="Leave empty for Stripe itself."),
            ConfigField("timeout_seconds", "Timeout (seconds)", required=False, kind="number"),
        ]

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__(config)
        api_key = str(config["api_key"])
        if not api_key.startswith(("sk_", "rk_")):
            raise GatewayConfigError("stripe: the API key must be a secret key (sk_…) or restricted key (rk_…)")
        api_base = config.get("api_base") or ""
        if api_base and urlsplit(api_base).scheme not in ("http", "https"):
            raise GatewayConfigError(
                "stripe: API base URL must start with https:// (or http:// for a local test server)")
        timeout = config.get("timeout_seconds") or DEFAULT_TIMEOUT_SECONDS
        if not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or timeout <= 0:
            raise GatewayConfigError("stripe: timeout must be a positive number of seconds")
        self._list_without_filters = bool(config.get("localstripe_compat"))
        self._client = stripe.StripeClient(
            api_key,
            base_addresses={"api": api_base} if api_base else None,
            stripe_version=STRIPE_API_VERSION,
            max_network_retries=0,
            http_client=stripe.RequestsClient(timeout=(min(CONNECT_TIMEOUT_SECONDS, timeout), timeout)),
        )

    # --- operations ---------------------------------------------------------
    @_refusals_as_results
    def sale(self, card: Card, amount_minor: int, currency: str, *, idempotency_key: str,
             reference: str, billing: BillingDetails) -> GatewayResult:
        return self._authorise(card, amount_minor, currency, idempotency_key, reference, billing, "automatic")

    @_refusals_as_results
    def preauthorise(self, card: Card, amount_minor: int, currency: str, *, idempotency_key: str,
                     reference: str, billing: BillingDetails) -> GatewayResult:
        return self._authorise(card, amount_minor, currency, idempotency_key, reference, billing, "manual")

    @_refusals_as_results
    def capture(self, gateway_reference: str, amount_minor: int, *, idempotency_key: str) -> GatewayResult:
        check_amount(amount_minor)
        intent = self._call(self._client.v1.payment_intents.capture, gateway_reference,
                            params={"amount_to_capture": amount_minor, "expand": ["latest_charge"]},
                            idempotency_key=f"{idempotency_key}:capture", moves_money=True)
        return _intent_result(intent.to_dict())

    @_refusals_as_results
    def void(self, gateway_reference: str, *, idempotency_key: str) -> GatewayResult:
        intent = self._call(self._client.v1.payment_intents.cancel, gateway_reference, params={},
                            idempotency_key=f"{idempotency_key}:cancel", moves_money=True)
        return _approved(intent.id, intent.amount, intent.currency, raw_status=intent.status)

    @_refusals_as_results
    def refund(self, gateway_reference: str, amount_minor: int, *, idempotency_key: str) -> GatewayResult:
        check_amount(amount_minor)
        # Checked here as well as by Stripe so the answer is the same everywhere
        # (localstripe accepts any refund amount).
        intent = self._call(self._client.v1.payment_intents.retrieve, gateway_reference,
                            params={"expand": ["latest_charge"]}, idempotency_key=None, moves_money=False)
        charge = intent.to_dict().get("latest_charge") or {}
        captured = charge.get("amount_captured", charge.get("amount", 0) if charge.get("captured") else 0)
        if amount_minor > captured - charge.get("amount_refunded", 0):
            return _declined("over_refund", raw_status="amount_exceeds_refundable", gateway_reference=gateway_reference)
        refund = self._call(self._client.v1.refunds.create,
                            params={"payment_intent": gateway_reference, "amount": amount_minor,
                                    "metadata": {METADATA_KEY: idempotency_key}},
                            idempotency_key=f"{idempotency_key}:refund", moves_money=True)
        return _refund_result(refund.to_dict())

    @_refusals_as_results
    def tokenize(self, card: Card, *, idempotency_key: str, billing: BillingDetails) -> GatewayResult:
        customer_params = {k: v for k, v in (("name", billing.name), ("email", billing.email)) if v}
        customer = self._call(self._client.v1.customers.create, params=customer_params,
                              idempotency_key=f"{idempotency_key}:customer", moves_money=False)
        method = self._create_payment_method(card, billing, idempotency_key)
        self._call(self._client.v1.payment_methods.attach, method.id, params={"customer": customer.id},
                   idempotency_key=f"{idempotency_key}:attach", moves_money=False, card=card)
        return GatewayResult("approved", "approved", agent_message("approved"), gateway_reference=customer.id,
                             token=method.id, raw_status="attached", **card_fields(card))

    def reconcile(self, idempotency_key: str, *, reference: str, refund_of: str = "") -> GatewayResult | None:
        if refund_of:
            # A payment's refunds are few and listed whole: no time window can hide one.
            refund = self._find_by_key(self._client.v1.refunds, {"limit": 100, "payment_intent": refund_of},
                                       idempotency_key)
            return _refund_result(refund) if refund else None
        params: dict[str, Any] = {"limit": 100, "expand": ["data.latest_charge", "data.payment_method"]}
        if not self._list_without_filters:
            params["created"] = {"gte": int(time.time()) - RECONCILE_WINDOW_SECONDS}
        intent = self._find_by_key(self._client.v1.payment_intents, params, idempotency_key)
        return _intent_result(intent) if intent else None

    # --- internals ------------------------------------------------------------
    def _find_by_key(self, service: Any, params: dict[str, Any], idempotency_key: str) -> dict[str, Any] | None:
        """The listed object (PaymentIntent or Refund) whose metadata carries our key."""
        def find(params: dict[str, Any], options: dict[str, Any]) -> dict[str, Any] | None:
            for listed in service.list(params, options).auto_paging_iter():
                found = listed.to_dict()
                if (found.get("metadata") or {}).get(METADATA_KEY) == idempotency_key:
                    return found
            return None

        try:
            return self._call(find, params=params, idempotency_key=None, moves_money=False)
        except _Refused as refused:  # a refused list is a bug or a config problem, never "not found"
            raise GatewayError(f"stripe: could not list to reconcile ({refused.result.raw_status})") from None

    def _authorise(self, card: Card, amount_minor: int, currency: str, idempotency_key: str, reference: str,
                   billing: BillingDetails, capture_method: str) -> GatewayResult:
        check_amount(amount_minor)
        method = self._create_payment_method(card, billing, idempotency_key)
        intent = self._call(
            self._client.v1.payment_intents.create,
            params={
                "amount": amount_minor,
                "currency": currency.lower(),
                "payment_method": method.id,
                "payment_method_types": ["card"],
                "payment_method_options": {"card": {"moto": True}},
                "confirm": True,
                "capture_method": capture_method,
                "metadata": {METADATA_REFERENCE: reference, METADATA_KEY: idempotency_key},
                "expand": ["latest_charge"],
            },
            idempotency_key=f"{idempotency_key}:pi", moves_money=True, card=card,
            amount_minor=amount_minor, currency=currency.upper())
        return _intent_result(intent.to_dict(), card=card)

    def _create_payment_method(self, card: Card, billing: BillingDetails, idempotency_key: str) -> Any:
        return self._call(
            self._client.v1.payment_methods.create,
            params={
                "type": "card",
                "card": {"number": card.pan, "exp_month": card.exp_month, "exp_year": card.exp_year, "cvc": card.cvv},
                "billing_details": _billing_details(billing),
            },
            idempotency_key=f"{idempotency_key}:pm", moves_money=False, card=card)

    def _call(self, request: Callable[..., Any], *args: Any, params: dict[str, Any], idempotency_key: str | None,
              moves_money: bool, card: Card | None = None, **result_fields: Any) -> Any:
        """One Stripe request with Stripe's errors turned into ours.

        `moves_money`: whether an unanswered request may have moved money
        (then the outcome is unknown) or not (then a retry is simply safe)."""
        options = {"idempotency_key": idempotency_key} if idempotency_key else {}
        try:
            return request(*args, params, options)
        except stripe.StripeError as exc:
            failure = _translate(exc, moves_money, {**(card_fields(card) if card else {}), **result_fields})
        # Raised outside the `except` block and after dropping the request
        # parameters, so neither the SDK's exception (whose requests object
        # holds the form body) nor these locals ride along in a traceback.
        del params, args
        raise failure


def _translate(exc: stripe.StripeError, moves_money: bool, result_fields: dict[str, Any]) -> Exception:
    """Our exception (or a `_Refused` declined result) for a Stripe error."""
    if isinstance(exc, (stripe.AuthenticationError, stripe.PermissionError)):
        return GatewayConfigError(
            "stripe: the API key was rejected (authentication failed); check the gateway settings")
    if isinstance(exc, stripe.APIConnectionError):
        if _never_reached_stripe(exc) or not moves_money:
            return GatewayTransportError("stripe: could not reach Stripe; nothing was charged, retry with the same key")
        return GatewayOutcomeUnknown("stripe: no answer from Stripe after sending; reconcile before anything else")
    if isinstance(exc, stripe.RateLimitError):
        return GatewayTransportError("stripe: rate limited; the request was not processed, retry later")
    if isinstance(exc, stripe.IdempotencyError):
        return GatewayError("stripe: idempotency key reused for a different request")
    if isinstance(exc, (stripe.CardError, stripe.InvalidRequestError)):
        error = (exc.json_body or {}).get("error") or {}
        intent = error.get("payment_intent") or {}
        default = "card_declined" if isinstance(exc, stripe.CardError) else "invalid_request"
        reason = reason_for(exc.code, error.get("decline_code"), default=default)
        raw = error.get("decline_code") or exc.code or default
        return _Refused(_declined(reason, raw_status=raw, gateway_reference=intent.get("id", ""), **result_fields))
    if moves_money:  # 5xx and anything unforeseen: Stripe may have done it
        return GatewayOutcomeUnknown(f"stripe: gateway error (HTTP {exc.http_status}); reconcile before anything else")
    return GatewayTransportError(f"stripe: gateway error (HTTP {exc.http_status}); nothing was charged, retry later")


def _never_reached_stripe(exc: stripe.APIConnectionError) -> bool:
    """True only when the connection itself failed (refused, DNS, connect timeout)."""
    cause = exc.__cause__
    if not isinstance(cause, requests.exceptions.ConnectionError) or isinstance(cause, requests.exceptions.ReadTimeout):
        return False
    reason = getattr(cause.args[0], "reason", None) if cause.args else None
    # NewConnectionError (refused, unresolvable) is a ConnectTimeoutError in urllib3.
    return isinstance(cause, requests.exceptions.ConnectTimeout) or isinstance(
        reason, urllib3.exceptions.ConnectTimeoutError)


def _intent_result(intent: dict[str, Any], card: Card | None = None) -> GatewayResult:
    """Our result for a PaymentIntent (from create, capture or the reconcile list)."""
    charge = intent.get("latest_charge") if isinstance(intent.get("latest_charge"), dict) else {}
    details = (charge.get("payment_method_details") or {}).get("card") or {}
    method = intent.get("payment_method") if isinstance(intent.get("payment_method"), dict) else {}
    saved_card = method.get("card") or details
    checks = details.get("checks") or {}
    fields = {
        "gateway_reference": intent["id"],
        "amount_minor": intent.get("amount", 0),
        "currency": (intent.get("currency") or "").upper(),
        **(card_fields(card) if card else {"brand": saved_card.get("brand", ""), "last4": saved_card.get("last4", "")}),
        "auth_code": details.get("authorization_code") or "",
        "cvv_result": checks.get("cvc_check") or "",
        "avs_result": checks.get("address_postal_code_check") or "",
    }
    status = intent.get("status")
    if status in ("succeeded", "requires_capture"):
        return GatewayResult("approved", "approved", agent_message("approved"), raw_status=status, **fields)
    if status == "requires_action":
        return _declined("authentication_required", raw_status=status, **fields)
    if status == "requires_payment_method":
        error = intent.get("last_payment_error") or {}
        raw = error.get("decline_code") or error.get("code") or status
        return _declined(reason_for(error.get("code"), error.get("decline_code"), default="card_declined"),
                         raw_status=raw, **fields)
    if status == "canceled":
        return _declined("invalid_request", raw_status=status, **fields)
    # "processing" (or anything unforeseen) may still end in a charge: a final error here
    # would let the agent retry with a new key and charge twice. Reconcile later instead.
    raise GatewayOutcomeUnknown(f"payment {intent['id']} is not settled at the gateway yet ({status})")


def _refund_result(refund: dict[str, Any]) -> GatewayResult:
    """Our result for a Refund (from create or the reconcile list); a pending one will complete."""
    if refund.get("status") in ("failed", "canceled"):
        return _declined("processing_error", raw_status=refund["status"], gateway_reference=refund["id"])
    return _approved(refund["id"], refund.get("amount", 0), refund.get("currency") or "",
                     raw_status=refund.get("status") or "")


def _billing_details(billing: BillingDetails) -> dict[str, Any]:
    address = {k: v for k, v in (("line1", billing.address_line), ("postal_code", billing.postcode),
                                 ("country", billing.country)) if v}
    details: dict[str, Any] = {k: v for k, v in (("name", billing.name), ("email", billing.email)) if v}
    if address:
        details["address"] = address
    return details


def _approved(gateway_reference: str, amount_minor: int, currency: str, *, raw_status: str) -> GatewayResult:
    return GatewayResult("approved", "approved", agent_message("approved"), gateway_reference=gateway_reference,
                         amount_minor=amount_minor, currency=currency.upper(), raw_status=raw_status)


def _declined(reason_code: str, **fields: Any) -> GatewayResult:
    return GatewayResult("declined", reason_code, agent_message(reason_code), **fields)
