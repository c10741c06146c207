"""A bot's speech through the routing core: paced by its BotPlayout, marks, clear, playout_full.

The relay is driven as the UDP transport's timer loop drives it: ``handle_timeout``
at ``next_deadline()``, on a simulated clock.
"""

from __future__ import annotations

import pytest

from botcall.relay.bot_playout import LEAD, BotPlayout, Cleared, MarkReached
from botcall.relay.core import INTERRUPTED_TAIL_LIMIT, Interrupted, MediaRelay, PlayoutFull, StreamStarted
from botcall.relay.speech import SpeechTracker
from botcall.wire.rtp import RtpHeaderExtension, RtpPacket, parse_rtp_untrusted
from tests.kit.relay import Wire, latch, make_bot, rtp

A_ADDR = ("127.0.0.1", 50001)
B_ADDR = ("127.0.0.1", 50002)
FRAME_S = 0.02


class Room:
    """A relay with a speaking bot ``a`` (with a playout, as ``MediaService.add_session`` gives it) and a listener ``b``."""

    def __init__(self, *, max_ahead: float = 120.0, max_marks: int = 1000) -> None:
        self.wire = Wire()
        self.events: list[tuple[float, object]] = []
        self.wakes = 0
        self.now = 0.0
        self.relay = MediaRelay(self.wire, on_event=lambda peer, event: self.events.append((self.now, event)), wake=self._wake)
        self.a = make_bot(self.relay, self.wire, "a", 1111)
        self.b = make_bot(self.relay, self.wire, "b", 2222)
        self.a.playout = BotPlayout(max_ahead=max_ahead, max_marks=max_marks)
        latch(self.relay, self.wire, self.a, A_ADDR)
        latch(self.relay, self.wire, self.b, B_ADDR)
        self.wire.clear()
        # What b received: (time, sequence number); the last packet and when.
        self.heard: list[tuple[float, int]] = []
        self.last_packet = b""
        self.last_heard = self.last_heard_before = 0.0

    def _wake(self) -> None:
        self.wakes += 1

    def send(self, seq: int, at: float) -> None:
        self.advance(at)
        self.relay.handle_datagram(rtp(1111, seq=seq), A_ADDR, at)
        self._collect()

    def advance(self, until: float) -> None:
        """Run the timer loop until ``until``."""
        while True:
            deadline = self.relay.next_deadline()
            if deadline > until:
                break
            self.now = max(self.now, deadline)
            self.relay.handle_timeout(self.now)
            self._collect()
        self.now = max(self.now, until)

    def _collect(self) -> None:
        for data in self.wire.take(B_ADDR):
            if data[0] >> 6 == 2 and data[1] & 0x7F == 111:
                self.heard.append((self.now, parse_rtp_untrusted(data).sequence_number))
                self.last_heard_before = self.last_heard
                self.last_heard = self.now
                self.last_packet = data

    def marks(self) -> list[tuple[float, MarkReached]]:
        return [(t, e) for t, e in self.events if isinstance(e, MarkReached)]


def test_burst_rtp_from_a_udp_bot_is_forwarded_at_real_time():
    room = Room()
    for seq in range(1, 301):  # 6 s of RTP, timestamps seq * 960, sent at once
        room.send(seq, 1.0)
    assert len(room.heard) == 2  # the first frame, and the next (within LEAD)
    assert room.wakes >= 1  # the transport's timer was told about the new deadline
    room.advance(10.0)
    assert [seq for _, seq in room.heard] == list(range(1, 301))
    for t, seq in room.heard[1:]:
        due = 1.0 + (seq - 1) * FRAME_S
        assert due - LEAD - 0.001 <= t <= due + 0.001, (seq, t)
    assert room.b.tx_packets == 300 and room.relay.counters["rate_limited"] == 0
    assert room.a.playout.played_ms == 6000 and not room.relay._playing
    assert [e for _, e in room.events if isinstance(e, StreamStarted)] == [StreamStarted(960)]


