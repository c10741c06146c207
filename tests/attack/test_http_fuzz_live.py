"""A raw-socket HTTP fuzzer against the live server (with a concurrent call beside it).

Seeded random requests, sent with plain trio sockets: malformed request lines,
lying Content-Length, broken chunked encoding, header floods, early closes and
resets, half-closes, pipelining, bare LF line endings, NUL bytes, huge methods
and paths, requests split across writes. The invariants: the process lives, no
5xx (a 503 ``too_many_connections`` would be allowed, but the fuzzer stays
under the per-address budget; a 501 is allowed for a transfer coding other than
``chunked``, as RFC 9112 §6.1 asks), and every error response that has a body has
the JSON body ``{"error": {"code", "message"}}``; plus the kit's invariants for
the concurrent call, ``/healthz`` and memory.

``BOTCALL_ATTACK_FUZZ_SEED`` and ``BOTCALL_ATTACK_FUZZ_REQUESTS`` change the run
(a failure message names the seed and shows the offending bytes). Inputs that
once broke the server are in ``REGRESSIONS`` and run first, every time.
"""

from __future__ import annotations

import os
import random
import re
from dataclasses import dataclass, field

import pytest
import trio

from tests.kit.attack import attacks
from tests.kit.attack.lab import RSS_BOUND

pytestmark = pytest.mark.attack

SEED = int(os.environ.get("BOTCALL_ATTACK_FUZZ_SEED", "20261205"))
REQUESTS = int(os.environ.get("BOTCALL_ATTACK_FUZZ_REQUESTS", "400"))
# Well under the 64 connections one address may hold.
CONCURRENCY = 12
READ_TIMEOUT = 1.0
IDLE = 0.2


@dataclass
class Case:
    """One connection's worth of fuzz: what to write, and how to end."""

    parts: list[bytes]
    close_early: bool = False
    reset: bool = False
    half_close: bool = False
    gap: float = 0.0
    head: bool = False
    notes: list[str] = field(default_factory=list)

    def describe(self, limit: int = 240) -> str:
        data = b"".join(self.parts)
        shown = repr(data[:limit]) + (f"... ({len(data)} bytes)" if len(data) > limit else "")
        flags = [name for name in ("close_early", "reset", "half_close") if getattr(self, name)]
        return f"{shown} {flags + self.notes}"


REGRESSIONS = [
    # Issue item 1: BusyResourceError in Hypercorn 0.18's h11 error path; the process exited 1.
    Case([attacks.CRASH_BYTES], close_early=True, notes=["issue item 1"]),
    Case([attacks.ANSWERED_BEFORE_ITS_BODY], close_early=True, notes=["issue item 1, POST"]),
]

METHODS = [b"GET", b"POST", b"DELETE", b"PUT", b"OPTIONS", b"PATCH", b"TRACE", b"CONNECT", b"get", b"G\x00T", b"GE T", b"", b"\xff\xfe", b"M" * 5000]
PATHS = [
    b"/healthz", b"/v1/join", b"/v1/rooms/create", b"/v1/rooms", b"/v1/rooms/ab12-cd34-ef56", b"/metrics",
    b"/v1/stream/sess-nope", b"/v1/signal/ab12-cd34-ef56", b"/join/ab12-cd34-ef56", b"/pwa/app.js", b"/sw.js", b"/",
    b"*", b"http://x/healthz", b"/healthz?" + b"q=1&" * 500, b"/" + b"a" * 10_000, b"/%00", b"/\x00", b"/%ff%fe",
    b"/../../etc/passwd", b"/v1/rooms/%2e%2e", b"", b"healthz", b"/\xff\xfe",
]
VERSIONS = [b"HTTP/1.1"] * 6 + [b"HTTP/1.0", b"HTTP/2.0", b"HTTP/0.9", b"HTTP/1.1 junk", b"HTTP/9.9", b"http/1.1", b"", b"HTTP/1.1\x00"]
JOIN_BODY = b'{"agent_id":"fuzz","room_id":"ab12-cd34-ef56","attestation":{"token":"x.y.z"}}'


def _body(rng: random.Random) -> bytes:
    return rng.choice([b"", b"{}", JOIN_BODY, b'{"a":' * 50, rng.randbytes(rng.randrange(1, 300)), b"\x00" * 40, b"[1,2,3]", b"null"])


