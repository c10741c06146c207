"""STUN messages (RFC 8489) for ICE connectivity checks and bot latching.

We wrap aioice's codec (``aioice.stun``) instead of writing another one; this
module adds what it leaves to the caller:

* the structural checks aioice skips (first two bits zero, magic cookie, length a
  multiple of four, every attribute inside the message, FINGERPRINT last) and a
  size cap, done with our own precompiled structs before aioice sees the bytes;
* one error type: every function that takes bytes from the network ends in
  ``_untrusted`` and raises only ``StunParseError`` (never aioice's ``ValueError``,
  ``struct.error`` or a ``UnicodeDecodeError``);
* builders for the Binding transactions the relay and the bot SDK exchange,
  including the relay's own connectivity check (``binding_check``), with which
  it proves that an address receives before it sends media there, and the
  checks a bot answers (``answer_check_untrusted``).

Short-term credentials (RFC 8489 §9.1): the MESSAGE-INTEGRITY key is the ICE
password itself. aioice 0.13 compares MACs with ``hmac.compare_digest``.
"""

from __future__ import annotations

import ipaddress
import secrets
import struct
import zlib
from collections.abc import Sequence
from enum import IntEnum
from typing import Any

from aioice import stun as _aioice_stun
from aioice.stun import Class, Message, Method

from botcall.errors import StunParseError

__all__ = [
    "Address",
    "Class",
    "MAGIC_COOKIE",
    "MAX_STUN_SIZE",
    "Message",
    "Method",
    "PEER_REFLEXIVE_PRIORITY",
    "StunErrorCode",
    "answer_check_untrusted",
    "binding_check",
    "binding_error",
    "binding_request",
    "binding_success",
    "check_size",
    "is_stun",
    "max_success_size",
    "parse_binding_check_untrusted",
    "parse_binding_response_untrusted",
    "parse_stun_untrusted",
]

Address = tuple[str, int]
"""A UDP address as ``(host, port)``; longer socket tuples are cut to these two."""

MAGIC_COOKIE = 0x2112A442  # RFC 8489 §5
_MAGIC_COOKIE_BYTES = MAGIC_COOKIE.to_bytes(4, "big")
_FINGERPRINT_XOR = 0x5354554E  # RFC 8489 §14.7

# Message type, length, magic cookie, transaction ID (RFC 8489 §5).
_HEADER = struct.Struct("!HHI12s")
# Attribute type and value length (RFC 8489 §14).
_ATTRIBUTE_HEADER = struct.Struct("!HH")
_U32 = struct.Struct("!I")

_HEADER_SIZE = _HEADER.size
_TRANSACTION_ID_SIZE = 12

# RFC 8489 §6.1 asks for STUN over UDP to fit the path MTU; a Binding request
# with every ICE attribute is ~150 bytes. Anything bigger is not for us.
MAX_STUN_SIZE = 1500
# Enough for every attribute of a real check; caps the work per datagram.
_MAX_ATTRIBUTES = 32

_ATTR_MESSAGE_INTEGRITY = 0x0008
_ATTR_FINGERPRINT = 0x8028
_MESSAGE_INTEGRITY_SIZE = 20  # HMAC-SHA1 (RFC 8489 §14.5)
_FINGERPRINT_SIZE = 4  # CRC-32 (RFC 8489 §14.7)

# What aioice 0.13's parse_message raises on bytes that pass our structural
# checks (found with Hypothesis, tests/fuzz/test_fuzz_stun.py): ValueError from
# its own checks, unknown methods, bad addresses and bad UTF-8 (UnicodeDecodeError
# is a ValueError); struct.error from fixed-size attributes of the wrong size.
_AIOICE_PARSE_ERRORS = (ValueError, struct.error)

_SOFTWARE = "botcall"

# RFC 8445 §5.1.2.1: (2^24) * type preference + (2^8) * local preference +
# (256 - component id), with the peer-reflexive type preference 110 that a
# check's PRIORITY carries (RFC 8445 §7.1.1), local preference 65535, component 1.
PEER_REFLEXIVE_PRIORITY = (110 << 24) + (65535 << 8) + 255


class StunErrorCode(IntEnum):
    """ERROR-CODE values we send (RFC 8489 §14.8)."""

    BAD_REQUEST = 400  # RFC 8489 §14.8: malformed, or credentials missing (§9.1.3)
    UNAUTHORIZED = 401  # RFC 8489 §9.1.3: MESSAGE-INTEGRITY does not verify
    SERVER_ERROR = 500  # RFC 8489 §14.8

    @property
    def reason(self) -> str:
        """The reason phrase RFC 8489 §14.8 suggests."""
        return _REASONS[self]


