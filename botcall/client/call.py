"""The bot side of a call: join, latch, send and receive audio, events.

::

    async with botcall.connect("http://127.0.0.1:8080", room_id, token) as call:
        await call.play_wav("hello.wav")
        async for frame in call.audio():
            ...  # frame.pcm: 20 ms of 48 kHz mono int16 from frame.participant_id

Media goes as Opus RTP over UDP after a STUN binding proves our address
(``transport="udp"``: our Binding request proves the credentials, our answer
to the relay's own check proves we receive where we send from; see
docs/protocol.md "Latching"), or over the WebSocket (``transport="websocket"``) as
binary RTP frames, or as PCM the server encodes and decodes for us
(``encoding="pcm16"``). Received RTP goes through a jitter buffer per speaker
(:class:`~botcall.audio.playout.Playout`) on a 20 ms play-out clock.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import secrets
import socket
import ssl
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, AsyncIterator

import jwt
import trio
import trio_websocket

from botcall.audio.resample import resample
from botcall.audio.wav import frames as pcm_frames, read_wav
from botcall.client.http import BotCallHttpError, request_json
from botcall.errors import BadPacket
from botcall.queues import DropOldestQueue
from botcall.audio.jitter import FrameKind
from botcall.audio.opus import PAYLOAD_TYPE, PCM16_CONCEALED_PAYLOAD_TYPE, PCM16_PAYLOAD_TYPE, OpusEncoder, stream_ms
from botcall.audio.vad import BOT_AUDIO_LEVEL_ID, PreGatedDetector, WebRtcVadDetector, audio_level_dbov, build_audio_level
from botcall.wire.rtp import RTP_HEADER, RtpHeaderExtension, RtpPacket, parse_rtp_untrusted
from botcall.audio.playout import Playout
from botcall.wire.stun import Address, answer_check_untrusted, binding_request, parse_binding_response_untrusted

log = logging.getLogger("botcall.client")

FRAME = 0.020
SAMPLE_RATE = 48000
KEEPALIVE_INTERVAL = 10.0  # well inside the relay's 30 s consent timeout
LATCH_TIMEOUT = 5.0
# Binding retransmissions (RFC 8489 §6.2.1 doubles from its RTO; we start
# lower, the relay is one hop away): 50 ms, doubling, at most 500 ms apart; a
# new transaction id each second, so a request someone else used up first
# (a replay race) does not stall us.
BIND_RETRY_FIRST = 0.05
BIND_RETRY_MAX = 0.5
BIND_NEW_TRANSACTION = 1.0
REBIND_TIMEOUT = 2.0
# Audio that was arriving and stops this long: our address may have changed
# (a NAT rebinding), so bind at once instead of at the next keepalive; the
# relay moves us as soon as we answer its check of the new address.
SILENCE_REBIND = 0.25
UDP_RECV_SIZE = 2048
MAX_QUEUED_FRAMES = 500  # 10 s of one speaker's audio waiting for the application
MAX_QUEUED_EVENTS = 1000
# A socket address as the socket module gives it: (host, port), or four items for IPv6.
SocketAddress = tuple[Any, ...]
# A JSON object from the server (join answer, event, participant).
JsonObject = dict[str, Any]


class CallError(Exception):
    """The call could not be set up or was ended by the server."""


@dataclass(frozen=True, slots=True)
class AudioFrame:
    """20 ms of one speaker's audio, as the bot hears it.

    Attributes:
        participant_id: who spoke (None if the speaker is not known yet).
        ssrc: the speaker's RTP SSRC.
        pcm: int16 little-endian mono PCM at ``sample_rate``.
        sample_rate: Hz.
        concealed: the frame was lost and synthesised (PLC or FEC).
        stream_ms: the frame's position in the speaker's stream, ms since the
            speaker's first packet: the clock of ``speech_started`` /
            ``speech_stopped`` events (0 until the speaker's ``stream_started``
            is known).
    """

    participant_id: str | None
    ssrc: int
    pcm: bytes
    sample_rate: int
    concealed: bool = False
    stream_ms: int = 0


def agent_id_of(token: str) -> str:
    """The ``sub`` claim of an attestation (read without verifying: it is ours)."""
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError as exc:
        raise CallError(f"token is not a JWT: {exc}") from exc
    sub = claims.get("sub")
    if not isinstance(sub, str):
        raise CallError("token has no 'sub' claim: pass agent_id=")
    return sub


class Call:
    """One bot's membership of a room. Create it with :func:`connect`.

    Attributes:
        session_id, participant_id, room_id, ssrc: from the join.
        join_response: the server's whole join answer.
        participants: ``participant_id -> participant`` as the events tell.
    """

    def __init__(self, join_response: JsonObject, *, room_id: str, encoding: str, sample_rate: int) -> None:
        self.join_response = join_response
        self.session_id: str = join_response["session_id"]
        self.room_id = room_id
        self.media: JsonObject = join_response["media"]
        self.transport: str = self.media["transport"]
        self.encoding = encoding
        self.sample_rate = sample_rate
        self.ssrc: int = self.media["ssrc"]
        # The rate say_pcm sends pcm16 at (the join's send_sample_rate).
        self.send_sample_rate = sample_rate
        self.participant_id: str | None = None
        self.participants: dict[str, JsonObject] = {}
        self._ssrc_to_participant: dict[int, str] = {}
        # Each speaker's first RTP timestamp (stream_started): position 0 of its stream.
        self._origins: dict[int, int] = {}
        if self.media.get("mix_ssrc") is not None:
            # The mixed stream (media.receive "mixed") names no participant.
            self._ssrc_to_participant[self.media["mix_ssrc"]] = "mix"
        self._frames: DropOldestQueue[AudioFrame] = DropOldestQueue(MAX_QUEUED_FRAMES)
        self._events: DropOldestQueue[JsonObject] = DropOldestQueue(MAX_QUEUED_EVENTS)
        self._playout = Playout(sample_rate=sample_rate)
        self._encoder: OpusEncoder | None = None
        self._vad: PreGatedDetector | None = None
        self._seq = secrets.randbelow(1 << 16)
        self._timestamp = secrets.randbelow(1 << 32)
        self._next_send = 0.0
        self._ws: trio_websocket.WebSocketConnection | None = None
        self._sock: trio.socket.SocketType | None = None
        self._relay_addr: SocketAddress | None = None
        # Our own ICE ufrag for this call: the relay's checks carry it
        # ("<ours>:<session ice_ufrag>"), our requests the reverse.
        self._ufrag = secrets.token_hex(4)
        self._bind_request: bytes | None = None
        self._bind_transaction: bytes | None = None
        self._bound = trio.Event()
        self._bind_lock = trio.Lock()
        # When audio last came over UDP (read only once _media_resumed is set, after it is).
        self._last_udp_media = 0.0
        self._media_resumed = trio.Event()
        # The XOR-MAPPED-ADDRESS of the last Binding success: our address as the relay sees it.
        self.mapped_address: Address | None = None
        self._welcome = trio.Event()
        self._closed = trio.Event()
        self.close_reason: str | None = None
        self.counters: dict[str, int] = {"sent": 0, "received": 0, "malformed": 0}

    # --- sending --------------------------------------------------------------------

    async def send_opus(self, payload: bytes) -> None:
        """Send one 20 ms Opus frame now (no pacing, no audio level; see :meth:`say_pcm`)."""
        await self._send_rtp(RTP_HEADER.pack(0x80, PAYLOAD_TYPE, self._seq, self._timestamp, self.ssrc) + payload)

    async def _send_rtp(self, packet: bytes) -> None:
        """Send one RTP packet of ours (numbered ``_seq``, at ``_timestamp``) and step both."""
        self._seq = (self._seq + 1) & 0xFFFF
        self._timestamp = (self._timestamp + 960) & 0xFFFFFFFF
        self.counters["sent"] += 1
        if self._sock is not None:
            await self._sock.sendto(packet, self._relay_address())
        else:
            await self._websocket().send_message(packet)

    def _with_level(self, pcm: bytes, payload: bytes) -> bytes:
        """An RTP packet of ``payload`` carrying the RFC 6464 level of ``pcm`` (its 20 ms of audio).

        The one-byte RFC 8285 element at ``BOT_AUDIO_LEVEL_ID`` holds the RMS
        level in -dBov and the V flag of a voice-activity detector, so the
        relay detects our speech without decoding it (docs/protocol.md,
        "Speech detection"). The V flag is libwebrtc's GMM VAD (webrtcvad,
        aggressiveness 2: about 17 µs a frame and no model to load, where
        Silero costs over 100 µs) behind the -55 dBFS energy gate the relay
        uses too, without which webrtcvad's hangover calls the digital
        silence after a sound "voice" for a while. The relay decides from the
        level; the V flag is the sender's own word on top of it.
        """
        if self._vad is None:
            self._vad = PreGatedDetector(WebRtcVadDetector(2))
        level = build_audio_level(self._vad.probability(pcm) >= 0.5, audio_level_dbov(pcm))
        extension = RtpHeaderExtension.from_elements(((BOT_AUDIO_LEVEL_ID, level),))
        return bytes(RtpPacket(PAYLOAD_TYPE, self._seq, self._timestamp, self.ssrc, payload, extension=extension))

    async def say_pcm(self, pcm: bytes, *, sample_rate: int = SAMPLE_RATE) -> None:
        """Speak mono int16 PCM, paced in real time (20 ms frames).

        Opus packets carry the RFC 6464 audio level of their frame (header
        extension id ``BOT_AUDIO_LEVEL_ID``); with ``encoding="pcm16"`` the
        server encodes and the PCM goes as it is.

        Args:
            pcm: mono int16 little-endian samples.
            sample_rate: their rate; resampled to what the session sends.
        """
        if self.encoding == "pcm16":
            if sample_rate != self.send_sample_rate:
                pcm = resample(pcm, sample_rate, self.send_sample_rate)
            for frame in pcm_frames(pcm, sample_rate=self.send_sample_rate):
                await self._pace()
                self.counters["sent"] += 1
                await self._websocket().send_message(frame)
            return
        if sample_rate != SAMPLE_RATE:
            pcm = resample(pcm, sample_rate, SAMPLE_RATE)
        if self._encoder is None:
            self._encoder = OpusEncoder()
        for frame in pcm_frames(pcm, sample_rate=SAMPLE_RATE):
            packet = self._with_level(frame, self._encoder.encode(frame))
            await self._pace()
            await self._send_rtp(packet)

    async def play_wav(self, path: str | os.PathLike[str]) -> None:
        """Speak a WAV file (any PCM WAV; resampled and mixed to mono), paced in real time."""
        pcm = await trio.to_thread.run_sync(lambda: read_wav(os.fspath(path), sample_rate=SAMPLE_RATE, channels=1))
        await self.say_pcm(pcm, sample_rate=SAMPLE_RATE)

    async def _pace(self) -> None:
        now = trio.current_time()
        if self._next_send < now - 0.1:
            # Fell behind (first frame, or the application paused): start afresh
            # rather than bursting to catch up.
            self._next_send = now
        await trio.sleep_until(self._next_send)
        self._next_send += FRAME

    # --- receiving -------------------------------------------------------------------

    def audio(self) -> AsyncIterator[AudioFrame]:
        """Decoded 20 ms frames from every speaker, in play-out order, until the call ends.

        Frames are kept for up to 10 s if the application reads slower than real
        time; older ones are dropped.
        """
        return self._frames

    def events(self) -> AsyncIterator[JsonObject]:
        """Events from the server (``participant_joined``, ``participant_left``,
        ``muted``, ``chat``, ``room_closed``, ``error``...), as JSON objects."""
        return self._events

    # --- control ----------------------------------------------------------------------

    async def mute(self, muted: bool = True) -> None:
        """Stop (or resume) the relay forwarding our audio."""
        await self._send_json({"type": "control", "action": "mute", "value": muted})

    async def unmute(self) -> None:
        await self.mute(False)

    async def chat(self, text: str) -> None:
        """Send a text message to the room (needs ``text_chat`` in capabilities)."""
        await self._send_json({"type": "chat", "text": text})

    async def leave(self) -> None:
        """Leave the room; the call ends."""
        if self._ws is not None and not self._closed.is_set():
            try:
                await self._send_json({"type": "control", "action": "leave"})
            except trio_websocket.ConnectionClosed:
                self.counters["leave_after_close"] = self.counters.get("leave_after_close", 0) + 1

    async def mark(self, name: str) -> None:
        """Ask for a ``mark`` event when the relay has played what we sent so far.

        Over UDP the mark names the RTP timestamp after our last packet, since
        the mark (on the WebSocket) may overtake the audio (on UDP); over the
        WebSocket the messages keep their order and the mark is the end of the
        queue (docs/protocol.md "Bot speech").
        """
        message: JsonObject = {"type": "mark", "name": name}
        if self._sock is not None:
            message["rtp_timestamp"] = self._timestamp
        await self._send_json(message)

    async def clear(self) -> None:
        """Drop our speech the relay has not played yet (answered by a ``cleared`` event)."""
        await self._send_json({"type": "clear"})

    async def wait_closed(self) -> str | None:
        """Wait until the server ends the call; returns its reason."""
        await self._closed.wait()
        return self.close_reason

    async def _send_json(self, message: JsonObject) -> None:
        await self._websocket().send_message(json.dumps(message))

    def _websocket(self) -> trio_websocket.WebSocketConnection:
        if self._ws is None:
            raise CallError("the call's WebSocket is not open")
        return self._ws

    def _udp_socket(self) -> trio.socket.SocketType:
        if self._sock is None:
            raise CallError("the call has no UDP socket")
        return self._sock

    def _relay_address(self) -> SocketAddress:
        if self._relay_addr is None:
            raise CallError("the call has no UDP relay address")
        return self._relay_addr

    # --- tasks ------------------------------------------------------------------------

    async def _run_websocket(
        self, url: str, ssl_context: ssl.SSLContext | None = None, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        async with trio_websocket.open_websocket_url(
            url, ssl_context=ssl_context, connect_timeout=10, disconnect_timeout=2, message_queue_size=64
        ) as ws:
            self._ws = ws
            task_status.started()
            try:
                while True:
                    message = await ws.get_message()
                    if isinstance(message, bytes):
                        self._on_media(message, trio.current_time())
                    else:
                        self._on_event(json.loads(message))
            except trio_websocket.ConnectionClosed as exc:
                if self.close_reason is None:
                    reason = exc.reason
                    self.close_reason = (reason.reason or f"closed ({reason.code})") if reason is not None else "closed"
            finally:
                self._finish()

    def _finish(self) -> None:
        self._closed.set()
        self._welcome.set()
        self._frames.close()
        self._events.close()

    def _on_event(self, event: JsonObject) -> None:
        kind = event.get("type")
        if kind == "welcome":
            self.participant_id = event.get("participant_id")
            for participant in event.get("participants", []):
                self._learn(participant)
            self._welcome.set()
            return  # what it says is in call.participants
        elif kind == "participant_joined":
            self._learn(event["participant"])
        elif kind == "participant_left":
            participant_id = event.get("participant_id")
            gone = self.participants.pop(participant_id, None) if participant_id is not None else None
            if gone is not None and gone.get("ssrc") is not None:
                self._ssrc_to_participant.pop(gone["ssrc"], None)
                self._origins.pop(gone["ssrc"], None)
                self._playout.forget(gone["ssrc"])
        elif kind == "stream_started":
            if isinstance(event.get("ssrc"), int) and isinstance(event.get("rtp_timestamp"), int):
                self._origins[event["ssrc"]] = event["rtp_timestamp"]
        elif kind == "room_closed":
            self.close_reason = f"room closed: {event.get('reason')}"
        elif kind == "audio":
            self._on_json_audio(event)
            return
        self._events.put_nowait(event)

    def _learn(self, participant: JsonObject) -> None:
        self.participants[participant["participant_id"]] = participant
        if participant.get("ssrc") is not None:
            self._ssrc_to_participant[participant["ssrc"]] = participant["participant_id"]

    def _on_json_audio(self, event: JsonObject) -> None:
        data = base64.b64decode(event["data"])
        if event.get("encoding") == "pcm16":
            self._frames.put_nowait(
                AudioFrame(
                    event.get("participant_id"), 0, data, self.sample_rate, bool(event.get("concealed")),
                    stream_ms=int(event.get("stream_ms", 0)),
                )
            )
            return
        speaker_id = event.get("participant_id")
        speaker = self.participants.get(speaker_id, {}) if speaker_id is not None else {}
        ssrc = speaker.get("ssrc", 0)
        packet = RtpPacket(PAYLOAD_TYPE, event["seq"] & 0xFFFF, event["timestamp"] & 0xFFFFFFFF, ssrc, data)
        self._playout.push(packet, trio.current_time())

    def _on_media(self, data: bytes, now: float) -> None:
        try:
            packet = parse_rtp_untrusted(data)
        except BadPacket:
            self.counters["malformed"] += 1
            return
        self.counters["received"] += 1
        if self.encoding == "pcm16":
            # The server already decoded and buffered it: the payload is PCM.
            participant = self._ssrc_to_participant.get(packet.ssrc)
            concealed = packet.payload_type == PCM16_CONCEALED_PAYLOAD_TYPE
            # Its timestamp is the frame's stream position in samples at our rate.
            stream_ms = packet.timestamp * 1000 // self.sample_rate
            self._frames.put_nowait(AudioFrame(participant, packet.ssrc, packet.payload, self.sample_rate, concealed, stream_ms))
        else:
            self._playout.push(packet, now)

    async def _playout_loop(self) -> None:
        tick = trio.current_time()
        while True:
            tick += FRAME
            await trio.sleep_until(tick)
            for frame in self._playout.pop(tick):
                self._frames.put_nowait(
                    AudioFrame(
                        self._ssrc_to_participant.get(frame.ssrc),
                        frame.ssrc,
                        frame.pcm,
                        self.sample_rate,
                        concealed=frame.kind is not FrameKind.AUDIO,
                        stream_ms=stream_ms(self._origins.get(frame.ssrc), frame.timestamp),
                    )
                )

    async def _run_udp(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        host, port = self.media["host"], self.media["port"]
        infos = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
        family, _, _, _, address = infos[0]
        self._relay_addr = address
        self._sock = await self._open_socket()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._receive_udp)
                if not await self._bind(LATCH_TIMEOUT):
                    raise CallError(f"no STUN answer from the relay at {address} within {LATCH_TIMEOUT} s")
                task_status.started()
                nursery.start_soon(self._keepalive)
                nursery.start_soon(self._watch_silence)
        finally:
            self._sock.close()

    async def _open_socket(self) -> trio.socket.SocketType:
        family = socket.AF_INET6 if ":" in self._relay_address()[0] else socket.AF_INET
        sock = trio.socket.socket(family, socket.SOCK_DGRAM)
        await sock.bind(("::", 0) if family == socket.AF_INET6 else ("0.0.0.0", 0))
        return sock

    async def rebind_socket(self) -> None:
        """Carry on from a new local UDP port, as a NAT rebinding looks to the relay.

        Nothing is announced: the relay notices the new address (our RTP, or
        the Binding request we send when audio stops arriving) and moves the
        call there once we answer its check of the address. For tests, and for
        an application that changes network.
        """
        if self._sock is None:
            raise CallError("rebind_socket needs the UDP transport")
        old, self._sock = self._sock, await self._open_socket()
        old.close()  # the receive loop wakes with ClosedResourceError and reads the new one

    async def _receive_udp(self) -> None:
        while True:
            sock = self._udp_socket()
            try:
                data, source = await sock.recvfrom(UDP_RECV_SIZE)
            except trio.ClosedResourceError:
                if sock is self._sock:
                    raise
                continue  # rebind_socket swapped it
            if not data:
                continue
            if data[0] >= 128:
                now = trio.current_time()
                self._on_media(data, now)
                self._last_udp_media = now
                self._media_resumed.set()
            elif data[0] < 4:
                await self._on_stun(data, source)

    async def _on_stun(self, data: bytes, source: SocketAddress) -> None:
        """The relay's check (answered) or its answer to our Binding request."""
        counters = self.counters
        relay_addr = self._relay_address()
        if tuple(source[:2]) != tuple(relay_addr[:2]):
            counters["stun_foreign"] = counters.get("stun_foreign", 0) + 1
            return  # only the relay may check us or answer us
        if data[1] == 0x01 and data[0] == 0x00:  # a Binding request: the relay checks our address
            try:
                answer = answer_check_untrusted(data, source, username=f"{self._ufrag}:{self.media['ice_ufrag']}", password=self.media["ice_pwd"])
            except BadPacket:
                counters["stun_ignored"] = counters.get("stun_ignored", 0) + 1
                return
            counters["checks_answered"] = counters.get("checks_answered", 0) + 1
            await self._udp_socket().sendto(answer, source)
            if self._bind_request is not None and not self._bound.is_set():
                # Verified now: the retransmission gets the success at once.
                await self._udp_socket().sendto(self._bind_request, relay_addr)
            return
        if self._bind_transaction is None:
            return
        try:
            self.mapped_address = parse_binding_response_untrusted(data, self.media["ice_pwd"], self._bind_transaction)
        except BadPacket:
            counters["stun_ignored"] = counters.get("stun_ignored", 0) + 1
            return
        self._bound.set()

    async def _bind(self, timeout: float) -> bool:
        """One Binding transaction with the relay, retransmitted until it succeeds.

        Answering the relay's check (``_on_stun``) makes the next
        retransmission go at once.

        Returns:
            True on a Binding success within ``timeout`` seconds.
        """
        async with self._bind_lock:
            bound = self._bound = trio.Event()
            with trio.move_on_after(timeout):
                while True:
                    self._bind_request = binding_request(f"{self.media['ice_ufrag']}:{self._ufrag}", self.media["ice_pwd"])
                    self._bind_transaction = self._bind_request[8:20]
                    interval = BIND_RETRY_FIRST
                    renew = trio.current_time() + BIND_NEW_TRANSACTION
                    while trio.current_time() < renew:
                        await self._udp_socket().sendto(self._bind_request, self._relay_address())
                        with trio.move_on_after(interval):
                            await bound.wait()
                            return True
                        interval = min(interval * 2, BIND_RETRY_MAX)
            return False

    async def _keepalive(self) -> None:
        while True:
            await trio.sleep(KEEPALIVE_INTERVAL)
            if not await self._bind(REBIND_TIMEOUT):
                self.counters["keepalive_unanswered"] = self.counters.get("keepalive_unanswered", 0) + 1

    async def _watch_silence(self) -> None:
        """Bind at once when audio that was arriving stops for ``SILENCE_REBIND``."""
        while True:
            await self._media_resumed.wait()
            while True:
                deadline = self._last_udp_media + SILENCE_REBIND
                if trio.current_time() >= deadline:
                    break
                await trio.sleep_until(deadline)
            self._media_resumed = trio.Event()
            self.counters["silence_binds"] = self.counters.get("silence_binds", 0) + 1
            await self._bind(REBIND_TIMEOUT)


