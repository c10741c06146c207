"""WebSocket budgets against the real server: message rate, lobby and per-address caps,
the message size cap, pcm16 in linear time, and graceful shutdown."""

from __future__ import annotations

import json

import trio
from trio_websocket import open_websocket_url

from botcall.config import RateLimit
from botcall.server import run_server
from tests.kit.server import FakeClock, LiveServer, make_config, running_server
from tests.signaling.test_human_signaling import closed_with, receive, room_with_invite, signal_url


async def bot_socket_url(srv: LiveServer, room_id: str, **media) -> str:
    joined = await srv.join(srv.token(), room_id, media=media or None)
    assert joined.status == 200, joined.body
    return joined.json()["websocket_url"]


async def next_of_type(ws, kind: str) -> dict:
    while True:
        event = await receive(ws)
        if event["type"] == kind:
            return event


async def test_control_flood_is_refused_then_closed(tmp_path):
    async with running_server(tmp_path, ws_message_limit=RateLimit(rate=1.0, burst=5)) as srv:
        room_id, _ = await room_with_invite(srv)
        async with open_websocket_url(await bot_socket_url(srv, room_id)) as ws:
            assert (await receive(ws))["type"] == "welcome"
            for k in range(5):
                await ws.send_message(json.dumps({"type": "ping", "nonce": str(k)}))
            for k in range(5):
                # Numbered after the welcome (docs/protocol.md "Resuming"): seq 1, 2, ...
                assert (await receive(ws)) == {"type": "pong", "nonce": str(k), "seq": k + 1}
            # Beyond the burst: each message is refused with rate_limited...
            for _ in range(3):
                await ws.send_message(json.dumps({"type": "control", "action": "mute", "value": True}))
            for _ in range(3):
                event = await receive(ws)
                assert (event["type"], event["code"]) == ("error", "rate_limited")
            # ...and a client that keeps going after 200 refusals is closed with
            # 1008. (210 small pings fit in the socket buffers, so the sender never
            # waits on a server that has stopped reading; the events are drained
            # concurrently because trio-websocket stops reading while its own
            # queue is full.)
            codes = []
            async with trio.open_nursery() as nursery:

                async def drain() -> None:
                    codes.append(await closed_with(ws))

                nursery.start_soon(drain)
                for _ in range(210):
                    await ws.send_message(json.dumps({"type": "ping"}))
            assert codes == [1008]


async def test_mute_toggles_fan_out_only_changes(tmp_path):
    async with running_server(tmp_path) as srv:
        room_id, _ = await room_with_invite(srv)
        async with open_websocket_url(await bot_socket_url(srv, room_id)) as muter, open_websocket_url(
            await bot_socket_url(srv, room_id)
        ) as listener:
            assert (await receive(muter))["type"] == "welcome"
            await next_of_type(listener, "welcome")
            for _ in range(10):
                await muter.send_message(json.dumps({"type": "control", "action": "mute", "value": True}))
            await muter.send_message(json.dumps({"type": "ping", "nonce": "done"}))
            assert (await next_of_type(muter, "pong"))["nonce"] == "done"
            await muter.send_message(json.dumps({"type": "chat", "text": "after"}))
            events = []
            while not events or events[-1]["type"] != "chat":
                events.append(await receive(listener))
            assert [e["type"] for e in events if e["type"] == "muted"] == ["muted"]


async def test_the_lobby_of_a_room_is_capped(tmp_path):
    async with running_server(tmp_path, max_lobby_sockets_per_room=2) as srv:
        room_id, secret = await room_with_invite(srv)
        hello = json.dumps({"type": "hello", "invite": secret})
        async with open_websocket_url(signal_url(srv, room_id)) as first, open_websocket_url(signal_url(srv, room_id)) as second:
            for ws in (first, second):
                await ws.send_message(hello)
                assert (await receive(ws))["type"] == "lobby"
            async with open_websocket_url(signal_url(srv, room_id)) as third:
                await third.send_message(hello)
                assert (await receive(third))["code"] == "lobby_full"
                assert await closed_with(third) == 1013
            # Joining leaves the lobby: a place frees up.
            await first.send_message(json.dumps({"type": "join", "display_name": "Ada"}))
            assert (await next_of_type(first, "joined"))["type"] == "joined"
            async with open_websocket_url(signal_url(srv, room_id)) as fourth:
                await fourth.send_message(hello)
                assert (await receive(fourth))["type"] == "lobby"


