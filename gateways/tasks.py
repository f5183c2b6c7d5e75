"""Celery tasks of the gateways app. Messages carry ids only, never card data."""

from __future__ import annotations

from celery import Task, shared_task
from celery.exceptions import Retry

from gateways import processing, webhooks
from gateways.config import WEBHOOK_MAX_TRIES, reconcile_task_retry_seconds

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


@shared_task(bind=True, acks_late=True, reject_on_worker_lost=True, max_retries=WEBHOOK_MAX_TRIES - 1)
def deliver_webhook(self: Task, delivery_id: str) -> Retry | None:
    """POST one webhook event; exponential backoff until delivered or out of tries."""
    final_try = self.request.retries >= self.max_retries
    if webhooks.attempt_delivery(delivery_id, final_try=final_try) or final_try:
        return None
    return _retry_later(self, webhooks.retry_delay_seconds(self.request.retries))


def _retry_later(task: Task, countdown: float) -> Retry:
    # Returned, not raised: under eager Celery (the demo) a raised Retry would
    # escape into the code that enqueued the task; returned, `apply` runs the retry.
    return task.retry(countdown=countdown, throw=False)
