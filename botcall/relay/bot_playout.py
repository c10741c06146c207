"""A bot's outgoing speech, played out by the relay at real time (sans-IO).

A bot may send its audio faster than real time (text-to-speech arrives in
bursts) — over the WebSocket, or over UDP where the RTP timestamps say when
each packet is meant to play. :class:`BotPlayout` keeps that audio per bot and
releases it to the listeners at exactly real time, and it keeps the bot's
**stream clock**:

- a stream **position** is in samples at 48 kHz since the bot's first audio
  (a WebSocket bot's frames follow each other; an RTP packet's position follows
  from its timestamp, so gaps a sender leaves stay gaps);
- ``queued_ms`` is the end of the audio accepted so far, ``played_ms`` the end
  of the audio released to the listeners.

Scheduling. A position is *due* at ``anchor + position / 48000``. The anchor
is set when a frame arrives with nothing queued and the frame would otherwise
be late by more than ``DRIFT_LIMIT``: the sender paused, and playback never
lies far in the past. A frame late by less, with nothing queued, plays at
once and leaves the schedule alone: a real-time sender's packets go straight
through, and a delay spike (the network's, or this process descheduled) is
not carried over to the packets after it. A frame is released once it is due, or up to ``LEAD`` (20 ms)
before, so a real-time sender's scheduling jitter costs no hold. A sender
whose every packet for a whole second arrived early by less than
``DRIFT_LIMIT`` (250 ms) is treated as a real-time sender that suffered a
delay spike: its schedule moves earlier by that much, so a spike does not
leave its delay behind for the rest of the call. A bot sending ahead by more
(a burst of text-to-speech) is paced exactly. Only a window in which the
sender delivered at least half the window's length in audio is judged: a
short say queued behind a long one, after a silence, is not a clock.

Stalls. A frame late by more than ``DRIFT_LIMIT`` is either a sender that
*paused* (a WebSocket bot that had nothing to say: its positions carry on
where they stopped) or a real-time sender whose packets were *stalled* (by the
network, or its own process descheduled) and now arrive in a burst. Both
re-anchor: a pause must not be skipped or truncated, and the burst after it
(text-to-speech) must be paced. But a stalled real-time sender then keeps a
steady lead of the stall's length, which the catch-up above would never take
back (it exceeds ``DRIFT_LIMIT``): the delay would stay for the whole call.
So a re-anchor remembers how far it moved the schedule later (the *stall*,
summed over re-anchors, when at most ``STALL_LIMIT``), and for the next
``STALL_WINDOWS`` windows the catch-up also accepts a sender that is back on
its old schedule: every lead of the window within ``STALL_JITTER`` of the
stall (its packets arrive when they were due before the stall, give or take
its jitter). The first window holds the stalled burst itself (leads from 0 to
the stall); the second shows the sender on its old clock, and the schedule
moves back. So after a stall of up to ``STALL_LIMIT`` a real-time sender has
at most its own jitter of added delay again from the first push two windows
after the re-anchor (about 2 s). What was queued is then due and released at
once: the listeners' jitter buffers take the burst (its timestamps are
contiguous) and play it out a little faster, as they do after a spike.
What arrivals cannot tell apart: a sender that pauses for P (at most
``STALL_LIMIT``) and then keeps a steady lead within ``STALL_JITTER`` of P
looks exactly like a stall of P, and is caught up (its queue goes at once,
nothing is dropped). A bot that pauses longer, or keeps any other lead (the
SDK keeps 5 s ahead), or sends in bursts, is paced exactly and never loses audio.

Marks name a stream position (the current end of the queue, or an RTP
timestamp): one fires when playback passes it. ``clear`` drops everything not
yet released, at once, and says how much played and how much was dropped.

Bounds: at most ``max_ahead`` seconds of audio past what has played, and at
most ``max_marks`` pending marks (the caller refuses the rest with an error;
nothing is dropped silently).
"""

from __future__ import annotations

import bisect
import collections
from dataclasses import dataclass
from enum import Enum

