"""SDP for browsers: parse an offer, build our ICE-lite answer (sans-IO).

The relay is an ICE-lite (RFC 8445 §2.5), DTLS-passive (RFC 8842 §5.3) endpoint on
one UDP port that receives and sends one Opus stream. From a browser's offer we
take the first live audio m-section and answer it; every other m-section (video,
a data channel, a second audio) is answered as rejected, port 0, because an answer
must list the same m-sections in the same order (RFC 3264 §6).

One exception keeps BUNDLE working: when the offerer's BUNDLE tag (the first mid
of the group, RFC 8843 §7.2.1) is another RTP m-section, such as the video of a
video-first ``max-bundle`` offer, it is accepted ``inactive`` with one of its own
codecs and stays the tag of the answer. A rejected m-section cannot be the tag
(RFC 8843 §7.3.1), and Chromium refuses an answer that moves the tag to the audio
section ("Failed to setup RTCP mux"): the tag's transport is the one it set up.

References: RFC 8866 (SDP), RFC 3264 (offer/answer), RFC 9429 (JSEP), RFC 8843
(BUNDLE), RFC 8839 (ICE attributes), RFC 8842 and RFC 8122 (DTLS setup and
fingerprints), RFC 7587 (Opus), RFC 8285 (extmap), RFC 5576 (ssrc), RFC 8830 (msid).

Group calls (docs/protocol.md "Group calls"): further live audio m-sections of
the audio section's BUNDLE group that can receive Opus are *receive sections*
(``SdpOffer.receive_sections``). The caller picks which of them to accept
(``build_answer(receive_ssrcs=...)``, bounded by ``Config.max_receive_tracks``);
each accepted one is answered ``sendonly`` with an SSRC and msid of its own, one
more downstream track on the same transport. The rest are rejected as before.

``parse_offer_untrusted`` takes text from a browser and raises only ``SdpError``,
with a message that says what is wrong; sizes are capped before any work.
"""

from __future__ import annotations

import ipaddress
import re
import secrets
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum

from botcall.audio.opus import SAMPLE_RATE as OPUS_CLOCK_RATE
from botcall.webrtc.fingerprint import Fingerprint, FingerprintError
from botcall.errors import SdpError

__all__ = [
    "Direction",
    "BundleTag",
    "Extmap",
    "Fingerprint",
    "MAX_SDP_CHARS",
    "MAX_SDP_LINES",
    "MediaSection",
    "PTIMES_MS",
    "ReceiveSection",
    "SdpOffer",
    "SdpSection",
    "SessionDescription",
    "SetupRole",
    "build_answer",
    "parse_offer_untrusted",
    "parse_sdp_untrusted",
]

# A Chrome offer with audio, video (two dozen codecs) and a data channel is
# ~7 KB and ~200 lines; these caps leave room for simulcast and many
# transceivers while bounding the work one message can cause.
MAX_SDP_CHARS = 64 * 1024
MAX_SDP_LINES = 2000
MAX_LINE_CHARS = 2048
MAX_MEDIA_SECTIONS = 64
MAX_SSRCS = 16
MAX_MID_CHARS = 64

OPUS_CHANNELS = 2  # RFC 7587 §7: always "opus/48000/2" in SDP
SUPPORTED_PROTOCOL = "UDP/TLS/RTP/SAVPF"  # RFC 5764 §8, JSEP §5.1.2
DEFAULT_OPUS_FMTP = "minptime=10;useinbandfec=1"
# Packet durations we may ask a browser to send (build_answer's ptime_ms): Opus
# frames a browser's encoder makes (RFC 7587 §4, libwebrtc's 10/20 ms choices).
PTIMES_MS = (10, 20)
# RFC 8445 §5.1.2.1 with type preference 126 (host), local preference 65535,
# component 1: (126 << 24) | (65535 << 8) | (256 - 1).
HOST_CANDIDATE_PRIORITY = 2130706431
# Candidates read from an offer: a browser offers a handful per interface; the
# SDP's own size limits bound the text, this bounds what is kept.
MAX_OFFERED_CANDIDATES = 64
# One host candidate per local address: far more than a machine has, few enough
# that a browser's pairing work stays small.
MAX_HOST_CANDIDATES = 32

# Digest sizes of the RFC 8122 §5 hash functions we accept (md2/md5 are not).
_FINGERPRINT_PREFERENCE = ("sha-256", "sha-384", "sha-512", "sha-224", "sha-1")

_LINE_TYPES = frozenset("vosiuepcbtrzkam")  # RFC 8866 §5
_ICE_CHARS = re.compile(r"[A-Za-z0-9+/]+")  # RFC 8839 §5.4 ice-char
_TOKEN = re.compile(r"[!#$%&'*+\-.0-9A-Z^_`a-z{|}~]+")  # RFC 8866 §9 token
_DIGITS = re.compile(r"[0-9]{1,10}")
_MSID_ID = re.compile(r"[!#$%&'*+\-.0-9A-Z^_`a-z{|}~]{1,64}")  # RFC 8830 §2 msid-id


class Direction(StrEnum):
    """Media direction attributes (RFC 8866 §6.7)."""

    SENDRECV = "sendrecv"
    SENDONLY = "sendonly"
    RECVONLY = "recvonly"
    INACTIVE = "inactive"

    @property
    def sends(self) -> bool:
        """Whether the side that wrote this attribute sends media."""
        return self in (Direction.SENDRECV, Direction.SENDONLY)

    @property
    def receives(self) -> bool:
        """Whether the side that wrote this attribute receives media."""
        return self in (Direction.SENDRECV, Direction.RECVONLY)

    @classmethod
    def from_flags(cls, sends: bool, receives: bool) -> Direction:
        """The direction attribute for a side that ``sends`` and/or ``receives``."""
        if sends and receives:
            return cls.SENDRECV
        if sends:
            return cls.SENDONLY
        if receives:
            return cls.RECVONLY
        return cls.INACTIVE


