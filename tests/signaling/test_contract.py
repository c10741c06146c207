"""The published contract against the real server.

``GET /v1/openapi.json`` must list exactly the app's HTTP routes (both ways), and
every response a live server gives — successes and errors — must validate against
the schema the document gives for its path, method and status. The WebSocket
schema must list exactly the app's WebSocket routes, and every event a live server
sends on them (and every client message the test or docs/protocol.md sends) must
validate. Validation uses a *closed* copy of each document (no member the
document does not list), so an undocumented member fails here.
"""

from __future__ import annotations

import base64
import copy
import json
import math
import re
from pathlib import Path
from typing import Any

import jsonschema
import openapi_spec_validator
import pytest
import trio
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012
from trio_websocket import open_websocket_url

from botcall.config import RateLimit
from botcall.signaling import api_schema
from botcall.signaling.http_api import create_app
from botcall.signaling.messages import CLIENT_MESSAGE_FIELDS, rfc3339
from tests.kit.server import LiveServer, running_server

PROTOCOL_MD = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"
_AUTOMATIC_METHODS = {"HEAD", "OPTIONS"}


def _closed(node: Any) -> Any:
    """A copy in which every object schema with ``properties`` forbids other members."""
    if isinstance(node, dict):
        out = {key: _closed(value) for key, value in node.items()}
        if "properties" in out and "additionalProperties" not in out and out.get("type") == "object":
            out["additionalProperties"] = False
        return out
    if isinstance(node, list):
        return [_closed(item) for item in node]
    return node


def _absolute_refs(node: Any, base: str) -> Any:
    if isinstance(node, dict):
        return {k: (base + v if k == "$ref" and v.startswith("#") else _absolute_refs(v, base)) for k, v in node.items()}
    if isinstance(node, list):
        return [_absolute_refs(item, base) for item in node]
    return node


class Contract:
    """Both documents, closed, with a registry so any sub-schema can be validated."""

    def __init__(self) -> None:
        self.openapi = _absolute_refs(_closed(api_schema.openapi_document()), "urn:openapi")
        self.ws = _absolute_refs(_closed(api_schema.websocket_schema()), "urn:ws")
        self.registry = Registry().with_resources([
            ("urn:openapi", Resource.from_contents(self.openapi, default_specification=DRAFT202012)),
            ("urn:ws", Resource.from_contents(self.ws, default_specification=DRAFT202012)),
        ])

    def check(self, schema: Any, instance: Any) -> None:
        jsonschema.Draft202012Validator(schema, registry=self.registry, format_checker=jsonschema.FormatChecker()).validate(instance)

    def response_schema(self, path: str, method: str, status: int) -> tuple[str, Any]:
        responses = self.openapi["paths"][path][method.lower()]["responses"]
        response = responses.get(str(status)) or responses["default"]
        [(content_type, media)] = response["content"].items()
        return content_type, media["schema"]

    def check_response(self, path: str, method: str, response: Any) -> None:
        content_type, schema = self.response_schema(path, method, response.status)
        assert response.headers["content-type"].split(";")[0] == content_type, (path, response.status)
        if content_type == "application/json":
            self.check(schema, response.json())
            if response.status >= 400:
                assert schema == {"$ref": "urn:openapi#/components/schemas/Error"}, (path, response.status)

    def check_event(self, channel: str, event: dict[str, Any]) -> None:
        assert event["type"] in self.ws["x-channels"][channel]["server"], (channel, event["type"])
        self.check({"$ref": "urn:ws#/$defs/ServerEvent"}, event)

    def check_client(self, channel: str, message: dict[str, Any]) -> None:
        assert message["type"] in self.ws["x-channels"][channel]["client"], (channel, message["type"])
        self.check({"$ref": "urn:ws#/$defs/ClientMessage"}, message)


@pytest.fixture(scope="module")
def contract() -> Contract:
    return Contract()


def _openapi_path(rule: str) -> str:
    return re.sub(r"<(?:[a-z]+:)?([a-z_]+)>", r"{\1}", rule)


def test_every_schema_in_both_documents_is_valid_json_schema():
    document = api_schema.openapi_document()
    assert document["openapi"].startswith("3.1.")
    openapi_spec_validator.validate(document)  # the OpenAPI 3.1 specification's own schema
    for name, schema in document["components"]["schemas"].items():
        jsonschema.Draft202012Validator.check_schema(schema), name
    jsonschema.Draft202012Validator.check_schema(api_schema.websocket_schema())
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            assert operation["responses"], (path, method)
            for parameter in operation.get("parameters", []):
                assert "{" + parameter["name"] + "}" in path


