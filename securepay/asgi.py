"""ASGI entry point (Daphne): HTTP through Django, WebSockets through Channels."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "securepay.settings")
django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402 - needs Django set up first
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402
from django.conf import settings  # noqa: E402

from gateways.recovery import start_sweeper_thread  # noqa: E402
from securepay.routing import websocket_urlpatterns  # noqa: E402

if settings.CELERY_TASK_ALWAYS_EAGER:
    # No broker and no beat (the demo): this server process sweeps for webhook
    # retries and lost work itself.
    start_sweeper_thread()

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        "websocket": AllowedHostsOriginValidator(AuthMiddlewareStack(URLRouter(websocket_urlpatterns))),
    }
)
