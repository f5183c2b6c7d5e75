"""Tenants and who belongs to them.

Every tenant-owned model has a `tenant` foreign key and a manager with
`for_tenant(tenant)`; views reach objects only through it (see scoping.py).
"""

from __future__ import annotations

import hashlib
import secrets

from django.conf import settings
from django.core.validators import RegexValidator
from django.db import models
from django.utils import timezone
from django.utils.translation import gettext_lazy as _


class TenantScopedQuerySet(models.QuerySet):
    def for_tenant(self, tenant: Tenant | None) -> models.QuerySet:
        if tenant is None:
            return self.none()
        return self.filter(tenant=tenant)


TenantScopedManager = models.Manager.from_queryset(TenantScopedQuerySet)


def new_webhook_secret() -> str:
    return "whsec_" + secrets.token_hex(24)


class Tenant(models.Model):
    slug = models.SlugField(unique=True, max_length=50)
    name = models.CharField(max_length=200)
    default_locale = models.CharField(max_length=8, default="en", choices=settings.LANGUAGES)
    timezone = models.CharField(max_length=64, default="UTC")
    currency = models.CharField(
        max_length=3, default="GBP", validators=[RegexValidator(r"^[A-Z]{3}$", "ISO 4217 code, e.g. GBP")]
    )
    launch_button_label = models.CharField(max_length=60, default="Take payment")
    logo_url = models.URLField(blank=True)
    brand_colour = models.CharField(
        max_length=7, default="#1d4ed8", validators=[RegexValidator(r"^#[0-9a-fA-F]{6}$", "a colour like #1d4ed8")]
    )
    # Signs webhooks to the integration and verifies CRM launch links.
    webhook_secret = models.CharField(max_length=80, default=new_webhook_secret)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class Role(models.TextChoices):
    ADMIN = "admin", _("Admin")
    AGENT = "agent", _("Agent")
    SUPERVISOR = "supervisor", _("Supervisor")


class Membership(models.Model):
    """A user belongs to exactly one tenant, with one role."""

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="membership")
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=16, choices=Role.choices)

    objects = TenantScopedManager()

    def __str__(self) -> str:
        return f"{self.user} @ {self.tenant.slug} ({self.role})"


API_KEY_PREFIX = "sp_"


class ApiKeyQuerySet(TenantScopedQuerySet):
    def active(self) -> models.QuerySet:
        return self.filter(revoked_at__isnull=True)


class ApiKey(models.Model):
    """An integration's credential. The key is shown once; only its hash is kept."""

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="api_keys")
    name = models.CharField(max_length=100, default="integration")
    prefix = models.CharField(max_length=16, unique=True, editable=False)
    key_hash = models.CharField(max_length=64, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)
    revoked_at = models.DateTimeField(null=True, blank=True)

    objects = models.Manager.from_queryset(ApiKeyQuerySet)()

    class Meta:
        verbose_name = "API key"

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    @staticmethod
    def hash_secret(key: str) -> str:
        # Keys are 256-bit random: a fast hash is enough, no stretching needed.
        return hashlib.sha256(key.encode()).hexdigest()

    @classmethod
    def issue(cls, tenant: Tenant, name: str = "integration") -> tuple[ApiKey, str]:
        """Create a key; returns (model, plaintext key). The plaintext is never stored."""
        prefix = secrets.token_hex(4)
        key = f"{API_KEY_PREFIX}{prefix}_{secrets.token_urlsafe(32)}"
        api_key = cls.objects.create(tenant=tenant, name=name, prefix=prefix, key_hash=cls.hash_secret(key))
        return api_key, key

    @classmethod
    def authenticate(cls, key: str) -> ApiKey | None:
        if not key.startswith(API_KEY_PREFIX) or key.count("_") < 2:
            return None
        prefix = key[len(API_KEY_PREFIX) :].split("_", 1)[0]
        api_key = cls.objects.active().select_related("tenant").filter(prefix=prefix).first()
        if api_key is None or not secrets.compare_digest(api_key.key_hash, cls.hash_secret(key)):
            return None
        now = timezone.now()
        # Cheap write throttle: last-used to the minute is all an admin needs.
        if api_key.last_used_at is None or (now - api_key.last_used_at).total_seconds() > 60:
            cls.objects.filter(pk=api_key.pk).update(last_used_at=now)
            api_key.last_used_at = now
        return api_key

    def revoke(self) -> None:
        if self.revoked_at is None:
            self.revoked_at = timezone.now()
            self.save(update_fields=["revoked_at"])

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None


class FieldType(models.TextChoices):
    MONEY = "money", _("Money")
    TEXT = "text", _("Text")
    EMAIL = "email", _("E-mail")
    PHONE = "phone", _("Phone")
    ADDRESS = "address", _("Address")
    POSTCODE = "postcode", _("Postcode")
    SELECT = "select", _("Select")
    DATE = "date", _("Date")


class PageTemplate(models.Model):
    """A tenant's payment page: which customer fields step 1 asks for."""

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="page_templates")
    slug = models.SlugField(max_length=50)
    name = models.CharField(max_length=100)

    objects = TenantScopedManager()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["tenant", "slug"], name="unique_template_slug_per_tenant")]
        ordering = ["slug"]

    def __str__(self) -> str:
        return f"{self.tenant.slug}/{self.slug}"


class TemplateField(models.Model):
    template = models.ForeignKey(PageTemplate, on_delete=models.CASCADE, related_name="fields")
    key = models.SlugField(max_length=50)
    label_en = models.CharField(max_length=100)
    label_fr = models.CharField(max_length=100, blank=True)
    field_type = models.CharField(max_length=16, choices=FieldType.choices, default=FieldType.TEXT)
    required = models.BooleanField(default=False)
    position = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["position", "id"]
        constraints = [models.UniqueConstraint(fields=["template", "key"], name="unique_field_key_per_template")]

    def __str__(self) -> str:
        return self.key


DEFAULT_TEMPLATE_FIELDS = [
    # key, English label, French label, type, required
    ("amount", "Amount", "Montant", FieldType.MONEY, True),
    ("first_name", "First name", "Prénom", FieldType.TEXT, True),
    ("last_name", "Last name", "Nom", FieldType.TEXT, True),
    ("email", "E-mail", "E-mail", FieldType.EMAIL, False),
    ("address", "Address", "Adresse", FieldType.ADDRESS, False),
    ("postcode", "Postcode", "Code postal", FieldType.POSTCODE, False),
]


def seed_default_template(tenant: Tenant) -> PageTemplate:
    template, created = PageTemplate.objects.get_or_create(tenant=tenant, slug="default", defaults={"name": "Default"})
    if created:
        TemplateField.objects.bulk_create(
            TemplateField(template=template, key=k, label_en=en, label_fr=fr, field_type=t, required=r, position=i)
            for i, (k, en, fr, t, r) in enumerate(DEFAULT_TEMPLATE_FIELDS)
        )
    return template