async def test_websockets_per_address_are_capped(tmp_path):
    async with running_server(tmp_path, max_websockets_per_ip=2) as srv:
        room_id, secret = await room_with_invite(srv)
        hello = json.dumps({"type": "hello", "invite": secret})
        async with open_websocket_url(signal_url(srv, room_id)) as a, open_websocket_url(signal_url(srv, room_id)) as b:
            for ws in (a, b):
                await ws.send_message(hello)
                assert (await receive(ws))["type"] == "lobby"
            async with open_websocket_url(signal_url(srv, room_id)) as c:
                await c.send_message(hello)
                assert (await receive(c))["code"] == "too_many_connections"
                assert await closed_with(c) == 1013


async def test_a_message_over_the_cap_closes_with_1009(tmp_path):
    async with running_server(tmp_path, ws_max_message_bytes=4096) as srv:
        room_id, _ = await room_with_invite(srv)
        async with open_websocket_url(await bot_socket_url(srv, room_id, transport="websocket", encoding="pcm16", sample_rate=16000)) as ws:
            assert (await receive(ws))["type"] == "welcome"
            await ws.send_message(b"\0" * 4096)  # at the cap: fine
            await ws.send_message(b"\0" * 4097)
            assert await closed_with(ws) == 1009


async def test_pcm16_is_cut_in_frames_across_odd_chunks_and_the_backlog_is_bounded(tmp_path):
    async with running_server(tmp_path) as srv:
        room_id, _ = await room_with_invite(srv)
        url = await bot_socket_url(srv, room_id, transport="websocket", encoding="pcm16", sample_rate=16000)
        session_id = url.rsplit("/", 1)[1]
        async with open_websocket_url(url) as ws:
            assert (await receive(ws))["type"] == "welcome"
            peer = srv.state.media.relay.peer(session_id)
            # 1 s at 16 kHz in chunks of odd sizes (whole samples): exactly 50 frames.
            pcm = b"\x01\x00" * 16000
            sizes = [2, 998, 3000, 642, 10_000, 8000, 9358]
            assert sum(sizes) == len(pcm)
            offset = 0
            for size in sizes:
                await ws.send_message(pcm[offset : offset + size])
                offset += size
            await ws.send_message(json.dumps({"type": "ping", "nonce": "sent"}))
            await next_of_type(ws, "pong")
            with trio.fail_after(10):
                while peer.rx_packets + peer.drops["rate_limited"] < 50:
                    await trio.sleep(0.01)
            assert peer.rx_packets + peer.drops["rate_limited"] == 50
            # More than 2 s waiting to be encoded is refused whole, with an error the bot sees.
            await ws.send_message(b"\0\0" * 16000 * 3)
            event = await next_of_type(ws, "error")
            assert event["code"] == "audio_backlog_full"


async def test_shutdown_tells_everyone_server_shutdown_and_closes_1001(tmp_path):
    shutdown = trio.Event()
    config = make_config(tmp_path, shutdown_grace_s=5.0)
    ended = trio.Event()

    async def serve(task_status):
        await run_server(config, clock=FakeClock(), shutdown=shutdown, task_status=task_status)
        ended.set()

    async with trio.open_nursery() as nursery:
        info = await nursery.start(serve)
        srv = LiveServer(info=info, clock=FakeClock(), config=config)
        room_id, secret = await room_with_invite(srv)
        async with open_websocket_url(await bot_socket_url(srv, room_id)) as bot, open_websocket_url(signal_url(srv, room_id)) as lobby:
            assert (await receive(bot))["type"] == "welcome"
            await lobby.send_message(json.dumps({"type": "hello", "invite": secret}))
            assert (await receive(lobby))["type"] == "lobby"
            shutdown.set()
            for ws in (bot, lobby):
                event = await next_of_type(ws, "room_closed")
                assert event["reason"] == "server_shutdown"
                assert await closed_with(ws) == 1001
        with trio.fail_after(10):
            await ended.wait()
        # Nothing accepts any more.
        try:
            stream = await trio.open_tcp_stream("127.0.0.1", info.http_port)
        except OSError:
            pass
        else:
            await stream.aclose()
            raise AssertionError("the server still accepts connections after shutting down")
