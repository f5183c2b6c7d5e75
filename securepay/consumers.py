"""The agent page's WebSocket: live masked card state and session state.

Close codes the page understands (and does not retry): 4403 not an agent or
admin of a tenant, 4404 no such session in the user's tenant.
"""

from __future__ import annotations

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.conf import settings

from media.capture import FIELDS
from securepay.live import AGENT_COMMANDS, MEDIA_GROUP, hub, media_command, session_group, session_state
from securepay.models import PaymentSession, Status
from tenants.models import Role
from tenants.scoping import role_of_user, tenant_of_user

CLOSE_FORBIDDEN = 4403
CLOSE_NOT_FOUND = 4404
AGENT_ROLES = frozenset({Role.AGENT, Role.ADMIN})


@database_sync_to_async
def find_session(user, session_id) -> tuple[PaymentSession | None, int]:
    """(session, 0) or (None, close code) for this user."""
    tenant = tenant_of_user(user)
    if tenant is None or role_of_user(user) not in AGENT_ROLES:
        return None, CLOSE_FORBIDDEN
    session = PaymentSession.objects.for_tenant(tenant).filter(pk=session_id).first()
    return (session, 0) if session is not None else (None, CLOSE_NOT_FOUND)


@database_sync_to_async
def current_state(session_id) -> dict:
    return session_state(PaymentSession.objects.get(pk=session_id))


@database_sync_to_async
def accepts_card_commands(session_id) -> bool:
    return PaymentSession.objects.filter(pk=session_id, status=Status.CARD_ENTRY).exists()


class AgentSessionConsumer(AsyncJsonWebsocketConsumer):
    """ws/sessions/<uuid>/: one agent page of one payment session."""

    async def connect(self) -> None:
        session_id = self.scope["url_route"]["kwargs"]["session_id"]
        session, close_code = await find_session(self.scope.get("user"), session_id)
        # Accept before closing so the browser sees our code (a refused
        # handshake would only show 1006) and stops reconnecting.
        await self.accept()
        if session is None:
            await self.close(code=close_code)
            return
        self.session_id = str(session.pk)
        self.group = session_group(self.session_id)
        await self.channel_layer.group_add(self.group, self.channel_name)
        if settings.MEDIA_WORKER_MODE == "inprocess":
            await hub.ensure_listening()
        # Joined first, then the snapshot: no change can fall in between.
        await self.send_json(await current_state(self.session_id))
        await self.channel_layer.group_send(
            MEDIA_GROUP, media_command(self.session_id, "snapshot", reply_to=self.channel_name)
        )

    async def disconnect(self, code: int) -> None:
        if hasattr(self, "group"):
            await self.channel_layer.group_discard(self.group, self.channel_name)

    async def receive_json(self, content, **kwargs) -> None:
        """Agent commands: {"command": "activate"|"reset", "field": "pan"|"expiry"|"cvv"}."""
        if not hasattr(self, "session_id") or not isinstance(content, dict):
            return
        command, field = content.get("command"), content.get("field")
        if command not in AGENT_COMMANDS or field not in FIELDS:
            await self.send_json({"type": "error", "code": "bad_command"})
            return
        if not await accepts_card_commands(self.session_id):
            await self.send_json({"type": "error", "code": "not_in_card_entry"})
            return
        await self.channel_layer.group_send(MEDIA_GROUP, media_command(self.session_id, command, field=field))

    # Channel-layer events, passed to the page as they are: both are whole,
    # masked states built for the browser (media.capture / securepay.live).
    async def card_state(self, event: dict) -> None:
        await self.send_json(event)

    async def session_state(self, event: dict) -> None:
        await self.send_json(event)
