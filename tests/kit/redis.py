"""A real ``redis-server`` (Debian's) on a free loopback port, for the cluster tests.

    async with running_redis(tmp_path) as redis:
        redis.url              # redis://127.0.0.1:PORT/0
        await redis.restart()  # stop it and start it again on the same port (empty)

No persistence (``--save '' --appendonly no``); readiness is its own log line.
"""

from __future__ import annotations

import socket
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import trio

REDIS_SERVER = "/usr/bin/redis-server"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class RedisServer:
    port: int
    workdir: Path
    process: trio.Process | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        self.process = await trio.lowlevel.open_process(
            [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.workdir), "--loglevel", "notice"],
            stdout=subprocess.PIPE,
        )
        assert self.process.stdout is not None
        seen = b""
        with trio.fail_after(30):
            while b"Ready to accept connections" not in seen:
                data = await self.process.stdout.receive_some(65536)
                if not data:
                    raise RuntimeError(f"redis-server exited: {seen.decode(errors='replace')}")
                seen += data

    async def stop(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.terminate()
            with trio.CancelScope(shield=True), trio.fail_after(30):
                await self.process.wait()

    async def restart(self) -> None:
        await self.stop()
        await self.start()


@asynccontextmanager
async def running_redis(workdir: Path) -> AsyncIterator[RedisServer]:
    server = RedisServer(free_port(), workdir)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()
