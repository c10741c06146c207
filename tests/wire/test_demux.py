"""The first-byte demultiplexer against the ranges of RFC 7983 §7 and RFC 9443 §4."""

import pytest

from botcall.wire.demux import PacketKind, classify, is_rtcp
from botcall.wire.rtp import RtpPacket
from botcall.wire.stun import binding_request

# The RFC figures, written out independently of the module's table.
RFC_RANGES = [
    (range(0, 4), PacketKind.STUN),
    (range(16, 20), PacketKind.ZRTP),
    (range(20, 64), PacketKind.DTLS),
    (range(64, 80), PacketKind.TURN_CHANNEL),
    (range(80, 128), PacketKind.QUIC),
    (range(128, 192), PacketKind.RTP),
    (range(192, 256), PacketKind.QUIC),
]


def expected_kind(first_byte: int) -> PacketKind:
    for values, kind in RFC_RANGES:
        if first_byte in values:
            return kind
    return PacketKind.UNKNOWN


@pytest.mark.parametrize("first_byte", range(256))
def test_every_first_byte_matches_the_rfc(first_byte):
    assert classify(first_byte) is expected_kind(first_byte)


def test_boundaries():
    assert classify(3) is PacketKind.STUN and classify(4) is PacketKind.UNKNOWN
    assert classify(15) is PacketKind.UNKNOWN and classify(16) is PacketKind.ZRTP
    assert classify(19) is PacketKind.ZRTP and classify(20) is PacketKind.DTLS
    assert classify(63) is PacketKind.DTLS and classify(64) is PacketKind.TURN_CHANNEL
    assert classify(79) is PacketKind.TURN_CHANNEL and classify(80) is PacketKind.QUIC
    assert classify(127) is PacketKind.QUIC and classify(128) is PacketKind.RTP
    assert classify(191) is PacketKind.RTP and classify(192) is PacketKind.QUIC


def test_real_datagrams_are_routed():
    stun = binding_request("abcd:efgh", "p" * 22)
    rtp = bytes(RtpPacket(payload_type=111, sequence_number=1, timestamp=960, ssrc=7, payload=b"\xfc" * 20, marker=True))
    # A DTLS 1.2 ClientHello record header: content type 22 (handshake), version 0xFEFD.
    dtls = bytes([22, 0xFE, 0xFD]) + bytes(10)
    # An RTCP receiver report header: V=2, RC=0, PT=201.
    rtcp = bytes([0x80, 201, 0, 1]) + (1234).to_bytes(4, "big")
    assert classify(stun[0]) is PacketKind.STUN
    assert classify(dtls[0]) is PacketKind.DTLS
    assert classify(rtp[0]) is PacketKind.RTP and not is_rtcp(rtp)
    assert classify(rtcp[0]) is PacketKind.RTP and is_rtcp(rtcp)


@pytest.mark.parametrize("second_byte", range(256))
def test_rtcp_is_told_by_the_second_byte(second_byte):
    # RFC 5761 §4: RTCP packet types 192..223 (SR 200, RR 201, SDES 202, BYE 203,
    # APP 204, RTPFB 205, PSFB 206, XR 207) live where RTP has M + PT.
    assert is_rtcp(bytes([0x80, second_byte])) is (192 <= second_byte <= 223)


def test_rtp_with_marker_is_not_rtcp():
    # PT 111 with the marker bit is 0xEF = 239: outside 192..223.
    marked = bytes(RtpPacket(payload_type=111, sequence_number=5, timestamp=0, ssrc=1, marker=True))
    assert marked[1] == 0xEF and not is_rtcp(marked)
    # PT 96 with marker is 224: the first value past the RTCP range.
    assert not is_rtcp(bytes([0x80, 0x80 | 96]))


def test_short_datagrams_are_not_rtcp():
    assert not is_rtcp(b"")
    assert not is_rtcp(b"\x80")
