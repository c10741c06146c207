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

Every function that takes bytes from the network ends in ``_untrusted`` and
raises only ``SrtpError``; ``protect`` and ``protect_rtcp`` raise only
``SrtpError`` as well, so the relay can count and drop with one ``except``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from enum import IntEnum

import pylibsrtp

from botcall.errors import SrtpError

__all__ = [
    "DEFAULT_MAX_STREAMS",
    "SrtpContext",
    "SrtpKeys",
    "SrtpProfile",
]

DEFAULT_MAX_STREAMS = 64
"""Streams per direction of one SRTP context (one per SSRC)."""

# pylibsrtp copies every packet into a fixed 1500-byte buffer and raises
# ValueError beyond it (after leaving room for the trailer when protecting).
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


def _error_counter(message: str) -> str:
    """The drop counter for a libsrtp failure message."""
    if "replay" in message or "too old" in message:
        return "srtp_replay"
    if "authentication" in message:
        return "srtp_auth_failed"
    return "srtp_unprotect_failed"


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
        self._outbound = pylibsrtp.Session(
            pylibsrtp.Policy(
                key=bytes(local_key_salt),
                ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND,
                srtp_profile=profile.libsrtp_profile,
            )
        )
        self._inbound = pylibsrtp.Session(
            pylibsrtp.Policy(
                key=bytes(remote_key_salt),
                ssrc_type=pylibsrtp.Policy.SSRC_ANY_INBOUND,
                srtp_profile=profile.libsrtp_profile,
            )
        )
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
        # Per packet on the relay's path toward browsers: checks inlined on purpose.
        if not _RTP_HEADER_SIZE <= len(rtp) <= _MAX_RTP_TO_PROTECT:
            raise SrtpError(f"cannot protect a {len(rtp)}-byte RTP packet", counter="srtp_protect_failed")
        ssrc = _RTP_SSRC.unpack_from(rtp)[0]
        known = ssrc in self._outbound_ssrcs
        if not known and len(self._outbound_ssrcs) >= self._max_streams:
            raise self._too_many_streams("outbound", ssrc)
        try:
            srtp = self._outbound.protect(rtp)
        except pylibsrtp.Error as exc:
            raise SrtpError(f"protect failed: {exc}", counter="srtp_protect_failed") from exc
        if not known:
            self._outbound_ssrcs.add(ssrc)
        return srtp

    def protect_rtcp(self, rtcp: bytes) -> bytes:
        """Encrypt and authenticate one (compound) RTCP packet (RFC 3711 §3.4).

        Args:
            rtcp: the RTCP packet; its first sender SSRC selects the stream.

        Returns:
            The SRTCP packet.

        Raises:
            SrtpError: as for ``protect``.
        """
        if not _RTCP_HEADER_SIZE <= len(rtcp) <= _MAX_RTCP_TO_PROTECT:
            raise SrtpError(f"cannot protect a {len(rtcp)}-byte RTCP packet", counter="srtp_protect_failed")
        ssrc = _RTCP_SSRC.unpack_from(rtcp)[0]
        known = ssrc in self._outbound_ssrcs
        if not known and len(self._outbound_ssrcs) >= self._max_streams:
            raise self._too_many_streams("outbound", ssrc)
        try:
            srtcp = self._outbound.protect_rtcp(rtcp)
        except pylibsrtp.Error as exc:
            raise SrtpError(f"protect_rtcp failed: {exc}", counter="srtp_protect_failed") from exc
        if not known:
            self._outbound_ssrcs.add(ssrc)
        return srtcp

    def remove_outbound_ssrc(self, ssrc: int) -> None:
        """Free the outbound stream of an SSRC we no longer send (a speaker left).

        Unknown SSRCs are ignored. Sending that SSRC again later starts a fresh
        stream (rollover counter zero), so only remove an SSRC for good.
        """
        if ssrc in self._outbound_ssrcs:
            # In the set only after a successful protect, so libsrtp has the stream.
            self._outbound_ssrcs.discard(ssrc)
            self._outbound.remove_stream(ssrc)

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
        # Per packet on the relay's path from browsers: checks inlined on purpose.
        if not self._min_srtp <= len(srtp) <= _LIBSRTP_BUFFER:
            raise SrtpError(f"{len(srtp)}-byte datagram is not a plausible SRTP packet")
        ssrc = _RTP_SSRC.unpack_from(srtp)[0]
        known = ssrc in self._inbound_ssrcs
        if not known and len(self._inbound_ssrcs) >= self._max_streams:
            raise self._too_many_streams("inbound", ssrc)
        try:
            rtp = self._inbound.unprotect(srtp)
        except pylibsrtp.Error as exc:
            message = str(exc)
            raise SrtpError(f"unprotect failed: {message}", counter=_error_counter(message)) from exc
        if not known:
            self._inbound_ssrcs.add(ssrc)
        return rtp

    def unprotect_rtcp_untrusted(self, srtcp: bytes) -> bytes:
        """Authenticate and decrypt one SRTCP packet from the peer.

        Args:
            srtcp: the datagram (classified as RTCP by the demultiplexer).

        Returns:
            The RTCP packet.

        Raises:
            SrtpError: only, with the counters of ``unprotect_untrusted``.
        """
        if not self._min_srtcp <= len(srtcp) <= _LIBSRTP_BUFFER:
            raise SrtpError(f"{len(srtcp)}-byte datagram is not a plausible SRTCP packet")
        ssrc = _RTCP_SSRC.unpack_from(srtcp)[0]
        known = ssrc in self._inbound_ssrcs
        if not known and len(self._inbound_ssrcs) >= self._max_streams:
            raise self._too_many_streams("inbound", ssrc)
        try:
            rtcp = self._inbound.unprotect_rtcp(srtcp)
        except pylibsrtp.Error as exc:
            message = str(exc)
            raise SrtpError(f"unprotect_rtcp failed: {message}", counter=_error_counter(message)) from exc
        if not known:
            self._inbound_ssrcs.add(ssrc)
        return rtcp
