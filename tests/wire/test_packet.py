"""RTP header codec (RFC 3550 §5.1), RFC 8285 extension elements, peek helpers."""


import opuslib
import pytest

from botcall.errors import RtpParseError
from botcall.wire.demux import is_rtcp
from botcall.wire.rtp import (
    ONE_BYTE_PROFILE,
    RtpHeaderExtension,
    RtpPacket,
    parse_rtp_untrusted,
)
from tests.kit.captures import load_hex, load_hex_lines



# A minimal valid header: V=2, PT=111, seq 0x0102, ts 0x03040506, SSRC 0x0708090a.
HEADER = bytes.fromhex("806f 0102 03040506 0708090a".replace(" ", ""))


# --- Fields --------------------------------------------------------------------------


def test_fixed_header_fields():
    packet = parse_rtp_untrusted(HEADER + b"opus")
    assert packet == RtpPacket(111, 0x0102, 0x03040506, 0x0708090A, b"opus")
    assert packet.marker is False
    assert packet.csrc == ()
    assert packet.extension is None
    assert packet.padding_size == 0


def test_marker_and_payload_type_share_the_second_octet():
    packet = parse_rtp_untrusted(bytes([0x80, 0x80 | 96]) + HEADER[2:])
    assert packet.marker is True
    assert packet.payload_type == 96
    packet = parse_rtp_untrusted(bytes([0x80, 0x7F]) + HEADER[2:])
    assert (packet.marker, packet.payload_type) == (False, 127)


def test_largest_field_values():
    data = bytes.fromhex("80ff ffff ffffffff ffffffff".replace(" ", ""))
    packet = parse_rtp_untrusted(data)
    assert (packet.marker, packet.payload_type, packet.sequence_number) == (True, 127, 0xFFFF)
    assert (packet.timestamp, packet.ssrc) == (0xFFFFFFFF, 0xFFFFFFFF)
    assert bytes(packet) == data


def test_csrc_list():
    data = bytes([0x82]) + HEADER[1:] + bytes.fromhex("0000000a ffffffff") + b"pay"
    packet = parse_rtp_untrusted(data)
    assert packet.csrc == (10, 0xFFFFFFFF)
    assert packet.payload == b"pay"
    assert bytes(packet) == data


def test_fifteen_csrcs():
    csrcs = tuple(range(1, 16))
    packet = RtpPacket(0, 1, 2, 3, b"x", csrc=csrcs)
    data = bytes(packet)
    assert data[0] == 0x8F
    assert len(data) == 12 + 60 + 1
    assert parse_rtp_untrusted(data).csrc == csrcs


def test_extension_block_is_kept_raw():
    data = bytes([0x90]) + HEADER[1:] + bytes.fromhex("abcd0001 01020304") + b"pay"
    packet = parse_rtp_untrusted(data)
    assert packet.extension == RtpHeaderExtension(0xABCD, b"\x01\x02\x03\x04")
    assert packet.payload == b"pay"
    assert bytes(packet) == data


def test_empty_extension_block():
    data = bytes([0x90]) + HEADER[1:] + bytes.fromhex("bede0000")
    packet = parse_rtp_untrusted(data)
    assert packet.extension == RtpHeaderExtension(ONE_BYTE_PROFILE, b"")
    assert packet.payload == b""
    assert bytes(packet) == data


def test_csrc_then_extension_then_payload_then_padding():
    data = (
        bytes([0xB1]) + HEADER[1:] + bytes.fromhex("00000063") + bytes.fromhex("bede0001 10aa0000") + b"opus" + b"\x00\x00\x03"
    )
    packet = parse_rtp_untrusted(data)
    assert packet.csrc == (0x63,)
    assert packet.extension == RtpHeaderExtension(ONE_BYTE_PROFILE, bytes.fromhex("10aa0000"))
    assert packet.payload == b"opus"
    assert packet.padding_size == 3
    assert bytes(packet) == data


def test_padding_count_includes_itself():
    packet = parse_rtp_untrusted(bytes([0xA0]) + HEADER[1:] + b"opus" + b"\x00\x00\x00\x04")
    assert packet.payload == b"opus"
    assert packet.padding_size == 4


def test_padding_may_take_everything_after_the_header():
    packet = parse_rtp_untrusted(bytes([0xA0]) + HEADER[1:] + b"\x00\x00\x03")
    assert packet.payload == b""
    assert packet.padding_size == 3


def test_padding_octets_are_serialised_as_zeros():
    data = bytes([0xA0]) + HEADER[1:] + b"opus" + b"\xee\xee\x03"
    packet = parse_rtp_untrusted(data)
    assert packet.padding_size == 3
    assert bytes(packet) == bytes([0xA0]) + HEADER[1:] + b"opus" + b"\x00\x00\x03"


