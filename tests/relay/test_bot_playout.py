"""BotPlayout, sans-IO: time is a number, the timer is simulated exactly.

``drive`` plays the relay's part: it pushes each arrival at its time and, in
between, calls ``pop_due`` at ``next_due()`` (as ``MediaRelay.handle_timeout``
does at ``next_deadline()``), recording when each position was released.
"""

from __future__ import annotations

import random

from hypothesis import assume, given, strategies as st

from botcall.relay.bot_playout import DRIFT_LIMIT, DRIFT_WINDOW, LEAD, SAMPLES_PER_MS, STALL_JITTER, STALL_LIMIT, BotPlayout, Cleared, MarkReached, Push

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


# --- stalls: a late re-anchor is taken back once the sender is back on its old clock --------------

# A real-time sender back from a stall is caught up at the first push two
# windows after the re-anchor (the first window holds the stalled burst): the
# N the stall tests hold it to, past the stall's end.
RECOVERY_S = 2 * DRIFT_WINDOW + 2 * 0.02


def stalled(frames: int, *, start: float, length: float, jitter: float = 0.0, seed: int = 0) -> tuple[dict[int, float], list[tuple[float, int]]]:
    """A real-time sender (frame k sent at k * 20 ms, ``jitter`` on each arrival)
    whose packets sent in ``[start, start + length)`` are stuck and arrive
    together, in order, when the stall ends.

    Returns:
        (send time by position, the arrivals).
    """
    rng = random.Random(seed)
    sent = {k * FRAME: k * 0.02 for k in range(frames)}
    arrivals = []
    for position, t in sent.items():
        at = t + rng.uniform(0.0, jitter)
        if start <= t < start + length:
            at = start + length  # the burst (drive keeps stream order for equal times)
        arrivals.append((at, position))
    return sent, arrivals


def test_the_stall_bug_a_300ms_stall_then_real_time_is_back_to_no_added_delay():
    # The bug: the frame late by 300 ms re-anchored the schedule, every later
    # frame came 300 ms "early" (above DRIFT_LIMIT), and was held 300 ms for the
    # rest of the call.
    sent, arrivals = stalled(400, start=1.0, length=0.3)
    arrived = {p: t for t, p in arrivals}
    playout = BotPlayout()
    run = drive(playout, arrivals)
    assert [p for _, p, _ in run.released] == sorted(sent)  # nothing lost, in order
    # Re-anchored at the stall's end: the burst and what follows are held by the stall ...
    assert 0.3 - LEAD - 0.001 <= run.release_time(70 * FRAME) - arrived[70 * FRAME] <= 0.3 - LEAD + 0.001
    # ... for two windows at most; then every frame goes on as it arrives.
    after = [t - arrived[p] for t, p, _ in run.released if arrived[p] >= 1.3 + RECOVERY_S]
    assert len(after) > 100 and max(after) <= 1e-6
    # What was held when the schedule moved back went at once (the listeners'
    # jitter buffers take it), never before it arrived.
    assert all(t >= arrived[p] for t, p, _ in run.released)
    assert playout.played == playout.queued == 400 * FRAME


def test_recovery_from_stalls_of_any_length_up_to_the_limit_with_jitter():
    for length in (DRIFT_LIMIT + 0.01, 0.3, 0.6, STALL_LIMIT - 0.01):
        for jitter in (0.0, 0.005, 0.010):
            sent, arrivals = stalled(400, start=1.5, length=length, jitter=jitter, seed=int(length * 1000))
            arrived = {p: t for t, p in arrivals}
            run = drive(BotPlayout(), arrivals)
            assert sorted(p for _, p, _ in run.released) == sorted(sent)
            end = 1.5 + length
            after = [t - arrived[p] for t, p, _ in run.released if arrived[p] >= end + RECOVERY_S]
            # At most the sender's own jitter (within one frame) of added delay.
            assert max(after) <= jitter + 1e-6, (length, jitter, max(after))


