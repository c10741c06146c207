"""RTCP packets (RFC 3550 §6) and RTP/AVPF feedback (RFC 4585 §6).

Every function that takes bytes from the network ends in ``_untrusted`` and
raises only ``RtcpParseError``.

``parse_rtcp_compound_untrusted(data)`` splits a compound packet (RFC 3550
§6.1) into a list of frozen dataclasses; ``bytes(packet)`` serialises one and
``serialize_rtcp_compound(packets)`` a list. Types we do not interpret (APP,
XR, unknown packet types) come back as ``RawRtcpPacket`` and feedback messages
other than generic NACK and PLI as ``RtcpFeedback``, so the relay can forward
them untouched.

Choices the RFCs leave open, made here:

* Padding (P bit) is accepted only on the last packet of a compound, as RFC 3550
  §6.4.1 requires, and must be a multiple of 4 octets because the control
  information itself is always 32-bit aligned. The padding is stripped and not
  kept: ``serialize_rtcp_compound(parse_rtcp_compound_untrusted(b)) == b`` holds
  for every unpadded ``b`` that parses.
* A compound need not start with SR/RR: RFC 5506 reduced-size RTCP (which
  Chrome negotiates with ``a=rtcp-rsize``) sends lone feedback packets.
* SDES chunk padding and BYE reason padding must be null octets and must end
  exactly at the packet's end, so that the packet serialises back byte for byte.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import ClassVar, Iterable

from botcall.errors import RtcpParseError

RTCP_VERSION = 2
# V/P/count, packet type, length in 32-bit words minus one (RFC 3550 §6.4.1).
RTCP_HEADER = struct.Struct("!BBH")
RTCP_HEADER_SIZE = RTCP_HEADER.size
# Sender SSRC, then sender info: NTP timestamp, RTP timestamp, packet and octet counts.
SENDER_INFO = struct.Struct("!IQIII")
# SSRC, fraction lost (8) + cumulative lost (24), extended highest sequence,
# jitter, LSR, DLSR (RFC 3550 §6.4.1).
REPORT_BLOCK = struct.Struct("!IIIIII")
# Sender SSRC and media source SSRC of a feedback message (RFC 4585 §6.1).
FEEDBACK_HEADER = struct.Struct("!II")
# PID and BLP of one generic NACK (RFC 4585 §6.2.1).
NACK_ITEM = struct.Struct("!HH")

MAX_COUNT = 31
NTP_UNIX_OFFSET = 2_208_988_800
"""Seconds from the NTP epoch (1900-01-01) to the Unix epoch (1970-01-01)."""

_VERSION_BITS = RTCP_VERSION << 6
_PADDING_BIT = 0x20
_COUNT_MASK = 0x1F
_SSRC = struct.Struct("!I")
_SSRC_LISTS = tuple(struct.Struct(f"!{count}I") for count in range(MAX_COUNT + 1))
_U8_MAX = 0xFF
_U16_MAX = 0xFFFF
_U32_MAX = 0xFFFFFFFF
_U64_MAX = (1 << 64) - 1
_MAX_BODY = _U16_MAX * 4
_CUMULATIVE_LOST_MIN = -0x800000
_CUMULATIVE_LOST_MAX = 0x7FFFFF
_NACK_BITMASK_SPAN = 16


class RtcpPacketType(IntEnum):
    """RTCP packet types (RFC 3550 §12.1, RFC 4585 §6.1, RFC 3611 §2)."""

    SR = 200
    RR = 201
    SDES = 202
    BYE = 203
    APP = 204
    RTPFB = 205
    PSFB = 206
    XR = 207


class SdesItemType(IntEnum):
    """SDES item types (RFC 3550 §12.2); 0 ends a chunk's item list."""

    END = 0
    CNAME = 1
    NAME = 2
    EMAIL = 3
    PHONE = 4
    LOC = 5
    TOOL = 6
    NOTE = 7
    PRIV = 8


class RtpfbFormat(IntEnum):
    """Transport-layer feedback message types, the FMT field (RFC 4585 §6.2)."""

    GENERIC_NACK = 1  # RFC 4585 §6.2.1
    TRANSPORT_CC = 15  # draft-holmer-rmcat-transport-wide-cc-extensions-01 §3.1


