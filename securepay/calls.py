"""Phone calls relayed by a media worker: the row the control API answers from.

The API writes the row (ports allocated here, so it can answer at once) and
tells the worker named in `worker_id`; the worker binds the ports and holds
the audio, digits and card capture in memory only. Nothing about key presses
is ever stored here.
"""

from __future__ import annotations

import logging
import random
import uuid
from datetime import datetime, timedelta

from django.conf import settings
from django.db import models, transaction
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from media.calls import BARGE, MONITOR, SUPERVISOR_EVENTS
from securepay.models import BreakReason, PaymentSession, SecureState
from tenants.models import Tenant, TenantScopedManager


class CallState(models.TextChoices):
    LIVE = "live", _("Live")
    ENDED = "ended", _("Ended")


class EndReason(models.TextChoices):
    HANGUP = "hangup", _("Hung up")
    RTP_TIMEOUT = "rtp_timeout", _("No RTP for too long")
    WORKER_RESTART = "worker_restart", _("Media worker restarted")
    BIND_FAILED = "bind_failed", _("Media worker could not open the ports")
    WORKER_LOST = "worker_lost", _("Media worker gone")


logger = logging.getLogger(__name__)


# A media worker writes a sign of life (MediaWorkerBeat) this often; one silent for
# WORKER_UNAVAILABLE_BEATS of them gets no new calls (nothing would bind their ports).
BEAT_INTERVAL_S = 5.0
WORKER_UNAVAILABLE_BEATS = 3


class NoFreePort(Exception):
    """The worker's RTP port range is exhausted."""


class WorkerUnavailable(Exception):
    """The media worker is not running (no recent sign of life, or it failed to start)."""


class WorkerBusy(Exception):
    """The media worker is at its limit: another call would delay the audio of every call it relays."""


