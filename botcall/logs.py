"""Logging set-up shared by the commands: no credential ever reaches a log line.

Our own log calls never format a credential (session ids, invite secrets,
attestations, ICE passwords); they name participants by ``participant_id``.
Libraries are not so careful — Quart logs a failing WebSocket with its URL,
and a bot's WebSocket URL carries its session id — so ``RedactingFilter`` sits
on every handler of the root logger and rewrites what any logger emits, at
every level, exceptions included.

Two formats (``Config.log_format``): ``human`` lines with a UTC timestamp,
level and logger, and ``json``, one object per line with ``time``, ``level``,
``logger``, ``event`` (the message), ``node``, and ``room`` and ``session``
where known. A log call names them with ``extra={"room": room_id, "session":
participant_id}`` (the participant id: a session *id* is a credential), or a
block of code with ``with log_context(room=...)``. Every string in a JSON line
goes through ``redact`` as well.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import re
import time
from collections.abc import Iterator

# What a credential looks like in text, and what replaces it.
_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    # Session ids (the bot's WebSocket credential, a browser's resume token).
    (re.compile(r"sess-[A-Za-z0-9_-]{6,}"), "sess-[redacted]"),
    # Invite secrets in invite URLs and hello messages.
    (re.compile(r"(invite[=\"':\s]+)[A-Za-z0-9_-]{6,}"), r"\1[redacted]"),
    # Compact JWS attestations.
    (re.compile(r"eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*"), "[redacted-jwt]"),
    # ICE passwords and TURN credentials in JSON or key=value text.
    (re.compile(r"((?:ice_pwd|ice-pwd|credential|password)[\"']?\s*[:=]\s*[\"']?)[^\"'\s,}]+"), r"\1[redacted]"),
)


def redact(text: str) -> str:
    """``text`` with every credential pattern replaced."""
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


class RedactingFilter(logging.Filter):
    """Rewrites each record's message (and exception text) with ``redact``."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True


def install_redaction(logger: logging.Logger | None = None) -> None:
    """Put a ``RedactingFilter`` on every handler of ``logger`` (the root logger by default)."""
    target = logger or logging.getLogger()
    for handler in target.handlers:
        if not any(isinstance(existing, RedactingFilter) for existing in handler.filters):
            handler.addFilter(RedactingFilter())


# The room and session a task is working for, inherited by the tasks it starts.
_CONTEXT: contextvars.ContextVar[dict[str, str]] = contextvars.ContextVar("botcall_log_context", default={})
CONTEXT_FIELDS = ("room", "session")


@contextlib.contextmanager
def log_context(**fields: str) -> Iterator[None]:
    """Within the block (and tasks started in it), log records carry these
    ``room``/``session`` values unless a call's ``extra=`` names others."""
    unknown = set(fields) - set(CONTEXT_FIELDS)
    if unknown:
        raise TypeError(f"log_context takes {CONTEXT_FIELDS}, not {sorted(unknown)}")
    token = _CONTEXT.set({**_CONTEXT.get(), **fields})
    try:
        yield
    finally:
        _CONTEXT.reset(token)


def _utc_time(record: logging.LogRecord) -> str:
    """RFC 3339 UTC with milliseconds: ``2026-02-15T13:00:00.123Z``."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"


class HumanFormatter(logging.Formatter):
    """``2026-02-15T13:00:00.123Z INFO botcall: room ds2u-p71i-uxd6 created ...``;
    with a ``node`` (a supervisor, a worker: ``node-a/w1``), it follows the level in
    brackets: ``... INFO [node-a/w1] botcall: ...``, so the lines of the processes
    of ``--workers N`` / ``--redis``, interleaved on one terminal, say whose they are.

    Args:
        node: the process's name, or ``None`` (a single server: no bracket).
    """

    def __init__(self, node: str | None = None) -> None:
        label = "" if not node else "[" + node.replace("%", "%%") + "] "
        super().__init__(f"%(asctime)s %(levelname)s {label}%(name)s: %(message)s")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return _utc_time(record)


class JsonFormatter(logging.Formatter):
    """One JSON object per record; see the module docstring for its members.

    Args:
        node: this server's name, put in every line.
    """

    def __init__(self, node: str) -> None:
        super().__init__()
        self.node = node

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, str] = {
            "time": _utc_time(record),
            "level": record.levelname,
            "logger": record.name,
            "event": record.getMessage(),
            "node": self.node,
        }
        context = _CONTEXT.get()
        for name in CONTEXT_FIELDS:
            value = getattr(record, name, None) or context.get(name)
            if value:
                line[name] = str(value)
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line["exc"] = record.exc_text
        return json.dumps({key: redact(value) for key, value in line.items()}, ensure_ascii=False)


def human_formatter(node: str | None = None) -> logging.Formatter:
    """The default format: timestamp, level, the process's name (``node``, when
    given), logger, message."""
    return HumanFormatter(node)


def json_formatter(node: str) -> logging.Formatter:
    """One JSON object per line (``--log-format json``)."""
    return JsonFormatter(node)


__all__ = [
    "HumanFormatter", "JsonFormatter", "RedactingFilter", "human_formatter", "install_redaction",
    "json_formatter", "log_context", "redact",
]
