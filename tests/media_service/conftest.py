"""A real media worker: `manage.py media_worker` as a subprocess on loopback UDP,
against the test database (PostgreSQL) and Redis, as in production.

The test drives it only the ways production does: the control API (its
messages reach the worker over the Redis channel layer), RTP on the call's
ports, and what the worker publishes to a session's group (what the agent's
page receives). One worker per test module; each test's calls are hung up,
their rows ended by the worker and its queued jobs done before the database is
flushed.
"""

from __future__ import annotations

import asyncio
import os
import random
import string
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from urllib.parse import quote, urlsplit

import pytest
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.test import override_settings

from media.phones import Phones
from media.service import worker_group
from securepay.calls import Call, CallState, MediaWorkerBeat, tell_worker
from securepay.models import PaymentSession
from securepay.vault import generate_key, get_vault
from tests.live.conftest import session_in_card_entry
from tests.support import missing, require_tcp

ROOT = Path(__file__).resolve().parents[2]
REDIS_URL = os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0"
READY_TIMEOUT_S = 30.0
TEARDOWN_TIMEOUT_S = 5.0


def database_url() -> str:
    """The test database (pytest-django's, already created) as a DATABASE_URL."""
    from django.db import connection

    db = connection.settings_dict
    auth = quote(db["USER"] or "") + (":" + quote(db["PASSWORD"]) if db["PASSWORD"] else "")
    return f"postgres://{auth}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"


