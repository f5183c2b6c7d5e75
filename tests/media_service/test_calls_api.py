"""Call control API: tenant walls, field errors. No worker needed (messages go nowhere)."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from datetime import timedelta

import pytest
from asgiref.sync import async_to_sync
from django.db import connection, transaction
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from media import service as media_service
from media.service import MediaWorker, parse_address
from securepay.calls import Call, MediaWorkerBeat, allocate_ports
from securepay.models import BreakReason, PaymentSession, SecureState
from tests.live.conftest import session_in_card_entry
from tests.support import missing
from tests.walls import wall_test


@pytest.fixture(autouse=True)
def _external_worker(settings, db):
    settings.MEDIA_WORKER_MODE = "external"
    MediaWorkerBeat.beat(settings.MEDIA_WORKER_ID)  # a worker that is running (none is: messages go nowhere)
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def api(world, method: str, path: str, data: dict | None = None):
    return getattr(Client(), method)(path, data or {}, content_type="application/json", **world.api_headers())


@wall_test(
    "api-call-list", "api-call-detail", "api-call-link", "api-call-events",
    "api-call-supervisors", "api-call-supervisor-detail",
)  # fmt: skip
def test_calls_are_walled_between_tenants(alpha, beta):
    created = api(alpha, "post", "/api/v1/calls/", {"codec": "PCMA"})
    assert created.status_code == 201
    body = created.json()
    assert body["caller_port"] != body["agent_port"] and body["codec"] == "PCMA"
    base = f"/api/v1/calls/{body['id']}/"
    assert api(alpha, "post", base + "supervisors/", {"name": "sue", "mode": "monitor"}).status_code == 201
    for method, path, data in [
        ("get", base, None),
        ("post", base + "link/", {"code": "1234"}),
        ("post", base + "events/", {"event": "hold"}),
        ("post", base + "supervisors/", {"name": "bob", "mode": "barge"}),
        ("delete", base + "supervisors/sue/", None),
    ]:
        assert api(beta, method, path, data).status_code == 404, path
    assert api(alpha, "get", base).json()["supervisors"][0]["name"] == "sue"
    assert api(alpha, "delete", base + "supervisors/sue/").status_code == 204


def test_bad_input_gets_field_errors(alpha):
    bad = api(alpha, "post", "/api/v1/calls/", {"codec": "G729", "event_payload_type": 13, "caller_address": "x"})
    assert bad.status_code == 400
    assert set(bad.json()) == {"codec", "event_payload_type", "caller_address"}
    call = api(alpha, "post", "/api/v1/calls/").json()
    base = f"/api/v1/calls/{call['id']}/"
    assert set(api(alpha, "post", base + "events/", {"event": "dance"}).json()) == {"event"}
    assert set(api(alpha, "post", base + "link/", {"code": "12"}).json()) == {"code"}
    assert set(api(alpha, "post", base + "supervisors/", {"name": "agent", "mode": "x"}).json()) == {"name", "mode"}
    assert Call.objects.get(pk=call["id"]).session is None


def test_needs_an_api_key(alpha):
    client = alpha.client_for("admin")
    assert client.post("/api/v1/calls/", {}, content_type="application/json").status_code in (401, 403)


BAD_ADDRESSES = [
    "192.0.2.10:" + "0" * 80 + "4000",  # int() would read 4000; too long for the column
    "fe80::1%" + "e" * 80 + ":4000",  # a scope id of any length
    "192.0.2.10:04000", "192.0.2.10:+4000", "192.0.2.10: 4000", "192.0.2.10:4_000", "192.0.2.10:４０００",
    "192.0.2.10:0", "192.0.2.10:65536", "192.0.2.10", "192.0.2.10:", ":4000", "pbx.example:4000",
    "fe80::1%eth 0:4000", "224.0.0.1:4000", "0.0.0.0:4000", "255.255.255.255:4000", "[::]:4000",
    "ff02::1:4000", "::ffff:224.0.0.1:4000",
]  # fmt: skip


@pytest.mark.parametrize("address", BAD_ADDRESSES)
def test_bad_peer_address_gets_a_field_error_and_changes_nothing(alpha, address):
    call = api(alpha, "post", "/api/v1/calls/").json()
    base = f"/api/v1/calls/{call['id']}/"
    bad = api(alpha, "post", "/api/v1/calls/", {"caller_address": address, "agent_address": address})
    assert bad.status_code == 400
    assert set(bad.json()) == {"caller_address", "agent_address"}
    bad = api(alpha, "post", base + "supervisors/", {"name": "sue", "mode": "monitor", "address": address})
    assert bad.status_code == 400 and set(bad.json()) == {"address"}
    assert list(Call.objects.values_list("pk", "supervisors")) == [(uuid.UUID(call["id"]), {})]


@pytest.mark.parametrize(
    "given, stored, peer",
    [
        ("127.0.0.1:4000", "127.0.0.1:4000", ("127.0.0.1", 4000)),
        (" 192.0.2.10:65535 ", "192.0.2.10:65535", ("192.0.2.10", 65535)),
        ("2001:DB8:0:0::1:4000", "2001:db8::1:4000", ("2001:db8::1", 4000)),
        ("[2001:db8::1]:4000", "2001:db8::1:4000", ("2001:db8::1", 4000)),
        ("[fe80::1%eth0]:4000", "fe80::1%eth0:4000", ("fe80::1%eth0", 4000)),
        ("[::ffff:7f00:1]:4000", "::ffff:127.0.0.1:4000", ("::ffff:127.0.0.1", 4000)),  # as a socket reports it
        ("", "", None),
    ],
)
def test_peer_addresses_are_stored_as_the_worker_reads_them(alpha, settings, given, stored, peer):
    settings.MEDIA_RTP_HOST = "::" if peer and ":" in peer[0] else "0.0.0.0"  # workers of the peer's family
    created = api(alpha, "post", "/api/v1/calls/", {"caller_address": given, "agent_address": given})
    assert created.status_code == 201 and created.json()["caller_address"] == stored
    call = Call.objects.get(pk=created.json()["id"])
    assert (call.caller_address, call.agent_address) == (stored, stored)
    supervisor = {"name": "sue", "mode": "monitor", "address": given}
    added = api(alpha, "post", f"/api/v1/calls/{call.pk}/supervisors/", supervisor)
    assert added.status_code == 201 and added.json()["address"] == stored
    call.refresh_from_db()
    assert call.supervisors["sue"]["address"] == stored
    assert parse_address(stored) == peer


ANN = {"mode": "monitor", "port": 40100, "address": ""}


def wait_for_a_lock_waiter(timeout: float = 5.0) -> None:
    """Until another connection of this database waits for a row lock (the request under test)."""
    deadline = time.monotonic() + timeout
    with connection.cursor() as cursor:
        while time.monotonic() < deadline:
            cursor.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                " AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()"
            )
            if cursor.fetchone()[0]:
                return
            time.sleep(0.01)
    raise AssertionError("the request never waited for the locked row")


def while_another_transaction_holds(rows, change, send_request):
    """Send the request while another transaction holds `rows` (locked with select_for_update);
    once the request waits for the lock, that transaction makes `change()` and commits.
    Returns the request's response."""
    if connection.vendor != "postgresql":
        missing("row locks are only real on PostgreSQL (DATABASE_URL), as in CI")
    locked, failures = threading.Event(), []

    def concurrent_transaction() -> None:
        try:
            with transaction.atomic():
                list(rows.select_for_update())
                locked.set()
                wait_for_a_lock_waiter()
                change()
        except Exception as exc:  # reported by the test below, not lost in the thread
            failures.append(exc)
            locked.set()
        finally:
            connection.close()

    other = threading.Thread(target=concurrent_transaction)
    other.start()
    assert locked.wait(5)
    response = send_request()
    other.join(10)
    assert not failures, failures
    return response


