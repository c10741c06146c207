"""Browser offers in, ICE-lite answers out.

The Chrome offers in data/ were captured from Chromium 156, one Firefox offer
from Firefox ESR 153; the Firefox 128 ones are hand-written after Firefox's
shape (see data/README.md). The last test hands
our answers to a real Chromium and checks it accepts them and completes ICE
against our responder.
"""

import dataclasses
import http.server
import os
import pathlib
import re
import socket
import struct
import threading
import time

import pytest

from botcall.errors import SdpError
from botcall.wire.demux import PacketKind, classify
from botcall.webrtc.ice_lite import BindingReason, CheckResult, IceLiteState, answer_binding_untrusted
from botcall.wire.stun import PEER_REFLEXIVE_PRIORITY, Class, binding_check, parse_stun_untrusted
from botcall.webrtc.fingerprint import FingerprintError
from botcall.webrtc.sdp import (
    MAX_SDP_CHARS,
    MAX_SDP_LINES,
    Direction,
    Fingerprint,
    SetupRole,
    build_answer,
    parse_offer_untrusted,
    parse_sdp_untrusted,
)

DATA = pathlib.Path(__file__).parent / "data"
OUR_FINGERPRINT = "sha-256 " + ":".join(f"{value:02X}" for value in range(0x10, 0x30))
OUR_UFRAG = "rl4Y"
OUR_PWD = "relayIcePassword+/01234"
HOST = "127.0.0.1"
PORT = 40000
SSRC = 0x1234ABCD
CNAME = "botcall-relay"
AUDIO_LEVEL = "urn:ietf:params:rtp-hdrext:ssrc-audio-level"


def load(name: str) -> str:
    with open(DATA / name, encoding="ascii", newline="") as file:
        return file.read()


def answer_to(offer, **overrides) -> str:
    arguments = dict(
        ice_ufrag=OUR_UFRAG,
        ice_pwd=OUR_PWD,
        fingerprint=OUR_FINGERPRINT,
        hosts=(HOST,),
        port=PORT,
        ssrc=SSRC,
        cname=CNAME,
        session_id=4242,
    )
    arguments.update(overrides)
    return build_answer(offer, **arguments)


def raw_sections(text: str) -> list[list[str]]:
    """Split an SDP into [session lines, media lines...] without our parser."""
    sections: list[list[str]] = [[]]
    for line in text.split("\r\n"):
        if line.startswith("m="):
            sections.append([])
        if line:
            sections[-1].append(line)
    return sections


def check_answer(answer: str, offer, *, direction: str = "sendrecv", host: str = HOST) -> list[str]:
    """Check an answer line by line; returns the audio section's lines."""
    assert answer.endswith("\r\n")
    assert "\n" not in answer.replace("\r\n", "")
    sections = raw_sections(answer)
    session, media = sections[0], sections[1:]
    ip = "IP6" if ":" in host else "IP4"
    assert session[:4] == ["v=0", f"o=- 4242 2 IN {ip} {host}", "s=-", "t=0 0"]
    assert "a=ice-lite" in session
    if offer.bundle_tag is not None:
        assert f"a=group:BUNDLE {offer.bundle_tag.mid} {offer.mid}" in session
    elif offer.bundle:
        assert f"a=group:BUNDLE {offer.mid}" in session
    else:
        assert not any(line.startswith("a=group:") for line in session)
    # Same m-sections, same order, same kinds (RFC 3264 §6).
    assert len(media) == len(offer.media)
    for index, (lines, offered) in enumerate(zip(media, offer.media)):
        kind = lines[0].split()[0][2:]
        assert kind == offered.kind
        if index == offer.audio_index or (offer.bundle_tag is not None and index == offer.bundle_tag.index):
            continue
        assert lines[0] == f"m={offered.kind} 0 {offered.protocol} {offered.formats[0]}"
        assert f"a=mid:{offered.mid}" in lines
        assert not any(line.startswith(("a=candidate", "a=ice-", "a=fingerprint")) for line in lines)
    audio = media[offer.audio_index]
    pt = offer.opus_payload_type
    assert audio[0] == f"m=audio {PORT} UDP/TLS/RTP/SAVPF {pt}"
    assert audio[1] == f"c=IN {ip} {host}"
    required = [
        f"a=candidate:1 1 udp 2130706431 {host} {PORT} typ host",
        "a=end-of-candidates",
        f"a=ice-ufrag:{OUR_UFRAG}",
        f"a=ice-pwd:{OUR_PWD}",
        f"a=fingerprint:{OUR_FINGERPRINT}",
        "a=setup:passive",
        f"a=mid:{offer.mid}",
        "a=rtcp-mux",
        f"a=rtpmap:{pt} opus/48000/2",
        f"a=fmtp:{pt} minptime=10;useinbandfec=1",
        f"a={direction}",
    ]
    for line in required:
        assert audio.count(line) == 1, line
    directions = [line for line in audio if line[2:] in ("sendrecv", "sendonly", "recvonly", "inactive")]
    assert directions == [f"a={direction}"]
    sends = direction in ("sendrecv", "sendonly")
    assert (f"a=ssrc:{SSRC} cname:{CNAME}" in audio) is sends
    assert (f"a=ssrc:{SSRC} msid:botcall botcall-{SSRC}" in audio) is sends
    assert (f"a=msid:botcall botcall-{SSRC}" in audio) is sends
    # Our parser reads it back the same way.
    parsed = parse_sdp_untrusted(answer)
    assert len(parsed.media) == len(offer.media)
    assert parsed.media[offer.audio_index].media.mid == offer.mid
    return audio


# --- Real Chrome offers ----------------------------------------------------------