@given(
    st.floats(0.5, 3.0),
    st.floats(DRIFT_LIMIT + 0.001, STALL_LIMIT),
    st.floats(0.0, 0.010),
    st.integers(0, 1000),
)
def test_property_after_a_stall_the_delay_returns_marks_and_clear_stay_right(start, length, jitter, seed):
    """A real-time sender stalled for up to STALL_LIMIT: within RECOVERY_S of the
    stall's end the added delay is back to at most its jitter (under one frame),
    nothing is lost or repeated, marks fire once each when the frame ending at
    them is released, and a clear accounts for every sample sent."""
    frames = int((start + length + RECOVERY_S + 1.0) / 0.02)
    sent, arrivals = stalled(frames, start=start, length=length, jitter=jitter, seed=seed)
    arrived = {p: t for t, p in arrivals}
    playout = BotPlayout()
    marks = {f"m{k}": k * FRAME for k in range(25, frames, 25)}
    for name, at in marks.items():
        assert playout.mark(name, at)
    run = drive(playout, arrivals)
    assert [p for _, p, _ in run.released] == sorted(sent)
    after = [t - arrived[p] for t, p, _ in run.released if arrived[p] >= start + length + RECOVERY_S]
    assert after and max(after) <= jitter + 1e-6
    assert all(t >= arrived[p] for t, p, _ in run.released)
    assert [m.name for _, m in run.marks] == list(marks)
    for t, mark in run.marks:
        assert mark.played_ms * SAMPLES_PER_MS == marks[mark.name]
        assert t == run.release_time(marks[mark.name] - FRAME)
    cleared = playout.clear()
    assert cleared.played_ms == frames * 20 and cleared.dropped_ms == 0


def assert_never_sped_up(run: Run, says: list[list[int]]) -> None:
    """Each say's frames leave at real time from its first: never more than LEAD early."""
    for positions in says:
        first = run.release_time(positions[0])
        for k, position in enumerate(positions):
            assert run.release_time(position) >= first + k * 0.02 - LEAD - 1e-9, (positions[0], k)


def test_a_websocket_bot_that_pauses_300ms_then_talks_at_real_time_loses_nothing():
    # Contiguous positions (a WebSocket bot): the pause looks like a 300 ms
    # stall at first, but what follows is on time from the new schedule:
    # nothing is held, skipped or truncated.
    arrivals = real_time(50) + real_time(100, start=1.3, first=50)
    run = drive(BotPlayout(), arrivals)
    assert set(run.verdicts.values()) == {Push.RELEASE}
    assert [p for _, p, _ in run.released] == [k * FRAME for k in range(150)]
    arrived = {p: t for t, p in arrivals}
    assert all(t == arrived[p] for t, p, _ in run.released)


def test_a_300ms_pause_then_text_to_speech_ahead_is_paced_in_full():
    for pause in (DRIFT_LIMIT + 0.01, 0.3, 0.6, STALL_LIMIT):
        arrivals = real_time(50) + burst(300, at=1.0 + pause, first=50)
        playout = BotPlayout()
        run = drive(playout, arrivals)
        assert [p for _, p, _ in run.released] == [k * FRAME for k in range(350)]
        assert_never_sped_up(run, [[k * FRAME for k in range(50, 350)]])
        assert playout.played_ms == 7000


def sdk_say(first: int, frames: int, start: float, ahead: float = 5.0) -> list[tuple[float, int]]:
    """A say as the Python SDK sends it: ``ahead`` seconds at once, then at real time."""
    return [(max(start, start + k * 0.02 - ahead) + k * 1e-7, (first + k) * FRAME) for k in range(frames)]


def test_the_sdk_sending_5s_ahead_after_pauses_of_any_length_is_paced_in_full():
    # A steady lead of 5 s after a pause: the pause may be as long as the lead,
    # but 5 s is beyond STALL_LIMIT, so it is never mistaken for a stall.
    for pause in (0.3, 1.0, 4.9, 5.0, 5.1):
        first_say = sdk_say(0, 500, 0.0)  # 10 s
        second_say = sdk_say(500, 500, 10.0 + pause)
        run = drive(BotPlayout(), first_say + second_say)
        assert [p for _, p, _ in run.released] == [k * FRAME for k in range(1000)]
        assert_never_sped_up(run, [[k * FRAME for k in range(500)], [k * FRAME for k in range(500, 1000)]])


