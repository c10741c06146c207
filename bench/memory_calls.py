"""Resident memory per bot↔browser call session once media flowed.

Usage (from the repository root)::

    python -m bench.memory_calls [--sessions 0,100,1000] [--batch 10]

``python -m bench.memory``'s ``calls`` variant measures calls whose browsers
connected (ICE, DTLS, SRTP contexts) but never sent a packet. A real
browser's first SRTP packet follows its handshake within one 20 ms frame (or
its first RTCP report, if it only listens), and the relay answers it by
releasing the leg's OpenSSL state (``WebRtcLeg`` and ``DtlsEndpoint.release``:
the browser has proved it holds the keys). This benchmark fills a fresh
server (``bench.harness.server.RelayProcess``) as ``bench.memory`` does, but
``--batch`` calls at a time, and after each batch every browser sends one SRTP
packet and every bot one RTP packet through the relay (each must arrive).
So, as on a live relay, what one handshake frees is reused by the next ones;
freed in one go after all the handshakes, it would stay in the allocator's
arenas and the RSS would not show it. VmRSS is read once the step's calls are
all in.

Bytes per session = (RSS with n sessions - RSS with none) / n; a call is two
sessions.
"""

from __future__ import annotations

import argparse
import select
import struct
import sys
import time

from bench.harness.machine import GENERATOR_CORE, machine_description, run_isolated
from bench.harness.server import Api, bot_browser_calls, RelayProcess
from bench.harness.machine import pin_to_core
from bench.memory import MemoryPoint, settled_rss

RTP_HEADER = struct.Struct("!BBHII")
PAYLOAD = bytes(160)
RECEIVE_TIMEOUT = 10.0
HEADER = f"{'variant':<12}{'sessions':>9}{'RSS MiB':>10}{'+MiB':>8}{'bytes/session':>15}"


def format_point(point: MemoryPoint) -> str:
    per_session = "-" if not point.sessions else f"{point.per_session_bytes:,.0f}"
    return (
        f"{point.variant:<12}{point.sessions:>9}{point.rss_bytes / 2**20:>10.1f}"
        f"{(point.rss_bytes - point.baseline_bytes) / 2**20:>8.1f}{per_session:>15}"
    )


def _receive_one_each(sockets: list, timeout: float = RECEIVE_TIMEOUT) -> int:
    """Read one datagram from each socket (within ``timeout`` in all); how many got one."""
    waiting = {sock.fileno(): sock for sock in sockets}
    poller = select.poll()
    for fileno in waiting:
        poller.register(fileno, select.POLLIN)
    deadline = time.monotonic() + timeout
    got = 0
    while waiting and time.monotonic() < deadline:
        for fileno, _ in poller.poll(max(0.0, deadline - time.monotonic()) * 1000):
            sock = waiting.pop(fileno, None)
            if sock is None:
                continue
            poller.unregister(fileno)
            try:
                sock.recv(2048)
                got += 1
            except BlockingIOError:
                waiting[fileno] = sock
                poller.register(fileno, select.POLLIN)
    return got


def send_first_media(calls: list, media_addr: tuple[str, int]) -> None:
    """One SRTP packet from every browser and one RTP packet from every bot, each received.

    Raises:
        RuntimeError: a packet did not arrive (the relay dropped it).
    """
    for bot, browser in calls:
        browser.sock.sendto(browser.srtp.protect(RTP_HEADER.pack(0x80, 111, 1, 0, browser.send_ssrc) + PAYLOAD), media_addr)
    arrived = _receive_one_each([bot.sock for bot, _ in calls])
    for bot, _ in calls:
        bot.sock.sendto(RTP_HEADER.pack(0x80, 111, 1, 0, bot.ssrc) + PAYLOAD, media_addr)
    arrived += _receive_one_each([browser.sock for _, browser in calls])
    if arrived != 2 * len(calls):
        raise RuntimeError(f"{2 * len(calls) - arrived} of {2 * len(calls)} first packets did not arrive")


def measure(counts: list[int], batch: int, log=print) -> list[MemoryPoint]:
    """Fill one server up to each of ``counts`` sessions, ``batch`` calls at a time with first media."""
    points: list[MemoryPoint] = []
    with RelayProcess() as relay:
        api = Api(relay.http_url, relay.data_dir)
        sockets = []
        try:
            baseline = settled_rss(relay)
            have = 0
            for target in sorted(counts):
                while have + 2 <= target:
                    count = min(batch, (target - have) // 2)
                    calls = bot_browser_calls(relay, api, count, first_index=have // 2)
                    sockets += [sock for bot, browser in calls for sock in (bot.sock, browser.sock)]
                    send_first_media(calls, relay.media_addr)
                    have += 2 * count
                rss = settled_rss(relay) if have else baseline
                point = MemoryPoint(variant="calls+media", sessions=have, rss_bytes=rss, baseline_bytes=baseline)
                points.append(point)
                log(format_point(point))
        finally:
            for sock in sockets:
                sock.close()
            api.close()
    return points


def main(argv: list[str] | None = None) -> None:
    sys.exit(run_isolated(lambda: _main(argv)))


def _main(argv: list[str] | None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", default="0,100,1000", help="comma-separated session counts (even numbers)")
    parser.add_argument("--batch", type=int, default=10, help="calls set up between two rounds of first packets")
    args = parser.parse_args(argv)
    pin_to_core(GENERATOR_CORE)
    print(machine_description())
    print(f"resident memory (VmRSS) of the relay process; idle calls after their first packets, {args.batch} calls per batch")
    print(HEADER, flush=True)
    measure([int(value) for value in args.sessions.split(",")], args.batch, log=lambda line: print(line, flush=True))


if __name__ == "__main__":
    main()
