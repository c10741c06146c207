"""``botcall serve --workers 2`` with TLS: the front terminates HTTPS and WSS (a
``trustme`` certificate) and routes to plain-HTTP workers on loopback; bots on
both workers talk over WSS through it, audio checked by content."""

from __future__ import annotations

import h11
import pytest
import trio

from botcall.demo.signals import dominant_frequency, tone
from botcall_sdk import connect
from tests.kit.cluster import serving_workers
from tests.kit.server import http_request
from tests.kit.tls import TestTls

pytestmark = pytest.mark.e2e


async def hear(speaker, listener, freq: int) -> float:
    heard: list[bytes] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: speaker.say(tone(freq, 3.0)))
        with trio.fail_after(20):
            async for frame in listener.audio():
                if frame.speaker == speaker.participant_id and not frame.concealed:
                    heard.append(frame.pcm)
                if len(heard) >= 40:
                    break
        nursery.cancel_scope.cancel()
    return dominant_frequency(b"".join(heard[10:]), 48000)


async def test_https_and_wss_through_a_two_worker_front(tmp_path):
    tls = TestTls.make(tmp_path / "tls")
    data = tmp_path / "data"
    data.mkdir()
    async with serving_workers(data, workers=2, extra=("--tls-cert", str(tls.cert), "--tls-key", str(tls.key))) as front:
        assert front.url.startswith("https://")
        creator = front.token(agent="creator#1")
        rooms = []
        for _ in range(2):
            created = await http_request(front.url + "/v1/rooms/create", "POST", json_body={},
                                         headers={"Authorization": f"Bearer {creator}"}, ssl_context=tls.client)
            assert created.status == 201, created.body
            assert created.json()["invite_url"].startswith(front.url + "/join/")
            rooms.append(created.json()["room_id"])
        workers = await http_request(front.url + "/v1/cluster/workers", ssl_context=tls.client)
        assert [w["running"] for w in workers.json()["workers"]] == [True, True]
        # Placement spread the two creates over the two idle workers: both serve through the front.
        with trio.fail_after(20):
            while sorted(w["rooms"] for w in (await http_request(front.url + "/v1/cluster/workers", ssl_context=tls.client)).json()["workers"]) != [1, 1]:
                await trio.sleep(0.1)
        for index, room in enumerate(rooms):
            async with connect(front.url, room, front.token(agent=f"s#{index}"), transport="websocket", ssl_context=tls.client) as speaker, \
                    connect(front.url, room, front.token(agent=f"l#{index}"), transport="websocket", ssl_context=tls.client) as listener:
                assert speaker.join_response["websocket_url"].startswith(front.url.replace("https://", "wss://"))
                assert abs(await hear(speaker, listener, 440 + 220 * index) - (440 + 220 * index)) < 5
        # Plain HTTP on the TLS port gets no HTTP answer (no downgrade).
        with pytest.raises(h11.RemoteProtocolError):  # the connection closes where a response should be
            await http_request(front.url.replace("https://", "http://") + "/healthz", timeout=5)
