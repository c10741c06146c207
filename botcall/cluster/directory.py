"""Where each room lives: the workers, their load, and room/session → worker (sans-IO).

The supervisor's front (``router.py``) reads and writes one ``Directory``: it
places a new room on the least-loaded worker, learns each room's and session's
worker from the responses it forwards, and answers for rooms whose worker was
lost. No trio, no sockets, no clock: ``now`` (Unix seconds) is an argument.

Load is each worker's own measurement (``worker.py`` reports live sessions and
received RTP packets every ``LOAD_INTERVAL_S``), not a count of placements:

    load = max(sessions, PLACED_WEIGHT × rooms) + packets_per_second / PACKETS_PER_SESSION
           + PLACED_WEIGHT × rooms placed since its last report

Each new room will bring about two sessions: a room nobody joined yet counts
as two (else two creates with a report between them, before anyone joins, both
land on the same worker), and the last term keeps a burst of creates between
two reports from all landing on one worker. A placement counts until a report
shows the worker's rooms grown by it (a report written before the room reached
the worker does not), or for ``PLACED_HOLD_S`` at most.

Every table has a limit (docs/architecture.md): rooms and sessions at most
``max_rooms`` / ``max_sessions`` (the workers' own budgets times their number;
the oldest entry goes first), lost rooms at most ``max_lost``.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

# A talking session sends 50 RTP packets a second (20 ms frames).
PACKETS_PER_SESSION = 50.0
# A room placed since the worker's last load report counts as two sessions.
PLACED_WEIGHT = 2.0
# Seconds a placement counts at most (reports come every 0.5 s), and how many
# a worker holds at once (more in that time: the oldest are forgotten).
PLACED_HOLD_S = 2.0
MAX_PLACEMENTS = 1024
# Why a room whose worker died is closed (docs/protocol.md).
WORKER_LOST = "worker_lost"


@dataclass
class Worker:
    """One worker process as the front knows it.

    Attributes:
        index: 0..N-1, stable across restarts.
        generation: bumped on every (re)start; rooms placed on an older one are lost.
        http_port: the worker's private HTTP port on 127.0.0.1 (0 while not running).
        media_port: the UDP port its join responses advertise.
        running: started and not yet exited.
        sessions: live sessions at its last report.
        packets_per_second: RTP packets received per second over its last report interval.
        placements: when each room placed on it and not yet in a report was placed.
    """

    index: int
    generation: int = 0
    http_port: int = 0
    media_port: int = 0
    running: bool = False
    sessions: int = 0
    rooms: int = 0
    packets_per_second: float = 0.0
    placements: list[float] = field(default_factory=list)
    _last_packets: int | None = None
    last_report: float = 0.0

    @property
    def placed(self) -> int:
        """Rooms placed on it that its reports do not show yet."""
        return len(self.placements)

    @property
    def load(self) -> float:
        expected = max(self.sessions, PLACED_WEIGHT * self.rooms)
        return expected + self.packets_per_second / PACKETS_PER_SESSION + PLACED_WEIGHT * self.placed


@dataclass(frozen=True)
class Placement:
    """A room's or session's worker: its index and the generation that holds it."""

    worker: int
    generation: int
    expires_at: float


@dataclass(frozen=True)
class Lost:
    """A room that is gone without its worker's word: why, and since when."""

    reason: str
    at: float


