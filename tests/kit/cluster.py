"""``botcall serve`` as real processes on loopback: the supervisor with its workers,
or (``workers=1`` without ``--redis``) the single process.

    async with serving_workers(tmp_path, workers=2) as front:
        token = front.token(agent="alice#1")
        created = await front.create_room(token)
        pid = front.workers[0].pid          # from the supervisor's "worker N started" lines
        await front.wait_for(WORKER_STARTED, lambda m: m["generation"] == "2")

    servers = Servers(nursery, data_dir)    # start, crash (kill -9) and stop (SIGTERM) in any order
    a = await servers.start("--port", str(port))
    await servers.crash(a)

    async with restartable(tmp_path) as servers:   # the same, on one port and tmp_path/data
        a = await servers.start()

Everything waits on events (log lines, the front's ``/v1/cluster/workers``),
never on the clock; the timeouts are safety nets against a hung process.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from botcall.auth.keys import DevIssuer, ensure_dev_issuer
from botcall.config import Config
from tests.kit.redis import free_port
from tests.kit.server import HttpResponse, http_request

WORKER_STARTED = re.compile(
    r"worker (?P<index>\d+) started \(pid (?P<pid>\d+), http 127\.0\.0\.1:(?P<http>\d+), "
    r"media udp (?P<media>\d+), generation (?P<generation>\d+)\)"
)
# Log lines of a server shown when a test using it fails.
LOG_TAIL = 80
FRONT_LISTENING = re.compile(r"listening on (?P<url>https?://\S+) \(public URL \S+\) with (?P<count>\d+) workers")
# A single process's line (workers say it too, on their private ports: not to be taken for the front's).
SINGLE_LISTENING = re.compile(r"listening on (?P<url>https?://\S+) \(public URL \S+\); media advertised at udp \S+:(?P<media>\d+)")
# Generous limits: tests create and join in bursts from one address.
GENEROUS_ENV = {
    f"BOTCALL_{name.upper()}": "rate=1000,burst=1000"
    for name in ("create_limit_per_agent", "create_limit_per_ip", "join_limit_per_agent", "join_limit_per_ip",
                 "query_limit_per_ip", "connection_rate_per_ip")
}


@dataclass
class WorkerProcess:
    index: int
    pid: int
    http_port: int
    media_port: int
    generation: int


@dataclass
class Front:
    """A running ``botcall serve --workers N`` and what its log said."""

    process: trio.Process
    data_dir: Path
    url: str = ""
    lines: list[str] = field(default_factory=list)
    workers: dict[int, WorkerProcess] = field(default_factory=dict)
    _new_line: trio.Event = field(default_factory=trio.Event)

    @property
    def dev(self) -> DevIssuer:
        return ensure_dev_issuer(self.data_dir, "botcall-dev")[0]

    def token(self, *, agent: str = "orion#8f3a", controller: str = "gopi", room: str | None = None, ttl: float = 600) -> str:
        return self.dev.mint(
            agent=agent, controller=controller, audience=Config.audience, scopes=("call:create", "call:voice", "call:receive"),
            ttl=ttl, now=time.time(), room=room,
        )

    async def read_log(self) -> None:
        assert self.process.stderr is not None
        buffer = b""
        while data := await self.process.stderr.receive_some(65536):
            buffer += data
            while b"\n" in buffer:
                raw, buffer = buffer.split(b"\n", 1)
                line = raw.decode(errors="replace")
                self.lines.append(line)
                match = WORKER_STARTED.search(line)
                if match:
                    index = int(match["index"])
                    self.workers[index] = WorkerProcess(index, int(match["pid"]), int(match["http"]), int(match["media"]), int(match["generation"]))
                self._new_line.set()
                self._new_line = trio.Event()

    async def wait_for(self, pattern: re.Pattern[str], accept: Callable[[re.Match[str]], bool] = lambda m: True, *, since: int = 0, timeout: float = 60.0) -> re.Match[str]:
        """The first log line from index ``since`` on matching ``pattern`` (and ``accept``)."""
        with trio.fail_after(timeout):
            seen = since
            while True:
                for line in self.lines[seen:]:
                    match = pattern.search(line)
                    if match and accept(match):
                        return match
                seen = len(self.lines)
                await self._new_line.wait()

    async def request(self, method: str, path: str, *, bearer: str | None = None, **kwargs: Any) -> HttpResponse:
        headers = {"Authorization": f"Bearer {bearer}"} if bearer else {}
        return await http_request(self.url + path, method, headers=headers, **kwargs)

    async def create_room(self, token: str, **body: Any) -> HttpResponse:
        return await self.request("POST", "/v1/rooms/create", bearer=token, json_body=body)

    async def join(self, token: str, room_id: str, *, agent_id: str = "orion#8f3a") -> HttpResponse:
        body = {"agent_id": agent_id, "room_id": room_id, "attestation": {"token": token}, "media": {"transport": "udp"}}
        return await self.request("POST", "/v1/join", json_body=body)

    async def worker_table(self) -> list[dict[str, Any]]:
        response = await self.request("GET", "/v1/cluster/workers")
        assert response.status == 200, response.body
        workers: list[dict[str, Any]] = response.json()["workers"]
        return workers

    async def wait_workers(self, accept: Callable[[list[dict[str, Any]]], bool], *, timeout: float = 30.0) -> list[dict[str, Any]]:
        """Poll the front's worker table (refreshed by each worker's 0.5 s load report) until ``accept``."""
        with trio.fail_after(timeout):
            while True:
                table = await self.worker_table()
                if accept(table):
                    return table
                await trio.sleep(0.1)

    def worker_with_media_port(self, port: int) -> WorkerProcess:
        return next(worker for worker in self.workers.values() if worker.media_port == port)


@asynccontextmanager
async def serving_workers(
    data_dir: Path, *, workers: int = 2, extra: tuple[str, ...] = (), env: dict[str, str] | None = None
) -> AsyncIterator[Front]:
    """Start ``botcall serve --workers N`` on 127.0.0.1 (free ports), yield it once every
    worker is ready, then SIGTERM it and wait for it to exit. ``env``: more ``BOTCALL_*`` settings.
    ``workers=1`` without ``--redis`` is the single process (``workers[0]`` is that process)."""
    single = workers == 1 and "--redis" not in extra  # botcall serve runs as one process
    async with _serving(data_dir, ("--workers", str(workers), *extra), single, env) as front:
        yield front


@asynccontextmanager
async def serving_one_process(data_dir: Path, *, extra: tuple[str, ...] = (), env: dict[str, str] | None = None) -> AsyncIterator[Front]:
    """Plain ``botcall serve`` (one process: no front, no workers) on 127.0.0.1, as
    ``serving_workers`` does it: a server the test's own event loop does not run."""
    async with _serving(data_dir, extra, True, env) as front:
        yield front


