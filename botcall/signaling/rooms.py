"""The room and session registry (sans-IO).

Rooms are ephemeral: they live in memory, expire at ``expires_at``, close after
``room_empty_timeout_s`` without sessions, and close for everyone when their
owner deletes them. ``RoomStore`` is the interface the HTTP, WebSocket and relay
layers code against; ``RoomRegistry`` is the in-memory implementation (a shared
store can replace it later).

Time is an argument: ``now`` is Unix seconds, the same timebase as an
attestation's ``exp`` (a bot session never outlives its attestation, and
``expires_at`` is reported as an RFC 3339 timestamp).

Changes are announced to listeners (``add_listener``) as frozen events, after
the registry's state is consistent; callbacks are synchronous and must not
block. The relay and WebSocket layers use them to tear down media and sockets.
"""

from __future__ import annotations

import math
import secrets
import string
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Protocol, Union

from botcall.audio.opus import SAMPLE_RATE as OPUS_CLOCK_RATE
from botcall.auth.invites import invite_digest, invite_matches_digest, new_invite_secret
from botcall.config import Config
from botcall.errors import BadRequest, Conflict, Forbidden, Gone, NotFound, RateLimited, RoomRecordError, ServiceUnavailable
from botcall.relay.ws_audio import DELIVERIES, DELIVERY_ARRIVAL

TRANSPORTS = ("udp", "websocket", "webrtc")
ENCODINGS = ("opus", "pcm16")
PCM_SAMPLE_RATES = (8_000, 16_000, 24_000, 48_000)
RECEIVE_MODES = ("separate", "mixed")

_ICE_CHARS = string.ascii_letters + string.digits  # a subset of RFC 8839 §5.4 ice-char
_ROOM_ID_CHARS = string.ascii_lowercase + string.digits


class RoomState(StrEnum):
    OPEN = "open"
    CLOSED = "closed"


