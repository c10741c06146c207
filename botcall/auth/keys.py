"""Issuer public keys: JWKS parsing, the key ring, and the local development issuer.

Convention: ``parse_jwks_untrusted`` handles bytes from outside (a JWKS file or
URL) and raises only ``JwksError``.

The ``KeyRing`` is sans-IO for URL sources: it decides *whether* a fetch may
happen (``fetch_allowed``, ``refresh_due``) and installs what was fetched
(``install_fetched``), while the shell does the download (``download_jwks`` in a
worker thread). File sources are re-read when their modification time, size or inode
changes (``reload_files``, a ``stat`` per file).

Each key set belongs to exactly one issuer: a key published by issuer A can
never verify a token claiming to come from issuer B.

This module must stay light to import (no trio, no quart): ``botcall token``
imports it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from jwt.algorithms import ECAlgorithm, OKPAlgorithm

from botcall.errors import JwksError

DEV_KEY_FILE = "dev-issuer-key.pem"
DEV_JWKS_FILE = "dev-issuer-jwks.json"

# The EC curve each ECDSA algorithm must use (RFC 7518 §3.4).
_EC_CURVE_FOR_ALGORITHM = {"ES256": "secp256r1", "ES384": "secp384r1", "ES512": "secp521r1"}
# JWK members that carry private key material (RFC 7518 §6.2.2, §6.3.2, RFC 8037 §2).
_PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})


@dataclass(frozen=True, slots=True)
class VerifyKey:
    """One public key from an issuer's JWKS.

    Attributes:
        kid: the key id a token names in its header.
        algorithm: the one JWS algorithm this key may verify (RFC 7517 §4.4 ``alg``,
            or inferred from ``kty``/``crv``); a token with another ``alg`` is refused.
        key: the ``cryptography`` public key object.
    """

    kid: str
    algorithm: str
    key: Any


def _load_jwk(jwk: Any, allowed_algorithms: frozenset[str]) -> VerifyKey | None:
    """Build one key, or ``None`` when it is not for us (other use, other algorithm)."""
    if not isinstance(jwk, dict):
        raise JwksError("a JWKS key must be a JSON object")
    kid = jwk.get("kid")
    if not isinstance(kid, str) or not kid:
        raise JwksError("every JWKS key needs a non-empty string kid")
    if _PRIVATE_MEMBERS & jwk.keys():
        raise JwksError(f"key {kid!r} carries private or symmetric key material")
    use = jwk.get("use", "sig")
    if use != "sig":
        return None
    declared = jwk.get("alg")
    if declared is not None and (not isinstance(declared, str) or declared not in allowed_algorithms):
        return None
    try:
        parsed = jwt.PyJWK(jwk)
    except (jwt.PyJWTError, ValueError, TypeError, KeyError, AttributeError, NotImplementedError) as exc:
        raise JwksError(f"key {kid!r} is not a usable JWK: {exc}") from exc
    algorithm = parsed.algorithm_name
    if algorithm not in allowed_algorithms:
        return None
    key = parsed.key
    if not hasattr(key, "verify") or hasattr(key, "private_bytes"):
        raise JwksError(f"key {kid!r} is not a public key")
    expected_curve = _EC_CURVE_FOR_ALGORITHM.get(algorithm)
    if expected_curve is not None and getattr(getattr(key, "curve", None), "name", None) != expected_curve:
        raise JwksError(f"key {kid!r} is not on the curve {algorithm} requires")
    return VerifyKey(kid=kid, algorithm=algorithm, key=key)


def parse_jwks_untrusted(
    data: bytes, *, allowed_algorithms: frozenset[str] | set[str], max_keys: int
) -> dict[str, VerifyKey]:
    """Parse a JWK Set (RFC 7517 §5) into the signing keys we accept.

    Keys whose ``use`` is not ``sig`` or whose algorithm is not allowed are
    skipped; anything malformed rejects the whole set so a half-read JWKS never
    replaces a good one.

    Args:
        data: the JWKS document as bytes (UTF-8 JSON).
        allowed_algorithms: JWS algorithms the verifier accepts.
        max_keys: the most keys a set may hold.

    Returns:
        The accepted keys by ``kid``.

    Raises:
        JwksError: anything wrong with the document.
    """
    allowed = frozenset(allowed_algorithms)
    try:
        document = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise JwksError(f"JWKS is not UTF-8 JSON: {exc}") from exc
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise JwksError('JWKS must be an object with a "keys" array')
    raw_keys = document["keys"]
    if len(raw_keys) > max_keys:
        raise JwksError(f"JWKS holds {len(raw_keys)} keys; the limit is {max_keys}")
    keys: dict[str, VerifyKey] = {}
    for jwk in raw_keys:
        key = _load_jwk(jwk, allowed)
        if key is None:
            continue
        if key.kid in keys:
            raise JwksError(f"duplicate kid {key.kid!r} in JWKS")
        keys[key.kid] = key
    return keys


def download_jwks(url: str, *, timeout: float, max_bytes: int) -> bytes:
    """Fetch a JWKS over HTTP(S). Blocking: the server runs it in a worker thread.

    Args:
        url: an ``http://`` or ``https://`` URL.
        timeout: socket timeout in seconds.
        max_bytes: refuse documents larger than this.

    Returns:
        The response body.

    Raises:
        JwksError: wrong scheme, network failure, non-200 status, or too large.
    """
    if not url.startswith(("http://", "https://")):
        raise JwksError(f"JWKS URL must be http(s): {url!r}")
    request = urllib.request.Request(
        url, headers={"Accept": "application/jwk-set+json, application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            if response.status != 200:
                raise JwksError(f"JWKS fetch from {url} returned HTTP {response.status}")
            body: bytes = response.read(max_bytes + 1)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise JwksError(f"JWKS fetch from {url} failed: {exc}") from exc
    if len(body) > max_bytes:
        raise JwksError(f"JWKS from {url} exceeds {max_bytes} bytes")
    return body


@dataclass(slots=True)
class _Source:
    """Mutable bookkeeping for one issuer's key source."""

    issuer: str
    location: str
    is_url: bool
    keys: dict[str, VerifyKey]
    last_fetch_attempt: float | None = None
    last_fetch_success: float | None = None
    file_signature: tuple[int, int, int, int] | None = None


