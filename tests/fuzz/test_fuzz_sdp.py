"""SDP offers from browsers: anything either parses or raises SdpError, and an
offer that parses can always be answered (or refused with SdpError).

Every input that ever crashed is kept as an @example.
"""

import pathlib

from hypothesis import example, given, strategies as st

from botcall.errors import SdpError
from botcall.webrtc.sdp import build_answer, parse_offer_untrusted, parse_sdp_untrusted

DATA = pathlib.Path(__file__).parent.parent / "signaling" / "data"
OFFERS = {}
for path in sorted(DATA.glob("*.sdp")):
    with open(path, encoding="ascii", newline="") as file:
        OFFERS[path.name] = file.read()
REAL_LINES = sorted({line for text in OFFERS.values() for line in text.split("\r\n") if line})
ANSWER_ARGUMENTS = dict(
    ice_ufrag="fzUf",
    ice_pwd="fuzzIcePassword0123456789",
    fingerprint="sha-256 " + ":".join(["7E"] * 32),
    hosts=("127.0.0.1",),
    port=40000,
    ssrc=1,
    cname="fuzz",
    session_id=1,
)


def check(text) -> None:
    try:
        offer = parse_offer_untrusted(text)
    except SdpError as exc:
        assert str(exc)
        return
    try:
        answer = build_answer(offer, **ANSWER_ARGUMENTS)
    except SdpError as exc:
        assert "rtcp-mux" in str(exc)
        return
    description = parse_sdp_untrusted(answer)
    assert len(description.media) == len(offer.media)
    assert [section.media.kind for section in description.media] == [media.kind for media in offer.media]
    assert all(line for line in answer.split("\r\n")[:-1])
    assert answer.endswith("\r\n") and "\n" not in answer.replace("\r\n", "")


@given(st.text(max_size=3000))
@example("v=0\r\na=group:")  # a=group with no semantics once raised ValueError on unpacking
@example("v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=group:")
@example("v=0\r\nm=a 0 b \x85\r\n")  # a format that str.split() treats as whitespace
@example("v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 1\u2028\r\n")
def test_arbitrary_text(text):
    check(text)


@given(st.one_of(st.none(), st.integers(), st.binary(), st.lists(st.text())))
def test_non_text(value):
    check(value)


sdp_lines = st.one_of(
    st.sampled_from(REAL_LINES),
    st.builds(lambda kind, value: f"{kind}={value}", st.sampled_from("vosmcta"), st.text(max_size=40)),
    st.builds(
        lambda name, value: f"a={name}:{value}",
        st.sampled_from(
            ["mid", "rtpmap", "fmtp", "ice-ufrag", "ice-pwd", "fingerprint", "setup", "group", "ssrc", "msid", "extmap"]
        ),
        st.text(max_size=40),
    ),
)


@given(st.lists(sdp_lines, max_size=60), st.sampled_from(["\r\n", "\n"]))
def test_line_soup(lines, ending):
    check(ending.join(["v=0", *lines]) + ending)


@given(
    name=st.sampled_from(sorted(OFFERS)),
    edits=st.lists(
        st.tuples(st.sampled_from(["delete", "duplicate", "replace", "swap"]), st.integers(0, 400), st.text(max_size=30)),
        min_size=1,
        max_size=6,
    ),
)
def test_mutated_real_offers(name, edits):
    lines = OFFERS[name].split("\r\n")
    for action, position, text in edits:
        index = position % len(lines)
        if action == "delete":
            del lines[index]
        elif action == "duplicate":
            lines.insert(index, lines[index])
        elif action == "swap":
            other = (index + 1) % len(lines)
            lines[index], lines[other] = lines[other], lines[index]
        else:
            # Keep the attribute name, change its value: reaches the value parsers.
            head, _, _ = lines[index].partition(":")
            lines[index] = f"{head}:{text}"
        if not lines:
            lines = [""]
    check("\r\n".join(lines))


def test_every_captured_offer_is_answered():
    for text in OFFERS.values():
        offer = parse_offer_untrusted(text)
        assert build_answer(offer, **ANSWER_ARGUMENTS).startswith("v=0\r\n")
