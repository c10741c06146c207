"""The sans-IO verifier against real Ed25519/ES256 keys and real signatures."""

from __future__ import annotations

import json

import pytest
from cryptography.hazmat.primitives import serialization

from botcall.auth.attestation import (
    AttestationVerifier,
    ReplayCache,
    UnknownSigningKey,
)
from botcall.auth.keys import KeyRing, parse_jwks_untrusted
from botcall.errors import ApiError, AttestationError, Forbidden
from tests.kit.jwtutil import (
    b64url,
    hs256_token,
    jwks_bytes,
    new_ed25519,
    new_es256,
    unsigned_token,
)

ISSUER = "https://botauth.example"
NOW = 1_800_000_000.0
ALGS = ("EdDSA", "ES256")


@pytest.fixture(scope="module")
def ed_key():
    return new_ed25519()


@pytest.fixture(scope="module")
def es_key():
    return new_es256()


def make_verifier(*keys, replay_max: int = 100, leeway: float = 30.0) -> AttestationVerifier:
    ring = KeyRing(allowed_algorithms=ALGS)
    ring.add_static(ISSUER, parse_jwks_untrusted(jwks_bytes(*keys), allowed_algorithms=set(ALGS), max_keys=10))
    return AttestationVerifier(
        keyring=ring,
        audience="botcall",
        algorithms=ALGS,
        leeway=leeway,
        max_lifetime=3600,
        max_token_bytes=8192,
        replay_cache=ReplayCache(replay_max),
    )


def claims(**overrides):
    base = {
        "iss": ISSUER,
        "aud": "botcall",
        "sub": "orion#8f3a",
        "ctl": "gopi",
        "scope": "call:create call:voice",
        "iat": int(NOW) - 10,
        "exp": int(NOW) + 600,
        "jti": "a1b2c3",
    }
    for name, value in overrides.items():
        if value is None:
            base.pop(name)
        else:
            base[name] = value
    return base


def rejected(verifier: AttestationVerifier, token, now: float = NOW) -> str:
    with pytest.raises(AttestationError) as info:
        verifier.verify_untrusted(token, now=now)
    assert info.value.status == 401
    return info.value.code


@pytest.mark.parametrize("key_name", ["ed_key", "es_key"])
def test_valid_tokens_of_both_algorithms_verify(request, key_name):
    key = request.getfixturevalue(key_name)
    verifier = make_verifier(key)
    att = verifier.verify_untrusted(key.sign(claims(room="room-1")), now=NOW)
    assert (att.issuer, att.agent_id, att.controller) == (ISSUER, "orion#8f3a", "gopi")
    assert att.scopes == frozenset({"call:create", "call:voice"})
    assert att.expires_at == NOW + 600 and att.issued_at == NOW - 10
    assert att.algorithm == key.alg and att.kid == key.kid and att.room == "room-1"


def test_alg_none_is_refused(ed_key):
    token = unsigned_token({"alg": "none", "kid": ed_key.kid}, claims())
    assert rejected(make_verifier(ed_key), token) == "attestation_bad_algorithm"


def test_hs256_macced_with_the_public_key_is_refused(ed_key):
    verifier = make_verifier(ed_key)
    public = ed_key.private_key.public_key()
    pem = public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    for secret in (pem, raw, json.dumps(ed_key.jwk).encode()):
        token = hs256_token({"kid": ed_key.kid}, claims(), secret)
        assert rejected(verifier, token) == "attestation_bad_algorithm"


def test_allowed_algorithm_but_not_the_keys_algorithm_is_refused(ed_key, es_key):
    # An ES256-signed token naming the Ed25519 key's kid: key/algorithm confusion.
    verifier = make_verifier(ed_key, es_key)
    token = es_key.sign(claims(), kid=ed_key.kid)
    assert rejected(verifier, token) == "attestation_bad_algorithm"


def test_unknown_kid_raises_unknown_signing_key_with_the_issuer(ed_key):
    other = new_ed25519()
    with pytest.raises(UnknownSigningKey) as info:
        make_verifier(ed_key).verify_untrusted(other.sign(claims()), now=NOW)
    assert info.value.code == "attestation_unknown_key" and info.value.issuer == ISSUER


