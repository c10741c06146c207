"""A bot's call: join, latch, speak, listen, leave — on asyncio or Trio (anyio).

::

    async with botcall_sdk.connect("http://127.0.0.1:8080", room_id, token) as call:
        speech = await call.say("hello.wav")
        await speech.done()
        async for frame in call.audio():
            ...

Media goes as Opus RTP over UDP once a STUN exchange proves our address
(``transport="udp"``, docs/protocol.md "Latching"), or over the WebSocket
(``transport="websocket"``) as binary RTP, or as PCM the server encodes and
decodes (``encoding="pcm16"``). Our speech is sent ahead of time and played out
by the server (docs/protocol.md "Bot speech"); received Opus goes through a
jitter buffer per speaker on a 20 ms clock.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import socket
import ssl
import time
from collections.abc import AsyncIterable, AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import IO, Any, Literal, Mapping, Union

import anyio
import anyio.abc
import anyio.lowlevel
import httpx
import numpy as np
import numpy.typing as npt
import wsproto.events
import wsproto.utilities
from httpx_ws import AsyncWebSocketSession, HTTPXWSException, WebSocketDisconnect, aconnect_ws

from botcall_sdk import _audio
from botcall_sdk._audio import FRAME_MS, OPUS_RATE, Framer, JitterBuffers, LevelMeter, OpusEncoder, to_int16
from botcall_sdk._errors import BadPacket, BotCallError, CallClosed, CallError, Unreachable
from botcall_sdk._events import (
    Cleared,
    Event,
    EventsLost,
    Interrupted,
    MarkReached,
    Participant,
    ParticipantJoined,
    ParticipantLeft,
    RoomClosed,
    StreamStarted,
    parse_event_untrusted,
    parse_participant_untrusted,
)
from botcall_sdk._http import JsonObject, agent_id_of, base_url, request_json
from botcall_sdk._inbox import Inbox
from botcall_sdk._wire import (
    OPUS_PAYLOAD_TYPE,
    PCM16_CONCEALED_PAYLOAD_TYPE,
    Address,
    answer_check_untrusted,
    binding_request,
    build_rtp,
    parse_binding_response_untrusted,
    parse_rtp_untrusted,
)

log = logging.getLogger("botcall_sdk")

KEEPALIVE_INTERVAL = 10.0  # STUN, well inside the relay's 30 s consent timeout
LATCH_TIMEOUT = 5.0
# Binding retransmissions: 50 ms doubling to 500 ms; a new transaction each second.
BIND_RETRY_FIRST = 0.05
BIND_RETRY_MAX = 0.5
BIND_NEW_TRANSACTION = 1.0
REBIND_TIMEOUT = 2.0
# Audio that was arriving and stops this long: our address may have changed (a
# NAT rebinding): bind at once instead of at the next keepalive.
SILENCE_REBIND = 0.25
UDP_RECV_SIZE = 2048
WELCOME_TIMEOUT = 10.0
# Leaving is bounded: a cancelled bot is gone within this, reachable server or not.
LEAVE_TIMEOUT = 1.0
# The server keeps a session whose WebSocket dropped for 30 s (ws_connect_grace_s);
# we stop trying a little before.
RECONNECT_WITHIN = 25.0
RECONNECT_BACKOFF_MAX = 2.0
WS_PING_INTERVAL = 5.0  # a dead TCP path shows within 10 s
MAX_WS_MESSAGE = 128 * 1024  # the server's limit, both ways
# How far ahead of real time our speech is sent; the server queues up to 120 s.
SEND_AHEAD = 5.0
MAX_QUEUED_FRAMES = 500  # 10 s of one speaker waiting for the application
MAX_QUEUED_EVENTS = 1000
CLEAR_TIMEOUT = 2.0
MAX_PENDING_MARKS = 1000  # the server's playout_max_marks
END_MARK_GRACE = 2.0  # past a speech's expected end: it is over, mark or not
_END_MARK_PREFIX = "botcall-sdk:end:"

Transport = Literal["udp", "websocket"]
Encoding = Literal["opus", "pcm16"]
PcmChunk = Union[bytes, bytearray, memoryview, npt.NDArray[Any]]
Source = Union[PcmChunk, str, "os.PathLike[str]", IO[bytes], AsyncIterable[PcmChunk], Iterable[PcmChunk]]


@dataclass(frozen=True, slots=True)
class AudioFrame:
    """20 ms of one speaker's audio (or of the mix), as the bot hears it.

    Attributes:
        speaker: the speaker's participant id; ``"mix"`` for the mixed stream;
            None while the speaker is not known yet.
        ssrc: the speaker's RTP SSRC (0 when the server does not say).
        pcm: int16 little-endian mono PCM at ``sample_rate``.
        sample_rate: Hz.
        stream_ms: the frame's position on the speaker's stream clock (ms since
            their first packet; the clock of ``SpeechStarted``/``SpeechStopped``).
        time: wall-clock (Unix) time the frame was played out to the application.
        concealed: the frame was lost and synthesised (PLC or FEC).
    """

    speaker: str | None
    ssrc: int
    pcm: bytes
    sample_rate: int
    stream_ms: int
    time: float
    concealed: bool = False

    @property
    def samples(self) -> npt.NDArray[np.int16]:
        """The PCM as an int16 array."""
        return np.frombuffer(self.pcm, dtype="<i2")


@dataclass(frozen=True, slots=True)
class Interruption:
    """How far an interrupted speech got, in ms from the speech's start.

    Attributes:
        played_ms: audio released to the listeners.
        heard_ms: per listener, how far their ear got (played minus the
            listener's reported playout delay).
        dropped_ms: audio the server dropped (of every queued speech).
        by: the participant whose speech interrupted us (barge-in), or None
            when we interrupted ourselves.
    """

    played_ms: int
    heard_ms: Mapping[str, int]
    dropped_ms: int
    by: str | None = None


@dataclass(slots=True)
class Mark:
    """A mark in our speech; ``await mark.reached()`` returns our stream's ``played_ms`` there, or None if it was dropped."""

    name: str
    _done: anyio.Event = field(default_factory=anyio.Event, repr=False)
    played_ms: int | None = None
    dropped: bool = False

    async def reached(self) -> int | None:
        await self._done.wait()
        return self.played_ms


class Speech:
    """One utterance handed to :meth:`Call.say`. Sent ahead, played out by the server.

    Attributes:
        start_ms: our stream position of its first frame (None until sent).
        sent_ms: how much of it was sent so far.
        interruption: set when it was interrupted (by :meth:`interrupt`, a
            :meth:`Call.clear` or the server's barge-in).
    """

    def __init__(self, call: Call, number: int) -> None:
        self._call = call
        self.number = number
        self.start_ms: int | None = None
        self.sent_ms = 0
        self.interruption: Interruption | None = None
        self.error: BaseException | None = None
        self._sent_all = False
        self._end_mark: Mark | None = None
        self._finished = anyio.Event()
        self._scope = anyio.CancelScope()

    @property
    def finished(self) -> bool:
        return self._finished.is_set()

    @property
    def interrupted(self) -> bool:
        return self.interruption is not None

    async def done(self) -> Interruption | None:
        """Wait until it has been played out (or interrupted).

        Returns:
            None when it played to the end, else how far it got.

        Raises:
            BotCallError: its audio could not be read or sent (the source's error is the cause).
        """
        await self._finished.wait()
        if self.error is not None:
            raise BotCallError(f"speech {self.number} failed: {self.error}") from self.error
        return self.interruption

    async def mark(self, name: str) -> Mark:
        """A mark after the audio of this speech sent so far; ``MarkReached`` follows in ``call.events()``."""
        return await self._call.mark(name)

    async def interrupt(self) -> Interruption:
        """Stop it now: what is not played yet is dropped (the server's ``clear``).

        Speech queued after this one is dropped too (a clear empties our whole
        queue). Returns how much was played and heard; for a speech that had
        already finished, its whole length (or its earlier interruption).
        """
        if self.finished:
            if self.interruption is not None:
                return self.interruption
            return Interruption(self.sent_ms, {}, 0)
        await self._call.clear()
        await self._finished.wait()
        assert self.interruption is not None or self.error is not None
        return self.interruption if self.interruption is not None else Interruption(self.sent_ms, {}, 0)

    def _finish(self) -> None:
        self._scope.cancel()
        self._finished.set()

    def _interrupt(self, played_ms: int, heard: Mapping[str, int], dropped_ms: int, by: str | None) -> None:
        start = self.start_ms or 0

        def clamp(position: int) -> int:
            return max(0, min(self.sent_ms, position - start)) if self.start_ms is not None else 0

        self.interruption = Interruption(clamp(played_ms), {who: clamp(ms) for who, ms in heard.items()}, dropped_ms, by)
        self._finish()


class Call:
    """One bot's membership of a room. Made by :func:`connect`; do not build it yourself.

    Attributes:
        session_id: the session (a secret: it authenticates our WebSocket).
        participant_id: our id in the room (share this one).
        room_id, ssrc, transport, encoding: from the join.
        participants: who is in the room now, by participant id.
        join_response: the server's whole join answer.
        mapped_address: our UDP address as the relay sees it (UDP only).
        close_reason: why the call ended, once it has.
        counters: what the SDK counted (sent, received, malformed, reconnects…).
    """

    def __init__(self, join: JsonObject, *, room_id: str, sample_rate: int, http: httpx.AsyncClient) -> None:
        self.join_response = join
        self.session_id: str = join["session_id"]
        self.participant_id: str | None = join.get("participant_id")
        self.room_id = room_id
        self.media: JsonObject = join["media"]
        self.transport: Transport = self.media["transport"]
        self.encoding: Encoding = self.media.get("encoding", "opus") if self.transport == "websocket" else "opus"
        self.receive: str = self.media.get("receive", "separate")
        self.ssrc: int = self.media["ssrc"]
        # pcm16 rates are the server's; Opus is decoded straight to the rate asked for.
        self.sample_rate: int = self.media.get("receive_sample_rate", sample_rate) if self.encoding == "pcm16" else sample_rate
        self.send_sample_rate: int = self.media.get("send_sample_rate", OPUS_RATE) if self.encoding == "pcm16" else OPUS_RATE
        self.participants: dict[str, Participant] = {}
        self.mapped_address: Address | None = None
        self.close_reason: str | None = None
        self.close_code: int | None = None
        self.counters: dict[str, int] = {
            "sent": 0, "received": 0, "malformed": 0, "reconnects": 0, "replayed": 0, "duplicates": 0, "events_lost": 0,
        }
        self._http = http
        self._ws_url = join["websocket_url"] + ("?audio=binary" if self.transport == "websocket" else "")
        # The highest event seq seen (docs/protocol.md "Resuming"): sent as
        # ?last_seq= on a reconnect; events at or below it are duplicates. None
        # until the first welcome (or for a server that does not number events).
        self._last_seq: int | None = None
        # While a resume's replay is read: events up to this seq are replays.
        self._replay_until = 0
        self._ssrc_to_participant: dict[int, str] = {}
        self._origins: dict[int, int] = {}
        if self.media.get("mix_ssrc") is not None:
            self._ssrc_to_participant[self.media["mix_ssrc"]] = "mix"
        self._frames: Inbox[AudioFrame] = Inbox(MAX_QUEUED_FRAMES)
        self._events: Inbox[Event] = Inbox(MAX_QUEUED_EVENTS)
        self._jitter = JitterBuffers(self.sample_rate)
        self._encoder: OpusEncoder | None = None
        self._meter: LevelMeter | None = None
        self._seq = secrets.randbelow(1 << 16)
        self._timestamp = secrets.randbelow(1 << 32)
        self._frames_sent = 0  # our stream clock: every frame we sent is 20 ms
        self._speeches: list[Speech] = []
        self._speech_count = 0
        self._play_horizon = 0.0  # when the server should have played all we sent (anyio clock)
        self._say_lock = anyio.Lock()
        self._marks: dict[str, Mark] = {}
        self._clear_answer: anyio.Event | None = None
        self._last_cleared: Cleared | None = None
        self._ws: AsyncWebSocketSession | None = None
        self._ws_ready = anyio.Event()
        self._send_lock = anyio.Lock()
        self._welcome = anyio.Event()
        self._closed = anyio.Event()
        self._left = False
        self._task_group: anyio.abc.TaskGroup | None = None
        # UDP
        self._sock: anyio.abc.UDPSocket | None = None
        self._relay: Address | None = None
        self._ufrag = secrets.token_hex(4)
        self._bind_request: bytes | None = None
        self._bind_transaction: bytes | None = None
        self._bound = anyio.Event()
        self._bind_lock = anyio.Lock()
        self._udp_lock = anyio.Lock()
        self._last_udp_media = 0.0
        self._media_resumed = anyio.Event()

    # --- speaking --------------------------------------------------------------------

    async def say(self, source: Source, *, sample_rate: int = OPUS_RATE) -> Speech:
        """Speak ``source``; returns at once with its :class:`Speech` handle.

        The audio is sent ahead of real time (up to ``SEND_AHEAD`` seconds) and
        played out by the server, in the order of the ``say`` calls.

        Args:
            source: int16 PCM bytes; a numpy array (int16, or float in
                [-1, 1]); a WAV file's path or a binary file object (its own
                rate is used); or an iterator or async iterator of PCM chunks
                of any size (streamed text-to-speech), all mono at ``sample_rate``.
            sample_rate: the rate of PCM ``source`` (any rate; resampled).

        Raises:
            CallClosed: the call has ended.
            ValueError: a source of an unknown kind.
        """
        self._check_open()
        if isinstance(source, (str, os.PathLike)) or hasattr(source, "read"):
            wav_source: str | os.PathLike[str] | IO[bytes] = source  # type: ignore[assignment]
            pcm, sample_rate = await anyio.to_thread.run_sync(_audio.read_wav, wav_source)
            chunks: AsyncIterator[PcmChunk] = _single(pcm)
        elif isinstance(source, (bytes, bytearray, memoryview, np.ndarray)):
            chunks = _single(source)
        elif isinstance(source, AsyncIterable):
            chunks = aiter(source)
        elif isinstance(source, Iterable):
            chunks = _from_sync(source)
        else:
            raise ValueError(f"cannot speak a {type(source).__name__}")
        self._speech_count += 1
        speech = Speech(self, self._speech_count)
        self._speeches.append(speech)
        assert self._task_group is not None
        self._task_group.start_soon(self._speak, speech, chunks, sample_rate)
        return speech

    async def _speak(self, speech: Speech, chunks: AsyncIterator[PcmChunk], rate: int) -> None:
        try:
            with speech._scope:
                async with self._say_lock:
                    framer = Framer(rate, self.send_sample_rate)
                    started: float | None = None
                    async for chunk in chunks:
                        for frame in framer.push(to_int16(chunk)):
                            started = await self._send_speech_frame(speech, frame, started)
                    for frame in framer.finish(pad=True):
                        started = await self._send_speech_frame(speech, frame, started)
                    speech._end_mark = await self.mark(f"{_END_MARK_PREFIX}{speech.number}", _internal=True)
                    speech._sent_all = True
                    # When the server should finish playing it: after what was queued before.
                    now = anyio.current_time()
                    self._play_horizon = max(self._play_horizon, started if started is not None else now) + speech.sent_ms / 1000
                # The end mark can fail to come (our audio dropped while muted,
                # or lost on UDP): then the speech is over when it would have been.
                with anyio.move_on_after(self._play_horizon - anyio.current_time() + END_MARK_GRACE):
                    await speech._end_mark.reached()
                if speech._end_mark.played_ms is None and not speech._end_mark.dropped:
                    self.counters["end_mark_missing"] = self.counters.get("end_mark_missing", 0) + 1
                    self._marks.pop(speech._end_mark.name, None)
        except BotCallError as exc:
            speech.error = exc
        except (ValueError, OSError) as exc:  # the source's fault: unreadable, wrong type
            speech.error = exc
        finally:
            # Cut short by a clear or a barge-in: the server's answer (Cleared,
            # Interrupted) finishes it with the offsets; otherwise it is done.
            if not (speech._scope.cancel_called and speech.error is None and not self._closed.is_set()):
                if speech in self._speeches:
                    self._speeches.remove(speech)
                speech._finished.set()

    async def _send_speech_frame(self, speech: Speech, frame: bytes, started: float | None) -> float:
        now = anyio.current_time()
        if started is None:
            started = now
            speech.start_ms = self._frames_sent * FRAME_MS
        due = started + speech.sent_ms / 1000 - SEND_AHEAD
        if due > now:
            await anyio.sleep_until(due)
        # The first packet of each speech carries the marker bit: after a
        # barge-in the server drops the interrupted speech's tail until it.
        await self._send_frame(frame, marker=not speech.sent_ms)
        speech.sent_ms += FRAME_MS
        return started

    async def _send_frame(self, pcm: bytes, *, marker: bool = False) -> None:
        """One 20 ms frame of our speech at ``send_sample_rate``: Opus RTP with its level (and the
        marker bit if asked: a speech's first packet), or pcm16."""
        if self.encoding == "pcm16":
            await self._send_ws(pcm)
            self._frames_sent += 1
            self.counters["sent"] += 1
            return
        if self._encoder is None:
            self._encoder, self._meter = OpusEncoder(), LevelMeter()
        assert self._meter is not None
        packet = build_rtp(
            OPUS_PAYLOAD_TYPE, self._seq, self._timestamp, self.ssrc, self._encoder.encode(pcm), level=self._meter.octet(pcm), marker=marker
        )
        await self._send_rtp(packet)

    async def send_opus(self, payload: bytes, *, marker: bool = False) -> None:
        """Send one 20 ms Opus frame as it is: no level, no pacing (for codecs of your own; see :meth:`say`).

        Args:
            marker: set the RTP marker bit: the first frame of an utterance. A
                bot that marks its utterances has, after a barge-in, what it
                still sends of the interrupted one dropped until the next marked
                frame (docs/protocol.md "Barge-in").
        """
        self._check_open()
        await self._send_rtp(build_rtp(OPUS_PAYLOAD_TYPE, self._seq, self._timestamp, self.ssrc, payload, marker=marker))

    async def _send_rtp(self, packet: bytes) -> None:
        self._seq = (self._seq + 1) & 0xFFFF
        self._timestamp = (self._timestamp + 960) & 0xFFFFFFFF
        self._frames_sent += 1
        self.counters["sent"] += 1
        if self.transport == "udp":
            sock, relay = self._sock, self._relay
            if sock is None or relay is None:
                raise CallClosed("the call has no UDP socket")
            await self._udp_send(packet, relay)
        else:
            await self._send_ws(packet)

    async def mark(self, name: str, *, _internal: bool = False) -> Mark:
        """Ask for a ``MarkReached`` event when the server has played what we sent so far.

        Over UDP the mark names the RTP timestamp after our last packet (the
        mark, on the WebSocket, may overtake the audio); over the WebSocket the
        messages keep their order. At most 1,000 marks may wait (the server's limit).
        """
        if name in self._marks:
            raise ValueError(f"a mark named {name!r} is already waiting")
        if len(self._marks) >= MAX_PENDING_MARKS:
            raise BotCallError(f"{MAX_PENDING_MARKS} marks are already waiting (the server's limit)")
        mark = Mark(name)
        self._marks[name] = mark
        message: JsonObject = {"type": "mark", "name": name}
        if self.transport == "udp":
            message["rtp_timestamp"] = self._timestamp
        try:
            await self._send_json(message)
        except BaseException:
            self._marks.pop(name, None)
            raise
        return mark

    async def clear(self) -> Cleared | None:
        """Drop all our speech not played yet; every unfinished :class:`Speech` ends interrupted.

        Returns:
            The server's ``Cleared`` answer (None if it did not come within 2 s).
        """
        self._check_open()
        for speech in list(self._speeches):
            speech._scope.cancel()  # stop sending the rest
        answer = self._clear_answer = anyio.Event()
        self._last_cleared = None
        await self._send_json({"type": "clear"})
        with anyio.move_on_after(CLEAR_TIMEOUT):
            await answer.wait()
        cleared = self._last_cleared
        if cleared is None:  # no answer: end them anyway, with what we know
            self._interrupt_speeches(0, {}, 0, None, marks_dropped=None)
        return cleared

    def _interrupt_speeches(
        self, played_ms: int, heard: Mapping[str, int], dropped_ms: int, by: str | None, *, marks_dropped: tuple[str, ...] | None
    ) -> None:
        for speech in list(self._speeches):
            end = speech._end_mark
            # A speech whose end mark survived the clear had played out: its
            # MarkReached is on its way (or came already).
            if end is not None and marks_dropped is not None and end.name not in marks_dropped:
                continue
            speech._interrupt(played_ms, heard, dropped_ms, by)
            self._speeches.remove(speech)
        if marks_dropped is not None:
            for name in marks_dropped:
                mark = self._marks.pop(name, None)
                if mark is not None:
                    mark.dropped = True
                    mark._done.set()

    # --- listening -------------------------------------------------------------------

    def audio(self, *, mixed: bool = False) -> AsyncIterator[AudioFrame]:
        """Decoded 20 ms frames until the call ends: every speaker's (``frame.speaker``), or the mix.

        One reader at a time. Frames wait up to 10 s for a slow reader, then
        the oldest are dropped.

        Args:
            mixed: the one mix-minus stream of everyone else; the call must have
                joined with ``connect(..., receive="mixed")`` (the server mixes).

        Raises:
            ValueError: ``mixed`` does not match how the call joined.
        """
        if mixed != (self.receive == "mixed"):
            raise ValueError(
                "audio(mixed=True) needs connect(..., receive='mixed')" if mixed else "this call joined with receive='mixed': use audio(mixed=True)"
            )
        return self._frames

    def events(self) -> AsyncIterator[Event]:
        """Events from the server, typed (see ``botcall_sdk.events``), until the call ends. One reader at a time."""
        return self._events

    # --- control ----------------------------------------------------------------------

    async def chat(self, text: str) -> None:
        """Send a chat message to the room (needs ``text_chat=True``, the default)."""
        await self._send_json({"type": "chat", "text": text})

    async def mute(self, muted: bool = True) -> None:
        """Stop (or resume) the relay forwarding our audio."""
        await self._send_json({"type": "control", "action": "mute", "value": muted})

    async def unmute(self) -> None:
        await self.mute(False)

    async def ping(self, nonce: str = "") -> None:
        """Ask the server for a ``Pong``."""
        await self._send_json({"type": "ping", "nonce": nonce or secrets.token_hex(4)})

    async def leave(self) -> None:
        """Leave the room now (``participant_left`` for the others); the call ends.

        Bounded by ``LEAVE_TIMEOUT`` and shielded from cancellation: leaving
        the ``async with`` does the same.
        """
        if self._left:
            return
        self._left = True
        with anyio.CancelScope(shield=True), anyio.move_on_after(LEAVE_TIMEOUT):
            message = json.dumps({"type": "control", "action": "leave"})
            ws = self._ws
            if ws is not None and not self._closed.is_set():
                try:
                    await ws.send_text(message)
                    await ws.close(1000)
                except (HTTPXWSException, OSError, httpx.HTTPError, wsproto.utilities.LocalProtocolError, anyio.BrokenResourceError, anyio.ClosedResourceError):
                    ws = None
            if ws is None and not self._closed.is_set():
                # Our WebSocket is down (or never opened): open one to say goodbye,
                # or the server would keep a ghost for its reconnect grace.
                try:
                    goodbye: AsyncWebSocketSession
                    async with aconnect_ws(self._ws_url, self._http, keepalive_ping_interval_seconds=None) as goodbye:
                        await goodbye.send_text(message)
                except (HTTPXWSException, OSError, httpx.HTTPError, wsproto.utilities.LocalProtocolError):
                    self.counters["leave_failed"] = self.counters.get("leave_failed", 0) + 1
        self._finish("left")

    async def wait_closed(self) -> str | None:
        """Wait until the call ends; returns why."""
        await self._closed.wait()
        return self.close_reason

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    def _check_open(self) -> None:
        if self._closed.is_set():
            raise CallClosed(self.close_reason or "the call has ended", self.close_code)

    def _require_sock(self) -> anyio.abc.UDPSocket:
        if self._sock is None:
            raise CallClosed("the call has no UDP socket")
        return self._sock

    def _finish(self, reason: str, code: int | None = None) -> None:
        if self.close_reason is None:
            self.close_reason, self.close_code = reason, code
        self._closed.set()
        self._welcome.set()
        self._ws_ready.set()
        self._frames.close()
        self._events.close()
        for speech in list(self._speeches):
            if not speech.finished:
                speech.error = CallClosed(self.close_reason or reason, self.close_code)
                speech._finish()
        for mark in self._marks.values():
            mark.dropped = True
            mark._done.set()

    # --- the WebSocket: control, events, and audio for the websocket transport ------------

    async def _send_json(self, message: JsonObject) -> None:
        await self._send_ws(json.dumps(message))

    async def _send_ws(self, message: str | bytes) -> None:
        """Send on the WebSocket; across a reconnect, wait for the new one (bounded by its grace)."""
        for _ in range(2):
            self._check_open()
            if not self._ws_ready.is_set():
                with anyio.move_on_after(RECONNECT_WITHIN):
                    await self._ws_ready.wait()
            self._check_open()
            ws = self._ws
            if ws is None:
                raise CallClosed("the call's WebSocket did not come back", self.close_code)
            try:
                async with self._send_lock:
                    if isinstance(message, str):
                        await ws.send_text(message)
                    else:
                        await ws.send_bytes(message)
                return
            except (HTTPXWSException, OSError, httpx.HTTPError, wsproto.utilities.LocalProtocolError, anyio.BrokenResourceError, anyio.ClosedResourceError):
                if self._ws is ws:
                    self._ws, self._ws_ready = None, anyio.Event()
        raise CallClosed("the call's WebSocket failed twice", self.close_code)

    async def _run_websocket(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Keep the WebSocket open: reconnect a dropped one within the server's grace."""
        started = False
        dropped_at: float | None = None
        backoff = 0.05
        while not self._closed.is_set():
            ws: AsyncWebSocketSession
            url = self._ws_url
            if self._last_seq is not None:
                # A resume: the server replays what came after (or says events_lost).
                url += ("&" if "?" in url else "?") + f"last_seq={self._last_seq}"
            try:
                async with aconnect_ws(
                    url,
                    self._http,
                    max_message_size_bytes=MAX_WS_MESSAGE,
                    keepalive_ping_interval_seconds=WS_PING_INTERVAL,
                    keepalive_ping_timeout_seconds=WS_PING_INTERVAL,
                ) as ws:
                    self._ws = ws
                    self._ws_ready.set()
                    if dropped_at is not None:
                        self.counters["reconnects"] += 1
                        log.info("botcall_sdk: WebSocket resumed after %.2f s", anyio.current_time() - dropped_at)
                    dropped_at, backoff = None, 0.05
                    if not started:
                        started = True
                        task_status.started()
                    final = await self._read_websocket(ws)
                    if self._ws is ws:
                        self._ws, self._ws_ready = None, anyio.Event()
                    if final is not None:
                        self._finish(*final)
                        return
            except Exception as exc:  # connecting failed: httpx, httpx-ws or OS errors
                if isinstance(exc, HTTPXWSException) and "404" in str(exc) or self._closed.is_set():
                    self._finish(f"the session is gone: {exc}")
                    return
                if not started:
                    raise CallError(f"could not open the call's WebSocket: {exc!r}") from exc
                log.debug("botcall_sdk: WebSocket connect failed: %r", exc)
            if self._closed.is_set():
                return
            now = anyio.current_time()
            if dropped_at is None:
                dropped_at = now
                log.info("botcall_sdk: WebSocket dropped; reconnecting")
            if now - dropped_at > RECONNECT_WITHIN:
                self._finish("the WebSocket dropped and did not come back")
                return
            await anyio.sleep(backoff)
            backoff = min(backoff * 2, RECONNECT_BACKOFF_MAX)

    async def _read_websocket(self, ws: AsyncWebSocketSession) -> tuple[str, int | None] | None:
        """Read until the socket ends: ``(reason, code)`` when the server ended the call, None when it dropped."""
        while True:
            try:
                message = await ws.receive()
            except WebSocketDisconnect as exc:
                if exc.code in (1006, 1011):  # abnormal: no close frame, or a server error
                    return None
                if self.close_reason is not None:
                    return self.close_reason, exc.code
                return exc.reason or f"closed ({exc.code})", exc.code
            except (HTTPXWSException, OSError, httpx.HTTPError):
                return None
            if isinstance(message, wsproto.events.BytesMessage):
                self._on_media(bytes(message.data), anyio.current_time())
            elif isinstance(message, wsproto.events.TextMessage):
                try:
                    obj = json.loads(message.data)
                except ValueError:
                    obj = None
                if isinstance(obj, dict):
                    self._on_json(obj)
                else:
                    self.counters["malformed"] += 1

    def _on_json(self, obj: JsonObject) -> None:
        kind = obj.get("type")
        if kind == "welcome":
            you = obj.get("participant_id")
            if isinstance(you, str):
                self.participant_id = you
            people = obj.get("participants")
            for item in people if isinstance(people, list) else []:
                try:
                    self._learn(parse_participant_untrusted(item))
                except ValueError:
                    self.counters["malformed"] += 1
            newest = obj.get("last_seq")
            if isinstance(newest, int) and not isinstance(newest, bool):
                if self._last_seq is None:
                    # A first connection: nothing is replayed, so we are at the newest.
                    self._last_seq = newest
                self._replay_until = newest
            self._welcome.set()
            return
        if kind == "audio":
            self._on_json_audio(obj)
            return
        event = parse_event_untrusted(obj)
        if not self._in_sequence(event):
            return
        if isinstance(event, ParticipantJoined):
            self._learn(event.participant)
        elif isinstance(event, ParticipantLeft):
            gone = self.participants.pop(event.participant_id, None)
            # What they said before leaving may still be in the jitter buffer
            # (Opus): it plays out as theirs, and _play_out forgets them in the
            # tick of their last frame. pcm16 frames went to the application as they came.
            if gone is not None and gone.ssrc is not None and not (self.encoding == "opus" and self._jitter.retire(gone.ssrc)):
                self._ssrc_to_participant.pop(gone.ssrc, None)
                self._origins.pop(gone.ssrc, None)
        elif isinstance(event, StreamStarted):
            self._origins[event.ssrc] = event.rtp_timestamp
        elif isinstance(event, RoomClosed):
            self.close_reason = f"room closed: {event.reason}"
        elif isinstance(event, MarkReached):
            mark = self._marks.pop(event.name, None)
            if mark is not None:
                mark.played_ms = event.played_ms
                mark._done.set()
            if event.name.startswith(_END_MARK_PREFIX):
                return  # the SDK's own: Speech.done() tells
        elif isinstance(event, Cleared):
            self._interrupt_speeches(event.played_ms, event.heard, event.dropped_ms, None, marks_dropped=event.marks_dropped)
            self._last_cleared = event
            if self._clear_answer is not None:
                self._clear_answer.set()
        elif isinstance(event, Interrupted):
            for speech in list(self._speeches):
                speech._scope.cancel()
            self._interrupt_speeches(event.played_ms, event.heard, event.dropped_ms, event.by, marks_dropped=event.marks_dropped)
        self._events.put_nowait(event)

    def _in_sequence(self, event: Event) -> bool:
        """Track the event numbering: False for a duplicate (already seen before a
        drop); an ``EventsLost`` is queued for a gap on a live socket."""
        if isinstance(event, EventsLost):
            self.counters["events_lost"] += event.count
            if self._last_seq is not None:
                self._last_seq = max(self._last_seq, event.last_seq)
            return True
        seq = event.raw.get("seq")
        if not isinstance(seq, int) or isinstance(seq, bool) or self._last_seq is None:
            return True
        if seq <= self._last_seq:
            self.counters["duplicates"] += 1
            return False
        if seq > self._last_seq + 1:
            first = self._last_seq + 1
            self.counters["events_lost"] += seq - first
            self._events.put_nowait(EventsLost(first, seq - 1, seq - first))
        if seq <= self._replay_until:
            self.counters["replayed"] += 1
        self._last_seq = seq
        return True

    def _learn(self, participant: Participant) -> None:
        self.participants[participant.participant_id] = participant
        if participant.ssrc is not None:
            self._ssrc_to_participant[participant.ssrc] = participant.participant_id
            self._jitter.welcome_back(participant.ssrc)

    def _on_json_audio(self, obj: JsonObject) -> None:
        """Audio as JSON (a server that does not send binary frames): pcm16 only is decoded here."""
        import base64
        import binascii

        try:
            data = base64.b64decode(obj["data"], validate=True)
            speaker = obj.get("participant_id")
            if obj.get("encoding") == "pcm16":
                frame = AudioFrame(speaker, 0, data, int(obj.get("sample_rate", self.sample_rate)), int(obj.get("stream_ms", 0)), time.time(), bool(obj.get("concealed")))
                self._frames.put_nowait(frame)
                return
            participant = self.participants.get(speaker) if isinstance(speaker, str) else None
            ssrc = participant.ssrc if participant is not None and participant.ssrc is not None else 0
            from botcall_sdk._wire import RtpPacket

            self._jitter.push(RtpPacket(OPUS_PAYLOAD_TYPE, int(obj["seq"]) & 0xFFFF, int(obj["timestamp"]) & 0xFFFFFFFF, ssrc, data), anyio.current_time())
        except (KeyError, TypeError, ValueError, binascii.Error):
            self.counters["malformed"] += 1

    def _on_media(self, data: bytes, now: float) -> None:
        try:
            packet = parse_rtp_untrusted(data)
        except BadPacket:
            self.counters["malformed"] += 1
            return
        self.counters["received"] += 1
        if self.encoding == "pcm16":
            # Decoded and buffered by the server: the payload is PCM, the
            # timestamp the frame's stream position in samples at our rate.
            speaker = self._ssrc_to_participant.get(packet.ssrc)
            self._frames.put_nowait(
                AudioFrame(
                    speaker, packet.ssrc, packet.payload, self.sample_rate, packet.timestamp * 1000 // self.sample_rate, time.time(),
                    packet.payload_type == PCM16_CONCEALED_PAYLOAD_TYPE,
                )
            )
        elif packet.payload_type == OPUS_PAYLOAD_TYPE:
            self._jitter.push(packet, now)

    async def _play_out(self) -> None:
        """The 20 ms clock of received Opus: one frame per talking speaker per tick."""
        tick = anyio.current_time()
        while True:
            tick += _audio.FRAME_SECONDS
            now = anyio.current_time()
            if tick < now - 0.1:
                tick = now  # we were held up: carry on from now, not in a burst
            await anyio.sleep_until(tick)
            wall = time.time()
            for played in self._jitter.pop(tick):
                origin = self._origins.get(played.ssrc)
                stream_ms = 0 if origin is None else ((played.timestamp - origin) & 0xFFFFFFFF) // 48
                self._frames.put_nowait(
                    AudioFrame(self._ssrc_to_participant.get(played.ssrc), played.ssrc, played.pcm, self.sample_rate, stream_ms, wall, played.concealed)
                )
            for ssrc in self._jitter.take_drained():
                self._ssrc_to_participant.pop(ssrc, None)
                self._origins.pop(ssrc, None)

    # --- UDP: latching, keepalive, rebinding ---------------------------------------------

    async def _run_udp(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        host, port = self.media["host"], int(self.media["port"])
        infos = await anyio.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
        family, _, _, _, address = infos[0]
        self._relay = (str(address[0]), int(address[1]))
        self._sock = await self._open_socket()
        try:
            async with anyio.create_task_group() as group:
                group.start_soon(self._receive_udp)
                if not await self._bind(LATCH_TIMEOUT):
                    raise CallError(f"no STUN answer from the relay at {self._relay} within {LATCH_TIMEOUT} s")
                task_status.started()
                group.start_soon(self._keepalive)
                group.start_soon(self._watch_silence)
        finally:
            await self._require_sock().aclose()

    async def _open_socket(self) -> anyio.abc.UDPSocket:
        assert self._relay is not None
        ipv6 = ":" in self._relay[0]
        return await anyio.create_udp_socket(socket.AF_INET6 if ipv6 else socket.AF_INET, local_host="::" if ipv6 else "0.0.0.0")

    @property
    def local_address(self) -> Address | None:
        """Our UDP socket's local (host, port); None over the WebSocket."""
        if self._sock is None:
            return None
        address = self._sock.extra(anyio.abc.SocketAttribute.local_address)
        assert isinstance(address, tuple)
        return str(address[0]), int(address[1])

    async def rebind_socket(self) -> None:
        """Carry on from a new local UDP port, as a NAT rebinding looks to the relay.

        Nothing is announced: the relay notices the new address and moves the
        call there once we answer its check (for tests, and for an
        application that changes network).
        """
        if self._sock is None:
            raise CallError("rebind_socket needs the UDP transport")
        old, self._sock = self._sock, await self._open_socket()
        await old.aclose()  # the receive loop wakes up and reads the new one

    async def _receive_udp(self) -> None:
        while True:
            sock = self._require_sock()
            try:
                data, source = await sock.receive()
            except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                if sock is self._sock:
                    raise
                continue  # rebind_socket swapped it
            except OSError:  # an ICMP error (port unreachable) surfaces here on Linux
                self.counters["udp_errors"] = self.counters.get("udp_errors", 0) + 1
                continue
            if not data:
                continue
            if data[0] >= 128:
                now = anyio.current_time()
                self._on_media(data, now)
                self._last_udp_media = now
                self._media_resumed.set()
            elif data[0] < 4:
                await self._on_stun(data, source)

    async def _udp_send(self, data: bytes, address: Address) -> None:
        """One datagram; one sender at a time (anyio's sockets refuse concurrent sends)."""
        async with self._udp_lock:
            sock = self._require_sock()
            try:
                await sock.sendto(data, *address)
            except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                if self._sock is sock or self._sock is None:
                    raise CallClosed("the call's UDP socket is closed", self.close_code) from None
                await self._sock.sendto(data, *address)  # swapped by rebind_socket
            except OSError:  # e.g. no route: counted, the keepalive and re-bind recover
                self.counters["udp_errors"] = self.counters.get("udp_errors", 0) + 1

    async def _on_stun(self, data: bytes, source: tuple[str, int]) -> None:
        counters, relay = self.counters, self._relay
        if relay is None or (source[0], source[1]) != relay:
            counters["stun_foreign"] = counters.get("stun_foreign", 0) + 1
            return  # only the relay may check us or answer us
        if data[0] == 0x00 and data[1] == 0x01:  # the relay checks our address
            try:
                answer = answer_check_untrusted(data, source, username=f"{self._ufrag}:{self.media['ice_ufrag']}", password=self.media["ice_pwd"])
            except BadPacket:
                counters["stun_ignored"] = counters.get("stun_ignored", 0) + 1
                return
            counters["checks_answered"] = counters.get("checks_answered", 0) + 1
            await self._udp_send(answer, (source[0], source[1]))
            if self._bind_request is not None and not self._bound.is_set():
                await self._udp_send(self._bind_request, relay)  # verified now: the success comes at once
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
        """One Binding transaction with the relay, retransmitted until it succeeds (True) or ``timeout``."""
        async with self._bind_lock:
            bound = self._bound = anyio.Event()
            assert self._relay is not None
            with anyio.move_on_after(timeout):
                while True:
                    self._bind_request, self._bind_transaction = binding_request(f"{self.media['ice_ufrag']}:{self._ufrag}", self.media["ice_pwd"])
                    interval = BIND_RETRY_FIRST
                    renew = anyio.current_time() + BIND_NEW_TRANSACTION
                    while anyio.current_time() < renew:
                        await self._udp_send(self._bind_request, self._relay)
                        with anyio.move_on_after(interval):
                            await bound.wait()
                        if bound.is_set():
                            return True
                        interval = min(interval * 2, BIND_RETRY_MAX)
            return False

    async def _keepalive(self) -> None:
        while True:
            await anyio.sleep(KEEPALIVE_INTERVAL)
            if not await self._bind(REBIND_TIMEOUT):
                self.counters["keepalive_unanswered"] = self.counters.get("keepalive_unanswered", 0) + 1

    async def _watch_silence(self) -> None:
        """Bind at once when audio that was arriving stops for ``SILENCE_REBIND`` (a NAT may have moved us)."""
        while True:
            await self._media_resumed.wait()
            while True:
                deadline = self._last_udp_media + SILENCE_REBIND
                if anyio.current_time() >= deadline:
                    break
                await anyio.sleep_until(deadline)
            self._media_resumed = anyio.Event()
            self.counters["silence_binds"] = self.counters.get("silence_binds", 0) + 1
            await self._bind(REBIND_TIMEOUT)


async def _single(chunk: PcmChunk) -> AsyncIterator[PcmChunk]:
    yield chunk


async def _from_sync(chunks: Iterable[PcmChunk]) -> AsyncIterator[PcmChunk]:
    for chunk in chunks:
        yield chunk
        await anyio.lowlevel.checkpoint()


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    out: list[BaseException] = []
    for exc in group.exceptions:
        out.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return out


@asynccontextmanager
async def connect(
    server: str,
    room_id: str,
    token: str,
    *,
    agent_id: str | None = None,
    transport: Transport = "udp",
    encoding: Encoding = "opus",
    sample_rate: int = OPUS_RATE,
    send_sample_rate: int | None = None,
    receive: Literal["separate", "mixed"] = "separate",
    text_chat: bool = True,
    http_client: httpx.AsyncClient | None = None,
    ssl_context: ssl.SSLContext | None = None,
) -> AsyncIterator[Call]:
    """Join a room as a bot; the call lasts for the ``async with``.

    Leaving the block — normally, by an exception or by cancellation at any
    point, the join itself included — leaves the room within ``LEAVE_TIMEOUT``.

    Args:
        server: the server's base URL, ``http://`` or ``https://``.
        room_id: the room to join (its owner must be the token's controller).
        token: the bot's BotAuth attestation (scope ``call:voice``).
        agent_id: defaults to the token's ``sub``.
        transport: ``"udp"`` (Opus RTP) or ``"websocket"``.
        encoding: ``"opus"``, or ``"pcm16"`` with ``transport="websocket"``
            (the server does the Opus work).
        sample_rate: the PCM rate of ``call.audio()`` frames (8000, 16000, 24000, 48000).
        send_sample_rate: pcm16 only: the rate our speech is sent at (default
            ``sample_rate``); ``say`` resamples any source to it.
        receive: ``"separate"`` (a stream per speaker) or ``"mixed"`` (one mix-minus stream).
        text_chat: ask to send and receive chat.
        http_client: an ``httpx.AsyncClient`` to share (else the call has its own).
        ssl_context: what an ``https://`` server's certificate (and its
            ``wss://`` WebSocket's) is checked against; default: the system's
            trust store (ignored with ``http_client``, which has its own).

    Yields:
        The :class:`Call`.

    Raises:
        InvalidServerUrl: ``server`` is not an http(s) URL.
        HttpError: the join was refused; the subclass and ``code`` say why.
        CallError: media could not be set up.
    """
    base = base_url(server)
    if encoding == "pcm16" and transport != "websocket":
        raise ValueError("encoding='pcm16' needs transport='websocket'")
    if sample_rate not in _audio.RATES:
        raise ValueError(f"sample_rate must be one of {_audio.RATES}, not {sample_rate}")
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
    http = http_client if http_client is not None else httpx.AsyncClient(verify=ssl_context if ssl_context is not None else True)
    try:
        # Shielded: a join the server granted must be known to us, or we could
        # not leave and a ghost would stay for the reconnect grace.
        try:
            with anyio.CancelScope(shield=True):
                answer = await request_json(http, "POST", f"{base}/v1/join", body)
        except Unreachable:
            # Cancelled meanwhile (Ctrl-C stopping a server and its bot together):
            # the caller asked to stop, and that is what it sees.
            await anyio.lowlevel.checkpoint_if_cancelled()
            raise
        try:
            call = Call(answer, room_id=room_id, sample_rate=sample_rate, http=http)
        except (KeyError, TypeError, ValueError) as exc:
            raise CallError(f"unexpected join answer: {exc!r}") from exc
        try:
            async with anyio.create_task_group() as group:
                call._task_group = group
                try:
                    await group.start(call._run_websocket)
                    with anyio.fail_after(WELCOME_TIMEOUT):
                        await call._welcome.wait()
                    call._check_open()
                    if call.transport == "udp":
                        await group.start(call._run_udp)
                    if call.encoding == "opus":
                        group.start_soon(call._play_out)
                    yield call
                finally:
                    await call.leave()
                    group.cancel_scope.cancel()
        except BaseExceptionGroup as group_error:
            leaves = _leaves(group_error)
            if len(leaves) == 1:
                raise leaves[0] from None
            raise
    finally:
        if http_client is None:
            with anyio.CancelScope(shield=True), anyio.move_on_after(LEAVE_TIMEOUT):
                await http.aclose()


__all__ = ["AudioFrame", "Call", "Interruption", "Mark", "Speech", "connect"]
