"""A bot's events during a WebSocket drop, replayed on resume (docs/protocol.md "Resuming"),
against the real server: numbering, order, the overflow (events_lost), a bad last_seq."""

from __future__ import annotations

import json

from trio_websocket import open_websocket_url

from tests.kit.server import LiveServer, running_server
from tests.signaling.test_human_signaling import closed_with, receive, room_with_invite
from tests.signaling.test_ws_limits import bot_socket_url


async def pinged(ws, nonce: str) -> list[dict]:
    """Send a ping, return what came before its pong (everything sent before it was handled)."""
    await ws.send_message(json.dumps({"type": "ping", "nonce": nonce}))
    before = []
    while (event := await receive(ws))["type"] != "pong" or event["nonce"] != nonce:
        before.append(event)
    return before


async def another_bot_visits(srv: LiveServer, room_id: str, chats: list[str]) -> None:
    """A second bot joins, chats and leaves (all handled before this returns)."""
    async with open_websocket_url(await bot_socket_url(srv, room_id)) as visitor:
        assert (await receive(visitor))["type"] == "welcome"
        for text in chats:
            await visitor.send_message(json.dumps({"type": "chat", "text": text}))
        await pinged(visitor, "done")
        await visitor.send_message(json.dumps({"type": "control", "action": "leave"}))
        assert await closed_with(visitor) == 1000


def summary(events: list[dict]) -> list[tuple]:
    return [(e["type"], e.get("text"), e.get("seq")) for e in events]


async def test_events_while_the_socket_was_down_come_back_in_order_once(tmp_path):
    async with running_server(tmp_path) as srv:
        room_id, _ = await room_with_invite(srv)
        url = await bot_socket_url(srv, room_id)
        async with open_websocket_url(url) as ws:
            welcome = await receive(ws)
            assert welcome["last_seq"] == 0 and "seq" not in welcome
            assert await pinged(ws, "first") == []
        # The bot's socket is closed; the call goes on without it.
        await another_bot_visits(srv, room_id, ["one", "two"])
        async with open_websocket_url(url + "?last_seq=1") as ws:
            welcome = await receive(ws)
            assert welcome["type"] == "welcome" and welcome["last_seq"] == 5
            replayed = [await receive(ws) for _ in range(4)]
            assert summary(replayed) == [
                ("participant_joined", None, 2), ("chat", "one", 3), ("chat", "two", 4), ("participant_left", None, 5),
            ]
            # Then live events, numbered on.
            await ws.send_message(json.dumps({"type": "ping", "nonce": "live"}))
            assert (await receive(ws)) == {"type": "pong", "nonce": "live", "seq": 6}
        # Resuming from an older point gets the same events again (the client drops duplicates).
        async with open_websocket_url(url + "?audio=binary&last_seq=4") as ws:
            assert (await receive(ws))["last_seq"] == 6
            assert summary([await receive(ws), await receive(ws)]) == [("participant_left", None, 5), ("pong", None, 6)]
        # Without last_seq: nothing replayed (a first connection, an older client).
        async with open_websocket_url(url) as ws:
            assert (await receive(ws))["last_seq"] == 6
            assert await pinged(ws, "plain") == []


async def test_a_drop_longer_than_the_log_says_what_was_lost(tmp_path):
    async with running_server(tmp_path, ws_replay_max_events=3) as srv:
        room_id, _ = await room_with_invite(srv)
        url = await bot_socket_url(srv, room_id)
        async with open_websocket_url(url) as ws:
            assert (await receive(ws))["last_seq"] == 0
        # seq 1 joined, 2-6 chats, 7 left: only 5, 6, 7 are held.
        await another_bot_visits(srv, room_id, ["a", "b", "c", "d", "e"])
        async with open_websocket_url(url + "?last_seq=0") as ws:
            assert (await receive(ws))["last_seq"] == 7
            lost = await receive(ws)
            assert lost == {"type": "events_lost", "first_seq": 1, "last_seq": 4, "count": 4}
            replayed = [await receive(ws) for _ in range(3)]
            assert summary(replayed) == [("chat", "d", 5), ("chat", "e", 6), ("participant_left", None, 7)]
            assert await pinged(ws, "live") == []
        metrics = (await srv.get("/metrics")).body.decode()
        assert "botcall_ws_events_lost_total 4.0" in metrics


async def test_a_bad_last_seq_is_refused_and_the_session_stays(tmp_path):
    async with running_server(tmp_path) as srv:
        room_id, _ = await room_with_invite(srv)
        url = await bot_socket_url(srv, room_id)
        for bad in ("1", "-1", "x", "9" * 30):
            async with open_websocket_url(f"{url}?last_seq={bad}") as ws:
                error = await receive(ws)
                assert (error["type"], error["code"]) == ("error", "bad_last_seq")
                assert await closed_with(ws) == 4400
        async with open_websocket_url(url + "?last_seq=0") as ws:
            assert (await receive(ws))["type"] == "welcome"
