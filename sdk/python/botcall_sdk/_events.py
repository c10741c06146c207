"""What the server tells a bot, as typed, frozen events.

``parse_event_untrusted`` turns one JSON object from the WebSocket into an
event. A type this SDK does not know (a newer server), or a known type whose
fields do not parse, becomes ``Unknown``, so a newer server never breaks an
older bot. Every event keeps the server's JSON object in ``raw``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

JsonObject = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Participant:
    """Someone in the room (docs/protocol.md, "P").

    ``agent_id``, ``controller``, ``issuer`` and ``scopes`` are a bot's verified identity.
    """

    participant_id: str
    kind: str  # "bot" or "human"
    display_name: str | None = None
    transport: str | None = None
    muted: bool = False
    ssrc: int | None = None
    agent_id: str | None = None
    controller: str | None = None
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    """Base of every event; ``raw`` is the server's JSON object."""

    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)


@dataclass(frozen=True, slots=True)
class ParticipantJoined(Event):
    participant: Participant


@dataclass(frozen=True, slots=True)
class ParticipantLeft(Event):
    participant_id: str
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class Muted(Event):
    participant_id: str
    muted: bool


@dataclass(frozen=True, slots=True)
class SpeechStarted(Event):
    """Someone started talking; ``stream_ms`` is the onset on their stream clock (the frames' ``stream_ms``)."""

    participant_id: str
    stream_ms: int


@dataclass(frozen=True, slots=True)
class SpeechStopped(Event):
    participant_id: str
    stream_ms: int
    duration_ms: int


@dataclass(frozen=True, slots=True)
class Speaking(Event):
    """The same detector as SpeechStarted/SpeechStopped, as a flag."""

    participant_id: str
    speaking: bool


@dataclass(frozen=True, slots=True)
class Chat(Event):
    participant_id: str
    text: str


@dataclass(frozen=True, slots=True)
class RoomClosed(Event):
    reason: str


@dataclass(frozen=True, slots=True)
class Pong(Event):
    nonce: str


@dataclass(frozen=True, slots=True)
class ServerError(Event):
    """The server refused one of our messages (``code``: ``rate_limited``, ``playout_full``, …); the call goes on."""

    code: str
    message: str


@dataclass(frozen=True, slots=True)
class MarkReached(Event):
    """Playback of our speech reached a mark; ``played_ms`` is on our stream clock."""

    name: str
    played_ms: int


@dataclass(frozen=True, slots=True)
class Cleared(Event):
    """The answer to a clear: what was played and dropped, how far each listener heard."""

    played_ms: int
    dropped_ms: int
    marks_dropped: tuple[str, ...]
    heard: Mapping[str, int]


@dataclass(frozen=True, slots=True)
class Interrupted(Event):
    """A human talked over us: the server cleared our speech (barge-in)."""

    by: str | None
    played_ms: int
    dropped_ms: int
    marks_dropped: tuple[str, ...]
    heard: Mapping[str, int]


@dataclass(frozen=True, slots=True)
class StreamStarted(Event):
    """Someone's audio began: ``rtp_timestamp`` is position 0 of their stream."""

    participant_id: str | None
    ssrc: int
    rtp_timestamp: int


@dataclass(frozen=True, slots=True)
class EventsLost(Event):
    """Events ``first_seq`` to ``last_seq`` (``count`` of them) will never arrive.

    After a WebSocket drop the SDK resumes and the server replays what it still
    holds (256 recent events per session); this says what it no longer held. It
    is also raised by the SDK itself when the numbering skips on a live socket
    (the server dropped events this bot read too slowly): then ``raw`` is empty.
    """

    first_seq: int
    last_seq: int
    count: int


@dataclass(frozen=True, slots=True)
class Unknown(Event):
    """An event this SDK does not know (or could not read): see ``raw``."""

    type: str


class _Bad(Exception):
    pass


def _str(obj: Mapping[str, Any], name: str) -> str:
    value = obj.get(name)
    if not isinstance(value, str):
        raise _Bad(name)
    return value


def _opt_str(obj: Mapping[str, Any], name: str) -> str | None:
    value = obj.get(name)
    return value if isinstance(value, str) else None


def _int(obj: Mapping[str, Any], name: str, default: int | None = None) -> int:
    value = obj.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise _Bad(name)
    return value


