import base64
import json

import pytest
from hypothesis import example, given, strategies as st

from botcall.errors import SignalingError
from botcall.signaling.messages import (
    CLIENT_MESSAGE_FIELDS,
    MAX_FIELD_NAME,
    MAX_REPORTED_FIELDS,
    Audio,
    Mark,
    PlayoutDelay,
    parse_client_message_reporting_untrusted,
    timestamp_fields,
    Chat,
    Control,
    Hello,
    Join,
    Offer,
    Ping,
    audio_event,
    encode,
    parse_client_message_untrusted,
)


def test_seed_control_mute():
    assert parse_client_message_untrusted('{"type":"control","action":"mute","value":true}') == Control("mute", True)
    assert parse_client_message_untrusted('{"type":"control","action":"mute","value":false}') == Control("mute", False)
    assert parse_client_message_untrusted('{"type":"control","action":"mute"}') == Control("mute", True)


def test_unmute_is_mute_false_and_leave():
    assert parse_client_message_untrusted('{"type":"control","action":"unmute"}') == Control("mute", False)
    assert parse_client_message_untrusted('{"type":"control","action":"leave"}') == Control("leave", None)


def test_seed_audio_message():
    frame = b"\xfc\xff\xfe" * 20
    msg = parse_client_message_untrusted(json.dumps({"type": "audio", "data": base64.b64encode(frame).decode(), "timestamp": 1708000000123}))
    assert msg == Audio(frame, 1708000000123.0)


def test_chat_ping_offer_hello():
    assert parse_client_message_untrusted('{"type":"chat","text":"hi"}') == Chat("hi")
    assert parse_client_message_untrusted('{"type":"ping"}') == Ping(None)
    assert parse_client_message_untrusted('{"type":"offer","sdp":"v=0"}') == Offer("v=0")
    assert parse_client_message_untrusted('{"type":"hello","invite":"s3cret"}') == Hello("s3cret")
    assert parse_client_message_untrusted('{"type":"join","display_name":"  Gopi "}') == Join("Gopi")
    assert parse_client_message_untrusted('{"type":"join"}') == Join("Guest")


@pytest.mark.parametrize(
    "text, needle",
    [
        ("not json", "not a JSON object"),
        ('{"type":"ping","type":"chat"}', "duplicate member name"),  # one strict parser for HTTP and WebSocket
        ('{"type":"ping","nonce":NaN}', "NaN is not JSON"),
        ("[1,2]", "object"),
        ('{"type":"dance"}', "unknown message type"),
        ('{"type":"control","action":"explode"}', "unknown control action"),
        ('{"type":"control","action":"mute","value":"yes"}', "true or false"),
        ('{"type":"audio","data":"!!!"}', "base64"),
        ('{"type":"audio","data":"AAAA","timestamp":"now"}', "number"),
        ('{"type":"chat","text":5}', "string"),
        ('{"type":"chat","text":"' + "x" * 5000 + '"}', "longer"),
        ("[" * 100000, "not a JSON object"),
    ],
)
def test_bad_messages_raise_signaling_error_with_code(text, needle):
    with pytest.raises(SignalingError) as info:
        parse_client_message_untrusted(text)
    assert info.value.code == "bad_message"
    assert needle in info.value.message


def test_audio_event_shape_round_trips_the_payload():
    event = json.loads(encode(audio_event("p-1", 5, 960 * 5, b"\x01\x02", encoding="opus", sample_rate=48000)))
    assert event["type"] == "audio" and event["participant_id"] == "p-1" and event["seq"] == 5
    assert base64.b64decode(event["data"]) == b"\x01\x02"


@given(st.one_of(st.text(max_size=300), st.binary(max_size=300)))
@example('{"type":"audio","data":null}')
@example('{"type":"audio","data":"AAAA","timestamp":true}')
@example('{"type":"ping","nonce":{"a":1}}')
@example(b"\xff\xfe")
def test_fuzz_only_signaling_error(text):
    try:
        _, ignored = parse_client_message_reporting_untrusted(text)
    except SignalingError:
        pass
    else:
        assert len(ignored) <= MAX_REPORTED_FIELDS


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=10,
)


@example("control", {"action": []})
@given(
    st.sampled_from(["audio", "control", "chat", "ping", "offer", "hello", "join", "x", None]),
    st.dictionaries(st.sampled_from(["data", "timestamp", "action", "value", "text", "sdp", "display_name", "nonce", "invite"]), json_values),
)
def test_fuzz_structured_json_only_signaling_error(kind, fields):
    try:
        _, ignored = parse_client_message_reporting_untrusted(json.dumps({"type": kind, **fields}))
    except SignalingError:
        pass
    else:
        assert list(ignored) == sorted(set(fields) - CLIENT_MESSAGE_FIELDS[kind])


# --- forward compatibility: unknown members are ignored and named, values stay strict ----------


def test_unknown_members_are_ignored_and_named():
    message, ignored = parse_client_message_reporting_untrusted(
        '{"type":"mark","name":"m1","rtp_timestamp":960,"priority":"high","meta":{"a":1}}'
    )
    assert message == Mark("m1", 960)
    assert ignored == ("meta", "priority")
    assert parse_client_message_reporting_untrusted('{"type":"playout_delay","ms":40}') == (PlayoutDelay(40), ())


def test_values_stay_strict_beside_unknown_members():
    with pytest.raises(SignalingError) as caught:
        parse_client_message_untrusted('{"type":"playout_delay","ms":"40","future":true}')
    assert caught.value.code == "bad_message" and "'ms'" in caught.value.message


def test_every_known_member_of_every_type_is_accepted_without_a_report():
    samples = {
        "audio": {"data": "AAA=", "timestamp": 1},
        "control": {"action": "mute", "value": True},
        "chat": {"text": "hi"},
        "ping": {"nonce": "n"},
        "offer": {"sdp": "v=0"},
        "hello": {"invite": "i", "resume": "r"},
        "join": {"display_name": "Ada"},
        "mark": {"name": "m", "rtp_timestamp": 1},
        "clear": {},
        "playout_delay": {"ms": 1},
    }
    assert set(samples) == set(CLIENT_MESSAGE_FIELDS)
    for kind, members in samples.items():
        assert set(members) | {"type"} == CLIENT_MESSAGE_FIELDS[kind]
        _, ignored = parse_client_message_reporting_untrusted(json.dumps({"type": kind, **members}))
        assert ignored == (), kind


def test_reported_names_are_bounded():
    obj = {"type": "clear", **{"z" * 200 + str(i): i for i in range(100)}}
    _, ignored = parse_client_message_reporting_untrusted(json.dumps(obj))
    assert len(ignored) == MAX_REPORTED_FIELDS and all(len(name) == MAX_FIELD_NAME for name in ignored)


def test_timestamps_carry_both_forms_and_the_legacy_one():
    assert timestamp_fields("expires_at", 1_800_000_000.75, legacy="unix") == {
        "expires_at": 1_800_000_000.75, "expires_at_unix": 1_800_000_000.75, "expires_at_iso": "2027-01-15T08:00:00Z",
    }
    http = timestamp_fields("expires_at", 1_800_000_000.75, legacy="iso")
    assert http["expires_at"] == http["expires_at_iso"] == "2027-01-15T08:00:00Z"