def test_missing_kid_is_refused(ed_key):
    token = ed_key.sign(claims(), kid="")
    assert rejected(make_verifier(ed_key), token) == "attestation_unknown_key"


def test_a_signature_by_another_key_with_our_kid_is_refused(ed_key):
    forger = new_ed25519()
    token = forger.sign(claims(), kid=ed_key.kid)
    assert rejected(make_verifier(ed_key), token) == "attestation_bad_signature"


def test_a_tampered_payload_is_refused(ed_key):
    head, _, signature = ed_key.sign(claims()).split(".")
    forged_body = b64url(json.dumps(claims(ctl="mallory")).encode())
    assert rejected(make_verifier(ed_key), f"{head}.{forged_body}.{signature}") == "attestation_bad_signature"


def test_expiry_honours_at_most_the_leeway(ed_key):
    verifier = make_verifier(ed_key, leeway=30)
    token = ed_key.sign(claims(iat=int(NOW) - 700, exp=int(NOW) - 100))
    assert rejected(verifier, token) == "attestation_expired"
    # RFC 7519 §4.1.4: "on or after" exp, plus leeway.
    edge = ed_key.sign(claims(iat=int(NOW) - 700, exp=int(NOW) - 30))
    assert rejected(verifier, edge) == "attestation_expired"
    within = ed_key.sign(claims(iat=int(NOW) - 700, exp=int(NOW) - 29))
    assert verifier.verify_untrusted(within, now=NOW).expires_at == NOW - 29


def test_nbf_in_the_future_beyond_leeway_is_refused(ed_key):
    verifier = make_verifier(ed_key, leeway=30)
    assert rejected(verifier, ed_key.sign(claims(nbf=int(NOW) + 31))) == "attestation_not_yet_valid"
    assert verifier.verify_untrusted(ed_key.sign(claims(nbf=int(NOW) + 30)), now=NOW).not_before == NOW + 30


def test_iat_in_the_future_beyond_leeway_is_refused(ed_key):
    token = ed_key.sign(claims(iat=int(NOW) + 120, exp=int(NOW) + 600))
    assert rejected(make_verifier(ed_key), token) == "attestation_not_yet_valid"


def test_wrong_audience_is_refused_and_a_list_containing_ours_accepted(ed_key):
    verifier = make_verifier(ed_key)
    assert rejected(verifier, ed_key.sign(claims(aud="someone-else"))) == "attestation_wrong_audience"
    assert rejected(verifier, ed_key.sign(claims(aud=["a", "b"]))) == "attestation_wrong_audience"
    assert verifier.verify_untrusted(ed_key.sign(claims(aud=["a", "botcall"])), now=NOW).audience == ("a", "botcall")


@pytest.mark.parametrize(
    "issuer",
    [
        "https://botauth.exampl",  # a prefix of the trusted issuer
        "https://botauth.example.evil",  # the trusted issuer is a prefix of it
        "https://botauth.example/",
        "HTTPS://BOTAUTH.EXAMPLE",
        "",
    ],
)
def test_issuer_must_match_exactly(ed_key, issuer):
    assert rejected(make_verifier(ed_key), ed_key.sign(claims(iss=issuer))) == "attestation_untrusted_issuer"


@pytest.mark.parametrize("claim", ["jti", "exp", "iat", "sub", "aud", "ctl", "iss"])
def test_missing_required_claims_are_refused(ed_key, claim):
    assert rejected(make_verifier(ed_key), ed_key.sign(claims(**{claim: None}))) == "attestation_missing_claim"


@pytest.mark.parametrize("crit", [["exp"], ["b64"], ["x-botauth"], []])
def test_any_crit_header_is_refused(ed_key, crit):
    # PyJWT itself understands "b64"; we understand no extension at all.
    token = ed_key.sign(claims(), headers={"crit": crit, "x-botauth": 1})
    assert rejected(make_verifier(ed_key), token) == "attestation_unsupported_crit"


