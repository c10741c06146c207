"""The published contract: an OpenAPI 3.1 document for the HTTP API and a JSON Schema
(2020-12) of the WebSocket messages, served at ``GET /v1/openapi.json`` and
``GET /v1/websocket-schema.json`` (sans-IO: plain dicts; ``http_api`` adds the routes).

Both are built from the same constants the parsers use (limits, message members,
close codes), and ``tests/signaling/test_contract.py`` checks them against the
real routes and the messages a live server sends, so the documents cannot drift
from the code. They are *open* for forward compatibility: objects do not forbid
members they do not list (a newer server may add some; clients ignore what they
do not know). The test validates live messages against a closed copy, so every
member the server sends is documented here.
"""

from __future__ import annotations

from typing import Any

from botcall import __version__
from botcall.audio.opus import PAYLOAD_TYPE as PAYLOAD_TYPE_OPUS
from botcall.relay.ws_audio import DELIVERIES, DELIVERY_ARRIVAL
from botcall.signaling import messages as msg

Schema = dict[str, Any]

OPENAPI_PATH = "/v1/openapi.json"
# An operation the routing front answers itself (present only with --workers N > 1 or --redis).
FRONT_ONLY = "x-botcall-front-only"
WEBSOCKET_SCHEMA_PATH = "/v1/websocket-schema.json"

_STRING: Schema = {"type": "string"}
_INT: Schema = {"type": "integer"}
_NUMBER: Schema = {"type": "number"}
_BOOL: Schema = {"type": "boolean"}
_UINT32: Schema = {"type": "integer", "minimum": 0, "maximum": 0xFFFFFFFF, "description": "unsigned 32-bit"}
_RATES = [8000, 16000, 24000, 48000]
_ISO: Schema = {"type": "string", "format": "date-time", "pattern": r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$",
                "description": "RFC 3339 UTC, rounded down to the second"}
_UNIX: Schema = {"type": "number", "description": "Unix time in seconds (may have a fraction)"}


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _ice_servers() -> Schema:
    """``ice_servers``: TURN servers with REST credentials valid until ``expires_at``, or ``[]``.

    The expiry as every timestamp (``_unix``, ``_iso``); the bare ``expires_at`` is
    RFC 3339 on both channels, as it always was.
    """
    server = _obj({
        "urls": {"type": "array", "items": {"type": "string", "pattern": "^turns?:"}, "minItems": 1},
        "username": {"type": "string", "description": "<expiry Unix seconds>:<participant id>"},
        "credential": {"type": "string", "description": "base64(HMAC-SHA1(secret, username))"},
        **_timestamps("expires_at", _ISO),
    })
    return {"type": "array", "items": server}


def _obj(required: dict[str, Schema], optional: dict[str, Schema] | None = None, description: str = "") -> Schema:
    schema: Schema = {"type": "object", "required": sorted(required), "properties": {**required, **(optional or {})}}
    if description:
        schema["description"] = description
    return schema


def _timestamps(name: str, legacy: Schema) -> dict[str, Schema]:
    """``messages.timestamp_fields``: ``name`` in its channel's legacy form, ``_unix``, ``_iso``."""
    return {name: legacy, f"{name}_unix": _UNIX, f"{name}_iso": _ISO}


# --- shapes both documents share ---------------------------------------------------------------------


def _shared_schemas(ref: Any) -> dict[str, Schema]:
    """Participants, capabilities, interruption: the same in HTTP bodies and WebSocket events."""
    capabilities = _obj({}, {name: _BOOL for name in ("audio_in", "audio_out", "video", "text_chat")})
    participant = _obj(
        {
            "participant_id": _STRING, "kind": {"enum": ["bot", "human"]}, "display_name": _STRING,
            "transport": {"enum": ["udp", "websocket", "webrtc"]}, "muted": _BOOL, "capabilities": ref("Capabilities"),
        },
        {"agent_id": _STRING, "controller": _STRING, "issuer": _STRING, "scopes": {"type": "array", "items": _STRING}},
        "A participant as others see it; bots carry the verified claims of their attestation.",
    )
    return {
        "Capabilities": capabilities,
        "Participant": participant,
        "Interruption": _obj(
            {}, {"mode": {"enum": ["auto", "off"]}, "min_speech_ms": {"type": "integer", "minimum": 20, "maximum": 10_000}}
        ),
    }