def test_the_client_message_schemas_define_exactly_the_members_the_parser_knows():
    defs = api_schema.websocket_schema()["$defs"]
    for kind, members in CLIENT_MESSAGE_FIELDS.items():
        assert set(defs[f"client.{kind}"]["properties"]) == members, kind


async def test_openapi_lists_exactly_the_real_routes_and_is_served(tmp_path, contract):
    async with running_server(tmp_path) as srv:
        app = create_app(srv.state)
        http_routes, ws_routes = set(), set()
        for rule in app.url_map.iter_rules():
            if rule.endpoint == "static":
                continue
            if rule.websocket:
                ws_routes.add(_openapi_path(rule.rule))
            else:
                http_routes |= {(_openapi_path(rule.rule), m.lower()) for m in rule.methods - _AUTOMATIC_METHODS}
        served = await srv.get("/v1/openapi.json")
        contract.check_response("/v1/openapi.json", "GET", served)
        document = served.json()
        assert document == api_schema.openapi_document()
        documented = {
            (path, method) for path, ops in document["paths"].items() for method, op in ops.items()
            if not op.get(api_schema.FRONT_ONLY)  # the front's own (tests/cluster/test_front_contract.py)
        }
        assert http_routes - documented == set(), "routes missing from the OpenAPI document"
        assert documented - http_routes == set(), "documented routes the server does not have"
        ws_document = (await srv.get("/v1/websocket-schema.json")).json()
        assert ws_document == api_schema.websocket_schema()
        assert set(ws_document["x-channels"]) == ws_routes


# TURN configured, so ice_servers entries are checked too (nothing is sent to it).
TURN = {"turn_uris": ("turn:127.0.0.1:3478?transport=udp",), "turn_secret": "north-wind"}


async def test_live_http_responses_match_the_document(tmp_path, contract):
    async with running_server(tmp_path, max_body_bytes=4096, **TURN) as srv:
        async def check(method: str, path: str, template: str | None = None, **kwargs: Any) -> Any:
            response = await srv.request(method, path, **kwargs)
            contract.check_response(template or path, method, response)
            return response

        token = srv.token()
        created = await check("POST", "/v1/rooms/create", bearer=token, json_body={"expires_in": 600, "future": 1})
        assert created.status == 201 and created.json()["warnings"]
        await check("POST", "/v1/rooms", bearer=token, body=b"")
        room_id = created.json()["room_id"]
        for media in ({"transport": "udp"}, {"transport": "websocket", "encoding": "pcm16", "receive": "mixed"},
                      {"transport": "websocket", "encoding": "opus", "future": True}):
            joined = await check("POST", "/v1/join", json_body={
                "agent_id": "orion#8f3a", "room_id": room_id, "attestation": {"token": srv.token()}, "media": media,
            })
            assert joined.status == 200, joined.body
            assert joined.json()["ice_servers"]
        room = await check("GET", f"/v1/rooms/{room_id}", "/v1/rooms/{room_id}", bearer=token)
        assert len(room.json()["participants"]) == 3
        for body in (created.json(), room.json(), joined.json()):
            assert body["expires_at"] == body["expires_at_iso"] == rfc3339(body["expires_at_unix"])
        assert room.json()["created_at_unix"] == srv.clock() and room.json()["created_at"] == rfc3339(srv.clock())
        assert created.json()["expires_at_unix"] == srv.clock() + 600
        for path in ("/healthz", "/readyz", "/v1/version", "/metrics", "/v1/websocket-schema.json", "/", "/sw.js"):
            assert (await check("GET", path)).status == 200, path
        assert (await check("GET", f"/join/{room_id}", "/join/{room_id}")).status == 200

        # Errors: each with the documented shape and a code.
        errors = [
            await check("POST", "/v1/join", body=b"{nope"),
            await check("POST", "/v1/join", json_body={"agent_id": "a", "room_id": "r", "attestation": {"token": "x.y.z"}}),
            await check("POST", "/v1/rooms/create", json_body={}),
            await check("POST", "/v1/rooms/create", bearer=srv.token(scope="call:voice"), json_body={}),
            await check("GET", "/v1/rooms/nope-nope-nope", "/v1/rooms/{room_id}", bearer=token),
            await check("POST", "/v1/join", body=b"{" + b" " * 5000 + b"}"),
            await check("GET", "/pwa/no-such-file.js", "/pwa/{name}"),
        ]
        assert [e.status for e in errors] == [400, 401, 401, 403, 404, 413, 404]
        # Statuses from outside the routes (wrong method, rate limit) have the same Error shape.
        error_schema = {"$ref": "urn:openapi#/components/schemas/Error"}
        wrong_method = await srv.get("/v1/join")
        assert wrong_method.status == 405 and "POST" in wrong_method.headers["allow"]
        contract.check(error_schema, wrong_method.json())
        deleted = await check("DELETE", f"/v1/rooms/{room_id}", "/v1/rooms/{room_id}", bearer=token)
        assert deleted.json()["state"] == "closed"
        gone = await check("GET", f"/v1/rooms/{room_id}", "/v1/rooms/{room_id}", bearer=token)
        assert (gone.status, gone.error_code) == (410, "room_closed")


