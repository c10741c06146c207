"""The sans-IO room registry: limits, expiry, empty timeout, events, identities."""

from __future__ import annotations

from dataclasses import replace

import pytest

from botcall.config import Config
from botcall.errors import ApiError, BadRequest, Conflict, Forbidden, Gone, NotFound, RateLimited
from botcall.signaling.rooms import (
    Capabilities,
    Identity,
    MediaSpec,
    Reason,
    RoomClosed,
    RoomCreated,
    RoomRegistry,
    RoomState,
    SessionAdded,
    SessionRemoved,
    SessionUpdated,
)

T = 1_800_000_000.0
BOT = Identity.bot(agent_id="orion#8f3a", controller="gopi", issuer="botcall-dev", scopes=("call:voice", "call:create"))


def registry(**overrides) -> tuple[RoomRegistry, list]:
    config = replace(Config(data_dir="/nonexistent"), **overrides)
    reg = RoomRegistry(config)
    events: list = []
    reg.add_listener(events.append)
    return reg, events


def join_bot(reg, room_id, *, identity=BOT, now=T, not_after=T + 3600, media=MediaSpec()):
    return reg.join_bot(room_id, identity=identity, media=media, capabilities=Capabilities(), not_after=not_after, now=now)


def test_create_room_defaults_and_events():
    reg, events = registry()
    room = reg.create_room(owner="gopi", created_by="orion#8f3a", now=T)
    assert room.expires_at == T + 3600 and room.max_human_participants == 1 and room.max_bot_participants == 4
    assert room.state is RoomState.OPEN and room.owner == "gopi"
    assert len(room.invite_secret) >= 22 and room.invite_secret not in repr(room)
    assert events == [RoomCreated(room)]
    assert reg.get_room(room.room_id, T) == room
    assert reg.live_rooms == 1


@pytest.mark.parametrize("kwargs", [{"expires_in": 0}, {"expires_in": 86_401}, {"max_human_participants": -1}, {"max_human_participants": 17}])
def test_create_room_range_checks(kwargs):
    reg, _ = registry()
    with pytest.raises(BadRequest) as info:
        reg.create_room(owner="gopi", created_by="a", now=T, **kwargs)
    assert info.value.code == "invalid_field"


def test_live_room_cap_per_controller_and_in_total():
    reg, _ = registry(max_live_rooms_per_controller=2, max_rooms_total=3)
    first = reg.create_room(owner="gopi", created_by="a", now=T, expires_in=100)
    reg.create_room(owner="gopi", created_by="a", now=T, expires_in=500)
    with pytest.raises(RateLimited) as info:
        reg.create_room(owner="gopi", created_by="a", now=T + 10)
    assert info.value.code == "controller_room_limit" and info.value.headers["Retry-After"] == "90"
    reg.create_room(owner="alice", created_by="b", now=T)
    with pytest.raises(ApiError) as info:
        reg.create_room(owner="bob", created_by="c", now=T)
    assert (info.value.status, info.value.code) == (503, "server_full")
    reg.close_room(first.room_id, Reason.DELETED, now=T + 20)
    reg.create_room(owner="gopi", created_by="a", now=T + 20)


def test_bot_join_fields_and_uniqueness():
    reg, events = registry(room_max_bots=4)
    room = reg.create_room(owner="gopi", created_by="a", now=T)
    sessions = [join_bot(reg, room.room_id) for _ in range(4)]
    assert len({s.session_id for s in sessions}) == 4
    assert len({s.ssrc for s in sessions}) == 4
    assert len({s.participant_id for s in sessions}) == 4
    assert len({s.ice_ufrag for s in sessions}) == 4
    for s in sessions:
        assert s.session_id.startswith("sess-") and len(s.session_id) >= 32
        assert len(s.ice_ufrag) >= 4 and len(s.ice_pwd) >= 22 and s.ice_ufrag.isalnum() and s.ice_pwd.isalnum()
        assert 0 <= s.ssrc < 2**32 and s.kind == "bot" and s.identity == BOT
        assert s.session_id not in repr(s) and s.ice_pwd not in repr(s)
        assert reg.session_by_id(s.session_id) == s and reg.session_by_ufrag(s.ice_ufrag) == s
    assert [type(e) for e in events] == [RoomCreated] + [SessionAdded] * 4
    with pytest.raises(Conflict) as info:
        join_bot(reg, room.room_id)
    assert info.value.code == "room_full"


def test_bot_session_never_outlives_the_attestation_nor_the_room():
    reg, _ = registry()
    room = reg.create_room(owner="gopi", created_by="a", now=T, expires_in=600)
    assert join_bot(reg, room.room_id, not_after=T + 100).expires_at == T + 100
    assert join_bot(reg, room.room_id, not_after=T + 5000).expires_at == T + 600


