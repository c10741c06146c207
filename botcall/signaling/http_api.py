"""The HTTP API: quart-trio routes for rooms, joins, health and metrics.

The request bodies are parsed by pure functions first (``parse_*_untrusted``,
raising only ``BadRequest``); the routes then verify the attestation, charge the
rate limits and call the room registry. Every error leaves as JSON
``{"error": {"code", "message"}}`` — ours (``ApiError``), Quart's own (404, 405,
413) and unexpected ones (500) alike.

``AppState`` is the single object the routes read; the server builds it and
the media relay and the WebSocket hub hang off it.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import trio
from quart import Response, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from botcall import __version__

from botcall.auth.attestation import (
    SCOPE_CREATE,
    SCOPE_VOICE,
    Attestation,
    AttestationVerifier,
    UnknownSigningKey,
)
from botcall.audio.opus import PAYLOAD_TYPE as PAYLOAD_TYPE_OPUS
from botcall.audio.opus import SAMPLE_RATE as OPUS_CLOCK_RATE
from botcall.auth.invites import invite_url
from botcall.auth.keys import DevIssuer, KeyRing, download_jwks
from botcall.auth.ratelimit import Limiters, SharedBuckets
from botcall.config import Config
from botcall.errors import ApiError, AttestationError, BadRequest, Forbidden, JwksError, RateLimited, http_error_json
from botcall.metrics import Metrics
from botcall.relay.service import MediaService
from botcall.signaling import api_schema, strict_json
from botcall.signaling.messages import MAX_REPORTED_FIELDS, timestamp_fields, unknown_fields
from botcall.signaling.forwarded import Network, client_address
from botcall.signaling.static import register_pwa_routes
from botcall.signaling.ws import Hub, register_human_signaling, register_websocket_routes, session_ice_servers
from botcall.signaling.room_journal import RoomJournal
from botcall.signaling.rooms import (
    Capabilities,
    Identity,
    Interruption,
    MediaSpec,
    Room,
    RoomStore,
    Session,
)

log = logging.getLogger("botcall.http")

MAX_ID_CHARS = 256

_JOIN_FIELDS = frozenset({"agent_id", "room_id", "attestation", "capabilities", "media"})
_ATTESTATION_FIELDS = frozenset({"token", "scope", "expiry"})
_CAPABILITY_FIELDS = ("audio_in", "audio_out", "video", "text_chat")
_MEDIA_FIELDS = frozenset({"transport", "encoding", "sample_rate", "send_sample_rate", "receive_sample_rate", "receive", "delivery"})
_CREATE_FIELDS = frozenset({"max_human_participants", "expires_in", "interruption"})
_INTERRUPTION_FIELDS = frozenset({"mode", "min_speech_ms"})
_BOT_TRANSPORTS = ("udp", "websocket")



# --- request bodies (pure) ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class JoinRequest:
    """A parsed ``POST /v1/join`` body."""

    agent_id: str
    room_id: str
    token: str
    capabilities: Capabilities
    media: MediaSpec
    # Members this server does not define, ignored (``messages.unknown_fields``).
    ignored_fields: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class CreateRoomRequest:
    """A parsed ``POST /v1/rooms/create`` body (``None`` = server default)."""

    max_human_participants: int | None = None
    expires_in: int | None = None
    interruption: Interruption | None = None
    # Members this server does not define, ignored (``messages.unknown_fields``).
    ignored_fields: tuple[str, ...] = ()


def parse_json_object_untrusted(data: bytes, *, allow_empty: bool = False) -> dict[str, Any]:
    """Decode a request body that must be one JSON object (``strict_json``'s rules).

    Args:
        data: the raw body.
        allow_empty: treat an empty (or all-whitespace) body as ``{}``.

    Returns:
        The object.

    Raises:
        BadRequest: ``malformed_json``.
    """
    try:
        return strict_json.parse_json_object_untrusted(data, allow_empty=allow_empty)
    except strict_json.JsonObjectError as exc:
        raise BadRequest(f"the body is not a valid JSON object: {exc}", code="malformed_json") from exc


def _note_unknown(obj: dict[str, Any], allowed: frozenset[str] | tuple[str, ...], prefix: str, ignored: list[str]) -> None:
    """Add the members of ``obj`` not in ``allowed`` to ``ignored`` (as ``prefix + name``):
    a newer client may send what this server does not know, so they are ignored and
    reported (``warnings``), never refused."""
    if len(ignored) < MAX_REPORTED_FIELDS:
        ignored.extend(unknown_fields(obj, frozenset(allowed), prefix)[: MAX_REPORTED_FIELDS - len(ignored)])


def _required_id(obj: dict[str, Any], name: str) -> str:
    value = obj.get(name)
    if value is None:
        raise BadRequest(f"{name!r} is required", code="missing_field")
    if not isinstance(value, str) or not 1 <= len(value) <= MAX_ID_CHARS:
        raise BadRequest(f"{name!r} must be a string of 1-{MAX_ID_CHARS} characters", code="invalid_field")
    return value


def _optional_int(obj: dict[str, Any], name: str) -> int | None:
    value = obj.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadRequest(f"{name!r} must be an integer", code="invalid_field")
    return value


def _object(value: Any, name: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise BadRequest(f"{name!r} must be an object", code="invalid_field")
    return value


def parse_join_request_untrusted(data: bytes) -> JoinRequest:
    """Parse a ``POST /v1/join`` body.

    ``attestation.scope`` and ``attestation.expiry`` are type-checked and then
    ignored: the signed token's claims are authoritative.

    Args:
        data: the raw body.

    Returns:
        The request.

    Raises:
        BadRequest: ``malformed_json``, ``missing_field``, ``invalid_field`` or
            ``invalid_media``.
    """
    body = parse_json_object_untrusted(data)
    ignored: list[str] = []
    _note_unknown(body, _JOIN_FIELDS, "", ignored)
    agent_id = _required_id(body, "agent_id")
    room_id = _required_id(body, "room_id")

    if body.get("attestation") is None:
        raise BadRequest("'attestation' is required", code="missing_field")
    attestation = _object(body["attestation"], "attestation")
    _note_unknown(attestation, _ATTESTATION_FIELDS, "attestation.", ignored)
    token = attestation.get("token")
    if token is None:
        raise BadRequest("'attestation.token' is required", code="missing_field")
    if not isinstance(token, str):
        raise BadRequest("'attestation.token' must be a string", code="invalid_field")
    scope = attestation.get("scope")
    if scope is not None and not (
        isinstance(scope, str) or (isinstance(scope, list) and all(isinstance(s, str) for s in scope))
    ):
        raise BadRequest("'attestation.scope' must be a string or an array of strings", code="invalid_field")
    expiry = attestation.get("expiry")
    if expiry is not None and (isinstance(expiry, bool) or not isinstance(expiry, (int, float))):
        raise BadRequest("'attestation.expiry' must be a number", code="invalid_field")

    capabilities = Capabilities()
    if body.get("capabilities") is not None:
        raw_caps = _object(body["capabilities"], "capabilities")
        _note_unknown(raw_caps, _CAPABILITY_FIELDS, "capabilities.", ignored)
        flags = {}
        for name in _CAPABILITY_FIELDS:
            if name in raw_caps:
                if not isinstance(raw_caps[name], bool):
                    raise BadRequest(f"'capabilities.{name}' must be a boolean", code="invalid_field")
                flags[name] = raw_caps[name]
        capabilities = Capabilities(**flags)

    media = MediaSpec()
    if body.get("media") is not None:
        raw_media = _object(body["media"], "media")
        _note_unknown(raw_media, _MEDIA_FIELDS, "media.", ignored)
        transport = raw_media.get("transport", "udp")
        encoding = raw_media.get("encoding", "opus")
        if transport not in _BOT_TRANSPORTS:
            raise BadRequest(f"'media.transport' must be one of {_BOT_TRANSPORTS}", code="invalid_media")
        if not isinstance(encoding, str):
            raise BadRequest("'media.encoding' must be a string", code="invalid_media")
        rates = {name: _media_rate(raw_media, name) for name in ("sample_rate", "send_sample_rate", "receive_sample_rate")}
        receive = raw_media.get("receive", "separate")
        if not isinstance(receive, str):
            raise BadRequest("'media.receive' must be a string", code="invalid_media")
        delivery = raw_media.get("delivery", "arrival")
        if not isinstance(delivery, str):
            raise BadRequest("'media.delivery' must be a string", code="invalid_media")
        media = MediaSpec(
            transport=transport,
            encoding=encoding,
            sample_rate=OPUS_CLOCK_RATE if rates["sample_rate"] is None else rates["sample_rate"],
            send_sample_rate=rates["send_sample_rate"],
            receive_sample_rate=rates["receive_sample_rate"],
            receive=receive,
            delivery=delivery,
        )

    return JoinRequest(
        agent_id=agent_id, room_id=room_id, token=token, capabilities=capabilities, media=media, ignored_fields=tuple(ignored)
    )


def _media_rate(media: dict[str, Any], name: str) -> int | None:
    """A sample rate member of ``media`` (None if absent); MediaSpec checks its value.

    Raises:
        BadRequest: ``invalid_media``: not an integer.
    """
    value = media.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadRequest(f"'media.{name}' must be an integer", code="invalid_media")
    return value


def parse_create_request_untrusted(data: bytes) -> CreateRoomRequest:
    """Parse a ``POST /v1/rooms/create`` body (empty means all defaults).

    Ranges are checked by the registry, which knows the configured limits.

    Raises:
        BadRequest: ``malformed_json`` or ``invalid_field``.
    """
    body = parse_json_object_untrusted(data, allow_empty=True)
    ignored: list[str] = []
    _note_unknown(body, _CREATE_FIELDS, "", ignored)
    interruption = None
    raw = body.get("interruption")
    if raw is not None:
        if not isinstance(raw, dict):
            raise BadRequest("'interruption' must be an object", code="invalid_field")
        _note_unknown(raw, _INTERRUPTION_FIELDS, "interruption.", ignored)
        mode = raw.get("mode", "auto")
        if not isinstance(mode, str):
            raise BadRequest("'interruption.mode' must be a string", code="invalid_field")
        min_speech_ms = _optional_int(raw, "min_speech_ms")
        interruption = Interruption(mode, 200 if min_speech_ms is None else min_speech_ms)
    return CreateRoomRequest(
        max_human_participants=_optional_int(body, "max_human_participants"),
        expires_in=_optional_int(body, "expires_in"),
        interruption=interruption,
        ignored_fields=tuple(ignored),
    )


def with_warnings(payload: dict[str, Any], ignored_fields: tuple[str, ...]) -> dict[str, Any]:
    """``payload`` with a ``warnings`` list naming the ignored request members, if any
    (docs/protocol.md, "Forward compatibility")."""
    if not ignored_fields:
        return payload
    warnings = [
        {"code": "unknown_field", "field": name, "message": f"{name!r} is not a member this server knows; it was ignored"}
        for name in ignored_fields
    ]
    return {**payload, "warnings": warnings}


def _log_ignored(route: str, ignored_fields: tuple[str, ...]) -> None:
    if ignored_fields:
        log.info("%s: ignored unknown member(s) %s (a newer client?)", route, ", ".join(ignored_fields))


# --- state -------------------------------------------------------------------------------------


@dataclass(eq=False)
class AppState:
    """Everything the routes read. One per server.

    Attributes:
        config: the server configuration.
        registry: rooms and sessions.
        keyring: trusted issuers' keys.
        verifier: attestation verification and replay cache.
        limiters: the token buckets.
        metrics: Prometheus collectors.
        base_url: public base URL (``http(s)://host:port``), no trailing slash.
        media_host: UDP host advertised in join responses.
        media_port: UDP port advertised in join responses (the relay sets the bound one).
        clock: returns Unix time; tests replace it with a fake clock.
        dev_issuer: the local development issuer, when enabled.
        media: the media service (relay, browser legs), set by ``run_server``.
        hub: the WebSocket hub (who is connected, what they are told).
        shared_limits: with ``--redis``, the per-agent create and join buckets every
            node shares (instead of this process's own).
        room_journal: the rooms kept on disk across a restart (a single server;
            ``room_journal.py``), or ``None``.
    """

    config: Config
    registry: RoomStore
    keyring: KeyRing
    verifier: AttestationVerifier
    limiters: Limiters
    metrics: Metrics
    base_url: str
    media_host: str
    media_port: int
    clock: Callable[[], float]
    dev_issuer: DevIssuer | None = None
    media: MediaService | None = None
    hub: Hub | None = None
    jwks_lock: trio.Lock = field(default_factory=trio.Lock)
    # Config.trusted_proxies, parsed once.
    trusted_proxies: tuple[Network, ...] = ()
    # Set when graceful shutdown begins: /readyz answers 503 from then on.
    draining: bool = False
    shared_limits: SharedBuckets | None = None
    room_journal: RoomJournal | None = None

    def not_ready(self) -> tuple[str, str] | None:
        """Why this server should get no new rooms now (a machine code and a
        message), or ``None`` when it is ready: started, not draining, under
        its room and session budgets."""
        if self.draining:
            return "draining", "the server is shutting down"
        if self.media is None or self.hub is None:
            return "not_started", "the media relay is not started"
        if self.registry.live_rooms >= self.config.max_rooms_total:
            return "server_full", f"the server holds its maximum of {self.config.max_rooms_total} rooms"
        if self.registry.live_sessions >= self.config.max_sessions_total:
            return "server_full", f"the server holds its maximum of {self.config.max_sessions_total} sessions"
        return None

    @property
    def websocket_base(self) -> str:
        """``ws://host:port`` (or ``wss://``) matching ``base_url``."""
        if self.base_url.startswith("https://"):
            return "wss://" + self.base_url[len("https://"):]
        return "ws://" + self.base_url[len("http://"):]

    def started_media(self) -> MediaService:
        """``media``, which ``run_server`` sets before any request is served.

        Raises:
            RuntimeError: the media service has not been started.
        """
        if self.media is None:
            raise RuntimeError("the media service is not started")
        return self.media

    def started_hub(self) -> Hub:
        """``hub``, which ``run_server`` sets before any request is served.

        Raises:
            RuntimeError: the WebSocket hub has not been started.
        """
        if self.hub is None:
            raise RuntimeError("the WebSocket hub is not started")
        return self.hub


async def fetch_issuer_keys(state: AppState, issuer: str) -> None:
    """Download ``issuer``'s JWKS now (caller holds ``state.jwks_lock``). Failures are logged;
    the previous keys stay in place."""
    url = state.keyring.url_of(issuer)
    if url is None:
        return
    timeout = state.config.jwks_fetch_timeout_s
    state.keyring.fetch_started(issuer, state.clock())
    try:
        with trio.fail_after(timeout + 1.0):
            data = await trio.to_thread.run_sync(
                partial(download_jwks, url, timeout=timeout, max_bytes=state.config.jwks_max_bytes),
                abandon_on_cancel=True,
            )
        state.keyring.install_fetched(issuer, data, state.clock())
        log.info("fetched JWKS of %r from %s: kids %s", issuer, url, sorted(state.keyring.kids(issuer)))
    except (JwksError, trio.TooSlowError) as exc:
        log.warning("JWKS of %r from %s not updated: %s", issuer, url, exc or "timed out")


async def refresh_after_unknown_kid(state: AppState, issuer: str) -> None:
    """React to a token naming a kid ``issuer`` has not published: re-read a file
    source, or refetch a URL source unless it was fetched within the last minute."""
    if state.keyring.url_of(issuer) is None:
        for problem in state.keyring.reload_files():
            log.warning("%s", problem)
        return
    async with state.jwks_lock:
        if state.keyring.fetch_allowed(issuer, state.clock()):
            await fetch_issuer_keys(state, issuer)


async def verify_attestation(state: AppState, token: Any) -> Attestation:
    """Verify ``token``, refreshing the issuer's keys once if it names an unknown kid.

    Raises:
        AttestationError: see ``AttestationVerifier.verify_untrusted``.
    """
    try:
        return state.verifier.verify_untrusted(token, now=state.clock())
    except UnknownSigningKey as exc:
        await refresh_after_unknown_kid(state, exc.issuer)
    return state.verifier.verify_untrusted(token, now=state.clock())


# --- responses ------------------------------------------------------------------------------


async def charge_agent(state: AppState, what: str, attestation: Attestation, now: float) -> None:
    """Charge one room creation (``what="create"``) or join to the attestation's agent:
    in the cluster's shared bucket with ``--redis``, else in this process's.

    Raises:
        RateLimited: the agent's bucket is empty.
        ServiceUnavailable: ``cluster_unavailable``: the shared buckets cannot be reached.
    """
    agent = (attestation.issuer, attestation.agent_id)
    if state.shared_limits is None:
        (state.limiters.check_create if what == "create" else state.limiters.check_join)(agent=agent, now=now)
        return
    limit = state.config.create_limit_per_agent if what == "create" else state.config.join_limit_per_agent
    wait = await state.shared_limits.take(f"{what}_per_agent", f"{attestation.issuer}\0{attestation.agent_id}", limit)
    if wait > 0:
        noun = "room creations" if what == "create" else "joins"
        raise RateLimited(f"too many {noun} by this agent (across the cluster); retry in {math.ceil(wait)} s", retry_after=wait)


def _json(payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(
        json.dumps(payload, separators=(",", ":")),
        status=status,
        content_type="application/json",
        headers=headers,
    )


def _room_json(state: AppState, room: Room) -> dict[str, Any]:
    return {
        "room_id": room.room_id,
        "state": str(room.state),
        "owner": room.owner,
        "created_by": room.created_by,
        **timestamp_fields("created_at", room.created_at, legacy="iso"),
        **timestamp_fields("expires_at", room.expires_at, legacy="iso"),
        "max_human_participants": room.max_human_participants,
        "max_bot_participants": room.max_bot_participants,
        "interruption": room.interruption.to_json(),
        "participants": [s.public_json() for s in state.registry.sessions_in_room(room.room_id)],
    }


def join_response(state: AppState, session: Session) -> dict[str, Any]:
    """The ``POST /v1/join`` response body for a new bot session."""
    media: dict[str, Any]
    if session.transport == "udp":
        media = {
            "transport": "udp",
            "host": state.media_host,
            "port": state.media_port,
            "ssrc": session.ssrc,
            "payload_type": PAYLOAD_TYPE_OPUS,
            "clock_rate": OPUS_CLOCK_RATE,
            "ice_ufrag": session.ice_ufrag,
            "ice_pwd": session.ice_pwd,
        }
    else:
        media = {
            "transport": "websocket",
            "encoding": session.encoding,
            "sample_rate": session.sample_rate,
            "send_sample_rate": session.send_sample_rate,
            "receive_sample_rate": session.receive_sample_rate,
            "ssrc": session.ssrc,
            "payload_type": PAYLOAD_TYPE_OPUS,
            "clock_rate": OPUS_CLOCK_RATE,
        }
    media["receive"] = session.receive
    if session.transport == "websocket":
        media["delivery"] = session.delivery
    if session.mix_ssrc is not None:
        media["mix_ssrc"] = session.mix_ssrc
    return {
        "session_id": session.session_id,
        "participant_id": session.participant_id,
        "room_id": session.room_id,
        "websocket_url": f"{state.websocket_base}/v1/stream/{session.session_id}",
        "media": media,
        # ICE-lite on a reachable address: bots send to media.host/port directly and
        # browsers get the host candidate in the SDP answer; TURN (when configured)
        # is for clients whose network blocks the direct path.
        "ice_servers": session_ice_servers(state.config, session),
        **timestamp_fields("expires_at", session.expires_at, legacy="iso"),
    }


def _bearer_token() -> str:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AttestationError(
            "send the attestation as 'Authorization: Bearer <token>'",
            code="attestation_missing",
            headers={"WWW-Authenticate": 'Bearer realm="botcall"'},
        )
    return token.strip()


def _client_ip(state: AppState) -> str:
    return client_address(request.remote_addr, request.headers, state.trusted_proxies)


# --- the app -----------------------------------------------------------------------------------


def create_app(state: AppState) -> QuartTrio:
    """Build the quart-trio app serving the HTTP API over ``state``.

    Routes: ``POST /v1/rooms/create`` (alias ``POST /v1/rooms``), ``GET`` and
    ``DELETE /v1/rooms/<room_id>``, ``POST /v1/join``, ``GET /healthz``,
    ``GET /readyz``, ``GET /v1/version``, ``GET /metrics``, and the published contract
    ``GET /v1/openapi.json`` and ``GET /v1/websocket-schema.json``. See docs/protocol.md.
    """
    app = QuartTrio("botcall")
    app.config["MAX_CONTENT_LENGTH"] = state.config.max_body_bytes
    # A body must arrive whole within this long (408 request_timeout otherwise).
    app.config["BODY_TIMEOUT"] = state.config.body_timeout_s
    app.extensions["botcall"] = state

    async def body() -> bytes:
        return await request.get_data(cache=False, as_text=False, parse_form_data=False)

    @app.post("/v1/rooms/create")
    @app.post("/v1/rooms")
    async def create_room() -> Response:
        state.limiters.check_create(ip=_client_ip(state), now=state.clock())
        token = _bearer_token()
        parsed = parse_create_request_untrusted(await body())
        attestation = await verify_attestation(state, token)
        now = state.clock()
        await charge_agent(state, "create", attestation, now)
        attestation.require_scope(SCOPE_CREATE)
        room = state.registry.create_room(
            owner=attestation.controller,
            created_by=attestation.agent_id,
            now=now,
            expires_in=parsed.expires_in,
            max_human_participants=parsed.max_human_participants,
            interruption=parsed.interruption,
        )
        state.metrics.rooms_created.inc()
        log.info("room %s created by %s for %s", room.room_id, attestation.agent_id, room.owner, extra={"room": room.room_id})
        _log_ignored("POST /v1/rooms/create", parsed.ignored_fields)
        created = {
            "room_id": room.room_id,
            "invite_url": invite_url(state.base_url, room.room_id, room.invite_secret),
            "expires_in": round(room.expires_at - room.created_at),
            **timestamp_fields("expires_at", room.expires_at, legacy="iso"),
            "max_human_participants": room.max_human_participants,
            "max_bot_participants": room.max_bot_participants,
            "interruption": room.interruption.to_json(),
        }
        return _json(with_warnings(created, parsed.ignored_fields), status=201)

    async def _owned_room(room_id: str) -> Room:
        state.limiters.check_query(ip=_client_ip(state), now=state.clock())
        attestation = await verify_attestation(state, _bearer_token())
        attestation.require_room(room_id)
        room = state.registry.get_room(room_id, state.clock())
        if attestation.controller != room.owner:
            raise Forbidden("the attestation's controller does not own this room", code="controller_mismatch")
        return room

    @app.get("/v1/rooms/<room_id>")
    async def get_room(room_id: str) -> Response:
        room = await _owned_room(room_id)
        return _json(_room_json(state, room))

    @app.delete("/v1/rooms/<room_id>")
    async def delete_room(room_id: str) -> Response:
        room = await _owned_room(room_id)
        closed = state.registry.close_room(room.room_id, "deleted", now=state.clock())
        log.info("room %s deleted", room.room_id, extra={"room": room.room_id})
        payload = _room_json(state, closed if closed is not None else room)
        return _json(payload)

    @app.post("/v1/join")
    async def join() -> Response:
        started = time.perf_counter()
        try:
            response = await join_bot()
        except Exception:
            state.metrics.join_seconds.labels(outcome="refused").observe(time.perf_counter() - started)
            raise
        state.metrics.join_seconds.labels(outcome="joined").observe(time.perf_counter() - started)
        return response

    async def join_bot() -> Response:
        state.limiters.check_join(ip=_client_ip(state), now=state.clock())
        parsed = parse_join_request_untrusted(await body())
        attestation = await verify_attestation(state, parsed.token)
        now = state.clock()
        state.verifier.check_not_replayed(attestation, now)
        await charge_agent(state, "join", attestation, now)
        attestation.require_agent(parsed.agent_id)
        attestation.require_scope(SCOPE_VOICE)
        attestation.require_room(parsed.room_id)
        if attestation.expires_at - now < 1.0:
            raise AttestationError("the attestation expires before a session could start", code="attestation_expired")
        session = state.registry.join_bot(
            parsed.room_id,
            identity=Identity.bot(
                agent_id=attestation.agent_id,
                controller=attestation.controller,
                issuer=attestation.issuer,
                scopes=attestation.scopes,
            ),
            media=parsed.media,
            capabilities=parsed.capabilities,
            not_after=attestation.expires_at,
            now=now,
        )
        state.verifier.mark_used(attestation)
        state.metrics.joins.labels(kind="bot", transport=session.transport).inc()
        log.info(
            "%s joined room %s as %s", attestation.agent_id, session.room_id, session.participant_id,
            extra={"room": session.room_id, "session": session.participant_id},
        )
        _log_ignored("POST /v1/join", parsed.ignored_fields)
        return _json(with_warnings(join_response(state, session), parsed.ignored_fields))

    @app.get("/healthz")
    async def healthz() -> Response:
        return _json(
            {
                "status": "ok",
                "rooms": state.registry.live_rooms,
                "sessions": state.registry.live_sessions,
            }
        )

    @app.get("/readyz")
    async def readyz() -> Response:
        # Not an ApiError: a probe polling a draining server is not a rejection to count.
        problem = state.not_ready()
        if problem is not None:
            code, message = problem
            return _json({"error": {"code": code, "message": message}}, status=503)
        return _json({"status": "ready"})

    @app.get("/v1/version")
    async def version() -> Response:
        return _json({"name": "botcall", "version": __version__})

    # The published contract (botcall/signaling/api_schema.py), built once.
    openapi = json.dumps(api_schema.openapi_document(), separators=(",", ":"))
    ws_schema = json.dumps(api_schema.websocket_schema(), separators=(",", ":"))

    @app.get(api_schema.OPENAPI_PATH)
    async def openapi_json() -> Response:
        return Response(openapi, status=200, content_type="application/json")

    @app.get(api_schema.WEBSOCKET_SCHEMA_PATH)
    async def websocket_schema_json() -> Response:
        return Response(ws_schema, status=200, content_type="application/json")

    @app.get("/metrics")
    async def metrics() -> Response:
        payload, content_type = state.metrics.render()
        return Response(payload, status=200, content_type=content_type)

    @app.errorhandler(ApiError)
    async def api_error(error: ApiError) -> Response:
        state.metrics.rejections.labels(code=error.code).inc()
        return _json(error.to_json(), status=error.status, headers=error.headers)

    @app.errorhandler(HTTPException)
    async def http_error(error: HTTPException) -> Response:
        status = error.code or 500
        body = http_error_json(status, error.description or error.name)
        state.metrics.rejections.labels(code=body["error"]["code"]).inc()
        headers = {k: v for k, v in error.get_headers() if k.lower() != "content-type"}
        return _json(body, status=status, headers=headers)

    @app.errorhandler(Exception)
    async def unexpected_error(error: Exception) -> Response:
        log.exception("unhandled error in %s %s", request.method, request.path, exc_info=error)
        state.metrics.rejections.labels(code="internal_error").inc()
        return _json({"error": {"code": "internal_error", "message": "internal server error"}}, status=500)

    # The WebSocket channels and the PWA share the HTTP port.
    register_websocket_routes(app, state)
    register_human_signaling(app, state)
    register_pwa_routes(app, state)
    return app
