"""The compiled LevelDetector (``_fastpath.level_feed``) against the Python one (issue 17).

Random level streams (10 and 20 ms packets, gaps, reordering, missing and
malformed extension blocks, expiries) go through ``SpeechTracker``'s level path
in Python and through the C copy from the same starting state: the events and
the final state must be identical, so handing a route's detector to C and back
changes nothing Python's ``expire`` and barge-in see.
"""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from botcall.audio.vad import BOT_AUDIO_LEVEL_ID, LevelDetector, SpeechStarted, SpeechStopped
from botcall.errors import BadPacket
from botcall.relay.speech import audio_level_untrusted
from botcall.wire.rtp import payload_offset_untrusted

fastpath = pytest.importorskip("botcall.relay._fastpath")

OPUS_20MS = b"\x78" + b"\x00" * 40  # TOC: SILK-only 20 ms (config 15)


def rtp(extension: bytes | None, timestamp: int, csrcs: int = 0, payload: bytes = OPUS_20MS) -> bytes:
    """An RTP packet with the raw extension block `extension` (profile and length included)."""
    first = 0x80 | csrcs | (0x10 if extension is not None else 0)
    header = struct.pack("!BBHII", first, 111, 1, timestamp, 0x1234) + b"\x00\x00\x00\x01" * csrcs
    return header + (extension or b"") + payload