pauses = st.one_of(st.floats(-1.0, 0.0), st.floats(DRIFT_LIMIT + 0.001, 6.0))


@given(st.lists(st.tuples(st.integers(1, 600), pauses, st.sampled_from([0.0, 0.3, 1.0, 1.5, 5.0])), min_size=1, max_size=5))
def test_property_text_to_speech_sent_ahead_is_never_sped_up_or_lost(says):
    """Says of 20 ms to 12 s, each started ``pause`` after the last one's audio
    ends (negative: while it still plays), each sent ``ahead`` seconds ahead at
    most and then at real time: everything plays, in order, and a say that
    starts after the queue ran dry plays at real time from its first frame.
    (A pause of at most DRIFT_LIMIT is a delay spike, by design: what it left
    overdue goes at once; see test_a_100ms_delay_spike_is_not_carried_over. A
    steady lead under DRIFT_LIMIT, or within STALL_JITTER of a pause of at most
    STALL_LIMIT, is caught up, by design: see the two documented tests.)"""
    arrivals: list[tuple[float, int]] = []
    groups: list[list[int]] = []
    start = first = 0
    audio_end = 0.0
    gaps: list[float] = []
    for frames, pause, ahead in says:
        start = max(start, audio_end + pause) if arrivals else 0.0
        if arrivals:
            # The lead it keeps once it sends at real time (see the docstring);
            # a say short enough to go out at once never gets there: its
            # largest lead is its last frame's.
            steady_lead = min(ahead, (frames - 1) * 0.02) + max(0.0, audio_end - start)
            assume(steady_lead == 0.0 or steady_lead >= DRIFT_LIMIT + 0.01)
            if pause > 0:
                gaps.append(pause)  # the say re-anchors: a stall of `pause`, as far as arrivals show
            # Stalls sum over re-anchors (see "Stalls" in bot_playout): any run
            # of the latest pauses may be the stall the lead is taken for.
            stalls = [sum(gaps[k:]) for k in range(len(gaps))]
            assume(not any(0 < s <= STALL_LIMIT and abs(steady_lead - s) <= STALL_JITTER + 0.01 for s in stalls))
        # One sender: a say's frames go out after the last say's.
        floor = arrivals[-1][0] if arrivals else 0.0
        arrivals += [(max(t, floor + 1e-7), p) for t, p in sdk_say(first, frames, start, ahead)]
        if not groups or start >= audio_end:
            groups.append([])
        groups[-1].extend((first + k) * FRAME for k in range(frames))
        audio_end = max(audio_end, start) + frames * 0.02
        first += frames
    run = drive(BotPlayout(), arrivals)
    assert [p for _, p, _ in run.released] == [k * FRAME for k in range(first)]
    assert_never_sped_up(run, groups)


def test_a_short_say_queued_behind_a_long_one_does_not_speed_it_up():
    # Found by the property above: 4.1 s sent 0.3 s ahead, 1.2 s sent 1 s ahead
    # behind it, then nothing for 1.2 s, then one 20 ms say 125 ms before the
    # queue ends. That window holds one small lead: not a clock to catch up on
    # (it released the queue's last 105 ms early).
    arrivals = sdk_say(0, 207, 0.0, ahead=0.3)
    arrivals += [(max(arrivals[-1][0] + 1e-7, t), p) for t, p in sdk_say(207, 60, 3.8275, ahead=1.0)]
    arrivals += [(5.215, 267 * FRAME)]
    run = drive(BotPlayout(), arrivals)
    assert [p for _, p, _ in run.released] == [k * FRAME for k in range(268)]
    assert_never_sped_up(run, [[k * FRAME for k in range(268)]])