_REASONS = {
    StunErrorCode.BAD_REQUEST: "Bad Request",
    StunErrorCode.UNAUTHORIZED: "Unauthorized",
    StunErrorCode.SERVER_ERROR: "Server Error",
}


def is_stun(data: bytes) -> bool:
    """Cheap check that a datagram looks like STUN (before a full parse).

    Args:
        data: a datagram.

    Returns:
        True when it is at least a header long, its first byte is 0..3 (RFC 7983
        §7) and it carries the magic cookie (RFC 8489 §5).
    """
    return len(data) >= _HEADER_SIZE and data[0] < 4 and data[4:8] == _MAGIC_COOKIE_BYTES


def _check_structure_untrusted(data: bytes) -> None:
    """Validate the header and walk the attribute list; verify FINGERPRINT.

    aioice reads attributes past the end of the message as truncated values and
    does not insist on FINGERPRINT being last, so we walk the list ourselves first.
    """
    size = len(data)
    if size < _HEADER_SIZE:
        raise StunParseError(f"STUN message of {size} bytes is shorter than its header")
    if size > MAX_STUN_SIZE:
        raise StunParseError(f"STUN message of {size} bytes is over {MAX_STUN_SIZE}")
    message_type, length, cookie, _ = _HEADER.unpack_from(data)
    if message_type & 0xC000:
        raise StunParseError("the two top bits of a STUN message must be zero (RFC 8489 §5)")
    if cookie != MAGIC_COOKIE:
        raise StunParseError("STUN message without the magic cookie (RFC 8489 §5)")
    if length % 4:
        raise StunParseError(f"STUN length {length} is not a multiple of 4 (RFC 8489 §5)")
    if _HEADER_SIZE + length != size:
        raise StunParseError(f"STUN length {length} does not match the {size}-byte datagram")
    # Length and every padded attribute are multiples of four, so an attribute
    # header always fits; only its value can overrun.
    position = _HEADER_SIZE
    count = 0
    while position < size:
        count += 1
        if count > _MAX_ATTRIBUTES:
            raise StunParseError(f"more than {_MAX_ATTRIBUTES} STUN attributes")
        attribute_type, attribute_length = _ATTRIBUTE_HEADER.unpack_from(data, position)
        value_start = position + 4
        # Values are padded to four bytes (RFC 8489 §14).
        next_position = value_start + ((attribute_length + 3) & ~3)
        if next_position > size:
            raise StunParseError(f"STUN attribute 0x{attribute_type:04x} overruns the message")
        if attribute_type == _ATTR_MESSAGE_INTEGRITY and attribute_length != _MESSAGE_INTEGRITY_SIZE:
            raise StunParseError(f"MESSAGE-INTEGRITY of {attribute_length} bytes, not 20")
        if attribute_type == _ATTR_FINGERPRINT:
            if attribute_length != _FINGERPRINT_SIZE:
                raise StunParseError(f"FINGERPRINT of {attribute_length} bytes, not 4")
            if next_position != size:
                raise StunParseError("FINGERPRINT is not the last attribute (RFC 8489 §14.7)")
            # FINGERPRINT is last, so the header's length already counts it, as
            # the CRC input requires (RFC 8489 §14.7).
            expected = zlib.crc32(data[:position]) ^ _FINGERPRINT_XOR
            if _U32.unpack_from(data, value_start)[0] != expected:
                raise StunParseError("STUN FINGERPRINT does not match", counter="stun_bad_fingerprint")
        position = next_position


def parse_stun_untrusted(data: bytes) -> Message:
    """Parse a STUN message from the network.

    Checks the header (two zero bits, magic cookie, length), the attribute layout
    and FINGERPRINT when present, then decodes with aioice. MESSAGE-INTEGRITY is
    *not* checked here (the key depends on USERNAME): use
    ``Message.check_message_integrity(key)``.

    Args:
        data: one datagram.

    Returns:
        The decoded ``aioice.stun.Message`` (unknown comprehension-optional
        attributes, like Chrome's 0xC057, are skipped).

    Raises:
        StunParseError: anything malformed; ``counter`` is ``"stun_bad_fingerprint"``
            for a FINGERPRINT mismatch, ``"malformed_stun"`` otherwise.
    """
    _check_structure_untrusted(data)
    try:
        return _aioice_stun.parse_message(data)
    except _AIOICE_PARSE_ERRORS as exc:
        raise StunParseError(f"malformed STUN message: {exc}") from exc