class SupervisorConflict(Exception):
    """A supervisor leg cannot change so: `code` says why (the API's 409)."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code, self.detail = code, detail


class Call(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="calls")
    reference = models.CharField(max_length=200, blank=True)  # the telephony platform's call id
    worker_id = models.CharField(max_length=64)
    host = models.CharField(max_length=64)
    codec = models.CharField(max_length=4, default="PCMU")
    event_payload_type = models.PositiveSmallIntegerField(default=101)
    caller_port = models.PositiveIntegerField()
    agent_port = models.PositiveIntegerField()
    # Optional fixed peers ("host:port"); blank = learned from the first packet (symmetric RTP).
    caller_address = models.CharField(max_length=64, blank=True)
    agent_address = models.CharField(max_length=64, blank=True)
    # {name: {"mode": "monitor"|"barge", "port": int}}
    supervisors = models.JSONField(default=dict, blank=True)
    session = models.ForeignKey(PaymentSession, null=True, blank=True, on_delete=models.SET_NULL, related_name="calls")
    state = models.CharField(max_length=8, choices=CallState.choices, default=CallState.LIVE)
    end_reason = models.CharField(max_length=16, choices=EndReason.choices, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    ended_at = models.DateTimeField(null=True, blank=True)

    objects = TenantScopedManager()

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["worker_id", "state"])]

    def __str__(self) -> str:
        return f"call {self.id} ({self.state})"

    @property
    def is_live(self) -> bool:
        return self.state == CallState.LIVE

    def end(self, reason: str) -> None:
        self.state, self.end_reason, self.ended_at = CallState.ENDED, reason, timezone.now()
        self.save(update_fields=["state", "end_reason", "ended_at"])

    # The methods below run with the row locked by the caller (select_for_update): they
    # read `supervisors` and write it back.
    def telephony_event(self, event: str, supervisor: str | None, actor: str) -> None:
        """Hold, unhold, switch_line, monitor_stop, barge or hangup, for the worker to carry
        out. A break is never refused (fail closed): a supervisor name that is not one of the
        call's legs (or on another event) is dropped, and the event only breaks - a
        supervisor on the PBX's side."""
        if event == "hangup":
            self.hang_up(actor)
            return
        if event not in SUPERVISOR_EVENTS or supervisor not in self.supervisors:
            supervisor = None
        if supervisor is not None and event == "barge":
            if self.supervisors[supervisor]["mode"] != BARGE:
                self.supervisors[supervisor]["mode"] = BARGE
                self.save(update_fields=["supervisors"])
            self._note_barging(supervisor)
        elif supervisor is not None and event == "monitor_stop":
            del self.supervisors[supervisor]
            self.save(update_fields=["supervisors"])
        tell_worker(self, {"type": "call.event", "event": event, "supervisor": supervisor})

    def put_supervisor(self, name: str, mode: str, address: str) -> tuple[dict, bool]:
        """Add a supervisor leg, or change its mode: (its entry, whether it is new). A leg keeps
        its address; a barging supervisor hears nothing of the caller while the session is open,
        so barge does not turn back into monitor then (DESIGN), not even by leaving and coming
        back. The worker is told even when nothing changed: it reopens a leg that failed to bind.
        Raises NoFreePort, SupervisorConflict."""
        entry = self.supervisors.get(name)
        if entry is not None and address and address != entry["address"]:
            raise SupervisorConflict("supervisor_exists", f"Supervisor {name} is on this call from another address.")
        if mode == MONITOR and self._barged_in_open_session(name, entry):
            raise SupervisorConflict(
                "barged_during_session",
                "A supervisor who barged in hears nothing from the caller while the session is open.",
            )
        created = entry is None
        if created:
            (port,) = allocate_ports(self.worker_id, 1)
            entry = {"port": port, "address": address, "mode": mode}
        if created or entry["mode"] != mode:
            entry["mode"] = mode
            self.supervisors[name] = entry
            self.save(update_fields=["supervisors"])
        if mode == BARGE:
            self._note_barging(name)
        tell_worker(self, {"type": "call.supervisor", "name": name, "mode": mode})
        return entry, created

    def remove_supervisor(self, name: str) -> bool:
        """False when there is no such leg."""
        if name not in self.supervisors:
            return False
        del self.supervisors[name]
        self.save(update_fields=["supervisors"])
        tell_worker(self, {"type": "call.supervisor", "name": name, "mode": None})
        return True

    def _session_is_open(self) -> bool:
        return self.session_id is not None and self.session.is_open

    def _barged_in_open_session(self, name: str, entry: dict | None) -> bool:
        """The supervisor barges, or barged into any call of it, while the call's session is open."""
        if not self._session_is_open():
            return False
        if entry is not None and entry["mode"] == BARGE:
            return True
        return SessionBarge.objects.filter(session_id=self.session_id, supervisor=name).exists()

    def _note_barging(self, name: str) -> None:
        if self._session_is_open():
            SessionBarge.note(self.session_id, [name])

    def hang_up(self, actor: str) -> None:
        """The integration reports the call over: it ends now - a
        second hang-up or a link gets 409 - and its worker is told to stop relaying. The
        session it held is unsecured after commit, whether or not that worker is still there."""
        from securepay.live import hub

        self.end(EndReason.HANGUP)
        if self.session_id is None:
            tell_worker(self, {"type": "call.event", "event": "hangup", "supervisor": None})
            return
        session_id = self.session_id

        def not_recorded_yet(session: PaymentSession) -> bool:
            # The worker may have recorded this hang-up first.
            recorded = session.secure_state == SecureState.UNSECURED and session.break_reason == BreakReason.HANGUP
            return not recorded and held_by_no_live_call(session)

        def unsecure() -> None:
            try:
                hub.break_link(session_id, BreakReason.HANGUP, only_if=not_recorded_yet, actor=actor)
            except PaymentSession.DoesNotExist:
                pass

        # First, and whatever happens to the message: the row has ended for good.
        transaction.on_commit(unsecure, robust=True)
        tell_worker(self, {"type": "call.event", "event": "hangup", "supervisor": None})

    def claim_session(self, session_id) -> list[Call]:
        """Link this call to the session; its other live calls lose it (one live call per
        session: a call the agent left must neither secure it nor key into it), and their
        workers are told (`call.unlink`). Returns the calls that lost it.
        Raises CallNotLive when this call has ended (a hang-up may have come first)."""
        with transaction.atomic():
            PaymentSession.objects.select_for_update().get(pk=session_id)  # one claim of a session at a time
            # This call and the session's other live calls, locked in one go in key order:
            # two claims that cross (each taking the other's session) cannot deadlock.
            rows = list(
                Call.objects.select_for_update()
                .filter(models.Q(pk=self.pk) | models.Q(session_id=session_id, state=CallState.LIVE))
                .order_by("pk")
            )
            mine = next((row for row in rows if str(row.pk) == str(self.pk)), None)  # self.pk may be a str
            if mine is None or mine.state != CallState.LIVE:
                raise CallNotLive(self.pk)
            others = [row for row in rows if row is not mine]
            Call.objects.filter(pk__in=[other.pk for other in others]).update(session=None)
            Call.objects.filter(pk=self.pk).update(session_id=session_id)
            self.session_id = session_id
            SessionBarge.note(session_id, [name for name, entry in mine.supervisors.items() if entry["mode"] == BARGE])
            for other in others:
                # Also on this call's own worker: its call.link may never be handled (this call
                # hung up, or failed to bind, first), and the other call must lose the session anyway.
                tell_worker(other, {"type": "call.unlink", "session": str(session_id)})
        return others