CHROME = {
    "chrome156_mic.sdp": dict(
        ice_ufrag="Lvk6",
        ice_pwd="MJmqww8YhsywZZuK2KigpCDG",
        fingerprint_value="57:41:C5:17:06:4B:34:86:01:06:0C:DB:D5:35:DE:89:5F:B1:29:53:FA:4B:99:E0:B5:1C:9C:A3:37:0A:D8:A2",
        ssrcs=(1951877580,),
        cname="8raNKGBIw/w15EpH",
        msid=("6754513b-88d8-4114-af55-67f1595d046d", "f7a3c1f4-7332-41bf-bacd-5100c12ded56"),
        direction=Direction.SENDRECV,
        bundle=("0",),
        kinds=("audio",),
    ),
    "chrome156_transceiver_with_candidates.sdp": dict(
        ice_ufrag="fcON",
        ice_pwd="uiBat+Q0pX3gplEkkOT6LhQj",
        fingerprint_value="00:B8:22:61:10:38:86:F1:5C:84:E2:F6:CC:DE:F8:32:46:B5:5F:40:2C:0B:11:39:9D:D9:EB:1D:19:FA:28:25",
        ssrcs=(3276342347,),
        cname="+r/3tKGOhog3q8G9",
        msid=("2947946c-fe0a-42b1-b6a9-8fa32c960b6f", "6a856200-65c3-4b95-a374-007c73960d8c"),
        direction=Direction.SENDRECV,
        bundle=("0",),
        kinds=("audio",),
    ),
    "chrome156_audio_video.sdp": dict(
        ice_ufrag="pRh4",
        ice_pwd="Ny+Xwl+OMX6/itqyDTV/gvi7",
        fingerprint_value="79:3D:02:BD:29:60:32:5D:2D:96:FC:A0:89:51:22:2A:AF:8D:47:AC:E0:AC:20:72:4A:63:3E:6C:4A:41:39:D8",
        ssrcs=(1698849768,),
        cname="POzjCqazT+OCfX28",
        msid=("93a956b0-2f2a-43a8-b149-cf1dace3d5fe", "b6e59433-96f9-4cac-a236-f1dc54ccf74b"),
        direction=Direction.SENDRECV,
        bundle=("0", "1"),
        kinds=("audio", "video"),
    ),
    "chrome156_audio_datachannel.sdp": dict(
        ice_ufrag="mQBa",
        ice_pwd="nnQvTHuQcKN+fKJJYHzKm9KC",
        fingerprint_value="36:20:E0:AE:35:26:11:04:94:2D:C3:F8:33:67:B3:82:3F:05:D1:98:CD:1E:AC:F7:04:D4:87:DA:F0:FA:92:DE",
        ssrcs=(3079426786,),
        cname="vxzoh1WW2BQ9Jx2g",
        msid=("cb24c699-9155-47b4-9447-3cc0a0baeab3", "a34f5418-330e-47fa-95be-0e95eb22d7ee"),
        direction=Direction.SENDRECV,
        bundle=("0", "1"),
        kinds=("audio", "application"),
    ),
    "chrome156_recvonly.sdp": dict(
        ice_ufrag="tuY7",
        ice_pwd="0BSfs6F/Z72buF2h40EZnDPC",
        fingerprint_value="23:AA:0E:BC:4E:B9:ED:EA:6D:B0:DE:63:14:CA:00:41:03:29:81:AB:E6:B7:1F:B6:E0:70:F9:FC:CB:FC:67:1A",
        ssrcs=(),
        cname=None,
        msid=None,
        direction=Direction.RECVONLY,
        bundle=("0",),
        kinds=("audio",),
    ),
}


@pytest.mark.parametrize("name", sorted(CHROME))
def test_chrome_offer_fields(name):
    expected = CHROME[name]
    offer = parse_offer_untrusted(load(name))
    assert offer.mid == "0" and offer.audio_index == 0
    assert offer.opus_payload_type == 111
    assert offer.opus_fmtp == "minptime=10;useinbandfec=1"
    assert offer.opus_fmtp_params() == {"minptime": "10", "useinbandfec": "1"}
    assert offer.ice_ufrag == expected["ice_ufrag"] and offer.ice_pwd == expected["ice_pwd"]
    assert offer.fingerprint == Fingerprint("sha-256", bytes.fromhex(expected["fingerprint_value"].replace(":", "")))
    assert offer.setup is SetupRole.ACTPASS
    assert offer.direction is expected["direction"]
    assert offer.ssrcs == expected["ssrcs"] and offer.cname == expected["cname"]
    assert offer.msid == expected["msid"]
    assert offer.rtcp_mux
    assert offer.bundle == expected["bundle"]
    assert tuple(media.kind for media in offer.media) == expected["kinds"]
    assert offer.ice_options == ("trickle",)
    assert [(e.id, e.uri) for e in offer.extmaps] == [
        (1, AUDIO_LEVEL),
        (2, "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time"),
        (3, "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01"),
        (4, "urn:ietf:params:rtp-hdrext:sdes:mid"),
    ]


@pytest.mark.parametrize("name", sorted(CHROME))
def test_chrome_offer_answer_line_by_line(name):
    offer = parse_offer_untrusted(load(name))
    # Chrome's recvonly offer can only get a sendonly answer (RFC 3264 §6.1).
    direction = "sendonly" if offer.direction is Direction.RECVONLY else "sendrecv"
    audio = check_answer(answer_to(offer), offer, direction=direction)
    assert not any(line.startswith("a=extmap") for line in audio)


def test_chrome_audio_video_answer_rejects_video():
    offer = parse_offer_untrusted(load("chrome156_audio_video.sdp"))
    video = raw_sections(answer_to(offer))[2]
    assert video == ["m=video 0 UDP/TLS/RTP/SAVPF 96", "c=IN IP4 0.0.0.0", "a=mid:1", "a=inactive"]


def test_chrome_datachannel_answer_rejects_the_application_section():
    offer = parse_offer_untrusted(load("chrome156_audio_datachannel.sdp"))
    application = raw_sections(answer_to(offer))[2]
    assert application == ["m=application 0 UDP/DTLS/SCTP webrtc-datachannel", "c=IN IP4 0.0.0.0", "a=mid:1"]