def _chunked(rng: random.Random, body: bytes) -> bytes:
    kind = rng.randrange(6)
    if kind == 0:  # well formed
        return f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n"
    if kind == 1:  # bad size
        return b"zz\r\n" + body + b"\r\n0\r\n\r\n"
    if kind == 2:  # a size that lies
        return f"{len(body) + 50:x}\r\n".encode() + body + b"\r\n0\r\n\r\n"
    if kind == 3:  # no last chunk
        return f"{len(body):x}\r\n".encode() + body + b"\r\n"
    if kind == 4:  # huge size and an extension
        return b"ffffffffffffffff;ext=1\r\n" + body
    return b"5\r\nab"  # cut short


def request_bytes(rng: random.Random) -> tuple[bytes, bool]:
    """One (often broken) request; also whether it is a HEAD."""
    eol = rng.choice([b"\r\n"] * 8 + [b"\n", b"\r"])
    method = b"HEAD" if rng.random() < 0.04 else rng.choice(METHODS)
    space = rng.choice([b" "] * 8 + [b"  ", b"\t"])
    line = method + space + rng.choice(PATHS) + space + rng.choice(VERSIONS)
    body = _body(rng) if method in (b"POST", b"PUT", b"PATCH") or rng.random() < 0.2 else b""
    headers: list[bytes] = []
    host = rng.random()
    if host < 0.85:
        headers.append(b"Host: x")
    elif host < 0.9:
        headers += [b"Host: x", b"Host: y"]
    elif host < 0.93:
        headers.append(b"Host:")
    if rng.random() < 0.7:
        headers.append(b"Connection: close")
    framing = rng.randrange(10)
    if framing <= 3:
        headers.append(b"Content-Length: %d" % len(body))
    elif framing == 4:
        headers.append(b"Content-Length: %d" % (len(body) + rng.choice([1, 10, 1000, 100_000])))  # lies: more than comes
    elif framing == 5:
        headers.append(b"Content-Length: %d" % max(0, len(body) - rng.randrange(1, 5)))  # lies: less than comes
    elif framing == 6:
        headers.append(rng.choice([b"Content-Length: abc", b"Content-Length: -1", b"Content-Length: +5", b"Content-Length: 0x10",
                                   b"Content-Length: 1" + b"0" * 30, b"Content-Length: 5, 6", b"Content-Length:"]))
    elif framing == 7:
        headers += [b"Content-Length: %d" % len(body), b"Content-Length: %d" % (len(body) + 3)]
    elif framing == 8:
        headers.append(rng.choice([b"Transfer-Encoding: chunked", b"Transfer-Encoding: chunked, gzip", b"Transfer-Encoding: gzip",
                                   b"Transfer-Encoding:  chunked"]))
        if rng.random() < 0.3:
            headers.append(b"Content-Length: 3")
        body = _chunked(rng, body)
    extra = rng.randrange(14)
    if extra == 0:
        headers += [b"X-Flood-%d: %d" % (index, index) for index in range(rng.choice([100, 500, 2000]))]
    elif extra == 1:
        headers.append(b"X-Big: " + b"a" * rng.choice([8_000, 20_000, 70_000]))
    elif extra == 2:
        headers.append(b"X-Nul: a\x00b")
    elif extra == 3:
        headers.append(b"Bad Name: x")
    elif extra == 4:
        headers += [b"X-Folded: a", b" continued"]
    elif extra == 5:
        headers.append(b"X-Latin: \xe9\xff")
    elif extra == 6:
        headers.append(b"Expect: 100-continue")
    elif extra == 7:
        headers += [b"Upgrade: websocket", b"Connection: Upgrade"]
    elif extra == 8:
        headers += [b"Upgrade: h2c", b"HTTP2-Settings: AAMAAABkAAQAAP__", b"Connection: Upgrade, HTTP2-Settings"]
    elif extra == 9:
        headers.append(b"Authorization: Bearer " + rng.choice([b"x", b"a.b.c", b"\x00", b"e" * 9000]))
    elif extra == 10:
        headers.append(b":authority: x")
    elif extra == 11:
        headers.append(b"X-Y" * 3000 + b": z")
    elif extra == 12:
        headers.append(b"Content-Type: application/json; charset=\xff")
    rng.shuffle(headers)
    return line + eol + eol.join(headers) + (eol if headers else b"") + eol + body, method == b"HEAD"