class KeyRing:
    """Public keys per trusted issuer.

    Args:
        allowed_algorithms: JWS algorithms accepted at all.
        max_keys: the most keys one JWKS may hold.
        refetch_min_interval: seconds between two fetches of one URL triggered by
            unknown ``kid`` values (the issue's "at most once a minute").
        refresh_interval: seconds after which a URL source is refetched anyway, so
            a key removed upstream stops being trusted even if no new ``kid`` appears.
    """

    def __init__(
        self,
        *,
        allowed_algorithms: frozenset[str] | set[str] | tuple[str, ...],
        max_keys: int = 64,
        refetch_min_interval: float = 60.0,
        refresh_interval: float = 600.0,
    ) -> None:
        self.allowed_algorithms = frozenset(allowed_algorithms)
        self.max_keys = max_keys
        self.refetch_min_interval = refetch_min_interval
        self.refresh_interval = refresh_interval
        self._sources: dict[str, _Source] = {}

    # --- set-up ------------------------------------------------------------------------

    def _add(self, issuer: str, location: str, is_url: bool) -> _Source:
        if issuer in self._sources:
            raise ValueError(f"issuer {issuer!r} already has a key source")
        source = _Source(issuer=issuer, location=location, is_url=is_url, keys={})
        self._sources[issuer] = source
        return source

    def add_static(self, issuer: str, keys: dict[str, VerifyKey]) -> None:
        """Trust ``issuer`` with a fixed key set (never refreshed)."""
        self._add(issuer, "<static>", False).keys = dict(keys)

    def add_file(self, issuer: str, path: Path | str) -> None:
        """Trust ``issuer`` with the JWKS in a file; call ``reload_files`` to (re)read it."""
        self._add(issuer, str(path), False)

    def add_url(self, issuer: str, url: str) -> None:
        """Trust ``issuer`` with the JWKS at a URL; the shell fetches it when told to."""
        self._add(issuer, url, True)

    # --- lookups --------------------------------------------------------------------------

    @property
    def issuers(self) -> frozenset[str]:
        return frozenset(self._sources)

    def lookup(self, issuer: str, kid: str) -> VerifyKey | None:
        """The key ``kid`` of ``issuer``, or ``None`` (unknown issuer or kid)."""
        source = self._sources.get(issuer)
        if source is None:
            return None
        return source.keys.get(kid)

    def kids(self, issuer: str) -> frozenset[str]:
        source = self._sources.get(issuer)
        return frozenset(source.keys) if source is not None else frozenset()

    def url_of(self, issuer: str) -> str | None:
        """The JWKS URL of ``issuer`` if its keys come from a URL."""
        source = self._sources.get(issuer)
        return source.location if source is not None and source.is_url else None

    # --- URL sources (sans-IO) -------------------------------------------------------------

    def fetch_allowed(self, issuer: str, now: float) -> bool:
        """Whether an unknown ``kid`` from ``issuer`` may trigger a fetch at ``now``."""
        source = self._sources.get(issuer)
        if source is None or not source.is_url:
            return False
        last = source.last_fetch_attempt
        return last is None or now - last >= self.refetch_min_interval

    def refresh_due(self, now: float) -> list[str]:
        """Issuers whose URL keys should be refetched now (never fetched, or stale)."""
        due = []
        for source in self._sources.values():
            if not source.is_url:
                continue
            last = source.last_fetch_attempt
            if last is None or now - last >= self.refresh_interval:
                due.append(source.issuer)
        return due

    def fetch_started(self, issuer: str, now: float) -> None:
        """Record a fetch attempt (it counts against the rate limit even if it fails)."""
        self._sources[issuer].last_fetch_attempt = now

    def install_fetched(self, issuer: str, data: bytes, now: float) -> None:
        """Replace ``issuer``'s keys with a freshly fetched JWKS.

        Raises:
            JwksError: the document is unusable; the previous keys stay in place.
        """
        source = self._sources[issuer]
        source.keys = parse_jwks_untrusted(
            data, allowed_algorithms=self.allowed_algorithms, max_keys=self.max_keys
        )
        source.last_fetch_success = now

    # --- file sources (a stat per file) -----------------------------------------------------

    def reload_files(self) -> list[str]:
        """Re-read file sources whose modification time, size or inode changed.

        Returns:
            One message per file that could not be read or parsed (its previous
            keys stay in place); empty when all is well.
        """
        problems = []
        for source in self._sources.values():
            if source.is_url or source.location == "<static>":
                continue
            try:
                stat = os.stat(source.location)
                # The inode too: a file replaced by rename within one timestamp tick
                # (coarse kernel clocks) still counts as changed.
                signature = (stat.st_mtime_ns, stat.st_size, stat.st_ino, stat.st_dev)
                if signature == source.file_signature:
                    continue
                data = Path(source.location).read_bytes()
                if len(data) > 4 * 1024 * 1024:
                    raise JwksError("JWKS file exceeds 4 MiB")
                source.keys = parse_jwks_untrusted(
                    data, allowed_algorithms=self.allowed_algorithms, max_keys=self.max_keys
                )
                source.file_signature = signature
            except (OSError, JwksError) as exc:
                problems.append(f"JWKS file {source.location} for {source.issuer!r}: {exc}")
        return problems


