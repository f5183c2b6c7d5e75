"""The whole agent flow in Debian's Chromium against a real Daphne server.

The server runs as a subprocess on its own SQLite file (pytest-django's test
database is invisible to another process), set up through the operator
commands; the session is created through the REST API with an API key. With
REDIS_URL set (CI), the server uses the Redis pub/sub channel layer and vault.
The keypad simulator (a second browser context, logged in as the supervisor)
plays the caller's phone.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from media.phones import Phones
from media.softphone import caller_packets, silence_packets
from tests.media.signals import assert_no_digit_heard
from tests.support import missing, udp_port_bound

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
PASSWORD = "browser-test-password-1"
DECLINING_CARD = "4000000000000002"  # gateways/sandbox/README.md: declined card_declined
APPROVING_CARD = "4242424242424242"
EXPIRY = "1239"
CVV = "737"
TIMEOUT_MS = 10_000
AUDIO_TIMEOUT_MS = 15_000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def manage(env: dict, *args: str) -> str:
    done = subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    if not os.path.exists(CHROMIUM):
        missing(f"{CHROMIUM} (apt-get install chromium)")
    data = tmp_path_factory.mktemp("browser-server")
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "DATABASE_URL": f"sqlite:///{data / 'db.sqlite3'}",
        "DEBUG": "1",
        "SITE_URL": base_url,
        "MEDIA_WORKER_MODE": "inprocess",
        "MEDIA_WORKER_ID": f"browser-{port}",  # its own worker group, even on a shared Redis
        "KEYPAD_SIMULATOR_ENABLED": "1",
        "CELERY_TASK_ALWAYS_EAGER": "1",  # the charge runs in the server process, like the demo
    }
    manage(env, "migrate", "--noinput")
    manage(env, "create_tenant", "--slug", "acme", "--name", "Acme Energy")
    for role in ("agent", "supervisor"):
        manage(env, "create_user", "--tenant", "acme", "--username", f"acme-{role}", "--role", role,
               "--password", PASSWORD)
    api_key = manage(env, "create_api_key", "--tenant", "acme").strip().splitlines()[-1]
    log = open(data / "daphne.log", "w")  # noqa: SIM115 - closed at teardown
    process = subprocess.Popen(
        [str(ROOT / ".venv/bin/daphne"), "-b", "127.0.0.1", "-p", str(port), "securepay.asgi:application"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(base_url + "/healthz", timeout=1)
            break
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                pytest.fail("daphne did not start:\n" + (data / "daphne.log").read_text())
            time.sleep(0.2)
    yield {"url": base_url, "api_key": api_key, "log": data / "daphne.log"}
    process.terminate()
    process.wait(timeout=10)
    log.close()


@pytest.fixture(scope="module")
def browser(server):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def create_session(server) -> dict:
    body = json.dumps({"template": "default", "reference": "INV-42",
                       "prefill": {"amount": "42.50", "first_name": "Ada", "last_name": "Lovelace"}}).encode()
    request = urllib.request.Request(server["url"] + "/api/v1/sessions/", data=body, method="POST", headers={
        "Authorization": f"Bearer {server['api_key']}", "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 201
        return json.loads(response.read())


class Recorder:
    """Every WebSocket frame and every HTML document the agent's browser received."""

    def __init__(self, page):
        self.frames: list[str] = []
        self.documents: list[str] = []
        page.on("websocket", lambda ws: ws.on("framereceived", self._frame))
        page.on("response", self._response)

    def _frame(self, payload: str | bytes) -> None:
        self.frames.append(payload if isinstance(payload, str) else payload.decode())

    def _response(self, response) -> None:
        # Read at once: a document's body is gone once the browser navigates on.
        if response.request.resource_type == "document" and response.status == 200:
            self.documents.append(response.text())


def login(context, server, username: str, next_url: str):
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    return page, lambda: _login(page, server, username, next_url)


