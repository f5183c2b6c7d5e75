"""UDP sockets around `media.calls.Call`: one socket per leg, asyncio, no Django.

Each leg has its own local port; the peer sends to it and hears us from it
(symmetric RTP, RTCP multiplexed on the same port). Whatever a peer sends -
garbage included - goes through `Call.receive`, whose drops are counted per
reason; an unexpected error in one call is logged and counted, never allowed
to stop the worker's event loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from media.calls import Call, Leg, Received

logger = logging.getLogger(__name__)


class LegProtocol(asyncio.DatagramProtocol):
    def __init__(self, relay: Relay, call: Call, leg: Leg) -> None:
        self.relay, self.call, self.leg = relay, call, leg

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.relay.on_datagram(self.call, self.leg, data, addr)

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable from a peer that went away: the RTP timeout handles it.
        self.call.dropped["socket_error"] = self.call.dropped.get("socket_error", 0) + 1


KeyHandler = Callable[[Call, Received], None]


class Relay:
    """The calls of one worker and their sockets. `on_keys(call, received)` is
    called (in the event loop) whenever a datagram completed key presses."""

    def __init__(self, on_keys: KeyHandler) -> None:
        self.on_keys = on_keys
        self.calls: dict[str, Call] = {}
        self._transports: dict[tuple[str, str], asyncio.DatagramTransport] = {}
        self.errors = 0

    async def open_leg(self, call: Call, leg: Leg, host: str, port: int) -> int:
        """Bind the leg's socket (port 0: any free port); returns the bound port."""
        loop = asyncio.get_running_loop()
        transport, _protocol = await loop.create_datagram_endpoint(
            lambda: LegProtocol(self, call, leg), local_addr=(host, port)
        )
        self.calls[call.call_id] = call
        self._transports[(call.call_id, leg.name)] = transport
        return transport.get_extra_info("sockname")[1]

    def close_leg(self, call: Call, leg_name: str) -> None:
        transport = self._transports.pop((call.call_id, leg_name), None)
        if transport is not None:
            transport.close()

    def close_call(self, call_id: str) -> Call | None:
        call = self.calls.pop(call_id, None)
        for key in [key for key in self._transports if key[0] == call_id]:
            self._transports.pop(key).close()
        return call

    def on_datagram(self, call: Call, leg: Leg, data: bytes, addr: tuple[str, int]) -> None:
        if not leg.accept_source(addr):
            call.dropped["foreign_source"] = call.dropped.get("foreign_source", 0) + 1
            return
        try:
            received = call.receive(leg, data, time.monotonic())
        except Exception:  # a bug must cost one packet, not every call of the worker
            self.errors += 1
            logger.exception("call %s: packet from %s dropped", call.call_id, leg.name)
            return
        self._send(call, received.datagrams)
        if received.caller_keys or received.agent_keys:
            self.on_keys(call, received)

    def send_reports(self) -> None:
        """RTCP sender reports of every call that is due one."""
        now, wall = time.monotonic(), time.time()
        for call in list(self.calls.values()):
            self._send(call, call.sender_reports(now, wall))

    def idle_calls(self, timeout_s: float, started: dict[str, float]) -> list[str]:
        """Calls with no valid packet for timeout_s (counted from `started` before the first)."""
        now = time.monotonic()
        return [
            call_id
            for call_id, call in self.calls.items()
            if now - (call.last_activity or started.get(call_id, now)) > timeout_s
        ]

    def _send(self, call: Call, datagrams: list[tuple[Leg, bytes]]) -> None:
        for leg, data in datagrams:
            transport = self._transports.get((call.call_id, leg.name))
            if transport is not None and leg.peer is not None:
                transport.sendto(data, leg.peer)
