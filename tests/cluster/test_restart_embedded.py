"""The embedded default (no ``--redis``) keeps its rooms across a crash, through the
rooms journal in the data directory (``signaling/room_journal.py``): real
``botcall serve`` processes, single and ``--workers 2``.

As in Redis mode (``test_node_restart.py``), ``kill -9`` is the restart case
(a crash leaves nothing but the file) and SIGTERM is a drain, whose rooms end
with ``server_shutdown`` and never come back. The restarted server binds the
same HTTP port, so invite links printed before the crash name it.
"""

from __future__ import annotations

import os
import re
import time
from urllib.parse import urlsplit

import pytest
import trio

from tests.kit.cluster import Front, restartable
from tests.kit.invite_call import HUMAN_HZ, bot_and_invited_human

pytestmark = pytest.mark.e2e

RESTORED = re.compile(r"rooms journal \S+: (?P<count>\d+) room\(s\) restored from before the restart .*, (?P<expired>\d+) expired meanwhile")
RESTORING = re.compile(r"rooms journal \S+: restoring (?P<count>\d+) room\(s\) from before the restart \((?P<expired>\d+) expired meanwhile\)")
SKIPPED = re.compile(r"rooms journal \S+: (?P<count>\d+) unreadable line\(s\) skipped")


async def until_expired(room: dict) -> None:
    """Wait until ``room``'s own deadline (Unix time, the servers' clock) has passed.

    One sleep for the time left, not a poll: the deadline is wall-clock time,
    which no event announces.
    """
    await trio.sleep(max(0.0, room["expires_at_unix"] + 0.5 - time.time()))


async def status(server: Front, room_id: str, token: str) -> tuple[int, str, str]:
    """``(status, error code, reason)`` of ``GET /v1/rooms/{room_id}``."""
    got = await server.request("GET", f"/v1/rooms/{room_id}", bearer=token)
    error = got.json().get("error", {}) if got.status != 200 else {}
    return got.status, error.get("code", ""), error.get("reason", "")


@pytest.mark.browser
async def test_a_crashed_server_keeps_its_rooms_and_the_old_invite_link_works(tmp_path):
    async with restartable(tmp_path) as servers:
        server = await servers.start()
        creator = server.token(agent="creator#1")
        kept = (await server.create_room(creator, max_human_participants=2, expires_in=600)).json()
        short = (await server.create_room(creator, expires_in=2)).json()  # expires while the server is down
        await servers.crash(server)
        journal = servers.data_dir / "rooms.jsonl"
        assert oct(os.stat(journal).st_mode & 0o777) == "0o600"
        secret = urlsplit(kept["invite_url"]).fragment.removeprefix("invite=")
        assert secret and secret.encode() not in journal.read_bytes()  # only its SHA-256
        await until_expired(short)

        server = await servers.start()
        restored = await server.wait_for(RESTORED)
        assert (restored["count"], restored["expired"]) == ("1", "1")
        assert await status(server, short["room_id"], creator) == (410, "room_expired", "")
        got = await server.request("GET", f"/v1/rooms/{kept['room_id']}", bearer=creator)
        assert got.status == 200, got.body
        assert (got.json()["owner"], got.json()["max_human_participants"], got.json()["participants"]) == ("gopi", 2, [])
        assert got.json()["expires_at"] == kept["expires_at"]
        # A bot joins again with a new attestation; a human opens the invite link from before the crash.
        assert urlsplit(kept["invite_url"]).netloc == urlsplit(server.url).netloc
        call = await bot_and_invited_human(server.url, kept["room_id"], kept["invite_url"], server.token(agent="orion#8f3a"), tmp_path)
        assert call.bot_join["media"]["port"] == server.workers[0].media_port
        assert abs(call.bot_heard_hz - HUMAN_HZ) < 5
        assert call.page_errors == []


async def test_a_drained_server_restores_nothing(tmp_path):
    """SIGTERM closes every room with ``server_shutdown`` (participants are told): after
    a restart they answer 410 with that reason, and none is restored."""
    async with restartable(tmp_path) as servers:
        server = await servers.start()
        creator = server.token(agent="creator#1")
        room = (await server.create_room(creator)).json()["room_id"]
        await servers.stop(server)
        server = await servers.start()
        assert await status(server, room, creator) == (410, "room_closed", "")
        assert "server_shutdown" in (await server.request("GET", f"/v1/rooms/{room}", bearer=creator)).json()["error"]["message"]
        joined = await server.join(server.token(agent="late#1"), room, agent_id="late#1")
        assert joined.status == 410
        assert not any(RESTORED.search(line) for line in server.lines)


async def test_a_corrupt_rooms_file_does_not_stop_the_start(tmp_path):
    """Garbage, a foreign line and a line torn by the crash are skipped and counted
    (one warning); the readable rooms are restored."""
    async with restartable(tmp_path) as servers:
        server = await servers.start()
        creator = server.token(agent="creator#1")
        good = (await server.create_room(creator)).json()["room_id"]
        torn = (await server.create_room(creator)).json()["room_id"]
        await servers.crash(server)
        journal = servers.data_dir / "rooms.jsonl"
        first, second = journal.read_bytes().splitlines(keepends=True)
        journal.write_bytes(b"\x00\x01\xfe not ours\n" + first + b'{"open": "nope"}\n' + os.urandom(300).replace(b"\n", b"") + b"\n" + second[:-40])
        server = await servers.start()
        assert (await server.wait_for(SKIPPED))["count"] == "4"
        assert (await server.wait_for(RESTORED))["count"] == "1"
        assert (await server.request("GET", f"/v1/rooms/{good}", bearer=creator)).status == 200
        assert await status(server, torn, creator) == (404, "room_not_found", "")
        assert (await server.join(server.token(agent="again#1"), good, agent_id="again#1")).status == 200


async def test_two_workers_keep_their_rooms_across_a_supervisor_crash(tmp_path):
    """With ``--workers 2`` the supervisor keeps the journal (its workers report rooms
    on stdout): after ``kill -9`` of the supervisor (its workers follow), every open
    room is held again by a worker before the front accepts, a room deleted before
    the crash answers 410 with its reason; a later drain restores nothing."""
    async with restartable(tmp_path, workers=2) as servers:
        server = await servers.start()
        creator = server.token(agent="creator#1")
        rooms = [(await server.create_room(creator, expires_in=600)).json()["room_id"] for _ in range(3)]
        ports = set()
        for room in rooms:
            joined = await server.join(server.token(agent=f"before-{room}#1"), room, agent_id=f"before-{room}#1")
            assert joined.status == 200, joined.body
            ports.add(joined.json()["media"]["port"])
        assert len(ports) == 2  # placement used both workers
        deleted = rooms.pop()
        assert (await server.request("DELETE", f"/v1/rooms/{deleted}", bearer=creator)).status in (200, 204)

        await servers.crash(server)
        server = await servers.start()
        restoring = await server.wait_for(RESTORING)
        assert restoring["count"] == "2"
        new_ports = {worker.media_port for worker in server.workers.values()}
        for room in rooms:
            joined = await server.join(server.token(agent=f"after-{room}#1"), room, agent_id=f"after-{room}#1")
            assert joined.status == 200, joined.body
            assert joined.json()["media"]["port"] in new_ports
        assert await status(server, deleted, creator) == (410, "room_closed", "deleted")

        await servers.stop(server)
        server = await servers.start()
        for room in rooms:
            assert await status(server, room, creator) == (410, "room_closed", "server_shutdown")
        assert not any(RESTORING.search(line) for line in server.lines)
