"""A real BotCall server for the SDK's tests, in a thread of its own.

The server is Trio; the SDK under test runs on asyncio or Trio in the test's
own thread, so each test picks its event loop (``asyncio.run`` / ``trio.run``)
the way a user's program does.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import anyio
import pytest
import trio

from tests.kit.server import LiveServer, running_server

T = TypeVar("T")


class ServerThread:
    """``running_server`` on 127.0.0.1, run by ``trio.run`` in a daemon thread."""

    def __init__(self, data_dir: Path, **overrides: Any) -> None:
        self._data_dir = data_dir
        self._overrides = overrides
        self._ready = threading.Event()
        self._stop: trio.Event | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self.live: LiveServer | None = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="botcall-server", daemon=True)

    def _run(self) -> None:
        try:
            trio.run(self._main)
        except BaseException as exc:  # reported by start()
            self.error = exc
            self._ready.set()

    async def _main(self) -> None:
        async with running_server(self._data_dir, **self._overrides) as live:
            self.live = live
            self._stop = trio.Event()
            self._token = trio.lowlevel.current_trio_token()
            self._ready.set()
            await self._stop.wait()

    def start(self) -> ServerThread:
        self._thread.start()
        if not self._ready.wait(30) or self.live is None:
            raise RuntimeError(f"the server did not start: {self.error!r}")
        return self

    def stop(self) -> None:
        if self._token is not None and self._stop is not None:
            self._token.run_sync_soon(self._stop.set)
        self._thread.join(10)

    @property
    def url(self) -> str:
        assert self.live is not None
        return self.live.url

    def token(self, **kwargs: Any) -> str:
        assert self.live is not None
        return self.live.token(**kwargs)

    def participants(self, room_id: str) -> list[str]:
        """The room's participant ids, read in the server's own thread."""
        assert self.live is not None
        live = self.live
        return self.read(lambda: [session.participant_id for session in live.state.registry.sessions_in_room(room_id)])

    def event_types(self, session_id: str) -> list[str]:
        """The types of the events a bot session's replay log holds (docs/protocol.md "Resuming")."""
        assert self.live is not None
        live = self.live

        def read() -> list[str]:
            log = live.state.started_hub().event_log(session_id)
            return [] if log is None else [json.loads(text)["type"] for text in log.since(log.oldest_held - 1)[1]]

        return self.read(read)

    def read(self, read: Callable[[], T]) -> T:
        """``read()`` run in the server's own thread, its answer returned here."""
        assert self._token is not None
        # Works from any thread, even one running its own trio.run (the test's).
        answer: concurrent.futures.Future[T] = concurrent.futures.Future()

        def run() -> None:
            try:
                answer.set_result(read())
            except BaseException as exc:
                answer.set_exception(exc)

        self._token.run_sync_soon(run)
        return answer.result(timeout=5)


HUMAN_JOIN_TIMEOUT = 20.0
REPO_ROOT = Path(__file__).resolve().parents[3]
HUMAN_SCRIPT = REPO_ROOT / "sdk" / "js" / "test" / "human.py"


class HumanProcess:
    """A human in a room: the test kit's simulated browser (tests/kit/browser_udp.py:
    real signaling, ICE, DTLS-SRTP over UDP) in a process of its own, the same
    ``sdk/js/test/human.py`` the Node SDK's tests drive.

    Not a thread of this process: ``botcall.webrtc.srtp`` shares one buffer
    among all SRTP contexts and must be called from one thread (its module
    docstring), and the server under test runs here. A human in a thread once
    corrupted packets now and then (its sender's rollover counter jumped and
    the relay refused every later packet), so a barge-in went unheard.

    Once its media flows it sends silence at real time (the relay's speech
    detector learns the noise floor from it); :meth:`speak` has it send three
    seconds of a speech-like signal (botcall.demo.signals.speech_like) instead.
    Use :func:`human_in`.

    Attributes:
        participant_id: the human's participant id, once joined.
    """

    def __init__(self, server: ServerThread, room_id: str, invite_url: str) -> None:
        assert server.live is not None
        self.participant_id: str | None = None
        self._process = subprocess.Popen(
            [sys.executable, str(HUMAN_SCRIPT), server.url, room_id, invite_url.split("#invite=")[1], str(server.live.state.media_port)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=REPO_ROOT, text=True,
            env={**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))},
        )

    def wait_joined(self) -> None:
        assert self._process.stdout is not None
        line = self._process.stdout.readline()
        if not line:
            raise RuntimeError(f"the simulated human did not join (exit {self._process.wait()})")
        self.participant_id = json.loads(line)["joined"]

    def speak(self) -> None:
        """Three seconds of speech from its next 20 ms tick."""
        assert self._process.stdin is not None
        self._process.stdin.write("speak\n")
        self._process.stdin.flush()

    def leave(self) -> None:
        assert self._process.stdin is not None
        try:
            self._process.stdin.close()
            self._process.wait(10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()


@asynccontextmanager
async def human_in(server: ServerThread, room_id: str, invite_url: str) -> AsyncIterator[HumanProcess]:
    """A :class:`HumanProcess` joined to the room (media flowing) for the block; it leaves on exit.

    Works under asyncio and Trio (the blocking waits run in a worker thread).
    """
    human = HumanProcess(server, room_id, invite_url)
    try:
        with anyio.fail_after(HUMAN_JOIN_TIMEOUT + 5):
            await anyio.to_thread.run_sync(human.wait_joined, abandon_on_cancel=True)
        yield human
    finally:
        await anyio.to_thread.run_sync(human.leave)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerThread]:
    thread = ServerThread(tmp_path).start()
    try:
        yield thread
    finally:
        thread.stop()
