"""Every bad attestation through the real HTTP server: the right status and code.

The dev issuer (its key in the test's data directory) signs the tokens; an
extra issuer with an ES256 key published in a JWKS file shows the second
algorithm and issuer isolation.
"""

from __future__ import annotations

import json

import jwt
import pytest
from cryptography.hazmat.primitives import serialization

from botcall.config import IssuerConfig
from tests.kit.jwtutil import hs256_token, jwks_bytes, new_ed25519, new_es256, unsigned_token
from tests.kit.server import LiveServer, running_server

PARTNER = "https://botauth.example"


@pytest.fixture
def partner_key():
    return new_es256()


@pytest.fixture
async def srv(tmp_path, partner_key):
    jwks = tmp_path / "partner-jwks.json"
    jwks.write_bytes(jwks_bytes(partner_key))
    # The dev issuer beside a configured one must be asked for explicitly.
    async with running_server(tmp_path / "data", issuers=(IssuerConfig(PARTNER, str(jwks)),), dev_issuer=True) as server:
        yield server


async def new_room(srv: LiveServer, controller: str = "gopi") -> str:
    response = await srv.create_room(srv.token(controller=controller, agent="creator#0001"))
    assert response.status == 201, response.body
    return response.json()["room_id"]


async def join_status(srv: LiveServer, token: str, *, agent_id: str = "orion#8f3a") -> tuple[int, str]:
    room_id = await new_room(srv)
    response = await srv.join(token, room_id, agent_id=agent_id)
    if response.status == 200:
        return 200, ""
    assert response.headers["content-type"] == "application/json"
    return response.status, response.error_code


async def test_a_good_token_joins_and_the_identity_is_kept(srv):
    room_id = await new_room(srv)
    response = await srv.join(srv.token(scope="call:voice call:receive"), room_id)
    assert response.status == 200
    session = srv.state.registry.session_by_id(response.json()["session_id"])
    identity = session.identity
    assert (identity.agent_id, identity.controller, identity.issuer) == ("orion#8f3a", "gopi", "botcall-dev")
    assert identity.scopes == ("call:receive", "call:voice")


async def test_an_es256_partner_token_joins(srv, partner_key):
    # Rooms are owned by controllers, whichever issuer vouched for the bot.
    claims = srv.claims(iss=PARTNER)
    assert await join_status(srv, partner_key.sign(claims)) == (200, "")


async def test_alg_none(srv):
    token = unsigned_token({"alg": "none", "kid": srv.dev.kid}, srv.claims())
    assert await join_status(srv, token) == (401, "attestation_bad_algorithm")


async def test_hs256_signed_with_the_public_key_bytes(srv):
    public = srv.dev.private_key.public_key()
    pem = public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    jwk = json.dumps({"keys": [json.loads(srv.dev.jwks_path.read_text())["keys"][0]]}).encode()
    for secret in (pem, raw, jwk):
        token = hs256_token({"kid": srv.dev.kid}, srv.claims(), secret)
        assert await join_status(srv, token) == (401, "attestation_bad_algorithm")


async def test_unknown_kid(srv):
    stranger = new_ed25519()
    assert await join_status(srv, stranger.sign(srv.claims())) == (401, "attestation_unknown_key")


async def test_a_forged_signature_under_our_kid(srv):
    forger = new_ed25519()
    assert await join_status(srv, forger.sign(srv.claims(), kid=srv.dev.kid)) == (401, "attestation_bad_signature")


async def test_a_partner_key_cannot_sign_for_the_dev_issuer(srv, partner_key):
    # Keys are bound to their issuer: the partner's kid is unknown under botcall-dev.
    token = partner_key.sign(srv.claims())
    assert await join_status(srv, token) == (401, "attestation_unknown_key")


async def test_expired(srv):
    now = int(srv.clock())
    token = srv.dev.sign(srv.claims(iat=now - 600, exp=now - 31))
    assert await join_status(srv, token) == (401, "attestation_expired")


async def test_nbf_in_the_future_beyond_leeway(srv):
    token = srv.dev.sign(srv.claims(nbf=int(srv.clock()) + 31))
    assert await join_status(srv, token) == (401, "attestation_not_yet_valid")
    within = srv.dev.sign(srv.claims(nbf=int(srv.clock()) + 29))
    assert await join_status(srv, within) == (200, "")


async def test_wrong_audience(srv):
    token = srv.dev.sign(srv.claims(aud="https://other-botcall.example"))
    assert await join_status(srv, token) == (401, "attestation_wrong_audience")


