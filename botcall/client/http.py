"""JSON over HTTP for the SDK: the join and room calls.

A bot makes a handful of HTTP requests per call, so the standard library's
``urllib`` run in a worker thread is enough and adds no dependency.
"""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

import trio


class BotCallHttpError(Exception):
    """The server refused a request.

    Attributes:
        status: HTTP status (0 when the server could not be reached).
        code: the server's machine-readable error code.
        message: its explanation.
        retry_after: seconds from ``Retry-After`` on a 429, else None.
    """

    def __init__(self, status: int, code: str, message: str, retry_after: float | None = None) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.retry_after = retry_after


@dataclass(frozen=True)
class Room:
    """A created room (``POST /v1/rooms/create``)."""

    room_id: str
    invite_url: str
    expires_in: int
    max_human_participants: int


def _request(
    method: str, url: str, body: dict[str, Any] | None, token: str | None, timeout: float, ssl_context: ssl.SSLContext | None
) -> dict[str, Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("Accept", "application/json")
    if data is not None:
        request.add_header("Content-Type", "application/json")
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=ssl_context) as response:
            raw = response.read()
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        retry = exc.headers.get("Retry-After")
        try:
            error = json.loads(raw)["error"]
            code, message = str(error["code"]), str(error["message"])
        except (ValueError, KeyError, TypeError):
            code, message = "http_error", raw[:200].decode("utf-8", "replace")
        raise BotCallHttpError(exc.code, code, message, float(retry) if retry else None) from None
    except (urllib.error.URLError, OSError) as exc:
        raise BotCallHttpError(0, "unreachable", f"{url}: {exc}") from exc
    return json.loads(raw) if raw else {}


async def request_json(
    method: str,
    url: str,
    body: dict[str, Any] | None = None,
    *,
    token: str | None = None,
    timeout: float = 10.0,
    ssl_context: ssl.SSLContext | None = None,
) -> dict[str, Any]:
    """Send one JSON request and return the decoded JSON response.

    ``ssl_context`` decides which certificates an ``https://`` server may show
    (default: the system's trust store; a development CA: ``ssl.create_default_context(cafile=...)``).

    Raises:
        BotCallHttpError: a non-2xx answer (with the server's code) or no answer.
    """
    return await trio.to_thread.run_sync(_request, method, url, body, token, timeout, ssl_context)


async def create_room(
    server: str,
    token: str,
    *,
    max_human_participants: int | None = None,
    expires_in: int | None = None,
    ssl_context: ssl.SSLContext | None = None,
) -> Room:
    """Create a room owned by the token's controller (needs scope ``call:create``).

    Args:
        server: the server's base URL (``http://127.0.0.1:8080``).
        token: a BotAuth attestation.
        max_human_participants: optional limit.
        expires_in: optional lifetime in seconds.
        ssl_context: what an ``https://`` server's certificate is checked against (default: the system's).

    Returns:
        The room, with the invite URL to give to humans.

    Raises:
        BotCallHttpError: refused (scope missing, rate limited...).
    """
    body = {}
    if max_human_participants is not None:
        body["max_human_participants"] = max_human_participants
    if expires_in is not None:
        body["expires_in"] = expires_in
    answer = await request_json("POST", f"{server.rstrip('/')}/v1/rooms/create", body, token=token, ssl_context=ssl_context)
    return Room(answer["room_id"], answer["invite_url"], answer["expires_in"], answer["max_human_participants"])