def _normalise_address(addr: Sequence[Any]) -> Address:
    host, port = addr[0], addr[1]
    ipaddress.ip_address(host)  # ValueError for a hostname: a caller bug
    if not 0 <= port <= 0xFFFF:
        raise ValueError(f"port {port} out of range")
    return (str(host), int(port))


def max_success_size(ipv6: bool = True) -> int:
    """Size of our Binding success response (header, XOR-MAPPED-ADDRESS, MI, FP).

    Args:
        ipv6: size it for an IPv6 mapped address (the larger one).

    Returns:
        The exact size in bytes: 64 for IPv4, 76 for IPv6.
    """
    address_value = 20 if ipv6 else 8
    return _HEADER_SIZE + (4 + address_value) + (4 + _MESSAGE_INTEGRITY_SIZE) + (4 + _FINGERPRINT_SIZE)


def binding_request(
    username: str,
    password: str,
    *,
    transaction_id: bytes | None = None,
    priority: int | None = None,
    use_candidate: bool = False,
    controlling: bool | None = None,
    tie_breaker: int | None = None,
) -> bytes:
    """Build a Binding request with short-term credentials (RFC 8489 §9.1, RFC 8445 §7.2.2).

    The request always carries a SOFTWARE attribute sized so that the request is
    at least as large as the largest success response (76 bytes): the relay never
    answers with more bytes than it received (no amplification), so a shorter
    request would go unanswered.

    Args:
        username: ``"<relay ufrag>:<anything>"`` (bots) or ``"<remote>:<local>"`` (ICE).
        password: the ICE password of the side that will answer (the MI key).
        transaction_id: 12 bytes; random when omitted.
        priority: PRIORITY attribute (RFC 8445 §7.1.1), omitted when None.
        use_candidate: add USE-CANDIDATE (RFC 8445 §7.1.2).
        controlling: True adds ICE-CONTROLLING, False ICE-CONTROLLED, None neither.
        tie_breaker: the 64-bit tie-breaker for ICE-CONTROLLING/CONTROLLED; random
            when omitted.

    Returns:
        The encoded request, ending with MESSAGE-INTEGRITY and FINGERPRINT.

    Raises:
        ValueError: a transaction ID that is not 12 bytes, or an out-of-range number.
    """
    if transaction_id is None:
        transaction_id = secrets.token_bytes(_TRANSACTION_ID_SIZE)
    elif len(transaction_id) != _TRANSACTION_ID_SIZE:
        raise ValueError(f"a STUN transaction ID is 12 bytes, not {len(transaction_id)}")
    attributes: dict[str, object] = {"USERNAME": username}
    if priority is not None:
        if not 0 <= priority <= 0xFFFFFFFF:
            raise ValueError(f"priority {priority} is not a 32-bit value")
        attributes["PRIORITY"] = priority
    if controlling is not None:
        if tie_breaker is None:
            tie_breaker = secrets.randbits(64)
        elif not 0 <= tie_breaker <= 0xFFFFFFFFFFFFFFFF:
            raise ValueError(f"tie-breaker {tie_breaker} is not a 64-bit value")
        attributes["ICE-CONTROLLING" if controlling else "ICE-CONTROLLED"] = tie_breaker
    if use_candidate:
        attributes["USE-CANDIDATE"] = None
    attributes["SOFTWARE"] = _SOFTWARE
    message = Message(Method.BINDING, Class.REQUEST, transaction_id, attributes)
    # MI (24 bytes) and FP (8) come last; pad SOFTWARE so the total reaches the
    # largest success response. Both sizes are multiples of 4, and so is the
    # shortfall: "botcall" + n spaces grows the padded value by exactly n.
    shortfall = max_success_size(ipv6=True) - (len(bytes(message)) + 24 + 8)
    if shortfall > 0:
        message.attributes["SOFTWARE"] = _SOFTWARE + " " * shortfall
    message.add_message_integrity(password.encode("utf-8"))
    return bytes(message)


def binding_success(request: Message, mapped_addr: Sequence[Any], password: str) -> bytes:
    """Build the Binding success response to an authenticated request (RFC 8489 §9.1.4).

    Args:
        request: the parsed request (its transaction ID is echoed).
        mapped_addr: the request's source address, ``(host, port)`` (longer
            socket address tuples are accepted and cut).
        password: our ICE password (the MESSAGE-INTEGRITY key).

    Returns:
        The response: XOR-MAPPED-ADDRESS, MESSAGE-INTEGRITY, FINGERPRINT.

    Raises:
        ValueError: ``mapped_addr`` is not an IP address and port.
    """
    address = _normalise_address(mapped_addr)
    response = Message(
        Method.BINDING,
        Class.RESPONSE,
        request.transaction_id,
        {"XOR-MAPPED-ADDRESS": address},
    )
    response.add_message_integrity(password.encode("utf-8"))
    return bytes(response)


