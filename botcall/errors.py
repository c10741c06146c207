"""The one error family of BotCall.

Each error carries what its boundary needs:

* ``BadPacket`` and its subclasses: raised by every ``*_untrusted`` function that
  handles network bytes. ``counter`` names the drop counter the relay increments;
  a parser may raise nothing else (Hypothesis checks this for every parser).
* ``ApiError`` and its subclasses: an HTTP status plus a machine-readable ``code``
  and a human ``message``; the HTTP layer renders them as
  ``{"error": {"code": ..., "message": ...}}``.
* ``SignalingError``: a WebSocket close code (RFC 6455 §7.4, 4000-4999 private).
"""

from __future__ import annotations


class BotCallError(Exception):
    """Base class of every error BotCall raises on purpose."""


class ConfigError(BotCallError, ValueError):
    """A configuration value that cannot work (bad port, unknown algorithm...)."""


class StartupError(BotCallError):
    """The server cannot start: a port in use, an unwritable data directory.

    The message names the port or path and the flag that changes it; the
    command line prints it as one line and exits non-zero.
    """


class JwksError(BotCallError):
    """A JWKS we cannot use: unreadable, malformed, too big, or carrying private keys."""


# --- Network bytes -----------------------------------------------------------------


class BadPacket(BotCallError):
    """A datagram or record from the network that we refuse to process.

    Attributes:
        counter: name of the drop counter to increment (``"malformed_rtp"``...).
    """

    counter = "malformed"

    def __init__(self, message: str, *, counter: str | None = None) -> None:
        super().__init__(message)
        if counter is not None:
            self.counter = counter


class RtpParseError(BadPacket):
    counter = "malformed_rtp"


class RtcpParseError(BadPacket):
    counter = "malformed_rtcp"


class StunParseError(BadPacket):
    counter = "malformed_stun"


class DtlsError(BadPacket):
    counter = "dtls_error"


class SrtpError(BadPacket):
    counter = "srtp_unprotect_failed"


class OpusDecodeError(BadPacket):
    counter = "opus_decode_failed"


class AudioLevelError(BadPacket):
    """A malformed RFC 6464 audio level header extension element."""

    counter = "malformed_audio_level"


class SdpError(BotCallError):
    """An SDP offer we cannot answer (missing attributes, no Opus, ...)."""


# --- HTTP API ----------------------------------------------------------------------


class ApiError(BotCallError):
    """An error returned to an HTTP client as JSON.

    Attributes:
        status: HTTP status code.
        code: stable machine-readable code (``"room_full"``...).
        message: human-readable explanation.
        headers: extra response headers (``Retry-After``...).
    """

    status = 400
    code = "bad_request"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        status: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        self.headers = dict(headers or {})

    def to_json(self) -> dict[str, dict[str, str]]:
        return {"error": {"code": self.code, "message": self.message}}


# Machine codes for HTTP errors that are not ApiErrors: those Quart, Hypercorn
# and h11 produce themselves (docs/protocol.md, "Error codes").
HTTP_STATUS_CODES = {
    400: "bad_request",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    408: "request_timeout",
    413: "body_too_large",
    414: "uri_too_long",
    415: "unsupported_media_type",
    431: "headers_too_large",
    500: "internal_error",
    501: "not_implemented",
    503: "service_unavailable",
    505: "http_version_not_supported",
}


def http_error_json(status: int, message: str, code: str | None = None) -> dict[str, dict[str, str]]:
    """The JSON error body of any HTTP error: ``{"error": {"code", "message"}}``."""
    return ApiError(message, code=code or HTTP_STATUS_CODES.get(status, f"http_{status}"), status=status).to_json()


class BadRequest(ApiError):
    status = 400
    code = "bad_request"


class AttestationError(ApiError):
    """The attestation itself is unacceptable (signature, expiry, issuer...): 401."""

    status = 401
    code = "attestation_invalid"


class Forbidden(ApiError):
    """A valid attestation that does not allow this action (scope, controller): 403."""

    status = 403
    code = "forbidden"


class NotFound(ApiError):
    status = 404
    code = "not_found"


class Conflict(ApiError):
    status = 409
    code = "conflict"


class Gone(ApiError):
    status = 410
    code = "gone"


class ServiceUnavailable(ApiError):
    """The server is at a capacity limit (rooms, sessions, replay cache): 503."""

    status = 503
    code = "server_full"


class RateLimited(ApiError):
    status = 429
    code = "rate_limited"

    def __init__(self, message: str, *, retry_after: float, code: str | None = None) -> None:
        seconds = max(1, int(retry_after + 0.999))
        super().__init__(message, code=code, headers={"Retry-After": str(seconds)})
        self.retry_after = seconds


# --- WebSocket signaling -----------------------------------------------------------


class SignalingError(BotCallError):
    """Ends a WebSocket with a close code and reason.

    Attributes:
        close_code: RFC 6455 close code (4000-4999 are ours).
        code: machine-readable reason also sent as an ``error`` event first.
    """

    def __init__(self, message: str, *, code: str = "protocol_error", close_code: int = 4400) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.close_code = close_code


# --- clustered mode ------------------------------------------------------------------


class RoomRecordError(BotCallError):
    """A room's stored record (Redis, ``rooms.room_from_record_untrusted``) or a line of
    the rooms journal (``room_journal.parse_room_line_untrusted``) is not a room."""
