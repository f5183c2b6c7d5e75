"""Payment-session API shapes. Responses carry brand and last four at most, never card data."""

from __future__ import annotations

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.validators import URLValidator
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from securepay.forms import PrefillInvalid, details_from_prefill
from securepay.models import PaymentAttempt, PaymentSession
from securepay.money import amount_from_minor
from tenants.models import Membership, PageTemplate, Role, Tenant
from tenants.scoping import scoped

# Roles that may take payments (role_required("agent") lets admins in too).
PAYMENT_ROLES = (Role.AGENT, Role.ADMIN)


def callback_url_validator() -> URLValidator:
    """Where results are posted: https only in production, http too in the demo profile."""
    return URLValidator(schemes=["http", "https"] if settings.DEBUG else ["https"])


class SessionCreateSerializer(serializers.Serializer):
    template = serializers.SlugField(default="default", help_text="Slug of one of the tenant's page templates.")
    prefill = serializers.DictField(
        child=serializers.JSONField(),
        default=dict,
        help_text="Customer details keyed by template field key or by a prefill-mapped name. Never card data.",
    )
    reference = serializers.CharField(max_length=200, allow_blank=True, default="")
    callback_url = serializers.CharField(
        max_length=500, allow_blank=True, default="",
        help_text="Results are posted here as signed webhooks. https (http only in the demo profile).",
    )
    agent = serializers.CharField(
        max_length=150, allow_blank=True, default="",
        help_text="Username of the tenant's agent who takes the payment (optional).",
    )

    @property
    def tenant(self) -> Tenant:
        return self.context["tenant"]

    def validate_template(self, slug: str) -> PageTemplate:
        template = scoped(PageTemplate, self.tenant).filter(slug=slug).first()
        if template is None:
            raise serializers.ValidationError(f"No page template {slug!r}.", code="unknown_template")
        return template

    def validate_callback_url(self, url: str) -> str:
        if url:
            callback_url_validator()(url)
        return url

    def validate_agent(self, username: str):
        if not username:
            return None
        membership = (
            scoped(Membership, self.tenant)
            .filter(user__username=username, role__in=PAYMENT_ROLES, user__is_active=True)
            .select_related("user")
            .first()
        )
        if membership is None:
            raise serializers.ValidationError(f"No agent {username!r} in this tenant.", code="unknown_agent")
        return membership.user

    def validate(self, attrs: dict) -> dict:
        try:
            attrs["details"], attrs["amount_minor"] = details_from_prefill(attrs["template"], attrs["prefill"])
        except PrefillInvalid as exc:
            raise serializers.ValidationError({"prefill": exc.errors}, code="invalid_prefill")
        return attrs


class AttemptResultSerializer(serializers.ModelSerializer):
    amount = serializers.SerializerMethodField()

    class Meta:
        model = PaymentAttempt
        fields = [
            "status", "reason_code", "message", "gateway_reference", "brand", "last4",
            "amount", "amount_minor", "currency", "created_at", "completed_at",
        ]

    def get_amount(self, attempt: PaymentAttempt) -> str:
        return amount_from_minor(attempt.amount_minor, attempt.currency)


class SessionSerializer(serializers.ModelSerializer):
    template = serializers.SlugRelatedField(slug_field="slug", read_only=True)
    agent = serializers.SlugRelatedField(slug_field=get_user_model().USERNAME_FIELD, read_only=True)
    amount = serializers.CharField(read_only=True, allow_null=True, help_text='Major units, e.g. "12.50".')
    launch_url = serializers.URLField(read_only=True, help_text="The agent's live payment page.")
    result = serializers.SerializerMethodField(help_text="The latest payment attempt, or null before the first.")

    class Meta:
        model = PaymentSession
        fields = [
            "id", "code", "status", "secure_state", "break_reason", "template", "agent", "amount", "amount_minor",
            "currency", "reference", "callback_url", "details", "launch_url", "result",
            "created_at", "updated_at", "ended_at",
        ]
        read_only_fields = fields

    @extend_schema_field(AttemptResultSerializer(allow_null=True))
    def get_result(self, session: PaymentSession) -> dict | None:
        attempt = session.latest_attempt
        return AttemptResultSerializer(attempt).data if attempt else None