# --- Firefox-shaped offers -------------------------------------------------------


@pytest.mark.parametrize(
    "name, kinds",
    [
        ("firefox128_audio_with_candidates.sdp", ("audio",)),
        ("firefox128_audio_video_datachannel.sdp", ("audio", "video", "application")),
    ],
)
def test_firefox_offer_uses_pt_109_and_session_level_fingerprint(name, kinds):
    offer = parse_offer_untrusted(load(name))
    assert offer.opus_payload_type == 109
    assert offer.opus_fmtp_params() == {"maxplaybackrate": "48000", "stereo": "1", "useinbandfec": "1"}
    # Firefox puts the fingerprint at session level only.
    assert offer.fingerprint.algorithm == "sha-256" and str(offer.fingerprint).startswith("sha-256 3D:5A:8C")
    assert offer.ice_ufrag == "a7c3e1f9" and offer.ice_pwd == "5e9f2b7c1d4a3e8f6b0c9d2e7a1f4b3c"
    assert offer.setup is SetupRole.ACTPASS and offer.ice_options == ("trickle",)
    assert offer.ssrcs == (2875843227,) and offer.cname == "{e1d2c3b4-a596-4788-b9aa-bbccddeeff00}"
    assert offer.msid == ("{4b1f2c3d-8e9a-4b5c-9d6e-7f8a9b0c1d2e}", "{c9e8d7f6-a5b4-4c3d-8e2f-1a0b9c8d7e6f}")
    assert offer.extmaps[1].direction is Direction.RECVONLY
    assert tuple(media.kind for media in offer.media) == kinds
    audio = check_answer(answer_to(offer), offer)
    # We echo Firefox's payload type, not Chrome's 111.
    assert not any("111" in line for line in audio)


def test_captured_firefox153_offer_is_answered_as_firefox_accepted_it():
    # The PWA's own offer, captured from Firefox ESR 153 (data/README.md): Opus
    # 109 first, fingerprint at session level, setup in the m-section, no
    # candidates (trickle), extmaps 1/2/3/7 with extmap-allow-mixed.
    text = load("firefox153_pwa.sdp")
    assert "a=candidate" not in text and "a=extmap-allow-mixed" in text
    offer = parse_offer_untrusted(text)
    assert offer.opus_payload_type == 109 and offer.media[0].formats == ("109", "9", "0", "8", "101")
    assert offer.opus_fmtp_params() == {"maxplaybackrate": "48000", "stereo": "1", "useinbandfec": "1"}
    assert str(offer.fingerprint).startswith("sha-256 D3:8A:5D:B7")
    assert offer.setup is SetupRole.ACTPASS and offer.ice_options == ("trickle",)
    assert (offer.ice_ufrag, offer.ice_pwd) == ("07dce1cb", "ddfea830b72276f7fc32045733f90946")
    assert [extmap.id for extmap in offer.extmaps] == [1, 2, 3, 7]
    assert offer.extmaps[1].direction is Direction.RECVONLY
    assert offer.ssrcs == (3039721406,) and offer.bundle == ("0",) and offer.rtcp_mux
    audio = check_answer(answer_to(offer, extmap_uris={AUDIO_LEVEL}), offer)
    assert [line for line in audio if line.startswith("a=extmap")] == [f"a=extmap:1 {AUDIO_LEVEL}"]
    assert not any(line.startswith("a=extmap-allow-mixed") for line in audio)
    # With every local address announced (the default), Firefox pairs with the first.
    hosts = ("192.0.2.2", "127.0.0.1")
    audio = raw_sections(answer_to(offer, hosts=hosts))[1]
    assert [line for line in audio if line.startswith("a=candidate")] == [
        f"a=candidate:1 1 udp 2130706431 192.0.2.2 {PORT} typ host",
        f"a=candidate:2 1 udp 2130706175 127.0.0.1 {PORT} typ host",
    ]


def test_firefox_full_answer_rejects_video_and_data_in_place():
    offer = parse_offer_untrusted(load("firefox128_audio_video_datachannel.sdp"))
    answer = answer_to(offer)
    sections = raw_sections(answer)
    assert sections[2][:3] == ["m=video 0 UDP/TLS/RTP/SAVPF 120", "c=IN IP4 0.0.0.0", "a=mid:1"]
    assert sections[3][:3] == ["m=application 0 UDP/DTLS/SCTP webrtc-datachannel", "c=IN IP4 0.0.0.0", "a=mid:2"]
    assert "a=group:BUNDLE 0" in sections[0]


# --- BUNDLE: the answer's tag is always an accepted m-section (RFC 8843 §7.3.1) ---------


def test_a_video_first_max_bundle_offer_keeps_the_video_as_an_inactive_tag():
    offer = parse_offer_untrusted(load("chrome156_video_first_max_bundle.sdp"))
    assert offer.bundle == ("0", "1") and offer.mid == "1" and offer.audio_index == 1
    assert (offer.bundle_tag.index, offer.bundle_tag.mid, offer.bundle_tag.payload_type, offer.bundle_tag.encoding) == (0, "0", "96", "VP8/90000")
    answer = answer_to(offer)
    check_answer(answer, offer)
    session, video, audio = raw_sections(answer)
    assert "a=group:BUNDLE 0 1" in session
    assert video[0] == f"m=video {PORT} UDP/TLS/RTP/SAVPF 96"
    # The tag carries the transport: our candidate, credentials, fingerprint, role.
    for line in (f"a=ice-ufrag:{OUR_UFRAG}", f"a=ice-pwd:{OUR_PWD}", f"a=fingerprint:{OUR_FINGERPRINT}", "a=setup:passive", "a=end-of-candidates"):
        assert line in video and line in audio
    assert {"a=mid:0", "a=inactive", "a=rtcp-mux", "a=rtpmap:96 VP8/90000"} <= set(video)
    assert not any(line.startswith(("a=ssrc", "a=msid")) for line in video)
    assert "a=sendrecv" in audio and "a=mid:1" in audio


