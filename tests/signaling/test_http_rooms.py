"""Rooms and joins through the real HTTP server (Hypercorn + quart-trio on 127.0.0.1).

Time is the fake clock in ``AppState``; ``srv.housekeep()`` runs the server's
housekeeping pass deterministically.
"""

from __future__ import annotations

import re

import pytest

from botcall.config import RateLimit
from botcall.errors import Conflict
from botcall.signaling.messages import rfc3339
from botcall.signaling.rooms import SessionRemoved
from tests.kit.server import T0, LiveServer, running_server

RFC3339 = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")


@pytest.fixture
async def srv(tmp_path):
    async with running_server(tmp_path) as server:
        yield server


async def create(srv: LiveServer, status: int = 201, **body) -> dict:
    response = await srv.create_room(srv.token(agent="creator#0001"), **body)
    assert response.status == status, response.body
    return response.json()


# --- creating ------------------------------------------------------------------------------


async def test_create_room_response(srv):
    room = await create(srv, max_human_participants=2, expires_in=600)
    assert room["expires_in"] == 600 and room["max_human_participants"] == 2
    assert room["expires_at"] == rfc3339(T0 + 600)
    assert room["invite_url"].startswith(f"{srv.url}/join/{room['room_id']}#invite=")
    secret = room["invite_url"].split("#invite=")[1]
    assert secret == srv.state.registry.get_room(room["room_id"], T0).invite_secret
    assert srv.state.registry.get_room(room["room_id"], T0).owner == "gopi"


@pytest.mark.parametrize("path", ["/v1/rooms/create", "/v1/rooms"])
@pytest.mark.parametrize("body", [None, b"", b"  \n", b"{}"])
async def test_create_room_body_is_optional(srv, path, body):
    response = await srv.post(path, bearer=srv.token(), body=body)
    assert response.status == 201
    assert (response.json()["expires_in"], response.json()["max_human_participants"]) == (3600, 1)


async def test_create_room_out_of_range(srv):
    for body in [{"expires_in": 0}, {"expires_in": 10**9}, {"max_human_participants": 1000}]:
        response = await srv.create_room(srv.token(), **body)
        assert (response.status, response.error_code) == (400, "invalid_field")


async def test_public_url_shapes_invite_and_websocket_urls(tmp_path):
    async with running_server(tmp_path, public_url="https://call.example/") as srv:
        room = await create(srv)
        assert room["invite_url"].startswith(f"https://call.example/join/{room['room_id']}#invite=")
        joined = (await srv.join(srv.token(), room["room_id"])).json()
        assert joined["websocket_url"] == f"wss://call.example/v1/stream/{joined['session_id']}"


# --- joining ------------------------------------------------------------------------------


async def test_udp_join_response(tmp_path):
    async with running_server(tmp_path, media_port=41234, media_advertised_host="127.0.0.2") as srv:
        room = await create(srv, expires_in=7200)
        token = srv.token(ttl=1800)
        response = await srv.join(token, room["room_id"], media={"transport": "udp"})
        assert response.status == 200 and response.headers["content-type"] == "application/json"
        body = response.json()
        session = srv.state.registry.session_by_id(body["session_id"])
        assert body["session_id"].startswith("sess-")
        assert body["websocket_url"] == f"ws://127.0.0.1:{srv.info.http_port}/v1/stream/{body['session_id']}"
        assert body["ice_servers"] == []
        # The session ends with the attestation (1800 s), before the room (7200 s).
        assert body["expires_at"] == rfc3339(T0 + 1800) and RFC3339.fullmatch(body["expires_at"])
        assert body["media"] == {
            "transport": "udp",
            "host": "127.0.0.2",
            "port": 41234,
            "ssrc": session.ssrc,
            "payload_type": 111,
            "clock_rate": 48000,
            "ice_ufrag": session.ice_ufrag,
            "ice_pwd": session.ice_pwd,
            "receive": "separate",
        }
        assert len(body["media"]["ice_ufrag"]) >= 4 and len(body["media"]["ice_pwd"]) >= 22
        assert body["participant_id"] == session.participant_id and body["room_id"] == room["room_id"]


async def test_udp_is_the_default_transport(srv):
    room = await create(srv)
    body = (await srv.join(srv.token(), room["room_id"])).json()
    assert body["media"]["transport"] == "udp" and "ice_pwd" in body["media"]


