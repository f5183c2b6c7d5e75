"""`python manage.py simulate_call --code 1234 --keys "4242424242424242#1228123"`.

Acts as both phones of a call: starts the call and links it by code through the
same functions as the control API, streams the caller's key presses as real
DTMF (in-band, RFC 4733 or both) over RTP in real time to the media worker, and
records what the agent's handset receives. With MEDIA_WORKER_MODE=inprocess the
worker runs inside this command (it then reaches agent pages only through a
shared channel layer, i.e. REDIS_URL): a worker of its own (`simulate-<random>`),
so its start-up recovery ends only calls of its own and never those of the
web process's in-process worker (`MEDIA_WORKER_ID`); it is subscribed before
the call is started, so the start message cannot be lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import time
import uuid

import numpy as np
from channels.db import database_sync_to_async
from django.conf import settings
from django.db import transaction

from media.calls import CODECS
from media.codecs import write_wav
from media.phones import Phones
from media.service import MediaWorker
from media.softphone import KEY_MODES, caller_packets, silence_packets
from securepay.calls import (
    Call,
    CallState,
    NoFreePort,
    UnknownCode,
    WorkerBusy,
    WorkerUnavailable,
    link_call,
    start_call,
)
from securepay.models import PaymentSession
from tenants.management.commands._base import OperatorCommand
from tenants.models import Tenant

KEYS_PATTERN = re.compile(r"^[0-9*#]{1,64}$")
LINK_WAIT_S = 3.0
ACTOR = "simulate_call"


class Command(OperatorCommand):
    help = "Simulate a phone call that keys a card into the payment session with this code."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--code", required=True, help="The session's 4-digit code.")
        parser.add_argument("--keys", required=True, help='Keys the caller presses, e.g. "4242424242424242#1228123".')
        parser.add_argument("--mode", choices=KEY_MODES, default="inband")
        parser.add_argument("--tenant", help="Tenant slug (when several tenants have an open session with the code).")
        parser.add_argument("--codec", choices=sorted(CODECS), default="PCMU")
        parser.add_argument("--record", help="Write what the agent hears to this WAV file.")
        parser.add_argument(
            "--hangup",
            action="store_true",
            help="Hang up at the end (unsecures the session). With MEDIA_WORKER_MODE=inprocess the call always "
            "ends with the command: its worker stops with it, and a call nobody relays must not stay secured.",
        )

    def handle(self, *args, code, keys, mode, tenant, codec, record, hangup, **options) -> None:
        if not re.fullmatch(r"\d{4}", code):
            raise self.fail("--code must be 4 digits")
        if not KEYS_PATTERN.match(keys):
            raise self.fail("--keys may only hold 0-9, * and # (at most 64)")
        sessions = PaymentSession.objects.open().filter(code=code)
        if tenant:
            sessions = sessions.filter(tenant__slug=tenant)
        tenant_ids = set(sessions.values_list("tenant_id", flat=True))
        if len(tenant_ids) != 1:
            raise self.fail(f"no open session with code {code}" if not tenant_ids else "several tenants: give --tenant")
        call_tenant = Tenant.objects.get(pk=tenant_ids.pop())
        worker = MediaWorker(f"simulate-{uuid.uuid4().hex[:12]}") if settings.MEDIA_WORKER_MODE == "inprocess" else None
        try:
            call, heard, stats = asyncio.run(self._run(worker, call_tenant, code, keys, mode, codec, hangup))
        except asyncio.CancelledError:
            raise self.fail("stopped (SIGTERM)" + (": the call was hung up" if worker else "")) from None
        if record:
            write_wav(record, heard)
        self.stdout.write(
            f"call {call.pk}: sent {len(keys)} keys ({mode}) in {stats['caller_packets']} packets; "
            f"agent leg received {stats['agent_packets']} packets" + (f", recorded to {record}" if record else "")
        )

    async def _run(self, worker, tenant, code, keys, mode, codec, hangup) -> tuple[Call, np.ndarray, dict]:
        worker_task = asyncio.create_task(worker.run()) if worker else None
        # A stop (SIGTERM: kill, systemd, docker) cancels the run, so the `finally` below
        # still hangs up: the call must not stay secured with nobody relaying it.
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, asyncio.current_task().cancel)
        call = None
        try:
            if worker:
                await self._wait_ready(worker, worker_task)
            call = await database_sync_to_async(self._start_call)(worker, tenant, codec)
            session = await database_sync_to_async(link_call)(call, code)
            await self._wait_secured(session.pk)
            heard, stats = await self._phones(call, keys, mode, codec)
            if hangup and not worker:
                await self._hang_up(call)
            return call, heard, stats
        except UnknownCode:
            raise self.fail(f"no open session with code {code}")
        finally:
            # A second SIGTERM stops the process at once (its threads with it), not this clean-up half-way.
            asyncio.get_running_loop().remove_signal_handler(signal.SIGTERM)
            if worker_task:
                if call is not None:  # also after a failure: nobody relays the call once the command stops
                    await self._hang_up(call)
                    await self._until_handled(worker, worker_task, call)
                worker_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await worker_task

    @staticmethod
    async def _wait_ready(worker: MediaWorker, worker_task: asyncio.Task) -> None:
        """Until the worker is subscribed to its group; its error if it fails before."""
        ready = asyncio.create_task(worker.ready.wait())
        await asyncio.wait({ready, worker_task}, return_when=asyncio.FIRST_COMPLETED)
        if not ready.done():
            ready.cancel()
            worker_task.result()

    def _start_call(self, worker: MediaWorker | None, tenant: Tenant, codec: str) -> Call:
        """Through the control API's `start_call`, to this command's own worker when it has one."""
        try:
            return start_call(
                tenant, worker_id=worker.worker_id if worker else None, codec=codec, reference="simulate_call"
            )
        except (NoFreePort, WorkerBusy) as exc:
            raise self.fail(str(exc))
        except WorkerUnavailable as exc:
            raise self.fail(f"{exc} (is `manage.py media_worker` running?)")

    async def _wait_secured(self, session_id) -> None:
        deadline = time.monotonic() + LINK_WAIT_S
        while time.monotonic() < deadline:
            session = await database_sync_to_async(PaymentSession.objects.get)(pk=session_id)
            if session.is_secured:
                return
            await asyncio.sleep(0.05)
        raise self.fail("the media worker did not link the call (is `manage.py media_worker` running?)")

    @staticmethod
    async def _until_handled(worker: MediaWorker, worker_task: asyncio.Task, call: Call) -> None:
        """The command's worker has handled the hang-up (closed the call's sockets, recorded what
        it records): stopping it mid-job would leave its database work running on its own."""
        deadline = time.monotonic() + LINK_WAIT_S
        while str(call.pk) in worker.links or not worker.idle:
            if worker_task.done() or time.monotonic() > deadline:
                return
            await asyncio.sleep(0.01)

    async def _hang_up(self, call: Call) -> None:
        await database_sync_to_async(self._hang_up_row)(call.pk)

    @staticmethod
    def _hang_up_row(call_id) -> None:
        """As the control API's hangup: the row ends and the session is unsecured now, whether
        or not a worker is there to hear it; the worker is told to stop relaying."""
        with transaction.atomic():
            call = Call.objects.select_for_update().filter(pk=call_id, state=CallState.LIVE).first()
            if call is not None:
                call.hang_up(ACTOR)

    async def _phones(self, call, keys, mode, codec) -> tuple[np.ndarray, dict]:
        sent, _audio = caller_packets(keys, mode, codec, call.event_payload_type)
        caller_port, agent_port = (call.host, call.caller_port), (call.host, call.agent_port)
        schedule = [(at, "caller", data, caller_port) for at, data in sent]
        schedule += [(at, "agent", data, agent_port) for at, data in silence_packets(sent[-1][0] + 0.5, codec)]
        phones = Phones(["caller", "agent"])
        try:
            await phones.play(schedule)
            stats = {"caller_packets": len(sent), "agent_packets": len(phones.received["agent"])}
            return phones.audio("agent", codec), stats
        finally:
            phones.close()