def _data_channel_first(text: str) -> str:
    """A mic offer with a data channel moved in front of the audio (mids swapped: 0 is the data channel)."""
    head, _, rest = text.partition("m=audio")
    audio, _, application = rest.partition("m=application")
    audio = ("m=audio" + audio).replace("a=mid:0", "a=mid:1")
    application = ("m=application" + application).replace("a=mid:1", "a=mid:0")
    return head + application + audio


def test_a_data_channel_tag_is_rejected_and_the_audio_becomes_the_tag():
    offer = parse_offer_untrusted(_data_channel_first(load("chrome156_audio_datachannel.sdp")))
    assert offer.media[0].kind == "application" and offer.bundle == ("0", "1") and offer.bundle_tag is None
    session, application, _ = raw_sections(answer_to(offer))
    assert "a=group:BUNDLE 1" in session
    assert application[0] == "m=application 0 UDP/DTLS/SCTP webrtc-datachannel"


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(lambda v: v.replace("a=rtcp-mux\r\n", "", 1), id="no rtcp-mux"),
        pytest.param(lambda v: v.replace("m=video 9", "m=video 0", 1), id="port 0"),
        pytest.param(lambda v: re.sub(r"a=rtpmap:[^\r]*\r\n", "", v), id="no rtpmap"),
    ],
)
def test_a_video_tag_we_cannot_accept_is_rejected(change):
    text = load("chrome156_video_first_max_bundle.sdp")
    head, _, rest = text.partition("m=video")
    video, _, audio = rest.partition("m=audio")
    offer = parse_offer_untrusted(head + change("m=video" + video) + "m=audio" + audio)
    assert offer.bundle_tag is None
    session, video_lines, _ = raw_sections(answer_to(offer))
    assert "a=group:BUNDLE 1" in session and video_lines[0].startswith("m=video 0 ")


def test_an_audio_first_offer_has_no_other_tag():
    offer = parse_offer_untrusted(load("chrome156_audio_video.sdp"))
    assert offer.bundle == ("0", "1") and offer.bundle_tag is None
    assert "a=group:BUNDLE 0\r\n" in answer_to(offer)


def test_the_same_offer_gets_the_same_answer_for_the_same_session():
    offer = parse_offer_untrusted(load("chrome156_video_first_max_bundle.sdp"))
    first = answer_to(offer, session_version=2)
    again = answer_to(parse_offer_untrusted(load("chrome156_video_first_max_bundle.sdp")), session_version=3)
    assert again == first.replace("o=- 4242 2 ", "o=- 4242 3 ")


# --- Answer options ---------------------------------------------------------------


@pytest.mark.parametrize(
    "offered, wanted, answered",
    [
        ("sendrecv", "sendrecv", "sendrecv"),
        ("sendrecv", "recvonly", "recvonly"),
        ("sendrecv", "sendonly", "sendonly"),
        ("sendonly", "sendrecv", "recvonly"),
        ("sendonly", "sendonly", "inactive"),
        ("recvonly", "sendrecv", "sendonly"),
        ("recvonly", "recvonly", "inactive"),
        ("inactive", "sendrecv", "inactive"),
    ],
)
def test_direction_is_narrowed_by_the_offer(offered, wanted, answered):
    text = load("chrome156_mic.sdp").replace("a=sendrecv\r\n", f"a={offered}\r\n")
    offer = parse_offer_untrusted(text)
    assert offer.direction == offered
    check_answer(answer_to(offer, direction=wanted), offer, direction=answered)


def test_session_level_direction_applies_when_media_has_none():
    text = load("chrome156_mic.sdp").replace("a=sendrecv\r\n", "").replace("t=0 0\r\n", "t=0 0\r\na=sendonly\r\n")
    assert parse_offer_untrusted(text).direction is Direction.SENDONLY


def test_accepted_extmaps_are_echoed_with_the_offer_id():
    offer = parse_offer_untrusted(load("firefox128_audio_with_candidates.sdp"))
    audio = raw_sections(answer_to(offer, extmap_uris={AUDIO_LEVEL, "urn:example:not-offered"}))[1]
    assert [line for line in audio if line.startswith("a=extmap")] == [f"a=extmap:1 {AUDIO_LEVEL}"]


@pytest.mark.parametrize("name", ["chrome156_mic.sdp", "firefox153_pwa.sdp"])
def test_ptime_asks_for_10ms_packets_in_the_audio_section_only(name):
    # Chromium 156 and Firefox ESR 153 send 10 ms packets for this a=ptime
    # (tests/e2e/test_browser_ptime.py); Firefox ignores a ptime fmtp parameter.
    offer = parse_offer_untrusted(load(name))
    sections = raw_sections(answer_to(offer, ptime_ms=10))
    audio = sections[1 + offer.audio_index]
    assert "a=ptime:10" in audio
    assert audio.index("a=ptime:10") > audio.index(f"a=rtpmap:{offer.opus_payload_type} opus/48000/2")
    assert sum(line.startswith("a=ptime") for section in sections for line in section) == 1
    assert f"a=fmtp:{offer.opus_payload_type} minptime=10;useinbandfec=1" in audio
    assert not any(line.startswith("a=ptime") for line in raw_sections(answer_to(offer))[1 + offer.audio_index])
    with pytest.raises(ValueError, match="ptime_ms"):
        answer_to(offer, ptime_ms=15)


def test_ipv6_host():
    offer = parse_offer_untrusted(load("chrome156_mic.sdp"))
    check_answer(answer_to(offer, hosts=("2001:db8::10",)), offer, host="2001:db8::10")


