"""One worker process of ``botcall serve --workers N`` (started by ``supervisor.py``).

    python -m botcall.cluster.worker --index I --front-url URL -- <the serve flags>

It is an ordinary ``run_server`` with the same settings as the supervisor
(flags, ``BOTCALL_*``, ``--config``), except: HTTP on 127.0.0.1 port 0 (only the
front talks to it), media port ``media_port + I`` (or any free one when
``media_port`` is 0), public URL = the front's (invite and WebSocket URLs name
the shared port), the front trusted as a proxy (``X-Forwarded-For`` carries the
client), and no replay or rooms journal of its own (the supervisor keeps the
shared replay cache and the rooms). It talks to the supervisor on stdout, one JSON object per line:

* ``{"event": "ready", "http_port": P, "media_port": M, "pid": N}`` once serving;
* ``{"event": "load", "rooms": R, "sessions": S, "packets": K}`` every
  ``LOAD_INTERVAL_S`` (``K``: RTP packets received since start);
* every room opened or closed here:
  ``{"event": "room_created", "room": <Room.record()>}`` and
  ``{"event": "room_closed", "room_id": ID, "reason": R}`` (the supervisor keeps
  them, in Redis with ``--redis``, else in ``<data_dir>/rooms.jsonl``: a
  restarted node or supervisor restores its rooms from there);
* ``{"event": "restored", "room_id": ID, "expires_at": T}`` or
  ``{"event": "restore_refused", "room_id": ID, "why": TEXT}`` for each room the
  supervisor asked it to restore, then ``{"event": "restore_done"}``.

The supervisor writes to its stdin, one JSON object per line,
``{"event": "restore", "room": <Room.record()>}`` for each room of this node
found open (in Redis, or its rooms journal) at a restart, then ``{"event": "restore_end"}``.

It dies with its supervisor (its stdin, a pipe from the supervisor, ends) and drains on SIGTERM as
``botcall serve`` does (rooms close with ``server_shutdown``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

import trio

from botcall import settings
from botcall.cluster.buckets import RedisBuckets
from botcall.cluster.resp import Redis
from botcall.cluster.lines import LineTooLong, json_lines
from botcall.config import Config
from botcall.errors import RoomRecordError
from botcall.server import ServerInfo, configure_logging, run_command, run_server
from botcall.signaling.rooms import RegistryEvent, RoomClosed, RoomCreated, RoomStore, room_from_record_untrusted

log = logging.getLogger("botcall.cluster")

# Seconds between load reports (the front's placement reads them).
LOAD_INTERVAL_S = 0.5
# The front reaches workers from loopback; they believe its X-Forwarded-For.
FRONT_NETWORKS = ("127.0.0.1/32", "::1/128")


def worker_config(config: Config, *, index: int, front_url: str) -> Config:
    """The worker's ``Config``: the supervisor's with this worker's ports and names."""
    node = config.node_name or os.uname().nodename
    return dataclasses.replace(
        config,
        http_host="127.0.0.1",
        http_port=0,
        media_port=config.media_port + index if config.media_port else 0,
        public_url=config.public_url or front_url,
        trusted_proxies=tuple(dict.fromkeys((*config.trusted_proxies, *FRONT_NETWORKS))),
        node_name=f"{node}/w{index}",
        workers="1",
        # The front terminates TLS (its listener is an SSLListener); behind it, on
        # loopback, workers speak plain HTTP. Their URLs are the front's https:// ones.
        tls_cert=None,
        tls_key=None,
        tls_self_signed=False,
    )


async def _from_supervisor(handle: Callable[[dict[str, Any]], None]) -> None:
    """Read the supervisor's lines on stdin (``handle`` each JSON object) and return
    when the supervisor is gone: stdin (its pipe) reaches end of file, which
    happens however it ended, ``kill -9`` included. (Not ``PR_SET_PDEATHSIG``:
    that fires when the *thread* that started us exits, and Trio starts processes
    from a worker thread.)"""
    stdin = trio.lowlevel.FdStream(os.dup(0))
    async with stdin:
        try:
            async for message in json_lines(stdin, writer="the supervisor", log=log):
                handle(message)
        except LineTooLong:
            # The supervisor is ours; a broken pipe protocol ends the worker
            # as the supervisor's end of file would.
            log.error("the supervisor wrote an over-long line; stopping")


