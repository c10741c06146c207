"""Invite links: the humans' only way into a room.

An invite URL is ``<public_url>/join/<room_id>#invite=<secret>``. The secret
(144 bits from ``secrets``) sits in the fragment, which browsers never send to
a server, so it stays out of access logs and ``Referer`` headers; the PWA reads
it from ``location.hash`` and presents it over the signaling WebSocket, where
``RoomRegistry.join_human`` compares it in constant time.

Servers keep only the secret's SHA-256 (``invite_digest``) once the create
response has gone out: that is what a clustered node stores in Redis so an
invite link outlives a restart (docs/architecture.md, "Rooms survive a node
restart"). A plain hash is enough: the secret is 144 random bits, so there is
no dictionary to precompute and nothing a salt or a slow hash would add.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

from botcall.errors import BadRequest

INVITE_SECRET_BYTES = 18  # 144 bits; the issue asks for at least 128
_SECRET = re.compile(r"[A-Za-z0-9_-]{16,128}")
_ROOM_PATH = re.compile(r"/join/([A-Za-z0-9._~-]{1,64})")


@dataclass(frozen=True, slots=True)
class InviteLink:
    """The parts of an invite URL."""

    room_id: str
    secret: str


def new_invite_secret() -> str:
    """A fresh unguessable invite secret (URL-safe base64, 24 characters)."""
    return secrets.token_urlsafe(INVITE_SECRET_BYTES)


def invite_url(base_url: str, room_id: str, secret: str) -> str:
    """Build the invite URL humans open.

    Args:
        base_url: the public base URL, without a trailing slash.
        room_id: the room.
        secret: the room's invite secret.

    Returns:
        ``<base_url>/join/<room_id>#invite=<secret>``.
    """
    return f"{base_url}/join/{quote(room_id, safe='')}#invite={secret}"


def parse_invite_url_untrusted(url: str) -> InviteLink:
    """Split an invite URL into room id and secret.

    Args:
        url: an invite URL as pasted by a user.

    Returns:
        The room id and the secret.

    Raises:
        BadRequest: ``invite_malformed`` when it is not an invite URL.
    """
    if not isinstance(url, str) or len(url) > 2048:
        raise BadRequest("not an invite URL", code="invite_malformed")
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise BadRequest("not an invite URL", code="invite_malformed") from exc
    room = _ROOM_PATH.fullmatch(parts.path)
    fragment = parts.fragment
    if room is None or not fragment.startswith("invite="):
        raise BadRequest("not an invite URL", code="invite_malformed")
    secret = fragment[len("invite="):]
    if not _SECRET.fullmatch(secret):
        raise BadRequest("the invite secret is malformed", code="invite_malformed")
    return InviteLink(room_id=room.group(1), secret=secret)


def invite_secret_matches(expected: str, presented: object) -> bool:
    """Compare an invite secret in constant time.

    Args:
        expected: the room's secret.
        presented: what the client sent (anything; non-strings never match).

    Returns:
        Whether they are equal.
    """
    if not isinstance(presented, str):
        return False
    return hmac.compare_digest(expected.encode("utf-8"), presented.encode("utf-8", "surrogatepass"))


def invite_digest(secret: str) -> str:
    """The hex SHA-256 of an invite secret: what a server keeps to check it later."""
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


def invite_matches_digest(digest: str, presented: object) -> bool:
    """Whether ``presented`` is the secret whose ``invite_digest`` is ``digest``
    (constant-time comparison of the digests).

    Args:
        digest: the room's ``invite_digest``.
        presented: what the client sent (anything; non-strings never match).
    """
    if not isinstance(presented, str) or not digest:
        return False
    return hmac.compare_digest(digest.encode("ascii", "replace"), invite_digest(presented).encode("ascii"))
