"""Who the client is: the socket's peer, or what a trusted proxy says (sans-IO).

Rate limits and connection budgets are per client address. Behind a reverse
proxy every request comes from the proxy, so its ``Forwarded`` (RFC 7239) or
``X-Forwarded-For`` header names the client — but anyone can send those
headers, so they are believed only when the socket's peer is in
``Config.trusted_proxies``. The chain is read from the right (the hop nearest
to us) past every trusted proxy; the first address that is not one is the
client, so a client cannot pick its own address by prepending entries.
"""

from __future__ import annotations

import ipaddress
from typing import Protocol

Network = ipaddress.IPv4Network | ipaddress.IPv6Network



class HeaderLookup(Protocol):
    """Request headers as read here: a ``Mapping[str, str]`` or werkzeug's ``Headers``."""

    def get(self, key: str, /) -> str | None: ...


# Hops read from a forwarding header; a longer chain is cut (work per request stays bounded).
MAX_HOPS = 32


def is_trusted(address: str, networks: tuple[Network, ...]) -> bool:
    """Whether ``address`` (text) is in one of ``networks``; not an address: False."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in networks)


def _parse_node(value: str) -> str | None:
    """An address from a ``for=`` node (RFC 7239 §6) or an X-Forwarded-For entry, or None."""
    value = value.strip().strip('"')
    if value.startswith("["):  # "[2001:db8::1]:4711"
        value = value[1:].partition("]")[0]
    elif value.count(":") == 1:  # "192.0.2.60:4711"
        value = value.partition(":")[0]
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        return None  # "unknown", an obfuscated identifier, or garbage


def _forwarded_chain(headers: HeaderLookup) -> list[str | None] | None:
    forwarded = headers.get("forwarded")
    if forwarded is not None:
        chain: list[str | None] = []
        for element in forwarded.split(",")[-MAX_HOPS:]:
            node = None
            for pair in element.split(";"):
                name, _, value = pair.partition("=")
                if name.strip().lower() == "for":
                    node = _parse_node(value)
            chain.append(node)
        return chain
    xff = headers.get("x-forwarded-for")
    if xff is not None:
        return [_parse_node(entry) for entry in xff.split(",")[-MAX_HOPS:]]
    return None


def client_address(peer: str | None, headers: HeaderLookup, trusted: tuple[Network, ...]) -> str:
    """The client's address for budgets and logs.

    Args:
        peer: the socket peer's address (None when unknown).
        headers: request headers, names lower-case.
        trusted: networks of trusted proxies.

    Returns:
        ``peer`` unless it is a trusted proxy that forwarded a client address.
    """
    address = peer or "unknown"
    if not trusted or not is_trusted(address, trusted):
        return address
    chain = _forwarded_chain(headers)
    if not chain:
        return address
    for node in reversed(chain):
        if node is None:
            return address  # an unreadable hop: trust nothing beyond it
        if not is_trusted(node, trusted):
            return node
    return chain[0] or address


__all__ = ["MAX_HOPS", "client_address", "is_trusted"]