def test_join_checks_controller_room_existence_and_expiry():
    reg, _ = registry()
    room = reg.create_room(owner="gopi", created_by="a", now=T, expires_in=60)
    stranger = replace(BOT, controller="mallory")
    with pytest.raises(Forbidden) as info:
        join_bot(reg, room.room_id, identity=stranger)
    assert info.value.code == "controller_mismatch"
    with pytest.raises(NotFound) as info:
        join_bot(reg, "no-such-room")
    assert info.value.code == "room_not_found"
    with pytest.raises(Gone) as info:
        join_bot(reg, room.room_id, now=T + 60)
    assert info.value.code == "room_expired"


def test_human_join_needs_the_invite_secret_and_respects_max_humans():
    reg, events = registry()
    room = reg.create_room(owner="gopi", created_by="a", now=T, max_human_participants=1)
    with pytest.raises(Forbidden) as info:
        reg.join_human(room.room_id, "wrong-secret-wrong-secret", "Gopi", now=T)
    assert info.value.code == "invite_invalid"
    with pytest.raises(Forbidden):
        reg.join_human(room.room_id, None, "Gopi", now=T)
    for bad_name in ["", "   ", "x" * 65, "a\nb", 42]:
        with pytest.raises(BadRequest) as info:
            reg.join_human(room.room_id, room.invite_secret, bad_name, now=T)
        assert info.value.code == "invalid_display_name"
    human = reg.join_human(room.room_id, room.invite_secret, "  Gopi  ", now=T)
    assert human.kind == "human" and human.identity == Identity.human("Gopi")
    assert human.transport == "webrtc" and human.expires_at == room.expires_at
    assert human.public_json()["display_name"] == "Gopi" and "agent_id" not in human.public_json()
    with pytest.raises(Conflict) as info:
        reg.join_human(room.room_id, room.invite_secret, "Second", now=T)
    assert info.value.code == "room_full"
    # Bots have their own limit: a full human side does not block a bot.
    join_bot(reg, room.room_id)
    assert isinstance(events[-1], SessionAdded)


def test_bot_only_room_refuses_every_human():
    reg, _ = registry()
    room = reg.create_room(owner="gopi", created_by="a", now=T, max_human_participants=0)
    with pytest.raises(Conflict):
        reg.join_human(room.room_id, room.invite_secret, "Gopi", now=T)


def test_session_cap_in_total():
    reg, _ = registry(max_sessions_total=2)
    room = reg.create_room(owner="gopi", created_by="a", now=T)
    join_bot(reg, room.room_id)
    join_bot(reg, room.room_id)
    with pytest.raises(ApiError) as info:
        join_bot(reg, room.room_id)
    assert (info.value.status, info.value.code) == (503, "server_full")


def test_leave_and_mute():
    reg, events = registry()
    room = reg.create_room(owner="gopi", created_by="a", now=T)
    session = join_bot(reg, room.room_id)
    muted = reg.set_muted(session.session_id, True)
    assert muted.muted and reg.session_by_id(session.session_id).muted
    assert events[-1] == SessionUpdated(muted)
    # Muting again changes nothing and tells nobody (a toggle flood fans out nothing).
    count = len(events)
    assert reg.set_muted(session.session_id, True) == muted
    assert len(events) == count
    assert reg.leave(session.session_id, Reason.LEFT, now=T + 1) == muted
    assert events[-1] == SessionRemoved(muted, Reason.LEFT)
    assert reg.leave(session.session_id, Reason.LEFT, now=T + 1) is None
    assert reg.session_by_ufrag(session.ice_ufrag) is None
    with pytest.raises(NotFound):
        reg.set_muted(session.session_id, False)


def test_close_room_removes_everyone_then_answers_gone():
    reg, events = registry()
    room = reg.create_room(owner="gopi", created_by="a", now=T)
    bots = [join_bot(reg, room.room_id) for _ in range(2)]
    human = reg.join_human(room.room_id, room.invite_secret, "Gopi", now=T)
    del events[:]
    closed = reg.close_room(room.room_id, Reason.DELETED, now=T + 5)
    assert closed.state is RoomState.CLOSED
    # Room first, so listeners say why before the sessions end.
    assert events == [RoomClosed(closed, Reason.DELETED)] + [SessionRemoved(s, Reason.DELETED) for s in (*bots, human)]
    assert reg.live_sessions == 0 and reg.live_rooms == 0 and reg.live_rooms_of("gopi") == 0
    with pytest.raises(Gone) as info:
        reg.get_room(room.room_id, T + 6)
    assert info.value.code == "room_closed"
    assert reg.close_room(room.room_id, Reason.DELETED, now=T + 7) is None


