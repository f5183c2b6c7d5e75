"""CardCapture: keypad digits in, masked state out (pure Python, no Django)."""

from __future__ import annotations

import datetime as dt
import json
import re

import pytest

from media.capture import CardCapture
from securepay.card import luhn_ok

VISA = "4242424242424242"
AMEX = "378282246310005"
MASTERCARD = "5555555555554444"
VISA_13 = "4222222222222"
FUTURE = "1239"
TODAY = dt.date(2026, 6, 15)


class Recorder:
    def __init__(self):
        self.states: list[dict] = []
        self.calls: list[tuple] = []

    def publish(self, state: dict) -> None:
        self.states.append(state)

    def store(self, card) -> None:
        self.calls.append(("store", card.pan, card.expiry, card.cvv))

    def discard(self) -> None:
        self.calls.append(("discard",))


def make(brands=("visa", "mastercard", "amex"), cvv_required=True, secured=True):
    rec = Recorder()
    capture = CardCapture(
        "s-1", frozenset(brands), cvv_required, rec.publish, rec.store, rec.discard, today=lambda: TODAY
    )
    if secured:
        capture.set_secured(True)
    return capture, rec


def keys(capture: CardCapture, digits: str) -> None:
    for d in digits:
        capture.key(d)


def test_field_order_and_ready_card_is_stored_once():
    capture, rec = make()
    keys(capture, VISA)
    state = capture.state()
    assert state["active"] == "expiry"
    assert state["fields"]["pan"] == {"length": 16, "complete": True, "valid": True, "hint": None}
    assert state["brand"] == "visa"
    keys(capture, FUTURE)
    assert capture.state()["active"] == "cvv"
    keys(capture, "123")
    state = capture.state()
    assert state["ready"] is True and state["active"] is None
    assert rec.calls == [("store", VISA, FUTURE, "123")]


def test_amex_takes_15_digits_and_a_4_digit_cvv():
    capture, rec = make()
    keys(capture, AMEX)
    assert capture.state()["active"] == "expiry"
    keys(capture, FUTURE + "123")
    assert capture.state()["ready"] is False
    assert capture.state()["fields"]["cvv"]["complete"] is False
    capture.key("4")
    assert capture.state()["ready"] is True
    assert rec.calls == [("store", AMEX, FUTURE, "1234")]


def test_hash_ends_a_short_number_only_at_a_valid_length():
    capture, _ = make()
    keys(capture, VISA_13[:12])
    capture.key("#")  # 12 digits: not a Visa length, ignored
    assert capture.state()["active"] == "pan"
    capture.key(VISA_13[12])
    assert capture.state()["active"] == "pan"  # 13 is valid but Visa advances at 16 by itself
    capture.key("#")
    state = capture.state()
    assert state["active"] == "expiry"
    assert state["fields"]["pan"]["valid"] is True


def test_star_clears_the_active_field_only():
    capture, _ = make()
    keys(capture, VISA + "12")
    capture.key("*")
    state = capture.state()
    assert state["fields"]["expiry"]["length"] == 0
    assert state["fields"]["pan"]["length"] == 16
    assert state["active"] == "expiry"


def test_reset_clears_a_field_makes_it_active_and_discards_a_stored_card():
    capture, rec = make()
    keys(capture, VISA + FUTURE + "123")
    capture.reset("expiry")
    state = capture.state()
    assert state["active"] == "expiry" and state["fields"]["expiry"]["length"] == 0 and not state["ready"]
    assert rec.calls == [("store", VISA, FUTURE, "123"), ("discard",)]
    keys(capture, "0130")
    assert rec.calls[-1] == ("store", VISA, "0130", "123")
    assert capture.state()["active"] is None


def test_activate_moves_digits_to_the_clicked_field():
    capture, _ = make()
    capture.activate("cvv")
    keys(capture, "12")
    state = capture.state()
    assert state["active"] == "cvv" and state["fields"]["cvv"]["length"] == 2 and state["fields"]["pan"]["length"] == 0
    with pytest.raises(ValueError):
        capture.activate("amount")


def test_luhn_failure_is_hinted_and_not_valid():
    capture, rec = make()
    keys(capture, "4242424242424241")
    pan = capture.state()["fields"]["pan"]
    assert pan["hint"] == "luhn" and pan["valid"] is False
    assert capture.state()["active"] == "pan"  # a Visa may still be 19 digits long
    assert not any(call[0] == "store" for call in rec.calls)


def test_brand_not_accepted():
    capture, rec = make(brands=("visa",))
    keys(capture, MASTERCARD + FUTURE + "123")
    state = capture.state()
    assert state["fields"]["pan"]["hint"] == "brand_not_accepted"
    assert state["fields"]["pan"]["complete"] is True and state["fields"]["pan"]["valid"] is False
    assert state["ready"] is False and rec.calls == []


def test_expiry_in_the_past_and_impossible_month():
    capture, _ = make()
    keys(capture, VISA + "0526")  # May 2026, before "today"
    assert capture.state()["fields"]["expiry"]["hint"] == "expired"
    capture.reset("expiry")
    keys(capture, "13")
    assert capture.state()["fields"]["expiry"]["hint"] == "month"
    capture.reset("expiry")
    keys(capture, "0626")  # this month still counts
    assert capture.state()["fields"]["expiry"]["valid"] is True


def test_cvv_optional_when_not_required():
    capture, rec = make(cvv_required=False)
    keys(capture, VISA + FUTURE)
    assert capture.state()["ready"] is True
    assert rec.calls == [("store", VISA, FUTURE, "")]
    capture.key("1")  # keying a CVV after all: the stored card is replaced once it is complete
    assert capture.state()["ready"] is False and rec.calls[-1] == ("discard",)
    keys(capture, "23")
    assert rec.calls[-1] == ("store", VISA, FUTURE, "123")


