"""Card capture: keypad digits in, masked state out. One per payment session.

Lives in the media worker's memory, fed one digit at a time by whatever
detects the caller's key presses (RTP DTMF in the real worker, the keypad
simulator in the demo). It is the only object that ever sees the digits of a
card being keyed; what leaves it is either a `Card` handed to `store_card`
(the vault) or a masked state dict handed to `publish` - lengths, validity
and hints, never a digit (not even the last four: those are only allowed
after authorisation and come from the gateway's result).

Pure Python on purpose (no Django, no I/O): the worker wires the callbacks.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable

from securepay.card import MAX_PAN_LENGTH, Card, cvv_length, detect_brand, expiry_ok, luhn_ok, pan_lengths

logger = logging.getLogger(__name__)

FIELDS = ("pan", "expiry", "cvv")
EXPIRY_LENGTH = 4
DIGITS = frozenset("0123456789")
CLEAR_KEY = "*"
END_KEY = "#"


def auto_advance_length(brand: str | None) -> int:
    """The card-number length at which entry moves on by itself (if Luhn passes).

    Brands with several lengths (Visa 13/16/19, Maestro 12-19) advance at 16
    and the caller ends the rarer lengths with `#`: advancing at the first
    Luhn-valid length would cut a 16-digit Visa at 13 digits one time in ten.
    """
    lengths = pan_lengths(brand)
    return 16 if 16 in lengths else max(lengths)


class CardCapture:
    """The card-entry state of one payment session.

    `publish(state)` receives the whole masked state after every change,
    `store_card(card)` the card once every field is valid, `discard_card()`
    is called before any change to a stored card.
    """

    def __init__(
        self,
        session_id: str,
        accepted_brands: frozenset[str],
        cvv_required: bool,
        publish: Callable[[dict], None],
        store_card: Callable[[Card], None],
        discard_card: Callable[[], None],
        today: Callable[[], dt.date] = dt.date.today,
        first_seq: int = 0,
    ) -> None:
        self.session_id = str(session_id)
        self.accepted_brands = frozenset(accepted_brands)
        self.cvv_required = cvv_required
        self._publish = publish
        self._store_card = store_card
        self._discard_card = discard_card
        self._today = today
        self._digits = dict.fromkeys(FIELDS, "")
        self._pan_ended = False  # the number was ended by `#` or by auto-advance
        self._active: str | None = "pan"
        self._secured = False
        self._stored = False
        self._sealed: dict | None = None  # the masked fields as sent for authorisation (see seal)
        # Pages drop a state whose seq is not above the last one they showed: a card entry
        # created later (another call, a restarted worker) must start above any earlier one's.
        self._seq = first_seq
        self.rejected_keys = 0  # keys refused: call not secured, not at card entry, or card sent

    # --- inputs -------------------------------------------------------------------
    def key(self, digit: str) -> None:
        """One key press from the caller's keypad: 0-9, `*` (clear field) or `#` (end number)."""
        if not self._secured or self._sealed is not None:
            # Fail closed: nothing keyed while the call is not secured may land
            # in a field (the agent or a supervisor might be hearing it), nor
            # change a card sent for authorisation.
            self.refuse(digit)
            return
        self._check_key(digit)
        field = self._active
        if field is None:
            return
        if digit == CLEAR_KEY:
            self._change(field, "")
        elif digit == END_KEY:
            if field == "pan" and not self._pan_ended and len(self._digits["pan"]) in self._pan_lengths():
                self._pan_ended = True
                self._after_change(advance=True)
        elif len(self._digits[field]) < self._max_length(field) and (not self._complete(field) or field == "pan"):
            # An ended number is active again only if the agent clicked it: the caller keys on
            # (a 19-digit card whose first 16 digits pass Luhn, one in ten, ends there by itself).
            self._digits[field] += digit
            if field == "pan":
                self._pan_ended = self._pan_auto_complete()
            self._after_change(advance=self._complete(field))

    def refuse(self, digit: str) -> None:
        """A key that may not land in a field (its call was not secured, the page is not at card
        entry, the card was sent): counted (the agent sees it), never kept."""
        self._check_key(digit)
        self.rejected_keys += 1
        self._emit()

    def set_secured(self, secured: bool) -> None:
        """The telephony side linked (True) or broke (False) the secure state."""
        if secured != self._secured:
            self._secured = secured
            self._emit()

    def activate(self, field: str) -> None:
        """The agent clicked a field: the next digits go there (after the end of a card number
        that ended by itself or with `#`: it goes on)."""
        self._check_field(field)
        if self._sealed is None and field != self._active:
            self._active = field
            self._emit()

    def reset(self, field: str) -> None:
        """The agent's reset button: clear one field and make it active."""
        self._check_field(field)
        if self._sealed is not None:
            return  # sent for authorisation: Back starts a new card
        self._active = field
        self._change(field, "")

    def clear_card(self) -> None:
        """Back after a decline: every card field cleared, the vault copy discarded."""
        self._digits = dict.fromkeys(FIELDS, "")
        self._pan_ended = False
        self._active = "pan"
        self._sealed = None
        self._drop_vault_copy()
        self._emit()

    def seal(self) -> None:
        """The card went for authorisation (the payment task has the vault copy): its digits
        leave this memory - the CVV is never kept after the attempt. The page goes on showing
        the fields as they were sent; keys are refused until Back (`clear_card`)."""
        if self._sealed is not None:
            return
        self._sealed = self._keyed()
        self._digits = dict.fromkeys(FIELDS, "")
        self._pan_ended = False
        self._active = None
        self._stored = False  # the vault copy is the payment task's now: not ours to discard
        self._emit()

    # --- outputs ------------------------------------------------------------------
    def state(self) -> dict:
        """The whole masked card-entry state: lengths, validity, hints - never a digit."""
        return {
            "type": "card.state",
            "session": self.session_id,
            "seq": self._seq,
            "secured": self._secured,
            "active": self._active,
            **(self._sealed or self._keyed()),
            "rejected_keys": self.rejected_keys,
        }

    def _keyed(self) -> dict:
        """What the page shows of the fields: brand, per-field state, readiness."""
        return {
            "brand": self._brand(),
            "fields": {field: self._field_state(field) for field in FIELDS},
            "ready": self.ready,
        }

    @property
    def ready(self) -> bool:
        """Every field valid (the CVV may stay empty when the page does not require it), and
        the card in the vault."""
        return self._fields_valid() and self._stored

    def _fields_valid(self) -> bool:
        cvv_ok = self._valid("cvv") or (not self.cvv_required and not self._digits["cvv"])
        return self._valid("pan") and self._valid("expiry") and cvv_ok

    # --- internals ----------------------------------------------------------------
    @staticmethod
    def _check_key(digit: str) -> None:
        if digit not in DIGITS and digit not in (CLEAR_KEY, END_KEY):
            raise ValueError("not a keypad key")

    def _check_field(self, field: str) -> None:
        if field not in FIELDS:
            raise ValueError(f"unknown card field: {field!r}")

    def _change(self, field: str, digits: str) -> None:
        self._digits[field] = digits
        if field == "pan":
            self._pan_ended = False
        self._after_change(advance=False)

    def _after_change(self, advance: bool) -> None:
        # A stored card no longer matches what is keyed: drop it before anything else.
        if self._stored:
            self._drop_vault_copy()
        if advance:
            self._active = next((f for f in FIELDS if not self._complete(f)), None)
        if self._fields_valid():
            try:
                self._store_card(Card(self._digits["pan"], self._digits["expiry"], self._digits["cvv"]))
                self._stored = True
            except Exception as exc:  # the vault is down: not ready (no payment), the keys go on
                # The type only: a message or traceback could carry what was being stored.
                logger.error("session %s: the keyed card could not be stored (%s)", self.session_id, type(exc).__name__)
                self._drop_vault_copy()  # in case it was written before the failure
        self._emit()

    def _drop_vault_copy(self) -> None:
        """Not ready from here on, whether or not the vault answers."""
        self._stored = False
        try:
            self._discard_card()
        except Exception as exc:  # the vault is down: its copy expires with its TTL
            logger.error("session %s: the stored card could not be discarded (%s)", self.session_id, type(exc).__name__)

    def _emit(self) -> None:
        self._seq += 1
        self._publish(self.state())

    def _brand(self) -> str | None:
        return detect_brand(self._digits["pan"])

    def _pan_lengths(self) -> tuple[int, ...]:
        return pan_lengths(self._brand())

    def _pan_auto_complete(self) -> bool:
        pan = self._digits["pan"]
        at_auto_length = len(pan) == auto_advance_length(self._brand()) and luhn_ok(pan)
        return at_auto_length or len(pan) == self._max_length("pan")

    def _max_length(self, field: str) -> int:
        if field == "pan":
            # An unknown prefix may still grow into a known one; cap at the longest PAN.
            return max(self._pan_lengths()) if self._brand() else MAX_PAN_LENGTH
        if field == "expiry":
            return EXPIRY_LENGTH
        return cvv_length(self._brand())

    def _complete(self, field: str) -> bool:
        if field == "pan":
            return self._pan_ended
        return len(self._digits[field]) == self._max_length(field)

    def _valid(self, field: str) -> bool:
        return self._complete(field) and self._hint(field) is None

    def _hint(self, field: str) -> str | None:
        """Why a field is not valid, as a machine-readable word (None: no problem seen)."""
        digits = self._digits[field]
        if not digits:
            return None
        if field == "pan":
            brand = self._brand()
            if brand is not None and brand not in self.accepted_brands:
                return "brand_not_accepted"
            if self._pan_ended and brand is None:
                return "brand_not_accepted"
            if (self._pan_ended or len(digits) == auto_advance_length(brand)) and not luhn_ok(digits):
                return "luhn"
            return None
        if field == "expiry":
            if len(digits) >= 2 and not 1 <= int(digits[:2]) <= 12:
                return "month"
            if len(digits) == EXPIRY_LENGTH and not expiry_ok(digits, self._today()):
                return "expired"
            return None
        # CVV: its length follows the brand, which may change after it was keyed.
        if len(digits) != cvv_length(self._brand()) and self._active != "cvv":
            return "length"
        return None

    def _field_state(self, field: str) -> dict:
        return {
            "length": len(self._digits[field]),
            "complete": self._complete(field),
            "valid": self._valid(field),
            "hint": self._hint(field),
        }