def test_lifetime_over_the_cap_is_refused(ed_key):
    verifier = make_verifier(ed_key)
    token = ed_key.sign(claims(iat=int(NOW), exp=int(NOW) + 3601))
    assert rejected(verifier, token) == "attestation_lifetime_too_long"
    assert verifier.verify_untrusted(ed_key.sign(claims(iat=int(NOW), exp=int(NOW) + 3600)), now=NOW)


@pytest.mark.parametrize(
    "bad",
    [
        {"exp": "soon"},
        {"exp": True},
        {"iat": [1]},
        {"sub": 7},
        {"ctl": ""},
        {"jti": "x" * 257},
        {"sub": "orion\x00"},
        {"aud": 5},
        {"aud": ["botcall", 5]},
        {"scope": ["call:voice"]},
        {"exp": int(NOW) - 20, "iat": int(NOW) - 10},
    ],
)
def test_malformed_claims_are_refused(ed_key, bad):
    assert rejected(make_verifier(ed_key), ed_key.sign(claims(**bad))) == "attestation_malformed"


@pytest.mark.parametrize(
    "token",
    ["", "abc", "a.b", "a.b.c.d", "!!.!!.!!", "W10.e30.", "e30.W10.", "e30.e30", 12345, None, "é.é.é", "a" * 9000],
)
def test_garbage_tokens_are_malformed(ed_key, token):
    assert rejected(make_verifier(ed_key), token) == "attestation_malformed"


def test_a_header_without_alg_is_refused(ed_key):
    assert rejected(make_verifier(ed_key), "e30.e30.") == "attestation_bad_algorithm"


def test_duplicate_claim_names_are_refused(ed_key):
    header = b64url(json.dumps({"alg": "EdDSA", "kid": ed_key.kid}).encode())
    body = b64url(b'{"iss":"%s","sub":"a","sub":"b"}' % ISSUER.encode())
    assert rejected(make_verifier(ed_key), f"{header}.{body}.AAAA") == "attestation_malformed"


def test_policy_checks_raise_forbidden(ed_key):
    att = make_verifier(ed_key).verify_untrusted(ed_key.sign(claims(scope="call:receive", room="r1")), now=NOW)
    for check, arg, code in [
        (att.require_scope, "call:voice", "scope_missing"),
        (att.require_agent, "someone#else", "agent_mismatch"),
        (att.require_room, "r2", "room_mismatch"),
    ]:
        with pytest.raises(Forbidden) as info:
            check(arg)
        assert (info.value.status, info.value.code) == (403, code)
    att.require_scope("call:receive")
    att.require_agent("orion#8f3a")
    att.require_room("r1")


def test_replay_cache_refuses_a_used_jti_until_the_token_expires(ed_key):
    verifier = make_verifier(ed_key, leeway=30)
    att = verifier.verify_untrusted(ed_key.sign(claims()), now=NOW)
    verifier.check_not_replayed(att, NOW)
    verifier.mark_used(att)
    with pytest.raises(AttestationError) as info:
        verifier.check_not_replayed(att, NOW + 1)
    assert info.value.code == "attestation_replayed"
    # The same jti from another issuer is a different token.
    cache = verifier.replay_cache
    cache.check("https://other.example", att.jti, NOW)
    # Remembered until exp + leeway, then pruned.
    assert len(cache) == 1
    assert cache.prune(att.expires_at + 29) == 0
    assert cache.prune(att.expires_at + 30) == 1
    assert len(cache) == 0


def test_full_replay_cache_refuses_new_joins_instead_of_evicting():
    cache = ReplayCache(max_entries=2)
    cache.record("iss", "a", until=NOW + 100)
    cache.record("iss", "b", until=NOW + 200)
    with pytest.raises(ApiError) as info:
        cache.check("iss", "c", NOW)
    assert (info.value.status, info.value.code) == (503, "replay_cache_full")
    assert info.value.headers["Retry-After"] == "100"
    # The remembered ones are still refused, not evicted.
    with pytest.raises(AttestationError):
        cache.check("iss", "a", NOW)
    cache.check("iss", "c", NOW + 100)  # "a" expired and is pruned: room again
    assert len(cache) == 1
