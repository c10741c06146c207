"""STUN parsing and the Binding responder raise only StunParseError, whatever the bytes.

Every input that ever made aioice raise something else is kept as an @example.
"""

import struct
import zlib

import pytest
from aioice.stun import ATTRIBUTES, Class, Message, Method
from hypothesis import example, given, strategies as st

from botcall.errors import StunParseError
from botcall.webrtc.ice_lite import BindingReason, answer_binding_untrusted
from botcall.wire.stun import (
    MAX_STUN_SIZE,
    answer_check_untrusted,
    binding_check,
    binding_request,
    parse_binding_check_untrusted,
    parse_stun_untrusted,
)

UFRAG = "fuzZ"
PASSWORD = "fuzzPassword0123456789+/"
SESSIONS = {UFRAG: PASSWORD}
ADDR = ("192.0.2.44", 4444)
TXID = b"fuzztxn00001"


def stun(message_type: int, body: bytes, *, fingerprint: bool = False) -> bytes:
    data = struct.pack("!HHI12s", message_type, len(body) + (8 if fingerprint else 0), 0x2112A442, TXID) + body
    if fingerprint:
        data += struct.pack("!HHI", 0x8028, 4, zlib.crc32(data) ^ 0x5354554E)
    return data


def tlv(attribute_type: int, value: bytes) -> bytes:
    return struct.pack("!HH", attribute_type, len(value)) + value + bytes(-len(value) % 4)


# Inputs that made aioice 0.13 raise something other than ValueError's family
# or crash our checks, minimised by Hypothesis or written from its findings.
REGRESSIONS = [
    stun(0x0001, tlv(0x0024, b"")),  # PRIORITY of length 0: struct.error
    stun(0x0001, tlv(0x0003, b"")),  # CHANGE-REQUEST of length 0: struct.error
    stun(0x0001, tlv(0x802A, b"\x01\x02")),  # ICE-CONTROLLING of 2 bytes: struct.error
    stun(0x0001, tlv(0x000C, b"\x01")),  # CHANNEL-NUMBER of 1 byte: struct.error
    stun(0x0003, tlv(0x0012, b"\xbde\xa7r\xa7fL") + tlv(0x0019, bytes(18)), fingerprint=True),  # bad family
    stun(0x0101, tlv(0x0009, b"\xc0;\xabnf/C\x95\x13\xd4\xf6\xa7k"), fingerprint=True),  # ERROR-CODE bad UTF-8
    stun(0x0111, tlv(0x0009, b"\x00\x04")),  # ERROR-CODE shorter than 4 bytes
    stun(0x0101, tlv(0x0020, b"\x00\x01\x00")),  # XOR-MAPPED-ADDRESS shorter than 4
    stun(0x0101, tlv(0x0020, b"\x00\x01\x00\x01\x02")),  # IPv4 address of the wrong size
    stun(0x0101, tlv(0x0020, b"\x00\x02" + bytes(10))),  # IPv6 address of the wrong size
    stun(0x0001, tlv(0x0006, b"\xff\xfe")),  # USERNAME not UTF-8
    stun(0x0ABC, b""),  # unknown method
]


def with_regressions(test):
    for data in REGRESSIONS:
        test = example(data)(test)
    return test


def check_parse(data: bytes) -> None:
    try:
        message = parse_stun_untrusted(data)
    except StunParseError as exc:
        assert exc.counter in ("malformed_stun", "stun_bad_fingerprint")
        return
    assert isinstance(message, Message)
    assert message.transaction_id == data[8:20]


CHECK_USERNAME = f"botufrag:{UFRAG}"


def check_bot_side(data: bytes) -> None:
    """What a bot does with a datagram from the relay: a valid check or StunParseError."""
    try:
        message = parse_binding_check_untrusted(data, CHECK_USERNAME, PASSWORD)
    except StunParseError:
        pass
    else:
        assert message.attributes["USERNAME"] == CHECK_USERNAME
    try:
        answer = answer_check_untrusted(data, ADDR, username=CHECK_USERNAME, password=PASSWORD)
    except StunParseError:
        return
    assert answer[8:20] == data[8:20]


