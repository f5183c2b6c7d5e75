"""Prefill: an integration's field names and formats -> a template's field keys and values.

A name the template has a mapping for is renamed and transformed; a name equal
to a template key is used as is (a mapping wins when both fill the same key);
any other name is ignored. Card-like names are refused outright: a CRM that
sends card data must find out at once, and the value is never kept.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

from django.utils.translation import gettext as _

from securepay.money import amount_from_minor
from tenants.models import PageTemplate, PrefillMapping, PrefillTransform, looks_like_card_field


class PrefillError(ValueError):
    """Values that cannot be used. `errors` maps each sent name to its messages."""

    def __init__(self, errors: dict[str, list[str]]):
        self.errors = errors
        super().__init__("prefill refused: " + ", ".join(sorted(errors)))


def _minor_to_amount(value: str, mapping: PrefillMapping) -> str:
    if not value.strip().lstrip("-").isdigit():
        raise ValueError(_("Expected a whole number of minor units, e.g. 1250."))
    return amount_from_minor(int(value), mapping.template.effective_currency)


def _date_to_iso(value: str, mapping: PrefillMapping) -> str:
    try:
        return dt.datetime.strptime(value.strip(), mapping.input_format).date().isoformat()  # noqa: DTZ007 - a date
    except ValueError:
        raise ValueError(_("Expected a date like %(format)s.") % {"format": mapping.input_format})


TRANSFORMS: dict[str, Callable[[str, PrefillMapping], str]] = {
    PrefillTransform.NONE: lambda value, mapping: value,
    PrefillTransform.TRIM: lambda value, mapping: value.strip(),
    PrefillTransform.UPPER: lambda value, mapping: value.upper(),
    PrefillTransform.LOWER: lambda value, mapping: value.lower(),
    PrefillTransform.MINOR_TO_AMOUNT: _minor_to_amount,
    PrefillTransform.DATE_FORMAT: _date_to_iso,
}


def _as_text(value: object) -> str:
    if isinstance(value, dict | list | tuple | set):
        raise ValueError(_("Expected a single value."))
    return str(value)


def apply_prefill(template: PageTemplate, incoming: dict) -> dict:
    """Template-keyed string values from what an integration sent. Raises PrefillError."""
    keys = set(template.fields.values_list("key", flat=True))
    mappings = {m.source_name: m for m in template.prefill_mappings.all()}
    errors: dict[str, list[str]] = {}
    direct: dict[str, str] = {}
    mapped: dict[str, str] = {}
    for name, value in incoming.items():
        if looks_like_card_field(name):
            # The value is dropped here and never echoed back, logged or stored.
            errors[name] = [_("Card data must never be sent: the caller keys the card on the phone.")]
            continue
        if value is None or (name not in mappings and name not in keys):
            continue
        try:
            text = _as_text(value)
            if name in mappings:
                mapping = mappings[name]
                mapped[mapping.field_key] = TRANSFORMS[mapping.transform](text, mapping)
            else:
                direct[name] = text
        except ValueError as exc:
            errors[name] = [str(exc)]
    if errors:
        raise PrefillError(errors)
    return {**direct, **mapped}
