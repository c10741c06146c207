"""SRTP and SRTCP contexts (RFC 3711) over pylibsrtp, keyed by DTLS-SRTP (RFC 5764).

A browser leg has one ``SrtpContext``: an outbound libsrtp session that protects
what the relay sends toward the browser and an inbound session that checks what
the browser sends. Both sessions use the ``SSRC_ANY_*`` wildcard policies, so
libsrtp creates one stream per SSRC on first use.

Streams per SSRC
    libsrtp 2.7 (the version pylibsrtp 1.0 bundles) has no limit of its own on
    the streams of a session: each new SSRC clones the template stream (its
    own cipher contexts, rollover counter and replay window) and the session
    keeps growing. An outbound stream is created by the first ``protect`` of an
    SSRC; an inbound stream only after the first packet of that SSRC has
    authenticated, so only the key holder can create inbound streams. libsrtp
    2.7 finds a packet's stream by walking a list, newest stream first, so the
    cost of a lookup grows with the number of streams: measured on this
    machine, protect of a 172-byte packet of the *oldest* SSRC takes ~2 µs with
    1-100 streams, ~4 µs with 1000 and ~48 µs with 10000 (newest SSRC: ~2 µs
    throughout); 10000 stream pairs took ~5.6 MB. We therefore
    bound both directions with ``max_streams`` (a relay sends one SSRC per
    speaker toward a browser; a browser sends one or two): a packet that would
    need a stream beyond the limit raises ``SrtpError`` with counter
    ``srtp_too_many_streams``. Streams are never evicted silently, because a
    re-created stream restarts its rollover counter at zero and would desync
    from the peer after a sequence-number wrap; ``remove_outbound_ssrc`` frees
    a stream explicitly when a speaker leaves.

Repeated indexes
    Outbound replay protection stays on (libsrtp's ``allow_repeat_tx`` off):
    protecting two packets with the same SSRC and sequence number would reuse a
    keystream, which for AES-GCM also leaks the authentication key. A
    duplicate handed to ``protect`` raises ``SrtpError`` (counter
    ``srtp_protect_failed``) and is not sent.

One buffer for every context (single-threaded)
    libsrtp protects and unprotects in place. pylibsrtp's ``Session.protect``
    allocates a fresh ``int *`` and copies through a 1,500-byte buffer of its
    own session on every call (two buffers per browser leg); this module calls
    ``srtp_protect`` / ``srtp_unprotect`` and their RTCP forms through
    pylibsrtp's cffi binding (``pylibsrtp._binding``) with *one* module-level
    1,500-byte buffer and *one* length cell shared by all contexts, and reads
    the result out as a new ``bytes``. That is sound only because nothing else
    can run between the copy in and the copy out: the relay is one thread (one
    ``trio.run``) and these calls never yield. Do not call a context from
    another thread. The size limits stay pylibsrtp's (1,500 bytes, less the
    largest trailer when protecting), so behaviour does not depend on which
    path does the copying. Measured with ``bench/srtp_hot_path.py``: the
    direct calls save ~0.7-1 µs per SRTP packet with 500 browser legs.

Every function that takes bytes from the network ends in ``_untrusted`` and
raises only ``SrtpError``; ``protect`` and ``protect_rtcp`` raise only
``SrtpError`` as well, so the relay can count and drop with one ``except``.
"""

from __future__ import annotations

import struct
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Protocol

import pylibsrtp  # importing it runs srtp_init() once per process
# A compiled cffi module with no stub: ``_ffi`` and ``_lib`` are Any, so what
# the hot path takes from them is annotated below.
from pylibsrtp._binding import ffi as _ffi, lib as _lib  # type: ignore[import-not-found]

from botcall.errors import SrtpError

__all__ = [
    "DEFAULT_MAX_STREAMS",
    "libsrtp_function_addresses",
    "LibsrtpStatus",
    "SrtpContext",
    "SrtpKeys",
    "SrtpProfile",
]

DEFAULT_MAX_STREAMS = 64
"""Streams per direction of one SRTP context (one per SSRC)."""