async def test_a_rate_limited_response_matches_the_document(tmp_path, contract):
    async with running_server(tmp_path, join_limit_per_ip=RateLimit(rate=0.01, burst=1)) as srv:
        await srv.post("/v1/join", body=b"{}")
        limited = await srv.post("/v1/join", body=b"{}")
        assert (limited.status, limited.error_code) == (429, "rate_limited") and limited.headers["retry-after"]
        contract.check_response("/v1/join", "POST", limited)


def test_http_timestamps_tell_one_time_three_ways(contract):
    # Checked on live responses above by the schema; here the values agree.
    from botcall.signaling.messages import timestamp_fields

    fields = timestamp_fields("expires_at", 1_800_000_600.5, legacy="iso")
    assert math.floor(fields["expires_at_unix"]) == 1_800_000_600
    assert fields["expires_at"] == fields["expires_at_iso"] == "2027-01-15T08:10:00Z"


async def _events_until(ws: Any, contract: Contract, channel: str, wanted: str, seen: list[dict[str, Any]]) -> dict[str, Any]:
    with trio.fail_after(10):
        while True:
            message = await ws.get_message()
            if isinstance(message, bytes):
                continue
            event = json.loads(message)
            contract.check_event(channel, event)
            seen.append(event)
            if event["type"] == wanted:
                return event


async def _send(ws: Any, contract: Contract, channel: str, message: dict[str, Any], *, documented: bool = True) -> None:
    if documented:
        contract.check_client(channel, message)
    await ws.send_message(json.dumps(message))


async def _join(srv: LiveServer, room_id: str, agent: str, media: dict[str, Any]) -> dict[str, Any]:
    response = await srv.join(srv.token(agent=agent), room_id, agent_id=agent, media=media)
    assert response.status == 200, response.body
    return response.json()


def _tone_pcm16(seconds: float, rate: int = 16000, hz: float = 440.0) -> bytes:
    samples = (round(12000 * math.sin(2 * math.pi * hz * n / rate)) for n in range(int(seconds * rate)))
    return b"".join(s.to_bytes(2, "little", signed=True) for s in samples)