@pytest.mark.parametrize(
    "media, encoding, rate",
    [
        ({"transport": "websocket"}, "opus", 48000),
        ({"transport": "websocket", "encoding": "opus"}, "opus", 48000),
        ({"transport": "websocket", "encoding": "pcm16", "sample_rate": 16000}, "pcm16", 16000),
        ({"transport": "websocket", "encoding": "pcm16", "sample_rate": 24000}, "pcm16", 24000),
        ({"transport": "websocket", "encoding": "pcm16"}, "pcm16", 48000),
    ],
)
async def test_websocket_join_response(srv, media, encoding, rate):
    room = await create(srv)
    body = (await srv.join(srv.token(), room["room_id"], media=media)).json()
    session = srv.state.registry.session_by_id(body["session_id"])
    assert body["media"] == {
        "transport": "websocket",
        "encoding": encoding,
        "sample_rate": rate,
        "send_sample_rate": rate,
        "receive_sample_rate": rate,
        "ssrc": session.ssrc,
        "payload_type": 111,
        "clock_rate": 48000,
        "receive": "separate",
        "delivery": "arrival",
    }
    assert (session.transport, session.encoding, session.sample_rate) == ("websocket", encoding, rate)
    assert session.mix_ssrc is None


async def test_paced_delivery_is_echoed_and_unknown_delivery_refused(srv):
    room = await create(srv)
    paced = {"transport": "websocket", "encoding": "pcm16", "sample_rate": 16000, "delivery": "paced"}
    body = (await srv.join(srv.token(), room["room_id"], media=paced)).json()
    assert body["media"]["delivery"] == "paced"
    assert srv.state.registry.session_by_id(body["session_id"]).delivery == "paced"
    refused = await srv.join(srv.token(), room["room_id"], media={**paced, "delivery": "soon"})
    assert (refused.status, refused.error_code) == (400, "invalid_media")


async def test_pcm16_rates_apart_are_echoed(srv):
    room = await create(srv)
    media = {"transport": "websocket", "encoding": "pcm16", "send_sample_rate": 8000, "receive_sample_rate": 16000}
    body = (await srv.join(srv.token(), room["room_id"], media=media)).json()
    assert (body["media"]["sample_rate"], body["media"]["send_sample_rate"], body["media"]["receive_sample_rate"]) == (
        48000, 8000, 16000,
    )
    session = srv.state.registry.session_by_id(body["session_id"])
    assert (session.send_sample_rate, session.receive_sample_rate) == (8000, 16000)


@pytest.mark.parametrize(
    "media",
    [
        {"transport": "udp", "receive": "mixed"},
        {"transport": "websocket", "receive": "mixed"},
        {"transport": "websocket", "encoding": "pcm16", "sample_rate": 24000, "receive_sample_rate": 16000, "receive": "mixed"},
    ],
)
async def test_mixed_join_gets_a_mix_ssrc_unique_in_the_room(srv, media):
    room = await create(srv)
    other = (await srv.join(srv.token(), room["room_id"], media={"transport": "udp"})).json()
    body = (await srv.join(srv.token(), room["room_id"], media=media)).json()
    assert body["media"]["receive"] == "mixed"
    mix_ssrc = body["media"]["mix_ssrc"]
    session = srv.state.registry.session_by_id(body["session_id"])
    assert session.mix_ssrc == mix_ssrc and session.receive == "mixed"
    assert mix_ssrc not in (session.ssrc, other["media"]["ssrc"])


@pytest.mark.parametrize(
    "media",
    [
        {"transport": "webrtc"},
        {"transport": "tcp"},
        {"transport": "udp", "encoding": "pcm16", "sample_rate": 16000},
        {"transport": "websocket", "encoding": "pcm16", "sample_rate": 11025},
        {"transport": "websocket", "encoding": "opus", "sample_rate": 16000},
        {"transport": "websocket", "encoding": "opus", "receive_sample_rate": 16000},
        {"transport": "udp", "send_sample_rate": 16000},
        {"transport": "websocket", "encoding": "pcm16", "send_sample_rate": 44100},
        {"transport": "websocket", "encoding": "pcm16", "receive_sample_rate": 32000},
        {"transport": "websocket", "encoding": "pcm16", "receive_sample_rate": "16000"},
        {"transport": "websocket", "encoding": "pcm16", "send_sample_rate": 16000.0},
        {"transport": "websocket", "encoding": "pcm16", "sample_rate": True},
        {"transport": "udp", "receive": "mix"},
        {"transport": "udp", "receive": "MIXED"},
        {"transport": "websocket", "receive": ["mixed"]},
        {"transport": "websocket", "receive": None, "sample_rate": 0},
        {"transport": "websocket", "encoding": "flac"},
        {"transport": ["udp"]},
    ],
)
async def test_bad_media_requests(srv, media):
    room = await create(srv)
    response = await srv.join(srv.token(), room["room_id"], media=media)
    assert (response.status, response.error_code) == (400, "invalid_media")