@dataclass
class Directory:
    """The front's room directory (see the module docstring).

    Args:
        workers: how many worker processes.
        max_rooms: rooms remembered at most (oldest forgotten first).
        max_sessions: sessions remembered at most.
        max_lost: lost rooms remembered at most (each answers ``410 room_closed``).
        lost_for: seconds a lost room is remembered.
    """

    workers: int
    max_rooms: int
    max_sessions: int
    max_lost: int
    lost_for: float
    table: list[Worker] = field(init=False)
    rooms: OrderedDict[str, Placement] = field(init=False, default_factory=OrderedDict)
    sessions: OrderedDict[str, Placement] = field(init=False, default_factory=OrderedDict)
    lost: OrderedDict[str, Lost] = field(init=False, default_factory=OrderedDict)

    def __post_init__(self) -> None:
        self.table = [Worker(index) for index in range(self.workers)]

    # --- workers ---------------------------------------------------------------------------

    def worker_started(self, index: int, *, http_port: int, media_port: int, now: float) -> Worker:
        """Worker ``index`` is (again) serving on these ports: a new generation."""
        worker = self.table[index]
        worker.generation += 1
        worker.http_port, worker.media_port, worker.running = http_port, media_port, True
        worker.sessions = worker.rooms = 0
        worker.placements.clear()
        worker.packets_per_second = 0.0
        worker._last_packets, worker.last_report = None, now
        return worker

    def worker_report(self, index: int, *, rooms: int, sessions: int, packets: int, now: float) -> None:
        """A load report from worker ``index``: live rooms and sessions, and its
        running total of received RTP packets."""
        worker = self.table[index]
        if worker._last_packets is not None and now > worker.last_report:
            worker.packets_per_second = max(0, packets - worker._last_packets) / (now - worker.last_report)
        worker._last_packets, worker.last_report = packets, now
        # The rooms this report shows beyond the last one are the oldest placements.
        del worker.placements[: max(0, rooms - worker.rooms)]
        worker.placements[:] = [at for at in worker.placements if at > now - PLACED_HOLD_S]
        worker.rooms, worker.sessions = rooms, sessions

    def worker_lost(self, index: int, now: float) -> list[str]:
        """Worker ``index`` exited: every room it held is lost (``worker_lost``), its
        sessions are forgotten. Returns the lost room ids."""
        worker = self.table[index]
        worker.running = False
        worker.http_port = 0
        gone = [room for room, where in self.rooms.items() if where.worker == index and where.generation == worker.generation]
        for room_id in gone:
            del self.rooms[room_id]
            self._remember_lost(room_id, Lost(WORKER_LOST, now))
        for session_id in [s for s, where in self.sessions.items() if where.worker == index]:
            del self.sessions[session_id]
        return gone

    def place(self, now: float) -> Worker | None:
        """The least-loaded running worker for a new room (lowest index on a tie),
        counted as placed on at ``now``; ``None`` when no worker runs."""
        running = [worker for worker in self.table if worker.running]
        if not running:
            return None
        chosen = min(running, key=lambda worker: (worker.load, worker.index))
        if len(chosen.placements) >= MAX_PLACEMENTS:
            del chosen.placements[0]
        chosen.placements.append(now)
        return chosen

    def any_running(self) -> Worker | None:
        """A running worker for requests that name no known room (they get the worker's own answer)."""
        running = [worker for worker in self.table if worker.running]
        return min(running, key=lambda worker: (worker.load, worker.index)) if running else None

    # --- rooms and sessions --------------------------------------------------------------------

    def room_created(self, room_id: str, worker: Worker, expires_at: float) -> None:
        """``room_id`` now lives on ``worker`` (learned from its 201)."""
        self.rooms[room_id] = Placement(worker.index, worker.generation, expires_at)
        self.rooms.move_to_end(room_id)
        while len(self.rooms) > self.max_rooms:
            self.rooms.popitem(last=False)

    def session_joined(self, session_id: str, worker: Worker, expires_at: float) -> None:
        """``session_id`` lives on ``worker`` (learned from its join response)."""
        self.sessions[session_id] = Placement(worker.index, worker.generation, expires_at)
        self.sessions.move_to_end(session_id)
        while len(self.sessions) > self.max_sessions:
            self.sessions.popitem(last=False)

    def room(self, room_id: str) -> Worker | Lost | None:
        """Where requests for ``room_id`` go: its worker, why it is lost, or
        ``None`` when the directory does not know it."""
        lost = self.lost.get(room_id)
        if lost is not None:
            return lost
        where = self.rooms.get(room_id)
        return self._current(where)

    def session(self, session_id: str) -> Worker | None:
        """The worker holding ``session_id``, or ``None``."""
        return self._current(self.sessions.get(session_id))

    def _current(self, where: Placement | None) -> Worker | None:
        if where is None:
            return None
        worker = self.table[where.worker]
        return worker if worker.running and worker.generation == where.generation else None

    def expire(self, now: float) -> None:
        """Forget rooms and sessions past their expiry and lost rooms older than ``lost_for``."""
        for table in (self.rooms, self.sessions):
            for key in [key for key, where in table.items() if where.expires_at < now]:
                del table[key]
        while self.lost:
            room_id, lost = next(iter(self.lost.items()))
            if lost.at > now - self.lost_for:
                break
            del self.lost[room_id]

    def remember_lost(self, room_id: str, lost: Lost) -> None:
        """``room_id`` is gone for ``lost.reason`` (a worker died, or it closed before
        the supervisor restarted): requests for it are answered ``410``."""
        self._remember_lost(room_id, lost)

    def _remember_lost(self, room_id: str, lost: Lost) -> None:
        self.lost[room_id] = lost
        self.lost.move_to_end(room_id)
        while len(self.lost) > self.max_lost:
            self.lost.popitem(last=False)
