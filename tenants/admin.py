"""Django admin: platform superusers see everything; a tenant admin sees only their tenant."""

from __future__ import annotations

from django.contrib import admin, messages

from tenants.models import ApiKey, Membership, PageTemplate, Role, Tenant, TemplateField
from tenants.scoping import role_of_user, tenant_of_user


def is_tenant_admin(request) -> bool:
    return role_of_user(request.user) == Role.ADMIN


class TenantScopedAdmin(admin.ModelAdmin):
    """Base for every tenant-owned model: queryset, permissions and saves are walled."""

    tenant_field = "tenant"

    def _tenant_lookup(self, request) -> dict:
        return {self.tenant_field: tenant_of_user(request.user)}

    def get_queryset(self, request):
        qs = super().get_queryset(request)
        return qs if request.user.is_superuser else qs.filter(**self._tenant_lookup(request))

    def _allowed(self, request) -> bool:
        return request.user.is_superuser or (request.user.is_staff and is_tenant_admin(request))

    def has_module_permission(self, request):
        return self._allowed(request)

    def has_view_permission(self, request, obj=None):
        return self._allowed(request)

    def has_add_permission(self, request):
        return self._allowed(request)

    def has_change_permission(self, request, obj=None):
        return self._allowed(request)

    def has_delete_permission(self, request, obj=None):
        return self._allowed(request)

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
    list_display = ("name", "slug", "currency", "default_locale")
    exclude = ("webhook_secret",)

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
        messages.warning(request, f"New API key (copy it now, it is not shown again): {key}")

    def get_exclude(self, request, obj=None):
        return []

    def get_fields(self, request, obj=None):
        fields = list(super().get_fields(request, obj))
        if request.user.is_superuser and obj is None:
            fields.insert(0, "tenant")
        return fields


class TemplateFieldInline(admin.TabularInline):
    model = TemplateField
    extra = 0


@admin.register(PageTemplate)
class PageTemplateAdmin(TenantScopedAdmin):
    list_display = ("slug", "name")
    inlines = [TemplateFieldInline]
