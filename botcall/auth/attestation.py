"""BotAuth attestation verification (sans-IO).

A BotAuth attestation is a compact JWS (RFC 7515) carrying JWT claims
(RFC 7519), signed with an issuer's asymmetric key. ``AttestationVerifier``
checks one token against the ``KeyRing`` at a given ``now`` (Unix seconds; the
shell passes the wall clock, tests pass numbers) and returns the verified
claims as an ``Attestation``.

Convention: ``verify_untrusted`` takes a token from the network and raises only
``AttestationError`` (401) with a specific ``code``. Policy checks on a verified
attestation (scope, agent, room binding) raise ``Forbidden`` (403).

Replay protection is separate (``ReplayCache``) because only a successful join
consumes a ``jti``: the same token may create a room and then join it.
"""

from __future__ import annotations

import base64
import binascii
import heapq
import json
import math
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import jwt

from botcall.auth.keys import KeyRing
from botcall.errors import AttestationError, Forbidden, ServiceUnavailable

SCOPE_CREATE = "call:create"
SCOPE_VOICE = "call:voice"
SCOPE_RECEIVE = "call:receive"
# Every scope BotCall grants meaning to (docs/protocol.md, "Claims").
SCOPES = (SCOPE_CREATE, SCOPE_VOICE, SCOPE_RECEIVE)

# Claims every attestation must carry. RFC 7519 §4.1 makes all registered claims
# optional; BotAuth requires these. ``ctl`` is required too because every BotCall
# action is authorised against the controller.
REQUIRED_CLAIMS = ("iss", "aud", "sub", "ctl", "exp", "iat", "jti")
MAX_CLAIM_CHARS = 256

_B64URL = re.compile(r"[A-Za-z0-9_-]*")
_JWS = jwt.PyJWS()


@dataclass(frozen=True, slots=True)
class Attestation:
    """The verified claims of one attestation.

    Attributes:
        issuer: ``iss``.
        agent_id: ``sub``, the agent's id (``orion#8f3a``).
        controller: ``ctl``, the human controller who vouches for the agent.
        audience: ``aud`` as a tuple.
        scopes: ``scope`` split on spaces.
        issued_at: ``iat`` (Unix seconds).
        expires_at: ``exp`` (Unix seconds).
        not_before: ``nbf`` if present.
        jti: the token id (replay protection).
        room: the optional ``room`` binding.
        kid: the key that verified it.
        algorithm: the JWS ``alg``.
    """

    issuer: str
    agent_id: str
    controller: str
    audience: tuple[str, ...]
    scopes: frozenset[str]
    issued_at: float
    expires_at: float
    not_before: float | None
    jti: str
    room: str | None
    kid: str
    algorithm: str

    def require_scope(self, scope: str) -> None:
        """Raise ``Forbidden(code="scope_missing")`` unless ``scope`` was granted."""
        if scope not in self.scopes:
            raise Forbidden(f"the attestation does not grant {scope!r}", code="scope_missing")

    def require_agent(self, agent_id: str) -> None:
        """Raise ``Forbidden(code="agent_mismatch")`` unless the token is for ``agent_id``."""
        if agent_id != self.agent_id:
            raise Forbidden("agent_id does not match the attestation's sub", code="agent_mismatch")

    def require_room(self, room_id: str) -> None:
        """Raise ``Forbidden(code="room_mismatch")`` if the token is bound to another room."""
        if self.room is not None and self.room != room_id:
            raise Forbidden("the attestation is bound to another room", code="room_mismatch")


class UnknownSigningKey(AttestationError):
    """The token names a ``kid`` its issuer has not published (yet): maybe refetch the JWKS.

    Attributes:
        issuer: the (trusted) issuer whose key set lacks the kid.
    """

    code = "attestation_unknown_key"

    def __init__(self, message: str, *, issuer: str) -> None:
        super().__init__(message)
        self.issuer = issuer


def _fail(code: str, message: str) -> AttestationError:
    return AttestationError(message, code=code)