class SetupRole(StrEnum):
    """``a=setup`` values (RFC 4145 §4, RFC 8842 §5)."""

    ACTPASS = "actpass"
    ACTIVE = "active"
    PASSIVE = "passive"
    HOLDCONN = "holdconn"


@dataclass(frozen=True, slots=True)
class Extmap:
    """An RTP header extension mapping (RFC 8285 §8): ``a=extmap:<id>[/<dir>] <uri> [<attrs>]``."""

    id: int
    uri: str
    direction: Direction | None = None
    attributes: str = ""


@dataclass(frozen=True, slots=True)
class MediaSection:
    """An m-line (RFC 8866 §5.14) and the section's ``a=mid`` (RFC 5888), if any."""

    kind: str
    port: int
    protocol: str
    formats: tuple[str, ...]
    mid: str | None = None


@dataclass(frozen=True, slots=True)
class SdpSection:
    """One level of a description: the session part (``media`` None) or a media section.

    ``attributes`` keeps every ``a=`` line in order as ``(name, value)``; a flag
    attribute (``a=rtcp-mux``) has value None.
    """

    media: MediaSection | None
    attributes: tuple[tuple[str, str | None], ...]

    def values(self, name: str) -> tuple[str | None, ...]:
        """Every value of attribute ``name`` in this section, in order."""
        return tuple(value for key, value in self.attributes if key == name)

    def has(self, name: str) -> bool:
        """Whether attribute ``name`` appears in this section."""
        return any(key == name for key, _ in self.attributes)

    def value(self, name: str) -> str | None:
        """The value of an attribute that may appear at most once, or None.

        Raises:
            SdpError: it appears more than once, or is a flag without a value.
        """
        values = self.values(name)
        if not values:
            return None
        if len(values) > 1:
            raise SdpError(f"a={name} appears {len(values)} times in one section")
        if values[0] is None:
            raise SdpError(f"a={name} needs a value")
        return values[0]


@dataclass(frozen=True, slots=True)
class SessionDescription:
    """A parsed SDP: the session-level section and the media sections in order."""

    session: SdpSection
    media: tuple[SdpSection, ...]


@dataclass(frozen=True, slots=True)
class BundleTag:
    """The offerer's BUNDLE tag when it is an RTP m-section other than our audio.

    The answer accepts it ``inactive`` with the offer's first codec, so that the
    tag of the answer is an accepted m-section (RFC 8843 §7.3.1).

    Attributes:
        index: the m-section's index in ``SdpOffer.media``.
        mid: its ``a=mid``.
        payload_type: the first payload type the offer lists for it.
        encoding: that payload type's ``a=rtpmap`` encoding (``VP8/90000``).
    """

    index: int
    mid: str
    payload_type: str
    encoding: str


@dataclass(frozen=True, slots=True)
class ReceiveSection:
    """A further audio m-section the browser offers to receive on (a downstream track).

    Attributes:
        index: the m-section's index in ``SdpOffer.media``.
        mid: its ``a=mid`` (in the audio section's BUNDLE group).
        opus_payload_type: its Opus payload type.
    """

    index: int
    mid: str
    opus_payload_type: int


@dataclass(frozen=True, slots=True)
class OfferedCandidate:
    """One ``a=candidate`` of an offer (RFC 8839 §5.1): what pairing needs.

    Attributes:
        transport: ``udp`` or ``tcp`` (lower case, as written otherwise).
        address: an IP literal, or a name (an mDNS ``.local`` name hides a host address).
        kind: ``host``, ``srflx``, ``prflx`` or ``relay``.
    """

    transport: str
    address: str
    kind: str

    @property
    def family(self) -> int | None:
        """4 or 6 for an IP literal; None for a name (its family is unknown)."""
        try:
            return ipaddress.ip_address(self.address).version
        except ValueError:
            return None


