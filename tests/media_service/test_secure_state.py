"""The worker's secure state, driven inside the test process: a `MediaWorker` with
its own `MediaHub` and an in-memory channel layer, against the real database.

Control messages go straight to `_handle_message` and key presses straight to
`_on_keys` (what the relay calls), so each test states the order of events exactly.
"""

from __future__ import annotations

import asyncio
import threading
from datetime import timedelta

import numpy as np
import pytest
from asgiref.sync import async_to_sync
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.db import connection, transaction
from django.utils import timezone

from gateways.recovery import recover_stuck_work
from media import calls as media_calls
from media import service
from media.calls import CODECS
from media.dtmf import SAMPLE_RATE, KeyPress, detect
from media.masker import HOLDBACK_MS
from media.rfc4733 import build_event
from media.rtp import RtpPacket, parse_rtp
from media.service import MediaWorker
from media.softphone import caller_packets, keypad_audio
from securepay import calls as calls_module
from securepay.calls import Call, CallNotLive, CallState, EndReason, MediaWorkerBeat, link_call, start_call
from securepay.live import MediaHub
from securepay.models import BreakReason, IllegalTransition, PaymentAttempt, PaymentSession, SecureState
from securepay.payment import PaymentNotReady, request_payment
from securepay.vault import generate_key, get_vault
from tests.live.conftest import session_in_card_entry
from tests.media.signals import FLAT_TONE_HZ, band_share
from tests.support import missing

pytestmark = pytest.mark.django_db(transaction=True)

WORKER_ID = "secure-state"


@pytest.fixture(autouse=True)
def _worker_here(settings, transactional_db):
    settings.MEDIA_WORKER_MODE = "external"
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    settings.MEDIA_WORKER_ID = WORKER_ID
    for worker_id in (WORKER_ID, "w-one", "w-two", "another-worker"):
        MediaWorkerBeat.beat(worker_id)  # the API routes calls only to a worker that signs of life


@pytest.fixture
def hub() -> MediaHub:
    return MediaHub()


@pytest.fixture
def worker(hub):
    worker = MediaWorker(WORKER_ID, "127.0.0.1", 30, hub)
    yield worker
    worker.relay.close()


@pytest.fixture
def keyed_vault(settings):
    """A vault this process can store cards in (the worker's side), fresh for the test."""
    settings.VAULT_KEY = generate_key()
    get_vault.cache_clear()
    yield get_vault()
    get_vault.cache_clear()


def secure_state(session: PaymentSession) -> tuple[str, str]:
    fresh = PaymentSession.objects.get(pk=session.pk)
    return fresh.secure_state, fresh.break_reason


def pan_length(hub: MediaHub, session: PaymentSession) -> int:
    """Card-number digits that landed in the session's card entry (none without one)."""
    capture = hub._captures.get(str(session.pk))
    return 0 if capture is None else capture.state()["fields"]["pan"]["length"]


def run(scenario):
    return async_to_sync(scenario)()


async def drain(worker: MediaWorker) -> None:
    while not worker._jobs.empty():
        await worker._jobs.get_nowait()


async def start(worker: MediaWorker, *calls: Call) -> None:
    for call in calls:
        await worker._start_call(str(call.pk))


async def link(worker: MediaWorker, call: Call, session: PaymentSession) -> None:
    """As the API's link_call: the call claims the session, then its worker is told."""
    await database_sync_to_async(Call(pk=call.pk).claim_session)(session.pk)
    await worker._handle_message({"type": "call.link", "call": str(call.pk), "session": str(session.pk)})


async def unlink(worker: MediaWorker, call: Call, session: PaymentSession) -> None:
    """What the worker of a call that lost the session to another call is told."""
    await worker._handle_message({"type": "call.unlink", "call": str(call.pk), "session": str(session.pk)})


async def event(worker: MediaWorker, call: Call, name: str) -> None:
    await worker._handle_message({"type": "call.event", "call": str(call.pk), "event": name, "supervisor": None})


async def caller_keys(worker: MediaWorker, call: Call, digits: str, start_ms: float = 0.0) -> None:
    presses = [KeyPress(digit, start_ms + 200 * n, start_ms + 200 * n + 100) for n, digit in enumerate(digits)]
    worker._on_keys(worker.relay.calls[str(call.pk)], media_calls.Received(caller_keys=presses))
    await drain(worker)


async def agent_keys(worker: MediaWorker, call: Call, digits: str) -> None:
    presses = [KeyPress(digit, 200 * n, 200 * n + 100) for n, digit in enumerate(digits)]
    worker._on_keys(worker.relay.calls[str(call.pk)], media_calls.Received(agent_keys=presses))
    await drain(worker)