class Reason:
    """Why a session or room went away (listeners receive these strings)."""

    LEFT = "left"
    EXPIRED = "expired"
    EMPTY = "empty"
    DELETED = "deleted"
    SHUTDOWN = "server_shutdown"


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What a participant says it can do (the seed's ``capabilities`` object)."""

    audio_in: bool = True
    audio_out: bool = True
    video: bool = False
    text_chat: bool = False

    def to_json(self) -> dict[str, bool]:
        return {
            "audio_in": self.audio_in,
            "audio_out": self.audio_out,
            "video": self.video,
            "text_chat": self.text_chat,
        }


@dataclass(frozen=True, slots=True)
class MediaSpec:
    """How a participant's audio travels.

    ``udp`` and ``webrtc`` carry Opus RTP; ``websocket`` carries Opus or 16-bit
    PCM at 8, 16, 24 or 48 kHz (Opus is always 48 kHz), each direction at its
    own rate. ``receive`` is ``"separate"`` (a stream per speaker) or
    ``"mixed"`` (one mix-minus stream of everyone else). ``delivery`` is how
    separate pcm16 streams arrive: ``"arrival"`` (each packet decoded as it
    comes) or ``"paced"`` (through a jitter buffer, every 20 ms).

    Attributes:
        sample_rate: the default of both directions (what the join said).
        send_sample_rate: the rate of the PCM the participant sends; None = ``sample_rate``.
        receive_sample_rate: the rate of the PCM it receives; None = ``sample_rate``.

    Raises:
        BadRequest: ``invalid_media`` for any other combination.
    """

    transport: str = "udp"
    encoding: str = "opus"
    sample_rate: int = OPUS_CLOCK_RATE
    send_sample_rate: int | None = None
    receive_sample_rate: int | None = None
    receive: str = "separate"
    delivery: str = DELIVERY_ARRIVAL

    def __post_init__(self) -> None:
        if self.transport not in TRANSPORTS:
            raise BadRequest(f"transport must be one of {TRANSPORTS}", code="invalid_media")
        if self.encoding not in ENCODINGS:
            raise BadRequest(f"encoding must be one of {ENCODINGS}", code="invalid_media")
        if self.receive not in RECEIVE_MODES:
            raise BadRequest(f"receive must be one of {RECEIVE_MODES}", code="invalid_media")
        if self.delivery not in DELIVERIES:
            raise BadRequest(f"delivery must be one of {DELIVERIES}", code="invalid_media")
        if self.receive == "mixed" and self.transport == "webrtc":
            raise BadRequest("browsers receive one stream already", code="invalid_media")
        rates = (self.sample_rate, self.send_rate, self.receive_rate)
        if self.encoding == "pcm16":
            if self.transport != "websocket":
                raise BadRequest("pcm16 is only carried over the websocket transport", code="invalid_media")
            if any(rate not in PCM_SAMPLE_RATES for rate in rates):
                raise BadRequest(f"pcm16 sample rates must be among {PCM_SAMPLE_RATES}", code="invalid_media")
        elif any(rate != OPUS_CLOCK_RATE for rate in rates):
            raise BadRequest("opus runs at sample_rate 48000", code="invalid_media")

    @property
    def send_rate(self) -> int:
        """The rate of the PCM the participant sends (pcm16), in Hz."""
        return self.sample_rate if self.send_sample_rate is None else self.send_sample_rate

    @property
    def receive_rate(self) -> int:
        """The rate of the PCM the participant receives (pcm16), in Hz."""
        return self.sample_rate if self.receive_sample_rate is None else self.receive_sample_rate

    @property
    def mixed(self) -> bool:
        """It receives one mix-minus stream instead of a stream per speaker."""
        return self.receive == "mixed"


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a participant is. Bots: the verified attestation claims. Humans: a display name.

    Attributes:
        kind: ``"bot"`` or ``"human"``.
        agent_id: the attestation's ``sub`` (bots).
        controller: the attestation's ``ctl`` (bots).
        issuer: the attestation's ``iss`` (bots).
        scopes: the granted scopes, sorted (bots).
        display_name: a human's chosen name; a bot's agent id.
    """

    kind: str
    display_name: str
    agent_id: str | None = None
    controller: str | None = None
    issuer: str | None = None
    scopes: tuple[str, ...] = ()

    @classmethod
    def bot(cls, *, agent_id: str, controller: str, issuer: str, scopes: frozenset[str] | tuple[str, ...]) -> Identity:
        return cls(
            kind="bot",
            display_name=agent_id,
            agent_id=agent_id,
            controller=controller,
            issuer=issuer,
            scopes=tuple(sorted(scopes)),
        )

    @classmethod
    def human(cls, display_name: str) -> Identity:
        return cls(kind="human", display_name=display_name)

    def to_json(self) -> dict[str, object]:
        if self.kind == "human":
            return {"kind": "human", "display_name": self.display_name}
        return {
            "kind": "bot",
            "display_name": self.display_name,
            "agent_id": self.agent_id,
            "controller": self.controller,
            "issuer": self.issuer,
            "scopes": list(self.scopes),
        }


INTERRUPTION_MODES = ("auto", "off")
MAX_INTERRUPTION_MS = 10_000


@dataclass(frozen=True, slots=True)
class Interruption:
    """A room's barge-in rule: in ``auto``, a human speaking ``min_speech_ms`` while a
    bot's speech plays clears that bot's queue (docs/protocol.md, "Barge-in")."""

    mode: str = "auto"
    min_speech_ms: int = 200

    @property
    def after_ms(self) -> int | None:
        """How long a human must speak to interrupt, or None when interruptions are off."""
        return self.min_speech_ms if self.mode == "auto" else None

    def to_json(self) -> dict[str, object]:
        return {"mode": self.mode, "min_speech_ms": self.min_speech_ms}


@dataclass(frozen=True, slots=True)
class Room:
    """One call. ``owner`` is the controller (``ctl``) of the bot that created it.

    ``invite_secret`` is known only to the process that created the room (it goes
    out once, in the create response's ``invite_url``); a room restored from its
    record (``room_from_record_untrusted``) has ``""`` there. Invites are checked
    against ``invite_digest``, which both have.
    """

    room_id: str
    owner: str
    invite_secret: str = field(repr=False)
    created_at: float
    expires_at: float
    max_human_participants: int
    max_bot_participants: int
    state: RoomState = RoomState.OPEN
    created_by: str = ""
    interruption: Interruption = Interruption()
    invite_digest: str = field(default="", repr=False)

    def record(self) -> dict[str, str]:
        """What a clustered node stores about the room so it outlives a restart
        (docs/architecture.md): everything but the invite secret, which only its
        digest stands for."""
        return {
            "room_id": self.room_id,
            "owner": self.owner,
            "created_by": self.created_by,
            "created_at": repr(self.created_at),
            "expires_at": repr(self.expires_at),
            "max_humans": str(self.max_human_participants),
            "max_bots": str(self.max_bot_participants),
            "interruption": self.interruption.mode,
            "interruption_ms": str(self.interruption.min_speech_ms),
            "invite_digest": self.invite_digest,
        }


# The fields of ``Room.record()``; a record lacking one is refused.
ROOM_RECORD_FIELDS = frozenset(Room("", "", "", 0.0, 0.0, 0, 0).record())
_DIGEST_CHARS = frozenset("0123456789abcdef")


def room_from_record_untrusted(record: object) -> Room:
    """The open room a ``Room.record()`` describes (read back from Redis).

    Raises:
        RoomRecordError: not such a record (a field missing, of the wrong type or out of range).
    """
    if not isinstance(record, dict) or not all(isinstance(record.get(name), str) for name in ROOM_RECORD_FIELDS):
        raise RoomRecordError("a room record needs every field of Room.record() as a string")
    try:
        room = Room(
            room_id=record["room_id"],
            owner=record["owner"],
            invite_secret="",
            created_at=float(record["created_at"]),
            expires_at=float(record["expires_at"]),
            max_human_participants=int(record["max_humans"]),
            max_bot_participants=int(record["max_bots"]),
            created_by=record["created_by"],
            interruption=Interruption(record["interruption"], int(record["interruption_ms"])),
            invite_digest=record["invite_digest"],
        )
    except ValueError as exc:
        raise RoomRecordError(f"a room record has a malformed number ({exc})") from None
    if not (room.room_id and room.owner and len(room.invite_digest) == 64 and set(room.invite_digest) <= _DIGEST_CHARS):
        raise RoomRecordError("a room record needs a room id, an owner and a SHA-256 invite digest")
    if not (0 <= room.max_human_participants <= 1000 and 0 <= room.max_bot_participants <= 1000):
        raise RoomRecordError("a room record's participant limits are out of range")
    if room.interruption.mode not in INTERRUPTION_MODES or not 20 <= room.interruption.min_speech_ms <= MAX_INTERRUPTION_MS:
        raise RoomRecordError("a room record's interruption rule is out of range")
    if not (math.isfinite(room.created_at) and math.isfinite(room.expires_at)):
        raise RoomRecordError("a room record's times are not numbers")
    return room


@dataclass(frozen=True, slots=True)
class Session:
    """One participant's presence in a room.

    ``session_id`` and ``ice_pwd`` are secrets (the session id authenticates the
    bot's WebSocket; the ICE password keys its STUN checks); ``participant_id``
    is the public name other participants see.
    """

    session_id: str = field(repr=False)
    room_id: str
    participant_id: str
    kind: str
    identity: Identity
    media: MediaSpec
    capabilities: Capabilities
    ssrc: int
    ice_ufrag: str
    ice_pwd: str = field(repr=False)
    created_at: float
    expires_at: float
    muted: bool = False
    # The room's barge-in rule, copied at join (a room's settings never change).
    interruption_ms: int | None = 200
    # The SSRC of the mixed stream the participant receives (media.receive
    # "mixed"), unique in the room like participants' SSRCs; None otherwise.
    mix_ssrc: int | None = None

    @property
    def transport(self) -> str:
        return self.media.transport

    @property
    def encoding(self) -> str:
        return self.media.encoding

    @property
    def sample_rate(self) -> int:
        return self.media.sample_rate

    @property
    def send_sample_rate(self) -> int:
        return self.media.send_rate

    @property
    def receive_sample_rate(self) -> int:
        return self.media.receive_rate

    @property
    def receive(self) -> str:
        return self.media.receive

    @property
    def delivery(self) -> str:
        return self.media.delivery

    def public_json(self) -> dict[str, object]:
        """What other participants and the room's owner may see (no secrets)."""
        return {
            "participant_id": self.participant_id,
            **self.identity.to_json(),
            "transport": self.media.transport,
            "muted": self.muted,
            "capabilities": self.capabilities.to_json(),
        }


# --- events -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RoomCreated:
    room: Room


@dataclass(frozen=True, slots=True)
class RoomClosed:
    room: Room
    reason: str


@dataclass(frozen=True, slots=True)
class SessionAdded:
    session: Session


@dataclass(frozen=True, slots=True)
class SessionRemoved:
    session: Session
    reason: str


@dataclass(frozen=True, slots=True)
class SessionUpdated:
    session: Session


RegistryEvent = Union[RoomCreated, RoomClosed, SessionAdded, SessionRemoved, SessionUpdated]
Listener = Callable[[RegistryEvent], None]


class RoomStore(Protocol):
    """What the rest of BotCall needs from a room registry."""

    def add_listener(self, listener: Listener) -> None: ...
    def remove_listener(self, listener: Listener) -> None: ...
    def create_room(
        self,
        *,
        owner: str,
        created_by: str,
        now: float,
        expires_in: int | None = None,
        max_human_participants: int | None = None,
        interruption: Interruption | None = None,
    ) -> Room: ...
    def get_room(self, room_id: str, now: float) -> Room: ...
    def sessions_in_room(self, room_id: str) -> tuple[Session, ...]: ...
    def join_bot(
        self,
        room_id: str,
        *,
        identity: Identity,
        media: MediaSpec,
        capabilities: Capabilities,
        not_after: float,
        now: float,
    ) -> Session: ...
    def join_human(
        self,
        room_id: str,
        invite_secret: object,
        display_name: object,
        *,
        now: float,
        media: MediaSpec = ...,
        capabilities: Capabilities = ...,
    ) -> Session: ...
    def leave(self, session_id: str, reason: str, *, now: float) -> Session | None: ...
    def set_muted(self, session_id: str, muted: bool) -> Session: ...
    def restart_ice(self, session_id: str) -> Session: ...
    def close_room(self, room_id: str, reason: str, *, now: float) -> Room | None: ...
    def restore_room(self, room: Room, *, now: float) -> bool: ...
    def remember_closed(self, room_id: str, reason: str, at: float) -> None: ...
    def session_by_id(self, session_id: str) -> Session | None: ...
    def session_by_ufrag(self, ice_ufrag: str) -> Session | None: ...
    def rooms(self) -> Iterator[Room]: ...
    def expire(self, now: float) -> list[RegistryEvent]: ...
    @property
    def live_rooms(self) -> int: ...
    @property
    def live_sessions(self) -> int: ...


def _random_chars(alphabet: str, length: int) -> str:
    return "".join(secrets.choice(alphabet) for _ in range(length))


def _new_room_id() -> str:
    # Three groups of four [a-z0-9]: about 62 bits, readable aloud. Room ids are
    # not secrets (the invite secret is); they only need to be unique.
    return "-".join(_random_chars(_ROOM_ID_CHARS, 4) for _ in range(3))


class RoomRegistry:
    """The in-memory ``RoomStore``.

    Args:
        config: room defaults and limits (``room_*``, ``max_*``, ``closed_rooms_*``,
            ``max_display_name_chars``).
    """

    def __init__(self, config: Config) -> None:
        self.config = config
        self._rooms: dict[str, Room] = {}
        self._room_sessions: dict[str, dict[str, Session]] = {}
        self._sessions: dict[str, Session] = {}
        self._by_ufrag: dict[str, str] = {}
        self._owner_rooms: dict[str, set[str]] = {}
        self._empty_since: dict[str, float] = {}
        self._closed: OrderedDict[str, tuple[str, float]] = OrderedDict()
        self._listeners: list[Listener] = []

    # --- listeners ----------------------------------------------------------------------

    def add_listener(self, listener: Listener) -> None:
        """Call ``listener(event)`` after every change."""
        self._listeners.append(listener)

    def remove_listener(self, listener: Listener) -> None:
        self._listeners.remove(listener)

    def _emit(self, events: list[RegistryEvent]) -> None:
        for event in events:
            for listener in tuple(self._listeners):
                listener(event)

    # --- queries --------------------------------------------------------------------------

    @property
    def live_rooms(self) -> int:
        return len(self._rooms)

    @property
    def live_sessions(self) -> int:
        return len(self._sessions)

    def rooms(self) -> Iterator[Room]:
        return iter(tuple(self._rooms.values()))

    def live_rooms_of(self, owner: str) -> int:
        return len(self._owner_rooms.get(owner, ()))

    def get_room(self, room_id: str, now: float) -> Room:
        """The open room ``room_id``.

        Raises:
            NotFound: ``room_not_found``: no such room (or closed too long ago to remember).
            Gone: ``room_expired`` (past ``expires_at``) or ``room_closed`` (deleted, or
                closed after standing empty).
        """
        room = self._rooms.get(room_id)
        if room is not None:
            if room.expires_at <= now:
                raise Gone("the room has expired", code="room_expired")
            return room
        closed = self._closed.get(room_id)
        if closed is not None:
            if closed[0] == Reason.EXPIRED:
                raise Gone("the room has expired", code="room_expired")
            raise Gone(f"the room was closed ({closed[0]})", code="room_closed")
        raise NotFound("no such room", code="room_not_found")

    def sessions_in_room(self, room_id: str) -> tuple[Session, ...]:
        return tuple(self._room_sessions.get(room_id, {}).values())

    def session_by_id(self, session_id: str) -> Session | None:
        return self._sessions.get(session_id)

    def session_by_ufrag(self, ice_ufrag: str) -> Session | None:
        session_id = self._by_ufrag.get(ice_ufrag)
        return None if session_id is None else self._sessions.get(session_id)

    # --- rooms ------------------------------------------------------------------------------

    def create_room(
        self,
        *,
        owner: str,
        created_by: str,
        now: float,
        expires_in: int | None = None,
        max_human_participants: int | None = None,
        interruption: Interruption | None = None,
    ) -> Room:
        """Open a room owned by controller ``owner``.

        Args:
            owner: the creating attestation's ``ctl``.
            created_by: the creating agent's id (for display and logs).
            now: Unix time.
            expires_in: lifetime in seconds (default ``room_default_expires_in``).
            max_human_participants: 0 to ``room_max_humans`` (default ``room_default_max_humans``).
            interruption: the barge-in rule (default ``auto`` after 200 ms).

        Returns:
            The new room.

        Raises:
            BadRequest: ``invalid_field`` for out-of-range values.
            RateLimited: ``controller_room_limit`` when ``owner`` has too many live rooms.
            ServiceUnavailable: ``server_full`` (503) when the server holds ``max_rooms_total`` rooms.
        """
        cfg = self.config
        if expires_in is None:
            expires_in = cfg.room_default_expires_in
        if max_human_participants is None:
            max_human_participants = cfg.room_default_max_humans
        if not 1 <= expires_in <= cfg.room_max_expires_in:
            raise BadRequest(f"expires_in must be 1-{cfg.room_max_expires_in}", code="invalid_field")
        if not 0 <= max_human_participants <= cfg.room_max_humans:
            raise BadRequest(f"max_human_participants must be 0-{cfg.room_max_humans}", code="invalid_field")
        if interruption is None:
            interruption = Interruption()
        if interruption.mode not in INTERRUPTION_MODES:
            raise BadRequest(f"interruption.mode must be one of {INTERRUPTION_MODES}", code="invalid_field")
        if not 20 <= interruption.min_speech_ms <= MAX_INTERRUPTION_MS:
            raise BadRequest(f"interruption.min_speech_ms must be 20-{MAX_INTERRUPTION_MS}", code="invalid_field")
        owned = self._owner_rooms.get(owner, set())
        if len(owned) >= cfg.max_live_rooms_per_controller:
            soonest = min(self._rooms[r].expires_at for r in owned)
            raise RateLimited(
                f"controller already has {len(owned)} live rooms (the limit)",
                retry_after=max(1.0, soonest - now),
                code="controller_room_limit",
            )
        if len(self._rooms) >= cfg.max_rooms_total:
            raise ServiceUnavailable("the server holds as many rooms as it may")
        room_id = _new_room_id()
        while room_id in self._rooms or room_id in self._closed:
            room_id = _new_room_id()
        secret = new_invite_secret()
        room = Room(
            room_id=room_id,
            owner=owner,
            invite_secret=secret,
            invite_digest=invite_digest(secret),
            created_at=now,
            expires_at=now + expires_in,
            max_human_participants=max_human_participants,
            max_bot_participants=cfg.room_max_bots,
            created_by=created_by,
            interruption=interruption,
        )
        self._rooms[room_id] = room
        self._room_sessions[room_id] = {}
        self._owner_rooms.setdefault(owner, set()).add(room_id)
        self._empty_since[room_id] = now
        self._emit([RoomCreated(room)])
        return room

    def restore_room(self, room: Room, *, now: float) -> bool:
        """Hold ``room`` again, as its record in Redis or the rooms journal describes
        it (the node or server restarted, docs/architecture.md): open, with no sessions (participants join
        again), its empty timeout counted from ``now``. Emits ``RoomCreated``.

        Returns:
            Whether it was restored: not when it has expired, its id is already
            known here, or the server holds ``max_rooms_total`` rooms.
        """
        if room.expires_at <= now or room.room_id in self._rooms or room.room_id in self._closed:
            return False
        if len(self._rooms) >= self.config.max_rooms_total:
            return False
        room = replace(room, state=RoomState.OPEN)
        self._rooms[room.room_id] = room
        self._room_sessions[room.room_id] = {}
        self._owner_rooms.setdefault(room.owner, set()).add(room.room_id)
        self._empty_since[room.room_id] = now
        self._emit([RoomCreated(room)])
        return True

    def remember_closed(self, room_id: str, reason: str, at: float) -> None:
        """Remember that ``room_id`` closed with ``reason`` at ``at`` before a restart
        (the rooms journal, ``room_journal.py``): it answers ``410`` as if it had
        closed here, for ``closed_rooms_remembered_s`` after ``at``."""
        if room_id in self._rooms:
            return
        self._closed[room_id] = (reason, at)
        self._closed.move_to_end(room_id)
        while len(self._closed) > self.config.closed_rooms_remembered:
            self._closed.popitem(last=False)

    def close_room(self, room_id: str, reason: str, *, now: float) -> Room | None:
        """Close a room for everyone: every session is removed with ``reason``.

        Returns:
            The closed room (state ``closed``), or ``None`` if it was not open.
        """
        events: list[RegistryEvent] = []
        room = self._close_room(room_id, reason, now, events)
        self._emit(events)
        return room

    def _close_room(self, room_id: str, reason: str, now: float, events: list[RegistryEvent]) -> Room | None:
        room = self._rooms.pop(room_id, None)
        if room is None:
            return None
        # RoomClosed first: listeners tell everyone in the room why before
        # their sessions end (the WebSocket hub sends room_closed, then closes).
        closed = replace(room, state=RoomState.CLOSED)
        events.append(RoomClosed(closed, reason))
        for session in self._room_sessions.pop(room_id, {}).values():
            self._forget_session(session)
            events.append(SessionRemoved(session, reason))
        owned = self._owner_rooms.get(room.owner)
        if owned is not None:
            owned.discard(room_id)
            if not owned:
                del self._owner_rooms[room.owner]
        self._empty_since.pop(room_id, None)
        self._closed[room_id] = (reason, now)
        self._closed.move_to_end(room_id)
        while len(self._closed) > self.config.closed_rooms_remembered:
            self._closed.popitem(last=False)
        return closed

    # --- sessions -----------------------------------------------------------------------------

    def _check_capacity(self) -> None:
        if len(self._sessions) >= self.config.max_sessions_total:
            raise ServiceUnavailable("the server holds as many sessions as it may")

    def _count(self, room_id: str, kind: str) -> int:
        return sum(1 for s in self._room_sessions[room_id].values() if s.kind == kind)

    def _add_session(
        self,
        room: Room,
        *,
        kind: str,
        identity: Identity,
        media: MediaSpec,
        capabilities: Capabilities,
        now: float,
        expires_at: float,
    ) -> Session:
        members = self._room_sessions[room.room_id]
        ssrcs = {s.ssrc for s in members.values()} | {s.mix_ssrc for s in members.values() if s.mix_ssrc is not None}
        participants = {s.participant_id for s in members.values()}
        ssrc = secrets.randbits(32)
        while ssrc in ssrcs:
            ssrc = secrets.randbits(32)
        mix_ssrc: int | None = None
        if media.mixed:
            ssrcs.add(ssrc)
            mix_ssrc = secrets.randbits(32)
            while mix_ssrc in ssrcs:
                mix_ssrc = secrets.randbits(32)
        participant_id = "p-" + secrets.token_hex(4)
        while participant_id in participants:
            participant_id = "p-" + secrets.token_hex(4)
        ufrag = _random_chars(_ICE_CHARS, 8)
        while ufrag in self._by_ufrag:
            ufrag = _random_chars(_ICE_CHARS, 8)
        session = Session(
            session_id="sess-" + secrets.token_urlsafe(24),
            room_id=room.room_id,
            participant_id=participant_id,
            kind=kind,
            identity=identity,
            media=media,
            capabilities=capabilities,
            ssrc=ssrc,
            ice_ufrag=ufrag,
            ice_pwd=_random_chars(_ICE_CHARS, 24),
            created_at=now,
            expires_at=expires_at,
            interruption_ms=room.interruption.after_ms,
            mix_ssrc=mix_ssrc,
        )
        members[session.session_id] = session
        self._sessions[session.session_id] = session
        self._by_ufrag[ufrag] = session.session_id
        self._empty_since.pop(room.room_id, None)
        self._emit([SessionAdded(session)])
        return session

    def join_bot(
        self,
        room_id: str,
        *,
        identity: Identity,
        media: MediaSpec,
        capabilities: Capabilities,
        not_after: float,
        now: float,
    ) -> Session:
        """Add a verified bot to a room.

        Args:
            room_id: the room.
            identity: the bot's verified identity (``Identity.bot``).
            media: its transport and encoding.
            capabilities: what it says it can do.
            not_after: the attestation's ``exp``; the session ends by then.
            now: Unix time.

        Returns:
            The new session; ``expires_at`` is the earlier of the room's and ``not_after``.

        Raises:
            NotFound, Gone: see ``get_room``.
            Forbidden: ``controller_mismatch`` when the bot's controller does not own the room.
            Conflict: ``room_full`` when the room has ``max_bot_participants`` bots.
            ServiceUnavailable: ``server_full`` (503).
        """
        room = self.get_room(room_id, now)
        if identity.controller != room.owner:
            raise Forbidden("the attestation's controller does not own this room", code="controller_mismatch")
        if self._count(room_id, "bot") >= room.max_bot_participants:
            raise Conflict("the room has no space for another bot", code="room_full")
        self._check_capacity()
        return self._add_session(
            room,
            kind="bot",
            identity=identity,
            media=media,
            capabilities=capabilities,
            now=now,
            expires_at=min(room.expires_at, not_after),
        )

    def join_human(
        self,
        room_id: str,
        invite_secret: object,
        display_name: object,
        *,
        now: float,
        media: MediaSpec = MediaSpec(transport="webrtc"),
        capabilities: Capabilities = Capabilities(),
    ) -> Session:
        """Add a human who holds the room's invite secret.

        Args:
            room_id: the room (from the invite URL).
            invite_secret: the secret from the invite URL (compared in constant time).
            display_name: the name the human chose (1 to ``max_display_name_chars``
                printable characters after trimming).
            now: Unix time.
            media: defaults to WebRTC Opus.
            capabilities: defaults to audio in and out.

        Returns:
            The new session, expiring with the room.

        Raises:
            NotFound, Gone: see ``get_room``.
            Forbidden: ``invite_invalid`` for a wrong secret.
            BadRequest: ``invalid_display_name``.
            Conflict: ``room_full`` when the room has ``max_human_participants`` humans.
            ServiceUnavailable: ``server_full`` (503).
        """
        room = self.get_room(room_id, now)
        if not invite_matches_digest(room.invite_digest, invite_secret):
            raise Forbidden("the invite is not valid for this room", code="invite_invalid")
        if not isinstance(display_name, str):
            raise BadRequest("display_name must be a string", code="invalid_display_name")
        name = display_name.strip()
        if not 1 <= len(name) <= self.config.max_display_name_chars or not name.isprintable():
            raise BadRequest(
                f"display_name must be 1-{self.config.max_display_name_chars} printable characters",
                code="invalid_display_name",
            )
        if self._count(room_id, "human") >= room.max_human_participants:
            raise Conflict("the room has no space for another person", code="room_full")
        self._check_capacity()
        return self._add_session(
            room,
            kind="human",
            identity=Identity.human(name),
            media=media,
            capabilities=capabilities,
            now=now,
            expires_at=room.expires_at,
        )

    def _forget_session(self, session: Session) -> None:
        self._sessions.pop(session.session_id, None)
        if self._by_ufrag.get(session.ice_ufrag) == session.session_id:
            del self._by_ufrag[session.ice_ufrag]

    def leave(self, session_id: str, reason: str, *, now: float) -> Session | None:
        """Remove one session. The room starts its empty timeout if it was the last.

        Returns:
            The removed session, or ``None`` if there was none.
        """
        session = self._sessions.get(session_id)
        if session is None:
            return None
        self._forget_session(session)
        members = self._room_sessions.get(session.room_id)
        if members is not None:
            members.pop(session_id, None)
            if not members:
                self._empty_since[session.room_id] = now
        self._emit([SessionRemoved(session, reason)])
        return session

    def set_muted(self, session_id: str, muted: bool) -> Session:
        """Record a participant's mute state.

        Raises:
            NotFound: ``session_not_found``.
        """
        session = self._sessions.get(session_id)
        if session is None:
            raise NotFound("no such session", code="session_not_found")
        if session.muted == bool(muted):
            return session  # nothing changed: nobody needs telling (a toggle flood costs nothing)
        updated = replace(session, muted=bool(muted))
        self._sessions[session_id] = updated
        self._room_sessions[session.room_id][session_id] = updated
        self._emit([SessionUpdated(updated)])
        return updated

    def restart_ice(self, session_id: str) -> Session:
        """Give a session new ICE credentials: a browser's ICE restart (RFC 8445 §9).

        Nobody else is told: the credentials only go into the SDP answer, and
        the relay's index follows in ``MediaService.add_browser``.

        Returns:
            The session with its new ``ice_ufrag`` and ``ice_pwd``.

        Raises:
            NotFound: ``session_not_found``.
        """
        session = self._sessions.get(session_id)
        if session is None:
            raise NotFound("no such session", code="session_not_found")
        ufrag = _random_chars(_ICE_CHARS, 8)
        while ufrag in self._by_ufrag:
            ufrag = _random_chars(_ICE_CHARS, 8)
        updated = replace(session, ice_ufrag=ufrag, ice_pwd=_random_chars(_ICE_CHARS, 24))
        if self._by_ufrag.get(session.ice_ufrag) == session_id:
            del self._by_ufrag[session.ice_ufrag]
        self._by_ufrag[ufrag] = session_id
        self._sessions[session_id] = updated
        self._room_sessions[session.room_id][session_id] = updated
        return updated

    # --- time -------------------------------------------------------------------------------------

    def expire(self, now: float) -> list[RegistryEvent]:
        """Remove what has run out at ``now``: sessions past ``expires_at``, rooms past
        ``expires_at``, rooms empty for ``room_empty_timeout_s``; forget old closed rooms.

        Returns:
            The events emitted (also delivered to listeners).
        """
        events: list[RegistryEvent] = []
        timeout = self.config.room_empty_timeout_s
        # Rooms first: a session ending with its room hears room_closed.
        for room in list(self._rooms.values()):
            if room.expires_at <= now:
                self._close_room(room.room_id, Reason.EXPIRED, now, events)
            else:
                empty_since = self._empty_since.get(room.room_id)
                if empty_since is not None and now - empty_since >= timeout:
                    self._close_room(room.room_id, Reason.EMPTY, now, events)
        for session in [s for s in self._sessions.values() if s.expires_at <= now]:
            self._forget_session(session)
            members = self._room_sessions[session.room_id]
            del members[session.session_id]
            if not members:
                self._empty_since[session.room_id] = now
            events.append(SessionRemoved(session, Reason.EXPIRED))
        horizon = now - self.config.closed_rooms_remembered_s
        while self._closed:
            room_id, (_, closed_at) = next(iter(self._closed.items()))
            if closed_at > horizon:
                break
            del self._closed[room_id]
        self._emit(events)
        return events
