"""The worked STUN example in docs/protocol.md is the real code's output, byte for byte.

The doc's hex blocks (after ``<!-- stun-example: NAME -->``) are parsed back and
compared with what ``botcall.wire.stun`` builds from the same inputs, so the
example cannot drift from the code. ``python -m tests.wire.test_stun_doc_example``
prints the blocks afresh.
"""

from __future__ import annotations

import re
import struct
from pathlib import Path

from botcall.wire.stun import (
    answer_check_untrusted,
    binding_check,
    binding_request,
    binding_success,
    parse_binding_check_untrusted,
    parse_binding_response_untrusted,
    parse_stun_untrusted,
)

PROTOCOL_MD = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"

# The example's inputs (docs/protocol.md, "A worked example").
ICE_UFRAG = "Wu2HJyaS"
ICE_PWD = "UnpUoJqv9VkoH7lQN7Mdowkc"
BOT_UFRAG = "1f2e3d4c"
REQUEST_ID = bytes.fromhex("b7e7a701bc34d686fa87dfae")
CHECK_ID = bytes.fromhex("0102030405060708090a0b0c")
RELAY = ("192.0.2.1", 40000)
BOT = ("198.51.100.7", 50000)

_ATTRIBUTES = {
    0x0006: "USERNAME", 0x0008: "MESSAGE-INTEGRITY", 0x0020: "XOR-MAPPED-ADDRESS",
    0x8022: "SOFTWARE", 0x8028: "FINGERPRINT",
}
_TYPES = {0x0001: "Binding request", 0x0101: "Binding success response"}


def example_messages() -> dict[str, bytes]:
    """The four datagrams of one latch, built by the real code."""
    request = binding_request(f"{ICE_UFRAG}:{BOT_UFRAG}", ICE_PWD, transaction_id=REQUEST_ID)
    check = binding_check(f"{BOT_UFRAG}:{ICE_UFRAG}", ICE_PWD, transaction_id=CHECK_ID)
    answer = answer_check_untrusted(check, RELAY, username=f"{BOT_UFRAG}:{ICE_UFRAG}", password=ICE_PWD)
    success = binding_success(parse_stun_untrusted(request), BOT, ICE_PWD)
    return {"request": request, "check": check, "answer": answer, "success": success}


def _hex(data: bytes) -> str:
    return " ".join(f"{b:02x}" for b in data)


def render(data: bytes) -> str:
    """Hex lines, one per header part and attribute (long values wrapped), with notes."""
    kind, length = struct.unpack_from("!HH", data)
    lines = [f"{_hex(data[:8]):<48}  {_TYPES[kind]}, length {length}, magic cookie", f"{_hex(data[8:20]):<48}  transaction id"]
    offset = 20
    while offset < len(data):
        attr, size = struct.unpack_from("!HH", data, offset)
        padded = size + (-size % 4)
        value = data[offset + 4:offset + 4 + padded]
        note = f"{_ATTRIBUTES.get(attr, hex(attr))} (0x{attr:04x}), {size} bytes"
        if attr in (0x0006, 0x8022):
            note += f": {value[:size].decode()!r}"
        lines.append(f"{_hex(data[offset:offset + 4]):<48}  {note}")
        for start in range(0, padded, 16):
            lines.append(_hex(value[start:start + 16]))
        offset += 4 + padded
    return "\n".join(lines)


def doc_examples() -> dict[str, bytes]:
    """Each ``<!-- stun-example: NAME -->`` block of docs/protocol.md, as bytes."""
    text = PROTOCOL_MD.read_text()
    found = {}
    for name, block in re.findall(r"<!-- stun-example: (\w+) -->\s*```text\n(.*?)```", text, re.S):
        hex_bytes = []
        for line in block.splitlines():
            for token in line.split():
                if not re.fullmatch(r"[0-9a-f]{2}", token):
                    break  # the note after the bytes
                hex_bytes.append(token)
        found[name] = bytes.fromhex("".join(hex_bytes))
    return found


def test_the_doc_shows_the_bytes_the_code_builds():
    assert doc_examples() == example_messages()


def test_the_example_is_a_valid_latch():
    messages = example_messages()
    assert len(messages["request"]) == 88 and len(messages["check"]) == 76 and len(messages["success"]) == 64
    parse_binding_check_untrusted(messages["check"], f"{BOT_UFRAG}:{ICE_UFRAG}", ICE_PWD)
    assert parse_binding_response_untrusted(messages["answer"], ICE_PWD, CHECK_ID) == RELAY
    assert parse_binding_response_untrusted(messages["success"], ICE_PWD, REQUEST_ID) == BOT


def test_the_integrity_recipe_in_the_doc_reproduces_the_example():
    """What the doc tells an implementer, done with hmac and zlib alone on the doc's bytes."""
    import hashlib
    import hmac
    import zlib

    for name, data in doc_examples().items():
        mi = len(data) - 8 - 24  # MESSAGE-INTEGRITY (4 + 20), then FINGERPRINT (4 + 4), last
        assert data[mi:mi + 4] == b"\x00\x08\x00\x14" and data[-8:-4] == b"\x80\x28\x00\x04", name
        # HMAC-SHA1 keyed with ice_pwd over the message up to MESSAGE-INTEGRITY, with
        # the header's length counting up to the end of MESSAGE-INTEGRITY.
        header = data[:2] + struct.pack("!H", mi + 24 - 20) + data[4:20]
        assert hmac.new(ICE_PWD.encode(), header + data[20:mi], hashlib.sha1).digest() == data[mi + 4:mi + 24], name
        # FINGERPRINT: CRC-32 of everything before it (length as sent) XOR 0x5354554e.
        assert struct.pack("!I", zlib.crc32(data[:-8]) ^ 0x5354554E) == data[-4:], name


if __name__ == "__main__":
    for name, data in example_messages().items():
        print(f"<!-- stun-example: {name} -->\n```text\n{render(data)}\n```\n")
