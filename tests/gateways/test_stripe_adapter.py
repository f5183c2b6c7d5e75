"""The Stripe adapter against localstripe (a real process, through a recording proxy)."""

from __future__ import annotations

from urllib.parse import parse_qs

import pytest

from gateways.base import (
    BillingDetails,
    GatewayConfigError,
    GatewayOutcomeUnknown,
    GatewayTransportError,
)
from gateways.stripe.adapter import STRIPE_API_VERSION, StripeAdapter
from securepay.card import Card
from tests.gateways import assert_no_card_data
from tests.gateways.conftest import LOCALSTRIPE_KEY

VISA = "4242424242424242"
CHARGE_DECLINED = "4000000000000341"  # localstripe: attaches, but charging fails
ATTACH_DECLINED = "4000000000000002"  # localstripe: charges, but attaching fails
CVV = "837"
BILLING = BillingDetails(name="Ada Lovelace", email="ada@example.com", address_line="1 Main St", postcode="N1 9GU",
                         country="GB")


def adapter_for(api_base: str, **extra) -> StripeAdapter:
    return StripeAdapter({"api_key": LOCALSTRIPE_KEY, "api_base": api_base, "localstripe_compat": True, **extra})


@pytest.fixture
def wire(stripe_wire):
    return stripe_wire[1]


@pytest.fixture
def gateway(stripe_wire) -> StripeAdapter:
    return adapter_for(stripe_wire[0], timeout_seconds=0.5)


def sale(gateway, pan=VISA, key="k1", amount=1250, expiry="1239"):
    return gateway.sale(Card(pan, expiry, CVV), amount, "GBP", idempotency_key=key, reference="INV-1", billing=BILLING)


def form(request) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(request["body"]).items()}


def test_sale_approved_flagged_moto_and_charged_once(gateway, wire, localstripe_charges):
    result = sale(gateway)
    assert (result.status, result.reason_code, result.raw_status) == ("approved", "approved", "succeeded")
    assert result.gateway_reference.startswith("pi_") and (result.brand, result.last4) == ("visa", "4242")
    assert (result.amount_minor, result.currency) == (1250, "GBP")
    assert_no_card_data(result, VISA, CVV)

    [intent_request] = wire.posts_to("/v1/payment_intents")
    sent = form(intent_request)
    assert sent["payment_method_options[card][moto]"] == "true"
    assert sent["capture_method"] == "automatic" and sent["confirm"] == "true"
    assert sent["payment_method_types[0]"] == "card"
    assert sent["metadata[securepay_idempotency_key]"] == "k1" and sent["metadata[securepay_reference]"] == "INV-1"
    posts = [r for r in wire.requests if r["method"] == "POST"]
    assert [r["headers"]["Idempotency-Key"] for r in posts] == ["k1:pm", "k1:pi"]
    assert all(r["headers"]["Stripe-Version"] == STRIPE_API_VERSION for r in wire.requests)
    # The PAN goes to Stripe in the PaymentMethod request and nowhere else.
    assert [r["path"] for r in wire.requests if VISA in r["body"]] == ["/v1/payment_methods"]

    [charge] = localstripe_charges(result.gateway_reference)
    assert charge["status"] == "succeeded" and charge["captured"] and charge["amount"] == 1250


def test_card_declined(gateway, localstripe_charges):
    result = sale(gateway, pan=CHARGE_DECLINED)
    assert (result.status, result.reason_code, result.raw_status) == ("declined", "card_declined", "card_declined")
    assert result.message.startswith("The card was declined.") and result.last4 == "0341"
    assert_no_card_data(result, CHARGE_DECLINED, CVV)


def test_expired_card_is_declined_by_the_gateway(gateway):
    result = sale(gateway, expiry="1218")  # localstripe refuses years before 2019: invalid_expiry_year
    assert (result.status, result.reason_code, result.raw_status) == ("declined", "expired_card", "invalid_expiry_year")


def test_preauthorise_capture_and_void(gateway, wire, localstripe_charges):
    auth = gateway.preauthorise(Card(VISA, "1239", CVV), 1000, "GBP", idempotency_key="a1", reference="INV-2",
                                billing=BILLING)
    assert (auth.status, auth.raw_status) == ("approved", "requires_capture")
    assert form(wire.posts_to("/v1/payment_intents")[0])["capture_method"] == "manual"
    assert localstripe_charges(auth.gateway_reference)[0]["captured"] is False
    captured = gateway.capture(auth.gateway_reference, 1000, idempotency_key="c1")
    assert (captured.status, captured.raw_status) == ("approved", "succeeded")
    assert localstripe_charges(auth.gateway_reference)[0]["captured"] is True
    assert gateway.void(auth.gateway_reference, idempotency_key="v0").reason_code == "invalid_request"

    other = gateway.preauthorise(Card(VISA, "1239", CVV), 500, "GBP", idempotency_key="a2", reference="INV-3",
                                 billing=BILLING)
    voided = gateway.void(other.gateway_reference, idempotency_key="v1")
    assert (voided.status, voided.raw_status) == ("approved", "canceled")


