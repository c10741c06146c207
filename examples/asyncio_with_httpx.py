"""A plain asyncio bot that uses another asyncio library while it talks.

Run it::

    python examples/asyncio_with_httpx.py --server http://127.0.0.1:8080 --room ROOM --token TOKEN

or with ``BOTCALL_SERVER``, ``BOTCALL_ROOM`` and ``BOTCALL_TOKEN`` in the
environment.

The bot speaks ``hello.wav`` (beside this file, or ``--wav``) and, in the same
event loop at the same time, asks the server's ``/healthz`` how many sessions
it has, with ``httpx.AsyncClient`` (any asyncio library would do: the OpenAI
client, aiohttp, a database driver). The SDK shares the same httpx client for
its own HTTP calls. Nothing here is special to BotCall: ``asyncio.run``,
``asyncio.TaskGroup``, ``await``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
from pathlib import Path

import httpx

import botcall_sdk

POLL_INTERVAL = 0.25


async def main(server: str, room: str, token: str, wav: Path) -> None:
    async with httpx.AsyncClient(base_url=server, timeout=5.0) as http:
        async with botcall_sdk.connect(server, room, token, http_client=http) as call:
            print(f"joined room {room} as {call.participant_id}", flush=True)
            speech = await call.say(wav)

            async def watch_server() -> None:
                while not speech.finished:
                    health = (await http.get("/healthz")).raise_for_status().json()
                    print(f"healthz while speaking: {health['status']}, {health['sessions']} sessions", flush=True)
                    await asyncio.sleep(POLL_INTERVAL)

            async with asyncio.TaskGroup() as group:
                group.create_task(watch_server())
                interruption = await speech.done()
            print(f"speech finished: {'played to the end' if interruption is None else interruption}, {speech.sent_ms} ms", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", default=os.environ.get("BOTCALL_SERVER", "http://127.0.0.1:8080"))
    parser.add_argument("--room", default=os.environ.get("BOTCALL_ROOM"))
    parser.add_argument("--token", default=os.environ.get("BOTCALL_TOKEN"))
    parser.add_argument("--wav", type=Path, default=Path(__file__).with_name("hello.wav"))
    args = parser.parse_args()
    if not args.room or not args.token:
        parser.error("--room and --token (or BOTCALL_ROOM and BOTCALL_TOKEN) are needed")
    asyncio.run(main(args.server, args.room, args.token, args.wav))
