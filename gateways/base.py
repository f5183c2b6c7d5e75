"""The gateway interface: typed results, errors, credentials and the registry.

Every adapter maps its gateway's answers to `GatewayResult` at its own edge, so
the rest of securepay sees one vocabulary of statuses and reason codes. Card
data goes in as `securepay.card.Card` and never comes back out: results carry
brand and last four only, and no error message is ever built from card data.
"""

from __future__ import annotations

import abc
import functools
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

# Marked for extraction only: the agent page translates by reason code at render time.
from django.utils.translation import gettext_noop as _

from securepay.card import Card

Status = Literal["approved", "declined", "error"]

# Our stable reason codes -> the sentence an agent reads aloud to the caller.
# Adapters translate their gateway's codes into these keys; nothing else does.
AGENT_MESSAGES: dict[str, str] = {
    "approved": _("The payment was approved."),
    "insufficient_funds": _("The card was declined for insufficient funds. Please ask the caller for another card."),
    "do_not_honour": _(
        "The card issuer declined the payment. Please ask the caller to contact their bank or use another card."
    ),
    "expired_card": _("The card has expired. Please ask the caller for another card."),
    "cvv_mismatch": _("The security code did not match. Please ask the caller to key it again."),
    "invalid_card_number": _("The card number was not accepted. Please ask the caller to key it again."),
    "card_declined": _("The card was declined. Please ask the caller for another card."),
    "authentication_required": _(
        "The card issuer asked for extra authentication, which is not possible on a phone payment. "
        "Please ask the caller for another card."
    ),
    "limit_exceeded": _("The card has reached a spending limit. Please ask the caller for another card."),
    "invalid_request": _("The payment gateway refused the request. Please check the details and try again."),
    "over_refund": _("The refund is more than is left to refund on this payment."),
    "refund_not_received": _("The payment gateway never received this refund, so nothing was refunded."),
    "processing_error": _("The payment could not be processed. Please try again."),
    "gateway_unavailable": _("The payment gateway is not answering. Please try again in a moment."),
    "authentication_failed": _(
        "The payment gateway rejected this portal's credentials. "
        "Please ask an administrator to check the gateway settings."
    ),
}


def agent_message(reason_code: str) -> str:
    return AGENT_MESSAGES.get(reason_code, AGENT_MESSAGES["card_declined"])


@dataclass(frozen=True, slots=True)
class GatewayResult:
    """What one gateway operation ended in. Never holds a PAN or CVV."""

    status: Status
    reason_code: str
    message: str
    gateway_reference: str = ""
    auth_code: str = ""
    brand: str = ""
    last4: str = ""
    avs_result: str = ""
    cvv_result: str = ""
    amount_minor: int = 0
    currency: str = ""
    token: str = ""
    raw_status: str = ""

    @property
    def approved(self) -> bool:
        return self.status == "approved"


@dataclass(frozen=True, slots=True)
class BillingDetails:
    name: str = ""
    email: str = ""
    address_line: str = ""
    postcode: str = ""
    country: str = ""  # ISO 3166-1 alpha-2, when known


class GatewayError(Exception):
    """Base of every adapter error. Messages never contain card data."""


class GatewayTransportError(GatewayError):
    """The request certainly was not processed: retry with the same idempotency key."""


class GatewayOutcomeUnknown(GatewayError):
    """The request may have been processed (e.g. timeout after sending).

    Call `reconcile` with the same idempotency key before anything else."""


class GatewayConfigError(GatewayError):
    """Bad or missing credentials/settings; the message says which."""


@dataclass(frozen=True, slots=True)
class ConfigField:
    """One credential/setting of an adapter, enough to build an admin form."""

    name: str
    label: str
    secret: bool = False
    required: bool = True
    kind: Literal["text", "url", "number", "bool", "json"] = "text"
    help: str = ""


