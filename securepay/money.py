"""Amounts: major units as the caller hears them, minor units as gateways and the database keep them.

Every conversion goes through the currency's ISO 4217 exponent, so 12.50 GBP is
1250 and 1250 JPY is 1250. One plain format everywhere: "12.50 GBP".
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

# ISO 4217 currencies whose minor unit is not the usual hundredth.
ZERO_DECIMAL_CURRENCIES = frozenset(
    {"BIF", "CLP", "DJF", "GNF", "ISK", "JPY", "KMF", "KRW", "PYG"}
    | {"RWF", "UGX", "UYI", "VND", "VUV", "XAF", "XOF", "XPF"}
)
THREE_DECIMAL_CURRENCIES = frozenset({"BHD", "IQD", "JOD", "KWD", "LYD", "OMR", "TND"})


def currency_exponent(currency: str) -> int:
    """Digits after the decimal point: 0 for JPY, 3 for KWD, 2 for the rest."""
    code = currency.upper()
    if code in ZERO_DECIMAL_CURRENCIES:
        return 0
    if code in THREE_DECIMAL_CURRENCIES:
        return 3
    return 2


def amount_to_minor(amount: Decimal | str, currency: str) -> int:
    """"12.50" GBP -> 1250. Raises ValueError for a non-number or more decimals than the currency has."""
    try:
        value = Decimal(str(amount).strip())
    except InvalidOperation:
        raise ValueError(f"not an amount: {amount!r}")
    if not value.is_finite():
        raise ValueError(f"not an amount: {amount!r}")
    try:
        minor = value.scaleb(currency_exponent(currency))
    except ArithmeticError:  # e.g. "1e999999": out of Decimal's range
        raise ValueError(f"not an amount: {amount!r}")
    if minor != minor.to_integral_value():
        raise ValueError(f"{currency} amounts have at most {currency_exponent(currency)} decimals")
    return int(minor)


def amount_from_minor(minor: int, currency: str) -> str:
    """1250 GBP -> "12.50"; 1250 JPY -> "1250"."""
    exponent = currency_exponent(currency)
    return f"{Decimal(int(minor)).scaleb(-exponent):.{exponent}f}"


def format_amount(minor: int, currency: str) -> str:
    """1250 GBP -> "12.50 GBP"."""
    return f"{amount_from_minor(minor, currency)} {currency.upper()}"