@dataclass(frozen=True, slots=True)
class SdpOffer:
    """What we need from a browser's offer to answer it.

    Attributes:
        mid: ``a=mid`` of the audio section we answer.
        opus_payload_type: the offer's Opus payload type (Chrome 111, Firefox 109).
        opus_fmtp: the offer's ``a=fmtp`` parameters for Opus ("" when absent).
        ice_ufrag, ice_pwd: the browser's ICE credentials (media- or session-level).
        fingerprint: the browser's DTLS certificate fingerprint (SHA-256 when offered).
        fingerprints: every acceptable fingerprint offered for the section.
        setup: the browser's DTLS role offer (actpass or active; we are passive).
        direction: the offer's direction for the audio section.
        ssrcs: SSRCs the browser announced for its audio (``a=ssrc``), in order.
        cname: the RTCP CNAME announced with the first SSRC, if any.
        msid: ``(stream id, track id)`` from ``a=msid`` or ``a=ssrc:<n> msid:``.
        rtcp_mux: the section offers ``a=rtcp-mux`` (required to build an answer).
        extmaps: header extensions offered for the audio section.
        bundle: the mids of the BUNDLE group holding the audio section, or ().
        ice_options: ``a=ice-options`` tokens (``trickle``...).
        media: every m-section, in order (the answer mirrors them).
        audio_index: the index in ``media`` of the section we answer.
        bundle_tag: the offerer's BUNDLE tag when it is another RTP m-section
            we can accept inactive, else None (the audio section is the tag,
            or there is no BUNDLE).
        receive_sections: the other live audio m-sections of the audio
            section's BUNDLE group that receive Opus over ``a=rtcp-mux``, in
            offer order (candidates for downstream tracks; group calls).
        candidates: the RTP (component 1) candidates offered for the audio's
            transport (its section and the rest of its BUNDLE group), at most
            ``MAX_OFFERED_CANDIDATES``; malformed ones are left out.
        end_of_candidates: ``a=end-of-candidates`` on one of those sections or the session.
    """

    mid: str
    opus_payload_type: int
    opus_fmtp: str
    ice_ufrag: str
    ice_pwd: str
    fingerprint: Fingerprint
    fingerprints: tuple[Fingerprint, ...]
    setup: SetupRole
    direction: Direction
    ssrcs: tuple[int, ...]
    cname: str | None
    msid: tuple[str, str | None] | None
    rtcp_mux: bool
    extmaps: tuple[Extmap, ...]
    bundle: tuple[str, ...]
    ice_options: tuple[str, ...]
    media: tuple[MediaSection, ...]
    audio_index: int
    bundle_tag: BundleTag | None = None
    receive_sections: tuple[ReceiveSection, ...] = ()
    candidates: tuple[OfferedCandidate, ...] = ()
    end_of_candidates: bool = False

    @property
    def candidates_complete(self) -> bool:
        """The offer lists every candidate its peer will have: it says
        ``a=end-of-candidates`` (RFC 8840 §8.2), or it does not trickle
        (RFC 8838 §3: a non-trickle offer carries all of them)."""
        return self.end_of_candidates or "trickle" not in self.ice_options

    def opus_fmtp_params(self) -> dict[str, str]:
        """The Opus fmtp as a dict (``{"minptime": "10", "useinbandfec": "1"}``)."""
        params = {}
        for item in self.opus_fmtp.split(";"):
            key, _, value = item.strip().partition("=")
            if key:
                params[key] = value
        return params


# --- Generic parsing ---------------------------------------------------------------


def _parse_media_line(number: int, value: str) -> MediaSection:
    fields = value.split()
    if len(fields) < 4:
        raise SdpError(f"line {number}: m= needs <media> <port> <proto> <fmt>...")
    kind, port_text, protocol = fields[0], fields[1], fields[2]
    port_text = port_text.partition("/")[0]  # RFC 8866 §5.14 <port>/<number of ports>
    if not _DIGITS.fullmatch(port_text) or int(port_text) > 0xFFFF:
        raise SdpError(f"line {number}: bad port in m= line")
    if not _TOKEN.fullmatch(kind) or not _TOKEN.fullmatch(protocol.replace("/", "-")):
        raise SdpError(f"line {number}: bad media or protocol in m= line")
    formats = tuple(fields[3:])
    if not all(_TOKEN.fullmatch(fmt) for fmt in formats):
        raise SdpError(f"line {number}: bad format in m= line")
    return MediaSection(kind, int(port_text), protocol, formats)


def parse_sdp_untrusted(text: str) -> SessionDescription:
    """Split an SDP into its session section and media sections (RFC 8866 §5).

    Accepts CRLF or LF line endings and skips empty lines. Only the line syntax is
    checked here (``<type>=<value>``, ``v=0`` first, m-line shape, sizes).

    Args:
        text: the SDP.

    Returns:
        The ``SessionDescription``.

    Raises:
        SdpError: not SDP, or over ``MAX_SDP_CHARS`` / ``MAX_SDP_LINES`` /
            ``MAX_LINE_CHARS`` / ``MAX_MEDIA_SECTIONS``.
    """
    if not isinstance(text, str):
        raise SdpError(f"SDP must be text, not {type(text).__name__}")
    if len(text) > MAX_SDP_CHARS:
        raise SdpError(f"SDP of {len(text)} characters is over the {MAX_SDP_CHARS} limit")
    if "\x00" in text:
        raise SdpError("SDP contains a NUL character")
    raw_lines = text.split("\n")
    if len(raw_lines) > MAX_SDP_LINES:
        raise SdpError(f"SDP of {len(raw_lines)} lines is over the {MAX_SDP_LINES} limit")
    session_attributes: list[tuple[str, str | None]] = []
    media_entries: list[tuple[MediaSection, list[tuple[str, str | None]]]] = []
    current_attributes = session_attributes
    seen_version = False
    for number, raw in enumerate(raw_lines, start=1):
        line = raw[:-1] if raw.endswith("\r") else raw
        if not line:
            continue
        if len(line) > MAX_LINE_CHARS:
            raise SdpError(f"line {number} is over {MAX_LINE_CHARS} characters")
        if "\r" in line:
            raise SdpError(f"line {number} contains a stray carriage return")
        if len(line) < 2 or line[1] != "=" or line[0] not in _LINE_TYPES:
            raise SdpError(f"line {number} is not an SDP <type>=<value> line")
        kind, value = line[0], line[2:]
        if not seen_version:
            if line != "v=0":
                raise SdpError("SDP must start with v=0")
            seen_version = True
            continue
        if kind == "m":
            if len(media_entries) >= MAX_MEDIA_SECTIONS:
                raise SdpError(f"more than {MAX_MEDIA_SECTIONS} m-sections")
            current_attributes = []
            media_entries.append((_parse_media_line(number, value), current_attributes))
        elif kind == "a":
            name, colon, attribute_value = value.partition(":")
            if not name:
                raise SdpError(f"line {number}: empty attribute name")
            current_attributes.append((name, attribute_value if colon else None))
    if not seen_version:
        raise SdpError("empty SDP")
    return SessionDescription(
        SdpSection(None, tuple(session_attributes)),
        tuple(_media_section(media, tuple(attributes)) for media, attributes in media_entries),
    )