def _login(page, server, username, next_url):
    page.goto(server["url"] + "/accounts/login/?next=" + next_url)
    page.fill("#id_username", username)
    page.fill("#id_password", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url("**" + next_url)


def key(simulator, keys: str) -> None:
    for k in keys:
        simulator.click(f"button[data-key='{k}']")
    simulator.wait_for_selector("#simulator[data-pending='0']", state="attached")


def stars(page, field: str):
    return page.locator(f".card-field[data-field={field}] .stars")


def test_agent_takes_a_payment_with_the_keypad_simulator(server, browser):
    from playwright.sync_api import expect

    ARTIFACTS.mkdir(exist_ok=True)
    created = create_session(server)
    session_path = created["launch_url"].removeprefix(server["url"])

    agent_context = browser.new_context(locale="en-GB")
    agent, agent_login = login(agent_context, server, "acme-agent", session_path)
    recorder = Recorder(agent)
    agent_login()

    # Step 1, prefilled by the API; not secured yet.
    indicator = agent.locator("#secure-indicator")
    expect(indicator).to_have_attribute("data-secure", "unsecured")
    expect(indicator).to_contain_text("No call linked yet")
    expect(agent.locator("#id_first_name")).to_have_value("Ada")
    expect(agent.locator("label[for=id_amount] .required")).to_have_text("*")
    agent.screenshot(path=str(ARTIFACTS / "agent-step1.png"), full_page=True)
    agent.click("#next")
    expect(agent.locator("#step-card")).to_be_visible()
    expect(agent.locator("#session-amount")).to_have_text("42.50 GBP")

    # The caller's phone: link the call by the session code.
    phone_context = browser.new_context()
    simulator, simulator_login = login(phone_context, server, "acme-supervisor", "/simulator/")
    simulator_login()
    simulator.fill("#id_code", created["code"])
    simulator.click("#link")
    expect(simulator.locator("#keypad")).to_be_visible()
    expect(indicator).to_have_attribute("data-secure", "secured")

    # A wrong start, reset by the agent, then the declining card.
    key(simulator, "5105")
    expect(stars(agent, "pan")).to_have_text("****")
    agent.click(".card-field[data-field=pan] .reset")
    expect(stars(agent, "pan")).to_have_text("")
    key(simulator, DECLINING_CARD + EXPIRY[:2])
    expect(stars(agent, "pan")).to_have_text("*" * 16)
    expect(agent.locator(".card-field[data-field=pan]")).to_have_attribute("data-valid", "true")
    expect(stars(agent, "expiry")).to_have_text("**")

    # Reload mid-entry: the stars come back from the live state.
    agent.reload()
    expect(stars(agent, "pan")).to_have_text("*" * 16)
    expect(stars(agent, "expiry")).to_have_text("**")
    expect(agent.locator(".card-field[data-field=expiry]")).to_have_attribute("data-active", "true")

    # Hold breaks the secure state: grey indicator, keys refused.
    simulator.click("#hold")
    expect(indicator).to_have_attribute("data-secure", "unsecured")
    expect(indicator).to_contain_text("Caller on hold")
    key(simulator, "9")
    expect(agent.locator("#keys-refused")).to_be_visible()
    expect(stars(agent, "expiry")).to_have_text("**")
    simulator.click("#unhold")
    expect(indicator).to_have_attribute("data-secure", "secured")

    key(simulator, EXPIRY[2:] + CVV)
    expect(agent.locator("#process")).to_be_enabled()
    agent.screenshot(path=str(ARTIFACTS / "agent-step2.png"), full_page=True)
    agent.click("#process")
    expect(agent.locator("#result")).to_have_attribute("data-outcome", "declined")
    expect(agent.locator("#result")).to_contain_text("The card was declined")

    # Back: the card is cleared; the caller keys another one, which is approved.
    agent.click("#back")
    expect(agent.locator("#result")).to_be_hidden()
    expect(agent.locator("#process")).to_be_disabled()
    for field in ("pan", "expiry", "cvv"):
        expect(stars(agent, field)).to_have_text("")
    key(simulator, APPROVING_CARD + EXPIRY + CVV)
    expect(agent.locator("#process")).to_be_enabled()
    agent.click("#process")
    result = agent.locator("#result")
    expect(result).to_have_attribute("data-outcome", "approved")
    expect(result).to_contain_text("VISA •••• 4242")
    expect(result).to_contain_text("sbx_")
    expect(agent.locator("#back")).to_be_hidden()

    agent.click("#end")
    agent.wait_for_url("**/pay/")
    expect(agent.locator(".messages")).to_contain_text(f"Session {created['code']} has ended.")
    agent_context.close()
    phone_context.close()

    check_no_card_data(recorder)


def check_no_card_data(recorder: Recorder) -> None:
    """DESIGN.md: no PAN, expiry or CVV reaches the browser; last four only in the approved result."""
    assert recorder.frames and len(recorder.documents) >= 5
    csrf = re.compile(r'(name="csrfmiddlewaretoken" value="|csrf[^"]*":\s*")[^"]+')
    # Session ids in links and frames are random hex: a "737" or "4242" inside one is no card data.
    uuids = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")

    def scrubbed(texts: list[str]) -> list[str]:
        return [uuids.sub("", csrf.sub("", text)) for text in texts]

    documents, frames = scrubbed(recorder.documents), scrubbed(recorder.frames)
    for text in documents + frames:
        for secret in (DECLINING_CARD, APPROVING_CARD, DECLINING_CARD[:6], APPROVING_CARD[:6], EXPIRY, "12/39"):
            assert secret not in text
        for digits in (CVV, DECLINING_CARD[-4:]):
            assert not re.search(rf"(?<!\d){digits}(?!\d)", text)
    last4 = re.compile(rf"(?<!\d){APPROVING_CARD[-4:]}(?!\d)")
    for text in documents:
        assert not last4.search(text)
    for scrubbed_frame, frame in zip(frames, recorder.frames, strict=True):
        if last4.search(scrubbed_frame):
            message = json.loads(frame)
            assert message["type"] == "session.state" and message["status"] == "approved"
            assert message["result"]["last4"] == APPROVING_CARD[-4:]


def api_post(server, path: str, body: dict) -> dict:
    request = urllib.request.Request(server["url"] + path, data=json.dumps(body).encode(), method="POST", headers={
        "Authorization": f"Bearer {server['api_key']}", "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def test_a_real_call_keys_stars_into_the_agent_page(server, browser):
    """RTP on loopback to the media worker running inside Daphne (the demo's in-process mode):
    the caller's keys fill the agent's page with stars, and the agent's leg decodes to no digit."""
    from playwright.sync_api import expect

    created = create_session(server)
    session_path = created["launch_url"].removeprefix(server["url"])
    context = browser.new_context(locale="en-GB")
    agent, agent_login = login(context, server, "acme-agent", session_path)
    recorder = Recorder(agent)
    agent_login()
    agent.click("#next")

    call = api_post(server, "/api/v1/calls/", {"reference": "browser-test"})
    deadline = time.monotonic() + 5
    while not (udp_port_bound(call["caller_port"]) and udp_port_bound(call["agent_port"])):
        assert time.monotonic() < deadline, "the in-process media worker did not bind the call's ports"
        time.sleep(0.02)
    api_post(server, f"/api/v1/calls/{call['id']}/link/", {"code": created["code"]})
    expect(agent.locator("#secure-indicator")).to_have_attribute("data-secure", "secured")

    keys = APPROVING_CARD + EXPIRY + CVV
    sent, caller_audio = caller_packets(keys)
    host = call["host"]
    schedule = [(at, "caller", data, (host, call["caller_port"])) for at, data in sent]
    schedule += [(at, "agent", data, (host, call["agent_port"])) for at, data in silence_packets(sent[-1][0] + 0.4)]
    phones = Phones(["caller", "agent"])
    # Playwright's sync API owns this thread's event loop: the phones get their own thread.
    playing = threading.Thread(target=asyncio.run, args=(phones.play(schedule),))
    playing.start()
    try:
        # Real time: the caller's 23 keys take ~5 s of audio.
        expect(stars(agent, "pan")).to_have_text("*" * 16, timeout=AUDIO_TIMEOUT_MS)
        expect(stars(agent, "expiry")).to_have_text("*" * 4, timeout=AUDIO_TIMEOUT_MS)
        expect(stars(agent, "cvv")).to_have_text("*" * 3, timeout=AUDIO_TIMEOUT_MS)
        expect(agent.locator("#process")).to_be_enabled()
    finally:
        playing.join(15)
        phones.close()
    assert not playing.is_alive(), "the phones did not finish playing"
    # Stars in the page, and the agent's leg (relayed, masked) decodes to no digit.
    assert_no_digit_heard(phones.audio("agent"), caller_audio, keys)
    context.close()
    assert recorder.frames
    for text in recorder.frames + recorder.documents:
        assert APPROVING_CARD not in text and APPROVING_CARD[:6] not in text
