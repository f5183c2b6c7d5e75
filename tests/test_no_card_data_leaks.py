"""After a whole payment, no store holds the card: database, Redis, broker
messages, channel-layer messages, logs, webhook bodies, API answers.

The search looks for the PAN (plain and spaced), the CVV and the expiry as
whole tokens, so a CVV of "737" is not "found" inside some uuid's hex. Each
test then plants the card in every store and checks the same search finds it:
a check that cannot fail proves nothing.
"""

from __future__ import annotations

import io
import json
import logging
import re
import threading
import traceback
from collections.abc import Callable, Iterator

import pytest
from celery.signals import before_task_publish, task_prerun
from django.core.management import call_command
from django.db import connection

from securepay.models import SessionEvent
from tests.gateways.conftest import (  # noqa: F401 - fixtures used by these tests
    _payment_settings,
    fast_retries,
    key_card,
    open_card_entry,
    press_process_payment,
    start_worker,
    wait_until,
    webhook_receiver,
    worker_env,
)

PAN, CVV, EXPIRY = "4111111111111111", "737", "0837"
SECRETS = {
    "PAN": re.compile(rf"{PAN}|{' '.join(PAN[i:i + 4] for i in range(0, 16, 4))}"),
    "CVV": re.compile(rf"(?<![0-9A-Za-z]){CVV}(?![0-9A-Za-z])"),
    "expiry": re.compile(rf"(?<![0-9A-Za-z]){EXPIRY}(?![0-9A-Za-z])"),
}


def leaks(stores: dict[str, list[str]]) -> list[tuple[str, str, str]]:
    """(store, secret, context) for every hit."""
    found = []
    for store, texts in stores.items():
        for text in texts:
            for name, pattern in SECRETS.items():
                for hit in pattern.finditer(text):
                    found.append((store, name, text[max(0, hit.start() - 60):hit.end() + 60]))
    return found


class Recorder:
    """Everything a payment sends anywhere in this process, as text."""

    def __init__(self) -> None:
        self.logs: list[str] = []
        self.celery_messages: list[str] = []
        self.channel_messages: list[str] = []
        self.redis_commands: list[str] = []


class CapturingHandler(logging.Handler):
    def __init__(self, sink: list[str]) -> None:
        super().__init__(logging.DEBUG)
        self.sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        text = f"{record.name} {record.levelname} {record.getMessage()}"
        if record.exc_info:
            text += "\n" + "".join(traceback.format_exception(*record.exc_info))
        self.sink.append(text)


@pytest.fixture
def recorder(monkeypatch) -> Iterator[Recorder]:
    from channels.layers import InMemoryChannelLayer

    rec = Recorder()
    handler = CapturingHandler(rec.logs)
    root = logging.getLogger()
    previous_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)

    def on_publish(body=None, headers=None, **kwargs) -> None:
        rec.celery_messages.append(json.dumps({"body": body, "headers": headers}, default=str))

    def on_prerun(args=None, kwargs=None, **extra) -> None:  # eager runs publish nothing: record the call
        rec.celery_messages.append(json.dumps({"args": args, "kwargs": kwargs}, default=str))

    before_task_publish.connect(on_publish, weak=False)
    task_prerun.connect(on_prerun, weak=False)
    original_group_send = InMemoryChannelLayer.group_send

    async def recording_group_send(self, group, message):
        rec.channel_messages.append(json.dumps({"group": group, "message": message}, default=str))
        return await original_group_send(self, group, message)

    monkeypatch.setattr(InMemoryChannelLayer, "group_send", recording_group_send)
    yield rec
    before_task_publish.disconnect(on_publish)
    task_prerun.disconnect(on_prerun)
    root.removeHandler(handler)
    root.setLevel(previous_level)


def redis_client(db: int):
    import redis

    return redis.Redis(host="127.0.0.1", port=6379, db=db, socket_connect_timeout=1)


def redis_reachable() -> bool:
    try:
        return bool(redis_client(0).ping())
    except Exception:  # redis.ConnectionError and friends: no Redis here
        return False


def monitor_redis(sink: list[str]) -> Callable[[], None]:
    """Record every command any client sends to Redis (broker pushes, PUBLISH to pages,
    vault writes) until the returned stop function is called."""
    stop = threading.Event()
    monitor = redis_client(0).monitor()
    monitor.__enter__()  # sends MONITOR; from now on every command is echoed to this connection

    def listen() -> None:
        while not stop.is_set():
            try:
                sink.append(monitor.next_command()["command"])
            except Exception:  # the connection closed on stop
                return

    thread = threading.Thread(target=listen, daemon=True)
    thread.start()

    def stop_monitoring() -> None:
        stop.set()
        monitor.connection.disconnect()
        thread.join(timeout=5)

    return stop_monitoring


def dump_redis() -> list[str]:
    """Every key and value of every Redis database."""
    texts = []
    for db in range(16):
        client = redis_client(db)
        for key in client.scan_iter(count=1000):
            texts.append(f"db{db} {key!r} {redis_value(client, key)!r}")
    return texts


