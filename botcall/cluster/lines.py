"""JSON lines between the supervisor and its workers (their stdin and stdout pipes)."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import trio

# A line longer than this is a bug on the other side (a room record is far shorter).
MAX_LINE_BYTES = 64 * 1024


class LineTooLong(Exception):
    """The other side wrote more than MAX_LINE_BYTES without a newline."""


async def json_lines(stream: trio.abc.ReceiveStream, *, writer: str, log: logging.Logger) -> AsyncIterator[dict[str, Any]]:
    """Yield each line of ``stream`` that is a JSON object, until end of file.

    A line that is not JSON is logged (naming ``writer``) and skipped; a line
    over MAX_LINE_BYTES raises LineTooLong (the caller decides what that ends).
    """
    buffer = b""
    while data := await stream.receive_some(65536):
        buffer += data
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            try:
                message = json.loads(line)
            except ValueError:
                log.warning("%s wrote a line that is not JSON: %r", writer, line[:200])
                continue
            if isinstance(message, dict):
                yield message
        if len(buffer) > MAX_LINE_BYTES:
            raise LineTooLong(f"{writer} wrote an over-long line")