def during_a_concurrent_change(call_id: str, send_request):
    """Send the request while another transaction holds the call's row, then commits a
    supervisor of its own ("ann"): the request must build on that change, not overwrite it."""

    def add_ann() -> None:
        row = Call.objects.get(pk=call_id)
        row.supervisors["ann"] = ANN
        row.save(update_fields=["supervisors"])

    return while_another_transaction_holds(Call.objects.filter(pk=call_id), add_ann, send_request)


def call_with_sue(world) -> tuple[str, str]:
    call = api(world, "post", "/api/v1/calls/").json()
    base = f"/api/v1/calls/{call['id']}/"
    assert api(world, "post", base + "supervisors/", {"name": "sue", "mode": "monitor"}).status_code == 201
    return call["id"], base


def test_a_supervisor_added_concurrently_is_kept(transactional_db, alpha):
    call_id, base = call_with_sue(alpha)
    response = during_a_concurrent_change(
        call_id, lambda: api(alpha, "post", base + "supervisors/", {"name": "bob", "mode": "barge"})
    )
    assert response.status_code == 201
    assert set(Call.objects.get(pk=call_id).supervisors) == {"sue", "ann", "bob"}


def test_a_supervisor_removed_while_another_is_added_leaves_the_other(transactional_db, alpha):
    call_id, base = call_with_sue(alpha)
    response = during_a_concurrent_change(call_id, lambda: api(alpha, "delete", base + "supervisors/sue/"))
    assert response.status_code == 204
    assert Call.objects.get(pk=call_id).supervisors == {"ann": ANN}


