"""WebSocket routes: every bot's control channel (and audio, where UDP is not used).

``/v1/stream/<session_id>`` is the ``websocket_url`` of a join response. The
session id is the credential: unguessable, valid until the session ends. A
second connection with the same session id replaces the first (a bot that
reconnects after a network blip).

Each connection has one outbox of events and, for WebSocket-transport bots,
the audio queue its :class:`~botcall.relay.service.WsSink` fills. The hub turns
registry events (joins, leaves, mutes, room closure) into WebSocket events for
everyone in the room. The message contract is in ``docs/protocol.md``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import trio
from quart import Quart, websocket
from quart.wrappers import Websocket

from botcall.auth.invites import invite_matches_digest
from botcall.auth.ratelimit import TokenBucket
from botcall.config import Config, RateLimit
from botcall.errors import ApiError, SdpError, SignalingError
from botcall.logs import log_context
from botcall.queues import DropOldestQueue
from botcall.relay.core import MediaPeer
from botcall.relay.service import MediaService, WsSink
from botcall.relay.ws_audio import AudioOut, WsAudio
from botcall.signaling.forwarded import Network, client_address
from botcall.signaling import messages as msg
from botcall.signaling.event_log import MAX_EVENTS, EventLog, ResumeError, parse_last_seq_untrusted
from botcall.signaling.strict_json import JsonObject
from botcall.signaling.turn import ice_servers_json
from botcall.signaling.rooms import (
    Capabilities,
    Reason,
    RegistryEvent,
    Room,
    RoomClosed,
    RoomStore,
    Session,
    SessionAdded,
    SessionRemoved,
    SessionUpdated,
)

log = logging.getLogger("botcall.ws")

EVENT_QUEUE = 256
FRAME = 0.020
SEND_TIMEOUT = 5.0
HELLO_TIMEOUT = 10.0
CHAT_LIMIT = RateLimit(rate=5.0, burst=10)
# A connection that keeps sending after this many refused messages in a row
# (each answered with rate_limited) is closed with 1008: it is not listening.
MAX_REFUSED_IN_A_ROW = 200
# A connection is told (``warning`` unknown_field, and one log line) about an
# ignored member once per (message type, member name); it remembers at most this
# many pairs, then stops telling.
MAX_WARNED_FIELDS = 64
# pcm16 frames encoded per scheduler pass (relay/ws_audio.py keeps the backlog
# bounded): one large message never holds the event loop for long (docs/security.md).
ENCODE_BATCH = 2
# pcm16 a bot sends far ahead of real time (more than AHEAD_FREE_MS queued) is
# encoded at most ENCODE_AHEAD_LIMIT.rate frames a second for the whole process
# (5 s of audio per second, about 10 % of a core): a text-to-speech burst
# leaves the CPU idle between batches, so the relay is scheduled at once when
# another call's packet arrives, even on a busy machine. Real-time senders are
# never paced.
AHEAD_FREE_MS = 1000
ENCODE_AHEAD_LIMIT = RateLimit(rate=250.0, burst=50)
HUMAN_CAPABILITIES = Capabilities(audio_in=True, audio_out=True, video=False, text_chat=True)

_CLOSE_FOR_REASON = {
    Reason.LEFT: (msg.CLOSE_NORMAL, "left"),
    Reason.EXPIRED: (msg.CLOSE_SESSION_EXPIRED, "session expired"),
    Reason.DELETED: (msg.CLOSE_ROOM_CLOSED, "room closed"),
    Reason.EMPTY: (msg.CLOSE_ROOM_CLOSED, "room closed"),
    Reason.SHUTDOWN: (msg.CLOSE_GOING_AWAY, "server shutting down"),
}
DISCONNECTED = "disconnected"


class SignalingState(Protocol):
    """What the WebSocket routes use of the app state (``http_api.AppState``, which
    imports this module, so it is described here rather than imported)."""

    @property
    def config(self) -> Config: ...
    @property
    def registry(self) -> RoomStore: ...
    @property
    def clock(self) -> Callable[[], float]: ...
    @property
    def trusted_proxies(self) -> tuple[Network, ...]: ...
    def started_hub(self) -> Hub: ...
    def started_media(self) -> MediaService: ...


def participant_json(session: Session, *, speaking: bool = False) -> JsonObject:
    """How a participant is described to the others (no secrets)."""
    return {**session.public_json(), "ssrc": session.ssrc, "speaking": speaking}


@dataclass(eq=False)
class Connection:
    """One open WebSocket: a session's, or a browser still in the lobby (no session yet)."""

    room_id: str
    session: Session | None = None
    # The client's address (behind a trusted proxy: the forwarded one), for budgets.
    client_ip: str = "unknown"
    outbox: DropOldestQueue[str] = field(default_factory=lambda: DropOldestQueue(EVENT_QUEUE))
    close_code: int | None = None
    close_reason: str = ""
    # Set while this connection's own join runs: the events it causes are about itself.
    joining: bool = False
    # Counted against its room's lobby (no session yet).
    in_lobby: bool = False
    # A bot session's numbered events (``seq``, kept for replay): set by ``Hub.attach``,
    # with ``deliver``, which numbers an event, keeps it and hands it to the
    # session's current connection (this one, or a newer one that replaced it).
    log: EventLog | None = None
    deliver: Callable[[str], None] | None = None

    def send_event(self, event: JsonObject) -> None:
        """Queue an event; a bot's is numbered and kept in its session's log."""
        text = msg.encode(event)
        if self.deliver is not None:
            self.deliver(text)
        else:
            self.outbox.put_nowait(text)

    def send_unnumbered(self, event: JsonObject) -> None:
        """Queue an event that is about this connection only (``welcome``,
        ``events_lost``): no ``seq``, never replayed."""
        self.outbox.put_nowait(msg.encode(event))

    def request_close(self, code: int, reason: str) -> None:
        """Close after the events already queued are sent."""
        if self.close_code is None:
            self.close_code, self.close_reason = code, reason
            self.outbox.close()