SAMPLE_RATE = 48000
SAMPLES_PER_MS = 48
LEAD = 0.020
"""Seconds before its due time a frame may be released (one frame: scheduling jitter)."""
DRIFT_WINDOW = 1.0
"""Seconds over which a sender's smallest lead is measured."""
DRIFT_LIMIT = 0.250
"""A sender whose lead stayed below this for a whole window is treated as real-time."""
STALL_LIMIT = 1.0
"""Seconds a late re-anchor may move the schedule and still be taken back (a stall, not a pause)."""
STALL_JITTER = 0.100
"""Seconds a sender back from a stall may stray from its old schedule (its jitter)."""
STALL_WINDOWS = 3
"""Windows after a re-anchor in which a sender back on its old schedule is caught up."""
MAX_AHEAD_S = 120.0
_ROUNDING = 1e-9
"""Seconds (a twentieth of a sample) a lead may exceed LEAD by float rounding alone:
a frame due exactly LEAD from now (a caught-up sender's) still goes straight through."""
MAX_MARKS = 1000


class Push(Enum):
    """What :meth:`BotPlayout.push` did with a frame."""

    RELEASE = "release"  # forward it now
    QUEUED = "queued"  # held until it is due
    FULL = "full"  # refused: beyond max_ahead


@dataclass(frozen=True, slots=True)
class MarkReached:
    """Playback passed a mark: ``played_ms`` is the stream position it named."""

    name: str
    played_ms: int


@dataclass(frozen=True, slots=True)
class Cleared:
    """What a ``clear`` (or an interruption) did to the stream.

    Attributes:
        played_ms: the stream position released to listeners.
        dropped_ms: the queued audio dropped (from ``played_ms`` to the end of the queue).
        marks_dropped: the names of the marks that will never fire, in stream order.
    """

    played_ms: int
    dropped_ms: int
    marks_dropped: tuple[str, ...]


class _Frame:
    __slots__ = ("position", "end", "packet")

    def __init__(self, position: int, end: int, packet: bytes) -> None:
        self.position = position
        self.end = end
        self.packet = packet

    def __lt__(self, other: _Frame) -> bool:
        return self.position < other.position