@pytest.mark.parametrize(
    "event, sue_after",
    [
        ({"event": "hold"}, "monitor"),
        ({"event": "barge", "supervisor": "sue"}, "barge"),
        ({"event": "monitor_stop", "supervisor": "sue"}, None),
    ],
)
def test_events_keep_a_supervisor_added_concurrently(transactional_db, alpha, event, sue_after):
    call_id, base = call_with_sue(alpha)
    response = during_a_concurrent_change(call_id, lambda: api(alpha, "post", base + "events/", event))
    assert response.status_code == 202
    supervisors = Call.objects.get(pk=call_id).supervisors
    assert supervisors["ann"] == ANN
    assert supervisors.get("sue", {}).get("mode") == sue_after


def test_a_peer_of_another_address_family_than_the_workers_is_refused(alpha, settings):
    settings.MEDIA_RTP_HOST = "0.0.0.0"
    refused = api(alpha, "post", "/api/v1/calls/", {"caller_address": "[2001:db8::1]:4000"})
    assert refused.status_code == 400
    assert "IPv4" in refused.json()["caller_address"][0]
    assert not Call.objects.exists()


# --- the media worker must be there ------------------------------------------------------
def test_no_call_is_started_on_a_worker_that_shows_no_sign_of_life(alpha, settings):
    MediaWorkerBeat.objects.update(seen_at=timezone.now() - timedelta(minutes=1))  # stopped a minute ago
    refused = api(alpha, "post", "/api/v1/calls/")
    assert refused.status_code == 503 and refused.json()["code"] == "worker_unavailable"
    MediaWorkerBeat.objects.all().delete()  # never started
    assert api(alpha, "post", "/api/v1/calls/").json()["code"] == "worker_unavailable"
    assert not Call.objects.exists()


def test_a_busy_worker_gets_no_new_call_until_its_load_falls(alpha, settings):
    settings.MEDIA_WORKER_MAX_LOAD = 0.7
    MediaWorkerBeat.beat(settings.MEDIA_WORKER_ID, load=0.7, calls=0)  # as measured between its last two beats
    refused = api(alpha, "post", "/api/v1/calls/")
    assert refused.status_code == 503 and refused.json()["code"] == "worker_busy"
    assert "70% of its core" in refused.json()["detail"]
    assert not Call.objects.exists()
    MediaWorkerBeat.beat(settings.MEDIA_WORKER_ID)  # a beat that measured nothing keeps the last load
    assert api(alpha, "post", "/api/v1/calls/").json()["code"] == "worker_busy"
    MediaWorkerBeat.beat(settings.MEDIA_WORKER_ID, load=0.69, calls=0)
    assert api(alpha, "post", "/api/v1/calls/").status_code == 201


def test_calls_beyond_those_the_last_beat_measured_count_at_what_a_call_cost_then(alpha, settings):
    settings.MEDIA_WORKER_MAX_LOAD = 0.72
    relayed = [api(alpha, "post", "/api/v1/calls/").json()["id"] for _ in range(10)]
    MediaWorkerBeat.beat(settings.MEDIA_WORKER_ID, load=0.5, calls=10)  # 5% of the core a call
    assert [api(alpha, "post", "/api/v1/calls/").status_code for _ in range(5)] == [201] * 5  # up to 70%
    refused = api(alpha, "post", "/api/v1/calls/")  # 75% with a sixth
    assert refused.status_code == 503 and refused.json()["code"] == "worker_busy"
    assert refused.json()["detail"] == (
        "media worker main is busy (75% of its core in use, counting 5 call(s) it had not measured, limit 72%)"
    )
    assert Call.objects.count() == 15
    assert api(alpha, "post", f"/api/v1/calls/{relayed[0]}/events/", {"event": "hangup"}).status_code == 202
    assert api(alpha, "post", "/api/v1/calls/").status_code == 201  # a call ended: room for one
    MediaWorkerBeat.beat(settings.MEDIA_WORKER_ID, load=0.6, calls=15)  # the next beat measured them all
    assert api(alpha, "post", "/api/v1/calls/").status_code == 201  # 60%: every live call measured