# --- one live call per session ---------------------------------------------------------
def test_keys_from_a_call_that_lost_the_session_are_dropped(alpha, worker, hub):
    session = session_in_card_entry(alpha)
    left, current = start_call(alpha.tenant), start_call(alpha.tenant)

    async def scenario():
        await start(worker, left, current)
        await link(worker, left, session)
        await event(worker, left, "switch_line")
        await link(worker, current, session)
        await caller_keys(worker, left, "4242")

    run(scenario)
    assert secure_state(session) == (SecureState.SECURED, "")
    assert pan_length(hub, session) == 0
    assert worker.links[str(left.pk)].session_id is None
    assert Call.objects.get(pk=left.pk).session_id is None
    assert Call.objects.get(pk=current.pk).session_id == session.pk


def test_unhold_of_a_call_that_lost_the_session_does_not_secure_it(alpha, worker, hub):
    session = session_in_card_entry(alpha)
    left, current = start_call(alpha.tenant), start_call(alpha.tenant)

    async def scenario():
        await start(worker, left, current)
        await link(worker, left, session)
        await event(worker, left, "hold")
        await link(worker, current, session)
        await event(worker, current, "hold")
        await event(worker, left, "unhold")

    run(scenario)
    assert secure_state(session) == (SecureState.UNSECURED, BreakReason.HOLD)
    assert hub._captures[str(session.pk)].state()["secured"] is False


def test_agent_code_never_takes_a_session_another_live_call_holds(alpha, worker, hub):
    session = session_in_card_entry(alpha)
    first, other_agent = start_call(alpha.tenant), start_call(alpha.tenant)

    async def scenario():
        await start(worker, first, other_agent)
        await link(worker, first, session)
        await agent_keys(worker, other_agent, "9" + session.code)
        await caller_keys(worker, other_agent, "4242")

    run(scenario)
    assert worker.links[str(other_agent.pk)].session_id is None
    assert Call.objects.get(pk=other_agent.pk).session_id is None
    assert Call.objects.get(pk=first.pk).session_id == session.pk
    assert pan_length(hub, session) == 0


def test_agent_code_links_a_session_no_live_call_holds(alpha, worker, hub):
    session = session_in_card_entry(alpha)
    call = start_call(alpha.tenant)

    async def scenario():
        await start(worker, call)
        await agent_keys(worker, call, session.code)
        await caller_keys(worker, call, "42")

    run(scenario)
    assert Call.objects.get(pk=call.pk).session_id == session.pk
    assert secure_state(session) == (SecureState.SECURED, "")
    assert pan_length(hub, session) == 2


def test_api_link_takes_the_session_from_the_other_live_call(alpha, settings):
    session = session_in_card_entry(alpha)
    here = start_call(alpha.tenant)
    settings.MEDIA_WORKER_ID = "another-worker"
    there = start_call(alpha.tenant)
    link_call(there, session.code)

    async def relink_and_listen_there() -> dict:
        layer = get_channel_layer()
        channel = await layer.new_channel("test.")
        await layer.group_add(service.worker_group("another-worker"), channel)
        await database_sync_to_async(link_call)(here, session.code)
        return await asyncio.wait_for(layer.receive(channel), 2)

    told = run(relink_and_listen_there)
    assert Call.objects.get(pk=there.pk).session_id is None
    assert Call.objects.get(pk=here.pk).session_id == session.pk
    assert told == {"type": "call.unlink", "session": str(session.pk), "call": str(there.pk)}


def test_unlink_from_another_worker_drops_the_session_and_its_keys(alpha, worker, hub):
    session = session_in_card_entry(alpha)
    call = start_call(alpha.tenant)

    async def scenario():
        await start(worker, call)
        await link(worker, call, session)
        await unlink(worker, call, session)
        await caller_keys(worker, call, "42")

    run(scenario)
    assert worker.links[str(call.pk)].session_id is None
    assert not hub.is_linked(session.pk)


# --- restart recovery -----------------------------------------------------------------
def test_recovery_unsecures_a_session_the_api_moved_the_call_away_from(alpha, worker):
    first, second = session_in_card_entry(alpha), session_in_card_entry(alpha)
    call = start_call(alpha.tenant)

    async def scenario():
        await start(worker, call)
        await link(worker, call, first)

    run(scenario)
    worker.relay.close()  # the worker dies; the API links the call elsewhere meanwhile
    link_call(Call.objects.get(pk=call.pk), second.code)
    MediaWorker(WORKER_ID, "127.0.0.1", 30, MediaHub()).recover()
    assert secure_state(first) == (SecureState.UNSECURED, BreakReason.LINK_LOST)
    assert secure_state(second) == (SecureState.UNSECURED, BreakReason.LINK_LOST)
    assert Call.objects.get(pk=call.pk).state == CallState.ENDED


