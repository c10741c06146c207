"""A real BotCall server for the SDK's tests, in a thread of its own.

The server is Trio; the SDK under test runs on asyncio or Trio in the test's
own thread, so each test picks its event loop (``asyncio.run`` / ``trio.run``)
the way a user's program does.
"""

from __future__ import annotations

import collections
import concurrent.futures
import json
import re
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import anyio
import pytest
import trio
from trio_websocket import open_websocket_url

from botcall.audio.opus import OpusEncoder
from botcall.audio.vad import AUDIO_LEVEL_URI, frame_dbfs
from botcall.demo.signals import speech_like
from botcall.webrtc.dtls.certificate import DtlsCertificate
from botcall.wire.rtp import RtpHeaderExtension, RtpPacket
from tests.kit.browser import Browser, browser_offer
from tests.kit.browser_udp import signal_browser, udp_browser
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


FRAME_BYTES = 1920  # 20 ms at 48 kHz, int16 mono
HUMAN_JOIN_TIMEOUT = 20.0


def audio_level_id(answer: str) -> int | None:
    """The RFC 6464 extension id the relay's answer negotiated, if any."""
    found = re.search(r"a=extmap:(\d+)(?:/\w+)? " + re.escape(AUDIO_LEVEL_URI), answer)
    return int(found.group(1)) if found else None


def audio_level(level_id: int | None, pcm: bytes) -> RtpHeaderExtension | None:
    """The frame's RFC 6464 level (one-byte header form), as browsers send it."""
    if level_id is None:
        return None
    level = min(127, round(-frame_dbfs(pcm)))
    return RtpHeaderExtension(0xBEDE, bytes([level_id << 4, (0x80 if level < 127 else 0) | level, 0, 0]))


class HumanThread:
    """A human in a room: the test kit's simulated browser (tests/kit/browser_udp.py:
    real signaling, ICE, DTLS-SRTP over UDP), run by ``trio.run`` in a thread of its own.

    The SDK under test may run on asyncio, so the human cannot share its loop
    (the same human as sdk/js/test/human.py, in a thread instead of a process).
    Once its media flows it sends silence at real time (the relay's speech
    detector learns the noise floor from it); :meth:`speak` queues a
    speech-like signal (botcall.demo.signals.speech_like) in its place. Each
    packet carries its RFC 6464 level when the answer negotiated it, as
    Chromium and Firefox do, so the relay detects speech on the level path.
    Use :func:`human_in`.

    Attributes:
        participant_id: the human's participant id, once joined.
        error: what ended the thread, if it failed.
    """

    def __init__(self, server: ServerThread, room_id: str, invite_url: str) -> None:
        self._server = server
        self._room_id = room_id
        self._invite = invite_url.split("#invite=")[1]
        self._pending: collections.deque[bytes] = collections.deque()  # appended by the test's thread
        self._joined = threading.Event()
        self._stop = threading.Event()
        self.participant_id: str | None = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="botcall-human", daemon=True)

    def speak(self, seconds: float = 3.0) -> None:
        """Queue ``seconds`` of speech; it goes out from the next 20 ms tick (safe from any thread)."""
        speech = speech_like(seconds)
        self._pending.extend(speech[i : i + FRAME_BYTES] for i in range(0, len(speech) - FRAME_BYTES + 1, FRAME_BYTES))

    def _run(self) -> None:
        try:
            trio.run(self._main)
        except BaseException as exc:  # reported by human_in
            self.error = exc
        finally:
            self._joined.set()

    async def _main(self) -> None:
        assert self._server.live is not None
        live = self._server.live
        ws_url = live.url.replace("http://", "ws://") + f"/v1/signal/{self._room_id}"
        certificate = DtlsCertificate.generate()
        async with open_websocket_url(ws_url) as ws:
            with trio.fail_after(HUMAN_JOIN_TIMEOUT):
                signaled = await signal_browser(ws, self._invite, browser_offer(certificate), display_name="Human")
            relay = ("127.0.0.1", live.state.media_port)
            async with udp_browser(Browser(signaled.answer, certificate, relay_addr=relay)) as browser:
                with trio.fail_after(HUMAN_JOIN_TIMEOUT):
                    await browser.connect()
                self.participant_id = signaled.participant_id
                self._joined.set()
                encoder = OpusEncoder()
                level_id = audio_level_id(signaled.answer)
                silence = bytes(FRAME_BYTES)
                start = trio.current_time()
                index = 0
                while not self._stop.is_set():
                    frame = self._pending.popleft() if self._pending else silence
                    packet = RtpPacket(
                        111, index & 0xFFFF, (index * 960) & 0xFFFFFFFF, browser.core.send_ssrc,
                        payload=encoder.encode(frame), extension=audio_level(level_id, frame),
                    )
                    await browser.send_rtp(packet)
                    index += 1
                    await trio.sleep_until(start + index * 0.02)


@asynccontextmanager
async def human_in(server: ServerThread, room_id: str, invite_url: str) -> AsyncIterator[HumanThread]:
    """A :class:`HumanThread` joined to the room (media flowing) for the block; it leaves on exit.

    Works under asyncio and Trio (the waits on the thread run in a worker thread).
    """
    human = HumanThread(server, room_id, invite_url)
    human._thread.start()
    try:
        await anyio.to_thread.run_sync(human._joined.wait, HUMAN_JOIN_TIMEOUT + 5)
        if human.participant_id is None:
            raise RuntimeError(f"the simulated human did not join: {human.error!r}")
        yield human
    finally:
        human._stop.set()
        await anyio.to_thread.run_sync(human._thread.join, 10)
    if human.error is not None:
        raise RuntimeError(f"the simulated human failed: {human.error!r}") from human.error


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerThread]:
    thread = ServerThread(tmp_path).start()
    try:
        yield thread
    finally:
        thread.stop()


# A simulated human's calls run with the browser legs' SRTP in Python: on the
# compiled fast path (media_fast_srtp, the default), about one run in 20-30
# under a CPU hog lost the human's SRTP at the moment the bot joined (54
# packets authenticated, then every one refused as srtp_auth_failed, so the
# barge-in never came); 90 runs with it off under the same hog never did. That
# is a relay defect, recorded in the stop's note and reproduced there; these
# tests are about the SDK.
@pytest.fixture
def server_with_a_human(tmp_path: Path) -> Iterator[ServerThread]:
    thread = ServerThread(tmp_path, media_fast_srtp=False).start()
    try:
        yield thread
    finally:
        thread.stop()

