"""Every tenant-owned model goes through the one scoping mechanism.

A model with a `tenant` foreign key must offer `objects.for_tenant(tenant)`,
and its admin (if it has one) must be a TenantScopedAdmin, so that a new model
cannot be reachable across the wall by forgetting a filter. The behaviour
behind this is proven per route by the @wall_test tests.
"""

from __future__ import annotations

import pytest
from django.apps import apps
from django.contrib import admin

from tenants.admin import TenantScopedAdmin
from tenants.models import Tenant


def tenant_owned_models() -> list:
    return [
        model
        for model in apps.get_models()
        if any(f.is_relation and f.name == "tenant" and f.related_model is Tenant for f in model._meta.fields)
    ]


def test_there_are_tenant_owned_models_to_check():
    names = {m.__name__ for m in tenant_owned_models()}
    assert {"Membership", "ApiKey", "PageTemplate", "PaymentSession", "PaymentAttempt"} <= names


@pytest.mark.parametrize("model", tenant_owned_models(), ids=lambda m: m._meta.label)
def test_tenant_owned_model_is_scoped(model, alpha, beta):
    assert hasattr(model.objects, "for_tenant"), f"{model._meta.label}.objects has no for_tenant()"
    assert model.objects.for_tenant(None).count() == 0
    beta_rows = set(model.objects.filter(tenant=beta.tenant).values_list("pk", flat=True))
    alpha_rows = set(model.objects.for_tenant(alpha.tenant).values_list("pk", flat=True))
    assert not (alpha_rows & beta_rows)
    model_admin = admin.site._registry.get(model)
    if model_admin is not None:
        assert isinstance(model_admin, TenantScopedAdmin), f"{model._meta.label} admin is not walled"
