"""Short-lived TURN credentials in the TURN REST scheme (sans-IO).

draft-uberti-behave-turn-rest-00 §2.2, as coturn implements it with
``use-auth-secret`` and ``static-auth-secret``: the username is
``"<expiry>:<user>"`` (the expiry in Unix seconds) and the password is
``base64(HMAC-SHA1(secret, username))``. The TURN server recomputes the
password from the username and refuses a username whose expiry has passed,
so nobody stores per-user credentials and a leaked credential dies with its
session. Pure: no clock, no sockets (the caller passes the expiry).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any


@dataclass(frozen=True, slots=True)
class TurnCredentials:
    """One user's TURN credentials.

    Attributes:
        username: ``"<expiry>:<user>"``.
        credential: ``base64(HMAC-SHA1(secret, username))``.
        expires_at: the expiry in whole Unix seconds (what the username carries).
    """

    username: str
    credential: str
    expires_at: int


def turn_credentials(secret: str, user: str, expires_at: float) -> TurnCredentials:
    """The TURN REST credentials of ``user`` until ``expires_at``.

    Args:
        secret: the secret shared with the TURN server (coturn ``static-auth-secret``).
        user: who they are for (a participant id); a ``:`` would end the expiry early
            for a server that splits at the first one, so it is refused.
        expires_at: Unix seconds; rounded down (never later than asked).

    Returns:
        The username, the credential and the expiry.

    Raises:
        ValueError: an empty secret, or a user with a ``:``.
    """
    if not secret:
        raise ValueError("the TURN secret is empty")
    if ":" in user:
        raise ValueError(f"a TURN REST user cannot contain ':' ({user!r})")
    expiry = math.floor(expires_at)
    username = f"{expiry}:{user}"
    digest = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return TurnCredentials(username=username, credential=base64.b64encode(digest).decode("ascii"), expires_at=expiry)


def ice_servers_json(uris: Sequence[str], secret: str | None, user: str, expires_at: float) -> list[dict[str, Any]]:
    """``ice_servers`` of a join response or ``joined`` event (docs/protocol.md).

    Args:
        uris: the configured ``turn:``/``turns:`` URIs (empty: no TURN).
        secret: the shared secret (``None`` only when ``uris`` is empty).
        user: the participant id.
        expires_at: the session's expiry, Unix seconds.

    Returns:
        ``[]`` without TURN, else one ``RTCIceServer``-shaped object.
    """
    if not uris or not secret:
        return []
    credentials = turn_credentials(secret, user, expires_at)
    return [
        {
            "urls": list(uris),
            "username": credentials.username,
            "credential": credentials.credential,
            "expires_at": datetime.fromtimestamp(credentials.expires_at, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
    ]


__all__ = ["TurnCredentials", "ice_servers_json", "turn_credentials"]
