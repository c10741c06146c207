"""The one Binding responder (bots and browsers) and per-peer ICE-lite state."""

import hashlib
import hmac
import random
import struct
import zlib

import pytest
from aioice.stun import Class, Message, Method
from hypothesis import given, strategies as st

from botcall.errors import StunParseError
from botcall.rtp.ice_lite import (
    BindingReason,
    IceLiteState,
    answer_binding_untrusted,
)
from botcall.rtp.stun import binding_request, parse_binding_response_untrusted, parse_stun_untrusted

# Captured from Chromium 156 (headless, Debian) checking our ICE-lite answer on
# 127.0.0.1: USERNAME "relayUfrag1:FgqC", 0xC057, ICE-CONTROLLING, PRIORITY,
# MESSAGE-INTEGRITY, FINGERPRINT; the second is the nomination (USE-CANDIDATE).
CHROME_UFRAG = "relayUfrag1"
CHROME_PASSWORD = "relayPasswordABCDEFGHIJ12"
CHROME_CHECK = bytes.fromhex(
    "000100502112a44234534a666c577775654978790006001072656c61795566726167313a46677143"
    "c057000400010000802a0008506e14ed83e1f9e7002400046e7c1eff00080014b0fed04ea13b4284"
    "06cc88db139c1387e732315b8028000401ee065b"
)
CHROME_NOMINATION = bytes.fromhex(
    "000100542112a4424535647436784175684648500006001072656c61795566726167313a46677143"
    "c057000400010000802a0008506e14ed83e1f9e700250000002400046e7c1eff00080014a9393d07"
    "8670892002c6f3fee96dd14d4a69215e80280004fe2c12b4"
)

UFRAG = "Ab3d"
PASSWORD = "sessionPassword+1234567/89"
SESSIONS = {UFRAG: PASSWORD, CHROME_UFRAG: CHROME_PASSWORD}
BROWSER = ("192.0.2.10", 50000)
BOT = ("198.51.100.7", 41000)


def tlv(attribute_type: int, value: bytes) -> bytes:
    return struct.pack("!HH", attribute_type, len(value)) + value + bytes(-len(value) % 4)


def sign(header_and_body: bytes, key: bytes | None, *, fingerprint: bool = True) -> bytes:
    """Append MESSAGE-INTEGRITY (if key) and FINGERPRINT by hand (RFC 8489 §14.5, §14.7)."""
    data = header_and_body
    if key is not None:
        covered = data[:2] + struct.pack("!H", len(data) - 20 + 24) + data[4:]
        data = covered + tlv(0x0008, hmac.new(key, covered, hashlib.sha1).digest())
    if fingerprint:
        data = data[:2] + struct.pack("!H", len(data) - 20 + 8) + data[4:]
        data += tlv(0x8028, struct.pack("!I", zlib.crc32(data) ^ 0x5354554E))
    return data


def chrome_style_request(
    username: str,
    key: bytes | None,
    *,
    use_candidate: bool = False,
    transaction_id: bytes = b"chromeTxn001",
    method_and_class: int = 0x0001,
) -> bytes:
    """A check shaped like Chrome's, including Google's 0xC057 (network id, cost)."""
    body = tlv(0x0006, username.encode()) if username is not None else b""
    body += tlv(0xC057, b"\x00\x01\x00\x0a")
    body += tlv(0x802A, (0x1122334455667788).to_bytes(8, "big"))
    if use_candidate:
        body += tlv(0x0025, b"")
    body += tlv(0x0024, (1853824767).to_bytes(4, "big"))
    header = struct.pack("!HHI12s", method_and_class, len(body), 0x2112A442, transaction_id)
    return sign(header + body, key)


def check_success(outcome, request: bytes, addr, password: str) -> None:
    assert outcome.reason is BindingReason.SUCCESS and outcome.authenticated
    assert outcome.reply is not None and len(outcome.reply) <= len(request)
    transaction_id = parse_stun_untrusted(request).transaction_id
    assert parse_binding_response_untrusted(outcome.reply, password, transaction_id) == addr