def generate(rng: random.Random) -> Case:
    first, head = request_bytes(rng)
    data = first
    if not head and rng.random() < 0.15:  # pipelining
        for _ in range(rng.randrange(1, 3)):
            data += request_bytes(rng)[0] if rng.random() < 0.5 else b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    if rng.random() < 0.05:
        data = data[: rng.randrange(len(data) + 1)]  # cut anywhere
    parts = [data]
    gap = 0.0
    if rng.random() < 0.15 and len(data) > 2:  # split across writes
        cuts = sorted(rng.sample(range(1, len(data)), min(3, len(data) - 1)))
        parts = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)])]
        gap = 0.005
    mode = rng.random()
    return Case(
        parts,
        close_early=mode < 0.15,
        reset=0.15 <= mode < 0.2,
        half_close=0.2 <= mode < 0.3,
        gap=gap,
        head=head,
    )


_TRANSFER_ENCODING = re.compile(rb"(?im)^transfer-encoding:[ \t]*([^\r\n]*)")


def names_an_unknown_coding(case: Case) -> bool:
    """The request asks for a transfer coding other than plain ``chunked``: RFC 9112 §6.1
    says a server SHOULD answer 501 (Not Implemented), the one 5xx a client can earn."""
    return any(value.strip().lower() != b"chunked" for value in _TRANSFER_ENCODING.findall(b"".join(case.parts)))


def judge(case: Case, exchange: attacks.Exchange) -> list[str]:
    """What is wrong with the server's answers on one connection."""
    wrong = []
    if exchange.error and exchange.error.startswith("unparsable"):
        wrong.append(f"{exchange.error}: {exchange.received[:120]!r}")
    for response in exchange.responses:
        error = response.json_error()
        allowed = (response.status == 503 and error is not None and error[0] == "too_many_connections") or (
            response.status == 501 and names_an_unknown_coding(case)
        )
        if response.status >= 500 and not allowed:
            wrong.append(f"{response.status} {response.body[:120]!r}")
        if response.status >= 400 and response.body and error is None:
            wrong.append(f"{response.status} with a body that is not a JSON error: {response.body[:120]!r}")
    return wrong


async def test_malformed_http_neither_kills_nor_confuses_the_server(lab):
    # A fuzzer opens hundreds of connections a second from one address: lift
    # the connection-rate budget (tests/attack/test_exhaustion_live.py covers it).
    lab.start(optional_flags=[("--connection-rate-per-ip", "10000")])
    rng = random.Random(SEED)
    cases = REGRESSIONS + [generate(rng) for _ in range(REQUESTS)]
    findings: list[str] = []
    statuses: dict[int, int] = {}
    limiter = trio.CapacityLimiter(CONCURRENCY)

    async def run(case: Case) -> None:
        async with limiter:
            try:
                exchange = await attacks.raw_exchange(
                    lab.target,
                    case.parts,
                    close_early=case.close_early,
                    reset=case.reset,
                    half_close=case.half_close,
                    gap=case.gap,
                    read_timeout=READ_TIMEOUT,
                    idle=IDLE,
                    head=case.head,
                )
            except OSError as exc:  # the server is gone (the window says so) or refused us
                findings.append(f"no connection ({exc}) for {case.describe()}")
                return
        for response in exchange.responses:
            statuses[response.status] = statuses.get(response.status, 0) + 1
        findings.extend(f"{what} for {case.describe()}" for what in judge(case, exchange))

    async with lab.window(f"{len(cases)} fuzzed HTTP requests (seed {SEED})") as window:
        async with trio.open_nursery() as nursery:
            for case in cases:
                nursery.start_soon(run, case)
    findings.sort(key=lambda finding: finding.startswith("no connection"))  # the server's answers first
    window.impact.assert_harmless(
        rss_bound=RSS_BOUND,
        checks=[(not findings, f"{len(findings)} bad answers (statuses seen {dict(sorted(statuses.items()))}), seed {SEED}:\n" + "\n".join(findings[:12]))],
    )
