"""Rooms on disk: the embedded default (no ``--redis``) keeps its rooms across a restart.

Clustered nodes keep each room's record in Redis (``cluster/nodes.py``). Without
Redis, ``RoomJournal`` keeps the same records in ``<data dir>/rooms.jsonl``,
beside the replay cache (``auth/replay_journal.py``), in the same style:

* one line per change, appended with a single ``write`` on an ``O_APPEND``
  descriptor (a crash, ``kill -9`` included, loses at most the line being
  written; a torn last line is skipped on load):

  - ``{"open": <Room.record()>, "worker": W}`` — a room opened (or was restored)
    on worker ``W`` (0 for a single process);
  - ``{"closed": ROOM_ID, "reason": R, "at": T}`` — it closed (``deleted``,
    ``empty``, ``expired``, ``server_shutdown``, ``worker_lost``…) at Unix time ``T``;

* the record is ``Room.record()``, the one codec the Redis path uses too: the
  SHA-256 of the invite secret, never the secret;
* on start (``load``), every line is replayed: rooms still open and unexpired
  are restored, rooms that expired meanwhile are remembered closed
  ``expired``, closed rooms are remembered for ``closed_for`` seconds (they
  answer ``410``). An unreadable line (torn, corrupt, foreign, over
  ``MAX_LINE`` bytes, a record that is not a room) is skipped and counted;
  nothing in the file stops the start;
* after ``load`` and whenever the file holds more than twice the lines it
  needs (plus ``COMPACT_SLACK``), it is rewritten from the tables into a
  temporary file, fsynced, and renamed over the old one: a crash at any moment
  leaves the old file or the new one.

Bounded: at most ``max_rooms`` open rooms and ``max_closed`` closed ones are
kept (oldest dropped first), so the file holds at most about
``2 × (max_rooms + max_closed) + COMPACT_SLACK`` lines. The file is mode 0600.

One server per journal: ``rooms.lock`` beside it is held (``flock``) while the
journal is open. A second server started on the same data directory (without
``--redis``) would otherwise restore the first one's rooms and lose its own
lines at the first's compaction; it runs without a journal instead, and says so.
"""

from __future__ import annotations

import fcntl
import json
import logging
import math
import os
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Union

from botcall.auth.replay_journal import JournalFile
from botcall.errors import RoomRecordError
from botcall.signaling.rooms import RegistryEvent, Room, RoomClosed, RoomCreated, RoomStore, room_from_record_untrusted

log = logging.getLogger("botcall.rooms")

FILENAME = "rooms.jsonl"
COMPACT_SLACK = 256
# A line longer than this is not ours (a record is a few hundred bytes).
MAX_LINE = 4096
# Worker indexes a line may name (a supervisor runs far fewer).
MAX_WORKER = 1023
_REASON_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz_")


@dataclass(frozen=True, slots=True)
class Opened:
    """A journal line: ``room`` opened on ``worker``."""

    room: Room
    worker: int


@dataclass(frozen=True, slots=True)
class Closed:
    """A journal line: ``room_id`` closed with ``reason`` at Unix time ``at``."""

    room_id: str
    reason: str
    at: float


JournalLine = Union[Opened, Closed]


def encode_line(line: JournalLine) -> bytes:
    """One journal line, newline included."""
    if isinstance(line, Opened):
        value: dict[str, object] = {"open": line.room.record(), "worker": line.worker}
    else:
        value = {"closed": line.room_id, "reason": line.reason, "at": line.at}
    return json.dumps(value, separators=(",", ":")).encode() + b"\n"


def parse_room_line_untrusted(raw: bytes) -> JournalLine:
    """One line of the journal (with its newline).

    Raises:
        RoomRecordError: anything that is not a whole line ``encode_line`` wrote
            (torn, over ``MAX_LINE``, not JSON, a record that is not a room...).
    """
    if len(raw) > MAX_LINE or not raw.endswith(b"\n"):
        raise RoomRecordError("a torn or over-long journal line")
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError):
        raise RoomRecordError("a journal line that is not JSON") from None
    if not isinstance(value, dict):
        raise RoomRecordError("a journal line that is not an object")
    if set(value) == {"open", "worker"}:
        worker = value["worker"]
        if isinstance(worker, bool) or not isinstance(worker, int) or not 0 <= worker <= MAX_WORKER:
            raise RoomRecordError("a journal line's worker is not an index")
        return Opened(room_from_record_untrusted(value["open"]), worker)
    if set(value) == {"closed", "reason", "at"}:
        room_id, reason, at = value["closed"], value["reason"], value["at"]
        if not (isinstance(room_id, str) and 0 < len(room_id) <= 64 and room_id.isprintable()):
            raise RoomRecordError("a journal line's room id is not one")
        if not (isinstance(reason, str) and 0 < len(reason) <= 32 and set(reason) <= _REASON_CHARS):
            raise RoomRecordError("a journal line's reason is not one")
        if isinstance(at, bool) or not isinstance(at, (int, float)) or not math.isfinite(at):
            raise RoomRecordError("a journal line's time is not a number")
        return Closed(room_id, reason, float(at))
    raise RoomRecordError("a journal line of an unknown kind")


