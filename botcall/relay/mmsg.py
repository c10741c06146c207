"""Batched UDP system calls: ``recvmmsg(2)`` and ``sendmmsg(2)`` through ctypes.

Python's ``socket`` module has neither call, and a compiled helper would add a
build step to the set-up; ctypes reaches them in the C library as it is. One
``recvmmsg`` reads up to ``RECV_BATCH`` datagrams into preallocated buffers, one
``sendmmsg`` sends up to ``SEND_BATCH``: the kernel entry and exit, and
Python's call overhead, are paid once per batch instead of once per datagram.

The per-datagram Python work is kept allocation-light:

* the kernel's ``mmsghdr`` results (length, flags, address length) are read
  for a whole batch with one ``struct.iter_unpack``;
* a source address is decoded once per distinct raw ``sockaddr`` and the
  ``Address`` tuple is cached (bounded), so a latched peer's packets all
  carry the same tuple object, as the relay's dict lookups like;
* a datagram to send is passed to the kernel by the address of its ``bytes``
  buffer (CPython lays ``bytes`` out as a fixed header followed by the data;
  checked once at import, with a slower ctypes way as the fallback), so
  nothing is copied before the kernel copies it.

``BatchedUdp.open`` returns ``None`` where the C library lacks the calls (not
Linux, no ctypes): the transport then reads with ``recvfrom`` and sends with
``sendto``, as it did before.

Addresses are exactly what ``socket.recvfrom`` gives: ``(host, port)`` on an
IPv4 socket, ``(host, port, flowinfo, scope_id)`` on an IPv6 one (the scope in
the fourth item only, as CPython's ``recvfrom`` gives it).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import socket
import struct
import sys
from typing import Any, Container, Iterator

from botcall.relay.core import MAX_DATAGRAM, Address

# Datagrams per recvmmsg call: tens of them, so one call serves a busy
# wakeup; each slot holds MAX_DATAGRAM bytes (a longer datagram is cut and
# flagged MSG_TRUNC, which the caller counts as oversized).
RECV_BATCH = 64
# Datagrams per sendmmsg call (the kernel caps a call at UIO_MAXIOV = 1024).
SEND_BATCH = 256
# Distinct raw source addresses whose decoded tuples are kept. Beyond it the
# cache starts again empty: a flood of spoofed sources costs a decode each,
# never memory.
ADDRESS_CACHE_SIZE = 16384

MSG_DONTWAIT = 0x40  # Linux <bits/socket.h>
MSG_TRUNC = 0x20

# struct iovec { void *iov_base; size_t iov_len; }
_IOVEC = struct.Struct("<QQ")
# struct mmsghdr { struct msghdr msg_hdr; unsigned int msg_len; } on LP64
# Linux: msg_name(8) msg_namelen(4) pad(4) msg_iov(8) msg_iovlen(8)
# msg_control(8) msg_controllen(8) msg_flags(4) pad(4) msg_len(4) pad(4).
MMSGHDR_SIZE = 64
# The fields the kernel fills on receive: msg_namelen, msg_flags, msg_len.
_RECEIVED = struct.Struct("<8xI36xi4xI4x")
# The fields set per datagram on send: msg_name, msg_namelen.
_SEND_NAME = struct.Struct("<QI")
# msg_name, msg_namelen, msg_iov, msg_iovlen; control fields stay zero.
_HEADER = struct.Struct("<QI4xQQ")
# Big enough for sockaddr_in (16) and sockaddr_in6 (28).
NAME_SIZE = 32
# The family is in host order (_FAMILY); the rest in network order.
_SOCKADDR_IN = struct.Struct("!2xH4s8x")
# sin6_port and sin6_flowinfo are in network order, sin6_scope_id in host order.
_SOCKADDR_IN6 = struct.Struct("!2xHI16s4x")
_SCOPE_ID = struct.Struct("=24xI")
_FAMILY = struct.Struct("=H")


class _Bytes:
    """Where a ``bytes`` object's data starts, relative to ``id()``."""

    offset: int | None = None


