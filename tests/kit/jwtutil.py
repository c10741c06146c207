"""Real keys and hand-made JWS tokens for the attestation tests."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from botcall.auth.keys import public_jwk


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


@dataclass(frozen=True)
class SigningKey:
    """A private key with its public JWK (kid = RFC 7638 thumbprint)."""

    private_key: Any
    jwk: dict[str, str]

    @property
    def kid(self) -> str:
        return self.jwk["kid"]

    @property
    def alg(self) -> str:
        return self.jwk["alg"]

    def sign(self, claims: dict[str, Any], *, headers: dict[str, Any] | None = None, kid: str | None = None) -> str:
        all_headers = {"kid": self.kid if kid is None else kid, **(headers or {})}
        return jwt.encode(claims, self.private_key, algorithm=self.alg, headers=all_headers)


def new_ed25519() -> SigningKey:
    private = ed25519.Ed25519PrivateKey.generate()
    return SigningKey(private, public_jwk(private.public_key()))


def new_es256() -> SigningKey:
    private = ec.generate_private_key(ec.SECP256R1())
    return SigningKey(private, public_jwk(private.public_key()))


def jwks_bytes(*keys: SigningKey) -> bytes:
    return json.dumps({"keys": [k.jwk for k in keys]}).encode()


def unsigned_token(header: dict[str, Any], claims: dict[str, Any], signature: bytes = b"") -> str:
    """A compact JWS with any header and signature bytes (for alg=none and forgeries)."""
    head = b64url(json.dumps(header).encode())
    body = b64url(json.dumps(claims).encode())
    return f"{head}.{body}.{b64url(signature)}"


def hs256_token(header: dict[str, Any], claims: dict[str, Any], secret: bytes) -> str:
    """An HS256 token MACed with ``secret`` (e.g. the issuer's public key bytes)."""
    head = b64url(json.dumps({**header, "alg": "HS256"}).encode())
    body = b64url(json.dumps(claims).encode())
    mac = hmac.new(secret, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64url(mac)}"
