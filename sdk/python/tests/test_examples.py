"""The examples in ``examples/`` run as a user runs them, against a real server.

Each example is started as a subprocess (``python examples/X.py``) with the
server, room and token in ``BOTCALL_SERVER``/``BOTCALL_ROOM``/``BOTCALL_TOKEN``.
A second bot in the test (the SDK, on asyncio) is the other side of the call:
it checks what the example said by the audio's content (the 20 ms level
envelope of ``examples/hello.wav``, aligned) and what it printed.
"""

from __future__ import annotations

import asyncio
import math
import os
import sys
import wave
from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio
import numpy as np
import pytest

import botcall_sdk
from conftest import ServerThread

REPO = Path(__file__).resolve().parents[3]
EXAMPLES = REPO / "examples"
HELLO = EXAMPLES / "hello.wav"
WAIT = 45.0  # a safety net against a hang, not a speed requirement
FLOOR_DB = -60.0
pytestmark = pytest.mark.e2e


def envelope_db(samples: np.ndarray, rate: int) -> np.ndarray:
    """The level of every 20 ms of int16 ``samples``, in dBFS, floored at -60."""
    frame = rate // 50
    count = samples.size // frame
    blocks = samples[: count * frame].reshape(count, frame).astype(np.float64) / 32768.0
    return np.maximum(10 * np.log10(np.maximum(np.mean(blocks * blocks, axis=1), 1e-12)), FLOOR_DB)


def hello_envelope() -> np.ndarray:
    """hello.wav's envelope from its first loud frame to its last."""
    with wave.open(str(HELLO)) as wav:
        levels = envelope_db(np.frombuffer(wav.readframes(wav.getnframes()), "<i2"), wav.getframerate())
    loud = np.flatnonzero(levels > -40)
    return levels[loud[0] : loud[-1] + 1]


def envelope_match(reference: np.ndarray, heard: np.ndarray) -> float:
    """The best Pearson correlation of ``reference`` against ``heard`` over every lag (0 if it does not fit)."""
    best = 0.0
    for lag in range(0, heard.size - reference.size + 1):
        window = heard[lag : lag + reference.size]
        if window.std() > 0:
            best = max(best, float(np.corrcoef(reference, window)[0, 1]))
    return best


def example_env(server: ServerThread, room: str, agent: str) -> dict[str, str]:
    path = os.pathsep.join(filter(None, (str(REPO / "sdk" / "python"), os.environ.get("PYTHONPATH"))))
    return {
        **os.environ, "PYTHONPATH": path, "PYTHONUNBUFFERED": "1",
        "BOTCALL_SERVER": server.url, "BOTCALL_ROOM": room, "BOTCALL_TOKEN": server.token(agent=agent),
    }


class Example:
    """``python examples/<name>`` as a subprocess; its output is collected as it comes."""

    def __init__(self, name: str, env: dict[str, str], *args: str) -> None:
        self.command = [sys.executable, str(EXAMPLES / name), *args]
        self.env = env
        self.stdout = ""
        self.stderr = ""
        self.returncode: int | None = None

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        async with await anyio.open_process(self.command, env=self.env, cwd=str(REPO)) as process:
            task_status.started()

            async def read(stream: anyio.abc.ByteReceiveStream, name: str) -> None:
                async for chunk in stream:
                    setattr(self, name, getattr(self, name) + chunk.decode(errors="replace"))

            assert process.stdout is not None and process.stderr is not None
            async with anyio.create_task_group() as group:
                group.start_soon(read, process.stdout, "stdout")
                group.start_soon(read, process.stderr, "stderr")
                self.returncode = await process.wait()

    async def printed(self, text: str) -> None:
        while text not in self.stdout:
            if self.returncode is not None:
                raise AssertionError(f"{self.command[1]} exited {self.returncode} without printing {text!r}:\n{self.stdout}\n{self.stderr}")
            await anyio.sleep(0.05)


async def joined(call: botcall_sdk.Call) -> str:
    """The participant id of the next one to join."""
    async for event in call.events():
        if isinstance(event, botcall_sdk.ParticipantJoined):
            return event.participant.participant_id
    raise AssertionError("the call ended")


async def hear_utterance(call: botcall_sdk.Call, speaker: str, *, most: int = 400, quiet_after: int = 25) -> np.ndarray:
    """``speaker``'s level envelope from now until, after a loud frame, ``quiet_after`` frames' time of quiet.

    Quiet is quiet frames or no frames at all (a talkspurt's end sends nothing).
    """
    levels: list[float] = []
    quiet = -1
    frames = aiter(call.audio())
    while quiet < quiet_after and len(levels) < most:
        frame = None
        with anyio.move_on_after(0.02 * quiet_after if quiet >= 0 else math.inf):
            frame = await anext(frames)
            while frame.speaker != speaker:
                frame = await anext(frames)
        if frame is None:
            break  # nothing from the speaker for quiet_after frames' time
        level = float(envelope_db(frame.samples, frame.sample_rate)[0])
        levels.append(level)
        if level > -40:
            quiet = 0
        elif quiet >= 0:
            quiet += 1
    return np.array(levels)


