"""The media worker service: calls from the control API, secure state, card digits.

How the web tier talks to a worker
----------------------------------
The control API (`securepay.calls_api`, in Daphne) writes the `securepay.calls.Call`
row first - with the UDP ports it allocated from the worker's range, so it can
answer the integration at once - and then sends one channel-layer message to the
worker's own group ``media.worker.<MEDIA_WORKER_ID>`` (a group, not a named channel:
the worker is subscribed before it reports ready, so no message falls in between):

* ``{"type": "call.start", "call": id}`` - bind the ports of the row, relay;
* ``{"type": "call.link", "call": id, "session": sid}`` - the API checked the code;
* ``{"type": "call.unlink", "call": id, "session": sid}`` - another call claimed
  the session (one live call per session);
* ``{"type": "call.event", "call": id, "event": E, "supervisor": name|None}``,
  E one of hold, unhold, switch_line, monitor_stop, barge, hangup;
* ``{"type": "call.supervisor", "call": id, "name": n, "mode": m|None}`` - add
  or change (mode) or remove (mode None) a supervisor leg; its port is in the row.

Messages carry no digits. The worker owns everything that happens on the
call: it marks the linked session secured/unsecured and feeds the caller's key
presses to the session's card capture through the same `securepay.live.hub`
the keypad simulator drives (one way to do each thing), so agent pages behave
the same with real calls and with the simulator.

Secure state: a `link` (API, or the agent keying the session's code on their
own phone) secures, unless the caller is on hold (then `unhold` does). A session
has one live call: whoever links claims it for the call (`Call.claim_session`,
under the session's row lock; a code keyed on the agent's phone never takes a
session another live call holds), and a worker secures it, or records a break,
only while its call holds it - asked under that same lock, so a later claim
always wins; a call that lost it loses its keys, and its worker unsecures the
session only if it was the one that had secured it. Hold, switch_line,
monitor_stop, barge and hangup unsecure with that reason (after any break but
hold the worker listens for the agent's code again, so keying it re-secures); a
hangup has already ended the row and unsecured the session in the API (the
worker may be gone) - the worker stops relaying. No RTP for
MEDIA_RTP_TIMEOUT_SECONDS tears the call down (`link_lost`), and so does a call
of this worker it never relayed (its start message was lost), at its next sign
of life (MediaWorkerBeat, every BEAT_INTERVAL_S, with the share of a core the process
used since the last: the API starts calls only on a worker seen lately and not busy).
A worker that starts ends the calls a previous run left
live and unsecures their open sessions and every session it had secured
(`link_lost`) - never silently secure. Masking of the caller's key tones never
depends on any of this: every call is masked, always, as its tenant chose
(`Tenant.key_masking`: one flat tone or silence per key).

In the demo (MEDIA_WORKER_MODE=inprocess) the worker runs as a task on the
Daphne event loop, started by the first call the API creates (`ensure_inprocess`).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta

from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from media import calls as media_calls
from media.capture import CLEAR_KEY, DIGITS, END_KEY
from media.dtmf import SAMPLE_RATE, KeyPress
from media.relay import Relay
from securepay.calls import (
    BEAT_INTERVAL_S,
    CallNotLive,
    CallState,
    EndReason,
    MediaWorkerBeat,
    WorkerUnavailable,
    held_by_no_live_call,
)
from securepay.calls import Call as CallRow
from securepay.live import MediaHub, hub
from securepay.models import BreakReason, IllegalTransition, PaymentSession

logger = logging.getLogger(__name__)

CALL_BREAKS = {
    "hold": BreakReason.HOLD,
    "switch_line": BreakReason.LINE_SWITCH,
    "monitor_stop": BreakReason.MONITOR_STOP,
    "barge": BreakReason.BARGE,
    "hangup": BreakReason.HANGUP,
}
CALL_EVENTS = (*CALL_BREAKS, "unhold")
CAPTURE_KEYS = DIGITS | {CLEAR_KEY, END_KEY}
CODE_LENGTH = 4
TICK_S = 0.5
BEAT_TICKS = round(BEAT_INTERVAL_S / TICK_S)  # the API and the recovery sweep go by these signs of life


class LoadMeter:
    """Share of one core the process used between two readings. All of its threads count:
    the database work the worker runs in threads holds the GIL as the event loop would,
    so it delays the audio just the same. (Time the host steals from the process, or
    other processes on its core, do not show here.)"""

    def __init__(
        self, cpu: Callable[[], float] = time.process_time, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._cpu, self._clock = cpu, clock
        self._last = (cpu(), clock())

    def read(self) -> float:
        cpu, now = self._cpu(), self._clock()
        (last_cpu, last_now), self._last = self._last, (cpu, now)
        return (cpu - last_cpu) / (now - last_now) if now > last_now else 0.0


def worker_group(worker_id: str) -> str:
    return f"media.worker.{worker_id}"


def parse_address(text: str) -> tuple[str, int] | None:
    if not text:
        return None
    host, _, port = text.rpartition(":")
    return host, int(port)


@dataclass
class CallLink:
    """What the worker knows about a call beyond its media."""

    tenant_id: int
    session_id: str | None = None
    linked: bool = False  # linked and not broken since: secured unless on hold
    on_hold: bool = False
    agent_digits: str = ""
    # Where the caller's timeline was when the call was last secured: a key pressed
    # before it (on hold, before the link) is refused even if it ends after it.
    secured_from_ms: float = 0.0
    started: float = 0.0
    supervisors: dict[str, str] = field(default_factory=dict)
    linking: bool = False  # a link is being recorded: its session counts as open meanwhile


class MediaWorker:
    def __init__(
        self,
        worker_id: str | None = None,
        host: str | None = None,
        rtp_timeout_s: float | None = None,
        session_hub: MediaHub = hub,
    ) -> None:
        self.worker_id = worker_id or settings.MEDIA_WORKER_ID
        self.host = host or settings.MEDIA_RTP_HOST
        self.rtp_timeout_s = rtp_timeout_s if rtp_timeout_s is not None else settings.MEDIA_RTP_TIMEOUT_SECONDS
        self.hub = session_hub
        self.relay = Relay(self._on_keys)
        self.links: dict[str, CallLink] = {}
        self._jobs: asyncio.Queue = asyncio.Queue()
        self._job_running = False
        self._ticks = 0
        self._load: LoadMeter | None = None  # from run(): a worker that is not running measures nothing
        self.ready = asyncio.Event()

    @property
    def idle(self) -> bool:
        """No job queued or running, while the worker runs. Wait for it before stopping the
        worker: a job's database work runs in a thread that cancelling does not stop."""
        return self._jobs.empty() and not self._job_running

    # --- running ------------------------------------------------------------
    async def run(self) -> None:
        """Recover, then serve until cancelled."""
        await database_sync_to_async(self.recover)()
        self._load = LoadMeter()
        await self.hub.ensure_listening()
        layer = get_channel_layer()
        channel = await layer.new_channel("media.worker.")
        await layer.group_add(worker_group(self.worker_id), channel)
        tasks = [
            asyncio.create_task(self._serve_jobs()),
            asyncio.create_task(self._tick()),
        ]
        self.ready.set()
        try:
            while True:
                message = await layer.receive(channel)
                self._jobs.put_nowait(self._handle_message(message))
        finally:
            for task in tasks:
                task.cancel()
            self.relay.close()
            await layer.group_discard(worker_group(self.worker_id), channel)

    def recover(self) -> None:
        """A previous run's live calls are gone: end them, unsecure their open sessions
        and every session it had secured (the API may have moved a row to another session)."""
        # Alive: the recovery sweep leaves its calls alone; idle: the load of a previous run is not ours.
        MediaWorkerBeat.beat(self.worker_id, load=0.0, calls=0)
        lost: set[str] = set()
        for row in CallRow.objects.filter(worker_id=self.worker_id, state=CallState.LIVE).select_related("session"):
            row.end(EndReason.WORKER_RESTART)
            if row.session is not None and row.session.is_open:
                lost.add(str(row.session_id))
        secured_here = PaymentSession.objects.open().filter(secured_by=self.worker_id).values_list("pk", flat=True)
        lost.update(str(pk) for pk in secured_here)
        for session_id in lost:
            self.hub.lose_link(session_id)

    async def _serve_jobs(self) -> None:
        # One queue, one consumer: a call's messages and key presses keep their order.
        while True:
            job = await self._jobs.get()
            self._job_running = True
            try:
                await job
            except Exception:  # one failed job must not stop the worker; jobs hold no card data
                logger.exception("media worker %s: job failed", self.worker_id)
            finally:
                self._job_running = False

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(TICK_S)
            try:
                self._tick_once()
            except Exception:  # a failed tick must not end the ticking: RTP timeouts break sessions
                logger.exception("media worker %s: tick failed", self.worker_id)

    def _tick_once(self) -> None:
        self._ticks += 1
        if self._ticks % BEAT_TICKS == 0:
            measured = (self._load.read(), len(self.relay.calls)) if self._load else (None, None)
            self._jobs.put_nowait(self._beat(*measured))
        self.relay.send_reports()
        started = {call_id: link.started for call_id, link in self.links.items()}
        for call_id in self.relay.idle_calls(self.rtp_timeout_s, started):
            self._stop_relaying(call_id, EndReason.RTP_TIMEOUT)  # now; the rest in order
            self._jobs.put_nowait(self._end_call(call_id, EndReason.RTP_TIMEOUT, BreakReason.LINK_LOST))
        for call_id, link in self.links.items():
            call = self.relay.calls.get(call_id)
            if call is not None and link.session_id and call.session_open and not link.linking:
                # The session ended (agent, API): a barging supervisor may hear the caller again.
                call.session_open = self.hub.is_linked(link.session_id)

    async def _beat(self, load: float | None = None, calls: int | None = None) -> None:
        await database_sync_to_async(self._sign_of_life)(load, calls)

    def _sign_of_life(self, load: float | None, calls: int | None) -> None:
        """A sign of life with the worker's load and the calls it relays (the API starts no
        call on a busy worker); calls of this worker it does not relay (their start message
        was lost) end once they are older than the RTP timeout, as a silent call would."""
        MediaWorkerBeat.beat(self.worker_id, load, calls)
        cutoff = timezone.now() - timedelta(seconds=self.rtp_timeout_s)
        rows = CallRow.objects.filter(worker_id=self.worker_id, state=CallState.LIVE, created_at__lt=cutoff)
        for pk in rows.values_list("pk", flat=True):
            if str(pk) not in self.links:
                self._end_unrelayed(str(pk))

    def _end_unrelayed(self, call_id: str) -> None:
        with transaction.atomic():
            row = CallRow.objects.select_for_update().filter(pk=call_id, state=CallState.LIVE).first()
            if row is None:
                return
            row.end(EndReason.RTP_TIMEOUT)
        logger.warning("media worker %s: call %s was never relayed here: ended", self.worker_id, call_id)
        if row.session_id is not None:
            self.hub.lose_link(row.session_id, only_if=held_by_no_live_call)

    # --- control messages ------------------------------------------------------
    async def _handle_message(self, message: dict) -> None:
        kind, call_id = message.get("type"), str(message.get("call", ""))
        if kind == "call.start":
            await self._start_call(call_id)
        elif call_id not in self.links:
            logger.info("media worker %s: %s for unknown call %s", self.worker_id, kind, call_id)
        elif kind == "call.link":
            await self._link(call_id, str(message["session"]))
        elif kind == "call.unlink":
            await self._unlink(call_id, str(message["session"]))
        elif kind == "call.event":
            await self._event(call_id, message["event"], message.get("supervisor"))
        elif kind == "call.supervisor":
            await self._supervisor(call_id, message["name"], message.get("mode"))

    async def _start_call(self, call_id: str) -> None:
        live = CallRow.objects.filter(pk=call_id, state=CallState.LIVE).select_related("tenant")
        row = await database_sync_to_async(live.first)()
        if row is None or call_id in self.links:
            return
        call = media_calls.Call(
            call_id,
            codec=row.codec,
            event_payload_type=row.event_payload_type,
            mask_mode=row.tenant.key_masking,  # fixed for the call: a change applies to later calls
            audio=self.relay.audio,
        )
        call.caller.peer = parse_address(row.caller_address)
        call.agent.peer = parse_address(row.agent_address)
        # Fail closed until _link settles it: a barging supervisor added below hears nothing of the caller.
        call.session_open = row.session_id is not None
        try:
            await self.relay.open_leg(call, call.caller, self.host, row.caller_port)
            await self.relay.open_leg(call, call.agent, self.host, row.agent_port)
        except OSError as exc:
            logger.error("media worker %s: call %s cannot bind: %s", self.worker_id, call_id, exc)
            self.relay.close_call(call_id)
            call.close()  # also when no leg got bound (the relay never held the call)
            await database_sync_to_async(row.end)(EndReason.BIND_FAILED)
            return
        self.links[call_id] = CallLink(row.tenant_id, started=asyncio.get_running_loop().time())
        for name, supervisor in row.supervisors.items():
            await self._supervisor(call_id, name, supervisor["mode"])
        if row.session_id is not None:
            await self._link(call_id, str(row.session_id))

    async def _link(self, call_id: str, session_id: str, resecure: bool = False) -> None:
        """Secure the session for the call, unless the caller is on hold (then unhold does,
        `resecure`). Only while the call holds the session: whoever linked it (the API, the
        agent's code) claimed it first, and a later claim by another call wins."""
        link, call = self.links[call_id], self.relay.calls.get(call_id)
        if call is None:
            return
        # From now, not after the database's answer: barging supervisors hear no caller, and the
        # tick leaves that alone until the link is recorded (its card entry does not exist yet).
        call.session_open, link.linking = True, True
        try:
            # Keys count from here (read before any wait); a repeated link of a secured call keeps its start.
            already_secured = link.linked and not link.on_hold and link.session_id == session_id and not resecure
            position_ms = call.caller.timeline.next_position * 1000 / SAMPLE_RATE
            if link.session_id and link.session_id != session_id and link.linked:
                await self._break(call_id, BreakReason.LINE_SWITCH)  # the old session loses this call
            for other_id, other in self.links.items():
                if other_id != call_id and other.session_id == session_id:
                    self._drop_session(other_id)  # one live call per session: the one that claimed it last
            link.session_id = session_id
            try:
                holds = await database_sync_to_async(self._link_session)(call_id, session_id, link.on_hold)
            except (IllegalTransition, PaymentSession.DoesNotExist):
                logger.info("media worker %s: session of call %s is not open", self.worker_id, call_id)
                call.session_open = False
                return
        finally:
            link.linking = False
        if not holds:
            logger.info("media worker %s: call %s no longer holds session %s", self.worker_id, call_id, session_id)
            self._drop_session(call_id)
            return
        link.linked = True
        if not link.on_hold and not already_secured:
            link.secured_from_ms = position_ms
            held_through = call.caller_keys.abandon_press()  # pressed before: refused (and counted)
            if held_through in CAPTURE_KEYS:
                self._jobs.put_nowait(self._refuse(session_id, held_through))
        call.session_open = True
        call.listen_for_agent_code = False

    def _link_session(self, call_id: str, session_id: str, on_hold: bool) -> bool:
        return self.hub.link(session_id, self.worker_id, on_hold, only_if=self._held_by(call_id), call_id=call_id)

    def _held_by(self, call_id: str) -> Callable[[PaymentSession], bool]:
        """Whether the call still holds the session, asked under the session's row lock
        (which every claim takes): a claim cannot slip in between."""
        return lambda session: self._holds(call_id, session.pk)

    @staticmethod
    def _holds(call_id: str, session_id) -> bool:
        return CallRow.objects.filter(pk=call_id, session_id=session_id, state=CallState.LIVE).exists()

    async def _unlink(self, call_id: str, session_id: str) -> None:
        """Another call (of this worker or another) claimed the session."""
        if self.links[call_id].session_id == session_id:
            self._drop_session(call_id)
            await database_sync_to_async(self._release_session)(session_id)

    def _release_session(self, session_id: str) -> None:
        """Forget the session's card entry; if this worker's call had secured it and the
        new call's worker has not secured it since, it is not secure any more."""
        self.hub.release(session_id)
        self.hub.break_link(session_id, BreakReason.LINE_SWITCH, only_if=lambda s: s.secured_by == self.worker_id)

    def _drop_session(self, call_id: str) -> None:
        """The call lost its session to another call: it may neither secure it nor key into it."""
        link = self.links[call_id]
        link.session_id, link.linked = None, False
        call = self.relay.calls.get(call_id)
        if call is not None:
            call.session_open = False
            call.listen_for_agent_code = True

    async def _break(self, call_id: str, reason: str) -> None:
        link = self.links[call_id]
        if link.session_id is None:
            return
        if reason != BreakReason.HOLD:
            link.linked = False
            call = self.relay.calls.get(call_id)
            if call is not None:
                call.listen_for_agent_code = True  # the agent may re-secure it by keying its code again
        await database_sync_to_async(self._break_session)(call_id, link.session_id, reason)

    def _break_session(self, call_id: str, session_id: str, reason: str) -> None:
        """The call's event breaks the session's secure state - unless the call lost the
        session to another call meanwhile (then only what this worker had secured)."""
        held = self._held_by(call_id)
        try:
            # Also when ended: its `end` may have been lost.
            self.hub.break_link(session_id, reason, only_if=lambda s: held(s) or s.secured_by == self.worker_id)
        except PaymentSession.DoesNotExist:
            self.hub.release(session_id)

    async def _event(self, call_id: str, event: str, supervisor: str | None) -> None:
        link = self.links[call_id]
        if event == "hangup":
            self._stop_relaying(call_id, EndReason.HANGUP)
            await self._end_call(call_id, EndReason.HANGUP, BreakReason.HANGUP)
            return
        if event == "unhold":
            was_on_hold, link.on_hold = link.on_hold, False
            if was_on_hold and link.linked and link.session_id:
                await self._link(call_id, link.session_id, resecure=True)
            return
        if event == "hold":
            link.on_hold = True
        if supervisor and event in media_calls.SUPERVISOR_EVENTS:
            await self._supervisor(call_id, supervisor, "barge" if event == "barge" else None, secure_effect=False)
        await self._break(call_id, CALL_BREAKS[event])

    async def _supervisor(self, call_id: str, name: str, mode: str | None, secure_effect: bool = True) -> None:
        call = self.relay.calls.get(call_id)
        if call is None:
            return
        link = self.links[call_id]
        previous = link.supervisors.get(name)
        if mode is None:
            call.remove_supervisor(name)
            self.relay.close_leg(call, name)
            link.supervisors.pop(name, None)
            if secure_effect and previous is not None:
                await self._break(call_id, BreakReason.MONITOR_STOP)
            return
        if previous is None:
            row = await database_sync_to_async(CallRow.objects.get)(pk=call_id)
            leg = call.add_supervisor(name, mode)
            entry = row.supervisors.get(name, {})
            leg.peer = parse_address(entry.get("address", ""))
            try:
                await self.relay.open_leg(call, leg, self.host, entry["port"])
            except (OSError, KeyError) as exc:
                call.remove_supervisor(name)
                logger.error("media worker %s: supervisor leg %s not opened: %s", self.worker_id, name, exc)
                return
        else:
            call.add_supervisor(name, mode)
        link.supervisors[name] = mode
        if secure_effect and mode == media_calls.BARGE and previous != media_calls.BARGE:
            await self._break(call_id, BreakReason.BARGE)

    def _stop_relaying(self, call_id: str, end_reason: str) -> None:
        """Close the call's sockets and log its packet counters (operators watch the drops)."""
        call = self.relay.close_call(call_id)
        if call is not None:
            received = {leg.name: leg.received for leg in call.legs}
            lost = sum(leg.reorder.lost for leg in call.legs)
            logger.info(
                "media worker %s: call %s ended (%s): received %s, lost %d, dropped %s",
                self.worker_id, call_id, end_reason, received, lost, dict(sorted(call.dropped.items())),
            )  # fmt: skip

    async def _end_call(self, call_id: str, end_reason: str, break_reason: str) -> None:
        self._stop_relaying(call_id, end_reason)
        link = self.links.pop(call_id, None)
        if link is None:
            return
        if link.session_id is not None:
            await database_sync_to_async(self._break_session)(call_id, link.session_id, break_reason)
        await database_sync_to_async(self._end_row)(call_id, end_reason)

    @staticmethod
    def _end_row(call_id: str, reason: str) -> None:
        row = CallRow.objects.filter(pk=call_id, state=CallState.LIVE).first()
        if row is not None:
            row.end(reason)

    # --- key presses --------------------------------------------------------------
    def _on_keys(self, call: media_calls.Call, received: media_calls.Received) -> None:
        link = self.links.get(call.call_id)
        if link is None:
            return
        presses = [press for press in received.caller_keys if press.digit in CAPTURE_KEYS]
        if presses and link.session_id:
            self._jobs.put_nowait(self._press(call.call_id, link.session_id, presses))
        for press in received.agent_keys:
            link.agent_digits = (link.agent_digits + press.digit)[-CODE_LENGTH:]
            if not link.linked and len(link.agent_digits) == CODE_LENGTH and link.agent_digits.isdigit():
                self._jobs.put_nowait(self._agent_code(call.call_id, link.agent_digits))

    async def _press(self, call_id: str, session_id: str, presses: list[KeyPress]) -> None:
        link = self.links.get(call_id)
        if link is None or link.session_id != session_id:
            return  # the call lost the session before its keys got here: another call keys into it now
        if not await database_sync_to_async(self._holds)(call_id, session_id):
            # Another call claimed it and this worker has not heard yet (call.unlink is on its way).
            self._drop_session(call_id)
            return
        secured = link.linked and not link.on_hold
        for press in presses:
            accepted = secured and press.start_ms >= link.secured_from_ms
            await database_sync_to_async(self.hub.press_key)(session_id, press.digit, accepted)

    async def _refuse(self, session_id: str, digit: str) -> None:
        await database_sync_to_async(self.hub.press_key)(session_id, digit, False)

    async def _agent_code(self, call_id: str, code: str) -> None:
        link = self.links.get(call_id)
        if link is None or link.linked:
            return
        session_id = await database_sync_to_async(self._claim_session_with_code)(call_id, link.tenant_id, code)
        if session_id is not None:
            link.agent_digits = ""
            await self._link(call_id, session_id)

    @staticmethod
    def _claim_session_with_code(call_id: str, tenant_id: int, code: str) -> str | None:
        """Claim for the call the tenant's open session with this code, unless a live call
        holds it: an agent keying digits never takes a session away from another call."""
        with transaction.atomic():
            session = PaymentSession.objects.select_for_update().filter(tenant_id=tenant_id, code=code).open().first()
            if session is None:
                return None
            # Asked after the lock: a claim that committed meanwhile is seen.
            if CallRow.objects.filter(session=session, state=CallState.LIVE).exclude(pk=call_id).exists():
                return None
            try:
                CallRow(pk=call_id).claim_session(session.pk)
            except CallNotLive:
                return None
            return str(session.pk)