def test_single_octet_padding():
    packet = RtpPacket(111, 1, 2, 3, b"opus", padding_size=1)
    data = bytes(packet)
    assert data[0] & 0x20
    assert data[-5:] == b"opus\x01"
    assert parse_rtp_untrusted(data) == packet


def test_accepts_bytearray_and_memoryview():
    data = bytes([0x91]) + HEADER[1:] + bytes.fromhex("00000005 bede0001 10aa0000") + b"opus"
    expected = parse_rtp_untrusted(data)
    for view in (bytearray(data), memoryview(data), memoryview(b"junk" + data)[4:]):
        packet = parse_rtp_untrusted(view)
        assert packet == expected
        assert type(packet.payload) is bytes
        assert type(packet.extension.data) is bytes


def test_payload_types_64_to_95_still_parse_as_rtp():
    # Telling RTCP apart on a muxed port is the caller's job (RFC 5761 §4).
    packet = parse_rtp_untrusted(bytes([0x80, 72]) + HEADER[2:])
    assert packet.payload_type == 72


# --- Malformed -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "data, message",
    [
        pytest.param(b"", "shorter than the 12-byte header", id="empty"),
        pytest.param(HEADER[:11], "shorter than the 12-byte header", id="truncated-header"),
        pytest.param(bytes([0x00]) + HEADER[1:], "version 0", id="version-0"),
        pytest.param(bytes([0x40]) + HEADER[1:], "version 1", id="version-1"),
        pytest.param(bytes([0xC0]) + HEADER[1:], "version 3", id="version-3"),
        pytest.param(bytes([0x81]) + HEADER[1:], "CSRC count 1 overruns", id="csrc-past-end"),
        pytest.param(bytes([0x8F]) + HEADER[1:] + bytes(56), "CSRC count 15 overruns", id="csrc-one-short"),
        pytest.param(bytes([0x90]) + HEADER[1:], "extension header overruns", id="extension-header-missing"),
        pytest.param(bytes([0x90]) + HEADER[1:] + b"\xbe\xde\x00", "extension header overruns", id="ext-header-cut"),
        pytest.param(bytes([0x90]) + HEADER[1:] + bytes.fromhex("bede0001"), "1 words overruns", id="ext-length"),
        pytest.param(
            bytes([0x90]) + HEADER[1:] + bytes.fromhex("bede0002 10aa0000 000000"),
            "2 words overruns",
            id="extension-length-one-short",
        ),
        pytest.param(bytes([0x91]) + HEADER[1:] + bytes(4) + bytes.fromhex("bede"), "overruns", id="csrc-then-ext"),
        pytest.param(bytes([0xA0]) + HEADER[1:] + b"opus\x00", "padding count is 0", id="padding-0"),
        pytest.param(bytes([0xA0]) + HEADER[1:] + b"opus\x06", "padding count 6 exceeds", id="padding-past-payload"),
        pytest.param(bytes([0xA0]) + HEADER[1:], "padding count 10 exceeds the 0 bytes", id="padding-no-payload"),
        pytest.param(
            bytes([0xB0]) + HEADER[1:] + bytes.fromhex("bede0001 10aa0000") + b"\x02",
            "padding count 2 exceeds the 1 bytes",
            id="padding-into-extension",
        ),
    ],
)
def test_malformed_packets_raise_rtp_parse_error(data, message):
    with pytest.raises(RtpParseError, match=message) as info:
        parse_rtp_untrusted(data)
    assert info.value.counter == "malformed_rtp"


# --- Serialising ---------------------------------------------------------------------


def test_serialise_without_optional_parts_is_header_plus_payload():
    packet = RtpPacket(111, 0x0102, 0x03040506, 0x0708090A, b"opus")
    assert bytes(packet) == HEADER + b"opus"


def test_serialise_sets_the_flag_bits():
    extension = RtpHeaderExtension(ONE_BYTE_PROFILE, b"\x10\xaa\x00\x00")
    data = bytes(RtpPacket(0, 0, 0, 0, b"", True, (1, 2, 3), extension, 2))
    assert data[0] == 0x80 | 0x20 | 0x10 | 3
    assert data[1] == 0x80
    assert data[24:28] == bytes.fromhex("bede0001")
    assert data[-2:] == b"\x00\x02"


