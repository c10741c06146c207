"""Our DTLS certificate and the peer's, pinned by fingerprint (RFC 5763 §5, RFC 8122 §5).

``DtlsCertificate`` is one self-signed ECDSA P-256 certificate per process,
shared by every endpoint together with the OpenSSL contexts built from it.
Peers are not validated against a CA: OpenSSL's verify callback
(``_verify_peer``) accepts the self-signed chain and hands the leaf to the
endpoint that owns the connection, which matches it against the fingerprint
the signaling carried. The fingerprint type itself lives in
``botcall.webrtc.fingerprint``; ``parse_fingerprint_untrusted`` turns its
parse error into the ``DtlsError`` the endpoint promises.
"""

from __future__ import annotations

import secrets
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from OpenSSL import SSL, crypto

from botcall.errors import DtlsError
from botcall.webrtc.dtls.records import DTLS_1_2
from botcall.webrtc.fingerprint import Fingerprint, FingerprintError
from botcall.webrtc.srtp import SrtpProfile

__all__ = [
    "DtlsCertificate",
    "PeerCertificateCheck",
    "Role",
    "fingerprint_of_der",
    "parse_fingerprint_untrusted",
]

# --- Fingerprints (RFC 8122 §5) -----------------------------------------------------


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

Role = Literal["server", "client"]

PeerCertificateCheck = Callable[[crypto.X509], bool]
"""What an endpoint sets as its connection's app data, behind a ``weakref.WeakMethod``:
it judges the peer's leaf certificate (``True`` accepts it)."""


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
    fingerprint: Fingerprint = field(init=False)
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
            # DTLS 1.2 only: the record codec (records.py) is DTLS 1.2's (RFC 6347 §4.1).
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

    The connection's app data is a weak reference to the owning endpoint's
    ``PeerCertificateCheck``; a dead or missing one rejects the peer.
    Never raises (pyOpenSSL would park the exception on the shared context).
    """
    # pyOpenSSL types app data as Any; ours is a WeakMethod (see DtlsEndpoint).
    check_ref: weakref.WeakMethod[PeerCertificateCheck] | None = connection.get_app_data()
    check = check_ref() if check_ref is not None else None
    if check is None:
        return False
    if depth != 0:
        # Only the leaf is pinned; a chain above it proves nothing here.
        return True
    return check(certificate)