class SessionBarge(models.Model):
    """A supervisor (by leg name) who barged into a call of the session while it was open,
    on whichever call: DESIGN - they hear nothing from the caller while it is open - so they
    cannot come back as a monitoring supervisor, on that call or another one of the session."""

    # No database constraint: noting a barge must not wait on the session row's lock (a link
    # holds it while it locks the call rows; a barge holds its call row).
    session = models.ForeignKey(PaymentSession, on_delete=models.CASCADE, db_constraint=False, related_name="+")
    supervisor = models.CharField(max_length=64)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["session", "supervisor"], name="one_barge_per_supervisor")]

    def __str__(self) -> str:
        return f"{self.supervisor} barged into session {self.session_id}"

    @classmethod
    def note(cls, session_id, names: list[str]) -> None:
        cls.objects.bulk_create([cls(session_id=session_id, supervisor=name) for name in names], ignore_conflicts=True)


def live_call_id(session_id) -> str:
    """The live call holding the session ("": none) - one at most (Call.claim_session)."""
    held = Call.objects.filter(session_id=session_id, state=CallState.LIVE).values_list("pk", flat=True).first()
    return "" if held is None else str(held)


def held_by_no_live_call(session: PaymentSession) -> bool:
    """For a call that ended: no live call holds its session now (a later claim's call owns
    its secure state, and its worker records it)."""
    return not live_call_id(session.pk)


class CallNotLive(Exception):
    """The call has ended: it cannot take a session."""


