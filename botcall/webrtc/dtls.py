"""DTLS 1.2 for DTLS-SRTP (RFC 6347, RFC 5764, RFC 5763), sans-IO over pyOpenSSL.

The relay bridges browsers: Chrome is the DTLS client (our answer says
``a=setup:passive``) and we are the server. The benchmark simulates browsers
with our own endpoint in the client role, so both roles work the same way.

Layout, in the order of the file:

* the record codec: ``DtlsRecord``, ``split_records_untrusted`` and
  ``pack_datagrams`` (RFC 6347 §4.1);
* certificate fingerprints as SDP carries them (RFC 8122 §5):
  ``DtlsFingerprint`` and ``parse_fingerprint_untrusted``;
* ``DtlsCertificate``: one self-signed ECDSA P-256 certificate per process,
  shared by every endpoint;
* ``DtlsEndpoint``: the handshake state machine. Datagrams and ``now`` in,
  datagrams and a deadline out; it never reads the clock.

Conventions (as in Trio's ``_dtls.py``): every function that handles network
data ends in ``_untrusted`` and raises only ``DtlsError``.

Why the endpoint retransmits by itself
    OpenSSL's DTLS timer runs on the real clock (``DTLSv1_handle_timeout`` does
    nothing until a real second has passed), which a sans-IO core driven by a
    simulated clock cannot use. So, like Trio, we keep the last flight OpenSSL
    produced and retransmit it on our own timer (1 s doubling to 60 s,
    RFC 6347 §4.2.4.1), and again when the peer retransmits the flight ours
    answered (RFC 6347 §4.2.4, "read retransmit"). Plaintext (epoch 0) records
    are re-encoded with fresh record sequence numbers on every send: the peer's
    replay window (RFC 6347 §4.1.2.6) would drop a byte-identical copy of a
    record it already saw, and the server's answer to a retransmitted final
    flight depends on it getting through. Encrypted records (epoch 1: the
    Finished message) are sent as OpenSSL made them. OpenSSL's own
    retransmissions (it makes one when a real second passed before it is
    called again) are recognised by their handshake message sequence numbers
    and discarded. Re-encoding is also where handshake messages are fragmented
    to the MTU (RFC 6347 §4.2.3), so every datagram we emit holds whole
    records and is at most ``mtu`` bytes.

Memory after the handshake
    A connected DTLS-SRTP association only exists to have produced the SRTP
    keys: media is SRTP, and we carry no data channel. OpenSSL's connection
    still holds ~95 KB per endpoint (record buffers, the handshake buffer
    DTLS keeps for retransmissions, cipher states, the peer's certificate);
    ``SSL.MODE_RELEASE_BUFFERS`` drops the idle record buffers (~25 KB of
    it), and ``DtlsEndpoint.release`` frees the rest once the caller knows
    the peer finished too (the relay: its first SRTP or SRTCP packet that
    authenticated, since a browser derives its keys only after reading our
    Finished; until then it may retransmit its last flight and need ours
    again, RFC 6347 §4.2.4). A released endpoint keeps its keys and state,
    counts what still arrives in ``records_dropped`` and sends nothing more
    (no answer to a close_notify: the peer's consent and signaling end a
    call, not DTLS alerts).

Malformed datagrams
    A datagram that does not split into whole records raises ``DtlsError``
    (counter ``dtls_malformed``) but leaves the endpoint as it was: RFC 6347
    §4.1.2.7 says invalid records SHOULD be discarded while preserving the
    association. Errors OpenSSL reports (a bad handshake message, a fatal
    alert from the peer), a certificate fingerprint mismatch and a missed
    handshake deadline fail the endpoint for good. Epoch-0 records carry no
    MAC, so whoever can send from the peer's validated address can still
    disturb a handshake (a forged record with a high record number pushes
    OpenSSL's replay window past the real ones); the relay only routes DTLS
    from addresses ICE validated, and after the handshake nothing without the
    keys can end the association.
"""

from __future__ import annotations

import math
import secrets
import struct
import weakref
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from enum import Enum, IntEnum
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from OpenSSL import SSL, crypto

from botcall.webrtc.fingerprint import Fingerprint, FingerprintError
from botcall.errors import DtlsError
from botcall.webrtc.srtp import SrtpKeys, SrtpProfile

__all__ = [
    "DEFAULT_HANDSHAKE_TIMEOUT",
    "DEFAULT_MTU",
    "DEFAULT_SRTP_PROFILES",
    "MIN_MTU",
    "ContentType",
    "DtlsCertificate",
    "DtlsEndpoint",
    "DtlsFingerprint",
    "DtlsRecord",
    "DtlsState",
    "HandshakeType",
    "SrtpKeys",
    "fingerprint_of_der",
    "pack_datagrams",
    "parse_fingerprint_untrusted",
    "split_records_untrusted",
]


# --- Record codec (RFC 6347 §4.1) ---------------------------------------------------


class ContentType(IntEnum):
    """Record content types (RFC 5246 §6.2.1, kept by RFC 6347 §4.1)."""

    CHANGE_CIPHER_SPEC = 20
    ALERT = 21
    HANDSHAKE = 22
    APPLICATION_DATA = 23