def call_example(server: ServerThread, room: str, example: Example, caller_agent: str, body: Callable[[botcall_sdk.Call, str], Awaitable[None]]) -> None:
    """Run ``example`` while a caller in ``room`` does ``body(caller, example's participant id)``; the example must exit 0."""

    async def scenario() -> None:
        async with botcall_sdk.connect(server.url, room, server.token(agent=caller_agent)) as caller:
            with anyio.fail_after(WAIT):
                async with anyio.create_task_group() as group:
                    await group.start(example.run)
                    await body(caller, await joined(caller))

    asyncio.run(scenario())
    assert example.returncode == 0, example.stderr


def new_room(server: ServerThread) -> str:
    return anyio.run(lambda: botcall_sdk.create_room(server.url, server.token(agent="creator#1"))).room_id


def test_echo_bot_says_back_what_it_hears(server: ServerThread) -> None:
    room = new_room(server)
    example = Example("echo_bot.py", example_env(server, room, "echo#1"), "--replies", "1")
    results: dict[str, float] = {}

    async def body(caller: botcall_sdk.Call, echo_id: str) -> None:
        await example.printed("echo bot joined")
        await caller.say(HELLO)
        heard = await hear_utterance(caller, echo_id)
        results["match"] = envelope_match(hello_envelope(), heard)
        results["loud_ms"] = float(np.sum(heard > -40) * 20)

    call_example(server, room, example, "caller#1", body)
    assert "saying it back" in example.stdout and "echo bot leaves" in example.stdout, example.stdout
    reference_loud_ms = float(np.sum(hello_envelope() > -40) * 20)
    assert results["match"] > 0.8, results
    assert abs(results["loud_ms"] - reference_loud_ms) <= 300, (results, reference_loud_ms)


def test_echo_bot_runs_under_trio_too(server: ServerThread) -> None:
    room = new_room(server)
    example = Example("echo_bot.py", example_env(server, room, "echo#2"), "--replies", "1", "--backend", "trio")
    results: dict[str, float] = {}

    async def body(caller: botcall_sdk.Call, echo_id: str) -> None:
        await example.printed("echo bot joined")
        await caller.say(HELLO)
        results["match"] = envelope_match(hello_envelope(), await hear_utterance(caller, echo_id))

    call_example(server, room, example, "caller#2", body)
    assert results["match"] > 0.8, results


def test_espeak_bot_speaks_its_text_and_reports_speech(server: ServerThread) -> None:
    room = new_room(server)
    # The same words as hello.wav, synthesised by the same espeak-ng voice: the envelopes match.
    example = Example("espeak_bot.py", example_env(server, room, "espeak#1"), "--text", "Hello from BotCall", "--utterances", "1")
    results: dict[str, object] = {}

    async def body(caller: botcall_sdk.Call, bot_id: str) -> None:
        results["match"] = envelope_match(hello_envelope(), await hear_utterance(caller, bot_id))
        await caller.say(HELLO)
        results["caller"] = caller.participant_id

    call_example(server, room, example, "caller#3", body)
    assert float(results["match"]) > 0.8, results  # type: ignore[arg-type]
    out = example.stdout
    assert "speaking 'Hello from BotCall' (22050 Hz, streamed)" in out, out
    started = out.index(f"{results['caller']} started speaking")
    stopped = out.index(f"{results['caller']} stopped speaking after")
    assert started < stopped, out
    assert "my speech played to the end" in out, out


def test_an_asyncio_bot_uses_httpx_while_it_talks(server: ServerThread) -> None:
    room = new_room(server)
    example = Example("asyncio_with_httpx.py", example_env(server, room, "httpx#1"))
    results: dict[str, float] = {}

    async def body(caller: botcall_sdk.Call, bot_id: str) -> None:
        results["match"] = envelope_match(hello_envelope(), await hear_utterance(caller, bot_id))
        await example.printed("speech finished")

    call_example(server, room, example, "caller#4", body)
    assert results["match"] > 0.8, results
    lines = example.stdout.splitlines()
    polls = [line for line in lines if line.startswith("healthz while speaking: ok, 2 sessions")]
    assert len(polls) >= 2, example.stdout  # more than once during the 1.5 s speech: concurrent with it
    finished = next(line for line in lines if line.startswith("speech finished"))
    assert finished.startswith("speech finished: played to the end"), example.stdout
    assert lines.index(polls[-1]) < lines.index(finished)


def test_pipecat_echo_pipeline(server: ServerThread) -> None:
    pytest.importorskip("pipecat")
    room = new_room(server)
    example = Example("pipecat_echo.py", example_env(server, room, "pipecat#1"), "--seconds", "8")
    results: dict[str, float] = {}

    async def body(caller: botcall_sdk.Call, bot_id: str) -> None:
        await caller.say(HELLO)
        results["match"] = envelope_match(hello_envelope(), await hear_utterance(caller, bot_id))

    call_example(server, room, example, "caller#5", body)
    assert results["match"] > 0.8, results
    assert "someone started speaking" in example.stdout and "pipeline ended, left the room" in example.stdout, example.stdout
