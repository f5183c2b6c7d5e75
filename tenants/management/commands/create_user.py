import secrets

from django.contrib.auth import get_user_model
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.db import transaction

from tenants.management.commands._base import OperatorCommand
from tenants.models import Membership, Role, Tenant


class Command(OperatorCommand):
    help = "Create a user in a tenant with a role (admin, agent or supervisor)."

    def add_arguments(self, parser):
        parser.add_argument("--tenant", required=True)
        parser.add_argument("--username", required=True)
        parser.add_argument("--role", required=True)
        parser.add_argument("--password", help="omit to generate one (printed once)")
        parser.add_argument("--email", default="")

    def handle(self, *args, tenant, username, role, password, email, **options):
        if role not in Role.values:
            raise self.fail(f"unknown role {role!r}: choose admin, agent or supervisor")
        tenant_obj = Tenant.objects.filter(slug=tenant).first()
        if tenant_obj is None:
            raise self.fail(f"unknown tenant {tenant!r}")
        User = get_user_model()
        if not username.strip():
            raise self.fail("username must not be empty")
        if User.objects.filter(username=username).exists():
            raise self.fail(f"user {username!r} already exists")
        generated = password is None
        password = password or secrets.token_urlsafe(12)
        user = User(username=username, email=email)
        self.check_model(user, exclude=("password",))
        try:
            validate_password(password, user)
        except ValidationError as exc:
            raise self.fail("password rejected: " + " ".join(exc.messages))
        with transaction.atomic():
            user.is_staff = role == Role.ADMIN  # tenant admins use the Django admin, walled to their tenant
            user.set_password(password)
            user.save()
            Membership.objects.create(user=user, tenant=tenant_obj, role=role)
        self.stdout.write(f"created {role} {username} in {tenant_obj.slug}")
        if generated:
            self.stdout.write(f"password: {password}")