class MediaWorkerBeat(models.Model):
    """A media worker's last sign of life. A worker that stops and never comes back under
    its id cannot recover its own calls: the recovery sweep ends them instead."""

    worker_id = models.CharField(max_length=64, primary_key=True)
    seen_at = models.DateTimeField()
    # Share of one core the worker's process used between its last two beats, and the
    # calls it relayed at the last one: what a call costs it.
    load = models.FloatField(default=0.0)
    calls = models.PositiveIntegerField(default=0)

    def __str__(self) -> str:
        return f"media worker {self.worker_id} (seen {self.seen_at:%Y-%m-%d %H:%M:%S}, load {self.load:.0%})"

    @classmethod
    def beat(cls, worker_id: str, load: float | None = None, calls: int | None = None) -> None:
        """A sign of life; with the load the worker measured and the calls it relayed then,
        which go together (a beat with neither keeps the last ones)."""
        if (load is None) != (calls is None):
            raise ValueError("a beat's load and calls are measured together: give both or neither")
        fields = {"seen_at": timezone.now()}
        if load is not None:
            fields.update(load=load, calls=calls)
        cls.objects.update_or_create(worker_id=worker_id, defaults=fields)

    def refuse_another_call(self) -> None:
        """Raise WorkerBusy when the worker has no room for a new call: its load at MEDIA_WORKER_MAX_LOAD,
        or its live calls at MEDIA_WORKER_MAX_CALLS (0: no such cap). Past a core's capacity every
        call's audio is late, then lost; refusing the next call keeps the calls already relayed whole.

        The load is the last beat's (a 5 s average) plus, for each live call beyond those the worker
        relayed at that beat (started since, or not bound yet), what a call cost then (load / calls).
        Counting rows, not timestamps, holds across hosts' clocks and the worker's job queue. It is an
        estimate: the average is above a call's share at low counts (fixed costs) and below it just
        after a ramp (calls whose audio had barely begun), until the next beat measures again. A worker
        that relayed no call at its last beat (one just started) knows no cost per call: until its
        next beat a burst of calls is held back by the cap alone."""
        live = Call.objects.filter(worker_id=self.worker_id, state=CallState.LIVE).count()
        unmeasured = max(live - self.calls, 0) if self.calls else 0
        load = self.load + unmeasured * self.load / self.calls if unmeasured else self.load
        if load >= settings.MEDIA_WORKER_MAX_LOAD:
            counting = f", counting {unmeasured} call(s) it had not measured" if unmeasured else ""
            raise WorkerBusy(
                f"media worker {self.worker_id} is busy ({load:.0%} of its core in use{counting}, "
                f"limit {settings.MEDIA_WORKER_MAX_LOAD:.0%})"
            )
        cap = settings.MEDIA_WORKER_MAX_CALLS
        if cap and live >= cap:
            raise WorkerBusy(
                f"media worker {self.worker_id} relays {live} calls, its limit is {cap} (MEDIA_WORKER_MAX_CALLS)"
            )

    @classmethod
    def seen_within(cls, seconds: float, now: datetime | None = None) -> models.QuerySet:
        return cls.objects.filter(seen_at__gte=(now or timezone.now()) - timedelta(seconds=seconds))

    @classmethod
    def alive(cls, worker_id: str) -> models.QuerySet:
        """The worker's row if it was seen within the last WORKER_UNAVAILABLE_BEATS beats."""
        return cls.seen_within(BEAT_INTERVAL_S * WORKER_UNAVAILABLE_BEATS).filter(worker_id=worker_id)


def end_calls_of_lost_workers(now: datetime | None = None) -> int:
    """The recovery sweep's part for media workers silent for MEDIA_WORKER_LOST_SECONDS:
    their live calls end (`worker_lost`), and every open session such a worker had
    secured, or one of its calls held, is unsecured (`link_lost`) and its card dropped
    from the vault - never silently secure with nobody relaying the call. Returns the
    number of calls ended."""
    from securepay.live import hub

    now = now or timezone.now()
    cutoff = now - timedelta(seconds=settings.MEDIA_WORKER_LOST_SECONDS)
    recent = MediaWorkerBeat.seen_within(settings.MEDIA_WORKER_LOST_SECONDS, now)
    alive = set(recent.values_list("worker_id", flat=True))
    calls = list(
        Call.objects.filter(state=CallState.LIVE, created_at__lt=cutoff).exclude(worker_id__in=alive)
    )  # a call younger than the cutoff may belong to a worker that is just starting
    lost = {call.worker_id for call in calls}
    secured = PaymentSession.objects.open().filter(secure_state=SecureState.SECURED).exclude(secured_by="")
    lost |= set(secured.exclude(secured_by__in=alive).values_list("secured_by", flat=True))
    session_ids = {call.session_id for call in calls if call.session_id} | set(
        secured.filter(secured_by__in=lost).values_list("pk", flat=True)
    )
    for call in calls:
        call.end(EndReason.WORKER_LOST)
    for session_id in session_ids:
        # Under the row lock: a live worker may have secured it for a call of its own since.
        hub.lose_link(session_id, only_if=lambda s: s.secured_by in lost | {""}, actor="recovery")
    if lost:
        logger.warning("media workers %s gone: %d call(s) ended", ", ".join(sorted(lost)), len(calls))
    return len(calls)


