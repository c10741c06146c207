"""Logging set-up shared by the commands: no credential ever reaches a log line.

Our own log calls never format a credential (session ids, invite secrets,
attestations, ICE passwords); they name participants by ``participant_id``.
Libraries are not so careful — Quart logs a failing WebSocket with its URL,
and a bot's WebSocket URL carries its session id — so ``RedactingFilter`` sits
on every handler of the root logger and rewrites what any logger emits, at
every level, exceptions included.
"""

from __future__ import annotations

import logging
import re

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


__all__ = ["RedactingFilter", "install_redaction", "redact"]
