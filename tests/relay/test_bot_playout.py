"""BotPlayout, sans-IO: time is a number, the timer is simulated exactly.

``drive`` plays the relay's part: it pushes each arrival at its time and, in
between, calls ``pop_due`` at ``next_due()`` (as ``MediaRelay.handle_timeout``
does at ``next_deadline()``), recording when each position was released.
"""

from __future__ import annotations

import random

from hypothesis import given, strategies as st

from botcall.relay.bot_playout import LEAD, BotPlayout, Cleared, MarkReached, Push

FRAME = 960  # 20 ms at 48 kHz
SR = 48000


def packet(position: int) -> bytes:
    return position.to_bytes(8, "big")


def position_of(data: bytes) -> int:
    return int.from_bytes(data, "big")


class Run:
    """What ``drive`` saw: releases as (time, position, how), verdicts, marks as (time, MarkReached)."""

    def __init__(self) -> None:
        self.released: list[tuple[float, int, str]] = []
        self.verdicts: dict[int, Push] = {}
        self.marks: list[tuple[float, MarkReached]] = []
        self.max_ahead_samples = 0

    def release_time(self, position: int) -> float:
        return next(t for t, p, _ in self.released if p == position)


def drive(playout: BotPlayout, arrivals: list[tuple[float, int]], *, samples: int = FRAME, until: float | None = None) -> Run:
    """Push ``(time, position)`` arrivals in time order and pop at every ``next_due``.

    Returns:
        The ``Run``; releases carry ``"push"`` (RELEASE) or ``"pop"`` (from the queue).
    """
    run = Run()
    pending = sorted(arrivals, key=lambda item: item[0])
    index = 0
    now = pending[0][0] if pending else 0.0
    while True:
        due = playout.next_due()
        if index < len(pending) and (due is None or pending[index][0] <= due):
            now = max(now, pending[index][0])
            position = pending[index][1]
            index += 1
            verdict = playout.push(packet(position), position, samples, now)
            run.verdicts[position] = verdict
            if verdict is Push.RELEASE:
                run.released.append((now, position, "push"))
        elif due is not None and (until is None or due <= until):
            now = max(now, due)
            for data in playout.pop_due(now):
                run.released.append((now, position_of(data), "pop"))
        else:
            break
        run.max_ahead_samples = max(run.max_ahead_samples, playout.queued - playout.played)
        run.marks.extend((now, reached) for reached in playout.reached())
    return run


def real_time(frames: int, *, start: float = 0.0, jitter: float = 0.0, seed: int = 0, first: int = 0) -> list[tuple[float, int]]:
    rng = random.Random(seed)
    return [(start + k * 0.02 + rng.uniform(-jitter, jitter), (first + k) * FRAME) for k in range(frames)]


def burst(frames: int, *, at: float = 0.0, first: int = 0) -> list[tuple[float, int]]:
    """``frames`` frames all arriving within a millisecond (text-to-speech as fast as it comes)."""
    return [(at + k * 1e-6, (first + k) * FRAME) for k in range(frames)]


# --- pacing ------------------------------------------------------------------------------------


def test_a_real_time_sender_goes_straight_through():
    playout = BotPlayout()
    run = drive(playout, real_time(500))
    assert set(run.verdicts.values()) == {Push.RELEASE}
    assert [p for _, p, _ in run.released] == [k * FRAME for k in range(500)]
    assert playout.played == playout.queued == 500 * FRAME and not playout.pending


def test_a_real_time_sender_with_10ms_of_jitter_goes_straight_through():
    for seed in range(5):
        playout = BotPlayout()
        arrivals = real_time(500, jitter=0.010, seed=seed)
        run = drive(playout, arrivals)
        held = {p: v for p, v in run.verdicts.items() if v is not Push.RELEASE}
        assert held == {}, f"seed {seed}: frames held"
        # Every frame left when it arrived.
        arrived = dict((p, t) for t, p in arrivals)
        assert all(abs(t - arrived[p]) < 1e-9 for t, p, _ in run.released)


