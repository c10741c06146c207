"""The browser's signaling WebSocket against the real server (no browser needed)."""

import json

import pytest
import trio
from trio_websocket import ConnectionClosed, open_websocket_url

from tests.kit.server import running_server


async def room_with_invite(srv, **body):
    created = (await srv.create_room(srv.token(agent="creator#1"), **body)).json()
    return created["room_id"], created["invite_url"].split("#invite=")[1]


def signal_url(srv, room_id):
    return srv.url.replace("http://", "ws://") + f"/v1/signal/{room_id}"


async def receive(ws):
    with trio.fail_after(5):
        return json.loads(await ws.get_message())


async def closed_with(ws):
    """The close code after draining whatever the server sent first."""
    with trio.fail_after(5):
        try:
            while True:
                await ws.get_message()
        except ConnectionClosed as exc:
            return exc.reason.code


async def hello_and_join(ws, secret, name="Ada", resume=None):
    hello = {"type": "hello", "invite": secret}
    if resume:
        hello["resume"] = resume
    await ws.send_message(json.dumps(hello))
    lobby = await receive(ws)
    assert lobby["type"] == "lobby"
    if lobby["resumed"]:
        return lobby, await receive(ws)
    await ws.send_message(json.dumps({"type": "join", "display_name": name}))
    return lobby, await receive(ws)


async def test_wrong_invite_gets_an_error_and_4401(tmp_path):
    async with running_server(tmp_path) as srv:
        room_id, _ = await room_with_invite(srv)
        async with open_websocket_url(signal_url(srv, room_id)) as ws:
            await ws.send_message(json.dumps({"type": "hello", "invite": "A" * 24}))
            error = await receive(ws)
            assert error == {"type": "error", "code": "invite_invalid", "message": error["message"]}
            assert await closed_with(ws) == 4401


async def test_unknown_room_and_missing_hello(tmp_path):
    async with running_server(tmp_path) as srv:
        async with open_websocket_url(signal_url(srv, "nope-nope-nope")) as ws:
            await ws.send_message(json.dumps({"type": "hello", "invite": "x" * 24}))
            assert (await receive(ws))["code"] == "room_not_found"
            assert await closed_with(ws) == 4404
        room_id, _ = await room_with_invite(srv)
        async with open_websocket_url(signal_url(srv, room_id)) as ws:
            await ws.send_message(json.dumps({"type": "join", "display_name": "skipped hello"}))
            assert (await receive(ws))["code"] == "bad_message"
            assert await closed_with(ws) == 4400


async def test_join_shows_the_bots_verified_identity_and_not_yourself(tmp_path):
    async with running_server(tmp_path) as srv:
        room_id, secret = await room_with_invite(srv)
        joined_bot = await srv.join(srv.token(agent="orion#8f3a"), room_id, agent_id="orion#8f3a")
        assert joined_bot.status == 200
        async with open_websocket_url(signal_url(srv, room_id)) as ws:
            lobby, joined = await hello_and_join(ws, secret)
            [bot] = lobby["participants"]
            assert (bot["kind"], bot["agent_id"], bot["controller"], bot["issuer"]) == ("bot", "orion#8f3a", "gopi", "botcall-dev")
            assert "call:voice" in bot["scopes"]
            assert joined["type"] == "joined" and joined["you"]["display_name"] == "Ada"
            assert joined["you"]["capabilities"]["text_chat"] is True
            await ws.send_message(json.dumps({"type": "ping"}))
            # The next event is the pong: no participant_joined about ourselves came first.
            assert (await receive(ws))["type"] == "pong"


async def test_a_full_room_says_so_and_closes_4409(tmp_path):
    async with running_server(tmp_path) as srv:
        room_id, secret = await room_with_invite(srv, max_human_participants=1)
        async with open_websocket_url(signal_url(srv, room_id)) as first, open_websocket_url(signal_url(srv, room_id)) as second:
            await hello_and_join(first, secret, "First")
            _, refused = await hello_and_join(second, secret, "Second")
            assert refused["code"] == "room_full"
            assert await closed_with(second) == 4409


async def test_a_dropped_browser_resumes_its_place(tmp_path):
    async with running_server(tmp_path) as srv:
        room_id, secret = await room_with_invite(srv, max_human_participants=1)
        async with open_websocket_url(signal_url(srv, room_id)) as ws:
            _, joined = await hello_and_join(ws, secret)
        # The socket is gone; the room holds the place. A stranger cannot take it...
        async with open_websocket_url(signal_url(srv, room_id)) as ws:
            _, refused = await hello_and_join(ws, secret, "Stranger")
            assert refused["code"] == "room_full"
        # ...and a wrong token does not resume anything.
        async with open_websocket_url(signal_url(srv, room_id)) as ws:
            lobby, refused = await hello_and_join(ws, secret, resume="sess-forged")
            assert lobby["resumed"] is False and refused["code"] == "room_full"
        # The owner of the place comes back with its token: same participant.
        async with open_websocket_url(signal_url(srv, room_id)) as ws:
            lobby, again = await hello_and_join(ws, secret, resume=joined["resume"])
            assert lobby["resumed"] is True
            assert again["type"] == "joined" and again["participant_id"] == joined["participant_id"]
            assert again["media_connected"] is False


async def test_hang_up_removes_the_participant_for_the_bot(tmp_path):
    from botcall.client import connect

    async with running_server(tmp_path) as srv:
        room_id, secret = await room_with_invite(srv)
        async with connect(srv.url, room_id, srv.token(agent="bot#1")) as bot:
            events = bot.events()
            async with open_websocket_url(signal_url(srv, room_id)) as ws:
                _, joined = await hello_and_join(ws, secret)
                assert (await receive_event(events))["type"] == "participant_joined"
                await ws.send_message(json.dumps({"type": "control", "action": "leave"}))
                assert await closed_with(ws) == 1000
            left = await receive_event(events)
            assert left == {"type": "participant_left", "participant_id": joined["participant_id"], "reason": "left"}


async def receive_event(events):
    with trio.fail_after(5):
        return await events.__anext__()
