"""Tenants and who belongs to them.

Every tenant-owned model has a `tenant` foreign key and a manager with
`for_tenant(tenant)`; views reach objects only through it (see scoping.py).
"""

from __future__ import annotations

import hashlib
import re
import secrets

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import RegexValidator
from django.db import models
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from securepay.card import BRANDS


class TenantScopedQuerySet(models.QuerySet):
    def for_tenant(self, tenant: Tenant | None) -> models.QuerySet:
        if tenant is None:
            return self.none()
        return self.filter(tenant=tenant)


TenantScopedManager = models.Manager.from_queryset(TenantScopedQuerySet)


def new_webhook_secret() -> str:
    return "whsec_" + secrets.token_hex(24)


class KeyMasking(models.TextChoices):
    """What the agent and supervisors hear in place of each key the caller presses."""

    TONE = "tone", _("One flat tone per key press")
    SILENCE = "silence", _("Silence per key press")


class Tenant(models.Model):
    slug = models.SlugField(unique=True, max_length=50)
    name = models.CharField(max_length=200)
    default_locale = models.CharField(max_length=8, default="en", choices=settings.LANGUAGES)
    timezone = models.CharField(max_length=64, default="UTC")
    currency = models.CharField(
        max_length=3, default="GBP", validators=[RegexValidator(r"^[A-Z]{3}$", _("ISO 4217 code, e.g. GBP"))]
    )
    launch_button_label = models.CharField(max_length=60, default="Take payment")
    logo_url = models.URLField(blank=True)
    brand_colour = models.CharField(
        max_length=7, default="#1d4ed8", validators=[RegexValidator(r"^#[0-9a-fA-F]{6}$", _("a colour like #1d4ed8"))]
    )
    # Signs webhooks to the integration and verifies CRM launch links.
    webhook_secret = models.CharField(max_length=80, default=new_webhook_secret)
    key_masking = models.CharField(
        _("key masking"),
        max_length=8,
        choices=KeyMasking.choices,
        default=KeyMasking.TONE,
        help_text=_("What agents and supervisors hear for each key the caller presses (calls started after a change)."),
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def rotate_webhook_secret(self) -> None:
        self.webhook_secret = new_webhook_secret()
        self.save(update_fields=["webhook_secret"])


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
        verbose_name = _("API key")

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


# Types whose min/max bound the text length (money fields bound the amount).
LENGTH_BOUNDED_TYPES = frozenset(
    {FieldType.TEXT, FieldType.EMAIL, FieldType.PHONE, FieldType.ADDRESS, FieldType.POSTCODE}
)


class TransactionType(models.TextChoices):
    SALE = "sale", _("Sale")
    # Kept for templates of the future; the payment flow takes sales only today.
    PREAUTH = "preauth", _("Pre-authorisation")
    TOKENIZE = "tokenize", _("Tokenise card")


def default_accepted_brands() -> list[str]:
    return ["visa", "mastercard", "amex"]


# PCI DSS: card data is keyed on the phone keypad and nowhere else, so no
# template field, prefill name or form may ever be able to carry it.
CARD_FIELD_TOKENS = frozenset(
    {"pan", "cvv", "cvv2", "cvc", "cvc2", "csc", "cid", "expiry", "expiration", "exp", "mmyy", "track1", "track2"}
)
CARD_FIELD_PHRASES = ("cardnumber", "cardno", "cardnum", "ccnumber", "ccnum", "securitycode", "expirydate", "expdate")


def looks_like_card_field(name: str) -> bool:
    """True for names like pan, card_number, cardNumber, cvv, card-cvc, expiry_date."""
    spaced = re.sub(r"([a-z])([A-Z])", r"\1_\2", name).lower()
    tokens = [t for t in re.split(r"[^a-z0-9]+", spaced) if t]
    return any(t in CARD_FIELD_TOKENS for t in tokens) or any(p in "".join(tokens) for p in CARD_FIELD_PHRASES)


class PageTemplate(models.Model):
    """A tenant's payment page: which customer fields step 1 asks for, which cards it takes."""

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="page_templates")
    slug = models.SlugField(max_length=50)
    name = models.CharField(max_length=100)
    accepted_brands = models.JSONField(
        default=default_accepted_brands, help_text=_("Card brands this page accepts, e.g. [\"visa\", \"mastercard\"]")
    )
    cvv_required = models.BooleanField(default=True)
    postcode_required = models.BooleanField(
        default=False, help_text=_("Makes the postcode field required (address verification).")
    )
    currency = models.CharField(
        max_length=3,
        blank=True,
        validators=[RegexValidator(r"^[A-Z]{3}$", _("ISO 4217 code, e.g. GBP"))],
        help_text=_("Blank: the tenant's currency."),
    )
    transaction_type = models.CharField(max_length=16, choices=TransactionType.choices, default=TransactionType.SALE)

    objects = TenantScopedManager()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["tenant", "slug"], name="unique_template_slug_per_tenant")]
        ordering = ["slug"]

    def __str__(self) -> str:
        return f"{self.tenant.slug}/{self.slug}"

    def clean(self) -> None:
        brands = self.accepted_brands
        if not isinstance(brands, list) or not brands or not all(isinstance(b, str) for b in brands):
            raise ValidationError({"accepted_brands": _("A non-empty list of card brands.")})
        unknown = sorted(set(brands) - set(BRANDS))
        if unknown:
            raise ValidationError(
                {"accepted_brands": _("Unknown brands: %(unknown)s. Known: %(known)s.")
                 % {"unknown": ", ".join(unknown), "known": ", ".join(BRANDS)}}
            )
        if self.transaction_type != TransactionType.SALE:
            raise ValidationError({"transaction_type": _("Only sales can be taken for now.")})

    @property
    def effective_currency(self) -> str:
        """The template's own currency, else its tenant's ("" while neither is known)."""
        if self.currency:
            return self.currency
        return self.tenant.currency if self.tenant_id else ""

    @property
    def accepted_brand_set(self) -> frozenset[str]:
        return frozenset(self.accepted_brands)