def test_documented_two_pauses_then_a_lead_of_their_sum_is_taken_for_one_stall():
    # Found by the property above: pauses of 0.5 s and 0.27 s between short
    # says, then a 4 s say sent 0.3 s ahead of a 0.38 s one still playing (a lead of
    # 0.68 s, within STALL_JITTER of the summed 0.77 s): a real-time sender
    # stalled twice looks the same. The lead is taken back, nothing is lost.
    arrivals = [(0.0, 0), (0.52, FRAME), (0.8056, 2 * FRAME)]
    arrivals += [(0.8256 + k * 0.02, (3 + k) * FRAME) for k in range(19)]
    arrivals += [(max(1.1857, 0.5256 + k * 0.02) + k * 1e-7, (22 + k) * FRAME) for k in range(200)]
    run = drive(BotPlayout(), arrivals)
    assert [p for _, p, _ in run.released] == [k * FRAME for k in range(222)]
    arrived = {p: t for t, p in arrivals}
    assert all(t >= arrived[p] for t, p, _ in run.released)
    late = [t - arrived[p] for t, p, _ in run.released if arrived[p] > 0.8256 + 2 * DRIFT_WINDOW + 0.1]
    assert late and max(late) <= 1e-6


def test_a_short_say_after_a_quiet_second_is_not_a_spike():
    # Found by a Hypothesis soak (2000 examples, seed 1): a 6.52 s say sent 1.5 s
    # ahead (its last packet at 5.0 s), then nothing for 1.4 s, then a one-frame
    # say arriving 125 ms before the first one ends. The last window held that
    # one packet: taken for a delay spike, it sent the queue's tail 105 ms early.
    # A window now needs half its length in audio to be judged.
    for at in (6.395, 6.22):  # 125 ms and 300 ms before the first say ends
        run = drive(BotPlayout(), sdk_say(0, 326, 0.0, ahead=1.5) + [(at, 326 * FRAME)])
        assert [p for _, p, _ in run.released] == [k * FRAME for k in range(327)]
        assert_never_sped_up(run, [[k * FRAME for k in range(327)]])


def test_documented_a_pause_then_a_steady_lead_of_the_same_length_is_taken_for_a_stall():
    # The one case arrivals cannot tell apart: a WebSocket bot that pauses for
    # 0.5 s and then keeps 0.5 s ahead (within STALL_JITTER) looks like a
    # real-time sender stalled for 0.5 s. Its lead is taken back; nothing is
    # dropped. Any other lead is paced.
    arrivals = real_time(50) + sdk_say(50, 300, 1.5, ahead=0.5)
    run = drive(BotPlayout(), arrivals)
    assert [p for _, p, _ in run.released] == [k * FRAME for k in range(350)]
    arrived = {p: t for t, p in arrivals}
    assert max(t - arrived[p] for t, p, _ in run.released if arrived[p] > 1.5 + RECOVERY_S) <= 1e-6
    for lead in (0.5 - STALL_JITTER - 0.05, 0.5 + STALL_JITTER + 0.05):
        paced = drive(BotPlayout(), real_time(50) + sdk_say(50, 300, 1.5, ahead=lead))
        assert_never_sped_up(paced, [[k * FRAME for k in range(50, 350)]])


def test_a_stall_longer_than_the_limit_is_a_pause():
    # Beyond STALL_LIMIT the re-anchor stays (a sender that paused and now keeps
    # a lead): the documented price for never speeding up text-to-speech.
    length = STALL_LIMIT + 0.1
    sent, arrivals = stalled(400, start=1.0, length=length)
    arrived = {p: t for t, p in arrivals}
    run = drive(BotPlayout(), arrivals)
    assert sorted(p for _, p, _ in run.released) == sorted(sent)
    late = [t - arrived[p] for t, p, _ in run.released if arrived[p] > 5.0]
    assert min(late) >= length - LEAD - 0.001


def test_a_clear_forgets_the_stall():
    sent, arrivals = stalled(90, start=1.0, length=0.3)
    playout = BotPlayout()
    drive(playout, arrivals)
    playout.clear()
    # After a clear the next audio starts a fresh schedule: a sender keeping 0.3 s ahead is paced.
    later = sdk_say(90, 300, 10.0, ahead=0.3)
    run = drive(playout, later)
    assert_never_sped_up(run, [[p for _, p in later]])
