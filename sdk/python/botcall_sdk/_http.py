"""JSON over HTTP (httpx): the join and the room calls."""

from __future__ import annotations

import base64
import binascii
import json
import ssl
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx

from botcall_sdk._errors import BotCallError, HttpError, InvalidServerUrl, Unreachable, http_error

JsonObject = dict[str, Any]
REQUEST_TIMEOUT = 10.0


def base_url(server: str) -> str:
    """``server`` without a trailing slash, checked to be an http(s) URL.

    Raises:
        InvalidServerUrl: no ``http://`` or ``https://`` scheme, or no host.
    """
    if not isinstance(server, str):
        raise InvalidServerUrl(f"the server URL must be a string, not {type(server).__name__}")
    parts = urlsplit(server)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise InvalidServerUrl(
            f"the server URL must start with http:// or https:// (for example http://127.0.0.1:8080), not {server!r}"
        )
    return server.rstrip("/")


def agent_id_of(token: str) -> str:
    """The ``sub`` claim of an attestation, read without verifying it (it is ours).

    Raises:
        BotCallError: not a JWT with a string ``sub``.
    """
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError, binascii.Error) as exc:
        raise BotCallError(f"the token is not a JWT: {exc}") from None
    sub = claims.get("sub") if isinstance(claims, dict) else None
    if not isinstance(sub, str):
        raise BotCallError("the token has no 'sub' claim: pass agent_id=")
    return sub


async def request_json(
    client: httpx.AsyncClient | None,
    method: str,
    url: str,
    body: JsonObject | None = None,
    *,
    token: str | None = None,
    timeout: float = REQUEST_TIMEOUT,
) -> JsonObject:
    """One JSON request; the decoded JSON answer.

    Args:
        client: an ``httpx.AsyncClient`` to share, or None for a one-off client.

    Raises:
        HttpError: a non-2xx answer (the subclass and ``code`` from the server) or ``Unreachable``.
    """
    headers = {"Accept": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    try:
        if client is None:
            async with httpx.AsyncClient(timeout=timeout) as own:
                response = await own.request(method, url, json=body, headers=headers)
        else:
            response = await client.request(method, url, json=body, headers=headers, timeout=timeout)
    except httpx.HTTPError as exc:
        raise Unreachable(0, "unreachable", f"{url}: {exc!r}") from exc
    if response.is_success:
        try:
            answer = response.json() if response.content else {}
        except ValueError as exc:
            raise http_error(response.status_code, "bad_response", f"not JSON: {response.text[:200]!r}") from exc
        if not isinstance(answer, dict):
            raise http_error(response.status_code, "bad_response", "not a JSON object")
        return answer
    retry = response.headers.get("Retry-After")
    try:
        error = response.json()["error"]
        code, message = str(error["code"]), str(error["message"])
    except (ValueError, KeyError, TypeError):
        code, message = "http_error", response.text[:200]
    try:
        retry_after = float(retry) if retry else None
    except ValueError:
        retry_after = None
    raise http_error(response.status_code, code, message, retry_after)


@dataclass(frozen=True, slots=True)
class Room:
    """A created room (``POST /v1/rooms/create``)."""

    room_id: str
    invite_url: str
    expires_in: int
    max_human_participants: int


async def create_room(
    server: str,
    token: str,
    *,
    max_human_participants: int | None = None,
    expires_in: int | None = None,
    interruption: JsonObject | None = None,
    http_client: httpx.AsyncClient | None = None,
    ssl_context: ssl.SSLContext | None = None,
) -> Room:
    """Create a room owned by the token's controller (scope ``call:create``).

    Args:
        server: the server's base URL (``http://127.0.0.1:8080``).
        token: a BotAuth attestation.
        max_human_participants: optional limit.
        expires_in: optional lifetime in seconds.
        interruption: optional barge-in setting, e.g. ``{"mode": "off"}``.
        http_client: an ``httpx.AsyncClient`` to reuse.
        ssl_context: what an ``https://`` server's certificate is checked against (default: the system's).

    Raises:
        InvalidServerUrl: ``server`` is not an http(s) URL.
        HttpError: refused (scope missing, rate limited, …).
    """
    body: JsonObject = {}
    if max_human_participants is not None:
        body["max_human_participants"] = max_human_participants
    if expires_in is not None:
        body["expires_in"] = expires_in
    if interruption is not None:
        body["interruption"] = interruption
    if http_client is None:
        async with httpx.AsyncClient(verify=ssl_context if ssl_context is not None else True) as own:
            answer = await request_json(own, "POST", f"{base_url(server)}/v1/rooms/create", body, token=token)
    else:
        answer = await request_json(http_client, "POST", f"{base_url(server)}/v1/rooms/create", body, token=token)
    try:
        return Room(str(answer["room_id"]), str(answer["invite_url"]), int(answer["expires_in"]), int(answer["max_human_participants"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise http_error(200, "bad_response", f"unexpected create answer: {exc!r}") from exc


__all__ = ["HttpError", "Room", "agent_id_of", "base_url", "create_room", "request_json"]