@asynccontextmanager
async def connect(
    server: str,
    room_id: str,
    token: str,
    *,
    agent_id: str | None = None,
    transport: str = "udp",
    encoding: str = "opus",
    sample_rate: int = SAMPLE_RATE,
    send_sample_rate: int | None = None,
    receive: str = "separate",
    text_chat: bool = True,
    ssl_context: ssl.SSLContext | None = None,
) -> AsyncIterator[Call]:
    """Join a room as a bot and keep the call up inside the ``async with``.

    Args:
        server: the BotCall server's base URL.
        room_id: the room to join (its owner must be the token's controller).
        token: the bot's BotAuth attestation (scope ``call:voice``).
        agent_id: defaults to the token's ``sub``.
        transport: ``"udp"`` (Opus RTP) or ``"websocket"``.
        encoding: ``"opus"``, or ``"pcm16"`` with ``transport="websocket"`` (the
            server does the Opus work).
        sample_rate: PCM rate of ``call.audio()`` frames (8000, 16000, 24000 or 48000).
        send_sample_rate: pcm16 only: the rate ``say_pcm`` sends at (default
            ``sample_rate``); the server encodes from it directly.
        receive: ``"separate"`` (a stream per speaker) or ``"mixed"`` (one
            mix-minus stream of everyone else, whose frames name ``"mix"``).
        text_chat: ask to send and receive chat.
        ssl_context: what an ``https://`` server's certificate (and its ``wss://``
            WebSocket's) is checked against; default: the system's trust store.

    Yields:
        The :class:`Call`.

    Raises:
        BotCallHttpError: the join was refused (the server's code says why).
        CallError: media could not be set up.
    """
    media: JsonObject = {"transport": transport}
    if transport == "websocket":
        media["encoding"] = encoding
        if encoding == "pcm16":
            media["sample_rate"] = sample_rate
            if send_sample_rate is not None:
                media["send_sample_rate"] = send_sample_rate
    if receive != "separate":
        media["receive"] = receive
    body = {
        "agent_id": agent_id or agent_id_of(token),
        "room_id": room_id,
        "attestation": {"token": token},
        "capabilities": {"audio_in": True, "audio_out": True, "video": False, "text_chat": text_chat},
        "media": media,
    }
    answer = await request_json("POST", f"{server.rstrip('/')}/v1/join", body, ssl_context=ssl_context)
    call = Call(answer, room_id=room_id, encoding=encoding if transport == "websocket" else "opus", sample_rate=sample_rate)
    if send_sample_rate is not None and call.encoding == "pcm16":
        call.send_sample_rate = send_sample_rate
    ws_url = answer["websocket_url"] + ("?audio=binary" if transport == "websocket" else "")
    async with trio.open_nursery() as nursery:
        await nursery.start(call._run_websocket, ws_url, ssl_context)
        with trio.fail_after(10):
            await call._welcome.wait()
        if call._closed.is_set():
            raise CallError(f"the server closed the call at once: {call.close_reason}")
        if transport == "udp":
            await nursery.start(call._run_udp)
        nursery.start_soon(call._playout_loop)
        try:
            yield call
        finally:
            with trio.move_on_after(2) as cleanup:
                cleanup.shield = True
                await call.leave()
            nursery.cancel_scope.cancel()


__all__ = ["AudioFrame", "BotCallHttpError", "Call", "CallError", "connect"]
