"""RTP packets (RFC 3550 §5.1) with RFC 8285 header extensions.

Every function that takes bytes from the network ends in ``_untrusted`` and
raises only ``RtpParseError``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from botcall.errors import RtpParseError

RTP_VERSION = 2
# V/P/X/CC, M/PT, sequence number, timestamp, SSRC (RFC 3550 §5.1).
RTP_HEADER = struct.Struct("!BBHII")


@dataclass(frozen=True, slots=True)
class RtpHeaderExtension:
    """The header extension block (RFC 3550 §5.3.1) kept as raw bytes.

    ``profile`` is the 16-bit "defined by profile" field: 0xBEDE for RFC 8285
    one-byte elements, 0x1000-0x100F for two-byte elements. ``data`` is the
    extension body (a multiple of 4 bytes).
    """

    profile: int
    data: bytes


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