async def test_seed_body_with_informational_scope_and_expiry_is_accepted(srv):
    # The seed's example body: scope/expiry are informational; the token's claims rule.
    room = await create(srv)
    response = await srv.join(
        srv.token(scope="call:voice"),
        room["room_id"],
        extra={"attestation": {"token": srv.token(scope="call:voice"), "scope": ["call:voice", "call:receive"], "expiry": 1708000000}},
    )
    assert response.status == 200


# --- room lifecycle ---------------------------------------------------------------------------


async def test_room_expiry(srv):
    room = await create(srv, expires_in=60)
    joined = await srv.join(srv.token(), room["room_id"])
    assert joined.status == 200
    srv.clock.advance(60)
    late = await srv.join(srv.token(), room["room_id"])
    assert (late.status, late.error_code) == (410, "room_expired")
    srv.housekeep()
    assert srv.state.registry.session_by_id(joined.json()["session_id"]) is None
    after = await srv.join(srv.token(), room["room_id"])
    assert (after.status, after.error_code) == (410, "room_expired")
    query = await srv.get(f"/v1/rooms/{room['room_id']}", bearer=srv.token())
    assert (query.status, query.error_code) == (410, "room_expired")


async def test_empty_room_timeout(tmp_path):
    async with running_server(tmp_path, room_empty_timeout_s=120) as srv:
        empty = await create(srv)
        occupied = await create(srv)
        assert (await srv.join(srv.token(), occupied["room_id"])).status == 200
        srv.clock.advance(120)
        srv.housekeep()
        closed = await srv.join(srv.token(), empty["room_id"])
        assert (closed.status, closed.error_code) == (410, "room_closed")
        assert (await srv.join(srv.token(), occupied["room_id"])).status == 200


async def test_full_room_for_bots(tmp_path):
    async with running_server(tmp_path, room_max_bots=2) as srv:
        room = await create(srv)
        for _ in range(2):
            assert (await srv.join(srv.token(), room["room_id"])).status == 200
        full = await srv.join(srv.token(), room["room_id"])
        assert (full.status, full.error_code) == (409, "room_full")


async def test_full_room_for_humans_and_the_owner_sees_everyone(srv):
    room = await create(srv, max_human_participants=1)
    registry = srv.state.registry
    secret = room["invite_url"].split("#invite=")[1]
    human = registry.join_human(room["room_id"], secret, "Gopi", now=srv.clock())
    with pytest.raises(Conflict) as info:
        registry.join_human(room["room_id"], secret, "Eve", now=srv.clock())
    assert (info.value.status, info.value.code) == (409, "room_full")
    assert (await srv.join(srv.token(), room["room_id"])).status == 200

    # Any bot of the owner may look; the response carries each bot's verified identity.
    view = await srv.get(f"/v1/rooms/{room['room_id']}", bearer=srv.token(agent="vega#0002"))
    assert view.status == 200
    body = view.json()
    assert body["state"] == "open" and body["owner"] == "gopi" and body["max_human_participants"] == 1
    by_kind = {p["kind"]: p for p in body["participants"]}
    assert by_kind["human"] == {
        "participant_id": human.participant_id,
        "kind": "human",
        "display_name": "Gopi",
        "transport": "webrtc",
        "muted": False,
        "capabilities": {"audio_in": True, "audio_out": True, "video": False, "text_chat": False},
    }
    assert by_kind["bot"]["agent_id"] == "orion#8f3a" and by_kind["bot"]["issuer"] == "botcall-dev"
    assert by_kind["bot"]["scopes"] == ["call:create", "call:receive", "call:voice"]
    assert by_kind["bot"]["capabilities"]["text_chat"] is True
    assert "session_id" not in str(body) and "ice_pwd" not in str(body)

    stranger = await srv.get(f"/v1/rooms/{room['room_id']}", bearer=srv.token(controller="mallory"))
    assert (stranger.status, stranger.error_code) == (403, "controller_mismatch")


