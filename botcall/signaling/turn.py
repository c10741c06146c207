"""Short-lived TURN credentials in the TURN REST scheme (sans-IO).

draft-uberti-behave-turn-rest-00 §2.2, as coturn implements it with
``use-auth-secret`` and ``static-auth-secret``: the username is
``"<expiry>:<user>"`` (the expiry in Unix seconds) and the password is
``base64(HMAC-SHA1(secret, username))``. The TURN server recomputes the
password from the username and refuses a username whose expiry has passed,
so nobody stores per-user credentials and a leaked credential dies with its
session. Pure: no clock, no sockets (the caller passes the expiry).

``TurnRelays`` tells whether a latched address is a configured TURN server's
(``botcall_browser_legs{path}`` in ``/metrics``); the caller resolves the names.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from botcall.config import TURN_URI
from botcall.signaling.messages import timestamp_fields


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
        ``[]`` without TURN, else one ``RTCIceServer``-shaped object; its expiry as
        ``expires_at`` (RFC 3339 on both channels, its old form), ``expires_at_unix``
        and ``expires_at_iso`` (docs/protocol.md, "Timestamps").
    """
    if not uris or not secret:
        return []
    credentials = turn_credentials(secret, user, expires_at)
    return [
        {
            "urls": list(uris),
            "username": credentials.username,
            "credential": credentials.credential,
            **timestamp_fields("expires_at", credentials.expires_at, legacy="iso"),
        }
    ]


IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def turn_uri_host(uri: str) -> str:
    """The host of a ``turn:``/``turns:`` URI (RFC 7065 §3.1), an IPv6 literal without its brackets.

    Args:
        uri: a URI ``config.TURN_URI`` accepts, e.g. ``turns:[2001:db8::1]:5349?transport=tcp``.
    """
    parsed = TURN_URI.fullmatch(uri)
    assert parsed is not None, "the configuration checked it"
    return parsed["ipv6"] or parsed["host"]


def _ip_or_none(text: str) -> IpAddress | None:
    """``text`` as an IP address, an IPv4-mapped IPv6 one as its IPv4 (a dual-stack
    socket reports IPv4 peers so); None when it is not an IP literal."""
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


@dataclass(frozen=True, slots=True)
class TurnRelays:
    """The addresses the configured TURN servers relay from, as the relay sees them.

    A browser that can only use TURN sends its checks and media from its TURN
    server's relayed address (docs/protocol.md, "TURN: ``ice_servers``"). A TURN
    server relays from its own address (coturn's ``relay-ip``, or the
    ``external-ip`` a NAT maps it to), which its URI names: so a leg latched at
    an IP of a configured TURN URI's host went through TURN. The port cannot
    tell (relayed ports are the TURN server's own choice, ``min-port``–``max-port``).

    Attributes:
        ips: the configured TURN hosts' IP addresses (empty: no TURN).
    """

    ips: frozenset[IpAddress] = frozenset()

    @classmethod
    def from_uris(cls, uris: Iterable[str], resolve: Callable[[str], Iterable[str]]) -> TurnRelays:
        """The relays of ``uris``, each host resolved with ``resolve`` (a name may have several addresses).

        Args:
            uris: the configured TURN URIs.
            resolve: a host's IP addresses as text (the caller's resolver; an IP literal
                should come back as itself).
        """
        ips = {ip for uri in uris for text in resolve(turn_uri_host(uri)) if (ip := _ip_or_none(text)) is not None}
        return cls(frozenset(ips))

    def relays(self, addr: tuple[str, int]) -> bool:
        """Whether ``addr`` (a latched peer address) is at a configured TURN server's address."""
        return bool(self.ips) and _ip_or_none(addr[0]) in self.ips


__all__ = ["TurnCredentials", "TurnRelays", "ice_servers_json", "turn_credentials", "turn_uri_host"]
