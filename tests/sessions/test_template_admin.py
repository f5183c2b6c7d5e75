"""Tenant admins edit their page templates, fields and prefill mappings in the Django admin."""

from __future__ import annotations

from django.urls import reverse

from tenants.models import PageTemplate, PrefillMapping


def change_form_data(response) -> dict:
    """The POST body the change page would send as shown: main form plus every inline."""
    data = {}
    forms = [response.context["adminform"].form]
    for inline in response.context["inline_admin_formsets"]:
        formset = inline.formset
        management = formset.management_form
        data.update({management.add_prefix(n): management[n].value() for n in management.fields})
        forms += list(formset.forms)
    for form in forms:
        for name, field in form.fields.items():
            value = form[name].value()
            if value is True:
                data[form.add_prefix(name)] = "on"
            elif value is not None and value is not False:
                data[form.add_prefix(name)] = field.widget.format_value(value) or ""
    return data


def test_tenant_admin_adds_a_prefill_mapping_through_the_inline(alpha):
    client = alpha.client_for("admin")
    template = PageTemplate.objects.get(tenant=alpha.tenant, slug="default")
    url = reverse("admin:tenants_pagetemplate_change", args=[template.pk])
    page = client.get(url)
    assert page.status_code == 200
    assert b"fields-TOTAL_FORMS" in page.content and b"prefill_mappings-TOTAL_FORMS" in page.content
    data = change_form_data(page)
    data.update({
        "prefill_mappings-TOTAL_FORMS": "1",
        "prefill_mappings-0-source_name": "InvoiceTotal",
        "prefill_mappings-0-field_key": "amount",
        "prefill_mappings-0-transform": "minor_to_amount",
    })
    response = client.post(url, data)
    assert response.status_code == 302, response.context and response.context["errors"]
    mapping = PrefillMapping.objects.get(template=template)
    assert (mapping.source_name, mapping.field_key, mapping.transform) == ("InvoiceTotal", "amount", "minor_to_amount")


def test_the_admin_refuses_a_card_field_and_a_template_without_an_amount(alpha):
    client = alpha.client_for("admin")
    template = PageTemplate.objects.get(tenant=alpha.tenant, slug="default")
    url = reverse("admin:tenants_pagetemplate_change", args=[template.pk])
    data = change_form_data(client.get(url))
    data["fields-1-key"] = "card_number"
    data["fields-0-DELETE"] = "on"
    response = client.post(url, data)
    assert response.status_code == 200
    errors = str(response.context["errors"])
    assert "Card data is keyed on the phone" in errors and "exactly one money field" in errors
    assert list(template.fields.values_list("key", flat=True))[:2] == ["amount", "first_name"]