class HandshakeType(IntEnum):
    """Handshake message types of DTLS 1.2 (RFC 5246 §7.4, RFC 6347 §4.3.2)."""

    HELLO_REQUEST = 0
    CLIENT_HELLO = 1
    SERVER_HELLO = 2
    HELLO_VERIFY_REQUEST = 3  # RFC 6347 §4.2.1
    CERTIFICATE = 11
    SERVER_KEY_EXCHANGE = 12
    CERTIFICATE_REQUEST = 13
    SERVER_HELLO_DONE = 14
    CERTIFICATE_VERIFY = 15
    CLIENT_KEY_EXCHANGE = 16
    FINISHED = 20


DTLS_1_0 = 0xFEFF  # on the wire, the one's complement of {1, 0} (RFC 4347 §4.1)
DTLS_1_2 = 0xFEFD  # {254, 253} (RFC 6347 §4.1)

# type, version, epoch, sequence number (48 bits: high 16, low 32), length.
RECORD_HEADER = struct.Struct("!BHHHIH")
# msg_type, length (24 bits), message_seq, fragment_offset (24), fragment_length (24),
# each 24-bit field as its high 16 and low 8 bits (RFC 6347 §4.2.2).
HANDSHAKE_HEADER = struct.Struct("!BHBHHBHB")
_MAX_SEQUENCE_NUMBER = (1 << 48) - 1
# RFC 5246 §6.2.3: TLSCiphertext.length MUST NOT exceed 2^14 + 2048.
MAX_RECORD_PAYLOAD = (1 << 14) + 2048


@dataclass(frozen=True, slots=True)
class DtlsRecord:
    """One DTLS record; ``bytes(record)`` encodes it.

    Raises:
        ValueError: a field is outside its wire range.
    """

    content_type: int
    version: int
    epoch: int
    sequence_number: int
    fragment: bytes

    def __post_init__(self) -> None:
        if not (
            0 <= self.content_type <= 0xFF
            and 0 <= self.version <= 0xFFFF
            and 0 <= self.epoch <= 0xFFFF
            and 0 <= self.sequence_number <= _MAX_SEQUENCE_NUMBER
            and len(self.fragment) <= MAX_RECORD_PAYLOAD
        ):
            raise ValueError("DTLS record field out of range")

    def __bytes__(self) -> bytes:
        return (
            RECORD_HEADER.pack(
                self.content_type,
                self.version,
                self.epoch,
                self.sequence_number >> 32,
                self.sequence_number & 0xFFFFFFFF,
                len(self.fragment),
            )
            + self.fragment
        )


def split_records_untrusted(data: bytes) -> list[DtlsRecord]:
    """Split a datagram into the DTLS records it carries (RFC 6347 §4.1).

    Only the framing is checked; what is inside a record is OpenSSL's business.

    Args:
        data: one UDP payload.

    Returns:
        The records in order (an empty list for empty input).

    Raises:
        DtlsError: a truncated header, a record running past the end of the
            datagram or longer than RFC 5246 §6.2.3 allows (counter ``dtls_malformed``).
    """
    records: list[DtlsRecord] = []
    offset = 0
    end = len(data)
    header_size = RECORD_HEADER.size
    while offset < end:
        if end - offset < header_size:
            raise DtlsError(f"truncated DTLS record header at byte {offset}", counter="dtls_malformed")
        content_type, version, epoch, seq_high, seq_low, length = RECORD_HEADER.unpack_from(data, offset)
        start = offset + header_size
        stop = start + length
        if stop > end:
            raise DtlsError(
                f"DTLS record at byte {offset} claims {length} bytes, {end - start} left",
                counter="dtls_malformed",
            )
        if length > MAX_RECORD_PAYLOAD:
            raise DtlsError(f"DTLS record of {length} bytes is too long", counter="dtls_malformed")
        records.append(DtlsRecord(content_type, version, epoch, (seq_high << 32) | seq_low, bytes(data[start:stop])))
        offset = stop
    return records


def pack_datagrams(records: Iterable[bytes], mtu: int) -> list[bytes]:
    """Pack encoded records, in order, into as few datagrams of at most ``mtu`` bytes as greed allows.

    Args:
        records: whole encoded records.
        mtu: the largest UDP payload to produce.

    Returns:
        The datagrams; each is a concatenation of whole records.

    Raises:
        ValueError: a single record is larger than ``mtu`` (our records are
            fragmented to fit before they get here).
    """
    datagrams: list[bytes] = []
    current = bytearray()
    for record in records:
        if len(record) > mtu:
            raise ValueError(f"a {len(record)}-byte record cannot fit a {mtu}-byte MTU")
        if len(current) + len(record) > mtu:
            datagrams.append(bytes(current))
            current.clear()
        current += record
    if current:
        datagrams.append(bytes(current))
    return datagrams


# --- Our own flights, re-encoded for (re)transmission -------------------------------


@dataclass(frozen=True, slots=True)
class _HandshakeMessage:
    """A whole plaintext handshake message of one of our flights."""

    version: int
    msg_type: int
    msg_seq: int
    body: bytes


@dataclass(frozen=True, slots=True)
class _PlainRecord:
    """An epoch-0 record that is not a handshake message (ChangeCipherSpec, alert)."""

    content_type: int
    version: int
    fragment: bytes


