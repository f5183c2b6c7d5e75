"""`python manage.py media_worker`: relay the RTP of calls, mask key tones, drive secure state."""

from __future__ import annotations

import asyncio
import contextlib
import signal

from media.relay import tune_gc_for_relaying
from media.service import MediaWorker
from tenants.management.commands._base import OperatorCommand


class Command(OperatorCommand):
    help = "Run a media worker (asyncio): RTP relay with key-tone masking for the calls the API starts."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--worker-id", help="Channel media.worker.<id> (default: MEDIA_WORKER_ID).")
        parser.add_argument("--host", help="Address to bind RTP ports on (default: MEDIA_RTP_HOST).")
        parser.add_argument("--rtp-timeout", type=float, help="Seconds without RTP before a call is torn down.")

    def handle(self, *args, worker_id=None, host=None, rtp_timeout=None, **options) -> None:
        if rtp_timeout is not None and rtp_timeout <= 0:
            raise self.fail("--rtp-timeout must be positive")
        tune_gc_for_relaying()
        asyncio.run(self._serve(MediaWorker(worker_id, host, rtp_timeout)))

    async def _serve(self, worker: MediaWorker) -> None:
        task = asyncio.create_task(worker.run())
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, task.cancel)
        await worker.ready.wait()
        self.stdout.write(f"media worker {worker.worker_id} ready on {worker.host}", ending="\n")
        self.stdout.flush()
        with contextlib.suppress(asyncio.CancelledError):
            await task
