"""Celery tasks of the gateways app. Messages carry ids only, never card data."""

from __future__ import annotations

from celery import Task, shared_task
from celery.exceptions import Retry
from django.utils import timezone

from gateways import processing, webhooks
from gateways.config import reconcile_task_retry_seconds

# How often the charge task asks again about an outcome the gateway could not confirm.
RECONCILE_TASK_RETRIES = 5


@shared_task(bind=True, acks_late=True, reject_on_worker_lost=True, max_retries=RECONCILE_TASK_RETRIES)
def charge_attempt(self: Task, attempt_id: str) -> Retry | None:
    """Charge one PaymentAttempt exactly once (gateways.processing)."""
    try:
        processing.charge(attempt_id)
    except processing.OutcomeStillUnknown:
        if self.request.retries >= self.max_retries:
            processing.give_up(attempt_id)
            return None
        return _retry_later(self, reconcile_task_retry_seconds())


# The row counts the tries (WEBHOOK_MAX_TRIES), not Celery: a message re-sent by
# the recovery sweep starts again at retries=0.
@shared_task(bind=True, acks_late=True, reject_on_worker_lost=True, max_retries=None)
def deliver_webhook(self: Task, delivery_id: str) -> Retry | None:
    """POST one webhook event; exponential backoff until delivered or out of tries."""
    delivery = webhooks.attempt_delivery(delivery_id)
    if delivery.next_retry_at is None:
        return None
    if self.request.is_eager:
        # Eager Celery (the demo) ignores countdowns: the retries would run back to
        # back inside the agent's request. The recovery sweep sends the next try when due.
        return None
    return _retry_later(self, max(0.0, (delivery.next_retry_at - timezone.now()).total_seconds()))


@shared_task
def recover_stuck_work() -> None:
    """Re-send work whose Celery message was lost (gateways.recovery); Celery beat runs it."""
    from gateways import recovery  # recovery enqueues the tasks of this module

    recovery.recover_stuck_work()


def _retry_later(task: Task, countdown: float) -> Retry:
    # Returned, not raised: under eager Celery (the demo) a raised Retry would
    # escape into the code that enqueued the task; returned, `apply` runs the retry.
    return task.retry(countdown=countdown, throw=False)