async def test_deleted_room_ends_the_call_for_everyone(srv):
    room = await create(srv)
    removed = []
    srv.state.registry.add_listener(lambda e: removed.append(e) if isinstance(e, SessionRemoved) else None)
    for _ in range(2):
        assert (await srv.join(srv.token(), room["room_id"])).status == 200

    denied = await srv.delete(f"/v1/rooms/{room['room_id']}", bearer=srv.token(controller="mallory"))
    assert (denied.status, denied.error_code) == (403, "controller_mismatch")
    deleted = await srv.delete(f"/v1/rooms/{room['room_id']}", bearer=srv.token())
    assert deleted.status == 200 and deleted.json()["state"] == "closed"
    assert [e.reason for e in removed] == ["deleted", "deleted"]
    assert srv.state.registry.live_sessions == 0

    for response in [
        await srv.join(srv.token(), room["room_id"]),
        await srv.get(f"/v1/rooms/{room['room_id']}", bearer=srv.token()),
        await srv.delete(f"/v1/rooms/{room['room_id']}", bearer=srv.token()),
    ]:
        assert (response.status, response.error_code) == (410, "room_closed")


async def test_unknown_room(srv):
    for response in [
        await srv.join(srv.token(), "zzzz-zzzz-zzzz"),
        await srv.get("/v1/rooms/zzzz-zzzz-zzzz", bearer=srv.token()),
        await srv.delete("/v1/rooms/zzzz-zzzz-zzzz", bearer=srv.token()),
    ]:
        assert (response.status, response.error_code) == (404, "room_not_found")


# --- bodies ---------------------------------------------------------------------------------


@pytest.mark.parametrize("chunked", [False, True])
@pytest.mark.parametrize("path", ["/v1/join", "/v1/rooms/create"])
async def test_oversized_bodies(tmp_path, chunked, path):
    async with running_server(tmp_path, max_body_bytes=1024) as srv:
        body = b'{"agent_id": "' + b"a" * 2000 + b'"}'
        response = await srv.post(path, bearer=srv.token(), body=body, chunked=chunked)
        assert (response.status, response.error_code) == (413, "body_too_large")
        fits = await srv.post("/v1/rooms/create", bearer=srv.token(), body=b"{}", chunked=chunked)
        assert fits.status == 201


def _join_body(srv, room_id, **changes):
    body = {"agent_id": "orion#8f3a", "room_id": room_id, "attestation": {"token": srv.token()}}
    body.update(changes)
    return body


@pytest.mark.parametrize(
    "raw, code",
    [
        (b"", "malformed_json"),
        (b"not json", "malformed_json"),
        (b"[]", "malformed_json"),
        (b'"string"', "malformed_json"),
        (b"\xff\xfe{}", "malformed_json"),
        (b'{"agent_id": NaN}', "malformed_json"),
        (b'{"agent_id": "a", "agent_id": "b"}', "malformed_json"),
        (b"[" * 5000 + b"]" * 5000, "malformed_json"),
        (b'{"room_id": "r", "attestation": {"token": "t"}}', "missing_field"),
        (b'{"agent_id": "a", "attestation": {"token": "t"}}', "missing_field"),
        (b'{"agent_id": "a", "room_id": "r"}', "missing_field"),
        (b'{"agent_id": "a", "room_id": "r", "attestation": {}}', "missing_field"),
        (b'{"agent_id": 5, "room_id": "r", "attestation": {"token": "t"}}', "invalid_field"),
        (b'{"agent_id": "", "room_id": "r", "attestation": {"token": "t"}}', "invalid_field"),
        (b'{"agent_id": "a", "room_id": "r", "attestation": "t"}', "invalid_field"),
        (b'{"agent_id": "a", "room_id": "r", "attestation": {"token": 5}}', "invalid_field"),
        (b'{"agent_id": "a", "room_id": "r", "attestation": {"token": "t", "scope": 5}}', "invalid_field"),
        (b'{"agent_id": "a", "room_id": "r", "attestation": {"token": "t", "expiry": "x"}}', "invalid_field"),
        (b'{"agent_id": "a", "room_id": "r", "attestation": {"token": "t"}, "capabilities": {"video": "yes"}}', "invalid_field"),
        (b'{"agent_id": "a", "room_id": "r", "attestation": {"token": "t"}, "capabilities": []}', "invalid_field"),
        (b'{"agent_id": "a", "room_id": "r", "attestation": {"token": "t"}, "media": "udp"}', "invalid_field"),
        # Unknown members are ignored, but the known ones beside them are still checked.
        (b'{"agent_id": "a", "room_id": "r", "attestation": {"token": "t"}, "admin": true, "capabilities": {"video": 1}}', "invalid_field"),
        (b'{"agent_id": "a", "room_id": "r", "attestation": {"token": "t"}, "media": {"codec": "x", "transport": "tcp"}}', "invalid_media"),
    ],
)
async def test_malformed_join_bodies(srv, raw, code):
    response = await srv.post("/v1/join", body=raw)
    assert (response.status, response.error_code) == (400, code)