def binding_error(request: Message, code: int, reason: str | None = None) -> bytes:
    """Build an unauthenticated Binding error response (RFC 8489 §9.1.3).

    It carries ERROR-CODE and FINGERPRINT, never MESSAGE-INTEGRITY: a 400 or 401
    is sent precisely when we have no key the client would accept.

    Args:
        request: the parsed request (its transaction ID is echoed).
        code: 300..699, usually a ``StunErrorCode``.
        reason: the reason phrase; the standard one for a ``StunErrorCode`` when omitted.

    Returns:
        The encoded error response.

    Raises:
        ValueError: a code outside 300..699.
    """
    if not 300 <= code <= 699:
        raise ValueError(f"STUN error code {code} outside 300..699 (RFC 8489 §14.8)")
    if reason is None:
        reason = StunErrorCode(code).reason
    response = Message(
        Method.BINDING,
        Class.ERROR,
        request.transaction_id,
        {"ERROR-CODE": (int(code), reason)},
    )
    response.add_fingerprint()
    return bytes(response)


def parse_binding_response_untrusted(data: bytes, password: str, expected_transaction_id: bytes) -> Address:
    """Check a Binding response on the client side and return the mapped address.

    Args:
        data: the datagram received.
        password: the answering side's ICE password (the MESSAGE-INTEGRITY key).
        expected_transaction_id: the transaction ID of our outstanding request.

    Returns:
        The XOR-MAPPED-ADDRESS, ``(host, port)``: our address as the relay sees it.

    Raises:
        StunParseError: malformed (``"malformed_stun"``), not a Binding response
            (``"stun_unexpected"``), another transaction (``"stun_unexpected_transaction"``),
            an error response (``"stun_error_response"``, code and reason in the
            message), no or wrong MESSAGE-INTEGRITY (``"stun_unauthenticated_response"``),
            or no XOR-MAPPED-ADDRESS.
    """
    message = parse_stun_untrusted(data)
    if message.message_method != Method.BINDING or message.message_class not in (Class.RESPONSE, Class.ERROR):
        raise StunParseError(
            f"expected a Binding response, got {message.message_method.name} {message.message_class.name}",
            counter="stun_unexpected",
        )
    if not secrets.compare_digest(message.transaction_id, expected_transaction_id):
        raise StunParseError("response to another transaction", counter="stun_unexpected_transaction")
    authenticated = message.check_message_integrity(password.encode("utf-8"))
    if message.message_class == Class.ERROR:
        code, reason = message.attributes.get("ERROR-CODE", (0, "no ERROR-CODE"))
        state = "authenticated" if authenticated else "unauthenticated"
        raise StunParseError(f"Binding error response {code} {reason!r} ({state})", counter="stun_error_response")
    if not authenticated:
        raise StunParseError(
            "Binding response without a valid MESSAGE-INTEGRITY",
            counter="stun_unauthenticated_response",
        )
    # aioice types its attributes as Any; it decodes XOR-MAPPED-ADDRESS to (host, port).
    mapped: Address | None = message.attributes.get("XOR-MAPPED-ADDRESS")
    if mapped is None:
        raise StunParseError("Binding response without XOR-MAPPED-ADDRESS")
    return mapped


def check_size(username: str, *, ice: bool) -> int:
    """Size in bytes of the ``binding_check`` with this USERNAME.

    Args:
        username: the check's USERNAME.
        ice: the check carries PRIORITY and ICE-CONTROLLED (a browser's).

    Returns:
        20 (header) + USERNAME (4 + value padded to 4) + 8 + 12 if ``ice`` +
        MESSAGE-INTEGRITY (24) + FINGERPRINT (8).
    """
    username_value = (len(username.encode("utf-8")) + 3) & ~3
    return _HEADER_SIZE + 4 + username_value + (8 + 12 if ice else 0) + (4 + _MESSAGE_INTEGRITY_SIZE) + (4 + _FINGERPRINT_SIZE)