_inprocess: dict[int, tuple[MediaWorker, asyncio.Task]] = {}
INPROCESS_START_TIMEOUT_S = 10.0


async def ensure_inprocess() -> None:
    """Demo: run the worker on this (Daphne's) event loop, once; return when it is ready
    (also for a request that arrives while it starts). Raises WorkerUnavailable when it
    fails to start, or takes longer than INPROCESS_START_TIMEOUT_S."""
    loop = asyncio.get_running_loop()
    worker, task = _inprocess.get(id(loop), (None, None))
    if task is None or task.done():
        worker = MediaWorker()
        # A fresh context: started from a request, the task would inherit asgiref's
        # per-request executor, which quits with the request and breaks every later
        # database_sync_to_async of the worker.
        task = loop.create_task(worker.run(), context=contextvars.Context())
        _inprocess[id(loop)] = (worker, task)
    if worker.ready.is_set():
        return
    ready = asyncio.ensure_future(worker.ready.wait())
    await asyncio.wait({task, ready}, timeout=INPROCESS_START_TIMEOUT_S, return_when=asyncio.FIRST_COMPLETED)
    if not ready.done():  # failed to start (database, channel layer), or stuck: no call can be relayed
        ready.cancel()
        error = task.exception() if task.done() and not task.cancelled() else None
        raise WorkerUnavailable(f"the in-process media worker did not start: {error or 'timed out'!r}") from error