@pytest.mark.parametrize(
    "packet, message",
    [
        (RtpPacket(128, 0, 0, 0), "payload_type"),
        (RtpPacket(-1, 0, 0, 0), "payload_type"),
        (RtpPacket(0, 65536, 0, 0), "sequence_number"),
        (RtpPacket(0, -1, 0, 0), "sequence_number"),
        (RtpPacket(0, 0, 2**32, 0), "timestamp"),
        (RtpPacket(0, 0, 0, 2**32), "ssrc"),
        (RtpPacket(0, 0, 0, -1), "ssrc"),
        (RtpPacket(0, 0, 0, 0, csrc=tuple(range(16))), "at most 15 CSRCs"),
        (RtpPacket(0, 0, 0, 0, csrc=(2**32,)), "csrc"),
        (RtpPacket(0, 0, 0, 0, padding_size=256), "padding_size"),
        (RtpPacket(0, 0, 0, 0, padding_size=-1), "padding_size"),
        (RtpPacket(0, 0, 0, 0, extension=RtpHeaderExtension(0x10000, b"")), "profile"),
        (RtpPacket(0, 0, 0, 0, extension=RtpHeaderExtension(ONE_BYTE_PROFILE, b"\x10\xaa")), "multiple of 4"),
        (RtpPacket(0, 0, 0, 0, extension=RtpHeaderExtension(ONE_BYTE_PROFILE, bytes(4 * 65536))), "16-bit"),
    ],
)
def test_serialise_rejects_out_of_range_fields(packet, message):
    with pytest.raises(ValueError, match=message):
        bytes(packet)


# --- Real-world shaped packets -------------------------------------------------------


def test_chrome_shaped_opus_packet_with_audio_level():
    data = load_hex("chrome_opus_audio_level.rtp.hex")
    packet = parse_rtp_untrusted(data)
    assert (packet.payload_type, packet.marker) == (111, False)
    assert (packet.sequence_number, packet.timestamp, packet.ssrc) == (7213, 192000, 0x5E3A0B71)
    assert packet.extension.is_one_byte
    elements = dict(packet.extension.elements_untrusted())
    assert elements == {1: b"\xaa", 3: b"\x01\x2c", 4: b"0"}
    # RFC 6464 §3: voice activity bit, then the level in -dBov.
    level = elements[1][0]
    assert (level >> 7, level & 0x7F) == (1, 42)
    assert int.from_bytes(elements[3], "big") == 300
    assert packet.payload[0] == 0x78  # TOC: hybrid, fullband, 20 ms, one frame
    decoded = opuslib.Decoder(48000, 1).decode(packet.payload, 960)
    assert len(decoded) == 960 * 2
    assert bytes(packet) == data


def test_ffmpeg_opus_packets():
    packets = [parse_rtp_untrusted(data) for data in load_hex_lines("ffmpeg_opus_rtp.hex")]
    assert len(packets) == 3
    assert {(p.payload_type, p.ssrc, p.extension, p.csrc, p.padding_size) for p in packets} == {
        (111, 305419896, None, (), 0)
    }
    assert [p.sequence_number - packets[0].sequence_number for p in packets] == [0, 1, 2]
    assert [p.timestamp - packets[0].timestamp for p in packets] == [0, 960, 1920]
    decoder = opuslib.Decoder(48000, 2)
    for packet, data in zip(packets, load_hex_lines("ffmpeg_opus_rtp.hex")):
        assert len(decoder.decode(packet.payload, 960)) == 960 * 2 * 2
        assert bytes(packet) == data


# --- RFC 8285 elements ---------------------------------------------------------------


def test_one_byte_elements_skip_padding_between_and_after():
    extension = RtpHeaderExtension(ONE_BYTE_PROFILE, bytes.fromhex("10aa 0000 22010203 00".replace(" ", "")) + bytes(3))
    assert extension.elements_untrusted() == ((1, b"\xaa"), (2, b"\x01\x02\x03"))


def test_one_byte_sixteen_byte_element():
    extension = RtpHeaderExtension(ONE_BYTE_PROFILE, b"\x5f" + bytes(range(16)) + bytes(3))
    assert extension.elements_untrusted() == ((5, bytes(range(16))),)


def test_one_byte_id_15_stops_parsing():
    # RFC 8285 §4.2: ID 15's length is ignored and nothing after it is read.
    extension = RtpHeaderExtension(ONE_BYTE_PROFILE, bytes.fromhex("10aa f0ff 2f000000"))
    assert extension.elements_untrusted() == ((1, b"\xaa"),)


def test_two_byte_elements_with_empty_and_long_values():
    body = bytes([1, 0, 0, 200, 20]) + bytes(range(20)) + bytes([30, 1, 0xEE])
    extension = RtpHeaderExtension(0x1000, body + bytes(-len(body) % 4))
    assert extension.is_two_byte
    assert extension.elements_untrusted() == ((1, b""), (200, bytes(range(20))), (30, b"\xee"))


def test_two_byte_appbits_are_part_of_the_profile():
    extension = RtpHeaderExtension(0x100F, bytes([7, 1, 9, 0]))
    assert extension.is_two_byte and not extension.is_one_byte
    assert extension.elements_untrusted() == ((7, b"\x09"),)


