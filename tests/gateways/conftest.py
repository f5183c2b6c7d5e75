"""Real outside parts for the gateway tests: localstripe and a local processor.

localstripe (GPL) is a test tool only, run as a separate process; product code
never imports it. What it lacks, checked against localstripe 1.15.10:
- it ignores idempotency keys: the same key twice makes two charges;
- it drops `payment_method_options` (MOTO) without storing it, so MOTO is
  proven on the wire by `stripe_wire` (a recording proxy), not by reading back;
- its list endpoints accept no filters (`created`, ...) and it has no search
  API, so the adapter runs with `localstripe_compat` (list everything);
- it accepts refunds larger than the charge (the adapter checks first);
- PaymentMethods need exactly 16 digits and a 3-digit CVC (no Amex);
- 4000000000000341 attaches fine but charging it fails with `card_declined`
  (no decline_code); 4000000000000002 charges fine but attaching it fails;
  it never returns decline codes such as insufficient_funds.
Count its charges with `GET /v1/charges` (paged; see `localstripe_charges`):
every PaymentIntent confirm makes one Charge, failed ones with status `failed`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.support import missing

LOCALSTRIPE_KEY = "sk_test_securepay"
PROCESSOR_SECRET = "whsec_processor_test"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def serve_in_thread(handler: type[BaseHTTPRequestHandler]) -> tuple[ThreadingHTTPServer, str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


# --- localstripe ----------------------------------------------------------------
@pytest.fixture(scope="session")
def localstripe_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    executable = Path(sys.executable).with_name("localstripe")
    if not executable.exists():
        missing(f"localstripe not installed at {executable} (pip install -r requirements-dev.txt)")
    port = free_port()
    log = (tmp_path_factory.mktemp("localstripe") / "localstripe.log").open("wb")
    # --from-scratch: never load the store another run pickled to /tmp.
    process = subprocess.Popen([str(executable), "--port", str(port), "--from-scratch"],
                               stdout=log, stderr=subprocess.STDOUT)
    base_url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                localstripe_get(base_url, "/v1/balance")
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"localstripe did not start on port {port}; see {log.name}")
                time.sleep(0.1)
        yield base_url
    finally:
        process.terminate()
        process.wait(timeout=10)
        log.close()


def localstripe_get(base_url: str, path: str) -> dict[str, Any]:
    request = urllib.request.Request(base_url + path, headers={"Authorization": f"Bearer {LOCALSTRIPE_KEY}"})
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.load(response)


@pytest.fixture
def localstripe_charges(localstripe_server: str) -> Callable[[str], list[dict[str, Any]]]:
    """All Charges localstripe made for one PaymentIntent (its own records)."""

    def charges_for(payment_intent: str) -> list[dict[str, Any]]:
        found, after = [], ""
        while True:
            page = localstripe_get(localstripe_server, "/v1/charges?limit=100" + after)
            found += [c for c in page["data"] if c["payment_intent"] == payment_intent]
            if not page["has_more"]:
                return found
            after = f"&starting_after={page['data'][-1]['id']}"

    return charges_for


class WireLog:
    """Requests that went through the recording proxy."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        # Paths forwarded to localstripe whose answer is then withheld (a timeout).
        self.swallow_answers_to: set[str] = set()

    def posts_to(self, path: str) -> list[dict[str, Any]]:
        return [r for r in self.requests if r["method"] == "POST" and r["path"] == path]