# --- Real Chrome checks ----------------------------------------------------------


def test_captured_chrome_check_is_answered():
    outcome = answer_binding_untrusted(CHROME_CHECK, BROWSER, SESSIONS.get)
    check_success(outcome, CHROME_CHECK, BROWSER, CHROME_PASSWORD)
    assert outcome.ufrag == CHROME_UFRAG
    assert not outcome.use_candidate


def test_captured_chrome_nomination_carries_use_candidate():
    outcome = answer_binding_untrusted(CHROME_NOMINATION, BROWSER, SESSIONS.get)
    check_success(outcome, CHROME_NOMINATION, BROWSER, CHROME_PASSWORD)
    assert outcome.use_candidate
    assert outcome.transaction_id == CHROME_NOMINATION[8:20]


def test_captured_chrome_check_fails_with_another_password():
    outcome = answer_binding_untrusted(CHROME_CHECK, BROWSER, {CHROME_UFRAG: PASSWORD}.get)
    assert outcome.reason is BindingReason.UNAUTHORIZED and not outcome.authenticated
    assert parse_stun_untrusted(outcome.reply).error_code == 401


# --- Hand-built checks -----------------------------------------------------------


@pytest.mark.parametrize("addr", [BROWSER, ("2001:db8::7", 3478)])
@pytest.mark.parametrize("use_candidate", [False, True])
def test_chrome_style_check_is_answered(addr, use_candidate):
    request = chrome_style_request(f"{UFRAG}:remote", PASSWORD.encode(), use_candidate=use_candidate)
    outcome = answer_binding_untrusted(request, addr, SESSIONS.get)
    check_success(outcome, request, addr, PASSWORD)
    assert outcome.use_candidate is use_candidate


def test_bot_request_is_answered():
    request = binding_request(f"{UFRAG}:bot-42", PASSWORD)
    outcome = answer_binding_untrusted(request, BOT, SESSIONS.get)
    check_success(outcome, request, BOT, PASSWORD)
    assert outcome.ufrag == UFRAG and not outcome.use_candidate


def test_bot_request_from_ipv6_fits_the_amplification_limit():
    request = binding_request(f"{UFRAG}:", PASSWORD)
    outcome = answer_binding_untrusted(request, ("2001:db8::1", 9), SESSIONS.get)
    check_success(outcome, request, ("2001:db8::1", 9), PASSWORD)


def test_role_conflict_is_never_487():
    # A peer claiming ICE-CONTROLLED against a lite agent: still a plain success.
    request = binding_request(f"{UFRAG}:x", PASSWORD, controlling=False, priority=1)
    outcome = answer_binding_untrusted(request, BOT, SESSIONS.get)
    check_success(outcome, request, BOT, PASSWORD)


def test_username_splits_at_the_first_colon():
    seen = []

    def lookup(ufrag):
        seen.append(ufrag)
        return PASSWORD if ufrag == UFRAG else None

    request = binding_request(f"{UFRAG}:a:b:c", PASSWORD)
    assert answer_binding_untrusted(request, BOT, lookup).authenticated
    assert seen == [UFRAG]


# --- Refusals --------------------------------------------------------------------


def test_wrong_password_is_401_without_integrity():
    request = binding_request(f"{UFRAG}:bot", "the wrong password, quite long")
    outcome = answer_binding_untrusted(request, BOT, SESSIONS.get)
    assert outcome.reason is BindingReason.UNAUTHORIZED
    assert not outcome.authenticated and not outcome.use_candidate
    assert outcome.ufrag == UFRAG
    reply = parse_stun_untrusted(outcome.reply)
    assert reply.message_class == Class.ERROR and reply.error_code == 401
    assert "MESSAGE-INTEGRITY" not in reply.attributes and "FINGERPRINT" in reply.attributes
    assert reply.transaction_id == parse_stun_untrusted(request).transaction_id


