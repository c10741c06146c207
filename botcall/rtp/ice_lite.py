"""Answering Binding requests: bot latching and browsers' ICE-lite, one responder.

Bots prove their UDP address with a Binding request whose USERNAME is
``"<ice_ufrag>:<anything>"``; browsers run ICE against our ICE-lite agent
(RFC 8445 §2.5) with USERNAME ``"<our ufrag>:<their ufrag>"``. Both sign with our
ICE password, so one stateless function answers both: the session is found by
the part of USERNAME before the first ``':'``.

Two parts, both sans-IO:

* ``answer_binding_untrusted`` — stateless: bytes and source address in, a
  ``BindingOutcome`` (reply bytes or None, and what happened) out. No state is
  created for an unknown ufrag or a request that fails authentication.
* ``IceLiteState`` — per peer: learns candidate addresses from authenticated
  requests, picks the selected one (on any request for bots, on USE-CANDIDATE for
  browsers), and tracks consent freshness (RFC 7675): 30 s without an
  authenticated request and the peer is expired.

The relay's use::

    outcome = answer_binding_untrusted(data, addr, sessions.password_for_ufrag)
    counters[outcome.reason] += 1
    if outcome.reply is not None:
        sock.sendto(outcome.reply, addr)
    if outcome.authenticated:
        update = session.ice.on_valid_request(
            addr, outcome.use_candidate, now, transaction_id=outcome.transaction_id
        )
        if update.changed:
            relay.latch(session, update.selected)
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

from botcall.rtp.stun import (
    Class,
    Method,
    StunErrorCode,
    binding_error,
    binding_success,
    parse_stun_untrusted,
)

__all__ = [
    "BindingOutcome",
    "BindingReason",
    "DEFAULT_CONSENT_TIMEOUT",
    "IceLiteState",
    "NominateOn",
    "PeerUpdate",
    "answer_binding_untrusted",
]

# RFC 7675 §5.1: consent expires 30 s after the last authenticated check.
DEFAULT_CONSENT_TIMEOUT = 30.0
DEFAULT_MAX_CANDIDATES = 8
# Recent transaction IDs kept per peer to spot a replayed request (see
# IceLiteState.on_valid_request); a peer checks every ~2.5 s, so 32 covers
# more than a minute.
DEFAULT_REPLAY_WINDOW = 32

NominateOn = Literal["any", "use_candidate"]


class BindingReason(StrEnum):
    """What ``answer_binding_untrusted`` did; also the relay's counter name."""

    SUCCESS = "stun_binding_success"
    UNKNOWN_UFRAG = "stun_unknown_ufrag"  # silently dropped, no reply, no state
    BAD_REQUEST = "stun_bad_request"  # 400: no USERNAME or no MESSAGE-INTEGRITY
    UNAUTHORIZED = "stun_unauthorized"  # 401: MESSAGE-INTEGRITY does not verify
    INDICATION = "stun_binding_indication"  # RFC 8445 §11 keepalive: nothing to answer
    UNEXPECTED_RESPONSE = "stun_unexpected_response"  # we are lite: we never ask
    UNSUPPORTED_METHOD = "stun_unsupported_method"  # TURN and friends: not a TURN server


@dataclass(frozen=True, slots=True)
class BindingOutcome:
    """The result of answering one STUN datagram.

    Attributes:
        reply: bytes to send back to the source address, or None.
        ufrag: our ufrag the request matched (a known session), or None.
        authenticated: the request carried a MESSAGE-INTEGRITY valid under that
            session's password; only then may the caller touch session state.
        use_candidate: the authenticated request carried USE-CANDIDATE.
        reason: what happened, also the counter name.
        transaction_id: the request's transaction ID (None when not a request).
        reply_suppressed: a reply was due but would have been larger than the
            request, so none is sent (no amplification).
    """

    reply: bytes | None
    ufrag: str | None
    authenticated: bool
    use_candidate: bool
    reason: BindingReason
    transaction_id: bytes | None = None
    reply_suppressed: bool = False


def _limit_reply(
    request_size: int,
    reply: bytes,
    *,
    ufrag: str | None,
    authenticated: bool,
    use_candidate: bool,
    reason: BindingReason,
    transaction_id: bytes,
) -> BindingOutcome:
    # Never answer with more bytes than we received: a spoofed source must not
    # turn us into an amplifier (RFC 8489 §16.1.3 discusses reflection).
    suppressed = len(reply) > request_size
    return BindingOutcome(
        reply=None if suppressed else reply,
        ufrag=ufrag,
        authenticated=authenticated,
        use_candidate=use_candidate,
        reason=reason,
        transaction_id=transaction_id,
        reply_suppressed=suppressed,
    )