def test_refund_and_over_refund(gateway, localstripe_server):
    paid = sale(gateway, amount=1000)
    refund = gateway.refund(paid.gateway_reference, 600, idempotency_key="r1")
    assert refund.status == "approved" and refund.gateway_reference.startswith("re_") and refund.amount_minor == 600
    over = gateway.refund(paid.gateway_reference, 401, idempotency_key="r2")
    assert (over.status, over.reason_code) == ("declined", "over_refund")
    assert gateway.refund(paid.gateway_reference, 400, idempotency_key="r3").status == "approved"
    assert gateway.refund("pi_doesnotexist", 1, idempotency_key="r4").reason_code == "invalid_request"


def test_tokenize_saves_the_card_without_charging(gateway, wire):
    saved = gateway.tokenize(Card(VISA, "1239", CVV), idempotency_key="t1", billing=BILLING)
    assert saved.status == "approved" and saved.token.startswith("pm_") and saved.gateway_reference.startswith("cus_")
    assert not wire.posts_to("/v1/payment_intents")
    assert [r["headers"]["Idempotency-Key"] for r in wire.requests if r["method"] == "POST"] == [
        "t1:customer", "t1:pm", "t1:attach"]
    refused = gateway.tokenize(Card(ATTACH_DECLINED, "1239", CVV), idempotency_key="t2", billing=BILLING)
    assert (refused.status, refused.reason_code, refused.token) == ("declined", "card_declined", "")


def test_reconcile_finds_the_payment_by_key(gateway):
    paid = sale(gateway, key="rk-1")
    found = gateway.reconcile("rk-1", reference="INV-1")
    assert found is not None and found.gateway_reference == paid.gateway_reference and found.status == "approved"
    assert (found.brand, found.last4) == ("visa", "4242")
    sale(gateway, pan=CHARGE_DECLINED, key="rk-2")
    assert gateway.reconcile("rk-2", reference="INV-1").reason_code == "card_declined"
    assert gateway.reconcile("never-sent", reference="INV-1") is None


def test_reconcile_finds_a_refund_by_key(gateway, wire):
    paid = sale(gateway, amount=1000, key="rf-pay")
    made = gateway.refund(paid.gateway_reference, 300, idempotency_key="rf-1")
    gateway.refund(paid.gateway_reference, 200, idempotency_key="rf-2")

    found = gateway.reconcile("rf-1", reference="INV-1", refund_of=paid.gateway_reference)
    assert found is not None and (found.status, found.gateway_reference, found.amount_minor) == (
        "approved", made.gateway_reference, 300)
    assert gateway.reconcile("rf-never-sent", reference="INV-1", refund_of=paid.gateway_reference) is None
    assert any(r["method"] == "GET" and r["path"] == "/v1/refunds" for r in wire.requests)


def test_timeout_after_sending_then_reconciled(gateway, wire, localstripe_charges):
    wire.swallow_answers_to.add("/v1/payment_intents")
    card = Card(VISA, "1239", CVV)
    with pytest.raises(GatewayOutcomeUnknown) as raised:
        gateway.sale(card, 1250, "GBP", idempotency_key="to-1", reference="INV-9", billing=BILLING)
    assert_no_card_data(raised.value, VISA, CVV)
    wire.swallow_answers_to.clear()
    found = gateway.reconcile("to-1", reference="INV-9")
    assert found is not None and found.status == "approved"
    assert len(localstripe_charges(found.gateway_reference)) == 1


def test_unreachable_stripe_is_a_safe_retry(closed_port_url):
    with pytest.raises(GatewayTransportError) as raised:
        sale(adapter_for(closed_port_url))
    assert_no_card_data(raised.value, VISA, CVV)


def test_silence_is_unknown_only_when_money_may_have_moved(silent_server):
    gateway = adapter_for(silent_server, timeout_seconds=0.3)
    with pytest.raises(GatewayTransportError):  # the PaymentMethod step moves no money
        sale(gateway)
    with pytest.raises(GatewayOutcomeUnknown):
        gateway.capture("pi_123", 100, idempotency_key="c1")


def test_rejected_api_key_is_a_config_error(localstripe_server):
    with pytest.raises(GatewayConfigError, match="authentication failed"):
        sale(adapter_for(localstripe_server, api_key="sk_x"))  # localstripe: too short to be a key


@pytest.mark.parametrize("config, message", [
    ({}, "Secret key .* is required"),
    ({"api_key": "pk_test_123"}, "must be a secret key"),
    ({"api_key": "sk_test_1", "api_base": "ftp://x"}, "must start with https://"),
    ({"api_key": "sk_test_1", "timeout_seconds": -1}, "positive number"),
    ({"api_key": "sk_test_1", "apikey": "x"}, "unknown setting"),
])
def test_config_validation(config, message):
    with pytest.raises(GatewayConfigError, match=message):
        StripeAdapter(config)


@pytest.mark.parametrize("status", ["processing", "requires_confirmation", None])
def test_an_unsettled_payment_intent_is_an_unknown_outcome_not_a_final_error(status):
    from gateways.stripe.adapter import _intent_result

    with pytest.raises(GatewayOutcomeUnknown) as raised:
        _intent_result({"id": "pi_123", "status": status, "amount": 1250, "currency": "gbp"})
    assert "pi_123" in str(raised.value)
