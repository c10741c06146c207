"""A test certificate authority (``trustme``) for a server that serves TLS itself.

    tls = TestTls.make(tmp_path)
    async with running_server(tmp_path, tls_cert=tls.cert, tls_key=tls.key, client_ssl=tls.client) as srv:
        ...

The server certificate names ``127.0.0.1``, ``localhost`` and ``botcall.test``.
Chromium is told to accept exactly this certificate's key
(``--ignore-certificate-errors-spki-list``, the test browser only), and
``botcall.test`` can be mapped onto 127.0.0.1 (``--host-resolver-rules``) so
the page's origin is secure only because of TLS, not because it is loopback.
"""

from __future__ import annotations

import base64
import hashlib
import ssl
from dataclasses import dataclass
from pathlib import Path

import trustme
from cryptography import x509
from cryptography.hazmat.primitives import serialization

TEST_HOST = "botcall.test"


@dataclass(frozen=True)
class TestTls:
    """A CA, a server certificate it issued, and a client context that trusts the CA.

    Attributes:
        ca_pem: the CA certificate file.
        cert: the server certificate file (PEM, chain after it).
        key: the server key file (PEM).
        client: an ``SSLContext`` that trusts the CA (for ``http_request``, the SDK).
        spki_sha256: base64 of the SHA-256 of the server certificate's public key
            (what ``--ignore-certificate-errors-spki-list`` takes).
    """

    __test__ = False  # not a pytest test class

    ca_pem: Path
    cert: Path
    key: Path
    client: ssl.SSLContext
    spki_sha256: str

    @classmethod
    def make(cls, directory: Path) -> "TestTls":
        ca = trustme.CA()
        issued = ca.issue_cert("127.0.0.1", "localhost", TEST_HOST)
        directory.mkdir(parents=True, exist_ok=True)
        ca_pem, cert, key = directory / "test-ca.pem", directory / "server.pem", directory / "server-key.pem"
        ca.cert_pem.write_to_path(str(ca_pem))
        issued.private_key_pem.write_to_path(str(key))
        cert.write_bytes(b"".join(blob.bytes() for blob in issued.cert_chain_pems))
        client = ssl.create_default_context()
        ca.configure_trust(client)
        leaf = x509.load_pem_x509_certificate(issued.cert_chain_pems[0].bytes())
        spki = leaf.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        return cls(ca_pem=ca_pem, cert=cert, key=key, client=client, spki_sha256=base64.b64encode(hashlib.sha256(spki).digest()).decode())

    def chromium_args(self) -> list[str]:
        """Flags for the test browser: accept this server certificate (and no other
        bad one), and resolve ``botcall.test`` to 127.0.0.1."""
        return [
            f"--ignore-certificate-errors-spki-list={self.spki_sha256}",
            f"--host-resolver-rules=MAP {TEST_HOST} 127.0.0.1",
        ]
