"""TURN REST credentials: the scheme against a fixed vector, the join response and the
browser's ``joined`` event, and real coturn accepting (and refusing) them; which
latched addresses are a configured TURN server's."""

from __future__ import annotations

import json
import time
from urllib.parse import urlsplit

import pytest
import trio
import trio_websocket

from botcall.signaling.turn import TurnRelays, ice_servers_json, turn_credentials, turn_uri_host
from tests.kit.coturn import allocate, running_coturn
from tests.kit.server import T0, running_server

# Computed independently: printf '%s' '1771160400:p-8fba3eda' | openssl dgst -sha1 -hmac north-wind -binary | base64
VECTOR = ("north-wind", "p-8fba3eda", 1771160400, "1771160400:p-8fba3eda", "jndfbIpIv/kIZzfzyczCQlTfS24=")


def test_credentials_match_the_openssl_vector():
    secret, user, expiry, username, credential = VECTOR
    made = turn_credentials(secret, user, expiry + 0.9)  # rounded down, never later than asked
    assert (made.username, made.credential, made.expires_at) == (username, credential, expiry)


def test_credentials_refuse_what_a_turn_server_would_misread():
    with pytest.raises(ValueError):
        turn_credentials("", "p-1", 1.0)
    with pytest.raises(ValueError):
        turn_credentials("s", "a:b", 1.0)


def test_ice_servers_shape():
    secret, user, expiry, username, credential = VECTOR
    uris = ("turn:turn.example:3478?transport=udp", "turns:turn.example:5349?transport=tcp")
    assert ice_servers_json(uris, secret, user, expiry + 0.9) == [
        {
            "urls": list(uris),
            "username": username,
            "credential": credential,
            # The timestamp rule (docs/protocol.md): the bare name keeps its RFC 3339 form.
            "expires_at": "2026-02-15T13:00:00Z",
            "expires_at_unix": expiry,  # what the username carries, rounded down
            "expires_at_iso": "2026-02-15T13:00:00Z",
        }
    ]
    assert ice_servers_json((), None, user, expiry) == []


def test_turn_relays_are_the_turn_hosts_addresses():
    resolved = {"turn.example": ["192.0.2.10", "2001:db8::10"], "2001:db8::20": ["2001:db8::20"], "elsewhere.example": []}
    uris = ("turn:turn.example:3478?transport=udp", "turns:[2001:db8::20]:5349?transport=tcp", "turn:elsewhere.example")
    relays = TurnRelays.from_uris(uris, resolved.__getitem__)
    assert [turn_uri_host(uri) for uri in uris] == ["turn.example", "2001:db8::20", "elsewhere.example"]
    assert relays.relays(("192.0.2.10", 49170))  # any port: the TURN server picks its relayed ports
    assert relays.relays(("2001:db8::10", 50000)) and relays.relays(("2001:db8::20", 50000))
    assert relays.relays(("::ffff:192.0.2.10", 49170))  # a dual-stack socket's view of the same address
    assert not relays.relays(("192.0.2.11", 49170))
    assert not relays.relays(("not-an-address", 1))
    assert not TurnRelays().relays(("192.0.2.10", 49170))


async def test_join_and_joined_carry_credentials_valid_for_the_session(tmp_path):
    uris = ("turn:127.0.0.1:3478?transport=udp", "turn:127.0.0.1:3478?transport=tcp")
    async with running_server(tmp_path, turn_uris=uris, turn_secret="north-wind") as srv:
        created = (await srv.create_room(srv.token(agent="creator#1"), expires_in=600)).json()
        joined = (await srv.join(srv.token(ttl=300), created["room_id"])).json()
        [server] = joined["ice_servers"]
        expiry = int(T0 + 300)  # the attestation ends first
        assert server["urls"] == list(uris)
        assert server["username"] == f"{expiry}:{joined['participant_id']}"
        assert server["credential"] == turn_credentials("north-wind", joined["participant_id"], expiry).credential
        assert server["expires_at"] == joined["expires_at"]
        assert (server["expires_at_unix"], server["expires_at_iso"]) == (expiry, joined["expires_at_iso"])
        # The browser's joined event carries its own (room expiry, its participant id).
        invite = urlsplit(created["invite_url"])
        url = srv.url.replace("http://", "ws://") + f"/v1/signal/{created['room_id']}"
        async with trio_websocket.open_websocket_url(url) as ws:
            await ws.send_message(json.dumps({"type": "hello", "invite": invite.fragment.removeprefix("invite=")}))
            with trio.fail_after(10):
                assert json.loads(await ws.get_message())["type"] == "lobby"
                await ws.send_message(json.dumps({"type": "join", "display_name": "Ada"}))
                event = json.loads(await ws.get_message())
                while event["type"] != "joined":
                    event = json.loads(await ws.get_message())
        [human] = event["ice_servers"]
        assert human["username"] == f"{int(T0 + 600)}:{event['participant_id']}"
        assert human["credential"] == turn_credentials("north-wind", event["participant_id"], T0 + 600).credential
        # The same three forms on the WebSocket as over HTTP (the bare one was RFC 3339 on both).
        assert (human["expires_at"], human["expires_at_unix"], human["expires_at_iso"]) == (
            event["expires_at_iso"], int(T0 + 600), event["expires_at_iso"]
        )


async def test_without_turn_ice_servers_is_empty(tmp_path):
    async with running_server(tmp_path) as srv:
        created = (await srv.create_room(srv.token(agent="creator#1"))).json()
        assert (await srv.join(srv.token(), created["room_id"])).json()["ice_servers"] == []


async def test_coturn_allocates_with_the_credentials_and_refuses_others(tmp_path):
    async with running_coturn(tmp_path / "coturn", secret="north-wind") as turn:
        # coturn judges the expiry by its own clock, the machine's: an hour from now.
        future = time.time() + 3600
        good = turn_credentials(turn.secret, "p-1", future)
        result = await allocate(turn, good.username, good.credential)
        assert result.error is None and result.relayed is not None and turn.relays(result.relayed)
        wrong_secret = turn_credentials("another-secret", "p-1", future)
        assert (await allocate(turn, wrong_secret.username, wrong_secret.credential)).error == 401
        expired = turn_credentials(turn.secret, "p-1", time.time() - 60)
        assert (await allocate(turn, expired.username, expired.credential)).error == 401