def test_unknown_ufrag_is_dropped_silently():
    request = chrome_style_request("nobody:remote", PASSWORD.encode())
    outcome = answer_binding_untrusted(request, BROWSER, SESSIONS.get)
    assert outcome.reply is None and outcome.ufrag is None and not outcome.authenticated
    assert outcome.reason is BindingReason.UNKNOWN_UFRAG and outcome.reason == "stun_unknown_ufrag"


def test_unknown_ufrag_without_integrity_is_dropped_too():
    outcome = answer_binding_untrusted(chrome_style_request("nobody:x", None), BROWSER, SESSIONS.get)
    assert outcome.reply is None and outcome.reason is BindingReason.UNKNOWN_UFRAG


def test_known_ufrag_without_integrity_is_400():
    request = chrome_style_request(f"{UFRAG}:remote", None)
    outcome = answer_binding_untrusted(request, BROWSER, SESSIONS.get)
    assert outcome.reason is BindingReason.BAD_REQUEST and outcome.ufrag == UFRAG
    assert not outcome.authenticated
    assert parse_stun_untrusted(outcome.reply).error_code == 400


def test_missing_username_is_400():
    body = tlv(0x0024, (1).to_bytes(4, "big")) + tlv(0x8022, b"some software name")
    request = sign(struct.pack("!HHI12s", 0x0001, len(body), 0x2112A442, b"noUsername01") + body, b"k")
    outcome = answer_binding_untrusted(request, BROWSER, SESSIONS.get)
    assert outcome.reason is BindingReason.BAD_REQUEST and outcome.ufrag is None
    assert parse_stun_untrusted(outcome.reply).error_code == 400


def test_bare_request_gets_nothing_because_a_400_would_amplify():
    # 20 bytes in; a 400 would be 48 bytes out.
    request = struct.pack("!HHI12s", 0x0001, 0, 0x2112A442, b"bareRequest1")
    outcome = answer_binding_untrusted(request, BROWSER, SESSIONS.get)
    assert outcome.reason is BindingReason.BAD_REQUEST
    assert outcome.reply is None and outcome.reply_suppressed


def test_fingerprint_mismatch_is_a_parse_error():
    request = bytearray(chrome_style_request(f"{UFRAG}:remote", PASSWORD.encode()))
    request[-1] ^= 0xFF
    with pytest.raises(StunParseError) as caught:
        answer_binding_untrusted(bytes(request), BROWSER, SESSIONS.get)
    assert caught.value.counter == "stun_bad_fingerprint"


@pytest.mark.parametrize(
    "method_and_class, reason",
    [
        (0x0011, BindingReason.INDICATION),
        (0x0101, BindingReason.UNEXPECTED_RESPONSE),
        (0x0111, BindingReason.UNEXPECTED_RESPONSE),
        (0x0003, BindingReason.UNSUPPORTED_METHOD),  # TURN Allocate
    ],
)
def test_non_binding_requests_get_no_reply(method_and_class, reason):
    data = chrome_style_request(f"{UFRAG}:r", PASSWORD.encode(), method_and_class=method_and_class)
    outcome = answer_binding_untrusted(data, BROWSER, SESSIONS.get)
    assert outcome.reason is reason and outcome.reply is None and not outcome.authenticated


@given(
    username=st.text(max_size=40),
    password=st.text(min_size=1, max_size=40),
    known=st.booleans(),
    sign_it=st.booleans(),
    use_candidate=st.booleans(),
    ipv6=st.booleans(),
    port=st.integers(0, 65535),
)
def test_reply_is_never_larger_than_the_request(username, password, known, sign_it, use_candidate, ipv6, port):
    ufrag = username.partition(":")[0]
    sessions = {ufrag: password} if known else {}
    request = chrome_style_request(username, password.encode() if sign_it else None, use_candidate=use_candidate)
    addr = ("2001:db8::5", port) if ipv6 else ("192.0.2.5", port)
    outcome = answer_binding_untrusted(request, addr, sessions.get)
    if outcome.reply is not None:
        assert len(outcome.reply) <= len(request)
    assert outcome.authenticated is (known and sign_it)
    if not known:
        assert outcome.reply is None
    if outcome.authenticated:
        check_success(outcome, request, addr, password)


