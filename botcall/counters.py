"""The catalogue of media counters: every name the relay counts, with its help text.

The relay (``relay/core.py``), browser legs (``webrtc/leg.py``), the UDP
transport (``relay/transport.py``) and per-listener play-out
(``audio/playout.py``) count drops and protocol events in
``collections.Counter`` tables keyed by name. The names are part of the
operator's contract: they are exported to ``/metrics``, each as
``botcall_media_events_total{event="…"}`` and as its own
``botcall_media_<name>_total`` family carrying the help text below. This module
is where they are documented, once; ``tests/test_counters.py`` reads the
source and fails when a counted name is missing here.

Two names are families rather than names: the socket's errors are counted as
``send_error_<ERRNO>`` and ``recv_error_<ERRNO>``, exported as
``botcall_media_send_errors_total{errno}`` and
``botcall_media_recv_errors_total{errno}``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from enum import Enum


class Kind(Enum):
    """A drop loses a packet (or a request); an event is something that happened."""

    DROP = "drop"
    EVENT = "event"


@dataclass(frozen=True, slots=True)
class Counted:
    """One catalogued counter: its kind and its one-line help text."""

    kind: Kind
    help: str


_D = Kind.DROP
_E = Kind.EVENT

#: Name -> kind and help text. Grouped by where they are counted.
CATALOGUE: Mapping[str, Counted] = {
    # --- the datagram path (relay/core.py) ---
    "empty": Counted(_D, "Empty UDP datagrams."),
    "oversized": Counted(_D, "UDP datagrams over 1500 bytes."),
    "unknown_kind": Counted(_D, "Datagrams whose first byte is none of STUN, DTLS or RTP/RTCP (RFC 7983)."),
    "unknown_source": Counted(_D, "RTP/RTCP from an address no session has latched."),
    "unknown_source_check": Counted(_E, "Checks sent because of RTP/RTCP with a latched bot's SSRC from an unknown address."),
    "malformed": Counted(_D, "Packets refused by a parser, with no more precise counter."),
    "malformed_rtp": Counted(_D, "RTP packets that do not parse (too short, wrong version, bad header)."),
    "malformed_rtcp": Counted(_D, "RTCP packets that do not parse."),
    "malformed_audio_level": Counted(_D, "RFC 6464 audio-level header extensions that do not parse."),
    "malformed_stun": Counted(_D, "STUN messages that do not parse."),
    "wrong_ssrc": Counted(_D, "RTP whose SSRC is not the one the session was given."),
    "wrong_ssrc_rtcp": Counted(_D, "RTCP whose sender SSRC is not the session's."),
    "wrong_payload_type": Counted(_D, "RTP whose payload type is not the session's."),
    "muted": Counted(_D, "RTP from a muted participant."),
    "rate_limited": Counted(_D, "RTP over a peer's packets-per-second budget."),
    "playout_full": Counted(_D, "A bot's audio refused: more than max_ahead seconds ahead of playback."),
    "barge_in": Counted(_E, "Bots whose speech a human interrupted (their queue cleared)."),
    "interrupted_tail": Counted(_D, "A bot's RTP after a barge-in, before the marker bit of its next utterance (at most 1 s): the interrupted speech's tail."),
    "rtcp_relayed": Counted(_E, "RTCP packets forwarded to the room."),
    "not_latched": Counted(_D, "Packets for a UDP peer with no latched address yet."),
    "not_connected": Counted(_D, "Packets for a browser whose DTLS-SRTP is not up yet."),
    "no_slot": Counted(_D, "Packets not sent to a browser: every one of its downstream tracks was held by another participant (group calls with more senders than tracks)."),
    # --- latching and ICE-lite (webrtc/ice_lite.py, relay/core.py) ---
    "latched": Counted(_E, "Peers whose address was latched (first verified address)."),
    "rebound": Counted(_E, "Latched peers that moved to a new verified address."),
    "address_taken_over": Counted(_E, "Addresses handed from one peer to another after verification."),
    "renegotiated": Counted(_E, "Browser offers answered on a live peer connection (DTLS and SRTP kept)."),
    "ice_restart": Counted(_E, "Browser ICE restarts: the session got new ICE credentials."),
    "consent_expired": Counted(_E, "Sessions that forgot their address: consent expired (RFC 7675)."),
    "stun_binding_success": Counted(_E, "Authenticated Binding requests answered."),
    "stun_binding_indication": Counted(_E, "Binding indications (keepalives): nothing to answer."),
    "stun_unknown_ufrag": Counted(_D, "Binding requests for a username no session has (no reply)."),
    "stun_bad_request": Counted(_D, "Binding requests with no USERNAME or MESSAGE-INTEGRITY (400)."),
    "stun_unauthorized": Counted(_D, "Binding requests whose MESSAGE-INTEGRITY does not verify (401)."),
    "stun_unsupported_method": Counted(_D, "STUN methods other than Binding (this is no TURN server)."),
    "stun_unexpected_response": Counted(_D, "STUN responses that answer no check of ours."),
    "stun_rate_limited": Counted(_D, "Binding requests over a peer's rate limit."),
    "stun_replayed": Counted(_D, "Binding requests whose transaction id the session used from another address."),
    "stun_retransmission": Counted(_E, "Binding requests whose transaction id the session used from the same address (answered, no state)."),
    "stun_bad_fingerprint": Counted(_D, "STUN messages whose FINGERPRINT does not match."),
    "stun_unexpected": Counted(_D, "STUN messages of a class or method the receiver does not expect."),
    "stun_unexpected_transaction": Counted(_D, "STUN responses to a transaction that is not outstanding."),
    "stun_error_response": Counted(_D, "Binding error responses received."),
    "stun_unauthenticated_response": Counted(_D, "Binding responses without a valid MESSAGE-INTEGRITY."),
    "stun_wrong_username": Counted(_D, "Checks for another USERNAME."),
    "stun_unauthenticated_check": Counted(_D, "Checks without a valid MESSAGE-INTEGRITY."),
    "check_sent": Counted(_E, "Connectivity checks the relay sent to verify an address."),
    "check_verified": Counted(_E, "Checks answered correctly: the address is verified."),
    "check_failed": Counted(_D, "Check answers with an error, a wrong MESSAGE-INTEGRITY, or from another address."),
    "check_timeout": Counted(_E, "Checks unanswered after 3 s, or evicted by a fifth."),
    "check_rate_limited": Counted(_D, "Checks not sent: one went to that address too recently."),
    "check_suppressed": Counted(_E, "Checks not sent: larger than the datagram that asked, or no bot ufrag known yet."),
    # --- DTLS (webrtc/dtls, webrtc/leg.py) ---
    "dtls_error": Counted(_D, "DTLS records refused, with no more precise counter."),
    "dtls_malformed": Counted(_D, "DTLS records that do not parse."),
    "dtls_not_open": Counted(_D, "DTLS datagrams for an endpoint that is not open."),
    "dtls_handshake_cap": Counted(_D, "DTLS handshakes refused: too many in progress."),
    "dtls_handshake_timeout": Counted(_E, "DTLS handshakes that did not complete in time."),
    "dtls_handshake_failed": Counted(_E, "DTLS handshakes that failed."),
    "dtls_peer_alert": Counted(_E, "DTLS associations the peer ended with an alert."),
    "dtls_no_srtp": Counted(_E, "DTLS handshakes that negotiated no SRTP profile (RFC 5764)."),
    "dtls_no_certificate": Counted(_E, "DTLS peers that presented no certificate."),
    "dtls_bad_fingerprint": Counted(_D, "Fingerprints that do not parse."),
    "dtls_fingerprint_mismatch": Counted(_E, "DTLS peers whose certificate does not match the SDP fingerprint."),
    "dtls_connected": Counted(_E, "DTLS-SRTP associations established."),
    "dtls_released": Counted(_E, "DTLS endpoints released (leg closed)."),
    "dtls_early_held": Counted(_E, "DTLS datagrams held until the sender's address is verified."),
    "dtls_unvalidated_source": Counted(_D, "DTLS from an address with no session (nothing held)."),
    "dtls_unverified_source": Counted(_D, "DTLS from an unverified address beyond what is held."),
    # --- SRTP (webrtc/srtp.py, webrtc/leg.py) ---
    "srtp_before_dtls": Counted(_D, "SRTP from a browser before its DTLS handshake completed."),
    "srtp_unprotect_failed": Counted(_D, "SRTP/SRTCP packets that could not be unprotected."),
    "srtp_auth_failed": Counted(_D, "SRTP/SRTCP packets with a bad authentication tag."),
    "srtp_replay": Counted(_D, "SRTP/SRTCP packets replayed or too old."),
    "srtp_too_many_streams": Counted(_D, "SRTP packets from a new SSRC beyond the per-leg limit."),
    "srtp_protect_failed": Counted(_D, "Packets that could not be protected for a browser (not sent)."),
    "rtcp_from_browser": Counted(_E, "SRTCP packets received from browsers (consumed, not relayed)."),
    # --- play-out for WebSocket listeners (audio/playout.py) ---
    "opus_decode_failed": Counted(_D, "Opus payloads libopus refused (concealed instead)."),
    "too_many_speakers": Counted(_D, "Packets from a speaker beyond a listener's speaker limit."),
    "speakers_forgotten": Counted(_E, "Speakers dropped from a listener's play-out after falling silent."),
    "packet_duration_changed": Counted(_E, "Speakers whose packet duration changed (a renegotiated ptime): their play-out started afresh."),
    # --- pcm16 delivered on arrival (audio/playout.py, ArrivalPlayout) ---
    "late_dropped": Counted(_D, "Packets that came after a later one of the same speaker was delivered (their place was concealed)."),
    "concealed": Counted(_E, "Frames synthesised for packets lost before one that arrived (FEC for the last, PLC before)."),
    "segments_restarted": Counted(_E, "Jumps of more than 5 packets in a speaker's stream, taken as a new segment, not concealed."),
    # --- the UDP socket (relay/transport.py) ---
    "send_backlog_full": Counted(_E, "Times the send backlog filled (the socket would block)."),
    "send_backlog_dropped": Counted(_D, "Datagrams dropped because the send backlog was full."),
}

#: Counted per errno: ``send_error_EAGAIN``, ``recv_error_ECONNREFUSED``...
ERRNO_FAMILIES: Mapping[str, str] = {
    "send_error_": "Datagrams the socket refused to send, by errno.",
    "recv_error_": "Errors reading the socket, by errno.",
}


def describe(name: str) -> Counted | None:
    """The catalogue entry for a counted name (errno families included), or None."""
    entry = CATALOGUE.get(name)
    if entry is not None:
        return entry
    for prefix, help_text in ERRNO_FAMILIES.items():
        if name.startswith(prefix):
            return Counted(_D, help_text)
    return None


def errno_family(name: str) -> tuple[str, str] | None:
    """``("send_error_", "EAGAIN")`` for ``send_error_EAGAIN``; None for other names."""
    for prefix in ERRNO_FAMILIES:
        if name.startswith(prefix):
            return prefix, name[len(prefix) :]
    return None


def uncatalogued(names: Iterable[str]) -> Iterator[str]:
    """The names that the catalogue does not describe."""
    return (name for name in names if describe(name) is None)
