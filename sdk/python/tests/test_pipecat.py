"""The Pipecat transport against a real server, with the real ``pipecat-ai``.

No API keys: the pipelines are an echo and a "talker" standing in for a TTS.
A second bot (the SDK, on UDP) is the other side of the call, and the audio is
checked by its content:

* echo: the pipeline hears the other bot's speech, Pipecat gets
  ``UserStartedSpeakingFrame``/``UserStoppedSpeakingFrame`` from BotCall's
  speech events, and the other bot hears its own 440 Hz tone come back;
* interruption: the pipeline streams 10 s of 550 Hz; an ``InterruptionFrame``
  clears the server's queue, and the other bot hears as much of the tone as
  the server says was played, no more;
* barge-in: a human (the test kit's simulated browser) talks over the
  pipeline's tone; BotCall's ``Interrupted`` becomes Pipecat's interruption
  broadcast (an ``InterruptionFrame`` down the pipeline) and ``on_interrupted``;
* ``EndFrame``: the pipeline's bot leaves the room.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import numpy as np
import pytest

from pipecat.frames.frames import (  # noqa: E402
    EndFrame,
    Frame,
    InputAudioRawFrame,
    InterruptionFrame,
    OutputAudioRawFrame,
    StartFrame,
    UserStartedSpeakingFrame,
    UserStoppedSpeakingFrame,
)
from pipecat.pipeline.pipeline import Pipeline  # noqa: E402
from pipecat.pipeline.worker import PipelineParams, PipelineWorker  # noqa: E402
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor  # noqa: E402
from pipecat.workers.runner import WorkerRunner  # noqa: E402

import botcall_sdk  # noqa: E402
from botcall.demo.signals import dominant_frequency, rms_dbfs, tone  # noqa: E402
from botcall_sdk.pipecat import BotCallParams, BotCallTransport  # noqa: E402
from conftest import ServerThread, human_in  # noqa: E402
from tests.kit.speech_corpus import espeak  # noqa: E402

pytestmark = pytest.mark.e2e

WAIT = 30.0  # a safety net against a hang, not a speed requirement
IN_RATE = 16000
OUT_RATE = 24000


class Echo(FrameProcessor):  # type: ignore[misc]
    """What the pipeline hears, said back."""

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, InputAudioRawFrame):
            await self.push_frame(OutputAudioRawFrame(audio=frame.audio, sample_rate=frame.sample_rate, num_channels=1))
        else:
            await self.push_frame(frame, direction)


class Seen(FrameProcessor):  # type: ignore[misc]
    """Counts the frame types that pass; ``user_stopped`` is set by the first
    ``UserStoppedSpeakingFrame``, ``interruption`` by the first ``InterruptionFrame``."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: dict[str, int] = {}
        self.user_stopped = asyncio.Event()
        self.interruption = asyncio.Event()

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        self.seen[type(frame).__name__] = self.seen.get(type(frame).__name__, 0) + 1
        if isinstance(frame, UserStoppedSpeakingFrame):
            self.user_stopped.set()
        if isinstance(frame, InterruptionFrame):
            self.interruption.set()
        await self.push_frame(frame, direction)


class Talker(FrameProcessor):  # type: ignore[misc]
    """A stand-in for a TTS: on start, 10 s of 550 Hz in 20 ms frames, as fast as the output takes them."""

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        await self.push_frame(frame, direction)
        if isinstance(frame, StartFrame):
            self.create_task(self._talk())

    async def _talk(self) -> None:
        pcm = tone(550.0, 10.0, sample_rate=OUT_RATE)
        step = OUT_RATE // 50 * 2
        for start in range(0, len(pcm), step):
            await self.push_frame(OutputAudioRawFrame(audio=pcm[start : start + step], sample_rate=OUT_RATE, num_channels=1))


async def run_pipeline(server: ServerThread, room: str, agent: str, *processors: Any) -> tuple[BotCallTransport, PipelineWorker, asyncio.Task[None]]:
    transport = BotCallTransport(server.url, room, server.token(agent=agent), BotCallParams())
    pipeline = Pipeline([transport.input(), *processors, transport.output()])
    worker = PipelineWorker(
        pipeline, params=PipelineParams(audio_in_sample_rate=IN_RATE, audio_out_sample_rate=OUT_RATE), idle_timeout_secs=None,
    )
    runner = WorkerRunner(handle_sigint=False)
    await runner.add_workers(worker)
    task = asyncio.get_running_loop().create_task(runner.run())
    async with asyncio.timeout(WAIT):
        while transport.call is None or transport.call.participant_id is None:
            if task.done():
                task.result()
            await asyncio.sleep(0.02)
    return transport, worker, task


@asynccontextmanager
async def cancelled_on_failure(worker: PipelineWorker, task: asyncio.Task[None]) -> AsyncIterator[None]:
    """A failure in the block cancels the pipeline first: ``asyncio.run`` would
    otherwise wait at its exit, forever, for the runner's task."""
    try:
        yield
    except BaseException:
        if not task.done():
            await worker.cancel(reason="the test failed")
            await asyncio.wait([task], timeout=10)
        raise


async def frames_of(call: botcall_sdk.Call, speaker: str, count: int, *, loud: bool = True) -> bytes:
    heard = []
    async for frame in call.audio():
        if frame.speaker == speaker and not frame.concealed and (not loud or rms_dbfs(frame.pcm) > -40):
            heard.append(frame.pcm)
            if len(heard) == count:
                break
    return b"".join(heard)


async def left(call: botcall_sdk.Call, participant_id: str) -> None:
    async for event in call.events():
        if isinstance(event, botcall_sdk.ParticipantLeft) and event.participant_id == participant_id:
            return


