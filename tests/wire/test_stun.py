"""STUN over aioice: untrusted parsing, builders, and the client-side response check.

The security-relevant bytes (XOR-MAPPED-ADDRESS, MESSAGE-INTEGRITY, FINGERPRINT)
are checked with our own decoding from RFC 8489, not with aioice, so a codec
that agreed with itself but not with the RFC would fail here.
"""

import hashlib
import hmac
import ipaddress
import struct
import zlib

import pytest
from aioice.stun import Class, Message, Method

from botcall.errors import StunParseError
from botcall.wire.stun import (
    MAX_STUN_SIZE,
    PEER_REFLEXIVE_PRIORITY,
    StunErrorCode,
    answer_check_untrusted,
    binding_check,
    binding_error,
    binding_request,
    binding_success,
    is_stun,
    check_size,
    max_success_size,
    parse_binding_check_untrusted,
    parse_binding_response_untrusted,
    parse_stun_untrusted,
)

PASSWORD = "relayPasswordABCDEFGHIJ12"
COOKIE = 0x2112A442
TXID = bytes(range(12))


def attributes_of(data: bytes) -> list[tuple[int, int, bytes]]:
    """Walk the attributes by hand: (type, offset, value)."""
    out = []
    position = 20
    while position < len(data):
        attribute_type, length = struct.unpack_from("!HH", data, position)
        out.append((attribute_type, position, data[position + 4 : position + 4 + length]))
        position += 4 + length + (-length % 4)
    return out


def verify_by_hand(data: bytes, key: bytes | None) -> dict[int, bytes]:
    """Check FINGERPRINT (and MESSAGE-INTEGRITY when key is given) per RFC 8489 §14.5/§14.7."""
    attrs = attributes_of(data)
    by_type = {t: v for t, _, v in attrs}
    fp_type, fp_offset, fp_value = attrs[-1]
    assert fp_type == 0x8028, "FINGERPRINT must be last"
    assert struct.unpack("!I", fp_value)[0] == zlib.crc32(data[:fp_offset]) ^ 0x5354554E
    if key is not None:
        mi_offset = next(offset for t, offset, _ in attrs if t == 0x0008)
        # The length field covers up to and including MESSAGE-INTEGRITY.
        covered = data[:2] + struct.pack("!H", mi_offset - 20 + 24) + data[4:mi_offset]
        assert by_type[0x0008] == hmac.new(key, covered, hashlib.sha1).digest()
    return by_type


def decode_xor_address(value: bytes, transaction_id: bytes) -> tuple[str, int]:
    family = value[1]
    port = struct.unpack("!H", value[2:4])[0] ^ (COOKIE >> 16)
    mask = struct.pack("!I", COOKIE) + transaction_id
    raw = bytes(a ^ b for a, b in zip(value[4:], mask))
    assert family == (1 if len(raw) == 4 else 2)
    return str(ipaddress.ip_address(raw)), port


# --- binding_request -------------------------------------------------------------


def test_bot_request_round_trips_and_verifies():
    data = binding_request("abcd:bot-1", PASSWORD, transaction_id=TXID)
    message = parse_stun_untrusted(data)
    assert message.message_method == Method.BINDING and message.message_class == Class.REQUEST
    assert message.transaction_id == TXID
    assert message.attributes["USERNAME"] == "abcd:bot-1"
    assert message.check_message_integrity(PASSWORD.encode())
    assert not message.check_message_integrity(b"not the password")
    verify_by_hand(data, PASSWORD.encode())


def test_ice_request_carries_the_ice_attributes():
    data = binding_request(
        "ours:theirs", PASSWORD, priority=1853824767, use_candidate=True, controlling=True, tie_breaker=0x0102030405060708
    )
    attributes = parse_stun_untrusted(data).attributes
    assert attributes["PRIORITY"] == 1853824767
    assert attributes["ICE-CONTROLLING"] == 0x0102030405060708
    assert "USE-CANDIDATE" in attributes and "ICE-CONTROLLED" not in attributes
    controlled = parse_stun_untrusted(binding_request("a:b", PASSWORD, controlling=False)).attributes
    assert "ICE-CONTROLLED" in controlled and "ICE-CONTROLLING" not in controlled


