"""UDP sockets around `media.calls.Call`: one socket per leg, no Django.

Each leg has its own local port; the peer sends to it and hears us from it
(symmetric RTP, RTCP multiplexed on the same port). Whatever a peer sends -
garbage included - goes through `Call.receive`, whose drops are counted per
reason; an unexpected error in one call is logged and counted, never allowed
to stop the worker's event loop.

Why not one asyncio DatagramProtocol per leg: at hundreds of calls the
per-datagram callback machinery costs more than the masking. Instead all leg
sockets sit in one epoll set whose descriptor the event loop watches; each
time it is readable the relay reads what every ready socket holds, then masks
the caller audio of all those calls in one batch (`relay.audio`, a
`CallAudioBatch`: build calls with `Call(..., audio=relay.audio)`) and sends
the results; after a busy spell, a push is masked and sent as soon as one is
full, before the rest is read. A busy worker thus spends its time in numpy, and an idle one
still sends each packet on as soon as it arrives.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import select
import socket
import time
from collections.abc import Callable

from media.calls import Call, CallAudioBatch, Leg, Received

logger = logging.getLogger(__name__)

# A batch has a fixed cost (~0.2 ms of numpy calls) besides its per-call cost, so
# under load batches are formed at most this often; a packet arriving after a
# quiet spell is masked at once. The wait is inside the 40 ms delay budget
# (30 ms hold-back + this + the batch's own run time).
BATCH_INTERVAL_S = 0.0025
RECEIVE_SIZE = 2048  # larger than any datagram we accept (rtp.MAX_DATAGRAM): longer ones show as oversized

KeyHandler = Callable[[Call, Received], None]


def tune_gc_for_relaying() -> None:
    """Keep the cyclic garbage collector out of the packet path: what the process
    holds at start-up (Django, numpy) is frozen out of every collection, and
    collections run less often. Each packet allocates few containers and almost
    no cycles, while a full collection over a busy worker's objects would hold
    every call's audio for milliseconds."""
    gc.freeze()
    gc.set_threshold(20_000, 50, 50)


class _LegSocket:
    __slots__ = ("sock", "call", "leg")

    def __init__(self, sock: socket.socket, call: Call, leg: Leg) -> None:
        self.sock, self.call, self.leg = sock, call, leg


