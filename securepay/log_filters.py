"""Defence in depth for logs: redact anything shaped like a card number.

Code never logs card data on purpose (the Card type refuses to print its
digits); this filter catches the accident, e.g. a third-party library echoing
a request body. It rewrites the record before any handler formats it.
"""

from __future__ import annotations

import logging
import re

from securepay.card import luhn_ok

# 12-19 digits, optionally separated by single spaces or dashes.
_PAN_LIKE = re.compile(r"(?<!\d)(?:\d[ -]?){11,18}\d(?!\d)")


# A card field named in a request body or a dict: card[cvc]=123, "cvv": "123", exp_month=12 ...
_CARD_FIELD_VALUE = re.compile(
    r"""((?:card\[)?(?:cvc|cvv|cvv2|cvc2|csc|exp_month|exp_year|expiry|exp_date)\]?["']?\s*[=:]\s*["']?)[0-9/ ]+""",
    re.IGNORECASE,
)


def redact_card_numbers(text: str) -> str:
    def _sub(match: re.Match[str]) -> str:
        digits = re.sub(r"\D", "", match.group(0))
        return "[REDACTED PAN]" if luhn_ok(digits) else match.group(0)

    return _CARD_FIELD_VALUE.sub(r"\1[REDACTED]", _PAN_LIKE.sub(_sub, text))


class CardDataFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken format string must not lose the record
            return True
        redacted = redact_card_numbers(message)
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact_card_numbers(record.exc_text)
        if redacted != message:
            record.msg, record.args = redacted, None
        return True
