"""The payment session: its life cycle, its link to the call, its payment attempts.

The state machine lives here and only here. Views, consumers, tasks and the
media worker call the transition methods; an illegal move raises
`IllegalTransition` and changes nothing. Every move writes a `SessionEvent`
(who, when, from, to) - never card data, which no model here can even hold.
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Callable
from datetime import timedelta

from django.conf import settings
from django.db import IntegrityError, models, transaction
from django.db.models import Q
from django.urls import reverse
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from securepay.money import amount_from_minor, format_amount
from securepay.signals import session_transitioned
from tenants.models import PageTemplate, Tenant, TenantScopedManager


class IllegalTransition(Exception):
    """A state change the session's rules do not allow. Nothing was changed."""

    def __init__(self, session_id, current: str, wanted: str):
        self.current, self.wanted = current, wanted
        super().__init__(f"session {session_id}: cannot go from {current} to {wanted}")


class Status(models.TextChoices):
    CREATED = "created", _("Created")
    DETAILS = "details", _("Customer details")
    CARD_ENTRY = "card_entry", _("Card entry")
    PROCESSING = "processing", _("Processing")
    APPROVED = "approved", _("Approved")
    DECLINED = "declined", _("Declined")
    ERROR = "error", _("Error")
    ENDED = "ended", _("Ended")


# The whole life cycle in one table. A retry after a decline or an error goes
# back to card entry; an approved session can only end.
TRANSITIONS: dict[str, frozenset[str]] = {
    Status.CREATED: frozenset({Status.DETAILS, Status.ENDED}),
    Status.DETAILS: frozenset({Status.CARD_ENTRY, Status.ENDED}),
    Status.CARD_ENTRY: frozenset({Status.DETAILS, Status.PROCESSING, Status.ENDED}),
    Status.PROCESSING: frozenset({Status.APPROVED, Status.DECLINED, Status.ERROR}),
    Status.APPROVED: frozenset({Status.ENDED}),
    Status.DECLINED: frozenset({Status.CARD_ENTRY, Status.ENDED}),
    Status.ERROR: frozenset({Status.CARD_ENTRY, Status.ENDED}),
    Status.ENDED: frozenset(),
}
OPEN_STATUSES = [s for s in Status.values if s != Status.ENDED]
# The reason of an attempt whose outcome the gateway never confirmed (see gateways.processing).
UNCONFIRMED_OUTCOME = "outcome_unconfirmed"


class SecureState(models.TextChoices):
    UNSECURED = "unsecured", _("Not secured")
    SECURED = "secured", _("Secured")


class BreakReason(models.TextChoices):
    NOT_LINKED = "not_linked", _("No call linked yet")
    HOLD = "hold", _("Caller on hold")
    LINE_SWITCH = "line_switch", _("Agent switched line")
    MONITOR_STOP = "monitor_stop", _("Supervisor stopped monitoring")
    BARGE = "barge", _("Supervisor barged in")
    HANGUP = "hangup", _("Call ended")
    LINK_LOST = "link_lost", _("Link to the media worker lost")


# A code just freed is not handed out again for this long, so a caller or
# agent keying a stale code cannot land in someone else's session.
CODE_COOLING_PERIOD = timedelta(minutes=30)
CODE_ALLOCATION_ATTEMPTS = 50


class CodeSpaceExhausted(Exception):
    pass


class PaymentSessionQuerySet(models.QuerySet):
    def for_tenant(self, tenant: Tenant | None) -> models.QuerySet:
        return self.filter(tenant=tenant) if tenant is not None else self.none()

    def open(self) -> models.QuerySet:
        return self.exclude(status=Status.ENDED)

    def taking_card_digits(self) -> models.QuerySet:
        """At card entry: the only step whose page shows the card fields. Keyed during the
        customer details, digits would arrive prefilled for an amount not yet confirmed;
        keyed while processing, after a result or after the end, they would change (or
        keep) a card already sent."""
        return self.filter(status=Status.CARD_ENTRY)


