"""WebSocket message shapes, sans-IO.

Client messages are JSON objects with a ``type``; ``parse_client_message_untrusted``
turns text from the network into a frozen dataclass or raises ``SignalingError``
(code ``bad_message``), never anything else. Server messages are built by the
small ``*_event`` helpers below so every event has one shape everywhere.

The contract is written down in ``docs/protocol.md`` ("WebSocket channel").
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Union

from botcall.audio.vad import SpeechStarted, SpeechStopped
from botcall.relay.core import StreamStarted
from botcall.signaling.strict_json import JsonObject, JsonObjectError, parse_json_object_untrusted
from botcall.errors import SignalingError

MAX_TEXT_MESSAGE = 128 * 1024
MAX_CHAT_TEXT = 4000
MAX_AUDIO_BYTES = 64 * 1024
MAX_SDP = 64 * 1024
MAX_DISPLAY_NAME = 64
MAX_INVITE = 256

# WebSocket close codes (RFC 6455 §7.4.2: 4000-4999 are for applications).
CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001  # RFC 6455 §7.4.1: the server is shutting down
CLOSE_POLICY = 1008  # RFC 6455 §7.4.1: policy violation (kept sending after rate_limited)
CLOSE_TOO_BIG = 1009  # RFC 6455 §7.4.1: a message over the size cap
CLOSE_TRY_AGAIN_LATER = 1013  # RFC 6455 §7.4.1 (IANA): over a connection budget
CLOSE_BAD_MESSAGE = 4400
CLOSE_UNAUTHORIZED = 4401
CLOSE_NOT_FOUND = 4404
CLOSE_SESSION_EXPIRED = 4408
CLOSE_ROOM_FULL = 4409
CLOSE_ROOM_CLOSED = 4410
CLOSE_ALREADY_CONNECTED = 4411
CLOSE_TOO_SLOW = 4429


@dataclass(frozen=True, slots=True)
class Control:
    """``{"type": "control", "action": "mute" | "unmute" | "leave", "value": bool}``."""

    action: str
    value: bool | None = None


@dataclass(frozen=True, slots=True)
class Chat:
    """``{"type": "chat", "text": "..."}``: relayed to the room."""

    text: str


@dataclass(frozen=True, slots=True)
class Audio:
    """``{"type": "audio", "data": "<base64>", "timestamp": ms}``.

    ``data`` is one Opus frame (encoding ``opus``) or PCM s16le at the session's
    sample rate (encoding ``pcm16``, any whole number of samples).
    """

    data: bytes
    timestamp: float | None = None


@dataclass(frozen=True, slots=True)
class Ping:
    """``{"type": "ping"}``: answered with ``{"type": "pong"}``."""

    nonce: str | None = None


@dataclass(frozen=True, slots=True)
class Offer:
    """``{"type": "offer", "sdp": "..."}`` from a browser."""

    sdp: str


@dataclass(frozen=True, slots=True)
class Hello:
    """``{"type": "hello", "invite": "<secret>", "resume": "<token>"}``: a browser opens
    the lobby with its invite; ``resume`` (from an earlier ``joined``) takes its place
    in the call back after a dropped connection."""

    invite: str
    resume: str | None = None


@dataclass(frozen=True, slots=True)
class Join:
    """``{"type": "join", "display_name": "..."}``: the human clicked Join."""

    display_name: str


@dataclass(frozen=True, slots=True)
class Mark:
    """``{"type": "mark", "name": "...", "rtp_timestamp": N}``: a mark in the bot's speech
    (at the end of its queue, or at an RTP timestamp of its stream)."""

    name: str
    rtp_timestamp: int | None = None


@dataclass(frozen=True, slots=True)
class Clear:
    """``{"type": "clear"}``: drop the bot's queued speech."""


@dataclass(frozen=True, slots=True)
class PlayoutDelay:
    """``{"type": "playout_delay", "ms": N}``: how long received audio waits in the
    sender's own buffers before it is heard (for ``heard_ms``)."""

    ms: int


