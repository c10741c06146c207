"""Hypothesis: the RTP parser returns a packet or raises RtpParseError, nothing else.

Also: generated packets round-trip, mutated valid packets fail only with
RtpParseError, and RFC 8285 element parsing obeys the same rule.
"""

from hypothesis import example, given, strategies as st

from botcall.errors import RtpParseError
from botcall.wire.rtp import (
    ONE_BYTE_PROFILE,
    RtpHeaderExtension,
    RtpPacket,
    parse_rtp_untrusted,
)

HEADER = bytes.fromhex("806f01020304050607080900")

# Every malformed shape the unit tests name, kept as regression examples.
MALFORMED_PACKETS = [
    b"",  # empty
    HEADER[:11],  # truncated fixed header
    bytes([0x00]) + HEADER[1:],  # version 0
    bytes([0x40]) + HEADER[1:],  # version 1
    bytes([0xC0]) + HEADER[1:],  # version 3
    bytes([0x81]) + HEADER[1:],  # CSRC count past the end
    bytes([0x8F]) + HEADER[1:] + bytes(56),  # 15 CSRCs, one word short
    bytes([0x90]) + HEADER[1:],  # extension header missing
    bytes([0x90]) + HEADER[1:] + b"\xbe\xde\x00",  # extension header cut
    bytes([0x90]) + HEADER[1:] + bytes.fromhex("bede0001"),  # extension length past the end
    bytes([0x90]) + HEADER[1:] + bytes.fromhex("bede0002 10aa0000 000000".replace(" ", "")),
    bytes([0x91]) + HEADER[1:] + bytes(4) + b"\xbe\xde",  # CSRC then a cut extension
    bytes([0xA0]) + HEADER[1:] + b"opus\x00",  # padding count 0
    bytes([0xA0]) + HEADER[1:] + b"opus\x06",  # padding count past the payload
    bytes([0xA0]) + HEADER[1:],  # padding bit, nothing after the header
    bytes([0xB0]) + HEADER[1:] + bytes.fromhex("bede000110aa0000") + b"\x02",  # padding into the extension
]

MALFORMED_EXTENSIONS = [
    (ONE_BYTE_PROFILE, bytes.fromhex("13aa0000")),  # element overruns the block
    (ONE_BYTE_PROFILE, bytes.fromhex("00000031")),  # element starts in the last octet
    (ONE_BYTE_PROFILE, bytes.fromhex("05000000")),  # ID 0 with a length: not padding
    (0x1000, bytes.fromhex("00000001")),  # two-byte element without its length octet
    (0x1000, bytes.fromhex("01050000")),  # two-byte element overruns the block
    (0xABCD, b""),  # not an RFC 8285 profile
    (0x1010, b""),  # one bit off the two-byte profile
]


def with_examples(examples):
    def decorate(test):
        for value in examples:
            test = example(value)(test)
        return test

    return decorate


def padding_zeroed(data: bytes, packet: RtpPacket) -> bytes:
    """``data`` with its padding octets, except the count, set to zero (what we serialise)."""
    if not packet.padding_size:
        return data
    return data[: len(data) - packet.padding_size] + bytes(packet.padding_size - 1) + data[-1:]


u32 = st.integers(0, 2**32 - 1)
word_aligned = st.integers(0, 16).flatmap(lambda words: st.binary(min_size=4 * words, max_size=4 * words))
extensions = st.builds(RtpHeaderExtension, st.integers(0, 0xFFFF), word_aligned)
packets = st.builds(
    RtpPacket,
    payload_type=st.integers(0, 127),
    sequence_number=st.integers(0, 0xFFFF),
    timestamp=u32,
    ssrc=u32,
    payload=st.binary(max_size=300),
    marker=st.booleans(),
    csrc=st.lists(u32, max_size=15).map(tuple),
    extension=st.none() | extensions,
    padding_size=st.integers(0, 255),
)
# Arbitrary bytes rarely start with version 2; half the inputs are made to.
rtp_like = st.one_of(
    st.binary(max_size=400),
    st.builds(lambda first, rest: bytes([first]) + rest, st.integers(0x80, 0xBF), st.binary(max_size=400)),
)
mutations = st.lists(
    st.one_of(
        st.tuples(st.just("flip"), st.integers(0, 2**16), st.integers(0, 7)),
        st.tuples(st.just("set"), st.integers(0, 2**16), st.integers(0, 255)),
        st.tuples(st.just("truncate"), st.integers(0, 2**16)),
        st.tuples(st.just("extend"), st.binary(min_size=1, max_size=16)),
        st.tuples(st.just("insert"), st.integers(0, 2**16), st.binary(min_size=1, max_size=8)),
        st.tuples(st.just("delete"), st.integers(0, 2**16), st.integers(1, 8)),
    ),
    min_size=1,
    max_size=4,
)