class PaymentSession(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="payment_sessions")
    template = models.ForeignKey(PageTemplate, on_delete=models.PROTECT, related_name="sessions")
    agent = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="payment_sessions"
    )
    code = models.CharField(max_length=4)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.CREATED)
    secure_state = models.CharField(max_length=16, choices=SecureState.choices, default=SecureState.UNSECURED)
    break_reason = models.CharField(
        max_length=16, choices=BreakReason.choices, default=BreakReason.NOT_LINKED, blank=True
    )
    secured_at = models.DateTimeField(null=True, blank=True)
    # The media worker that secured it: a restarted worker unsecures what it had secured.
    secured_by = models.CharField(max_length=64, blank=True)
    # Customer details from step 1 / prefill. Never card data: the card fields
    # are not template fields and cannot be submitted through any form.
    details = models.JSONField(default=dict, blank=True)
    amount_minor = models.BigIntegerField(null=True, blank=True)
    currency = models.CharField(max_length=3)
    reference = models.CharField(max_length=200, blank=True)
    callback_url = models.URLField(max_length=500, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    ended_at = models.DateTimeField(null=True, blank=True)

    objects = PaymentSessionQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["tenant", "code"], condition=Q(ended_at__isnull=True), name="unique_code_among_open_sessions"
            )
        ]
        indexes = [models.Index(fields=["tenant", "status"])]

    def __str__(self) -> str:
        return f"session {self.code} ({self.status})"

    # --- creation -------------------------------------------------------------
    @classmethod
    def open_for(cls, *, tenant: Tenant, template: PageTemplate, actor: str, **fields) -> PaymentSession:
        """Create a session with a fresh 4-digit code, retrying on the rare collision."""
        if template.tenant_id != tenant.pk:
            raise ValueError("template belongs to another tenant")
        fields.setdefault("currency", tenant.currency)
        for _attempt in range(CODE_ALLOCATION_ATTEMPTS):
            code = cls._candidate_code(tenant)
            try:
                with transaction.atomic():
                    session = cls.objects.create(tenant=tenant, template=template, code=code, **fields)
                    SessionEvent.record(session, actor, "created", "", Status.CREATED)
                    return session
            except IntegrityError:
                continue  # another process took the code in between
        raise CodeSpaceExhausted(f"no free 4-digit code for tenant {tenant.slug}")

    @classmethod
    def _candidate_code(cls, tenant: Tenant) -> str:
        cooling_since = timezone.now() - CODE_COOLING_PERIOD
        taken = set(
            cls.objects.filter(tenant=tenant)
            .filter(Q(ended_at__isnull=True) | Q(ended_at__gte=cooling_since))
            .values_list("code", flat=True)
        )
        if len(taken) >= 10_000:
            raise CodeSpaceExhausted(f"no free 4-digit code for tenant {tenant.slug}")
        while True:
            code = f"{secrets.randbelow(10_000):04d}"
            if code not in taken:
                return code

    # --- presentation -------------------------------------------------------------
    @property
    def amount(self) -> str | None:
        """The amount in major units as text, e.g. "12.50" (None before step 1 set it)."""
        return None if self.amount_minor is None else amount_from_minor(self.amount_minor, self.currency)

    @property
    def amount_display(self) -> str:
        """E.g. "12.50 GBP"; empty before step 1 set an amount."""
        return "" if self.amount_minor is None else format_amount(self.amount_minor, self.currency)

    @property
    def launch_url(self) -> str:
        """Absolute address of the agent's live page for this session."""
        return settings.SITE_URL + reverse("agent-session", args=[self.pk])

    @property
    def latest_attempt(self) -> PaymentAttempt | None:
        # Through .all() so a list that prefetched attempts needs no query per session.
        return max(self.attempts.all(), key=lambda attempt: attempt.number, default=None)

    # --- life cycle -------------------------------------------------------------
    @property
    def is_open(self) -> bool:
        return self.status != Status.ENDED

    def can_move_to(self, status: str) -> bool:
        return status in TRANSITIONS[self.status]

    def _move(self, to: str, actor: str, detail: str = "", **changes) -> None:
        """Atomically move to `to`, re-reading the row under a lock so two
        processes (web tier, gateway task, media worker) cannot both move it."""
        with transaction.atomic():
            current = type(self).objects.select_for_update().get(pk=self.pk)
            before = current.status
            if to not in TRANSITIONS[before]:
                raise IllegalTransition(self.pk, before, to)
            changes["status"] = to
            for name, value in changes.items():
                setattr(current, name, value)
            current.save(update_fields=[*changes.keys(), "updated_at"])
            SessionEvent.record(current, actor, "transition", before, to, detail)
            transaction.on_commit(
                lambda: session_transitioned.send(
                    sender=PaymentSession, session=current, from_state=before, to_state=to, actor=actor
                )
            )
        self.refresh_from_db()

    def open_details(self, actor: str) -> None:
        """The agent page showed step 1 (customer details)."""
        self._move(Status.DETAILS, actor)

    def start_card_entry(self, actor: str, *, details: dict | None = None, amount_minor: int | None = None) -> None:
        """Step 1 accepted (or Back after a decline): the caller may key a card."""
        latest = self.latest_attempt if self.status == Status.ERROR else None
        if latest is not None and latest.reason_code == UNCONFIRMED_OUTCOME:
            # That attempt may yet have charged the card: no second one on this session.
            raise IllegalTransition(self.pk, f"{self.status} ({UNCONFIRMED_OUTCOME})", Status.CARD_ENTRY)
        changes = {}
        if details is not None:
            changes["details"] = details
        if amount_minor is not None:
            changes["amount_minor"] = amount_minor
        self._move(Status.CARD_ENTRY, actor, **changes)

    def back_to_details(self, actor: str) -> None:
        self._move(Status.DETAILS, actor)

    def start_processing(self, actor: str) -> None:
        self._move(Status.PROCESSING, actor)

    def record_result(self, outcome: str, actor: str, detail: str = "") -> None:
        """The gateway answered: approved, declined or error."""
        if outcome not in (Status.APPROVED, Status.DECLINED, Status.ERROR):
            raise ValueError(f"not a payment outcome: {outcome}")
        self._move(outcome, actor, detail)

    def end(self, actor: str) -> None:
        # An ended session is never secure: no digit may be accepted into it.
        self._move(Status.ENDED, actor, ended_at=timezone.now(), secure_state=SecureState.UNSECURED, secured_by="")

    # --- secure state ------------------------------------------------------------
    @property
    def is_secured(self) -> bool:
        return self.secure_state == SecureState.SECURED

    def mark_secured(
        self, actor: str, worker_id: str = "", only_if: Callable[[PaymentSession], bool] | None = None
    ) -> bool:
        """A call is linked and the media path is clean: digits may be accepted.
        `worker_id`: the media worker holding the call, which unsecures it if it restarts.
        `only_if`: as for mark_unsecured."""
        return self._set_secure(SecureState.SECURED, "", actor, worker_id, only_if)

    def mark_unsecured(self, reason: str, actor: str, only_if: Callable[[PaymentSession], bool] | None = None) -> bool:
        """A telephony event broke the secure state; digits are refused until re-secured.
        `only_if(locked row)`: a condition checked under the row lock (the event's call
        may have lost the session meanwhile); False when it did not hold (nothing changed)."""
        if reason not in BreakReason.values:
            raise ValueError(f"unknown break reason: {reason}")
        return self._set_secure(SecureState.UNSECURED, reason, actor, only_if=only_if)

    def _set_secure(
        self,
        state: str,
        reason: str,
        actor: str,
        worker_id: str = "",
        only_if: Callable[[PaymentSession], bool] | None = None,
    ) -> bool:
        with transaction.atomic():
            current = type(self).objects.select_for_update().get(pk=self.pk)
            if only_if is not None and not only_if(current):
                return False
            if state == SecureState.SECURED and not current.is_open:
                raise IllegalTransition(self.pk, f"{current.status}/{current.secure_state}", state)
            before = current.secure_state
            current.secure_state, current.break_reason, current.secured_by = state, reason, worker_id
            if state == SecureState.SECURED:
                current.secured_at = timezone.now()
            current.save(update_fields=["secure_state", "break_reason", "secured_at", "secured_by", "updated_at"])
            event = SessionEvent.record(current, actor, "secure", before, state, reason)
        self.refresh_from_db()
        self.secure_event_id = event.pk  # orders this change among all of the session's (live.MediaHub.link)
        return True


