"""Group calls, sans-IO: K downstream tracks per browser (docs/protocol.md "Group calls").

The SDP side (receive sections offered, answered sendonly with SSRCs of their
own, bounded by K, kept across renegotiation), the slot policy
(``DownstreamSlots``: who is on which track, the hangover, continuous
numbering), and a whole room in process: two simulated browsers (real DTLS,
real SRTP) and a UDP bot, each sending an Opus tone; each browser decodes
both others on separate tracks, and the bot gets both humans under their own
SSRCs.
"""

from __future__ import annotations

import dataclasses
import re

import pytest
from hypothesis import given, settings, strategies as st

from botcall.audio.opus import OpusDecoder, OpusEncoder
from botcall.demo.signals import dominant_frequency, energy_fraction, tone
from botcall.errors import SdpError
from botcall.relay.core import MediaRelay
from botcall.relay.service import MediaService
from botcall.webrtc.dtls.certificate import DtlsCertificate
from botcall.webrtc.leg import FLOOR_RELEASE, MAX_RECEIVE_TRACKS, DownstreamSlots, OutboundStream, WebRtcSink, plain_packet
from botcall.webrtc.sdp import build_answer, parse_offer_untrusted
from botcall.wire.rtp import RtpPacket, parse_rtp_untrusted
from tests.kit.browser import BROWSER_SEND_SSRC, Browser, browser_offer
from tests.kit.relay import Wire, latch, make_session

CERT = DtlsCertificate.generate()
BROWSER_CERT = DtlsCertificate.generate()


def answer_for(offer_sdp: str, receive_ssrcs: dict[str, int]) -> str:
    return build_answer(
        parse_offer_untrusted(offer_sdp),
        ice_ufrag="relayufrag",
        ice_pwd="relaypassword0123456789",
        fingerprint=CERT.fingerprint,
        hosts=["127.0.0.1"],
        port=40000,
        ssrc=1000,
        cname="botcall-x",
        receive_ssrcs=receive_ssrcs,
    )


def sections(sdp: str) -> list[str]:
    return sdp.split("m=")[1:]


# --- SDP ------------------------------------------------------------------------------


def test_chrome_group_offer_has_two_receive_sections_answered_sendonly_with_their_own_ssrcs():
    offer = parse_offer_untrusted(browser_offer(BROWSER_CERT, 3))
    assert [(s.mid, s.opus_payload_type) for s in offer.receive_sections] == [("1", 111), ("2", 111)]
    answer = answer_for(browser_offer(BROWSER_CERT, 3), {"1": 2001, "2": 2002})
    assert "a=group:BUNDLE 0 1 2\r\n" in answer
    audio, first, second = sections(answer)
    assert "a=sendrecv" in audio and "a=ssrc:1000 cname:" in audio
    for section, ssrc in ((first, 2001), (second, 2002)):
        assert section.startswith("audio 40000 UDP/TLS/RTP/SAVPF 111")
        assert "a=sendonly" in section and f"a=ssrc:{ssrc} cname:botcall-x" in section
        assert "a=setup:passive" in section and "a=rtcp-mux" in section
    # One stream per track: the page's ontrack gets a stream for each.
    streams = re.findall(r"a=msid:(\S+) ", answer)
    assert len(set(streams)) == 3


def test_receive_sections_beyond_the_bound_are_rejected_and_leave_the_group():
    answer = answer_for(browser_offer(BROWSER_CERT, 4), {"1": 2001})
    assert "a=group:BUNDLE 0 1\r\n" in answer
    _, first, second, third = sections(answer)
    assert "a=sendonly" in first
    for rejected in (second, third):
        assert rejected.startswith("audio 0 ") and "a=ssrc" not in rejected