@pytest.mark.parametrize(
    "raw, code",
    [
        (b"nope", "malformed_json"),
        (b"[1]", "malformed_json"),
        (b'{"expires_in": "60"}', "invalid_field"),
        (b'{"expires_in": 60.5}', "invalid_field"),
        (b'{"max_human_participants": true}', "invalid_field"),
        (b'{"max_bot_participants": 3, "expires_in": "60"}', "invalid_field"),
    ],
)
async def test_malformed_create_bodies(srv, raw, code):
    response = await srv.post("/v1/rooms/create", bearer=srv.token(), body=raw)
    assert (response.status, response.error_code) == (400, code)


# --- forward compatibility ------------------------------------------------------------------


async def test_unknown_members_from_a_newer_client_are_ignored_and_reported(srv, caplog):
    created = await srv.post(
        "/v1/rooms/create", bearer=srv.token(), json_body={"expires_in": 600, "max_bot_participants": 3,
                                                          "interruption": {"mode": "off", "style": "polite"}}
    )
    assert created.status == 201, created.body
    body = created.json()
    assert body["expires_in"] == 600 and body["interruption"]["mode"] == "off"
    assert [(w["code"], w["field"]) for w in body["warnings"]] == [
        ("unknown_field", "max_bot_participants"), ("unknown_field", "interruption.style"),
    ]
    assert all(isinstance(w["message"], str) and w["message"] for w in body["warnings"])

    with caplog.at_level("INFO", logger="botcall.http"):
        joined = await srv.join(
            srv.token(), body["room_id"],
            media={"transport": "websocket", "encoding": "pcm16", "sample_rate": 16000, "codec_options": {"dtx": True}},
            extra={"admin": True, "attestation": {"token": srv.token(), "kid": "k"}, "capabilities": {"smell": True}},
        )
    assert joined.status == 200, joined.body
    answer = joined.json()
    assert answer["media"]["sample_rate"] == 16000, "the known members beside the unknown ones still apply"
    assert sorted(w["field"] for w in answer["warnings"]) == [
        "admin", "attestation.kid", "capabilities.smell", "media.codec_options",
    ]
    assert any("ignored unknown member(s)" in r.getMessage() and "media.codec_options" in r.getMessage() for r in caplog.records)


async def test_a_request_without_unknown_members_gets_no_warnings(srv):
    body = await create(srv)
    assert "warnings" not in body
    joined = await srv.join(srv.token(), body["room_id"])
    assert "warnings" not in joined.json()


async def test_the_ignored_members_reported_are_bounded(srv):
    response = await srv.post(
        "/v1/rooms/create", bearer=srv.token(), json_body={f"x{i:03d}" + "y" * 100: i for i in range(100)}
    )
    assert response.status == 201
    warnings = response.json()["warnings"]
    assert len(warnings) == 16 and all(len(w["field"]) == 64 for w in warnings)


# --- abuse limits ---------------------------------------------------------------------------


async def test_join_rate_limit_per_ip(tmp_path):
    async with running_server(tmp_path, join_limit_per_ip=RateLimit(rate=0.5, burst=2)) as srv:
        room = await create(srv)
        for _ in range(2):
            assert (await srv.join(srv.token(), room["room_id"])).status == 200
        limited = await srv.join(srv.token(), room["room_id"])
        assert (limited.status, limited.error_code) == (429, "rate_limited")
        assert limited.headers["retry-after"] == "2"
        # Refused before the body is even parsed: garbage is rate limited too.
        assert (await srv.post("/v1/join", body=b"garbage")).status == 429
        srv.clock.advance(2)
        assert (await srv.join(srv.token(), room["room_id"])).status == 200