class Hub:
    """Who is connected in each room, and what they are told.

    Registered as a registry listener; everything here is synchronous and runs
    inside the registry call that caused the event.
    """

    def __init__(
        self,
        clock: Callable[[], float],
        *,
        max_connections: int = 20000,
        connect_grace: float = 30.0,
        max_per_ip: int = 32,
        max_lobby_per_room: int = 32,
        is_speaking: Callable[[str], bool] | None = None,
        replay_max_events: int = MAX_EVENTS,
    ) -> None:
        self._clock = clock
        self._by_session: dict[str, Connection] = {}
        # Every bot session's event log, connected or not (bounded: one per
        # session, and sessions are bounded by max_sessions_total).
        self._logs: dict[str, EventLog] = {}
        self._logs_by_room: dict[str, dict[str, EventLog]] = {}
        self.replay_max_events = replay_max_events
        # Events bots missed for good: asked for on resume, already evicted (events_lost).
        self.events_lost = 0
        self._by_room: dict[str, set[Connection]] = {}
        self._per_ip: dict[str, int] = {}
        self._lobby: dict[str, int] = {}
        self._closed_rooms: set[str] = set()
        self._all_closed = trio.Event()
        self._all_closed.set()
        self.max_per_ip = max_per_ip
        self.max_lobby_per_room = max_lobby_per_room
        # Encoding of bots' audio sent ahead, paced for the whole process (frames).
        self.encode_bucket = TokenBucket(tokens=ENCODE_AHEAD_LIMIT.burst, updated_at=0.0)  # on the Trio clock
        # Sessions with no open WebSocket, and since when: after connect_grace
        # they are ended (a bot that joined and vanished, a dropped browser).
        self._unconnected: dict[str, float] = {}
        self._connections = 0
        self.max_connections = max_connections
        # Whether a session is sending sound now (the server passes the relay's answer).
        self.is_speaking: Callable[[str], bool] = is_speaking or (lambda session_id: False)
        self.connect_grace = connect_grace

    def expired(self, now: float) -> list[str]:
        """Sessions that have had no WebSocket for longer than ``connect_grace``."""
        horizon = now - self.connect_grace
        return [session_id for session_id, since in self._unconnected.items() if since <= horizon]

    @property
    def connection_count(self) -> int:
        return self._connections

    async def wait_all_closed(self) -> None:
        """Return once no WebSocket is open (graceful shutdown waits on this)."""
        await self._all_closed.wait()

    def watch(self, connection: Connection) -> None:
        """Let a connection hear its room's events (a browser in the lobby).

        Raises:
            SignalingError: the server already holds ``max_connections``, the
                client address holds ``max_per_ip``, or the room's lobby holds
                ``max_lobby_per_room`` (a lobby connection has no session yet).
        """
        room = self._by_room.get(connection.room_id)
        if room is not None and connection in room:
            return
        if self._connections >= self.max_connections:
            raise SignalingError("server has too many connections", code="server_full", close_code=msg.CLOSE_TRY_AGAIN_LATER)
        if self._per_ip.get(connection.client_ip, 0) >= self.max_per_ip:
            raise SignalingError(
                f"at most {self.max_per_ip} WebSockets at once from one address", code="too_many_connections", close_code=msg.CLOSE_TRY_AGAIN_LATER
            )
        lobby = connection.session is None
        if lobby and self._lobby.get(connection.room_id, 0) >= self.max_lobby_per_room:
            raise SignalingError(
                f"at most {self.max_lobby_per_room} people may wait in this call's lobby", code="lobby_full", close_code=msg.CLOSE_TRY_AGAIN_LATER
            )
        self._by_room.setdefault(connection.room_id, set()).add(connection)
        self._connections += 1
        self._all_closed = trio.Event() if self._all_closed.is_set() else self._all_closed
        self._per_ip[connection.client_ip] = self._per_ip.get(connection.client_ip, 0) + 1
        if lobby:
            connection.in_lobby = True
            self._lobby[connection.room_id] = self._lobby.get(connection.room_id, 0) + 1

    def _leave_lobby(self, connection: Connection) -> None:
        if connection.in_lobby:
            connection.in_lobby = False
            left = self._lobby.get(connection.room_id, 0) - 1
            if left > 0:
                self._lobby[connection.room_id] = left
            else:
                self._lobby.pop(connection.room_id, None)

    def attach(self, connection: Connection) -> None:
        """Register a session's connection; an older one of the same session is closed.

        Raises:
            SignalingError: the server already holds ``max_connections``.
            ValueError: ``connection`` has no session.
        """
        session = connection.session
        if session is None:
            raise ValueError("only a session's connection can be attached")
        old = self._by_session.get(session.session_id)
        if old is not None:
            old.request_close(msg.CLOSE_ALREADY_CONNECTED, "replaced by a newer connection")
            self.detach(old)
        self.watch(connection)
        self._leave_lobby(connection)
        self._by_session[session.session_id] = connection
        connection.log = self._logs.get(session.session_id)
        if connection.log is not None:
            session_id = session.session_id
            connection.deliver = lambda text: self._deliver(session_id, text)
        self._unconnected.pop(session.session_id, None)

    def detach(self, connection: Connection) -> None:
        """Forget a connection that is closing."""
        session = connection.session
        if session is not None and self._by_session.get(session.session_id) is connection:
            del self._by_session[session.session_id]
            if connection.close_code is None:
                # The client went away on its own: it may come back within the grace.
                self._unconnected[session.session_id] = self._clock()
        room = self._by_room.get(connection.room_id)
        if room is not None and connection in room:
            room.discard(connection)
            self._connections -= 1
            self._leave_lobby(connection)
            left = self._per_ip.get(connection.client_ip, 0) - 1
            if left > 0:
                self._per_ip[connection.client_ip] = left
            else:
                self._per_ip.pop(connection.client_ip, None)
            if not room:
                del self._by_room[connection.room_id]
                self._closed_rooms.discard(connection.room_id)
            if self._connections == 0:
                self._all_closed.set()

    def describe(self, session: Session) -> JsonObject:
        """A participant as events show it."""
        return participant_json(session, speaking=self.is_speaking(session.session_id))

    def connection(self, session_id: str) -> Connection | None:
        return self._by_session.get(session_id)

    def event_log(self, session_id: str) -> EventLog | None:
        """A bot session's numbered events (None for a human or an ended session)."""
        return self._logs.get(session_id)

    def send(self, session_id: str, event: JsonObject) -> None:
        """An event for one session: a bot's is kept in its log even while its
        WebSocket is down (replayed on resume); a human's goes only to an open socket."""
        self._deliver(session_id, msg.encode(event))

    def _deliver(self, session_id: str, text: str) -> None:
        log = self._logs.get(session_id)
        connection = self._by_session.get(session_id)
        if log is not None:
            text = log.record(text)
        if connection is not None:
            connection.outbox.put_nowait(text)

    def resume(self, connection: Connection, last_seq: int) -> None:
        """Queue, after ``welcome``, what a bot that saw events up to ``last_seq``
        missed: ``events_lost`` for a range no longer held, then the held events in
        order. Call it in the same step as ``attach`` (nothing live comes between).

        Raises:
            ResumeError: ``last_seq`` is beyond the session's newest event.
        """
        log = connection.log
        if log is None:
            return
        lost, held = log.since(last_seq)
        if lost is not None:
            self.events_lost += lost.count
            connection.send_unnumbered(
                {"type": "events_lost", "first_seq": lost.first_seq, "last_seq": lost.last_seq, "count": lost.count}
            )
        for text in held:
            connection.outbox.put_nowait(text)

    def broadcast(self, room_id: str, event: JsonObject, *, exclude: str | None = None, chat_only: bool = False) -> None:
        text = msg.encode(event)
        for connection in self._by_room.get(room_id, ()):
            session = connection.session
            if connection.joining or connection.log is not None:
                continue  # a bot's: through its log, below
            if session is not None:
                if session.session_id == exclude:
                    continue
                if chat_only and session.kind == "bot" and not session.capabilities.text_chat:
                    continue
            connection.outbox.put_nowait(text)
        # Every bot in the room, its WebSocket open or not: the log numbers the
        # event and keeps it for a resume.
        for session_id, log in self._logs_by_room.get(room_id, {}).items():
            if session_id == exclude or (chat_only and not log.text_chat):
                continue
            stamped = log.record(text)
            bot = self._by_session.get(session_id)
            if bot is not None:
                bot.outbox.put_nowait(stamped)

    def _open_log(self, session: Session) -> None:
        log = EventLog(session.session_id, session.room_id, session.capabilities.text_chat, max_events=self.replay_max_events)
        self._logs[session.session_id] = log
        self._logs_by_room.setdefault(session.room_id, {})[session.session_id] = log

    def _close_log(self, session: Session) -> None:
        if self._logs.pop(session.session_id, None) is None:
            return
        logs = self._logs_by_room.get(session.room_id)
        if logs is not None:
            logs.pop(session.session_id, None)
            if not logs:
                del self._logs_by_room[session.room_id]

    def on_registry_event(self, event: RegistryEvent) -> None:
        """Registry listener."""
        if isinstance(event, SessionAdded):
            session = event.session
            self._unconnected[session.session_id] = self._clock()
            if session.kind == "bot":
                self._open_log(session)
            self.broadcast(session.room_id, {"type": "participant_joined", "participant": self.describe(session)}, exclude=session.session_id)
        elif isinstance(event, SessionRemoved):
            session = event.session
            self._unconnected.pop(session.session_id, None)
            self._close_log(session)
            if session.room_id not in self._closed_rooms:
                # (When the whole room closes, room_closed already said it all.)
                self.broadcast(
                    session.room_id,
                    {"type": "participant_left", "participant_id": session.participant_id, "reason": event.reason},
                    exclude=session.session_id,
                )
            connection = self._by_session.get(session.session_id)
            if connection is not None:
                code, reason = _CLOSE_FOR_REASON.get(event.reason, (msg.CLOSE_NORMAL, event.reason))
                connection.request_close(code, reason)
        elif isinstance(event, SessionUpdated):
            session = event.session
            connection = self._by_session.get(session.session_id)
            if connection is not None:
                connection.session = session
            self.broadcast(session.room_id, {"type": "muted", "participant_id": session.participant_id, "muted": session.muted})
        elif isinstance(event, RoomClosed):
            room_id = event.room.room_id
            self.broadcast(room_id, {"type": "room_closed", "reason": event.reason})
            connections = self._by_room.get(room_id)
            if connections:
                self._closed_rooms.add(room_id)
                code, reason = _CLOSE_FOR_REASON.get(event.reason, (msg.CLOSE_ROOM_CLOSED, "room closed"))
                for connection in connections:
                    if connection.session is None:
                        # The lobby: nobody will remove a session for these.
                        connection.request_close(code, reason)