@dataclass(frozen=True)
class Loaded:
    """What ``RoomJournal.load`` found.

    Attributes:
        rooms: ``(worker, room)`` of every room to hold again, oldest first.
        closed: ``room_id -> (reason, at)`` of the rooms remembered closed.
        expired: rooms that were open but expired while the server was down.
        skipped: unreadable lines.
    """

    rooms: list[tuple[int, Room]]
    closed: dict[str, tuple[str, float]]
    expired: int
    skipped: int


class RoomJournal:
    """The rooms journal (see the module docstring).

    Args:
        path: the journal file (created with mode 0600 if missing).
        max_rooms: open rooms kept at most.
        max_closed: closed rooms kept at most.
        closed_for: seconds a closed room is remembered.

    Raises:
        OSError: the file cannot be opened for appending (unwritable data directory).
    """

    def __init__(self, path: Path, *, max_rooms: int, max_closed: int, closed_for: float) -> None:
        self.path = path
        self.max_rooms = max_rooms
        self.max_closed = max_closed
        self.closed_for = closed_for
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = os.open(path.with_suffix(".lock"), os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            self.file = JournalFile(path, what="rooms journal", loss="rooms will be forgotten on restart", logger=log)
        except OSError:
            os.close(self._lock)
            raise
        os.fchmod(self.file.fd, 0o600)  # a file another tool created keeps no wider mode
        # Live rooms by id (worker, room), and closed ones (reason, at); oldest first.
        self.open: OrderedDict[str, tuple[int, Room]] = OrderedDict()
        self.closed: OrderedDict[str, tuple[str, float]] = OrderedDict()
        # Each kept room's line, as written: compaction joins them without encoding
        # (10 000 rooms re-encoded would hold the event loop ~80 ms).
        self._encoded: dict[str, bytes] = {}
        self.skipped = 0

    @property
    def lines(self) -> int:
        return self.file.lines

    @classmethod
    def in_dir(cls, data_dir: Path, *, max_rooms: int, max_closed: int, closed_for: float) -> "RoomJournal":
        """The journal of ``data_dir``.

        Raises:
            BlockingIOError: another server holds it (``open_in_dir`` says so and goes on).
            OSError: the data directory cannot be written.
        """
        return cls(data_dir / FILENAME, max_rooms=max_rooms, max_closed=max_closed, closed_for=closed_for)

    @classmethod
    def open_in_dir(cls, data_dir: Path, *, max_rooms: int, max_closed: int, closed_for: float) -> "RoomJournal | None":
        """``in_dir``, or ``None`` (logged) when another server holds the journal.

        Raises:
            OSError: the data directory cannot be written.
        """
        try:
            return cls.in_dir(data_dir, max_rooms=max_rooms, max_closed=max_closed, closed_for=closed_for)
        except BlockingIOError:
            log.warning(
                "another botcall serve holds the rooms journal in %s: this one's rooms will not survive a restart "
                "(give each server its own --data-dir, or use --redis)", data_dir,
            )
            return None

    # --- start ---------------------------------------------------------------------------------

    def load(self, now: float) -> Loaded:
        """Replay the file into the tables, settle them at ``now``, and rewrite the
        file from them (compaction: unreadable lines go, and a line torn by a crash
        is not left for the next append to extend). Never raises for the file's
        content; a file that cannot be read is logged and treated as empty (and
        not rewritten)."""
        self.open.clear()
        self.closed.clear()
        self._encoded.clear()
        self.skipped = 0
        readable = True
        try:
            for raw in self.file.read_untrusted(MAX_LINE):
                try:
                    line = parse_room_line_untrusted(raw)
                except RoomRecordError:
                    self.skipped += 1
                    continue
                self._apply(line, raw)
        except OSError as exc:
            readable = False
            log.error("cannot read the rooms journal %s (%s): starting without the rooms it held", self.path, exc)
        expired = 0
        for room_id, (_, room) in list(self.open.items()):
            if room.expires_at <= now:
                # It expired while the server was down: it answers 410 expired, like Redis mode.
                del self.open[room_id]
                self._remember_closed(room_id, "expired", room.expires_at, encode_line(Closed(room_id, "expired", room.expires_at)))
                expired += 1
        self.prune(now)
        if self.skipped:
            log.warning(
                "rooms journal %s: %d unreadable line(s) skipped (a torn write or a corrupt file); starting with the rest",
                self.path, self.skipped,
            )
        if readable:  # an unreadable file is left for its owner to look at, not overwritten
            self.compact()
        return Loaded(
            rooms=[(worker, room) for worker, room in self.open.values()],
            closed=dict(self.closed),
            expired=expired,
            skipped=self.skipped,
        )

    def _apply(self, line: JournalLine, raw: bytes) -> None:
        """Take ``line`` (written as ``raw``) into the tables; a room is in one of them at most."""
        if isinstance(line, Opened):
            self.closed.pop(line.room.room_id, None)
            self.open[line.room.room_id] = (line.worker, line.room)
            self.open.move_to_end(line.room.room_id)
            self._encoded[line.room.room_id] = raw
            while len(self.open) > self.max_rooms:
                self._encoded.pop(self.open.popitem(last=False)[0], None)
        else:
            self.open.pop(line.room_id, None)
            self._remember_closed(line.room_id, line.reason, line.at, raw)

    def _remember_closed(self, room_id: str, reason: str, at: float, raw: bytes) -> None:
        self.closed[room_id] = (reason, at)
        self.closed.move_to_end(room_id)
        self._encoded[room_id] = raw
        while len(self.closed) > self.max_closed:
            self._encoded.pop(self.closed.popitem(last=False)[0], None)

    # --- changes ------------------------------------------------------------------------------

    def note_room(self, record: dict[str, str], worker: int) -> None:
        """A room opened (or was restored) on ``worker``: append its line.

        ``record`` is ``Room.record()`` (from a worker's stdout line): one that is
        not a room is logged and ignored.
        """
        try:
            room = room_from_record_untrusted(record)
        except RoomRecordError as exc:
            log.error("room record not journalled (%s)", exc)
            return
        if self.open.get(room.room_id) == (worker, room):
            return  # restored as it was: the line is there already
        self._write(Opened(room, worker))

    def note_closed(self, room_id: str, reason: str, now: float) -> None:
        """A room closed: append its line (it is never restored, and answers ``410``)."""
        if room_id in self.closed and room_id not in self.open:
            return
        self._write(Closed(room_id, reason, now))

    def holds(self, room_id: str) -> bool:
        """Whether ``room_id`` is open in the journal."""
        return room_id in self.open

    def restore_refused(self, room_id: str, now: float) -> None:
        """The server could not hold ``room_id`` again (it is full): forget it (the
        file is rewritten, so the next start does not try again)."""
        if self.open.pop(room_id, None) is not None:
            self._encoded.pop(room_id, None)
            self.compact()

    def _write(self, line: JournalLine) -> None:
        raw = encode_line(line)
        self._apply(line, raw)
        self.file.append(raw)

    # --- housekeeping ---------------------------------------------------------------------------

    def prune(self, now: float) -> None:
        """Forget closed rooms older than ``closed_for``."""
        horizon = now - self.closed_for
        for room_id in [room_id for room_id, (_, at) in self.closed.items() if at <= horizon]:
            del self.closed[room_id]
            self._encoded.pop(room_id, None)

    def needs_compaction(self) -> bool:
        return self.lines > 2 * (len(self.open) + len(self.closed)) + COMPACT_SLACK

    def compact(self) -> None:
        """Rewrite the file to hold exactly the tables (atomic: temp file, fsync, rename)."""
        lines = [self._encoded[room_id] for room_id in self.open]
        lines += [self._encoded[room_id] for room_id in self.closed]
        self.file.rewrite(lines)

    def close(self) -> None:
        if self.file.fd >= 0:
            self.file.close()
            os.close(self._lock)  # releases the flock


def restore_into(registry: RoomStore, journal: RoomJournal, now: float) -> Loaded:
    """A single server's start: load the journal and hold its rooms again in
    ``registry`` (no sessions; their empty timeout starts now), remembering its
    closed rooms (they answer ``410``). Logs what it did.

    Call it before ``journal_listener`` is added (restoring emits ``RoomCreated``).
    """
    loaded = journal.load(now)
    restored = 0
    for _, room in loaded.rooms:
        if registry.restore_room(room, now=now):
            restored += 1
        else:
            journal.restore_refused(room.room_id, now)
    for room_id, (reason, at) in loaded.closed.items():
        registry.remember_closed(room_id, reason, at)
    if restored or loaded.expired or loaded.rooms:
        log.info(
            "rooms journal %s: %d room(s) restored from before the restart (%d refused: the server is full), %d expired meanwhile",
            journal.path, restored, len(loaded.rooms) - restored, loaded.expired,
        )
    return loaded


def journal_listener(journal: RoomJournal, clock: Callable[[], float], worker: int = 0) -> Callable[[RegistryEvent], None]:
    """A registry listener that journals every room opened and closed."""

    def on_event(event: RegistryEvent) -> None:
        if isinstance(event, RoomCreated):
            journal.note_room(event.room.record(), worker)
        elif isinstance(event, RoomClosed):
            journal.note_closed(event.room.room_id, event.reason, clock())

    return on_event


__all__ = [
    "COMPACT_SLACK", "Closed", "FILENAME", "Loaded", "MAX_LINE", "Opened", "RoomJournal",
    "encode_line", "journal_listener", "parse_room_line_untrusted", "restore_into",
]