@dataclass(frozen=True, slots=True)
class _ProtectedRecord:
    """A record OpenSSL encrypted (epoch > 0), sent exactly as it is."""

    content_type: int
    raw: bytes


_FlightItem = _HandshakeMessage | _PlainRecord | _ProtectedRecord


def _decode_flight_trusted(data: bytes) -> list[_FlightItem]:
    """Reassemble what OpenSSL wrote into messages we can re-encode.

    The bytes come from our own OpenSSL, not from the network.
    """
    slots: list[_FlightItem | int] = []  # an int stands for the message with that msg_seq
    messages: dict[int, tuple[int, int, bytearray]] = {}
    for record in split_records_untrusted(data):
        if record.epoch:
            slots.append(_ProtectedRecord(record.content_type, bytes(record)))
        elif record.content_type == ContentType.HANDSHAKE:
            (msg_type, len_high, len_low, msg_seq, off_high, off_low, frag_high, frag_low) = (
                HANDSHAKE_HEADER.unpack_from(record.fragment)
            )
            if msg_seq not in messages:
                messages[msg_seq] = (record.version, msg_type, bytearray((len_high << 8) | len_low))
                slots.append(msg_seq)
            offset = (off_high << 8) | off_low
            frag_len = (frag_high << 8) | frag_low
            start = HANDSHAKE_HEADER.size
            messages[msg_seq][2][offset : offset + frag_len] = record.fragment[start : start + frag_len]
        else:
            slots.append(_PlainRecord(record.content_type, record.version, record.fragment))
    items: list[_FlightItem] = []
    for slot in slots:
        if isinstance(slot, int):
            version, msg_type, body = messages[slot]
            items.append(_HandshakeMessage(version, msg_type, slot, bytes(body)))
        else:
            items.append(slot)
    return items


def _is_alert(item: _FlightItem) -> bool:
    return not isinstance(item, _HandshakeMessage) and item.content_type == ContentType.ALERT


# --- Fingerprints (RFC 8122 §5) -----------------------------------------------------

# SDP hash function names (RFC 8122 §5, IANA "Hash Function Textual Names").
# MD5 and MD2 are deliberately absent.
# The one fingerprint type lives in webrtc/fingerprint.py; these names stay
# for the endpoint's callers.
DtlsFingerprint = Fingerprint


def fingerprint_of_der(certificate_der: bytes, algorithm: str = "sha-256") -> Fingerprint:
    """Fingerprint a DER-encoded certificate (``Fingerprint.of_der``).

    Raises:
        ValueError: an unsupported algorithm (a ``FingerprintError``).
    """
    return Fingerprint.of_der(certificate_der, algorithm)


def parse_fingerprint_untrusted(value: str) -> Fingerprint:
    """Parse the value of an SDP ``a=fingerprint`` attribute (RFC 8122 §5).

    Raises:
        DtlsError: an unsupported hash function or a malformed or wrong-length
            digest (counter ``dtls_bad_fingerprint``).
    """
    try:
        return Fingerprint.parse_untrusted(value)
    except FingerprintError as exc:
        raise DtlsError(str(exc), counter="dtls_bad_fingerprint") from None


# --- The certificate ------------------------------------------------------------------

DEFAULT_SRTP_PROFILES: tuple[SrtpProfile, ...] = (
    SrtpProfile.AEAD_AES_128_GCM,
    SrtpProfile.AES128_CM_HMAC_SHA1_80,
)
"""The profiles we offer (client) or accept (server), most preferred first."""

Role = Literal["server", "client"]