def test_a_worker_at_its_call_cap_gets_no_new_call_and_ended_calls_do_not_count(alpha, beta, settings):
    settings.MEDIA_WORKER_MAX_CALLS = 2
    first = api(alpha, "post", "/api/v1/calls/").json()
    assert api(beta, "post", "/api/v1/calls/").status_code == 201  # the cap is the worker's, over all tenants
    refused = api(alpha, "post", "/api/v1/calls/")
    assert refused.status_code == 503 and refused.json()["code"] == "worker_busy"
    assert "MEDIA_WORKER_MAX_CALLS" in refused.json()["detail"]
    assert Call.objects.count() == 2
    assert api(alpha, "post", f"/api/v1/calls/{first['id']}/events/", {"event": "hangup"}).status_code == 202
    assert api(alpha, "post", "/api/v1/calls/").status_code == 201
    settings.MEDIA_WORKER_MAX_CALLS = 0  # no cap
    assert api(alpha, "post", "/api/v1/calls/").status_code == 201


def test_call_starts_on_one_worker_take_turns_so_its_cap_holds(transactional_db, alpha, settings):
    """Another start holds the worker's row and adds the call that reaches the cap: the
    request waits for it and counts that call, rather than both passing the count."""
    settings.MEDIA_WORKER_MAX_CALLS = 1

    def add_the_capping_call() -> None:
        Call.objects.create(
            tenant=alpha.tenant, worker_id=settings.MEDIA_WORKER_ID, host="127.0.0.1",
            caller_port=40000, agent_port=40001,
        )  # fmt: skip

    refused = while_another_transaction_holds(
        MediaWorkerBeat.objects.filter(worker_id=settings.MEDIA_WORKER_ID),
        add_the_capping_call,
        lambda: api(alpha, "post", "/api/v1/calls/"),
    )
    assert refused.status_code == 503 and refused.json()["code"] == "worker_busy"
    assert Call.objects.count() == 1


def test_ports_are_picked_only_inside_a_transaction_that_holds_the_workers_row(transactional_db, settings):
    with pytest.raises(RuntimeError, match="needs a transaction"):
        allocate_ports(settings.MEDIA_WORKER_ID, 2)  # its lock would end before the ports are written
    with transaction.atomic():
        assert len(set(allocate_ports(settings.MEDIA_WORKER_ID, 2))) == 2


def test_an_in_process_worker_that_fails_to_start_gets_503_not_a_hung_request(
    transactional_db, alpha, settings, monkeypatch
):
    settings.MEDIA_WORKER_MODE = "inprocess"
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

    def database_down(self) -> None:
        raise OSError("database unreachable")

    monkeypatch.setattr(MediaWorker, "recover", database_down)
    refused = api(alpha, "post", "/api/v1/calls/")
    assert refused.status_code == 503 and refused.json()["code"] == "worker_unavailable"
    assert "database unreachable" in refused.json()["detail"]
    assert not Call.objects.exists()


# --- hang-up --------------------------------------------------------------------------
def test_a_hangup_ends_the_call_at_once_and_a_replay_changes_nothing(alpha):
    call = api(alpha, "post", "/api/v1/calls/").json()
    base = f"/api/v1/calls/{call['id']}/"
    hung_up = api(alpha, "post", base + "events/", {"event": "hangup"})
    assert hung_up.status_code == 202
    assert (hung_up.json()["state"], hung_up.json()["end_reason"]) == ("ended", "hangup")
    ended_at = Call.objects.get(pk=call["id"]).ended_at
    again = api(alpha, "post", base + "events/", {"event": "hangup"})
    assert again.status_code == 409 and again.json()["code"] == "call_ended"
    session = session_in_card_entry(alpha)
    late_link = api(alpha, "post", base + "link/", {"code": session.code})
    assert late_link.status_code == 409
    row = Call.objects.get(pk=call["id"])
    assert (row.ended_at, row.session) == (ended_at, None)


