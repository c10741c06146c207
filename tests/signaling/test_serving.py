"""The HTTP server's containment and budgets, against the real in-process server.

The bytes that used to kill the process (Hypercorn's send_eof race) are kept
here as a regression test; tests/attack repeats them against a server process.
"""

from __future__ import annotations

import json

import pytest
import trio

from botcall.server import Parts, supervise
from botcall.signaling.serving import ConnectionBudget, connection_ceiling, json_error_body, raw_json_response
from tests.kit.server import http_request, running_server

# Issue 10, item 1: a GET answered without reading its declared body, then an early close.
CRASH_BYTES = b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n{"


async def exchange(port: int, data: bytes, *, close_early: bool = False, limit: float = 10.0) -> bytes:
    """Send raw bytes and read until the server closes (or, with ``close_early``, close at once)."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(data)
        if close_early:
            return b""
        received = b""
        with trio.fail_after(limit):  # a safety net, not a speed requirement
            while True:
                try:
                    chunk = await stream.receive_some(65536)
                except trio.BrokenResourceError:
                    break
                if not chunk:
                    break
                received += chunk
        return received


def split_response(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, body


def error_code(body: bytes) -> str:
    payload = json.loads(body)
    assert set(payload) == {"error"} and set(payload["error"]) == {"code", "message"}, payload
    return payload["error"]["code"]


# --- budgets (pure) ---------------------------------------------------------------------------


def test_budget_counts_per_address_and_in_all():
    budget = ConnectionBudget(max_total=3, max_per_ip=2)
    assert budget.admit("10.0.0.1") is None and budget.admit("10.0.0.1") is None
    refusal = budget.admit("10.0.0.1")
    assert refusal is not None and refusal.code == "too_many_connections"
    assert budget.admit("10.0.0.2") is None
    assert budget.admit("10.0.0.3") is not None  # the server is full
    assert budget.refused == {"per_ip": 1, "server": 1}
    budget.release("10.0.0.1")
    assert budget.admit("10.0.0.3") is None
    for ip in ("10.0.0.1", "10.0.0.2", "10.0.0.3"):
        budget.release(ip)
    assert budget.total == 0 and budget.open_from("10.0.0.1") == 0


def test_trusted_proxies_only_count_against_the_global_ceiling():
    import ipaddress

    budget = ConnectionBudget(max_total=100, max_per_ip=1, exempt=(ipaddress.ip_network("10.1.0.0/16"),))
    assert all(budget.admit("10.1.2.3") is None for _ in range(50))
    assert budget.admit("192.0.2.1") is None and budget.admit("192.0.2.1") is not None


def test_the_ceiling_stays_below_the_open_file_limit():
    assert connection_ceiling(10_000, 1024, 256) == 768
    assert connection_ceiling(500, 1_048_576, 256) == 500
    assert connection_ceiling(500, 100, 256) == 1


def test_raw_error_responses_are_whole_json_responses():
    raw = raw_json_response(503, "Service Unavailable", "full", code="too_many_connections", headers=(("Retry-After", "1"),))
    status, headers, body = split_response(raw)
    assert status == 503 and headers["content-type"] == "application/json" and headers["retry-after"] == "1"
    assert int(headers["content-length"]) == len(body) and error_code(body) == "too_many_connections"
    assert error_code(json_error_body(431)) == "headers_too_large"


# --- the live server ------------------------------------------------------------------------


async def send_read_response_close(port: int, data: bytes) -> bytes:
    """Send ``data``, read one whole response (Content-Length framed), then close."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(data)
        received = b""
        with trio.fail_after(10):
            while b"\r\n\r\n" not in received or len(received.partition(b"\r\n\r\n")[2]) < int(
                split_response(received)[1].get("content-length", "0")
            ):
                received += await stream.receive_some(65536)
        return received


async def test_the_crash_bytes_leave_the_server_serving(tmp_path):
    async with running_server(tmp_path) as srv:
        for _ in range(5):
            await exchange(srv.info.http_port, CRASH_BYTES, close_early=True)
            # The GET is answered while its declared body is still awaited; then we close.
            assert split_response(await send_read_response_close(srv.info.http_port, CRASH_BYTES))[0] == 200
        health = await http_request(srv.url + "/healthz")
        assert health.status == 200 and health.json()["status"] == "ok"
        assert srv.info.parts.restarts["http"] == 0


@pytest.mark.parametrize(
    ("request_bytes", "status", "code"),
    [
        (b"GET /healthz HTTP/1.1\r\n\r\n", 400, "bad_request"),  # no Host
        (b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n", 400, "bad_request"),
        (b"GET /healthz HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 70_000 + b"\r\n\r\n", 431, "headers_too_large"),
        (b"BREW /healthz HTCPCP/1.0\r\n\r\n", 400, "bad_request"),
        (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 505, "http_version_not_supported"),
        # A WebSocket upgrade without a key: refused by Hypercorn before the app.
        (b"GET /v1/stream/x HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n", 400, "bad_request"),
    ],
)
async def test_errors_of_the_http_stack_are_json_and_close(tmp_path, request_bytes, status, code):
    async with running_server(tmp_path) as srv:
        raw = await exchange(srv.info.http_port, request_bytes)  # returns only once the server closed
        got_status, headers, body = split_response(raw)
        assert (got_status, error_code(body)) == (status, code)
        assert headers["content-type"] == "application/json" and int(headers["content-length"]) == len(body)


async def test_h2c_upgrade_is_answered_in_http_1_1(tmp_path):
    async with running_server(tmp_path) as srv:
        response = await http_request(
            srv.url + "/healthz", headers={"Upgrade": "h2c", "Connection": "Upgrade, HTTP2-Settings, close", "HTTP2-Settings": "AAMAAABkAAQAAP__"}
        )
        assert response.status == 200 and response.json()["status"] == "ok"


async def test_headers_that_trickle_in_too_slowly_get_408_and_a_close(tmp_path):
    async with running_server(tmp_path, header_timeout_s=0.3) as srv:
        raw = await exchange(srv.info.http_port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        status, _, body = split_response(raw)
        assert (status, error_code(body)) == (408, "request_timeout")


async def test_a_slow_body_gets_408(tmp_path):
    async with running_server(tmp_path, body_timeout_s=0.3) as srv:
        raw = await exchange(
            srv.info.http_port,
            b"POST /v1/join HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{",
        )
        status, _, body = split_response(raw)
        assert (status, error_code(body)) == (408, "request_timeout")


async def test_connections_over_the_per_address_budget_get_503(tmp_path):
    async with running_server(tmp_path, max_connections_per_ip=3) as srv:
        port = srv.info.http_port
        held = [await trio.open_tcp_stream("127.0.0.1", port) for _ in range(3)]
        try:
            # The fourth from the same address is told why and closed, unread.
            status, headers, body = split_response(await exchange(port, b""))
            assert (status, error_code(body), headers["retry-after"]) == (503, "too_many_connections", "1")
            # Another address still gets in (127.0.0.2 is loopback too).
            other = await trio.open_tcp_stream("127.0.0.1", port, local_address="127.0.0.2")
            async with other:
                await other.send_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                with trio.fail_after(10):
                    reply = b""
                    while chunk := await other.receive_some(65536):
                        reply += chunk
                assert split_response(reply)[0] == 200
        finally:
            for stream in held:
                await stream.aclose()
        # Closing one frees a place for that address again.
        with trio.fail_after(10):
            while True:
                response = await http_request(srv.url + "/healthz")
                if response.status == 200:
                    break
                await trio.sleep(0.05)  # the server notices the closes asynchronously
        metrics = (await http_request(srv.url + "/metrics")).body.decode()
        # At least the one above (the retries may have been refused too while the server noticed the closes).
        [line] = [line for line in metrics.splitlines() if line.startswith('botcall_http_connections_refused_total{budget="per_ip"}')]
        assert float(line.split()[-1]) >= 1


# --- supervision -------------------------------------------------------------------------------


async def test_a_part_that_fails_after_starting_is_restarted(autojump_clock):
    runs = []
    parts = Parts()

    async def flaky(*, task_status):
        runs.append(trio.current_time())
        task_status.started("up")
        if len(runs) < 3:
            raise RuntimeError("boom")
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        assert await nursery.start(supervise, "flaky", flaky, parts) == "up"
        await trio.sleep(10)
        nursery.cancel_scope.cancel()
    assert len(runs) == 3 and parts.restarts["flaky"] == 2
    assert runs[1] - runs[0] == pytest.approx(0.1) and runs[2] - runs[1] == pytest.approx(0.2)


async def test_a_part_that_fails_before_starting_is_not_retried():
    async def broken(*, task_status):
        raise ValueError("bad configuration")

    with pytest.RaisesGroup(pytest.RaisesExc(ValueError, match="bad configuration")):
        async with trio.open_nursery() as nursery:
            await nursery.start(supervise, "broken", broken, Parts())


def test_connections_opening_too_fast_from_one_address_are_refused():
    from botcall.config import RateLimit

    budget = ConnectionBudget(max_total=10_000, max_per_ip=10_000, rate_per_ip=RateLimit(rate=10.0, burst=20), max_tracked=3)
    admitted = [budget.admit("10.0.0.1", now=0.0) is None for _ in range(30)]
    assert admitted.count(True) == 20 and budget.refused["rate_per_ip"] == 10
    assert budget.admit("10.0.0.2", now=0.0) is None  # another address has its own bucket
    assert budget.admit("10.0.0.1", now=0.5) is None  # 5 tokens back after 0.5 s
    # The table stays bounded: refilled addresses are forgotten to make room,
    # and beyond the bound new addresses are simply not rate-tracked.
    for k in range(10):
        assert budget.admit(f"192.0.2.{k}", now=100.0) is None
    assert len(budget._arrivals) <= 3
