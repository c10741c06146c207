"""A bot session's numbered event log (sans-IO): numbering, bounds, what a resume gets."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, strategies as st

from botcall.signaling.event_log import EventLog, Lost, ResumeError, parse_last_seq_untrusted


def chat(n: int, text: str = "x") -> str:
    return json.dumps({"type": "chat", "participant_id": "p-1", "text": f"{text}{n}"}, separators=(",", ":"))


def test_events_are_numbered_from_one_and_keep_their_content():
    log = EventLog("s", "r")
    sent = [json.loads(log.record(chat(n))) for n in range(3)]
    assert [event["seq"] for event in sent] == [1, 2, 3]
    assert sent[1] == {"type": "chat", "participant_id": "p-1", "text": "x1", "seq": 2}
    assert log.seq == 3


def test_a_resume_gets_what_came_after_its_last_seq_in_order():
    log = EventLog("s", "r")
    for n in range(5):
        log.record(chat(n))
    lost, events = log.since(2)
    assert lost is None
    assert [json.loads(e)["seq"] for e in events] == [3, 4, 5]
    assert log.since(5) == (None, [])
    assert [json.loads(e)["seq"] for e in log.since(0)[1]] == [1, 2, 3, 4, 5]


def test_the_log_keeps_the_newest_events_and_names_the_evicted_range():
    log = EventLog("s", "r", max_events=4)
    for n in range(10):
        log.record(chat(n))
    assert log.evicted == 6 and log.oldest_held == 7
    lost, events = log.since(3)
    assert lost == Lost(4, 6) and lost.count == 3
    assert [json.loads(e)["seq"] for e in events] == [7, 8, 9, 10]
    # Up to the oldest held: nothing lost.
    assert log.since(6)[0] is None


def test_the_byte_bound_evicts_too_but_always_keeps_the_newest():
    log = EventLog("s", "r", max_bytes=200)
    for n in range(10):
        log.record(chat(n, "y" * 40))
    held = log.since(log.oldest_held - 1)[1]
    assert sum(len(e) for e in held) <= 200 and len(held) >= 1
    big = EventLog("s", "r", max_bytes=10)
    big.record(chat(0, "z" * 100))
    assert len(big.since(0)[1]) == 1  # one event larger than the bound stays


@pytest.mark.parametrize("last_seq", [-1, 4])
def test_a_resume_beyond_the_log_is_refused(last_seq: int):
    log = EventLog("s", "r")
    for n in range(3):
        log.record(chat(n))
    with pytest.raises(ResumeError):
        log.since(last_seq)


@given(st.text(max_size=30))
def test_last_seq_parses_or_raises_its_own_error(value: str):
    try:
        parsed = parse_last_seq_untrusted(value)
    except ResumeError:
        return
    assert parsed >= 0 and str(parsed) == value.lstrip("0").rjust(1, "0")


@given(st.lists(st.integers(min_value=1, max_value=300), min_size=1, max_size=40), st.integers(1, 20))
def test_whatever_is_asked_the_answer_is_a_contiguous_tail(sizes: list[int], max_events: int):
    log = EventLog("s", "r", max_events=max_events, max_bytes=2000)
    for n, size in enumerate(sizes):
        log.record(chat(n, "w" * size))
    for last_seq in range(log.seq + 1):
        lost, events = log.since(last_seq)
        seqs = [json.loads(e)["seq"] for e in events]
        first = lost.last_seq + 1 if lost is not None else last_seq + 1
        assert seqs == list(range(first, log.seq + 1))
        if lost is not None:
            assert lost.first_seq == last_seq + 1
