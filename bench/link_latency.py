"""Link to green: from the telephony's link request to the agent page's "secured".

Issue 5 asks that the agent's page turns green within 200 ms of a call being
linked to its session. That is a speed target, so it is measured here, not in a
timed test: a real `manage.py media_worker` process, the control API, the Redis
channel layer, and a listener on the session's group (what the agent's socket
receives). Each round opens a session, creates a call, links it by code, waits
for the secured `session.state`, then hangs up.

    .venv/bin/python bench/link_latency.py [--rounds 40]
    # needs Redis on 127.0.0.1:6379 and PostgreSQL on 127.0.0.1:5432 (user postgres):
    # two processes write at once, which SQLite's file locking turns into stalls
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time

from report import ROOT, machine, write_section

REDIS_URL = "redis://127.0.0.1:6379/13"
POSTGRES = "postgres://postgres@127.0.0.1:5432"
DATABASE = "securepay_bench_link"
WORKER_ID = "bench-link"
TARGET_MS = 200.0


def fresh_database() -> str:
    import psycopg

    with psycopg.connect(f"{POSTGRES}/postgres", autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {DATABASE}")
        conn.execute(f"CREATE DATABASE {DATABASE}")
    return f"{POSTGRES}/{DATABASE}"


def manage(*args: str, env: dict) -> str:
    result = subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, check=True
    )
    return result.stdout


def start_worker(env: dict) -> subprocess.Popen:
    worker = subprocess.Popen(
        [sys.executable, "manage.py", "media_worker", "--worker-id", WORKER_ID, "--host", "127.0.0.1"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 30
    for line in worker.stdout:
        if "ready" in line:
            return worker
        if time.monotonic() > deadline:
            break
    worker.kill()
    raise SystemExit("media worker did not start")


async def one_round(layer, client, headers: dict, tenant, template) -> float:
    from asgiref.sync import sync_to_async

    from securepay.models import PaymentSession

    session = await sync_to_async(PaymentSession.open_for)(tenant=tenant, template=template, actor="bench")
    channel = await layer.new_channel()
    await layer.group_add(f"session.{session.pk}", channel)
    post = sync_to_async(lambda path, data: client.post(path, data, content_type="application/json", **headers))
    call = (await post("/api/v1/calls/", {})).json()
    await asyncio.sleep(0.05)  # let the worker bind the call's ports, as a real call's setup would
    started = time.perf_counter()
    response = await post(f"/api/v1/calls/{call['id']}/link/", {"code": session.code})
    assert response.status_code == 200, response.content
    while True:
        message = await asyncio.wait_for(layer.receive(channel), 5)
        if message.get("type") == "session.state" and message.get("secure_state") == "secured":
            break
    elapsed_ms = (time.perf_counter() - started) * 1000
    await post(f"/api/v1/calls/{call['id']}/events/", {"event": "hangup"})
    await layer.group_discard(f"session.{session.pk}", channel)
    return elapsed_ms


async def measure(rounds: int, api_key: str) -> list[float]:
    import django
    from django.test import Client

    django.setup()
    from channels.layers import get_channel_layer

    from tenants.models import PageTemplate, Tenant

    tenant = await Tenant.objects.aget(slug="bench")
    template = await PageTemplate.objects.aget(tenant=tenant, slug="default")
    layer, client = get_channel_layer(), Client()
    headers = {"HTTP_AUTHORIZATION": f"Bearer {api_key}"}
    return [await one_round(layer, client, headers, tenant, template) for _ in range(rounds)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=40)
    args = parser.parse_args()
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "securepay.settings",
        "DEBUG": "1",
        "DATABASE_URL": fresh_database(),
        "REDIS_URL": REDIS_URL,
        "MEDIA_WORKER_ID": WORKER_ID,
        "MEDIA_WORKER_MODE": "external",
    }
    manage("migrate", "-v0", env=env)
    manage("create_tenant", "--slug", "bench", "--name", "Bench", env=env)
    api_key = manage("create_api_key", "--tenant", "bench", env=env).strip().splitlines()[-1]
    os.environ.update(env)
    sys.path.insert(0, str(ROOT))
    worker = start_worker(env)
    try:
        samples = asyncio.run(measure(args.rounds, api_key))
    finally:
        worker.terminate()
        worker.wait(10)
    samples.sort()
    p50, p99 = statistics.median(samples), samples[min(len(samples) - 1, int(len(samples) * 0.99))]
    verdict = "met" if p99 <= TARGET_MS else "NOT met"
    body = f"""## Link to green (`bench/link_latency.py`)

Machine: {machine()}. {len(samples)} rounds: control API (in-process Django) → Redis channel layer →
`manage.py media_worker` process → `mark_secured` → secured `session.state` on the session's group
(what the agent's socket receives), PostgreSQL.

| rounds | p50 ms | p99 ms | max ms | target |
| ---: | ---: | ---: | ---: | --- |
| {len(samples)} | {p50:.1f} | {p99:.1f} | {samples[-1]:.1f} | p99 ≤ {TARGET_MS:.0f} ms: {verdict} |"""
    print(write_section("link", body))
    return 0


if __name__ == "__main__":
    sys.exit(main())