@pytest.fixture
def stripe_wire(localstripe_server: str) -> Iterator[tuple[str, WireLog]]:
    """A recording proxy in front of localstripe: (its base URL, what it saw)."""
    wire = WireLog()
    upstream = localstripe_server

    class Proxy(BaseHTTPRequestHandler):
        def _forward(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            wire.requests.append({"method": self.command, "path": self.path.split("?")[0],
                                  "headers": dict(self.headers), "body": body.decode()})
            headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")}
            request = urllib.request.Request(upstream + self.path, data=body or None, headers=headers,
                                             method=self.command)
            try:
                with urllib.request.urlopen(request, timeout=10) as response:
                    status, payload = response.status, response.read()
            except urllib.error.HTTPError as error:
                status, payload = error.code, error.read()
            if self.path.split("?")[0] in wire.swallow_answers_to:
                time.sleep(1.5)  # longer than the adapter's timeout in these tests
                return
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        do_GET = do_POST = do_DELETE = _forward

        def log_message(self, *args: Any) -> None:
            pass

    server, base_url = serve_in_thread(Proxy)
    yield base_url, wire
    server.shutdown()
    server.server_close()


@pytest.fixture
def silent_server() -> Iterator[str]:
    """Accepts connections, reads, never answers: a gateway that times out."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    stop.set()
    thread.join()
    for conn in held:
        conn.close()
    listener.close()


@pytest.fixture
def closed_port_url() -> str:
    """A loopback URL where nothing listens: connection refused."""
    return f"http://127.0.0.1:{free_port()}"


# --- a local processor for the generic connector ---------------------------------
class Processor:
    """What the fake processor saw and remembers, by idempotency key."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.processed: dict[str, dict[str, Any]] = {}
        self.slow_seconds = 2.0


def _verify_signature(header: str, body: bytes, secret: str) -> bool:
    parts = dict(part.split("=", 1) for part in header.split(",") if "=" in part)
    expected = hmac.new(secret.encode(), f"{parts.get('t', '')}.".encode() + body, hashlib.sha256).hexdigest()
    fresh = parts.get("t", "").isdigit() and abs(time.time() - int(parts["t"])) < 300
    return fresh and hmac.compare_digest(expected, parts.get("v1", ""))


@pytest.fixture
def processor() -> Iterator[tuple[str, Processor]]:
    """A processor speaking its own dialect: {"result": {"code", "id", "authCode", "why"}}.

    The request's `reference` picks the scenario: `decline-nsf`, `decline-odd`,
    `slow` (processes, then answers too late), `boom` (HTTP 500); anything
    else is approved."""
    state = Processor()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            request = json.loads(body)
            signed = _verify_signature(self.headers.get("X-SecurePay-Signature", ""), body, PROCESSOR_SECRET)
            state.requests.append({"headers": dict(self.headers), "json": request, "signed": signed})
            if not signed:
                return self._answer(401, {"error": "bad signature"})
            key = request["idempotency_key"]
            if request["operation"] == "reconcile":
                return self._answer(200, state.processed.get(key, {"result": {"code": "UNKNOWN_PAYMENT"}}))
            scenario = request.get("reference", "")
            if scenario == "boom":
                return self._answer(500, {"error": "internal"})
            if scenario.startswith("decline"):
                why = "NSF" if scenario == "decline-nsf" else "X99"
                answer = {"result": {"code": "REFUSED", "id": f"px_{key}", "why": why}}
            else:
                answer = {"result": {"code": "AUTHORISED", "id": f"px_{key}", "authCode": "A1B2C3",
                                     "token": "ptok_1" if request["operation"] == "tokenize" else None}}
            state.processed[key] = answer
            if scenario == "slow":
                time.sleep(state.slow_seconds)
            self._answer(200, answer)

        def _answer(self, status: int, payload: dict[str, Any]) -> None:
            data = json.dumps(payload).encode()
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            except OSError:
                pass  # the client gave up (the slow scenario)

        def log_message(self, *args: Any) -> None:
            pass

    server, base_url = serve_in_thread(Handler)
    yield base_url, state
    server.shutdown()
    server.server_close()


# --- payment sessions: from customer details to Process payment ------------------------
CALLER = {"first_name": "Ada", "last_name": "Lovelace", "email": "ada@example.com", "address": "1 Analytical Way",
          "postcode": "AB1 2CD"}
FUTURE_EXPIRY = "1239"  # MMYY, December 2039


def open_card_entry(world, *, amount_minor: int = 1250, callback_url: str = "", reference: str = "INV-1"):
    """A secured session of `world`'s tenant waiting for the caller's card."""
    from securepay.models import PaymentSession

    session = PaymentSession.open_for(tenant=world.tenant, template=world.tenant.page_templates.get(slug="default"),
                                      actor="test", reference=reference, callback_url=callback_url)
    session.open_details("test")
    session.start_card_entry("test", details=CALLER, amount_minor=amount_minor)
    session.mark_secured("media-worker")
    return session


def key_card(session, pan: str, cvv: str = "123", expiry: str = FUTURE_EXPIRY) -> None:
    """What the media worker does when the caller finished keying."""
    from securepay.card import Card
    from securepay.vault import get_vault

    get_vault().put(str(session.pk), Card(pan, expiry, cvv))


def press_process_payment(session):
    """The agent's Process payment (the live page's service): returns the attempt."""
    from securepay.payment import request_payment

    return request_payment(session, "user:agent")


def pay_but_lose_the_webhook(world, callback_url: str, capture, pan: str = "4242424242424242"):
    """An approved payment whose webhook was recorded but whose Celery message was
    lost (never published): returns the session and its WebhookDelivery row."""
    from gateways.models import WebhookDelivery
    from gateways.processing import charge

    session = open_card_entry(world, callback_url=callback_url)
    key_card(session, pan)
    with capture(execute=False):
        attempt = press_process_payment(session)
    with capture(execute=False):
        charge(str(attempt.pk))  # the worker ran; the publish of deliver_webhook never happened
    return session, WebhookDelivery.objects.get(session=session)


@pytest.fixture(autouse=True)
def _payment_settings(settings) -> Iterator[None]:
    """Keys a payment needs (tests run with DEBUG off, so nothing is derived), an
    in-memory channel layer, a fresh sandbox ledger."""
    from gateways import config
    from gateways.sandbox import adapter as sandbox
    from securepay.vault import generate_key, get_vault

    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    settings.VAULT_KEY = generate_key()
    settings.GATEWAY_CREDENTIALS_KEY = config.generate_credentials_key()
    get_vault.cache_clear()
    config._cipher.cache_clear()
    sandbox.clear()
    yield
    sandbox.clear()
    get_vault.cache_clear()
    config._cipher.cache_clear()


@pytest.fixture
def fast_retries(settings) -> None:
    """Gateway and webhook retries without waiting (the eager tests)."""
    settings.GATEWAY_RETRY_DELAYS = (0, 0)
    settings.GATEWAY_RECONCILE_RETRY_SECONDS = 0
    settings.WEBHOOK_RETRY_BASE_SECONDS = 0


# --- a webhook receiver that checks what WEBHOOKS.md tells integrators to check ---------
def documented_verifier() -> Callable[..., bool]:
    """The Python snippet of gateways/WEBHOOKS.md, run as written."""
    text = (Path(__file__).parents[2] / "gateways" / "WEBHOOKS.md").read_text()
    snippet = text.split("```python", 1)[1].split("```", 1)[0]
    namespace: dict[str, Any] = {}
    exec(compile(snippet, "WEBHOOKS.md", "exec"), namespace)  # noqa: S102 - our own documentation
    return namespace["verify_securepay_signature"]


class WebhookInbox:
    """What the receiver got: every request, verified or not."""

    def __init__(self, secret: str) -> None:
        self.secret = secret
        self.received: list[dict[str, Any]] = []
        self.failures_to_fake = 0  # answer 500 to this many requests first
        self.seen_ids: set[str] = set()

    def accepted(self) -> list[dict[str, Any]]:
        return [r for r in self.received if r["answered"] == 200]

    def wait_for(self, count: int, timeout: float = 20.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while len(self.accepted()) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.accepted()


@pytest.fixture
def webhook_receiver() -> Iterator[Callable[[str], tuple[str, WebhookInbox]]]:
    """Starts receivers: `webhook_receiver(secret)` -> (URL, inbox)."""
    verify = documented_verifier()
    servers: list[ThreadingHTTPServer] = []

    def start(secret: str) -> tuple[str, WebhookInbox]:
        inbox = WebhookInbox(secret)

        class Receiver(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                valid = verify(self.headers.get("SecurePay-Signature", ""), body, inbox.secret)
                event = json.loads(body)
                replay = event["id"] in inbox.seen_ids
                if not valid:
                    answer = 400
                elif inbox.failures_to_fake > 0:
                    inbox.failures_to_fake -= 1
                    answer = 500
                else:
                    answer = 200
                    inbox.seen_ids.add(event["id"])
                inbox.received.append({"body": body, "json": event, "valid": valid, "replay": replay,
                                       "headers": dict(self.headers), "answered": answer})
                self.send_response(answer)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        server, url = serve_in_thread(Receiver)
        servers.append(server)
        return url + "/hook", inbox

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


# --- a real Celery worker process -----------------------------------------------------------
WORKER_BROKER_DB = 11  # a Redis database of their own for these tests' Celery queues
WORKER_REDIS_DB = 12  # vault and channel layer shared by the test and its worker
# Seconds after which Redis hands a dead worker's unacknowledged task to another worker.
# kombu looks for such tasks when a worker starts, then only every ~100 s: a test
# restarting a worker waits this long after the delivery first.
WORKER_VISIBILITY_TIMEOUT = 2


class WorkerProcess:
    def __init__(self, process: subprocess.Popen, log_path: Path) -> None:
        self.process, self.log_path = process, log_path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while " ready." not in self.log():
            if self.process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"Celery worker did not start:\n{self.log()[-3000:]}")
            time.sleep(0.1)

    def wait_exit(self, timeout: float = 30.0) -> int:
        return self.process.wait(timeout=timeout)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)


def wait_until(condition: Callable[[], bool], timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.1)


@pytest.fixture
def worker_env(transactional_db, settings) -> Iterator[dict[str, str]]:
    """Environment of a worker that sees this test's committed rows, vault and keys.

    Needs PostgreSQL (a worker process cannot share pytest-django's in-memory
    SQLite test database) and Redis. The test process publishes to the same
    dedicated broker database; restored afterwards."""
    from django.db import connection

    from securepay.celery import app
    from securepay.vault import get_vault
    from tests.support import require_tcp

    if connection.vendor != "postgresql":
        missing("a real Celery worker needs DATABASE_URL=postgres://... (the SQLite test database is in memory)")
    require_tcp("127.0.0.1", 6379, "Redis")
    db = connection.settings_dict
    redis_url = f"redis://127.0.0.1:6379/{WORKER_REDIS_DB}"
    broker_url = f"redis://127.0.0.1:6379/{WORKER_BROKER_DB}"
    settings.REDIS_URL = redis_url
    get_vault.cache_clear()
    env = {
        **os.environ,
        "DATABASE_URL": f"postgres://{db['USER']}:{db['PASSWORD']}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
        "REDIS_URL": redis_url,
        "CELERY_BROKER_URL": broker_url,
        "CELERY_TASK_ALWAYS_EAGER": "0",
        "CELERY_VISIBILITY_TIMEOUT": str(WORKER_VISIBILITY_TIMEOUT),
        "SECRET_KEY": settings.SECRET_KEY,
        "VAULT_KEY": settings.VAULT_KEY,
        "GATEWAY_CREDENTIALS_KEY": settings.GATEWAY_CREDENTIALS_KEY,
        "GATEWAY_RETRY_DELAYS": "0.1,0.2",
        "GATEWAY_RECONCILE_RETRY_SECONDS": "1",
        "WEBHOOK_RETRY_BASE_SECONDS": "0.2",
        "DEBUG": "0",
        # The test's webhook receiver listens on loopback, which production refuses (SSRF guard).
        "WEBHOOK_ALLOW_PRIVATE_ADDRESSES": "1",
        "ALLOWED_HOSTS": "127.0.0.1",
    }
    env.pop(CRASH_ENV, None)
    _use_broker(app, broker_url)
    yield env
    _use_broker(app, settings.CELERY_BROKER_URL)
    get_vault.cache_clear()


CRASH_ENV = "SECUREPAY_TEST_CRASH_AFTER_GATEWAY_CALL"


def _use_broker(app, url: str) -> None:
    """Point this process's Celery producer at `url` (its pools are built lazily from broker_url)."""
    import redis

    app.conf.broker_url = url
    app._pool = None
    app.amqp._producer_pool = None
    if url.startswith("redis://"):
        redis.Redis.from_url(url).flushdb()  # no task of an earlier run may reach this worker


@pytest.fixture
def start_worker(worker_env, tmp_path) -> Iterator[Callable[..., WorkerProcess]]:
    """`start_worker(**extra_env)` runs `celery worker -P solo` until the test ends."""
    started: list[WorkerProcess] = []
    root = Path(__file__).parents[2]

    def start(**extra_env: str) -> WorkerProcess:
        log_path = tmp_path / f"worker-{len(started)}.log"
        command = [str(root / ".venv" / "bin" / "celery"), "-A", "securepay", "worker", "-P", "solo", "-c", "1",
                   "--without-heartbeat", "--without-mingle", "--without-gossip", "-l", "info"]
        with log_path.open("wb") as log:
            process = subprocess.Popen(command, cwd=root, env={**worker_env, **extra_env}, stdout=log,
                                       stderr=subprocess.STDOUT)
        worker = WorkerProcess(process, log_path)
        started.append(worker)
        worker.wait_ready()
        return worker

    yield start
    for worker in started:
        worker.stop()