# --- the HTTP API --------------------------------------------------------------------------------------


def _http_schemas() -> dict[str, Schema]:
    warning = _obj(
        {"code": {"const": "unknown_field"}, "field": {"type": "string", "maxLength": msg.MAX_FIELD_NAME}, "message": _STRING},
        description="A request member this server does not know: ignored, not refused.",
    )
    warnings: Schema = {"type": "array", "items": _ref("Warning"), "maxItems": msg.MAX_REPORTED_FIELDS}
    error = _obj(
        {"error": _obj(
            {"code": {"type": "string", "pattern": "^[a-z0-9_]+$"}, "message": _STRING},
            {"reason": {"type": "string", "pattern": "^[a-z0-9_]+$", "description": (
                "with 410 room_closed: why the room ended (deleted, expired, empty, server_shutdown, "
                "worker_lost, node_lost); see docs/protocol.md, Workers and Nodes"
            )}},
        )},
        description="Every error response, whatever the status. Branch on code, never on message.",
    )
    media_request = _obj({}, {
        "transport": {"enum": ["udp", "websocket"], "default": "udp"},
        "encoding": {"enum": ["opus", "pcm16"], "default": "opus"},
        "sample_rate": {"enum": _RATES, "default": 48000},
        "send_sample_rate": {"enum": _RATES},
        "receive_sample_rate": {"enum": _RATES},
        "receive": {"enum": ["separate", "mixed"], "default": "separate"},
        "delivery": {"enum": list(DELIVERIES), "default": DELIVERY_ARRIVAL,
                     "description": "pcm16 to websocket bots: decoded on arrival, or paced through a jitter buffer"},
    })
    join_request = _obj(
        {
            "agent_id": {"type": "string", "minLength": 1, "maxLength": 256},
            "room_id": {"type": "string", "minLength": 1, "maxLength": 256},
            "attestation": _obj({"token": _STRING}, {
                "scope": {"oneOf": [_STRING, {"type": "array", "items": _STRING}], "description": "informational, ignored"},
                "expiry": {"type": "number", "description": "informational, ignored"},
            }),
        },
        {"capabilities": _ref("Capabilities"), "media": media_request},
    )
    common_media = {"ssrc": _UINT32, "payload_type": {"const": PAYLOAD_TYPE_OPUS}, "clock_rate": {"const": 48000},
                    "receive": {"enum": ["separate", "mixed"]}}
    udp_media = _obj(
        {"transport": {"const": "udp"}, "host": _STRING, "port": {"type": "integer", "minimum": 1, "maximum": 65535},
         "ice_ufrag": _STRING, "ice_pwd": _STRING, **common_media},
        {"mix_ssrc": _UINT32},
    )
    ws_media = _obj(
        {"transport": {"const": "websocket"}, "encoding": {"enum": ["opus", "pcm16"]}, "sample_rate": {"enum": _RATES},
         "send_sample_rate": {"enum": _RATES}, "receive_sample_rate": {"enum": _RATES},
         "delivery": {"enum": list(DELIVERIES)}, **common_media},
        {"mix_ssrc": _UINT32},
    )
    join_response = _obj(
        {
            "session_id": {"type": "string", "description": "a secret: it authenticates the WebSocket"},
            "participant_id": _STRING, "room_id": _STRING, "websocket_url": {"type": "string", "format": "uri"},
            "media": {"oneOf": [udp_media, ws_media]},
            "ice_servers": _ice_servers(),
            **_timestamps("expires_at", _ISO),
        },
        {"warnings": warnings},
    )
    create_request = _obj({}, {
        "max_human_participants": {"type": "integer", "minimum": 0},
        "expires_in": {"type": "integer", "minimum": 1},
        "interruption": _ref("Interruption"),
    })
    create_response = _obj(
        {
            "room_id": _STRING, "invite_url": {"type": "string", "format": "uri"}, "expires_in": _INT,
            **_timestamps("expires_at", _ISO),
            "max_human_participants": _INT, "max_bot_participants": _INT, "interruption": _ref("Interruption"),
        },
        {"warnings": warnings},
    )
    room = _obj({
        "room_id": _STRING, "state": {"enum": ["open", "closed"]}, "owner": _STRING, "created_by": _STRING,
        **_timestamps("created_at", _ISO), **_timestamps("expires_at", _ISO),
        "max_human_participants": _INT, "max_bot_participants": _INT, "interruption": _ref("Interruption"),
        "participants": {"type": "array", "items": _ref("Participant")},
    })
    return {
        **_shared_schemas(_ref),
        "Error": error,
        "Warning": warning,
        "JoinRequest": join_request,
        "JoinResponse": join_response,
        "CreateRoomRequest": create_request,
        "CreateRoomResponse": create_response,
        "Room": room,
        "Health": _obj({"status": {"const": "ok"}, "rooms": _INT, "sessions": _INT}),
        "Ready": _obj({"status": {"const": "ready"}}),
        "Version": _obj({"name": {"const": "botcall"}, "version": _STRING}),
        "ClusterWorkers": _obj({"workers": {"type": "array", "items": _obj({
            "index": {"type": "integer", "minimum": 0}, "generation": {"type": "integer", "minimum": 0},
            "running": _BOOL, "media_port": {"type": "integer", "minimum": 0, "maximum": 65535},
            "rooms": _INT, "sessions": _INT, "packets_per_second": _NUMBER,
            "load": {"type": "number", "description": "sessions + packets_per_second / 50 + 2 × rooms placed since its last report"},
        })}}, description="The front's view of its workers, as placement reads it"),
    }


