"""Clustered mode with TLS: every node serves HTTPS and WSS itself (a ``trustme``
certificate) and forwards to the room's node over TLS, checking that node's
certificate with ``--cluster-ca``. A node that cannot verify its peer refuses
to forward (never falls back to plain HTTP)."""

from __future__ import annotations

import re
from contextlib import AsyncExitStack

import pytest

from botcall_sdk import connect
from tests.cluster.test_nodes import hear_tone, start_nodes
from tests.kit.redis import running_redis
from tests.kit.tls import TestTls

pytestmark = pytest.mark.e2e


async def test_nodes_forward_to_each_other_over_verified_tls(tmp_path):
    tls = TestTls.make(tmp_path / "tls")
    served = ("--tls-cert", str(tls.cert), "--tls-key", str(tls.key))

    def flags(name: str) -> tuple[str, ...]:
        # node-c trusts only the system's CAs: the test CA's certificates are not good enough for it.
        return served if name == "node-c" else (*served, "--cluster-ca", str(tls.ca_pem))

    async with running_redis(tmp_path) as redis, AsyncExitStack() as stack:
        nodes = await start_nodes(stack, tmp_path, redis, ["node-a", "node-b", "node-c"], extra=flags)
        a, b, c = nodes["node-a"], nodes["node-b"], nodes["node-c"]
        assert all(node.url.startswith("https://127.0.0.1:") for node in nodes.values())
        creator = a.token(agent="creator#1")
        on_b = None
        for _ in range(6):  # placement spreads rooms over the nodes: until one is B's (created through A)
            created = await a.request("POST", "/v1/rooms/create", bearer=creator, json_body={}, ssl_context=tls.client)
            assert created.status == 201, created.body
            if created.json()["invite_url"].startswith(b.url + "/join/"):
                on_b = created.json()
                break
        assert on_b is not None
        # Bots join B's room through A (HTTPS forwarded to B over TLS) and speak over WSS spliced through A.
        async with connect(a.url, on_b["room_id"], a.token(agent="via-a#1"), transport="websocket", ssl_context=tls.client) as x, \
                connect(b.url, on_b["room_id"], a.token(agent="on-b#2"), transport="websocket", ssl_context=tls.client) as y:
            assert x.join_response["websocket_url"].startswith(b.url.replace("https://", "wss://"))
            assert abs(await hear_tone(x, y, 440) - 440) < 5
            assert abs(await hear_tone(y, x, 880) - 880) < 5
        # Through C, which cannot verify B's certificate: refused, never sent in the clear.
        assert (await c.request("GET", f"/v1/rooms/{on_b['room_id']}", bearer=creator, ssl_context=tls.client)).status == 503
        await c.wait_for(re.compile(re.escape(b.url) + r" did not answer GET .*CERTIFICATE_VERIFY_FAILED"))
        # B still answers for its room directly.
        assert (await b.request("GET", f"/v1/rooms/{on_b['room_id']}", bearer=creator, ssl_context=tls.client)).status == 200

