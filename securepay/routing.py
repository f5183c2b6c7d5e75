"""WebSocket routes. Every consumer resolves the tenant from the logged-in user."""

from django.urls import path

from securepay.consumers import AgentSessionConsumer

websocket_urlpatterns: list = [
    path("ws/sessions/<uuid:session_id>/", AgentSessionConsumer.as_asgi()),
]
