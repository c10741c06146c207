"""The front's room directory and WebSocket frame follower, sans-IO."""

from __future__ import annotations

import json

from botcall.cluster.directory import WORKER_LOST, Directory, Lost
from botcall.cluster.router import Front, ServerFrames, join_token_untrusted, JoinTokenError, ws_frame
from botcall.auth.attestation import ReplayCache
from botcall.config import Config

import base64
import pytest


def directory(workers: int = 2) -> Directory:
    d = Directory(workers, max_rooms=3, max_sessions=3, max_lost=2, lost_for=60)
    for index in range(workers):
        d.worker_started(index, http_port=1000 + index, media_port=2000 + index, now=0)
    return d


def test_placement_follows_reported_load_not_turns():
    d = directory()
    d.worker_report(0, rooms=1, sessions=2, packets=0, now=1)
    d.worker_report(0, rooms=1, sessions=2, packets=100, now=2)  # 100 packets/s: two talking sessions
    assert d.table[0].load == 2 + 2
    assert d.place(0).index == 1  # load 0 -> placed once counts 2
    assert d.place(0).index == 1  # 2 < 4: round robin would have gone back to 0
    assert d.place(0).index == 0  # 4 vs 4: the lower index
    d.worker_report(1, rooms=2, sessions=0, packets=0, now=3)  # the reports replace the guesses
    assert d.place(0).index == 1


def test_a_placement_counts_until_a_report_shows_its_room():
    # Under load a worker's report may be written before the new room reaches it:
    # that report must not wipe the placement (both creates went to worker 0).
    d = directory()
    assert d.place(10).index == 0
    d.worker_report(0, rooms=0, sessions=0, packets=0, now=10.1)  # written before the room arrived
    assert d.table[0].placed == 1 and d.place(10.2).index == 1
    d.worker_report(0, rooms=1, sessions=0, packets=0, now=10.6)  # now it shows the room
    assert d.table[0].placed == 0 and d.table[0].load == 2
    assert d.place(11).index == 0  # 2 + 2 placed on 1 vs 2 on 0: the lower index on a tie
    d.worker_report(0, rooms=1, sessions=0, packets=0, now=13.1)  # a room closed meanwhile: no growth
    assert d.table[0].placed == 0  # held PLACED_HOLD_S at most


def test_a_room_nobody_joined_yet_counts_as_its_two_sessions():
    # Found under load: a report between two creates reset the "placed" guess,
    # and an empty room added nothing, so both rooms went to worker 0.
    d = directory()
    assert d.place(0).index == 0
    d.worker_report(0, rooms=1, sessions=0, packets=0, now=1)
    assert d.table[0].load == 2
    assert d.place(0).index == 1
    d.worker_report(0, rooms=1, sessions=5, packets=0, now=2)  # joined: the sessions count
    assert d.table[0].load == 5


def test_a_lost_worker_loses_its_rooms_and_only_its_own():
    d = directory()
    d.room_created("r0", d.table[0], expires_at=100)
    d.room_created("r1", d.table[1], expires_at=100)
    d.session_joined("s0", d.table[0], expires_at=100)
    assert d.worker_lost(0, now=5) == ["r0"]
    assert d.room("r0") == Lost(WORKER_LOST, 5)
    assert d.room("r1") is d.table[1]
    assert d.session("s0") is None
    assert d.place(0).index == 1  # a stopped worker gets nothing
    d.worker_started(0, http_port=1100, media_port=2000, now=6)
    assert d.table[0].generation == 2
    assert d.room("r0") == Lost(WORKER_LOST, 5)  # a new generation does not bring it back


def test_tables_are_bounded_and_expire():
    d = directory()
    for i in range(5):
        d.room_created(f"r{i}", d.table[0], expires_at=10 + i)
    assert list(d.rooms) == ["r2", "r3", "r4"]
    d.worker_lost(0, now=0)
    assert list(d.lost) == ["r3", "r4"]
    d.expire(now=61)
    assert not d.lost