def test_only_bundled_receiving_opus_sections_are_receive_sections():
    offer = browser_offer(BROWSER_CERT, 4)
    # mid 1 leaves the group, mid 2 only sends, mid 3 offers no Opus.
    offer = offer.replace("a=group:BUNDLE 0 1 2 3", "a=group:BUNDLE 0 2 3")
    parts = offer.split("m=audio ")
    parts[3] = parts[3].replace("a=recvonly", "a=sendonly")
    parts[4] = re.sub(r"a=rtpmap:111 opus/48000/2", "a=rtpmap:111 foo/48000/2", parts[4])
    parsed = parse_offer_untrusted("m=audio ".join(parts))
    assert parsed.receive_sections == ()


def test_answer_refuses_ssrcs_for_mids_that_are_not_receive_sections_or_that_collide():
    with pytest.raises(ValueError):
        answer_for(browser_offer(BROWSER_CERT, 2), {"7": 2001})
    with pytest.raises(ValueError):
        answer_for(browser_offer(BROWSER_CERT, 3), {"1": 2001, "2": 2001})
    with pytest.raises(ValueError):
        answer_for(browser_offer(BROWSER_CERT, 2), {"1": 1000})


def media_service(max_receive_tracks: int = 3) -> tuple[MediaService, Wire]:
    wire = Wire()
    relay = MediaRelay(wire)
    media = MediaService(relay, wire, certificate=CERT, hosts=("127.0.0.1",), port=40000, max_receive_tracks=max_receive_tracks)
    return media, wire


@pytest.mark.parametrize(("bound", "tracks"), [(1, 1), (2, 2), (3, 3), (3, 5)])
def test_the_service_accepts_up_to_its_bound(bound, tracks):
    """K = 1 is the old single floor: one track, whatever the offer asks."""
    media, wire = media_service(bound)
    browser = Browser.join(media, make_session("h", "human", "webrtc", 2222), wire, certificate=BROWSER_CERT, receive_tracks=tracks)
    expected = min(bound, tracks)
    assert len(browser.out_ssrcs) == len(set(browser.out_ssrcs)) == expected
    sink = media.relay.peer("sess-h").sink
    assert [stream.ssrc for stream in sink.slots.streams] == list(browser.out_ssrcs)


def test_the_bound_is_checked():
    with pytest.raises(ValueError):
        media_service(0)
    with pytest.raises(ValueError):
        media_service(MAX_RECEIVE_TRACKS + 1)


def test_renegotiation_keeps_each_tracks_ssrc_and_rejects_an_added_receive_section():
    media, wire = media_service(3)
    browser = Browser.join(media, make_session("h", "human", "webrtc", 2222), wire, certificate=BROWSER_CERT, receive_tracks=2)
    first = browser.out_ssrcs
    again = browser.renegotiate(media)
    assert tuple(int(s) for s in re.findall(r"a=ssrc:(\d+) cname", again)) == first
    browser.receive_tracks = 3
    added = browser.renegotiate(media)
    assert tuple(int(s) for s in re.findall(r"a=ssrc:(\d+) cname", added)) == first
    assert sections(added)[2].startswith("audio 0 ")
    assert media.relay.counters["renegotiated"] == 2


# --- the slot policy ------------------------------------------------------------------------


def packet(ssrc: int, seq: int) -> bytes:
    return bytes(RtpPacket(111, seq & 0xFFFF, (seq * 960) & 0xFFFFFFFF, ssrc, payload=b"\xfc" + bytes(40)))


class Listener:
    """One browser's DownstreamSlots, fed 20 ms packets; what each track carried."""

    def __init__(self, k: int) -> None:
        self.slots = DownstreamSlots([OutboundStream(9000 + i, 111) for i in range(k)])
        self.out: dict[int, list[RtpPacket]] = {9000 + i: [] for i in range(k)}
        self.seq: dict[int, int] = {}
        self.now = 0.0

    def frame(self, *speakers: tuple[int, bool]) -> None:
        """One 20 ms frame: a packet from each (ssrc, talking)."""
        for ssrc, talking in speakers:
            seq = self.seq[ssrc] = self.seq.get(ssrc, ssrc % 1000) + 1
            data = packet(ssrc, seq)
            stream = self.slots.route(ssrc, talking, self.now, data)
            if stream is not None:
                out = stream.rewrite(data, ssrc, self.now, plain_packet)
                assert out is not None  # the router's choice always passes the stream's floor
                self.out[stream.ssrc].append(parse_rtp_untrusted(out))
        self.now += 0.02


