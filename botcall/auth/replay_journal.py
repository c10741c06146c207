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
from collections.abc import Iterable
from pathlib import Path

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

class ReplayJournal:
    """An append-only journal of ``(issuer, jti, until)``.

    Args:
        path: the journal file (created with mode 0600 if missing).

    Raises:
        OSError: the file cannot be opened for appending (unwritable data directory).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self.lines = 0
        self.failed_writes = 0

    @classmethod
    def in_dir(cls, data_dir: Path) -> "ReplayJournal":
        return cls(data_dir / FILENAME)

    def load(self, now: float) -> list[tuple[str, str, float]]:
        """The entries still valid at ``now`` (expired, torn or foreign lines skipped)."""
        entries: dict[tuple[str, str], float] = {}
        self.lines = 0
        try:
            with open(self.path, "rb") as file:
                for raw in file:
                    self.lines += 1
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
        line = json.dumps([until, issuer, jti], separators=(",", ":")).encode() + b"\n"
        try:
            os.write(self._fd, line)
            self.lines += 1
        except OSError as exc:
            self.failed_writes += 1
            if self.failed_writes == 1:
                log.warning("cannot write the replay cache %s (%s): used tokens will be forgotten on restart", self.path, exc)

    def needs_compaction(self, live: int) -> bool:
        return self.lines > 2 * live + COMPACT_SLACK

    def compact(self, entries: Iterable[tuple[str, str, float]]) -> None:
        """Rewrite the journal to hold exactly ``entries`` (atomic: temp file, fsync, rename)."""
        chunks = [json.dumps([until, issuer, jti], separators=(",", ":")).encode() + b"\n" for issuer, jti, until in entries]
        count = len(chunks)
        try:
            new_fd = rewrite_journal(self.path, b"".join(chunks))
        except OSError as exc:
            self.failed_writes += 1
            log.warning("cannot compact the replay cache %s: %s", self.path, exc)
            return
        os.close(self._fd)
        self._fd = new_fd
        self.lines = count

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


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


__all__ = ["FILENAME", "ReplayJournal"]
