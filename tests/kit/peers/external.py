"""Drive an independent WebRTC human (aiortc or werift) from a Trio test.

The peer is a child process speaking JSON lines (see ``aiortc_human.py``): it
reports ``connected``, ``renegotiated`` and how many samples it has recorded;
it takes ``same_offer``, ``add_track``, ``restart_ice`` and ``quit``. What it
hears is a file of 48 kHz mono int16, read back here.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import trio

from tests.kit.system import HarnessError

REPO_ROOT = Path(__file__).resolve().parents[3]
PEERS = Path(__file__).resolve().parent
AIORTC_PYTHON = REPO_ROOT / ".venv-peers" / "bin" / "python"
WERIFT_DIR = PEERS / "werift"
RATE = 48000
# Patience for a peer's step (a time-out, not a speed requirement: they take
# tens of milliseconds; a busy machine and Python's DTLS stretch that).
STEP_TIMEOUT = 30.0


@dataclass(frozen=True)
class PeerKind:
    """One independent implementation: how to start it and what it can do."""

    name: str
    steps: tuple[str, ...]

    def command(self, signal_url: str, invite: str, tone: float, record: Path) -> list[str]:
        # "--opt=value": an invite secret is url-safe base64 and may start
        # with "-", which argparse and node's parseArgs would take for an option.
        args = [f"--signal-url={signal_url}", f"--invite={invite}", f"--tone={tone}", f"--record={record}", f"--name={self.name}"]
        if self.name == "aiortc":
            return [str(AIORTC_PYTHON), str(PEERS / "aiortc_human.py"), *args]
        return ["node", str(WERIFT_DIR / "human.mjs"), *args]

    def installed(self) -> bool:
        if self.name == "aiortc":
            return AIORTC_PYTHON.exists()
        return (WERIFT_DIR / "node_modules" / "werift").is_dir()


# aiortc 1.16 refuses any answer with a rejected m-section that lacks ICE
# credentials and rtcp-mux (JSEP §5.3.1 asks for neither, and BotCall's
# rejected sections carry none), so an added track is not among its steps. It
# has no restartIce() either: aiortc_human.restart_ice does its part by hand.
AIORTC = PeerKind("aiortc", ("same_offer", "restart_ice"))
WERIFT = PeerKind("werift", ("same_offer", "restart_ice"))


class ExternalHuman:
    """A running peer process, its events and its recording."""

    def __init__(self, kind: PeerKind, process: trio.Process, record: Path) -> None:
        self.kind = kind
        self.process = process
        self.record = record
        self.samples = 0
        self._buffer = b""
        self._events: list[dict[str, Any]] = []
        self._log: list[str] = []

    async def _next_line(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        while b"\n" not in self._buffer:
            chunk = await self.process.stdout.receive_some(65536)
            if not chunk:
                raise HarnessError(f"{self.kind.name} exited ({self.process.poll()}); it said: {self._log[-5:]}")
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        self._log.append(line.decode(errors="replace"))
        event = json.loads(line)
        if event.get("event") == "recorded":
            self.samples = event["samples"]
        if event.get("event") == "error":
            raise HarnessError(f"{self.kind.name}: {event['message']}")
        return event

    async def wait_event(self, name: str) -> dict[str, Any]:
        with self._patience(f"no {name!r}"):
            while True:
                event = await self._next_line()
                if event["event"] == name:
                    return event
        raise AssertionError("unreachable")

    async def wait_recorded(self, samples: int) -> None:
        """Until the peer has recorded ``samples`` of what it hears."""
        with self._patience(f"fewer than {samples} samples recorded"):
            while self.samples < samples:
                await self._next_line()

    @contextmanager
    def _patience(self, what: str) -> Iterator[None]:
        try:
            with trio.fail_after(STEP_TIMEOUT):
                yield
        except trio.TooSlowError:
            raise HarnessError(f"{self.kind.name}: {what} after {STEP_TIMEOUT:g} s; it said: {self._log[-5:]}") from None

    async def command(self, cmd: str) -> None:
        assert self.process.stdin is not None
        await self.process.stdin.send_all((json.dumps({"cmd": cmd}) + "\n").encode())

    def heard(self, start: int, end: int) -> np.ndarray:
        """Samples ``[start, end)`` of the recording."""
        data = np.frombuffer(self.record.read_bytes(), dtype="<i2")
        return data[start:end]


async def start_human(kind: PeerKind, nursery: trio.Nursery, signal_url: str, invite: str, tone: float, record: Path) -> ExternalHuman:
    """Start the peer; it has joined and connected when this returns.

    Raises:
        HarnessError: it is not installed (``scripts/setup.sh test`` installs
            both), exited, or reported an error.
    """
    if not kind.installed():
        raise HarnessError(f"{kind.name} is not installed: run scripts/setup.sh test")
    process = await nursery.start(
        lambda task_status: trio.run_process(
            kind.command(signal_url, invite, tone, record),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=None, check=False,
            env={**os.environ, "PYTHONUNBUFFERED": "1"}, task_status=task_status,
        )
    )
    human = ExternalHuman(kind, process, record)
    await human.wait_event("connected")
    return human
