"""Live session state over the channel layer, and the in-process media hub.

The protocol (the real media worker speaks the same one):

- group ``session.<uuid>`` -- everything an agent page of that session shows:
  ``{"type": "card.state", ...}`` (masked card entry, from the media worker's
  `media.capture.CardCapture`) and ``{"type": "session.state", ...}``
  (status, secure state, amount, result; from the web tier, the gateway task
  and the media worker). Both carry the whole state and a ``seq``; pages drop
  a message whose ``seq`` is lower than the last one they applied.
- group ``media.sessions`` -- commands to media workers:
  ``{"type": "media.command", "session": "<uuid>", "command": C, ...}`` with
  C one of ``activate``/``reset`` (+ ``"field"``), ``clear`` (Back: drop the
  keyed card), ``submitted`` (the card went for authorisation: its digits
  leave the worker's memory), ``end`` (session over: forget it, discard the
  vault copy), ``snapshot`` (+ ``"reply_to"``: a channel name to send the
  current ``card.state`` to) and ``claimed`` (+ ``"hub"``, ``"claim"``: that
  worker holds the session's card entry since the session event ``claim``; any
  other drops an entry of an earlier claim). Commands never
  carry digits. A worker ignores commands for sessions whose call it does not hold.

`MediaHub` is the media worker of the demo profile (MEDIA_WORKER_MODE=
inprocess): it runs inside the Daphne process and is fed key presses by the
keypad simulator instead of call audio.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import uuid
from collections.abc import Callable

from asgiref.sync import async_to_sync
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.db import transaction
from django.dispatch import receiver

from media.capture import FIELDS, CardCapture
from securepay.models import BreakReason, IllegalTransition, PaymentAttempt, PaymentSession, Status
from securepay.signals import session_transitioned
from securepay.vault import get_vault

logger = logging.getLogger(__name__)

MEDIA_GROUP = "media.sessions"
MEDIA_COMMAND = "media.command"
MEDIA_ACTOR = "media-worker"
# What an agent page may ask for; `clear` and `end` come from the web tier's views.
AGENT_COMMANDS = frozenset({"activate", "reset"})
RESULT_STATUSES = (Status.APPROVED, Status.DECLINED, Status.ERROR)
# card.state seq of a card entry: its claim (a session event id) times this, plus its own
# count - above any earlier card entry's in any process (JavaScript's exact integers last
# up to ~9e10 events).
SEQ_PER_CLAIM = 100_000
CARD_CLEARING_MOVES = frozenset(
    {(Status.DETAILS, Status.CARD_ENTRY), (Status.CARD_ENTRY, Status.DECLINED), (Status.CARD_ENTRY, Status.ERROR)}
)


def session_group(session_id) -> str:
    return f"session.{session_id}"


# --- session state -----------------------------------------------------------------
def session_state(session: PaymentSession) -> dict:
    """The session as an agent page shows it. No card data: the result holds
    brand and last four only when approved (what PCI DSS allows after authorisation)."""
    # Every state change writes a SessionEvent under the session's row lock,
    # so the newest event id orders states across processes.
    last_event_id = session.events.order_by("-id").values_list("id", flat=True).first()
    attempt = session.latest_attempt if session.status in RESULT_STATUSES else None
    return {
        "type": "session.state",
        "session": str(session.id),
        "seq": last_event_id or 0,
        "status": session.status,
        "secure_state": session.secure_state,
        "break_reason": session.break_reason,
        "code": session.code,
        "amount": session.amount_display,
        "result": attempt_result(attempt) if attempt else None,
    }


def attempt_result(attempt: PaymentAttempt) -> dict:
    if attempt.status == "approved":
        return {
            "outcome": "approved",
            "brand": attempt.brand,
            "last4": attempt.last4,
            "gateway_reference": attempt.gateway_reference,
        }
    return {"outcome": attempt.status, "reason_code": attempt.reason_code, "message": attempt.message}


def broadcast_session_state(session: PaymentSession) -> None:
    """Send the session's state to its pages once the current transaction commits."""
    session_id = session.pk

    def send() -> None:
        fresh = PaymentSession.objects.get(pk=session_id)
        async_to_sync(get_channel_layer().group_send)(session_group(session_id), session_state(fresh))

    transaction.on_commit(send)