def _bool(obj: Mapping[str, Any], name: str) -> bool:
    value = obj.get(name)
    if not isinstance(value, bool):
        raise _Bad(name)
    return value


def _heard(obj: Mapping[str, Any]) -> dict[str, int]:
    heard = obj.get("heard", [])
    if not isinstance(heard, list):
        raise _Bad("heard")
    out = {}
    for item in heard:
        if not isinstance(item, dict):
            raise _Bad("heard")
        out[_str(item, "participant_id")] = _int(item, "heard_ms")
    return out


def _marks(obj: Mapping[str, Any]) -> tuple[str, ...]:
    marks = obj.get("marks_dropped", [])
    if not isinstance(marks, list) or not all(isinstance(m, str) for m in marks):
        raise _Bad("marks_dropped")
    return tuple(marks)


def parse_participant_untrusted(obj: Any) -> Participant:
    """A participant object. Raises ``ValueError`` when it has no id or kind."""
    if not isinstance(obj, dict):
        raise ValueError("a participant is a JSON object")
    try:
        ssrc = obj.get("ssrc")
        return Participant(
            participant_id=_str(obj, "participant_id"),
            kind=_str(obj, "kind"),
            display_name=_opt_str(obj, "display_name"),
            transport=_opt_str(obj, "transport"),
            muted=obj.get("muted") is True,
            ssrc=ssrc if isinstance(ssrc, int) and not isinstance(ssrc, bool) else None,
            agent_id=_opt_str(obj, "agent_id"),
            controller=_opt_str(obj, "controller"),
            raw=obj,
        )
    except _Bad as exc:
        raise ValueError(f"participant field {exc}") from None


def parse_event_untrusted(obj: JsonObject) -> Event:
    """One server event; ``Unknown`` for a type not known here or fields that do not parse."""
    kind = obj.get("type")
    kind = kind if isinstance(kind, str) else ""
    try:
        if kind == "participant_joined":
            return ParticipantJoined(parse_participant_untrusted(obj.get("participant")), raw=obj)
        if kind == "participant_left":
            return ParticipantLeft(_str(obj, "participant_id"), _opt_str(obj, "reason"), raw=obj)
        if kind == "muted":
            return Muted(_str(obj, "participant_id"), _bool(obj, "muted"), raw=obj)
        if kind == "speech_started":
            return SpeechStarted(_str(obj, "participant_id"), _int(obj, "stream_ms"), raw=obj)
        if kind == "speech_stopped":
            return SpeechStopped(_str(obj, "participant_id"), _int(obj, "stream_ms"), _int(obj, "duration_ms", 0), raw=obj)
        if kind == "speaking":
            return Speaking(_str(obj, "participant_id"), _bool(obj, "speaking"), raw=obj)
        if kind == "chat":
            return Chat(_str(obj, "participant_id"), _str(obj, "text"), raw=obj)
        if kind == "room_closed":
            return RoomClosed(_str(obj, "reason"), raw=obj)
        if kind == "pong":
            return Pong(str(obj.get("nonce", "")), raw=obj)
        if kind == "error":
            return ServerError(_str(obj, "code"), str(obj.get("message", "")), raw=obj)
        if kind == "mark":
            return MarkReached(_str(obj, "name"), _int(obj, "played_ms"), raw=obj)
        if kind == "cleared":
            return Cleared(_int(obj, "played_ms"), _int(obj, "dropped_ms"), _marks(obj), _heard(obj), raw=obj)
        if kind == "interrupted":
            return Interrupted(_opt_str(obj, "by"), _int(obj, "played_ms"), _int(obj, "dropped_ms"), _marks(obj), _heard(obj), raw=obj)
        if kind == "events_lost":
            return EventsLost(_int(obj, "first_seq"), _int(obj, "last_seq"), _int(obj, "count"), raw=obj)
        if kind == "stream_started":
            return StreamStarted(_opt_str(obj, "participant_id"), _int(obj, "ssrc"), _int(obj, "rtp_timestamp"), raw=obj)
    except (_Bad, ValueError):
        pass
    return Unknown(kind, raw=obj)


__all__ = [
    "Chat", "Cleared", "Event", "EventsLost", "Interrupted", "MarkReached", "Muted", "Participant", "ParticipantJoined",
    "ParticipantLeft", "Pong", "RoomClosed", "ServerError", "Speaking", "SpeechStarted", "SpeechStopped",
    "StreamStarted", "Unknown", "parse_event_untrusted",
]