# --- the local development issuer ------------------------------------------------------------


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def public_jwk(public_key: ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey) -> dict[str, str]:
    """The public JWK of an Ed25519 or EC key, with its RFC 7638 thumbprint as ``kid``.

    Args:
        public_key: a ``cryptography`` Ed25519 or EC public key.

    Returns:
        A JWK dict with ``kid``, ``alg`` and ``use`` set.
    """
    if isinstance(public_key, ed25519.Ed25519PublicKey):
        jwk = OKPAlgorithm.to_jwk(public_key, as_dict=True)
        alg = "EdDSA"
        required: tuple[str, ...] = ("crv", "kty", "x")
    else:
        jwk = ECAlgorithm.to_jwk(public_key, as_dict=True)
        alg = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}[public_key.curve.name]
        required = ("crv", "kty", "x", "y")
    # RFC 7638 §3: SHA-256 over the required members, sorted, no whitespace.
    canonical = json.dumps({k: jwk[k] for k in required}, separators=(",", ":"), sort_keys=True)
    kid = _b64url(hashlib.sha256(canonical.encode("ascii")).digest())
    return {**{k: jwk[k] for k in required}, "kid": kid, "alg": alg, "use": "sig"}


@dataclass(frozen=True)
class DevIssuer:
    """The local development issuer: an Ed25519 key kept in the data directory.

    Attributes:
        issuer: the ``iss`` it signs as (``botcall-dev``).
        kid: RFC 7638 thumbprint of its public key.
        private_key: the Ed25519 private key.
        key_path: the PEM file (mode 0600).
        jwks_path: the JWKS file the server trusts.
    """

    issuer: str
    kid: str
    private_key: ed25519.Ed25519PrivateKey
    key_path: Path
    jwks_path: Path

    def sign(self, claims: dict[str, Any]) -> str:
        """Sign ``claims`` as a compact JWS (EdDSA, with this key's ``kid``)."""
        return jwt.encode(claims, self.private_key, algorithm="EdDSA", headers={"kid": self.kid})

    def mint(
        self,
        *,
        agent: str,
        controller: str,
        audience: str,
        scopes: tuple[str, ...] | list[str],
        ttl: float,
        now: float,
        room: str | None = None,
    ) -> str:
        """Sign a BotAuth attestation.

        Args:
            agent: the ``sub`` (agent id, e.g. ``orion#8f3a``).
            controller: the ``ctl`` (the human who vouches for the bot).
            audience: the ``aud`` (the server's configured audience).
            scopes: e.g. ``("call:create", "call:voice")``.
            ttl: lifetime in seconds (``exp - iat``).
            now: Unix time used as ``iat``.
            room: optional ``room`` binding.

        Returns:
            The compact JWT.
        """
        issued = int(now)
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "aud": audience,
            "sub": agent,
            "ctl": controller,
            "scope": " ".join(scopes),
            "iat": issued,
            "exp": issued + int(ttl),
            "jti": secrets.token_urlsafe(16),
        }
        if room is not None:
            claims["room"] = room
        return self.sign(claims)


