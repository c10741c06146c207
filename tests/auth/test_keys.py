"""JWKS parsing, the key ring's file and URL bookkeeping, and the dev issuer's files."""

from __future__ import annotations

import json
import os
import stat

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from botcall.auth.keys import (
    JwksError,
    KeyRing,
    download_jwks,
    ensure_dev_issuer,
    parse_jwks_untrusted,
    public_jwk,
)
from tests.kit.jwks_server import JwksPublisher, jwks_server
from tests.kit.jwtutil import jwks_bytes, new_ed25519, new_es256

ALGS = frozenset({"EdDSA", "ES256"})


def parse(document) -> dict:
    data = document if isinstance(document, bytes) else json.dumps(document).encode()
    return parse_jwks_untrusted(data, allowed_algorithms=ALGS, max_keys=8)


def test_rfc8037_thumbprint_vector():
    # RFC 8037 Appendix A.2/A.3: the Ed25519 public key and its RFC 7638 thumbprint.
    x = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"
    public = OKPAlgorithm.from_jwk({"kty": "OKP", "crv": "Ed25519", "x": x})
    jwk = public_jwk(public)
    assert jwk["kid"] == "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"
    assert (jwk["kty"], jwk["crv"], jwk["x"], jwk["alg"], jwk["use"]) == ("OKP", "Ed25519", x, "EdDSA", "sig")


def test_parse_accepts_ed25519_and_es256_keys_by_kid():
    ed, es = new_ed25519(), new_es256()
    keys = parse(jwks_bytes(ed, es))
    assert set(keys) == {ed.kid, es.kid}
    assert keys[ed.kid].algorithm == "EdDSA" and isinstance(keys[ed.kid].key, ed25519.Ed25519PublicKey)
    assert keys[es.kid].algorithm == "ES256" and isinstance(keys[es.kid].key, ec.EllipticCurvePublicKey)


def test_parse_skips_keys_we_do_not_accept():
    ed = new_ed25519()
    rsa_jwk = json.loads(RSAAlgorithm.to_jwk(rsa.generate_private_key(65537, 2048).public_key()))
    es384 = json.loads(ECAlgorithm.to_jwk(ec.generate_private_key(ec.SECP384R1()).public_key()))
    document = {
        "keys": [
            ed.jwk,
            {**rsa_jwk, "kid": "rsa"},  # RS256 is not in the allow-list
            {**es384, "kid": "p384"},  # ES384 neither
            {**new_ed25519().jwk, "kid": "enc", "use": "enc"},  # not a signing key
            {**new_ed25519().jwk, "kid": "hs", "alg": "HS256"},  # declared for another algorithm
        ]
    }
    assert set(parse(document)) == {ed.kid}


@pytest.mark.parametrize(
    "document, fragment",
    [
        (b"\xff", "not UTF-8 JSON"),
        (b"[]", '"keys" array'),
        ({"keys": {}}, '"keys" array'),
        ({"keys": [1]}, "JSON object"),
        ({"keys": [{"kty": "OKP", "crv": "Ed25519", "x": "AA"}]}, "kid"),
        ({"keys": [{"kty": "oct", "k": "c2VjcmV0", "kid": "s"}]}, "private or symmetric"),
        ({"keys": [{"kty": "OKP", "crv": "Ed25519", "x": "AA", "d": "AA", "kid": "p"}]}, "private"),
        ({"keys": [{"kty": "OKP", "crv": "Ed25519", "x": "!!", "kid": "bad"}]}, "not a usable JWK"),
        ({"keys": [{"kty": "EC", "crv": "P-384", "x": "AA", "y": "AA", "alg": "ES256", "kid": "c"}]}, "not a usable JWK"),
        ({"keys": [{"kty": "XYZ", "kid": "x"}]}, "not a usable JWK"),
        ({"keys": [{**new_ed25519().jwk, "kid": "same"}, {**new_ed25519().jwk, "kid": "same"}]}, "duplicate"),
        ({"keys": [new_ed25519().jwk for _ in range(9)]}, "limit is 8"),
    ],
)
def test_parse_rejects_bad_documents(document, fragment):
    with pytest.raises(JwksError, match=fragment):
        parse(document)


def test_es256_key_on_the_wrong_curve_is_rejected():
    p384 = json.loads(ECAlgorithm.to_jwk(ec.generate_private_key(ec.SECP384R1()).public_key()))
    # PyJWT builds it when told alg=ES256; we refuse the curve mismatch.
    with pytest.raises(JwksError):
        parse({"keys": [{**p384, "kid": "k", "alg": "ES256"}]})


