"""Page templates hold the rules for step 1; prefill maps an integration's names onto them."""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.core.exceptions import ValidationError

from securepay.forms import amount_to_minor, details_form_class, format_amount, session_details_from_form
from tenants.models import FieldType, PageTemplate, PrefillMapping, TemplateField, looks_like_card_field
from tenants.prefill import PrefillError, apply_prefill


@pytest.fixture
def template(alpha) -> PageTemplate:
    return PageTemplate.objects.get(tenant=alpha.tenant, slug="default")


def add_field(template: PageTemplate, key: str, field_type: str = FieldType.TEXT, **options) -> TemplateField:
    field = TemplateField(template=template, key=key, label_en=key.title(), field_type=field_type, **options)
    field.full_clean()
    field.save()
    return field


def errors_of(instance) -> dict:
    with pytest.raises(ValidationError) as raised:
        instance.full_clean()
    return raised.value.message_dict


# --- template validation -------------------------------------------------------------


@pytest.mark.parametrize(
    "key", ["pan", "card_number", "cardNumber", "card-no", "cvv", "cvc2", "security_code", "expiry", "exp_date", "mmyy"]
)
def test_card_fields_can_never_be_template_fields(template, key):
    assert looks_like_card_field(key)
    assert "key" in errors_of(TemplateField(template=template, key=key, label_en="Card"))


@pytest.mark.parametrize("key", ["company", "expected_delivery", "panel", "account_number", "postcode"])
def test_ordinary_keys_are_not_mistaken_for_card_fields(key):
    assert not looks_like_card_field(key)


def test_select_needs_choices_and_its_default_must_be_one(template):
    assert "choices" in errors_of(TemplateField(template=template, key="plan", label_en="Plan", field_type="select"))
    bad_default = TemplateField(
        template=template, key="plan", label_en="Plan", field_type="select", choices="Gold\nSilver", default="Bronze"
    )
    assert "default" in errors_of(bad_default)
    assert "choices" in errors_of(TemplateField(template=template, key="note", label_en="Note", choices="a"))


def test_bounds_must_fit_the_field_type(template):
    assert "max_value" in errors_of(
        TemplateField(template=template, key="ref", label_en="Ref", min_value=10, max_value=5)
    )
    half_length = TemplateField(template=template, key="ref", label_en="Ref", min_value=Decimal("1.5"))
    assert "min_value" in errors_of(half_length)
    assert "min_value" in errors_of(
        TemplateField(template=template, key="due", label_en="Due", field_type="date", min_value=1)
    )
    assert "pattern" in errors_of(TemplateField(template=template, key="ref", label_en="Ref", pattern="("))


def test_one_required_money_field_per_template(template):
    assert "field_type" in errors_of(
        TemplateField(template=template, key="tip", label_en="Tip", field_type="money", required=True)
    )
    amount = template.fields.get(key="amount")
    amount.required = False
    assert "required" in errors_of(amount)


def test_accepted_brands_are_known_brands(template):
    template.accepted_brands = ["visa", "monopoly"]
    assert "accepted_brands" in errors_of(template)
    template.accepted_brands = []
    assert "accepted_brands" in errors_of(template)
    template.accepted_brands = ["visa", "jcb"]
    template.full_clean()
    assert template.accepted_brand_set == {"visa", "jcb"}


def test_default_template_settings(template):
    assert (template.accepted_brands, template.cvv_required, template.postcode_required) == (
        ["visa", "mastercard", "amex"], True, False,
    )
    assert (template.transaction_type, template.effective_currency) == ("sale", "GBP")
    assert list(template.fields.values_list("key", flat=True)) == [
        "amount", "first_name", "last_name", "email", "address", "postcode",
    ]


# --- the details form ------------------------------------------------------------------


def test_form_has_the_template_fields_in_order_with_labels_and_required_flags(template):
    form = details_form_class(template, "fr")()
    assert list(form.fields) == ["amount", "first_name", "last_name", "email", "address", "postcode"]
    assert form.fields["first_name"].label == "Prénom"
    assert [k for k, f in form.fields.items() if f.required] == ["amount", "first_name", "last_name"]
    assert details_form_class(template, "de")().fields["first_name"].label == "First name"


def test_form_validates_money_by_currency_and_bounds(template):
    amount = template.fields.get(key="amount")
    amount.min_value, amount.max_value = Decimal("1"), Decimal("500")
    amount.save()
    form_class = details_form_class(template)

    def amount_errors(value: str) -> list[str]:
        form = form_class(data={"amount": value, "first_name": "Ada", "last_name": "Lovelace"})
        return form.errors.get("amount", [])

    assert amount_errors("12.50") == []
    for bad in ["0", "-3", "12.345", "abc", "0.50", "500.01"]:
        assert amount_errors(bad), bad
    template.currency = "JPY"
    template.save()
    jpy = details_form_class(template)(data={"amount": "12.5", "first_name": "Ada", "last_name": "Lovelace"})
    assert "amount" in jpy.errors