def check_answer(data: bytes) -> None:
    try:
        outcome = answer_binding_untrusted(data, ADDR, SESSIONS.get)
    except StunParseError:
        return
    assert isinstance(outcome.reason, BindingReason)
    if outcome.reply is not None:
        assert len(outcome.reply) <= len(data)
    if outcome.authenticated:
        assert outcome.ufrag == UFRAG and outcome.reason is BindingReason.SUCCESS


@given(st.binary(max_size=MAX_STUN_SIZE + 20))
@example(b"")
@example(b"\x00" * 20)
@with_regressions
def test_arbitrary_bytes(data):
    check_parse(data)
    check_answer(data)
    check_bot_side(data)


@pytest.mark.parametrize("data", REGRESSIONS)
def test_regressions_are_parse_errors(data):
    with pytest.raises(StunParseError) as caught:
        parse_stun_untrusted(data)
    assert isinstance(caught.value.__cause__, (ValueError, struct.error))


def test_attributes_after_message_integrity_are_ignored():
    # RFC 8489 §14.5: only FINGERPRINT may follow MESSAGE-INTEGRITY; aioice skips
    # the rest undecoded, so even a malformed one there is harmless.
    data = stun(0x0001, tlv(0x0006, b"abcd") + tlv(0x0008, bytes(20)) + tlv(0x0024, b""))
    assert "PRIORITY" not in parse_stun_untrusted(data).attributes


KNOWN_TYPES = [entry[0] for entry in ATTRIBUTES] + [0xC057, 0x0000, 0x7FFF, 0xFFFF]
attributes = st.lists(
    st.tuples(st.sampled_from(KNOWN_TYPES), st.binary(max_size=40)),
    max_size=8,
)


@given(
    message_type=st.sampled_from([0x0001, 0x0011, 0x0101, 0x0111, 0x0003, 0x0ABC]) | st.integers(0, 0x3FFF),
    body=attributes,
    fingerprint=st.booleans(),
)
def test_well_framed_messages_with_arbitrary_attributes(message_type, body, fingerprint):
    """Get past the framing checks so aioice's attribute decoders see junk."""
    data = stun(message_type, b"".join(tlv(t, v) for t, v in body), fingerprint=fingerprint)
    check_parse(data)
    check_answer(data)
    check_bot_side(data)


@given(
    username=st.text(max_size=30),
    password=st.sampled_from([PASSWORD, "someone else's password"]),
    use_candidate=st.booleans(),
    position=st.integers(0, 200),
    mutation=st.sampled_from(["flip", "truncate", "insert", "delete", "length"]),
    value=st.integers(0, 255),
)
def test_mutated_valid_requests(username, password, use_candidate, position, mutation, value):
    request = bytearray(binding_request(f"{UFRAG}:{username}", password, use_candidate=use_candidate))
    position %= len(request)
    if mutation == "flip":
        request[position] ^= 1 << (value % 8)
    elif mutation == "truncate":
        del request[position:]
    elif mutation == "insert":
        request[position:position] = bytes([value]) * 4
    elif mutation == "delete":
        del request[position : position + 4]
    else:
        request[2:4] = struct.pack("!H", (len(request) - 20 + value - 128) & 0xFFFF)
    check_parse(bytes(request))
    check_answer(bytes(request))
    check_bot_side(bytes(request))


@given(
    password=st.sampled_from([PASSWORD, "someone else's password"]),
    ice=st.booleans(),
    position=st.integers(0, 200),
    mutation=st.sampled_from(["flip", "truncate", "insert", "delete", "length"]),
    value=st.integers(0, 255),
)
def test_mutated_relay_checks(password, ice, position, mutation, value):
    """The relay's checks, mutated, as the bot SDK parses them: a valid check or StunParseError."""
    extra = {"priority": 1862270975, "tie_breaker": 7} if ice else {}
    check = bytearray(binding_check(CHECK_USERNAME, password, transaction_id=TXID, **extra))
    position %= len(check)
    if mutation == "flip":
        check[position] ^= 1 << (value % 8)
    elif mutation == "truncate":
        del check[position:]
    elif mutation == "insert":
        check[position:position] = bytes([value]) * 4
    elif mutation == "delete":
        del check[position : position + 4]
    else:
        check[2:4] = struct.pack("!H", (len(check) - 20 + value - 128) & 0xFFFF)
    check_parse(bytes(check))
    check_bot_side(bytes(check))