class SessionEvent(models.Model):
    """Audit trail: who moved a session, when, from what to what. Never card data."""

    session = models.ForeignKey(PaymentSession, on_delete=models.CASCADE, related_name="events")
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="+")
    at = models.DateTimeField(default=timezone.now)
    actor = models.CharField(max_length=150)  # "user:alice", "api:1a2b3c4d", "media-worker", "gateway-task"
    kind = models.CharField(max_length=16)  # created | transition | secure
    from_state = models.CharField(max_length=16, blank=True)
    to_state = models.CharField(max_length=16)
    detail = models.CharField(max_length=200, blank=True)

    objects = TenantScopedManager()

    class Meta:
        ordering = ["at", "id"]

    def __str__(self) -> str:
        return f"{self.at:%Y-%m-%d %H:%M:%S} {self.actor} {self.from_state}->{self.to_state}"

    @classmethod
    def record(
        cls, session: PaymentSession, actor: str, kind: str, from_state: str, to_state: str, detail: str = ""
    ) -> SessionEvent:
        return cls.objects.create(
            session=session,
            tenant_id=session.tenant_id,
            actor=actor[:150],
            kind=kind,
            from_state=from_state,
            to_state=to_state,
            detail=detail[:200],
        )


class AttemptStatus(models.TextChoices):
    PENDING = "pending", _("Pending")  # enqueued, gateway not yet called
    SENT = "sent", _("Sent")  # gateway called; outcome not yet stored (reconcile on restart)
    APPROVED = "approved", _("Approved")
    DECLINED = "declined", _("Declined")
    ERROR = "error", _("Error")


