from django.apps import AppConfig


class SecurepayConfig(AppConfig):
    name = "securepay"
    verbose_name = "Payment sessions"
