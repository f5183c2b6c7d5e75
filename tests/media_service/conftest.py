"""A real media worker on loopback UDP, in a thread with its own event loop,
talking to the test through the Redis pub/sub channel layer (as in production)."""

from __future__ import annotations

import asyncio
import threading
import uuid

import pytest
from django.test import override_settings

from media.service import MediaWorker
from securepay.live import MediaHub
from securepay.models import PaymentSession
from securepay.vault import generate_key, get_vault
from tests.support import missing, require_tcp

REDIS = ("127.0.0.1", 6379)


@pytest.fixture(autouse=True)
def _fast_hashing(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def redis_layer():
    require_tcp(*REDIS, "Redis (channel layer)")
    prefix = f"test-{uuid.uuid4().hex[:8]}"
    layers = {
        "default": {
            "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
            "CONFIG": {"hosts": [f"redis://{REDIS[0]}:{REDIS[1]}/0"], "prefix": prefix},
        }
    }
    vault_key = generate_key()
    with override_settings(
        CHANNEL_LAYERS=layers, MEDIA_WORKER_MODE="external", MEDIA_WORKER_ID=prefix, VAULT_KEY=vault_key
    ):
        get_vault.cache_clear()
        yield prefix
    get_vault.cache_clear()


class LoopThread:
    """An event loop in a thread, for a coroutine that runs until cancelled."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def submit(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def stop(self) -> None:
        self.submit(self._cancel_all()).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()

    @staticmethod
    async def _cancel_all() -> None:
        from channels.layers import get_channel_layer

        tasks = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await get_channel_layer().flush()


class WorkerHandle:
    def __init__(self, rtp_timeout_s: float) -> None:
        self.runner = LoopThread()
        self.worker = MediaWorker(host="127.0.0.1", rtp_timeout_s=rtp_timeout_s, session_hub=MediaHub())
        self.future = self.runner.submit(self.worker.run())
        self.runner.submit(self.worker.ready.wait()).result(10)

    def call(self, call_id) -> object:
        """The worker's in-memory call, once it has bound its ports."""
        return self.runner.submit(self._bound(str(call_id))).result(5)

    async def _bound(self, call_id: str):
        while call_id not in self.worker.relay.calls:
            await asyncio.sleep(0.01)
        return self.worker.relay.calls[call_id]

    def stop(self) -> None:
        self.runner.stop()


@pytest.fixture
def media_worker(transactional_db, redis_layer):
    from django.db import connection

    if connection.vendor == "sqlite":
        # The worker's thread writes while the test reads: SQLite's shared-cache
        # test database answers "table is locked" instead of waiting.
        missing("the media worker tests need PostgreSQL (DATABASE_URL), as in CI")
    handle = WorkerHandle(rtp_timeout_s=30)
    yield handle
    handle.stop()


class GroupListener:
    """Collects what the channel layer sends to a group (what an agent page receives)."""

    def __init__(self, group: str) -> None:
        from channels.layers import get_channel_layer

        self.messages: list[tuple[float, dict]] = []
        self.layer = get_channel_layer()
        self.runner = LoopThread()
        self.runner.submit(self._subscribe(group)).result(5)
        self.runner.submit(self._collect())

    async def _subscribe(self, group: str) -> None:
        self.channel = await self.layer.new_channel()
        await self.layer.group_add(group, self.channel)

    async def _collect(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            message = await self.layer.receive(self.channel)
            self.messages.append((loop.time(), message))

    def wait_for(self, predicate, timeout: float = 5.0) -> dict:
        import time

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for _at, message in list(self.messages):
                if predicate(message):
                    return message
            time.sleep(0.01)
        raise AssertionError(f"no matching message; got {[m for _t, m in self.messages][-5:]}")

    def stop(self) -> None:
        self.runner.stop()


@pytest.fixture
def listen():
    listeners = []

    def make(group: str) -> GroupListener:
        listeners.append(GroupListener(group))
        return listeners[-1]

    yield make
    for listener in listeners:
        listener.stop()


@pytest.fixture
def session(alpha) -> PaymentSession:
    """An open session of tenant alpha in card entry, with an amount."""
    template = alpha.tenant.page_templates.get(slug="default")
    session = PaymentSession.open_for(tenant=alpha.tenant, template=template, actor="test")
    session.open_details("test")
    session.start_card_entry("test", details={"first_name": "Ada"}, amount_minor=1250)
    return session
