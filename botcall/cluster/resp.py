"""A small Redis client for Trio: the RESP2 codec (sans-IO) and one connection.

Why our own (docs/architecture.md, "Nodes on Redis"): redis-py's asyncio
client does not run on Trio, and bridging it through trio-asyncio would put a
second event loop under every request and mix two cancellation models in the
one place (the directory) that must fail fast and clearly. The commands we need
(``SET NX PX``, hashes, sets, ``EVALSHA``) are plain request/response; RESP2 is
a few lines to encode and parse.

``RespParser.feed(bytes)`` then ``next_reply()`` returns ``NEED_DATA`` or a reply:
``str`` (simple string), ``int``, ``bytes | None`` (bulk), ``list`` (array) or a
``RedisReplyError`` value (``-ERR ...``). Malformed input raises ``RespError``
and nothing else (``parse``-style: ``_untrusted``).
"""

from __future__ import annotations

from typing import Any, Union
from urllib.parse import urlsplit

import trio

from botcall.errors import BotCallError

# Reply sizes we accept: a bulk string or array longer than these is a broken peer.
MAX_BULK_BYTES = 16 * 1024 * 1024
MAX_ARRAY_ITEMS = 1_000_000
NEED_DATA = object()


class RespError(BotCallError):
    """The bytes from the server are not RESP2 (or exceed our limits)."""


class RedisReplyError(BotCallError):
    """The server answered a command with an error (``-ERR ...``)."""


class RedisUnavailable(BotCallError):
    """Redis cannot be reached, or did not answer in time."""


Reply = Union[str, int, bytes, None, list[Any], RedisReplyError]


def encode_command(*args: str | bytes | int | float) -> bytes:
    """One command as a RESP array of bulk strings."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


class RespParser:
    """Incremental RESP2 reply parser (see the module docstring)."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> None:
        self._buffer += data

    def next_reply_untrusted(self) -> Any:
        """The next whole reply, or ``NEED_DATA``.

        Raises:
            RespError: malformed or oversized.
        """
        result = self._parse(0, 0)
        if result is NEED_DATA:
            return NEED_DATA
        reply, end = result
        del self._buffer[:end]
        return reply

    def _line(self, start: int) -> tuple[bytes, int] | None:
        end = self._buffer.find(b"\r\n", start)
        if end < 0:
            if len(self._buffer) - start > 64 * 1024:
                raise RespError("a reply line is too long")
            return None
        return bytes(self._buffer[start + 1 : end]), end + 2

    def _int(self, text: bytes) -> int:
        try:
            return int(text)
        except ValueError:
            raise RespError(f"not an integer: {text[:40]!r}") from None

    def _parse(self, start: int, depth: int) -> Any:
        if depth > 8:
            raise RespError("replies nest too deep")
        if start >= len(self._buffer):
            return NEED_DATA
        kind = self._buffer[start : start + 1]
        line = self._line(start)
        if line is None:
            return NEED_DATA
        text, after = line
        if kind == b"+":
            return text.decode("utf-8", "replace"), after
        if kind == b"-":
            return RedisReplyError(text.decode("utf-8", "replace")), after
        if kind == b":":
            return self._int(text), after
        if kind == b"$":
            length = self._int(text)
            if length == -1:
                return None, after
            if not 0 <= length <= MAX_BULK_BYTES:
                raise RespError(f"bulk length {length} out of range")
            if len(self._buffer) < after + length + 2:
                return NEED_DATA
            if self._buffer[after + length : after + length + 2] != b"\r\n":
                raise RespError("a bulk string does not end with CRLF")
            return bytes(self._buffer[after : after + length]), after + length + 2
        if kind == b"*":
            count = self._int(text)
            if count == -1:
                return None, after
            if not 0 <= count <= MAX_ARRAY_ITEMS:
                raise RespError(f"array length {count} out of range")
            items = []
            position = after
            for _ in range(count):
                result = self._parse(position, depth + 1)
                if result is NEED_DATA:
                    return NEED_DATA
                item, position = result
                items.append(item)
            return items, position
        raise RespError(f"unknown reply type {bytes(kind)!r}")


def parse_redis_url(url: str) -> tuple[str, int, int]:
    """``redis://host:port/db`` → ``(host, port, db)``.

    Raises:
        ValueError: not a ``redis://`` URL.
    """
    parts = urlsplit(url)
    if parts.scheme != "redis" or not parts.hostname:
        raise ValueError(f"expected redis://host[:port][/db], not {url!r}")
    db = int(parts.path.strip("/") or 0)
    return parts.hostname, parts.port or 6379, db


class Redis:
    """One Redis connection, reconnected on demand; commands are serialised.

    Args:
        url: ``redis://host:port/db``.
        timeout: seconds for a connect or a reply before ``RedisUnavailable``.
    """

    def __init__(self, url: str, *, timeout: float = 2.0) -> None:
        self.host, self.port, self.db = parse_redis_url(url)
        self.timeout = timeout
        self._stream: trio.SocketStream | None = None
        self._parser = RespParser()
        self._lock = trio.Lock()

    async def execute(self, *args: str | bytes | int | float) -> Any:
        """Send one command and return its reply.

        Raises:
            RedisUnavailable: no connection, or no answer within ``timeout`` (the
                connection is dropped; the next command reconnects).
            RedisReplyError: Redis refused the command.
        """
        async with self._lock:
            try:
                with trio.fail_after(self.timeout):
                    stream = await self._connected()
                    await stream.send_all(encode_command(*args))
                    reply = await self._reply(stream)
            except (OSError, trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError, RespError) as exc:
                await self._drop()
                raise RedisUnavailable(f"redis at {self.host}:{self.port}: {type(exc).__name__} {exc}".strip()) from exc
        if isinstance(reply, RedisReplyError):
            raise reply
        return reply

    async def _connected(self) -> trio.SocketStream:
        if self._stream is None:
            self._stream = await trio.open_tcp_stream(self.host, self.port)
            self._parser = RespParser()
            if self.db:
                await self._stream.send_all(encode_command("SELECT", self.db))
                reply = await self._reply(self._stream)
                if isinstance(reply, RedisReplyError):
                    raise RespError(f"SELECT {self.db}: {reply}")
        return self._stream

    async def _reply(self, stream: trio.SocketStream) -> Any:
        while True:
            reply = self._parser.next_reply_untrusted()
            if reply is not NEED_DATA:
                return reply
            data = await stream.receive_some(65536)
            if not data:
                raise trio.BrokenResourceError("redis closed the connection")
            self._parser.feed(data)

    async def _drop(self) -> None:
        if self._stream is not None:
            stream, self._stream = self._stream, None
            with trio.CancelScope(shield=True):
                await stream.aclose()

    async def aclose(self) -> None:
        async with self._lock:
            await self._drop()