def test_one_host_candidate_per_address_in_order_of_priority():
    offer = parse_offer_untrusted(load("chrome156_mic.sdp"))
    audio = raw_sections(answer_to(offer, hosts=("192.0.2.2", "fd00::2", "127.0.0.1")))[1]
    assert audio[1] == "c=IN IP4 192.0.2.2"
    candidates = [line for line in audio if line.startswith("a=candidate")]
    # RFC 8445 §5.1.1.3 / §5.1.2.1: a foundation per address, local preference 65535 down.
    assert candidates == [
        f"a=candidate:1 1 udp 2130706431 192.0.2.2 {PORT} typ host",
        f"a=candidate:2 1 udp 2130706175 fd00::2 {PORT} typ host",
        f"a=candidate:3 1 udp 2130705919 127.0.0.1 {PORT} typ host",
    ]
    assert audio[audio.index(candidates[-1]) + 1] == "a=end-of-candidates"


def test_fingerprint_argument_forms_agree():
    offer = parse_offer_untrusted(load("chrome156_mic.sdp"))
    value = OUR_FINGERPRINT.split()[1]
    as_object = answer_to(offer, fingerprint=Fingerprint.parse_untrusted(f"sha-256 {value}"))
    assert answer_to(offer, fingerprint=value) == as_object == answer_to(offer, fingerprint=value.lower())


def test_random_session_id_when_omitted():
    offer = parse_offer_untrusted(load("chrome156_mic.sdp"))
    arguments = dict(ice_ufrag=OUR_UFRAG, ice_pwd=OUR_PWD, fingerprint=OUR_FINGERPRINT, hosts=(HOST,), port=PORT, ssrc=1, cname="c")
    first = build_answer(offer, **arguments).split("\r\n")[1]
    second = build_answer(offer, **arguments).split("\r\n")[1]
    assert re.fullmatch(r"o=- \d+ 2 IN IP4 127\.0\.0\.1", first) and first != second


def test_offer_without_bundle_gets_no_group():
    text = load("chrome156_mic.sdp").replace("a=group:BUNDLE 0\r\n", "")
    offer = parse_offer_untrusted(text)
    assert offer.bundle == ()
    check_answer(answer_to(offer), offer)


@pytest.mark.parametrize(
    "overrides",
    [
        dict(hosts=("relay.example.com",)),
        dict(hosts=()),
        dict(hosts=("127.0.0.1", "127.0.0.1")),
        dict(hosts=("127.0.0.1",) * 40),
        dict(cname="evil\r\na=setup:active"),
        dict(cname="two words"),
        dict(ice_ufrag="ab"),
        dict(ice_pwd="short"),
        dict(ice_pwd="x" * 21 + "\n"),
        dict(port=0),
        dict(ssrc=2**32),
        dict(fingerprint="sha-256 12:34"),
        dict(fingerprint="md5 " + ":".join(["AB"] * 16)),
        dict(direction="both"),
        dict(msid_stream="has space"),
    ],
)
def test_answer_arguments_are_validated(overrides):
    offer = parse_offer_untrusted(load("chrome156_mic.sdp"))
    with pytest.raises(ValueError):
        answer_to(offer, **overrides)


def test_offer_without_rtcp_mux_cannot_be_answered():
    offer = parse_offer_untrusted(load("chrome156_mic.sdp").replace("a=rtcp-mux\r\n", ""))
    assert not offer.rtcp_mux
    with pytest.raises(SdpError, match="rtcp-mux"):
        answer_to(offer)


# --- Parsing details -------------------------------------------------------------


def test_lf_only_line_endings_are_accepted():
    offer = parse_offer_untrusted(load("chrome156_mic.sdp").replace("\r\n", "\n"))
    assert offer.ice_ufrag == "Lvk6"


def test_session_level_ice_credentials_and_media_override():
    text = load("chrome156_mic.sdp")
    moved = text.replace("a=ice-ufrag:Lvk6\r\na=ice-pwd:MJmqww8YhsywZZuK2KigpCDG\r\n", "").replace(
        "t=0 0\r\n", "t=0 0\r\na=ice-ufrag:SeSs\r\na=ice-pwd:sessionLevelPassword123\r\n"
    )
    offer = parse_offer_untrusted(moved)
    assert (offer.ice_ufrag, offer.ice_pwd) == ("SeSs", "sessionLevelPassword123")
    both = text.replace("t=0 0\r\n", "t=0 0\r\na=ice-ufrag:SeSs\r\na=ice-pwd:sessionLevelPassword123\r\n")
    offer = parse_offer_untrusted(both)
    assert (offer.ice_ufrag, offer.ice_pwd) == ("Lvk6", "MJmqww8YhsywZZuK2KigpCDG")


def test_missing_setup_means_active():
    offer = parse_offer_untrusted(load("chrome156_mic.sdp").replace("a=setup:actpass\r\n", ""))
    assert offer.setup is SetupRole.ACTIVE
    assert "a=setup:passive" in answer_to(offer)


def test_setup_active_is_accepted():
    assert parse_offer_untrusted(load("chrome156_mic.sdp").replace("setup:actpass", "setup:active")).setup is SetupRole.ACTIVE


def test_sha1_and_sha256_offered_prefers_sha256():
    sha1 = "a=fingerprint:sha-1 " + ":".join(["0A"] * 20) + "\r\n"
    text = load("chrome156_mic.sdp").replace("a=setup:actpass", sha1 + "a=setup:actpass")
    offer = parse_offer_untrusted(text)
    assert [f.algorithm for f in offer.fingerprints] == ["sha-256", "sha-1"]
    assert offer.fingerprint.algorithm == "sha-256"


def test_unusable_fingerprint_next_to_a_good_one_is_skipped():
    md5 = "a=fingerprint:md5 " + ":".join(["0A"] * 16) + "\r\n"
    offer = parse_offer_untrusted(load("chrome156_mic.sdp").replace("a=setup:actpass", md5 + "a=setup:actpass"))
    assert [f.algorithm for f in offer.fingerprints] == ["sha-256"]


