"""Run the real BotCall server in-process in a pytest-trio test, and talk HTTP to it.

    async with running_server(tmp_path) as srv:
        token = srv.token(agent="orion#8f3a", controller="gopi")
        created = await srv.post("/v1/rooms/create", json_body={}, bearer=token)
        srv.clock.advance(3600)   # the registry and verifier read this fake clock
        srv.housekeep()           # one deterministic housekeeping pass

The server binds 127.0.0.1 port 0 (HTTP) with a temporary data directory; its
dev issuer signs tokens (``srv.token``, or ``srv.dev.sign`` for hand-made
claims). ``http_request`` is a tiny HTTP/1.1 client over ``trio`` and ``h11``
(one connection per request) so tests see exactly the bytes Hypercorn sends.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import ssl
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from functools import partial
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import h11
import trio

from botcall.auth.keys import DevIssuer
from botcall.config import Config, RateLimit
from botcall.server import ServerInfo, housekeep, run_server
from botcall.signaling.http_api import AppState

# A fixed, plausible Unix time: tests never read the wall clock.
T0 = 1_800_000_000.0

_GENEROUS = RateLimit(rate=1000.0, burst=1000)
_MISSING = object()


class FakeClock:
    """A Unix-time clock that only moves when told to."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now


@dataclass(frozen=True)
class HttpResponse:
    """A whole HTTP response. ``headers`` names are lower-case."""

    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def error_code(self) -> str:
        """``error.code`` of a JSON error body (asserts the shape)."""
        payload = self.json()
        assert set(payload) == {"error"}, payload
        assert set(payload["error"]) == {"code", "message"}, payload
        assert isinstance(payload["error"]["message"], str) and payload["error"]["message"]
        return payload["error"]["code"]


async def http_request(
    url: str,
    method: str = "GET",
    *,
    json_body: Any = _MISSING,
    body: bytes | None = None,
    headers: Mapping[str, str] | None = None,
    chunked: bool = False,
    timeout: float = 10.0,
    ssl_context: ssl.SSLContext | None = None,
) -> HttpResponse:
    """Send one request on a fresh connection and read the whole response.

    Args:
        url: ``http://host:port/path``.
        method: the HTTP method.
        json_body: serialised as the body when given.
        body: raw body bytes (mutually exclusive with ``json_body``).
        headers: extra request headers.
        chunked: send the body with ``Transfer-Encoding: chunked`` (no Content-Length).
        timeout: a safety net against a hung server, not a speed requirement.
        ssl_context: trusts the server's certificate for an ``https://`` URL
            (default: the system's trust store).

    Returns:
        The response.
    """
    parts = urlsplit(url)
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    if json_body is not _MISSING:
        body = json.dumps(json_body).encode()
    request_headers = [("Host", parts.netloc), ("Connection", "close")]
    for name, value in (headers or {}).items():
        request_headers.append((name, value))
    if body is not None:
        if chunked:
            request_headers.append(("Transfer-Encoding", "chunked"))
        else:
            request_headers.append(("Content-Length", str(len(body))))
    connection = h11.Connection(h11.CLIENT)
    with trio.fail_after(timeout):
        stream: trio.abc.Stream = await trio.open_tcp_stream(parts.hostname, parts.port)
        if parts.scheme == "https":
            stream = trio.SSLStream(stream, ssl_context or ssl.create_default_context(), server_hostname=parts.hostname)
        async with stream:
            out = connection.send(h11.Request(method=method, target=target, headers=request_headers))
            if body:
                if chunked:
                    for start in range(0, len(body), 4096):
                        out += connection.send(h11.Data(data=body[start : start + 4096]))
                else:
                    out += connection.send(h11.Data(data=body))
            out += connection.send(h11.EndOfMessage())
            # A server may answer early (413) and stop reading: its answer is still
            # in our receive buffer, so a broken send is not the end of the exchange.
            with contextlib.suppress(trio.BrokenResourceError):
                await stream.send_all(out)
            response: h11.Response | None = None
            chunks: list[bytes] = []
            while True:
                event = connection.next_event()
                if event is h11.NEED_DATA:
                    data = await stream.receive_some(65536)
                    connection.receive_data(data)
                    continue
                if isinstance(event, h11.Response):
                    response = event
                elif isinstance(event, h11.Data):
                    chunks.append(bytes(event.data))
                elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
                    break
    assert response is not None
    return HttpResponse(
        status=response.status_code,
        headers={k.decode().lower(): v.decode() for k, v in response.headers},
        body=b"".join(chunks),
    )


