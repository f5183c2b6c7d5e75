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