def one_byte_block(elements: bytes) -> bytes:
    """An RFC 8285 one-byte block, padded to 32-bit words."""
    padded = elements + b"\x00" * (-len(elements) % 4)
    return b"\xbe\xde" + struct.pack("!H", len(padded) // 4) + padded


@st.composite
def packets(draw: st.DrawFn, level_id: int) -> bytes | None:
    """A packet as a browser or bot might send it, or a malformed one."""
    octet = bytes([draw(st.integers(0, 255))])
    kind = draw(st.sampled_from(["level", "level", "level", "none", "other-id", "padded", "long", "two-byte", "id15", "raw"]))
    if kind == "level":
        block = one_byte_block(bytes([(level_id << 4)]) + octet)
    elif kind == "none":
        block = None
    elif kind == "other-id":
        block = one_byte_block(bytes([(((level_id % 14) + 1) << 4) | 1]) + b"\x01\x02" + bytes([level_id << 4]) + octet)
    elif kind == "padded":
        block = one_byte_block(b"\x00\x00" + bytes([level_id << 4]) + octet)
    elif kind == "long":  # the level element with two octets: RFC 6464 says one
        block = one_byte_block(bytes([(level_id << 4) | 1]) + octet + octet)
    elif kind == "two-byte":
        block = b"\x10\x00\x00\x01" + bytes([level_id, 1]) + octet + b"\x00"
    elif kind == "id15":
        block = one_byte_block(b"\xf0" + bytes([level_id << 4]) + octet)
    else:
        body = draw(st.binary(min_size=0, max_size=12))
        body += b"\x00" * (-len(body) % 4)
        profile = draw(st.sampled_from([b"\xbe\xde", b"\x10\x00", b"\x00\x00"]))
        block = profile + struct.pack("!H", len(body) // 4) + body
    csrcs = draw(st.integers(0, 2))
    return rtp(block, 0, csrcs)


@st.composite
def streams(draw: st.DrawFn) -> tuple[int, bool, int, list[tuple[bytes, int, int] | int]]:
    bot = draw(st.booleans())
    level_id = BOT_AUDIO_LEVEL_ID if bot else draw(st.integers(1, 14))
    frame_ms = draw(st.sampled_from([10, 20]))
    items: list[tuple[bytes, int, int] | int] = []
    position = 0
    for _ in range(draw(st.integers(1, 120))):
        step = draw(st.sampled_from(["next"] * 8 + ["gap", "back", "expire"]))
        if step == "gap":
            position += frame_ms * draw(st.integers(2, 40))
        elif step == "back":
            position = max(0, position - frame_ms * draw(st.integers(1, 3)))
        elif step == "expire":
            items.append(position + draw(st.integers(0, 1000)))
            continue
        data = draw(packets(level_id))
        assert data is not None
        try:
            offset = payload_offset_untrusted(data)
        except BadPacket:
            continue  # the relay drops it before speech detection
        items.append((data, offset, position))
        position += frame_ms
    return (-1 if bot else level_id), bot, frame_ms, items


def python_run(detector: LevelDetector, level_id: int, items: list[tuple[bytes, int, int] | int]) -> list[tuple[object, ...]]:
    """``SpeechTracker.on_packet``'s level path and ``expire``, in Python."""
    events: list[tuple[object, ...]] = []
    for index, item in enumerate(items):
        if isinstance(item, int):
            event = detector.expire(item)
        else:
            data, offset, at = item
            level = None if level_id < 0 else audio_level_untrusted(data, level_id, offset)
            if level is None and level_id < 0 and data[0] & 0x10:
                level = audio_level_untrusted(data, BOT_AUDIO_LEVEL_ID, offset)
            if level is None:
                events.append(("unlevelled", index))
                continue
            event = detector.update(level[0], level[1], at)
        if isinstance(event, SpeechStarted):
            events.append(("started", event.stream_ms))
        elif isinstance(event, SpeechStopped):
            events.append(("stopped", event.stream_ms, event.duration_ms))
    return events


@settings(max_examples=400, deadline=None)
@given(streams(), st.booleans(), st.integers(0, 60))
def test_c_levels_match_python(stream: tuple[int, bool, int, list[tuple[bytes, int, int] | int]], use_voice: bool, split: int) -> None:
    level_id, bot, frame_ms, items = stream
    reference = LevelDetector(synthetic=bot, frame_ms=frame_ms, use_voice_flag=use_voice)
    expected = python_run(reference, level_id, items)
    # C takes over mid-stream from Python's state, as a route programmed after some packets.
    split = min(split, len(items))
    handed = LevelDetector(synthetic=bot, frame_ms=frame_ms, use_voice_flag=use_voice)
    before = python_run(handed, level_id, items[:split])
    events, state = fastpath.level_feed(handed.config(), handed.state(), level_id, items[split:])
    shifted = [(kind, value[0] + split, *value[1:]) if kind == "unlevelled" else (kind, *value) for kind, *value in events]
    assert before + shifted == expected
    assert state == reference.state()
    # ... and back: Python goes on from C's state exactly as the reference does.
    handed.restore(state)
    assert handed.expire(10**6) == reference.expire(10**6)
    assert handed.state() == reference.state()


def test_level_path_detects_speech_in_c() -> None:
    """A broken build (no events, wrong times) fails here even if both sides were wrong alike."""
    detector = LevelDetector(frame_ms=20)
    quiet = [(rtp(one_byte_block(b"\x30" + bytes([70])), 0), 0, 20 * i) for i in range(10)]
    loud = [(rtp(one_byte_block(b"\x30" + bytes([0x80 | 20])), 0), 0, 200 + 20 * i) for i in range(10)]
    items: list[tuple[bytes, int, int] | int] = [(d, payload_offset_untrusted(d), at) for d, _, at in quiet + loud]
    items.append(2000)
    events, state = fastpath.level_feed(detector.config(), detector.state(), 3, items)
    assert events == [("started", 200), ("stopped", 400, 200)]
    assert state[1] is False and state[0] is not None and state[0] <= -70.0 + 0.02 * 20


def test_tracker_hands_its_level_path_to_c_and_back() -> None:
    """``SpeechTracker.level_handover``/``level_takeback``: half a stream in Python,
    the middle in C, the end in Python again, against a tracker that ran it all in Python."""
    from botcall.relay.speech import SpeechTracker

    def packet(level: int, at: int) -> tuple[bytes, int, int]:
        data = rtp(one_byte_block(bytes([BOT_AUDIO_LEVEL_ID << 4, 0x80 | level])), at * 48)
        return data, payload_offset_untrusted(data), at

    levels = [90] * 10 + [15] * 30 + [90] * 40 + [10] * 20
    stream = [packet(level, 20 * i) for i, level in enumerate(levels)]
    reference, handed = SpeechTracker(level_id=None, budget=None), SpeechTracker(level_id=None, budget=None)
    expected = [reference.on_packet(*item) for item in stream]
    got = [handed.on_packet(*item) for item in stream[:5]]
    handover = handed.level_handover()
    assert handover is not None
    level_id, config, state = handover
    assert level_id == -1
    raw, state = fastpath.level_feed(config, state, level_id, stream[5:95])
    events = [SpeechStarted(value[0]) if kind == "started" else SpeechStopped(*value) for kind, *value in raw]
    handed.level_takeback(events, state, stream[94][2] + 20)
    got += [handed.on_packet(*item) for item in stream[95:]]
    assert [e for e in expected if e is not None] == events + [e for e in got if e is not None]
    # A broken detector gets these wrong (the floor stays at -90 dBov under the speech).
    assert events == [SpeechStarted(200), SpeechStopped(800, 600), SpeechStarted(1600)]
    for name in ("onset_ms", "last_ms", "interrupted", "packet_ms", "speaking"):
        assert getattr(handed, name) == getattr(reference, name), name
    assert handed.expire(10**6) == reference.expire(10**6)