@pytest.mark.parametrize("issuer", ["https://botauth.exampl", "https://botauth", "botcall-de", "https://botauth.example.evil"])
async def test_issuer_prefix_or_extension_of_a_trusted_one(srv, partner_key, issuer):
    token = partner_key.sign(srv.claims(iss=issuer))
    assert await join_status(srv, token) == (401, "attestation_untrusted_issuer")


@pytest.mark.parametrize("claim", ["jti", "exp"])
async def test_missing_jti_or_exp(srv, claim):
    token = srv.dev.sign(srv.claims(**{claim: None}))
    assert await join_status(srv, token) == (401, "attestation_missing_claim")


async def test_crit_header(srv):
    token = jwt.encode(
        srv.claims(), srv.dev.private_key, algorithm="EdDSA", headers={"kid": srv.dev.kid, "crit": ["exp"]}
    )
    assert await join_status(srv, token) == (401, "attestation_unsupported_crit")


async def test_join_without_call_voice(srv):
    token = srv.token(scope="call:create call:receive")
    assert await join_status(srv, token) == (403, "scope_missing")


async def test_create_without_call_create(srv):
    response = await srv.create_room(srv.token(scope="call:voice"))
    assert (response.status, response.error_code) == (403, "scope_missing")


async def test_controller_not_the_room_owner(srv):
    token = srv.token(controller="mallory")
    assert await join_status(srv, token) == (403, "controller_mismatch")


async def test_agent_id_is_not_sub(srv):
    assert await join_status(srv, srv.token(agent="orion#8f3a"), agent_id="vega#0001") == (403, "agent_mismatch")


async def test_replayed_jti(srv):
    room_id = await new_room(srv)
    token = srv.token()
    assert (await srv.join(token, room_id)).status == 200
    replay = await srv.join(token, room_id)
    assert (replay.status, replay.error_code) == (401, "attestation_replayed")
    # Also into another room of the same owner.
    other = await srv.join(token, await new_room(srv))
    assert (other.status, other.error_code) == (401, "attestation_replayed")


async def test_a_failed_join_does_not_burn_the_token(srv):
    room_id = await new_room(srv)
    token = srv.token()
    srv.state.registry.close_room(room_id, "deleted", now=srv.clock())
    gone = await srv.join(token, room_id)
    assert (gone.status, gone.error_code) == (410, "room_closed")
    assert (await srv.join(token, await new_room(srv))).status == 200


async def test_lifetime_over_the_cap(srv):
    now = int(srv.clock())
    token = srv.dev.sign(srv.claims(iat=now, exp=now + 3601))
    assert await join_status(srv, token) == (401, "attestation_lifetime_too_long")


async def test_room_binding(srv):
    room_id = await new_room(srv)
    bound_elsewhere = await srv.join(srv.token(room="some-other-room"), room_id)
    assert (bound_elsewhere.status, bound_elsewhere.error_code) == (403, "room_mismatch")
    assert (await srv.join(srv.token(room=room_id), room_id)).status == 200


async def test_malformed_tokens(srv):
    for token in ["", "not-a-jwt", "a.b.c", "e30.e30.e30" + "." * 3]:
        assert await join_status(srv, token) == (401, "attestation_malformed")


async def test_create_without_or_with_a_broken_authorization_header(srv):
    for headers in [{}, {"Authorization": "Basic dXNlcjpwYXNz"}, {"Authorization": "Bearer"}]:
        response = await srv.post("/v1/rooms/create", headers=headers, json_body={})
        assert (response.status, response.error_code) == (401, "attestation_missing")
        assert response.headers["www-authenticate"].startswith("Bearer")
    garbage = await srv.post("/v1/rooms/create", bearer="garbage", json_body={})
    assert (garbage.status, garbage.error_code) == (401, "attestation_malformed")


async def test_a_token_expiring_within_the_leeway_can_create_but_not_join(srv):
    now = int(srv.clock())
    token = srv.dev.sign(srv.claims(iat=now - 600, exp=now - 10))
    created = await srv.create_room(token)
    assert created.status == 201
    joined = await srv.join(token, created.json()["room_id"])
    assert (joined.status, joined.error_code) == (401, "attestation_expired")


async def test_rejections_are_counted_by_code(srv):
    await join_status(srv, "not-a-jwt")
    await join_status(srv, srv.token(controller="mallory"))
    metrics = (await srv.get("/metrics")).body.decode()
    assert 'botcall_rejections_total{code="attestation_malformed"} 1.0' in metrics
    assert 'botcall_rejections_total{code="controller_mismatch"} 1.0' in metrics
