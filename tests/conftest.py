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


@pytest.fixture(autouse=True)
def _fast_password_hashing(request, settings):
    """Argon2 costs ~0.1 s per fixture user; only tests about passwords need it."""
    if request.node.get_closest_marker("real_password_hashing") is None:
        settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def alpha(db) -> TenantWorld:
    return make_tenant_world("alpha")


@pytest.fixture
def beta(db) -> TenantWorld:
    return make_tenant_world("beta")


@pytest.fixture(autouse=True)
def _celery_eager_unless_real_worker(request):
    """Tasks run in-process, except in tests that start a real Celery worker."""
    from securepay.celery import app

    eager = request.node.get_closest_marker("celery_worker") is None
    previous = app.conf.task_always_eager
    app.conf.task_always_eager = eager
    yield
    app.conf.task_always_eager = previous


def pytest_sessionfinish(session, exitstatus):
    """Under CI=true nothing may skip: a skipped test turns the run red."""
    from tests.support import IN_CI

    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = len(reporter.stats.get("skipped", [])) if reporter else 0
    if IN_CI and skipped and session.exitstatus == 0:
        reporter.write_line(f"CI=true: {skipped} test(s) skipped; a skip is a failure in CI", red=True, bold=True)
        session.exitstatus = 1
