"""The one in-memory shape of card data, built so it cannot leak by accident.

PCI DSS: the PAN and CVV may exist only in the media worker's memory, the
encrypted vault and the gateway task's memory. `Card` therefore refuses every
road out that Python offers by default: its repr/str show only brand and last
four, it cannot be pickled (so it never rides a Celery message, a channel-layer
message or a cache entry), and it has no __dict__ for a serializer to walk.
The vault serialises it explicitly (`to_vault_bytes`) and encrypts at once.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass

# Brand -> (PAN prefixes, valid PAN lengths, CVV length). Longest prefix wins.
BRANDS: dict[str, tuple[tuple[str, ...], tuple[int, ...], int]] = {
    "amex": (("34", "37"), (15,), 4),
    "visa": (("4",), (13, 16, 19), 3),
    "mastercard": (
        tuple(["51", "52", "53", "54", "55"] + [str(p) for p in range(2221, 2721)]),
        (16,),
        3,
    ),
    "discover": (("6011", "644", "645", "646", "647", "648", "649", "65"), (16, 19), 3),
    "diners": (("300", "301", "302", "303", "304", "305", "36", "38"), (14, 16), 3),
    "jcb": (tuple(str(p) for p in range(3528, 3590)), (16, 17, 18, 19), 3),
    "maestro": (
        ("5018", "5020", "5038", "5893", "6304", "6759", "6761", "6762", "6763"),
        (12, 13, 14, 15, 16, 17, 18, 19),
        3,
    ),
}
MAX_PAN_LENGTH = 19


def luhn_ok(digits: str) -> bool:
    """True when a digit string passes the Luhn (mod 10) check."""
    if not digits.isdigit():
        return False
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2 == 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def detect_brand(digits: str) -> str | None:
    """The brand a (possibly partial) PAN belongs to, by longest matching prefix."""
    best: tuple[int, str] | None = None
    for brand, (prefixes, _lengths, _cvv) in BRANDS.items():
        for prefix in prefixes:
            if digits.startswith(prefix) and (best is None or len(prefix) > best[0]):
                best = (len(prefix), brand)
    return best[1] if best else None


def pan_lengths(brand: str | None) -> tuple[int, ...]:
    return BRANDS[brand][1] if brand in BRANDS else (16,)


def cvv_length(brand: str | None) -> int:
    return BRANDS[brand][2] if brand in BRANDS else 3


def expiry_ok(mmyy: str, today: dt.date | None = None) -> bool:
    """A 4-digit MMYY that is this month or later (cards expire at month end)."""
    if len(mmyy) != 4 or not mmyy.isdigit():
        return False
    month, year = int(mmyy[:2]), 2000 + int(mmyy[2:])
    if not 1 <= month <= 12:
        return False
    today = today or dt.date.today()
    return (year, month) >= (today.year, today.month)


def pan_ok(pan: str, accepted_brands: frozenset[str] | None = None) -> bool:
    brand = detect_brand(pan)
    if brand is None or len(pan) not in pan_lengths(brand) or not luhn_ok(pan):
        return False
    return accepted_brands is None or brand in accepted_brands


class CardDataError(ValueError):
    """Raised for unusable card data; the message never contains the digits."""


@dataclass(frozen=True, slots=True, repr=False, eq=False)
class Card:
    pan: str
    expiry: str  # MMYY
    cvv: str = ""  # may be empty when the template does not require a CVV

    def __post_init__(self) -> None:
        if not (self.pan.isdigit() and 12 <= len(self.pan) <= MAX_PAN_LENGTH):
            raise CardDataError("card number must be 12 to 19 digits")
        if not (len(self.expiry) == 4 and self.expiry.isdigit()):
            raise CardDataError("expiry must be 4 digits MMYY")
        if self.cvv and not (self.cvv.isdigit() and len(self.cvv) in (3, 4)):
            raise CardDataError("security code must be 3 or 4 digits")

    @property
    def brand(self) -> str:
        return detect_brand(self.pan) or "unknown"

    @property
    def last4(self) -> str:
        return self.pan[-4:]

    @property
    def exp_month(self) -> int:
        return int(self.expiry[:2])

    @property
    def exp_year(self) -> int:
        return 2000 + int(self.expiry[2:])

    def without_cvv(self) -> Card:
        """The card after the authorisation attempt: the CVV must not be kept."""
        return Card(self.pan, self.expiry, "")

    # --- the only explicit road out: straight into the vault's cipher -------
    def to_vault_bytes(self) -> bytes:
        return json.dumps({"pan": self.pan, "expiry": self.expiry, "cvv": self.cvv}).encode()

    @classmethod
    def from_vault_bytes(cls, raw: bytes) -> Card:
        data = json.loads(raw)
        return cls(data["pan"], data["expiry"], data.get("cvv", ""))

    # --- every implicit road out is closed ----------------------------------
    def __repr__(self) -> str:
        return f"<Card {self.brand} ****{self.last4}>"

    __str__ = __repr__

    def __format__(self, spec: str) -> str:
        return repr(self)

    def __reduce__(self):  # pickle, copy, Celery/kombu pickle serializer
        raise TypeError("Card cannot be pickled: card data never leaves memory unencrypted")

    def __reduce_ex__(self, protocol):
        return self.__reduce__()

    def __getstate__(self):
        raise TypeError("Card cannot be serialised")