@receiver(session_transitioned, dispatch_uid="securepay.live.on_session_transitioned")
def on_session_transitioned(sender, session: PaymentSession, from_state: str, to_state: str, **kwargs) -> None:
    """Whoever moved the session (agent page, API, gateway task), its pages and its media worker hear of it."""
    broadcast_session_state(session)
    if to_state == Status.ENDED:
        # Discarded here too, not only by the worker holding the card entry: after a
        # worker restart nobody holds it, and the card must not outlive the session.
        get_vault().discard(session.pk)
        send_media_command(session.pk, "end")
    elif to_state == Status.PROCESSING:
        send_media_command(session.pk, "submitted")  # the payment task reads the vault copy
    elif (to_state, from_state) in CARD_CLEARING_MOVES:
        # Back, before or after an attempt: the next card starts empty (DESIGN: Back), so a
        # card keyed for one amount can never be charged for another.
        get_vault().discard(session.pk)
        send_media_command(session.pk, "clear")


def media_command(session_id, command: str, **fields) -> dict:
    return {"type": MEDIA_COMMAND, "session": str(session_id), "command": command, **fields}


def send_media_command(session_id, command: str, **fields) -> None:
    """From sync code (views): tell whichever media worker holds the call."""
    async_to_sync(get_channel_layer().group_send)(MEDIA_GROUP, media_command(session_id, command, **fields))