def test_first_live_audio_section_is_chosen():
    text = load("chrome156_mic.sdp").replace("a=group:BUNDLE 0", "a=group:BUNDLE 1")
    rejected_audio = "m=audio 0 UDP/TLS/RTP/SAVPF 0\r\nc=IN IP4 0.0.0.0\r\na=mid:1\r\n"
    head, sep, tail = text.partition("m=audio")
    text = head + rejected_audio + sep + tail.replace("a=mid:0", "a=mid:1x", 1)
    text = text.replace("a=group:BUNDLE 1", "a=group:BUNDLE 1x")
    offer = parse_offer_untrusted(text)
    assert offer.audio_index == 1 and offer.mid == "1x" and offer.bundle == ("1x",)
    check_answer(answer_to(offer), offer)


def test_opus_is_matched_case_insensitively_and_in_preference_order():
    text = load("chrome156_mic.sdp").replace("opus/48000/2", "OPUS/48000/2")
    assert parse_offer_untrusted(text).opus_payload_type == 111
    # A second Opus PT listed first in the m-line wins.
    text = load("chrome156_mic.sdp").replace("SAVPF 111 63", "SAVPF 100 111 63").replace(
        "a=rtpmap:111 opus/48000/2", "a=rtpmap:100 opus/48000/2\r\na=rtpmap:111 opus/48000/2"
    )
    assert parse_offer_untrusted(text).opus_payload_type == 100


def test_generic_parser_keeps_attribute_order_and_flags():
    description = parse_sdp_untrusted(load("chrome156_audio_video.sdp"))
    assert description.session.values("group") == ("BUNDLE 0 1",)
    assert description.session.value("msid-semantic") == " WMS 93a956b0-2f2a-43a8-b149-cf1dace3d5fe"
    video = description.media[1]
    assert video.media.kind == "video" and video.media.mid == "1" and video.media.formats[0] == "96"
    assert video.has("rtcp-mux") and video.values("rtcp-mux") == (None,)
    with pytest.raises(SdpError, match="needs a value"):
        video.value("rtcp-mux")


def test_fingerprint_parse():
    value = ":".join(["ab"] * 32)
    # One type for SDP and DTLS (webrtc/fingerprint.py); SDP also takes a bare SHA-256 digest.
    assert Fingerprint.parse_untrusted(f"SHA-256 {value}", bare_is_sha256=True) == Fingerprint("sha-256", bytes([0xAB] * 32))
    assert str(Fingerprint.parse_untrusted(value, bare_is_sha256=True)) == f"sha-256 {value.upper()}"
    for bad in ("sha-256 " + ":".join(["ab"] * 31), "sha-256 zz" + ":ab" * 31, "md5 " + ":".join(["ab"] * 16), value):
        with pytest.raises(FingerprintError):
            Fingerprint.parse_untrusted(bad)


# --- Rejected offers -------------------------------------------------------------


def mic(replace_from: str, replace_to: str) -> str:
    text = load("chrome156_mic.sdp")
    assert replace_from in text
    return text.replace(replace_from, replace_to)


REJECTED = [
    ("no opus", mic("a=rtpmap:111 opus/48000/2\r\n", ""), "offers no Opus"),
    ("mono opus", mic("opus/48000/2", "opus/48000/1"), "offers no Opus"),
    ("opus not in m-line", mic("SAVPF 111 63", "SAVPF 63"), "offers no Opus"),
    ("no fingerprint", mic("a=fingerprint:sha-256", "a=x-fingerprint:sha-256"), "no a=fingerprint"),
    ("md5 fingerprint", mic("a=fingerprint:sha-256 57:41:C5:17:06:4B:34:86:01:06:0C:DB:D5:35:DE:89:5F:B1:29:53:FA:4B:99:E0:B5:1C:9C:A3:37:0A:D8:A2", "a=fingerprint:md5 " + ":".join(["AB"] * 16)), "no usable a=fingerprint"),
    ("setup passive", mic("a=setup:actpass", "a=setup:passive"), "setup:passive"),
    ("setup holdconn", mic("a=setup:actpass", "a=setup:holdconn"), "setup:holdconn"),
    ("setup nonsense", mic("a=setup:actpass", "a=setup:whenever"), "unknown a=setup"),
    ("no audio", mic("m=audio", "m=video"), "no audio m-line"),
    ("audio rejected", mic("m=audio 9", "m=audio 0"), "no audio m-line"),
    ("plain RTP", mic("UDP/TLS/RTP/SAVPF", "RTP/AVP"), "protocol"),
    ("no ufrag", mic("a=ice-ufrag:Lvk6\r\n", ""), "no a=ice-ufrag"),
    ("no pwd", mic("a=ice-pwd:MJmqww8YhsywZZuK2KigpCDG\r\n", ""), "no a=ice-pwd"),
    ("short pwd", mic("a=ice-pwd:MJmqww8YhsywZZuK2KigpCDG", "a=ice-pwd:short"), "ice-pwd must be"),
    ("bad ufrag chars", mic("a=ice-ufrag:Lvk6", "a=ice-ufrag:Lv k6"), "ice-ufrag must be"),
    ("two ufrags", mic("a=ice-ufrag:Lvk6", "a=ice-ufrag:Lvk6\r\na=ice-ufrag:Other"), "appears 2 times"),
    ("no mid", mic("a=mid:0\r\n", "").replace("a=group:BUNDLE 0\r\n", ""), "no a=mid"),
    ("bundle unknown mid", mic("a=group:BUNDLE 0", "a=group:BUNDLE 0 7"), "BUNDLE names mid '7'"),
    ("mid in two groups", mic("a=group:BUNDLE 0", "a=group:BUNDLE 0\r\na=group:BUNDLE 0"), "two BUNDLE groups"),
    ("ice-lite offer", mic("t=0 0", "t=0 0\r\na=ice-lite"), "ICE-lite"),
    ("two directions", mic("a=sendrecv", "a=sendrecv\r\na=recvonly"), "conflicting direction"),
    ("not v=0 first", mic("v=0\r\n", "") , "start with v=0"),
    ("garbage line", mic("s=-", "s=-\r\nhello world"), "not an SDP"),
    ("stray CR", mic("s=-", "s=-\rt=0 0"), "stray carriage return"),
    ("NUL", mic("s=-", "s=\x00"), "NUL"),
    ("bad port", mic("m=audio 9", "m=audio 99999"), "bad port"),
    ("short m-line", mic("m=audio 9 UDP/TLS/RTP/SAVPF 111 63 9 0 8 13 110 126", "m=audio 9 UDP/TLS/RTP/SAVPF"), "m= needs"),
    ("bad extmap id", mic("a=extmap:1 ", "a=extmap:0 "), "out of range"),
    ("duplicate extmap id", mic("a=extmap:2 ", "a=extmap:1 "), "used twice"),
    ("bad ssrc", mic("a=ssrc:1951877580 cname", "a=ssrc:99999999999 cname"), "bad a=ssrc"),
    ("bad msid", mic("a=msid:6754513b", "a=msid:a b c 6754513b"), "a=msid must be"),
    ("bad rtpmap", mic("a=rtpmap:111 opus", "a=rtpmap:x111 opus"), "bad a=rtpmap"),
    ("empty attribute name", mic("s=-", "s=-\r\na=:x"), "empty attribute name"),
    ("bad mid", mic("a=mid:0", "a=mid:" + "m" * 65), "a=mid must be"),
    ("empty", "", "empty SDP"),
    ("blank lines only", "\r\n\r\n", "empty SDP"),
]


