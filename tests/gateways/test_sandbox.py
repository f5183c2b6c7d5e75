"""The sandbox gateway: every test card, idempotency, timeouts, refunds."""

from __future__ import annotations

import re
import threading

import pytest

from gateways import base
from gateways.base import (
    BillingDetails,
    GatewayConfigError,
    GatewayError,
    GatewayOutcomeUnknown,
    get_adapter,
)
from gateways.generic.adapter import GenericHttpAdapter
from gateways.sandbox import adapter as sandbox
from gateways.sandbox.adapter import SandboxAdapter
from gateways.stripe.adapter import StripeAdapter
from securepay.card import Card
from tests.gateways import assert_no_card_data

FUTURE = "1239"
BILLING = BillingDetails(name="Ada Lovelace", email="ada@example.com", postcode="N1 9GU", country="GB")


@pytest.fixture(autouse=True)
def empty_sandbox():
    sandbox.clear()
    yield
    sandbox.clear()


@pytest.fixture
def gateway() -> SandboxAdapter:
    return SandboxAdapter({"merchant_id": "alpha"})


def sale(gateway, card: Card, key: str, amount: int = 1250):
    return gateway.sale(card, amount, "gbp", idempotency_key=key, reference="INV-1", billing=BILLING)


@pytest.mark.parametrize("pan, cvv, brand", [
    ("4242424242424242", "837", "visa"),
    ("5555555555554444", "837", "mastercard"),
    ("378282246310005", "7364", "amex"),
])
def test_approving_cards(gateway, pan, cvv, brand):
    result = sale(gateway, Card(pan, FUTURE, cvv), "k1")
    assert (result.status, result.reason_code, result.brand, result.last4) == ("approved", "approved", brand, pan[-4:])
    assert result.amount_minor == 1250 and result.currency == "GBP"
    assert result.gateway_reference.startswith("sbx_") and re.fullmatch(r"\d{6}", result.auth_code)
    assert result.cvv_result == "M" and result.message == "The payment was approved."
    assert sandbox.charges_count() == 1
    assert_no_card_data(result, pan, cvv)


@pytest.mark.parametrize("pan, expiry, cvv, reason", [
    ("4000000000009995", FUTURE, "837", "insufficient_funds"),
    ("4000000000000119", FUTURE, "837", "do_not_honour"),
    ("4000000000000069", FUTURE, "837", "expired_card"),
    ("4242424242424242", "0120", "837", "expired_card"),
    ("4000000000000002", FUTURE, "837", "card_declined"),
    ("4242424242424242", FUTURE, "999", "cvv_mismatch"),
    ("378282246310005", FUTURE, "9999", "cvv_mismatch"),
    ("4242424242424241", FUTURE, "837", "invalid_card_number"),
])
def test_declining_cards(gateway, pan, expiry, cvv, reason):
    result = sale(gateway, Card(pan, expiry, cvv), "k1")
    assert (result.status, result.reason_code) == ("declined", reason)
    assert result.message == base.AGENT_MESSAGES[reason] and not result.gateway_reference
    assert sandbox.charges_count() == 0
    assert_no_card_data(result, pan, cvv)


def test_same_key_twice_charges_once(gateway):
    card = Card("4242424242424242", FUTURE, "837")
    first, second = sale(gateway, card, "k1"), sale(gateway, card, "k1")
    assert first == second and sandbox.charges_count() == 1
    sale(gateway, card, "k2")
    assert sandbox.charges_count() == 2


def test_same_key_from_many_threads_charges_once(gateway):
    card = Card("4242424242424242", FUTURE, "837")
    results = []
    threads = [threading.Thread(target=lambda: results.append(sale(gateway, card, "k1"))) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(results)) == 1 and sandbox.charges_count() == 1


def test_keys_are_per_merchant(gateway):
    card = Card("4242424242424242", FUTURE, "837")
    other_tenant = SandboxAdapter({"merchant_id": "beta"})
    assert sale(gateway, card, "k1").gateway_reference != sale(other_tenant, card, "k1").gateway_reference
    assert sandbox.charges_count() == 2
    assert other_tenant.reconcile("k1", reference="INV-1") != gateway.reconcile("k1", reference="INV-1")


def test_key_reused_for_another_request_is_refused(gateway):
    card = Card("4242424242424242", FUTURE, "837")
    sale(gateway, card, "k1", amount=100)
    with pytest.raises(GatewayError, match="different request"):
        sale(gateway, card, "k1", amount=200)


def test_timeout_after_charging_then_reconciled(gateway):
    card = Card("4000000000000259", FUTURE, "837")
    with pytest.raises(GatewayOutcomeUnknown) as raised:
        sale(gateway, card, "k1")
    assert_no_card_data(raised.value, card.pan, card.cvv)
    found = gateway.reconcile("k1", reference="INV-1")
    assert found is not None and found.status == "approved" and sandbox.charges_count() == 1
    assert sale(gateway, card, "k1") == found  # a retry replays, never charges again
    assert sandbox.charges_count() == 1