@dataclass
class LiveServer:
    """A running in-process server with a fake clock."""

    info: ServerInfo
    clock: FakeClock
    config: Config
    # Trusts the server's certificate when it serves TLS (tests/kit/tls.py).
    client_ssl: ssl.SSLContext | None = None

    @property
    def url(self) -> str:
        return self.info.http_url

    @property
    def state(self) -> AppState:
        return self.info.state

    @property
    def dev(self) -> DevIssuer:
        assert self.state.dev_issuer is not None
        return self.state.dev_issuer

    def token(
        self,
        *,
        agent: str = "orion#8f3a",
        controller: str = "gopi",
        scope: str = "call:create call:voice call:receive",
        ttl: float = 3600,
        room: str | None = None,
    ) -> str:
        """A valid dev-issuer attestation issued now (fake clock)."""
        return self.dev.mint(
            agent=agent,
            controller=controller,
            audience=self.config.audience,
            scopes=tuple(scope.split()),
            ttl=ttl,
            now=self.clock(),
            room=room,
        )

    def claims(self, **overrides: Any) -> dict[str, Any]:
        """A valid claims set (dev issuer, now) with ``overrides``; ``None`` removes a claim."""
        now = int(self.clock())
        claims: dict[str, Any] = {
            "iss": self.dev.issuer,
            "aud": self.config.audience,
            "sub": "orion#8f3a",
            "ctl": "gopi",
            "scope": "call:create call:voice",
            "iat": now,
            "exp": now + 600,
            "jti": secrets.token_urlsafe(12),
        }
        for name, value in overrides.items():
            if value is None:
                claims.pop(name, None)
            else:
                claims[name] = value
        return claims

    def housekeep(self) -> None:
        """Run one housekeeping pass at the fake clock's time."""
        housekeep(self.state)

    async def request(
        self, method: str, path: str, *, bearer: str | None = None, headers: Mapping[str, str] | None = None, **kwargs: Any
    ) -> HttpResponse:
        all_headers = dict(headers or {})
        if bearer is not None:
            all_headers["Authorization"] = f"Bearer {bearer}"
        return await http_request(self.url + path, method, headers=all_headers, ssl_context=self.client_ssl, **kwargs)

    async def get(self, path: str, **kwargs: Any) -> HttpResponse:
        return await self.request("GET", path, **kwargs)

    async def post(self, path: str, **kwargs: Any) -> HttpResponse:
        return await self.request("POST", path, **kwargs)

    async def delete(self, path: str, **kwargs: Any) -> HttpResponse:
        return await self.request("DELETE", path, **kwargs)

    async def create_room(self, token: str, **body: Any) -> HttpResponse:
        return await self.post("/v1/rooms/create", bearer=token, json_body=body)

    async def join(
        self,
        token: str,
        room_id: str,
        *,
        agent_id: str = "orion#8f3a",
        media: dict[str, Any] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> HttpResponse:
        body: dict[str, Any] = {
            "agent_id": agent_id,
            "room_id": room_id,
            "attestation": {"token": token},
            "capabilities": {"audio_in": True, "audio_out": True, "video": False, "text_chat": True},
        }
        if media is not None:
            body["media"] = media
        body.update(extra or {})
        return await self.post("/v1/join", json_body=body)


def make_config(data_dir: Path, **overrides: Any) -> Config:
    """A ``Config`` for tests: HTTP and media on free ports, ``data_dir``, generous rate
    limits unless overridden."""
    base = Config(
        http_port=0,
        media_port=0,
        data_dir=data_dir,
        create_limit_per_agent=_GENEROUS,
        create_limit_per_ip=_GENEROUS,
        join_limit_per_agent=_GENEROUS,
        join_limit_per_ip=_GENEROUS,
        query_limit_per_ip=_GENEROUS,
        connection_rate_per_ip=_GENEROUS,
    )
    return replace(base, **overrides)


@asynccontextmanager
async def running_server(
    data_dir: Path,
    *,
    clock: FakeClock | None = None,
    housekeeping_interval: float = 1.0,
    client_ssl: ssl.SSLContext | None = None,
    **overrides: Any,
) -> AsyncIterator[LiveServer]:
    """Start ``run_server`` on 127.0.0.1:0 and yield a ``LiveServer``; stop it on exit.

    Args:
        data_dir: a temporary directory for the dev issuer key.
        clock: the fake clock (default: a new one at ``T0``).
        housekeeping_interval: seconds (trio time) between background passes.
        client_ssl: what ``LiveServer.request`` trusts when the server serves TLS.
        **overrides: ``Config`` fields.
    """
    clock = clock or FakeClock()
    config = make_config(data_dir, **overrides)
    async with trio.open_nursery() as nursery:
        info = await nursery.start(
            partial(run_server, config, clock=clock, housekeeping_interval=housekeeping_interval)
        )
        try:
            yield LiveServer(info=info, clock=clock, config=config, client_ssl=client_ssl)
        finally:
            nursery.cancel_scope.cancel()
