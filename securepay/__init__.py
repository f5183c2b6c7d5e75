"""SecurePay: the Django project and the payment-session domain."""

from securepay.celery import app as celery_app

__all__ = ["celery_app"]