async def test_live_bot_channel_events_match_the_schema(tmp_path, contract):
    stream, signal = "/v1/stream/{session_id}", "/v1/signal/{room_id}"
    async with running_server(tmp_path, **TURN) as srv:
        owner = srv.token(agent="creator#1")
        room = (await srv.create_room(owner, max_human_participants=1)).json()
        room_id, secret = room["room_id"], room["invite_url"].split("#invite=")[1]
        speaker = await _join(srv, room_id, "speaker#1", {"transport": "websocket", "encoding": "pcm16", "sample_rate": 16000})
        listener = await _join(srv, room_id, "listener#1", {"transport": "websocket", "encoding": "pcm16", "sample_rate": 16000})
        seen: list[dict[str, Any]] = []
        signal_url = srv.url.replace("http://", "ws://") + f"/v1/signal/{room_id}"
        async with open_websocket_url(speaker["websocket_url"]) as a, open_websocket_url(listener["websocket_url"]) as b:
            welcome = await _events_until(a, contract, stream, "welcome", seen)
            assert welcome["expires_at"] == welcome["expires_at_unix"]
            assert welcome["expires_at_iso"] == speaker["expires_at_iso"] == speaker["expires_at"]
            assert math.floor(welcome["expires_at_unix"]) == math.floor(speaker["expires_at_unix"])
            await _events_until(b, contract, stream, "welcome", seen)

            await _send(a, contract, stream, {"type": "ping", "nonce": "n1"})
            await _events_until(a, contract, stream, "pong", seen)
            # A newer client's member: ignored, reported once, the message still works.
            for _ in range(2):
                await _send(a, contract, stream, {"type": "ping", "nonce": "n2", "trace_id": "t"}, documented=False)
            warning = await _events_until(a, contract, stream, "warning", seen)
            assert (warning["message_type"], warning["fields"]) == ("ping", ["trace_id"])
            assert (await _events_until(a, contract, stream, "pong", seen))["nonce"] == "n2"
            await _send(a, contract, stream, {"type": "playout_delay", "ms": "soon"}, documented=False)
            assert (await _events_until(a, contract, stream, "error", seen))["code"] == "bad_message"
            await _send(a, contract, stream, {"type": "chat", "text": "hello"})
            await _events_until(b, contract, stream, "chat", seen)
            await _send(a, contract, stream, {"type": "control", "action": "mute", "value": True})
            await _events_until(b, contract, stream, "muted", seen)
            await _send(a, contract, stream, {"type": "control", "action": "unmute"})
            await _send(a, contract, stream, {"type": "playout_delay", "ms": 40})

            # Speech: a second of tone, a mark after it; the listener hears it as audio events.
            pcm = _tone_pcm16(1.0)
            for start in range(0, len(pcm), 3200):
                await _send(a, contract, stream, {"type": "audio", "data": base64.b64encode(pcm[start:start + 3200]).decode()})
            await _send(a, contract, stream, {"type": "mark", "name": "end"})
            await _events_until(b, contract, stream, "stream_started", seen)
            await _events_until(b, contract, stream, "audio", seen)
            await _events_until(a, contract, stream, "mark", seen)
            await _send(a, contract, stream, {"type": "clear"})
            await _events_until(a, contract, stream, "cleared", seen)

            async with open_websocket_url(signal_url) as browser:
                await _send(browser, contract, signal, {"type": "hello", "invite": secret, "client": "v9"}, documented=False)
                await _events_until(browser, contract, signal, "lobby", seen)
                assert (await _events_until(browser, contract, signal, "warning", seen))["fields"] == ["client"]
                await _send(browser, contract, signal, {"type": "join", "display_name": "Ada"})
                joined = await _events_until(browser, contract, signal, "joined", seen)
                assert joined["expires_at_iso"] and joined["expires_at"] == joined["expires_at_unix"]
                assert joined["ice_servers"]
                await _events_until(a, contract, stream, "participant_joined", seen)
                await _send(browser, contract, signal, {"type": "offer", "sdp": "v=0\r\n"})
                assert (await _events_until(browser, contract, signal, "error", seen))["code"] == "bad_offer"
                await _send(browser, contract, signal, {"type": "control", "action": "leave"})
                await _events_until(a, contract, stream, "participant_left", seen)

            await _send(b, contract, stream, {"type": "control", "action": "leave"})
            await _events_until(a, contract, stream, "participant_left", seen)
            assert (await srv.delete(f"/v1/rooms/{room_id}", bearer=owner)).status == 200
            await _events_until(a, contract, stream, "room_closed", seen)
        kinds = {event["type"] for event in seen}
        assert {"welcome", "pong", "warning", "error", "chat", "muted", "audio", "stream_started",
                "mark", "cleared", "lobby", "joined", "participant_joined", "participant_left", "room_closed"} <= kinds


def test_every_json_message_in_protocol_md_validates(contract):
    """Inline ``{"type":…}`` examples in docs/protocol.md that are whole JSON must be
    a documented client message or server event."""
    examples = []
    for snippet in re.findall(r"`(\{\"type\":.*?\})`", PROTOCOL_MD.read_text()):
        try:
            examples.append(json.loads(snippet))
        except ValueError:
            continue  # a sketch with "…" or bare member names, not a message
    assert len(examples) >= 8
    for example in examples:
        errors = []
        for ref in ("urn:ws#/$defs/ClientMessage", "urn:ws#/$defs/ServerEvent"):
            try:
                contract.check({"$ref": ref}, copy.deepcopy(example))
                break
            except jsonschema.ValidationError as exc:
                errors.append(exc.message)
        else:
            raise AssertionError(f"{example} matches no documented message: {errors}")
