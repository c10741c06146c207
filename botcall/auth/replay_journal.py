"""The replay cache on disk: used attestation ids survive a restart.

A join consumes its attestation's ``jti`` (``ReplayCache``). Kept only in
memory, a restart would forget them and an already used token would join
again. ``ReplayJournal`` keeps them in ``<data dir>/replay-cache.jsonl``:

* one line per used token, ``[until, issuer, jti]`` as JSON, appended with a
  single ``write`` on an ``O_APPEND`` descriptor (a process crash loses at most
  the line being written; a torn last line is skipped on load);
* on start, unexpired lines are loaded back into the cache;
* when the file holds many expired lines, it is rewritten from the live
  entries into a temporary file, fsynced, and renamed over the old one, so a
  crash at any moment leaves either the old file or the new one.

The file is bounded: it is compacted once it holds more than twice the live
entries (plus ``COMPACT_SLACK``), and the cache itself is bounded by
``Config.replay_cache_max``. A power loss may lose the lines written since the
last compaction's fsync that the kernel had not yet flushed (seconds).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO

log = logging.getLogger("botcall.auth")

FILENAME = "replay-cache.jsonl"
COMPACT_SLACK = 1024
# A line longer than this is not ours (issuer and jti are capped at 256 chars each).
MAX_LINE = 2048


def rewrite_journal(path: Path, data: bytes) -> int:
    """Replace the journal at ``path`` with ``data`` atomically (a temporary file,
    mode 0600, fsynced, renamed over it); returns an append descriptor of the new file.

    Raises:
        OSError: nothing was replaced (the old file stands).
    """
    temporary = path.with_suffix(".tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temporary, path)
    return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)


def bounded_lines(file: IO[bytes], max_line: int) -> Iterator[bytes]:
    """The file's lines, each at most ``max_line + 1`` bytes: a longer one comes
    out as its first ``max_line + 1`` bytes (for the parser to refuse), and the
    rest of it is skipped without holding it in memory."""
    while raw := file.readline(max_line + 1):
        if len(raw) > max_line and not raw.endswith(b"\n"):
            while (rest := file.readline(max_line + 1)) and not rest.endswith(b"\n"):
                pass
        yield raw


class JournalFile:
    """One journal's file: appends of one line each with a single ``write`` on an
    ``O_APPEND`` descriptor, the count of lines, failed writes counted and logged
    once, and the atomic rewrite (``rewrite_journal``) of compaction. Shared by
    the replay cache and the rooms journal (``signaling/room_journal.py``).

    Args:
        path: the file (created with mode 0600 if missing).
        what: its name in log lines ("replay cache").
        loss: what a failed write costs, for the log ("used tokens will be forgotten on restart").
        logger: where to log.

    Raises:
        OSError: the file cannot be opened for appending (unwritable data directory).
    """

    def __init__(self, path: Path, *, what: str, loss: str, logger: logging.Logger) -> None:
        self.path = path
        self.what, self.loss, self.log = what, loss, logger
        path.parent.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self.lines = 0
        self.failed_writes = 0

    def append(self, line: bytes) -> None:
        """Write one line; a failure is counted (and logged the first time), not raised."""
        try:
            os.write(self.fd, line)
            self.lines += 1
        except OSError as exc:
            self.failed_writes += 1
            if self.failed_writes == 1:
                self.log.warning("cannot write the %s %s (%s): %s", self.what, self.path, exc, self.loss)

    def rewrite(self, lines: list[bytes]) -> None:
        """Replace the file with ``lines`` (atomic); a failure is logged and the old file stands."""
        try:
            new_fd = rewrite_journal(self.path, b"".join(lines))
        except OSError as exc:
            self.failed_writes += 1
            self.log.warning("cannot compact the %s %s: %s", self.what, self.path, exc)
            return
        os.close(self.fd)
        self.fd = new_fd
        self.lines = len(lines)

    def read_untrusted(self, max_line: int) -> Iterator[bytes]:
        """The file's lines as ``bounded_lines`` gives them, counted into ``lines`` (from 0).

        Raises:
            FileNotFoundError: there is no file.
            OSError: it cannot be read.
        """
        self.lines = 0
        with open(self.path, "rb") as file:
            for raw in bounded_lines(file, max_line):
                self.lines += 1
                yield raw

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

class ReplayJournal:
    """An append-only journal of ``(issuer, jti, until)``.

    Args:
        path: the journal file (created with mode 0600 if missing).

    Raises:
        OSError: the file cannot be opened for appending (unwritable data directory).
    """

    def __init__(self, path: Path) -> None:
        self.file = JournalFile(path, what="replay cache", loss="used tokens will be forgotten on restart", logger=log)
        self.path = path

    @property
    def lines(self) -> int:
        return self.file.lines

    @classmethod
    def in_dir(cls, data_dir: Path) -> "ReplayJournal":
        return cls(data_dir / FILENAME)

    def load(self, now: float) -> list[tuple[str, str, float]]:
        """The entries still valid at ``now`` (expired, torn or foreign lines skipped)."""
        entries: dict[tuple[str, str], float] = {}
        try:
            for raw in self.file.read_untrusted(MAX_LINE):
                entry = _parse_line(raw)
                if entry is None:
                    continue
                until, issuer, jti = entry
                if until > now:
                    key = (issuer, jti)
                    entries[key] = max(until, entries.get(key, until))
        except FileNotFoundError:
            return []
        return [(issuer, jti, until) for (issuer, jti), until in entries.items()]

    def append(self, issuer: str, jti: str, until: float) -> None:
        """Record one used token. A failed write is logged once and counted; the
        in-memory cache still refuses the token until this process ends."""
        self.file.append(_encode(issuer, jti, until))

    def needs_compaction(self, live: int) -> bool:
        return self.file.lines > 2 * live + COMPACT_SLACK

    def compact(self, entries: Iterable[tuple[str, str, float]]) -> None:
        """Rewrite the journal to hold exactly ``entries`` (atomic: temp file, fsync, rename)."""
        self.file.rewrite([_encode(issuer, jti, until) for issuer, jti, until in entries])

    def close(self) -> None:
        self.file.close()


def _encode(issuer: str, jti: str, until: float) -> bytes:
    return json.dumps([until, issuer, jti], separators=(",", ":")).encode() + b"\n"


def _parse_line(raw: bytes) -> tuple[float, str, str] | None:
    if len(raw) > MAX_LINE or not raw.endswith(b"\n"):
        return None  # torn by a crash mid-write, or not ours
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    if not (isinstance(value, list) and len(value) == 3):
        return None
    until, issuer, jti = value
    if isinstance(until, bool) or not isinstance(until, (int, float)) or not isinstance(issuer, str) or not isinstance(jti, str):
        return None
    return float(until), issuer, jti


__all__ = ["FILENAME", "JournalFile", "ReplayJournal", "bounded_lines", "rewrite_journal"]