def _json_body(schema: Schema) -> Schema:
    return {"content": {"application/json": {"schema": schema}}}


def _errors(*statuses: int) -> dict[str, Schema]:
    """Error responses: the listed statuses and ``default``, all ``Error``."""
    responses = {str(status): {"description": "error", **_json_body(_ref("Error"))} for status in statuses}
    responses["default"] = {"description": "any other error (see docs/protocol.md, Error codes)", **_json_body(_ref("Error"))}
    return responses


def _operation(operation_id: str, summary: str, ok: int, ok_schema: Schema | None, *errors: int,
               body: Schema | None = None, bearer: bool = False, content_type: str = "application/json",
               parameters: list[Schema] | None = None) -> Schema:
    response: Schema = {"description": "success"}
    if ok_schema is not None:
        response["content"] = {content_type: {"schema": ok_schema}}
    operation: Schema = {"operationId": operation_id, "summary": summary, "responses": {str(ok): response, **_errors(*errors)}}
    if body is not None:
        operation["requestBody"] = {"required": False, **_json_body(body)}
    if bearer:
        operation["security"] = [{"attestation": []}]
    if parameters:
        operation["parameters"] = parameters
    return operation


def _path_parameter(name: str) -> Schema:
    return {"name": name, "in": "path", "required": True, "schema": _STRING}