def redis_value(client, key: bytes) -> object:
    kind = client.type(key).decode()
    if kind == "string":
        return client.get(key)
    if kind == "list":
        return client.lrange(key, 0, -1)
    if kind == "hash":
        return client.hgetall(key)
    if kind == "set":
        return client.smembers(key)
    if kind == "zset":
        return client.zrange(key, 0, -1)
    return kind


def dump_database() -> list[str]:
    out = io.StringIO()
    call_command("dumpdata", stdout=out)
    texts = [out.getvalue()]
    with connection.cursor() as cursor:
        for table in connection.introspection.table_names(cursor):
            cursor.execute(f"SELECT * FROM {connection.ops.quote_name(table)}")  # noqa: S608 - introspected names
            texts.append(f"{table}: {cursor.fetchall()!r}")
    return texts


def collect(recorder: Recorder, extra: dict[str, list[str]]) -> dict[str, list[str]]:
    stores = {
        "database": dump_database(),
        "logs": recorder.logs,
        "celery messages": recorder.celery_messages,
        "channel layer": recorder.channel_messages,
        "redis commands": recorder.redis_commands,
        **extra,
    }
    if redis_reachable():
        stores["redis"] = dump_redis()
    return stores


def plant_card_everywhere(recorder: Recorder, session) -> None:
    """What a leak would look like: the card in the database, a log line, Redis."""
    SessionEvent.record(session, "test", "transition", "", "ended", f"card {PAN} cvv {CVV} exp {EXPIRY}")
    logging.getLogger("securepay.test").error("leaked %s %s %s", PAN, CVV, EXPIRY)
    recorder.channel_messages.append(json.dumps({"pan": PAN}))
    if redis_reachable():
        redis_client(13).set("securepay:test:planted", json.dumps({"pan": PAN, "cvv": CVV, "exp": EXPIRY}))


def assert_search_finds_planted(recorder: Recorder, session, extra: dict[str, list[str]]) -> None:
    plant_card_everywhere(recorder, session)
    try:
        found = {(store, name) for store, name, _ in leaks(collect(recorder, extra))}
    finally:
        if redis_reachable():
            redis_client(13).delete("securepay:test:planted")
    expected = {("database", "PAN"), ("database", "CVV"), ("database", "expiry"), ("logs", "PAN"), ("logs", "CVV"),
                ("logs", "expiry"), ("channel layer", "PAN")}
    if redis_reachable():
        expected |= {("redis", "PAN"), ("redis", "CVV"), ("redis", "expiry")}
    assert expected <= found, f"the search missed planted card data: {sorted(expected - found)}"


def api_answer(world, session) -> list[str]:
    return [world.client_for("admin").get(f"/api/v1/sessions/{session.pk}/").content.decode()]


@pytest.mark.usefixtures("fast_retries")
def test_eager_payment_leaves_no_card_data(alpha, recorder, webhook_receiver,  # noqa: F811 - imported fixture
                                           django_capture_on_commit_callbacks):
    url, inbox = webhook_receiver(alpha.tenant.webhook_secret)
    stop_monitor = monitor_redis(recorder.redis_commands) if redis_reachable() else (lambda: None)
    try:
        session = open_card_entry(alpha, callback_url=url)
        key_card(session, PAN, CVV, EXPIRY)
        with django_capture_on_commit_callbacks(execute=True):
            attempt = press_process_payment(session)
        with django_capture_on_commit_callbacks(execute=True):
            session.end("user:agent")
        inbox.wait_for(2)
    finally:
        stop_monitor()
    attempt.refresh_from_db()
    assert attempt.status == "approved" and attempt.last4 == PAN[-4:]
    webhook_bodies = [r["body"].decode() for r in inbox.received]
    assert len(webhook_bodies) == 2 and recorder.celery_messages and recorder.channel_messages and recorder.logs
    extra = {"webhook bodies": webhook_bodies, "API": api_answer(alpha, session)}

    assert leaks(collect(recorder, extra)) == []
    assert_search_finds_planted(recorder, session, extra)


@pytest.mark.celery_worker
@pytest.mark.postgres
@pytest.mark.redis
@pytest.mark.timeout(120)
def test_real_worker_payment_leaves_no_card_data(alpha, recorder, start_worker, webhook_receiver):  # noqa: F811
    url, inbox = webhook_receiver(alpha.tenant.webhook_secret)
    stop_monitor = monitor_redis(recorder.redis_commands)
    try:
        worker = start_worker()
        session = open_card_entry(alpha, callback_url=url)
        key_card(session, PAN, CVV, EXPIRY)
        attempt = press_process_payment(session)
        wait_until(lambda: inbox.wait_for(1, timeout=0.1) != [], 30, "the payment webhook")
        session.end("user:agent")
        inbox.wait_for(2)
    finally:
        stop_monitor()
    attempt.refresh_from_db()
    assert attempt.status == "approved" and attempt.last4 == PAN[-4:]
    webhook_bodies = [r["body"].decode() for r in inbox.received]
    assert len(webhook_bodies) == 2 and recorder.celery_messages and recorder.redis_commands
    assert any("LPUSH" in command or "lpush" in command.lower() for command in recorder.redis_commands)
    extra = {"webhook bodies": webhook_bodies, "API": api_answer(alpha, session), "worker log": [worker.log()]}

    assert leaks(collect(recorder, extra)) == []
    assert_search_finds_planted(recorder, session, extra)
