"""Stripe's error and decline codes -> our stable reason codes.

Stripe advises showing a generic decline for lost/stolen/fraud codes, so the
caller is never told why in those cases; they map to `card_declined`.
"""

from __future__ import annotations

# Stripe `decline_code` or error `code` -> our reason code. decline_code wins.
REASON_BY_STRIPE_CODE: dict[str, str] = {
    "insufficient_funds": "insufficient_funds",
    "do_not_honor": "do_not_honour",
    "expired_card": "expired_card",
    "invalid_expiry_month": "expired_card",
    "invalid_expiry_year": "expired_card",
    "incorrect_cvc": "cvv_mismatch",
    "invalid_cvc": "cvv_mismatch",
    "incorrect_number": "invalid_card_number",
    "invalid_number": "invalid_card_number",
    "authentication_required": "authentication_required",
    "card_velocity_exceeded": "limit_exceeded",
    "withdrawal_count_limit_exceeded": "limit_exceeded",
    "processing_error": "processing_error",
    "try_again_later": "processing_error",
    "amount_too_large": "invalid_request",
    "amount_too_small": "invalid_request",
    "charge_already_refunded": "over_refund",
    "generic_decline": "card_declined",
    "card_declined": "card_declined",
}


def reason_for(code: str | None, decline_code: str | None, *, default: str) -> str:
    """Our reason code for a Stripe error, by decline code, then code."""
    for candidate in (decline_code, code):
        if candidate and candidate in REASON_BY_STRIPE_CODE:
            return REASON_BY_STRIPE_CODE[candidate]
    return default