def mutate(data: bytes, operations) -> bytes:
    buffer = bytearray(data)
    for operation in operations:
        kind, *args = operation
        if kind == "extend":
            buffer += args[0]
            continue
        if not buffer:
            continue
        index = args[0] % len(buffer)
        if kind == "flip":
            buffer[index] ^= 1 << args[1]
        elif kind == "set":
            buffer[index] = args[1]
        elif kind == "truncate":
            del buffer[index:]
        elif kind == "insert":
            buffer[index:index] = args[1]
        else:
            del buffer[index : index + args[1]]
    return bytes(buffer)


def parse_or_reject(data: bytes) -> RtpPacket | None:
    try:
        packet = parse_rtp_untrusted(data)
    except RtpParseError as error:
        assert error.counter == "malformed_rtp"
        return None
    # Whatever parses serialises back to the same bytes (padding octets zeroed).
    assert bytes(packet) == padding_zeroed(data, packet)
    if packet.extension is not None:
        elements_or_reject(packet.extension)
    return packet


def elements_or_reject(extension: RtpHeaderExtension) -> None:
    try:
        elements = extension.elements_untrusted()
    except RtpParseError:
        return
    # Whatever splits into elements rebuilds into a block with the same elements.
    rebuilt = RtpHeaderExtension.from_elements(
        elements, two_byte=extension.is_two_byte, appbits=extension.profile & 0x0F if extension.is_two_byte else 0
    )
    assert rebuilt.profile == extension.profile
    assert rebuilt.elements_untrusted() == elements
    # Padding is dropped, never added beyond the 32-bit boundary.
    assert len(rebuilt.data) <= len(extension.data) + -len(extension.data) % 4


@with_examples(MALFORMED_PACKETS)
@given(rtp_like)
def test_arbitrary_bytes_parse_or_raise_rtp_parse_error(data):
    parse_or_reject(data)


@given(packets)
def test_generated_packets_round_trip(packet):
    data = bytes(packet)
    assert parse_rtp_untrusted(data) == packet


@given(packets, mutations)
def test_mutated_packets_parse_or_raise_rtp_parse_error(packet, operations):
    parse_or_reject(mutate(bytes(packet), operations))


@with_examples(MALFORMED_EXTENSIONS)
@given(
    st.tuples(
        st.sampled_from([ONE_BYTE_PROFILE, 0x1000, 0x1001, 0x100F]) | st.integers(0, 0xFFFF),
        st.binary(max_size=80),
    )
)
def test_arbitrary_extension_blocks_split_or_raise_rtp_parse_error(profile_and_data):
    elements_or_reject(RtpHeaderExtension(*profile_and_data))


one_byte_elements = st.lists(st.tuples(st.integers(1, 14), st.binary(min_size=1, max_size=16)), max_size=12)
two_byte_elements = st.lists(st.tuples(st.integers(1, 255), st.binary(max_size=255)), max_size=12)


@given(one_byte_elements | two_byte_elements, st.integers(0, 15))
def test_built_extensions_round_trip(elements, appbits):
    for extension in (
        RtpHeaderExtension.from_elements(elements),
        RtpHeaderExtension.from_elements(elements, two_byte=True, appbits=appbits),
    ):
        assert len(extension.data) % 4 == 0
        assert extension.elements_untrusted() == tuple(elements)
        packet = RtpPacket(111, 1, 2, 3, b"opus", extension=extension)
        assert parse_rtp_untrusted(bytes(packet)).extension.elements_untrusted() == tuple(elements)


@given(one_byte_elements, mutations)
def test_mutated_extensions_split_or_raise_rtp_parse_error(elements, operations):
    extension = RtpHeaderExtension.from_elements(elements, two_byte=False)
    elements_or_reject(RtpHeaderExtension(extension.profile, mutate(extension.data, operations)))