def _media_section(media: MediaSection, attributes: tuple[tuple[str, str | None], ...]) -> SdpSection:
    section = SdpSection(media, attributes)
    mid = section.value("mid")
    if mid is None:
        return section
    if len(mid) > MAX_MID_CHARS or not _TOKEN.fullmatch(mid):
        raise SdpError(f"a=mid must be a token of at most {MAX_MID_CHARS} characters")
    return SdpSection(MediaSection(media.kind, media.port, media.protocol, media.formats, mid), attributes)


# --- Offer ------------------------------------------------------------------------


def _media_then_session(media: SdpSection, session: SdpSection, name: str) -> str | None:
    # RFC 8839 §5.4, RFC 8122 §5, RFC 4145 §4: a media-level value overrides the
    # session-level one.
    value = media.value(name)
    return value if value is not None else session.value(name)


def _direction(section: SdpSection) -> Direction | None:
    found = [key for key, _ in section.attributes if key in Direction._value2member_map_]
    if len(found) > 1:
        raise SdpError(f"conflicting direction attributes: {', '.join(found)}")
    return Direction(found[0]) if found else None


def _ice_credential(value: str | None, name: str, minimum: int) -> str:
    if value is None:
        raise SdpError(f"offer has no a={name} (neither media- nor session-level)")
    if not minimum <= len(value) <= 256 or not _ICE_CHARS.fullmatch(value):
        raise SdpError(f"a={name} must be {minimum}-256 ICE characters (RFC 8839 §5.4)")
    return value


def _fingerprints(media: SdpSection, session: SdpSection) -> tuple[Fingerprint, ...]:
    values = media.values("fingerprint") or session.values("fingerprint")
    if not values:
        raise SdpError("offer has no a=fingerprint; DTLS-SRTP needs one (RFC 8122 §5)")
    accepted = []
    for value in values[:8]:
        if value is None:
            raise SdpError("a=fingerprint needs a value")
        try:
            accepted.append(Fingerprint.parse_untrusted(value, bare_is_sha256=True))
        except FingerprintError:
            # An algorithm we do not take (md5...) next to a good one is fine.
            continue
    if not accepted:
        raise SdpError("offer has no usable a=fingerprint (need sha-256 or another SHA-2/SHA-1)")
    return tuple(accepted)


def _preferred_fingerprint(fingerprints: tuple[Fingerprint, ...]) -> Fingerprint:
    for algorithm in _FINGERPRINT_PREFERENCE:
        for fingerprint in fingerprints:
            if fingerprint.algorithm == algorithm:
                return fingerprint
    return fingerprints[0]


def _setup(media: SdpSection, session: SdpSection) -> SetupRole:
    value = _media_then_session(media, session, "setup")
    if value is None:
        # RFC 4145 §4: an absent setup attribute means "active".
        return SetupRole.ACTIVE
    try:
        role = SetupRole(value.strip().lower())
    except ValueError:
        raise SdpError(f"unknown a=setup:{value[:20]}") from None
    if role not in (SetupRole.ACTPASS, SetupRole.ACTIVE):
        raise SdpError(
            f"offer has a=setup:{role.value}; we are always DTLS passive, so the offer "
            "must be actpass or active (RFC 8842 §5)"
        )
    return role


def _opus(formats: tuple[str, ...], section: SdpSection) -> tuple[int, str]:
    opus_types = set()
    for value in section.values("rtpmap"):
        payload_type, _, encoding = (value or "").partition(" ")
        if not _DIGITS.fullmatch(payload_type) or int(payload_type) > 127:
            raise SdpError(f"bad a=rtpmap payload type {payload_type[:10]!r}")
        name, _, clock_and_channels = encoding.strip().partition("/")
        if name.lower() == "opus" and clock_and_channels == f"{OPUS_CLOCK_RATE}/{OPUS_CHANNELS}":
            opus_types.add(payload_type)
    # Formats are in the offerer's order of preference (RFC 3264 §5.1).
    chosen = next((fmt for fmt in formats if fmt in opus_types), None)
    if chosen is None:
        raise SdpError("the audio m-line offers no Opus (need a=rtpmap:<pt> opus/48000/2)")
    fmtp = ""
    for value in section.values("fmtp"):
        payload_type, _, params = (value or "").partition(" ")
        if payload_type == chosen:
            fmtp = params.strip()
            break
    return int(chosen), fmtp


def _extmaps(section: SdpSection) -> tuple[Extmap, ...]:
    extmaps = []
    seen_ids = set()
    for value in section.values("extmap")[:64]:
        fields = (value or "").split(maxsplit=2)
        if len(fields) < 2:
            raise SdpError("a=extmap needs <id> <uri>")
        id_text, slash, direction_text = fields[0].partition("/")
        if not _DIGITS.fullmatch(id_text):
            raise SdpError(f"bad a=extmap id {id_text[:10]!r}")
        ext_id = int(id_text)
        # RFC 8285 §5: 1-14 one-byte, up to 255 two-byte; 4096-4351 negotiation only.
        if not (1 <= ext_id <= 255 or 4096 <= ext_id <= 4351):
            raise SdpError(f"a=extmap id {ext_id} out of range (RFC 8285 §5)")
        if ext_id in seen_ids:
            raise SdpError(f"a=extmap id {ext_id} used twice")
        seen_ids.add(ext_id)
        direction = None
        if slash:
            try:
                direction = Direction(direction_text)
            except ValueError:
                raise SdpError(f"bad a=extmap direction {direction_text[:10]!r}") from None
        extmaps.append(Extmap(ext_id, fields[1], direction, fields[2] if len(fields) > 2 else ""))
    return tuple(extmaps)


