"""Time to talk for a browser: the Join click to the first audible frame of the bot.

    python -m bench.browser_time_to_talk [--joins 20]

Starts the real server in-process, puts a bot in a room that talks (440 Hz)
the whole time, then opens the invite link in headless Chromium (Debian's
``/usr/bin/chromium``) ``--joins`` times: click Join, wait until the page's
analyser on the remote track hears the tone (``botcall.marks.audio``), hang up.
Prints each join and the median / p95 of click → connected and click → audio,
read from the page's own ``performance.now()`` marks. Prints; never asserts.
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

import trio

from botcall.demo.signals import tone
from botcall_sdk import connect
from tests.kit.chromium import in_browser, wait_state
from tests.kit.server import running_server


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


async def measure(joins: int) -> list[dict]:
    with tempfile.TemporaryDirectory() as data_dir:
        async with running_server(Path(data_dir)) as srv:
            created = (await srv.create_room(srv.token(agent="creator#1"))).json()
            invite = urlsplit(created["invite_url"])
            url = f"{srv.url}{invite.path}#{invite.fragment}"
            async with connect(srv.url, created["room_id"], srv.token(agent="talker#1")) as bot, trio.open_nursery() as nursery:

                async def talk() -> None:
                    while True:
                        await (await bot.say(tone(440, 10.0))).done()

                nursery.start_soon(talk)

                def drive(context) -> list[dict]:
                    results = []
                    for _ in range(joins):
                        page = context.new_page()  # a fresh page each time, as from the link
                        page.goto(url)
                        wait_state(page, "lobby")
                        page.get_by_role("button", name=re.compile("Join")).click()
                        page.wait_for_function("() => botcall.marks.audio !== undefined", timeout=20_000)
                        results.append(page.evaluate("({...botcall.marks})"))
                        page.get_by_role("button", name="Hang up").click()
                        wait_state(page, "ended")
                        page.close()
                    return results

                marks = await in_browser(drive)
                nursery.cancel_scope.cancel()
    return marks


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--joins", type=int, default=20)
    args = parser.parse_args()
    marks = trio.run(measure, args.joins)
    connected = [m["connected"] - m["click"] for m in marks]
    audio = [m["audio"] - m["click"] for m in marks]
    for i, (c, a) in enumerate(zip(connected, audio), 1):
        print(f"join {i:3d}: connected {c:6.1f} ms, first audio {a:6.1f} ms")
    print(f"\nbrowser time to talk over {len(marks)} joins (Join click -> ...):")
    print(f"  connected   median {statistics.median(connected):6.1f} ms   p95 {percentile(connected, 0.95):6.1f} ms")
    print(f"  first audio median {statistics.median(audio):6.1f} ms   p95 {percentile(audio, 0.95):6.1f} ms   (goal: median < 300 ms)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