def test_each_speaker_gets_its_own_track_while_there_are_enough():
    listener = Listener(3)
    for _ in range(50):
        listener.frame((1, True), (2, False))
    assert listener.slots.holders == (1, 2, None)
    assert len(listener.out[9000]) == len(listener.out[9001]) == 50
    assert listener.slots.no_slot == 0


def test_a_talker_takes_the_track_of_a_participant_quiet_past_the_hangover_not_before():
    listener = Listener(2)
    for _ in range(50):
        listener.frame((1, True), (2, True), (3, False))  # 3 sends (a listening human's mic), no slot
    assert listener.slots.holders == (1, 2)
    assert listener.slots.no_slot == 50
    # 3 starts talking; 2 stops (its packets go on). Within the hangover 2 keeps its track.
    hangover_frames = round(listener.slots.hangover / 0.02)
    for _ in range(hangover_frames - 1):
        listener.frame((1, True), (2, False), (3, True))
    assert listener.slots.holders == (1, 2)
    for _ in range(3):
        listener.frame((1, True), (2, False), (3, True))
    assert listener.slots.holders == (1, 3)
    assert listener.slots.switches == 3  # 1 and 2 took the free tracks, then 3 took 2's
    # Track 1's numbering went on across the switch: consecutive seq, timestamps
    # moving forward, the marker on the new speaker's first packet.
    track = listener.out[9001]
    seqs = [p.sequence_number for p in track]
    assert all((b - a) & 0xFFFF == 1 for a, b in zip(seqs, seqs[1:]))
    timestamps = [p.timestamp for p in track]
    assert all(0 < (b - a) & 0xFFFFFFFF <= 960 * 3 for a, b in zip(timestamps, timestamps[1:]))
    switch = next(i for i, p in enumerate(track) if p.marker and i > 0)
    assert switch == len(track) - 3
    # Track 0 kept its talker throughout: never a marker after the first packet.
    assert not any(p.marker for p in listener.out[9000][1:])


def test_on_switch_fires_once_per_hand_over_after_the_new_speakers_stream_took_it():
    listener = Listener(2)
    seen: list[tuple[tuple[int | None, ...], int]] = []
    listener.slots.on_switch = lambda: seen.append((listener.slots.holders, listener.slots.switches))
    for _ in range(10):
        listener.frame((1, True), (2, True))
    assert seen == [((1, None), 1), ((1, 2), 2)]  # first use of each track, then nothing per packet
    hangover_frames = round(listener.slots.hangover / 0.02) + 3
    for _ in range(hangover_frames):
        listener.frame((1, True), (2, False), (3, True))
    assert seen[2:] == [((1, 3), 3)] and listener.slots.switches == 3


def test_a_silent_participant_never_displaces_a_talker_and_a_stopped_sender_frees_its_track():
    listener = Listener(1)
    for _ in range(20):
        listener.frame((1, True), (2, False))
    assert listener.slots.holders == (1,)
    # 1 stops sending (left or muted): after FLOOR_RELEASE, even a silent 2 gets the track.
    frames = round(FLOOR_RELEASE / 0.02) + 1
    for _ in range(frames):
        listener.frame((2, False))
    assert listener.slots.holders == (2,)


def test_the_track_count_is_bounded():
    with pytest.raises(ValueError):
        DownstreamSlots([])
    with pytest.raises(ValueError):
        DownstreamSlots([OutboundStream(i, 111) for i in range(MAX_RECEIVE_TRACKS + 1)])


# --- a room in process: two humans and a bot hear each other ------------------------------------

BOT_ADDR = ("127.0.0.1", 54000)
ALICE_ADDR = ("127.0.0.1", 53001)
BOB_ADDR = ("127.0.0.1", 53002)


