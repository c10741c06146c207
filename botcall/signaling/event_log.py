"""A bot session's numbered events, kept for replay after a WebSocket drop (sans-IO).

Every JSON event the server sends a bot (except ``welcome`` and ``audio``)
carries ``seq``: 1, 2, 3… per session. The log keeps the most recent ones, at
most ``max_events`` and ``max_bytes`` of encoded text, whether or not the bot's
WebSocket is open, so a bot that reconnects with ``?last_seq=N`` is sent every
event after ``N`` again, in order, before anything live — or, when the oldest
of those has already been evicted, an ``events_lost`` event naming the range
first. The contract is docs/protocol.md, "Resuming: events held during a drop".
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field

# Bounds of one session's log: whichever is reached first evicts the oldest event.
# 256 events cover a 30 s drop (the reconnect grace) of a busy room; the byte
# bound keeps a session's worst case (256 chat messages of 4000 characters) small.
MAX_EVENTS = 256
MAX_BYTES = 128 * 1024


@dataclass(frozen=True, slots=True)
class Lost:
    """Events ``first_seq`` to ``last_seq`` (inclusive) are no longer held."""

    first_seq: int
    last_seq: int

    @property
    def count(self) -> int:
        return self.last_seq - self.first_seq + 1


class ResumeError(ValueError):
    """A resume asked for events after a ``seq`` this session never produced."""


@dataclass(eq=False)
class EventLog:
    """One bot session's events, numbered and bounded.

    Args:
        session_id: whose events.
        room_id: the session's room (the hub's per-room index).
        text_chat: whether the session asked for chat events.
        max_events: at most this many events are held.
        max_bytes: at most this many bytes of encoded events are held.
    """

    session_id: str
    room_id: str
    text_chat: bool = False
    max_events: int = MAX_EVENTS
    max_bytes: int = MAX_BYTES
    # The seq of the newest event (0: none yet).
    seq: int = 0
    # Events that fell out of the log (sent or not: whether a bot missed them is
    # known only when it resumes).
    evicted: int = 0
    _held: collections.deque[tuple[int, str]] = field(default_factory=collections.deque)
    _bytes: int = 0

    def record(self, encoded: str) -> str:
        """Number an encoded event (a JSON object) and keep it.

        Args:
            encoded: the event as ``messages.encode`` wrote it, without ``seq``.

        Returns:
            The event with ``"seq"`` added: what to send.
        """
        self.seq += 1
        # Appending to the encoded object instead of encoding it again: a
        # broadcast encodes once for every bot in the room.
        stamped = f'{encoded[:-1]},"seq":{self.seq}}}' if encoded != "{}" else f'{{"seq":{self.seq}}}'
        self._held.append((self.seq, stamped))
        self._bytes += len(stamped)
        while len(self._held) > self.max_events or (self._bytes > self.max_bytes and len(self._held) > 1):
            _, dropped = self._held.popleft()
            self._bytes -= len(dropped)
            self.evicted += 1
        return stamped

    @property
    def oldest_held(self) -> int:
        """The seq of the oldest event still held (``seq + 1`` when none is)."""
        return self._held[0][0] if self._held else self.seq + 1

    def since(self, last_seq: int) -> tuple[Lost | None, list[str]]:
        """What a bot that saw events up to ``last_seq`` must be sent.

        Returns:
            ``(lost, events)``: the range no longer held (or None), then the held
            events after ``last_seq``, oldest first.

        Raises:
            ResumeError: ``last_seq`` is negative or beyond the newest event.
        """
        if last_seq < 0 or last_seq > self.seq:
            raise ResumeError(f"last_seq must be between 0 and {self.seq}")
        oldest = self.oldest_held
        lost = Lost(last_seq + 1, oldest - 1) if oldest > last_seq + 1 else None
        return lost, [text for seq, text in self._held if seq > last_seq]


def parse_last_seq_untrusted(value: str) -> int:
    """The ``last_seq`` query parameter of a resume.

    Raises:
        ResumeError: not a decimal integer of at most 18 digits.
    """
    if not value.isascii() or not value.isdecimal() or len(value) > 18:
        raise ResumeError("last_seq must be a non-negative integer")
    return int(value)


__all__ = ["EventLog", "Lost", "MAX_BYTES", "MAX_EVENTS", "ResumeError", "parse_last_seq_untrusted"]
