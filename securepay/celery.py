"""The Celery app. Broker from CELERY_BROKER_URL; eager when none (demo)."""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "securepay.settings")

app = Celery("securepay")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