def ports_in_use(worker_id: str) -> set[int]:
    used: set[int] = set()
    for caller, agent, supervisors in Call.objects.filter(worker_id=worker_id, state=CallState.LIVE).values_list(
        "caller_port", "agent_port", "supervisors"
    ):
        used |= {caller, agent, *(s["port"] for s in supervisors.values())}
    return used


def allocate_ports(worker_id: str, count: int) -> list[int]:
    """`count` ports of the worker's range not held by its live calls. Inside a transaction
    only: the worker's row stays locked to its end, so two API processes adding calls or
    supervisor legs to a worker that is running cannot pick the same port (were one taken
    all the same, the worker fails to bind it rather than mixing calls)."""
    if transaction.get_autocommit():
        raise RuntimeError("allocate_ports needs a transaction: its lock must last until the ports are written")
    MediaWorkerBeat.objects.select_for_update().filter(worker_id=worker_id).first()
    used = ports_in_use(worker_id)
    low, high = settings.MEDIA_RTP_PORT_MIN, settings.MEDIA_RTP_PORT_MAX
    free_count = high - low + 1 - len(used)
    if free_count < count:
        raise NoFreePort(f"media worker {worker_id}: no free RTP port")
    picked: list[int] = []
    rng = random.SystemRandom()
    while len(picked) < count:
        port = rng.randint(low, high)
        if port not in used and port not in picked:
            picked.append(port)
    return picked


class UnknownCode(Exception):
    """No open session of the call's tenant has this code."""


def tell_worker(call: Call, message: dict) -> None:
    """Message the call's media worker once the row is committed (protocol: `media.service`)."""
    from asgiref.sync import async_to_sync
    from channels.layers import get_channel_layer

    from media.service import worker_group

    def send() -> None:
        async_to_sync(get_channel_layer().group_send)(worker_group(call.worker_id), {**message, "call": str(call.pk)})

    # Robust: the change is committed whatever the channel layer does (a worker that misses
    # a start ends the call after the RTP timeout; one that misses a hangup, at the RTP
    # timeout too); the failure is logged, and the request that made the change succeeds.
    transaction.on_commit(send, robust=True)


def start_call(tenant: Tenant, worker_id: str | None = None, **fields) -> Call:
    """Allocate the ports, write the row, have the worker (default: MEDIA_WORKER_ID)
    bind them. Raises WorkerUnavailable (no recent sign of life: a call nobody relays
    would only look live), WorkerBusy or NoFreePort."""
    worker_id = worker_id or settings.MEDIA_WORKER_ID
    with transaction.atomic():
        # The worker's row, locked: starts on one worker take turns, so its call cap
        # and its free ports are counted with no other start in between.
        beat = MediaWorkerBeat.alive(worker_id).select_for_update().first()
        if beat is None:
            raise WorkerUnavailable(f"media worker {worker_id} is not running")
        beat.refuse_another_call()
        caller_port, agent_port = allocate_ports(worker_id, 2)
        call = Call.objects.create(
            tenant=tenant, worker_id=worker_id, host=settings.MEDIA_RTP_HOST,
            caller_port=caller_port, agent_port=agent_port, **fields,
        )  # fmt: skip
        tell_worker(call, {"type": "call.start"})
    return call


def link_call(call: Call, code: str) -> PaymentSession:
    """Link the call to the open session of its tenant with this code. Raises UnknownCode,
    CallNotLive."""
    with transaction.atomic():
        # Locked as it is found: a session ended meanwhile is not linked.
        sessions = PaymentSession.objects.for_tenant(call.tenant).select_for_update()
        session = sessions.open().filter(code=code).first()
        if session is None:
            raise UnknownCode(code)
        call.claim_session(session.pk)
        call.session = session
        tell_worker(call, {"type": "call.link", "session": str(session.pk)})
    return session