def _bytes_data_offset() -> int | None:
    """CPython's ``bytes`` header size if ``id(b) + it`` addresses the data, else None."""
    if sys.implementation.name != "cpython":
        return None
    probe = b"botcall-probe-\x00\x01\x02"
    offset = sys.getsizeof(b"") - 1  # the header; the 1 is the trailing NUL
    try:
        if ctypes.string_at(id(probe) + offset, len(probe)) == probe:
            return offset
    except (ValueError, OSError):  # pragma: no cover - a different runtime
        pass
    return None  # pragma: no cover


_Bytes.offset = _bytes_data_offset()


def _libc_calls() -> tuple[Any, Any] | None:
    """``recvmmsg`` and ``sendmmsg`` from the C library, or None if it lacks them."""
    if not sys.platform.startswith("linux") or struct.calcsize("P") != 8:
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        recvmmsg, sendmmsg = libc.recvmmsg, libc.sendmmsg
    except (OSError, AttributeError):
        return None
    recvmmsg.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int, ctypes.c_void_p]
    recvmmsg.restype = ctypes.c_int
    sendmmsg.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int]
    sendmmsg.restype = ctypes.c_int
    return recvmmsg, sendmmsg


def _decode_address(raw: bytes) -> Address:
    """A raw ``sockaddr_in``/``sockaddr_in6`` as ``socket.recvfrom`` would give it."""
    family = _FAMILY.unpack_from(raw)[0]
    if family == socket.AF_INET:
        port, packed = _SOCKADDR_IN.unpack_from(raw)
        return (socket.inet_ntop(socket.AF_INET, packed), port)
    if family == socket.AF_INET6:
        port, flowinfo, packed = _SOCKADDR_IN6.unpack_from(raw)
        scope_id = _SCOPE_ID.unpack_from(raw)[0]
        host = socket.inet_ntop(socket.AF_INET6, packed)
        # socket.recvfrom gives a 4-tuple on an IPv6 socket; the relay keys
        # peers by what the socket module gives, so this must match it.
        address: Address = (host, port, flowinfo, scope_id)  # type: ignore[assignment]
        return address
    raise ValueError(f"address family {family}")


def _encode_address(family: int, addr: Address) -> bytes:
    """``addr`` (as ``socket.sendto`` takes it) as a raw sockaddr for ``family``.

    Raises:
        OSError, ValueError, TypeError, IndexError: not an address of that family.
    """
    host = addr[0]
    port = addr[1]
    if family == socket.AF_INET:
        return _FAMILY.pack(socket.AF_INET) + _SOCKADDR_IN.pack(port, socket.inet_pton(socket.AF_INET, host))[2:]
    flowinfo = addr[2] if len(addr) > 2 else 0
    scope_id = addr[3] if len(addr) > 3 else 0
    if "%" in host:
        host, _, scope = host.partition("%")
        scope_id = int(scope) if scope.isdigit() else socket.if_nametoindex(scope)
    if ":" not in host:
        host = "::ffff:" + host  # an IPv4 peer of a dual-stack socket
    packed = socket.inet_pton(socket.AF_INET6, host)
    return _FAMILY.pack(socket.AF_INET6) + _SOCKADDR_IN6.pack(port, flowinfo, packed)[2:24] + _SCOPE_ID.pack(scope_id)[24:]