@pytest.mark.parametrize("username", ["a:", "abcd:", "abcd:x", "abcdefgh:ijklmnop", "u" * 200 + ":v"])
def test_request_is_never_smaller_than_the_largest_success(username):
    # The relay never answers with more bytes than it got: a request must leave
    # room for an IPv6 XOR-MAPPED-ADDRESS answer.
    data = binding_request(username, PASSWORD)
    assert len(data) >= max_success_size(ipv6=True) == 76
    assert len(data) % 4 == 0
    parse_stun_untrusted(data)


def test_request_random_transaction_ids_differ():
    first = parse_stun_untrusted(binding_request("a:b", PASSWORD)).transaction_id
    second = parse_stun_untrusted(binding_request("a:b", PASSWORD)).transaction_id
    assert len(first) == 12 and first != second


def test_request_rejects_bad_arguments():
    with pytest.raises(ValueError):
        binding_request("a:b", PASSWORD, transaction_id=b"short")
    with pytest.raises(ValueError):
        binding_request("a:b", PASSWORD, priority=2**32)
    with pytest.raises(ValueError):
        binding_request("a:b", PASSWORD, controlling=True, tie_breaker=-1)


# --- binding_success / binding_error ---------------------------------------------


@pytest.mark.parametrize(
    "addr", [("127.0.0.1", 5004), ("203.0.113.9", 65535), ("2001:db8::1", 40000), ("::1", 1)]
)
def test_success_maps_the_source_address(addr):
    request = parse_stun_untrusted(binding_request("abcd:x", PASSWORD, transaction_id=TXID))
    data = binding_success(request, addr, PASSWORD)
    by_type = verify_by_hand(data, PASSWORD.encode())
    assert decode_xor_address(by_type[0x0020], TXID) == addr
    message_type, length, cookie, transaction_id = struct.unpack_from("!HHI12s", data)
    assert (message_type, cookie, transaction_id) == (0x0101, COOKIE, TXID)
    assert len(data) == max_success_size(ipv6=":" in addr[0])


def test_success_accepts_a_socket_address_tuple():
    request = parse_stun_untrusted(binding_request("abcd:x", PASSWORD, transaction_id=TXID))
    data = binding_success(request, ("fe80::1", 9, 0, 0), PASSWORD)
    assert decode_xor_address(verify_by_hand(data, PASSWORD.encode())[0x0020], TXID) == ("fe80::1", 9)
    with pytest.raises(ValueError):
        binding_success(request, ("example.com", 9), PASSWORD)


def test_error_response_is_unsigned_with_fingerprint():
    request = parse_stun_untrusted(binding_request("abcd:x", PASSWORD, transaction_id=TXID))
    data = binding_error(request, StunErrorCode.UNAUTHORIZED)
    by_type = verify_by_hand(data, None)
    assert 0x0008 not in by_type  # no MESSAGE-INTEGRITY: we had no key the client trusts
    assert by_type[0x0009][2:4] == bytes([4, 1]) and by_type[0x0009][4:] == b"Unauthorized"
    assert struct.unpack_from("!H", data)[0] == 0x0111
    assert parse_stun_untrusted(data).error_code == 401
    with pytest.raises(ValueError):
        binding_error(request, 200, "OK")


# --- parse_stun_untrusted rejections ----------------------------------------------


def with_header(body: bytes, *, message_type=0x0001, cookie=COOKIE, length=None) -> bytes:
    if length is None:
        length = len(body)
    return struct.pack("!HHI12s", message_type, length, cookie, TXID) + body


def fingerprinted(data: bytes) -> bytes:
    data = data[:2] + struct.pack("!H", len(data) - 20 + 8) + data[4:]
    return data + struct.pack("!HHI", 0x8028, 4, zlib.crc32(data) ^ 0x5354554E)