class TemplateField(models.Model):
    template = models.ForeignKey(PageTemplate, on_delete=models.CASCADE, related_name="fields")
    key = models.SlugField(max_length=50)
    label_en = models.CharField(max_length=100)
    label_fr = models.CharField(max_length=100, blank=True)
    field_type = models.CharField(max_length=16, choices=FieldType.choices, default=FieldType.TEXT)
    required = models.BooleanField(default=False)
    position = models.PositiveIntegerField(default=0)
    pattern = models.CharField(
        max_length=200, blank=True, help_text=_("Regular expression the whole value must match.")
    )
    min_value = models.DecimalField(
        max_digits=15, decimal_places=3, null=True, blank=True,
        help_text=_("Money: smallest amount (major units). Text: shortest length."),
    )
    max_value = models.DecimalField(
        max_digits=15, decimal_places=3, null=True, blank=True,
        help_text=_("Money: largest amount (major units). Text: longest length."),
    )
    default = models.CharField(max_length=200, blank=True)
    choices = models.TextField(blank=True, help_text=_("Select fields: one choice per line."))

    class Meta:
        ordering = ["position", "id"]
        constraints = [models.UniqueConstraint(fields=["template", "key"], name="unique_field_key_per_template")]

    def __str__(self) -> str:
        return self.key

    def label_for(self, language: str) -> str:
        """The label in `language` (e.g. "fr" or "fr-ca"), falling back to English."""
        return getattr(self, f"label_{language[:2].lower()}", "") or self.label_en

    @property
    def choice_list(self) -> list[str]:
        return [line.strip() for line in self.choices.splitlines() if line.strip()]

    @property
    def is_required(self) -> bool:
        """Required by itself, or the postcode of a template that asks for address verification."""
        return self.required or (self.field_type == FieldType.POSTCODE and self.template.postcode_required)

    def clean(self) -> None:
        errors: dict[str, str] = {}
        if looks_like_card_field(self.key):
            errors["key"] = _("Card data is keyed on the phone, never typed into a page field.")
        if self.pattern and self.field_type not in LENGTH_BOUNDED_TYPES:
            errors["pattern"] = _("Only text fields take a pattern.")
        elif self.pattern:
            try:
                re.compile(self.pattern)
            except re.error as exc:
                errors["pattern"] = _("Not a valid regular expression: %(error)s") % {"error": exc}
        if self.field_type == FieldType.SELECT and not self.choice_list:
            errors["choices"] = _("A select field needs at least one choice.")
        if self.field_type != FieldType.SELECT and self.choices.strip():
            errors["choices"] = _("Only select fields have choices.")
        errors.update(self._bound_errors())
        if self.field_type == FieldType.MONEY and not self.required:
            errors["required"] = _("The amount to charge is always required.")
        if self.field_type == FieldType.MONEY and self.template_id and self._other_money_fields().exists():
            errors["field_type"] = _("A template has one money field: the amount to charge.")
        if errors:
            raise ValidationError(errors)
        if self.default:
            self._check_default()

    def _bound_errors(self) -> dict[str, str]:
        low, high = self.min_value, self.max_value
        if low is None and high is None:
            return {}
        if self.field_type not in LENGTH_BOUNDED_TYPES | {FieldType.MONEY}:
            return {"min_value": _("Only money and text fields take a minimum or maximum.")}
        if self.field_type != FieldType.MONEY and any(v is not None and (v < 0 or v != int(v)) for v in (low, high)):
            return {"min_value": _("A length is a whole number, 0 or more.")}
        if low is not None and high is not None and low > high:
            return {"max_value": _("The maximum is below the minimum.")}
        return {}

    def _other_money_fields(self) -> models.QuerySet:
        same_template = TemplateField.objects.filter(template_id=self.template_id)
        return same_template.filter(field_type=FieldType.MONEY).exclude(pk=self.pk)

    def _check_default(self) -> None:
        # The default must pass the very field the agent's form will build
        # (imported here: securepay.forms imports this module).
        from securepay.forms import form_field_for

        try:
            currency = self.template.effective_currency
        except PageTemplate.DoesNotExist:  # a field being added with a template not yet chosen
            currency = ""
        try:
            form_field_for(self, currency).clean(self.default)
        except ValidationError as exc:
            raise ValidationError({"default": exc.messages})