def _b64url_json_untrusted(segment: str, what: str) -> dict[str, Any]:
    if not _B64URL.fullmatch(segment) or len(segment) % 4 == 1:
        raise _fail("attestation_malformed", f"the {what} is not base64url")
    try:
        raw = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
        value = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except (binascii.Error, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise _fail("attestation_malformed", f"the {what} is not JSON") from exc
    if not isinstance(value, dict):
        raise _fail("attestation_malformed", f"the {what} is not a JSON object")
    return value


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # RFC 7519 §4: a JWT with duplicate claim names must be rejected or take the
    # last; we reject, so no two parsers can disagree about a claim.
    result = dict(pairs)
    if len(result) != len(pairs):
        raise ValueError("duplicate member name")
    return result


def _number(claims: dict[str, Any], name: str) -> float | None:
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _fail("attestation_malformed", f"claim {name!r} must be a NumericDate")
    return float(value)


def _string(claims: dict[str, Any], name: str) -> str | None:
    value = claims.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or not value or len(value) > MAX_CLAIM_CHARS:
        raise _fail("attestation_malformed", f"claim {name!r} must be a string of 1-{MAX_CLAIM_CHARS} chars")
    if not value.isprintable():
        raise _fail("attestation_malformed", f"claim {name!r} contains control characters")
    return value


class ReplayCache:
    """``(issuer, jti)`` pairs already used for a join, kept until the token expires.

    Bounded: when full of unexpired entries, new joins are refused
    (``replay_cache_full``, 503) rather than evicting an entry, because evicting
    would let that token be replayed.

    Args:
        max_entries: the hard cap.
        journal: where each recorded entry is also written (``ReplayJournal``),
            so a restart remembers it; None keeps the cache in memory only.
    """

    def __init__(self, max_entries: int, journal: Journal | None = None) -> None:
        self.max_entries = max_entries
        self.journal = journal
        self._until: dict[tuple[str, str], float] = {}
        self._heap: list[tuple[float, tuple[str, str]]] = []

    def entries(self) -> Iterator[tuple[str, str, float]]:
        """Every remembered ``(issuer, jti, until)``."""
        for (issuer, jti), until in self._until.items():
            yield issuer, jti, until

    def restore(self, entries: Iterable[tuple[str, str, float]]) -> None:
        """Remember entries read back from the journal (not written to it again)."""
        for issuer, jti, until in entries:
            if len(self._until) >= self.max_entries:
                break
            key = (issuer, jti)
            self._until[key] = until
            heapq.heappush(self._heap, (until, key))

    def __len__(self) -> int:
        return len(self._until)

    def prune(self, now: float) -> int:
        """Forget entries whose token can no longer be accepted. Returns how many."""
        removed = 0
        while self._heap and self._heap[0][0] <= now:
            until, key = heapq.heappop(self._heap)
            if self._until.get(key) == until:
                del self._until[key]
                removed += 1
        return removed

    def check(self, issuer: str, jti: str, now: float) -> None:
        """Raise unless a join with this token may proceed.

        Raises:
            AttestationError: ``attestation_replayed``: the ``jti`` was already used.
            ServiceUnavailable: ``replay_cache_full`` (503, ``Retry-After``): no room to remember it.
        """
        until = self._until.get((issuer, jti))
        if until is not None and until > now:
            raise _fail("attestation_replayed", "this attestation was already used to join")
        self.prune(now)
        if len(self._until) >= self.max_entries:
            retry = max(1, math.ceil(self._heap[0][0] - now))
            raise ServiceUnavailable(
                "too many recent joins to remember; retry later",
                code="replay_cache_full",
                headers={"Retry-After": str(retry)},
            )

    def record(self, issuer: str, jti: str, until: float) -> None:
        """Remember ``jti`` until ``until`` (the last instant the token is acceptable)."""
        key = (issuer, jti)
        self._until[key] = until
        heapq.heappush(self._heap, (until, key))
        if self.journal is not None:
            self.journal.append(issuer, jti, until)


class Journal(Protocol):
    """Where a ``ReplayCache`` writes what it records (``ReplayJournal``)."""

    def append(self, issuer: str, jti: str, until: float) -> None: ...


class AttestationVerifier:
    """Verifies BotAuth attestations against a ``KeyRing``. Synchronous; time is an argument.

    Args:
        keyring: trusted issuers and their keys.
        audience: the ``aud`` value this server accepts.
        algorithms: the JWS ``alg`` allow-list (asymmetric only).
        leeway: clock skew allowed on ``exp``, ``nbf`` and ``iat`` (seconds, at most 60).
        max_lifetime: the most ``exp - iat`` may be.
        max_token_bytes: longer tokens are refused unparsed.
        replay_cache: remembers the ``jti`` of tokens used for joins.
    """

    def __init__(
        self,
        *,
        keyring: KeyRing,
        audience: str,
        algorithms: tuple[str, ...] | frozenset[str],
        leeway: float,
        max_lifetime: float,
        max_token_bytes: int,
        replay_cache: ReplayCache,
    ) -> None:
        self.keyring = keyring
        self.audience = audience
        self.algorithms = frozenset(algorithms)
        self.leeway = leeway
        self.max_lifetime = max_lifetime
        self.max_token_bytes = max_token_bytes
        self.replay_cache = replay_cache

    def verify_untrusted(self, token: Any, *, now: float) -> Attestation:
        """Verify a compact JWS attestation.

        Args:
            token: the token as received (anything; non-strings are refused).
            now: the current Unix time.

        Returns:
            The verified claims.

        Raises:
            AttestationError: with ``code`` one of ``attestation_malformed``,
                ``attestation_unsupported_crit``, ``attestation_bad_algorithm``,
                ``attestation_untrusted_issuer``, ``attestation_unknown_key``
                (an ``UnknownSigningKey``), ``attestation_bad_signature``,
                ``attestation_missing_claim``, ``attestation_expired``,
                ``attestation_not_yet_valid``, ``attestation_lifetime_too_long``,
                ``attestation_wrong_audience``.
        """
        if not isinstance(token, str) or not token:
            raise _fail("attestation_malformed", "the attestation must be a non-empty string")
        if len(token) > self.max_token_bytes or not token.isascii():
            raise _fail("attestation_malformed", "the attestation is too long or not ASCII")
        segments = token.split(".")
        if len(segments) != 3:
            raise _fail("attestation_malformed", "the attestation is not a compact JWS")
        header = _b64url_json_untrusted(segments[0], "JWS header")
        claims = _b64url_json_untrusted(segments[1], "claims set")

        # RFC 7515 §4.1.11: we understand no extension, so any "crit" is fatal.
        if "crit" in header:
            raise _fail("attestation_unsupported_crit", "critical header extensions are not supported")
        algorithm = header.get("alg")
        if not isinstance(algorithm, str) or algorithm not in self.algorithms:
            raise _fail("attestation_bad_algorithm", f"algorithm {algorithm!r} is not accepted")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise _fail("attestation_unknown_key", "the JWS header names no kid")

        issuer = claims.get("iss")
        if issuer is None:
            raise _fail("attestation_missing_claim", "missing claim 'iss'")
        # Exact match only: "https://botauth.example" must not trust
        # "https://botauth.example.evil" nor "https://botauth".
        if not isinstance(issuer, str) or issuer not in self.keyring.issuers:
            raise _fail("attestation_untrusted_issuer", "the issuer is not trusted")
        key = self.keyring.lookup(issuer, kid)
        if key is None:
            raise UnknownSigningKey(f"issuer {issuer!r} has no key {kid!r}", issuer=issuer)
        if key.algorithm != algorithm:
            raise _fail("attestation_bad_algorithm", f"key {kid!r} is for {key.algorithm}, not {algorithm}")
        try:
            _JWS.decode_complete(token, key=key.key, algorithms=[algorithm])
        except jwt.InvalidSignatureError as exc:
            raise _fail("attestation_bad_signature", "the signature does not verify") from exc
        except (jwt.PyJWTError, ValueError, TypeError) as exc:
            raise _fail("attestation_malformed", f"the JWS is malformed: {exc}") from exc

        return self._validate_claims(claims, now=now, kid=kid, algorithm=algorithm)

    def _validate_claims(self, claims: dict[str, Any], *, now: float, kid: str, algorithm: str) -> Attestation:
        for name in REQUIRED_CLAIMS:
            if claims.get(name) is None:
                raise _fail("attestation_missing_claim", f"missing claim {name!r}")
        expires_at = _number(claims, "exp")
        issued_at = _number(claims, "iat")
        not_before = _number(claims, "nbf")
        assert expires_at is not None and issued_at is not None
        issuer = _string(claims, "iss")
        agent_id = _string(claims, "sub")
        controller = _string(claims, "ctl")
        jti = _string(claims, "jti")
        room = _string(claims, "room")
        assert issuer is not None and agent_id is not None and controller is not None and jti is not None

        audience_claim = claims["aud"]
        if isinstance(audience_claim, str):
            audience: tuple[str, ...] = (audience_claim,)
        elif isinstance(audience_claim, list) and all(isinstance(a, str) for a in audience_claim):
            audience = tuple(audience_claim)
        else:
            raise _fail("attestation_malformed", "claim 'aud' must be a string or an array of strings")
        scope_claim = claims.get("scope", "")
        if not isinstance(scope_claim, str) or len(scope_claim) > 4 * MAX_CLAIM_CHARS:
            raise _fail("attestation_malformed", "claim 'scope' must be a space-separated string")

        # RFC 7519 §4.1.4: reject on or after exp (allowing leeway).
        if now >= expires_at + self.leeway:
            raise _fail("attestation_expired", "the attestation has expired")
        if not_before is not None and now + self.leeway < not_before:
            raise _fail("attestation_not_yet_valid", "the attestation is not valid yet (nbf)")
        if now + self.leeway < issued_at:
            raise _fail("attestation_not_yet_valid", "the attestation was issued in the future (iat)")
        if expires_at <= issued_at:
            raise _fail("attestation_malformed", "exp must be after iat")
        if expires_at - issued_at > self.max_lifetime:
            raise _fail(
                "attestation_lifetime_too_long",
                f"the attestation lives {expires_at - issued_at:.0f} s; the limit is {self.max_lifetime:.0f} s",
            )
        if self.audience not in audience:
            raise _fail("attestation_wrong_audience", "the attestation is for another audience")

        return Attestation(
            issuer=issuer,
            agent_id=agent_id,
            controller=controller,
            audience=audience,
            scopes=frozenset(scope_claim.split()),
            issued_at=issued_at,
            expires_at=expires_at,
            not_before=not_before,
            jti=jti,
            room=room,
            kid=kid,
            algorithm=algorithm,
        )

    def check_not_replayed(self, attestation: Attestation, now: float) -> None:
        """Raise unless ``attestation`` may be used for a join (see ``ReplayCache.check``)."""
        self.replay_cache.check(attestation.issuer, attestation.jti, now)

    def mark_used(self, attestation: Attestation) -> None:
        """Remember that ``attestation`` joined, until it could no longer be accepted anyway."""
        self.replay_cache.record(attestation.issuer, attestation.jti, attestation.expires_at + self.leeway)