# --- the in-process media worker -------------------------------------------------------
class MediaHub:
    """Card captures of the calls this process holds, and their wiring.

    `link`, `break_link` and `press_key` are what telephony drives (the keypad
    simulator in the demo); `handle_command` is what agent pages drive through
    `media.sessions`. All of them are synchronous and run in Django's sync
    thread (they touch the database and the vault); publishing hops to the
    event loop through async_to_sync, one message at a time, in order.
    """

    def __init__(self) -> None:
        self.hub_id = uuid.uuid4().hex  # names this hub in `claimed` commands
        self._captures: dict[str, CardCapture] = {}
        self._claims: dict[str, int] = {}  # session -> the session event of its latest link here
        self._entry_calls: dict[str, str] = {}  # session -> the call its card entry takes keys from
        self._lock = threading.RLock()
        self._listener: asyncio.Task | None = None
        self._listening: asyncio.Event | None = None

    # --- telephony side -------------------------------------------------------------
    def link(
        self,
        session_id,
        worker_id: str = "",
        on_hold: bool = False,
        only_if: Callable[[PaymentSession], bool] | None = None,
        call_id: str = "",
    ) -> bool:
        """A call was linked to the session: secure it, then accept digits (on hold:
        record it, unsecured, until unhold). `only_if`: see PaymentSession.mark_unsecured;
        False when it did not hold (nothing changed). Raises IllegalTransition when the
        session is not open (also when it ends meanwhile)."""
        session = PaymentSession.objects.select_related("template").get(pk=session_id)
        if on_hold:
            changed = session.mark_unsecured(BreakReason.HOLD, MEDIA_ACTOR, only_if=only_if)
        else:
            changed = session.mark_secured(MEDIA_ACTOR, worker_id, only_if=only_if)
        if not changed:
            return False
        with self._lock:
            # An `end` handled between the two steps found no card entry to drop: never
            # create a card entry for a session that has ended since.
            if not PaymentSession.objects.filter(pk=session_id).open().exists():
                raise IllegalTransition(session_id, Status.ENDED, "linked")
            claim = session.secure_event_id  # this link's event: orders it among every link of the session
            self._claims[str(session_id)] = claim
            self._capture_for(session, claim, call_id).set_secured(not on_hold)
        broadcast_session_state(session)
        return True

    def break_link(
        self,
        session_id,
        reason: str,
        only_if: Callable[[PaymentSession], bool] | None = None,
        actor: str = MEDIA_ACTOR,
    ) -> bool:
        """Hold, hang-up, ...: refuse digits first (fail closed), then record why
        (`only_if`: see PaymentSession.mark_unsecured). An ended session (its `end`
        command may have been lost) loses its card entry instead. False when `only_if`
        did not hold (nothing recorded)."""
        with self._lock:
            capture = self._captures.get(str(session_id))
            if capture is not None:
                capture.set_secured(False)
        session = PaymentSession.objects.get(pk=session_id)
        if not session.is_open:
            self.release(session_id)
            get_vault().discard(session_id)
            return True
        if not session.mark_unsecured(reason, actor, only_if=only_if):
            return False
        broadcast_session_state(session)
        return True

    def lose_link(
        self, session_id, only_if: Callable[[PaymentSession], bool] | None = None, actor: str = MEDIA_ACTOR
    ) -> None:
        """The worker of the session's call is gone (restarted, or lost for good): unsecured
        (`link_lost`), and the card keyed on that call must not outlive the card entry that
        died with it - unless `only_if` found the session secured for another call since."""
        if self.break_link(session_id, BreakReason.LINK_LOST, only_if=only_if, actor=actor):
            get_vault().discard(session_id)

    def release(self, session_id) -> None:
        """Another call took the session: refuse digits here and forget its card entry
        (the secure state is recorded by whoever secures it next)."""
        with self._lock:
            self._claims.pop(str(session_id), None)
            self._entry_calls.pop(str(session_id), None)
            capture = self._captures.pop(str(session_id), None)
            if capture is not None:
                capture.set_secured(False)

    def press_key(self, session_id, digit: str, from_secured_call: bool = True) -> bool:
        """One key from the caller's keypad; False when no call of this process is linked to the session.
        A key the worker knows was pressed on a call that was not secured is refused (and counted),
        as is any key while the agent's page is not at card entry."""
        with self._lock:
            capture = self._captures.get(str(session_id))
            if capture is None:
                return False
            # Asked per key: an `end` command may have been lost.
            if from_secured_call and PaymentSession.objects.filter(pk=session_id).taking_card_digits().exists():
                capture.key(digit)
            else:
                capture.refuse(digit)
            return True

    def is_linked(self, session_id) -> bool:
        # Lock-free on purpose: the media worker asks from its event loop, while
        # press_key may hold the lock and wait for that same loop to publish;
        # taking the lock here would deadlock both. A dict look-up is atomic.
        return str(session_id) in self._captures

    # --- agent side -------------------------------------------------------------------
    def handle_command(self, message: dict) -> None:
        session_id, command = message.get("session", ""), message.get("command")
        with self._lock:
            capture = self._captures.get(session_id)
            if capture is None:
                return  # not a call this worker holds
            if command == "snapshot":
                async_to_sync(get_channel_layer().send)(message["reply_to"], capture.state())
            elif command in AGENT_COMMANDS and message.get("field") in FIELDS:
                getattr(capture, command)(message["field"])
            elif command == "clear":
                capture.clear_card()
            elif command == "submitted":
                capture.seal()
            elif command == "claimed":
                # Another worker's call linked the session after this one last did (a late
                # message of an earlier claim leaves a newer card entry here alone).
                if message.get("hub") != self.hub_id and self._claims.get(session_id, 0) < message.get("claim", 0):
                    self.release(session_id)
            elif command == "end":
                self._claims.pop(session_id, None)
                self._entry_calls.pop(session_id, None)
                del self._captures[session_id]
                get_vault().discard(session_id)
            else:
                logger.warning("media hub: ignored command %r", command)

    async def ensure_listening(self) -> None:
        """Subscribe this process to `media.sessions` (once per event loop)."""
        loop = asyncio.get_running_loop()
        if self._listener is None or self._listener.done() or self._listener.get_loop() is not loop:
            self._listening = asyncio.Event()
            self._listener = loop.create_task(self._listen(self._listening))
        await self._listening.wait()

    async def _listen(self, listening: asyncio.Event) -> None:
        layer = get_channel_layer()
        channel = await layer.new_channel("media.hub.")
        await layer.group_add(MEDIA_GROUP, channel)
        listening.set()
        try:
            while True:
                message = await layer.receive(channel)
                try:
                    await database_sync_to_async(self.handle_command)(message)
                except Exception:  # one bad command must not stop the worker; commands hold no card data
                    logger.exception("media hub: command %r failed", message.get("command"))
        finally:
            await layer.group_discard(MEDIA_GROUP, channel)

    # --- internals ----------------------------------------------------------------------
    def _capture_for(self, session: PaymentSession, claim: int, call_id: str) -> CardCapture:
        key = str(session.pk)
        if key in self._captures and self._entry_calls.get(key) != call_id:
            # Another call links the session here (the first one hung up; the keypad simulator):
            # its card entry is a new one - its card is stored as that call's (see request_payment).
            self._captures.pop(key).set_secured(False)
        if key not in self._captures:
            self._entry_calls[key] = call_id
            vault = get_vault()
            # A new card entry starts empty: a card keyed on an earlier call (another worker,
            # one that restarted) must not be charged while the page shows empty fields -
            # unless it is being charged now - and a card entry another worker still holds
            # for the session must go.
            if not PaymentSession.objects.filter(pk=key, status=Status.PROCESSING).exists():  # as of now
                vault.discard(key)
            send_media_command(key, "claimed", hub=self.hub_id, claim=claim)
            self._captures[key] = CardCapture(
                key,
                accepted_brands=session.template.accepted_brand_set,
                cvv_required=session.template.cvv_required,
                publish=lambda state: async_to_sync(get_channel_layer().group_send)(session_group(key), state),
                store_card=lambda card: vault.put(key, card, keyed_on=call_id),  # see request_payment
                discard_card=lambda: vault.discard(key),
                first_seq=claim * SEQ_PER_CLAIM,
            )
        return self._captures[key]


hub = MediaHub()
