"""RTP packets (RFC 3550 §5.1) with RFC 8285 header extensions.

Every function that takes bytes from the network ends in ``_untrusted`` and
raises only ``RtpParseError``.

Two ways in:

* ``parse_rtp_untrusted(data)`` builds an ``RtpPacket``; ``bytes(packet)``
  serialises it again.
* The ``rtp_*_untrusted(data)`` peek helpers read one header field straight from
  the datagram without building anything, for the relay's per-packet path.

Padding (RFC 3550 §5.1, P bit): only its size is kept (``padding_size``, which
counts the final count octet too, as on the wire). Serialising writes
``padding_size - 1`` zero octets and then the count. Senders pad with zeros, so
``bytes(parse_rtp_untrusted(b)) == b`` for every ``b`` that parses and whose
padding octets are zero; a packet padded with other values comes back with them
zeroed, which no receiver can tell apart (RFC 3550 gives them no meaning).

RFC 5761 §4 (RTP and RTCP on one port): the parser does not reject payload types
64-95; the caller tells RTCP apart first with ``demux.is_rtcp`` (the one
RTCP test) and sends those datagrams to ``rtcp.py``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Iterable

from botcall.errors import RtpParseError

RTP_VERSION = 2
# V/P/X/CC, M/PT, sequence number, timestamp, SSRC (RFC 3550 §5.1).
RTP_HEADER = struct.Struct("!BBHII")
RTP_HEADER_SIZE = RTP_HEADER.size
# "defined by profile" and length in 32-bit words (RFC 3550 §5.3.1).
EXTENSION_HEADER = struct.Struct("!HH")

MAX_CSRC_COUNT = 15
MAX_PAYLOAD_TYPE = 127

# RFC 8285 §4.2: the one-byte form is marked by this "defined by profile" value.
ONE_BYTE_PROFILE = 0xBEDE
# RFC 8285 §4.3: the two-byte form is 0x100 in the top 12 bits and 4 "appbits".
TWO_BYTE_PROFILE = 0x1000
TWO_BYTE_PROFILE_MASK = 0xFFF0
# RFC 8285 §4.2: ID 15 is reserved; parsing stops there, its length ignored.
ONE_BYTE_STOP_ID = 15
ONE_BYTE_MAX_ID = 14
ONE_BYTE_MAX_LENGTH = 16
TWO_BYTE_MAX_ID = 255
TWO_BYTE_MAX_LENGTH = 255

# RFC 5761 §4: on a muxed port, payload types 64-95 (second octet 192-223 with
# the marker bit set) are RTCP packet types SR..., never RTP.
RTCP_PT_MIN = 64
RTCP_PT_MAX = 95

_VERSION_BITS = RTP_VERSION << 6
_PADDING_BIT = 0x20
_EXTENSION_BIT = 0x10
_CC_MASK = 0x0F
_MARKER_BIT = 0x80
_PT_MASK = 0x7F

# One precompiled struct per CSRC count, so neither parse nor serialise formats
# a struct string per packet.
_CSRC_STRUCTS = tuple(struct.Struct(f"!{count}I") for count in range(MAX_CSRC_COUNT + 1))
_PEEK_SEQ = struct.Struct("!H")
_PEEK_U32 = struct.Struct("!I")
_SEQ_OFFSET = 2
_TIMESTAMP_OFFSET = 4
_SSRC_OFFSET = 8
_U16_MAX = 0xFFFF
_U32_MAX = 0xFFFFFFFF
_MAX_EXTENSION_BYTES = _U16_MAX * 4
_MAX_PADDING = 255


@dataclass(frozen=True, slots=True)
class RtpHeaderExtension:
    """The header extension block (RFC 3550 §5.3.1) kept as raw bytes.

    ``profile`` is the 16-bit "defined by profile" field: 0xBEDE for RFC 8285
    one-byte elements, 0x1000-0x100F for two-byte elements. ``data`` is the
    extension body (a multiple of 4 bytes).
    """

    profile: int
    data: bytes

    @property
    def is_one_byte(self) -> bool:
        """Whether the block uses the RFC 8285 one-byte element form."""
        return self.profile == ONE_BYTE_PROFILE

    @property
    def is_two_byte(self) -> bool:
        """Whether the block uses the RFC 8285 two-byte element form."""
        return self.profile & TWO_BYTE_PROFILE_MASK == TWO_BYTE_PROFILE

    def elements_untrusted(self) -> tuple[tuple[int, bytes], ...]:
        """Split the block into RFC 8285 elements.

        Padding octets (value 0) between and after elements are skipped. In the
        one-byte form an element with ID 15 ends parsing (RFC 8285 §4.2).

        Returns:
            ``(id, value)`` pairs in wire order.

        Raises:
            RtpParseError: the profile is not an RFC 8285 form, an element
                overruns the block, or a one-byte padding octet is not zero.
        """
        data = self.data
        size = len(data)
        elements: list[tuple[int, bytes]] = []
        offset = 0
        if self.profile == ONE_BYTE_PROFILE:
            while offset < size:
                octet = data[offset]
                element_id = octet >> 4
                if element_id == 0:
                    if octet != 0:
                        raise RtpParseError(f"one-byte extension: padding octet 0x{octet:02x} is not zero")
                    offset += 1
                    continue
                if element_id == ONE_BYTE_STOP_ID:
                    break
                end = offset + 1 + (octet & 0x0F) + 1
                if end > size:
                    raise RtpParseError(f"one-byte extension: element {element_id} overruns the block")
                elements.append((element_id, bytes(data[offset + 1 : end])))
                offset = end
        elif self.is_two_byte:
            while offset < size:
                element_id = data[offset]
                if element_id == 0:
                    offset += 1
                    continue
                if offset + 2 > size:
                    raise RtpParseError(f"two-byte extension: element {element_id} has no length octet")
                end = offset + 2 + data[offset + 1]
                if end > size:
                    raise RtpParseError(f"two-byte extension: element {element_id} overruns the block")
                elements.append((element_id, bytes(data[offset + 2 : end])))
                offset = end
        else:
            raise RtpParseError(f"extension profile 0x{self.profile:04x} is not an RFC 8285 form")
        return tuple(elements)

    def element_untrusted(self, element_id: int) -> bytes | None:
        """Return the value of the first element with ``element_id``, or ``None``.

        Raises:
            RtpParseError: as ``elements_untrusted``.
        """
        for found_id, value in self.elements_untrusted():
            if found_id == element_id:
                return value
        return None

    @classmethod
    def from_elements(
        cls,
        elements: Iterable[tuple[int, bytes]],
        *,
        two_byte: bool | None = None,
        appbits: int = 0,
    ) -> RtpHeaderExtension:
        """Build an RFC 8285 extension block from ``(id, value)`` pairs.

        Args:
            elements: element IDs and values, written in this order.
            two_byte: force the form; ``None`` picks the one-byte form when every
                ID is 1-14 and every value 1-16 bytes long, else the two-byte form.
            appbits: the 4 application bits of the two-byte form (RFC 8285 §4.3).

        Returns:
            The block, zero-padded to a multiple of 4 bytes.

        Raises:
            ValueError: an ID or value length does not fit the chosen form.
        """
        pairs = [(element_id, bytes(value)) for element_id, value in elements]
        if not 0 <= appbits <= 0x0F:
            raise ValueError(f"appbits must be 0-15, got {appbits}")
        fits_one_byte = all(
            1 <= element_id <= ONE_BYTE_MAX_ID and 1 <= len(value) <= ONE_BYTE_MAX_LENGTH
            for element_id, value in pairs
        )
        if two_byte is None:
            two_byte = not fits_one_byte or appbits != 0
        body = bytearray()
        if two_byte:
            for element_id, value in pairs:
                if not 1 <= element_id <= TWO_BYTE_MAX_ID:
                    raise ValueError(f"two-byte extension IDs are 1-255, got {element_id}")
                if len(value) > TWO_BYTE_MAX_LENGTH:
                    raise ValueError(f"two-byte extension values are at most 255 bytes, got {len(value)}")
                body.append(element_id)
                body.append(len(value))
                body += value
            profile = TWO_BYTE_PROFILE | appbits
        else:
            if appbits:
                raise ValueError("appbits exist only in the two-byte form")
            if not fits_one_byte:
                raise ValueError("one-byte extension elements need IDs 1-14 and values of 1-16 bytes")
            for element_id, value in pairs:
                body.append(element_id << 4 | (len(value) - 1))
                body += value
            profile = ONE_BYTE_PROFILE
        body += bytes(-len(body) % 4)
        if len(body) > _MAX_EXTENSION_BYTES:
            raise ValueError(f"extension block of {len(body)} bytes exceeds the 16-bit word count")
        return cls(profile, bytes(body))


@dataclass(frozen=True, slots=True)
class RtpPacket:
    """One RTP packet. ``bytes(packet)`` serialises it; see ``parse_rtp_untrusted``."""

    payload_type: int
    sequence_number: int
    timestamp: int
    ssrc: int
    payload: bytes = b""
    marker: bool = False
    csrc: tuple[int, ...] = ()
    extension: RtpHeaderExtension | None = None
    padding_size: int = 0

    def __bytes__(self) -> bytes:
        """Serialise the packet (RFC 3550 §5.1); padding octets are written as zeros.

        Raises:
            ValueError: a field is out of range (a programming error, not input).
        """
        self._check_fields()
        csrc = self.csrc
        extension = self.extension
        padding_size = self.padding_size
        first = _VERSION_BITS | len(csrc)
        second = self.payload_type | _MARKER_BIT if self.marker else self.payload_type
        if not csrc and extension is None and not padding_size:
            return RTP_HEADER.pack(first, second, self.sequence_number, self.timestamp, self.ssrc) + self.payload
        parts = []
        if extension is not None:
            first |= _EXTENSION_BIT
        if padding_size:
            first |= _PADDING_BIT
        parts.append(RTP_HEADER.pack(first, second, self.sequence_number, self.timestamp, self.ssrc))
        if csrc:
            parts.append(_CSRC_STRUCTS[len(csrc)].pack(*csrc))
        if extension is not None:
            parts.append(EXTENSION_HEADER.pack(extension.profile, len(extension.data) // 4))
            parts.append(extension.data)
        parts.append(self.payload)
        if padding_size:
            parts.append(bytes(padding_size - 1))
            parts.append(padding_size.to_bytes(1, "big"))
        return b"".join(parts)

    def _check_fields(self) -> None:
        if not 0 <= self.payload_type <= MAX_PAYLOAD_TYPE:
            raise ValueError(f"payload_type must be 0-127, got {self.payload_type}")
        if not 0 <= self.sequence_number <= _U16_MAX:
            raise ValueError(f"sequence_number must be 0-65535, got {self.sequence_number}")
        if not 0 <= self.timestamp <= _U32_MAX:
            raise ValueError(f"timestamp must fit 32 bits, got {self.timestamp}")
        if not 0 <= self.ssrc <= _U32_MAX:
            raise ValueError(f"ssrc must fit 32 bits, got {self.ssrc}")
        if len(self.csrc) > MAX_CSRC_COUNT:
            raise ValueError(f"at most 15 CSRCs, got {len(self.csrc)}")
        for csrc in self.csrc:
            if not 0 <= csrc <= _U32_MAX:
                raise ValueError(f"csrc must fit 32 bits, got {csrc}")
        if not 0 <= self.padding_size <= _MAX_PADDING:
            raise ValueError(f"padding_size must be 0-255 (it counts its own count octet), got {self.padding_size}")
        extension = self.extension
        if extension is not None:
            if not 0 <= extension.profile <= _U16_MAX:
                raise ValueError(f"extension profile must fit 16 bits, got {extension.profile}")
            if len(extension.data) % 4:
                raise ValueError(f"extension data must be a multiple of 4 bytes, got {len(extension.data)}")
            if len(extension.data) > _MAX_EXTENSION_BYTES:
                raise ValueError(f"extension data of {len(extension.data)} bytes exceeds the 16-bit word count")


def payload_offset_untrusted(data: bytes | memoryview) -> int:
    """Where an RTP packet's payload starts: after the fixed header, the CSRCs and
    the header extension (RFC 3550 §5.3.1), read without parsing the rest.

    For the per-packet paths that need only this; it checks no more than it
    reads (``parse_rtp_untrusted`` checks the whole packet).

    Raises:
        RtpParseError: a packet shorter than the header it announces (an empty
            payload is the caller's to judge).
    """
    first = data[0] if data else 0
    offset = 12 + 4 * (first & _CC_MASK)
    if first & _EXTENSION_BIT:
        if len(data) < offset + 4:
            raise RtpParseError("RTP packet shorter than its extension header")
        offset += 4 + 4 * ((data[offset + 2] << 8) | data[offset + 3])
    if len(data) < offset:
        raise RtpParseError("RTP packet shorter than its header")
    return offset


def parse_rtp_untrusted(data: bytes) -> RtpPacket:
    """Parse one RTP packet (RFC 3550 §5.1, §5.3.1).

    Args:
        data: the datagram (``bytes``, or a ``bytearray``/``memoryview`` of one).

    Returns:
        The packet. The extension block is kept raw; split it with
        ``RtpHeaderExtension.elements_untrusted``.

    Raises:
        RtpParseError: shorter than the fixed header, version not 2, the CSRC
            list or the extension overruns the datagram, or a padding count of 0
            or larger than what follows the header.
    """
    size = len(data)
    if size < RTP_HEADER_SIZE:
        raise RtpParseError(f"RTP packet of {size} bytes is shorter than the 12-byte header")
    first, second, sequence_number, timestamp, ssrc = RTP_HEADER.unpack_from(data)
    if first >> 6 != RTP_VERSION:
        raise RtpParseError(f"RTP version {first >> 6}, expected 2")
    csrc_count = first & _CC_MASK
    offset = RTP_HEADER_SIZE + 4 * csrc_count
    if offset > size:
        raise RtpParseError(f"CSRC count {csrc_count} overruns a {size}-byte packet")
    csrc = _CSRC_STRUCTS[csrc_count].unpack_from(data, RTP_HEADER_SIZE) if csrc_count else ()
    extension = None
    if first & _EXTENSION_BIT:
        if offset + EXTENSION_HEADER.size > size:
            raise RtpParseError("extension header overruns the packet")
        profile, words = EXTENSION_HEADER.unpack_from(data, offset)
        offset += EXTENSION_HEADER.size
        end = offset + 4 * words
        if end > size:
            raise RtpParseError(f"extension length of {words} words overruns the packet")
        extension = RtpHeaderExtension(profile, bytes(data[offset:end]))
        offset = end
    padding_size = 0
    end = size
    if first & _PADDING_BIT:
        padding_size = data[size - 1]
        if padding_size == 0:
            raise RtpParseError("padding count is 0")
        if padding_size > size - offset:
            raise RtpParseError(f"padding count {padding_size} exceeds the {size - offset} bytes after the header")
        end = size - padding_size
    return RtpPacket(
        second & _PT_MASK,
        sequence_number,
        timestamp,
        ssrc,
        bytes(data[offset:end]),
        bool(second & _MARKER_BIT),
        csrc,
        extension,
        padding_size,
    )
