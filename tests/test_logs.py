"""No credential reaches a log line, whoever logs it."""

from __future__ import annotations

import io
import logging

from botcall.logs import RedactingFilter, install_redaction, redact

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
