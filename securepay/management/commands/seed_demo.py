"""Seed the demo tenant and users. Idempotent: running it again keeps the data."""

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand
from django.db import transaction

from tenants.models import Membership, Role, Tenant, seed_default_template

DEMO_PASSWORDS = {
    Role.ADMIN: "demo-admin-2026",
    Role.AGENT: "demo-agent-2026",
    Role.SUPERVISOR: "demo-supervisor-2026",
}


class Command(BaseCommand):
    help = "Create the demo tenant with users admin / agent / supervisor (demo profile only)."

    @transaction.atomic
    def handle(self, *args, **options):
        tenant, _ = Tenant.objects.get_or_create(slug="demo", defaults={"name": "Demo Contact Centre"})
        seed_default_template(tenant)
        User = get_user_model()
        for role, password in DEMO_PASSWORDS.items():
            user, created = User.objects.get_or_create(username=str(role), defaults={"is_staff": role == Role.ADMIN})
            if created:
                user.set_password(password)
                user.save()
                Membership.objects.create(user=user, tenant=tenant, role=role)
        self.stdout.write("Demo logins (http://127.0.0.1:8000/):")
        for role, password in DEMO_PASSWORDS.items():
            self.stdout.write(f"  {role:<10} password {password}")