GROUP_TONES = {"bot": 440, "alice": 330, "bob": 550}


def group_call(*, bot_mix_ssrc=None, seconds=1.2):
    """A bot (asking for the mix when ``bot_mix_ssrc`` is set) and two browsers with
    three tracks each, all talking their ``GROUP_TONES`` for ``seconds``; the wire,
    the browsers and their SRTP sessions by address."""
    media, wire = media_service(3)
    relay = media.relay
    bot = dataclasses.replace(make_session("bot", "bot", "udp", 1111), mix_ssrc=bot_mix_ssrc)
    media.add_session(bot)
    latch(relay, wire, bot, BOT_ADDR, 0.0)
    alice = Browser.join(media, make_session("alice", "human", "webrtc", 2222), wire, ALICE_ADDR, certificate=BROWSER_CERT, receive_tracks=3)
    bob = Browser.join(media, make_session("bob", "human", "webrtc", 3333), wire, BOB_ADDR, certificate=DtlsCertificate.generate(), receive_tracks=3)
    srtp = {}
    for browser in (alice, bob):
        browser.ice_check(browser.addr)
        srtp[browser.addr] = browser.handshake()
    wire.clear()
    encoders = {name: OpusEncoder() for name in GROUP_TONES}
    frames_total = round(seconds / 0.02)
    pcm = {name: tone(freq, seconds, amplitude=0.3) for name, freq in GROUP_TONES.items()}
    now = 1.0
    for i in range(frames_total):
        frames = {name: encoders[name].encode(pcm[name][i * 1920 : (i + 1) * 1920]) for name in GROUP_TONES}
        relay.handle_datagram(bytes(RtpPacket(111, i, i * 960, 1111, payload=frames["bot"])), BOT_ADDR, now)
        for name, browser in (("alice", alice), ("bob", bob)):
            data = srtp[browser.addr].protect(bytes(RtpPacket(111, i, i * 960, BROWSER_SEND_SSRC, payload=frames[name])))
            relay.handle_datagram(data, browser.addr, now)
        now += 0.02
        while relay.next_deadline() <= now:  # the timer loop (the mix's ticks)
            relay.handle_timeout(relay.next_deadline())
    return relay, wire, (alice, bob), srtp