# The shared in-place buffer (see the module docstring). 1,500 bytes, as
# pylibsrtp's per-session buffer, so the accepted sizes are unchanged.
_LIBSRTP_BUFFER = 1500
_SRTP_MAX_TRAILER = 16 + 128  # SRTP_MAX_TAG_LEN + SRTP_MAX_MKI_LEN
_SRTCP_MAX_TRAILER = 4 + 16 + 128  # + the SRTCP index (RFC 3711 §3.4)
_MAX_RTP_TO_PROTECT = _LIBSRTP_BUFFER - _SRTP_MAX_TRAILER
_MAX_RTCP_TO_PROTECT = _LIBSRTP_BUFFER - _SRTCP_MAX_TRAILER

_RTP_HEADER_SIZE = 12  # RFC 3550 §5.1
_RTCP_HEADER_SIZE = 8  # RFC 3550 §6.4.1: V/P/RC, PT, length, sender SSRC
_SRTCP_INDEX_SIZE = 4  # E flag + 31-bit SRTCP index (RFC 3711 §3.4)

# The SSRC sits at byte 8 of an RTP header and at byte 4 of an RTCP packet.
_RTP_SSRC = struct.Struct("!8xI")
_RTCP_SSRC = struct.Struct("!4xI")
# RFC 3550 §5.1: V/P/X/CC, M/PT, sequence number, timestamp, SSRC.
_RTP_FIXED_HEADER = struct.Struct("!BBHII")

# cffi ships no type hints. Its cdata objects (an ``srtp_t``, a policy) are
# opaque handles here, typed ``object``; the few we index are typed by what
# indexing them gives.
_SrtpSession = object
"""An ``srtp_t`` (libsrtp session) owned by ``ffi.gc``."""
_LibsrtpCall = Callable[[_SrtpSession, object, object], int]
"""``srtp_protect`` and its siblings: (session, buffer, ``int *`` length) -> ``srtp_err_status_t``."""


class _CopyOut(Protocol):
    """A cffi buffer: slicing copies the bytes out."""

    def __getitem__(self, index: slice, /) -> bytes: ...


class _IntCell(Protocol):
    """A cffi ``int *``: ``cell[0]`` reads and writes the int."""

    def __getitem__(self, index: int, /) -> int: ...

    def __setitem__(self, index: int, value: int, /) -> None: ...


# Shared by every context; safe because the relay is single-threaded and a
# call copies in, runs libsrtp and copies out without yielding.
_buffer = _ffi.new("unsigned char[]", _LIBSRTP_BUFFER)
_buffer_in = memoryview(_ffi.buffer(_buffer))  # slice assignment: the fastest copy in
_buffer_out: _CopyOut = _ffi.buffer(_buffer)  # slicing gives bytes: the fastest copy out
_length: _IntCell = _ffi.new("int *")
_srtp_protect: _LibsrtpCall = _lib.srtp_protect
_srtp_unprotect: _LibsrtpCall = _lib.srtp_unprotect
_srtp_protect_rtcp: _LibsrtpCall = _lib.srtp_protect_rtcp
_srtp_unprotect_rtcp: _LibsrtpCall = _lib.srtp_unprotect_rtcp


class LibsrtpStatus(IntEnum):
    """``srtp_err_status_t`` (libsrtp 2.x, include/srtp.h): what a libsrtp call returns."""

    OK = 0
    FAIL = 1
    BAD_PARAM = 2
    ALLOC_FAIL = 3
    DEALLOC_FAIL = 4
    INIT_FAIL = 5
    TERMINUS = 6
    AUTH_FAIL = 7  # the tag does not verify (RFC 3711 §3.3)
    CIPHER_FAIL = 8
    REPLAY_FAIL = 9  # index already seen (RFC 3711 §3.3.2)
    REPLAY_OLD = 10  # index left of the replay window (RFC 3711 §3.3.2)
    ALGO_FAIL = 11
    NO_SUCH_OP = 12
    NO_CTX = 13
    CANT_CHECK = 14
    KEY_EXPIRED = 15
    SOCKET_ERR = 16
    SIGNAL_ERR = 17
    NONCE_BAD = 18
    READ_FAIL = 19
    WRITE_FAIL = 20
    PARSE_ERR = 21
    ENCODE_ERR = 22
    SEMAPHORE_ERR = 23
    PFKEY_ERR = 24
    BAD_MKI = 25
    PKT_IDX_OLD = 26  # index too old to consider (RFC 3711 §3.3.1)
    PKT_IDX_ADV = 27