# A JSON object as sent or received: an event, a participant.

ClientMessage = Union[Control, Chat, Audio, Ping, Offer, Hello, Join, Mark, Clear, PlayoutDelay]

# The members each client message type defines. Any other member is ignored and
# reported (forward compatibility: a newer client may send more than this server
# knows); the values of these are checked strictly. docs/protocol.md, "Forward
# compatibility"; botcall/signaling/api_schema.py publishes the same table.
CLIENT_MESSAGE_FIELDS: dict[str, frozenset[str]] = {
    "audio": frozenset({"type", "data", "timestamp"}),
    "control": frozenset({"type", "action", "value"}),
    "chat": frozenset({"type", "text"}),
    "ping": frozenset({"type", "nonce"}),
    "offer": frozenset({"type", "sdp"}),
    "hello": frozenset({"type", "invite", "resume"}),
    "join": frozenset({"type", "display_name"}),
    "mark": frozenset({"type", "name", "rtp_timestamp"}),
    "clear": frozenset({"type"}),
    "playout_delay": frozenset({"type", "ms"}),
}
# At most this many unknown member names are reported per message, each cut to
# MAX_FIELD_NAME characters.
MAX_REPORTED_FIELDS = 16
MAX_FIELD_NAME = 64

_CONTROL_ACTIONS = frozenset({"mute", "unmute", "leave"})
MAX_MARK_NAME = 256
MAX_PLAYOUT_DELAY_MS = 10_000


def _bad(message: str) -> SignalingError:
    return SignalingError(message, code="bad_message", close_code=CLOSE_BAD_MESSAGE)


def _optional_string(obj: JsonObject, key: str, limit: int) -> str | None:
    if obj.get(key) is None:
        return None
    return _string(obj, key, limit)


def _string(obj: JsonObject, key: str, limit: int) -> str:
    value = obj.get(key)
    if not isinstance(value, str):
        raise _bad(f"{key!r} must be a string")
    if len(value) > limit:
        raise _bad(f"{key!r} is longer than {limit} characters")
    return value


def unknown_fields(obj: JsonObject, known: frozenset[str], prefix: str = "") -> tuple[str, ...]:
    """The members of ``obj`` not in ``known``, sorted, as ``prefix + name``: at most
    ``MAX_REPORTED_FIELDS`` of them, each cut to ``MAX_FIELD_NAME`` characters."""
    if known.issuperset(obj):  # the usual case, on every audio message: nothing to sort
        return ()
    names = sorted(name for name in obj if name not in known)[:MAX_REPORTED_FIELDS]
    return tuple((prefix + name)[:MAX_FIELD_NAME] for name in names)


def parse_client_message_untrusted(text: str | bytes) -> ClientMessage:
    """Parse one text frame from a client, ignoring members this server does not know.

    Args:
        text: the frame's text.

    Returns:
        One of ``Control``, ``Chat``, ``Audio``, ``Ping``, ``Offer``, ``Hello``, ``Join``,
        ``Mark``, ``Clear``, ``PlayoutDelay``.

    Raises:
        SignalingError: see ``parse_client_message_reporting_untrusted``.
    """
    return parse_client_message_reporting_untrusted(text)[0]


def parse_client_message_reporting_untrusted(text: str | bytes) -> tuple[ClientMessage, tuple[str, ...]]:
    """Parse one text frame from a client, and say which of its members were ignored.

    Members the message type does not define (``CLIENT_MESSAGE_FIELDS``) are
    ignored, not refused: a newer client may send more than this server knows.
    The values of the defined ones are checked strictly.

    Args:
        text: the frame's text.

    Returns:
        The message, and the names of the members it ignored (see ``unknown_fields``).

    Raises:
        SignalingError: not JSON, not an object, unknown type, wrong field types,
            or over a size limit (code ``bad_message``).
    """
    if len(text) > MAX_TEXT_MESSAGE:
        raise _bad(f"message larger than {MAX_TEXT_MESSAGE} bytes")
    try:
        obj = parse_json_object_untrusted(text)
    except JsonObjectError as exc:
        raise _bad(f"message is not a JSON object: {exc}") from exc
    message = _client_message(obj)
    return message, unknown_fields(obj, CLIENT_MESSAGE_FIELDS[str(obj["type"])])


