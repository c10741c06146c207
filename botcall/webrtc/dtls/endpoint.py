"""The DTLS-SRTP endpoint (RFC 6347, RFC 5764, RFC 5763), sans-IO over pyOpenSSL.

``DtlsEndpoint`` is the handshake state machine: datagrams and ``now`` in,
datagrams and a deadline out; it never reads the clock. Every function that
handles network data ends in ``_untrusted`` and raises only ``DtlsError``.

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
import weakref
from collections.abc import Iterable, Sequence
from enum import Enum

from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL, crypto

from botcall.errors import DtlsError
from botcall.webrtc.dtls.certificate import DtlsCertificate, Role, fingerprint_of_der, parse_fingerprint_untrusted
from botcall.webrtc.dtls.records import (
    HANDSHAKE_HEADER,
    RECORD_HEADER,
    ContentType,
    DtlsRecord,
    FlightItem,
    HandshakeMessage,
    PlainRecord,
    ProtectedRecord,
    decode_flight_trusted,
    is_alert,
    pack_datagrams,
    split_records_untrusted,
)
from botcall.webrtc.fingerprint import Fingerprint
from botcall.webrtc.srtp import SrtpKeys, SrtpProfile

__all__ = [
    "DEFAULT_HANDSHAKE_TIMEOUT",
    "DEFAULT_MTU",
    "DEFAULT_SRTP_PROFILES",
    "MIN_MTU",
    "DtlsEndpoint",
    "DtlsState",
]


DEFAULT_SRTP_PROFILES: tuple[SrtpProfile, ...] = (
    SrtpProfile.AEAD_AES_128_GCM,
    SrtpProfile.AES128_CM_HMAC_SHA1_80,
)
"""The profiles we offer (client) or accept (server), most preferred first."""
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
        remote_fingerprint: str | Fingerprint | None,
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
        # _verify_peer (certificate.py) asks us about the peer's certificate.
        self._conn.set_app_data(weakref.WeakMethod(self._accept_peer_certificate))
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
        self._flight: list[FlightItem] = []
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
    def peer_fingerprint(self) -> Fingerprint | None:
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

    def set_remote_fingerprint(self, fingerprint: str | Fingerprint) -> None:
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
        items = decode_flight_trusted(raw)
        alerts = [item for item in items if is_alert(item)]
        flight = [item for item in items if not is_alert(item)]
        out: list[bytes] = []
        new_flight = completed or any(
            isinstance(item, HandshakeMessage) and item.msg_seq > self._sent_max_msg_seq for item in flight
        )
        if new_flight:
            self._flight = flight
            self._flight_count += 1
            self._sent_max_msg_seq = max(
                [self._sent_max_msg_seq] + [item.msg_seq for item in flight if isinstance(item, HandshakeMessage)]
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

    def _encode(self, items: Iterable[FlightItem]) -> list[bytes]:
        """Encode flight items into datagrams; epoch-0 records get fresh sequence numbers."""
        records: list[bytes] = []
        max_body = self._mtu - RECORD_HEADER.size - HANDSHAKE_HEADER.size
        for item in items:
            if isinstance(item, ProtectedRecord):
                records.append(item.raw)
            elif isinstance(item, PlainRecord):
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
        return self._encode(item for item in decode_flight_trusted(raw) if is_alert(item))

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