def _network_order(value: int) -> int:
    """``htonl``: the 32-bit ``value`` as libsrtp reads it from memory (big-endian)."""
    return int.from_bytes(value.to_bytes(4, "big"), sys.byteorder)

def _status_text(status: int) -> str:
    """A libsrtp status for a log line: its name and number."""
    try:
        return f"{LibsrtpStatus(status).name.lower()} ({status})"
    except ValueError:
        return f"libsrtp status {status}"


class SrtpProfile(IntEnum):
    """DTLS-SRTP protection profiles (RFC 5764 §4.1.2, RFC 7714 §14.2)."""

    AES128_CM_HMAC_SHA1_80 = 0x0001  # RFC 5764 §4.1.2
    AEAD_AES_128_GCM = 0x0007  # RFC 7714 §14.2
    AEAD_AES_256_GCM = 0x0008  # RFC 7714 §14.2

    @property
    def key_length(self) -> int:
        """Master key length in bytes."""
        return _PROFILE_PARAMETERS[self][0]

    @property
    def salt_length(self) -> int:
        """Master salt length in bytes (RFC 5764 §4.1.2; RFC 7714 §12: 96 bits)."""
        return _PROFILE_PARAMETERS[self][1]

    @property
    def tag_length(self) -> int:
        """Authentication tag appended to every SRTP packet, in bytes."""
        return _PROFILE_PARAMETERS[self][2]

    @property
    def openssl_name(self) -> bytes:
        """The name OpenSSL's ``use_srtp`` extension uses for this profile."""
        return _PROFILE_PARAMETERS[self][3]

    @property
    def libsrtp_profile(self) -> int:
        """The matching ``pylibsrtp.Policy.SRTP_PROFILE_*`` constant."""
        return _PROFILE_PARAMETERS[self][4]

    @classmethod
    def from_openssl_name(cls, name: bytes) -> SrtpProfile | None:
        """The profile OpenSSL reports as negotiated, or ``None`` if we do not know it."""
        return _PROFILE_BY_OPENSSL_NAME.get(name)


# profile: (key length, salt length, tag length, OpenSSL name, libsrtp profile)
_PROFILE_PARAMETERS: dict[SrtpProfile, tuple[int, int, int, bytes, int]] = {
    SrtpProfile.AES128_CM_HMAC_SHA1_80: (
        16,
        14,
        10,
        b"SRTP_AES128_CM_SHA1_80",
        pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_80,
    ),
    SrtpProfile.AEAD_AES_128_GCM: (
        16,
        12,
        16,
        b"SRTP_AEAD_AES_128_GCM",
        pylibsrtp.Policy.SRTP_PROFILE_AEAD_AES_128_GCM,
    ),
    SrtpProfile.AEAD_AES_256_GCM: (
        32,
        12,
        16,
        b"SRTP_AEAD_AES_256_GCM",
        pylibsrtp.Policy.SRTP_PROFILE_AEAD_AES_256_GCM,
    ),
}
_PROFILE_BY_OPENSSL_NAME = {params[3]: profile for profile, params in _PROFILE_PARAMETERS.items()}