class Channel:
    """The server side of one WebSocket: events out, messages in, shared controls.

    Args:
        state: the app state (registry, clock, hub, media).
        connection: this socket's hub entry.
        ws: the Quart websocket.
    """

    kind = "participant"

    def __init__(self, state: SignalingState, connection: Connection, ws: Websocket) -> None:
        self.state = state
        self.connection = connection
        self.ws = ws
        self._send_lock = trio.Lock()
        now = trio.current_time()
        self._chat_bucket = TokenBucket(tokens=CHAT_LIMIT.burst, updated_at=now)
        self._message_limit: RateLimit = state.config.ws_message_limit
        self._message_bucket = TokenBucket(tokens=self._message_limit.burst, updated_at=now)
        self._refused_in_a_row = 0
        self._warned_fields: set[tuple[str, str]] = set()

    @property
    def session(self) -> Session | None:
        return self.connection.session

    async def send(self, data: str | bytes) -> None:
        async with self._send_lock:
            with trio.fail_after(SEND_TIMEOUT):
                await self.ws.send(data)

    async def run(self) -> None:
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._events_out, nursery.cancel_scope)
                self.start_media(nursery)
                # Reading runs in this task (one task fewer per connection). It
                # returns once a close is requested; the sender then flushes what is
                # queued and ends the nursery.
                await self._receive()
        except* trio.TooSlowError:
            # The client stopped reading for SEND_TIMEOUT: drop it. Logged by
            # participant id only — the session id is a credential (it is in
            # the WebSocket's URL, so Quart's own error log must never see this).
            who = self.session.participant_id if self.session is not None else "a lobby client"
            log.info("WebSocket of %s in room %s closed: it stopped reading for %g s", who, self.connection.room_id, SEND_TIMEOUT)
            self.connection.request_close(msg.CLOSE_TOO_SLOW, "stopped reading")

    def start_media(self, nursery: trio.Nursery) -> None:
        """Start this channel's audio tasks, if it carries audio."""

    async def _events_out(self, scope: trio.CancelScope) -> None:
        async for text in self.connection.outbox:
            await self.send(text)
        # The outbox closes when the server ends the session: say why and go.
        scope.cancel()

    async def _receive(self) -> None:
        while True:
            data = await self.ws.receive()
            try:
                if isinstance(data, bytes):
                    await self.on_binary(data)
                else:
                    message, ignored = msg.parse_client_message_reporting_untrusted(data)
                    if ignored:
                        self.warn_ignored(message, ignored)
                    if not isinstance(message, msg.Audio):
                        self._charge_message()
                    await self.handle(message)
                self._refused_in_a_row = 0
            except SignalingError as exc:
                self.connection.send_event(msg.error_event(exc.code, exc.message))
                self._refused(exc)
            except ApiError as exc:
                self.connection.send_event(msg.error_event(exc.code, exc.message))
            if self.connection.close_code is not None:
                return

    def warn_ignored(self, message: msg.ClientMessage, fields: tuple[str, ...]) -> None:
        """Tell the client (``warning`` event) and the log, once per connection for each
        (message type, member), which members of its message were ignored."""
        kind = msg.message_type(message)
        new = tuple(name for name in fields if (kind, name) not in self._warned_fields)
        room_left = MAX_WARNED_FIELDS - len(self._warned_fields)
        new = new[:max(0, room_left)]
        if not new:
            return
        self._warned_fields.update((kind, name) for name in new)
        who = self.session.participant_id if self.session is not None else "a lobby client"
        log.info("%s sent %r with member(s) this server ignores: %s", who, kind, ", ".join(new))
        self.connection.send_event(msg.unknown_fields_event(kind, new))

    def _charge_message(self) -> None:
        """Control, chat, ping, offer…: at most ``Config.ws_message_limit`` per connection.

        Raises:
            SignalingError: ``rate_limited``.
        """
        if self._message_bucket.take(self._message_limit, trio.current_time()) > 0:
            raise SignalingError("too many messages; slow down", code="rate_limited")

    def _refused(self, error: SignalingError) -> None:
        if error.code != "rate_limited":
            return
        self._refused_in_a_row += 1
        if self._refused_in_a_row >= MAX_REFUSED_IN_A_ROW:
            self.connection.request_close(msg.CLOSE_POLICY, "too many messages after rate_limited")

    async def on_binary(self, data: bytes) -> None:
        raise SignalingError("binary frames are for WebSocket audio", code="bad_message")

    async def handle(self, message: msg.ClientMessage) -> None:
        """Controls every participant has: mute, leave, chat, ping."""
        state, session = self.state, self.session
        if isinstance(message, msg.Ping):
            self.connection.send_event({"type": "pong", "nonce": message.nonce})
        elif session is None:
            raise SignalingError("join the call first", code="not_joined")
        elif isinstance(message, msg.Control):
            if message.action == "leave":
                state.registry.leave(session.session_id, Reason.LEFT, now=state.clock())
            else:
                state.registry.set_muted(session.session_id, bool(message.value))
        elif isinstance(message, msg.Chat):
            if not session.capabilities.text_chat:
                raise SignalingError("this session did not ask for text_chat", code="chat_disabled")
            if self._chat_bucket.take(CHAT_LIMIT, trio.current_time()) > 0:
                raise SignalingError("too many chat messages", code="rate_limited")
            state.started_hub().broadcast(
                session.room_id,
                {"type": "chat", "participant_id": session.participant_id, "text": message.text},
                exclude=session.session_id,
                chat_only=True,
            )
        else:
            raise SignalingError(f"a {type(message).__name__.lower()} message is not for a {self.kind}", code="bad_message")