def openapi_document() -> Schema:
    """The OpenAPI 3.1 description of every HTTP route the server has."""
    room_id = [_path_parameter("room_id")]
    create = _operation(
        "createRoom", "Create a room owned by the attestation's ctl (scope call:create)", 201, _ref("CreateRoomResponse"),
        400, 401, 403, 413, 429, 503, body=_ref("CreateRoomRequest"), bearer=True,
    )
    text: Schema = {"type": "string"}
    paths: Schema = {
        "/v1/rooms/create": {"post": create},
        "/v1/rooms": {"post": {**create, "operationId": "createRoomAlias", "summary": "Alias of POST /v1/rooms/create"}},
        "/v1/rooms/{room_id}": {
            "get": _operation("getRoom", "The room, for its owner's bots", 200, _ref("Room"), 401, 403, 404, 410, 429,
                              bearer=True, parameters=room_id),
            "delete": _operation("deleteRoom", "End the call for everyone", 200, _ref("Room"), 401, 403, 404, 410, 429,
                                 bearer=True, parameters=room_id),
        },
        "/v1/join": {"post": _operation(
            "join", "Admit a bot to a room (scope call:voice)", 200, _ref("JoinResponse"),
            400, 401, 403, 404, 409, 410, 413, 429, 503, body=_ref("JoinRequest"),
        )},
        "/healthz": {"get": _operation("healthz", "Liveness", 200, _ref("Health"))},
        "/readyz": {"get": _operation("readyz", "Readiness: whether to send this server new rooms", 200, _ref("Ready"), 503)},
        "/v1/version": {"get": _operation("version", "The server's package version", 200, _ref("Version"))},
        "/metrics": {"get": _operation("metrics", "Prometheus metrics", 200, text, content_type="text/plain")},
        OPENAPI_PATH: {"get": _operation("openapi", "This document", 200, {"type": "object"})},
        WEBSOCKET_SCHEMA_PATH: {"get": _operation(
            "websocketSchema", "JSON Schema of the WebSocket messages (/v1/stream, /v1/signal)", 200, {"type": "object"},
        )},
        "/": {"get": _operation("home", "The web app's start page", 200, text, content_type="text/html")},
        "/join/{room_id}": {"get": _operation(
            "joinPage", "The web app for an invite link (the secret is in the URL fragment)", 200, text, 404,
            content_type="text/html", parameters=room_id,
        )},
        "/pwa/{name}": {"get": _operation(
            "pwaAsset", "A file of the web app (scripts, styles, icons, manifest)", 200, text, 404,
            content_type="application/octet-stream", parameters=[_path_parameter("name")],
        )},
        "/sw.js": {"get": _operation("serviceWorker", "The web app's service worker", 200, text,
                                     content_type="text/javascript")},
        # Answered by the routing front of `botcall serve --workers N` (N > 1) or `--redis`
        # (botcall/cluster/router.py), not by a worker's routes: FRONT_ONLY marks it.
        "/v1/cluster/workers": {"get": {
            **_operation("clusterWorkers", "The front's workers and their measured load (--workers N, --redis)", 200,
                         _ref("ClusterWorkers")),
            FRONT_ONLY: True,
        }},
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "BotCall HTTP API",
            "version": __version__,
            "description": (
                "Rooms, bot joins, health. The prose contract is docs/protocol.md; the WebSocket messages are "
                f"described by {WEBSOCKET_SCHEMA_PATH}. Request members this server does not know are ignored "
                "and listed in the response's warnings; clients must ignore response members they do not know."
            ),
        },
        "jsonSchemaDialect": "https://json-schema.org/draft/2020-12/schema",
        "paths": paths,
        "components": {
            "schemas": _http_schemas(),
            "securitySchemes": {"attestation": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT (BotAuth attestation)"}},
        },
    }


# --- the WebSockets --------------------------------------------------------------------------------------


def _def(name: str) -> Schema:
    return {"$ref": f"#/$defs/{name}"}


def _message(kind: str, required: dict[str, Schema], optional: dict[str, Schema] | None = None, description: str = "") -> Schema:
    return _obj({"type": {"const": kind}, **required}, optional, description)


