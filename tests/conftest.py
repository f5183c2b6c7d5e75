"""Fixtures every test can use. Like healthchecks' BaseTestCase, there are always
two tenants, so any test has a second tenant at hand to prove the wall."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from django.contrib.auth import get_user_model
from django.test import Client

from tenants.models import ApiKey, Membership, Role, Tenant, seed_default_template

PASSWORD = "correct horse battery staple"


@dataclass
class TenantWorld:
    tenant: Tenant
    admin: object
    agent: object
    supervisor: object
    api_key: ApiKey
    api_key_plain: str

    def client_for(self, role: str) -> Client:
        client = Client()
        client.force_login(getattr(self, role))
        return client

    def api_headers(self) -> dict[str, str]:
        return {"HTTP_AUTHORIZATION": f"Bearer {self.api_key_plain}"}


def make_tenant_world(slug: str) -> TenantWorld:
    tenant = Tenant.objects.create(slug=slug, name=slug.title(), currency="GBP")
    seed_default_template(tenant)
    users = {}
    User = get_user_model()
    for role in Role.values:
        user = User.objects.create_user(f"{slug}-{role}", password=PASSWORD, is_staff=role == Role.ADMIN)
        Membership.objects.create(user=user, tenant=tenant, role=role)
        users[role] = user
    api_key, plain = ApiKey.issue(tenant, "test")
    return TenantWorld(tenant, users["admin"], users["agent"], users["supervisor"], api_key, plain)


@pytest.fixture
def alpha(db) -> TenantWorld:
    return make_tenant_world("alpha")


@pytest.fixture
def beta(db) -> TenantWorld:
    return make_tenant_world("beta")