def binding_check(
    username: str,
    password: str,
    *,
    transaction_id: bytes,
    priority: int | None = None,
    tie_breaker: int | None = None,
) -> bytes:
    """Build the relay's own connectivity check (RFC 8445 §7.2.2, RFC 8489 §9.1).

    The relay sends it to an address that sent an authenticated request but has
    not yet shown it receives; the address is used once a valid success comes
    back from it. Unlike ``binding_request`` it is never padded: it must not be
    larger than the datagram that triggered it.

    Args:
        username: ``"<peer ufrag>:<our ufrag>"``: for a bot, its own ufrag (the
            part after the colon of its requests) then the session's; for a
            browser, its offer's ``ice-ufrag`` then ours.
        password: the key the peer checks: the session's ``ice_pwd`` for a
            bot, the browser's own ``ice-pwd`` from its offer.
        transaction_id: 12 random bytes, used once.
        priority: PRIORITY (RFC 8445 §7.1.1); with ``tie_breaker``, for ICE peers.
        tie_breaker: ICE-CONTROLLED's 64-bit tie-breaker (the relay is the
            lite, controlled agent, RFC 8445 §6.1.3.1), omitted when None.

    Returns:
        USERNAME, [PRIORITY], [ICE-CONTROLLED], MESSAGE-INTEGRITY, FINGERPRINT:
        ``check_size(username, ice=priority is not None)`` bytes.

    Raises:
        ValueError: a transaction ID that is not 12 bytes, or an out-of-range number.
    """
    if len(transaction_id) != _TRANSACTION_ID_SIZE:
        raise ValueError(f"a STUN transaction ID is 12 bytes, not {len(transaction_id)}")
    if (priority is None) != (tie_breaker is None):
        raise ValueError("PRIORITY and ICE-CONTROLLED go together in a check")
    attributes: dict[str, object] = {"USERNAME": username}
    if priority is not None and tie_breaker is not None:
        if not 0 <= priority <= 0xFFFFFFFF:
            raise ValueError(f"priority {priority} is not a 32-bit value")
        if not 0 <= tie_breaker <= 0xFFFFFFFFFFFFFFFF:
            raise ValueError(f"tie-breaker {tie_breaker} is not a 64-bit value")
        attributes["PRIORITY"] = priority
        attributes["ICE-CONTROLLED"] = tie_breaker
    message = Message(Method.BINDING, Class.REQUEST, transaction_id, attributes)
    message.add_message_integrity(password.encode("utf-8"))
    return bytes(message)


def parse_binding_check_untrusted(data: bytes, username: str, password: str) -> Message:
    """Accept a connectivity check addressed to us (a bot answering the relay).

    Args:
        data: the datagram received.
        username: the USERNAME a check for us carries, exactly (a bot:
            ``"<its ufrag>:<session ice_ufrag>"``).
        password: the MESSAGE-INTEGRITY key (a bot: the session's ``ice_pwd``).

    Returns:
        The parsed request (answer it with ``binding_success``).

    Raises:
        StunParseError: malformed (``"malformed_stun"``, ``"stun_bad_fingerprint"``),
            not a Binding request (``"stun_unexpected"``), another USERNAME
            (``"stun_wrong_username"``), or no or wrong MESSAGE-INTEGRITY
            (``"stun_unauthenticated_check"``).
    """
    message = parse_stun_untrusted(data)
    if message.message_method != Method.BINDING or message.message_class != Class.REQUEST:
        raise StunParseError(
            f"expected a Binding request, got {message.message_method.name} {message.message_class.name}",
            counter="stun_unexpected",
        )
    if message.attributes.get("USERNAME") != username:
        raise StunParseError("a check for another USERNAME", counter="stun_wrong_username")
    if not message.check_message_integrity(password.encode("utf-8")):
        raise StunParseError("a check without a valid MESSAGE-INTEGRITY", counter="stun_unauthenticated_check")
    return message


def answer_check_untrusted(data: bytes, source: Sequence[Any], *, username: str, password: str) -> bytes:
    """The Binding success that answers a valid check, as a bot sends it back.

    Args:
        data: the datagram received (from the relay's address: the caller checks).
        source: where it came from, for XOR-MAPPED-ADDRESS.
        username: the USERNAME a check for us carries (see ``parse_binding_check_untrusted``).
        password: the MESSAGE-INTEGRITY key, also the key of our answer.

    Returns:
        The success response: XOR-MAPPED-ADDRESS, MESSAGE-INTEGRITY, FINGERPRINT.

    Raises:
        StunParseError: not a valid check for us (see ``parse_binding_check_untrusted``).
    """
    message = parse_binding_check_untrusted(data, username, password)
    try:
        return binding_success(message, source, password)
    except ValueError as exc:  # a source that is not an IP address and port: our caller's
        raise StunParseError(f"cannot answer a check from {source!r}: {exc}") from exc
