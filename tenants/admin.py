"""Django admin: platform superusers see everything; a tenant admin sees only their tenant."""

from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import ValidationError
from django.db import models
from django.utils.translation import gettext
from django.utils.translation import gettext_lazy as _

from tenants.models import ApiKey, FieldType, Membership, PageTemplate, PrefillMapping, Role, TemplateField, Tenant
from tenants.scoping import role_of_user, tenant_of_user


def is_tenant_admin(request) -> bool:
    return role_of_user(request.user) == Role.ADMIN


def may_administer_tenant(request) -> bool:
    """Platform superusers, and staff users who are their tenant's admin."""
    return request.user.is_superuser or (request.user.is_staff and is_tenant_admin(request))


# Addresses typed without a scheme are https (Django 6's default, chosen now).
HTTPS_URL_FIELDS = {models.URLField: {"assume_scheme": "https"}}


class TenantScopedAdmin(admin.ModelAdmin):
    """Base for every tenant-owned model: queryset, permissions and saves are walled."""

    tenant_field = "tenant"
    formfield_overrides = HTTPS_URL_FIELDS

    def _tenant_lookup(self, request) -> dict:
        return {self.tenant_field: tenant_of_user(request.user)}

    def get_queryset(self, request):
        qs = super().get_queryset(request)
        return qs if request.user.is_superuser else qs.filter(**self._tenant_lookup(request))

    def has_module_permission(self, request):
        return may_administer_tenant(request)

    def has_view_permission(self, request, obj=None):
        return may_administer_tenant(request)

    def has_add_permission(self, request):
        return may_administer_tenant(request)

    def has_change_permission(self, request, obj=None):
        return may_administer_tenant(request)

    def has_delete_permission(self, request, obj=None):
        return may_administer_tenant(request)

    def get_exclude(self, request, obj=None):
        excluded = list(super().get_exclude(request, obj) or [])
        if not request.user.is_superuser and self.tenant_field == "tenant":
            excluded.append("tenant")
        return excluded

    def save_model(self, request, obj, form, change):
        if not request.user.is_superuser and self.tenant_field == "tenant":
            obj.tenant = tenant_of_user(request.user)
        super().save_model(request, obj, form, change)

    def formfield_for_foreignkey(self, db_field, request, **kwargs):
        # A tenant admin may only point at their own tenant's objects.
        related = db_field.related_model
        if not request.user.is_superuser and hasattr(related, "tenant"):
            kwargs["queryset"] = related._default_manager.filter(tenant=tenant_of_user(request.user))
        return super().formfield_for_foreignkey(db_field, request, **kwargs)


@admin.register(Tenant)
class TenantAdmin(admin.ModelAdmin):
    formfield_overrides = HTTPS_URL_FIELDS
    list_display = ("name", "slug", "currency", "default_locale")
    # The integration needs the secret to verify webhooks and sign launch links;
    # it is shown to the tenant's own admins and changed only by rotation.
    readonly_fields = ("webhook_secret",)
    actions = ["rotate_webhook_secret"]

    @admin.action(description=_("Rotate the webhook and launch-link secret"))
    def rotate_webhook_secret(self, request, queryset):
        for tenant in queryset:  # already walled by get_queryset
            tenant.rotate_webhook_secret()
        messages.warning(
            request, gettext("New secret issued: update your integration; old signatures no longer verify.")
        )

    def get_queryset(self, request):
        qs = super().get_queryset(request)
        return qs if request.user.is_superuser else qs.filter(pk=getattr(tenant_of_user(request.user), "pk", None))

    def has_module_permission(self, request):
        return request.user.is_superuser or is_tenant_admin(request)

    def has_view_permission(self, request, obj=None):
        return self.has_module_permission(request)

    def has_change_permission(self, request, obj=None):
        return self.has_module_permission(request)

    def has_add_permission(self, request):
        return request.user.is_superuser

    def has_delete_permission(self, request, obj=None):
        return request.user.is_superuser


@admin.register(Membership)
class MembershipAdmin(TenantScopedAdmin):
    list_display = ("user", "role")
    list_filter = ("role",)

    def formfield_for_foreignkey(self, db_field, request, **kwargs):
        if db_field.name == "user" and not request.user.is_superuser:
            kwargs["queryset"] = db_field.related_model.objects.filter(membership__tenant=tenant_of_user(request.user))
        return super().formfield_for_foreignkey(db_field, request, **kwargs)


@admin.register(ApiKey)
class ApiKeyAdmin(TenantScopedAdmin):
    list_display = ("name", "prefix", "created_at", "last_used_at", "revoked_at")
    readonly_fields = ("prefix", "created_at", "last_used_at")
    fields = ("name", "prefix", "created_at", "last_used_at", "revoked_at")

    def save_model(self, request, obj, form, change):
        if change:
            return super().save_model(request, obj, form, change)
        tenant = obj.tenant if request.user.is_superuser and obj.tenant_id else tenant_of_user(request.user)
        api_key, key = ApiKey.issue(tenant, obj.name)
        obj.pk = api_key.pk
        # The one and only time the key is shown.
        messages.warning(request, gettext("New API key (copy it now, it is not shown again): %(key)s") % {"key": key})

    def get_exclude(self, request, obj=None):
        return []

    def get_fields(self, request, obj=None):
        fields = list(super().get_fields(request, obj))
        if request.user.is_superuser and obj is None:
            fields.insert(0, "tenant")
        return fields


class TenantScopedInline(admin.TabularInline):
    """Rows that belong to a tenant-scoped parent: the parent's wall already applies,
    and the permissions mirror the parent's (tenant admins hold no Django model perms)."""

    extra = 0

    def has_view_permission(self, request, obj=None):
        return may_administer_tenant(request)

    def has_add_permission(self, request, obj=None):
        return may_administer_tenant(request)

    def has_change_permission(self, request, obj=None):
        return may_administer_tenant(request)

    def has_delete_permission(self, request, obj=None):
        return may_administer_tenant(request)


class TemplateFieldFormSet(forms.BaseInlineFormSet):
    def clean(self):
        super().clean()
        kept = [f for f in self.forms if f.cleaned_data and not f.cleaned_data.get("DELETE")]
        money_fields = sum(1 for f in kept if f.cleaned_data.get("field_type") == FieldType.MONEY)
        if money_fields != 1:
            raise ValidationError(gettext("A template needs exactly one money field: the amount to charge."))


class TemplateFieldInline(TenantScopedInline):
    model = TemplateField
    formset = TemplateFieldFormSet
    fields = (
        "position", "key", "label_en", "label_fr", "field_type", "required",
        "pattern", "min_value", "max_value", "default", "choices",
    )


class PrefillMappingInline(TenantScopedInline):
    model = PrefillMapping
    fields = ("source_name", "field_key", "transform", "input_format")


@admin.register(PageTemplate)
class PageTemplateAdmin(TenantScopedAdmin):
    list_display = ("slug", "name", "currency", "transaction_type")
    inlines = [TemplateFieldInline, PrefillMappingInline]