def test_unmutated_relay_check_is_answered():
    check = binding_check(CHECK_USERNAME, PASSWORD, transaction_id=TXID)
    assert answer_check_untrusted(check, ADDR, username=CHECK_USERNAME, password=PASSWORD)[8:20] == TXID


def test_unmutated_request_is_answered():
    request = binding_request(f"{UFRAG}:x", PASSWORD)
    assert answer_binding_untrusted(request, ADDR, SESSIONS.get).reason is BindingReason.SUCCESS


addresses = st.one_of(
    st.tuples(st.ip_addresses(v=4).map(str), st.integers(0, 65535)),
    st.tuples(st.ip_addresses(v=6).map(str), st.integers(0, 65535)),
)
message_attributes = st.fixed_dictionaries(
    {},
    optional={
        "USERNAME": st.text(max_size=60),
        "PRIORITY": st.integers(0, 2**32 - 1),
        "ICE-CONTROLLING": st.integers(0, 2**64 - 1),
        "ICE-CONTROLLED": st.integers(0, 2**64 - 1),
        "USE-CANDIDATE": st.none(),
        "SOFTWARE": st.text(max_size=60),
        "XOR-MAPPED-ADDRESS": addresses,
        "MAPPED-ADDRESS": addresses,
        "ERROR-CODE": st.tuples(st.integers(300, 699), st.text(max_size=40)),
        "LIFETIME": st.integers(0, 2**32 - 1),
        "DATA": st.binary(max_size=60),
    },
)


@given(
    method=st.sampled_from(list(Method)),
    message_class=st.sampled_from(list(Class)),
    transaction_id=st.binary(min_size=12, max_size=12),
    attributes=message_attributes,
    sign_with=st.none() | st.binary(min_size=1, max_size=30),
)
def test_round_trip(method, message_class, transaction_id, attributes, sign_with):
    """parse(bytes(m)) == m for messages aioice can build."""
    message = Message(method, message_class, transaction_id, dict(attributes))
    if sign_with is None:
        message.add_fingerprint()
    else:
        message.add_message_integrity(sign_with)
    parsed = parse_stun_untrusted(bytes(message))
    assert (parsed.message_method, parsed.message_class) == (method, message_class)
    assert parsed.transaction_id == transaction_id
    assert parsed.attributes == message.attributes
    if sign_with is not None:
        assert parsed.check_message_integrity(sign_with)
    assert bytes(parsed) == bytes(message)


def relay_expecting_an_answer():
    """A relay with one bot whose check (transaction id TXID) to ADDR is outstanding."""
    from botcall.relay.core import MediaRelay
    from tests.kit.relay import make_bot

    sent = []
    relay = MediaRelay(lambda data, addr: sent.append((data, addr)))
    bot = make_bot(relay, None, "fuzz", 1234)
    bot.remote_ufrag = "botufrag"
    bot.ice.add_check(TXID, ADDR, 0.0)
    relay._checks[TXID] = bot
    return relay, bot, sent


@given(
    message_type=st.sampled_from([0x0101, 0x0111, 0x0001, 0x0011]) | st.integers(0, 0x3FFF),
    body=attributes,
    fingerprint=st.booleans(),
)
def test_the_relay_takes_any_answer_to_its_check_without_raising(message_type, body, fingerprint):
    """Junk responses carrying the transaction id of a pending check: never an
    exception, never a verified address, never a reply larger than the datagram."""
    relay, bot, sent = relay_expecting_an_answer()
    data = stun(message_type, b"".join(tlv(t, v) for t, v in body), fingerprint=fingerprint)
    relay.handle_datagram(data, ADDR, 0.1)
    assert bot.addr is None and relay.counters["check_verified"] == 0
    assert all(len(reply) <= len(data) for reply, _ in sent)
