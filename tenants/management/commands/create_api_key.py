from tenants.management.commands._base import OperatorCommand
from tenants.models import ApiKey, Tenant


class Command(OperatorCommand):
    help = "Create an API key for a tenant. The key is printed once, alone on the last line."

    def add_arguments(self, parser):
        parser.add_argument("--tenant", required=True)
        parser.add_argument("--name", default="integration")

    def handle(self, *args, tenant, name, **options):
        tenant_obj = Tenant.objects.filter(slug=tenant).first()
        if tenant_obj is None:
            raise self.fail(f"unknown tenant {tenant!r}")
        if not name.strip():
            raise self.fail("name must not be empty")
        self.check_model(ApiKey(tenant=tenant_obj, name=name.strip()), exclude=("prefix", "key_hash"))
        api_key, key = ApiKey.issue(tenant_obj, name.strip())
        self.stdout.write(
            f"created API key {api_key.prefix} ({api_key.name}) for {tenant_obj.slug}; it is not shown again:"
        )
        self.stdout.write(key)