class BotChannel(Channel):
    """A bot's control channel, and its audio where ``media.transport`` is ``websocket``.

    The audio itself is ``relay/ws_audio.py``'s (sans-IO); this class only
    moves messages between the socket and it.

    Args:
        binary_audio: send audio to the bot as binary frames instead of JSON.
    """

    kind = "bot"

    def __init__(self, state: SignalingState, connection: Connection, ws: Websocket, *, binary_audio: bool) -> None:
        super().__init__(state, connection, ws)
        session = connection.session
        if session is None:
            raise ValueError("a bot channel needs its session")
        self.binary_audio = binary_audio
        self.relay = state.started_media().relay
        # The bot's relay peer, whatever its transport (marks and clear are for UDP bots too).
        self.media_peer = self.relay.peer(session.session_id)
        self.peer = self.media_peer if session.transport == "websocket" else None
        self.encoding = session.encoding
        self.audio = (
            WsAudio(
                self.relay, self.peer, encoding=session.encoding, sample_rate=session.sample_rate,
                send_sample_rate=session.send_sample_rate, receive_sample_rate=session.receive_sample_rate,
                mix_ssrc=session.mix_ssrc, delivery=session.delivery,
            )
            if self.peer is not None
            else None
        )

    def start_media(self, nursery: trio.Nursery) -> None:
        if self.audio is not None:
            # Paced pcm16 and the mix are popped every 20 ms; Opus and pcm16 on
            # arrival go out as packets come.
            if self.audio.ticked:
                nursery.start_soon(self._pcm_out)
            elif self.encoding == "pcm16":
                nursery.start_soon(self._pcm_arrival_out)
            else:
                nursery.start_soon(self._opus_out)

    async def handle(self, message: msg.ClientMessage) -> None:
        if isinstance(message, msg.Audio):
            self._media().audio_message(message.data, trio.current_time())
            await self._encode_pcm()
        elif isinstance(message, msg.Mark):
            self._mark(message)
        elif isinstance(message, msg.Clear):
            self._clear()
        elif isinstance(message, msg.PlayoutDelay):
            self._playout_peer().playout_delay_ms = message.ms
        else:
            await super().handle(message)

    async def on_binary(self, data: bytes) -> None:
        self._media().binary_message(data, trio.current_time())
        await self._encode_pcm()

    async def _encode_pcm(self) -> None:
        """Encode queued pcm16 ENCODE_BATCH frames per scheduler pass, before the
        next message is read: a fast sender is slowed by TCP, not refused. Audio
        sent far ahead is paced by the process's ``Hub.encode_bucket``."""
        audio = self._media()
        playout = self.peer.playout if self.peer is not None else None
        bucket = self.state.started_hub().encode_bucket
        while frames := audio.encode_pending(trio.current_time(), ENCODE_BATCH):
            if playout is not None and playout.ahead_ms() > AHEAD_FREE_MS:
                while (wait := bucket.take(ENCODE_AHEAD_LIMIT, trio.current_time(), frames)) > 0:
                    await trio.sleep(wait)
            await trio.sleep(0)

    def _playout_peer(self) -> MediaPeer:
        peer = self.media_peer
        if peer is None or peer.playout is None:
            raise SignalingError("this session has no media", code="wrong_transport")
        return peer

    def _mark(self, message: msg.Mark) -> None:
        peer = self._playout_peer()
        if self.audio is not None:
            self.audio.flush_partial(trio.current_time())
        if not self.relay.mark(peer, message.name, message.rtp_timestamp):
            raise SignalingError(f"more than {self.state.config.playout_max_marks} marks are waiting", code="too_many_marks")

    def _clear(self) -> None:
        peer = self._playout_peer()
        pending_ms = self.audio.clear_pending() if self.audio is not None else 0
        cleared = self.relay.clear(peer)
        assert cleared is not None  # a peer with a playout
        heard = self.relay.heard(peer, cleared.played_ms)
        self.connection.send_event(
            msg.cleared_event("cleared", cleared.played_ms, cleared.dropped_ms + pending_ms, cleared.marks_dropped, heard)
        )

    def _media(self) -> WsAudio:
        if self.audio is None:
            raise SignalingError("audio on the WebSocket needs media.transport = websocket", code="wrong_transport")
        return self.audio

    def _sink(self) -> WsSink:
        """Where the relay queues audio for this bot (a WebSocket-transport peer's sink)."""
        sink = self.peer.sink if self.peer is not None else None
        if not isinstance(sink, WsSink):
            raise SignalingError("audio on the WebSocket needs media.transport = websocket", code="wrong_transport")
        return sink

    async def _send_audio(self, frame: AudioOut) -> None:
        if self.binary_audio:
            await self.send(frame.binary())
            return
        event = msg.audio_event(
            frame.participant_id, frame.seq, frame.timestamp, frame.payload,
            encoding=frame.encoding, sample_rate=frame.sample_rate, stream_ms=frame.stream_ms,
        )
        if frame.encoding == "pcm16":
            event["concealed"] = frame.concealed
        await self.send(msg.encode(event))

    async def _opus_out(self) -> None:
        audio = self._media()
        sink = self._sink()
        async for speaker, data, _arrived in sink.queue:
            frame = audio.opus_out(speaker, data)
            if frame is not None:
                await self._send_audio(frame)

    async def _pcm_arrival_out(self) -> None:
        """Each speaker's packet decoded and sent the moment it arrives."""
        audio = self._media()
        sink = self._sink()
        async for speaker, data, arrived in sink.queue:
            for frame in audio.pcm_arrived(speaker, data, arrived):
                await self._send_audio(frame)

    async def _pcm_out(self) -> None:
        """Steady 20 ms PCM frames per speaker (or of the mix), through a jitter buffer each."""
        audio = self._media()
        sink = self._sink()
        tick = trio.current_time()
        while True:
            tick += FRAME
            await trio.sleep_until(tick)
            now = trio.current_time()
            while True:
                try:
                    speaker, data, arrived = sink.queue.get_nowait()
                except trio.WouldBlock:
                    break
                # The packet's own arrival time, not the tick's: the jitter buffer
                # measures jitter from it (a tick's stamp adds up to 20 ms of its own).
                audio.pcm_push(speaker, data, arrived)
            for frame in audio.pcm_pop(now):
                await self._send_audio(frame)