def assert_browsers_hear_both_others(wire, browsers, srtp, frames_total=60):
    """Each browser: two of its tracks carry the two others, each one tone."""
    for name, browser, others in (("alice", browsers[0], ("bot", "bob")), ("bob", browsers[1], ("bot", "alice"))):
        by_ssrc: dict[int, list[bytes]] = {}
        for data in wire.to(browser.addr):
            rtp_packet = parse_rtp_untrusted(srtp[browser.addr].unprotect_untrusted(data))
            by_ssrc.setdefault(rtp_packet.ssrc, []).append(rtp_packet.payload)
        assert set(by_ssrc) <= set(browser.out_ssrcs) and len(by_ssrc) == 2, name
        heard = set()
        for payloads in by_ssrc.values():
            decoder = OpusDecoder()
            decoded = b"".join(decoder.decode_untrusted(p) for p in payloads)
            assert len(payloads) == frames_total
            heard.add(round(dominant_frequency(decoded[len(decoded) // 3 :], 48000)))
        assert all(any(abs(h - GROUP_TONES[other]) <= 3 for h in heard) for other in others), (name, heard)


def bot_streams(wire) -> dict[int, list[bytes]]:
    """The RTP payloads the bot got, by SSRC."""
    got: dict[int, list[bytes]] = {}
    for data in wire.to(BOT_ADDR):
        if data[0] >> 6 == 2 and not 200 <= data[1] <= 206:
            rtp_packet = parse_rtp_untrusted(data)
            got.setdefault(rtp_packet.ssrc, []).append(rtp_packet.payload)
    return got


def test_two_browsers_and_a_bot_each_hear_both_others_on_separate_streams():
    relay, wire, browsers, srtp = group_call()
    assert_browsers_hear_both_others(wire, browsers, srtp)
    # The bot: both humans, each under its session's SSRC.
    bot_got = bot_streams(wire)
    assert set(bot_got) == {2222, 3333}
    for ssrc, freq in ((2222, 330), (3333, 550)):
        decoder = OpusDecoder()
        decoded = b"".join(decoder.decode_untrusted(p) for p in bot_got[ssrc])
        assert abs(dominant_frequency(decoded[len(decoded) // 3 :], 48000) - freq) < 3
    assert relay.counters["no_slot"] == 0 and sum(p.drops["no_slot"] for p in relay.all_peers()) == 0


def test_a_bot_asking_for_the_mix_hears_both_humans_in_one_stream_beside_the_tracks():
    """``receive: mixed`` in a group room: the bot gets one stream (its mix SSRC)
    holding both humans' tones, and the browsers still get their own tracks."""
    mix_ssrc = 0x5EED
    relay, wire, browsers, srtp = group_call(bot_mix_ssrc=mix_ssrc)
    assert_browsers_hear_both_others(wire, browsers, srtp)
    bot_got = bot_streams(wire)
    assert set(bot_got) == {mix_ssrc}
    assert len(bot_got[mix_ssrc]) >= 50
    decoder = OpusDecoder(48000)
    mixed = b"".join(decoder.decode_untrusted(p) for p in bot_got[mix_ssrc])[4800 * 2 :]  # past the first 100 ms
    assert energy_fraction(mixed, 48000, 330) > 0.3 and energy_fraction(mixed, 48000, 550) > 0.3
    assert energy_fraction(mixed, 48000, 440) < 0.01  # never the bot's own voice


def two_bots_and_a_browser(slots, *, receive_tracks):
    """A media service (``slots`` tracks per browser) with two latched UDP bots and a
    connected browser asking for ``receive_tracks``; the service, the wire and the bots."""
    media, wire = media_service(slots)
    bots = [make_session(f"bot{i}", "bot", "udp", 1111 + i) for i in range(2)]
    for i, bot in enumerate(bots):
        media.add_session(bot)
        latch(media.relay, wire, bot, ("127.0.0.1", 54000 + i), 0.0)
    browser = Browser.join(
        media, make_session("h", "human", "webrtc", 2222), wire, ALICE_ADDR, certificate=BROWSER_CERT, receive_tracks=receive_tracks
    )
    browser.ice_check(ALICE_ADDR)
    browser.handshake()
    return media, wire, bots


def bots_speak(relay, bots, i):
    """Packet ``i + 1`` of each bot, at its 20 ms time."""
    for b, bot in enumerate(bots):
        relay.handle_datagram(packet(bot.ssrc, i + 1), ("127.0.0.1", 54000 + b), 1.0 + i * 0.02)


def test_a_browser_sink_tells_the_relay_of_each_hand_over_and_nothing_per_packet():
    # The compiled fast path reprograms its table on routes_changed: a slot that
    # changed hands must bump the relay's generation; packets on a held slot must not.
    media, wire, bots = two_bots_and_a_browser(2, receive_tracks=2)
    relay = media.relay
    human = relay.peer("sess-h")
    assert human is not None and isinstance(human.sink, WebRtcSink)
    before = relay.routes_generation
    generations = []
    for i in range(10):
        bots_speak(relay, bots, i)
        generations.append(relay.routes_generation)
    # Packet 1: each bot's stream starts (one bump each) and takes a track (one each).
    assert human.sink.slots.switches == 2
    assert generations == [before + 4] * 10
    assert len(wire.to(ALICE_ADDR)) == 20


def test_an_offer_without_opus_in_its_audio_section_is_still_refused():
    with pytest.raises(SdpError):
        parse_offer_untrusted(browser_offer(BROWSER_CERT, 2).replace("opus/48000/2", "opux/48000/2"))


def test_a_browser_with_fewer_tracks_than_talkers_counts_what_it_could_not_get():
    media, wire, bots = two_bots_and_a_browser(1, receive_tracks=3)
    relay = media.relay
    for i in range(10):
        bots_speak(relay, bots, i)
    assert relay.counters["no_slot"] == 10
    assert relay.peer("sess-h").drops["no_slot"] == 10


# --- properties -------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    bound=st.integers(1, MAX_RECEIVE_TRACKS),
    extra=st.lists(st.tuples(st.booleans(), st.sampled_from(["recvonly", "sendrecv", "sendonly", "inactive"])), max_size=8),
)
def test_any_offer_gets_at_most_k_tracks_all_bundled_sendonly_and_distinct(bound, extra):
    """Whatever receive sections an offer has (bundled or not, any direction), the
    answer accepts at most K-1 of them, each bundled, sendonly, with its own SSRC."""
    offer = browser_offer(BROWSER_CERT, len(extra) + 1)
    parts = offer.split("m=audio ")
    bundled = ["0"]
    for index, (in_bundle, direction) in enumerate(extra, start=1):
        parts[index + 1] = parts[index + 1].replace("a=recvonly", f"a={direction}")
        if in_bundle:
            bundled.append(str(index))
    offer = "m=audio ".join(parts)
    offer = re.sub(r"a=group:BUNDLE [^\r\n]*", "a=group:BUNDLE " + " ".join(bundled), offer)
    media, wire = media_service(bound)
    answer = media.add_browser(make_session("h", "human", "webrtc", 2222), offer)
    eligible = [str(i) for i, (in_bundle, direction) in enumerate(extra, start=1) if in_bundle and direction in ("recvonly", "sendrecv")]
    accepted = eligible[: bound - 1]
    assert re.search(r"a=group:BUNDLE ([^\r\n]*)", answer).group(1).split() == ["0", *accepted]
    answered = sections(answer)
    for index in range(1, len(extra) + 1):
        section = answered[index]
        if str(index) in accepted:
            assert section.startswith("audio 40000 ") and "a=sendonly" in section
        else:
            assert section.startswith("audio 0 ")
    ssrcs = re.findall(r"a=ssrc:(\d+) cname", answer)
    assert len(ssrcs) == len(set(ssrcs)) == 1 + len(accepted)
    # The answer is what the relay's sink sends on, track for track.
    assert [str(s.ssrc) for s in media.relay.peer("sess-h").sink.slots.streams] == ssrcs


@settings(max_examples=100, deadline=None)
@given(
    k=st.integers(1, 4),
    steps=st.lists(
        st.tuples(
            st.sets(st.integers(1, 6), max_size=6),  # who sends this frame
            st.sets(st.integers(1, 6), max_size=6),  # who of them is talking
            st.sampled_from([1, 1, 1, 5, 20]),  # frames until the next step
        ),
        min_size=1,
        max_size=60,
    ),
)
def test_slot_invariants_under_any_traffic(k, steps):
    """Every track numbers on by exactly one per packet; a speaker is on one track at
    most; a packet is refused only when no track was free or yieldable."""
    listener = Listener(k)
    slots = listener.slots
    for senders, talking, gap in steps:
        for ssrc in sorted(senders):
            holders_before = slots.holders
            refused_before = slots.no_slot
            listener.frame((ssrc, ssrc in talking))
            listener.now -= 0.02  # one frame for all of this step's senders
            if slots.no_slot > refused_before:
                # Refused: every track is held, by someone who sent lately...
                assert None not in holders_before and ssrc not in holders_before
        listener.now += 0.02 * gap
        holders = [h for h in slots.holders if h is not None]
        assert len(holders) == len(set(holders))
    for packets in listener.out.values():
        seqs = [p.sequence_number for p in packets]
        assert all((b - a) & 0xFFFF == 1 for a, b in zip(seqs, seqs[1:]))
        timestamps = [p.timestamp for p in packets]
        assert all(0 < (b - a) & 0xFFFFFFFF < 0x80000000 for a, b in zip(timestamps, timestamps[1:]))