def _ssrcs(section: SdpSection) -> tuple[tuple[int, ...], str | None, tuple[str, str | None] | None]:
    ssrcs: list[int] = []
    cname = None
    ssrc_msid = None
    for value in section.values("ssrc"):
        number_text, _, attribute = (value or "").partition(" ")
        if not _DIGITS.fullmatch(number_text) or int(number_text) > 0xFFFFFFFF:
            raise SdpError(f"bad a=ssrc value {number_text[:12]!r} (RFC 5576 §4.1)")
        ssrc = int(number_text)
        if ssrc not in ssrcs:
            if len(ssrcs) >= MAX_SSRCS:
                raise SdpError(f"more than {MAX_SSRCS} SSRCs in the audio section")
            ssrcs.append(ssrc)
        name, _, attribute_value = attribute.partition(":")
        if ssrc == ssrcs[0]:
            if name == "cname" and cname is None:
                cname = attribute_value
            elif name == "msid" and ssrc_msid is None:
                ssrc_msid = _msid(attribute_value)
    return tuple(ssrcs), cname, ssrc_msid


def _msid(value: str) -> tuple[str, str | None] | None:
    fields = value.split()
    if not fields or len(fields) > 2 or not all(_MSID_ID.fullmatch(field) for field in fields):
        raise SdpError("a=msid must be <stream id> [<track id>] (RFC 8830 §2)")
    return fields[0], fields[1] if len(fields) == 2 else None


def _bundle_groups(session: SdpSection, mids: set[str]) -> list[tuple[str, ...]]:
    groups = []
    grouped: set[str] = set()
    for value in session.values("group"):
        semantics, *members = (value or "").split() or [""]
        if semantics != "BUNDLE":
            continue
        for mid in members:
            if mid not in mids:
                raise SdpError(f"a=group:BUNDLE names mid {mid[:MAX_MID_CHARS]!r}, which no m-section has")
            if mid in grouped:
                raise SdpError(f"mid {mid!r} is in two BUNDLE groups (RFC 8843 §7.2)")
            grouped.add(mid)
        if members:
            groups.append(tuple(members))
    return groups


def _is_live(media: MediaSection, section: SdpSection) -> bool:
    # Port 0 rejects a section, except with a=bundle-only (RFC 8843 §6).
    return media.port != 0 or section.has("bundle-only")


def _bundle_tag(bundle: tuple[str, ...], audio_mid: str, sections: list[tuple[MediaSection, SdpSection]]) -> BundleTag | None:
    """The offerer's BUNDLE tag if it is an RTP m-section other than ``audio_mid`` we can accept inactive."""
    if not bundle or bundle[0] == audio_mid:
        return None
    index, (media, section) = next((i, entry) for i, entry in enumerate(sections) if entry[0].mid == bundle[0])
    if media.protocol != SUPPORTED_PROTOCOL or not _is_live(media, section) or not section.has("rtcp-mux"):
        # Not an RTP section we could accept (a data channel): rejected, and
        # the audio section is the answer's tag. Chromium takes that for a
        # data channel, which it never ties to the tag's RTCP multiplexing.
        return None
    encodings: dict[str, str] = {}
    for value in section.values("rtpmap"):
        payload_type, _, encoding = (value or "").partition(" ")
        encodings.setdefault(payload_type, encoding.strip())
    for fmt in media.formats:
        encoding = encodings.get(fmt, "")
        if _DIGITS.fullmatch(fmt) and int(fmt) <= 127 and encoding and len(encoding) <= 64 and _TOKEN.fullmatch(encoding.replace("/", "-")):
            return BundleTag(index, bundle[0], fmt, encoding)
    return None


def _receive_sections(
    bundle: tuple[str, ...], audio_index: int, sections: list[tuple[MediaSection, SdpSection]], session: SdpSection
) -> tuple[ReceiveSection, ...]:
    """The audio m-sections besides ``audio_index`` that could carry a downstream track.

    Each must be bundled with the audio section (one transport: ours is one
    port), live, ``UDP/TLS/RTP/SAVPF`` with ``a=rtcp-mux``, offer Opus, and
    receive (``recvonly`` or ``sendrecv``). A section that fails any of these
    is simply not a candidate (it is rejected in the answer, as before).
    """
    found = []
    for index, (media, section) in enumerate(sections):
        if index == audio_index or media.kind != "audio" or media.mid is None or media.mid not in bundle:
            continue
        if media.protocol != SUPPORTED_PROTOCOL or not _is_live(media, section) or not section.has("rtcp-mux"):
            continue
        try:
            direction = _direction(section) or _direction(session) or Direction.SENDRECV
            payload_type, _ = _opus(media.formats, section)
        except SdpError:
            continue
        if direction.receives:
            found.append(ReceiveSection(index, media.mid, payload_type))
    return tuple(found)