def answer_binding_untrusted(
    data: bytes,
    addr: tuple,
    lookup: Callable[[str], str | None],
) -> BindingOutcome:
    """Answer one STUN datagram as an ICE-lite agent / bot latching point.

    Rules, in order (RFC 8489 §9.1.3 with ICE-lite's choices):

    1. Not a Binding request: no reply (indications and responses are counted).
    2. No USERNAME: 400.
    3. A ufrag (USERNAME up to the first ``':'``) that ``lookup`` does not know:
       silently dropped, no reply.
    4. No MESSAGE-INTEGRITY: 400.
    5. MESSAGE-INTEGRITY that does not verify with the session's password: 401.
    6. Otherwise: Binding success with XOR-MAPPED-ADDRESS = ``addr``, signed with
       the password, with FINGERPRINT. Role attributes are ignored: a lite agent
       is always controlled and never answers 487 (RFC 8445 §7.3.1.1).

    Any reply larger than the request is not sent (``reply_suppressed``).

    Args:
        data: the datagram, already classified as STUN.
        addr: its source address; ``(host, port)`` or a longer socket tuple.
        lookup: our ufrag -> our ICE password for that session, or None.

    Returns:
        A ``BindingOutcome``; only an ``authenticated`` one may change state.

    Raises:
        StunParseError: the datagram is not well-formed STUN (see
            ``parse_stun_untrusted``); count ``err.counter`` and drop it.
    """
    message = parse_stun_untrusted(data)
    if message.message_method != Method.BINDING:
        return BindingOutcome(None, None, False, False, BindingReason.UNSUPPORTED_METHOD)
    if message.message_class == Class.INDICATION:
        return BindingOutcome(None, None, False, False, BindingReason.INDICATION)
    if message.message_class != Class.REQUEST:
        return BindingOutcome(None, None, False, False, BindingReason.UNEXPECTED_RESPONSE)
    transaction_id = message.transaction_id
    size = len(data)
    attributes = message.attributes
    username = attributes.get("USERNAME")
    if username is None:
        return _limit_reply(
            size,
            binding_error(message, StunErrorCode.BAD_REQUEST),
            ufrag=None,
            authenticated=False,
            use_candidate=False,
            reason=BindingReason.BAD_REQUEST,
            transaction_id=transaction_id,
        )
    ufrag = username.partition(":")[0]
    password = lookup(ufrag)
    if password is None:
        return BindingOutcome(None, None, False, False, BindingReason.UNKNOWN_UFRAG, transaction_id)
    if "MESSAGE-INTEGRITY" not in attributes:
        return _limit_reply(
            size,
            binding_error(message, StunErrorCode.BAD_REQUEST),
            ufrag=ufrag,
            authenticated=False,
            use_candidate=False,
            reason=BindingReason.BAD_REQUEST,
            transaction_id=transaction_id,
        )
    if not message.check_message_integrity(password.encode("utf-8")):
        return _limit_reply(
            size,
            binding_error(message, StunErrorCode.UNAUTHORIZED),
            ufrag=ufrag,
            authenticated=False,
            use_candidate=False,
            reason=BindingReason.UNAUTHORIZED,
            transaction_id=transaction_id,
        )
    return _limit_reply(
        size,
        binding_success(message, addr, password),
        ufrag=ufrag,
        authenticated=True,
        use_candidate="USE-CANDIDATE" in attributes,
        reason=BindingReason.SUCCESS,
        transaction_id=transaction_id,
    )


@dataclass(frozen=True, slots=True)
class PeerUpdate:
    """What one authenticated request changed for a peer.

    Attributes:
        selected: the selected (latched) address after this request, or None
            while a browser has not nominated one yet.
        changed: ``selected`` differs from before the request: latch or move.
        previous: the selected address before the request (None if there was none).
        new_candidate: the source address was not a known candidate.
        replayed: the transaction ID was already seen from another address; the
            request was ignored (no learning, no move, no consent refresh).
    """

    selected: Hashable | None
    changed: bool
    previous: Hashable | None
    new_candidate: bool
    replayed: bool = False