def test_recovery_leaves_sessions_other_workers_secured(alpha):
    session = session_in_card_entry(alpha)
    session.mark_secured("test", "another-worker")
    MediaWorker(WORKER_ID, "127.0.0.1", 30, MediaHub()).recover()
    assert secure_state(session) == (SecureState.SECURED, "")


def test_the_call_row_points_to_the_session_before_it_is_secured(alpha, worker, hub, monkeypatch):
    session = session_in_card_entry(alpha)
    call = start_call(alpha.tenant)
    rows_when_secured = []
    secure = hub.link

    def link_and_note(session_id, *args, **kwargs):
        rows_when_secured.append(Call.objects.get(pk=call.pk).session_id)
        return secure(session_id, *args, **kwargs)

    monkeypatch.setattr(hub, "link", link_and_note)

    async def scenario():
        await start(worker, call)
        await link(worker, call, session)

    run(scenario)
    assert rows_when_secured == [session.pk]
    assert PaymentSession.objects.get(pk=session.pk).secured_by == WORKER_ID


# --- ended sessions -------------------------------------------------------------------
def test_a_break_after_a_lost_end_unsecures_and_drops_the_card_entry(alpha, worker, hub):
    session = session_in_card_entry(alpha)
    call = start_call(alpha.tenant)

    async def scenario():
        await start(worker, call)
        await link(worker, call, session)
        await caller_keys(worker, call, "42")
        capture = hub._captures[str(session.pk)]
        # The hub is not listening on `media.sessions`: the session's `end` command is lost.
        await database_sync_to_async(lambda: PaymentSession.objects.get(pk=session.pk).end("test"))()
        await event(worker, call, "barge")
        return capture

    capture = run(scenario)
    assert capture.state()["secured"] is False
    assert not hub.is_linked(session.pk)


def test_link_racing_an_end_leaves_no_secured_card_entry(alpha, hub, monkeypatch):
    session = session_in_card_entry(alpha)
    mark_secured = PaymentSession.mark_secured

    def secured_then_ended(self, *args, **kwargs):
        secured = mark_secured(self, *args, **kwargs)
        PaymentSession.objects.get(pk=self.pk).end("test")  # the agent ends it in between
        return secured

    monkeypatch.setattr(PaymentSession, "mark_secured", secured_then_ended)
    with pytest.raises(IllegalTransition):
        hub.link(session.pk)
    assert not hub.is_linked(session.pk)


# --- hold -----------------------------------------------------------------------------
def test_a_call_linked_on_hold_is_secured_only_on_unhold(alpha, worker, hub):
    session = session_in_card_entry(alpha)
    call = start_call(alpha.tenant)
    seen = {}

    async def scenario():
        await start(worker, call)
        await event(worker, call, "hold")
        await link(worker, call, session)
        await caller_keys(worker, call, "42")
        seen["on hold"] = await database_sync_to_async(secure_state)(session), pan_length(hub, session)
        await event(worker, call, "unhold")
        await caller_keys(worker, call, "42", start_ms=10_000)
        seen["after unhold"] = await database_sync_to_async(secure_state)(session), pan_length(hub, session)

    run(scenario)
    assert seen["on hold"] == ((SecureState.UNSECURED, BreakReason.HOLD), 0)
    assert seen["after unhold"] == ((SecureState.SECURED, ""), 2)
    assert Call.objects.get(pk=call.pk).session_id == session.pk


# --- the tick ---------------------------------------------------------------------------
def test_a_failing_tick_does_not_stop_the_ticking(worker, monkeypatch):
    monkeypatch.setattr(service, "TICK_S", 0.01)
    ticks = []

    def report() -> None:
        ticks.append(1)
        if len(ticks) == 1:
            raise RuntimeError("one bad tick")

    monkeypatch.setattr(worker.relay, "send_reports", report)

    async def scenario():
        task = asyncio.create_task(worker._tick())
        await asyncio.sleep(0.2)
        task.cancel()
        await drain(worker)  # the signs of life the ticks queued

    run(scenario)
    assert len(ticks) > 2


# --- when a key was pressed -------------------------------------------------------------
def test_a_key_pressed_on_hold_and_detected_after_unhold_is_refused(alpha, worker, hub):
    session = session_in_card_entry(alpha)
    call = start_call(alpha.tenant)

    async def scenario():
        await start(worker, call)
        await link(worker, call, session)
        await event(worker, call, "hold")
        worker.relay.calls[str(call.pk)].caller.timeline.next_position = 5 * SAMPLE_RATE  # 5 s of caller audio
        await event(worker, call, "unhold")
        await caller_keys(worker, call, "4", start_ms=4_900)  # pressed on hold, released after unhold
        await caller_keys(worker, call, "42", start_ms=5_100)

    run(scenario)
    state = hub._captures[str(session.pk)].state()
    assert state["fields"]["pan"]["length"] == 2 and state["rejected_keys"] == 1


