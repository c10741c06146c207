"""Which addresses the relay announces for media, and whether they are real.

A browser reaches the relay only at an address it can pair with one of its own
host candidates. Firefox with its default settings gathers candidates on the
default-route interface only (as mDNS names) and never pairs with loopback, so
a relay that announces only 127.0.0.1 is unreachable for it even on the same
machine. When media listens on every interface, the relay therefore announces
one host candidate per usable local address, loopback last (RFC 8445 §5.1.2:
the browser tries the higher-priority ones first).

:func:`announced_hosts` is the pure decision; :func:`local_addresses` and
:func:`is_local_address` ask the operating system (this is a shell module).
"""

from __future__ import annotations

import errno
import fcntl
import ipaddress
import socket
import struct
from collections.abc import Iterable, Sequence

from botcall.errors import StartupError

__all__ = ["announced_hosts", "bot_media_host", "check_announced", "is_local_address", "is_wildcard", "local_addresses"]

# Linux ioctls (<linux/sockios.h>): an interface's flags and its IPv4 address.
_SIOCGIFFLAGS = 0x8913
_SIOCGIFADDR = 0x8915
_IFF_UP = 0x1
_IFREQ = struct.Struct("256s")
_IFNAMSIZ = 16
# /proc/net/if_inet6 flags (<linux/if_addr.h>): not yet usable, or going away.
_IFA_F_TENTATIVE = 0x40
_IFA_F_DEPRECATED = 0x20
_IFA_F_DADFAILED = 0x08

_WILDCARDS = frozenset({"", "0.0.0.0", "::"})

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def is_wildcard(host: str) -> bool:
    """Whether a bind address means every interface (``0.0.0.0``, ``::``)."""
    return host in _WILDCARDS


def _usable(address: Address) -> bool:
    # Link-local addresses need a scope a candidate cannot carry; multicast and
    # unspecified addresses are never a host's own.
    return not (address.is_link_local or address.is_multicast or address.is_unspecified)


def announced_hosts(bind_host: str, advertised: Sequence[str], local: Iterable[str]) -> tuple[str, ...]:
    """The media addresses written as host candidates into SDP answers, best first.

    Args:
        bind_host: the address media listens on (an IP literal or a wildcard).
        advertised: addresses configured explicitly (``--media-advertised-host``);
            when given they are announced as they are, in their order.
        local: this machine's addresses (``local_addresses()``), used only when
            media listens on every interface.

    Returns:
        IP literals, without duplicates; loopback addresses after the others
        when taken from ``local``.
    """
    if advertised:
        return tuple(dict.fromkeys(advertised))
    if not is_wildcard(bind_host):
        return (bind_host,)
    # A socket bound to 0.0.0.0 receives IPv4 only; one bound to :: both (Linux
    # dual stack), but then IPv4 arrives mapped and is announced as IPv4 anyway.
    version = 6 if bind_host == "::" else 4
    candidates = []
    for text in local:
        address = ipaddress.ip_address(text)
        if (address.version == version or version == 6) and _usable(address):
            candidates.append(address)
    candidates.sort(key=lambda address: (address.is_loopback, address.version != 4))
    return tuple(dict.fromkeys(str(address) for address in candidates))


def bot_media_host(announced: Sequence[str], *, http_is_loopback: bool) -> str:
    """The media host put in bots' join responses.

    A bot can only join through the HTTP API: when that listens on loopback the
    bot is on this machine and loopback serves it best (no route, no firewall);
    otherwise the first announced address, the one a browser prefers too.

    Raises:
        ValueError: nothing is announced.
    """
    if not announced:
        raise ValueError("no media address to announce")
    if http_is_loopback:
        for host in announced:
            if ipaddress.ip_address(host).is_loopback:
                return host
    return announced[0]


def local_addresses() -> list[str]:
    """This machine's IP addresses on interfaces that are up (Linux), loopback included.

    Other systems get the address of the default route and loopback (the kernel
    picks the source of a connected UDP socket; nothing is sent).
    """
    found: list[str] = []
    for linux_source in (_ipv4_by_interface, _ipv6_from_proc):
        try:
            found += linux_source()
        except OSError:
            continue  # not Linux: the default route's address below still serves
    for family, probe, loopback in ((socket.AF_INET, "192.0.2.1", "127.0.0.1"), (socket.AF_INET6, "2001:db8::1", "::1")):
        found.append(loopback)
        try:
            with socket.socket(family, socket.SOCK_DGRAM) as sock:
                sock.connect((probe, 9))  # a documentation address: only the route is looked up
                found.append(sock.getsockname()[0])
        except OSError:
            continue  # no route in this family
    return [address for address in dict.fromkeys(found) if _parses(address)]


def _parses(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _ipv4_by_interface() -> list[str]:
    addresses = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for _, name in socket.if_nameindex():
            request = _IFREQ.pack(name.encode()[: _IFNAMSIZ - 1])
            try:
                flags = struct.unpack_from("H", fcntl.ioctl(sock.fileno(), _SIOCGIFFLAGS, request), _IFNAMSIZ)[0]
                if not flags & _IFF_UP:
                    continue
                reply = fcntl.ioctl(sock.fileno(), _SIOCGIFADDR, request)
            except OSError as exc:
                if exc.errno in (errno.EADDRNOTAVAIL, errno.ENODEV):
                    continue  # an interface with no IPv4 address, or gone meanwhile
                raise
            # struct ifreq: the name, then a sockaddr_in (family, port, address).
            addresses.append(socket.inet_ntoa(reply[_IFNAMSIZ + 4 : _IFNAMSIZ + 8]))
    return addresses


def _ipv6_from_proc() -> list[str]:
    addresses = []
    with open("/proc/net/if_inet6", encoding="ascii") as table:
        for line in table:
            fields = line.split()
            if len(fields) < 6 or len(fields[0]) != 32:
                continue
            if int(fields[4], 16) & (_IFA_F_TENTATIVE | _IFA_F_DEPRECATED | _IFA_F_DADFAILED):
                continue
            addresses.append(str(ipaddress.IPv6Address(bytes.fromhex(fields[0]))))
    return addresses


def is_local_address(host: str) -> bool:
    """Whether ``host`` (an IP literal) is an address of this machine: a UDP socket binds to it."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.bind((host, 0))
    except OSError:
        return False
    return True


def check_announced(configured: Sequence[tuple[str, str]]) -> None:
    """Refuse to start with an announced address that cannot reach this machine.

    A configured address that is not this machine's is accepted only when it
    is a public (global) one: the outside address of a NAT that forwards the
    media port here. Any other, a private address not on any interface (a typo,
    a stale lease), would give calls that never connect.

    Args:
        configured: ``(as written, IP literal)`` for each configured address.

    Raises:
        StartupError: naming the address.
    """
    for written, host in configured:
        if is_local_address(host) or ipaddress.ip_address(host).is_global:
            continue
        shown = host if written == host else f"{written} ({host})"
        raise StartupError(
            f"media address {shown} is not an address of this machine, nor a public one a NAT could forward; "
            "change --media-advertised-host (or --media-host)"
        )
