"""The generic signed-JSON connector against a local processor (stdlib http.server)."""

from __future__ import annotations

import pytest

from gateways.base import (
    BillingDetails,
    GatewayConfigError,
    GatewayOutcomeUnknown,
    GatewayTransportError,
)
from gateways.generic.adapter import GenericHttpAdapter, signature_header
from securepay.card import Card
from tests.gateways import assert_no_card_data
from tests.gateways.conftest import PROCESSOR_SECRET

PAN, CVV = "4242424242424242", "837"
BILLING = BillingDetails(name="Ada Lovelace", email="ada@example.com", postcode="N1 9GU")
# The fake processor's dialect, translated by configuration alone.
MAPPING = {
    "status_path": "result.code",
    "reference_path": "result.id",
    "auth_code_path": "result.authCode",
    "reason_path": "result.why",
    "token_path": "result.token",
    "status_map": {"AUTHORISED": "approved", "REFUSED": "declined", "UNKNOWN_PAYMENT": "not_found"},
    "reason_map": {"NSF": "insufficient_funds"},
}


def adapter_for(url: str, **extra) -> GenericHttpAdapter:
    config = {"endpoint_url": url + "/pay", "shared_secret": PROCESSOR_SECRET, "allow_http": True,
              "timeout_seconds": 0.5, **MAPPING, **extra}
    return GenericHttpAdapter(config)


@pytest.fixture
def gateway(processor) -> GenericHttpAdapter:
    return adapter_for(processor[0])


@pytest.fixture
def seen(processor):
    return processor[1]


def sale(gateway, reference="INV-1", key="k1"):
    return gateway.sale(Card(PAN, "1239", CVV), 1250, "gbp", idempotency_key=key, reference=reference,
                        billing=BILLING)


def test_sale_approved_signed_and_mapped(gateway, seen):
    result = sale(gateway)
    assert (result.status, result.reason_code, result.raw_status) == ("approved", "approved", "AUTHORISED")
    assert (result.gateway_reference, result.auth_code) == ("px_k1", "A1B2C3")
    assert (result.brand, result.last4, result.amount_minor, result.currency) == ("visa", "4242", 1250, "GBP")
    assert_no_card_data(result, PAN, CVV)
    [request] = seen.requests
    assert request["signed"] and request["headers"]["Idempotency-Key"] == "k1"
    body = request["json"]
    assert body["operation"] == "sale" and body["moto"] is True and body["currency"] == "GBP"
    assert body["card"] == {"number": PAN, "exp_month": 12, "exp_year": 2039, "cvv": CVV}


def test_signature_format():
    # HMAC-SHA256("s3cret", '1700000000.{"a":1}'), computed independently.
    assert signature_header("s3cret", b'{"a":1}', 1700000000) == (
        "t=1700000000,v1=1698a50bc74d1ff1db85c4e0a5297c2ad9fdba245d5737cdb789e4cc6e098940")


@pytest.mark.parametrize("reference, reason", [("decline-nsf", "insufficient_funds"), ("decline-odd", "card_declined")])
def test_declines_map_to_our_reasons(gateway, reference, reason):
    result = sale(gateway, reference=reference)
    assert (result.status, result.reason_code, result.raw_status) == ("declined", reason, "REFUSED")
    assert_no_card_data(result, PAN, CVV)


def test_timeout_after_sending_then_reconciled(gateway, seen):
    with pytest.raises(GatewayOutcomeUnknown) as raised:
        sale(gateway, reference="slow", key="slow-1")
    assert_no_card_data(raised.value, PAN, CVV)
    found = gateway.reconcile("slow-1", reference="slow")
    assert found is not None and (found.status, found.gateway_reference) == ("approved", "px_slow-1")
    assert gateway.reconcile("never-sent", reference="INV-1") is None
    assert [r["json"]["operation"] for r in seen.requests] == ["sale", "reconcile", "reconcile"]
    assert "card" not in seen.requests[1]["json"]


def test_server_error_means_outcome_unknown(gateway):
    with pytest.raises(GatewayOutcomeUnknown, match="HTTP 500"):
        sale(gateway, reference="boom")


def test_connection_refused_is_a_safe_retry(closed_port_url):
    with pytest.raises(GatewayTransportError) as raised:
        sale(adapter_for(closed_port_url))
    assert_no_card_data(raised.value, PAN, CVV)


def test_wrong_secret_is_a_config_error(processor):
    with pytest.raises(GatewayConfigError, match="HTTP 401"):
        sale(adapter_for(processor[0], shared_secret="not-the-secret"))


def test_capture_void_refund_tokenize(gateway, seen):
    assert gateway.capture("px_1", 500, idempotency_key="c1").status == "approved"
    assert gateway.void("px_1", idempotency_key="v1").status == "approved"
    refund = gateway.refund("px_1", 300, idempotency_key="r1")
    assert (refund.status, refund.amount_minor) == ("approved", 300)
    saved = gateway.tokenize(Card(PAN, "1239", CVV), idempotency_key="t1", billing=BILLING)
    assert (saved.status, saved.token, saved.last4) == ("approved", "ptok_1", "4242")
    bodies = [r["json"] for r in seen.requests]
    assert [b["operation"] for b in bodies] == ["capture", "void", "refund", "tokenize"]
    assert bodies[0]["gateway_reference"] == "px_1" and bodies[2]["amount_minor"] == 300
    found = gateway.reconcile("r1", reference="INV-1", refund_of="px_1")
    assert found is not None and found.status == "approved"
    assert seen.requests[-1]["json"] == {"operation": "reconcile", "reference": "INV-1", "gateway_reference": "px_1",
                                         "idempotency_key": "r1"}
    assert gateway.reconcile("r-never-sent", reference="INV-1", refund_of="px_1") is None
    assert ["card" in b for b in bodies] == [False, False, False, True]


@pytest.mark.parametrize("config, message", [
    ({"endpoint_url": "http://pay.example.com/x", "shared_secret": "s"}, "must start with https://"),
    ({"endpoint_url": "http://pay.example.com/x", "shared_secret": "s", "allow_http": True}, "only to a loopback"),
    ({"endpoint_url": "https://pay.example.com/x"}, "Signing secret is required"),
    ({"endpoint_url": "https://pay.example.com/x", "shared_secret": "s", "status_map": {"OK": "yes"}},
     "status_map values"),
    ({"endpoint_url": "https://pay.example.com/x", "shared_secret": "s", "reason_map": {"X": "nope"}},
     "unknown reason code"),
    ({"endpoint_url": "https://pay.example.com/x", "shared_secret": "s", "timeout_seconds": "3"}, "positive number"),
])
def test_config_validation(config, message):
    with pytest.raises(GatewayConfigError, match=message):
        GenericHttpAdapter(config)


def test_https_endpoint_accepted_without_allow_http():
    assert GenericHttpAdapter({"endpoint_url": "https://pay.example.com/x", "shared_secret": "s"})