def test_server_frames_know_a_clean_close_from_an_abrupt_end():
    head = b"HTTP/1.1 101 \r\nupgrade: websocket\r\n\r\n"
    clean = ServerFrames()
    clean.feed(head + ws_frame(0x1, b'{"type":"welcome"}') + ws_frame(0x8, b"\x03\xe8"))
    clean.ended = True
    assert not clean.abrupt_end_between_frames
    abrupt = ServerFrames()
    stream = head + ws_frame(0x1, b"x" * 100) + bytes((0x82, 126)) + (300).to_bytes(2, "big") + b"y" * 300
    for i in range(len(stream)):  # fed byte by byte, as TCP may deliver it
        abrupt.feed(stream[i : i + 1])
    abrupt.ended = True
    assert abrupt.abrupt_end_between_frames
    cut = ServerFrames()
    cut.feed(stream[:-1])
    cut.ended = True
    assert not cut.abrupt_end_between_frames  # mid-frame: nothing may be appended
    refused = ServerFrames()
    refused.feed(b"HTTP/1.1 404 Not Found\r\ncontent-length: 2\r\n\r\n{}")
    refused.ended = True
    assert not refused.abrupt_end_between_frames


def _token(claims: dict) -> str:
    payload = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"eyJhbGciOiJFZERTQSJ9.{payload}.c2ln"


async def test_join_routing_reads_the_token_unverified_and_refuses_replays():
    d = directory()
    d.room_created("r1", d.table[1], expires_at=10**10)
    front = Front(d, Config(), ReplayCache(100), clock=lambda: 1000.0)
    body = json.dumps({"room_id": "r1", "attestation": {"token": _token({"iss": "i", "jti": "j", "exp": 2000})}}).encode()
    route = await front.route("POST", "/v1/join", body)
    assert route.worker is d.table[1] and route.replay_key == ("i", "j", 2000.0)
    await front.learn(route, 200, json.dumps({"session_id": "s1", "expires_at": "2030-01-01T00:00:00Z"}).encode())
    again = await front.route("POST", "/v1/join", body)
    assert again.answer is not None and again.answer[1]["error"]["code"] == "attestation_replayed"
    assert d.session("s1") is d.table[1]
    for bad in (b"", b"[]", b'{"room_id": "r1", "attestation": {"token": "a.!!!.c"}}', b'{"room_id": 5}'):
        with pytest.raises(JoinTokenError):
            join_token_untrusted(bad)
        assert (await front.route("POST", "/v1/join", bad)).worker is not None  # the worker gives the real error


from hypothesis import given, strategies as st


@given(st.binary(max_size=300) | st.builds(lambda t: json.dumps({"room_id": "r", "attestation": {"token": t}}).encode(), st.text(max_size=80)))
def test_join_token_parse_either_reads_or_raises_its_own_error(data):
    try:
        join_token_untrusted(data)
    except JoinTokenError:
        pass


@given(st.lists(st.binary(max_size=200), max_size=10))
def test_server_frames_take_any_bytes(chunks):
    frames = ServerFrames()
    for chunk in chunks:
        frames.feed(chunk)
    frames.ended = True
    assert isinstance(frames.abrupt_end_between_frames, bool)


from prometheus_client.parser import text_string_to_metric_families

from botcall.cluster.metrics_merge import label_sample, merge_expositions


def test_metrics_of_workers_merge_into_one_valid_exposition_labelled_by_node_and_worker():
    worker_text = (
        "# HELP botcall_joins_total Successful joins.\n# TYPE botcall_joins_total counter\n"
        'botcall_joins_total{kind="bot",transport="udp"} {n}\n'
        "# HELP botcall_live_rooms Open rooms.\n# TYPE botcall_live_rooms gauge\nbotcall_live_rooms {n}\n"
    )
    merged = merge_expositions([({"node": "n1", "worker": str(i)}, worker_text.replace("{n}", str(i + 1))) for i in range(2)])
    families = {f.name: f for f in text_string_to_metric_families(merged)}
    joins = {(s.labels["worker"], s.labels["transport"]): s.value for s in families["botcall_joins"].samples}
    assert joins == {("0", "udp"): 1.0, ("1", "udp"): 2.0}
    assert {s.labels["node"] for s in families["botcall_live_rooms"].samples} == {"n1"}
    assert merged.count("# TYPE botcall_live_rooms gauge") == 1
    assert label_sample('x{a="}"} 1', 'w="0"') == 'x{w="0",a="}"} 1'
    assert label_sample("x{} 1", 'w="0"') == 'x{w="0"} 1'