class BatchedUdp:
    """``recvmmsg``/``sendmmsg`` on one UDP socket, with preallocated buffers.

    Make one with :meth:`open`. Not thread-safe: one owner calls it.
    """

    def __init__(self, sock: socket.socket, recvmmsg: Any, sendmmsg: Any) -> None:
        self._fd = sock.fileno()
        self._family = sock.family
        self._recvmmsg = recvmmsg
        self._sendmmsg = sendmmsg
        # --- receive side: RECV_BATCH slots of MAX_DATAGRAM bytes, their
        # source addresses, their iovecs and headers, all allocated once.
        self._data = ctypes.create_string_buffer(RECV_BATCH * MAX_DATAGRAM)
        self._names = ctypes.create_string_buffer(RECV_BATCH * NAME_SIZE)
        self._recv_iov = ctypes.create_string_buffer(RECV_BATCH * _IOVEC.size)
        self._recv_headers = ctypes.create_string_buffer(RECV_BATCH * MMSGHDR_SIZE)
        data_at, names_at = ctypes.addressof(self._data), ctypes.addressof(self._names)
        iov_at = ctypes.addressof(self._recv_iov)
        for slot in range(RECV_BATCH):
            _IOVEC.pack_into(self._recv_iov, slot * _IOVEC.size, data_at + slot * MAX_DATAGRAM, MAX_DATAGRAM)
            _HEADER.pack_into(
                self._recv_headers, slot * MMSGHDR_SIZE, names_at + slot * NAME_SIZE, NAME_SIZE, iov_at + slot * _IOVEC.size, 1
            )
        # The kernel overwrites msg_namelen with each address's length:
        # restore every header in one copy before each call.
        self._recv_template = self._recv_headers.raw
        data_view = memoryview(self._data).cast("B")
        self.slot_views = [data_view[slot * MAX_DATAGRAM : (slot + 1) * MAX_DATAGRAM] for slot in range(RECV_BATCH)]
        self.headers_view = memoryview(self._recv_headers).cast("B")
        self.names_view = memoryview(self._names).cast("B")
        # A raw 32-byte name slot as the cache key: on one socket the kernel
        # always writes the same sockaddr size, and the slot's tail beyond it
        # is never written, so equal peers give equal keys.
        self.iter_names = struct.Struct(f"{NAME_SIZE}s").iter_unpack
        self.iter_headers = _RECEIVED.iter_unpack
        self.addresses: dict[bytes, Address] = {}
        # --- send side: SEND_BATCH headers, each with its own iovec.
        self._send_iov = ctypes.create_string_buffer(SEND_BATCH * _IOVEC.size)
        self._send_headers = ctypes.create_string_buffer(SEND_BATCH * MMSGHDR_SIZE)
        send_iov_at = ctypes.addressof(self._send_iov)
        for slot in range(SEND_BATCH):
            _HEADER.pack_into(self._send_headers, slot * MMSGHDR_SIZE, 0, 0, send_iov_at + slot * _IOVEC.size, 1)
        self._recv_headers_at = ctypes.addressof(self._recv_headers)
        self._send_headers_at = ctypes.addressof(self._send_headers)
        #: Raw sockaddr per destination: (its buffer, its address, its length).
        self.destinations: dict[Address, tuple[object, int, int]] = {}
        self._bytes_offset = _Bytes.offset

    @classmethod
    def open(cls, sock: socket.socket) -> BatchedUdp | None:
        """Batched calls on ``sock`` (IPv4 or IPv6 UDP), or None where libc lacks them."""
        calls = _libc_calls()
        if calls is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
            return None
        return cls(sock, *calls)

    # --- receive -----------------------------------------------------------------

    def receive(self) -> int:
        """Read up to ``RECV_BATCH`` waiting datagrams without blocking.

        Returns:
            How many were read (see :meth:`received`).

        Raises:
            BlockingIOError: nothing is waiting.
            OSError: the call failed (a pending ICMP error, for instance).
        """
        self.headers_view[:] = self._recv_template
        count: int = self._recvmmsg(self._fd, self._recv_headers_at, RECV_BATCH, MSG_DONTWAIT, None)
        if count < 0:
            code = ctypes.get_errno()
            if code in (errno.EAGAIN, errno.EWOULDBLOCK):
                raise BlockingIOError(code, "recvmmsg would block")
            raise OSError(code, f"recvmmsg: {errno.errorcode.get(code, code)}")
        return count

    def received(self, count: int) -> Iterator[tuple[bytes | None, Address | None]]:
        """The last :meth:`receive`'s datagrams: ``(data, source)`` in arrival order.

        ``data`` is None for a datagram longer than ``MAX_DATAGRAM`` (cut by the
        kernel, MSG_TRUNC); both are None for a source address of a family the
        relay does not serve (which a UDP socket of ours never reports).
        """
        addresses = self.addresses
        for (namelen, flags, length), (raw,), view in zip(
            self.iter_headers(self.headers_view[: count * MMSGHDR_SIZE]),
            self.iter_names(self.names_view[: count * NAME_SIZE]),
            self.slot_views,
        ):
            addr = addresses.get(raw)
            if addr is None:
                addr = self.learn_address(raw, namelen)
                if addr is None:
                    yield None, None
                    continue
            if flags & MSG_TRUNC:
                yield None, addr
            else:
                yield view[:length].tobytes(), addr

    def learn_address(self, raw: bytes, namelen: int) -> Address | None:
        """Decode a raw source address and cache it (bounded); None for a family we do not serve."""
        try:
            addr = _decode_address(raw[:namelen])
        except (ValueError, struct.error, OSError):
            return None
        if len(self.addresses) >= ADDRESS_CACHE_SIZE:
            self.addresses.clear()
        self.addresses[raw] = addr
        return addr

    # --- send --------------------------------------------------------------------

    def destination(self, addr: Address) -> tuple[object, int, int]:
        """The raw sockaddr for ``addr`` (cached, bounded).

        Raises:
            OSError, ValueError, TypeError, IndexError: ``addr`` is no address
                of the socket's family.
        """
        entry = self.destinations.get(addr)
        if entry is None:
            raw = _encode_address(self._family, addr)
            if len(self.destinations) >= ADDRESS_CACHE_SIZE:
                self.destinations.clear()
            buffer = ctypes.create_string_buffer(raw, len(raw))
            # Keep the ctypes buffer alive with the entry: its address is used.
            entry = self.destinations[addr] = (buffer, ctypes.addressof(buffer), len(raw))
        return entry

    def pack(self, datagrams: list[bytes], destinations: list[Address], start: int, end: int, backlog: Container[Address]) -> int:
        """Lay ``datagrams[start:end]`` (at most ``SEND_BATCH``) out for :meth:`send_packed`.

        Stops early at a datagram whose destination is in ``backlog`` (it must
        queue behind it) or has no cached sockaddr yet (see :meth:`destination`).
        Every datagram must be a ``bytes`` object, kept alive until sent.

        Returns:
            The index of the first datagram not laid out.
        """
        end = min(end, start + SEND_BATCH)
        headers, iov = self._send_headers, self._send_iov
        pack_name, pack_iov = _SEND_NAME.pack_into, _IOVEC.pack_into
        cached = self.destinations.get
        offset = self._bytes_offset
        header_at = 0
        iov_at = 0
        index = start
        while index < end:
            addr = destinations[index]
            if backlog and addr in backlog:
                break
            entry = cached(addr)
            if entry is None:
                break
            data = datagrams[index]
            pack_name(headers, header_at, entry[1], entry[2])
            if offset is not None:
                pack_iov(iov, iov_at, id(data) + offset, len(data))
            else:  # pragma: no cover - not CPython
                pack_iov(iov, iov_at, ctypes.cast(ctypes.c_char_p(data), ctypes.c_void_p).value or 0, len(data))
            header_at += MMSGHDR_SIZE
            iov_at += _IOVEC.size
            index += 1
        return index

    def send_packed(self, first: int, count: int) -> int:
        """Send ``count`` datagrams laid out by :meth:`pack`, from its ``first`` slot on.

        Returns:
            How many were sent (at least 1).

        Raises:
            BlockingIOError: the socket's send buffer is full (none was sent).
            OSError: the datagram in slot ``first`` was refused (none was sent).
        """
        sent: int = self._sendmmsg(self._fd, self._send_headers_at + first * MMSGHDR_SIZE, count, MSG_DONTWAIT)
        if sent < 0:
            code = ctypes.get_errno()
            if code in (errno.EAGAIN, errno.EWOULDBLOCK):
                raise BlockingIOError(code, "sendmmsg would block")
            raise OSError(code, f"sendmmsg: {errno.errorcode.get(code, code)}")
        return sent

    def send(self, datagrams: list[bytes], destinations: list[Address], start: int, end: int) -> int:
        """:meth:`pack` then :meth:`send_packed` (no backlog): one ``sendmmsg``.

        Returns:
            How many were sent, from ``start`` on (at least 1).

        Raises:
            BlockingIOError, OSError: as :meth:`send_packed`.
        """
        packed = self.pack(datagrams, destinations, start, end, ())
        return self.send_packed(0, packed - start)