def test_an_echo_pipeline_hears_the_call_and_is_heard(server: ServerThread) -> None:
    results: dict[str, Any] = {}

    async def scenario() -> None:
        room = (await botcall_sdk.create_room(server.url, server.token(agent="creator#1"))).room_id
        seen = Seen()
        transport, worker, task = await run_pipeline(server, room, "pipecat#1", seen, Echo())
        pipecat_id = transport.call.participant_id  # type: ignore[union-attr]
        async with botcall_sdk.connect(server.url, room, server.token(agent="caller#1")) as caller:
            async with cancelled_on_failure(worker, task), asyncio.timeout(WAIT):
                speech = np.concatenate([espeak("hello there, can you hear me"), np.zeros(24000, np.float32)])
                await caller.say(speech)
                await caller.say(tone(440.0, 3.0))
                # The speech comes back first (about 1.5 s of loud frames), then the tone.
                echoed = await frames_of(caller, pipecat_id, 200)
                results["echo_hz"] = dominant_frequency(echoed[-50 * 1920 :], 48000)
                await seen.user_stopped.wait()
                results["seen"] = dict(seen.seen)
                await worker.queue_frame(EndFrame())
                await left(caller, pipecat_id)
                await task

    asyncio.run(scenario())
    assert abs(results["echo_hz"] - 440) < 10, results
    seen = results["seen"]
    assert seen.get("InputAudioRawFrame", 0) >= 50, seen
    assert seen.get("UserStartedSpeakingFrame", 0) >= 1 and seen.get("UserStoppedSpeakingFrame", 0) >= 1, seen


def test_an_interruption_clears_the_servers_queue(server: ServerThread) -> None:
    results: dict[str, Any] = {}

    async def scenario() -> None:
        room = (await botcall_sdk.create_room(server.url, server.token(agent="creator#1"))).room_id
        async with botcall_sdk.connect(server.url, room, server.token(agent="listener#1")) as listener:
            transport, worker, task = await run_pipeline(server, room, "pipecat#2", Talker())
            pipecat_id = transport.call.participant_id  # type: ignore[union-attr]
            async with cancelled_on_failure(worker, task), asyncio.timeout(WAIT):
                first = await frames_of(listener, pipecat_id, 25)  # half a second of it
                results["hz"] = dominant_frequency(first, 48000)
                output = transport.output()
                await worker.queue_frame(InterruptionFrame())
                while output.last_interruption is None:
                    await asyncio.sleep(0.02)
                results["cut"] = output.last_interruption
                # Everything the server played reaches the listener (the tail in
                # flight included), and then, for half a second more, nothing.
                played_frames = results["cut"].played_ms // 20
                rest: list[bytes] = []
                all_played = asyncio.Event()
                if 25 >= played_frames - 3:
                    all_played.set()

                async def count() -> None:
                    async for frame in listener.audio():
                        if frame.speaker == pipecat_id and not frame.concealed and rms_dbfs(frame.pcm) > -40:
                            rest.append(frame.pcm)
                            if 25 + len(rest) >= played_frames - 3:
                                all_played.set()

                async with asyncio.TaskGroup() as group:
                    counting = group.create_task(count())
                    await all_played.wait()
                    await asyncio.sleep(0.5)  # a window for audio that should not come
                    counting.cancel()
                results["heard_ms"] = (25 + len(rest)) * 20
                await worker.queue_frame(EndFrame())
                await left(listener, pipecat_id)
                await task

    asyncio.run(scenario())
    cut = results["cut"]
    assert abs(results["hz"] - 550) < 10, results
    assert cut.dropped_ms > 0 and 500 <= cut.played_ms < 10_000, cut
    # What the listener heard of the tone is what the server played (±3 frames of edges and level gating).
    assert abs(results["heard_ms"] - cut.played_ms) <= 60, results


def test_a_human_barging_in_interrupts_the_pipeline(server: ServerThread) -> None:
    """A human talks over the pipeline's tone: the server's ``Interrupted`` is
    broadcast into the pipeline as an ``InterruptionFrame`` (the LLM and TTS stop
    too), and ``on_interrupted`` gets the event, by that human."""
    results: dict[str, Any] = {}

    async def scenario() -> None:
        room = await botcall_sdk.create_room(server.url, server.token(agent="creator#1"))
        async with human_in(server, room.room_id, room.invite_url) as human:
            seen = Seen()
            transport, worker, task = await run_pipeline(server, room.room_id, "pipecat#3", seen, Talker())
            call = transport.call
            assert call is not None
            handled: list[botcall_sdk.Interrupted] = []

            @transport.event_handler("on_interrupted")  # type: ignore[misc]
            async def on_interrupted(_transport: BotCallTransport, event: botcall_sdk.Interrupted) -> None:
                handled.append(event)

            async with cancelled_on_failure(worker, task), asyncio.timeout(WAIT):
                while call.counters["sent"] < 50:  # a second of the tone is queued at the server: the bot is talking
                    await asyncio.sleep(0.02)
                results["before"] = seen.seen.get("InterruptionFrame", 0)
                human.speak()
                await seen.interruption.wait()
                while not handled:
                    await asyncio.sleep(0.02)
                results["handled"], results["human"] = handled, human.participant_id
                results["seen"] = dict(seen.seen)
                # The Talker carries on after the interruption (a new utterance);
                # an EndFrame would wait for it to play. Leave at once.
                await worker.cancel(reason="the test is over")
                await task

    asyncio.run(scenario())
    print("barge-in:", results)
    assert results["before"] == 0
    [event] = results["handled"]
    assert event.by == results["human"] and event.dropped_ms > 0, event
    # The human was heard as a user first: BotCall's speech events reach the pipeline too.
    assert results["seen"].get(UserStartedSpeakingFrame.__name__, 0) >= 1, results["seen"]
