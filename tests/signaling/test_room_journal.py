"""The rooms journal: a single server's (or supervisor's) rooms on disk, without Redis."""

from __future__ import annotations

import json
import os
from dataclasses import replace

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from botcall.config import Config
from botcall.errors import Gone, RoomRecordError
from botcall.signaling.room_journal import (
    COMPACT_SLACK,
    MAX_LINE,
    Closed,
    Opened,
    RoomJournal,
    encode_line,
    journal_listener,
    parse_room_line_untrusted,
    restore_into,
)
from botcall.signaling.rooms import Interruption, Reason, RoomRegistry
from tests.kit.server import T0

LIMITS = {"max_rooms": 100, "max_closed": 100, "closed_for": 3600.0}


def journalled_registry(tmp_path, config=None):
    registry = RoomRegistry(config or Config())
    journal = RoomJournal.in_dir(tmp_path, **LIMITS)
    restore_into(registry, journal, T0)
    registry.add_listener(journal_listener(journal, lambda: T0 + 5))
    return registry, journal


def test_rooms_come_back_with_their_invite_and_closed_ones_answer_410(tmp_path):
    registry, journal = journalled_registry(tmp_path)
    kept = registry.create_room(owner="gopi", created_by="orion#8f3a", now=T0, expires_in=600, max_human_participants=3,
                                interruption=Interruption("off", 300))
    short = registry.create_room(owner="gopi", created_by="a", now=T0, expires_in=20)
    deleted = registry.create_room(owner="gopi", created_by="a", now=T0)
    registry.close_room(deleted.room_id, Reason.DELETED, now=T0 + 5)
    journal.close()  # a crash: nothing more is written
    assert oct(os.stat(journal.path).st_mode & 0o777) == "0o600"
    assert kept.invite_secret.encode() not in journal.path.read_bytes()  # only its SHA-256

    again = RoomRegistry(Config())
    loaded = restore_into(again, RoomJournal.in_dir(tmp_path, **LIMITS), T0 + 30)
    assert (len(loaded.rooms), loaded.expired, loaded.skipped) == (1, 1, 0)
    room = again.get_room(kept.room_id, T0 + 30)
    assert room == replace(kept, invite_secret="")
    assert again.join_human(kept.room_id, kept.invite_secret, "Ada", now=T0 + 31).room_id == kept.room_id
    with pytest.raises(Gone) as expired:
        again.get_room(short.room_id, T0 + 30)
    assert expired.value.code == "room_expired"
    with pytest.raises(Gone) as closed:
        again.get_room(deleted.room_id, T0 + 30)
    assert closed.value.code == "room_closed"


def test_a_drain_leaves_nothing_to_restore(tmp_path):
    registry, journal = journalled_registry(tmp_path)
    room = registry.create_room(owner="gopi", created_by="a", now=T0)
    registry.close_room(room.room_id, Reason.SHUTDOWN, now=T0 + 1)  # what drain() does to every room
    journal.close()
    again = RoomRegistry(Config())
    loaded = restore_into(again, RoomJournal.in_dir(tmp_path, **LIMITS), T0 + 2)
    assert loaded.rooms == [] and again.live_rooms == 0
    with pytest.raises(Gone):
        again.get_room(room.room_id, T0 + 2)


def test_torn_corrupt_and_foreign_lines_are_skipped_and_counted(tmp_path, caplog):
    registry, journal = journalled_registry(tmp_path)
    rooms = [registry.create_room(owner="gopi", created_by="a", now=T0) for _ in range(2)]
    journal.close()
    good = journal.path.read_bytes()
    record = rooms[0].record()
    journal.path.write_bytes(
        b"\x00\xff garbage\n"
        + good.splitlines(keepends=True)[0]
        + b"[1, 2]\n"
        + json.dumps({"open": {**record, "invite_digest": "secret"}, "worker": 0}).encode() + b"\n"
        + b"x" * (3 * MAX_LINE) + b"\n"
        + json.dumps({"closed": "a", "reason": "Robert'); DROP", "at": 1}).encode() + b"\n"
        + good.splitlines(keepends=True)[1][:-9]  # torn by a crash mid-write
    )
    again = RoomRegistry(Config())
    reopened = RoomJournal.in_dir(tmp_path, **LIMITS)
    loaded = restore_into(again, reopened, T0 + 1)
    reopened.close()
    assert [room.room_id for _, room in loaded.rooms] == [rooms[0].room_id]
    assert loaded.skipped == 6
    assert "6 unreadable line(s) skipped" in caplog.text
    # The load rewrote the file: the next start reads it clean.
    assert RoomJournal.in_dir(tmp_path, **LIMITS).load(T0 + 2).skipped == 0


def test_a_file_that_is_not_a_journal_at_all_starts_empty(tmp_path):
    (tmp_path / "rooms.jsonl").write_bytes(os.urandom(50_000))
    loaded = RoomJournal.in_dir(tmp_path, **LIMITS).load(T0)
    assert loaded.rooms == [] and loaded.skipped >= 1