def test_a_hangup_unsecures_the_session_even_with_its_worker_gone(transactional_db, alpha):
    session = session_in_card_entry(alpha)
    call = api(alpha, "post", "/api/v1/calls/").json()
    base = f"/api/v1/calls/{call['id']}/"
    assert api(alpha, "post", base + "link/", {"code": session.code}).status_code == 200
    session.mark_secured("media-worker", "main")  # as the worker did; nothing relays the call now
    assert api(alpha, "post", base + "events/", {"event": "hangup"}).status_code == 202
    session.refresh_from_db()
    assert (session.secure_state, session.break_reason) == (SecureState.UNSECURED, BreakReason.HANGUP)
    last = session.events.filter(kind="secure").order_by("at", "pk").last()
    assert last.actor == f"api:{alpha.api_key.prefix}"
    assert session.events.filter(kind="secure", detail=BreakReason.HANGUP).count() == 1


def test_a_hangup_leaves_a_session_claimed_and_secured_before_its_unsecuring_ran(
    alpha, django_capture_on_commit_callbacks
):
    session = session_in_card_entry(alpha)
    first = api(alpha, "post", "/api/v1/calls/").json()
    assert api(alpha, "post", f"/api/v1/calls/{first['id']}/link/", {"code": session.code}).status_code == 200
    with django_capture_on_commit_callbacks() as after_commit, transaction.atomic():
        Call.objects.select_for_update().get(pk=first["id"]).hang_up("api:test")
    second = api(alpha, "post", "/api/v1/calls/").json()  # meanwhile another call takes the session ...
    assert api(alpha, "post", f"/api/v1/calls/{second['id']}/link/", {"code": session.code}).status_code == 200
    session.mark_secured("media-worker", "main")  # ... and its worker secures it
    for callback in after_commit:  # the hang-up's unsecuring runs only now
        callback()
    session.refresh_from_db()
    assert session.secure_state == SecureState.SECURED


def test_a_hangup_leaves_a_session_another_live_call_took_since(transactional_db, alpha):
    session = session_in_card_entry(alpha)
    first = api(alpha, "post", "/api/v1/calls/").json()
    second = api(alpha, "post", "/api/v1/calls/").json()
    assert api(alpha, "post", f"/api/v1/calls/{first['id']}/link/", {"code": session.code}).status_code == 200
    assert api(alpha, "post", f"/api/v1/calls/{second['id']}/link/", {"code": session.code}).status_code == 200
    session.mark_secured("media-worker", "main")  # for the second call
    assert api(alpha, "post", f"/api/v1/calls/{first['id']}/events/", {"event": "hangup"}).status_code == 202
    session.refresh_from_db()
    assert session.secure_state == SecureState.SECURED


# --- linking ------------------------------------------------------------------------------
@wall_test("api-call-link")
def test_a_call_cannot_link_to_another_tenants_session_by_its_code(alpha, beta):
    theirs = session_in_card_entry(beta)
    call = api(alpha, "post", "/api/v1/calls/").json()
    refused = api(alpha, "post", f"/api/v1/calls/{call['id']}/link/", {"code": theirs.code})
    unused = next(f"{n:04d}" for n in range(10000) if not PaymentSession.objects.filter(code=f"{n:04d}").exists())
    unknown = api(alpha, "post", f"/api/v1/calls/{call['id']}/link/", {"code": unused})
    assert refused.status_code == unknown.status_code == 400
    assert refused.json() == unknown.json()  # nothing tells that the code exists elsewhere
    assert Call.objects.get(pk=call["id"]).session is None
    theirs.refresh_from_db()
    assert theirs.secure_state == SecureState.UNSECURED and not theirs.calls.exists()


def test_a_session_that_ended_cannot_be_linked(alpha):
    session = session_in_card_entry(alpha)
    session.end("test")
    call = api(alpha, "post", "/api/v1/calls/").json()
    refused = api(alpha, "post", f"/api/v1/calls/{call['id']}/link/", {"code": session.code})
    assert refused.status_code == 400 and set(refused.json()) == {"code"}
    assert Call.objects.get(pk=call["id"]).session is None


