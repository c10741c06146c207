"""WebSocket routes: every bot's control channel (and audio, where UDP is not used).

``/v1/stream/<session_id>`` is the ``websocket_url`` of a join response. The
session id is the credential: unguessable, valid until the session ends. A
second connection with the same session id replaces the first (a bot that
reconnects after a network blip).

Each connection has one outbox of events and, for WebSocket-transport bots,
the audio queue its :class:`~botcall.media.WsSink` fills. The hub turns
registry events (joins, leaves, mutes, room closure) into WebSocket events for
everyone in the room. The message contract is in ``docs/protocol.md``.
"""

from __future__ import annotations

import logging
import struct
from dataclasses import dataclass, field

import trio
from quart import websocket

from botcall.auth.ratelimit import TokenBucket
from botcall.config import RateLimit
from botcall.errors import BadPacket, SignalingError
from botcall.media import PAYLOAD_TYPE_OPUS, WsSink
from botcall.queues import DropOldestQueue
from botcall.rtp.opus import OpusEncoder
from botcall.rtp.packet import RTP_HEADER, parse_rtp_untrusted
from botcall.rtp.playout import Playout
from botcall.signaling import messages as msg
from botcall.signaling.rooms import (
    Reason,
    RegistryEvent,
    RoomClosed,
    Session,
    SessionAdded,
    SessionRemoved,
    SessionUpdated,
)

log = logging.getLogger("botcall.ws")

EVENT_QUEUE = 256
FRAME = 0.020
# Binary pcm16 frames to a bot carry an RTP header with this payload type:
# L16 mono, little-endian, at the session's sample rate (our profile, not RFC 3551's).
PCM16_PAYLOAD_TYPE = 96
SEND_TIMEOUT = 5.0
CHAT_LIMIT = RateLimit(rate=5.0, burst=10)

_CLOSE_FOR_REASON = {
    Reason.LEFT: (msg.CLOSE_NORMAL, "left"),
    Reason.EXPIRED: (msg.CLOSE_SESSION_EXPIRED, "session expired"),
    Reason.DELETED: (msg.CLOSE_ROOM_CLOSED, "room closed"),
    Reason.EMPTY: (msg.CLOSE_ROOM_CLOSED, "room closed"),
    Reason.SHUTDOWN: (1001, "server shutting down"),
}
DISCONNECTED = "disconnected"


def participant_json(session: Session) -> dict:
    """How a participant is described to the others (no secrets)."""
    return {**session.public_json(), "ssrc": session.ssrc}


@dataclass(eq=False)
class Connection:
    """One open WebSocket of one session."""

    session: Session
    outbox: DropOldestQueue = field(default_factory=lambda: DropOldestQueue(EVENT_QUEUE))
    close_code: int | None = None
    close_reason: str = ""

    def send_event(self, event: dict) -> None:
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

    def __init__(self, clock, *, max_connections: int = 20000, connect_grace: float = 30.0) -> None:
        self._clock = clock
        self._by_session: dict[str, Connection] = {}
        self._by_room: dict[str, set[Connection]] = {}
        # Sessions with no open WebSocket, and since when: after connect_grace
        # they are ended (a bot that joined and vanished, a dropped browser).
        self._unconnected: dict[str, float] = {}
        self.max_connections = max_connections
        self.connect_grace = connect_grace

    def expired(self, now: float) -> list[str]:
        """Sessions that have had no WebSocket for longer than ``connect_grace``."""
        horizon = now - self.connect_grace
        return [session_id for session_id, since in self._unconnected.items() if since <= horizon]

    def attach(self, connection: Connection) -> None:
        """Register a connection; an older one of the same session is closed."""
        session = connection.session
        old = self._by_session.get(session.session_id)
        if old is not None:
            old.request_close(msg.CLOSE_ALREADY_CONNECTED, "replaced by a newer connection")
            self.detach(old)
        if len(self._by_session) >= self.max_connections:
            raise SignalingError("server has too many connections", code="server_full", close_code=1013)
        self._by_session[session.session_id] = connection
        self._by_room.setdefault(session.room_id, set()).add(connection)
        self._unconnected.pop(session.session_id, None)

    def detach(self, connection: Connection) -> None:
        session_id = connection.session.session_id
        if self._by_session.get(session_id) is connection:
            del self._by_session[session_id]
            if connection.close_code is None:
                # The client went away on its own: it may come back within the grace.
                self._unconnected[session_id] = self._clock()
        room = self._by_room.get(connection.session.room_id)
        if room is not None:
            room.discard(connection)
            if not room:
                del self._by_room[connection.session.room_id]

    def connection(self, session_id: str) -> Connection | None:
        return self._by_session.get(session_id)

    def broadcast(self, room_id: str, event: dict, *, exclude: str | None = None, chat_only: bool = False) -> None:
        text = msg.encode(event)
        for connection in self._by_room.get(room_id, ()):
            session = connection.session
            if session.session_id == exclude:
                continue
            if chat_only and session.kind == "bot" and not session.capabilities.text_chat:
                continue
            connection.outbox.put_nowait(text)

    def on_registry_event(self, event: RegistryEvent) -> None:
        """Registry listener."""
        if isinstance(event, SessionAdded):
            session = event.session
            self._unconnected[session.session_id] = self._clock()
            self.broadcast(session.room_id, {"type": "participant_joined", "participant": participant_json(session)}, exclude=session.session_id)
        elif isinstance(event, SessionRemoved):
            session = event.session
            self._unconnected.pop(session.session_id, None)
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
            for connection in self._by_room.get(session.room_id, ()):
                if connection.session.session_id == session.session_id:
                    connection.session = session
            self.broadcast(session.room_id, {"type": "muted", "participant_id": session.participant_id, "muted": session.muted})
        elif isinstance(event, RoomClosed):
            room_id = event.room.room_id
            self.broadcast(room_id, {"type": "room_closed", "reason": event.reason})


