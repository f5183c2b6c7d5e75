"""Per-tenant gateway accounts, refunds and the webhook delivery log.

None of these can hold card data: credentials are encrypted, refunds point at
an attempt by its gateway reference, webhook bodies carry brand and last four.
"""

from __future__ import annotations

import uuid
from typing import Any

from django.db import models
from django.db.models import Q
from django.utils.translation import gettext_lazy as _

from gateways.base import GatewayAdapter, get_adapter
from gateways.config import decrypt_credentials, encrypt_credentials
from securepay.models import PaymentAttempt, PaymentSession
from tenants.models import Tenant, TenantScopedManager, TransactionType

# A tenant without an account charges the built-in sandbox (the demo default).
DEFAULT_ADAPTER = "sandbox"


def adapter_choices() -> list[tuple[str, str]]:
    from gateways.base import ADAPTERS

    return [(code, code) for code in sorted(ADAPTERS)]


class GatewayAccount(models.Model):
    """A tenant's credentials for one gateway. At most one is active per tenant."""

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="gateway_accounts")
    adapter = models.CharField(max_length=32, choices=adapter_choices)
    display_name = models.CharField(max_length=100)
    active = models.BooleanField(default=True)
    transaction_type = models.CharField(
        max_length=16, choices=TransactionType.choices, default=TransactionType.SALE,
        help_text=_("What a payment on this account does by default."),
    )
    # Fernet token of the adapter's settings (see gateways.config); never shown again.
    credentials_encrypted = models.TextField(blank=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = TenantScopedManager()

    class Meta:
        ordering = ["tenant", "-active", "display_name"]
        constraints = [
            models.UniqueConstraint(fields=["tenant"], condition=Q(active=True), name="one_active_gateway_per_tenant")
        ]

    def __str__(self) -> str:
        return f"{self.display_name} ({self.adapter})"

    @property
    def credentials(self) -> dict[str, Any]:
        return decrypt_credentials(self.credentials_encrypted)

    @credentials.setter
    def credentials(self, values: dict[str, Any]) -> None:
        self.credentials_encrypted = encrypt_credentials(values)

    def build_adapter(self) -> GatewayAdapter:
        return get_adapter(self.adapter, self.credentials)


def default_adapter(tenant: Tenant) -> GatewayAdapter:
    # The tenant's slug namespaces its sandbox idempotency keys, like a merchant id.
    return get_adapter(DEFAULT_ADAPTER, {"merchant_id": tenant.slug})


def active_adapter(tenant: Tenant) -> tuple[str, GatewayAdapter]:
    """(adapter code, adapter) that charges a new payment of this tenant."""
    account = GatewayAccount.objects.for_tenant(tenant).filter(active=True).first()
    if account is None:
        return DEFAULT_ADAPTER, default_adapter(tenant)
    return account.adapter, account.build_adapter()


def adapter_for_attempt(attempt: PaymentAttempt) -> GatewayAdapter:
    """The adapter that charged (or is charging) `attempt`: the tenant's account of
    that gateway, the active one first, so reconciling and refunding reach the same ledger."""
    account = (
        GatewayAccount.objects.for_tenant(attempt.tenant).filter(adapter=attempt.gateway)
        .order_by("-active", "-updated_at").first()
    )
    if account is None:
        return default_adapter(attempt.tenant)
    return account.build_adapter()


class RefundStatus(models.TextChoices):
    PENDING = "pending", _("Pending")  # reserved and sent; counted against what is left to refund
    APPROVED = "approved", _("Approved")
    DECLINED = "declined", _("Declined")
    ERROR = "error", _("Error")


class Refund(models.Model):
    """One refund request against an approved attempt; its id keys the gateway call."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="+")
    attempt = models.ForeignKey(PaymentAttempt, on_delete=models.CASCADE, related_name="refunds")
    amount_minor = models.BigIntegerField()
    status = models.CharField(max_length=16, choices=RefundStatus.choices, default=RefundStatus.PENDING)
    gateway_reference = models.CharField(max_length=200, blank=True)
    reason_code = models.CharField(max_length=64, blank=True)
    message = models.CharField(max_length=300, blank=True)
    actor = models.CharField(max_length=150)
    created_at = models.DateTimeField(auto_now_add=True)
    completed_at = models.DateTimeField(null=True, blank=True)

    objects = TenantScopedManager()

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"refund {self.amount_minor} of {self.attempt_id} ({self.status})"

    @property
    def idempotency_key(self) -> str:
        return f"securepay-refund-{self.id}"

    @classmethod
    def reserved_minor(cls, attempt: PaymentAttempt) -> int:
        """Refunds sent but not yet answered: they may still move money."""
        pending = cls.objects.filter(attempt=attempt, status=RefundStatus.PENDING)
        return pending.aggregate(total=models.Sum("amount_minor"))["total"] or 0

    @classmethod
    def refundable_minor(cls, attempt: PaymentAttempt) -> int:
        """What is left to refund. Call with the attempt row locked."""
        return attempt.amount_minor - attempt.refunded_minor - cls.reserved_minor(attempt)


class WebhookDelivery(models.Model):
    """One event for the integration and the story of delivering it (the admins' log)."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="webhook_deliveries")
    session = models.ForeignKey(PaymentSession, on_delete=models.CASCADE, related_name="webhook_deliveries")
    event_id = models.CharField(max_length=40, unique=True)
    event_type = models.CharField(max_length=32)
    url = models.URLField(max_length=500)
    # The exact bytes signed and sent, so every retry repeats the same body.
    body = models.TextField()
    attempts = models.PositiveIntegerField(default=0)
    last_status_code = models.PositiveIntegerField(null=True, blank=True)
    last_error = models.CharField(max_length=300, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    delivered_at = models.DateTimeField(null=True, blank=True)
    next_retry_at = models.DateTimeField(null=True, blank=True)

    objects = TenantScopedManager()

    class Meta:
        ordering = ["-created_at"]
        verbose_name_plural = "webhook deliveries"

    def __str__(self) -> str:
        return f"{self.event_type} {self.event_id}"

    @property
    def delivered(self) -> bool:
        return self.delivered_at is not None