def parse_offer_untrusted(text: str) -> SdpOffer:
    """Parse a browser's SDP offer into what the answer needs.

    The first live audio m-section is the one we answer; it must be
    UDP/TLS/RTP/SAVPF with ``a=mid``, offer Opus (``opus/48000/2``), ICE
    credentials, a usable fingerprint and ``a=setup`` actpass or active.

    Args:
        text: the offer's SDP as received over signaling.

    Returns:
        The ``SdpOffer``.

    Raises:
        SdpError: anything we cannot answer, with a message naming it.
    """
    description = parse_sdp_untrusted(text)
    session = description.session
    if session.has("ice-lite"):
        raise SdpError("the offer is ICE-lite too; two lite agents never connect (RFC 8445 §2.5)")
    # Every media-level section has its m-line; the filter only narrows the type.
    sections = [(section.media, section) for section in description.media if section.media is not None]
    mids: set[str] = set()
    for media, _ in sections:
        if media.mid is not None:
            if media.mid in mids:
                raise SdpError(f"two m-sections share a=mid:{media.mid}")
            mids.add(media.mid)
    audio_index = next(
        (index for index, (media, section) in enumerate(sections) if media.kind == "audio" and _is_live(media, section)),
        None,
    )
    if audio_index is None:
        raise SdpError("offer has no audio m-line")
    audio_media, audio = sections[audio_index]
    if audio_media.protocol != SUPPORTED_PROTOCOL:
        raise SdpError(f"audio m-line protocol is {audio_media.protocol[:40]!r}, we need {SUPPORTED_PROTOCOL}")
    mid = audio_media.mid
    if mid is None:
        raise SdpError("the audio m-section has no a=mid (RFC 9429 §5.2.1)")
    opus_payload_type, opus_fmtp = _opus(audio_media.formats, audio)
    ice_ufrag = _ice_credential(_media_then_session(audio, session, "ice-ufrag"), "ice-ufrag", 4)
    ice_pwd = _ice_credential(_media_then_session(audio, session, "ice-pwd"), "ice-pwd", 22)
    fingerprints = _fingerprints(audio, session)
    setup = _setup(audio, session)
    direction = _direction(audio) or _direction(session) or Direction.SENDRECV
    ssrcs, cname, ssrc_msid = _ssrcs(audio)
    msid_value = audio.value("msid")
    msid = _msid(msid_value) if msid_value is not None else ssrc_msid
    bundle: tuple[str, ...] = ()
    for group in _bundle_groups(session, mids):
        if mid in group:
            bundle = group
    ice_options = tuple(
        option for value in (audio.values("ice-options") or session.values("ice-options")) for option in (value or "").split()
    )
    transport_sections = [audio] + [
        section for media, section in sections if media.mid is not None and media.mid != mid and media.mid in bundle
    ]
    candidates = _candidates(transport_sections)
    end_of_candidates = session.has("end-of-candidates") or any(section.has("end-of-candidates") for section in transport_sections)
    return SdpOffer(
        mid=mid,
        opus_payload_type=opus_payload_type,
        opus_fmtp=opus_fmtp,
        ice_ufrag=ice_ufrag,
        ice_pwd=ice_pwd,
        fingerprint=_preferred_fingerprint(fingerprints),
        fingerprints=fingerprints,
        setup=setup,
        direction=direction,
        ssrcs=ssrcs,
        cname=cname,
        msid=msid,
        rtcp_mux=audio.has("rtcp-mux"),
        extmaps=_extmaps(audio),
        bundle=bundle,
        ice_options=ice_options[:16],
        media=tuple(media for media, _ in sections),
        audio_index=audio_index,
        bundle_tag=_bundle_tag(bundle, mid, sections),
        receive_sections=_receive_sections(bundle, audio_index, sections, session),
        candidates=candidates,
        end_of_candidates=end_of_candidates,
    )


def _candidates(sections: Sequence[SdpSection]) -> tuple[OfferedCandidate, ...]:
    """The RTP candidates of ``sections`` (RFC 8839 §5.1 grammar, leniently: a
    candidate we cannot read is one we cannot pair with, not a broken offer)."""
    found: list[OfferedCandidate] = []
    for section in sections:
        for value in section.values("candidate"):
            fields = (value or "").split()
            # <foundation> <component> <transport> <priority> <address> <port> typ <type>
            if len(fields) < 8 or fields[1] != "1" or fields[6] != "typ":
                continue
            found.append(OfferedCandidate(transport=fields[2].lower()[:16], address=fields[4][:256], kind=fields[7][:16]))
            if len(found) >= MAX_OFFERED_CANDIDATES:
                return tuple(found)
    return tuple(found)


def check_candidate_pair(offer: SdpOffer, hosts: Sequence[str]) -> None:
    """Refuse an offer whose complete candidate list cannot pair with ours.

    The relay has one UDP host candidate per address in ``hosts``. A pair needs
    a UDP candidate of the browser in an address family of ours (RFC 8445
    §6.1.2.2); a name (an mDNS ``.local`` host) may be either family. An offer
    that may still trickle more candidates, or whose peer learns of pairs from
    our checks, is not judged.

    Raises:
        SdpError: the offer's candidates are complete and none can pair.
    """
    if not offer.candidates_complete:
        return
    families = set()
    for host in hosts:
        try:
            families.add(ipaddress.ip_address(host).version)
        except ValueError:
            families.update((4, 6))
    usable = [c for c in offer.candidates if c.transport == "udp" and (c.family is None or c.family in families)]
    if usable:
        return
    offered = ", ".join(sorted({f"{c.transport} IPv{c.family}" if c.family else f"{c.transport} {c.kind}" for c in offer.candidates}))
    ours = ", ".join(f"udp {host}" for host in hosts)
    raise SdpError(
        f"no usable candidate pair: the offer's candidates ({offered or 'none'}) cannot reach the relay's ({ours}); "
        "the relay takes UDP only"
    )


# --- Answer -----------------------------------------------------------------------