@asynccontextmanager
async def _serving(
    data_dir: Path, arguments: tuple[str, ...], single: bool, env: dict[str, str] | None
) -> AsyncIterator[Front]:
    env = {**os.environ, "BOTCALL_DATA_DIR": str(data_dir), **GENEROUS_ENV, "PYTHONPATH": os.getcwd(), **(env or {})}
    command = [sys.executable, "-m", "botcall.cli", "serve", "--port", "0", "--media-port", "0",
               "--media-host", "127.0.0.1", *arguments]
    process = await trio.lowlevel.open_process(command, stderr=subprocess.PIPE, env=env)
    front = Front(process=process, data_dir=data_dir)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(front.read_log)
            if single:
                listening = await front.wait_for(SINGLE_LISTENING)
                front.url = listening["url"]
                port = int(front.url.rsplit(":", 1)[1])
                front.workers[0] = WorkerProcess(0, process.pid, port, int(listening["media"]), 1)  # its own worker 0
            else:
                front.url = (await front.wait_for(FRONT_LISTENING))["url"]
            try:
                yield front
            finally:
                with trio.CancelScope(shield=True), trio.move_on_after(30):
                    process.send_signal(signal.SIGTERM)
                    await process.wait()
                nursery.cancel_scope.cancel()
    except BaseException:
        # A failing test (or start) shows what the server said: pytest prints captured output.
        print(f"--- the last {LOG_TAIL} log lines of botcall serve {' '.join(arguments)} ---", *front.lines[-LOG_TAIL:], sep="\n")
        raise
    finally:
        if process.returncode is None:
            process.kill()
            with trio.CancelScope(shield=True):
                await process.wait()


class Servers:
    """``botcall serve`` processes (``serving_workers``) on one data directory, started,
    crashed and stopped in any order, each in a task of ``nursery``: what restart
    tests need (the Redis nodes' and the embedded default's)."""

    def __init__(self, nursery: trio.Nursery, data_dir: Path, *, workers: int = 1, port: int | None = None) -> None:
        self.nursery, self.data_dir, self.workers, self.port = nursery, data_dir, workers, port
        self._stops: dict[int, trio.Event] = {}

    async def start(self, *flags: str) -> Front:
        """Start one with ``flags`` (after the kit's own and ``--port port``: a later ``--port`` wins)."""
        if self.port is not None:
            flags = ("--port", str(self.port), *flags)
        stop = trio.Event()

        async def run(*, task_status: trio.TaskStatus[Front]) -> None:
            async with serving_workers(self.data_dir, workers=self.workers, extra=flags) as front:
                task_status.started(front)
                await stop.wait()

        front: Front = await self.nursery.start(run)
        self._stops[front.process.pid] = stop
        return front

    async def crash(self, server: Front) -> None:
        """``kill -9`` it (a supervisor's workers follow: their stdin ends) and wait for it."""
        os.kill(server.process.pid, signal.SIGKILL)
        await server.process.wait()
        self._stops[server.process.pid].set()

    async def stop(self, server: Front) -> None:
        """SIGTERM (a drain) and wait for it to exit."""
        server.process.send_signal(signal.SIGTERM)
        with trio.fail_after(60):
            await server.process.wait()
        self._stops[server.process.pid].set()


@asynccontextmanager
async def restartable(tmp_path: Path, *, workers: int = 1) -> AsyncIterator[Servers]:
    """:class:`Servers` on a new data directory ``tmp_path/data`` and one free HTTP
    port that every start reuses (invite links name it), in a nursery cancelled
    when the block ends: the restart tests' set-up."""
    data = tmp_path / "data"
    data.mkdir()
    async with trio.open_nursery() as nursery:
        yield Servers(nursery, data, workers=workers, port=free_port())
        nursery.cancel_scope.cancel()