def test_timeout_before_charging_then_reconciled(gateway):
    card = Card("4000000000000408", FUTURE, "837")
    with pytest.raises(GatewayOutcomeUnknown):
        sale(gateway, card, "k1")
    assert gateway.reconcile("k1", reference="INV-1") is None and sandbox.charges_count() == 0
    assert sale(gateway, card, "k1").status == "approved"  # so the retry is safe
    assert sandbox.charges_count() == 1


def test_reconcile_reports_declines_too(gateway):
    sale(gateway, Card("4000000000009995", FUTURE, "837"), "k1")
    assert gateway.reconcile("k1", reference="INV-1").reason_code == "insufficient_funds"


def test_preauthorise_capture_refund(gateway):
    auth = gateway.preauthorise(Card("4242424242424242", FUTURE, "837"), 1000, "GBP", idempotency_key="a",
                                reference="INV-2", billing=BILLING)
    assert auth.status == "approved" and auth.raw_status == "authorised"
    assert gateway.refund(auth.gateway_reference, 1, idempotency_key="r0").reason_code == "over_refund"
    assert gateway.capture(auth.gateway_reference, 1001, idempotency_key="c0").reason_code == "invalid_request"
    captured = gateway.capture(auth.gateway_reference, 800, idempotency_key="c1")
    assert (captured.status, captured.amount_minor) == ("approved", 800)
    assert gateway.capture(auth.gateway_reference, 800, idempotency_key="c2").reason_code == "invalid_request"
    assert gateway.void(auth.gateway_reference, idempotency_key="v1").reason_code == "invalid_request"
    refund = gateway.refund(auth.gateway_reference, 500, idempotency_key="r1")
    assert refund.status == "approved" and refund.gateway_reference.startswith("sbx_re_")
    over = gateway.refund(auth.gateway_reference, 301, idempotency_key="r2")
    assert (over.status, over.reason_code) == ("declined", "over_refund")
    assert over.message == "The refund is more than is left to refund on this payment."
    assert gateway.refund(auth.gateway_reference, 300, idempotency_key="r3").status == "approved"
    assert gateway.refund(auth.gateway_reference, 300, idempotency_key="r3").status == "approved"  # replay


def test_refund_above_sale_amount_is_declined(gateway):
    paid = sale(gateway, Card("4242424242424242", FUTURE, "837"), "k1", amount=1250)
    assert gateway.refund(paid.gateway_reference, 1251, idempotency_key="r1").reason_code == "over_refund"
    assert gateway.refund("sbx_nope", 1, idempotency_key="r2").reason_code == "invalid_request"


def test_void_authorisation(gateway):
    auth = gateway.preauthorise(Card("4242424242424242", FUTURE, "837"), 1000, "GBP", idempotency_key="a",
                                reference="INV-2", billing=BILLING)
    assert gateway.void(auth.gateway_reference, idempotency_key="v1").raw_status == "voided"
    assert gateway.capture(auth.gateway_reference, 1000, idempotency_key="c1").reason_code == "invalid_request"


def test_tokenize(gateway):
    saved = gateway.tokenize(Card("5555555555554444", FUTURE, "837"), idempotency_key="t1", billing=BILLING)
    assert saved.status == "approved" and saved.token.startswith("sbx_tok_") and saved.last4 == "4444"
    assert sandbox.charges_count() == 0
    refused = gateway.tokenize(Card("4000000000000119", FUTURE, "837"), idempotency_key="t2", billing=BILLING)
    assert (refused.status, refused.reason_code, refused.token) == ("declined", "do_not_honour", "")


def test_bad_amounts_and_keys_are_bugs(gateway):
    card = Card("4242424242424242", FUTURE, "837")
    for amount in (0, -5, 12.5, True):
        with pytest.raises(ValueError):
            sale(gateway, card, "k1", amount=amount)
    with pytest.raises(ValueError):
        sale(gateway, card, "")


def test_registry_and_config_validation():
    assert set(base.ADAPTERS) == {"sandbox", "stripe", "generic_http"}
    assert base.ADAPTERS["stripe"] is StripeAdapter and base.ADAPTERS["generic_http"] is GenericHttpAdapter
    assert isinstance(get_adapter("sandbox", {}), SandboxAdapter)
    with pytest.raises(GatewayConfigError, match="unknown gateway 'paypal'"):
        get_adapter("paypal", {})
    with pytest.raises(GatewayConfigError, match="unknown setting.*api_kye"):
        get_adapter("sandbox", {"api_kye": "x"})
    for cls in base.ADAPTERS.values():
        assert cls.supports_moto is True
        assert all(field.name and field.label for field in cls.config_fields())
    assert [f.name for f in StripeAdapter.config_fields() if f.secret] == ["api_key"]