class Relay:
    """The calls of one worker and their sockets. `on_keys(call, received)` is
    called (in the event loop) whenever received audio completed key presses."""

    def __init__(self, on_keys: KeyHandler) -> None:
        self.on_keys = on_keys
        self.calls: dict[str, Call] = {}
        self.audio = CallAudioBatch()
        self._legs: dict[tuple[str, str], _LegSocket] = {}
        self._by_fd: dict[int, _LegSocket] = {}
        self._sockets: dict[Leg, _LegSocket] = {}  # the hot path's lookup: by leg object
        self._epoll: select.epoll | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._last_flush = 0.0
        self._flush_timer: asyncio.TimerHandle | None = None
        self.errors = 0

    async def open_leg(self, call: Call, leg: Leg, host: str, port: int) -> int:
        """Bind the leg's socket (port 0: any free port); returns the bound port."""
        self._watch(asyncio.get_running_loop())
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            sock.bind((host, port))
            self._epoll.register(sock.fileno(), select.EPOLLIN)
        except OSError:
            sock.close()
            raise
        replaced = self._forget_leg(call, leg.name)
        if replaced is not None:  # a re-opened leg gets a new socket; its stream goes on (no BYE)
            replaced.sock.close()
        entry = _LegSocket(sock, call, leg)
        self._legs[(call.call_id, leg.name)] = entry
        self._by_fd[sock.fileno()] = entry
        self._sockets[leg] = entry
        self.calls[call.call_id] = call
        return sock.getsockname()[1]

    def leg_socket(self, call: Call, leg_name: str) -> socket.socket | None:
        entry = self._legs.get((call.call_id, leg_name))
        return None if entry is None else entry.sock

    def close_leg(self, call: Call, leg_name: str) -> None:
        """Stop relaying to and from one leg; its phone gets our last report and an RTCP BYE."""
        entry = self._forget_leg(call, leg_name)
        if entry is None:
            return
        goodbye = call.goodbye(entry.leg, time.monotonic(), time.time())
        if goodbye is not None and entry.leg.peer is not None:
            try:
                entry.sock.sendto(goodbye, entry.leg.peer)
            except OSError:  # the phone is gone already
                pass
        entry.sock.close()

    def _forget_leg(self, call: Call, leg_name: str) -> _LegSocket | None:
        entry = self._legs.pop((call.call_id, leg_name), None)
        if entry is not None:
            self._by_fd.pop(entry.sock.fileno(), None)
            if self._sockets.get(entry.leg) is entry:
                del self._sockets[entry.leg]
            self._epoll.unregister(entry.sock.fileno())
        return entry

    def close_call(self, call_id: str) -> Call | None:
        call = self.calls.pop(call_id, None)
        for key in [key for key in self._legs if key[0] == call_id]:
            self.close_leg(self._legs[key].call, key[1])
        if call is not None:
            call.close()
        return call

    def close(self) -> None:
        """Close every call and stop watching (the worker is stopping)."""
        for call_id in list(self.calls):
            self.close_call(call_id)
        if self._epoll is not None:
            if self._flush_timer is not None:
                self._flush_timer.cancel()
                self._flush_timer = None
            if self._loop is not None and not self._loop.is_closed():
                self._loop.remove_reader(self._epoll.fileno())
            self._epoll.close()
            self._epoll = self._loop = None

    def _watch(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._epoll is None:
            self._epoll = select.epoll()
            self._loop = loop
            loop.add_reader(self._epoll.fileno(), self._on_ready)

    # --- receiving ----------------------------------------------------------
    def _on_ready(self) -> None:
        now = time.monotonic()
        audio, by_fd = self.audio, self._by_fd
        for fd, _events in self._epoll.poll(0):
            entry = by_fd.get(fd)
            if entry is None:
                continue
            # One datagram per ready socket and wake-up: no second read that would only
            # fail with EAGAIN, and a flood on one leg cannot starve the others (epoll is
            # level-triggered: a socket with more waiting is reported again at once).
            call, leg = entry.call, entry.leg
            try:
                data, addr = entry.sock.recvfrom(RECEIVE_SIZE)
            except BlockingIOError:
                continue
            except OSError:  # ICMP port unreachable from a peer that went away: the RTP timeout handles it
                call.dropped["socket_error"] = call.dropped.get("socket_error", 0) + 1
                continue
            if addr != leg.peer and not leg.accept_source(addr):  # the latched peer's address: nearly always
                call.dropped["foreign_source"] = call.dropped.get("foreign_source", 0) + 1
                continue
            try:
                received = call.receive(leg, data, now)
            except Exception:  # a bug must cost one packet, not every call of the worker
                self.errors += 1
                logger.exception("call %s: packet from %s dropped", call.call_id, leg.name)
                continue
            if received.datagrams:
                self._send(received.datagrams)
            if received.caller_keys or received.agent_keys:
                self.on_keys(call, received)
            if audio.full_push_queued:
                # A backlog (the loop was busy): mask and send what is read so far before
                # reading on, so the first packets do not wait for the last of hundreds.
                self.flush()
        if audio.pending and self._flush_timer is None:
            due = self._last_flush + BATCH_INTERVAL_S
            if now >= due:
                self.flush()
            else:
                self._flush_timer = self._loop.call_at(due, self.flush)

    def flush(self) -> None:
        """Mask and detect everything the calls queued; send it on."""
        if self._flush_timer is not None:
            self._flush_timer.cancel()
            self._flush_timer = None
        self._last_flush = time.monotonic()
        try:
            for datagrams, keyed in self.audio.flush_in_pushes():
                self._send(datagrams)
                for call, received in keyed.items():
                    if call.call_id in self.calls:
                        self.on_keys(call, received)
        except Exception:  # as for one packet: log, count, keep the worker serving
            self.errors += 1
            logger.exception("media batch of %d calls dropped", len(self.calls))

    # --- housekeeping ---------------------------------------------------------
    def send_reports(self) -> None:
        """RTCP sender reports of every call that is due one."""
        now, wall = time.monotonic(), time.time()
        for call in list(self.calls.values()):
            self._send(call.sender_reports(now, wall))

    def idle_calls(self, timeout_s: float, started: dict[str, float]) -> list[str]:
        """Calls with no valid packet for timeout_s (counted from `started` before the first)."""
        now = time.monotonic()
        return [
            call_id
            for call_id, call in self.calls.items()
            if now - (call.last_activity or started.get(call_id, now)) > timeout_s
        ]

    def _send(self, datagrams: list[tuple[Leg, bytes]]) -> None:
        """Send to legs of any calls; a leg closed meanwhile, or with no peer yet, gets nothing."""
        sockets = self._sockets
        for leg, data in datagrams:
            entry = sockets.get(leg)
            if entry is None or leg.peer is None:
                continue
            try:
                entry.sock.sendto(data, leg.peer)
            except OSError:  # full buffer, or ICMP error from the peer: that packet is lost, as on the wire
                dropped = entry.call.dropped
                dropped["send_error"] = dropped.get("send_error", 0) + 1
