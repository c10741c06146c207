"""First-byte demultiplexing of the one media port (RFC 7983 §7, updated by RFC 9443 §4).

STUN, DTLS and SRTP/SRTCP share a single UDP port. The first byte of a datagram
says which protocol it belongs to; the ranges are disjoint by design, so one
table lookup routes every packet. RTP and RTCP share a range and are told apart
by the second byte (RFC 5761 §4).

Both lookups are 256-entry tuples built once at import: this runs for every
datagram the relay receives.
"""

from __future__ import annotations

from enum import IntEnum


class PacketKind(IntEnum):
    """What a datagram is, judged by its first byte (RFC 7983 §7, RFC 9443 §4)."""

    UNKNOWN = 0
    STUN = 1  # 0..3 (RFC 7983 §7; the two top bits of a STUN header are zero)
    ZRTP = 2  # 16..19 (RFC 6189); we never speak it: drop
    DTLS = 3  # 20..63 (RFC 7983 §7; TLS content types 20..63)
    TURN_CHANNEL = 4  # 64..79 (RFC 9443 §4 narrowed channels to 0x4000-0x4FFF); drop
    QUIC = 5  # 80..127 and 192..255 (RFC 9443 §4); drop
    RTP = 6  # 128..191: RTP or RTCP, version 2 (RFC 7983 §7); see is_rtcp


def _build_kind_table() -> tuple[PacketKind, ...]:
    table = [PacketKind.UNKNOWN] * 256
    for first, last, kind in (
        (0, 3, PacketKind.STUN),
        (16, 19, PacketKind.ZRTP),
        (20, 63, PacketKind.DTLS),
        (64, 79, PacketKind.TURN_CHANNEL),
        (80, 127, PacketKind.QUIC),
        (128, 191, PacketKind.RTP),
        (192, 255, PacketKind.QUIC),
    ):
        for value in range(first, last + 1):
            table[value] = kind
    return tuple(table)


_KIND_BY_FIRST_BYTE = _build_kind_table()

# RFC 5761 §4: with RTP and RTCP on one port, RTCP packet types 192..223 occupy
# the second byte where RTP has marker + payload type; RTP payload types 64..95
# (which would collide) are not used, so this split is exact.
RTCP_BY_SECOND_BYTE = tuple(192 <= value <= 223 for value in range(256))


def classify(first_byte: int) -> PacketKind:
    """Classify a datagram by its first byte.

    Args:
        first_byte: ``data[0]`` of the datagram (0..255).

    Returns:
        The ``PacketKind``; ``UNKNOWN`` for 4..15 and anything unassigned.

    Raises:
        IndexError: ``first_byte`` is outside 0..255 (a caller bug, never network data).
    """
    return _KIND_BY_FIRST_BYTE[first_byte]


def is_rtcp(data: bytes) -> bool:
    """Tell RTCP from RTP in a datagram already classified as ``PacketKind.RTP``.

    Args:
        data: the datagram (at least two bytes for a meaningful answer).

    Returns:
        True when the second byte is an RTCP packet type, 192..223 (RFC 5761 §4).
        A datagram shorter than two bytes is not RTCP.
    """
    return len(data) >= 2 and RTCP_BY_SECOND_BYTE[data[1]]
