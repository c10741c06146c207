"""Hypothesis against the HTTP API's JSON bodies.

Two layers:
* the pure body parsers: any bytes either parse or raise ``BadRequest``;
* the whole quart-trio app (through Quart's test client, one ``trio.run`` per
  example): no body yields a 500, and every error is ``{"error": {"code", "message"}}``.

Bodies are drawn both as raw bytes and as near-valid JSON objects whose fields
are sometimes right (a real room, a freshly signed token) so the fuzzer gets
past the parser into verification and the registry.
"""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import trio
from hypothesis import event, example, given
from hypothesis import strategies as st

from botcall.config import Config, RateLimit
from botcall.errors import BadRequest
from botcall.server import build_state
from botcall.signaling.http_api import (
    CreateRoomRequest,
    JoinRequest,
    create_app,
    parse_create_request_untrusted,
    parse_join_request_untrusted,
)
from tests.kit.server import T0, FakeClock

GENEROUS = RateLimit(rate=1e6, burst=10**6)
ALLOWED_STATUSES = {200, 201, 400, 401, 403, 404, 409, 410, 413, 429, 503}

# Inputs that once broke (or could break) a JSON layer, kept as regression examples.
REGRESSIONS = [
    b"",
    b"[" * 5000 + b"]" * 5000,  # RecursionError inside json
    b'{"a": ' * 3000 + b"1" + b"}" * 3000,
    b'{"expires_in": ' + b"9" * 5000 + b"}",  # int() digit limit: ValueError
    b'{"agent_id": NaN}',
    b'{"agent_id": Infinity}',
    b'{"expires_in": 1e999}',  # float('inf')
    b'{"agent_id": "a", "agent_id": "b"}',
    b"\xef\xbb\xbf{}",  # a UTF-8 BOM
    b"\xff\xfe{\x00}\x00",  # UTF-16
    b'{"agent_id": "\\ud800"}',  # a lone surrogate
    b'{"media": {"transport": {"a": 1}}}',
    b'{"agent_id": "a", "room_id": "r", "attestation": {"token": "t"}, "media": {"transport": []}}',
]

scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20)
JOIN_NAMES = ["agent_id", "room_id", "attestation", "capabilities", "media", "token", "scope", "expiry",
              "audio_in", "audio_out", "video", "text_chat", "transport", "encoding", "sample_rate"]
json_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.sampled_from(JOIN_NAMES) | st.text(max_size=8), children, max_size=5),
    max_leaves=16,
)

VALID = "<valid token>"
ROOM = "<the room>"


def mostly(valid: st.SearchStrategy) -> st.SearchStrategy:
    """``valid`` nine times in ten, any JSON value otherwise."""
    return st.integers(0, 9).flatmap(lambda n: json_values if n == 0 else valid)


def near_valid_join() -> st.SearchStrategy[dict]:
    attestation = st.fixed_dictionaries(
        {"token": mostly(st.sampled_from([VALID, VALID, VALID, "garbage", "a.b.c"]))},
        optional={"scope": mostly(st.lists(st.sampled_from(["call:voice", "call:create"]))), "expiry": mostly(st.integers())},
    )
    capabilities = st.fixed_dictionaries(
        {}, optional={name: mostly(st.booleans()) for name in ("audio_in", "audio_out", "video", "text_chat")}
    )
    media = st.fixed_dictionaries(
        {},
        optional={
            "transport": mostly(st.sampled_from(["udp", "websocket", "webrtc"])),
            "encoding": mostly(st.sampled_from(["opus", "pcm16"])),
            "sample_rate": mostly(st.sampled_from([16000, 24000, 48000, 44100])),
        },
    )
    return st.fixed_dictionaries(
        {
            "agent_id": mostly(st.sampled_from(["orion#8f3a", "orion#8f3a", "vega#2"])),
            "room_id": mostly(st.sampled_from([ROOM, ROOM, "zzzz-zzzz-zzzz"])),
            "attestation": mostly(attestation),
        },
        optional={"capabilities": mostly(capabilities), "media": mostly(media)},
    )


def near_valid_create() -> st.SearchStrategy[dict]:
    return st.fixed_dictionaries(
        {},
        optional={
            "max_human_participants": st.integers(-2, 20) | json_values,
            "expires_in": st.integers(-10, 100_000) | json_values,
            "max_bot_participants": json_values,
        },
    )


# --- the pure parsers -------------------------------------------------------------------------


@given(st.binary(max_size=300))
@example(b'{"agent_id": "a", "room_id": "r", "attestation": {"token": "t"}}')
def test_join_parser_raises_only_bad_request(data):
    try:
        parsed = parse_join_request_untrusted(data)
    except BadRequest as exc:
        assert exc.status == 400 and exc.code
    else:
        assert isinstance(parsed, JoinRequest)


@pytest.mark.parametrize("data", REGRESSIONS)
def test_parser_regressions(data):
    for parse in (parse_join_request_untrusted, parse_create_request_untrusted):
        try:
            parse(data)
        except BadRequest as exc:
            assert exc.status == 400


