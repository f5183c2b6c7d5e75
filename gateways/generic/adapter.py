"""Generic HTTP connector: signed JSON POSTs to the tenant's own processor.

Request (always the same shape; keys not used by an operation are left out)::

    {"operation": "sale|preauthorise|capture|void|refund|tokenize|reconcile",
     "idempotency_key": "...", "reference": "...", "gateway_reference": "...",
     "amount_minor": 1250, "currency": "GBP", "moto": true,
     "card": {"number": "...", "exp_month": 12, "exp_year": 2030, "cvv": "123"},
     "billing": {"name": "", "email": "", "address_line": "", "postcode": "", "country": ""}}

Headers: `Idempotency-Key`, and `X-SecurePay-Signature: t=<unix>,v1=<hex
HMAC-SHA256 of "<t>.<body>" with the shared secret>`. The card travels in the
body, so the endpoint must be https:// (http:// only to a loopback address and
only with `allow_http`, for tests).

The answer's fields are found by configurable dotted paths (`result.status`,
`items.0.id`) and its status values translated by `status_map` into
approved / declined / error / not_found (`not_found` answers `reconcile`).
`reconcile` asks about whatever request was sent with its idempotency key: a
sale or preauthorisation, or a refund (then `gateway_reference` names the
refunded payment).
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import ipaddress
import json
import ssl
import time
from typing import Any
from urllib.parse import urlsplit

from gateways.base import (
    AGENT_MESSAGES,
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
from securepay.card import Card

DEFAULT_TIMEOUT_SECONDS = 30.0
DEFAULT_PATHS = {
    "status_path": "status",
    "reason_path": "reason",
    "reference_path": "reference",
    "auth_code_path": "auth_code",
    "token_path": "token",
    "message_path": "",  # empty: the agent hears our own sentence for the reason
}
OUR_STATUSES = ("approved", "declined", "error", "not_found")
DEFAULT_STATUS_MAP = {s: s for s in OUR_STATUSES}
DEFAULT_REASON = {"approved": "approved", "declined": "card_declined", "error": "processing_error"}


def signature_header(secret: str, body: bytes, timestamp: int) -> str:
    """`t=<unix>,v1=<hex HMAC-SHA256 of "<t>.<body>">`, as the processor verifies it."""
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


class GenericHttpAdapter(GatewayAdapter):
    code = "generic_http"
    supports_moto = True
    # Permits http:// to a loopback address, for tests against a local server.
    extra_config_keys = ("allow_http",)

    @classmethod
    def config_fields(cls) -> list[ConfigField]:
        return [
            ConfigField("endpoint_url", "Endpoint URL (https://)", kind="url"),
            ConfigField("shared_secret", "Signing secret", secret=True),
            ConfigField("timeout_seconds", "Timeout (seconds)", required=False, kind="number"),
            *(ConfigField(name, f"Response path: {name.removesuffix('_path').replace('_', ' ')}", required=False,
                          help=f"Dotted path in the JSON answer; default {default!r}")
              for name, default in DEFAULT_PATHS.items()),
            ConfigField("status_map", "Status values", required=False, kind="json",
                        help="Processor status value -> approved / declined / error / not_found"),
            ConfigField("reason_map", "Reason codes", required=False, kind="json",
                        help="Processor reason code -> our reason code"),
        ]

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__(config)
        url = urlsplit(str(config["endpoint_url"]))
        if url.scheme == "http" and config.get("allow_http"):
            if not _is_loopback(url.hostname or ""):
                raise GatewayConfigError("generic_http: http:// is allowed only to a loopback address")
        elif url.scheme != "https":
            raise GatewayConfigError("generic_http: the endpoint URL must start with https://")
        if not url.hostname:
            raise GatewayConfigError("generic_http: the endpoint URL has no host")
        self._url = url
        timeout = config.get("timeout_seconds") or DEFAULT_TIMEOUT_SECONDS
        if not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or timeout <= 0:
            raise GatewayConfigError("generic_http: timeout must be a positive number of seconds")
        self._timeout = float(timeout)
        self._paths = {name: str(config.get(name) or default) for name, default in DEFAULT_PATHS.items()}
        self._status_map = _string_map(config, "status_map") or DEFAULT_STATUS_MAP
        bad = sorted(set(self._status_map.values()) - set(OUR_STATUSES))
        if bad:
            raise GatewayConfigError(f"generic_http: status_map values must be one of {', '.join(OUR_STATUSES)}")
        self._reason_map = _string_map(config, "reason_map")
        unknown_reasons = sorted(set(self._reason_map.values()) - set(AGENT_MESSAGES))
        if unknown_reasons:
            raise GatewayConfigError(
                f"generic_http: unknown reason code(s) in reason_map: {', '.join(unknown_reasons)}")

    # --- operations ---------------------------------------------------------
    def sale(self, card: Card, amount_minor: int, currency: str, *, idempotency_key: str,
             reference: str, billing: BillingDetails) -> GatewayResult:
        return self._authorise("sale", card, amount_minor, currency, idempotency_key, reference, billing)

    def preauthorise(self, card: Card, amount_minor: int, currency: str, *, idempotency_key: str,
                     reference: str, billing: BillingDetails) -> GatewayResult:
        return self._authorise("preauthorise", card, amount_minor, currency, idempotency_key, reference, billing)

    def capture(self, gateway_reference: str, amount_minor: int, *, idempotency_key: str) -> GatewayResult:
        check_amount(amount_minor)
        return self._result(self._post({"operation": "capture", "gateway_reference": gateway_reference,
                                        "amount_minor": amount_minor}, idempotency_key, moves_money=True))

    def void(self, gateway_reference: str, *, idempotency_key: str) -> GatewayResult:
        return self._result(self._post({"operation": "void", "gateway_reference": gateway_reference},
                                       idempotency_key, moves_money=True))

    def refund(self, gateway_reference: str, amount_minor: int, *, idempotency_key: str) -> GatewayResult:
        check_amount(amount_minor)
        return self._result(self._post({"operation": "refund", "gateway_reference": gateway_reference,
                                        "amount_minor": amount_minor}, idempotency_key, moves_money=True),
                            amount_minor=amount_minor)

    def tokenize(self, card: Card, *, idempotency_key: str, billing: BillingDetails) -> GatewayResult:
        answer = self._post({"operation": "tokenize", "billing": _billing_json(billing)}, idempotency_key,
                            moves_money=False, card=card)
        return self._result(answer, moves_money=False, **card_fields(card))

    def reconcile(self, idempotency_key: str, *, reference: str, refund_of: str = "") -> GatewayResult | None:
        payload = {"operation": "reconcile", "reference": reference,
                   **({"gateway_reference": refund_of} if refund_of else {})}
        answer = self._post(payload, idempotency_key, moves_money=False)
        if self._status_of(answer, moves_money=False) == "not_found":
            return None
        return self._result(answer, moves_money=False)

    # --- internals ------------------------------------------------------------
    def _authorise(self, operation: str, card: Card, amount_minor: int, currency: str, idempotency_key: str,
                   reference: str, billing: BillingDetails) -> GatewayResult:
        check_amount(amount_minor)
        payload = {"operation": operation, "reference": reference, "amount_minor": amount_minor,
                   "currency": currency.upper(), "moto": True, "billing": _billing_json(billing)}
        answer = self._post(payload, idempotency_key, moves_money=True, card=card)
        return self._result(answer, amount_minor=amount_minor, currency=currency.upper(), **card_fields(card))

    def _post(self, payload: dict[str, Any], idempotency_key: str, *, moves_money: bool,
              card: Card | None = None) -> dict[str, Any]:
        """POST one signed request; the processor's JSON answer, or our error.

        The card is serialised here and nowhere else, and the body is dropped
        before any error is raised, so no traceback frame holds the digits."""
        if not idempotency_key:
            raise ValueError("idempotency_key is required")
        body = json.dumps({**payload, "idempotency_key": idempotency_key,
                           **({"card": _card_json(card)} if card else {})}).encode()
        headers = {
            "Content-Type": "application/json",
            "Accept": "application/json",
            "Idempotency-Key": idempotency_key,
            "X-SecurePay-Signature": signature_header(str(self.config["shared_secret"]), body, int(time.time())),
        }
        status, raw, failure = self._exchange(body, headers, moves_money)
        del body
        if failure:
            raise failure
        if status in (401, 403):
            raise GatewayConfigError(
                f"generic_http: the processor rejected our signature or credentials (HTTP {status})")
        if status >= 500:
            raise _unanswered(f"processor error (HTTP {status})", moves_money)
        try:
            answer = json.loads(raw)
        except ValueError:
            answer = None
        if not isinstance(answer, dict):
            raise _unanswered(f"unreadable answer (HTTP {status})", moves_money)
        return answer

    def _exchange(self, body: bytes, headers: dict[str, str],
                  moves_money: bool) -> tuple[int, bytes, GatewayError | None]:
        """Send and read, telling "never sent" apart from "sent, no answer"."""
        host, port = self._url.hostname or "", self._url.port
        path = (self._url.path or "/") + (f"?{self._url.query}" if self._url.query else "")
        if self._url.scheme == "https":
            conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                host, port, timeout=self._timeout, context=ssl.create_default_context())
        else:
            conn = http.client.HTTPConnection(host, port, timeout=self._timeout)
        try:
            try:
                conn.connect()  # TCP (and TLS): nothing of the request has left yet
            except OSError as exc:
                return 0, b"", GatewayTransportError(
                    f"generic_http: could not connect to {host} ({type(exc).__name__}); nothing was sent")
            try:
                conn.request("POST", path, body=body, headers=headers)
                response = conn.getresponse()
                return response.status, response.read(), None
            except (OSError, http.client.HTTPException) as exc:
                return 0, b"", _unanswered(f"no answer after sending ({type(exc).__name__})", moves_money)
        finally:
            conn.close()

    def _status_of(self, answer: dict[str, Any], *, moves_money: bool) -> str:
        value = _lookup(answer, self._paths["status_path"])
        status = self._status_map.get(str(value)) if value is not None else None
        if status is None:
            raise _unanswered(f"status {value!r} at {self._paths['status_path']!r} is not in status_map", moves_money)
        return status

    def _result(self, answer: dict[str, Any], *, moves_money: bool = True, **fields: Any) -> GatewayResult:
        status = self._status_of(answer, moves_money=moves_money)
        if status == "not_found":
            raise _unanswered("the processor answered not_found outside reconcile", moves_money)
        if status == "approved":
            reason = "approved"
        else:
            raw_reason = _text(_lookup(answer, self._paths["reason_path"]))
            known = raw_reason if raw_reason in AGENT_MESSAGES and raw_reason != "approved" else ""
            reason = self._reason_map.get(raw_reason) or known or DEFAULT_REASON[status]
        message = _text(_lookup(answer, self._paths["message_path"])) if self._paths["message_path"] else ""
        return GatewayResult(
            status, reason, message or agent_message(reason),
            gateway_reference=_text(_lookup(answer, self._paths["reference_path"])),
            auth_code=_text(_lookup(answer, self._paths["auth_code_path"])),
            token=_text(_lookup(answer, self._paths["token_path"])),
            raw_status=_text(_lookup(answer, self._paths["status_path"])),
            **fields)


def _unanswered(what: str, moves_money: bool) -> GatewayError:
    if moves_money:
        return GatewayOutcomeUnknown(f"generic_http: {what}; reconcile before anything else")
    return GatewayTransportError(f"generic_http: {what}; nothing was charged, retry with the same key")


def _lookup(data: Any, path: str) -> Any:
    """The value at a dotted path (`a.b.0.c`), or None when any step is missing."""
    for step in path.split("."):
        if isinstance(data, dict):
            data = data.get(step)
        elif isinstance(data, list) and step.isdigit() and int(step) < len(data):
            data = data[int(step)]
        else:
            return None
    return data


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def _string_map(config: dict[str, Any], name: str) -> dict[str, str]:
    value = config.get(name) or {}
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise GatewayConfigError(f"generic_http: {name} must map text to text")
    return value


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _card_json(card: Card) -> dict[str, Any]:
    return {"number": card.pan, "exp_month": card.exp_month, "exp_year": card.exp_year, "cvv": card.cvv}


def _billing_json(billing: BillingDetails) -> dict[str, str]:
    return {"name": billing.name, "email": billing.email, "address_line": billing.address_line,
            "postcode": billing.postcode, "country": billing.country}