class HumanChannel(Channel):
    """A browser's signaling: lobby, join, offer/answer, controls, chat, playout delay."""

    kind = "human"

    def __init__(self, state: SignalingState, connection: Connection, ws: Websocket, invite: str) -> None:
        super().__init__(state, connection, ws)
        self.invite = invite

    async def handle(self, message: msg.ClientMessage) -> None:
        state = self.state
        if isinstance(message, msg.Join):
            if self.session is not None:
                raise SignalingError("already joined", code="already_joined")
            self.connection.joining = True
            try:
                session = state.registry.join_human(
                    self.connection.room_id, self.invite, message.display_name, now=state.clock(), capabilities=HUMAN_CAPABILITIES
                )
            except ApiError as exc:
                # Full, closed or expired meanwhile: say so, then close.
                self.connection.send_event(msg.error_event(exc.code, exc.message))
                self.connection.request_close(close_code_for(exc), exc.message[:120])
                return
            finally:
                self.connection.joining = False
            self.connection.session = session
            state.started_hub().attach(self.connection)
            self.connection.send_event(joined_event(state, session))
        elif isinstance(message, msg.Offer):
            if self.session is None:
                raise SignalingError("join the call first", code="not_joined")
            session_id = self.session.session_id

            def restart_ice() -> Session:
                # The answer to an ICE restart carries new credentials of ours
                # (RFC 8839 §4.4.1.1.1); the registry's ufrag index follows.
                restarted = state.registry.restart_ice(session_id)
                self.connection.session = restarted
                return restarted

            try:
                answer = state.started_media().add_browser(self.session, message.sdp, restart_ice=restart_ice)
            except SdpError as exc:
                raise SignalingError(f"cannot answer this offer: {exc}", code="bad_offer") from exc
            self.connection.send_event({"type": "answer", "sdp": answer})
        elif isinstance(message, msg.PlayoutDelay):
            if self.session is None:
                raise SignalingError("join the call first", code="not_joined")
            # The browser's jitter buffer delay (getStats, once a second): bots'
            # heard_ms subtracts it. Before the offer there is no peer to set.
            peer = state.started_media().relay.peer(self.session.session_id)
            if peer is not None:
                peer.playout_delay_ms = message.ms
        elif isinstance(message, msg.Hello):
            raise SignalingError("hello was already received", code="bad_message")
        else:
            await super().handle(message)