def test_a_burst_of_6s_is_released_at_real_time():
    playout = BotPlayout()
    run = drive(playout, burst(300, at=5.0))
    assert [p for _, p, _ in run.released] == [k * FRAME for k in range(300)]
    assert run.verdicts[0] is Push.RELEASE
    assert all(v is Push.QUEUED for p, v in run.verdicts.items() if p >= 2 * FRAME)
    # Position p is due at 5.0 + p / 48000 and leaves LEAD before that at most.
    for t, p, _ in run.released:
        due = 5.0 + p / SR
        assert due - LEAD - 0.001 <= t <= due + 0.001, (p, t)
    # The span of the releases is the audio's length (less the first frame's lead).
    assert abs((run.released[-1][0] - run.released[0][0]) - (299 * 0.02 - LEAD)) < 0.001
    assert playout.played_ms == 6000


def test_reordered_rtp_in_a_burst_is_released_in_stream_order():
    rng = random.Random(7)
    positions = [k * FRAME for k in range(100)]
    shuffled = positions[1:]
    rng.shuffle(shuffled)
    arrivals = [(0.0, 0)] + [(0.001 + i * 1e-5, p) for i, p in enumerate(shuffled)]
    run = drive(BotPlayout(), arrivals)
    assert [p for _, p, _ in run.released] == positions
    for t, p, _ in run.released[1:]:
        assert abs(t - (p / SR - LEAD)) < 0.001 or p == FRAME


def test_a_reordered_real_time_packet_is_not_held():
    # Frame 11 overtakes frame 10: both go on at once (the listener's jitter buffer reorders).
    arrivals = real_time(30)
    arrivals[10], arrivals[11] = (arrivals[10][0] + 0.0001, arrivals[11][1]), (arrivals[10][0] + 0.0002, arrivals[10][1])
    run = drive(BotPlayout(), arrivals)
    assert set(run.verdicts.values()) == {Push.RELEASE}
    assert sorted(p for _, p, _ in run.released) == [k * FRAME for k in range(30)]


def test_late_audio_after_idle_plays_at_once_and_sets_a_new_schedule():
    playout = BotPlayout()
    first = real_time(50)  # 1 s, then 2 s of silence with nothing sent
    later = burst(100, at=3.0, first=50)  # contiguous positions (a WebSocket bot): 2 s late
    run = drive(playout, first + later)
    assert run.verdicts[50 * FRAME] is Push.RELEASE
    assert run.release_time(50 * FRAME) == 3.0
    # The rest at real time from the new anchor.
    for t, p, _ in run.released[51:]:
        due = 3.0 + (p - 50 * FRAME) / SR
        assert due - LEAD - 0.001 <= t <= due + 0.001


def test_gaps_in_rtp_timestamps_stay_gaps():
    # Positions from timestamps: a 1 s hole the sender left is played as 1 s of nothing.
    arrivals = burst(10) + [(0.0001, (60 + k) * FRAME) for k in range(10)]
    run = drive(BotPlayout(), arrivals)
    assert abs(run.release_time(60 * FRAME) - (1.2 - LEAD)) < 0.001


def latency_after(run: Run, sent: dict[int, float], since: float) -> float:
    """The largest release time minus send time for frames sent after ``since``."""
    return max(t - sent[p] for t, p, _ in run.released if sent[p] >= since)


