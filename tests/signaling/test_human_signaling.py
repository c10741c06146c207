"""The browser's signaling WebSocket against the real server (no browser needed)."""

import json

import trio
from trio_websocket import ConnectionClosed, open_websocket_url

from botcall.config import RateLimit
from botcall.webrtc.dtls.certificate import DtlsCertificate
from tests.kit.browser import browser_offer
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
    from botcall_sdk import ParticipantJoined, ParticipantLeft, connect

    async with running_server(tmp_path) as srv:
        room_id, secret = await room_with_invite(srv)
        async with connect(srv.url, room_id, srv.token(agent="bot#1")) as bot:
            events = bot.events()
            async with open_websocket_url(signal_url(srv, room_id)) as ws:
                _, joined = await hello_and_join(ws, secret)
                assert isinstance(await receive_event(events), ParticipantJoined)
                await ws.send_message(json.dumps({"type": "control", "action": "leave"}))
                assert await closed_with(ws) == 1000
            left = await receive_event(events)
            assert left == ParticipantLeft(joined["participant_id"], "left")


async def receive_event(events):
    with trio.fail_after(5):
        return await events.__anext__()


async def round_trip(ws, nonce):
    """Send a ping and wait for its pong: everything sent before it has been handled.

    Returns:
        The events that came before the pong.
    """
    await ws.send_message(json.dumps({"type": "ping", "nonce": nonce}))
    before = []
    while (event := await receive(ws)) != {"type": "pong", "nonce": nonce}:
        before.append(event)
    return before


async def offer_media(ws):
    """Offer a browser's audio (the kit's captured Chrome offer) and take the answer."""
    await ws.send_message(json.dumps({"type": "offer", "sdp": browser_offer(DtlsCertificate.generate())}))
    answer = await receive(ws)
    assert answer["type"] == "answer" and "a=ice-lite" in answer["sdp"]


def playout_delay(ms):
    return json.dumps({"type": "playout_delay", "ms": ms})


async def test_a_browsers_playout_delay_sets_its_relay_peers(tmp_path):
    async with running_server(tmp_path) as srv:
        room_id, secret = await room_with_invite(srv)
        relay = srv.state.started_media().relay
        async with open_websocket_url(signal_url(srv, room_id)) as ws:
            await ws.send_message(json.dumps({"type": "hello", "invite": secret}))
            assert (await receive(ws))["type"] == "lobby"
            await ws.send_message(playout_delay(40))
            [refused] = await round_trip(ws, "lobby")
            assert (refused["type"], refused["code"]) == ("error", "not_joined")

            await ws.send_message(json.dumps({"type": "join", "display_name": "Ada"}))
            joined = await receive(ws)
            session_id = joined["resume"]
            # Joined, no offer yet: no relay peer, and the report is dropped quietly.
            await ws.send_message(playout_delay(40))
            assert await round_trip(ws, "no offer") == []
            assert relay.peer(session_id) is None

            await offer_media(ws)
            assert relay.peer(session_id).playout_delay_ms == 0
            await ws.send_message(playout_delay(87.4))
            assert await round_trip(ws, "reported") == []
            assert relay.peer(session_id).playout_delay_ms == 87
            await ws.send_message(playout_delay(0))
            assert await round_trip(ws, "zero") == []
            assert relay.peer(session_id).playout_delay_ms == 0

            # Out of range, or not a number: refused, the last value stays, the socket stays.
            await ws.send_message(playout_delay(55))
            for bad in (10_001, -1, "20", True, None):
                await ws.send_message(playout_delay(bad))
            refused = await round_trip(ws, "bad")
            assert [(e["type"], e["code"]) for e in refused] == [("error", "bad_message")] * 5
            assert relay.peer(session_id).playout_delay_ms == 55


async def test_a_browsers_playout_delay_counts_against_the_message_limit(tmp_path):
    # join, offer and two reports take the burst of 4; the refill is negligible.
    async with running_server(tmp_path, ws_message_limit=RateLimit(rate=0.001, burst=4)) as srv:
        room_id, secret = await room_with_invite(srv)
        async with open_websocket_url(signal_url(srv, room_id)) as ws:
            _, joined = await hello_and_join(ws, secret)
            await offer_media(ws)
            for ms in (10, 20, 30):
                await ws.send_message(playout_delay(ms))
            event = await receive(ws)
            assert (event["type"], event["code"]) == ("error", "rate_limited")
            assert srv.state.started_media().relay.peer(joined["resume"]).playout_delay_ms == 20


async def test_the_lobby_says_how_many_downstream_tracks_to_offer(tmp_path):
    """Group calls (docs/protocol.md): the page builds its offer from ``receive_tracks``."""
    async with running_server(tmp_path, max_receive_tracks=5) as srv:
        room_id, secret = await room_with_invite(srv)
        async with open_websocket_url(signal_url(srv, room_id)) as ws:
            await ws.send_message(json.dumps({"type": "hello", "invite": secret}))
            lobby = await receive(ws)
    assert lobby["type"] == "lobby" and lobby["receive_tracks"] == 5