def close_code_for(error: ApiError) -> int:
    """The WebSocket close code for an API error met during signaling."""
    return {401: msg.CLOSE_UNAUTHORIZED, 403: msg.CLOSE_UNAUTHORIZED, 404: msg.CLOSE_NOT_FOUND, 409: msg.CLOSE_ROOM_FULL, 410: msg.CLOSE_ROOM_CLOSED, 429: msg.CLOSE_TOO_SLOW}.get(
        error.status, msg.CLOSE_BAD_MESSAGE
    )


def lobby_event(state: SignalingState, room: Room, *, resumed: bool = False) -> JsonObject:
    """What a browser sees before joining; ``resumed`` says a ``joined`` follows at once."""
    sessions = state.registry.sessions_in_room(room.room_id)
    return {
        "type": "lobby",
        "room_id": room.room_id,
        "participants": [state.started_hub().describe(s) for s in sessions],
        "max_human_participants": room.max_human_participants,
        "humans": sum(1 for s in sessions if s.kind == "human"),
        "resumed": resumed,
        # Group calls: how many downstream audio tracks to offer (docs/protocol.md).
        "receive_tracks": state.started_media().max_receive_tracks,
    }


def welcome_event(state: SignalingState, session: Session) -> JsonObject:
    """The first event on a bot's channel: who it is and who is there."""
    hub = state.started_hub()
    others = [hub.describe(s) for s in state.registry.sessions_in_room(session.room_id) if s.session_id != session.session_id]
    return {
        "type": "welcome",
        "participant_id": session.participant_id,
        "room_id": session.room_id,
        "you": hub.describe(session),
        "participants": others,
        **msg.timestamp_fields("expires_at", session.expires_at, legacy="unix"),
    }


