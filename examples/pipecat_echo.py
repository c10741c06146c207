"""A Pipecat pipeline in a BotCall room: everything it hears, it says back.

Run it (``pip install "botcall-sdk[pipecat]"``, or pipecat-ai beside the SDK)::

    python examples/pipecat_echo.py --server http://127.0.0.1:8080 --room ROOM --token TOKEN

or with ``BOTCALL_SERVER``, ``BOTCALL_ROOM`` and ``BOTCALL_TOKEN`` in the
environment. ``--seconds N`` ends the pipeline (``EndFrame``: the queued
speech finishes, then the bot leaves) after N seconds; by default it runs
until Ctrl-C.

``BotCallTransport.input()`` yields the call's mix-minus (everyone but the
bot) as ``InputAudioRawFrame`` s; ``output()`` plays ``OutputAudioRawFrame`` s
through the server's playout. Put your STT → LLM → TTS where ``Echo`` is; no
API key is needed for this one.
"""

from __future__ import annotations

import argparse
import asyncio
import os
from typing import Any

from pipecat.frames.frames import EndFrame, Frame, InputAudioRawFrame, OutputAudioRawFrame, UserStartedSpeakingFrame, UserStoppedSpeakingFrame
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.workers.runner import WorkerRunner

from botcall_sdk.pipecat import BotCallParams, BotCallTransport

SAMPLE_RATE = 16000


class Echo(FrameProcessor):  # type: ignore[misc]
    """What the pipeline hears goes back out; the rest passes through."""

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, InputAudioRawFrame):
            await self.push_frame(OutputAudioRawFrame(audio=frame.audio, sample_rate=frame.sample_rate, num_channels=frame.num_channels))
            return
        if isinstance(frame, UserStartedSpeakingFrame):
            print("someone started speaking", flush=True)
        elif isinstance(frame, UserStoppedSpeakingFrame):
            print("someone stopped speaking", flush=True)
        await self.push_frame(frame, direction)


async def main(server: str, room: str, token: str, seconds: float | None) -> None:
    transport = BotCallTransport(server, room, token, BotCallParams())

    @transport.event_handler("on_participant_joined")  # type: ignore[misc]
    async def joined(_transport: BotCallTransport, participant: Any) -> None:
        print(f"{participant.participant_id} joined", flush=True)

    pipeline = Pipeline([transport.input(), Echo(), transport.output()])
    worker = PipelineWorker(
        pipeline,
        params=PipelineParams(audio_in_sample_rate=SAMPLE_RATE, audio_out_sample_rate=SAMPLE_RATE),
        idle_timeout_secs=None,
    )
    runner = WorkerRunner()
    await runner.add_workers(worker)

    async def end_later() -> None:
        assert seconds is not None
        await asyncio.sleep(seconds)
        print("ending the pipeline", flush=True)
        await worker.queue_frame(EndFrame())

    async with asyncio.TaskGroup() as group:
        if seconds is not None:
            group.create_task(end_later())
        await runner.run()
    print("pipeline ended, left the room", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", default=os.environ.get("BOTCALL_SERVER", "http://127.0.0.1:8080"))
    parser.add_argument("--room", default=os.environ.get("BOTCALL_ROOM"))
    parser.add_argument("--token", default=os.environ.get("BOTCALL_TOKEN"))
    parser.add_argument("--seconds", type=float, default=None, help="end the pipeline after this long")
    args = parser.parse_args()
    if not args.room or not args.token:
        parser.error("--room and --token (or BOTCALL_ROOM and BOTCALL_TOKEN) are needed")
    asyncio.run(main(args.server, args.room, args.token, args.seconds))
