"""A room's record (what a clustered node keeps in Redis) and its restoration."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from botcall.auth.invites import invite_digest, invite_matches_digest
from botcall.config import Config
from botcall.errors import Forbidden, RoomRecordError
from botcall.signaling.rooms import (
    ROOM_RECORD_FIELDS,
    Interruption,
    RoomCreated,
    RoomRegistry,
    RoomState,
    room_from_record_untrusted,
)

NOW = 1_800_000_000.0


def test_a_record_round_trips_without_the_invite_secret():
    room = RoomRegistry(Config()).create_room(
        owner="gopi", created_by="orion#8f3a", now=NOW, expires_in=600, max_human_participants=3,
        interruption=Interruption("off", 300),
    )
    record = room.record()
    assert set(record) == ROOM_RECORD_FIELDS
    assert room.invite_secret not in "".join(record.values())
    restored = room_from_record_untrusted(record)
    assert restored == replace(room, invite_secret="")
    assert invite_matches_digest(restored.invite_digest, room.invite_secret)
    other = room.invite_secret[:-1] + ("y" if room.invite_secret.endswith("x") else "x")
    assert not invite_matches_digest(restored.invite_digest, other)


def test_a_restored_room_takes_its_invite_and_bots_and_an_expired_one_is_refused():
    room = RoomRegistry(Config()).create_room(owner="gopi", created_by="a", now=NOW, expires_in=60)
    registry = RoomRegistry(Config())
    events = []
    registry.add_listener(events.append)
    restored = room_from_record_untrusted(room.record())
    assert not registry.restore_room(restored, now=NOW + 60)  # expired meanwhile
    assert registry.restore_room(restored, now=NOW + 10)
    assert not registry.restore_room(restored, now=NOW + 11)  # already held
    assert events == [RoomCreated(replace(restored, state=RoomState.OPEN))]
    assert registry.live_rooms_of("gopi") == 1
    human = registry.join_human(room.room_id, room.invite_secret, "Ada", now=NOW + 12)
    assert human.expires_at == room.expires_at
    with pytest.raises(Forbidden):
        registry.join_human(room.room_id, "x" * 24, "Eve", now=NOW + 12)


@pytest.mark.parametrize("change", [
    {"invite_digest": "00"}, {"invite_digest": "G" * 64}, {"owner": ""}, {"expires_at": "nan"}, {"expires_at": "soon"},
    {"max_humans": "-1"}, {"interruption": "loud"}, {"interruption_ms": "5"}, {"room_id": 7},
])
def test_a_broken_record_is_refused(change):
    record = {**RoomRegistry(Config()).create_room(owner="o", created_by="a", now=NOW).record(), **change}
    with pytest.raises(RoomRecordError):
        room_from_record_untrusted(record)


@given(st.one_of(st.none(), st.integers(), st.dictionaries(st.sampled_from(sorted(ROOM_RECORD_FIELDS)), st.text(max_size=70))))
def test_a_record_parses_or_raises_its_own_error(record):
    try:
        room_from_record_untrusted(record)
    except RoomRecordError:
        pass


def test_the_digest_is_sha256_hex():
    assert invite_digest("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert not invite_matches_digest("", "abc") and not invite_matches_digest(invite_digest("abc"), None)
