"""The examples in ``examples/`` run as a user runs them, against a real server.

Each example is started as a subprocess (``python examples/X.py``) with the
server, room and token in ``BOTCALL_SERVER``/``BOTCALL_ROOM``/``BOTCALL_TOKEN``.
A second bot in the test (the SDK, on asyncio) is the other side of the call:
it checks what the example said by the audio's content (the 20 ms level
envelope of ``examples/hello.wav``, aligned) and what it printed.
"""

from __future__ import annotations

import asyncio
import collections
import importlib.util
import os
import shutil
import sys
import wave
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

import anyio
import numpy as np
import pytest

import botcall_sdk
from conftest import ServerThread

T = TypeVar("T")

REPO = Path(__file__).resolve().parents[3]
EXAMPLES = REPO / "examples"
HELLO = EXAMPLES / "hello.wav"
# The last resort against a hang, not a speed requirement: every step waits on
# an event (a line printed, a participant joined, the server's end of speech,
# the process's exit) and fails at once, with the example's output, when the
# example exits first. About 5 s quiet, 11 s beside `stress-ng --cpu 2`.
WAIT = 120.0
FLOOR_DB = -60.0
FRAME_MS = 20
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


def hello_match(heard: np.ndarray) -> dict[str, Any]:
    """How well ``heard`` matches hello.wav (``match``), with the envelope itself (``heard_db``) for a failure's message."""
    return {"match": envelope_match(hello_envelope(), heard), "heard_db": np.round(heard).astype(int).tolist()}


def example_env(server: ServerThread, room: str, agent: str) -> dict[str, str]:
    path = os.pathsep.join(filter(None, (str(REPO / "sdk" / "python"), os.environ.get("PYTHONPATH"))))
    return {
        **os.environ, "PYTHONPATH": path, "PYTHONUNBUFFERED": "1",
        "BOTCALL_SERVER": server.url, "BOTCALL_ROOM": room, "BOTCALL_TOKEN": server.token(agent=agent),
    }