def restore_handler(registry: Callable[[], RoomStore | None], say: Callable[[dict[str, Any]], None]) -> Callable[[dict[str, Any]], None]:
    """What the worker does with the supervisor's restore lines (see the module docstring)."""

    def handle(message: dict[str, Any]) -> None:
        store = registry()
        if message.get("event") == "restore_end":
            say({"event": "restore_done"})
            return
        if message.get("event") != "restore":
            return
        record = message.get("room")
        room_id = record.get("room_id") if isinstance(record, dict) else None
        try:
            room = room_from_record_untrusted(record)
        except RoomRecordError as exc:
            say({"event": "restore_refused", "room_id": room_id if isinstance(room_id, str) else "", "why": str(exc)})
            return
        if store is None or not store.restore_room(room, now=time.time()):
            say({"event": "restore_refused", "room_id": room.room_id, "why": "expired, already known here, or the server is full"})
            return
        say({"event": "restored", "room_id": room.room_id, "expires_at": room.expires_at})

    return handle


def room_events(say: Callable[[dict[str, Any]], None]) -> Callable[[RegistryEvent], None]:
    """A registry listener telling the supervisor every room opened and closed."""

    def on_event(event: RegistryEvent) -> None:
        if isinstance(event, RoomCreated):
            say({"event": "room_created", "room": event.room.record()})
        elif isinstance(event, RoomClosed):
            say({"event": "room_closed", "room_id": event.room.room_id, "reason": event.reason})

    return on_event


def _say(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message, separators=(",", ":")) + "\n")
    sys.stdout.flush()


def load_report(info: ServerInfo) -> dict[str, Any]:
    """This worker's measured load (see the module docstring)."""
    state = info.state
    relay = state.started_media().relay
    relay.refresh_counts()  # the fast path's counts, current for placement
    packets = relay.retired_rx_packets + sum(peer.rx_packets for peer in relay.all_peers())
    return {"event": "load", "rooms": state.registry.live_rooms, "sessions": state.registry.live_sessions, "packets": packets}


async def serve_worker(config: Config) -> None:
    """Serve until SIGTERM/SIGINT (then drain), reporting on stdout."""
    shutdown = trio.Event()
    # --redis: the per-agent create and join limits hold across the cluster (buckets.py).
    redis = Redis(config.redis_url, timeout=max(0.2, min(2.0, config.node_ttl_s / 4))) if config.redis_url else None
    shared = RedisBuckets(redis) if redis is not None else None
    try:
        await _serve_worker(config, shutdown, shared)
    finally:
        if redis is not None:
            await redis.aclose()


async def _serve_worker(config: Config, shutdown: trio.Event, shared: RedisBuckets | None) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:

            async def watch_signals() -> None:
                async for _ in signals:
                    if shutdown.is_set():
                        nursery.cancel_scope.cancel()
                    shutdown.set()

            async def report(info: ServerInfo) -> None:
                while True:
                    _say(load_report(info))
                    await trio.sleep(LOAD_INTERVAL_S)

            async def server(*, task_status: trio.TaskStatus[ServerInfo]) -> None:
                await run_server(
                    config, shutdown=shutdown, persist_replay=False, persist_rooms=False, shared_limits=shared, task_status=task_status
                )
                nursery.cancel_scope.cancel()  # drained: stop watching signals and reporting

            started: list[ServerInfo] = []

            async def die_with_supervisor() -> None:
                await _from_supervisor(restore_handler(lambda: started[0].state.registry if started else None, _say))
                nursery.cancel_scope.cancel()  # its front is gone: nobody can reach our rooms

            nursery.start_soon(watch_signals)
            nursery.start_soon(die_with_supervisor)
            info: ServerInfo = await nursery.start(server)
            started.append(info)
            info.state.registry.add_listener(room_events(_say))
            _say({"event": "ready", "http_port": info.http_port, "media_port": info.state.media_port, "pid": os.getpid()})
            nursery.start_soon(report, info)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m botcall.cluster.worker")
    parser.add_argument("--index", type=int, required=True)
    parser.add_argument("--front-url", required=True)
    parser.add_argument("serve_args", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    serve_parser = argparse.ArgumentParser(prog="botcall serve")
    settings.add_flags(serve_parser)
    rest = args.serve_args[1:] if args.serve_args[:1] == ["--"] else args.serve_args
    serve_args = serve_parser.parse_args(rest)

    def body() -> int:
        config = worker_config(settings.load_from_args(serve_args, os.environ).config, index=args.index, front_url=args.front_url)
        configure_logging(config.log_level, config.log_format, node=config.node_name)
        trio.run(serve_worker, config)
        return 0

    return run_command(f"botcall serve (worker {args.index})", body)


if __name__ == "__main__":
    sys.exit(main())