# --- IceLiteState ----------------------------------------------------------------

A = ("192.0.2.1", 1000)
B = ("192.0.2.2", 2000)
C = ("192.0.2.3", 3000)


def test_bot_mode_latches_on_the_first_request_and_follows_moves():
    state = IceLiteState(nominate_on="any")
    first = state.on_valid_request(A, False, now=0.0)
    assert first.changed and first.selected == A and first.previous is None and first.new_candidate
    again = state.on_valid_request(A, False, now=10.0)
    assert not again.changed and again.selected == A and not again.new_candidate
    moved = state.on_valid_request(B, False, now=15.0)
    assert moved.changed and moved.selected == B and moved.previous == A
    assert state.selected == B


def test_browser_mode_learns_then_selects_on_use_candidate():
    state = IceLiteState(nominate_on="use_candidate")
    learnt = state.on_valid_request(A, False, now=0.0)
    assert not learnt.changed and learnt.selected is None and learnt.new_candidate
    assert state.candidates == (A,) and state.selected is None
    nominated = state.on_valid_request(A, True, now=0.1)
    assert nominated.changed and nominated.selected == A
    # A check on another pair does not move the selection...
    other = state.on_valid_request(B, False, now=1.0)
    assert not other.changed and state.selected == A and other.new_candidate
    # ... a renomination does.
    renominated = state.on_valid_request(B, True, now=2.0)
    assert renominated.changed and renominated.selected == B and renominated.previous == A


def test_consent_expires_after_thirty_seconds():
    state = IceLiteState(nominate_on="any")
    assert state.deadline() is None and not state.expired(1e9)
    state.on_valid_request(A, False, now=100.0)
    state.on_valid_request(A, False, now=110.0)
    assert state.deadline() == 140.0
    assert not state.expired(139.999)
    assert state.expired(140.0)


def test_consent_is_refreshed_only_by_the_selected_address():
    state = IceLiteState(nominate_on="use_candidate")
    state.on_valid_request(A, True, now=0.0)
    state.on_valid_request(B, False, now=20.0)  # checks on another pair
    assert state.deadline() == 30.0
    state.on_valid_request(A, False, now=25.0)
    assert state.deadline() == 55.0


def test_a_request_after_expiry_starts_over():
    state = IceLiteState(nominate_on="use_candidate")
    state.on_valid_request(A, True, now=0.0)
    update = state.on_valid_request(B, False, now=31.0)
    assert state.selected is None and state.candidates == (B,)
    assert update.changed and update.previous == A and update.selected is None
    assert state.deadline() == 61.0


def test_configurable_timeout():
    state = IceLiteState(nominate_on="any", consent_timeout=5.0)
    state.on_valid_request(A, False, now=1.0)
    assert state.expired(6.0) and not state.expired(5.9)


def test_candidates_are_bounded_and_the_selected_one_survives():
    # A long consent timeout: only A is selected, and only A refreshes consent.
    state = IceLiteState(nominate_on="use_candidate", max_candidates=3, consent_timeout=1e6)
    state.on_valid_request(A, True, now=0.0)
    for port in range(100):
        state.on_valid_request(("203.0.113.1", port), False, now=1.0 + port)
        assert len(state.candidates) <= 3
        assert A in state.candidates
    assert state.candidates == (A, ("203.0.113.1", 98), ("203.0.113.1", 99))


def test_bot_mode_bounded_with_the_minimum_limit():
    state = IceLiteState(nominate_on="any", max_candidates=2)
    for port in range(10):
        state.on_valid_request(("203.0.113.1", port), False, now=port)
        assert len(state.candidates) <= 2
    assert state.selected == ("203.0.113.1", 9)