def _client_message(obj: JsonObject) -> ClientMessage:
    """The message ``obj`` (a JSON object) holds.

    Raises:
        SignalingError: unknown type, wrong field types, over a size limit (``bad_message``).
    """
    kind = obj.get("type")
    if kind == "audio":
        data = _string(obj, "data", MAX_AUDIO_BYTES * 4 // 3 + 4)
        try:
            payload = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise _bad("'data' is not base64") from exc
        timestamp = obj.get("timestamp")
        if timestamp is not None and (isinstance(timestamp, bool) or not isinstance(timestamp, (int, float))):
            raise _bad("'timestamp' must be a number")
        return Audio(payload, None if timestamp is None else float(timestamp))
    if kind == "control":
        action = obj.get("action")
        if not isinstance(action, str) or action not in _CONTROL_ACTIONS:
            raise _bad(f"unknown control action {action!r}; expected one of {sorted(_CONTROL_ACTIONS)}")
        value = obj.get("value")
        if value is not None and not isinstance(value, bool):
            raise _bad("'value' must be true or false")
        if action == "unmute":
            action, value = "mute", False if value is None else not value
        elif action == "mute" and value is None:
            value = True
        return Control(action, value)
    if kind == "chat":
        return Chat(_string(obj, "text", MAX_CHAT_TEXT))
    if kind == "ping":
        nonce = obj.get("nonce")
        return Ping(None if nonce is None else str(nonce)[:64])
    if kind == "offer":
        return Offer(_string(obj, "sdp", MAX_SDP))
    if kind == "hello":
        return Hello(_string(obj, "invite", MAX_INVITE), _optional_string(obj, "resume", MAX_INVITE))
    if kind == "mark":
        timestamp = obj.get("rtp_timestamp")
        if timestamp is not None and (
            isinstance(timestamp, bool) or not isinstance(timestamp, int) or not 0 <= timestamp <= 0xFFFFFFFF
        ):
            raise _bad("'rtp_timestamp' must be an integer from 0 to 2^32-1")
        return Mark(_string(obj, "name", MAX_MARK_NAME), timestamp)
    if kind == "clear":
        return Clear()
    if kind == "playout_delay":
        ms = obj.get("ms")
        if isinstance(ms, bool) or not isinstance(ms, (int, float)) or not 0 <= ms <= MAX_PLAYOUT_DELAY_MS:
            raise _bad(f"'ms' must be a number from 0 to {MAX_PLAYOUT_DELAY_MS}")
        return PlayoutDelay(round(ms))
    if kind == "join":
        name = _optional_string(obj, "display_name", MAX_DISPLAY_NAME)
        return Join((name or "").strip() or "Guest")
    raise _bad(f"unknown message type {kind!r}")


_MESSAGE_TYPES: dict[type, str] = {
    Control: "control", Chat: "chat", Audio: "audio", Ping: "ping", Offer: "offer", Hello: "hello",
    Join: "join", Mark: "mark", Clear: "clear", PlayoutDelay: "playout_delay",
}


def message_type(message: ClientMessage) -> str:
    """The wire ``type`` of a parsed client message (``"playout_delay"``...)."""
    return _MESSAGE_TYPES[type(message)]


def encode(event: JsonObject) -> str:
    """Serialise a server event compactly."""
    return json.dumps(event, separators=(",", ":"))


def audio_event(
    participant_id: str, seq: int, timestamp: int, data: bytes, *, encoding: str, sample_rate: int, stream_ms: int = 0
) -> JsonObject:
    """Audio from one speaker: Opus frame or PCM s16le, base64 in ``data``.

    ``seq`` counts frames of that speaker for this receiver (gaps mean loss);
    ``timestamp`` is the RTP timestamp at ``sample_rate``; ``stream_ms`` the
    frame's position in the speaker's stream.
    """
    return {
        "type": "audio",
        "participant_id": participant_id,
        "seq": seq,
        "timestamp": timestamp,
        "stream_ms": stream_ms,
        "encoding": encoding,
        "sample_rate": sample_rate,
        "data": base64.b64encode(data).decode("ascii"),
    }


def error_event(code: str, message: str) -> JsonObject:
    return {"type": "error", "code": code, "message": message}


def unknown_fields_event(message_type: str, fields: tuple[str, ...]) -> JsonObject:
    """``warning`` ``unknown_field``: members of a client message this server ignored."""
    shown = ", ".join(repr(name) for name in fields)
    return {
        "type": "warning",
        "code": "unknown_field",
        "message": f"ignored member(s) this server does not know in a {message_type!r} message: {shown}",
        "message_type": message_type,
        "fields": list(fields),
    }


def rfc3339(unix_seconds: float) -> str:
    """``2026-02-15T13:00:00Z``, rounded down to the second (never later than the input)."""
    return datetime.fromtimestamp(math.floor(unix_seconds), tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def timestamp_fields(name: str, unix_seconds: float, *, legacy: str) -> JsonObject:
    """One point in time, as every BotCall message gives it (docs/protocol.md, "Timestamps").

    ``<name>_unix`` (Unix seconds, a number) and ``<name>_iso`` (RFC 3339 UTC,
    rounded down to the second) everywhere, and ``<name>`` itself in the form
    that channel has always used: ``legacy="iso"`` over HTTP, ``"unix"`` on the
    WebSockets.
    """
    iso = rfc3339(unix_seconds)
    return {name: iso if legacy == "iso" else unix_seconds, f"{name}_unix": unix_seconds, f"{name}_iso": iso}


def room_media_event(participant_id: str, ssrc: int, event: StreamStarted | SpeechStarted | SpeechStopped) -> JsonObject:
    """What the room hears of a participant's stream.

    ``stream_started``: its audio began, ``rtp_timestamp`` is position 0 of its
    stream (``stream_ms`` = (timestamp - this) mod 2^32 / 48).
    ``speech_started``/``speech_stopped``: the speech detector's onset and end
    on that clock (``duration_ms`` with the end).
    """
    if isinstance(event, StreamStarted):
        return {"type": "stream_started", "participant_id": participant_id, "ssrc": ssrc, "rtp_timestamp": event.rtp_timestamp}
    if isinstance(event, SpeechStarted):
        return {"type": "speech_started", "participant_id": participant_id, "stream_ms": event.stream_ms}
    return {
        "type": "speech_stopped", "participant_id": participant_id, "stream_ms": event.stream_ms, "duration_ms": event.duration_ms,
    }


def playout_full_event(ahead_ms: int, max_ahead_ms: int) -> JsonObject:
    """A bot's audio was refused: it is ``max_ahead`` ahead of playback."""
    return error_event(
        "playout_full", f"{ahead_ms} ms of your audio are waiting to play; at most {max_ahead_ms} ms may (audio refused)"
    )


def cleared_event(
    kind: str, played_ms: int, dropped_ms: int, marks_dropped: tuple[str, ...], heard: list[tuple[str, int]], *, by: str | None = None
) -> JsonObject:
    """``cleared`` (answer to ``clear``) or ``interrupted`` (a human barged in, ``by``)."""
    event: JsonObject = {"type": kind}
    if by is not None:
        event["by"] = by
    event.update(
        {
            "played_ms": played_ms,
            "dropped_ms": dropped_ms,
            "marks_dropped": list(marks_dropped),
            "heard": [{"participant_id": who, "heard_ms": ms} for who, ms in heard],
        }
    )
    return event