def _check_token(value: str, what: str, maximum: int = 255) -> None:
    if not 1 <= len(value) <= maximum or not _TOKEN.fullmatch(value):
        raise ValueError(f"{what} must be 1-{maximum} SDP token characters, got {value!r}")


def build_answer(
    offer: SdpOffer,
    *,
    ice_ufrag: str,
    ice_pwd: str,
    fingerprint: Fingerprint | str,
    hosts: Sequence[str],
    port: int,
    ssrc: int,
    cname: str,
    direction: Direction | str = Direction.SENDRECV,
    session_id: int | None = None,
    session_version: int = 2,
    msid_stream: str = "botcall",
    msid_track: str | None = None,
    extmap_uris: Collection[str] = (),
    receive_ssrcs: Mapping[str, int] | None = None,
    ptime_ms: int | None = None,
) -> str:
    """Build our ICE-lite, DTLS-passive answer to a parsed offer.

    The audio section answers the offer's Opus payload type with one host
    candidate per address in ``hosts``, in that order of priority; every other
    m-section is rejected (port 0) in place, except an offerer's BUNDLE tag
    that is another RTP section (``SdpOffer.bundle_tag``), accepted
    ``inactive`` as the answer's tag. The answered
    direction is ``direction`` narrowed by the offer's (RFC 3264 §6.1): an offer
    that only sends gets ``recvonly``, and so on. SSRC and msid lines are written
    only when we send.

    Args:
        offer: from ``parse_offer_untrusted``.
        ice_ufrag, ice_pwd: our ICE credentials for this session.
        fingerprint: our DTLS certificate fingerprint (``Fingerprint``, or
            ``"sha-256 AB:..."``, or bare ``"AB:..."`` for SHA-256).
        hosts: the relay's media addresses, best first (IP literals; candidates
            may not name hosts). The first also goes into ``c=`` and ``o=``.
        port: the relay's media port (the same on every address).
        ssrc: the SSRC we send with.
        cname: our RTCP CNAME.
        direction: what we would like to do; narrowed by the offer.
        session_id: the o= session id; random when omitted. Pass the same
            one for every answer on one peer connection (RFC 3264 §8).
        session_version: the o= version (raise it for each renegotiation).
        msid_stream, msid_track: our msid (RFC 8830), so the browser creates a
            stream and track for what we send; the track id defaults to
            ``"botcall-<ssrc>"``.
        extmap_uris: header extension URIs we accept; each one the offer has is
            echoed with the offer's id.
        receive_ssrcs: mid -> our SSRC for each receive section
            (``SdpOffer.receive_sections``) to accept as a downstream track:
            answered ``sendonly`` with that SSRC and its own msid
            (stream ``<msid_stream>-<m-section index>``), in the BUNDLE group after the audio
            section. Other receive sections are rejected.
        ptime_ms: the packet duration we want the browser to send
            (``a=ptime``, RFC 8866 §6.4; Chromium 156 and Firefox ESR 153 both
            follow it, measured from their getStats; Firefox ignores a
            ``ptime`` fmtp parameter), one of ``PTIMES_MS``; None writes no
            ``a=ptime`` (browsers send 20 ms).

    Returns:
        The answer SDP, CRLF line endings.

    Raises:
        SdpError: the offer has no ``a=rtcp-mux`` (all our media is on one port).
        ValueError: an argument out of range or with characters SDP cannot carry.
    """
    if not offer.rtcp_mux:
        raise SdpError("the offer has no a=rtcp-mux; we carry RTP and RTCP on one port (RFC 5761)")
    if not 4 <= len(ice_ufrag) <= 256 or not _ICE_CHARS.fullmatch(ice_ufrag):
        raise ValueError("ice_ufrag must be 4-256 ICE characters (RFC 8839 §5.4)")
    if not 22 <= len(ice_pwd) <= 256 or not _ICE_CHARS.fullmatch(ice_pwd):
        raise ValueError("ice_pwd must be 22-256 ICE characters (RFC 8839 §5.4)")
    if isinstance(fingerprint, str):
        fingerprint = Fingerprint.parse_untrusted(fingerprint, bare_is_sha256=True)  # a ValueError when bad
    if not 1 <= len(hosts) <= MAX_HOST_CANDIDATES:
        raise ValueError(f"hosts must name 1-{MAX_HOST_CANDIDATES} addresses, got {len(hosts)}")
    addresses = [ipaddress.ip_address(host) for host in hosts]
    if len(set(addresses)) != len(addresses):
        raise ValueError(f"hosts repeat an address: {list(hosts)}")
    address = addresses[0]
    address_type = "IP4" if address.version == 4 else "IP6"
    if not 1 <= port <= 0xFFFF:
        raise ValueError(f"port {port} out of range")
    if not 0 <= ssrc <= 0xFFFFFFFF:
        raise ValueError(f"ssrc {ssrc} is not a 32-bit value")
    _check_token(cname, "cname")
    direction = Direction(direction)
    if msid_track is None:
        msid_track = f"botcall-{ssrc}"
    if not _MSID_ID.fullmatch(msid_stream) or not _MSID_ID.fullmatch(msid_track):
        raise ValueError("msid_stream and msid_track must be 1-64 token characters")
    if ptime_ms is not None and ptime_ms not in PTIMES_MS:
        raise ValueError(f"ptime_ms must be one of {PTIMES_MS}, got {ptime_ms}")
    if session_id is None:
        session_id = secrets.randbits(62)
    answered = Direction.from_flags(
        direction.sends and offer.direction.receives,
        direction.receives and offer.direction.sends,
    )
    receive_ssrcs = dict(receive_ssrcs or {})
    slots = {slot.index: slot for slot in offer.receive_sections if slot.mid in receive_ssrcs}
    if len(slots) != len(receive_ssrcs):
        raise ValueError(f"receive_ssrcs names mids the offer has no receive section for: {sorted(receive_ssrcs)}")
    slot_ssrcs = [ssrc, *receive_ssrcs.values()]
    if len(set(slot_ssrcs)) != len(slot_ssrcs) or not all(0 <= value <= 0xFFFFFFFF for value in slot_ssrcs):
        raise ValueError("receive_ssrcs must be distinct 32-bit values, none equal to ssrc")
    pt = offer.opus_payload_type
    lines = [
        "v=0",
        f"o=- {session_id} {session_version} IN {address_type} {address}",
        "s=-",
        "t=0 0",
        # RFC 8445 §5.3 / RFC 8839 §5.3: we only answer checks, the browser controls.
        "a=ice-lite",
    ]
    tag = offer.bundle_tag
    if offer.bundle:
        # Only accepted m-sections may stay in the group, and the first one,
        # the answerer's tag, is the offerer's tag when we accept it (RFC 8843
        # §7.3.1): the video of a video-first offer, accepted inactive.
        # Accepted receive sections follow the audio section, in offer order.
        mids = [offer.mid, *(slots[index].mid for index in sorted(slots))]
        lines.append("a=group:BUNDLE " + " ".join([tag.mid, *mids] if tag is not None else mids))
    transport = [
        f"c=IN {address_type} {address}",
        *(_host_candidate(index, candidate, port) for index, candidate in enumerate(addresses)),
        "a=end-of-candidates",
        f"a=ice-ufrag:{ice_ufrag}",
        f"a=ice-pwd:{ice_pwd}",
        f"a=fingerprint:{fingerprint}",
        # RFC 8842 §5.3: we never start DTLS; the browser is the client.
        "a=setup:passive",
    ]
    for index, media in enumerate(offer.media):
        if tag is not None and index == tag.index:
            # Accepted so that it can stay the tag; nothing is sent or received.
            lines += [f"m={media.kind} {port} {SUPPORTED_PROTOCOL} {tag.payload_type}", *transport]
            lines += [
                f"a=mid:{tag.mid}",
                f"a={Direction.INACTIVE.value}",
                "a=rtcp-mux",
                f"a=rtpmap:{tag.payload_type} {tag.encoding}",
            ]
            continue
        slot = slots.get(index)
        if slot is not None:
            lines += _receive_section(slot, port, transport, receive_ssrcs[slot.mid], cname, f"{msid_stream}-{index}")
            continue
        if index != offer.audio_index:
            lines.extend(_rejected_section(media))
            continue
        lines += [f"m=audio {port} {SUPPORTED_PROTOCOL} {pt}", *transport, f"a=mid:{offer.mid}"]
        lines += [f"a=extmap:{extmap.id} {extmap.uri}" for extmap in offer.extmaps if extmap.uri in extmap_uris]
        lines.append(f"a={answered.value}")
        if answered.sends:
            lines.append(f"a=msid:{msid_stream} {msid_track}")
        lines += [
            "a=rtcp-mux",
            f"a=rtpmap:{pt} opus/{OPUS_CLOCK_RATE}/{OPUS_CHANNELS}",
            f"a=fmtp:{pt} {DEFAULT_OPUS_FMTP}",
        ]
        if ptime_ms is not None:
            lines.append(f"a=ptime:{ptime_ms}")
        if answered.sends:
            lines += [
                f"a=ssrc:{ssrc} cname:{cname}",
                f"a=ssrc:{ssrc} msid:{msid_stream} {msid_track}",
            ]
    return "\r\n".join(lines) + "\r\n"