@dataclass(frozen=True, slots=True, eq=False)
class DtlsCertificate:
    """Our self-signed certificate and key, shared by every endpoint of a process.

    Peers never validate it against a CA: WebRTC authenticates it by the
    fingerprint carried in the signed-over signaling (RFC 5763 §5). Creating
    one takes milliseconds and each OpenSSL context built from it ~0.35 ms, so
    a process makes one and every ``DtlsEndpoint`` reuses it (and the contexts,
    which it caches per role and profile list).

    Attributes:
        certificate: the X.509 certificate.
        private_key: its ECDSA P-256 key (not in ``repr``).
        der: the certificate, DER-encoded.
        fingerprint: its SHA-256 fingerprint; ``str()`` gives the SDP form.
    """

    certificate: x509.Certificate
    private_key: ec.EllipticCurvePrivateKey = field(repr=False)
    der: bytes = field(init=False, repr=False)
    fingerprint: DtlsFingerprint = field(init=False)
    _contexts: dict[tuple[Role, tuple[SrtpProfile, ...]], SSL.Context] = field(
        init=False, repr=False, default_factory=dict
    )

    def __post_init__(self) -> None:
        der = self.certificate.public_bytes(serialization.Encoding.DER)
        object.__setattr__(self, "der", der)
        object.__setattr__(self, "fingerprint", fingerprint_of_der(der))

    @classmethod
    def generate(cls, *, now: datetime | None = None, validity: timedelta = timedelta(days=30)) -> DtlsCertificate:
        """Make a fresh self-signed ECDSA P-256 certificate.

        Args:
            now: the issue time (defaults to the wall clock: a certificate's
                validity is calendar time, not the relay's monotonic clock).
            validity: how long after ``now`` it stays valid; it is also valid
                from a day before ``now`` to absorb clock skew. Browsers do not
                check the dates of WebRTC certificates, but keep them honest.

        Returns:
            The certificate with a random serial number and a random common name.
        """
        issued = now if now is not None else datetime.now(timezone.utc)
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"botcall-{secrets.token_hex(8)}")])
        certificate = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(issued - timedelta(days=1))
            .not_valid_after(issued + validity)
            .sign(key, hashes.SHA256())
        )
        return cls(certificate, key)

    def _context(self, role: Role, profiles: tuple[SrtpProfile, ...]) -> SSL.Context:
        """The shared OpenSSL context for this role and profile list (built once)."""
        key = (role, profiles)
        context = self._contexts.get(key)
        if context is None:
            context = SSL.Context(SSL.DTLS_SERVER_METHOD if role == "server" else SSL.DTLS_CLIENT_METHOD)
            # OP_NO_QUERY_MTU: a memory BIO has no MTU to query (we set it);
            # no renegotiation, tickets or session cache: one handshake per association.
            context.set_options(SSL.OP_NO_QUERY_MTU | SSL.OP_NO_RENEGOTIATION | SSL.OP_NO_TICKET)
            context.set_session_cache_mode(SSL.SESS_CACHE_OFF)
            # After the handshake a browser leg's DTLS is idle for the whole
            # call (media is SRTP), yet OpenSSL would keep its ~17 KB read and
            # write buffers per connection; released when empty, they cost
            # ~8 KB less per call session (bench/memory.py, docs/bench-results.md §6).
            context.set_mode(SSL.MODE_RELEASE_BUFFERS)
            # DTLS 1.2 only: the record codec above is DTLS 1.2's (RFC 6347 §4.1).
            context.set_min_proto_version(DTLS_1_2)
            context.set_max_proto_version(DTLS_1_2)
            context.use_certificate(self.certificate)
            context.use_privatekey(self.private_key)
            context.check_privatekey()
            context.set_tlsext_use_srtp(b":".join(profile.openssl_name for profile in profiles))
            # Both roles demand the peer's certificate (RFC 5763 §5: the server
            # MUST request one); _verify_peer pins it by fingerprint.
            context.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, _verify_peer)
            self._contexts[key] = context
        return context


def _verify_peer(
    connection: SSL.Connection, certificate: crypto.X509, error_number: int, depth: int, preverify_ok: int
) -> bool:
    """OpenSSL's verify callback: accept self-signed, pin the leaf by fingerprint.

    Never raises (pyOpenSSL would park the exception on the shared context).
    """
    # pyOpenSSL types app data as Any; ours is the endpoint's weak reference (see DtlsEndpoint).
    endpoint_ref: weakref.ref[DtlsEndpoint] | None = connection.get_app_data()
    endpoint = endpoint_ref() if endpoint_ref is not None else None
    if endpoint is None:
        return False
    if depth != 0:
        # Only the leaf is pinned; a chain above it proves nothing here.
        return True
    return endpoint._accept_peer_certificate(certificate)


# --- The endpoint -------------------------------------------------------------------------

DEFAULT_MTU = 1200
"""Largest datagram we emit: what WebRTC stacks assume is safe (RFC 8261 §5 uses 1200 too)."""
MIN_MTU = 256
"""Room for the largest record we cannot fragment (an encrypted Finished or alert) and more."""
DEFAULT_HANDSHAKE_TIMEOUT = 30.0
INITIAL_RETRANSMIT_TIMEOUT = 1.0  # RFC 6347 §4.2.4.1
MAX_RETRANSMIT_TIMEOUT = 60.0  # RFC 6347 §4.2.4.1
RESEND_ON_RETRANSMISSION_INTERVAL = 0.5
"""Least time between two answers to a peer's retransmitted flight (duplicates arrive together)."""
_EXPORTER_LABEL = b"EXTRACTOR-dtls_srtp"  # RFC 5764 §4.2
_MISMATCH = "peer certificate does not match its fingerprint"
# A flight carries a handful of messages numbered on from the last
# (RFC 6347 §4.2.2); a record claiming a message far beyond is not one we track.
_MSG_SEQ_WINDOW = 16
_BIO_READ_SIZE = 65536


class DtlsState(Enum):
    """Where a ``DtlsEndpoint`` is.

    ``HANDSHAKING`` also covers a handshake OpenSSL finished while the peer's
    fingerprint is still unknown (see ``DtlsEndpoint.set_remote_fingerprint``).
    ``FAILED`` and ``CLOSED`` are final.
    """

    NEW = "new"
    HANDSHAKING = "handshaking"
    CONNECTED = "connected"
    FAILED = "failed"
    CLOSED = "closed"


