"""``botcall serve --workers N``: the supervisor, its routing front and N worker processes.

The supervisor binds the public HTTP port and serves it with the front
(``router.py``); each worker (``worker.py``) is a full ``run_server`` on a private
loopback HTTP port with its own media UDP port. The supervisor:

* starts the workers and waits for each one's ``ready`` line before accepting;
* feeds their load reports to the ``Directory`` (placement by measured load);
* restarts a worker that exits (back-off 0.1 s doubling to 5 s, reset once it
  has run a minute); the rooms it held are closed with reason ``worker_lost``
  (the front answers ``410 room_closed`` for them), the other workers and their
  calls are not touched (separate processes, separate media sockets);
* keeps the replay cache every worker shares (``<data_dir>/replay-cache.jsonl``);
* keeps the rooms its workers open and close — in Redis with ``--redis``,
  else in the rooms journal (``<data_dir>/rooms.jsonl``) — and at start hands
  each worker the rooms this node held before a crash (``NodeDirectory.resume``,
  ``RoomJournal.load``; the worker's stdin carries them), before the front accepts;
* on SIGTERM/SIGINT stops accepting and SIGTERMs the workers, which drain as
  ``botcall serve`` does (``server_shutdown``), and waits for them.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol

import trio

from botcall.auth.attestation import ReplayCache
from botcall.auth.keys import ensure_dev_issuer
from botcall.auth.replay_journal import ReplayJournal
from botcall.cluster.directory import WORKER_LOST, Directory, Lost
from botcall.cluster.lines import LineTooLong, json_lines
from botcall.cluster.nodes import NodeDirectory
from botcall.cluster.resp import Redis, RedisUnavailable
from botcall.cluster.router import Front
from botcall.config import Config
from botcall.errors import StartupError
from botcall.server import RESTART_DELAY_MAX, RESTART_DELAY_MIN, _bind_http, server_tls, until_signalled
from botcall.signaling.room_journal import RoomJournal
from botcall.signaling.serving import ConnectionBudget, connection_ceiling, raise_open_file_limit

log = logging.getLogger("botcall.cluster")

# Seconds a worker gets to say it is ready (it may load the speech model first).
WORKER_START_TIMEOUT_S = 60.0
# A worker that ran this long is restarted at once after its next exit.
STABLE_AFTER_S = 60.0
# Seconds between the directory's and replay cache's housekeeping passes.
HOUSEKEEPING_INTERVAL_S = 1.0


@dataclass(frozen=True)
class FrontInfo:
    """What ``run_supervisor`` reports once it accepts connections."""

    http_url: str
    http_port: int
    directory: Directory
    front: Front


class Wakeup:
    """Wakes one waiting task; wakes that came while it was busy are kept (as one)."""

    def __init__(self) -> None:
        self._event = trio.Event()

    def set(self) -> None:
        self._event.set()

    async def wait(self) -> None:
        await self._event.wait()
        self._event = trio.Event()


async def write_rooms(cluster: NodeDirectory, wake: Wakeup) -> None:
    """Write the rooms the workers opened and closed to Redis as they come (the
    heartbeat retries what an outage left unwritten)."""
    while True:
        await wake.wait()
        try:
            await cluster.flush()
        except RedisUnavailable:
            pass  # noted, not lost: the next heartbeat that reaches Redis writes it


class RoomNotes(Protocol):
    """Where the supervisor keeps the rooms its workers open and close, so a
    restart can hold them again: Redis (``NodeDirectory``, ``--redis``) or the
    rooms journal in the data directory (``RoomJournal``)."""

    def note_room(self, record: dict[str, str], worker: int) -> None: ...
    def note_closed(self, room_id: str, reason: str, now: float) -> None: ...
    def holds(self, room_id: str) -> bool: ...
    def restore_refused(self, room_id: str, now: float) -> None: ...


def note_closed_live(notes: RoomNotes | None, rooms: Sequence[str], reason: str, now: float) -> None:
    """Rooms of a worker that is gone: those still live (not reported closed) close with ``reason``."""
    if notes is not None:
        for room_id in rooms:
            if notes.holds(room_id):
                notes.note_closed(room_id, reason, now)


async def _worker_lines(process: trio.Process, index: int) -> AsyncIterator[dict[str, Any]]:
    """A worker's stdout as JSON objects; an over-long line (a bug) kills it, and it is restarted."""
    assert process.stdout is not None
    try:
        async for message in json_lines(process.stdout, writer=f"worker {index}", log=log):
            yield message
    except LineTooLong:
        log.error("worker %d wrote an over-long line; restarting it", index)
        process.kill()