def _receive_section(slot: ReceiveSection, port: int, transport: list[str], ssrc: int, cname: str, stream: str) -> list[str]:
    """An accepted receive section: one more stream we send, nothing we take (RFC 3264 §6.1)."""
    pt = slot.opus_payload_type
    track = f"botcall-{ssrc}"
    return [
        f"m=audio {port} {SUPPORTED_PROTOCOL} {pt}",
        *transport,
        f"a=mid:{slot.mid}",
        f"a={Direction.SENDONLY.value}",
        f"a=msid:{stream} {track}",
        "a=rtcp-mux",
        f"a=rtpmap:{pt} opus/{OPUS_CLOCK_RATE}/{OPUS_CHANNELS}",
        f"a=fmtp:{pt} {DEFAULT_OPUS_FMTP}",
        f"a=ssrc:{ssrc} cname:{cname}",
        f"a=ssrc:{ssrc} msid:{stream} {track}",
    ]


def _host_candidate(index: int, address: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int) -> str:
    # RFC 8445 §5.1.1.3: candidates on different addresses have different
    # foundations. §5.1.2.1: the local preference orders them (65535 first).
    priority = HOST_CANDIDATE_PRIORITY - (index << 8)
    return f"a=candidate:{index + 1} 1 udp {priority} {address} {port} typ host"


def _rejected_section(media: MediaSection) -> list[str]:
    # RFC 3264 §6: port 0 rejects; the formats are ignored but one must be there.
    lines = [
        f"m={media.kind} 0 {media.protocol} {media.formats[0]}",
        "c=IN IP4 0.0.0.0",
    ]
    if media.mid is not None:
        # JSEP §5.3.1: a rejected m-section keeps its mid.
        lines.append(f"a=mid:{media.mid}")
    if "RTP" in media.protocol:
        lines.append(f"a={Direction.INACTIVE.value}")
    return lines