async def test_create_rate_limit_per_agent(tmp_path):
    async with running_server(tmp_path, create_limit_per_agent=RateLimit(rate=1 / 60, burst=1)) as srv:
        assert (await srv.create_room(srv.token(agent="a#1"))).status == 201
        limited = await srv.create_room(srv.token(agent="a#1"))
        assert (limited.status, limited.error_code) == (429, "rate_limited")
        assert limited.headers["retry-after"] == "60"
        assert (await srv.create_room(srv.token(agent="b#2"))).status == 201
        srv.clock.advance(60)
        assert (await srv.create_room(srv.token(agent="a#1"))).status == 201


async def test_create_rate_limit_per_ip(tmp_path):
    async with running_server(tmp_path, create_limit_per_ip=RateLimit(rate=0.1, burst=1)) as srv:
        assert (await srv.create_room(srv.token(agent="a#1"))).status == 201
        limited = await srv.create_room(srv.token(agent="b#2"))
        assert (limited.status, limited.headers["retry-after"]) == (429, "10")


async def test_join_rate_limit_per_agent(tmp_path):
    async with running_server(tmp_path, join_limit_per_agent=RateLimit(rate=1.0, burst=1)) as srv:
        room = await create(srv)
        assert (await srv.join(srv.token(), room["room_id"])).status == 200
        limited = await srv.join(srv.token(), room["room_id"])
        assert (limited.status, limited.error_code, limited.headers["retry-after"]) == (429, "rate_limited", "1")
        other = await srv.join(srv.token(agent="vega#2"), room["room_id"], agent_id="vega#2")
        assert other.status == 200


async def test_live_room_cap_per_controller(tmp_path):
    async with running_server(tmp_path, max_live_rooms_per_controller=2) as srv:
        first = await create(srv, expires_in=300)
        await create(srv, expires_in=900)
        capped = await srv.create_room(srv.token())
        assert (capped.status, capped.error_code) == (429, "controller_room_limit")
        assert capped.headers["retry-after"] == "300"
        # Another controller is unaffected.
        assert (await srv.create_room(srv.token(controller="alice"))).status == 201
        assert (await srv.delete(f"/v1/rooms/{first['room_id']}", bearer=srv.token())).status == 200
        assert (await srv.create_room(srv.token())).status == 201


# --- framework errors, health, metrics --------------------------------------------------------


async def test_quarts_own_errors_are_json(srv):
    missing = await srv.get("/v1/nothing-here")
    assert (missing.status, missing.error_code) == (404, "not_found")
    wrong_method = await srv.get("/v1/join")
    assert (wrong_method.status, wrong_method.error_code) == (405, "method_not_allowed")
    assert "POST" in wrong_method.headers["allow"]


async def test_unexpected_errors_are_json_500(srv):
    def broken_listener(event):
        raise RuntimeError("a listener bug")

    srv.state.registry.add_listener(broken_listener)
    response = await srv.create_room(srv.token())
    assert (response.status, response.error_code) == (500, "internal_error")
    assert "listener bug" not in response.body.decode()


async def test_healthz_and_metrics(srv):
    room = await create(srv)
    await srv.join(srv.token(), room["room_id"])
    await srv.join(srv.token(), room["room_id"], media={"transport": "websocket"})
    health = await srv.get("/healthz")
    assert health.status == 200 and health.json() == {"status": "ok", "rooms": 1, "sessions": 2}
    metrics = await srv.get("/metrics")
    assert metrics.status == 200 and metrics.headers["content-type"].startswith("text/plain")
    text = metrics.body.decode()
    assert 'botcall_joins_total{kind="bot",transport="udp"} 1.0' in text
    assert 'botcall_joins_total{kind="bot",transport="websocket"} 1.0' in text
    assert "botcall_live_rooms 1.0" in text and "botcall_live_sessions 2.0" in text
    assert "botcall_rooms_created_total 1.0" in text
    await srv.delete(f"/v1/rooms/{room['room_id']}", bearer=srv.token())
    text = (await srv.get("/metrics")).body.decode()
    assert "botcall_live_rooms 0.0" in text and 'botcall_rooms_closed_total{reason="deleted"} 1.0' in text


async def test_two_servers_in_one_process_keep_separate_metrics(tmp_path):
    async with running_server(tmp_path / "a") as first, running_server(tmp_path / "b") as second:
        await create(first)
        assert "botcall_rooms_created_total 1.0" in (await first.get("/metrics")).body.decode()
        assert "botcall_rooms_created_total 0.0" in (await second.get("/metrics")).body.decode()
