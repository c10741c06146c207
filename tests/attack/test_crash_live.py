"""Issue item 1: one unauthenticated TCP connection killed the server process.

Kept byte for byte as a regression test: ``CRASH_BYTES`` (a GET with a lying
Content-Length and one body byte, then an early close) made Hypercorn 0.18's
h11 error path raise ``trio.BusyResourceError``, which escaped and ended the
process with status 1. The second test reaches the same error path with a
thousand connections at once: a flood from one address under a 1,024
open-file limit, each connection a request answered before its body arrived,
released all at once.
"""

from __future__ import annotations

import pytest

from tests.kit.attack import attacks
from tests.kit.attack.lab import RSS_BOUND

pytestmark = pytest.mark.attack


async def test_crash_bytes_with_an_early_close_leave_the_server_up(lab):
    lab.start()
    async with lab.window("crash bytes, 12 connections closed early") as window:
        await attacks.crash_bytes(lab.target)
    window.impact.assert_harmless(rss_bound=RSS_BOUND)


async def test_releasing_a_connection_flood_at_the_file_limit_leaves_the_server_up(lab):
    lab.start(nofile=1024)
    async with lab.window("1,100 connections at a 1,024-file limit, released at once") as window:
        await attacks.connection_flood(lab.target, count=1100, payload=attacks.ANSWERED_BEFORE_ITS_BODY)
    window.impact.assert_harmless(rss_bound=RSS_BOUND)
