"""Re-send work whose Celery message was lost (gateways.recovery): run it from cron
every minute, or let `celery -A securepay beat` run the same sweep as a task."""

from django.core.management.base import BaseCommand

from gateways.recovery import recover_stuck_work


class Command(BaseCommand):
    help = "Re-enqueue stuck payment attempts and webhook deliveries; settle pending refunds."

    def handle(self, *args, **options) -> None:
        self.stdout.write(str(recover_stuck_work()))
