"""Hypothesis: the auth layer's untrusted inputs raise only their own errors.

* ``AttestationVerifier.verify_untrusted``: any token text, and real signatures
  over arbitrary headers and claims, either verify or raise ``AttestationError``.
* ``parse_jwks_untrusted``: any bytes and JWK-shaped objects either parse or raise ``JwksError``.
* ``parse_invite_url_untrusted``: any text either parses or raises ``BadRequest``.
"""

from __future__ import annotations

import json

import jwt
from hypothesis import example, given
from hypothesis import strategies as st

from botcall.auth.attestation import AttestationVerifier, ReplayCache
from botcall.auth.invites import invite_url, new_invite_secret, parse_invite_url_untrusted
from botcall.auth.keys import KeyRing, parse_jwks_untrusted
from botcall.errors import JwksError
from botcall.errors import AttestationError, BadRequest
from tests.kit.jwtutil import b64url, jwks_bytes, new_ed25519, new_es256

ISSUER = "https://botauth.example"
NOW = 1_800_000_000
ED = new_ed25519()
ES = new_es256()
ALGS = frozenset({"EdDSA", "ES256"})


def verifier() -> AttestationVerifier:
    ring = KeyRing(allowed_algorithms=ALGS)
    ring.add_static(ISSUER, parse_jwks_untrusted(jwks_bytes(ED, ES), allowed_algorithms=ALGS, max_keys=4))
    return AttestationVerifier(
        keyring=ring,
        audience="botcall",
        algorithms=ALGS,
        leeway=30,
        max_lifetime=3600,
        max_token_bytes=8192,
        replay_cache=ReplayCache(10),
    )


VERIFIER = verifier()

scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=12)
values = st.recursive(scalars, lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=6), c, max_size=3), max_leaves=8)


def mostly(valid):
    return st.integers(0, 5).flatmap(lambda n: values if n == 0 else valid)


claims_strategy = st.fixed_dictionaries(
    {},
    optional={
        "iss": mostly(st.sampled_from([ISSUER, ISSUER + "x", ISSUER[:-1]])),
        "aud": mostly(st.sampled_from(["botcall", ["botcall"], "other"])),
        "sub": mostly(st.text(min_size=1, max_size=20)),
        "ctl": mostly(st.text(min_size=1, max_size=20)),
        "scope": mostly(st.sampled_from(["call:voice", "call:create call:voice", ""])),
        "iat": mostly(st.integers(NOW - 4000, NOW + 100)),
        "exp": mostly(st.integers(NOW - 100, NOW + 4000)),
        "nbf": mostly(st.integers(NOW - 100, NOW + 100)),
        "jti": mostly(st.text(min_size=1, max_size=20)),
        "room": mostly(st.text(max_size=10)),
    },
)
header_extras = st.fixed_dictionaries(
    {},
    optional={"crit": values, "typ": values, "jku": values, "b64": st.booleans(), "x5u": values},
)


def check(token) -> None:
    try:
        att = VERIFIER.verify_untrusted(token, now=NOW)
    except AttestationError as exc:
        assert exc.status == 401 and exc.code.startswith("attestation_")
    else:
        assert att.issuer == ISSUER and "botcall" in att.audience
        assert att.expires_at - att.issued_at <= 3600 and NOW < att.expires_at + 30


@given(st.text(max_size=200) | st.binary(max_size=100) | values)
@example("..")
@example("e30.e30.e30")
@example(b"e30.e30.e30")
def test_any_token_text(token):
    check(token)


@given(st.lists(st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_=", max_size=60), min_size=1, max_size=5))
def test_any_base64url_segments(segments):
    check(".".join(segments))


@given(claims_strategy, header_extras, st.sampled_from([ED, ES]), st.sampled_from(["own", "other", "missing"]))
def test_real_signatures_over_arbitrary_headers_and_claims(claims, extras, key, kid_choice):
    kid = {"own": key.kid, "other": (ES if key is ED else ED).kid, "missing": None}[kid_choice]
    headers = {k: v for k, v in extras.items()}
    if kid is not None:
        headers["kid"] = kid
    try:
        token = jwt.encode(claims, key.private_key, algorithm=key.alg, headers=headers)
    except (TypeError, ValueError, jwt.PyJWTError):
        # PyJWT refuses some headers (b64 without crit...): build the JWS by hand then.
        head = b64url(json.dumps({"alg": key.alg, **headers}).encode())
        token = f"{head}.{b64url(json.dumps(claims).encode())}.AAAA"
    check(token)


jwk_members = st.fixed_dictionaries(
    {},
    optional={
        "kty": mostly(st.sampled_from(["OKP", "EC", "RSA", "oct"])),
        "crv": mostly(st.sampled_from(["Ed25519", "Ed448", "X25519", "P-256", "P-384", "secp256k1"])),
        "x": mostly(st.sampled_from([ED.jwk["x"], ES.jwk["x"], "AA", ""])),
        "y": mostly(st.sampled_from([ES.jwk["y"], "AA"])),
        "n": mostly(st.sampled_from(["AQAB", "AA"])),
        "e": mostly(st.sampled_from(["AQAB"])),
        "kid": mostly(st.text(max_size=8)),
        "alg": mostly(st.sampled_from(["EdDSA", "ES256", "RS256", "HS256", "none", "ES384"])),
        "use": mostly(st.sampled_from(["sig", "enc"])),
    },
)


@given(st.binary(max_size=200) | st.lists(jwk_members | values, max_size=4).map(lambda keys: json.dumps({"keys": keys}).encode()))
@example(jwks_bytes(ED, ES))
def test_jwks_parser_raises_only_jwks_error(data):
    try:
        keys = parse_jwks_untrusted(data, allowed_algorithms=ALGS, max_keys=4)
    except JwksError:
        return
    for kid, key in keys.items():
        assert key.kid == kid and key.algorithm in ALGS


@given(st.text(max_size=120))
@example(invite_url("https://call.example", "abcd-efgh-ijkl", new_invite_secret()))
def test_invite_parser_raises_only_bad_request(url):
    try:
        link = parse_invite_url_untrusted(url)
    except BadRequest as exc:
        assert exc.code == "invite_malformed"
    else:
        assert link.room_id and len(link.secret) >= 16