def test_replayed_transaction_from_elsewhere_cannot_move_the_session():
    state = IceLiteState(nominate_on="any")
    state.on_valid_request(A, False, now=0.0, transaction_id=b"t" * 12)
    replay = state.on_valid_request(C, False, now=1.0, transaction_id=b"t" * 12)
    assert replay.replayed and not replay.changed and replay.selected == A
    assert state.selected == A and C not in state.candidates
    assert state.deadline() == 30.0  # no consent refresh either
    # A retransmission from the same address is fine.
    retransmission = state.on_valid_request(A, False, now=2.0, transaction_id=b"t" * 12)
    assert not retransmission.replayed and state.deadline() == 32.0


def test_replay_window_is_bounded():
    state = IceLiteState(nominate_on="any", replay_window=4)
    for index in range(10):
        state.on_valid_request(A, False, now=float(index), transaction_id=bytes([index]) * 12)
    # A recent ID from elsewhere is a replay; the oldest have been forgotten.
    assert state.on_valid_request(C, False, now=10.0, transaction_id=bytes([9]) * 12).replayed
    assert state.on_valid_request(B, False, now=11.0, transaction_id=bytes([0]) * 12).changed


def test_bad_arguments():
    with pytest.raises(ValueError):
        IceLiteState(nominate_on="sometimes")
    with pytest.raises(ValueError):
        IceLiteState(nominate_on="any", max_candidates=1)
    with pytest.raises(ValueError):
        IceLiteState(nominate_on="any", consent_timeout=0)


def test_reset_forgets_everything():
    state = IceLiteState(nominate_on="any")
    state.on_valid_request(A, False, now=0.0, transaction_id=b"x" * 12)
    state.reset()
    assert state.selected is None and state.candidates == () and state.deadline() is None
    assert not state.on_valid_request(B, False, now=1.0, transaction_id=b"x" * 12).replayed


# --- A bot and the relay over a lossy, simulated network --------------------------


def test_bot_keepalives_latch_move_and_expire_over_a_lossy_network():
    """str0m-style: shuttle datagrams on a simulated clock with seeded loss."""
    rng = random.Random(7)
    relay_state = IceLiteState(nominate_on="any")
    latched = []
    bot_address = ("198.51.100.7", 41000)
    learnt_by_bot = []

    def relay_receive(data, source, now):
        outcome = answer_binding_untrusted(data, source, SESSIONS.get)
        if outcome.authenticated:
            update = relay_state.on_valid_request(
                source, outcome.use_candidate, now, transaction_id=outcome.transaction_id
            )
            if update.changed:
                latched.append((now, update.selected))
        return outcome.reply

    now = 0.0
    while now < 600.0:
        if now == 300.0:
            bot_address = ("198.51.100.7", 52000)  # the NAT rebinds
        if now < 450.0:  # the bot goes quiet at 450 s
            request = binding_request(f"{UFRAG}:bot", PASSWORD)
            if rng.random() > 0.2:  # 20 % loss towards the relay
                reply = relay_receive(request, bot_address, now)
                if reply is not None and rng.random() > 0.2:  # and back
                    transaction_id = parse_stun_untrusted(request).transaction_id
                    learnt_by_bot.append(parse_binding_response_untrusted(reply, PASSWORD, transaction_id))
        if 5.0 < now < 450.0:
            # Keepalives every 5 s with 20 % loss never leave a 30 s gap here.
            assert not relay_state.expired(now)
        now += 5.0
    assert latched[0][1] == ("198.51.100.7", 41000)
    assert latched[-1][1] == ("198.51.100.7", 52000) and 300.0 <= latched[-1][0] < 330.0
    assert len(latched) == 2
    assert relay_state.expired(600.0) and 450.0 < relay_state.deadline() <= 480.0
    assert set(learnt_by_bot) == {("198.51.100.7", 41000), ("198.51.100.7", 52000)}