@pytest.mark.parametrize("text, fragment", [case[1:] for case in REJECTED], ids=[case[0] for case in REJECTED])
def test_rejected_offers_say_why(text, fragment):
    with pytest.raises(SdpError, match=re.escape(fragment)):
        parse_offer_untrusted(text)


def test_duplicate_mids_are_rejected():
    text = load("chrome156_audio_video.sdp").replace("a=mid:1", "a=mid:0").replace("BUNDLE 0 1", "BUNDLE 0")
    with pytest.raises(SdpError, match="share a=mid:0"):
        parse_offer_untrusted(text)


def test_size_limits():
    text = load("chrome156_mic.sdp")
    with pytest.raises(SdpError, match="characters is over"):
        parse_offer_untrusted(text + "a=x:" + "y" * MAX_SDP_CHARS + "\r\n")
    with pytest.raises(SdpError, match="lines is over"):
        parse_offer_untrusted(text + "a=x\r\n" * MAX_SDP_LINES)
    with pytest.raises(SdpError, match="over 2048 characters"):
        parse_offer_untrusted(text + "a=x:" + "y" * 3000 + "\r\n")
    with pytest.raises(SdpError, match="more than 64 m-sections"):
        parse_offer_untrusted(text + "m=video 0 UDP/TLS/RTP/SAVPF 96\r\n" * 64)
    many_ssrcs = "".join(f"a=ssrc:{n} cname:x\r\n" for n in range(1, 18))
    with pytest.raises(SdpError, match="more than 16 SSRCs"):
        parse_offer_untrusted(text + many_ssrcs)


def test_non_text_is_rejected():
    with pytest.raises(SdpError, match="must be text"):
        parse_offer_untrusted(load("chrome156_mic.sdp").encode())


def test_offer_dataclass_is_frozen():
    offer = parse_offer_untrusted(load("chrome156_mic.sdp"))
    with pytest.raises(dataclasses.FrozenInstanceError):
        offer.mid = "1"


# --- A real Chromium takes our answer and completes ICE against our responder -----


class _Responder:
    """The relay's STUN path on a real UDP socket, in a thread (test shell only):
    answers Chrome's checks and, from an address not yet verified, checks it
    first with the browser's own credentials (``remote``, from its offer)."""

    def __init__(self, ufrag: str, pwd: str) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.05)
        self.port = self.sock.getsockname()[1]
        self.ufrag = ufrag
        self.sessions = {ufrag: pwd}
        self.remote: tuple[str, str] | None = None  # the offer's ice-ufrag and ice-pwd
        self.state = IceLiteState(nominate_on="use_candidate")
        self.requests: list[bytes] = []
        self.outcomes = []
        self.check_results: list[CheckResult] = []
        self.kinds: list[PacketKind] = []
        self.stopping = threading.Event()
        self.nominated = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stopping.is_set():
            try:
                data, addr = self.sock.recvfrom(2048)
            except TimeoutError:
                continue
            kind = classify(data[0]) if data else PacketKind.UNKNOWN
            self.kinds.append(kind)
            if kind is not PacketKind.STUN:
                continue
            now = time.monotonic()
            message = parse_stun_untrusted(data)
            if message.message_class == Class.RESPONSE:  # Chrome answering our check
                assert message.check_message_integrity(self.remote[1].encode())
                result, update = self.state.on_check_success(message.transaction_id, addr, now)
                self.check_results.append(result)
                if update is not None and update.selected is not None:
                    self.nominated.set()
                continue
            self.requests.append(data)
            outcome = answer_binding_untrusted(data, addr, self.sessions.get)
            self.outcomes.append((addr, outcome))
            if outcome.authenticated:
                update = self.state.on_valid_request(
                    addr, outcome.use_candidate, now, transaction_id=outcome.transaction_id
                )
                if update.selected is not None:
                    self.nominated.set()
                if not update.verified and self.state.check_allowed(addr, now):
                    transaction_id = os.urandom(12)
                    self.state.add_check(transaction_id, addr, now)
                    check = binding_check(
                        f"{self.remote[0]}:{self.ufrag}",
                        self.remote[1],
                        transaction_id=transaction_id,
                        priority=PEER_REFLEXIVE_PRIORITY,
                        tie_breaker=12345,
                    )
                    assert len(check) <= len(data)
                    self.sock.sendto(check, addr)  # before the success, as the relay does
            if outcome.reply is not None:
                self.sock.sendto(outcome.reply, addr)

    def close(self) -> None:
        self.stopping.set()
        self.thread.join()
        self.sock.close()