class BotChannel:
    """The server side of one bot's WebSocket (control, events, audio fallback).

    Args:
        state: the app state (registry, clock, media).
        connection: this socket's hub entry.
        ws: the Quart websocket.
        binary_audio: send audio to the bot as binary frames instead of JSON.
    """

    def __init__(self, state, connection: Connection, ws, *, binary_audio: bool) -> None:
        self.state = state
        self.connection = connection
        self.ws = ws
        self.binary_audio = binary_audio
        session = connection.session
        self.session = session
        self.peer = state.media.relay.peer(session.session_id) if session.transport == "websocket" else None
        self.encoding = session.encoding
        self.sample_rate = session.sample_rate
        self._send_lock = trio.Lock()
        self._chat_bucket = TokenBucket(tokens=CHAT_LIMIT.burst, updated_at=trio.current_time())
        self._out_seq = 0
        self._out_timestamp = 0
        self._pcm_pending = b""
        self._encoder: OpusEncoder | None = None
        self._speaker_seq: dict[int, int] = {}

    async def send(self, data: str | bytes) -> None:
        async with self._send_lock:
            with trio.fail_after(SEND_TIMEOUT):
                await self.ws.send(data)

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._events_out, nursery.cancel_scope)
            if self.peer is not None:
                if self.encoding == "pcm16":
                    nursery.start_soon(self._pcm_out)
                else:
                    nursery.start_soon(self._opus_out)
            nursery.start_soon(self._receive, nursery.cancel_scope)

    async def _events_out(self, scope: trio.CancelScope) -> None:
        async for text in self.connection.outbox:
            await self.send(text)
        # The outbox closes when the server ends the session: say why and go.
        scope.cancel()

    async def _receive(self, scope: trio.CancelScope) -> None:
        while True:
            data = await self.ws.receive()
            try:
                if isinstance(data, bytes):
                    self._binary_audio_in(data)
                else:
                    await self._handle(msg.parse_client_message_untrusted(data))
            except SignalingError as exc:
                self.connection.send_event(msg.error_event(exc.code, exc.message))
            if self.connection.close_code is not None:
                return

    async def _handle(self, message) -> None:
        state, session = self.state, self.session
        if isinstance(message, msg.Control):
            if message.action == "leave":
                state.registry.leave(session.session_id, Reason.LEFT, now=state.clock())
            else:
                state.registry.set_muted(session.session_id, bool(message.value))
        elif isinstance(message, msg.Chat):
            if not session.capabilities.text_chat:
                raise SignalingError("this session did not ask for text_chat", code="chat_disabled")
            if self._chat_bucket.take(CHAT_LIMIT, trio.current_time()) > 0:
                raise SignalingError("too many chat messages", code="rate_limited")
            state.hub.broadcast(
                session.room_id,
                {"type": "chat", "participant_id": session.participant_id, "text": message.text},
                exclude=session.session_id,
                chat_only=True,
            )
        elif isinstance(message, msg.Ping):
            self.connection.send_event({"type": "pong", "nonce": message.nonce})
        elif isinstance(message, msg.Audio):
            self._audio_in(message.data)
        else:
            raise SignalingError(f"{type(message).__name__.lower()} is not for bots", code="bad_message")

    # --- audio from the bot --------------------------------------------------------------

    def _binary_audio_in(self, data: bytes) -> None:
        if self.peer is None:
            raise SignalingError("audio on the WebSocket needs media.transport = websocket", code="wrong_transport")
        if self.encoding == "pcm16":
            self._pcm_in(data)
        else:
            # A whole RTP packet: the relay checks SSRC and payload type as for UDP.
            self.state.media.relay.handle_rtp(self.peer, data, trio.current_time())

    def _audio_in(self, data: bytes) -> None:
        if self.peer is None:
            raise SignalingError("audio on the WebSocket needs media.transport = websocket", code="wrong_transport")
        if self.encoding == "pcm16":
            self._pcm_in(data)
        else:
            self._opus_in(data)

    def _opus_in(self, payload: bytes) -> None:
        if not payload:
            raise SignalingError("empty audio frame", code="bad_audio")
        packet = RTP_HEADER.pack(0x80, PAYLOAD_TYPE_OPUS, self._out_seq, self._out_timestamp, self.session.ssrc) + payload
        self._out_seq = (self._out_seq + 1) & 0xFFFF
        self._out_timestamp = (self._out_timestamp + 960) & 0xFFFFFFFF
        self.state.media.relay.handle_rtp(self.peer, packet, trio.current_time())

    def _pcm_in(self, pcm: bytes) -> None:
        if len(pcm) % 2:
            raise SignalingError("pcm16 audio must be whole 16-bit samples", code="bad_audio")
        if self._encoder is None:
            self._encoder = OpusEncoder(self.sample_rate)
        frame_bytes = self._encoder.frame_bytes
        pending = self._pcm_pending + pcm
        while len(pending) >= frame_bytes:
            self._opus_in(self._encoder.encode(pending[:frame_bytes]))
            pending = pending[frame_bytes:]
        # At most one partial frame waits (bounded by construction).
        self._pcm_pending = pending

    # --- audio to the bot -------------------------------------------------------------------

    async def _opus_out(self) -> None:
        sink: WsSink = self.peer.sink
        async for speaker, data in sink.queue:
            if self.binary_audio:
                await self.send(data)
                continue
            try:
                packet = parse_rtp_untrusted(data)
            except BadPacket:
                continue  # the relay already checked it; nothing else can arrive here
            event = msg.audio_event(
                speaker.participant_id, packet.sequence_number, packet.timestamp, packet.payload, encoding="opus", sample_rate=48000
            )
            await self.send(msg.encode(event))

    async def _pcm_out(self) -> None:
        """Steady 20 ms PCM frames per speaker, through a jitter buffer each."""
        sink: WsSink = self.peer.sink
        playout = Playout(sample_rate=self.sample_rate)
        names: dict[int, str] = {}
        samples = self.sample_rate // 50
        tick = trio.current_time()
        while True:
            tick += FRAME
            await trio.sleep_until(tick)
            now = trio.current_time()
            while True:
                try:
                    speaker, data = sink.queue.get_nowait()
                except trio.WouldBlock:
                    break
                try:
                    playout.push(parse_rtp_untrusted(data), now)
                except BadPacket:
                    continue
                names[speaker.ssrc] = speaker.participant_id
            for frame in playout.pop(now):
                seq = self._speaker_seq.get(frame.ssrc, 0)
                self._speaker_seq[frame.ssrc] = seq + 1
                timestamp = (seq * samples) & 0xFFFFFFFF
                if self.binary_audio:
                    header = RTP_HEADER.pack(0x80, PCM16_PAYLOAD_TYPE, seq & 0xFFFF, timestamp, frame.ssrc)
                    await self.send(header + frame.pcm)
                else:
                    event = msg.audio_event(
                        names.get(frame.ssrc, ""), seq, timestamp, frame.pcm, encoding="pcm16", sample_rate=self.sample_rate
                    )
                    event["concealed"] = frame.kind.value != "audio"
                    await self.send(msg.encode(event))
            if len(self._speaker_seq) > playout.max_speakers * 2:
                self._speaker_seq = {s: self._speaker_seq[s] for s in playout.speakers if s in self._speaker_seq}