# --- events and supervisors: what each one concerns --------------------------------------
def test_a_break_is_never_refused_for_what_it_says_of_supervisors(alpha, monkeypatch):
    sent = []
    monkeypatch.setattr("securepay.calls.tell_worker", lambda call, message: sent.append(message))
    call_id, base = call_with_sue(alpha)
    # A barge or monitor stop on the PBX's side names no leg of ours; a stray name on a hold is no reason
    # to leave the session secured (fail closed).
    bodies = [
        {"event": "hold", "supervisor": "sue"},
        {"event": "switch_line", "supervisor": None},
        {"event": "monitor_stop"},
        {"event": "barge", "supervisor": "Zed Smith"},  # no leg of this call
        {"event": "monitor_stop", "supervisor": ""},
    ]
    for body in bodies:
        assert api(alpha, "post", base + "events/", body).status_code == 202, body
    events = [(m["event"], m["supervisor"]) for m in sent if m["type"] == "call.event"]
    assert events == [(body["event"], None) for body in bodies]
    assert Call.objects.get(pk=call_id).supervisors["sue"]["mode"] == "monitor"  # her leg untouched


def test_bad_input_on_an_ended_call_is_still_a_field_error(alpha):
    call = api(alpha, "post", "/api/v1/calls/").json()
    base = f"/api/v1/calls/{call['id']}/"
    assert api(alpha, "post", base + "events/", {"event": "hangup"}).status_code == 202
    assert set(api(alpha, "post", base + "events/", {"event": "dance"}).json()) == {"event"}
    assert set(api(alpha, "post", base + "link/", {"code": "12"}).json()) == {"code"}
    assert set(api(alpha, "post", base + "supervisors/", {"name": "sue", "mode": "x"}).json()) == {"mode"}


def test_adding_a_supervisor_again_changes_nothing(alpha):
    call_id, base = call_with_sue(alpha)
    before = Call.objects.get(pk=call_id).supervisors
    again = api(alpha, "post", base + "supervisors/", {"name": "sue", "mode": "monitor"})
    assert again.status_code == 200 and again.json() == {"name": "sue", **before["sue"]}
    moved = api(alpha, "post", base + "supervisors/", {"name": "sue", "mode": "monitor", "address": "192.0.2.7:4000"})
    assert moved.status_code == 409 and moved.json()["code"] == "supervisor_exists"
    assert Call.objects.get(pk=call_id).supervisors == before


def test_a_supervisor_who_barged_cannot_monitor_again_while_the_session_is_open(alpha):
    call_id, base = call_with_sue(alpha)
    session = session_in_card_entry(alpha)
    assert api(alpha, "post", base + "link/", {"code": session.code}).status_code == 200
    assert api(alpha, "post", base + "events/", {"event": "barge", "supervisor": "sue"}).status_code == 202
    refused = api(alpha, "post", base + "supervisors/", {"name": "sue", "mode": "monitor"})
    assert refused.status_code == 409 and refused.json()["code"] == "barged_during_session"
    assert Call.objects.get(pk=call_id).supervisors["sue"]["mode"] == "barge"
    session.end("test")
    back = api(alpha, "post", base + "supervisors/", {"name": "sue", "mode": "monitor"})
    assert back.status_code == 200 and back.json()["mode"] == "monitor"


@pytest.mark.parametrize("leave", ["delete", "monitor_stop"])
def test_a_supervisor_who_barged_and_left_cannot_come_back_to_monitor_while_the_session_is_open(alpha, leave):
    call_id, base = call_with_sue(alpha)
    session = session_in_card_entry(alpha)
    assert api(alpha, "post", base + "link/", {"code": session.code}).status_code == 200
    assert api(alpha, "post", base + "events/", {"event": "barge", "supervisor": "sue"}).status_code == 202
    if leave == "delete":
        assert api(alpha, "delete", base + "supervisors/sue/").status_code == 204
    else:
        assert api(alpha, "post", base + "events/", {"event": "monitor_stop", "supervisor": "sue"}).status_code == 202
    assert "sue" not in Call.objects.get(pk=call_id).supervisors
    refused = api(alpha, "post", base + "supervisors/", {"name": "sue", "mode": "monitor"})
    assert refused.status_code == 409 and refused.json()["code"] == "barged_during_session"
    assert "sue" not in Call.objects.get(pk=call_id).supervisors  # no leg, no port taken
    # Barging again is what she may do; another supervisor may still monitor.
    assert api(alpha, "post", base + "supervisors/", {"name": "sue", "mode": "barge"}).status_code == 201
    assert api(alpha, "post", base + "supervisors/", {"name": "tom", "mode": "monitor"}).status_code == 201
    assert api(alpha, "delete", base + "supervisors/sue/").status_code == 204
    # The next session on this call is a new one: she may monitor it.
    session.end("test")
    later = session_in_card_entry(alpha)
    assert api(alpha, "post", base + "link/", {"code": later.code}).status_code == 200
    back = api(alpha, "post", base + "supervisors/", {"name": "sue", "mode": "monitor"})
    assert back.status_code == 201 and back.json()["mode"] == "monitor"


