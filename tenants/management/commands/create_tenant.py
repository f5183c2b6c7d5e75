from django.core.exceptions import ValidationError
from django.core.validators import validate_slug
from django.db import transaction

from tenants.management.commands._base import OperatorCommand
from tenants.models import Tenant, seed_default_template


class Command(OperatorCommand):
    help = "Create a tenant and seed its 'default' payment page template."

    def add_arguments(self, parser):
        parser.add_argument("--slug", required=True)
        parser.add_argument("--name", required=True)
        parser.add_argument("--currency", default="GBP")

    def handle(self, *args, slug, name, currency, **options):
        try:
            validate_slug(slug)
        except ValidationError:
            raise self.fail(f"invalid slug {slug!r}: use letters, digits, hyphens and underscores")
        currency = currency.upper()
        if len(currency) != 3 or not currency.isalpha():
            raise self.fail(f"invalid currency {currency!r}: use an ISO 4217 code such as GBP")
        if not name.strip():
            raise self.fail("name must not be empty")
        if Tenant.objects.filter(slug=slug).exists():
            raise self.fail(f"tenant {slug!r} already exists")
        tenant = Tenant(slug=slug, name=name.strip(), currency=currency)
        self.check_model(tenant)
        with transaction.atomic():
            tenant.save()
            seed_default_template(tenant)
        self.stdout.write(f"created tenant {tenant.slug} ({tenant.name}, {tenant.currency})")
