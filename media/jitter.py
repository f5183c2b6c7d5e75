"""A small reorder buffer for one inbound RTP stream.

Packets come out in sequence order. A missing packet is waited for while at
most `depth` later packets are queued (at 20 ms packets, depth 2 tolerates
40 ms of reordering - inside the masker's own hold-back, so reordering adds no
delay in the common case); then it is declared lost and the stream moves on.
Duplicates and packets older than what was already released are dropped and
counted. Sequence numbers wrap at 2**16.

A sender that restarts its sequence numbers (a new stream, a device replaying
captured packets) is followed, as RFC 3550 A.1 does for large jumps: two
consecutive packets far behind the released position start the stream anew.
"""

from __future__ import annotations

from media.rtp import RtpPacket

SEQ_MOD = 1 << 16
RESTART_BEHIND = 16  # packets (320 ms at 20 ms): later than this is a new stream, not reordering


def seq_delta(a: int, b: int) -> int:
    """b - a in sequence space, in [-32768, 32767]."""
    return (b - a + SEQ_MOD // 2) % SEQ_MOD - SEQ_MOD // 2


class ReorderBuffer:
    def __init__(self, depth: int = 2) -> None:
        self.depth = depth
        self._expected: int | None = None
        self._held: dict[int, RtpPacket] = {}
        self._restart_candidate: RtpPacket | None = None  # far behind: the first of a restarted stream?
        self.late = 0  # duplicates or packets older than the released position
        self.lost = 0  # sequence numbers given up on

    def push(self, packet: RtpPacket) -> list[RtpPacket]:
        """Add one packet; return the packets now due, in order."""
        if self.release_next(packet.sequence):
            return [packet]
        if self._expected is None:
            self._expected = packet.sequence
        ahead = seq_delta(self._expected, packet.sequence)
        if ahead < -RESTART_BEHIND:
            return self._maybe_restart(packet)
        if ahead < 0 or packet.sequence in self._held:
            self.late += 1
            return []
        if ahead > SEQ_MOD // 4:
            # A jump this large is a restarted sender, not reordering: resync.
            self._held.clear()
            self._expected = packet.sequence
        self._held[packet.sequence] = packet
        released = self._release_in_order()
        while len(self._held) > self.depth:
            # Give up on the gap: skip to the oldest held packet.
            oldest = min(self._held, key=lambda seq: seq_delta(self._expected, seq))
            self.lost += seq_delta(self._expected, oldest)
            self._expected = oldest
            released += self._release_in_order()
        return released

    def release_next(self, sequence: int) -> bool:
        """Whether a packet with this sequence number is due at once (the next expected,
        nothing waiting: most packets); if so it counts as released (push would return it)."""
        if sequence == self._expected and not self._held:
            self._expected = (sequence + 1) % SEQ_MOD
            return True
        return False

    def flush(self) -> list[RtpPacket]:
        """Release everything held, in order (end of stream)."""
        out = []
        while self._held:
            oldest = min(self._held, key=lambda seq: seq_delta(self._expected, seq))
            self.lost += seq_delta(self._expected, oldest)
            self._expected = oldest
            out += self._release_in_order()
        return out

    def _maybe_restart(self, packet: RtpPacket) -> list[RtpPacket]:
        candidate, self._restart_candidate = self._restart_candidate, packet
        if candidate is None or seq_delta(candidate.sequence, packet.sequence) != 1:
            if candidate is not None:
                self.late += 1  # a lone straggler after all
            return []
        self._restart_candidate = None
        released = self.flush()  # what the old stream still held, then the new stream from its first packet
        self._expected = candidate.sequence
        self._held = {candidate.sequence: candidate, packet.sequence: packet}
        return released + self._release_in_order()

    def _release_in_order(self) -> list[RtpPacket]:
        out = []
        while self._expected in self._held:
            out.append(self._held.pop(self._expected))
            self._expected = (self._expected + 1) % SEQ_MOD
        return out