class PrefillTransform(models.TextChoices):
    NONE = "", _("None: use the value as sent")
    TRIM = "trim", _("Trim spaces")
    UPPER = "upper", _("Upper case")
    LOWER = "lower", _("Lower case")
    MINOR_TO_AMOUNT = "minor_to_amount", _("Minor units to amount (1250 -> 12.50)")
    DATE_FORMAT = "date_format", _("Date in the input format -> ISO date")


class PrefillMapping(models.Model):
    """An integration's field name -> a template field key, with one simple transform."""

    template = models.ForeignKey(PageTemplate, on_delete=models.CASCADE, related_name="prefill_mappings")
    source_name = models.CharField(max_length=100, help_text=_("The field name the CRM sends, e.g. InvoiceTotal."))
    field_key = models.SlugField(max_length=50, help_text=_("The template field it fills, e.g. amount."))
    transform = models.CharField(max_length=16, choices=PrefillTransform.choices, blank=True)
    input_format = models.CharField(
        max_length=50, blank=True, help_text=_("For date_format: how the CRM writes dates, e.g. %d/%m/%Y.")
    )

    class Meta:
        ordering = ["source_name"]
        constraints = [
            models.UniqueConstraint(fields=["template", "source_name"], name="unique_prefill_source_per_template")
        ]

    def __str__(self) -> str:
        return f"{self.source_name} -> {self.field_key}"

    def clean(self) -> None:
        errors: dict[str, str] = {}
        if looks_like_card_field(self.source_name):
            errors["source_name"] = _("Card data must never be sent to this portal.")
        if self.template_id and not self.template.fields.filter(key=self.field_key).exists():
            errors["field_key"] = _("This template has no field with that key.")
        if self.transform == PrefillTransform.DATE_FORMAT and not self.input_format:
            errors["input_format"] = _("Give the date format the CRM sends, e.g. %d/%m/%Y.")
        if self.transform != PrefillTransform.DATE_FORMAT and self.input_format:
            errors["input_format"] = _("Only the date_format transform takes an input format.")
        if errors:
            raise ValidationError(errors)


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