class GatewayAdapter(abc.ABC):
    """One tenant's connection to one gateway. Every operation takes an
    idempotency key: the same key must never move money twice."""

    code: ClassVar[str]
    supports_moto: ClassVar[bool]
    # Settings accepted but not shown in an admin form (test-only switches).
    extra_config_keys: ClassVar[tuple[str, ...]] = ()

    def __init__(self, config: dict[str, Any]) -> None:
        fields = {f.name: f for f in self.config_fields()}
        unknown = sorted(set(config) - set(fields) - set(self.extra_config_keys))
        if unknown:
            raise GatewayConfigError(f"{self.code}: unknown setting(s): {', '.join(unknown)}")
        for field in fields.values():
            value = config.get(field.name)
            if field.required and (value is None or value == ""):
                raise GatewayConfigError(f"{self.code}: {field.label} is required")
        self.config = dict(config)

    @classmethod
    @abc.abstractmethod
    def config_fields(cls) -> list[ConfigField]: ...

    @abc.abstractmethod
    def sale(self, card: Card, amount_minor: int, currency: str, *, idempotency_key: str,
             reference: str, billing: BillingDetails) -> GatewayResult:
        """Authorise and capture at once (flagged MOTO where the gateway can)."""

    @abc.abstractmethod
    def preauthorise(self, card: Card, amount_minor: int, currency: str, *, idempotency_key: str,
                     reference: str, billing: BillingDetails) -> GatewayResult:
        """Authorise only; `capture` or `void` it later."""

    @abc.abstractmethod
    def capture(self, gateway_reference: str, amount_minor: int, *, idempotency_key: str) -> GatewayResult: ...

    @abc.abstractmethod
    def void(self, gateway_reference: str, *, idempotency_key: str) -> GatewayResult: ...

    @abc.abstractmethod
    def refund(self, gateway_reference: str, amount_minor: int, *, idempotency_key: str) -> GatewayResult:
        """Refund part or all of a captured payment. More than is left is declined
        with reason `over_refund`, never raised."""

    @abc.abstractmethod
    def tokenize(self, card: Card, *, idempotency_key: str, billing: BillingDetails) -> GatewayResult:
        """Save the card on file without charging it; the token is in the result."""

    @abc.abstractmethod
    def reconcile(self, idempotency_key: str, *, reference: str, refund_of: str = "") -> GatewayResult | None:
        """After `GatewayOutcomeUnknown`: what became of the sale/preauthorisation
        sent with this key, or with `refund_of` (the refunded payment's gateway
        reference) of the refund sent with this key. None means it certainly does
        not exist (retry is safe)."""


def check_amount(amount_minor: int) -> None:
    """Amounts are positive whole minor units; anything else is a bug upstream."""
    if isinstance(amount_minor, bool) or not isinstance(amount_minor, int) or amount_minor <= 0:
        raise ValueError("amount_minor must be a positive integer (minor units)")


def card_fields(card: Card) -> dict[str, str]:
    """The result fields a card may contribute: brand and last four, nothing else."""
    return {"brand": card.brand, "last4": card.last4}


@functools.cache
def _adapters() -> dict[str, type[GatewayAdapter]]:
    # Imported on first use, not at module top: the adapters import this module.
    from gateways.generic.adapter import GenericHttpAdapter
    from gateways.sandbox.adapter import SandboxAdapter
    from gateways.stripe.adapter import StripeAdapter

    return {cls.code: cls for cls in (SandboxAdapter, StripeAdapter, GenericHttpAdapter)}


def __getattr__(name: str) -> Any:
    # `ADAPTERS` (code -> adapter class) is built lazily, see `_adapters`.
    if name == "ADAPTERS":
        return _adapters()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def get_adapter(code: str, config: dict[str, Any]) -> GatewayAdapter:
    """The adapter for a tenant's gateway code, built from its settings."""
    adapters = _adapters()
    if code not in adapters:
        raise GatewayConfigError(f"unknown gateway {code!r}; known: {', '.join(sorted(adapters))}")
    return adapters[code](config)
