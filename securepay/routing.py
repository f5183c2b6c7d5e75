"""WebSocket routes. Every consumer resolves the tenant from the logged-in user."""

websocket_urlpatterns: list = []
