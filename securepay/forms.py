"""Step 1 of a payment: the customer-details form a page template describes.

The form is built from the template at run time, one Django field per
`TemplateField`, so the agent page, the REST API and the launch link all
validate customer details by the same rules. Card fields cannot appear: the
template refuses card-like keys (see `tenants.models.looks_like_card_field`).
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

from django import forms
from django.core.exceptions import ValidationError
from django.core.validators import RegexValidator
from django.utils.translation import gettext_lazy as _

from securepay.money import amount_from_minor, amount_to_minor, currency_exponent, format_amount
from tenants.models import FieldType, PageTemplate, TemplateField
from tenants.prefill import PrefillError, apply_prefill

__all__ = [
    "PrefillInvalid",
    "SessionDetailsForm",
    "amount_to_minor",
    "details_form_class",
    "details_from_prefill",
    "form_field_for",
    "format_amount",
    "session_details_from_form",
]

DEFAULT_MAX_LENGTH = {
    FieldType.TEXT: 200,
    FieldType.EMAIL: 254,
    FieldType.PHONE: 32,
    FieldType.ADDRESS: 500,
    FieldType.POSTCODE: 16,
}
phone_validator = RegexValidator(r"^\+?[0-9][0-9 ().-]{4,30}$", _("Enter a phone number, e.g. +44 20 7946 0000."))
postcode_validator = RegexValidator(r"^[A-Za-z0-9][A-Za-z0-9 -]{0,15}$", _("Enter a postcode."))


def greater_than_zero(value: Decimal) -> None:
    if value <= 0:
        raise ValidationError(_("The amount must be more than zero."), code="not_positive")


def form_field_for(field: TemplateField, currency: str, language: str = "en") -> forms.Field:
    """The Django form field for one template field, with all its validators."""
    common = {
        "label": field.label_for(language),
        "required": field.is_required,
        "initial": field.default or None,
    }
    low, high = field.min_value, field.max_value
    if field.field_type == FieldType.MONEY:
        return forms.DecimalField(
            max_digits=15,
            decimal_places=currency_exponent(currency),
            min_value=low,
            max_value=high,
            validators=[greater_than_zero],
            widget=forms.TextInput(attrs={"inputmode": "decimal", "autocomplete": "off"}),
            **common,
        )
    if field.field_type == FieldType.SELECT:
        choices = [(c, c) for c in field.choice_list]
        if not field.is_required:
            choices.insert(0, ("", "—"))
        # Django's stock message repeats the rejected value; from a CRM that could be anything.
        not_a_choice = {"invalid_choice": _("Select one of the offered choices.")}
        return forms.ChoiceField(choices=choices, error_messages=not_a_choice, **common)
    if field.field_type == FieldType.DATE:
        return forms.DateField(
            input_formats=["%Y-%m-%d"], widget=forms.DateInput(attrs={"type": "date"}, format="%Y-%m-%d"), **common
        )

    validators = []
    if field.pattern:
        validators.append(RegexValidator(rf"\A(?:{field.pattern})\Z", _("Enter a value in the expected format.")))
    if field.field_type == FieldType.PHONE:
        validators.append(phone_validator)
    if field.field_type == FieldType.POSTCODE:
        validators.append(postcode_validator)
    lengths = {
        "min_length": int(low) if low is not None else None,
        "max_length": int(high) if high is not None else DEFAULT_MAX_LENGTH[field.field_type],
    }
    if field.field_type == FieldType.EMAIL:
        return forms.EmailField(validators=validators, **lengths, **common)
    widget = {
        FieldType.ADDRESS: forms.Textarea(attrs={"rows": 3}),
        FieldType.PHONE: forms.TextInput(attrs={"type": "tel"}),
    }.get(field.field_type)
    return forms.CharField(validators=validators, widget=widget, **lengths, **common)


class SessionDetailsForm(forms.Form):
    """Base of every built details form; `details_form_class` fills in the fields."""

    required_css_class = "required"
    # Set on each built class (after creation, so a template key like
    # "currency" stays a form field and never shadows these).
    page_template: PageTemplate
    currency: str
    amount_key: str | None


def details_form_class(template: PageTemplate, language: str = "en") -> type[forms.Form]:
    """A form class for step 1 of `template`: one field per template field, in order, named by key."""
    currency = template.effective_currency
    template_fields = list(template.fields.all())
    declared = {f.key: form_field_for(f, currency, language) for f in template_fields}
    form_class = type(f"{template.slug.title().replace('-', '')}DetailsForm", (SessionDetailsForm,), declared)
    form_class.page_template = template
    form_class.currency = currency
    form_class.amount_key = next((f.key for f in template_fields if f.field_type == FieldType.MONEY), None)
    return form_class


def session_details_from_form(form: SessionDetailsForm) -> tuple[dict, int]:
    """(JSON-safe customer details, amount in minor units) from a valid details form."""
    if not form.is_valid():
        raise ValueError("the details form is not valid")
    if form.amount_key is None:
        raise ValueError(f"template {form.page_template} has no money field")
    amount_minor = amount_to_minor(form.cleaned_data[form.amount_key], form.currency)
    details = {}
    for key, value in form.cleaned_data.items():
        if value is None or value == "":
            continue
        if key == form.amount_key:
            value = amount_from_minor(amount_minor, form.currency)  # "12.5" is kept as "12.50"
        elif isinstance(value, dt.date):
            value = value.isoformat()
        details[key] = value
    return details, amount_minor


class PrefillInvalid(ValueError):
    """Prefill data a session cannot open with. `errors` maps names to messages, like form errors."""

    def __init__(self, errors: dict[str, list[str]]):
        self.errors = errors
        super().__init__("invalid prefill: " + ", ".join(sorted(errors)))


def details_from_prefill(template: PageTemplate, incoming: dict) -> tuple[dict, int]:
    """What an integration sent -> (details, amount_minor), validated exactly like step 1.

    The one path for the REST API and the launch link. Raises PrefillInvalid
    with errors keyed by template key (or by the sent name for a failed transform).
    """
    try:
        values = apply_prefill(template, incoming)
    except PrefillError as exc:
        raise PrefillInvalid(exc.errors)
    form = details_form_class(template)(data=values)
    if not form.is_valid():
        raise PrefillInvalid({key: list(messages) for key, messages in form.errors.items()})
    return session_details_from_form(form)