def session_ice_servers(config: Config, session: Session) -> list[JsonObject]:
    """The session's ``ice_servers``: TURN credentials valid until it expires, or ``[]``."""
    return ice_servers_json(config.turn_uris, config.turn_secret, session.participant_id, session.expires_at)


def joined_event(state: SignalingState, session: Session) -> JsonObject:
    """A browser's welcome: as a bot's, plus the token that resumes its place after a
    drop, whether its media leg is up (a resumed browser then keeps it) and the
    TURN servers its peer connection may use."""
    connected = state.started_media().browser_connected(session.session_id)
    return {
        **welcome_event(state, session),
        "type": "joined",
        "resume": session.session_id,
        "media_connected": connected,
        "ice_servers": session_ice_servers(state.config, session),
    }


def register_websocket_routes(app: Quart, state: SignalingState) -> None:
    """Add ``/v1/stream/<session_id>`` to the app."""

    @app.websocket("/v1/stream/<session_id>")
    async def bot_stream(session_id: str) -> None:
        # The proxy's own object, to hand to other tasks; quart types the proxy as Websocket.
        ws: Websocket = websocket._get_current_object()  # type: ignore[attr-defined]
        await ws.accept()
        session = state.registry.session_by_id(session_id)
        if session is None or session.kind != "bot":
            await _reject(ws, "session_not_found", "no such session (it may have ended)", msg.CLOSE_NOT_FOUND)
            return
        hub = state.started_hub()
        raw_last_seq = ws.args.get("last_seq")
        try:
            # A resume: the seq of the last event the bot saw (docs/protocol.md "Resuming").
            last_seq = parse_last_seq_untrusted(raw_last_seq) if raw_last_seq is not None else None
            log = hub.event_log(session.session_id)
            if last_seq is not None and log is not None:
                log.since(last_seq)  # checks the range before the older connection is replaced
        except ResumeError as exc:
            await _reject(ws, "bad_last_seq", str(exc), msg.CLOSE_BAD_MESSAGE)
            return
        # The outbox takes a whole replay besides live events.
        connection = Connection(
            session.room_id, session, client_ip=websocket_client_ip(state, ws),
            outbox=DropOldestQueue(EVENT_QUEUE + hub.replay_max_events),
        )
        try:
            hub.attach(connection)
        except SignalingError as exc:
            await _reject(ws, exc.code, exc.message, exc.close_code)
            return
        channel = BotChannel(state, connection, ws, binary_audio=ws.args.get("audio") == "binary")
        try:
            # welcome, then what a resuming bot missed, then live events: all
            # queued in this one step, so nothing live can come between.
            welcome = welcome_event(state, session)
            welcome["last_seq"] = connection.log.seq if connection.log is not None else 0
            connection.send_unnumbered(welcome)
            if last_seq is not None:
                hub.resume(connection, last_seq)
            # Log lines from this socket's tasks name the room and participant (JSON logs).
            with log_context(room=session.room_id, session=session.participant_id):
                await channel.run()
        finally:
            state.started_hub().detach(connection)
            code = connection.close_code or msg.CLOSE_NORMAL
            with trio.move_on_after(1) as cleanup:
                cleanup.shield = True
                await ws.close(code, connection.close_reason)


