"""Certificate fingerprints (RFC 8122 §5): the one type SDP and DTLS share (sans-IO).

``str(fp)`` is the SDP form ``"sha-256 AB:CD:..."`` (``a=fingerprint:{fp}``);
``fp.matches(der)`` checks a certificate in constant time. Parsing raises only
``FingerprintError``; the SDP parser turns it into ``SdpError`` and the DTLS
endpoint into ``DtlsError``.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from botcall.errors import BotCallError

# RFC 8122 §5 hash names (RFC 4572's registry): hashlib name and digest size.
HASHES: dict[str, tuple[str, int]] = {
    "sha-1": ("sha1", 20),
    "sha-224": ("sha224", 28),
    "sha-256": ("sha256", 32),
    "sha-384": ("sha384", 48),
    "sha-512": ("sha512", 64),
}
_HEX_DIGITS = frozenset("0123456789abcdefABCDEF")


class FingerprintError(BotCallError, ValueError):
    """A fingerprint we cannot use: unknown hash, malformed or wrong-length digest."""


@dataclass(frozen=True, slots=True)
class Fingerprint:
    """A certificate fingerprint.

    Attributes:
        algorithm: the RFC 8122 hash name, lower case (``sha-256``).
        digest: the raw digest.
    """

    algorithm: str
    digest: bytes

    def __str__(self) -> str:
        return f"{self.algorithm} {self.digest.hex(':').upper()}"

    def matches(self, certificate_der: bytes) -> bool:
        """Whether a DER certificate has this fingerprint (constant-time comparison)."""
        hash_name = HASHES[self.algorithm][0]
        return hmac.compare_digest(hashlib.new(hash_name, certificate_der).digest(), self.digest)

    @classmethod
    def of_der(cls, certificate_der: bytes, algorithm: str = "sha-256") -> Fingerprint:
        """Fingerprint a DER-encoded certificate.

        Raises:
            FingerprintError: an unsupported algorithm.
        """
        if algorithm not in HASHES:
            raise FingerprintError(f"unsupported fingerprint algorithm {algorithm!r}")
        return cls(algorithm, hashlib.new(HASHES[algorithm][0], certificate_der).digest())

    @classmethod
    def parse_untrusted(cls, text: str, *, bare_is_sha256: bool = False) -> Fingerprint:
        """Parse ``"<hash-func> <hex:hex:...>"`` (case-insensitive hash name, hex of either case).

        Args:
            text: the attribute value.
            bare_is_sha256: take a lone ``"AB:CD:..."`` as SHA-256 (what SDP allows).

        Raises:
            FingerprintError: an unsupported hash function, or a malformed or
                wrong-length digest.
        """
        parts = text.split()
        if len(parts) == 1 and bare_is_sha256:
            parts = ["sha-256", parts[0]]
        if len(parts) != 2:
            raise FingerprintError("a fingerprint is '<hash-func> <hex:hex:...>'")
        algorithm = parts[0].lower()
        if algorithm not in HASHES:
            raise FingerprintError(f"unsupported fingerprint algorithm {parts[0][:20]!r} (RFC 8122 §5)")
        pairs = parts[1].split(":")
        size = HASHES[algorithm][1]
        if len(pairs) != size or any(len(pair) != 2 for pair in pairs):
            raise FingerprintError(f"a {algorithm} fingerprint is {size} colon-separated hex pairs")
        digits = "".join(pairs)
        if not all(c in _HEX_DIGITS for c in digits):
            raise FingerprintError("the fingerprint digest is not hexadecimal")
        return cls(algorithm, bytes.fromhex(digits))


__all__ = ["HASHES", "Fingerprint", "FingerprintError"]