class _BlankPage(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (http.server's naming)
        body = b"<!doctype html><title>botcall sdp test</title>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--use-fake-ui-for-media-stream",
    "--use-fake-device-for-media-stream",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--allow-loopback-in-peer-connection",
]


@pytest.fixture(scope="module")
def chromium_page():
    sync_api = pytest.importorskip("playwright.sync_api")
    if not pathlib.Path("/usr/bin/chromium").exists():
        pytest.skip("no /usr/bin/chromium")
    # getUserMedia needs a secure context: http://localhost is one.
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _BlankPage)
    server_thread = threading.Thread(target=server.serve_forever, daemon=True)
    server_thread.start()
    try:
        with sync_api.sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
            page = browser.new_page()
            page.goto(f"http://localhost:{server.server_address[1]}/")
            yield page
            browser.close()
    finally:
        server.shutdown()
        server_thread.join()
        server.server_close()


OFFER_JS = {
    "mic": "const s = await navigator.mediaDevices.getUserMedia({audio: true}); s.getTracks().forEach(t => pc.addTrack(t, s));",
    "mic+camera": "const s = await navigator.mediaDevices.getUserMedia({audio: true, video: true}); s.getTracks().forEach(t => pc.addTrack(t, s));",
    "mic+datachannel": "const s = await navigator.mediaDevices.getUserMedia({audio: true}); s.getTracks().forEach(t => pc.addTrack(t, s)); pc.createDataChannel('chat');",
    "recvonly": "pc.addTransceiver('audio', {direction: 'recvonly'});",
    # A fresh max-bundle connection whose first m-section (the BUNDLE tag) is video.
    "video-first max-bundle": "window.pc = new RTCPeerConnection({bundlePolicy: 'max-bundle'}); pc.ontrack = e => trackKinds.push(e.track.kind);"
    " pc.addTransceiver('video'); const s = await navigator.mediaDevices.getUserMedia({audio: true}); s.getTracks().forEach(t => pc.addTrack(t, s));",
}


def _attribute_types(stun: bytes) -> list[int]:
    types, position = [], 20
    while position < len(stun):
        attribute_type, length = struct.unpack_from("!HH", stun, position)
        types.append(attribute_type)
        position += 4 + length + (-length % 4)
    return types


@pytest.mark.e2e
@pytest.mark.browser
@pytest.mark.parametrize(
    "setup, transceivers",
    [
        ("mic", [["0", "sendrecv"]]),
        ("mic+camera", [["0", "sendrecv"]]),
        ("mic+datachannel", [["0", "sendrecv"]]),
        ("recvonly", [["0", "recvonly"]]),
        ("video-first max-bundle", [["0", "inactive"], ["1", "sendrecv"]]),
    ],
)
def test_chromium_accepts_the_answer_and_completes_ice(chromium_page, setup, transceivers):
    responder = _Responder(OUR_UFRAG, OUR_PWD)
    try:
        offer_sdp = chromium_page.evaluate(
            "async () => { window.pc = new RTCPeerConnection(); window.trackKinds = [];"
            " pc.ontrack = e => trackKinds.push(e.track.kind);"
            f" {OFFER_JS[setup]}"
            " const offer = await pc.createOffer(); await pc.setLocalDescription(offer); return offer.sdp; }"
        )
        offer = parse_offer_untrusted(offer_sdp)
        responder.remote = (offer.ice_ufrag, offer.ice_pwd)
        answer = answer_to(offer, port=responder.port)
        result = chromium_page.evaluate(
            """async (answer) => {
                await pc.setRemoteDescription({type: 'answer', sdp: answer});
                const started = Date.now();
                while (pc.iceConnectionState !== 'connected' && Date.now() - started < 20000) {
                    await new Promise(resolve => setTimeout(resolve, 50));
                }
                const result = {
                    ice: pc.iceConnectionState,
                    transceivers: pc.getTransceivers().filter(t => !t.stopped).map(t => [t.mid, t.currentDirection]),
                    sctp: pc.sctp === null,
                    trackKinds: trackKinds,
                };
                return result;
            }""",
            answer,
        )
        # Chrome may report "connected" just before its nomination reaches us.
        responder.nominated.wait(timeout=20)
    finally:
        chromium_page.evaluate("() => window.pc && window.pc.close()")
        responder.close()
    assert result["ice"] == "connected"
    # Video and data sections were rejected (only the audio transceiver is
    # left), but for a video BUNDLE tag, accepted inactive.
    assert result["transceivers"] == transceivers
    assert result["sctp"] is True
    # Our msid/ssrc lines made Chrome create a remote audio track.
    assert result["trackKinds"] == ["audio"]
    # Chrome's checks had the documented shape and were all answered with success.
    assert responder.requests
    for request in responder.requests:
        types = _attribute_types(request)
        assert {0x0006, 0xC057, 0x802A, 0x0024, 0x0008, 0x8028} <= set(types)
    assert all(outcome.reason is BindingReason.SUCCESS for _, outcome in responder.outcomes)
    assert any(outcome.use_candidate for _, outcome in responder.outcomes)
    assert not responder.outcomes[0][1].use_candidate
    # Chrome answered our own check, signed with its offer's ice-pwd: the
    # address was verified before it was selected.
    assert CheckResult.VERIFIED in responder.check_results
    assert responder.state.selected == responder.outcomes[0][0]
    # setup:passive made Chrome the DTLS client: its ClientHello reached us.
    assert PacketKind.DTLS in responder.kinds
