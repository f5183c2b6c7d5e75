from django.apps import AppConfig


class SecurepayConfig(AppConfig):
    name = "securepay"
    verbose_name = "Payment sessions"

    def ready(self) -> None:
        # Connects the session_transitioned receiver that pushes every state
        # change to agent pages and media workers, in every process (web, Celery).
        from securepay import live  # noqa: F401