class BotPlayout:
    """One bot's queue of speech and its stream clock.

    Args:
        max_ahead: seconds of audio that may wait past what has played.
        max_marks: marks that may wait to fire.
    """

    __slots__ = (
        "max_ahead",
        "max_marks",
        "queued",
        "played",
        "_frames",
        "_marks",
        "_anchor",
        "_last_timestamp",
        "_last_position",
        "_window_start",
        "_window_min_lead",
        "generation",
        "_early_marks",
        "_window_max_lead",
        "_window_samples",
        "_stall",
        "_stall_windows",
    )

    def __init__(self, *, max_ahead: float = MAX_AHEAD_S, max_marks: int = MAX_MARKS) -> None:
        self.max_ahead = max_ahead
        self.max_marks = max_marks
        # Stream positions, samples at 48 kHz: the end of the accepted audio and
        # the end of the released audio.
        self.queued = 0
        self.played = 0
        self._frames: list[_Frame] = []  # sorted by position; popped from the front
        self._marks: collections.deque[tuple[int, str]] = collections.deque()
        self._anchor: float | None = None  # due(position) = anchor + position / 48000
        self._last_timestamp: int | None = None
        self._last_position = 0
        self._window_start = 0.0
        self._window_min_lead = float("inf")
        # Counts clears: audio a sender had in flight before one (pcm16 still
        # being encoded) is dropped, not queued after it.
        self.generation = 0
        # Marks named by an RTP timestamp before the bot's first packet: no
        # position yet, so they wait for it (counted against max_marks).
        self._early_marks: list[tuple[str, int]] = []
        self._window_max_lead = float("-inf")
        self._window_samples = 0  # audio pushed in the window (a real-time sender's ~ its length)
        # Seconds late re-anchors moved the schedule (see "Stalls"), and for how
        # many more windows the catch-up may take that back.
        self._stall = 0.0
        self._stall_windows = 0

    # --- the stream clock ------------------------------------------------------------------

    @property
    def queued_ms(self) -> int:
        return self.queued // SAMPLES_PER_MS

    @property
    def played_ms(self) -> int:
        return self.played // SAMPLES_PER_MS

    @property
    def pending(self) -> bool:
        """Audio is waiting to be released."""
        return bool(self._frames)

    def ahead_ms(self) -> int:
        """Audio accepted and not yet released, in ms."""
        return max(0, self.queued - self.played) // SAMPLES_PER_MS

    def position_of(self, timestamp: int) -> int:
        """The stream position of an RTP timestamp (48 kHz), unwrapped against the last one.

        The first timestamp a bot sends continues from the end of the queue
        (position 0 at the start of the call).
        """
        last = self._last_timestamp
        if last is None:
            position = self.queued
        else:
            delta = ((timestamp - last + 0x80000000) & 0xFFFFFFFF) - 0x80000000
            position = self._last_position + delta
        return position

    def note_timestamp(self, timestamp: int, position: int) -> None:
        """Remember the newest timestamp's position (``position_of`` unwraps against it)."""
        first = self._last_timestamp is None
        if first or position >= self._last_position:
            self._last_timestamp = timestamp
            self._last_position = position
        if first and self._early_marks:
            early, self._early_marks = self._early_marks, []
            for name, at in early:
                self.mark(name, self.position_of(at))

    def due(self, position: int) -> float | None:
        anchor = self._anchor
        return None if anchor is None else anchor + position / SAMPLE_RATE

    # --- input -------------------------------------------------------------------------------

    def push(self, packet: bytes, position: int, samples: int, now: float) -> Push:
        """Accept one frame of ``samples`` at stream ``position``.

        Returns:
            ``RELEASE``: forward ``packet`` now (then call :meth:`reached`);
            ``QUEUED``: it waits for :meth:`pop_due`; ``FULL``: refused, the
            stream is ``max_ahead`` ahead.
        """
        end = position + samples
        if position < self.played:
            # Older than what has played (reordered, or a retransmission): it
            # cannot be scheduled in the past, and holding it helps no one.
            return Push.RELEASE
        if (end - self.played) > self.max_ahead * SAMPLE_RATE:
            return Push.FULL
        anchor = self._anchor
        if anchor is None or (not self._frames and anchor + position / SAMPLE_RATE < now - DRIFT_LIMIT):
            # Idle and late by more than a delay spike (or the very first
            # frame): the sender paused, playback starts now. A frame late by
            # less is a real-time sender's spike (the network, or this process
            # descheduled): it plays at once below and the schedule stays, so
            # the packets after it, on time again, are not held back by the
            # spike (moving the anchor would hold each of them by the spike,
            # and spikes less than a DRIFT_WINDOW apart would add up).
            # The schedule moves later by the frame's lateness: a stall, if the
            # moves since the sender was last on time stay within STALL_LIMIT.
            stall = 0.0 if anchor is None else self._stall + now - (anchor + position / SAMPLE_RATE)
            self._stall, self._stall_windows = (stall, STALL_WINDOWS) if 0.0 < stall <= STALL_LIMIT else (0.0, 0)
            anchor = self._anchor = now - position / SAMPLE_RATE
            self._window_start = now
            self._window_min_lead = float("inf")
            self._window_max_lead = float("-inf")
            self._window_samples = 0
        # After the drift check: a catch-up may have made this frame due now.
        anchor = self._track_drift(anchor, anchor + position / SAMPLE_RATE - now, now, samples)
        lead = anchor + position / SAMPLE_RATE - now
        if end > self.queued:
            self.queued = end
        if not self._frames and lead <= LEAD + _ROUNDING:
            self.played = end
            return Push.RELEASE
        frame = _Frame(position, end, packet)
        frames = self._frames
        if not frames or frames[-1].position <= position:
            frames.append(frame)
        else:
            bisect.insort(frames, frame)
        return Push.QUEUED

    def _track_drift(self, anchor: float, lead: float, now: float, samples: int) -> float:
        """Note a frame's lead; returns the anchor, moved earlier after a window of small leads."""
        if lead < self._window_min_lead:
            self._window_min_lead = lead
        if lead > self._window_max_lead:
            self._window_max_lead = lead
        self._window_samples += samples
        elapsed = now - self._window_start
        if elapsed < DRIFT_WINDOW:
            return anchor
        # Every packet of the last window came early by at least the smallest
        # lead and by less than DRIFT_LIMIT: a real-time sender after a delay
        # spike. Catch up. The largest lead matters as much as the smallest: a
        # burst sender's first packet may come barely early, the rest of its
        # burst far ahead, and it must never be sped up. After a stall (see
        # "Stalls"): every lead within STALL_JITTER of the stall, the sender is
        # back on its old clock; catch up the same way.
        # Only a sender that kept sending through the window is judged: at least
        # half its length in audio. A few frames after a silence (a short say
        # queued behind a long one) say nothing about a clock, and catching up
        # on them would speed up what is queued.
        stall = self._stall
        low, high = self._window_min_lead, self._window_max_lead
        steady = self._window_samples >= elapsed * SAMPLE_RATE / 2
        spike = steady and LEAD < low and high < DRIFT_LIMIT
        stalled = steady and stall > 0.0 and max(LEAD, stall - STALL_JITTER) < low and high < stall + STALL_JITTER
        if spike or stalled:
            anchor = self._anchor = anchor - (low - LEAD)
            self._stall_windows = 0
        elif self._stall_windows:
            self._stall_windows -= 1
        if not self._stall_windows:
            self._stall = 0.0
        self._window_start = now
        self._window_min_lead = float("inf")
        self._window_max_lead = float("-inf")
        self._window_samples = 0
        return anchor

    def next_due(self) -> float | None:
        """When :meth:`pop_due` next releases a frame, or None with nothing queued."""
        if not self._frames or self._anchor is None:
            return None
        return self._anchor + self._frames[0].position / SAMPLE_RATE - LEAD

    def pop_due(self, now: float) -> list[bytes]:
        """The frames due by ``now`` (``LEAD`` early at most), in stream order."""
        frames = self._frames
        anchor = self._anchor
        if not frames or anchor is None:
            return []
        # The same expression as next_due(): pop_due(next_due()) must release the
        # frame it promised (rearranged, float rounding can miss it by 1e-16 s).
        count = 0
        while count < len(frames) and anchor + frames[count].position / SAMPLE_RATE - LEAD <= now:
            count += 1
        if count == 0:
            return []
        released = frames[:count]
        del frames[:count]
        self.played = max(self.played, released[-1].end)
        return [frame.packet for frame in released]

    # --- marks and clear ---------------------------------------------------------------------

    def mark_at_timestamp(self, name: str, timestamp: int) -> bool:
        """Place a mark at an RTP timestamp of the bot's stream; before the bot's
        first packet it waits for that packet (a UDP burst may trail its mark).

        Returns:
            False when ``max_marks`` are already waiting.
        """
        if self._last_timestamp is not None:
            return self.mark(name, self.position_of(timestamp))
        if len(self._marks) + len(self._early_marks) >= self.max_marks:
            return False
        self._early_marks.append((name, timestamp))
        return True

    def mark(self, name: str, position: int | None = None) -> bool:
        """Place a mark at ``position`` (default: the end of the queue).

        Returns:
            False when ``max_marks`` are already waiting (the caller refuses it).
        """
        if len(self._marks) + len(self._early_marks) >= self.max_marks:
            return False
        at = self.queued if position is None else position
        marks = self._marks
        if not marks or marks[-1][0] <= at:
            marks.append((at, name))
        else:
            ordered = sorted([*marks, (at, name)], key=lambda item: item[0])
            marks.clear()
            marks.extend(ordered)
        return True

    def reached(self) -> list[MarkReached]:
        """Marks playback has passed (a mark with nothing before it fires at once)."""
        marks = self._marks
        if not marks:
            return []
        # With nothing queued, playback is idle: every mark up to the end of the
        # accepted audio has been reached.
        horizon = self.played if self._frames else max(self.played, self.queued)
        out: list[MarkReached] = []
        while marks and marks[0][0] <= horizon:
            position, name = marks.popleft()
            out.append(MarkReached(name, position // SAMPLES_PER_MS))
        return out

    def clear(self) -> Cleared:
        """Drop everything not yet released; the next audio starts playing at once."""
        dropped = max(0, self.queued - self.played)
        self._frames.clear()
        marks_dropped = tuple(name for position, name in self._marks if position > self.played)
        marks_dropped += tuple(name for name, _ in self._early_marks)
        self._early_marks.clear()
        # Marks at or before the played position were reached: the caller took
        # them with reached() before; any left are reported dropped with the rest.
        self._marks.clear()
        self.queued = self.played
        self._anchor = None
        self._stall, self._stall_windows = 0.0, 0
        self.generation += 1
        # In whole ms of the two positions, so played_ms + dropped_ms is the
        # queued_ms the sender was told about (frames need not be whole ms: 2.5 ms Opus).
        played_ms = self.played // SAMPLES_PER_MS
        return Cleared(played_ms, (self.played + dropped) // SAMPLES_PER_MS - played_ms, marks_dropped)


__all__ = ["BotPlayout", "Cleared", "MarkReached", "Push", "LEAD", "MAX_AHEAD_S", "MAX_MARKS", "STALL_JITTER", "STALL_LIMIT", "STALL_WINDOWS"]