def welcome_event(state, session: Session) -> dict:
    others = [participant_json(s) for s in state.registry.sessions_in_room(session.room_id) if s.session_id != session.session_id]
    return {
        "type": "welcome",
        "participant_id": session.participant_id,
        "room_id": session.room_id,
        "you": participant_json(session),
        "participants": others,
        "expires_at": session.expires_at,
    }


def register_websocket_routes(app, state) -> None:
    """Add ``/v1/stream/<session_id>`` to the app."""

    @app.websocket("/v1/stream/<session_id>")
    async def bot_stream(session_id: str) -> None:
        ws = websocket._get_current_object()
        await ws.accept()
        session = state.registry.session_by_id(session_id)
        if session is None or session.kind != "bot":
            await ws.send(msg.encode(msg.error_event("session_not_found", "no such session (it may have ended)")))
            await ws.close(msg.CLOSE_NOT_FOUND, "session not found")
            return
        connection = Connection(session)
        try:
            state.hub.attach(connection)
        except SignalingError as exc:
            await ws.close(exc.close_code, exc.message)
            return
        channel = BotChannel(state, connection, ws, binary_audio=ws.args.get("audio") == "binary")
        try:
            connection.send_event(welcome_event(state, session))
            await channel.run()
        finally:
            state.hub.detach(connection)
            code = connection.close_code or msg.CLOSE_NORMAL
            with trio.move_on_after(1) as cleanup:
                cleanup.shield = True
                await ws.close(code, connection.close_reason)


__all__ = ["BotChannel", "Connection", "Hub", "register_websocket_routes", "participant_json", "PCM16_PAYLOAD_TYPE"]