@dataclass(frozen=True, slots=True)
class SrtpKeys:
    """The SRTP master keys one DTLS-SRTP handshake produced, from our side's view.

    ``local_key_salt`` protects what we send, ``remote_key_salt`` checks what the
    peer sends; each is the master key followed by the master salt. The keys
    are kept out of ``repr`` so they never land in a log line.

    Raises:
        ValueError: a key+salt is not ``profile.key_length + profile.salt_length`` bytes.
    """

    profile: SrtpProfile
    local_key_salt: bytes = field(repr=False)
    remote_key_salt: bytes = field(repr=False)

    def __post_init__(self) -> None:
        expected = self.profile.key_length + self.profile.salt_length
        if len(self.local_key_salt) != expected or len(self.remote_key_salt) != expected:
            raise ValueError(f"{self.profile.name} needs {expected}-byte key+salt values")

    @classmethod
    def from_keying_material(cls, profile: SrtpProfile, material: bytes, *, is_client: bool) -> SrtpKeys:
        """Split the DTLS exporter output into our keys and the peer's.

        Args:
            profile: the negotiated protection profile.
            material: ``2 * (key_length + salt_length)`` bytes exported with the
                label ``EXTRACTOR-dtls_srtp``, laid out as client key, server
                key, client salt, server salt (RFC 5764 §4.2).
            is_client: whether we were the DTLS client.

        Returns:
            The keys, local first for our role.

        Raises:
            ValueError: ``material`` has the wrong length.
        """
        key_len, salt_len = profile.key_length, profile.salt_length
        if len(material) != 2 * (key_len + salt_len):
            raise ValueError(f"{profile.name} needs {2 * (key_len + salt_len)} bytes of keying material")
        client_key = material[:key_len]
        server_key = material[key_len : 2 * key_len]
        client_salt = material[2 * key_len : 2 * key_len + salt_len]
        server_salt = material[2 * key_len + salt_len :]
        client, server = client_key + client_salt, server_key + server_salt
        if is_client:
            return cls(profile, client, server)
        return cls(profile, server, client)


_REPLAY_STATUSES = frozenset({LibsrtpStatus.REPLAY_FAIL, LibsrtpStatus.REPLAY_OLD, LibsrtpStatus.PKT_IDX_OLD})


def _unprotect_error(what: str, status: int) -> SrtpError:
    """The ``SrtpError`` for a failed unprotect, with the drop counter of its cause."""
    if status in _REPLAY_STATUSES:
        counter = "srtp_replay"
    elif status == LibsrtpStatus.AUTH_FAIL:
        counter = "srtp_auth_failed"
    else:
        counter = "srtp_unprotect_failed"
    return SrtpError(f"{what} failed: {_status_text(status)}", counter=counter)


def _new_session(profile: SrtpProfile, key_salt: bytes, ssrc_type: int) -> _SrtpSession:
    """A libsrtp session (``srtp_t``) with one wildcard-SSRC policy, freed with its cdata.

    Raises:
        ValueError: libsrtp refused the policy.
    """
    policy = _ffi.new("srtp_policy_t *")  # zeroed: default replay window, no repeated tx
    for set_policy, crypto_policy in (
        (_lib.srtp_crypto_policy_set_from_profile_for_rtp, policy.rtp),
        (_lib.srtp_crypto_policy_set_from_profile_for_rtcp, policy.rtcp),
    ):
        status = set_policy(_ffi.addressof(crypto_policy), profile.libsrtp_profile)
        if status:
            raise ValueError(f"libsrtp has no {profile.name}: {_status_text(status)}")
    key = _ffi.new("unsigned char[]", key_salt)  # libsrtp copies it into the session
    policy.key = key
    policy.ssrc.type = ssrc_type
    holder = _ffi.new("srtp_t *")
    status = _lib.srtp_create(holder, policy)
    if status:
        raise ValueError(f"srtp_create failed: {_status_text(status)}")
    return _ffi.gc(holder[0], _lib.srtp_dealloc)


