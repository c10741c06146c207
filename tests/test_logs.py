"""No credential reaches a log line, whoever logs it."""

from __future__ import annotations

import io
import json
import logging
import re

import pytest

from botcall.logs import RedactingFilter, human_formatter, install_redaction, json_formatter, log_context, redact

SESSION = "sess-" + "A1b2C3d4" * 4
JWT = "eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJvcmlvbiJ9.c2lnbmF0dXJlLWJ5dGVz"


def test_patterns():
    assert SESSION not in redact(f"Exception on websocket /v1/stream/{SESSION}")
    assert "Vb0tQ2xsZHhZ" not in redact("http://h/join/ab-cd#invite=Vb0tQ2xsZHhZ")
    assert JWT not in redact(f"Authorization: Bearer {JWT}")
    assert "s3cr3tpassw0rd" not in redact('{"ice_pwd": "s3cr3tpassw0rd", "port": 40000}')
    assert redact("room ds2u-p71i-uxd6 created by orion#8f3a") == "room ds2u-p71i-uxd6 created by orion#8f3a"


def test_every_level_and_exception_text_of_any_logger_is_redacted():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logger = logging.getLogger("test.redaction")
    logger.addHandler(handler)
    logger.propagate = False
    install_redaction(logger)
    assert any(isinstance(f, RedactingFilter) for f in handler.filters)
    try:
        logger.debug("debug %s", SESSION)
        logger.setLevel(logging.DEBUG)
        logger.debug("debug %s", SESSION)
        logger.error("error for %s", f"/v1/stream/{SESSION}")
        try:
            raise RuntimeError(f"failed on {SESSION} with {JWT}")
        except RuntimeError:
            logger.exception("boom")
    finally:
        logger.removeHandler(handler)
    text = stream.getvalue()
    assert "boom" in text and "RuntimeError" in text and "sess-[redacted]" in text
    assert SESSION not in text and JWT not in text


def _capture(formatter: logging.Formatter) -> tuple[logging.Logger, io.StringIO, logging.Handler]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    logger = logging.getLogger(f"test.format.{id(stream)}")
    logger.addHandler(handler)
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    install_redaction(logger)
    return logger, stream, handler


def test_json_lines_parse_and_carry_the_fields_and_no_credential():
    logger, stream, handler = _capture(json_formatter("node-a"))
    try:
        logger.info("room %s created", "ds2u-p71i-uxd6", extra={"room": "ds2u-p71i-uxd6"})
        with log_context(room="ds2u-p71i-uxd6", session="p-1"):
            logger.warning("WebSocket closed: %s", f"/v1/stream/{SESSION}")
            # extra= wins over the context; a credential passed by mistake is redacted.
            logger.info("joined", extra={"session": SESSION})
        try:
            raise RuntimeError(f"failed with {JWT}")
        except RuntimeError:
            logger.exception("boom")
        logger.info("no room here")
    finally:
        logger.removeHandler(handler)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert len(lines) == 5
    for line in lines:
        assert {"time", "level", "logger", "event", "node"} <= set(line)
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", line["time"])
        assert line["node"] == "node-a" and line["logger"] == logger.name
    created, closed, joined, boom, plain = lines
    assert created == {**created, "level": "INFO", "event": "room ds2u-p71i-uxd6 created", "room": "ds2u-p71i-uxd6"}
    assert "session" not in created
    assert closed["level"] == "WARNING" and closed["room"] == "ds2u-p71i-uxd6" and closed["session"] == "p-1"
    assert closed["event"] == "WebSocket closed: /v1/stream/sess-[redacted]"
    assert joined["session"] == "sess-[redacted]" and joined["room"] == "ds2u-p71i-uxd6"
    assert boom["level"] == "ERROR" and "RuntimeError" in boom["exc"] and "[redacted-jwt]" in boom["exc"]
    assert "room" not in plain and "session" not in plain
    text = stream.getvalue()
    assert SESSION not in text and JWT not in text


def test_human_lines_have_a_timestamp_and_a_level():
    logger, stream, handler = _capture(human_formatter())
    try:
        logger.warning("careful with %s", SESSION)
    finally:
        logger.removeHandler(handler)
    line = stream.getvalue().strip()
    assert re.fullmatch(
        rf"\d{{4}}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{{3}}Z WARNING {re.escape(logger.name)}: careful with sess-\[redacted\]", line
    ), line


def test_log_context_takes_room_and_session_only():
    with pytest.raises(TypeError, match="token"):
        with log_context(token="x"):
            pass


def test_human_lines_name_the_process_when_it_has_a_name():
    logger, stream, handler = _capture(human_formatter("node-a/w1"))
    try:
        logger.info("room %s created", "ds2u-p71i-uxd6")
    finally:
        logger.removeHandler(handler)
    line = stream.getvalue().strip()
    assert re.fullmatch(
        rf"\S+Z INFO \[node-a/w1\] {re.escape(logger.name)}: room ds2u-p71i-uxd6 created", line
    ), line