def test_keys_are_refused_while_not_secured():
    capture, rec = make(secured=False)
    keys(capture, "4242")
    state = capture.state()
    assert state["fields"]["pan"]["length"] == 0
    assert state["rejected_keys"] == 4 and state["secured"] is False
    capture.set_secured(True)
    capture.key("4")
    assert capture.state()["fields"]["pan"]["length"] == 1
    capture.set_secured(False)
    capture.key("2")
    assert capture.state()["fields"]["pan"]["length"] == 1 and capture.state()["rejected_keys"] == 5


def test_clear_card_empties_every_field_and_discards_the_vault_copy():
    capture, rec = make()
    keys(capture, VISA + FUTURE + "123")
    capture.clear_card()
    state = capture.state()
    assert all(f["length"] == 0 for f in state["fields"].values())
    assert state["active"] == "pan" and state["ready"] is False
    assert rec.calls[-1] == ("discard",)


def test_published_states_hold_no_digit_of_the_card_and_seq_increases():
    capture, rec = make()
    keys(capture, VISA)
    capture.reset("pan")
    keys(capture, AMEX + FUTURE + "1234")
    seqs = [s["seq"] for s in rec.states]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    assert rec.states[-1] == capture.state()
    for state in rec.states:
        text = json.dumps(state)
        # Only lengths (0-19) and the sequence number are numbers; no run of card digits.
        assert VISA[-4:] not in text and AMEX[-4:] not in text and FUTURE not in text
        for key in ("pan", "expiry", "cvv"):
            assert set(state["fields"][key]) == {"length", "complete", "valid", "hint"}
        numbers = [int(n) for n in re.findall(r"\d+", text.replace('"s-1"', ""))]
        assert all(n <= 19 or n == state["seq"] or n == state["rejected_keys"] for n in numbers)


def test_unknown_keys_are_refused_loudly():
    capture, _ = make()
    with pytest.raises(ValueError):
        capture.key("A")


def test_a_card_sent_for_authorisation_leaves_memory_and_takes_no_more_keys():
    capture, rec = make()
    keys(capture, VISA + FUTURE + "123")
    shown = capture.state()
    capture.seal()
    sealed = capture.state()
    assert {k: sealed[k] for k in ("brand", "fields", "ready")} == {k: shown[k] for k in ("brand", "fields", "ready")}
    assert sealed["active"] is None and sealed["seq"] > shown["seq"]
    assert set(capture._digits.values()) == {""}  # PAN, expiry and CVV gone from memory
    keys(capture, "4")
    capture.reset("cvv")
    capture.activate("pan")
    assert capture.state()["fields"] == shown["fields"] and capture.state()["rejected_keys"] == 1
    assert rec.calls == [("store", VISA, FUTURE, "123")]  # the vault copy is the payment task's
    capture.clear_card()  # Back after a decline: a new card
    keys(capture, MASTERCARD)
    assert capture.state()["fields"]["pan"]["valid"] and capture.state()["active"] == "expiry"


def test_a_vault_failure_leaves_the_card_not_ready_and_the_keys_going_on():
    capture, rec = make()

    def vault_down(card) -> None:
        raise ConnectionError("vault unreachable")

    capture._store_card = vault_down
    keys(capture, VISA + FUTURE + "12")
    capture.key("3")  # every field valid: the store fails
    state = capture.state()
    assert state["fields"]["cvv"]["valid"] and state["ready"] is False
    capture._store_card = rec.store  # back up: the agent resets the CVV, the caller keys it again
    capture.reset("cvv")
    keys(capture, "123")
    assert capture.state()["ready"] and rec.calls[-1] == ("store", VISA, FUTURE, "123")


def test_a_vault_that_cannot_discard_leaves_the_card_not_ready():
    capture, rec = make(cvv_required=False)
    keys(capture, VISA + FUTURE)  # ready without a CVV: stored
    assert capture.state()["ready"]

    def vault_down() -> None:
        raise ConnectionError("vault unreachable")

    capture._discard_card = vault_down
    capture.reset("pan")  # the stored card no longer matches: the discard fails
    state = capture.state()
    assert state["ready"] is False and state["fields"]["pan"]["length"] == 0 and state["active"] == "pan"


def test_a_19_digit_card_whose_first_16_pass_luhn_is_keyed_on_after_a_click():
    visa_19 = "4242424242424242006"  # the first 16 digits pass Luhn: the number ends there by itself
    assert luhn_ok(visa_19) and luhn_ok(visa_19[:16])
    capture, rec = make()
    keys(capture, visa_19[:16] + FUTURE + "123")
    assert capture.state()["ready"] and rec.calls[-1] == ("store", visa_19[:16], FUTURE, "123")
    capture.activate("pan")  # the caller says the number is longer; a click alone changes nothing
    assert capture.state()["ready"] and capture.state()["fields"]["pan"]["complete"]
    capture.key(visa_19[16])
    state = capture.state()
    assert state["active"] == "pan" and not state["ready"] and state["fields"]["pan"]["complete"] is False
    assert rec.calls[-1] == ("discard",)  # the 16-digit card stored before is gone
    keys(capture, visa_19[17:])
    state = capture.state()
    assert state["fields"]["pan"] == {"length": 19, "complete": True, "valid": True, "hint": None}
    assert state["ready"] and rec.calls[-1] == ("store", visa_19, FUTURE, "123")
