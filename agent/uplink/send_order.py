"""What the uplink sends next: live events first, the backlog oldest first at a bounded rate.

After an outage (or a restart) the events stored meanwhile are the backlog. A
fresh alarm must not wait behind hours of backlog, so events committed after
the connection came back ("live") always go first; the backlog is replayed in
sequence order, flagged as historical, at `replay_rate_per_s`, and may hold at
most half of the in-flight window so that live events always find room.
Pure bookkeeping over sequence numbers: no I/O, no clock of its own.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class _Range:
    cursor: int
    """Highest sequence number of the range already handed out."""
    end: int


class SendOrder:
    def __init__(self, last_seq_at_start: int, *, replay_rate_per_s: float, now_s: float) -> None:
        self.live_cursor = last_seq_at_start
        """Highest live sequence number handed out; everything above it is live."""
        self._backlog = [_Range(0, last_seq_at_start)] if last_seq_at_start else []
        self._rate = replay_rate_per_s
        self._tokens = replay_rate_per_s  # a burst of one second
        self._tokens_at = now_s

    def reconnected(self, last_committed: int, outage_s: float, replay_after_s: float) -> None:
        """After an outage long enough to matter, what was stored meanwhile becomes backlog."""
        if outage_s >= replay_after_s and last_committed > self.live_cursor:
            self._backlog.append(_Range(self.live_cursor, last_committed))
            self.live_cursor = last_committed

    def again(self, after: int, upto: int) -> None:
        """Send the events in `after < seq <= upto` again, before the rest of the backlog (those
        published on a connection that went, when the format cannot let paho resend them)."""
        if upto > after:
            self._backlog.insert(0, _Range(after, upto))

    def sent_live(self, seq: int) -> None:
        self.live_cursor = max(self.live_cursor, seq)

    def backlog(self) -> tuple[int, int] | None:
        """The next backlog range to replay as (after, upto), oldest first."""
        while self._backlog and self._backlog[0].cursor >= self._backlog[0].end:
            self._backlog.pop(0)
        if not self._backlog:
            return None
        first = self._backlog[0]
        return first.cursor, first.end

    def sent_backlog(self, seq: int) -> None:
        self._backlog[0].cursor = max(self._backlog[0].cursor, seq)

    def range_exhausted(self) -> None:
        """Nothing is left to read in the current range (acknowledged or dropped meanwhile)."""
        self._backlog[0].cursor = self._backlog[0].end

    def take(self, wanted: int, now_s: float) -> int:
        """How many backlog events may go now (token bucket at replay_rate_per_s)."""
        self._tokens = min(self._rate, self._tokens + (now_s - self._tokens_at) * self._rate)
        self._tokens_at = now_s
        granted = min(wanted, int(self._tokens))
        self._tokens -= granted
        return granted

    def seconds_until_next(self) -> float:
        missing = 1.0 - self._tokens
        return max(missing / self._rate, 0.001) if missing > 0 else 0.0