class DtlsEndpoint:
    """One DTLS-SRTP association, sans-IO: datagrams and ``now`` in, datagrams out.

    Drive it like this: call ``start(now)`` and send what it returns; feed every
    datagram the demultiplexer classifies as DTLS (first byte 20..63, RFC 7983)
    to ``receive_untrusted`` and send what it returns; call ``handle_timeout(now)``
    whenever ``now`` reaches ``next_deadline()`` and send what it returns. Once
    ``state`` is ``CONNECTED``, ``srtp_keys`` feeds ``SrtpContext.from_keys``.

    When a call raises ``DtlsError`` and ``state`` is ``FAILED``, the endpoint is
    finished: ``failure_reason`` says why and ``close()`` returns the fatal
    alert OpenSSL prepared for the peer (send it as a courtesy, then drop the
    endpoint). A ``DtlsError`` with ``state`` unchanged only dropped that datagram.

    Attributes:
        role: ``"server"`` (we answer a browser's ``setup:active``) or ``"client"``.
        records_dropped: records ignored after the handshake (application data,
            stray handshake records, anything once released); there are no
            data channels.
    """

    def __init__(
        self,
        *,
        role: Role,
        certificate: DtlsCertificate,
        remote_fingerprint: str | DtlsFingerprint | None,
        mtu: int = DEFAULT_MTU,
        handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
        srtp_profiles: Sequence[SrtpProfile] = DEFAULT_SRTP_PROFILES,
        initial_retransmit_timeout: float = INITIAL_RETRANSMIT_TIMEOUT,
    ) -> None:
        """Create an endpoint; nothing happens until ``start``.

        Args:
            role: ``"server"`` or ``"client"``.
            certificate: our certificate (shared by all endpoints).
            remote_fingerprint: the peer's ``a=fingerprint`` value. ``None``
                when it is not known yet: the handshake then runs, but the
                keys stay withheld and ``state`` stays ``HANDSHAKING`` until
                ``set_remote_fingerprint`` supplies it and it matches.
            mtu: the largest datagram to emit, at least ``MIN_MTU``.
            handshake_timeout: seconds after ``start`` by which the handshake
                must be connected, or the endpoint fails.
            srtp_profiles: SRTP profiles to offer or accept, preferred first.
            initial_retransmit_timeout: first retransmission timer value;
                it doubles on each loss up to 60 s.

        Raises:
            DtlsError: ``remote_fingerprint`` is malformed (counter ``dtls_bad_fingerprint``).
            ValueError: a bad role, MTU, timeout or an empty profile list.
        """
        if role not in ("server", "client"):
            raise ValueError(f"role must be 'server' or 'client', not {role!r}")
        if mtu < MIN_MTU:
            raise ValueError(f"mtu must be at least {MIN_MTU}")
        if handshake_timeout <= 0 or initial_retransmit_timeout <= 0:
            raise ValueError("timeouts must be positive")
        profiles = tuple(SrtpProfile(profile) for profile in srtp_profiles)
        if not profiles:
            raise ValueError("at least one SRTP profile is needed")
        self.role: Role = role
        self.records_dropped = 0
        self._certificate = certificate
        if isinstance(remote_fingerprint, str):
            remote_fingerprint = parse_fingerprint_untrusted(remote_fingerprint)
        self._remote_fingerprint = remote_fingerprint
        self._mtu = mtu
        self._handshake_timeout = handshake_timeout
        self._initial_rto = initial_retransmit_timeout
        self._state = DtlsState.NEW
        self._failure_reason: str | None = None
        # None once released (see the module docstring).
        self._conn: SSL.Connection | None = SSL.Connection(certificate._context(role, profiles), None)
        self._conn.set_app_data(weakref.ref(self))
        self._conn.set_ciphertext_mtu(mtu)
        if role == "server":
            self._conn.set_accept_state()
        else:
            self._conn.set_connect_state()
        # Timers (absolute, on the caller's clock).
        self._handshake_deadline = math.inf
        self._retransmit_deadline: float | None = None
        self._rto = initial_retransmit_timeout
        self._failed_sends = 0
        self._last_resend_on_retransmission = -math.inf
        # Our current flight and the sequence numbers that identify it.
        self._flight: list[_FlightItem] = []
        self._flight_count = 0
        self._sent_max_msg_seq = -1
        self._peer_max_msg_seq = -1
        self._answered_peer_msg_seq = -1
        self._next_record_seq = 0
        # Outcome.
        self._openssl_done = False
        self._fingerprint_rejected = False
        self._peer_der: bytes | None = None
        self._pending_keys: SrtpKeys | None = None
        self._srtp_keys: SrtpKeys | None = None
        self._final_datagrams: list[bytes] = []

    # -- properties ----------------------------------------------------------------------

    @property
    def state(self) -> DtlsState:
        """The current state."""
        return self._state

    @property
    def srtp_keys(self) -> SrtpKeys | None:
        """Our SRTP keys (local = what we send), only while ``CONNECTED``."""
        return self._srtp_keys if self._state is DtlsState.CONNECTED else None

    @property
    def released(self) -> bool:
        """Whether ``release`` freed OpenSSL's connection."""
        return self._conn is None

    @property
    def failure_reason(self) -> str | None:
        """Why the endpoint failed, once ``FAILED``."""
        return self._failure_reason

    @property
    def peer_fingerprint(self) -> DtlsFingerprint | None:
        """SHA-256 fingerprint of the certificate the peer presented, once OpenSSL finished."""
        return fingerprint_of_der(self._peer_der) if self._peer_der is not None else None

    def next_deadline(self) -> float | None:
        """When ``handle_timeout`` must next be called, or ``None`` if never."""
        if self._state is not DtlsState.HANDSHAKING:
            return None
        if self._retransmit_deadline is None:
            return self._handshake_deadline
        return min(self._retransmit_deadline, self._handshake_deadline)

    # -- inputs ----------------------------------------------------------------------------

    def start(self, now: float) -> list[bytes]:
        """Begin the handshake; the handshake deadline counts from here.

        Args:
            now: the current time.

        Returns:
            Datagrams to send: the ClientHello for a client, nothing for a server.

        Raises:
            RuntimeError: the endpoint is not new (started, closed or failed).
            DtlsError: OpenSSL refused to start (the endpoint fails).
        """
        if self._state is not DtlsState.NEW:
            raise RuntimeError(f"DtlsEndpoint.start on a {self._state.value} endpoint")
        self._state = DtlsState.HANDSHAKING
        self._handshake_deadline = now + self._handshake_timeout
        if self.role == "server":
            return []
        return self._handshake_step(now)

    def receive_untrusted(self, data: bytes, now: float) -> list[bytes]:
        """Process one datagram from the peer.

        A server that was never started starts here (at ``now``).

        Args:
            data: the UDP payload.
            now: the current time.

        Returns:
            Datagrams to send.

        Raises:
            DtlsError: only. ``state`` tells what it meant: unchanged, the
                datagram was dropped (malformed, counter ``dtls_malformed``, or
                the endpoint is not open, ``dtls_not_open``); ``FAILED``, the
                association is over (``failure_reason``); ``CLOSED`` cannot
                come with an error.
        """
        if self._state is DtlsState.NEW:
            if self.role == "client":
                raise DtlsError("datagram before the client started", counter="dtls_not_open")
            self.start(now)
        elif self._state in (DtlsState.FAILED, DtlsState.CLOSED):
            raise DtlsError(f"datagram for a {self._state.value} DTLS endpoint", counter="dtls_not_open")
        records = split_records_untrusted(data)
        if not records:
            raise DtlsError("empty datagram", counter="dtls_malformed")
        if self._conn is None:
            # Released: the peer finished, nothing it sends on DTLS matters now.
            self.records_dropped += len(records)
            return []
        if self._state is DtlsState.HANDSHAKING and now >= self._handshake_deadline:
            raise self._fail("handshake not completed in time", counter="dtls_handshake_timeout")
        peer_retransmitted = self._note_peer_messages(records)
        flights_before = self._flight_count
        if self._openssl_done:
            out = self._receive_after_handshake(records)
        else:
            try:
                self._conn.bio_write(data)
            except SSL.Error as exc:
                reason = f"OpenSSL refused the datagram: {_describe(exc)}"
                raise self._fail(reason, counter="dtls_handshake_failed") from exc
            out = self._handshake_step(now)
        if (
            peer_retransmitted
            and self._flight
            and self._flight_count == flights_before
            and self._state in (DtlsState.HANDSHAKING, DtlsState.CONNECTED)
            and now - self._last_resend_on_retransmission >= RESEND_ON_RETRANSMISSION_INTERVAL
        ):
            # RFC 6347 §4.2.4: the peer resent the flight ours answered, so ours was lost.
            self._last_resend_on_retransmission = now
            out.extend(self._encode(self._flight))
        return out

    def handle_timeout(self, now: float) -> list[bytes]:
        """Retransmit if the timer expired; fail if the handshake deadline passed.

        Args:
            now: the current time.

        Returns:
            Datagrams to send (a retransmitted flight, or nothing).

        Raises:
            DtlsError: the handshake was not connected by its deadline (counter
                ``dtls_handshake_timeout``); the endpoint is then ``FAILED``.
        """
        if self._state is not DtlsState.HANDSHAKING:
            return []
        if now >= self._handshake_deadline:
            raise self._fail("handshake not completed in time", counter="dtls_handshake_timeout")
        if self._retransmit_deadline is None or now < self._retransmit_deadline:
            return []
        # RFC 6347 §4.2.4.1: double the timer on each expiry, up to 60 s.
        self._failed_sends += 1
        self._rto = min(self._rto * 2, MAX_RETRANSMIT_TIMEOUT)
        self._retransmit_deadline = now + self._rto
        return self._encode(self._flight)

    def set_remote_fingerprint(self, fingerprint: str | DtlsFingerprint) -> None:
        """Supply or replace the peer's fingerprint (from its SDP).

        If OpenSSL already finished the handshake, the peer's certificate is
        checked now: a match makes the endpoint ``CONNECTED``.

        Args:
            fingerprint: the ``a=fingerprint`` value or a parsed fingerprint.

        Raises:
            DtlsError: a malformed fingerprint (counter ``dtls_bad_fingerprint``,
                nothing changes) or one that does not match the certificate the
                peer presented (counter ``dtls_fingerprint_mismatch``; the
                endpoint fails).
        """
        parsed = parse_fingerprint_untrusted(fingerprint) if isinstance(fingerprint, str) else fingerprint
        if self._state in (DtlsState.FAILED, DtlsState.CLOSED):
            return
        self._remote_fingerprint = parsed
        if self._openssl_done:
            self._verify_and_connect()

    def close(self) -> list[bytes]:
        """End the association.

        Returns:
            Datagrams to send: our close_notify alert when connected (RFC 5246
            §7.2.1); the fatal alert a failure prepared, once, when ``FAILED``;
            otherwise nothing.
        """
        if self._state is DtlsState.FAILED:
            out, self._final_datagrams = self._final_datagrams, []
            return out
        if self._state is DtlsState.CLOSED:
            return []
        was_done = self._openssl_done
        self._state = DtlsState.CLOSED
        self._retransmit_deadline = None
        self._srtp_keys = self._pending_keys = None
        if not was_done or self._conn is None:
            return []
        return self._send_close_notify()

    def release(self) -> None:
        """Free OpenSSL's connection once the peer has certainly finished the handshake.

        Call it when the peer proved it holds the keys (its first SRTP or
        SRTCP packet authenticated): from then on it will not retransmit its
        last flight, so ours need not be kept. The endpoint stays ``CONNECTED``
        with its ``srtp_keys``; later datagrams are counted in
        ``records_dropped`` and answered with nothing, and ``close`` sends no
        alert. Calling it again does nothing.

        Raises:
            RuntimeError: the handshake is not over (``NEW`` or ``HANDSHAKING``).
        """
        if self._state in (DtlsState.NEW, DtlsState.HANDSHAKING):
            raise RuntimeError(f"DtlsEndpoint.release on a {self._state.value} endpoint")
        self._conn = None
        self._flight = []

    # -- internals: OpenSSL --------------------------------------------------------------------

    def _connection(self) -> SSL.Connection:
        """OpenSSL's connection, for the internals that run only while it is kept.

        Raises:
            RuntimeError: it was released or closed (a bug in this module).
        """
        conn = self._conn
        if conn is None:
            raise RuntimeError("DTLS connection used after release")
        return conn

    def _read_bio(self) -> bytes:
        conn = self._connection()
        chunks = []
        while True:
            try:
                chunks.append(conn.bio_read(_BIO_READ_SIZE))
            except SSL.WantReadError:
                return b"".join(chunks)

    def _handshake_step(self, now: float) -> list[bytes]:
        """Let OpenSSL consume what was written and produce its next flight."""
        try:
            self._connection().do_handshake()
        except SSL.WantReadError:
            return self._collect_flight(now, completed=False)
        except SSL.Error as exc:
            if self._fingerprint_rejected:
                raise self._fail(_MISMATCH, counter="dtls_fingerprint_mismatch") from exc
            raise self._fail(f"handshake failed: {_describe(exc)}", counter="dtls_handshake_failed") from exc
        out = self._collect_flight(now, completed=True)
        self._openssl_done = True
        self._retransmit_deadline = None
        self._on_openssl_done()
        return out

    def _collect_flight(self, now: float, *, completed: bool) -> list[bytes]:
        """Turn what OpenSSL wrote into datagrams, keeping a new flight for retransmission."""
        raw = self._read_bio()
        if not raw:
            if completed:
                self._flight = []
            return []
        items = _decode_flight_trusted(raw)
        alerts = [item for item in items if _is_alert(item)]
        flight = [item for item in items if not _is_alert(item)]
        out: list[bytes] = []
        new_flight = completed or any(
            isinstance(item, _HandshakeMessage) and item.msg_seq > self._sent_max_msg_seq for item in flight
        )
        if new_flight:
            self._flight = flight
            self._flight_count += 1
            self._sent_max_msg_seq = max(
                [self._sent_max_msg_seq] + [item.msg_seq for item in flight if isinstance(item, _HandshakeMessage)]
            )
            self._answered_peer_msg_seq = self._peer_max_msg_seq
            # RFC 6347 §4.2.4.1: keep a backed-off timer until a flight goes through without loss.
            if self._failed_sends == 0:
                self._rto = self._initial_rto
            self._failed_sends = 0
            self._retransmit_deadline = None if completed else now + self._rto
            out.extend(self._encode(flight))
        # Otherwise OpenSSL retransmitted on its own real-time timer: ours rules.
        if alerts:
            out.extend(self._encode(alerts))
        return out

    def _encode(self, items: Iterable[_FlightItem]) -> list[bytes]:
        """Encode flight items into datagrams; epoch-0 records get fresh sequence numbers."""
        records: list[bytes] = []
        max_body = self._mtu - RECORD_HEADER.size - HANDSHAKE_HEADER.size
        for item in items:
            if isinstance(item, _ProtectedRecord):
                records.append(item.raw)
            elif isinstance(item, _PlainRecord):
                records.append(self._plain_record(item.content_type, item.version, item.fragment))
            else:
                body = item.body
                total = len(body)
                offset = 0
                while True:
                    chunk = body[offset : offset + max_body]
                    header = HANDSHAKE_HEADER.pack(
                        item.msg_type,
                        total >> 8,
                        total & 0xFF,
                        item.msg_seq,
                        offset >> 8,
                        offset & 0xFF,
                        len(chunk) >> 8,
                        len(chunk) & 0xFF,
                    )
                    records.append(self._plain_record(ContentType.HANDSHAKE, item.version, header + chunk))
                    offset += len(chunk)
                    if offset >= total:
                        break
        return pack_datagrams(records, self._mtu)

    def _plain_record(self, content_type: int, version: int, fragment: bytes) -> bytes:
        seq = self._next_record_seq
        self._next_record_seq = seq + 1
        return RECORD_HEADER.pack(content_type, version, 0, seq >> 32, seq & 0xFFFFFFFF, len(fragment)) + fragment

    def _note_peer_messages(self, records: list[DtlsRecord]) -> bool:
        """Track the peer's handshake message sequence numbers (RFC 6347 §4.2.2).

        Returns:
            Whether the datagram repeats a message our current flight already answered.
        """
        repeated = False
        for record in records:
            if record.epoch == 0 and record.content_type == ContentType.HANDSHAKE and len(record.fragment) >= 6:
                msg_seq = (record.fragment[4] << 8) | record.fragment[5]
                if msg_seq <= self._answered_peer_msg_seq:
                    repeated = True
                elif self._peer_max_msg_seq < msg_seq <= self._peer_max_msg_seq + _MSG_SEQ_WINDOW:
                    self._peer_max_msg_seq = msg_seq
        return repeated

    def _receive_after_handshake(self, records: list[DtlsRecord]) -> list[bytes]:
        """After the handshake only alerts matter; everything else is counted and dropped."""
        alerts = [record for record in records if record.content_type == ContentType.ALERT]
        self.records_dropped += len(records) - len(alerts)
        if not alerts:
            return []
        try:
            conn = self._connection()
            conn.bio_write(b"".join(bytes(record) for record in alerts))
            while True:
                # Application data would come out here; we never feed any.
                conn.recv(_BIO_READ_SIZE)
                self.records_dropped += 1
        except SSL.WantReadError:
            pass
        except SSL.ZeroReturnError:
            # The peer's close_notify (RFC 5246 §7.2.1): answer with ours.
            self._state = DtlsState.CLOSED
            self._srtp_keys = self._pending_keys = None
            return self._send_close_notify()
        except SSL.Error as exc:
            raise self._fail(f"peer ended the association: {_describe(exc)}", counter="dtls_peer_alert") from exc
        return self._alerts_from_bio()

    def _send_close_notify(self) -> list[bytes]:
        try:
            self._connection().shutdown()
        except SSL.Error:
            # OpenSSL refuses a second shutdown or one after a fatal error;
            # there is then nothing more to say to the peer.
            return []
        return self._alerts_from_bio()

    def _alerts_from_bio(self) -> list[bytes]:
        if self._conn is None:
            return []  # released: OpenSSL has nothing left to say
        raw = self._read_bio()
        if not raw:
            return []
        return self._encode(item for item in _decode_flight_trusted(raw) if _is_alert(item))

    def _fail(self, reason: str, *, counter: str) -> DtlsError:
        """Fail the endpoint for good; returns the error for the caller to raise."""
        self._state = DtlsState.FAILED
        self._failure_reason = reason
        self._retransmit_deadline = None
        self._srtp_keys = self._pending_keys = None
        self._final_datagrams = self._alerts_from_bio()
        return DtlsError(reason, counter=counter)

    def _accept_peer_certificate(self, certificate: crypto.X509) -> bool:
        """Called by OpenSSL for the peer's leaf certificate (possibly several times)."""
        if self._remote_fingerprint is None:
            return True  # Checked once the fingerprint arrives.
        der = certificate.to_cryptography().public_bytes(serialization.Encoding.DER)
        if self._remote_fingerprint.matches(der):
            return True
        self._fingerprint_rejected = True
        return False

    def _on_openssl_done(self) -> None:
        """Export the SRTP keys (RFC 5764 §4.2), then verify the peer if we can."""
        conn = self._connection()
        profile = SrtpProfile.from_openssl_name(conn.get_selected_srtp_profile())
        if profile is None:
            raise self._fail("no SRTP protection profile was negotiated (RFC 5764 §4.1.1)", counter="dtls_no_srtp")
        certificate = conn.get_peer_certificate(as_cryptography=True)
        if certificate is None:
            raise self._fail("peer presented no certificate", counter="dtls_no_certificate")
        self._peer_der = certificate.public_bytes(serialization.Encoding.DER)
        material = conn.export_keying_material(_EXPORTER_LABEL, 2 * (profile.key_length + profile.salt_length))
        self._pending_keys = SrtpKeys.from_keying_material(profile, material, is_client=self.role == "client")
        if self._remote_fingerprint is not None:
            self._verify_and_connect()

    def _verify_and_connect(self) -> None:
        assert self._remote_fingerprint is not None and self._peer_der is not None
        if not self._remote_fingerprint.matches(self._peer_der):
            raise self._fail(_MISMATCH, counter="dtls_fingerprint_mismatch")
        self._srtp_keys = self._pending_keys
        self._state = DtlsState.CONNECTED


def _describe(exc: SSL.Error) -> str:
    """A short reason from a pyOpenSSL error (its args are lists of OpenSSL error tuples)."""
    if isinstance(exc, SSL.ZeroReturnError):
        return "peer sent close_notify"
    parts: list[str] = []
    for arg in exc.args:
        if isinstance(arg, list):
            parts.extend(str(entry[-1]) if isinstance(entry, tuple) and entry else str(entry) for entry in arg)
        else:
            parts.append(str(arg))
    return "; ".join(parts) or type(exc).__name__