@given(json_values | near_valid_join())
def test_join_parser_on_json_shapes(value):
    data = json.dumps(value).encode()
    try:
        parsed = parse_join_request_untrusted(data)
    except BadRequest:
        return
    # Whatever parses was a well-formed request: re-derive the essentials.
    assert isinstance(value, dict)
    # Members the API does not define are ignored and named, never refused (forward compatibility).
    top_unknown = sorted(set(value) - {"agent_id", "room_id", "attestation", "capabilities", "media"})
    assert [name for name in parsed.ignored_fields if "." not in name] == [name[:64] for name in top_unknown][:16]
    assert parsed.agent_id == value["agent_id"] and parsed.room_id == value["room_id"]
    assert parsed.token == value["attestation"]["token"]
    assert parsed.media.transport in ("udp", "websocket")


@given(st.binary(max_size=200) | (json_values | near_valid_create()).map(lambda v: json.dumps(v).encode()))
def test_create_parser_raises_only_bad_request(data):
    try:
        parsed = parse_create_request_untrusted(data)
    except BadRequest as exc:
        assert exc.status == 400
    else:
        assert isinstance(parsed, CreateRoomRequest)


# --- the whole app ------------------------------------------------------------------------------


class FuzzApp:
    """One app for all examples: its state accumulates, which the invariants tolerate."""

    def __init__(self, data_dir) -> None:
        config = replace(
            Config(data_dir=data_dir, http_port=0),
            create_limit_per_agent=GENEROUS,
            create_limit_per_ip=GENEROUS,
            join_limit_per_agent=GENEROUS,
            join_limit_per_ip=GENEROUS,
            query_limit_per_ip=GENEROUS,
            max_live_rooms_per_controller=10**6,
            room_max_bots=10**6,
            max_body_bytes=4096,
        )
        self.clock = FakeClock(T0)
        self.state = build_state(config, base_url="http://127.0.0.1:8080", clock=self.clock)
        self.app = create_app(self.state)
        self.room_id = self.state.registry.create_room(owner="gopi", created_by="orion#8f3a", now=T0, expires_in=86_400).room_id

    def token(self) -> str:
        assert self.state.dev_issuer is not None
        return self.state.dev_issuer.mint(
            agent="orion#8f3a", controller="gopi", audience="botcall", scopes=("call:create", "call:voice"), ttl=600, now=T0
        )

    def post(self, path: str, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        async def send() -> tuple[int, bytes]:
            client = self.app.test_client()
            response = await client.post(path, data=body, headers=headers or {})
            return response.status_code, await response.get_data()

        return trio.run(send)

    def substitute(self, value):
        if value == VALID:
            return self.token()
        if value == ROOM:
            return self.room_id
        if isinstance(value, dict):
            return {k: self.substitute(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.substitute(v) for v in value]
        return value


@pytest.fixture(scope="module")
def fuzz_app(tmp_path_factory):
    return FuzzApp(tmp_path_factory.mktemp("fuzz-data"))


def check_response(status: int, body: bytes) -> dict:
    assert status in ALLOWED_STATUSES, (status, body)
    payload = json.loads(body)
    event(f"status {status} {payload['error']['code'] if status >= 400 else ''}")
    if status >= 400:
        assert set(payload) == {"error"}, payload
        assert set(payload["error"]) == {"code", "message"}, payload
        assert isinstance(payload["error"]["code"], str) and payload["error"]["code"]
        assert isinstance(payload["error"]["message"], str)
    return payload


@given(body=st.binary(max_size=300) | st.sampled_from(REGRESSIONS))
def test_join_endpoint_with_any_bytes(fuzz_app, body):
    status, payload = fuzz_app.post("/v1/join", body)
    check_response(status, payload)
    assert status != 200


@given(value=json_values)
def test_join_endpoint_with_any_json(fuzz_app, value):
    status, body = fuzz_app.post("/v1/join", json.dumps(value).encode())
    check_response(status, body)
    assert status == 400


@given(value=near_valid_join())
def test_join_endpoint_with_near_valid_requests(fuzz_app, value):
    status, body = fuzz_app.post("/v1/join", json.dumps(fuzz_app.substitute(value)).encode())
    payload = check_response(status, body)
    if status == 200:
        session = fuzz_app.state.registry.session_by_id(payload["session_id"])
        assert session is not None and session.room_id == fuzz_app.room_id
        assert payload["media"]["transport"] == session.transport


@given(value=near_valid_create() | json_values, with_token=st.booleans())
def test_create_endpoint_with_json_shapes(fuzz_app, value, with_token):
    headers = {"Authorization": f"Bearer {fuzz_app.token()}"} if with_token else {}
    status, body = fuzz_app.post("/v1/rooms/create", json.dumps(value).encode(), headers)
    payload = check_response(status, body)
    if status == 201:
        assert fuzz_app.state.registry.get_room(payload["room_id"], T0).owner == "gopi"
    if not with_token:
        assert status == 401


@given(body=st.binary(max_size=300) | st.sampled_from(REGRESSIONS))
def test_create_endpoint_with_any_bytes(fuzz_app, body):
    status, payload = fuzz_app.post("/v1/rooms/create", body, {"Authorization": f"Bearer {fuzz_app.token()}"})
    check_response(status, payload)