def test_expire_rooms_sessions_and_empty_rooms():
    reg, events = registry(room_empty_timeout_s=300)
    long_room = reg.create_room(owner="gopi", created_by="a", now=T, expires_in=7200)
    short_room = reg.create_room(owner="gopi", created_by="a", now=T, expires_in=1000)
    bot = join_bot(reg, long_room.room_id, not_after=T + 100)
    join_bot(reg, short_room.room_id)
    del events[:]

    assert reg.expire(T + 99) == []
    # The bot's attestation runs out: its session goes, the room starts its empty timer.
    assert reg.expire(T + 100) == [SessionRemoved(bot, Reason.EXPIRED)]
    assert reg.expire(T + 399) == []
    emptied = reg.expire(T + 400)
    assert [type(e) for e in emptied] == [RoomClosed] and emptied[0].reason == Reason.EMPTY
    with pytest.raises(Gone) as info:
        reg.get_room(long_room.room_id, T + 401)
    assert info.value.code == "room_closed"

    expired = reg.expire(T + 1000)
    assert [type(e) for e in expired] == [RoomClosed, SessionRemoved]
    assert expired[0].reason == Reason.EXPIRED and expired[0].room.room_id == short_room.room_id
    with pytest.raises(Gone) as info:
        reg.get_room(short_room.room_id, T + 1001)
    assert info.value.code == "room_expired"
    assert events == [SessionRemoved(bot, Reason.EXPIRED), *emptied, *expired]


def test_a_room_nobody_joins_closes_after_the_empty_timeout():
    reg, _ = registry(room_empty_timeout_s=120)
    reg.create_room(owner="gopi", created_by="a", now=T)
    assert reg.expire(T + 119) == []
    assert [e.reason for e in reg.expire(T + 120)] == [Reason.EMPTY]
    assert reg.live_rooms == 0


def test_closed_rooms_are_remembered_boundedly():
    reg, _ = registry(closed_rooms_remembered=2, closed_rooms_remembered_s=600)
    rooms = [reg.create_room(owner=f"o{i}", created_by="a", now=T) for i in range(3)]
    for room in rooms:
        reg.close_room(room.room_id, Reason.DELETED, now=T)
    with pytest.raises(NotFound):  # the oldest tombstone was dropped
        reg.get_room(rooms[0].room_id, T)
    with pytest.raises(Gone):
        reg.get_room(rooms[2].room_id, T)
    reg.expire(T + 600)
    with pytest.raises(NotFound):  # and all are forgotten after the memory period
        reg.get_room(rooms[2].room_id, T + 600)


@pytest.mark.parametrize(
    "spec",
    [
        dict(transport="carrier-pigeon"),
        dict(transport="udp", encoding="pcm16", sample_rate=48000),
        dict(transport="websocket", encoding="pcm16", sample_rate=44100),
        dict(transport="websocket", encoding="opus", sample_rate=16000),
        dict(transport="websocket", encoding="mp3"),
        dict(transport="websocket", encoding="pcm16", send_sample_rate=12000),
        dict(transport="websocket", encoding="opus", receive_sample_rate=24000),
        dict(transport="udp", receive="both"),
        dict(transport="webrtc", receive="mixed"),
    ],
)
def test_media_spec_validation(spec):
    with pytest.raises(BadRequest) as info:
        MediaSpec(**spec)
    assert info.value.code == "invalid_media"


def test_media_spec_accepts_the_websocket_pcm_rates():
    for rate in (8000, 16000, 24000, 48000):
        assert MediaSpec("websocket", "pcm16", rate).sample_rate == rate
    apart = MediaSpec("websocket", "pcm16", 24000, receive_sample_rate=16000)
    assert (apart.send_rate, apart.receive_rate, apart.mixed) == (24000, 16000, False)
    assert MediaSpec("udp", receive="mixed").mixed
    assert MediaSpec("websocket").encoding == "opus"


def test_restart_ice_gives_new_credentials_and_moves_the_ufrag_index():
    reg, events = registry()
    room = reg.create_room(owner="gopi", created_by="a", now=T)
    human = reg.join_human(room.room_id, room.invite_secret, "Ann", now=T)
    events.clear()
    restarted = reg.restart_ice(human.session_id)
    assert restarted.ice_ufrag != human.ice_ufrag and restarted.ice_pwd != human.ice_pwd
    assert reg.session_by_ufrag(restarted.ice_ufrag) == restarted
    assert reg.session_by_ufrag(human.ice_ufrag) is None
    assert reg.session_by_id(human.session_id) == restarted
    assert restarted in reg.sessions_in_room(room.room_id)
    assert events == []  # nobody else is told: the credentials only go into the answer
    with pytest.raises(NotFound):
        reg.restart_ice("sess-nobody")
