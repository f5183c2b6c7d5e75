"""Agent WebSocket fan-out: publish -> frame latency and loss, Daphne vs uvicorn.

200 authenticated agent sockets (one payment session each) on one server
process with the Redis pub/sub channel layer; a separate publisher process
sends every session a card.state every 250 ms through the channel layer, as
the media worker does. Latency is measured from just before group_send to the
frame's arrival in the client (same machine, CLOCK_REALTIME in both).

    .venv/bin/python bench/ws_latency.py [--sockets 200] [--seconds 20]

Needs Redis on 127.0.0.1:6379 (uses db 15). Writes the section between the
bench:ws markers of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from report import machine, write_section

ROOT = Path(__file__).resolve().parents[1]
REDIS_URL = "redis://127.0.0.1:6379/15"
INTERVAL = 0.25


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_env(db_path: Path) -> dict:
    return {**os.environ, "DATABASE_URL": f"sqlite:///{db_path}", "REDIS_URL": REDIS_URL, "DEBUG": "1",
            "MEDIA_WORKER_MODE": "external", "LOG_LEVEL": "WARNING", "DJANGO_SETTINGS_MODULE": "securepay.settings"}


def prepare(db_path: Path, count: int) -> list[tuple[str, str]]:
    """Migrate a fresh database; (session id, Django session cookie) per agent socket."""
    os.environ.update(server_env(db_path))
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY, get_user_model
    from django.contrib.sessions.backends.db import SessionStore
    from django.core.management import call_command

    from securepay.models import PaymentSession
    from tenants.models import Membership, Role, Tenant, seed_default_template

    call_command("migrate", verbosity=0)
    tenant = Tenant.objects.create(slug="bench", name="Bench")
    template = seed_default_template(tenant)
    pairs = []
    for i in range(count):
        user = get_user_model().objects.create_user(f"agent-{i}")  # unusable password: logged in by cookie
        Membership.objects.create(user=user, tenant=tenant, role=Role.AGENT)
        session = PaymentSession.open_for(tenant=tenant, template=template, actor="bench", agent=user)
        store = SessionStore()
        store[SESSION_KEY], store[BACKEND_SESSION_KEY] = str(user.pk), "django.contrib.auth.backends.ModelBackend"
        store[HASH_SESSION_KEY] = user.get_session_auth_hash()
        store.create()
        pairs.append((str(session.pk), store.session_key))
    return pairs


# --- publisher process ----------------------------------------------------------------
async def publish(session_ids: list[str], seconds: float) -> dict[str, int]:
    from channels_redis.pubsub import RedisPubSubChannelLayer

    layer = RedisPubSubChannelLayer(hosts=[REDIS_URL])
    sent = dict.fromkeys(session_ids, 0)
    loop = asyncio.get_running_loop()
    start = loop.time() + 0.1
    # Spread the sessions over the interval, as independent calls would be.
    events = sorted((start + INTERVAL * i / len(session_ids), sid) for i, sid in enumerate(session_ids))
    end = start + seconds
    while events:
        at, sid = events.pop(0)
        if at >= end:
            break
        delay = at - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        sent[sid] += 1
        await layer.group_send(f"session.{sid}", {
            "type": "card.state", "seq": sent[sid], "secured": True, "active": "pan", "brand": "visa", "ready": False,
            "fields": {"pan": {"length": sent[sid] % 17, "valid": False, "complete": False, "hint": None}},
            "sent_ns": time.time_ns(),
        })
        events.append((at + INTERVAL, sid))
        events.sort()
    await layer.flush()
    return sent


# --- clients -----------------------------------------------------------------------------
async def run_clients(port: int, pairs: list[tuple[str, str]], seconds: float, ids_file: Path) -> dict:
    import websockets

    latencies: list[float] = []
    received: dict[str, int] = {}
    connected = asyncio.Event()
    ready = 0
    limiter = asyncio.Semaphore(40)

    async def agent(session_id: str, cookie: str) -> None:
        nonlocal ready
        async with limiter:
            ws = await websockets.connect(
                f"ws://127.0.0.1:{port}/ws/sessions/{session_id}/", origin=f"http://127.0.0.1:{port}",
                additional_headers={"Cookie": f"sessionid={cookie}"}, max_queue=None)
            first = json.loads(await ws.recv())
            assert first["type"] == "session.state", first
        ready += 1
        if ready == len(pairs):
            connected.set()
        received[session_id] = 0
        try:
            async for frame in ws:
                message = json.loads(frame)
                if message.get("type") == "card.state" and "sent_ns" in message:
                    latencies.append((time.time_ns() - message["sent_ns"]) / 1e6)
                    received[session_id] += 1
        except websockets.ConnectionClosed:
            pass

    tasks = [asyncio.create_task(agent(sid, cookie)) for sid, cookie in pairs]
    await asyncio.wait_for(connected.wait(), 120)
    publisher = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--publish", str(ids_file), "--seconds", str(seconds),
        stdout=asyncio.subprocess.PIPE, env=server_env(Path("unused")))
    out, _ = await publisher.communicate()
    sent = json.loads(out)
    await asyncio.sleep(2)  # stragglers
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    latencies.sort()
    total_sent = sum(sent.values())
    return {
        "sockets": len(pairs), "sent": total_sent, "received": sum(received.values()),
        "lost": sum(max(0, sent[sid] - received.get(sid, 0)) for sid in sent),
        "p50": latencies[len(latencies) // 2] if latencies else float("nan"),
        "p99": latencies[int(len(latencies) * 0.99)] if latencies else float("nan"),
        "max": latencies[-1] if latencies else float("nan"),
    }


def start_server(kind: str, port: int, env: dict) -> subprocess.Popen:
    venv = ROOT / ".venv/bin"
    if kind == "daphne":
        cmd = [str(venv / "daphne"), "-b", "127.0.0.1", "-p", str(port), "securepay.asgi:application"]
    else:
        cmd = [str(venv / "uvicorn"), "securepay.asgi:application", "--host", "127.0.0.1", "--port", str(port),
               "--lifespan", "off", "--ws", "websockets", "--log-level", "warning", "--no-access-log"]
    process = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1)
            return process
        except OSError:
            time.sleep(0.2)
    process.kill()
    raise SystemExit(f"{kind} did not start")


def ws_section(results: dict[str, dict], seconds: float) -> str:
    lines = [
        "## Agent WebSocket fan-out (`bench/ws_latency.py`)",
        "",
        f"{machine()} · Redis pub/sub channel layer · "
        f"{next(iter(results.values()))['sockets']} agent sockets, one card.state per session every "
        f"{int(INTERVAL * 1000)} ms for {seconds:g} s, published from a separate process; client, server and "
        "publisher on the same machine. Targets: p50 ≤ 5 ms, p99 ≤ 50 ms, nothing lost.",
        "",
        "| server | sent | received | lost | p50 ms | p99 ms | max ms |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for kind, r in results.items():
        lines.append(f"| {kind} | {r['sent']} | {r['received']} | {r['lost']} | {r['p50']:.2f} | {r['p99']:.2f} "
                     f"| {r['max']:.2f} |")
    return write_section("ws", "\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sockets", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--servers", default="daphne,uvicorn")
    parser.add_argument("--publish", help=argparse.SUPPRESS)  # internal: publisher process, ids file
    args = parser.parse_args()
    if args.publish:
        ids = json.loads(Path(args.publish).read_text())
        print(json.dumps(asyncio.run(publish(ids, args.seconds))))
        return
    with tempfile.TemporaryDirectory() as tmp:
        db_path = Path(tmp) / "bench.sqlite3"
        pairs = prepare(db_path, args.sockets)
        ids_file = Path(tmp) / "ids.json"
        ids_file.write_text(json.dumps([sid for sid, _ in pairs]))
        results = {}
        for kind in args.servers.split(","):
            port = free_port()
            server = start_server(kind, port, server_env(db_path))
            try:
                results[kind] = asyncio.run(run_clients(port, pairs, args.seconds, ids_file))
            finally:
                server.terminate()
                server.wait(timeout=10)
            print(kind, results[kind], flush=True)
    print(ws_section(results, args.seconds))


if __name__ == "__main__":
    main()
