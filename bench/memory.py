"""Resident memory of the relay per idle session.

Usage (from the repository root)::

    python -m bench.memory                       # 0, 100, 1000 sessions, every variant
    python -m bench.memory --sessions 0,100,1000,2000 --variants bots,bots+ws,calls

For each variant a fresh server (``bench.harness.server.RelayProcess``, the real
``run_server``) is filled step by step, and its resident memory (VmRSS from
``/proc/<pid>/status``) is read after each step once it has settled:

* ``bots``: UDP bots joined over HTTP (two per room) and latched with STUN
  (their request, the relay's check answered: :func:`bench.harness.server.latch`),
  not sending. Their control WebSockets are not opened (the bench server
  allows that for a day), so this is the session plus its media state.
* ``bots+ws``: the same, each bot also holding its control WebSocket open, as
  a real idle bot does (Hypercorn, wsproto and the channel's tasks included).
* ``calls``: one UDP bot and one simulated browser per room; the browser
  signalled over its WebSocket (closed afterwards), passed its ICE check and
  finished the DTLS handshake, so its SRTP contexts exist. Reported per
  session (half a call).

Bytes per session = (RSS with n sessions - RSS with none) / n. RSS includes
everything the process keeps: Python's allocator does not hand freed memory
back, so transient garbage of the joins counts too; this is what a host sees.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from bench.harness.machine import GENERATOR_CORE, machine_description, run_isolated
from bench.harness.server import Api, bot_browser_calls, bot_pairs, RelayProcess
from bench.harness.machine import pin_to_core

VARIANTS = ("bots", "bots+ws", "calls")
SETTLE_S = 1.0
WS_CONNECT_TIMEOUT = 10.0


@dataclass
class MemoryPoint:
    """Resident memory of the relay with ``sessions`` idle sessions."""

    variant: str
    sessions: int
    rss_bytes: int
    baseline_bytes: int

    @property
    def per_session_bytes(self) -> float:
        return (self.rss_bytes - self.baseline_bytes) / self.sessions if self.sessions else float("nan")


def settled_rss(relay: RelayProcess, settle: float = SETTLE_S) -> int:
    """VmRSS after ``settle`` seconds without requests (timers and sweeps keep running)."""
    time.sleep(settle)
    return relay.rss_bytes()


class _WebSockets:
    """Control WebSockets held open by a Trio loop in a background thread."""

    def __init__(self) -> None:
        import threading

        import trio

        self._trio = trio
        self._token = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=trio.run, args=(self._main,), daemon=True)
        self._thread.start()
        self._ready.wait(10)
        self.open = 0

    async def _main(self) -> None:
        trio = self._trio
        self._token = trio.lowlevel.current_trio_token()
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            self._ready.set()
            await trio.sleep_forever()

    def connect(self, urls: list[str]) -> None:
        """Open one WebSocket per URL and wait for each welcome event."""
        trio = self._trio
        from trio_websocket import open_websocket_url

        async def hold(url: str, task_status=trio.TASK_STATUS_IGNORED) -> None:
            async with open_websocket_url(url, connect_timeout=WS_CONNECT_TIMEOUT) as ws:
                with trio.fail_after(WS_CONNECT_TIMEOUT):
                    welcome = json.loads(await ws.get_message())
                if welcome.get("type") != "welcome":
                    raise RuntimeError(f"unexpected first event {welcome}")
                task_status.started()
                while True:
                    await ws.get_message()  # events about the room; read and dropped

        async def open_all() -> None:
            limit = trio.CapacityLimiter(32)

            async def one(url: str) -> None:
                async with limit:
                    await self._nursery.start(hold, url)

            async with trio.open_nursery() as nursery:
                for url in urls:
                    nursery.start_soon(one, url)

        trio.from_thread.run(open_all, trio_token=self._token)
        self.open += len(urls)

    def close(self) -> None:
        self._trio.from_thread.run_sync(self._nursery.cancel_scope.cancel, trio_token=self._token)
        self._thread.join(10)


def measure_variant(variant: str, counts: list[int], log=print, *, top: int = 0) -> list[MemoryPoint]:
    """Fill one fresh server up to each of ``counts`` sessions and read its RSS.

    Args:
        top: when positive, trace the server's allocations and print the ``top``
            allocation sites that grew between none and the most sessions (the
            RSS figures of such a run include tracemalloc's own overhead).
    """
    points: list[MemoryPoint] = []
    with RelayProcess(trace_allocations=top > 0) as relay:
        api = Api(relay.http_url, relay.data_dir)
        sockets = []
        websockets = _WebSockets() if variant == "bots+ws" else None
        try:
            baseline = settled_rss(relay)
            before = relay.snapshot() if top else None
            have = 0
            for target in sorted(counts):
                if target > have:
                    if variant == "calls":
                        calls = bot_browser_calls(relay, api, (target - have) // 2, first_index=have // 2)
                        sockets += [sock for bot, browser in calls for sock in (bot.sock, browser.sock)]
                    else:
                        pairs = bot_pairs(relay, api, (target - have) // 2, first_index=have // 2)
                        sockets += [bot.sock for pair in pairs for bot in pair]
                        if websockets is not None:
                            websockets.connect([bot.joined["websocket_url"] for pair in pairs for bot in pair])
                    have = target - target % 2
                rss = settled_rss(relay) if have else baseline
                point = MemoryPoint(variant=variant, sessions=have, rss_bytes=rss, baseline_bytes=baseline)
                points.append(point)
                log(format_point(point))
            if top and have:
                for line in top_growth(before, relay.snapshot(), have, top):
                    log(line)
        finally:
            if websockets is not None:
                websockets.close()
            for sock in sockets:
                sock.close()
            api.close()
    return points


def top_growth(before, after, sessions: int, top: int) -> list[str]:
    """The files and lines whose traced allocations grew most, in bytes per session."""
    by_file = after.compare_to(before, "filename")
    total = sum(stat.size_diff for stat in by_file)
    lines = [f"# traced Python allocations ({sessions} sessions): {total / sessions:,.0f} bytes per session in all"]
    lines.append(f"# top {top} files, bytes per session:")
    for stat in by_file[:top]:
        lines.append(f"#   {stat.size_diff / sessions:>9,.0f}  {_short(stat.traceback[0].filename)}")
    lines.append(f"# top {top} lines, bytes per session:")
    for stat in after.compare_to(before, "lineno")[:top]:
        frame = stat.traceback[0]
        lines.append(f"#   {stat.size_diff / sessions:>9,.0f}  {_short(frame.filename)}:{frame.lineno}")
    return lines


def _short(filename: str) -> str:
    """A path from its package on (``trio/_core/_run.py``), not from the file system root."""
    parts = Path(filename).parts
    for anchor in ("site-packages", "botcall", "lib"):
        if anchor in parts:
            index = len(parts) - 1 - parts[::-1].index(anchor)
            return "/".join(parts[index + (anchor != "botcall"):])
    return filename


HEADER = f"{'variant':<10}{'sessions':>9}{'RSS MiB':>10}{'+MiB':>8}{'bytes/session':>15}"


def format_point(point: MemoryPoint) -> str:
    per_session = "-" if not point.sessions else f"{point.per_session_bytes:,.0f}"
    return (
        f"{point.variant:<10}{point.sessions:>9}{point.rss_bytes / 2**20:>10.1f}"
        f"{(point.rss_bytes - point.baseline_bytes) / 2**20:>8.1f}{per_session:>15}"
    )


def main(argv: list[str] | None = None) -> None:
    sys.exit(run_isolated(lambda: _main(argv)))


def _main(argv: list[str] | None) -> None:
    parser = argparse.ArgumentParser(description="Resident memory of the relay per idle session.")
    parser.add_argument("--sessions", default="0,100,1000", help="comma-separated session counts (even numbers)")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of {', '.join(VARIANTS)}")
    parser.add_argument("--top", type=int, default=0, help="trace allocations and print the N sites that grew most")
    args = parser.parse_args(argv)
    counts = [int(value) for value in args.sessions.split(",")]
    variants = args.variants.split(",")
    for variant in variants:
        if variant not in VARIANTS:
            parser.error(f"unknown variant {variant!r}")
    pin_to_core(GENERATOR_CORE)
    print(machine_description())
    print("resident memory (VmRSS) of the relay process; sessions idle (joined, latched, not sending)")
    print(HEADER, flush=True)
    for variant in variants:
        measure_variant(variant, counts, log=lambda line: print(line, flush=True), top=args.top)


if __name__ == "__main__":
    main()