def _write_new_file(path: Path, data: bytes, mode: int) -> bool:
    """Create ``path`` atomically with ``data``; ``False`` if it already existed."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        # link() refuses to replace: two processes creating the key at once agree on one.
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    finally:
        tmp.unlink(missing_ok=True)


def ensure_dev_issuer(data_dir: Path | str, issuer: str = "botcall-dev") -> tuple[DevIssuer, bool]:
    """Load the dev issuer's key from ``data_dir``, creating key and JWKS on first use.

    The private key is PKCS#8 PEM with mode 0600; the JWKS beside it is rewritten
    only when it does not match the key.

    Args:
        data_dir: the data directory (created with mode 0700 if missing).
        issuer: the issuer name the key signs as.

    Returns:
        ``(dev_issuer, created)`` where ``created`` tells whether a new key was made.

    Raises:
        JwksError: the existing key file is not an Ed25519 PEM key.
        OSError: the directory or files cannot be written.
    """
    directory = Path(data_dir).expanduser()
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    key_path = directory / DEV_KEY_FILE
    jwks_path = directory / DEV_JWKS_FILE
    created = False
    if not key_path.exists():
        fresh = ed25519.Ed25519PrivateKey.generate()
        pem = fresh.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        created = _write_new_file(key_path, pem, 0o600)
    try:
        private_key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (ValueError, TypeError) as exc:
        raise JwksError(f"{key_path} is not a PEM private key: {exc}") from exc
    if not isinstance(private_key, ed25519.Ed25519PrivateKey):
        raise JwksError(f"{key_path} is not an Ed25519 key")
    jwk = public_jwk(private_key.public_key())
    document = (json.dumps({"keys": [jwk]}, indent=2) + "\n").encode("ascii")
    if not jwks_path.exists() or jwks_path.read_bytes() != document:
        tmp = jwks_path.with_name(f".{jwks_path.name}.{secrets.token_hex(6)}.tmp")
        tmp.write_bytes(document)
        os.chmod(tmp, 0o644)
        os.replace(tmp, jwks_path)
    dev = DevIssuer(
        issuer=issuer, kid=jwk["kid"], private_key=private_key, key_path=key_path, jwks_path=jwks_path
    )
    return dev, created
