"""The recovery sweep: work whose Celery message was lost is sent again.

A message can vanish between a commit and its publish (a process killed right
after the commit, a broker down), or with a broker that lost a redelivery. The
database rows say what is unfinished, so a periodic sweep (Celery beat, cron:
`manage.py recover_stuck_work`) finds it and sends it again:

- payment attempts still `pending`/`sent`: re-enqueued. Safe because `charge`
  locks the attempt, reconciles a `sent` one with the gateway before anything
  else and never charges twice; a card gone from the vault ends in "key the
  card again".
- webhook deliveries whose next try is overdue, or that were never tried:
  re-enqueued once per sweep (a claim on the row stops a second sweep from
  enqueueing the same try again). Receivers de-duplicate by event id.
- refunds still `pending` (outcome unknown): the gateway is asked with the
  refund's key and the refund settled; no record there releases the amount.
- calls of media workers gone for good (no sign of life for
  MEDIA_WORKER_LOST_SECONDS): ended, their sessions unsecured (a worker that
  restarts under its id recovers its own calls; one that never does cannot).

Under eager Celery (the demo: no broker, no beat) nothing else ever sends a
webhook's next try, so the Daphne process runs this sweep in a thread
(`start_sweeper_thread`, started by securepay.asgi).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta

from celery import Task
from django.conf import settings
from django.db import close_old_connections
from django.db.models import Q, QuerySet
from django.utils import timezone

from gateways import refunds
from gateways.config import WEBHOOK_MAX_TRIES
from gateways.models import Refund, RefundStatus, WebhookDelivery
from gateways.tasks import charge_attempt, deliver_webhook
from securepay.calls import end_calls_of_lost_workers
from securepay.models import AttemptStatus, PaymentAttempt

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Recovered:
    attempts: int
    webhooks: int
    refunds: int
    calls: int = 0  # of media workers gone for good

    def __str__(self) -> str:
        return (f"requeued {self.attempts} payment attempt(s), {self.webhooks} webhook delivery(ies); "
                f"settled {self.refunds} refund(s); ended {self.calls} call(s) of lost media workers")


def recover_stuck_work(now: datetime | None = None) -> Recovered:
    """One sweep over every tenant's unfinished work."""
    recovered = Recovered(
        requeue_stale_attempts(now),
        requeue_due_webhooks(now),
        reconcile_pending_refunds(now),
        end_calls_of_lost_workers(now),
    )
    if recovered.attempts or recovered.webhooks or recovered.refunds or recovered.calls:
        logger.warning("recovery sweep: %s", recovered)
    return recovered


def stale_age() -> timedelta:
    """How old unfinished work must be before its message is presumed lost."""
    return timedelta(seconds=settings.RECOVERY_STALE_SECONDS)


def stale_attempts(older_than: datetime) -> QuerySet[PaymentAttempt]:
    """Attempts created before `older_than` that never got a result."""
    return PaymentAttempt.objects.filter(status__in=[AttemptStatus.PENDING, AttemptStatus.SENT],
                                         created_at__lt=older_than)


def requeue_stale_attempts(now: datetime | None = None) -> int:
    now = now or timezone.now()
    ids = list(stale_attempts(now - stale_age()).order_by("created_at").values_list("pk", flat=True))
    return sum(_enqueue(charge_attempt, str(pk)) for pk in ids)


def due_webhooks(now: datetime) -> QuerySet[WebhookDelivery]:
    """Undelivered events with tries left whose next try nothing else will send:
    overdue by more than the stale age, or never tried and older than it. Under
    eager Celery no retry is ever scheduled, so a due try is due at once."""
    grace = timedelta(0) if deliver_webhook.app.conf.task_always_eager else stale_age()
    overdue = Q(next_retry_at__lte=now - grace)
    never_tried = Q(attempts=0, next_retry_at__isnull=True, created_at__lt=now - stale_age())
    return WebhookDelivery.objects.filter(overdue | never_tried, delivered_at__isnull=True,
                                          attempts__lt=WEBHOOK_MAX_TRIES)


def requeue_due_webhooks(now: datetime | None = None) -> int:
    now = now or timezone.now()
    requeued = 0
    for pk, next_retry_at in due_webhooks(now).order_by("created_at").values_list("pk", "next_retry_at"):
        # Claim the try (compare-and-set) so an overlapping sweep does not send it twice;
        # if this message is lost too, the row is overdue again one stale age later.
        claimed = WebhookDelivery.objects.filter(pk=pk, next_retry_at=next_retry_at).update(next_retry_at=now)
        if claimed:
            requeued += _enqueue(deliver_webhook, str(pk))
    return requeued


def reconcile_pending_refunds(now: datetime | None = None) -> int:
    """Settle refunds whose outcome stayed unknown; those the gateway cannot tell about yet wait for the next sweep."""
    now = now or timezone.now()
    pending = (Refund.objects.filter(status=RefundStatus.PENDING, created_at__lt=now - stale_age())
               .select_related("attempt__session", "attempt__tenant").order_by("created_at"))
    return sum(refunds.reconcile_refund(refund) is not None for refund in pending)


def _enqueue(task: Task, object_id: str) -> bool:
    try:
        task.delay(object_id)
    except Exception:
        # One failing item (eager mode runs the task right here) must not stall the rest of the sweep.
        logger.exception("recovery sweep: %s(%s) failed", task.name, object_id)
        return False
    return True


def start_sweeper_thread() -> threading.Thread:
    """Run the sweep every RECOVERY_SWEEP_SECONDS in a daemon thread of this process (the demo)."""
    thread = threading.Thread(target=_sweep_forever, name="securepay-recovery", daemon=True)
    thread.start()
    return thread


def _sweep_forever() -> None:
    pause = threading.Event()
    while not pause.wait(settings.RECOVERY_SWEEP_SECONDS):
        try:
            recover_stuck_work()
        except Exception:
            logger.exception("recovery sweep failed; trying again next time")
        finally:
            close_old_connections()  # this thread's own connection, as after a request
