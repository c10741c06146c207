"""Key rotation with a JWKS served over real HTTP on 127.0.0.1.

The server fetches the partner issuer's JWKS in a worker thread; the fake clock
decides when a refetch is allowed (at most once a minute on unknown kids) and
when the keys are stale enough to refresh anyway.
"""

from __future__ import annotations

import pytest

from botcall.auth.keys import ensure_dev_issuer
from botcall.config import IssuerConfig
from botcall.server import refresh_stale_keys
from tests.kit.jwks_server import JwksPublisher, jwks_server
from tests.kit.jwtutil import jwks_bytes, new_ed25519, new_es256
from tests.kit.server import LiveServer, running_server

PARTNER = "https://botauth.example"


@pytest.fixture
def key_a():
    return new_ed25519()


@pytest.fixture
def key_b():
    return new_es256()


@pytest.fixture
def publisher(key_a):
    with jwks_server(JwksPublisher(jwks_bytes(key_a))) as served:
        yield served


@pytest.fixture
async def srv(tmp_path, publisher):
    # A long housekeeping interval: the background refresher runs once at start-up only.
    async with running_server(
        tmp_path,
        issuers=(IssuerConfig(PARTNER, publisher.url),),
        housekeeping_interval=3600,
        jwks_refresh_interval_s=600,
        dev_issuer=True,
    ) as server:
        yield server


async def join_with(srv: LiveServer, key) -> tuple[int, str]:
    """Create a room and join it, both with tokens ``key`` signs for the partner issuer."""
    created = await srv.create_room(key.sign(srv.claims(iss=PARTNER)))
    if created.status != 201:
        return created.status, created.error_code
    token = key.sign(srv.claims(iss=PARTNER))
    joined = await srv.join(token, created.json()["room_id"])
    return joined.status, ("" if joined.status == 200 else joined.error_code)


async def test_rotation_new_kid_after_refetch_and_removed_key_rejected(srv, publisher, key_a, key_b):
    assert await join_with(srv, key_a) == (200, "")
    assert publisher.fetches == 1

    # The issuer rotates: B replaces A.
    publisher.publish(jwks_bytes(key_b))
    srv.clock.advance(10)
    # B is unknown and the last fetch was 10 s ago: no refetch yet.
    assert await join_with(srv, key_b) == (401, "attestation_unknown_key")
    assert publisher.fetches == 1

    srv.clock.advance(50)  # a minute after the first fetch
    assert await join_with(srv, key_b) == (200, "")
    assert publisher.fetches == 2
    # A was removed from the JWKS: refused now, and it does not trigger another fetch.
    assert await join_with(srv, key_a) == (401, "attestation_unknown_key")
    assert publisher.fetches == 2


async def test_a_burst_of_unknown_kids_fetches_once_a_minute(srv, publisher, key_a):
    assert await join_with(srv, key_a) == (200, "")
    srv.clock.advance(61)
    strangers = [new_ed25519() for _ in range(5)]
    for stranger in strangers:
        assert await join_with(srv, stranger) == (401, "attestation_unknown_key")
    assert publisher.fetches == 2


async def test_stale_keys_are_refreshed_so_a_removed_key_stops_working(srv, publisher, key_a, key_b):
    publisher.publish(jwks_bytes(key_a, key_b))
    assert await join_with(srv, key_a) == (200, "")
    fetched = publisher.fetches
    publisher.publish(jwks_bytes(key_b))
    srv.clock.advance(599)
    await refresh_stale_keys(srv.state)
    assert publisher.fetches == fetched and await join_with(srv, key_a) == (200, "")
    srv.clock.advance(1)
    await refresh_stale_keys(srv.state)
    assert publisher.fetches == fetched + 1
    assert await join_with(srv, key_a) == (401, "attestation_unknown_key")
    assert await join_with(srv, key_b) == (200, "")


async def test_a_failed_fetch_keeps_the_previous_keys(srv, publisher, key_a):
    assert await join_with(srv, key_a) == (200, "")
    publisher.publish(b"internal error", status=500)
    srv.clock.advance(61)
    newcomer = new_ed25519()
    assert await join_with(srv, newcomer) == (401, "attestation_unknown_key")
    assert publisher.fetches == 2
    assert await join_with(srv, key_a) == (200, "")
    publisher.publish(b"{not json")
    srv.clock.advance(61)
    assert await join_with(srv, newcomer) == (401, "attestation_unknown_key")
    assert await join_with(srv, key_a) == (200, "")


async def test_an_unreachable_jwks_url_fails_closed(tmp_path, key_a):
    # Nothing listens on port 9 of 127.0.0.1 (discard is not running here).
    async with running_server(
        tmp_path, issuers=(IssuerConfig(PARTNER, "http://127.0.0.1:9/jwks.json"),), housekeeping_interval=3600, dev_issuer=True
    ) as srv:
        assert await join_with(srv, key_a) == (401, "attestation_unknown_key")


async def test_dev_issuer_jwks_file_is_reread_when_botcall_token_recreates_the_key(tmp_path):
    async with running_server(tmp_path, housekeeping_interval=3600) as srv:
        old_token = srv.token()
        # Someone deletes the data directory's key; `botcall token` makes a new one.
        srv.dev.key_path.unlink()
        fresh, created = ensure_dev_issuer(tmp_path, srv.dev.issuer)
        assert created and fresh.kid != srv.dev.kid
        token = fresh.mint(agent="orion#8f3a", controller="gopi", audience="botcall", scopes=("call:create",), ttl=600, now=srv.clock())
        # The unknown kid makes the server re-read the changed JWKS file.
        assert (await srv.create_room(token)).status == 201
        stale = await srv.create_room(old_token)
        assert (stale.status, stale.error_code) == (401, "attestation_unknown_key")