def test_element_lookup():
    extension = RtpHeaderExtension.from_elements([(1, b"\xaa"), (3, b"\x01\x2c")])
    assert extension.element_untrusted(3) == b"\x01\x2c"
    assert extension.element_untrusted(2) is None


@pytest.mark.parametrize(
    "profile, data, message",
    [
        pytest.param(ONE_BYTE_PROFILE, bytes.fromhex("13aa0000"), "element 1 overruns", id="one-byte-overrun"),
        pytest.param(ONE_BYTE_PROFILE, bytes.fromhex("00000031"), "element 3 overruns", id="one-byte-last-octet"),
        pytest.param(ONE_BYTE_PROFILE, bytes.fromhex("05000000"), "padding octet 0x05", id="one-byte-id0-length"),
        pytest.param(0x1000, bytes.fromhex("00000001"), "element 1 has no length octet", id="two-byte-no-length"),
        pytest.param(0x1000, bytes.fromhex("01050000"), "element 1 overruns", id="two-byte-overrun"),
        pytest.param(0xABCD, b"", "not an RFC 8285 form", id="unknown-profile"),
        pytest.param(0x1010, b"", "not an RFC 8285 form", id="almost-two-byte"),
    ],
)
def test_malformed_elements_raise_rtp_parse_error(profile, data, message):
    with pytest.raises(RtpParseError, match=message):
        RtpHeaderExtension(profile, data).elements_untrusted()


def test_from_elements_picks_the_one_byte_form():
    extension = RtpHeaderExtension.from_elements([(1, b"\xaa"), (3, b"\x01\x2c"), (4, b"0")])
    assert extension == RtpHeaderExtension(ONE_BYTE_PROFILE, bytes.fromhex("10aa 31012c 4030 00".replace(" ", "")))


def test_from_elements_needs_the_two_byte_form_for_big_ids_long_or_empty_values():
    for elements in ([(15, b"x")], [(1, bytes(17))], [(1, b"")]):
        extension = RtpHeaderExtension.from_elements(elements)
        assert extension.profile == 0x1000
        assert extension.elements_untrusted() == tuple(elements)
    assert RtpHeaderExtension.from_elements([(1, b"x")], appbits=5).profile == 0x1005
    assert RtpHeaderExtension.from_elements([(1, b"x")], two_byte=True).data == bytes([1, 1, ord("x"), 0])


def test_from_elements_pads_to_32_bits():
    assert len(RtpHeaderExtension.from_elements([(1, b"abcd")]).data) == 8
    assert len(RtpHeaderExtension.from_elements([(1, b"abc")]).data) == 4
    assert RtpHeaderExtension.from_elements([]).data == b""


@pytest.mark.parametrize(
    "elements, kwargs, message",
    [
        ([(15, b"x")], {"two_byte": False}, "IDs 1-14"),
        ([(1, bytes(17))], {"two_byte": False}, "1-16 bytes"),
        ([(1, b"x")], {"two_byte": False, "appbits": 1}, "appbits"),
        ([(0, b"x")], {}, "IDs are 1-255"),
        ([(256, b"x")], {}, "IDs are 1-255"),
        ([(1, bytes(256))], {}, "at most 255 bytes"),
        ([(1, b"x")], {"appbits": 16}, "appbits must be 0-15"),
        ([(1, bytes(255))] * 1100, {}, "16-bit word count"),
    ],
)
def test_from_elements_rejects_what_does_not_fit(elements, kwargs, message):
    with pytest.raises(ValueError, match=message):
        RtpHeaderExtension.from_elements(elements, **kwargs)


def test_built_extension_round_trips_through_a_packet():
    extension = RtpHeaderExtension.from_elements([(1, b"\x85"), (2, b"\x12\x34\x56")])
    packet = RtpPacket(111, 5, 960, 77, b"opus", extension=extension)
    parsed = parse_rtp_untrusted(bytes(packet))
    assert parsed == packet
    assert parsed.extension.elements_untrusted() == ((1, b"\x85"), (2, b"\x12\x34\x56"))


def test_rtcp_packet_types_on_a_muxed_port():
    # RFC 5761 §4: RTCP types 192-223 land on marker=1, PT 64-95 (demux.is_rtcp is the one test).
    for packet_type in range(192, 224):
        assert is_rtcp(bytes([0x80, packet_type, 0, 1]))
    for second in [*range(0, 64), *range(96, 192), *range(224, 256)]:
        assert not is_rtcp(bytes([0x80, second]))
    for capture in load_hex_lines("ffmpeg_sr_sdes_rtcp.hex"):
        assert is_rtcp(capture)
