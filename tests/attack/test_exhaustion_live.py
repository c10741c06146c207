"""Exhaustion from one address, issue item 5: slow requests, a connection flood under
a 1,024 open-file limit, and an HTTP/2 cleartext rapid-reset burst, each against a
live server with a concurrent call."""

from __future__ import annotations

import pytest

from tests.kit.attack import attacks
from tests.kit.attack.lab import LEGIT_OK, RSS_BOUND, legit_operations

pytestmark = pytest.mark.attack

# Short time-outs so the test is quick; the defaults are 10 s and 30 s.
HEADER_TIMEOUT = 2.0
BODY_TIMEOUT = 2.0
# How long past its time-out a slow connection may still be open (a busy machine).
CUT_OFF_MARGIN = 4.0
PER_ADDRESS_CONNECTIONS = 64
# The flood is kept up: a connection the server drops is opened again after this long.
REFILL = 0.5


async def test_slow_headers_and_slow_bodies_are_cut_off(lab):
    # The issue: slow request bodies stayed open for at least 75 s.
    lab.start(optional_flags=[("--header-timeout", str(HEADER_TIMEOUT)), ("--body-timeout", str(BODY_TIMEOUT))])
    duration = max(HEADER_TIMEOUT, BODY_TIMEOUT) + CUT_OFF_MARGIN
    async with lab.window("slow headers and slow bodies, one byte every 0.5 s") as window:
        result = await attacks.slowloris(lab.target, headers=8, bodies=8, duration=duration)
    # Each one ended with a JSON 408 request_timeout, or just closed.
    wrong = [e for e in result["ended"] if (e["status"], e["code"]) not in ((None, None), (408, "request_timeout"))]
    window.impact.assert_harmless(
        rss_bound=RSS_BOUND,
        checks=[
            (not result["open_at_end"], f"still open after {duration:.0f} s: {result['open_at_end']}"),
            (not wrong, f"ended otherwise than with a 408 request_timeout or a close: {wrong}"),
        ],
    )


async def test_a_connection_flood_from_one_address_leaves_room_for_everyone_else(lab):
    # The issue: 1,100 connections from one address under a 1,024 open-file limit
    # made /healthz, room creation and WebSocket upgrades time out for everyone.
    lab.start(nofile=1024)
    target = lab.target

    async def legit_work() -> dict:
        return await legit_operations(target)

    async with lab.window("1,100 connections from one address at a 1,024-file limit") as window:
        result = await attacks.connection_flood(target, count=1100, during=legit_work, refill=REFILL)
    # The flood itself got at most its address's budget; every connection refused
    # with an answer was told so in JSON.
    window.impact.assert_harmless(
        rss_bound=RSS_BOUND,
        checks=[
            (result["during"] == LEGIT_OK, f"a legitimate client from elsewhere was not served: {result['during']}"),
            (result["still_open"] <= PER_ADDRESS_CONNECTIONS, f"{result['still_open']} of the flood's connections stayed open"),
            (set(result["statuses"]) <= {503} and set(result["codes"]) <= {"too_many_connections"}, f"refusals other than a JSON 503 too_many_connections: {result['statuses']} {result['codes']}"),
        ],
    )


async def test_an_h2c_rapid_reset_burst_does_not_disturb_calls(lab):
    # The issue: an HTTP/2 cleartext (prior-knowledge) rapid-reset burst made a
    # 341 ms audio gap. HTTP/2 is off unless --http2 is given.
    lab.start()
    async with lab.window("h2c rapid reset, 4 x 5,000 streams") as window:
        result = await attacks.h2c_rapid_reset(lab.target, connections=4, streams=5000)
    window.impact.assert_harmless(rss_bound=RSS_BOUND, checks=[(result["h2_answers"] == 0, f"the server speaks HTTP/2 without --http2: {result}")])