def _client_messages() -> dict[str, Schema]:
    """Messages clients send; their members are exactly ``messages.CLIENT_MESSAGE_FIELDS``."""
    return {
        "audio": _message("audio", {"data": {"type": "string", "contentEncoding": "base64"}},
                          {"timestamp": _NUMBER}, "Opus frame or pcm16 s16le, base64 (websocket transport)"),
        "control": _message("control", {"action": {"enum": ["mute", "unmute", "leave"]}}, {"value": _BOOL}),
        "chat": _message("chat", {"text": {"type": "string", "maxLength": msg.MAX_CHAT_TEXT}}),
        "ping": _message("ping", {}, {"nonce": _STRING}),
        "offer": _message("offer", {"sdp": {"type": "string", "maxLength": msg.MAX_SDP}}),
        "hello": _message("hello", {"invite": {"type": "string", "maxLength": msg.MAX_INVITE}},
                          {"resume": {"type": "string", "maxLength": msg.MAX_INVITE}}),
        "join": _message("join", {}, {"display_name": {"type": "string", "maxLength": msg.MAX_DISPLAY_NAME}}),
        "mark": _message("mark", {"name": {"type": "string", "maxLength": msg.MAX_MARK_NAME}}, {"rtp_timestamp": _UINT32}),
        "clear": _message("clear", {}),
        "playout_delay": _message("playout_delay", {"ms": {"type": "number", "minimum": 0, "maximum": msg.MAX_PLAYOUT_DELAY_MS}}),
    }


def _server_events() -> dict[str, Schema]:
    participant_id: dict[str, Schema] = {"participant_id": _STRING}
    heard = {"type": "array", "items": _obj({"participant_id": _STRING, "heard_ms": _INT})}
    playout = {"played_ms": _INT, "dropped_ms": _INT, "marks_dropped": {"type": "array", "items": _STRING}, "heard": heard}
    welcome = {
        "participant_id": _STRING, "room_id": _STRING, "you": _def("WsParticipant"),
        "participants": {"type": "array", "items": _def("WsParticipant")}, **_timestamps("expires_at", _UNIX),
    }
    audio_common = {**participant_id, "seq": _INT, "timestamp": _INT, "stream_ms": _INT, "sample_rate": {"enum": _RATES},
                    "data": {"type": "string", "contentEncoding": "base64"}}
    events = {
        "welcome": _message("welcome", welcome, {"last_seq": _SEQ_OR_ZERO}, description=(
            "first event on a bot's channel; last_seq: the newest event's seq so far (bots only)"
        )),
        "events_lost": _message("events_lost", {"first_seq": _SEQ, "last_seq": _SEQ, "count": _SEQ}, description=(
            "on a resume: these events had left the session's replay log (bots only, no seq of its own)"
        )),
        "lobby": _message("lobby", {
            "room_id": _STRING, "participants": {"type": "array", "items": _def("WsParticipant")},
            "max_human_participants": _INT, "humans": _INT, "resumed": _BOOL,
            # Group calls: downstream audio tracks to offer (docs/protocol.md).
            "receive_tracks": {"type": "integer", "minimum": 1, "maximum": 8},
        }, description="a browser's answer to hello"),
        "joined": _message(
            "joined", {**welcome, "resume": _STRING, "media_connected": _BOOL, "ice_servers": _ice_servers()},
            description="a browser's answer to join",
        ),
        "answer": _message("answer", {"sdp": _STRING}),
        "participant_joined": _message("participant_joined", {"participant": _def("WsParticipant")}),
        "participant_left": _message("participant_left", {**participant_id, "reason": _STRING}),
        "muted": _message("muted", {**participant_id, "muted": _BOOL}),
        "speaking": _message("speaking", {**participant_id, "speaking": _BOOL}),
        "speech_started": _message("speech_started", {**participant_id, "stream_ms": _INT}),
        "speech_stopped": _message("speech_stopped", {**participant_id, "stream_ms": _INT, "duration_ms": _INT}),
        "stream_started": _message("stream_started", {**participant_id, "ssrc": _UINT32, "rtp_timestamp": _UINT32}),
        "chat": _message("chat", {**participant_id, "text": _STRING}),
        "room_closed": _message("room_closed", {"reason": _STRING}),
        "pong": _message("pong", {"nonce": {"type": ["string", "null"]}}),
        "error": _message("error", {"code": {"type": "string", "pattern": "^[a-z0-9_]+$"}, "message": _STRING}),
        "warning": _message("warning", {
            "code": {"const": "unknown_field"}, "message": _STRING, "message_type": {"enum": sorted(msg.CLIENT_MESSAGE_FIELDS)},
            "fields": {"type": "array", "items": {"type": "string", "maxLength": msg.MAX_FIELD_NAME},
                       "maxItems": msg.MAX_REPORTED_FIELDS},
        }, description="members of your message this server ignored (once per type and member per connection)"),
        "mark": _message("mark", {"name": _STRING, "played_ms": _INT}),
        "cleared": _message("cleared", playout),
        "interrupted": _message("interrupted", {"by": _STRING, **playout}),
        "audio": {"oneOf": [
            _message("audio", {**audio_common, "encoding": {"const": "opus"}}),
            _message("audio", {**audio_common, "encoding": {"const": "pcm16"}, "concealed": _BOOL}),
        ]},
    }
    # A bot's events are numbered for replay (docs/protocol.md "Resuming"); the
    # ones about one connection only, and audio, are not.
    for kind in set(events) - _UNNUMBERED_EVENTS:
        events[kind]["properties"]["seq"] = _SEQ
    return events