class IceLiteState:
    """One peer's candidates, selected address and consent freshness (sans-IO).

    Feed it every *authenticated* Binding request of the peer (``BindingOutcome``
    with ``authenticated=True``); it never sees anything unauthenticated.

    * ``nominate_on="any"`` (bots, which never send USE-CANDIDATE): every request
      selects its source address, so a bot that moves is followed at once.
    * ``nominate_on="use_candidate"`` (browsers, RFC 8445 §8.2 regular
      nomination): addresses are learnt from any request, selected only by a
      request carrying USE-CANDIDATE; a later nomination of another address moves.

    Consent (RFC 7675 §5.1): the peer expires ``consent_timeout`` seconds after
    the last authenticated request from the selected address (from any address
    while none is selected). A request arriving after expiry starts over, as if
    it were the first.

    Replay: a request whose transaction ID was already seen from a *different*
    address is a captured request replayed from elsewhere (a retransmission
    keeps its source); it is ignored so it cannot steal the session.

    Addresses are opaque hashables (``(host, port)`` tuples in practice).
    """

    __slots__ = (
        "_candidates",
        "_consent_timeout",
        "_last_consent",
        "_max_candidates",
        "_nominate_on",
        "_recent_transactions",
        "_replay_window",
        "_selected",
    )

    def __init__(
        self,
        *,
        nominate_on: NominateOn,
        consent_timeout: float = DEFAULT_CONSENT_TIMEOUT,
        max_candidates: int = DEFAULT_MAX_CANDIDATES,
        replay_window: int = DEFAULT_REPLAY_WINDOW,
    ) -> None:
        """Create the state of one peer.

        Args:
            nominate_on: ``"any"`` (bots) or ``"use_candidate"`` (browsers).
            consent_timeout: seconds without an authenticated request before expiry.
            max_candidates: how many source addresses to remember, at least 2
                (least recently seen evicted first; never the selected one).
            replay_window: how many recent transaction IDs to remember.

        Raises:
            ValueError: an unknown ``nominate_on`` or a limit out of range.
        """
        if nominate_on not in ("any", "use_candidate"):
            raise ValueError(f"nominate_on must be 'any' or 'use_candidate', not {nominate_on!r}")
        if consent_timeout <= 0 or replay_window < 1:
            raise ValueError("consent_timeout and replay_window must be positive")
        if max_candidates < 2:
            # Room for the selected address and a newcomer.
            raise ValueError(f"max_candidates must be at least 2, not {max_candidates}")
        self._nominate_on = nominate_on
        self._consent_timeout = consent_timeout
        self._max_candidates = max_candidates
        self._replay_window = replay_window
        self._candidates: OrderedDict[Hashable, float] = OrderedDict()
        self._recent_transactions: OrderedDict[bytes, Hashable] = OrderedDict()
        self._selected: Hashable | None = None
        self._last_consent: float | None = None

    @property
    def selected(self) -> Hashable | None:
        """The selected (latched) address, or None."""
        return self._selected

    @property
    def candidates(self) -> tuple[Hashable, ...]:
        """Known source addresses, least recently seen first."""
        return tuple(self._candidates)

    def deadline(self) -> float | None:
        """When consent expires without another authenticated request.

        Returns:
            ``last authenticated request + consent_timeout``, or None before the first.
        """
        if self._last_consent is None:
            return None
        return self._last_consent + self._consent_timeout

    def expired(self, now: float) -> bool:
        """Whether consent has expired (the caller should unlatch the peer).

        Args:
            now: the current monotonic time in seconds.

        Returns:
            True once ``now`` reaches ``deadline()``; False before any request.
        """
        deadline = self.deadline()
        return deadline is not None and now >= deadline

    def reset(self) -> None:
        """Forget everything: candidates, selection, consent, recent transactions."""
        self._candidates.clear()
        self._recent_transactions.clear()
        self._selected = None
        self._last_consent = None

    def on_valid_request(
        self,
        addr: Hashable,
        use_candidate: bool,
        now: float,
        *,
        transaction_id: bytes | None = None,
    ) -> PeerUpdate:
        """Record one authenticated Binding request from the peer.

        Args:
            addr: its source address.
            use_candidate: it carried USE-CANDIDATE.
            now: the current monotonic time in seconds.
            transaction_id: its transaction ID, for replay detection (optional).

        Returns:
            A ``PeerUpdate``: whether the selected address changed, and to what.
        """
        previous = self._selected
        if transaction_id is not None:
            seen_from = self._recent_transactions.get(transaction_id)
            if seen_from is not None and seen_from != addr:
                return PeerUpdate(previous, False, previous, False, replayed=True)
        if self.expired(now):
            self.reset()
        if transaction_id is not None:
            self._remember_transaction(transaction_id, addr)
        if self._nominate_on == "any" or use_candidate:
            self._selected = addr
        new_candidate = self._remember_candidate(addr, now)
        if self._selected is None or self._selected == addr:
            self._last_consent = now
        return PeerUpdate(self._selected, self._selected != previous, previous, new_candidate)

    def _remember_transaction(self, transaction_id: bytes, addr: Hashable) -> None:
        transactions = self._recent_transactions
        transactions[transaction_id] = addr
        transactions.move_to_end(transaction_id)
        while len(transactions) > self._replay_window:
            transactions.popitem(last=False)

    def _remember_candidate(self, addr: Hashable, now: float) -> bool:
        candidates = self._candidates
        is_new = addr not in candidates
        candidates[addr] = now
        candidates.move_to_end(addr)
        if len(candidates) > self._max_candidates:
            # At most two entries are protected and the limit is at least two,
            # so the least recently seen unprotected one always exists.
            for old in candidates:
                if old != self._selected and old != addr:
                    del candidates[old]
                    break
        return is_new