async def _send_restore(stdin: trio.abc.SendStream, rooms: list[dict[str, str]]) -> None:
    """The rooms a worker is to hold again, one ``restore`` line each, then ``restore_end``."""
    for room in rooms:
        await stdin.send_all(json.dumps({"event": "restore", "room": room}, separators=(",", ":")).encode() + b"\n")
    await stdin.send_all(b'{"event":"restore_end"}\n')




def worker_command(index: int, front_url: str, serve_argv: Sequence[str]) -> list[str]:
    """The command line of worker ``index``."""
    return [sys.executable, "-m", "botcall.cluster.worker", "--index", str(index), "--front-url", front_url, "--", *serve_argv]


async def run_worker(
    index: int,
    directory: Directory,
    front: Front,
    command: list[str],
    stopping: trio.Event,
    clock: Callable[[], float],
    grace: float,
    *,
    notes: RoomNotes | None = None,
    restore: list[dict[str, str]] | None = None,
    wake_writer: Wakeup | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Keep worker ``index`` running until ``stopping`` is set (then SIGTERM it and wait).

    Args:
        notes: where the rooms the worker opens and closes are noted (Redis, with
            ``wake_writer`` set to write them; or the rooms journal).
        restore: rooms (``Room.record()``, or Redis's hashes that hold one) the worker's first start is to hold again;
            it counts as started once it has answered for all of them.

    Raises:
        StartupError: the worker's first start failed (its own message is on stderr).
    """
    delay = RESTART_DELAY_MIN
    first = True
    restored = 0
    while True:
        started_at = time.monotonic()
        # stdin: a pipe the worker watches; it ends when this process does, however it ends.
        # Its own process group (a terminal's Ctrl-C reaches the supervisor, which
        # drains the workers), but this session: the kernel's autogroup scheduler
        # shares CPU between sessions before nice, so a new session would drop
        # the priority the operator gave `botcall serve` (found by bench.scale_out).
        process = await trio.lowlevel.open_process(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, process_group=0)
        ready = False
        try:
            assert process.stdout is not None
            async with trio.open_nursery() as nursery:

                async def stop_on_request() -> None:
                    await stopping.wait()
                    process.send_signal(signal.SIGTERM)  # the worker drains (server_shutdown)
                    await trio.sleep(grace + 5.0)
                    process.kill()

                nursery.start_soon(stop_on_request)
                with trio.move_on_after(WORKER_START_TIMEOUT_S) as start_timer:
                    async for message in _worker_lines(process, index):
                        if message.get("event") == "ready":
                            ready = True
                            start_timer.deadline = float("inf")
                            worker = directory.worker_started(
                                index, http_port=int(message["http_port"]), media_port=int(message["media_port"]), now=clock()
                            )
                            log.info(
                                "worker %d started (pid %d, http 127.0.0.1:%d, media udp %d, generation %d)",
                                index, process.pid, worker.http_port, worker.media_port, worker.generation,
                            )
                            if first and restore:
                                assert process.stdin is not None
                                nursery.start_soon(_send_restore, process.stdin, restore)
                            elif first:
                                first = False
                                task_status.started()
                        elif message.get("event") == "load" and ready:
                            directory.worker_report(
                                index, rooms=int(message["rooms"]), sessions=int(message["sessions"]),
                                packets=int(message["packets"]), now=clock(),
                            )
                        elif message.get("event") == "room_created" and notes is not None and isinstance(message.get("room"), dict):
                            notes.note_room({str(k): str(v) for k, v in message["room"].items()}, index)
                            if wake_writer is not None:
                                wake_writer.set()
                        elif message.get("event") == "room_closed" and notes is not None:
                            notes.note_closed(str(message.get("room_id")), str(message.get("reason")), clock())
                            if wake_writer is not None:
                                wake_writer.set()
                        elif message.get("event") == "restored" and ready:
                            worker = directory.table[index]
                            directory.room_created(str(message["room_id"]), worker, float(message["expires_at"]))
                            restored += 1
                        elif message.get("event") == "restore_refused":
                            log.warning("worker %d could not restore room %s (%s)", index, message.get("room_id"), message.get("why"))
                            if notes is not None and message.get("room_id"):
                                notes.restore_refused(str(message["room_id"]), clock())
                        elif message.get("event") == "restore_done" and first:
                            log.info("worker %d holds %d room(s) again from before the restart (%d refused)", index, restored, len(restore or ()) - restored)
                            first = False
                            task_status.started()
                if not ready:
                    log.error("worker %d did not start within %g s; stopping it", index, WORKER_START_TIMEOUT_S)
                    process.kill()
                code = await process.wait()
                nursery.cancel_scope.cancel()
        except BaseException:
            with trio.CancelScope(shield=True):
                process.kill()
                await process.wait()
            raise
        generation = directory.table[index].generation
        if stopping.is_set():
            note_closed_live(notes, directory.worker_lost(index, clock()), "server_shutdown", clock())
            front.worker_lost(index, generation)
            log.info("worker %d stopped (exit %s)", index, code)
            return
        if first:
            raise StartupError(f"worker {index} failed to start (exit status {code}; its message is above)")
        lost = directory.worker_lost(index, clock())
        note_closed_live(notes, lost, WORKER_LOST, clock())
        if wake_writer is not None:
            wake_writer.set()
        front.worker_lost(index, generation)
        if time.monotonic() - started_at > STABLE_AFTER_S:
            delay = RESTART_DELAY_MIN
        log.error(
            "worker %d (pid %d) exited with status %s; %d room(s) closed with reason worker_lost; restarting it in %.1f s",
            index, process.pid, code, len(lost), delay,
        )
        with trio.move_on_after(delay):
            await stopping.wait()
            return
        delay = min(delay * 2, RESTART_DELAY_MAX)


async def run_supervisor(
    config: Config,
    serve_argv: Sequence[str],
    *,
    shutdown: trio.Event | None = None,
    clock: Callable[[], float] = time.time,
    task_status: trio.TaskStatus[FrontInfo] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve with ``config.worker_count`` workers until cancelled or ``shutdown`` is set.

    Args:
        config: the supervisor's configuration (the workers derive theirs, ``worker.py``).
        serve_argv: the ``botcall serve`` flags, passed on to every worker.
        shutdown: set it to stop the workers gracefully and return.
        clock: Unix time.

    Raises:
        StartupError: the HTTP port cannot be bound, or a worker failed to start.
    """
    count = config.worker_count(os.cpu_count() or 1)
    if config.dev_issuer_enabled:
        ensure_dev_issuer(config.data_dir, config.dev_issuer_name)  # once, before workers race to create it
    # With --redis the replay cache is Redis's (nodes.py); nodes may share a data directory.
    journal = ReplayJournal.in_dir(config.data_dir) if config.redis_url is None else None
    replay = ReplayCache(config.replay_cache_max, journal=journal)
    if journal is not None:
        replay.restore(journal.load(clock()))
    directory = Directory(
        count,
        max_rooms=count * config.max_rooms_total,
        max_sessions=count * config.max_sessions_total,
        max_lost=config.closed_rooms_remembered,
        lost_for=config.closed_rooms_remembered_s,
    )
    # Rooms to hold again, by worker index: from the rooms journal here, or (--redis)
    # filled by the first heartbeat (resume).
    restore: dict[int, list[dict[str, str]]] = {}
    # Without --redis the rooms live in the data directory (room_journal.py): a
    # supervisor that crashed holds its unexpired rooms again; a drained one none.
    rooms_journal = None
    if config.redis_url is None:
        rooms_journal = RoomJournal.open_in_dir(
            config.data_dir, max_rooms=count * config.max_rooms_total,
            max_closed=config.closed_rooms_remembered, closed_for=config.closed_rooms_remembered_s,
        )
    if rooms_journal is not None:
        loaded = rooms_journal.load(clock())
        for worker_index, room in loaded.rooms:
            restore.setdefault(worker_index % count, []).append(room.record())
        for room_id, (reason, at) in loaded.closed.items():
            directory.remember_lost(room_id, Lost(reason, at))  # they answer 410 with their reason
        if loaded.rooms or loaded.expired:
            log.info(
                "rooms journal %s: restoring %d room(s) from before the restart (%d expired meanwhile)",
                rooms_journal.path, len(loaded.rooms), loaded.expired,
            )
    try:
        sock = _bind_http(config.http_host, config.http_port)
    except StartupError:
        if rooms_journal is not None:
            rooms_journal.close()
        raise
    stopping = trio.Event()
    drain = trio.Event()
    redis: Redis | None = None
    try:
        bound_host, bound_port = sock.getsockname()[:2]
        host_in_url = f"[{bound_host}]" if ":" in bound_host else bound_host
        http_url = f"http://{host_in_url}:{bound_port}"
        front_url = config.base_url(bound_port)
        cluster = None
        if config.redis_url is not None:
            redis = Redis(config.redis_url, timeout=max(0.2, min(2.0, config.node_ttl_s / 4)))
            node_id = config.node_name or f"{socket.gethostname()}:{bound_port}"
            cluster = NodeDirectory(
                redis, node_id, front_url, ttl=config.node_ttl_s, closed_for=config.closed_rooms_remembered_s,
                max_rooms=count * config.max_rooms_total,
            )
        budget = ConnectionBudget(
            max_total=connection_ceiling(config.max_connections, raise_open_file_limit(), config.fd_reserve),
            max_per_ip=config.max_connections_per_ip,
            rate_per_ip=config.connection_rate_per_ip,
            exempt=config.trusted_proxy_networks,
        )
        front = Front(directory, config, replay, clock, cluster=cluster, budget=budget)
        # TLS (--tls-cert/--tls-self-signed) ends at the front: h11 speaks HTTP/1.1 only.
        ssl_context = server_tls(dataclasses.replace(config, http2=False), base_url=front_url)
        if ssl_context is not None:
            http_url = "https" + http_url.removeprefix("http")
        sock.listen(1024)
        listener: trio.abc.Listener[trio.abc.Stream] = trio.SocketListener(trio.socket.from_stdlib_socket(sock))
        if ssl_context is not None:
            listener = trio.SSLListener(listener, ssl_context, https_compatible=True)
        wake_writer = Wakeup()
        async with trio.open_nursery() as nursery:
            if cluster is not None:
                # Before the workers: a restarted node keeps its heartbeat (and so its
                # rooms) alive while they start, and learns which rooms to restore.
                await nursery.start(heartbeat, cluster, directory, drain, clock, restore, count)
                nursery.start_soon(write_rooms, cluster, wake_writer)
            async with trio.open_nursery() as workers:
                async with trio.open_nursery() as starting:
                    for index in range(count):
                        command = worker_command(index, front_url, serve_argv)
                        starting.start_soon(workers.start, partial(
                            run_worker, index, directory, front, command, stopping, clock, config.shutdown_grace_s,
                            notes=cluster or rooms_journal, restore=restore.pop(index, None), wake_writer=wake_writer,
                        ))

                async def housekeeping() -> None:
                    while True:
                        now = clock()
                        directory.expire(now)
                        replay.prune(now)
                        if journal is not None and journal.needs_compaction(len(replay)):
                            journal.compact(replay.entries())
                        if rooms_journal is not None:
                            rooms_journal.prune(now)
                            if rooms_journal.needs_compaction():
                                rooms_journal.compact()
                        await trio.sleep(HOUSEKEEPING_INTERVAL_S)

                if cluster is not None:
                    cluster.starting = False  # say so now: placement may choose this node
                    try:
                        await cluster.heartbeat(sum(w.load for w in directory.table if w.running), {})
                    except RedisUnavailable:
                        pass  # the heartbeat loop says it
                nursery.start_soon(front.serve, listener)
                nursery.start_soon(housekeeping)
                log.info("listening on %s (public URL %s) with %d workers", http_url, front_url, count)
                task_status.started(FrontInfo(http_url=http_url, http_port=bound_port, directory=directory, front=front))
                async with trio.open_nursery() as waiting:  # the first of: shutdown, a drain request

                    async def on_shutdown() -> None:
                        await (shutdown.wait() if shutdown is not None else trio.sleep_forever())
                        drain.set()

                    waiting.start_soon(on_shutdown)
                    await drain.wait()
                    waiting.cancel_scope.cancel()
                if cluster is not None:
                    await drain_node(cluster, directory, config.drain_timeout_s, clock)
                log.info("shutting down: stopping %d workers", count)
                front.accepting = False
                # Each run_worker SIGTERMs its worker and returns once it exited; the
                # front keeps routing meanwhile (draining WebSockets close through it).
                stopping.set()
            if cluster is not None:
                # The rooms the workers closed on their way out: never to be restored.
                with trio.move_on_after(2.0):
                    try:
                        await cluster.flush()
                    except RedisUnavailable as exc:
                        log.warning("the rooms closed at shutdown were not all written to Redis (%s)", exc)
            nursery.cancel_scope.cancel()
    finally:
        sock.close()
        if journal is not None:
            journal.close()
        if rooms_journal is not None:
            rooms_journal.close()
        if redis is not None:
            await redis.aclose()


async def heartbeat(
    cluster: NodeDirectory,
    directory: Directory,
    drain: trio.Event,
    clock: Callable[[], float],
    restore: dict[int, list[dict[str, str]]],
    workers: int,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Every third of the node TTL: register this node with its load (and its rooms,
    should Redis have lost them), write what the workers reported and is still
    unwritten, close the rooms of nodes whose heartbeat expired (``node_lost``),
    and notice a ``botcall drain`` request. Redis being away is logged once;
    calls go on, and new rooms and joins get ``503 cluster_unavailable``.

    The first pass that reaches Redis settles the rooms this node held before a
    restart (``NodeDirectory.resume``): on the first pass (before the workers
    start), ``restore`` receives them by worker index (``workers`` of them);
    later (Redis was away at start), they are closed ``node_lost``.
    """
    reachable: bool | None = None
    started = False
    resumed = False
    while True:
        try:
            if not cluster.peer_secret:
                await cluster.join()
            if not resumed:
                rooms_before = await cluster.resume(clock(), restore=not started, held=tuple(directory.rooms))
                resumed = True
                for fields in rooms_before:
                    try:
                        index = int(fields.get("worker", "0")) % workers
                    except ValueError:
                        index = 0
                    restore.setdefault(index, []).append(fields)
                if rooms_before:
                    log.info("node %s restarted within its TTL: restoring %d room(s)", cluster.node_id, len(rooms_before))
            live = {
                room_id: (where.worker, where.expires_at)
                for room_id, where in directory.rooms.items()
                if room_id in cluster.records
                and directory.table[where.worker].running and directory.table[where.worker].generation == where.generation
            }
            await cluster.heartbeat(sum(w.load for w in directory.table if w.running), live)
            await cluster.flush()
            for node_id, closed in (await cluster.reap(clock())).items():
                log.warning("node %s stopped heartbeating: %d room(s) closed with reason node_lost", node_id, closed)
            if reachable is False:
                log.info("redis is reachable again: node %s registered", cluster.node_id)
            reachable = True
            if cluster.draining and not drain.is_set():
                log.info("drain requested for node %s", cluster.node_id)
                drain.set()
        except RedisUnavailable as exc:
            if reachable is not False:
                log.error("redis unreachable (%s): calls go on; new rooms and joins get 503 until it is back", exc)
            reachable = False
        if not started:
            started = True
            task_status.started()
        await trio.sleep(cluster.ttl / 3)


async def drain_node(cluster: NodeDirectory, directory: Directory, timeout: float, clock: Callable[[], float]) -> None:
    """Stop placement on this node (its heartbeat says ``draining``), then wait up
    to ``timeout`` seconds for its rooms to end before the workers close the rest
    with ``server_shutdown``."""
    cluster.draining = True
    try:
        await cluster.heartbeat(sum(w.load for w in directory.table if w.running), {})
    except RedisUnavailable:
        log.warning("draining: redis unreachable, placement stops when the heartbeat expires")
    log.info("draining node %s: no new rooms; waiting up to %g s for its calls to end", cluster.node_id, timeout)
    since = clock()
    with trio.move_on_after(timeout):
        # Done when every worker has reported, since the drain began, that it holds no room.
        while any(w.rooms or w.last_report <= since for w in directory.table if w.running):
            await trio.sleep(0.5)  # the workers' load reports come every 0.5 s


async def supervise_until_signalled(config: Config, serve_argv: Sequence[str]) -> None:
    """``run_supervisor`` until SIGINT or SIGTERM (the first drains, a second stops at once)."""
    await until_signalled(lambda shutdown: run_supervisor(config, serve_argv, shutdown=shutdown))