def test_compaction_keeps_the_tables_and_bounds_the_file(tmp_path):
    registry, journal = journalled_registry(tmp_path, Config(max_live_rooms_per_controller=10_000))
    for _ in range(COMPACT_SLACK):
        room = registry.create_room(owner="gopi", created_by="a", now=T0)
        registry.close_room(room.room_id, Reason.DELETED, now=T0 + 1)
    live = registry.create_room(owner="gopi", created_by="a", now=T0)
    assert len(journal.closed) == LIMITS["max_closed"]  # bounded: the oldest closed rooms go
    assert journal.needs_compaction()
    journal.compact()
    assert journal.lines == 1 + LIMITS["max_closed"] and not journal.needs_compaction()
    assert journal.path.read_bytes().count(b"\n") == journal.lines
    journal.prune(T0 + 4 + LIMITS["closed_for"])
    assert len(journal.closed) == LIMITS["max_closed"]
    journal.prune(T0 + 5 + LIMITS["closed_for"])  # closed at T0 + 5 (the listener's clock): forgotten in time
    assert set(journal.closed) == set() and journal.holds(live.room_id)


def test_open_rooms_are_bounded(tmp_path):
    journal = RoomJournal.in_dir(tmp_path, max_rooms=3, max_closed=3, closed_for=60)
    registry = RoomRegistry(Config())
    for _ in range(5):
        journal.note_room(registry.create_room(owner="o", created_by="a", now=T0).record(), 0)
    assert len(journal.open) == 3
    journal.close()
    assert len(RoomJournal.in_dir(tmp_path, max_rooms=3, max_closed=3, closed_for=60).load(T0).rooms) == 3


def test_a_record_the_worker_garbled_is_not_journalled(tmp_path, caplog):
    journal = RoomJournal.in_dir(tmp_path, **LIMITS)
    journal.note_room({"room_id": "x"}, 0)
    assert journal.open == {} and journal.path.read_bytes() == b""
    assert "room record not journalled" in caplog.text


def _room():
    return RoomRegistry(Config()).create_room(owner="gopi", created_by="orion#8f3a", now=T0)


def test_lines_round_trip():
    room = replace(_room(), invite_secret="")
    for line in (Opened(room, 3), Closed(room.room_id, "server_shutdown", T0 + 0.25)):
        assert parse_room_line_untrusted(encode_line(line)) == line


VALID = encode_line(Opened(replace(_room(), invite_secret=""), 0))


@given(st.binary(max_size=600))
@example(VALID[:-1])
@example(b'{"closed":"r","reason":"x","at":1e999}\n')
@example(b'{"open":{},"worker":true}\n')
@example(b"[" * 5000 + b"\n")
def test_any_bytes_parse_or_raise_the_record_error(raw):
    try:
        parse_room_line_untrusted(raw)
    except RoomRecordError:
        pass


@given(st.data())
def test_a_valid_line_with_one_byte_changed_parses_or_raises_the_record_error(data):
    index = data.draw(st.integers(0, len(VALID) - 1))
    raw = VALID[:index] + bytes([data.draw(st.integers(0, 255))]) + VALID[index + 1:]
    try:
        line = parse_room_line_untrusted(raw)
    except RoomRecordError:
        return
    assert isinstance(line, (Opened, Closed))


@given(st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.sampled_from(["open", "worker", "closed", "reason", "at", "room_id"]), children, max_size=4),
    max_leaves=12,
))
def test_any_json_value_parses_or_raises_the_record_error(value):
    try:
        raw = json.dumps(value).encode() + b"\n"
    except ValueError:
        return
    try:
        parse_room_line_untrusted(raw)
    except RoomRecordError:
        pass


def test_a_second_server_on_the_same_data_dir_runs_without_a_journal(tmp_path, caplog):
    first = RoomJournal.open_in_dir(tmp_path, **LIMITS)
    assert first is not None
    first.note_room(_room().record(), 0)
    assert RoomJournal.open_in_dir(tmp_path, **LIMITS) is None
    assert "another botcall serve holds the rooms journal" in caplog.text
    first.close()
    again = RoomJournal.open_in_dir(tmp_path, **LIMITS)  # released with the first one
    assert again is not None and len(again.load(T0).rooms) == 1


def test_a_journal_that_cannot_be_read_is_logged_and_left_alone(tmp_path, caplog, monkeypatch):
    registry, journal = journalled_registry(tmp_path)
    registry.create_room(owner="gopi", created_by="a", now=T0)
    journal.close()
    before = journal.path.read_bytes()

    def unreadable(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    again = RoomJournal.in_dir(tmp_path, **LIMITS)
    monkeypatch.setattr("builtins.open", unreadable)  # root reads any mode: fail the read itself
    assert again.load(T0).rooms == []
    monkeypatch.undo()
    assert "cannot read the rooms journal" in caplog.text
    assert journal.path.read_bytes() == before  # not overwritten by an empty compaction
