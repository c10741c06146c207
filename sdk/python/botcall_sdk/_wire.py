"""RTP and STUN, as much of each as a bot needs (sans-IO).

Every function that reads network bytes ends in ``_untrusted`` and raises only
``BadPacket``. RTP: RFC 3550 §5.1 with the RFC 8285 one-byte header extension
that carries the RFC 6464 audio level. STUN: RFC 8489 Binding with short-term
credentials (MESSAGE-INTEGRITY, FINGERPRINT), as docs/protocol.md "Latching"
describes the exchange with the relay.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
import struct
import zlib
from dataclasses import dataclass
from typing import Any, Sequence

from botcall_sdk._errors import BadPacket

# --- RTP ---------------------------------------------------------------------------

RTP_HEADER = struct.Struct("!BBHII")
OPUS_PAYLOAD_TYPE = 111
PCM16_PAYLOAD_TYPE = 96  # decoded audio from the server (pcm16, binary frames)
PCM16_CONCEALED_PAYLOAD_TYPE = 97  # audio the server synthesised for a lost packet
AUDIO_LEVEL_ID = 1  # RFC 6464 element id bots use (docs/protocol.md "Speech detection")
_ONE_BYTE_PROFILE = 0xBEDE  # RFC 8285 §4.2


@dataclass(frozen=True, slots=True)
class RtpPacket:
    payload_type: int
    seq: int
    timestamp: int
    ssrc: int
    payload: bytes
    marker: bool = False


def build_rtp(
    payload_type: int, seq: int, timestamp: int, ssrc: int, payload: bytes, *, level: int | None = None, marker: bool = False
) -> bytes:
    """An RTP packet; with ``level`` (the RFC 6464 octet) a one-byte extension element at id 1;
    ``marker`` sets the marker bit (the first packet of a talk spurt, RFC 3551 §4.1)."""
    second = payload_type | 0x80 if marker else payload_type
    if level is None:
        return RTP_HEADER.pack(0x80, second, seq, timestamp, ssrc) + payload
    # One element (id 1, length 1 → L field 0) padded to a 32-bit word.
    extension = struct.pack("!HHBBxx", _ONE_BYTE_PROFILE, 1, AUDIO_LEVEL_ID << 4, level)
    return RTP_HEADER.pack(0x90, second, seq, timestamp, ssrc) + extension + payload


def parse_rtp_untrusted(data: bytes) -> RtpPacket:
    """Parse an RTP packet (CSRCs, extension and padding skipped).

    Raises:
        BadPacket: not RTP version 2, or truncated.
    """
    if len(data) < RTP_HEADER.size:
        raise BadPacket("RTP packet shorter than its header")
    first, second, seq, timestamp, ssrc = RTP_HEADER.unpack_from(data)
    if first >> 6 != 2:
        raise BadPacket("not RTP version 2")
    offset = RTP_HEADER.size + 4 * (first & 0x0F)
    end = len(data)
    if first & 0x20:  # padding: the last octet counts it
        if end <= offset or data[-1] == 0 or data[-1] > end - offset:
            raise BadPacket("bad RTP padding")
        end -= data[-1]
    if first & 0x10:
        if offset + 4 > end:
            raise BadPacket("truncated RTP extension")
        words = int.from_bytes(data[offset + 2 : offset + 4], "big")
        offset += 4 + 4 * words
    if offset > end:
        raise BadPacket("truncated RTP packet")
    return RtpPacket(second & 0x7F, seq, timestamp, ssrc, bytes(data[offset:end]), bool(second & 0x80))


# --- STUN --------------------------------------------------------------------------

_MAGIC_COOKIE = 0x2112A442
_HEADER = struct.Struct("!HHI12s")
_ATTRIBUTE = struct.Struct("!HH")
_BINDING_REQUEST = 0x0001
_BINDING_SUCCESS = 0x0101
_BINDING_ERROR = 0x0111
_USERNAME = 0x0006
_MESSAGE_INTEGRITY = 0x0008
_ERROR_CODE = 0x0009
_XOR_MAPPED_ADDRESS = 0x0020
_SOFTWARE = 0x8022
_FINGERPRINT = 0x8028
_FINGERPRINT_XOR = 0x5354554E  # RFC 8489 §14.7
# The relay never answers with more bytes than it received: a request must be
# at least as large as its largest success response (76 bytes over IPv6).
MIN_REQUEST_SIZE = 76

Address = tuple[str, int]


def _attribute(kind: int, value: bytes) -> bytes:
    return _ATTRIBUTE.pack(kind, len(value)) + value + b"\x00" * (-len(value) % 4)


def _finish(message_type: int, transaction_id: bytes, body: bytes, key: bytes) -> bytes:
    """Append MESSAGE-INTEGRITY (RFC 8489 §14.5) and FINGERPRINT (§14.7) to ``body``."""
    header = _HEADER.pack(message_type, len(body) + 24, _MAGIC_COOKIE, transaction_id)
    integrity = hmac.new(key, header + body, hashlib.sha1).digest()
    body += _attribute(_MESSAGE_INTEGRITY, integrity)
    header = _HEADER.pack(message_type, len(body) + 8, _MAGIC_COOKIE, transaction_id)
    crc = (zlib.crc32(header + body) ^ _FINGERPRINT_XOR) & 0xFFFFFFFF
    return header + body + _attribute(_FINGERPRINT, crc.to_bytes(4, "big"))


def binding_request(username: str, password: str) -> tuple[bytes, bytes]:
    """A Binding request with short-term credentials, padded to ``MIN_REQUEST_SIZE``.

    Returns:
        The request and its transaction id.
    """
    transaction_id = secrets.token_bytes(12)
    body = _attribute(_USERNAME, username.encode())
    software = b"botcall-sdk"
    shortfall = MIN_REQUEST_SIZE - (20 + len(body) + 4 + len(software) + (-len(software) % 4) + 24 + 8)
    body += _attribute(_SOFTWARE, software + b" " * max(0, shortfall))
    return _finish(_BINDING_REQUEST, transaction_id, body, password.encode()), transaction_id


@dataclass(frozen=True, slots=True)
class _Stun:
    message_type: int
    transaction_id: bytes
    attributes: dict[int, bytes]
    authenticated: bool


def _parse_stun_untrusted(data: bytes, key: bytes) -> _Stun:
    if len(data) < 20 or data[0] & 0xC0:
        raise BadPacket("not STUN")
    message_type, length, cookie, transaction_id = _HEADER.unpack_from(data)
    if cookie != _MAGIC_COOKIE or length % 4 or 20 + length != len(data):
        raise BadPacket("malformed STUN header")
    attributes: dict[int, bytes] = {}
    authenticated = False
    offset = 20
    while offset < len(data):
        if offset + 4 > len(data):
            raise BadPacket("truncated STUN attribute")
        kind, size = _ATTRIBUTE.unpack_from(data, offset)
        value = data[offset + 4 : offset + 4 + size]
        if len(value) != size:
            raise BadPacket("truncated STUN attribute")
        if kind == _MESSAGE_INTEGRITY:
            if size != 20:
                raise BadPacket("bad MESSAGE-INTEGRITY")
            header = _HEADER.pack(message_type, offset - 20 + 24, _MAGIC_COOKIE, transaction_id)
            expected = hmac.new(key, header + data[20:offset], hashlib.sha1).digest()
            authenticated = hmac.compare_digest(expected, value)
        elif kind == _FINGERPRINT:
            if size != 4:
                raise BadPacket("bad FINGERPRINT")
            crc = (zlib.crc32(data[:offset]) ^ _FINGERPRINT_XOR) & 0xFFFFFFFF
            if crc.to_bytes(4, "big") != value:
                raise BadPacket("bad FINGERPRINT")
        elif not authenticated:
            attributes.setdefault(kind, value)  # nothing after MESSAGE-INTEGRITY counts
        offset += 4 + size + (-size % 4)
    return _Stun(message_type, transaction_id, attributes, authenticated)


def _xor_address(value: bytes, transaction_id: bytes) -> Address:
    if len(value) < 8 or value[1] not in (1, 2):
        raise BadPacket("bad XOR-MAPPED-ADDRESS")
    port = int.from_bytes(value[2:4], "big") ^ (_MAGIC_COOKIE >> 16)
    mask = _MAGIC_COOKIE.to_bytes(4, "big") + transaction_id
    size = 4 if value[1] == 1 else 16
    raw = value[4 : 4 + size]
    if len(raw) != size:
        raise BadPacket("bad XOR-MAPPED-ADDRESS")
    host = ipaddress.ip_address(bytes(a ^ b for a, b in zip(raw, mask)))
    return str(host), port


def parse_binding_response_untrusted(data: bytes, password: str, transaction_id: bytes) -> Address:
    """The XOR-MAPPED-ADDRESS of an authenticated Binding success to our request.

    Raises:
        BadPacket: not a success to ``transaction_id`` that verifies under ``password``.
    """
    message = _parse_stun_untrusted(data, password.encode())
    if message.message_type not in (_BINDING_SUCCESS, _BINDING_ERROR) or not hmac.compare_digest(message.transaction_id, transaction_id):
        raise BadPacket("not an answer to our Binding request")
    if message.message_type == _BINDING_ERROR:
        raise BadPacket(f"Binding error response {message.attributes.get(_ERROR_CODE, b'')!r}")
    if not message.authenticated:
        raise BadPacket("Binding response without a valid MESSAGE-INTEGRITY")
    value = message.attributes.get(_XOR_MAPPED_ADDRESS)
    if value is None:
        raise BadPacket("Binding response without XOR-MAPPED-ADDRESS")
    return _xor_address(value, message.transaction_id)


def answer_check_untrusted(data: bytes, source: Sequence[Any], *, username: str, password: str) -> bytes:
    """The Binding success answering the relay's check of our address.

    Args:
        data: the datagram (the caller checked it came from the relay).
        source: its source address, echoed in XOR-MAPPED-ADDRESS.
        username: the USERNAME a check for us carries, exactly.
        password: the session's ``ice_pwd`` (the key of the check and of our answer).

    Raises:
        BadPacket: not a Binding request for ``username`` that verifies under ``password``.
    """
    message = _parse_stun_untrusted(data, password.encode())
    if message.message_type != _BINDING_REQUEST:
        raise BadPacket("not a Binding request")
    if message.attributes.get(_USERNAME) != username.encode() or not message.authenticated:
        raise BadPacket("a check not for us, or unauthenticated")
    try:
        host = ipaddress.ip_address(str(source[0]).split("%")[0])
        port = int(source[1])
    except (ValueError, IndexError, TypeError) as exc:
        raise BadPacket(f"cannot answer a check from {source!r}") from exc
    mask = _MAGIC_COOKIE.to_bytes(4, "big") + message.transaction_id
    raw = bytes(a ^ b for a, b in zip(host.packed, mask))
    family = 1 if host.version == 4 else 2
    value = struct.pack("!BBH", 0, family, port ^ (_MAGIC_COOKIE >> 16)) + raw
    return _finish(_BINDING_SUCCESS, message.transaction_id, _attribute(_XOR_MAPPED_ADDRESS, value), password.encode())
