from django.apps import AppConfig


class GatewaysConfig(AppConfig):
    name = "gateways"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from gateways import webhooks
        from securepay.signals import session_transitioned

        session_transitioned.connect(webhooks.on_session_transitioned, dispatch_uid="gateways.session_ended_webhook")