def test_keyring_url_fetch_is_rate_limited_and_refreshes_when_stale():
    ring = KeyRing(allowed_algorithms=ALGS, refetch_min_interval=60, refresh_interval=600)
    ring.add_url("iss", "http://127.0.0.1:1/jwks")
    assert ring.fetch_allowed("iss", 1000) and ring.refresh_due(1000) == ["iss"]
    ring.fetch_started("iss", 1000)
    assert not ring.fetch_allowed("iss", 1059.9)
    assert ring.fetch_allowed("iss", 1060)
    assert ring.refresh_due(1599) == [] and ring.refresh_due(1600) == ["iss"]
    assert not ring.fetch_allowed("unknown-issuer", 5000)


def test_keyring_install_replaces_keys_and_a_bad_document_keeps_the_old_ones():
    old, new = new_ed25519(), new_ed25519()
    ring = KeyRing(allowed_algorithms=ALGS)
    ring.add_url("iss", "http://127.0.0.1:1/jwks")
    ring.install_fetched("iss", jwks_bytes(old), now=1)
    assert ring.lookup("iss", old.kid) is not None
    ring.install_fetched("iss", jwks_bytes(new), now=2)
    assert ring.lookup("iss", old.kid) is None and ring.lookup("iss", new.kid) is not None
    with pytest.raises(JwksError):
        ring.install_fetched("iss", b"{broken", now=3)
    assert ring.kids("iss") == {new.kid}


def test_keys_are_bound_to_their_issuer():
    a, b = new_ed25519(), new_ed25519()
    ring = KeyRing(allowed_algorithms=ALGS)
    ring.add_static("issuer-a", parse(jwks_bytes(a)))
    ring.add_static("issuer-b", parse(jwks_bytes(b)))
    assert ring.lookup("issuer-a", a.kid) is not None
    assert ring.lookup("issuer-b", a.kid) is None
    with pytest.raises(ValueError):
        ring.add_static("issuer-a", {})


def test_file_source_is_reread_only_when_it_changes(tmp_path):
    first, second = new_ed25519(), new_ed25519()
    path = tmp_path / "jwks.json"
    path.write_bytes(jwks_bytes(first))
    ring = KeyRing(allowed_algorithms=ALGS)
    ring.add_file("iss", path)
    assert ring.reload_files() == [] and ring.kids("iss") == {first.kid}

    path.write_bytes(jwks_bytes(first, second))
    os.utime(path, ns=(1, 1))  # a different mtime whatever the filesystem's resolution
    assert ring.reload_files() == [] and ring.kids("iss") == {first.kid, second.kid}

    path.write_bytes(b"{not json")
    os.utime(path, ns=(2, 2))
    problems = ring.reload_files()
    assert len(problems) == 1 and "iss" in problems[0]
    assert ring.kids("iss") == {first.kid, second.kid}  # the broken file changed nothing

    path.unlink()
    assert len(ring.reload_files()) == 1


def test_dev_issuer_creates_a_private_key_0600_and_a_matching_jwks(tmp_path):
    data_dir = tmp_path / "data"
    dev, created = ensure_dev_issuer(data_dir)
    assert created
    assert stat.S_IMODE(dev.key_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
    keys = parse(dev.jwks_path.read_bytes())
    assert list(keys) == [dev.kid]
    token = dev.mint(agent="orion#8f3a", controller="gopi", audience="botcall", scopes=("call:voice",), ttl=60, now=1000)
    claims = jwt.decode(
        token, keys[dev.kid].key, algorithms=["EdDSA"], audience="botcall", options={"verify_exp": False, "verify_iat": False}
    )
    assert claims["iss"] == "botcall-dev" and claims["exp"] - claims["iat"] == 60
    assert jwt.get_unverified_header(token)["kid"] == dev.kid

    again, created_again = ensure_dev_issuer(data_dir)
    assert not created_again and again.kid == dev.kid


def test_dev_issuer_rewrites_a_stale_jwks_and_refuses_a_foreign_key_file(tmp_path):
    dev, _ = ensure_dev_issuer(tmp_path)
    dev.jwks_path.write_text('{"keys": []}')
    assert ensure_dev_issuer(tmp_path)[0].kid == dev.kid
    assert list(parse(dev.jwks_path.read_bytes())) == [dev.kid]
    dev.key_path.write_text("not a key")
    with pytest.raises(JwksError):
        ensure_dev_issuer(tmp_path)


def test_download_jwks_from_a_real_http_server():
    key = new_es256()
    with jwks_server(JwksPublisher(jwks_bytes(key))) as publisher:
        data = download_jwks(publisher.url, timeout=5, max_bytes=10_000)
        assert list(parse(data)) == [key.kid]
        with pytest.raises(JwksError, match="exceeds"):
            download_jwks(publisher.url, timeout=5, max_bytes=10)
        publisher.publish(b"gone", status=404)
        with pytest.raises(JwksError, match="404"):
            download_jwks(publisher.url, timeout=5, max_bytes=10_000)
        assert publisher.fetches == 3
    with pytest.raises(JwksError, match="http"):
        download_jwks("file:///etc/passwd", timeout=5, max_bytes=10_000)