# --- two workers (found by a second review) -------------------------------------------
@pytest.fixture
def two_workers():
    one, two = MediaWorker("w-one", "127.0.0.1", 30, MediaHub()), MediaWorker("w-two", "127.0.0.1", 30, MediaHub())
    yield one, two
    one.relay.close()
    two.relay.close()


async def api_link(call: Call, session: PaymentSession) -> None:
    """POST /api/v1/calls/<id>/link/: the claim only (each worker's message is delivered by the test)."""
    await database_sync_to_async(link_call)(await database_sync_to_async(Call.objects.get)(pk=call.pk), session.code)


def test_a_hangup_of_the_call_that_lost_the_session_leaves_the_new_calls_secure_state(alpha, two_workers):
    one, two = two_workers
    session = session_in_card_entry(alpha)
    old, new = start_call(alpha.tenant, worker_id="w-one"), start_call(alpha.tenant, worker_id="w-two")

    async def scenario():
        await start(one, old)
        await start(two, new)
        await link(one, old, session)
        await api_link(new, session)
        await link(two, new, session)  # worker two secures it for the new call ...
        await event(one, old, "hangup")  # ... before worker one hears that its call lost it
        await caller_keys(two, new, "4242")

    run(scenario)
    assert secure_state(session) == (SecureState.SECURED, "")  # the indicator and the digits agree
    assert pan_length(two.hub, session) == 4


def test_an_unhold_of_the_call_that_lost_the_session_does_not_take_it_back(alpha, two_workers):
    one, two = two_workers
    session = session_in_card_entry(alpha)
    old, new = start_call(alpha.tenant, worker_id="w-one"), start_call(alpha.tenant, worker_id="w-two")

    async def scenario():
        await start(one, old)
        await start(two, new)
        await link(one, old, session)
        await event(one, old, "hold")
        await api_link(new, session)
        await link(two, new, session)
        await event(one, old, "unhold")  # before its unlink arrives
        await unlink(one, old, session)
        await caller_keys(one, old, "42")

    run(scenario)
    assert Call.objects.get(pk=new.pk).session_id == session.pk
    assert PaymentSession.objects.get(pk=session.pk).secured_by == "w-two"
    assert pan_length(one.hub, session) == 0


def test_a_call_that_hung_up_cannot_take_a_session(alpha, two_workers):
    one, two = two_workers
    session = session_in_card_entry(alpha)
    holder, gone = start_call(alpha.tenant, worker_id="w-one"), start_call(alpha.tenant, worker_id="w-two")

    async def scenario():
        await start(one, holder)
        await start(two, gone)
        await link(one, holder, session)
        await event(two, gone, "hangup")
        with pytest.raises(CallNotLive):
            await api_link(gone, session)

    run(scenario)
    assert Call.objects.get(pk=holder.pk).session_id == session.pk
    assert secure_state(session) == (SecureState.SECURED, "")


def test_a_worker_whose_call_lost_the_session_unsecures_what_it_had_secured(alpha, two_workers):
    one, two = two_workers
    session = session_in_card_entry(alpha)
    old, new = start_call(alpha.tenant, worker_id="w-one"), start_call(alpha.tenant, worker_id="w-two")

    async def scenario():
        await start(one, old)
        await start(two, new)
        await event(two, new, "hold")
        await link(one, old, session)
        await api_link(new, session)  # worker two links it on hold: not secure until unhold
        await unlink(one, old, session)

    run(scenario)
    state, _reason = secure_state(session)
    assert state == SecureState.UNSECURED  # no call secures it now