class WorkerProcess:
    """One `manage.py media_worker` subprocess; its log lines are kept for assertions."""

    def __init__(self, worker_id: str, vault_key: str, rtp_timeout_s: float = 30.0) -> None:
        self.worker_id = worker_id
        self.vault_key = vault_key
        self.rtp_timeout_s = rtp_timeout_s
        self.lines: list[str] = []
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        env = {
            **os.environ,
            "DATABASE_URL": database_url(),
            "REDIS_URL": REDIS_URL,
            "VAULT_KEY": self.vault_key,
            "LOG_LEVEL": "INFO",
            "PYTHONUNBUFFERED": "1",
        }
        self.process = subprocess.Popen(
            [sys.executable, "manage.py", "media_worker", "--worker-id", self.worker_id, "--host", "127.0.0.1",
             "--rtp-timeout", str(self.rtp_timeout_s)],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        self._reader = threading.Thread(target=self._read, args=(self.process,), daemon=True)
        self._reader.start()
        self.wait_for_log(f"media worker {self.worker_id} ready", READY_TIMEOUT_S)

    def _read(self, process: subprocess.Popen) -> None:
        for line in process.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait_for_log(self, text: str, timeout: float = 5.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = next((line for line in self.lines if text in line), None)
            if found is not None:
                return found
            assert self.process.poll() is None, "media worker exited:\n" + "\n".join(self.lines[-30:])
            time.sleep(0.02)
        raise AssertionError(f"media worker never logged {text!r}:\n" + "\n".join(self.lines[-30:]))

    def stop(self) -> None:
        """SIGTERM: the worker closes its sockets and leaves the channel layer."""
        self._end(self.process.terminate)

    def kill(self) -> None:
        """SIGKILL: a crash - nothing is cleaned up."""
        self._end(self.process.kill)

    def _end(self, signal_it) -> None:
        if self.process.poll() is None:
            signal_it()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self._reader.join(5)  # it has read the last line (EOF once the process is gone)
        self.process.stdout.close()


# Handsets a test opened (tests/media_service/test_call_flow.play): closed after each test.
OPEN_PHONES: list[Phones] = []


@pytest.fixture(autouse=True)
def close_phones():
    yield
    while OPEN_PHONES:
        OPEN_PHONES.pop().close()


def wait_until(predicate, timeout: float = 3.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


@pytest.fixture(autouse=True)
def _fast_hashing(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture(scope="module")
def worker_conditions(django_db_setup, django_db_blocker):
    """PostgreSQL and Redis, or a loud skip (a failure under CI)."""
    from django.db import connection

    if connection.vendor != "postgresql":
        # The worker is another process: it cannot see pytest-django's in-memory SQLite database.
        missing("the media worker tests need PostgreSQL (DATABASE_URL), as in CI")
    redis = urlsplit(REDIS_URL)
    require_tcp(redis.hostname, redis.port or 6379, "Redis (channel layer)")


@pytest.fixture(scope="module")
def vault_key() -> str:
    return generate_key()


def start_worker(vault_key: str, rtp_timeout_s: float = 30.0) -> WorkerProcess:
    worker = WorkerProcess(f"test-{uuid.uuid4().hex[:10]}", vault_key, rtp_timeout_s)
    worker.start()
    return worker


@pytest.fixture(scope="module")
def worker_process(worker_conditions, vault_key):
    worker = start_worker(vault_key)
    yield worker
    worker.stop()


def routed_to(worker: WorkerProcess):
    """This process's settings for talking to `worker` (the web tier's side)."""
    layers = {
        "default": {"BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer", "CONFIG": {"hosts": [REDIS_URL]}}
    }
    return override_settings(
        CHANNEL_LAYERS=layers, MEDIA_WORKER_MODE="external", MEDIA_WORKER_ID=worker.worker_id, VAULT_KEY=""
    )


def hang_up_live_calls(worker: WorkerProcess) -> None:
    """Every live call the test left on `worker` ends through it (the worker ends the row)."""
    def live():
        return Call.objects.filter(worker_id=worker.worker_id, state=CallState.LIVE)

    for call in live():
        tell_worker(call, {"type": "call.event", "event": "hangup", "supervisor": None})
    wait_until(lambda: not live().exists(), TEARDOWN_TIMEOUT_S, "the worker to hang up the test's calls")


def wait_for_jobs_done(worker: WorkerProcess) -> None:
    """Every job the worker had queued is done: a message for an unknown call goes through
    the same queue and is logged when its turn comes. The database flush after a test must
    not race the worker's last writes (a hangup logs its counters before it records the
    break; PostgreSQL's deadlock detector once picked the flush's TRUNCATE)."""
    # Letters only: the worker's log filter masks digit runs that could be a card number.
    marker = "settle-" + "".join(random.choices(string.ascii_lowercase, k=20))
    message = {"type": "test.settle", "call": marker}
    async_to_sync(get_channel_layer().group_send)(worker_group(worker.worker_id), message)
    worker.wait_for_log(f"test.settle for unknown call {marker}", TEARDOWN_TIMEOUT_S)


@pytest.fixture
def media_worker(worker_process, transactional_db):
    # The running worker signs of life every few seconds; the database flush after the
    # previous test erased its last one, and the API routes no call to a silent worker.
    MediaWorkerBeat.beat(worker_process.worker_id)
    with routed_to(worker_process):
        get_vault.cache_clear()
        yield worker_process
        hang_up_live_calls(worker_process)
        wait_for_jobs_done(worker_process)
    get_vault.cache_clear()


class LoopThread:
    """One event loop in a daemon thread for the module's channel-layer listeners."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro, timeout: float = 5.0):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def spawn(self, coro) -> asyncio.Future:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def stop(self) -> None:
        self.run(self._cancel_tasks())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        # Closed here, not left to the garbage collector: channels_redis flushes its
        # per-loop layer (closing that loop's Redis connections) when the loop closes.
        self.loop.close()

    @staticmethod
    async def _cancel_tasks() -> None:
        tasks = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class GroupListener:
    """What the channel layer delivers to a group: what an agent page receives."""

    def __init__(self, runner: LoopThread, layer, group: str) -> None:
        self.runner, self.layer, self.group = runner, layer, group
        self.messages: list[tuple[float, dict]] = []
        self.channel = runner.run(self._subscribe())
        self.task = runner.spawn(self._collect())

    async def _subscribe(self) -> str:
        channel = await self.layer.new_channel("test.")
        await self.layer.group_add(self.group, channel)
        return channel

    async def _collect(self) -> None:
        while True:
            message = await self.layer.receive(self.channel)
            self.messages.append((time.monotonic(), message))

    def wait_for(self, predicate, timeout: float = 5.0) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for _at, message in list(self.messages):
                if predicate(message):
                    return message
            time.sleep(0.005)
        raise AssertionError(f"no matching message; got {[m for _t, m in self.messages][-5:]}")

    def arrival(self, predicate) -> float:
        """When the first message matching `predicate` arrived (time.monotonic)."""
        return next(at for at, message in self.messages if predicate(message))

    def stop(self) -> None:
        self.task.cancel()
        self.runner.run(self.layer.group_discard(self.group, self.channel))


@pytest.fixture(scope="module")
def listener_loop():
    runner = LoopThread()
    yield runner
    runner.stop()


@pytest.fixture
def listen(listener_loop, media_worker):
    from channels.layers import get_channel_layer

    layer = get_channel_layer()  # the Redis layer of `routed_to`, this test's
    listeners: list[GroupListener] = []

    def make(group: str) -> GroupListener:
        listeners.append(GroupListener(listener_loop, layer, group))
        return listeners[-1]

    yield make
    for listener in listeners:
        listener.stop()


@pytest.fixture
def session(alpha) -> PaymentSession:
    """An open session of tenant alpha in card entry, with an amount."""
    return session_in_card_entry(alpha)


def pytest_collection_modifyitems(items) -> None:
    """Every test here drives a real worker process: PostgreSQL and Redis (see the module docstring)."""
    here = Path(__file__).parent
    for item in items:
        if Path(item.fspath).parent == here:
            item.add_marker(pytest.mark.postgres)
            item.add_marker(pytest.mark.redis)
