"""DTLS 1.2 records (RFC 6347 §4.1): the codec, datagram packing, and our own flights decoded.

Pure functions and frozen records, no OpenSSL: ``split_records_untrusted``
frames a datagram from the network, ``pack_datagrams`` packs encoded records
into datagrams of at most an MTU, and ``decode_flight_trusted`` reassembles
what our own OpenSSL wrote into handshake messages the endpoint can re-encode
(and fragment) for every (re)transmission.

Convention (as in Trio's ``_dtls.py``): every function that handles network
data ends in ``_untrusted`` and raises only ``DtlsError``.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass
from enum import IntEnum

from botcall.errors import DtlsError

__all__ = [
    "DTLS_1_2",
    "HANDSHAKE_HEADER",
    "MAX_RECORD_PAYLOAD",
    "RECORD_HEADER",
    "ContentType",
    "DtlsRecord",
    "FlightItem",
    "HandshakeMessage",
    "HandshakeType",
    "PlainRecord",
    "ProtectedRecord",
    "decode_flight_trusted",
    "is_alert",
    "pack_datagrams",
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
class HandshakeMessage:
    """A whole plaintext handshake message of one of our flights."""

    version: int
    msg_type: int
    msg_seq: int
    body: bytes


@dataclass(frozen=True, slots=True)
class PlainRecord:
    """An epoch-0 record that is not a handshake message (ChangeCipherSpec, alert)."""

    content_type: int
    version: int
    fragment: bytes


@dataclass(frozen=True, slots=True)
class ProtectedRecord:
    """A record OpenSSL encrypted (epoch > 0), sent exactly as it is."""

    content_type: int
    raw: bytes


FlightItem = HandshakeMessage | PlainRecord | ProtectedRecord


def decode_flight_trusted(data: bytes) -> list[FlightItem]:
    """Reassemble what OpenSSL wrote into messages we can re-encode.

    The bytes come from our own OpenSSL, not from the network.
    """
    slots: list[FlightItem | int] = []  # an int stands for the message with that msg_seq
    messages: dict[int, tuple[int, int, bytearray]] = {}
    for record in split_records_untrusted(data):
        if record.epoch:
            slots.append(ProtectedRecord(record.content_type, bytes(record)))
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
            slots.append(PlainRecord(record.content_type, record.version, record.fragment))
    items: list[FlightItem] = []
    for slot in slots:
        if isinstance(slot, int):
            version, msg_type, body = messages[slot]
            items.append(HandshakeMessage(version, msg_type, slot, bytes(body)))
        else:
            items.append(slot)
    return items


def is_alert(item: FlightItem) -> bool:
    """Whether a flight item is an alert (sent once, never kept for retransmission)."""
    return not isinstance(item, HandshakeMessage) and item.content_type == ContentType.ALERT
