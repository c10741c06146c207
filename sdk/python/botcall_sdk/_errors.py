"""The SDK's exceptions: one family, each carrying what the server said.

``BotCallError`` is the base. A refused HTTP request raises an ``HttpError``
subclass chosen by the server's status, with the server's machine ``code``
(docs/protocol.md "Error codes"); a call the server ends raises or reports
``CallClosed`` with its WebSocket close code.
"""

from __future__ import annotations


class BotCallError(Exception):
    """Base of every error the SDK raises on purpose."""


class InvalidServerUrl(BotCallError, ValueError):
    """The server URL is not an ``http://`` or ``https://`` URL."""


class BadPacket(BotCallError):
    """Bytes from the network that do not parse (RTP, STUN, events). Counted, never raised to the user."""


class HttpError(BotCallError):
    """The server refused a request, or could not be reached.

    Attributes:
        status: HTTP status (0 when the server could not be reached).
        code: the server's machine-readable error code (``room_full``, ``attestation_expired``, …).
        message: its explanation.
        retry_after: seconds from ``Retry-After``, else None.
    """

    def __init__(self, status: int, code: str, message: str, retry_after: float | None = None) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.retry_after = retry_after


class Unreachable(HttpError):
    """No answer from the server (refused connection, DNS failure, timeout): ``code == "unreachable"``."""


class BadRequest(HttpError):
    """400: the request was malformed (a bug in the caller or the SDK)."""


class AuthError(HttpError):
    """401 or 403: the attestation was refused or lacks a scope, or the room belongs to someone else."""


class RoomUnavailable(HttpError):
    """404 or 410: no such room, or it expired or was closed."""


class RoomFull(HttpError):
    """409: the room has its maximum of bots (or humans)."""


class RateLimited(HttpError):
    """429: slow down; ``retry_after`` says for how long."""


class ServerBusy(HttpError):
    """503: the server is full or a budget is exhausted; try again later (``retry_after``)."""


class ServerFault(HttpError):
    """Any other status (5xx bugs, unexpected answers)."""


def http_error(status: int, code: str, message: str, retry_after: float | None = None) -> HttpError:
    """The ``HttpError`` subclass for a status."""
    kind: type[HttpError]
    if status == 400:
        kind = BadRequest
    elif status in (401, 403):
        kind = AuthError
    elif status in (404, 410):
        kind = RoomUnavailable
    elif status == 409:
        kind = RoomFull
    elif status == 429:
        kind = RateLimited
    elif status == 503:
        kind = ServerBusy
    else:
        kind = ServerFault
    return kind(status, code, message, retry_after)


class CallError(BotCallError):
    """The call could not be set up (no STUN answer, no welcome, bad join answer)."""


class CallClosed(BotCallError):
    """The call has ended; nothing more can be sent.

    Attributes:
        close_code: the WebSocket close code (1000 you left, 4410 room closed,
            4408 expired, …; docs/protocol.md "Close codes"), or None.
        reason: the server's reason, or what ended the call.
    """

    def __init__(self, reason: str, close_code: int | None = None) -> None:
        super().__init__(reason if close_code is None else f"{reason} ({close_code})")
        self.reason = reason
        self.close_code = close_code