def test_a_real_time_udp_bot_is_not_delayed():
    room = Room()
    for seq in range(1, 101):
        room.send(seq, seq * FRAME_S)
        assert room.heard[-1] == (seq * FRAME_S, seq)
    assert room.wakes == 0


def test_marks_fire_through_on_event_when_playback_passes_them():
    room = Room()
    for seq in range(1, 301):
        room.send(seq, 0.0)
        if seq % 100 == 0:
            assert room.relay.mark(room.a, f"after-{seq}")
    assert room.relay.mark(room.a, "by-timestamp", 51 * 960)  # the position of seq 51: 1 s in
    room.advance(10.0)
    marks = room.marks()
    assert [m for _, m in marks] == [
        MarkReached("by-timestamp", 1000),
        MarkReached("after-100", 2000),
        MarkReached("after-200", 4000),
        MarkReached("after-300", 6000),
    ]
    arrival = dict((seq, t) for t, seq in room.heard)
    for t, mark in marks:
        # The frame that ends at the mark reached the listener at that moment.
        assert t == arrival[mark.played_ms // 20]
        assert abs(t - (mark.played_ms / 1000 - FRAME_S - LEAD)) < 0.001


def test_a_mark_with_nothing_queued_fires_at_once():
    room = Room()
    room.send(1, 0.0)
    assert room.relay.mark(room.a, "now")
    assert room.marks() == [(0.0, MarkReached("now", 20))]


def test_too_many_marks_are_refused():
    room = Room(max_marks=2)
    for seq in range(1, 11):
        room.send(seq, 0.0)
    assert room.relay.mark(room.a, "1") and room.relay.mark(room.a, "2")
    assert not room.relay.mark(room.a, "3")


def test_clear_stops_forwarding_at_once():
    room = Room()
    for seq in range(1, 301):
        room.send(seq, 0.0)
        if seq in (25, 200):
            room.relay.mark(room.a, f"m{seq}")
    room.advance(2.0)
    heard_before = len(room.heard)
    cleared = room.relay.clear(room.a)
    assert cleared == Cleared(heard_before * 20, 6000 - heard_before * 20, ("m200",))
    assert [m.name for _, m in room.marks()] == ["m25"]
    room.advance(10.0)
    assert len(room.heard) == heard_before
    assert room.relay.next_deadline() >= 10.0  # no playout deadline left
    # The next packet plays at once. Its timestamp (the bot's went on past the
    # dropped audio) is re-based to the time elapsed since the last packet
    # heard, and it starts a new talk spurt (marker), so a listener's jitter
    # buffer does not wait for the audio that was dropped.
    last = parse_rtp_untrusted(room.last_packet)
    room.send(301, 10.0)
    assert room.heard[-1] == (10.0, 301)
    restarted = parse_rtp_untrusted(room.last_packet)
    assert restarted.marker
    elapsed_samples = (restarted.timestamp - last.timestamp) & 0xFFFFFFFF
    assert abs(elapsed_samples - round((10.0 - room.last_heard_before) * 48000)) <= 960


def test_clear_for_a_peer_without_a_playout():
    room = Room()
    assert room.relay.clear(room.b) is None
    assert room.relay.mark(room.b, "x") is False


def test_playout_full_is_counted_and_reported_once_a_second():
    room = Room(max_ahead=1.0)
    for seq in range(1, 151):
        room.send(seq, 0.0)
    # 2 frames released at once, 50 queued (1 s), the other 98 refused.
    full = [e for _, e in room.events if isinstance(e, PlayoutFull)]
    assert full == [PlayoutFull(1000, 1000)]
    assert room.relay.counters["playout_full"] == room.a.drops["playout_full"] == 98
    # Half a second later there is room for one more frame (53), not for 300:
    # counted, not reported again.
    room.send(53, 0.5)
    room.send(300, 0.5)
    assert room.a.drops["playout_full"] == 99
    assert len([e for _, e in room.events if isinstance(e, PlayoutFull)]) == 1
    # A second after the first report it is reported again.
    room.send(400, 1.0)
    assert [(t, e) for t, e in room.events if isinstance(e, PlayoutFull)][1][0] == pytest.approx(1.0)
    # Nothing refused was forwarded; everything accepted was, in order.
    room.advance(5.0)
    assert [seq for _, seq in room.heard] == list(range(1, 54))


def test_a_mark_by_timestamp_before_the_first_packet_waits_for_it():
    """A UDP bot's WebSocket mark can overtake the burst it names: it is held until
    the first packet gives timestamps a position, then fires with its frame."""
    room = Room()
    assert room.relay.mark(room.a, "at-2s", timestamp=100 * 960)  # rtp(seq=k) has timestamp k * 960
    assert room.marks() == []
    for seq in range(1, 301):
        room.send(seq, 0.0)
    room.advance(10.0)
    (at, mark), = room.marks()
    assert mark.name == "at-2s" and mark.played_ms == 99 * 20  # 99 frames after the first one's start
    # It names the start of frame 100: playback reaches it as frame 99 is released.
    released = dict((seq, t) for t, seq in room.heard)
    assert at == released[99]


def test_waiting_timestamp_marks_count_against_the_limit_and_are_dropped_by_clear():
    room = Room(max_marks=2)
    assert room.relay.mark(room.a, "one", timestamp=960)
    assert room.relay.mark(room.a, "two", timestamp=1920)
    assert not room.relay.mark(room.a, "three", timestamp=2880)
    cleared = room.relay.clear(room.a)
    assert cleared is not None and cleared.marks_dropped == ("one", "two")


# --- barge-in: the interrupted speech's tail (docs/protocol.md "Barge-in") ---------------

# RFC 6464 levels as a browser sends them (one-byte header, id 1): V set and
# -5 dBov; silence (-127 dBov).
LOUD = RtpHeaderExtension(0xBEDE, b"\x10\x85\x00\x00")
QUIET = RtpHeaderExtension(0xBEDE, b"\x10\x7f\x00\x00")


class BargeIn(Room):
    """``b`` is a human whose speech (RFC 6464 levels) interrupts ``a`` after 200 ms."""

    def __init__(self) -> None:
        super().__init__()
        self.b.human = True
        self.b.interruption_ms = 200
        self.b.speech = SpeechTracker(level_id=1, budget=None)
        self.sent_a = 0

    def bot_says(self, frames: int, at: float, *, marker: bool) -> None:
        """``a`` sends ``frames`` frames at once, the first with the marker bit if asked."""
        self.advance(at)
        for index in range(frames):
            self.sent_a += 1
            packet = RtpPacket(111, self.sent_a, self.sent_a * 960, 1111, b"\xfc\x01\x02", marker=marker and index == 0)
            self.relay.handle_datagram(bytes(packet), A_ADDR, at)
        self._collect()

    def human_talks_until_interrupted(self, start: float) -> float:
        """``b`` is quiet for 0.5 s, then speaks loudly in 20 ms packets until ``a`` is interrupted; returns when."""
        for seq in range(1, 200):
            at = start + seq * FRAME_S
            self.advance(at)
            packet = RtpPacket(111, seq, seq * 960, 2222, b"\xfc\x01\x02", extension=LOUD if seq > 25 else QUIET)
            self.relay.handle_datagram(bytes(packet), B_ADDR, at)
            self._collect()
            if self.interruptions():
                return at
        raise AssertionError("no barge-in")

    def interruptions(self) -> list[Interrupted]:
        return [e for _, e in self.events if isinstance(e, Interrupted)]

    def heard_since(self, since: float) -> list[int]:
        return [seq for t, seq in self.heard if t >= since]


def test_after_a_barge_in_the_tail_of_a_marking_bot_is_dropped_until_its_next_speech():
    room = BargeIn()
    room.bot_says(500, 1.0, marker=True)  # a 10 s reply, sent ahead
    interrupted_at = room.human_talks_until_interrupted(2.0)
    [interrupted] = room.interruptions()
    assert interrupted.by == room.b.participant_id
    # Sent before the bot read `interrupted`: the rest of the interrupted reply.
    room.bot_says(4, interrupted_at + 0.03, marker=False)
    room.advance(interrupted_at + 0.5)
    assert room.heard_since(interrupted_at + 0.001) == []
    assert room.a.drops["interrupted_tail"] == 4 and room.relay.counters["interrupted_tail"] == 4
    # The bot's next speech starts with the marker bit: it plays at once, in full.
    room.bot_says(10, interrupted_at + 0.6, marker=True)
    room.advance(interrupted_at + 2.0)
    assert room.heard_since(interrupted_at + 0.6) == list(range(505, 515))
    assert room.a.drops["interrupted_tail"] == 4


def test_a_bot_that_never_marks_its_speech_is_not_held_back():
    room = BargeIn()
    room.bot_says(500, 1.0, marker=False)
    interrupted_at = room.human_talks_until_interrupted(2.0)
    room.bot_says(4, interrupted_at + 0.03, marker=False)
    room.advance(interrupted_at + 0.5)
    assert room.heard_since(interrupted_at + 0.001) == [501, 502, 503, 504]
    assert room.a.drops["interrupted_tail"] == 0


def test_the_tail_is_dropped_for_at_most_its_limit():
    room = BargeIn()
    room.bot_says(500, 1.0, marker=True)
    interrupted_at = room.human_talks_until_interrupted(2.0)
    room.bot_says(1, interrupted_at + INTERRUPTED_TAIL_LIMIT - 0.01, marker=False)
    room.bot_says(1, interrupted_at + INTERRUPTED_TAIL_LIMIT + 0.01, marker=False)
    room.advance(interrupted_at + 3.0)
    # A bot that ignored `interrupted` is heard again after the limit, without a marker.
    assert room.heard_since(interrupted_at + 0.001) == [502]
    assert room.a.drops["interrupted_tail"] == 1


# --- humans first with several bots (docs/protocol.md "Who may talk over whom") ------------

C_ADDR = ("127.0.0.1", 50003)
D_ADDR = ("127.0.0.1", 50004)


def test_one_human_interrupts_every_talking_bot_and_bots_never_interrupt():
    """Two bots talk at once and a third has nothing queued: the human's speech
    clears both talkers (each gets its own ``interrupted``, by the human) and
    leaves the quiet one alone. A bot speaking with loud levels interrupts nobody."""
    room = BargeIn()
    whom: list[tuple[str, Interrupted]] = []
    on_event = room.relay.on_event
    assert on_event is not None

    def record(peer, event):
        if isinstance(event, Interrupted):
            whom.append((peer.participant_id, event))
        on_event(peer, event)

    room.relay.on_event = record
    c = make_bot(room.relay, room.wire, "c", 3333)
    d = make_bot(room.relay, room.wire, "d", 4444)
    for bot, addr in ((c, C_ADDR), (d, D_ADDR)):
        bot.playout = BotPlayout(max_ahead=120.0, max_marks=1000)
        bot.interruption_ms = 200  # the setting is per room: a bot's speech still never barges in
        bot.speech = SpeechTracker(level_id=1, budget=None)
        latch(room.relay, room.wire, bot, addr)
    room.wire.clear()
    # a queues 5 s at once; c talks in real time (0.2 s quiet, then loud levels) for 1 s, then queues the rest.
    room.bot_says(250, 1.0, marker=True)
    for seq in range(1, 251):
        at = 1.0 + min(seq, 50) * FRAME_S
        room.advance(at)
        packet = RtpPacket(111, seq, seq * 960, 3333, b"\xfc\x01\x02", marker=seq == 1, extension=LOUD if seq > 10 else QUIET)
        room.relay.handle_datagram(bytes(packet), C_ADDR, at)
    assert c.speech.speaking and c.playout.pending
    assert whom == []

    room.human_talks_until_interrupted(2.0)
    assert sorted(pid for pid, _ in whom) == ["p-a", "p-c"]
    assert {event.by for _, event in whom} == {room.b.participant_id}
    for _, event in whom:
        assert 0 < event.cleared.played_ms < 5000 and event.cleared.dropped_ms > 0
    assert room.relay.counters["barge_in"] == 2
    assert not room.a.playout.pending and not c.playout.pending