def test_form_applies_pattern_length_choices_email_and_date(template):
    add_field(template, "ref", pattern=r"INV-\d+", min_value=5, max_value=8, required=True, position=10)
    add_field(template, "plan", FieldType.SELECT, choices="Gold\nSilver", default="Silver", position=11)
    add_field(template, "due", FieldType.DATE, position=12)
    form_class = details_form_class(template)
    base = {"amount": "12.50", "first_name": "Ada", "last_name": "Lovelace"}
    good = form_class(data={**base, "ref": "INV-12", "plan": "Gold", "due": "2030-01-31", "email": "ada@example.com"})
    assert good.is_valid(), good.errors
    assert form_class().fields["plan"].initial == "Silver"
    bad = form_class(data={**base, "ref": "INV-123456", "plan": "Bronze", "due": "31/01/2030", "email": "ada@"})
    assert set(bad.errors) == {"ref", "plan", "due", "email"}
    assert "ref" in form_class(data={**base, "ref": "XYZ-12"}).errors
    # A rejected choice is not repeated back: from a CRM it could be anything, even a card number.
    echoed = form_class(data={**base, "ref": "INV-12", "plan": "4242424242424242"})
    assert "plan" in echoed.errors and "4242424242424242" not in str(echoed.errors)


def test_postcode_required_by_the_template(template):
    template.postcode_required = True
    template.save()
    assert details_form_class(template)().fields["postcode"].required


def test_session_details_from_form_are_json_safe_with_minor_amount(template):
    add_field(template, "due", FieldType.DATE, position=12)
    form = details_form_class(template)(
        data={"amount": "12.5", "first_name": " Ada ", "last_name": "Lovelace", "due": "2030-01-31"}
    )
    details, amount_minor = session_details_from_form(form)
    assert details == {"amount": "12.50", "first_name": "Ada", "last_name": "Lovelace", "due": "2030-01-31"}
    assert amount_minor == 1250


def test_amount_conversions():
    assert amount_to_minor("12.50", "GBP") == 1250
    assert amount_to_minor(Decimal("1250"), "JPY") == 1250
    assert amount_to_minor("1.005", "KWD") == 1005
    assert (format_amount(1250, "GBP"), format_amount(1250, "JPY")) == ("12.50 GBP", "1250 JPY")
    for bad in ["12.345", "abc", "NaN"]:
        with pytest.raises(ValueError):
            amount_to_minor(bad, "GBP")


# --- prefill -----------------------------------------------------------------------------


def map_name(template: PageTemplate, source: str, key: str, transform: str = "", input_format: str = "") -> None:
    mapping = PrefillMapping(
        template=template, source_name=source, field_key=key, transform=transform, input_format=input_format
    )
    mapping.full_clean()
    mapping.save()


def test_prefill_transforms(template):
    add_field(template, "due", FieldType.DATE, position=12)
    map_name(template, "InvoiceTotal", "amount", "minor_to_amount")
    map_name(template, "Forename", "first_name", "trim")
    map_name(template, "Mail", "email", "lower")
    map_name(template, "Zip", "postcode", "upper")
    map_name(template, "DueDate", "due", "date_format", "%d/%m/%Y")
    values = apply_prefill(
        template,
        {"InvoiceTotal": 1250, "Forename": "  Ada ", "Mail": "ADA@Example.COM", "Zip": "sw1a 1aa",
         "DueDate": "31/01/2030", "last_name": "Lovelace", "Unknown": "ignored"},
    )
    assert values == {
        "amount": "12.50", "first_name": "Ada", "email": "ada@example.com", "postcode": "SW1A 1AA",
        "due": "2030-01-31", "last_name": "Lovelace",
    }


def test_minor_to_amount_uses_the_currency_exponent(template):
    template.currency = "JPY"
    template.save()
    map_name(template, "total", "amount", "minor_to_amount")
    assert apply_prefill(template, {"total": "1250"}) == {"amount": "1250"}


def test_a_mapping_wins_over_a_direct_key(template):
    map_name(template, "total", "amount", "minor_to_amount")
    assert apply_prefill(template, {"total": 999, "amount": "1.00"}) == {"amount": "9.99"}


def test_prefill_errors_name_what_was_sent(template):
    map_name(template, "total", "amount", "minor_to_amount")
    map_name(template, "born", "first_name", "date_format", "%d/%m/%Y")
    with pytest.raises(PrefillError) as raised:
        apply_prefill(template, {"total": "12.50", "born": "2030-01-31", "last_name": ["a", "b"]})
    assert set(raised.value.errors) == {"total", "born", "last_name"}


def test_card_data_in_prefill_is_refused_and_not_echoed(template):
    with pytest.raises(PrefillError) as raised:
        apply_prefill(template, {"amount": "1.00", "pan": "4111111111111111", "cardNumber": "4111111111111111"})
    assert set(raised.value.errors) == {"pan", "cardNumber"}
    assert "4111" not in str(raised.value.errors) + str(raised.value)


def test_mapping_validation(template):
    def mapping_errors(**fields) -> dict:
        return errors_of(PrefillMapping(template=template, **fields))

    assert "field_key" in mapping_errors(source_name="x", field_key="nope")
    assert "source_name" in mapping_errors(source_name="CardNumber", field_key="first_name")
    assert "input_format" in mapping_errors(source_name="d", field_key="first_name", transform="date_format")
    assert "input_format" in mapping_errors(source_name="d", field_key="first_name", input_format="%Y")