class PaymentAttempt(models.Model):
    """One press of *Process payment*: one card, one gateway call, one idempotency key.

    Holds only what PCI DSS allows after authorisation: brand, last four,
    gateway reference. The idempotency key is derived from this row's id, so a
    retried or redelivered task can never charge twice.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    session = models.ForeignKey(PaymentSession, on_delete=models.CASCADE, related_name="attempts")
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="+")
    number = models.PositiveIntegerField()
    status = models.CharField(max_length=16, choices=AttemptStatus.choices, default=AttemptStatus.PENDING)
    gateway = models.CharField(max_length=32)
    transaction_type = models.CharField(max_length=16, default="sale")
    amount_minor = models.BigIntegerField()
    currency = models.CharField(max_length=3)
    # The call the card was keyed on ("": none) as the vault said when the agent pressed Process:
    # the task charges only that copy (another call's copy may land before it takes it).
    card_keyed_on = models.CharField(max_length=64, blank=True)
    reason_code = models.CharField(max_length=64, blank=True)
    message = models.CharField(max_length=300, blank=True)
    gateway_reference = models.CharField(max_length=200, blank=True)
    auth_code = models.CharField(max_length=64, blank=True)
    brand = models.CharField(max_length=32, blank=True)
    last4 = models.CharField(max_length=4, blank=True)
    avs_result = models.CharField(max_length=32, blank=True)
    cvv_result = models.CharField(max_length=32, blank=True)
    refunded_minor = models.BigIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)
    completed_at = models.DateTimeField(null=True, blank=True)

    objects = TenantScopedManager()

    class Meta:
        ordering = ["session", "number"]
        constraints = [models.UniqueConstraint(fields=["session", "number"], name="unique_attempt_number")]

    def __str__(self) -> str:
        return f"attempt {self.number} of {self.session_id} ({self.status})"

    @property
    def idempotency_key(self) -> str:
        return f"securepay-{self.id}"


# Calls live in their own module (the media side of a session); imported here so Django registers the model.
from securepay.calls import Call  # noqa: E402, F401
