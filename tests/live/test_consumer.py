"""The agent page's socket: who may connect, what it gets first, which commands it relays."""

from __future__ import annotations

import pytest
from asgiref.sync import async_to_sync
from channels.db import database_sync_to_async
from channels.routing import URLRouter
from channels.testing import WebsocketCommunicator
from django.contrib.auth.models import AnonymousUser

from securepay.live import hub
from securepay.routing import websocket_urlpatterns
from tests.live.conftest import FUTURE_EXPIRY, VISA_OK, key_card, session_in_card_entry

pytestmark = pytest.mark.django_db(transaction=True)
TIMEOUT = 3


def communicator(user, session_id) -> WebsocketCommunicator:
    comm = WebsocketCommunicator(URLRouter(websocket_urlpatterns), f"/ws/sessions/{session_id}/")
    comm.scope["user"] = user
    return comm


def close_code_for(user, session_id) -> int:
    async def scenario():
        comm = communicator(user, session_id)
        connected, _ = await comm.connect(timeout=TIMEOUT)
        assert connected  # accepted first, so the browser can read the close code
        message = await comm.receive_output(timeout=TIMEOUT)
        await comm.disconnect()
        return message

    message = async_to_sync(scenario)()
    assert message["type"] == "websocket.close"
    return message["code"]


def test_anonymous_and_supervisors_are_refused_with_4403(alpha):
    session = session_in_card_entry(alpha)
    assert close_code_for(AnonymousUser(), session.pk) == 4403
    assert close_code_for(alpha.supervisor, session.pk) == 4403


def test_another_tenants_session_is_4404(alpha, beta):
    session = session_in_card_entry(alpha)
    assert close_code_for(beta.agent, session.pk) == 4404
    assert close_code_for(beta.admin, session.pk) == 4404


def test_connect_sends_session_state_then_the_live_card_state(alpha):
    session = session_in_card_entry(alpha)

    async def scenario():
        comm = communicator(alpha.agent, session.pk)
        assert (await comm.connect(timeout=TIMEOUT))[0]
        first = await comm.receive_json_from(timeout=TIMEOUT)
        assert first["type"] == "session.state"
        assert first["status"] == "card_entry" and first["code"] == session.code
        assert first["secure_state"] == "unsecured" and first["break_reason"] == "not_linked"
        assert first["amount"] == "12.50 GBP"
        assert await comm.receive_nothing(timeout=0.2)  # no call linked: no card state yet

        await database_sync_to_async(hub.link)(session.pk)
        secured = await comm.receive_json_from(timeout=TIMEOUT)
        card = await comm.receive_json_from(timeout=TIMEOUT)
        if secured["type"] == "card.state":
            secured, card = card, secured
        assert secured["type"] == "session.state" and secured["secure_state"] == "secured"
        assert secured["seq"] > first["seq"]
        assert card["type"] == "card.state" and card["secured"] is True

        await database_sync_to_async(key_card)(session.pk, VISA_OK[:6])
        for _ in range(6):
            card = await comm.receive_json_from(timeout=TIMEOUT)
        assert card["fields"]["pan"]["length"] == 6
        await comm.disconnect()

        # A reload: a new socket gets the same state again, card included.
        again = communicator(alpha.agent, session.pk)
        assert (await again.connect(timeout=TIMEOUT))[0]
        assert (await again.receive_json_from(timeout=TIMEOUT))["secure_state"] == "secured"
        snapshot = await again.receive_json_from(timeout=TIMEOUT)
        assert snapshot == card
        await again.disconnect()

    async_to_sync(scenario)()


def test_commands_reach_the_media_worker_and_come_back_as_card_state(alpha):
    session = session_in_card_entry(alpha)
    hub.link(session.pk)
    key_card(session.pk, VISA_OK + FUTURE_EXPIRY)

    async def scenario():
        comm = communicator(alpha.agent, session.pk)
        assert (await comm.connect(timeout=TIMEOUT))[0]
        await comm.receive_json_from(timeout=TIMEOUT)  # session.state
        snapshot = await comm.receive_json_from(timeout=TIMEOUT)
        assert snapshot["active"] == "cvv"

        await comm.send_json_to({"command": "reset", "field": "expiry"})
        card = await comm.receive_json_from(timeout=TIMEOUT)
        assert card["seq"] > snapshot["seq"]
        assert card["active"] == "expiry" and card["fields"]["expiry"]["length"] == 0
        assert card["fields"]["pan"]["valid"] is True

        await comm.send_json_to({"command": "activate", "field": "pan"})
        assert (await comm.receive_json_from(timeout=TIMEOUT))["active"] == "pan"

        # Anything else is refused, and digits have no way in.
        for bad in ({"command": "key", "field": "4"}, {"command": "reset", "field": "amount"}, ["reset"]):
            await comm.send_json_to(bad)
            if isinstance(bad, dict):
                assert (await comm.receive_json_from(timeout=TIMEOUT)) == {"type": "error", "code": "bad_command"}
        assert await comm.receive_nothing(timeout=0.2)
        await comm.disconnect()

    async_to_sync(scenario)()


def test_commands_are_refused_outside_card_entry(alpha):
    session = session_in_card_entry(alpha)
    session.back_to_details("user:test")

    async def scenario():
        comm = communicator(alpha.agent, session.pk)
        assert (await comm.connect(timeout=TIMEOUT))[0]
        assert (await comm.receive_json_from(timeout=TIMEOUT))["status"] == "details"
        await comm.send_json_to({"command": "reset", "field": "pan"})
        assert (await comm.receive_json_from(timeout=TIMEOUT))["code"] == "not_in_card_entry"
        await comm.disconnect()

    async_to_sync(scenario)()