# Events that never carry the bot channel's seq.
_UNNUMBERED_EVENTS = {"welcome", "events_lost", "lobby", "joined", "answer", "audio"}
_SEQ: Schema = {"type": "integer", "minimum": 1}
_SEQ_OR_ZERO: Schema = {"type": "integer", "minimum": 0}


def websocket_schema() -> Schema:
    """JSON Schema (2020-12) of every WebSocket message, and which channel carries which.

    ``$defs.ClientMessage`` validates a message a client sends, ``$defs.ServerEvent``
    one the server sends; ``x-channels`` lists each WebSocket path with the types
    that flow each way on it.
    """
    clients = _client_messages()
    events = _server_events()
    shared = _shared_schemas(_def)
    participant = dict(shared.pop("Participant"))
    participant["properties"] = {**participant["properties"], "ssrc": _UINT32, "speaking": _BOOL}
    participant["required"] = sorted([*participant["required"], "ssrc", "speaking"])
    bot_events = sorted(set(events) - {"lobby", "joined", "answer"})
    browser_events = sorted(set(events) - {"welcome", "events_lost", "mark", "cleared", "interrupted", "audio", "stream_started"})
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": WEBSOCKET_SCHEMA_PATH,
        "title": "BotCall WebSocket messages",
        "description": (
            "JSON text frames, one object each, at most 128 KiB. Members a client message does not define are "
            "ignored and reported with a warning event; clients must ignore event types and members they do not know. "
            "See docs/protocol.md."
        ),
        "x-channels": {
            "/v1/stream/{session_id}": {
                "description": "a bot's control channel (and audio for media.transport websocket)",
                "client": sorted(set(clients) - {"hello", "join", "offer"}),
                "server": bot_events,
            },
            "/v1/signal/{room_id}": {
                "description": "a browser's signaling (hello first, within 10 s)",
                "client": sorted(set(clients) - {"audio", "mark", "clear"}),
                "server": browser_events,
            },
        },
        "x-close-codes": {
            str(code): name.removeprefix("CLOSE_").lower()
            for name, code in vars(msg).items() if name.startswith("CLOSE_") and isinstance(code, int)
        },
        "$defs": {
            **shared,
            "WsParticipant": participant,
            **{f"client.{kind}": schema for kind, schema in clients.items()},
            **{f"server.{kind}": schema for kind, schema in events.items()},
            "ClientMessage": {"oneOf": [_def(f"client.{kind}") for kind in sorted(clients)]},
            "ServerEvent": {"oneOf": [_def(f"server.{kind}") for kind in sorted(events)]},
        },
    }


__all__ = ["OPENAPI_PATH", "WEBSOCKET_SCHEMA_PATH", "openapi_document", "websocket_schema"]