def test_crossed_claims_do_not_deadlock(alpha):
    if connection.vendor != "postgresql":
        missing("claims crossing in two threads need PostgreSQL's row locks (DATABASE_URL), as in CI")
    first, second = session_in_card_entry(alpha), session_in_card_entry(alpha)
    a, b = start_call(alpha.tenant), start_call(alpha.tenant)
    Call.objects.filter(pk=a.pk).update(session=second)
    Call.objects.filter(pk=b.pk).update(session=first)
    errors: list[Exception] = []

    def claim(call: Call, session: PaymentSession) -> None:
        try:
            Call(pk=call.pk).claim_session(session.pk)
        except Exception as exc:  # noqa: BLE001 - the test reports any failure
            errors.append(exc)
        finally:
            connection.close()

    for _ in range(20):  # a deadlock needs the two to interleave: try many times
        threads = [threading.Thread(target=claim, args=args) for args in ((a, first), (b, second))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(20)
        Call.objects.filter(pk=a.pk).update(session=second)
        Call.objects.filter(pk=b.pk).update(session=first)
    assert errors == []


def test_a_call_linked_on_hold_keeps_a_barging_supervisor_off_the_caller(alpha, worker):
    session = session_in_card_entry(alpha)
    call = start_call(alpha.tenant)

    async def scenario():
        await start(worker, call)
        await event(worker, call, "hold")
        await link(worker, call, session)
        worker._tick_once()
        return worker.relay.calls[str(call.pk)].session_open

    assert run(scenario) is True


def test_a_repeated_link_keeps_the_start_of_the_secured_time(alpha, worker, hub):
    session = session_in_card_entry(alpha)
    call = start_call(alpha.tenant)

    async def scenario():
        await start(worker, call)
        await link(worker, call, session)  # secured at 0 s
        worker.relay.calls[str(call.pk)].caller.timeline.next_position = 5 * SAMPLE_RATE
        await link(worker, call, session)  # the CTI retries the link at 5 s
        await caller_keys(worker, call, "4", start_ms=4_950)  # pressed at 4.95 s

    run(scenario)
    assert pan_length(hub, session) == 1


# --- both calls on one worker (found by a third review) ------------------------------------
@pytest.fixture
def unlinks(monkeypatch) -> list[dict]:
    """The call.unlink messages the claims send, to be delivered by the test."""
    sent: list[dict] = []
    tell = calls_module.tell_worker

    def recording(call: Call, message: dict) -> None:
        if message["type"] == "call.unlink":
            sent.append({**message, "call": str(call.pk)})
        tell(call, message)

    monkeypatch.setattr(calls_module, "tell_worker", recording)
    return sent


def test_a_call_that_claimed_the_session_then_hung_up_leaves_it_to_nobody(alpha, worker, hub, unlinks):
    session = session_in_card_entry(alpha)
    old, new = start_call(alpha.tenant), start_call(alpha.tenant)

    async def scenario():
        await start(worker, old, new)
        await link(worker, old, session)
        await api_link(new, session)  # the row was still live: the claim succeeds ...
        for message in unlinks:
            await worker._handle_message(message)
        await event(worker, new, "hangup")  # ... but the worker handles its hang-up first
        await worker._handle_message({"type": "call.link", "call": str(new.pk), "session": str(session.pk)})
        await caller_keys(worker, old, "4242")

    run(scenario)
    assert secure_state(session)[0] == SecureState.UNSECURED
    assert pan_length(hub, session) == 0


def test_a_call_that_claimed_the_session_then_failed_to_bind_leaves_it_to_nobody(alpha, worker, hub, unlinks):
    session = session_in_card_entry(alpha)
    old = start_call(alpha.tenant)

    async def scenario():
        await start(worker, old)
        await link(worker, old, session)
        new = await database_sync_to_async(start_call)(alpha.tenant)
        await api_link(new, session)  # linked before its worker handled call.start
        for message in unlinks:
            await worker._handle_message(message)

        async def port_taken(*args, **kwargs):
            raise OSError("address in use")

        worker.relay.open_leg = port_taken
        await worker._start_call(str(new.pk))  # the row ends; the call never reaches the worker
        del worker.relay.open_leg
        await worker._handle_message({"type": "call.link", "call": str(new.pk), "session": str(session.pk)})
        await caller_keys(worker, old, "4242")

    run(scenario)
    assert secure_state(session)[0] == SecureState.UNSECURED
    assert pan_length(hub, session) == 0


def test_an_event_press_held_through_an_unhold_is_refused_even_with_no_audio_flowing(alpha, worker, hub):
    """A phone sending RFC 4733 events and no audio (silence suppression): the caller's
    timeline stands still, so positions cannot tell when a press began."""
    session = session_in_card_entry(alpha)
    call = start_call(alpha.tenant)
    sequence = iter(range(100, 200))

    def press(relayed: media_calls.Call, digit: str, timestamp: int, frames: range, end: bool) -> None:
        for frame in frames:
            packet = RtpPacket(101, next(sequence), timestamp, 0x77, build_event(digit, 160 * (frame + 1), end=end))
            worker._on_keys(relayed, relayed.receive(relayed.caller, packet.build(), 1.0 + frame / 50))

    async def scenario():
        await start(worker, call)
        await link(worker, call, session)
        relayed = worker.relay.calls[str(call.pk)]
        await event(worker, call, "hold")
        press(relayed, "4", 8000, range(0, 3), end=False)  # pressed on hold ...
        await event(worker, call, "unhold")
        press(relayed, "4", 8000, range(3, 6), end=True)  # ... released after the unhold
        press(relayed, "2", 16000, range(0, 4), end=True)  # a press after it
        await drain(worker)

    run(scenario)
    state = hub._captures[str(session.pk)].state()
    assert state["fields"]["pan"]["length"] == 1 and state["rejected_keys"] == 1


def test_keys_of_a_call_whose_session_was_just_claimed_elsewhere_are_dropped(alpha, two_workers):
    one, two = two_workers
    session = session_in_card_entry(alpha)
    old, new = start_call(alpha.tenant, worker_id="w-one"), start_call(alpha.tenant, worker_id="w-two")

    async def scenario():
        await start(one, old)
        await start(two, new)
        await link(one, old, session)
        await api_link(new, session)  # committed; worker one has not handled the unlink yet
        await caller_keys(one, old, "4242")

    run(scenario)
    assert pan_length(one.hub, session) == 0
    assert one.links[str(old.pk)].session_id is None


def test_a_card_completed_while_another_call_claims_the_session_is_not_charged_for_it(
    alpha, two_workers, keyed_vault, monkeypatch
):
    """The old call's last key passed the 'still holds the session' check; the claim of the new
    call commits before that key stores the card (after the new card entry discarded the vault
    copy): the copy names the call it was keyed on, so Process refuses it for the new call."""
    one, two = two_workers
    session = session_in_card_entry(alpha)
    old, new = start_call(alpha.tenant, worker_id="w-one"), start_call(alpha.tenant, worker_id="w-two")
    keys = "4242424242424242" + "1230" + "123"
    press_key = one.hub.press_key

    def claimed_during_the_last_key(session_id, digit, accepted=True):
        link_call(Call.objects.get(pk=new.pk), session.code)  # committed; worker one not told yet
        return press_key(session_id, digit, accepted)

    async def scenario():
        await start(one, old)
        await start(two, new)
        await link(one, old, session)
        await caller_keys(one, old, keys[:-1])
        monkeypatch.setattr(one.hub, "press_key", claimed_during_the_last_key)
        await caller_keys(one, old, keys[-1], start_ms=200 * len(keys))

    run(scenario)
    assert Call.objects.get(pk=new.pk).session_id == session.pk
    assert keyed_vault.keyed_on(session.pk) == str(old.pk)  # the old call's card landed
    with pytest.raises(PaymentNotReady) as refused:
        request_payment(PaymentSession.objects.get(pk=session.pk), "user:agent")
    assert refused.value.code == "no_card"
    assert not PaymentAttempt.objects.filter(session=session).exists()


@pytest.mark.parametrize("first_call_ends_by", ["hangup", "rtp_timeout"])
def test_a_call_linked_after_another_call_of_the_same_worker_ended_can_be_paid(
    alpha, worker, hub, keyed_vault, first_call_ends_by
):
    """The first call leaves the session (no unlink: it is no longer live), a second call on
    the same worker links it and the caller keys a card: a new card entry, stored as the
    second call's - Process takes it."""
    session = session_in_card_entry(alpha)
    first, second = start_call(alpha.tenant), start_call(alpha.tenant)

    async def scenario():
        await start(worker, first, second)
        await link(worker, first, session)
        await caller_keys(worker, first, "4242")
        if first_call_ends_by == "hangup":
            await event(worker, first, "hangup")
        else:
            await worker._end_call(str(first.pk), EndReason.RTP_TIMEOUT, BreakReason.LINK_LOST)
        await link(worker, second, session)
        await caller_keys(worker, second, "4242424242424242" + "1230" + "123", start_ms=10_000)

    run(scenario)
    assert secure_state(session) == (SecureState.SECURED, "")
    assert keyed_vault.keyed_on(session.pk) == str(second.pk)
    attempt = request_payment(PaymentSession.objects.get(pk=session.pk), "user:agent")
    assert attempt.card_keyed_on == str(second.pk)


def test_keys_from_the_keypad_simulator_are_not_charged_as_a_live_calls_card(alpha, worker, hub, keyed_vault):
    session = session_in_card_entry(alpha)
    call = start_call(alpha.tenant)

    async def scenario():
        await start(worker, call)
        await link(worker, call, session)

    run(scenario)
    hub.link(session.pk)  # the demo's keypad simulator, while the call holds the session
    for digit in "4242424242424242" + "1230" + "123":
        hub.press_key(session.pk, digit)
    assert keyed_vault.keyed_on(session.pk) == ""
    with pytest.raises(PaymentNotReady):
        request_payment(PaymentSession.objects.get(pk=session.pk), "user:agent")


# --- workers gone for good --------------------------------------------------------------
def test_the_sweep_ends_the_calls_of_a_worker_gone_for_good_and_unsecures_its_sessions(alpha, settings):
    settings.MEDIA_WORKER_LOST_SECONDS = 60
    long_ago = timezone.now() - timedelta(minutes=5)
    held, secured_only, kept = session_in_card_entry(alpha), session_in_card_entry(alpha), session_in_card_entry(alpha)
    held.mark_secured("test", "gone")
    secured_only.mark_secured("test", "gone-too")  # its call already ended, the worker never came back
    kept.mark_secured("test", "alive")
    for worker_id in ("gone", "alive", "starting"):
        MediaWorkerBeat.beat(worker_id)
    gone_call = start_call(alpha.tenant, worker_id="gone")
    alive_call = start_call(alpha.tenant, worker_id="alive")
    young_call = start_call(alpha.tenant, worker_id="starting")
    MediaWorkerBeat.objects.filter(worker_id="gone").update(seen_at=long_ago)
    MediaWorkerBeat.objects.filter(worker_id="starting").delete()  # restarting: it has not signed again yet
    Call.objects.filter(pk=gone_call.pk).update(session=held)
    Call.objects.filter(pk=alive_call.pk).update(session=kept)
    Call.objects.filter(pk__in=[gone_call.pk, alive_call.pk]).update(created_at=long_ago)

    assert recover_stuck_work().calls == 1

    gone_call.refresh_from_db()
    assert (gone_call.state, gone_call.end_reason) == (CallState.ENDED, EndReason.WORKER_LOST)
    assert secure_state(held) == (SecureState.UNSECURED, BreakReason.LINK_LOST)
    assert secure_state(secured_only) == (SecureState.UNSECURED, BreakReason.LINK_LOST)
    assert secure_state(kept) == (SecureState.SECURED, "")
    assert Call.objects.get(pk=alive_call.pk).is_live and Call.objects.get(pk=young_call.pk).is_live


def test_a_worker_signs_of_life_when_it_starts_and_while_it_runs(worker):
    worker.recover()
    first = MediaWorkerBeat.objects.get(worker_id=WORKER_ID).seen_at

    async def ticks():
        for _ in range(service.BEAT_TICKS):
            worker._tick_once()
        await drain(worker)

    run(ticks)
    assert MediaWorkerBeat.objects.get(worker_id=WORKER_ID).seen_at > first


# --- re-securing, calls never relayed, what the caller's keys sound like ------------------
@pytest.mark.parametrize("reason", ["switch_line", "monitor_stop", "barge"])
def test_after_a_break_the_agent_keys_the_code_again_to_secure(alpha, worker, hub, reason):
    session = session_in_card_entry(alpha)
    call = start_call(alpha.tenant)

    async def scenario():
        await start(worker, call)
        relayed = worker.relay.calls[str(call.pk)]
        states = []
        for step in (lambda: agent_keys(worker, call, session.code), lambda: event(worker, call, reason)) * 2:
            await step()
            states.append((await database_sync_to_async(secure_state)(session), relayed.listen_for_agent_code))
        return states

    secured, broken = ((SecureState.SECURED, ""), False), ((SecureState.UNSECURED, service.CALL_BREAKS[reason]), True)
    assert run(scenario) == [secured, broken, secured, broken]  # after a break the agent's phone is heard again


def test_on_hold_the_agent_code_is_not_listened_for(alpha, worker, hub):
    session = session_in_card_entry(alpha)
    call = start_call(alpha.tenant)

    async def scenario():
        await start(worker, call)
        await agent_keys(worker, call, session.code)
        await event(worker, call, "hold")
        return worker.relay.calls[str(call.pk)].listen_for_agent_code  # unhold secures it again

    assert run(scenario) is False


def test_a_call_whose_start_never_reached_its_worker_ends_after_the_rtp_timeout(alpha, worker, hub):
    session = session_in_card_entry(alpha)
    lost, relayed, young = start_call(alpha.tenant), start_call(alpha.tenant), start_call(alpha.tenant)
    Call.objects.filter(pk=lost.pk).update(session=session)
    session.mark_secured("test", WORKER_ID)
    old = timezone.now() - timedelta(seconds=worker.rtp_timeout_s + 1)
    Call.objects.filter(pk__in=[lost.pk, relayed.pk]).update(created_at=old)

    async def scenario():
        await start(worker, relayed)  # the others' call.start was lost
        await worker._beat()

    run(scenario)
    lost.refresh_from_db()
    assert (lost.state, lost.end_reason) == (CallState.ENDED, EndReason.RTP_TIMEOUT)
    assert Call.objects.get(pk=relayed.pk).is_live and Call.objects.get(pk=young.pk).is_live
    assert secure_state(session) == (SecureState.UNSECURED, BreakReason.LINK_LOST)


@pytest.mark.parametrize("masking", ["tone", "silence"])
def test_the_caller_keys_sound_as_the_tenant_chose(alpha, worker, masking):
    alpha.tenant.key_masking = masking
    alpha.tenant.save()
    call = start_call(alpha.tenant)
    packets, sent = caller_packets("5", lead_ms=200)
    _audio, spans = keypad_audio("5", lead_ms=200)

    async def scenario():
        await start(worker, call)
        relayed = worker.relay.calls[str(call.pk)]
        heard = []
        for index, (_at, data) in enumerate(packets):
            received = relayed.receive(relayed.caller, data, 100.0 + index * 0.02)
            for results in [{relayed: received}, worker.relay.audio.flush()]:
                for out in results.values():
                    heard += [packet for leg, packet in out.datagrams if leg is relayed.agent]
        return heard

    heard = run(scenario)
    audio = np.concatenate([CODECS["PCMU"].decode(parse_rtp(packet).payload) for packet in heard])
    start_at = spans[0].start + int(HOLDBACK_MS * SAMPLE_RATE / 1000)  # the agent hears it this much later
    key = audio[start_at + 80 : start_at + spans[0].end - spans[0].start - 80].astype(np.int64)
    assert audio.size == sent.size  # one packet out per packet in
    assert detect(audio) == [] and detect(sent)[0].digit == "5"  # the key itself is gone, either way
    assert (np.abs(key).max() == 0) == (masking == "silence")
    assert (band_share(key, FLAT_TONE_HZ) > 0.9) == (masking == "tone")


def test_a_barging_supervisor_hears_no_caller_while_the_link_is_still_being_recorded(alpha, worker, monkeypatch):
    session = session_in_card_entry(alpha)
    call = start_call(alpha.tenant)
    with transaction.atomic():  # the worker's row is locked while ports are picked
        (port,) = calls_module.allocate_ports(WORKER_ID, 1)
    sue = {"mode": "barge", "port": port, "address": ""}
    Call.objects.filter(pk=call.pk).update(session=session, supervisors={"sue": sue})  # linked before it started
    session_open_seen = []

    def probe(method):
        async def probed(call_id, *args, **kwargs):
            session_open_seen.append((method.__name__, worker.relay.calls[call_id].session_open))
            return await method(call_id, *args, **kwargs)

        return probed

    monkeypatch.setattr(worker, "_supervisor", probe(worker._supervisor))
    original_link_session = worker._link_session

    def link_session(call_id, *args):
        session_open_seen.append(("_link_session", worker.relay.calls[call_id].session_open))
        return original_link_session(call_id, *args)

    monkeypatch.setattr(worker, "_link_session", link_session)

    async def scenario():
        await start(worker, call)

    run(scenario)
    assert session_open_seen == [("_supervisor", True), ("_link_session", True)]
    assert worker.relay.calls[str(call.pk)].session_open and secure_state(session) == (SecureState.SECURED, "")


def test_a_tick_while_the_link_is_being_recorded_leaves_the_session_open_for_the_call(alpha, worker, monkeypatch):
    session = session_in_card_entry(alpha)
    call = start_call(alpha.tenant)
    original_link_session = worker._link_session

    def link_session_with_a_tick_meanwhile(call_id, *args):
        worker._tick_once()  # the tick asks the hub, which holds no card entry yet
        return original_link_session(call_id, *args)

    async def scenario():
        await start(worker, call)
        worker.relay.calls[str(call.pk)].add_supervisor("boss", media_calls.BARGE)
        monkeypatch.setattr(worker, "_link_session", link_session_with_a_tick_meanwhile)
        await link(worker, call, session)
        worker._tick_once()
        return worker.relay.calls[str(call.pk)].session_open

    assert run(scenario) is True  # the barging supervisor hears nothing of the caller


def test_a_tick_while_a_call_moves_to_a_new_session_leaves_it_open_for_the_call(alpha, worker, hub, monkeypatch):
    first, second = session_in_card_entry(alpha), session_in_card_entry(alpha)
    call = start_call(alpha.tenant)
    original_break_session = worker._break_session
    seen = []

    def break_session_with_a_tick_meanwhile(call_id, *args):
        worker._tick_once()  # the first session has ended: its card entry is gone
        seen.append(worker.relay.calls[call_id].session_open)
        return original_break_session(call_id, *args)

    async def scenario():
        await start(worker, call)
        await link(worker, call, first)
        await database_sync_to_async(first.end)("test")
        hub.handle_command({"session": str(first.pk), "command": "end"})  # as the worker's listener applies it
        monkeypatch.setattr(worker, "_break_session", break_session_with_a_tick_meanwhile)
        await link(worker, call, second)  # the agent's next payment on the same call
        return worker.relay.calls[str(call.pk)].session_open

    assert run(scenario) is True and seen == [True]  # a barging supervisor never heard the caller meanwhile