@pytest.mark.parametrize(
    "data, fragment",
    [
        (b"", "shorter than its header"),
        (with_header(b"")[:19], "shorter than its header"),
        (with_header(b"", cookie=0x2112A443), "magic cookie"),
        (with_header(b"", message_type=0x4001), "two top bits"),
        (with_header(b"\x00\x06\x00\x01a\x00\x00"), "multiple of 4"),
        (with_header(b"", length=4), "does not match"),
        (with_header(b"\x00\x06\x00\x09abcdefgh"), "overruns"),
        (with_header(b"\x00\x08\x00\x04abcd"), "MESSAGE-INTEGRITY of 4 bytes"),
        (with_header(b"\x80\x28\x00\x08" + bytes(8)), "FINGERPRINT of 8 bytes"),
        (with_header(b"\x80\x28\x00\x04" + bytes(4) + b"\x00\x06\x00\x00"), "not the last"),
        (with_header(b"\x00\x06\x00\x00" * 33), "more than 32"),
        (with_header(bytes(MAX_STUN_SIZE)), "over 1500"),
        # aioice raises struct.error for a zero-length PRIORITY (FACTS.md).
        (with_header(b"\x00\x24\x00\x00"), "malformed STUN"),
        # ... ValueError for an unknown method, a bad address family, bad UTF-8.
        (with_header(b"", message_type=0x0ABC), "malformed STUN"),
        (with_header(b"\x00\x20\x00\x08\x00\x07\x00\x00\x00\x00\x00\x00"), "malformed STUN"),
        (with_header(b"\x00\x06\x00\x04\xff\xfe\xfd\xfc"), "malformed STUN"),
    ],
)
def test_malformed_messages_raise_stun_parse_error(data, fragment):
    with pytest.raises(StunParseError, match=fragment) as caught:
        parse_stun_untrusted(data)
    assert caught.value.counter == "malformed_stun"


def test_fingerprint_mismatch_has_its_own_counter():
    good = binding_request("abcd:x", PASSWORD)
    bad = good[:-1] + bytes([good[-1] ^ 1])
    with pytest.raises(StunParseError, match="FINGERPRINT does not match") as caught:
        parse_stun_untrusted(bad)
    assert caught.value.counter == "stun_bad_fingerprint"
    # A flipped bit anywhere before FINGERPRINT is caught the same way.
    flipped = bytearray(good)
    flipped[30] ^= 0x10
    with pytest.raises(StunParseError):
        parse_stun_untrusted(bytes(flipped))


def test_message_without_fingerprint_parses():
    message = Message(Method.BINDING, Class.REQUEST, TXID, {"USERNAME": "abcd:x"})
    assert parse_stun_untrusted(bytes(message)).attributes == {"USERNAME": "abcd:x"}


def test_unknown_optional_attribute_is_skipped():
    # Chrome's 0xC057 (comprehension-optional, RFC 8489 §14) must not break parsing.
    data = fingerprinted(with_header(b"\x00\x06\x00\x04abcd" + b"\xc0\x57\x00\x04\x00\x01\x00\x0a"))
    assert parse_stun_untrusted(data).attributes["USERNAME"] == "abcd"


# --- is_stun ---------------------------------------------------------------------


def test_is_stun():
    assert is_stun(binding_request("a:b", PASSWORD))
    assert not is_stun(with_header(b"", cookie=0)[:20])
    assert not is_stun(b"\x80" + bytes(19))  # RTP-looking first byte
    assert not is_stun(b"\x00\x01\x00\x00\x21\x12\xa4")  # too short


# --- parse_binding_response_untrusted ---------------------------------------------


def test_client_accepts_a_signed_success():
    request = parse_stun_untrusted(binding_request("abcd:x", PASSWORD, transaction_id=TXID))
    response = binding_success(request, ("198.51.100.4", 6000), PASSWORD)
    assert parse_binding_response_untrusted(response, PASSWORD, TXID) == ("198.51.100.4", 6000)


def test_client_rejects_wrong_key_other_transaction_and_errors():
    request = parse_stun_untrusted(binding_request("abcd:x", PASSWORD, transaction_id=TXID))
    response = binding_success(request, ("198.51.100.4", 6000), PASSWORD)
    with pytest.raises(StunParseError) as caught:
        parse_binding_response_untrusted(response, "another password entirely", TXID)
    assert caught.value.counter == "stun_unauthenticated_response"
    with pytest.raises(StunParseError) as caught:
        parse_binding_response_untrusted(response, PASSWORD, bytes(12))
    assert caught.value.counter == "stun_unexpected_transaction"
    error = binding_error(request, StunErrorCode.UNAUTHORIZED)
    with pytest.raises(StunParseError, match="401") as caught:
        parse_binding_response_untrusted(error, PASSWORD, TXID)
    assert caught.value.counter == "stun_error_response"
    with pytest.raises(StunParseError) as caught:
        parse_binding_response_untrusted(binding_request("a:b", PASSWORD, transaction_id=TXID), PASSWORD, TXID)
    assert caught.value.counter == "stun_unexpected"