class Progress:
    """What the running scenario waits for and what it has seen so far, for the
    message of a guard that runs out (the tests of this file run one at a time)."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.step = "starting"
        self.seen: dict[str, Any] = {}

    def __str__(self) -> str:
        return f"while {self.step}; seen: {self.seen}"


PROGRESS = Progress()


class ExampleExited(AssertionError):
    """The example exited while the test waited for something from it."""


class Example:
    """``python examples/<name>`` as a subprocess; its output is collected as it comes.

    ``printed`` and ``unless_exited`` wait on events (output arriving, the
    process exiting), never on the clock.
    """

    def __init__(self, name: str, env: dict[str, str], *args: str) -> None:
        self.command = [sys.executable, str(EXAMPLES / name), *args]
        self.env = env
        self.stdout = ""
        self.stderr = ""
        self.returncode: int | None = None
        # Made in run(), on the test's event loop: set (and replaced) at every chunk of output.
        self._output: anyio.Event | None = None
        self._exited: anyio.Event | None = None

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        self._output = anyio.Event()
        self._exited = anyio.Event()
        try:
            async with await anyio.open_process(self.command, env=self.env, cwd=str(REPO)) as process:
                task_status.started()

                async def read(stream: anyio.abc.ByteReceiveStream, name: str) -> None:
                    async for chunk in stream:
                        setattr(self, name, getattr(self, name) + chunk.decode(errors="replace"))
                        self._wake()

                assert process.stdout is not None and process.stderr is not None
                async with anyio.create_task_group() as group:
                    group.start_soon(read, process.stdout, "stdout")
                    group.start_soon(read, process.stderr, "stderr")
                    self.returncode = await process.wait()
        finally:
            self._exited.set()
            self._wake()

    def _wake(self) -> None:
        assert self._output is not None
        output, self._output = self._output, anyio.Event()
        output.set()

    def report(self, what: str) -> str:
        """``what`` with the example's exit status and output so far, for a failure's message."""
        status = "still running" if self.returncode is None else f"exit status {self.returncode}"
        return f"{self.command[1]} ({status}): {what}\n--- stdout:\n{self.stdout}\n--- stderr:\n{self.stderr}"

    async def printed(self, text: str) -> None:
        """Until the example has printed ``text``; ExampleExited if it exits without."""
        while text not in self.stdout:
            assert self._output is not None and self._exited is not None, "run() first"
            if self._exited.is_set():
                raise ExampleExited(self.report(f"exited without printing {text!r}"))
            await self._output.wait()

    async def unless_exited(self, step: Callable[[], Awaitable[T]], what: str) -> T:
        """``await step()``; ExampleExited at once if the example exits before it returns."""
        assert self._exited is not None, "run() first"
        result: list[T] = []
        async with anyio.create_task_group() as group:

            async def take_step() -> None:
                result.append(await step())
                group.cancel_scope.cancel()

            async def watch_exit() -> None:
                assert self._exited is not None
                await self._exited.wait()
                group.cancel_scope.cancel()

            group.start_soon(take_step)
            group.start_soon(watch_exit)
        if not result:
            raise ExampleExited(self.report(f"exited while the test waited for it to {what}"))
        return result[0]


async def joined(call: botcall_sdk.Call) -> str:
    """The participant id of the next one to join."""
    PROGRESS.step = "waiting for the example to join"
    async for event in call.events():
        if isinstance(event, botcall_sdk.ParticipantJoined):
            return event.participant.participant_id
    raise AssertionError("the call ended")


async def hear_utterance(call: botcall_sdk.Call, speaker: str, *, most: int = 400) -> np.ndarray:
    """``speaker``'s level envelope (one dBFS value per 20 ms frame) from now to the end of their utterance.

    The end is an event, not a time without frames (which a test process held
    up by a busy machine would take for the end): the server's
    ``speech_stopped`` for ``speaker`` gives the stream position of their last
    speech frame, and frames are read until that one has come; or ``speaker``
    leaves (a bot that leaves as its speech ends may go before its
    ``speech_stopped``), and frames are read until the SDK has played the last
    of what it had received from them (it then forgets their SSRC).

    Raises:
        AssertionError: more than ``most`` frames without an end of speech, or the call ended.
    """
    levels: list[float] = []
    stop_ms: list[int] = []  # the speaker's speech_stopped, once it comes
    last_ms = -1  # the newest stream position heard from the speaker
    frames = aiter(call.audio())
    PROGRESS.step = f"hearing {speaker}'s utterance"
    by_speaker: collections.Counter[str | None] = collections.Counter()
    events_seen: list[str] = []
    PROGRESS.seen.update(frames_by_speaker=by_speaker, events=events_seen, stop_ms=stop_ms)

    def take(frame: botcall_sdk.AudioFrame) -> None:
        nonlocal last_ms
        by_speaker[frame.speaker] += 1
        PROGRESS.seen["last_frame_ms"] = frame.stream_ms
        if frame.speaker != speaker:
            return
        levels.append(float(envelope_db(frame.samples, frame.sample_rate)[0]))
        last_ms = max(last_ms, frame.stream_ms)
        assert len(levels) <= most, f"{speaker} spoke for more than {most} frames without a speech_stopped"

    def heard_to_the_stop() -> bool:
        return bool(stop_ms) and last_ms >= stop_ms[0] - FRAME_MS

    async with anyio.create_task_group() as group:

        async def read_frames() -> None:
            async for frame in frames:
                take(frame)
                if heard_to_the_stop():
                    group.cancel_scope.cancel()
            raise AssertionError("the call ended")

        async def follow_events() -> None:
            async for event in call.events():
                events_seen.append(type(event).__name__)
                if isinstance(event, botcall_sdk.SpeechStopped) and event.participant_id == speaker and not stop_ms:
                    stop_ms.append(event.stream_ms)
                    if heard_to_the_stop():
                        group.cancel_scope.cancel()
                elif isinstance(event, botcall_sdk.ParticipantLeft) and event.participant_id == speaker:
                    group.cancel_scope.cancel()
            raise AssertionError("the call ended")

        group.start_soon(read_frames)
        group.start_soon(follow_events)
    PROGRESS.seen["ended"] = f"at {speaker}'s speech_stopped" if heard_to_the_stop() else f"{speaker} left"
    while not heard_to_the_stop():
        # The speaker left. Take the frames already queued (the inbox hands
        # out what it holds without waiting; the cancelled scope ends the
        # first wait for more). The SDK still plays what it had received of
        # theirs, and forgets their SSRC in the tick of their last frame:
        # while it knows it, another frame is on its way.
        with anyio.CancelScope() as drain:
            drain.cancel()
            async for frame in frames:
                take(frame)
        if speaker not in call._ssrc_to_participant.values():
            break
        take(await anext(frames))
    return np.array(levels)


def call_example(server: ServerThread, room: str, example: Example, caller_agent: str, body: Callable[[botcall_sdk.Call, str], Awaitable[None]]) -> None:
    """Run ``example`` while a caller in ``room`` does ``body(caller, example's participant id)``; the example must exit 0."""

    async def scenario() -> None:
        PROGRESS.reset()
        async with botcall_sdk.connect(server.url, room, server.token(agent=caller_agent)) as caller:
            try:
                with anyio.fail_after(WAIT):
                    async with anyio.create_task_group() as group:
                        await group.start(example.run)
                        example_id = await example.unless_exited(lambda: joined(caller), "join the room")
                        await body(caller, example_id)
                        PROGRESS.step = "waiting for the example to exit"
            except TimeoutError as exc:
                raise AssertionError(
                    example.report(f"not done after {WAIT} s {PROGRESS}")
                    + f"\n--- the caller counted: {caller.counters}\n--- the relay: {relay_state(server, room)}"
                ) from exc

    asyncio.run(scenario())
    assert example.returncode == 0, example.report("failed")


def relay_state(server: ServerThread, room: str) -> list[dict[str, Any]]:
    """The relay's view of ``room``'s peers (packets, drops, speech, playout), read in the server's thread."""
    assert server.live is not None
    live = server.live

    def read() -> list[dict[str, Any]]:
        peers = []
        for session in live.state.registry.sessions_in_room(room):
            peer = live.state.media.relay.peer(session.session_id)
            if peer is None:
                peers.append({"participant": session.participant_id, "peer": None})
                continue
            speech = peer.speech
            peers.append({
                "participant": peer.participant_id, "ssrc": peer.ssrc, "addr": peer.addr, "rx": peer.rx_packets, "tx": peer.tx_packets,
                "drops": dict(peer.drops), "speech_onset_ms": None if speech is None else speech.onset_ms,
                "speech_last_ms": None if speech is None else speech.last_ms,
                "playout_pending": None if peer.playout is None else peer.playout.pending,
            })
        return peers

    return server.read(read)


def new_room(server: ServerThread) -> str:
    return anyio.run(lambda: botcall_sdk.create_room(server.url, server.token(agent="creator#1"))).room_id


def test_echo_bot_says_back_what_it_hears(server: ServerThread) -> None:
    room = new_room(server)
    example = Example("echo_bot.py", example_env(server, room, "echo#1"), "--replies", "1")
    results: dict[str, Any] = {}

    async def body(caller: botcall_sdk.Call, echo_id: str) -> None:
        await example.printed("echo bot joined")
        await caller.say(HELLO)
        heard = await hear_utterance(caller, echo_id)
        results.update(hello_match(heard))
        results["loud_ms"] = float(np.sum(heard > -40) * 20)

    call_example(server, room, example, "caller#1", body)
    assert "saying it back" in example.stdout and "echo bot leaves" in example.stdout, example.stdout
    reference_loud_ms = float(np.sum(hello_envelope() > -40) * 20)
    assert results["match"] > 0.8, f"{results} {PROGRESS}"
    assert abs(results["loud_ms"] - reference_loud_ms) <= 300, (results, reference_loud_ms)


def test_echo_bot_runs_under_trio_too(server: ServerThread) -> None:
    room = new_room(server)
    example = Example("echo_bot.py", example_env(server, room, "echo#2"), "--replies", "1", "--backend", "trio")
    results: dict[str, Any] = {}

    async def body(caller: botcall_sdk.Call, echo_id: str) -> None:
        await example.printed("echo bot joined")
        await caller.say(HELLO)
        results.update(hello_match(await hear_utterance(caller, echo_id)))

    call_example(server, room, example, "caller#2", body)
    assert results["match"] > 0.8, f"{results} {PROGRESS}"


def test_espeak_bot_speaks_its_text_and_reports_speech(server: ServerThread) -> None:
    room = new_room(server)
    # The same words as hello.wav, synthesised by the same espeak-ng voice: the envelopes match.
    example = Example("espeak_bot.py", example_env(server, room, "espeak#1"), "--text", "Hello from BotCall", "--utterances", "1")
    results: dict[str, Any] = {}

    async def body(caller: botcall_sdk.Call, bot_id: str) -> None:
        results.update(hello_match(await hear_utterance(caller, bot_id)))
        await caller.say(HELLO)
        results["caller"] = caller.participant_id

    call_example(server, room, example, "caller#3", body)
    assert results["match"] > 0.8, f"{results} {PROGRESS}"
    out = example.stdout
    assert "speaking 'Hello from BotCall' (22050 Hz, streamed)" in out, out
    started = out.index(f"{results['caller']} started speaking")
    stopped = out.index(f"{results['caller']} stopped speaking after")
    assert started < stopped, out
    assert "my speech played to the end" in out, out


def load_example(name: str) -> ModuleType:
    """``examples/<name>`` imported as a module (the examples are scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(f"example_{Path(name).stem}", EXAMPLES / name)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")
def test_espeak_stream_keeps_what_came_with_the_header(monkeypatch: pytest.MonkeyPatch) -> None:
    """A late reader gets espeak-ng's whole output in its first read (it fits the
    64 KiB pipe): the PCM after the header must still come out. It did not: the
    bot said nothing, and its test waited for speech until its guard ran out
    (under `stress-ng --cpu 2`, about 1 run in 10)."""
    espeak_bot = load_example("espeak_bot.py")
    open_process = anyio.open_process

    async def read_late(*args: Any, **kwargs: Any) -> anyio.abc.Process:
        process = await open_process(*args, **kwargs)
        await process.wait()  # espeak-ng has written everything before our first read
        return process

    async def pcm_bytes(late: bool) -> tuple[int, int]:
        monkeypatch.setattr(anyio, "open_process", read_late if late else open_process)
        rate, pcm = await espeak_bot.espeak_stream("Hello from BotCall")
        return rate, sum([len(chunk) async for chunk in pcm])

    prompt = anyio.run(pcm_bytes, False)
    late = anyio.run(pcm_bytes, True)
    assert prompt[0] == late[0] == 22050
    assert late[1] == prompt[1] > 22050  # over half a second of 16-bit audio, all of it
    assert late[1] % 2 == 0


def test_an_asyncio_bot_uses_httpx_while_it_talks(server: ServerThread) -> None:
    room = new_room(server)
    example = Example("asyncio_with_httpx.py", example_env(server, room, "httpx#1"))
    results: dict[str, Any] = {}

    async def body(caller: botcall_sdk.Call, bot_id: str) -> None:
        results.update(hello_match(await hear_utterance(caller, bot_id)))
        await example.printed("speech finished")

    call_example(server, room, example, "caller#4", body)
    assert results["match"] > 0.8, f"{results} {PROGRESS}"
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
    results: dict[str, Any] = {}

    async def body(caller: botcall_sdk.Call, bot_id: str) -> None:
        await caller.say(HELLO)
        results.update(hello_match(await hear_utterance(caller, bot_id)))

    call_example(server, room, example, "caller#5", body)
    assert results["match"] > 0.8, f"{results} {PROGRESS}"
    assert "someone started speaking" in example.stdout and "pipeline ended, left the room" in example.stdout, example.stdout
