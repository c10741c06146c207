"""A Pipecat transport for BotCall: a Pipecat pipeline joins a room as a bot.

Install with ``pip install "botcall-sdk[pipecat]"``. ::

    transport = BotCallTransport(server, room_id, token)
    pipeline = Pipeline([transport.input(), stt, llm, tts, transport.output()])
    await PipelineRunner().run(PipelineTask(pipeline))

What maps to what:

* **input**: the call's mix-minus (everyone but the bot, mixed by the server at
  the pipeline's input rate) as ``InputAudioRawFrame`` s of 20 ms;
* **output**: ``OutputAudioRawFrame`` s are streamed to the server as they come
  and played out there (``Call.say`` with an async iterator, at the pipeline's
  output rate); a pause longer than ``utterance_gap_s`` ends one utterance, so
  nothing but the last frame of an utterance is ever padded;
* **interruptions**: an ``InterruptionFrame`` in the pipeline clears what the
  server has not played yet (``Call.clear``); BotCall's own barge-in (a human
  talked over the bot, the ``Interrupted`` event) is broadcast into the
  pipeline as an interruption, so the LLM and TTS stop too;
* **who is talking**: BotCall's ``SpeechStarted``/``SpeechStopped`` of other
  participants are pushed as Pipecat's ``UserStartedSpeakingFrame`` /
  ``UserStoppedSpeakingFrame``;
* ``EndFrame`` lets the queued speech finish, then leaves; ``CancelFrame``
  leaves at once.

Event handlers on the transport: ``on_participant_joined(transport,
participant)``, ``on_participant_left(transport, participant_id)``,
``on_interrupted(transport, event)``, ``on_chat(transport, event)``.

Pipecat is asyncio only, so this module is too; the rest of the SDK runs under
Trio as well.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

from pipecat.frames.frames import (
    CancelFrame,
    EndFrame,
    Frame,
    InputAudioRawFrame,
    InterruptionFrame,
    OutputAudioRawFrame,
    StartFrame,
    UserStartedSpeakingFrame,
    UserStoppedSpeakingFrame,
)
from pipecat.processors.frame_processor import FrameDirection
from pipecat.transports.base_input import BaseInputTransport
from pipecat.transports.base_output import BaseOutputTransport
from pipecat.transports.base_transport import BaseTransport, TransportParams

import botcall_sdk
from botcall_sdk._call import Call, Interruption, Speech

log = logging.getLogger(__name__)

# How long the pipeline may pause inside one utterance before it is over.
UTTERANCE_GAP_S = 0.3
# Output frames waiting for the SDK (which runs up to SEND_AHEAD seconds ahead
# of the server's playout): a bound, so a fast TTS is slowed, not buffered forever.
OUTPUT_QUEUE_FRAMES = 50
# How long EndFrame waits for the queued speech to play before leaving.
END_DRAIN_S = 30.0


class BotCallParams(TransportParams):
    """Transport parameters (Pipecat's ``TransportParams`` plus BotCall's).

    Parameters:
        transport: ``"websocket"`` (default: works where UDP is blocked) or ``"udp"``.
        utterance_gap_s: a pause in the output longer than this ends an utterance.
        user_speaking_frames: push ``UserStarted/StoppedSpeakingFrame`` for BotCall's speech events.
    """

    audio_in_enabled: bool = True
    audio_out_enabled: bool = True
    transport: str = "websocket"
    utterance_gap_s: float = UTTERANCE_GAP_S
    user_speaking_frames: bool = True


class _Session:
    """The call, shared by the input and the output, running in a task of its own.

    ``connect`` is a context manager whose task group must be entered and left
    by one task; Pipecat starts and stops processors from different tasks, so
    the call lives in its own task and the processors wait on it.
    """

    def __init__(self, server: str, room_id: str, token: str, params: BotCallParams, agent_id: str | None) -> None:
        self.server = server
        self.room_id = room_id
        self.token = token
        self.params = params
        self.agent_id = agent_id
        self.call: Call | None = None
        self._users = 0
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()
        self._leave = asyncio.Event()
        self._error: BaseException | None = None

    async def start(self, sample_rate: int) -> Call:
        self._users += 1
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(sample_rate), name="botcall-call")
        await self._ready.wait()
        if self.call is None:
            raise botcall_sdk.CallError(f"could not join the room: {self._error!r}") from self._error
        return self.call

    async def _run(self, sample_rate: int) -> None:
        encoding = "pcm16" if self.params.transport == "websocket" else "opus"
        try:
            async with botcall_sdk.connect(
                self.server, self.room_id, self.token, agent_id=self.agent_id,
                transport=self.params.transport, encoding=encoding,  # type: ignore[arg-type]
                sample_rate=sample_rate, receive="mixed",
            ) as call:
                self.call = call
                self._ready.set()
                await self._leave.wait()
        except BaseException as exc:
            self._error = exc
            raise
        finally:
            self._ready.set()

    async def stop(self) -> None:
        """Leave once both the input and the output have stopped."""
        self._users -= 1
        if self._users > 0 or self._task is None:
            return
        self._leave.set()
        try:
            await self._task
        except Exception as exc:
            log.warning("the call ended with an error: %r", exc)


class BotCallInputTransport(BaseInputTransport):
    """The call's mix-minus into the pipeline, and BotCall's events."""

    def __init__(self, transport: BotCallTransport, session: _Session, params: BotCallParams, **kwargs: Any) -> None:
        super().__init__(params, **kwargs)
        self._transport = transport
        self._session = session
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self, frame: StartFrame) -> None:
        await super().start(frame)
        call = await self._session.start(self.sample_rate)
        if self._params.audio_in_enabled:
            self._tasks.append(self.create_task(self._read_audio(call)))
        self._tasks.append(self.create_task(self._read_events(call)))
        await self.set_transport_ready(frame)

    async def _read_audio(self, call: Call) -> None:
        # The call decodes (or the server mixes) straight at the pipeline's input rate.
        async for frame in call.audio(mixed=True):
            await self.push_audio_frame(InputAudioRawFrame(audio=frame.pcm, sample_rate=frame.sample_rate, num_channels=1))

    async def _read_events(self, call: Call) -> None:
        own = call.participant_id
        async for event in call.events():
            if isinstance(event, botcall_sdk.SpeechStarted) and event.participant_id != own:
                if self._session.params.user_speaking_frames:
                    await self.push_frame(UserStartedSpeakingFrame())
            elif isinstance(event, botcall_sdk.SpeechStopped) and event.participant_id != own:
                if self._session.params.user_speaking_frames:
                    await self.push_frame(UserStoppedSpeakingFrame())
            elif isinstance(event, botcall_sdk.Interrupted):
                # The server already cleared our speech; stop the LLM and TTS too.
                await self.broadcast_interruption()  # type: ignore[no-untyped-call]  # pipecat leaves it unannotated
                await self._transport._call_event_handler("on_interrupted", event)
            elif isinstance(event, botcall_sdk.ParticipantJoined):
                await self._transport._call_event_handler("on_participant_joined", event.participant)
            elif isinstance(event, botcall_sdk.ParticipantLeft):
                await self._transport._call_event_handler("on_participant_left", event.participant_id)
            elif isinstance(event, botcall_sdk.Chat):
                await self._transport._call_event_handler("on_chat", event)

    async def _stop_tasks(self) -> None:
        for task in self._tasks:
            await self.cancel_task(task)
        self._tasks.clear()

    async def stop(self, frame: EndFrame) -> None:
        await super().stop(frame)
        await self._stop_tasks()
        await self._session.stop()

    async def cancel(self, frame: CancelFrame) -> None:
        await super().cancel(frame)
        await self._stop_tasks()
        await self._session.stop()


class BotCallOutputTransport(BaseOutputTransport):
    """The pipeline's audio, streamed to the server's playout one utterance at a time."""

    def __init__(self, transport: BotCallTransport, session: _Session, params: BotCallParams, **kwargs: Any) -> None:
        super().__init__(params, **kwargs)
        self._session = session
        self._call: Call | None = None
        self._queue: asyncio.Queue[bytes | None] | None = None
        self._speech: Speech | None = None
        self._rate = 0
        self.last_interruption: Interruption | None = None
        """How far the last speech cut by an ``InterruptionFrame`` got."""

    async def start(self, frame: StartFrame) -> None:
        await super().start(frame)
        self._call = await self._session.start(self.sample_rate)
        await self.set_transport_ready(frame)

    async def write_audio_frame(self, frame: OutputAudioRawFrame) -> bool:
        call = self._call
        if call is None or call.closed:
            return False
        if self._queue is None or frame.sample_rate != self._rate:
            self._end_utterance()
            self._rate = frame.sample_rate
            self._queue = asyncio.Queue(OUTPUT_QUEUE_FRAMES)
            self._speech = await call.say(self._utterance(self._queue), sample_rate=frame.sample_rate)
        await self._queue.put(frame.audio)
        return True

    async def _utterance(self, queue: asyncio.Queue[bytes | None]) -> AsyncIterator[bytes]:
        gap = self._session.params.utterance_gap_s
        while True:
            try:
                chunk = await asyncio.wait_for(queue.get(), gap)
            except asyncio.TimeoutError:
                chunk = None
            if chunk is None:
                if self._queue is queue:
                    self._queue = None
                return
            yield chunk

    def _end_utterance(self) -> None:
        queue, self._queue = self._queue, None
        if queue is not None:
            try:
                queue.put_nowait(None)
            except asyncio.QueueFull:
                pass  # its reader is cancelled with the speech, or ends at the gap

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        if isinstance(frame, InterruptionFrame) and self._call is not None and not self._call.closed:
            speech, self._speech = self._speech, None
            self._end_utterance()
            if speech is not None and not speech.finished:
                # Clears the server's queue; says how much was played and heard.
                self.last_interruption = await speech.interrupt()
            else:
                await self._call.clear()
        await super().process_frame(frame, direction)

    async def stop(self, frame: EndFrame) -> None:
        await super().stop(frame)
        self._end_utterance()
        speech = self._speech
        if speech is not None and not speech.finished:
            try:
                await asyncio.wait_for(speech.done(), END_DRAIN_S)
            except asyncio.TimeoutError:
                log.warning("leaving with speech still playing after %g s", END_DRAIN_S)
        await self._session.stop()

    async def cancel(self, frame: CancelFrame) -> None:
        await super().cancel(frame)
        self._end_utterance()
        await self._session.stop()


class BotCallTransport(BaseTransport):
    """A Pipecat transport that joins a BotCall room as a bot.

    Args:
        server: the BotCall server's URL (``http://`` or ``https://``).
        room_id: the room to join.
        token: the bot's BotAuth attestation.
        params: ``BotCallParams``.
        agent_id: defaults to the token's subject.
    """

    def __init__(
        self, server: str, room_id: str, token: str, params: BotCallParams | None = None, *, agent_id: str | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(name=name)
        self._params = params or BotCallParams()
        self._session = _Session(server, room_id, token, self._params, agent_id)
        self._input: BotCallInputTransport | None = None
        self._output: BotCallOutputTransport | None = None
        for event in ("on_participant_joined", "on_participant_left", "on_interrupted", "on_chat"):
            self._register_event_handler(event)

    def input(self) -> BotCallInputTransport:
        if self._input is None:
            self._input = BotCallInputTransport(self, self._session, self._params, name=self._input_name)
        return self._input

    def output(self) -> BotCallOutputTransport:
        if self._output is None:
            self._output = BotCallOutputTransport(self, self._session, self._params, name=self._output_name)
        return self._output

    @property
    def call(self) -> Call | None:
        """The call, once the pipeline has started."""
        return self._session.call


__all__ = ["BotCallInputTransport", "BotCallOutputTransport", "BotCallParams", "BotCallTransport"]