@pytest.mark.parametrize("first_call", ["moved", "hung_up"])
def test_a_supervisor_who_barged_cannot_monitor_another_call_of_the_open_session(alpha, first_call):
    """The session goes to another call (the caller rang back, a transfer): she barged during
    it on the first call, so she does not monitor the new one while it is open either."""
    _first_id, first = call_with_sue(alpha)
    session = session_in_card_entry(alpha)
    assert api(alpha, "post", first + "link/", {"code": session.code}).status_code == 200
    assert api(alpha, "post", first + "events/", {"event": "barge", "supervisor": "sue"}).status_code == 202
    if first_call == "hung_up":
        assert api(alpha, "post", first + "events/", {"event": "hangup"}).status_code == 202
    second = f"/api/v1/calls/{api(alpha, 'post', '/api/v1/calls/').json()['id']}/"
    assert api(alpha, "post", second + "link/", {"code": session.code}).status_code == 200
    refused = api(alpha, "post", second + "supervisors/", {"name": "sue", "mode": "monitor"})
    assert refused.status_code == 409 and refused.json()["code"] == "barged_during_session"
    assert api(alpha, "post", second + "supervisors/", {"name": "tom", "mode": "monitor"}).status_code == 201


def test_a_supervisor_barging_before_the_session_barges_during_it_once_linked(alpha):
    call_id, base = call_with_sue(alpha)
    assert api(alpha, "post", base + "supervisors/", {"name": "sue", "mode": "barge"}).status_code == 200
    session = session_in_card_entry(alpha)
    assert api(alpha, "post", base + "link/", {"code": session.code}).status_code == 200
    assert api(alpha, "delete", base + "supervisors/sue/").status_code == 204
    refused = api(alpha, "post", base + "supervisors/", {"name": "sue", "mode": "monitor"})
    assert refused.status_code == 409 and refused.json()["code"] == "barged_during_session"
    assert "sue" not in Call.objects.get(pk=call_id).supervisors


def test_the_schema_documents_what_the_call_endpoints_answer():
    schema = Client().get(reverse("api-schema") + "?format=json").json()
    paths = schema["paths"]
    base = "/api/v1/calls/{call_id}/"
    operations = {
        ("/api/v1/calls/", "post"): {"201", "400", "401", "403", "503"},
        (base, "get"): {"200", "401", "403", "404"},
        (base + "link/", "post"): {"200", "400", "401", "403", "404", "409"},
        (base + "events/", "post"): {"202", "400", "401", "403", "404", "409"},
        (base + "supervisors/", "post"): {"200", "201", "400", "401", "403", "404", "409", "503"},
        (base + "supervisors/{name}/", "delete"): {"204", "401", "403", "404", "409"},
    }
    for (path, method), codes in operations.items():
        operation = paths[path][method]
        assert set(operation["responses"]) == codes, (path, method)
        assert all("cookieAuth" not in scheme for scheme in operation["security"]), (path, method)


def test_requests_arriving_while_the_in_process_worker_starts_wait_until_it_is_ready(transactional_db, settings):
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

    async def two_requests() -> list[bool]:
        async def request() -> bool:
            await media_service.ensure_inprocess()
            worker, _task = media_service._inprocess[id(asyncio.get_running_loop())]
            return worker.ready.is_set()

        answers = await asyncio.gather(request(), request())
        _worker, task = media_service._inprocess.pop(id(asyncio.get_running_loop()))
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return answers

    assert async_to_sync(two_requests)() == [True, True]
    assert MediaWorkerBeat.alive(settings.MEDIA_WORKER_ID).exists()