class PsfbFormat(IntEnum):
    """Payload-specific feedback message types, the FMT field (RFC 4585 §6.3)."""

    PLI = 1  # RFC 4585 §6.3.1
    SLI = 2  # RFC 4585 §6.3.2
    RPSI = 3  # RFC 4585 §6.3.3
    AFB = 15  # RFC 4585 §6.4 (Chrome's REMB rides on it)


# --- Serialising helpers -------------------------------------------------------------


def _header(count: int, packet_type: int, body_size: int) -> bytes:
    # The length field counts 32-bit words minus one, header included, which is
    # the body's word count (RFC 3550 §6.4.1).
    if body_size % 4:
        raise ValueError(f"RTCP body of {body_size} bytes is not 32-bit aligned")
    if body_size > _MAX_BODY:
        raise ValueError(f"RTCP body of {body_size} bytes exceeds the 16-bit length field")
    return RTCP_HEADER.pack(_VERSION_BITS | count, packet_type, body_size // 4)


def _check_u32(name: str, value: int) -> None:
    if not 0 <= value <= _U32_MAX:
        raise ValueError(f"{name} must fit 32 bits, got {value}")


def _check_count(name: str, count: int) -> None:
    if count > MAX_COUNT:
        raise ValueError(f"at most {MAX_COUNT} {name} fit one RTCP packet, got {count}")


def _null_padding(size: int) -> bytes:
    return bytes(-size % 4)


# --- Packets -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReportBlock:
    """One reception report block (RFC 3550 §6.4.1).

    Attributes:
        ssrc: the source this block reports on.
        fraction_lost: packets lost since the previous report, as a fixed-point
            fraction of 256 (0-255).
        cumulative_lost: packets lost since the start, signed 24-bit (duplicates
            can make it negative).
        highest_sequence: extended highest sequence number received, modulo 2**32.
        jitter: interarrival jitter in RTP timestamp units.
        last_sr: middle 32 bits of the NTP timestamp of the last SR received
            from ``ssrc`` (LSR), 0 if none.
        delay_since_last_sr: delay since that SR in 1/65536 s (DLSR), 0 if none.
    """

    ssrc: int
    fraction_lost: int = 0
    cumulative_lost: int = 0
    highest_sequence: int = 0
    jitter: int = 0
    last_sr: int = 0
    delay_since_last_sr: int = 0

    def __bytes__(self) -> bytes:
        """Serialise the 24-byte block.

        Raises:
            ValueError: a field is out of range.
        """
        _check_u32("ssrc", self.ssrc)
        if not 0 <= self.fraction_lost <= _U8_MAX:
            raise ValueError(f"fraction_lost must be 0-255, got {self.fraction_lost}")
        if not _CUMULATIVE_LOST_MIN <= self.cumulative_lost <= _CUMULATIVE_LOST_MAX:
            raise ValueError(f"cumulative_lost must fit signed 24 bits, got {self.cumulative_lost}")
        _check_u32("highest_sequence", self.highest_sequence)
        _check_u32("jitter", self.jitter)
        _check_u32("last_sr", self.last_sr)
        _check_u32("delay_since_last_sr", self.delay_since_last_sr)
        return REPORT_BLOCK.pack(
            self.ssrc,
            self.fraction_lost << 24 | (self.cumulative_lost & 0xFFFFFF),
            self.highest_sequence,
            self.jitter,
            self.last_sr,
            self.delay_since_last_sr,
        )

    @property
    def loss_ratio(self) -> float:
        """``fraction_lost`` as a ratio in [0, 1)."""
        return self.fraction_lost / 256


@dataclass(frozen=True, slots=True)
class SenderReport:
    """SR: sender info plus reception reports (RFC 3550 §6.4.1).

    ``extension`` is the profile-specific extension after the report blocks,
    kept raw (a multiple of 4 bytes).
    """

    PACKET_TYPE: ClassVar[int] = RtcpPacketType.SR

    ssrc: int
    ntp_timestamp: int
    rtp_timestamp: int
    packet_count: int
    octet_count: int
    reports: tuple[ReportBlock, ...] = ()
    extension: bytes = b""

    def __bytes__(self) -> bytes:
        """Serialise the SR.

        Raises:
            ValueError: a field is out of range or there are more than 31 reports.
        """
        _check_u32("ssrc", self.ssrc)
        if not 0 <= self.ntp_timestamp <= _U64_MAX:
            raise ValueError(f"ntp_timestamp must fit 64 bits, got {self.ntp_timestamp}")
        _check_u32("rtp_timestamp", self.rtp_timestamp)
        _check_u32("packet_count", self.packet_count)
        _check_u32("octet_count", self.octet_count)
        _check_count("report blocks", len(self.reports))
        body = b"".join(
            [
                SENDER_INFO.pack(
                    self.ssrc, self.ntp_timestamp, self.rtp_timestamp, self.packet_count, self.octet_count
                ),
                *map(bytes, self.reports),
                self.extension,
            ]
        )
        return _header(len(self.reports), RtcpPacketType.SR, len(body)) + body


@dataclass(frozen=True, slots=True)
class ReceiverReport:
    """RR: reception reports from a participant that is not sending (RFC 3550 §6.4.2)."""

    PACKET_TYPE: ClassVar[int] = RtcpPacketType.RR

    ssrc: int
    reports: tuple[ReportBlock, ...] = ()
    extension: bytes = b""

    def __bytes__(self) -> bytes:
        """Serialise the RR.

        Raises:
            ValueError: a field is out of range or there are more than 31 reports.
        """
        _check_u32("ssrc", self.ssrc)
        _check_count("report blocks", len(self.reports))
        body = b"".join([_SSRC.pack(self.ssrc), *map(bytes, self.reports), self.extension])
        return _header(len(self.reports), RtcpPacketType.RR, len(body)) + body


@dataclass(frozen=True, slots=True)
class SdesItem:
    """One SDES item (RFC 3550 §6.5): a type (``SdesItemType`` or any 1-255) and its value.

    Values are kept as bytes: the RFC says UTF-8, but a relay must not fail on
    text it only forwards. PRIV values keep their prefix-length octet.
    """

    kind: int
    value: bytes


@dataclass(frozen=True, slots=True)
class SdesChunk:
    """The items describing one source (RFC 3550 §6.5)."""

    ssrc: int
    items: tuple[SdesItem, ...] = ()

    @property
    def cname(self) -> bytes | None:
        """The first CNAME item's value, or ``None``."""
        for item in self.items:
            if item.kind == SdesItemType.CNAME:
                return item.value
        return None

    def _serialise(self) -> bytes:
        _check_u32("ssrc", self.ssrc)
        parts = [_SSRC.pack(self.ssrc)]
        size = 4
        for item in self.items:
            if not 1 <= item.kind <= _U8_MAX:
                raise ValueError(f"SDES item type must be 1-255, got {item.kind}")
            if len(item.value) > _U8_MAX:
                raise ValueError(f"SDES item values are at most 255 bytes, got {len(item.value)}")
            parts.append(bytes((item.kind, len(item.value))))
            parts.append(item.value)
            size += 2 + len(item.value)
        # The END item (one null octet), then nulls up to the next 32-bit boundary.
        parts.append(bytes(1 + -(size + 1) % 4))
        return b"".join(parts)


@dataclass(frozen=True, slots=True)
class Sdes:
    """SDES: source descriptions, one chunk per source (RFC 3550 §6.5)."""

    PACKET_TYPE: ClassVar[int] = RtcpPacketType.SDES

    chunks: tuple[SdesChunk, ...] = ()

    def __bytes__(self) -> bytes:
        """Serialise the SDES packet.

        Raises:
            ValueError: a field is out of range or there are more than 31 chunks.
        """
        _check_count("SDES chunks", len(self.chunks))
        body = b"".join([chunk._serialise() for chunk in self.chunks])
        return _header(len(self.chunks), RtcpPacketType.SDES, len(body)) + body


@dataclass(frozen=True, slots=True)
class Bye:
    """BYE: sources leaving, with an optional reason (RFC 3550 §6.6).

    ``reason`` is ``None`` when absent; ``b""`` is a present, empty reason.
    """

    PACKET_TYPE: ClassVar[int] = RtcpPacketType.BYE

    ssrcs: tuple[int, ...] = ()
    reason: bytes | None = None

    def __bytes__(self) -> bytes:
        """Serialise the BYE.

        Raises:
            ValueError: an SSRC is out of range, there are more than 31 SSRCs or
                the reason is longer than 255 bytes.
        """
        _check_count("BYE SSRCs", len(self.ssrcs))
        for ssrc in self.ssrcs:
            _check_u32("ssrc", ssrc)
        parts = [_SSRC_LISTS[len(self.ssrcs)].pack(*self.ssrcs)]
        if self.reason is not None:
            if len(self.reason) > _U8_MAX:
                raise ValueError(f"BYE reason is at most 255 bytes, got {len(self.reason)}")
            parts.append(bytes((len(self.reason),)))
            parts.append(self.reason)
            parts.append(_null_padding(1 + len(self.reason)))
        body = b"".join(parts)
        return _header(len(self.ssrcs), RtcpPacketType.BYE, len(body)) + body


@dataclass(frozen=True, slots=True)
class GenericNack:
    """RTPFB generic NACK (RFC 4585 §6.2.1).

    ``items`` are ``(pid, blp)`` pairs: PID is a lost sequence number and bit
    ``i`` of BLP marks ``pid + i + 1`` lost too. Use ``from_lost`` and
    ``lost_sequence_numbers`` rather than building them by hand.
    """

    PACKET_TYPE: ClassVar[int] = RtcpPacketType.RTPFB
    FMT: ClassVar[int] = RtpfbFormat.GENERIC_NACK

    sender_ssrc: int
    media_ssrc: int
    items: tuple[tuple[int, int], ...] = ()

    @classmethod
    def from_lost(cls, sender_ssrc: int, media_ssrc: int, lost: Iterable[int]) -> GenericNack:
        """Build a NACK for ``lost`` sequence numbers (see ``nack_items_from_lost``)."""
        return cls(sender_ssrc, media_ssrc, nack_items_from_lost(lost))

    def lost_sequence_numbers(self) -> list[int]:
        """The 16-bit sequence numbers this NACK reports lost (see ``expand_nack_items``)."""
        return expand_nack_items(self.items)

    def __bytes__(self) -> bytes:
        """Serialise the NACK.

        Raises:
            ValueError: an SSRC, PID or BLP is out of range.
        """
        _check_u32("sender_ssrc", self.sender_ssrc)
        _check_u32("media_ssrc", self.media_ssrc)
        parts = [FEEDBACK_HEADER.pack(self.sender_ssrc, self.media_ssrc)]
        for pid, blp in self.items:
            if not (0 <= pid <= _U16_MAX and 0 <= blp <= _U16_MAX):
                raise ValueError(f"NACK PID and BLP are 16-bit, got ({pid}, {blp})")
            parts.append(NACK_ITEM.pack(pid, blp))
        body = b"".join(parts)
        return _header(self.FMT, self.PACKET_TYPE, len(body)) + body


@dataclass(frozen=True, slots=True)
class PictureLossIndication:
    """PSFB PLI (RFC 4585 §6.3.1): no FCI, just the two SSRCs."""

    PACKET_TYPE: ClassVar[int] = RtcpPacketType.PSFB
    FMT: ClassVar[int] = PsfbFormat.PLI

    sender_ssrc: int
    media_ssrc: int

    def __bytes__(self) -> bytes:
        """Serialise the PLI.

        Raises:
            ValueError: an SSRC is out of range.
        """
        _check_u32("sender_ssrc", self.sender_ssrc)
        _check_u32("media_ssrc", self.media_ssrc)
        body = FEEDBACK_HEADER.pack(self.sender_ssrc, self.media_ssrc)
        return _header(self.FMT, self.PACKET_TYPE, len(body)) + body


@dataclass(frozen=True, slots=True)
class RtcpFeedback:
    """Any other RTPFB/PSFB message (RFC 4585 §6.1) with its FCI kept raw.

    Transport-wide congestion control and REMB arrive as this. Building one
    with the FMT of a generic NACK or a PLI serialises fine but parses back as
    ``GenericNack`` / ``PictureLossIndication``.
    """

    packet_type: int
    fmt: int
    sender_ssrc: int
    media_ssrc: int
    fci: bytes = b""

    def __bytes__(self) -> bytes:
        """Serialise the feedback message.

        Raises:
            ValueError: a field is out of range or the FCI is not 32-bit aligned.
        """
        if not 0 <= self.packet_type <= _U8_MAX:
            raise ValueError(f"packet_type must be 0-255, got {self.packet_type}")
        if not 0 <= self.fmt <= MAX_COUNT:
            raise ValueError(f"fmt must be 0-31, got {self.fmt}")
        _check_u32("sender_ssrc", self.sender_ssrc)
        _check_u32("media_ssrc", self.media_ssrc)
        body = FEEDBACK_HEADER.pack(self.sender_ssrc, self.media_ssrc) + self.fci
        return _header(self.fmt, self.packet_type, len(body)) + body


@dataclass(frozen=True, slots=True)
class RawRtcpPacket:
    """A packet we do not interpret (APP, XR, unknown types), kept for relaying.

    ``count`` is the 5-bit field after V and P (the APP subtype, for instance);
    ``body`` is everything after the 4-byte header, padding excluded. Building
    one with a type this module interprets serialises fine but parses back as
    that type.
    """

    packet_type: int
    count: int = 0
    body: bytes = b""

    def __bytes__(self) -> bytes:
        """Serialise the packet.

        Raises:
            ValueError: a field is out of range or the body is not 32-bit aligned.
        """
        if not 0 <= self.packet_type <= _U8_MAX:
            raise ValueError(f"packet_type must be 0-255, got {self.packet_type}")
        if not 0 <= self.count <= MAX_COUNT:
            raise ValueError(f"count must be 0-31, got {self.count}")
        return _header(self.count, self.packet_type, len(self.body)) + self.body


RtcpPacket = (
    SenderReport
    | ReceiverReport
    | Sdes
    | Bye
    | GenericNack
    | PictureLossIndication
    | RtcpFeedback
    | RawRtcpPacket
)
"""Any packet ``parse_rtcp_compound_untrusted`` returns."""


def serialize_rtcp_compound(packets: Iterable[RtcpPacket]) -> bytes:
    """Serialise packets back to back into one compound packet (RFC 3550 §6.1).

    Raises:
        ValueError: no packets, or a packet's fields are out of range.
    """
    data = b"".join([bytes(packet) for packet in packets])
    if not data:
        raise ValueError("a compound RTCP packet needs at least one packet")
    return data


# --- Parsing -------------------------------------------------------------------------


def parse_rtcp_compound_untrusted(data: bytes) -> list[RtcpPacket]:
    """Parse a compound RTCP packet (RFC 3550 §6.1) into its packets.

    Args:
        data: one datagram (``bytes``, or a ``bytearray``/``memoryview`` of one).

    Returns:
        The packets in wire order (at least one).

    Raises:
        RtcpParseError: empty input, a truncated header, version not 2, a length
            field overrunning the datagram, padding that is not on the last
            packet / zero / not a multiple of 4 / larger than the body, or a
            packet whose contents overrun or do not fill its declared length.
    """
    size = len(data)
    if size == 0:
        raise RtcpParseError("empty RTCP packet")
    packets: list[RtcpPacket] = []
    offset = 0
    while offset < size:
        if offset + RTCP_HEADER_SIZE > size:
            raise RtcpParseError(f"truncated RTCP header at offset {offset}")
        first, packet_type, words = RTCP_HEADER.unpack_from(data, offset)
        if first >> 6 != RTCP_VERSION:
            raise RtcpParseError(f"RTCP version {first >> 6} at offset {offset}, expected 2")
        start = offset + RTCP_HEADER_SIZE
        end = start + 4 * words
        if end > size:
            raise RtcpParseError(f"RTCP length of {words} words at offset {offset} overruns the datagram")
        body_end = end
        if first & _PADDING_BIT:
            if end != size:
                raise RtcpParseError("RTCP padding on a packet that is not the last of the compound")
            padding = data[end - 1] if end > start else 0
            if padding == 0 or padding % 4 or padding > end - start:
                raise RtcpParseError(f"RTCP padding count {padding} is invalid for a {end - start}-byte body")
            body_end = end - padding
        packets.append(_parse_packet(packet_type, first & _COUNT_MASK, data, start, body_end))
        offset = end
    return packets


def _parse_packet(packet_type: int, count: int, data: bytes, start: int, end: int) -> RtcpPacket:
    if packet_type == RtcpPacketType.SR:
        return _parse_sender_report(count, data, start, end)
    if packet_type == RtcpPacketType.RR:
        return _parse_receiver_report(count, data, start, end)
    if packet_type == RtcpPacketType.SDES:
        return _parse_sdes(count, data, start, end)
    if packet_type == RtcpPacketType.BYE:
        return _parse_bye(count, data, start, end)
    if packet_type == RtcpPacketType.RTPFB or packet_type == RtcpPacketType.PSFB:
        return _parse_feedback(packet_type, count, data, start, end)
    return RawRtcpPacket(packet_type, count, bytes(data[start:end]))


def _parse_report_blocks(count: int, data: bytes, offset: int) -> tuple[ReportBlock, ...]:
    blocks = []
    for _ in range(count):
        ssrc, lost, highest, jitter, last_sr, dlsr = REPORT_BLOCK.unpack_from(data, offset)
        cumulative = lost & 0xFFFFFF
        if cumulative > _CUMULATIVE_LOST_MAX:
            cumulative -= 1 << 24
        blocks.append(ReportBlock(ssrc, lost >> 24, cumulative, highest, jitter, last_sr, dlsr))
        offset += REPORT_BLOCK.size
    return tuple(blocks)


def _parse_sender_report(count: int, data: bytes, start: int, end: int) -> SenderReport:
    reports_start = start + SENDER_INFO.size
    if reports_start > end:
        raise RtcpParseError(f"SR body of {end - start} bytes is shorter than the sender info")
    reports_end = reports_start + count * REPORT_BLOCK.size
    if reports_end > end:
        raise RtcpParseError(f"SR report count {count} overruns its {end - start}-byte body")
    ssrc, ntp, rtp_timestamp, packet_count, octet_count = SENDER_INFO.unpack_from(data, start)
    return SenderReport(
        ssrc,
        ntp,
        rtp_timestamp,
        packet_count,
        octet_count,
        _parse_report_blocks(count, data, reports_start),
        bytes(data[reports_end:end]),
    )


def _parse_receiver_report(count: int, data: bytes, start: int, end: int) -> ReceiverReport:
    reports_start = start + _SSRC.size
    if reports_start > end:
        raise RtcpParseError("RR body has no SSRC")
    reports_end = reports_start + count * REPORT_BLOCK.size
    if reports_end > end:
        raise RtcpParseError(f"RR report count {count} overruns its {end - start}-byte body")
    (ssrc,) = _SSRC.unpack_from(data, start)
    return ReceiverReport(ssrc, _parse_report_blocks(count, data, reports_start), bytes(data[reports_end:end]))


def _check_null_padding(data: bytes, start: int, end: int, what: str) -> None:
    for index in range(start, end):
        if data[index]:
            raise RtcpParseError(f"{what} padding octet is not null")


def _parse_sdes(count: int, data: bytes, start: int, end: int) -> Sdes:
    chunks = []
    position = start
    for _ in range(count):
        if position + _SSRC.size > end:
            raise RtcpParseError(f"SDES chunk count {count} overruns its {end - start}-byte body")
        (ssrc,) = _SSRC.unpack_from(data, position)
        position += _SSRC.size
        items = []
        while True:
            if position >= end:
                raise RtcpParseError("SDES chunk has no END item")
            kind = data[position]
            if kind == SdesItemType.END:
                # The END octet, then nulls to the next 32-bit boundary. The body
                # is 32-bit aligned, so the boundary never lies past ``end``.
                position += 1
                aligned = position + (-(position - start) % 4)
                _check_null_padding(data, position, aligned, "SDES chunk")
                position = aligned
                break
            if position + 2 > end:
                raise RtcpParseError(f"SDES item {kind} has no length octet")
            item_end = position + 2 + data[position + 1]
            if item_end > end:
                raise RtcpParseError(f"SDES item {kind} overruns its packet")
            items.append(SdesItem(kind, bytes(data[position + 2 : item_end])))
            position = item_end
        chunks.append(SdesChunk(ssrc, tuple(items)))
    if position != end:
        raise RtcpParseError(f"{end - position} bytes after the last SDES chunk")
    return Sdes(tuple(chunks))


def _parse_bye(count: int, data: bytes, start: int, end: int) -> Bye:
    position = start + 4 * count
    if position > end:
        raise RtcpParseError(f"BYE source count {count} overruns its {end - start}-byte body")
    ssrcs = _SSRC_LISTS[count].unpack_from(data, start)
    reason = None
    if position < end:
        reason_end = position + 1 + data[position]
        if reason_end > end:
            raise RtcpParseError("BYE reason overruns its packet")
        reason = bytes(data[position + 1 : reason_end])
        aligned = reason_end + (-(reason_end - start) % 4)
        if aligned != end:
            raise RtcpParseError(f"{end - aligned} bytes after the BYE reason")
        _check_null_padding(data, reason_end, aligned, "BYE reason")
    return Bye(ssrcs, reason)


def _parse_feedback(packet_type: int, fmt: int, data: bytes, start: int, end: int) -> RtcpPacket:
    fci_start = start + FEEDBACK_HEADER.size
    if fci_start > end:
        raise RtcpParseError(f"feedback body of {end - start} bytes has no SSRCs")
    sender_ssrc, media_ssrc = FEEDBACK_HEADER.unpack_from(data, start)
    if packet_type == RtcpPacketType.RTPFB and fmt == RtpfbFormat.GENERIC_NACK:
        # The body is 32-bit aligned, so the FCI splits into whole items.
        items = tuple(NACK_ITEM.iter_unpack(data[fci_start:end]))
        return GenericNack(sender_ssrc, media_ssrc, items)
    if packet_type == RtcpPacketType.PSFB and fmt == PsfbFormat.PLI:
        if fci_start != end:
            raise RtcpParseError("PLI carries an FCI; RFC 4585 §6.3.1 requires length 2")
        return PictureLossIndication(sender_ssrc, media_ssrc)
    return RtcpFeedback(packet_type, fmt, sender_ssrc, media_ssrc, bytes(data[fci_start:end]))


# --- Generic NACK helpers ------------------------------------------------------------


def nack_items_from_lost(lost: Iterable[int]) -> tuple[tuple[int, int], ...]:
    """Pack lost sequence numbers into generic NACK ``(pid, blp)`` items (RFC 4585 §6.2.1).

    Args:
        lost: sequence numbers in ascending order (extended or 16-bit; only the
            low 16 bits go on the wire). Each one within 16 after the current
            item's PID joins its bitmask; any other starts a new item.

    Returns:
        The items, in order.
    """
    items: list[tuple[int, int]] = []
    pid = blp = -1
    for sequence in lost:
        sequence &= _U16_MAX
        distance = (sequence - pid) & _U16_MAX
        if pid >= 0 and 1 <= distance <= _NACK_BITMASK_SPAN:
            blp |= 1 << (distance - 1)
            items[-1] = (pid, blp)
        elif pid < 0 or distance:
            pid, blp = sequence, 0
            items.append((pid, blp))
    return tuple(items)


def expand_nack_items(items: Iterable[tuple[int, int]]) -> list[int]:
    """List the 16-bit sequence numbers that generic NACK items report lost.

    Args:
        items: ``(pid, blp)`` pairs.

    Returns:
        Each sequence number once, in the order the items give them (a PID, then
        its bitmask from the lowest bit), wrapping past 65535 to 0.
    """
    lost: dict[int, None] = {}
    for pid, blp in items:
        lost[pid] = None
        bit = 0
        while blp >> bit:
            if blp >> bit & 1:
                lost[(pid + bit + 1) & _U16_MAX] = None
            bit += 1
    return list(lost)


# --- NTP time and reception statistics -----------------------------------------------


def unix_to_ntp(unix_seconds: float) -> int:
    """Convert Unix time in seconds to a 64-bit NTP timestamp (RFC 3550 §4).

    Args:
        unix_seconds: seconds since 1970-01-01 (the caller's wall clock; the
            sans-IO code never reads it itself).

    Returns:
        32.32 fixed-point seconds since 1900-01-01, the seconds modulo 2**32
        (after 2036-02-07 the count wraps into NTP era 1, RFC 5905 §6).
    """
    whole = math.floor(unix_seconds)
    fraction = round((unix_seconds - whole) * 2**32)
    if fraction == 1 << 32:
        whole += 1
        fraction = 0
    return ((whole + NTP_UNIX_OFFSET) & _U32_MAX) << 32 | fraction


def ntp_to_unix(ntp_timestamp: int) -> float:
    """Convert a 64-bit NTP timestamp to Unix seconds.

    Seconds with the top bit clear are taken as NTP era 1 (2036-2104), as
    RFC 4330 §3 suggests, so the result is right from 1968 to 2104.

    Args:
        ntp_timestamp: 32.32 fixed-point seconds since 1900 (modulo 2**32 s).

    Returns:
        Seconds since 1970-01-01.
    """
    seconds = ntp_timestamp >> 32 & _U32_MAX
    if not seconds & 0x80000000:
        seconds += 1 << 32
    return seconds - NTP_UNIX_OFFSET + (ntp_timestamp & _U32_MAX) / 2**32


def ntp_middle_32(ntp_timestamp: int) -> int:
    """The middle 32 bits of an NTP timestamp: an SR's ID in LSR (RFC 3550 §6.4.1)."""
    return ntp_timestamp >> 16 & _U32_MAX


def seconds_to_compact(seconds: float) -> int:
    """Seconds as a 16.16 fixed-point "compact NTP" value (the DLSR unit), clamped to 32 bits."""
    return min(max(round(seconds * 65536), 0), _U32_MAX)


def compact_to_seconds(compact: int) -> float:
    """A 16.16 fixed-point value (LSR, DLSR) in seconds."""
    return compact / 65536


def round_trip_time(arrival_compact: int, last_sr: int, delay_since_last_sr: int) -> float | None:
    """Round-trip time from a report block (RFC 3550 §6.4.1, Figure 2).

    Args:
        arrival_compact: ``ntp_middle_32`` of the time the report block arrived.
        last_sr: the block's LSR.
        delay_since_last_sr: the block's DLSR.

    Returns:
        Seconds, or ``None`` when the block has no LSR (no SR received yet). A
        negative result (clock steps, a forged block) is clamped to 0.
    """
    if last_sr == 0:
        return None
    elapsed = (arrival_compact - last_sr - delay_since_last_sr) & _U32_MAX
    if elapsed & 0x80000000:
        return 0.0
    return elapsed / 65536


def fraction_lost(expected_interval: int, received_interval: int) -> int:
    """Fraction lost over an interval, 8-bit fixed point (RFC 3550 §A.3).

    Duplicates can make ``received_interval`` exceed ``expected_interval``; that
    counts as no loss. Losing everything yields 255, the largest value that fits.
    """
    lost_interval = expected_interval - received_interval
    if expected_interval <= 0 or lost_interval <= 0:
        return 0
    return min((lost_interval << 8) // expected_interval, _U8_MAX)


def report_block_from_stats(
    ssrc: int,
    *,
    base_sequence: int,
    extended_highest_sequence: int,
    received: int,
    expected_prior: int,
    received_prior: int,
    jitter: float,
    last_sr: int = 0,
    delay_since_last_sr: float = 0.0,
) -> ReportBlock:
    """Build a reception report block from a receiver's statistics (RFC 3550 §A.3).

    Args:
        ssrc: the source reported on.
        base_sequence: extended sequence number of the first packet received.
        extended_highest_sequence: highest extended sequence number received.
        received: packets received since the start (duplicates included).
        expected_prior: ``extended_highest_sequence - base_sequence + 1`` at the
            previous report (0 for the first); the caller keeps it.
        received_prior: ``received`` at the previous report (0 for the first).
        jitter: interarrival jitter estimate in RTP timestamp units (§A.8).
        last_sr: ``ntp_middle_32`` of the last SR from ``ssrc``, 0 if none.
        delay_since_last_sr: seconds since that SR arrived (ignored without one).

    Returns:
        The block; cumulative loss is clamped to signed 24 bits, the other
        fields to their widths.
    """
    expected = extended_highest_sequence - base_sequence + 1
    cumulative = min(max(expected - received, _CUMULATIVE_LOST_MIN), _CUMULATIVE_LOST_MAX)
    return ReportBlock(
        ssrc,
        fraction_lost(expected - expected_prior, received - received_prior),
        cumulative,
        extended_highest_sequence & _U32_MAX,
        min(max(int(jitter), 0), _U32_MAX),
        last_sr,
        seconds_to_compact(delay_since_last_sr) if last_sr else 0,
    )