def websocket_client_ip(state: SignalingState, ws: Websocket) -> str:
    """The client's address for budgets (the forwarded one behind a trusted proxy)."""
    return client_address(ws.remote_addr, ws.headers, state.trusted_proxies)


async def _reject(ws: Websocket, code: str, message: str, close_code: int) -> None:
    with trio.move_on_after(1):
        await ws.send(msg.encode(msg.error_event(code, message)))
        await ws.close(close_code, message[:120])


def register_human_signaling(app: Quart, state: SignalingState) -> None:
    """Add ``/v1/signal/<room_id>``: the PWA's signaling WebSocket."""

    @app.websocket("/v1/signal/<room_id>")
    async def human_signal(room_id: str) -> None:
        # The proxy's own object, to hand to other tasks; quart types the proxy as Websocket.
        ws: Websocket = websocket._get_current_object()  # type: ignore[attr-defined]
        await ws.accept()
        with trio.move_on_after(HELLO_TIMEOUT) as wait:
            first = await ws.receive()
        if wait.cancelled_caught:
            await _reject(ws, "hello_timeout", "send hello with the invite first", msg.CLOSE_BAD_MESSAGE)
            return
        try:
            hello, ignored = msg.parse_client_message_reporting_untrusted(first)
            if not isinstance(hello, msg.Hello):
                raise SignalingError("the first message must be hello with the invite", code="bad_message")
            room = state.registry.get_room(room_id, state.clock())
            if not invite_matches_digest(room.invite_digest, hello.invite):
                raise ApiError("this invite link is not valid for this call", code="invite_invalid", status=401)
        except SignalingError as exc:
            await _reject(ws, exc.code, exc.message, exc.close_code)
            return
        except ApiError as exc:
            await _reject(ws, exc.code, exc.message, close_code_for(exc))
            return
        connection = Connection(room_id, client_ip=websocket_client_ip(state, ws))
        resumed = state.registry.session_by_id(hello.resume) if hello.resume else None
        if resumed is not None and (resumed.room_id != room_id or resumed.kind != "human"):
            resumed = None
        try:
            if resumed is None:
                state.started_hub().watch(connection)
            else:
                connection.session = resumed
                state.started_hub().attach(connection)
        except SignalingError as exc:
            await _reject(ws, exc.code, exc.message, exc.close_code)
            return
        channel = HumanChannel(state, connection, ws, hello.invite)
        try:
            connection.send_event(lobby_event(state, room, resumed=resumed is not None))
            if ignored:
                channel.warn_ignored(hello, ignored)
            if resumed is not None:
                connection.send_event(joined_event(state, resumed))
            with log_context(room=room_id):
                await channel.run()
        finally:
            state.started_hub().detach(connection)
            with trio.move_on_after(1) as cleanup:
                cleanup.shield = True
                await ws.close(connection.close_code or msg.CLOSE_NORMAL, connection.close_reason)


__all__ = ["BotChannel", "Connection", "Hub", "register_websocket_routes", "participant_json"]
