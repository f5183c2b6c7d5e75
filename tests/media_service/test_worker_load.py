"""A media worker's load: the share of a core its whole process used, carried by each sign
of life, read by the API before it starts a call there (tests/media_service/test_calls_api.py)."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from asgiref.sync import async_to_sync
from channels.db import database_sync_to_async

from media import service
from media.service import LoadMeter, MediaWorker
from securepay.calls import MediaWorkerBeat, start_call
from securepay.live import MediaHub

WORKER_ID = "load-test"


def spin(seconds: float) -> None:
    """Use the CPU in this thread for `seconds` of its own CPU time."""
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


def test_the_meter_reads_the_share_of_a_core_the_process_used_in_any_thread():
    meter = LoadMeter()
    spin(0.2)  # as the event loop relaying
    loop_busy = meter.read()
    other = threading.Thread(target=spin, args=(0.2,))  # as the worker's database threads: the GIL is theirs
    other.start()
    other.join()
    thread_busy = meter.read()
    time.sleep(0.2)
    idle = meter.read()
    # ~1 on an idle core; a busy CI machine may share it
    assert loop_busy > 0.3 and thread_busy > 0.3, (loop_busy, thread_busy)
    assert idle < 0.2, idle


def test_the_meter_divides_cpu_time_by_the_time_between_readings():
    cpu, clock = iter([1.0, 1.5, 1.5]), iter([10.0, 12.0, 12.0])
    meter = LoadMeter(cpu=lambda: next(cpu), clock=lambda: next(clock))
    assert meter.read() == 0.25
    assert meter.read() == 0.0  # no time passed: no reading to make


@pytest.mark.django_db(transaction=True)
def test_each_sign_of_life_carries_the_load_measured_since_the_last_and_the_calls_relayed(alpha):
    worker = MediaWorker(WORKER_ID, "127.0.0.1", 30, MediaHub())
    try:
        MediaWorkerBeat.beat(WORKER_ID)
        calls = [start_call(alpha.tenant, worker_id=WORKER_ID) for _ in range(2)]
        cpu, clock = iter([0.0, 0.3]), iter([0.0, 5.0])
        worker._load = LoadMeter(cpu=lambda: next(cpu), clock=lambda: next(clock))
        worker._ticks = service.BEAT_TICKS - 1  # the next tick beats

        async def relay_tick_and_beat() -> None:
            for call in calls:
                await worker._start_call(str(call.pk))
            worker._tick_once()
            await worker._jobs.get_nowait()

        async_to_sync(relay_tick_and_beat)()
        beat = MediaWorkerBeat.objects.get(worker_id=WORKER_ID)
        assert (beat.load, beat.calls) == (pytest.approx(0.06), 2)
    finally:
        worker.relay.close()


@pytest.mark.django_db(transaction=True)
def test_a_worker_that_starts_again_is_not_held_to_the_load_of_its_last_run():
    MediaWorkerBeat.beat(WORKER_ID, load=0.95, calls=80)  # its last run was busy, then stopped
    worker = MediaWorker(WORKER_ID, "127.0.0.1", 30, MediaHub())
    try:
        worker.recover()  # the start of its new run: it relays no call yet
        beat = MediaWorkerBeat.objects.get(worker_id=WORKER_ID)
        assert (beat.load, beat.calls) == (0.0, 0)
    finally:
        worker.relay.close()


@pytest.mark.django_db(transaction=True)
def test_a_running_worker_beats_with_the_load_it_measured(settings, monkeypatch):
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    monkeypatch.setattr(service, "TICK_S", 0.02)
    monkeypatch.setattr(service, "BEAT_TICKS", 1)  # every tick beats
    worker = MediaWorker(WORKER_ID, "127.0.0.1", 30, MediaHub())
    unmeasured = -1.0

    @database_sync_to_async
    def load_written(value: float | None = None) -> float:
        rows = MediaWorkerBeat.objects.filter(worker_id=WORKER_ID)
        if value is not None:
            rows.update(load=value)
        return rows.get().load

    async def scenario() -> float:
        running = asyncio.create_task(worker.run())
        try:
            await asyncio.wait_for(worker.ready.wait(), 10)
            load = await load_written(unmeasured)  # after recover() wrote its 0
            deadline = time.monotonic() + 5
            while load == unmeasured and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
                load = await load_written()
            return load
        finally:
            running.cancel()
            await asyncio.gather(running, return_exceptions=True)

    load = async_to_sync(scenario)()
    assert load != unmeasured, "the worker never wrote a load it measured"
    assert 0.0 <= load < 2.0


@pytest.mark.django_db
def test_a_beat_takes_its_load_and_calls_together():
    with pytest.raises(ValueError, match="give both or neither"):
        MediaWorkerBeat.beat(WORKER_ID, load=0.5)
    assert not MediaWorkerBeat.objects.exists()
