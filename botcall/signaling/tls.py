"""TLS on the HTTP port: the server's ``SSLContext`` and the development certificate.

``--tls-cert``/``--tls-key`` load a real certificate; ``--tls-self-signed``
makes one on first use in the data directory, mkcert-style: a development CA
(``tls-dev-ca.pem``, ten years) that the user trusts once, and a server
certificate it signs (``tls-dev-cert.pem``, 397 days, the longest that browsers
accept for a server certificate) naming this machine. Both keys are ECDSA
P-256 and stay in the data directory, readable by the owner only. On later
starts the files are reused while they are valid: the CA is kept as long as it
parses and has a year left, so a browser that trusts it goes on trusting new
server certificates; the server certificate is made again when it has less
than 30 days left, does not name every address the server now answers on, or
was not signed by the CA on disk.

Hypercorn's own TLS path is not used: our accept loop (``serving.HttpServer``)
wraps each accepted stream in ``trio.SSLStream`` with this context, and
Hypercorn's connection code does the handshake under its timeout.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from botcall.errors import ConfigError

CA_FILE = "tls-dev-ca.pem"
CA_KEY_FILE = "tls-dev-ca-key.pem"
CERT_FILE = "tls-dev-cert.pem"
KEY_FILE = "tls-dev-key.pem"
CA_LIFETIME = datetime.timedelta(days=3650)
CERT_LIFETIME = datetime.timedelta(days=397)
CA_RENEW_BEFORE = datetime.timedelta(days=365)
CERT_RENEW_BEFORE = datetime.timedelta(days=30)


def server_ssl_context(cert: Path, key: Path, *, alpn_protocols: Sequence[str]) -> ssl.SSLContext:
    """A server-side context for ``cert`` (PEM, chain after it) and ``key``: TLS 1.2+,
    the default ciphers, ALPN ``alpn_protocols``.

    Raises:
        ConfigError: a file cannot be read, is not PEM, or the key does not match.
    """
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(certfile=str(cert), keyfile=str(key))
    except FileNotFoundError as exc:
        raise ConfigError(f"TLS: cannot read {exc.filename or cert}: no such file (see --tls-cert/--tls-key)") from None
    except ssl.SSLError as exc:  # an OSError too: before the next clause
        raise ConfigError(
            f"TLS: {cert} and {key} are not a PEM certificate and its matching private key ({exc.reason or exc})"
        ) from None
    except OSError as exc:
        raise ConfigError(f"TLS: cannot read {cert} or {key}: {exc.strerror or exc}") from None
    context.set_alpn_protocols(list(alpn_protocols))
    return context


@dataclass(frozen=True)
class DevCertificate:
    """The development CA and server certificate in a data directory.

    Attributes:
        ca: the CA certificate to trust (PEM).
        cert: the server certificate (PEM).
        key: the server certificate's private key (PEM).
        names: the names and addresses the server certificate covers.
        created: what this start made: ``""`` (both reused), ``"certificate"`` or ``"ca"`` (both new).
        not_after: when the server certificate expires.
    """

    ca: Path
    cert: Path
    key: Path
    names: tuple[str, ...]
    created: str
    not_after: datetime.datetime


def ensure_dev_certificate(data_dir: Path, names: Sequence[str], *, now: datetime.datetime | None = None) -> DevCertificate:
    """Reuse or make the development CA and a server certificate covering ``names``.

    Args:
        data_dir: where the files live (created if missing).
        names: DNS names and IP literals the certificate must cover (the first is its CN).
        now: the time to judge validity at (default: now, UTC).

    Returns:
        Where the files are and what was made.

    Raises:
        OSError: the directory cannot be written.
    """
    now = now or datetime.datetime.now(datetime.timezone.utc)
    wanted = tuple(dict.fromkeys(name for name in names if name))
    data_dir.mkdir(parents=True, exist_ok=True)
    paths = {name: data_dir / name for name in (CA_FILE, CA_KEY_FILE, CERT_FILE, KEY_FILE)}
    created = ""
    ca_pair = _load_ca(paths[CA_FILE], paths[CA_KEY_FILE], now)
    if ca_pair is None:
        ca_pair = _make_ca(now)
        _write(paths[CA_FILE], ca_pair[0].public_bytes(serialization.Encoding.PEM), private=False)
        _write(paths[CA_KEY_FILE], _pem_key(ca_pair[1]), private=True)
        created = "ca"
    ca_cert, ca_key = ca_pair
    leaf = None if created else _load_leaf(paths[CERT_FILE], paths[KEY_FILE], ca_cert, wanted, now)
    if leaf is None:
        key = ec.generate_private_key(ec.SECP256R1())
        leaf = _make_leaf(key, ca_cert, ca_key, wanted, now)
        _write(paths[KEY_FILE], _pem_key(key), private=True)
        _write(paths[CERT_FILE], leaf.public_bytes(serialization.Encoding.PEM), private=False)
        created = created or "certificate"
    return DevCertificate(
        ca=paths[CA_FILE], cert=paths[CERT_FILE], key=paths[KEY_FILE], names=_san_names(leaf),
        created=created, not_after=leaf.not_valid_after_utc,
    )


def trust_instructions(ca: Path) -> str:
    """How to make browsers and tools trust the development CA at ``ca``."""
    return "\n".join([
        f"To trust it, import the development CA {ca} once (it signs only this machine's BotCall certificates):",
        f"  Chrome/Chromium on Linux: certutil -d sql:$HOME/.pki/nssdb -A -t C,, -n botcall-dev -i {ca}",
        "    (package libnss3-tools), or Settings > Privacy and security > Security > Manage certificates > Authorities > Import",
        f"  macOS (Safari, Chrome): security add-trusted-cert -r trustRoot -k ~/Library/Keychains/login.keychain-db {ca}",
        "  Firefox: Settings > Privacy & Security > Certificates > View Certificates > Authorities > Import",
        "  Android: Settings > Security > Encryption & credentials > Install a certificate > CA certificate",
        "  iPhone/iPad: open the file, install the profile, then Settings > General > About > Certificate Trust Settings",
        f"  Python bots (urllib, trio-websocket): SSL_CERT_FILE={ca}; curl: --cacert {ca}",
    ])


def loopback_client_context(config_cert: Path | None, data_dir: Path) -> ssl.SSLContext:
    """What an in-process client (``botcall demo``'s bots) trusts when it talks to its
    own server on loopback: the development CA, or the configured certificate
    itself (the loopback address is not a name it was issued for, so the host
    name is not checked; the certificate is).

    Args:
        config_cert: ``Config.tls_cert``, or None with ``tls_self_signed``.
        data_dir: where the development CA is.
    """
    if config_cert is None:
        return ssl.create_default_context(cafile=str(data_dir / CA_FILE))
    context = ssl.create_default_context(cafile=str(config_cert.expanduser()))
    context.check_hostname = False
    context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN  # the server's own certificate is the anchor
    return context


def peer_client_context(cafile: Path | None) -> ssl.SSLContext:
    """How a node checks another node's HTTPS (``--cluster-ca``): the certificate
    must chain to ``cafile`` (PEM), or to the system's CAs without one, and name
    the host of the peer's public URL. TLS 1.2+.

    Raises:
        ConfigError: ``cafile`` cannot be read or holds no PEM certificate.
    """
    try:
        context = ssl.create_default_context(cafile=str(cafile.expanduser()) if cafile is not None else None)
    except FileNotFoundError:
        raise ConfigError(f"cluster_ca: cannot read {cafile}: no such file") from None
    except ssl.SSLError as exc:  # an OSError too: before the next clause
        raise ConfigError(f"cluster_ca: {cafile} holds no PEM CA certificate ({exc.reason or exc})") from None
    except OSError as exc:
        raise ConfigError(f"cluster_ca: cannot read {cafile}: {exc.strerror or exc}") from None
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["http/1.1"])
    return context


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def _write(path: Path, data: bytes, *, private: bool) -> None:
    """Write ``data`` whole (a temporary file renamed over the old one), mode 0600 if private."""
    temporary = path.with_name(path.name + ".tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(descriptor, "wb") as file:
        file.write(data)
    os.replace(temporary, path)


def _make_ca(now: datetime.datetime) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "BotCall development"),
        x509.NameAttribute(NameOID.COMMON_NAME, f"BotCall development CA ({os.uname().nodename})"),
    ])
    public = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + CA_LIFETIME)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                          data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                          encipher_only=False, decipher_only=False),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _general_name(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def _make_leaf(
    key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey,
    names: Sequence[str], now: datetime.datetime,
) -> x509.Certificate:
    public = key.public_key()
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "BotCall development"),
            x509.NameAttribute(NameOID.COMMON_NAME, (names[0] if names else "localhost")[:64]),
        ]))
        .issuer_name(ca_cert.subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + CERT_LIFETIME)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                          data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
                          encipher_only=False, decipher_only=False),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName([_general_name(n) for n in names]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(
                ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )


def _read_pair(cert_path: Path, key_path: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None:
    """A certificate and its EC key from PEM files, or None if either is missing, unreadable or they differ."""
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError):
        return None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.public_key() != cert.public_key():
        return None
    return cert, key


def _load_ca(cert_path: Path, key_path: Path, now: datetime.datetime) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None:
    pair = _read_pair(cert_path, key_path)
    if pair is None or pair[0].not_valid_after_utc - now < CA_RENEW_BEFORE:
        return None
    try:
        constraints = pair[0].extensions.get_extension_for_class(x509.BasicConstraints).value
        pair[0].extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    except x509.ExtensionNotFound:
        return None
    return pair if constraints.ca else None


def _load_leaf(
    cert_path: Path, key_path: Path, ca_cert: x509.Certificate, names: Sequence[str], now: datetime.datetime
) -> x509.Certificate | None:
    pair = _read_pair(cert_path, key_path)
    if pair is None:
        return None
    cert = pair[0]
    if cert.not_valid_after_utc - now < CERT_RENEW_BEFORE or cert.not_valid_before_utc > now:
        return None
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature):
        return None
    covered = {_canonical(n) for n in _san_names(cert)}
    return cert if all(_canonical(n) in covered for n in names) else None


def _san_names(cert: x509.Certificate) -> tuple[str, ...]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return ()
    return tuple(str(n) for n in san.get_values_for_type(x509.DNSName)) + tuple(
        str(ip) for ip in san.get_values_for_type(x509.IPAddress)
    )


def _canonical(name: str) -> str:
    try:
        return str(ipaddress.ip_address(name))
    except ValueError:
        return name.lower()


__all__ = [
    "CA_FILE", "CERT_FILE", "DevCertificate", "KEY_FILE", "ensure_dev_certificate", "loopback_client_context",
    "server_ssl_context", "trust_instructions",
]