class SrtpContext:
    """SRTP/SRTCP protection for one DTLS-SRTP association (both directions).

    Not thread-safe; one context belongs to one peer leg of the relay.
    """

    __slots__ = (
        "_inbound",
        "_inbound_ssrcs",
        "_max_streams",
        "_min_srtcp",
        "_min_srtp",
        "_outbound",
        "_outbound_ssrcs",
        "profile",
    )

    def __init__(
        self,
        profile: SrtpProfile,
        local_key_salt: bytes,
        remote_key_salt: bytes,
        *,
        max_streams: int = DEFAULT_MAX_STREAMS,
    ) -> None:
        """Create the outbound and inbound libsrtp sessions.

        Args:
            profile: the negotiated protection profile.
            local_key_salt: master key + salt protecting what we send.
            remote_key_salt: master key + salt of what the peer sends.
            max_streams: most SSRCs per direction (see the module docstring).

        Raises:
            ValueError: wrong key lengths or ``max_streams < 1``.
        """
        if max_streams < 1:
            raise ValueError("max_streams must be at least 1")
        expected = profile.key_length + profile.salt_length
        if len(local_key_salt) != expected or len(remote_key_salt) != expected:
            raise ValueError(f"{profile.name} needs {expected}-byte key+salt values")
        self.profile = profile
        self._outbound = _new_session(profile, bytes(local_key_salt), _lib.ssrc_any_outbound)
        self._inbound = _new_session(profile, bytes(remote_key_salt), _lib.ssrc_any_inbound)
        self._max_streams = max_streams
        self._outbound_ssrcs: set[int] = set()
        self._inbound_ssrcs: set[int] = set()
        self._min_srtp = _RTP_HEADER_SIZE + profile.tag_length
        self._min_srtcp = _RTCP_HEADER_SIZE + _SRTCP_INDEX_SIZE + profile.tag_length

    @classmethod
    def from_keys(cls, keys: SrtpKeys, *, max_streams: int = DEFAULT_MAX_STREAMS) -> SrtpContext:
        """Create a context from the keys a ``DtlsEndpoint`` exported.

        Args:
            keys: ``DtlsEndpoint.srtp_keys`` once the handshake is done.
            max_streams: most SSRCs per direction.

        Returns:
            A ready context.
        """
        return cls(keys.profile, keys.local_key_salt, keys.remote_key_salt, max_streams=max_streams)

    def session_addresses(self) -> tuple[int, int]:
        """The addresses of the outbound and inbound ``srtp_t`` (for ``relay/_fastpath.c``).

        Valid while this context lives: the sessions are freed with it (``ffi.gc``)
        and never moved or replaced before, so whoever hands the addresses to C
        keeps a reference to the context for as long as C may use them. Not
        thread-safe, as every other call: see the module docstring.
        """
        return int(_ffi.cast("uintptr_t", self._outbound)), int(_ffi.cast("uintptr_t", self._inbound))

    @property
    def min_srtp_size(self) -> int:
        """The shortest datagram ``unprotect_untrusted`` tries (an RTP header and the tag)."""
        return self._min_srtp

    @property
    def outbound_ssrcs(self) -> frozenset[int]:
        """SSRCs that have an outbound stream."""
        return frozenset(self._outbound_ssrcs)

    @property
    def inbound_ssrcs(self) -> frozenset[int]:
        """SSRCs that have an inbound stream (at least one packet authenticated)."""
        return frozenset(self._inbound_ssrcs)

    def _too_many_streams(self, direction: str, ssrc: int) -> SrtpError:
        return SrtpError(
            f"{direction} SSRC {ssrc:#010x} would exceed {self._max_streams} streams",
            counter="srtp_too_many_streams",
        )

    # The shared buffer holds the packet (``length`` bytes) when these run; they
    # return the length of the result, which libsrtp left in the same buffer.
    # A new SSRC counts against ``max_streams`` only once libsrtp accepted it.

    def _protect_in_buffer(self, protect: _LibsrtpCall, ssrc: int, length: int, name: str) -> int:
        known = ssrc in self._outbound_ssrcs
        if not known and len(self._outbound_ssrcs) >= self._max_streams:
            raise self._too_many_streams("outbound", ssrc)
        _length[0] = length
        status = protect(self._outbound, _buffer, _length)
        if status:
            raise SrtpError(f"{name} failed: {_status_text(status)}", counter="srtp_protect_failed")
        if not known:
            self._outbound_ssrcs.add(ssrc)
        return _length[0]

    def _unprotect_in_buffer(self, unprotect: _LibsrtpCall, ssrc: int, length: int, name: str) -> int:
        known = ssrc in self._inbound_ssrcs
        if not known and len(self._inbound_ssrcs) >= self._max_streams:
            raise self._too_many_streams("inbound", ssrc)
        _length[0] = length
        status = unprotect(self._inbound, _buffer, _length)
        if status:
            raise _unprotect_error(name, status)
        if not known:
            self._inbound_ssrcs.add(ssrc)
        return _length[0]

    def protect(self, rtp: bytes) -> bytes:
        """Encrypt and authenticate one RTP packet.

        Args:
            rtp: a whole RTP packet (header and payload).

        Returns:
            The SRTP packet.

        Raises:
            SrtpError: too short or too long, a new SSRC beyond ``max_streams``,
                or libsrtp refused it (a repeated sequence number, a malformed
                header); counters ``srtp_protect_failed`` / ``srtp_too_many_streams``.
        """
        # Per packet on the relay's path toward browsers.
        length = len(rtp)
        if not _RTP_HEADER_SIZE <= length <= _MAX_RTP_TO_PROTECT:
            raise SrtpError(f"cannot protect a {length}-byte RTP packet", counter="srtp_protect_failed")
        _buffer_in[:length] = rtp
        return _buffer_out[: self._protect_in_buffer(_srtp_protect, _RTP_SSRC.unpack_from(rtp)[0], length, "protect")]

    def protect_with_header(
        self, rtp: bytes, header_size: int, first: int, second: int, sequence_number: int, timestamp: int, ssrc: int
    ) -> bytes:
        """Protect ``rtp`` with its first ``header_size`` bytes replaced by a fixed 12-byte header.

        The same as ``protect(header + rtp[header_size:])`` with ``header``
        packed from the arguments (RFC 3550 §5.1), without building that
        packet: the header is written straight into the buffer libsrtp works
        in. A relay that renumbers a stream (and strips CSRCs and header
        extensions by passing their size in ``header_size``) saves a
        concatenation and a copy per packet.

        Args:
            rtp: a valid RTP packet (the caller parsed it).
            header_size: bytes of ``rtp`` to drop in front of the payload
                (12, or more to strip CSRCs and an extension); at least 12.
            first: the new first byte (V, P, X, CC).
            second: the new second byte (marker and payload type).
            sequence_number: the new 16-bit sequence number.
            timestamp: the new 32-bit timestamp.
            ssrc: the new SSRC; it selects the outbound stream.

        Returns:
            The SRTP packet.

        Raises:
            SrtpError: only, as ``protect`` (a field out of range too,
                counter ``srtp_protect_failed``).
        """
        # Per packet on the relay's path toward browsers.
        size = len(rtp)
        length = size - header_size + _RTP_HEADER_SIZE
        if not (_RTP_HEADER_SIZE <= header_size <= size and length <= _MAX_RTP_TO_PROTECT):
            raise SrtpError(
                f"cannot protect a {size}-byte RTP packet with a {header_size}-byte header",
                counter="srtp_protect_failed",
            )
        if header_size == _RTP_HEADER_SIZE:
            _buffer_in[:length] = rtp
        else:
            _buffer_in[_RTP_HEADER_SIZE:length] = rtp[header_size:]
        try:
            _RTP_FIXED_HEADER.pack_into(_buffer_in, 0, first, second, sequence_number, timestamp, ssrc)
        except struct.error as exc:
            raise SrtpError(f"cannot protect with that header: {exc}", counter="srtp_protect_failed") from exc
        return _buffer_out[: self._protect_in_buffer(_srtp_protect, ssrc, length, "protect")]

    def protect_rtcp(self, rtcp: bytes) -> bytes:
        """Encrypt and authenticate one (compound) RTCP packet (RFC 3711 §3.4).

        Args:
            rtcp: the RTCP packet; its first sender SSRC selects the stream.

        Returns:
            The SRTCP packet.

        Raises:
            SrtpError: as for ``protect``.
        """
        length = len(rtcp)
        if not _RTCP_HEADER_SIZE <= length <= _MAX_RTCP_TO_PROTECT:
            raise SrtpError(f"cannot protect a {length}-byte RTCP packet", counter="srtp_protect_failed")
        _buffer_in[:length] = rtcp
        return _buffer_out[: self._protect_in_buffer(_srtp_protect_rtcp, _RTCP_SSRC.unpack_from(rtcp)[0], length, "protect_rtcp")]

    def remove_outbound_ssrc(self, ssrc: int) -> None:
        """Free the outbound stream of an SSRC we no longer send (a speaker left).

        Unknown SSRCs are ignored. Sending that SSRC again later starts a fresh
        stream (rollover counter zero), so only remove an SSRC for good.
        """
        if ssrc in self._outbound_ssrcs:
            # In the set only after a successful protect, so libsrtp has the stream.
            self._outbound_ssrcs.discard(ssrc)
            _lib.srtp_remove_stream(self._outbound, _network_order(ssrc))

    def unprotect_untrusted(self, srtp: bytes) -> bytes:
        """Authenticate and decrypt one SRTP packet from the peer.

        Args:
            srtp: the datagram (already classified as RTP by the demultiplexer).

        Returns:
            The RTP packet.

        Raises:
            SrtpError: only; counter ``srtp_replay`` for a replayed or too old
                packet, ``srtp_auth_failed`` for a bad tag,
                ``srtp_too_many_streams`` for a new SSRC beyond the limit,
                ``srtp_unprotect_failed`` otherwise.
        """
        # Per packet on the relay's path from browsers.
        length = len(srtp)
        if not self._min_srtp <= length <= _LIBSRTP_BUFFER:
            raise SrtpError(f"{length}-byte datagram is not a plausible SRTP packet")
        _buffer_in[:length] = srtp
        return _buffer_out[: self._unprotect_in_buffer(_srtp_unprotect, _RTP_SSRC.unpack_from(srtp)[0], length, "unprotect")]

    def unprotect_restamped_untrusted(self, srtp: bytes, payload_type: int, ssrc: bytes) -> bytes:
        """``unprotect_untrusted``, then the payload type and SSRC replaced (RFC 3550 §5.1).

        The same as unprotecting and rebuilding the packet with byte 1's low
        seven bits set to ``payload_type`` (the marker bit kept) and bytes
        8-11 set to ``ssrc``, done in the buffer libsrtp decrypted into, so
        the packet is copied out once. Everything else (CSRCs, a header
        extension, padding) is kept.

        Args:
            srtp: the datagram (already classified as RTP by the demultiplexer).
            payload_type: the payload type to put in, 0-127.
            ssrc: the 4-byte SSRC to put in (network order).

        Returns:
            The rewritten RTP packet.

        Raises:
            SrtpError: only, as ``unprotect_untrusted``.
            ValueError: ``payload_type`` or ``ssrc`` out of range (a caller's bug,
                checked before anything is done).
        """
        if not 0 <= payload_type <= 0x7F or len(ssrc) != 4:
            raise ValueError("payload_type must be 0-127 and ssrc 4 bytes")
        # Per packet on the relay's path from browsers.
        length = len(srtp)
        if not self._min_srtp <= length <= _LIBSRTP_BUFFER:
            raise SrtpError(f"{length}-byte datagram is not a plausible SRTP packet")
        _buffer_in[:length] = srtp
        length = self._unprotect_in_buffer(_srtp_unprotect, _RTP_SSRC.unpack_from(srtp)[0], length, "unprotect")
        _buffer_in[1] = (_buffer_in[1] & 0x80) | payload_type
        _buffer_in[8:12] = ssrc
        return _buffer_out[:length]

    def unprotect_rtcp_untrusted(self, srtcp: bytes) -> bytes:
        """Authenticate and decrypt one SRTCP packet from the peer.

        Args:
            srtcp: the datagram (classified as RTCP by the demultiplexer).

        Returns:
            The RTCP packet.

        Raises:
            SrtpError: only, with the counters of ``unprotect_untrusted``.
        """
        length = len(srtcp)
        if not self._min_srtcp <= length <= _LIBSRTP_BUFFER:
            raise SrtpError(f"{length}-byte datagram is not a plausible SRTCP packet")
        _buffer_in[:length] = srtcp
        return _buffer_out[: self._unprotect_in_buffer(_srtp_unprotect_rtcp, _RTCP_SSRC.unpack_from(srtcp)[0], length, "unprotect_rtcp")]


def libsrtp_function_addresses() -> tuple[int, int]:
    """The addresses of ``srtp_protect`` and ``srtp_unprotect`` in pylibsrtp's own libsrtp.

    For a compiled caller (``relay/_fastpath.c``) that runs the same library's
    functions on this module's sessions (:meth:`SrtpContext.session_addresses`)
    without linking libsrtp itself. Both live in pylibsrtp's loaded extension
    module, so they stay valid for the process's life.
    """
    protect = int(_ffi.cast("uintptr_t", _ffi.addressof(_lib, "srtp_protect")))
    unprotect = int(_ffi.cast("uintptr_t", _ffi.addressof(_lib, "srtp_unprotect")))
    return protect, unprotect
