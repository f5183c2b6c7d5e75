"""Admin: gateway accounts (credentials write-only), refunds and the webhook delivery log."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin

from gateways.base import ADAPTERS, ConfigField, GatewayConfigError, get_adapter
from gateways.models import GatewayAccount, Refund, WebhookDelivery
from tenants.admin import TenantScopedAdmin

WRITE_ONLY_HELP = "••• set. Leave blank to keep it; type a new value to replace it."
FIELD_CLASSES = {
    "text": forms.CharField,
    "url": forms.URLField,
    "number": forms.FloatField,
    "bool": forms.BooleanField,
    "json": forms.JSONField,
}


def setting_field_name(adapter: str, field: ConfigField) -> str:
    return f"{adapter}__{field.name}"


def setting_form_fields() -> dict[str, forms.Field]:
    """A form field per setting of every adapter (ConfigField -> Django field)."""
    fields = {}
    for code, adapter_class in sorted(ADAPTERS.items()):
        for field in adapter_class.config_fields():
            options: dict[str, Any] = {"label": f"{field.label} ({code})", "required": False, "help_text": field.help}
            if field.secret:
                options["widget"] = forms.PasswordInput(render_value=False)
            if field.kind == "url":
                options["assume_scheme"] = "https"
            fields[setting_field_name(code, field)] = FIELD_CLASSES[field.kind](**options)
    return fields


class GatewayAccountSettingsForm(forms.ModelForm):
    """Only the chosen adapter's settings are used. Secrets are write-only:
    never rendered back, kept when left blank."""

    class Meta:
        model = GatewayAccount
        fields = ["adapter", "display_name", "active", "transaction_type"]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not self.instance.pk:
            return
        saved = self.instance.credentials
        for field in ADAPTERS[self.instance.adapter].config_fields():
            form_field = self.fields[setting_field_name(self.instance.adapter, field)]
            if not field.secret:
                form_field.initial = saved.get(field.name)
            elif saved.get(field.name):
                form_field.help_text = WRITE_ONLY_HELP

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        code = cleaned.get("adapter")
        if code not in ADAPTERS:
            return cleaned
        keep = self.instance.credentials if self.instance.pk and self.instance.adapter == code else {}
        credentials = {}
        for field in ADAPTERS[code].config_fields():
            value = cleaned.get(setting_field_name(code, field))
            if field.secret and value in (None, "") and keep.get(field.name):
                value = keep[field.name]
            if value not in (None, ""):
                credentials[field.name] = value
        try:
            get_adapter(code, credentials)
        except GatewayConfigError as exc:
            raise forms.ValidationError(str(exc)) from exc
        self.credentials = credentials
        return cleaned

    def save(self, commit: bool = True) -> GatewayAccount:
        self.instance.credentials = self.credentials
        return super().save(commit)


# Declared (class-level) fields, so the admin's fieldsets may name them.
GatewayAccountForm = type("GatewayAccountForm", (GatewayAccountSettingsForm,), setting_form_fields())


@admin.register(GatewayAccount)
class GatewayAccountAdmin(TenantScopedAdmin):
    form = GatewayAccountForm
    list_display = ("display_name", "adapter", "active", "transaction_type", "updated_at")

    def get_fieldsets(self, request, obj=None):
        account = (None, {"fields": [f for f in ("tenant", "adapter", "display_name", "active", "transaction_type")
                                     if f not in self.get_exclude(request, obj)]})
        per_adapter = [
            (f"{code} settings", {"fields": [setting_field_name(code, f) for f in cls.config_fields()]})
            for code, cls in sorted(ADAPTERS.items())
        ]
        return [account, *per_adapter]


class ReadOnlyTenantAdmin(TenantScopedAdmin):
    """A log: tenant admins read it, nobody edits it."""

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(WebhookDelivery)
class WebhookDeliveryAdmin(ReadOnlyTenantAdmin):
    list_display = ("event_type", "event_id", "session", "attempts", "last_status_code", "delivered_at",
                    "next_retry_at")
    list_filter = ("event_type",)
    search_fields = ("event_id",)


@admin.register(Refund)
class RefundAdmin(ReadOnlyTenantAdmin):
    list_display = ("id", "attempt", "amount_minor", "status", "gateway_reference", "actor", "created_at")
    list_filter = ("status",)