def test_a_100ms_delay_spike_is_not_carried_over():
    # A real-time sender; what it sent in [1.0, 1.1) is stuck in the network and
    # arrives at 1.1 together, then the network is back to no delay.
    sent = {k * FRAME: k * 0.02 for k in range(400)}
    arrivals = [(max(t, 1.1) if 1.0 <= t < 1.1 else t, p) for p, t in sent.items()]
    playout = BotPlayout()
    run = drive(playout, arrivals)
    assert [p for _, p, _ in run.released] == sorted(sent)
    # What the spike held goes at once when it arrives: late already, never held more.
    assert all(t == 1.1 for t, p, _ in run.released if 1.0 <= sent[p] < 1.1)
    # And the schedule stays: the packets after the spike, on time again, go straight through.
    assert latency_after(run, sent, since=1.1) <= 0.001
    assert min(t - sent[p] for t, p, _ in run.released) >= -LEAD - 1e-9


def test_delay_spikes_less_than_a_window_apart_do_not_add_up():
    # A 60 ms spike every 300 ms (a busy machine descheduling the relay, or the
    # network): each costs the packets it caught, never the ones after it.
    sent = {k * FRAME: k * 0.02 for k in range(300)}

    def arrival(t: float) -> float:
        start = (t // 0.3) * 0.3 + 0.1
        return max(t, start + 0.06) if start <= t < start + 0.06 else t

    run = drive(BotPlayout(), [(arrival(t), p) for p, t in sent.items()])
    assert [p for _, p, _ in run.released] == sorted(sent)
    assert max(t - arrival(sent[p]) for t, p, _ in run.released) <= 0.001
    assert max(t - sent[p] for t, p, _ in run.released) <= 0.06 + 1e-9


def test_a_sender_keeping_a_steady_small_lead_is_caught_up():
    # Documented: every packet early by less than DRIFT_LIMIT for a whole second
    # is a real-time sender after a spike, whatever the reason.
    sent = {k * FRAME: k * 0.02 for k in range(300)}
    arrivals = [(0.0, 0)] + [(t - 0.15, p) for p, t in sent.items() if p]
    run = drive(BotPlayout(), arrivals)
    late = [t - sent[p] for t, p, _ in run.released if sent[p] > 3.0]
    assert max(late) <= 0.001


def test_a_burst_sender_is_never_sped_up():
    # Text-to-speech in 2 s bursts, each sent when 100 ms of the last one is left
    # to play: a small lead at each burst's start, a large one within it. Its
    # audio must come out exactly at real time, never earlier than LEAD.
    arrivals = []
    for chunk in range(6):
        arrivals += burst(100, at=max(0.0, chunk * 2.0 - 0.1), first=chunk * 100)
    playout = BotPlayout()
    run = drive(playout, arrivals)
    assert [p for _, p, _ in run.released] == [k * FRAME for k in range(600)]
    for t, p, _ in run.released:
        assert p / SR - LEAD - 0.001 <= t <= p / SR + 0.001, (p, t)


def test_a_burst_sender_with_pauses_is_never_sped_up():
    # Bursts separated by long pauses while audio is queued: one window spans
    # several seconds with few packets in it; still not a real-time sender.
    arrivals = burst(300) + burst(300, at=5.9, first=300) + burst(300, at=11.8, first=600)
    run = drive(BotPlayout(), arrivals)
    for t, p, _ in run.released:
        assert p / SR - LEAD - 0.001 <= t <= p / SR + 0.001, (p, t)


def test_beyond_max_ahead_is_refused_and_nothing_is_dropped():
    playout = BotPlayout(max_ahead=1.0)
    verdicts = [playout.push(packet(k * FRAME), k * FRAME, FRAME, 0.0) for k in range(60)]
    # Frames 0 and 1 (due within LEAD) went at once; 1 s may wait past them.
    assert verdicts[:2] == [Push.RELEASE] * 2
    assert verdicts[52:] == [Push.FULL] * 8 and Push.FULL not in verdicts[:52]
    assert playout.queued_ms == 1040 and playout.ahead_ms() == 1000
    # By 0.5 s, frames 2..26 (due by 0.5 + LEAD) have played: room for 25 more.
    assert len(playout.pop_due(0.5)) == 25
    for k in range(52, 77):
        assert playout.push(packet(k * FRAME), k * FRAME, FRAME, 0.5) is Push.QUEUED
    assert playout.push(packet(77 * FRAME), 77 * FRAME, FRAME, 0.5) is Push.FULL
    assert playout.ahead_ms() == 1000


# --- marks ---------------------------------------------------------------------------------------


def test_marks_fire_when_playback_passes_them():
    playout = BotPlayout()
    for k in range(300):
        playout.push(packet(k * FRAME), k * FRAME, FRAME, 0.0)
        if k + 1 in (100, 200, 300):
            assert playout.mark(f"m{k + 1}")
    run = drive(playout, [])
    assert [(round(t, 6), m) for t, m in run.marks] == [
        (round(2.0 - 0.02 - LEAD, 6), MarkReached("m100", 2000)),
        (round(4.0 - 0.02 - LEAD, 6), MarkReached("m200", 4000)),
        (round(6.0 - 0.02 - LEAD, 6), MarkReached("m300", 6000)),
    ]
    # Each fired with the release of the frame that ends at it.
    for t, mark in run.marks:
        assert run.release_time(mark.played_ms * SR // 1000 - FRAME) == t


def test_a_mark_at_a_position_in_the_stream():
    playout = BotPlayout()
    for k in range(100):
        playout.push(packet(k * FRAME), k * FRAME, FRAME, 0.0)
    playout.mark("late", 80 * FRAME)
    playout.mark("early", 30 * FRAME)  # placed after a later one: still fires in stream order
    run = drive(playout, [])
    assert [m.name for _, m in run.marks] == ["early", "late"]
    assert run.marks[0][0] == run.release_time(29 * FRAME)


def test_a_mark_with_nothing_queued_fires_at_once():
    playout = BotPlayout()
    assert playout.mark("start")
    assert playout.reached() == [MarkReached("start", 0)]
    playout.push(packet(0), 0, FRAME, 0.0)  # a real-time frame: released at once
    assert playout.mark("after")
    assert playout.reached() == [MarkReached("after", 20)]


def test_max_marks():
    playout = BotPlayout(max_marks=3)
    playout.push(packet(0), 0, FRAME, 0.0)
    playout.push(packet(FRAME), FRAME, FRAME, 0.0)
    playout.push(packet(2 * FRAME), 2 * FRAME, FRAME, 0.0)
    assert [playout.mark(f"m{i}") for i in range(4)] == [True, True, True, False]
    playout.pop_due(0.1)
    assert [m.name for m in playout.reached()] == ["m0", "m1", "m2"]
    assert playout.mark("room again")


# --- clear -----------------------------------------------------------------------------------------


def test_clear_says_what_played_and_what_was_dropped():
    playout = BotPlayout()
    for k in range(300):
        playout.push(packet(k * FRAME), k * FRAME, FRAME, 0.0)
        if k + 1 in (50, 150, 250):
            playout.mark(f"m{k + 1}")
    run = drive(playout, [], until=1.5)
    assert [m.name for _, m in run.marks] == ["m50"]
    played = run.released[-1][1] + FRAME
    cleared = playout.clear()
    assert cleared == Cleared(played // 48, (300 * FRAME - played) // 48, ("m150", "m250"))
    assert cleared.played_ms + cleared.dropped_ms == 6000
    assert not playout.pending and playout.next_due() is None and playout.pop_due(100.0) == []
    # The next audio plays at once, wherever its position (a WebSocket bot continues its count).
    assert playout.push(packet(300 * FRAME), 300 * FRAME, FRAME, 1.6) is Push.RELEASE
    assert playout.played_ms == 6020


def test_clear_with_nothing_queued():
    playout = BotPlayout()
    assert playout.clear() == Cleared(0, 0, ())
    playout.push(packet(0), 0, FRAME, 0.0)
    assert playout.clear() == Cleared(20, 0, ())


def test_played_plus_dropped_is_what_was_sent():
    rng = random.Random(5)
    for _ in range(50):
        playout = BotPlayout()
        frames = rng.randint(1, 400)
        drive(playout, burst(frames), until=rng.uniform(0.0, 10.0))
        cleared = playout.clear()
        assert cleared.played_ms + cleared.dropped_ms == frames * 20


# --- properties ------------------------------------------------------------------------------------

schedules = st.lists(
    st.tuples(st.floats(0.0, 5.0, allow_nan=False), st.integers(0, 400)),
    min_size=1,
    max_size=120,
    unique_by=lambda item: item[1],
)


@given(schedules, st.floats(0.1, 3.0), st.integers(1, 3))
def test_property_releases_are_ordered_never_early_and_bounded(arrivals, max_ahead, frame_count):
    """Any arrival schedule: what is scheduled leaves in stream order, never more
    than LEAD before it is due, and the queue never exceeds max_ahead."""
    samples = frame_count * FRAME
    playout = BotPlayout(max_ahead=max_ahead)
    pending = sorted(((t, p * samples) for t, p in arrivals), key=lambda item: item[0])
    index = 0
    now = 0.0
    scheduled: list[int] = []  # positions released in order (stale ones, already passed, excepted)
    while True:
        released: list[int] = []
        due = playout.next_due()
        if index < len(pending) and (due is None or pending[index][0] <= due):
            now = max(now, pending[index][0])
            position = pending[index][1]
            index += 1
            stale = position < playout.played
            verdict = playout.push(packet(position), position, samples, now)
            if stale:
                assert verdict is Push.RELEASE  # behind playback: passed on, not scheduled
            elif verdict is Push.RELEASE:
                released = [position]
        elif due is not None:
            now = max(now, due)
            released = [position_of(data) for data in playout.pop_due(now)]
            assert released, "next_due promised a frame"
        else:
            break
        for position in released:
            frame_due = playout.due(position)
            assert frame_due is not None and now >= frame_due - LEAD - 1e-9
            scheduled.append(position)
        assert playout.queued - playout.played <= max_ahead * SR
    assert scheduled == sorted(scheduled)
    assert len(scheduled) == len(set(scheduled))
    assert not playout.pending


def test_played_plus_dropped_is_what_was_sent_with_frames_of_2_5ms():
    playout = BotPlayout()
    for k in range(10):  # 2.5 ms Opus frames: 120 samples, not whole ms
        playout.push(packet(k * 120), k * 120, 120, 0.0)
    playout.pop_due(0.0025)  # LEAD covers 20 ms: everything; push some more ahead
    for k in range(10, 100):
        playout.push(packet(k * 120), k * 120, 120, 0.0026)
    cleared = playout.clear()
    assert cleared.played_ms + cleared.dropped_ms == 250  # queued_ms: 100 frames of 2.5 ms
    assert cleared.played_ms == playout.played_ms


def test_a_frame_the_catch_up_makes_due_is_released_at_once():
    # A sender 30 ms early: each frame waits 10 ms, the queue is empty at every
    # push. The push that closes a second of such leads moves the schedule 10 ms
    # earlier; that frame is then due and goes at once, as all later ones do.
    playout = BotPlayout()
    verdicts = []
    for k in range(150):
        now = 0.0 if k == 0 else k * 0.02 - 0.03
        playout.pop_due(now)
        assert not playout.pending
        verdicts.append((now, playout.push(packet(k * FRAME), k * FRAME, FRAME, now)))
    # The first window (from 0) holds frame 0's lead of 0; the second closes at 2.01.
    closing = min(now for now, _ in verdicts if now >= 2.0)
    assert [v for now, v in verdicts if now >= closing] == [Push.RELEASE] * len([now for now, _ in verdicts if now >= closing])
    assert all(v is Push.QUEUED for now, v in verdicts if 1.1 < now < closing)