def test_client_requires_xor_mapped_address():
    response = Message(Method.BINDING, Class.RESPONSE, TXID, {"SOFTWARE": "x"})
    response.add_message_integrity(PASSWORD.encode())
    with pytest.raises(StunParseError, match="XOR-MAPPED-ADDRESS"):
        parse_binding_response_untrusted(bytes(response), PASSWORD, TXID)


# --- binding_check (the relay's own check) and the bot's answer -----------------


def test_bot_check_is_username_integrity_fingerprint_and_nothing_else():
    data = binding_check("botufrag:sessufrg", PASSWORD, transaction_id=TXID)
    assert data[:2] == b"\x00\x01" and data[8:20] == TXID
    by_type = verify_by_hand(data, PASSWORD.encode())
    assert [t for t, _, _ in attributes_of(data)] == [0x0006, 0x0008, 0x8028]
    assert by_type[0x0006] == b"botufrag:sessufrg"
    # As long as the bot's own request with the same USERNAME and no padding:
    # never larger than the request that triggered it.
    assert len(data) == check_size("botufrag:sessufrg", ice=False) == 76


def test_browser_check_carries_priority_and_ice_controlled():
    data = binding_check("Lvk6:sessufrg", PASSWORD, transaction_id=TXID, priority=PEER_REFLEXIVE_PRIORITY, tie_breaker=0x0102030405060708)
    by_type = verify_by_hand(data, PASSWORD.encode())
    assert [t for t, _, _ in attributes_of(data)] == [0x0006, 0x0024, 0x8029, 0x0008, 0x8028]
    assert struct.unpack("!I", by_type[0x0024])[0] == 1862270975  # RFC 8445 §5.1.2.1, prflx
    assert by_type[0x8029] == bytes(range(1, 9))
    assert len(data) == check_size("Lvk6:sessufrg", ice=True) == 92


def test_binding_check_refuses_bad_arguments():
    with pytest.raises(ValueError):
        binding_check("a:b", PASSWORD, transaction_id=b"short")
    with pytest.raises(ValueError):
        binding_check("a:b", PASSWORD, transaction_id=TXID, priority=1)
    with pytest.raises(ValueError):
        binding_check("a:b", PASSWORD, transaction_id=TXID, priority=2**32, tie_breaker=1)


def test_bot_answers_a_valid_check_with_a_signed_success():
    check = binding_check("mine:sess", PASSWORD, transaction_id=TXID)
    answer = answer_check_untrusted(check, ("203.0.113.9", 3478), username="mine:sess", password=PASSWORD)
    assert parse_binding_response_untrusted(answer, PASSWORD, TXID) == ("203.0.113.9", 3478)
    verify_by_hand(answer, PASSWORD.encode())


@pytest.mark.parametrize(
    "data, counter",
    [
        (binding_check("other:sess", PASSWORD, transaction_id=TXID), "stun_wrong_username"),
        (binding_check("mine:sess", "not the session password", transaction_id=TXID), "stun_unauthenticated_check"),
        (binding_success(parse_stun_untrusted(binding_request("mine:sess", PASSWORD, transaction_id=TXID)), ("192.0.2.1", 1), PASSWORD), "stun_unexpected"),
        (bytes(Message(Method.BINDING, Class.REQUEST, TXID, {"USERNAME": "mine:sess"})), "stun_unauthenticated_check"),
        (b"\x00\x01\x00", "malformed_stun"),
    ],
)
def test_bot_ignores_anything_but_a_valid_check_for_it(data, counter):
    with pytest.raises(StunParseError) as caught:
        parse_binding_check_untrusted(data, "mine:sess", PASSWORD)
    assert caught.value.counter == counter
    with pytest.raises(StunParseError):
        answer_check_untrusted(data, ("192.0.2.1", 1), username="mine:sess", password=PASSWORD)
