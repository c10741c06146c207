"""``botcall serve``: the one ``trio.run`` and its top nursery.

``run_server`` binds the HTTP socket itself (so port 0 works and the bound
port is known before any request) and runs three separately supervised parts
beside each other:

* the media relay: the UDP transport and its ``MediaRelay`` (``AppState.media``);
* the HTTP/WebSocket server (``signaling/serving.py``): our accept loop with
  connection budgets around Hypercorn, serving the quart-trio app;
* housekeeping: expiring rooms and sessions, compacting the replay and rooms journals,
  re-reading JWKS files, refreshing JWKS URLs.

A part that raises is logged once with its cause and restarted after a short
back-off; the others do not notice (calls keep their media while the HTTP side
restarts). A part that fails before it has started ends the server: that is a
configuration problem, reported as one line by the command line.

Graceful shutdown (SIGTERM/SIGINT, or ``shutdown.set()`` for an embedder):
stop accepting, close every room with reason ``server_shutdown`` (every
WebSocket hears ``room_closed`` and closes with 1001), wait up to
``Config.shutdown_grace_s`` for the sockets to close, then return. The rooms
journal (``<data_dir>/rooms.jsonl``, ``signaling/room_journal.py``) records
those closes, so a restart after a drain holds no room; after a crash or
``kill -9`` it holds every unexpired room again (same id, owner, expiry and
invite link; participants join again).
"""

from __future__ import annotations

import argparse
import errno
import ipaddress
import logging
import os
import signal
import socket
import ssl
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import trio

from botcall.auth.attestation import AttestationVerifier, ReplayCache
from botcall.auth.keys import KeyRing, ensure_dev_issuer
from botcall.auth.ratelimit import Limiters, SharedBuckets
from botcall.auth.replay_journal import ReplayJournal
from botcall.config import Config
from botcall.errors import ConfigError, JwksError, StartupError
from botcall import settings
from botcall.logs import human_formatter, install_redaction, json_formatter
from botcall.metrics import Metrics
from botcall.relay.addresses import announced_hosts, bot_media_host, check_announced, is_wildcard, local_addresses
from botcall.relay.service import MediaService
from botcall.webrtc.dtls.certificate import DtlsCertificate
from botcall.relay.bot_playout import MarkReached
from botcall.audio.vad import SpeechStarted, SpeechStopped
from botcall.relay import speech
from botcall.relay.core import Address, Interrupted, MediaEvent, MediaPeer, MediaRelay, StreamStarted
from botcall.relay.transport import UdpTransport, open_udp_socket
from botcall.signaling import tls
from botcall.signaling.http_api import AppState, create_app, fetch_issuer_keys
from botcall.signaling.media_link import media_listener
from botcall.signaling.messages import cleared_event, playout_full_event, room_media_event
from botcall.signaling.room_journal import RoomJournal, journal_listener, restore_into
from botcall.signaling.rooms import Reason, RegistryEvent, RoomClosed, RoomRegistry, SessionRemoved
from botcall.signaling.serving import (
    ConnectionBudget,
    HttpServer,
    connection_ceiling,
    hypercorn_config,
    raise_open_file_limit,
)
from botcall.signaling.turn import TurnRelays
from botcall.signaling.ws import DISCONNECTED, Hub

log = logging.getLogger("botcall")


@dataclass(frozen=True)
class ServerInfo:
    """What ``run_server`` reports once it is accepting connections.

    Attributes:
        http_url: where the HTTP socket is bound (``http://127.0.0.1:54321``; ``https://`` with TLS).
        http_port: the bound port.
        base_url: the public base URL used in invite and WebSocket URLs.
        state: the app state (tests replace ``state.clock``).
    """

    http_url: str
    http_port: int
    base_url: str
    state: AppState
    parts: "Parts"


def build_state(
    config: Config,
    *,
    base_url: str,
    clock: Callable[[], float] = time.time,
    persist_replay: bool = True,
    persist_rooms: bool = True,
) -> AppState:
    """Create the registry, key ring, verifier, limiters and metrics for ``config``.

    With the dev issuer on, its key and JWKS are created in ``config.data_dir``
    on first use and trusted as ``config.dev_issuer_name``.

    Args:
        config: the configuration.
        base_url: the public base URL (see ``Config.base_url``).
        clock: returns Unix time.
        persist_replay: keep the replay cache in ``<data_dir>/replay-cache.jsonl``
            so used tokens stay used across restarts.
        persist_rooms: keep the rooms in ``<data_dir>/rooms.jsonl`` and hold the
            ones found there again (``room_journal.py``): rooms survive a crash
            or ``kill -9`` (a drain closes them, so they do not come back).

    Returns:
        The state the routes read.

    Raises:
        ConfigError: a configured JWKS file cannot be read or parsed.
        OSError: the data directory cannot be written.
    """
    keyring = KeyRing(
        allowed_algorithms=config.algorithms,
        max_keys=config.jwks_max_keys,
        refetch_min_interval=config.jwks_refetch_min_interval_s,
        refresh_interval=config.jwks_refresh_interval_s,
    )
    dev_issuer = None
    if config.dev_issuer_enabled:
        dev_issuer, created = ensure_dev_issuer(config.data_dir, config.dev_issuer_name)
        keyring.add_file(config.dev_issuer_name, dev_issuer.jwks_path)
        log.info(
            "dev issuer %r trusted (%s key %s); mint attestations with `botcall token --agent ID --controller ID`",
            dev_issuer.issuer,
            "created" if created else "existing",
            dev_issuer.key_path,
        )
        if not _is_loopback(config.http_host):
            log.warning(
                "WARNING: the local dev issuer is trusted on %s, which is not a loopback address: anyone who "
                "can reach this machine's data directory key can mint tokens for any controller. Configure "
                "--issuer/--jwks for production (the dev issuer is then off unless --dev-issuer is given).",
                config.http_host,
            )
    for issuer in config.issuers:
        if issuer.jwks_is_url:
            keyring.add_url(issuer.issuer, issuer.jwks)
        else:
            keyring.add_file(issuer.issuer, Path(issuer.jwks).expanduser())
    problems = keyring.reload_files()
    if problems:
        raise ConfigError("; ".join(problems))

    registry = RoomRegistry(config)
    journal = ReplayJournal.in_dir(config.data_dir) if persist_replay else None
    verifier = AttestationVerifier(
        keyring=keyring,
        audience=config.audience,
        algorithms=config.algorithms,
        leeway=config.leeway_s,
        max_lifetime=config.max_token_lifetime_s,
        max_token_bytes=config.max_token_bytes,
        replay_cache=ReplayCache(config.replay_cache_max, journal=journal),
    )
    if journal is not None:
        verifier.replay_cache.restore(journal.load(clock()))
    metrics = Metrics(live_rooms=lambda: registry.live_rooms, live_sessions=lambda: registry.live_sessions)

    def count_closed(event: RegistryEvent) -> None:
        if isinstance(event, RoomClosed):
            metrics.rooms_closed.labels(reason=event.reason).inc()

    registry.add_listener(count_closed)
    room_journal = None
    if persist_rooms:
        room_journal = RoomJournal.open_in_dir(
            config.data_dir, max_rooms=config.max_rooms_total,
            max_closed=config.closed_rooms_remembered, closed_for=config.closed_rooms_remembered_s,
        )
    if room_journal is not None:
        restore_into(registry, room_journal, clock())
        registry.add_listener(journal_listener(room_journal, clock))
    return AppState(
        config=config,
        registry=registry,
        keyring=keyring,
        verifier=verifier,
        limiters=Limiters.from_config(config),
        metrics=metrics,
        base_url=base_url,
        media_host=config.advertised_media_host,
        media_port=config.media_port,
        clock=clock,
        dev_issuer=dev_issuer,
        trusted_proxies=config.trusted_proxy_networks,
        room_journal=room_journal,
    )


def housekeep(state: AppState) -> tuple[list[RegistryEvent], list[str]]:
    """One housekeeping pass at ``state.clock()``: expire rooms and sessions, prune the
    replay cache and rate-limit tables, re-read changed JWKS files.

    Returns:
        The registry events emitted and any JWKS file problems.
    """
    now = state.clock()
    events = state.registry.expire(now)
    if state.hub is not None:
        # Sessions whose WebSocket never came, or went and did not come back.
        for session_id in state.hub.expired(now):
            removed = state.registry.leave(session_id, DISCONNECTED, now=now)
            if removed is not None:
                events.append(SessionRemoved(removed, DISCONNECTED))
    cache = state.verifier.replay_cache
    cache.prune(now)
    journal = cache.journal
    if isinstance(journal, ReplayJournal) and journal.needs_compaction(len(cache)):
        journal.compact(cache.entries())
    if state.room_journal is not None:
        state.room_journal.prune(now)
        if state.room_journal.needs_compaction():
            state.room_journal.compact()
    state.limiters.prune(now)
    return events, state.keyring.reload_files()


async def _housekeeping_loop(state: AppState, interval: float) -> None:
    reported: list[str] = []
    while True:
        _, problems = housekeep(state)
        if problems != reported:
            for problem in problems:
                log.warning("%s", problem)
            reported = problems
        await trio.sleep(interval)


async def refresh_stale_keys(state: AppState) -> None:
    """Fetch every JWKS URL never fetched or older than ``jwks_refresh_interval_s``, so a key
    removed upstream stops being trusted even when no token names an unknown kid."""
    for issuer in state.keyring.refresh_due(state.clock()):
        async with state.jwks_lock:
            if issuer in state.keyring.refresh_due(state.clock()):
                await fetch_issuer_keys(state, issuer)


async def _jwks_refresh_loop(state: AppState, interval: float) -> None:
    while True:
        await refresh_stale_keys(state)
        await trio.sleep(interval)


def _bind_http(host: str, port: int) -> socket.socket:
    """Bind the HTTP socket.

    Raises:
        StartupError: the address cannot be bound (in use, not local, not allowed).
    """
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise StartupError(f"cannot resolve the HTTP host {host!r} ({exc.strerror}); change it with --host") from None
    family, _, _, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise StartupError(_bind_problem("HTTP", host, port, exc, "--port (make run PORT=...)")) from None
    return sock


def _bind_problem(what: str, host: str, port: int, exc: OSError, flag: str, host_flag: str = "--host") -> str:
    if exc.errno == errno.EADDRINUSE:
        return f"{what} port {port} on {host} is already in use; choose another with {flag}"
    if exc.errno == errno.EACCES:
        return f"{what} port {port} on {host} needs privileges this process lacks; choose another with {flag}"
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"{what} address {host} is not an address of this machine; change it ({host_flag})"
    return f"cannot bind the {what} socket to {host} port {port}: {exc.strerror or exc}; see {flag}"


def _is_loopback(host: str) -> bool:
    if host in ("localhost", ""):
        return host == "localhost"
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def media_hosts(config: Config) -> tuple[tuple[str, ...], str]:
    """The media addresses to announce to browsers (best first) and the one bots get.

    Returns:
        ``(announced IP literals, host for join responses)``.

    Raises:
        StartupError: a configured address does not resolve, is neither this
            machine's nor public, or there is nothing to announce.
    """
    configured = config.media_advertised_hosts
    literals = [_ip_literal(host, "--media-advertised-host") for host in configured]
    check_announced(list(zip(configured, literals)))
    bind = config.media_host if is_wildcard(config.media_host) else _ip_literal(config.media_host, "--media-host")
    local = local_addresses() if is_wildcard(bind) and not literals else []
    announced = announced_hosts(bind, literals, local)
    if not announced:
        raise StartupError(f"no address of this machine to announce for media on {bind}; give one with --media-advertised-host")
    if configured:
        # Bots may be told a name (a dynamic DNS name for a NAT); browsers need the literal.
        return announced, configured[0]
    return announced, bot_media_host(announced, http_is_loopback=_is_loopback(config.http_host))


def attach_media(state: AppState, udp: UdpTransport, announced: Sequence[str] | None = None) -> None:
    """Create the relay, the media service and the WebSocket hub on ``state``, and
    subscribe them to the registry.

    Args:
        state: the app state; ``media``, ``hub`` and ``media_port`` are set.
        udp: the bound media transport (its port is what joins advertise).
        announced: the media addresses for browsers' SDP answers, best first
            (``media_hosts``); default: ``state.media_host`` alone.
    """
    config = state.config

    def speaking(peer: MediaPeer, is_speaking: bool) -> None:
        hub.broadcast(peer.room_id, {"type": "speaking", "participant_id": peer.participant_id, "speaking": is_speaking})

    def media_event(peer: MediaPeer, event: MediaEvent) -> None:
        if isinstance(event, (StreamStarted, SpeechStarted, SpeechStopped)):
            hub.broadcast(peer.room_id, room_media_event(peer.participant_id, peer.ssrc, event))
            return
        # A bot's own playout events: kept in its event log even while its
        # WebSocket is down, and replayed when it resumes.
        if isinstance(event, MarkReached):
            hub.send(peer.session_id, {"type": "mark", "name": event.name, "played_ms": event.played_ms})
        elif isinstance(event, Interrupted):
            cleared = event.cleared
            hub.send(
                peer.session_id,
                cleared_event("interrupted", cleared.played_ms, cleared.dropped_ms, cleared.marks_dropped, event.heard, by=event.by),
            )
        else:
            hub.send(peer.session_id, playout_full_event(event.ahead_ms, event.max_ahead_ms))

    def is_speaking(session_id: str) -> bool:
        peer = relay.peer(session_id)
        return peer is not None and peer.speaking

    if config.speech_max_decoders:
        speech.warm_up()  # the detector's model loads now, not on the first packet
    # Callbacks go to the constructors (the relay and the hub each name the
    # other's through these closures, bound before any packet arrives).
    relay = MediaRelay(
        udp.transmit,
        consent_timeout=config.media_consent_timeout_s,
        max_peers=config.max_sessions_total,
        max_handshakes=config.max_dtls_handshakes,
        max_packets_per_second=config.media_max_packets_per_second,
        on_speaking=speaking,
        max_speech_decoders=config.speech_max_decoders,
        on_event=media_event,
        wake=udp.wake,
        speech_detection=config.speech_detection,
    )
    state.media_port = udp.local_address[1]
    state.media = MediaService(
        relay,
        udp.transmit,
        certificate=DtlsCertificate.generate(),
        hosts=tuple(announced) if announced else (_ip_literal(state.media_host, "--media-advertised-host"),),
        port=state.media_port,
        playout_max_ahead=config.playout_max_ahead_s,
        playout_max_marks=config.playout_max_marks,
        bot_playout=config.media_bot_playout,
        max_receive_tracks=config.max_receive_tracks,
        ptime_ms=config.browser_ptime_ms,
    )
    hub = state.hub = Hub(
        state.clock,
        is_speaking=is_speaking,
        max_connections=config.max_sessions_total,
        connect_grace=config.ws_connect_grace_s,
        max_per_ip=config.max_websockets_per_ip,
        max_lobby_per_room=config.max_lobby_sockets_per_room,
        replay_max_events=config.ws_replay_max_events,
    )
    state.registry.add_listener(media_listener(state.media))
    state.registry.add_listener(hub.on_registry_event)
    state.metrics.attach_media(relay, udp, TurnRelays.from_uris(config.turn_uris, _turn_host_addresses))
    state.metrics.attach_hub(hub)


def _turn_host_addresses(host: str) -> list[str]:
    """A TURN host's addresses, resolved once at start-up for ``botcall_browser_legs{path}``.

    A name that does not resolve here (the TURN server may be named for the
    browsers only) is logged and left out: its legs count as ``direct``.
    """
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_DGRAM)
    except OSError as exc:
        log.warning("TURN host %r does not resolve here (%s): its legs count as direct in /metrics", host, exc)
        return []
    return [str(info[4][0]) for info in infos]


def _ip_literal(host: str, flag: str) -> str:
    """SDP candidates need an address, not a name: resolve once at start-up.

    Raises:
        StartupError: the name does not resolve (the message names it and ``flag``).
    """
    try:
        info = socket.getaddrinfo(host, None, type=socket.SOCK_DGRAM)
    except OSError as exc:
        raise StartupError(f"media address {host!r} does not resolve ({exc}); change {flag}") from None
    # An IP socket address starts with the host string (typeshed also allows int for other families).
    return str(info[0][4][0])


# --- TLS -------------------------------------------------------------------------------------


def tls_names(config: Config) -> list[str]:
    """What a development certificate must cover: localhost, this machine's name, the
    HTTP bind address (every local address when it is a wildcard, so a phone on the
    LAN can open the link) and the public URL's host."""
    names = ["localhost", socket.gethostname(), "127.0.0.1", "::1"]
    if is_wildcard(config.http_host):
        names += [address for address in local_addresses() if not ipaddress.ip_address(address).is_link_local]
    else:
        names.append(config.http_host)
    if config.public_url is not None:
        names.append(urlsplit(config.public_url).hostname or "")
    return [name for name in dict.fromkeys(names) if name]


def server_tls(config: Config, *, base_url: str) -> ssl.SSLContext | None:
    """The HTTP port's TLS context, or None for plain HTTP. With ``tls_self_signed`` the
    development certificate is made or reused, and how to trust it is logged.

    Raises:
        ConfigError: a certificate or key cannot be used.
        StartupError: the data directory cannot hold the development certificate.
    """
    alpn = ["h2", "http/1.1"] if config.http2 else ["http/1.1"]
    if config.tls_cert is not None and config.tls_key is not None:
        context = tls.server_ssl_context(config.tls_cert.expanduser(), config.tls_key.expanduser(), alpn_protocols=alpn)
        log.info("TLS: serving HTTPS and WSS with %s", config.tls_cert)
        return context
    if not config.tls_self_signed:
        return None
    try:
        dev = tls.ensure_dev_certificate(config.data_dir, tls_names(config))
    except OSError as exc:
        raise StartupError(
            f"cannot write the development certificate to {config.data_dir}: {exc.strerror or exc}; "
            "choose another directory with --data-dir"
        ) from None
    made = {"ca": "made a new development CA and certificate", "certificate": "made a new certificate"}.get(dev.created, "reusing the certificate")
    log.info(
        "TLS: development certificate (%s) %s for %s, valid until %s\n%s\nInvite links start with %s/join/ "
        "(botcall demo --tls-self-signed prints one)",
        made, dev.cert, ", ".join(dev.names), dev.not_after.date().isoformat(), tls.trust_instructions(dev.ca), base_url,
    )
    return tls.server_ssl_context(dev.cert, dev.key, alpn_protocols=alpn)


# --- supervision -----------------------------------------------------------------------------

RESTART_DELAY_MIN = 0.1
RESTART_DELAY_MAX = 5.0


class _StartedOnce(trio.TaskStatus[Any]):
    """A task status that forwards only the first ``started`` (restarts reuse it)."""

    def __init__(self, status: trio.TaskStatus[Any]) -> None:
        self._status = status
        self.done = False

    def started(self, value: Any = None) -> None:
        if not self.done:
            self.done = True
            self._status.started(value)


@dataclass(eq=False)
class Parts:
    """The supervised parts of a running server, and how often each was restarted.

    Attributes:
        http: the HTTP server now running (replaced on restart).
        restarts: restarts by part name (``http``, ``media``, ``housekeeping``…).
        contained: HTTP connections that raised and were closed alone, by type.
    """

    http: HttpServer | None = None
    restarts: Counter[str] = field(default_factory=Counter)
    contained: Counter[str] = field(default_factory=Counter)


async def supervise(
    name: str,
    part: Callable[..., Awaitable[None]],
    parts: Parts,
    *,
    task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run ``part(task_status=...)``, restarting it whenever it raises.

    A failure before the part reported ``started`` is not retried: it
    propagates (a start-up problem such as a configuration error). Later
    failures are logged with their cause and the part is started again after a
    back-off of 0.1 s doubling to 5 s; cancellation is never caught.

    Args:
        name: the part's name in logs and ``parts.restarts``.
        part: the part; it must call ``task_status.started()`` once running.
        parts: where restarts are counted.
    """
    status = _StartedOnce(task_status)
    delay = RESTART_DELAY_MIN
    while True:
        try:
            await part(task_status=status)
            return
        except Exception as exc:
            if not status.done:
                raise
            parts.restarts[name] += 1
            log.error(
                "the %s part failed (%s: %s); restarting it in %.1f s — other parts and calls go on",
                name, type(exc).__name__, exc, delay, exc_info=exc,
            )
        await trio.sleep(delay)
        delay = min(delay * 2, RESTART_DELAY_MAX)


# --- the server -------------------------------------------------------------------------------


async def run_server(
    config: Config,
    *,
    clock: Callable[[], float] = time.time,
    housekeeping_interval: float = 1.0,
    shutdown: trio.Event | None = None,
    persist_replay: bool = True,
    persist_rooms: bool = True,
    shared_limits: SharedBuckets | None = None,
    task_status: trio.TaskStatus[ServerInfo] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until cancelled, or until ``shutdown`` is set (then drain and return).

    Args:
        config: the configuration (``http_port=0`` picks a free port).
        clock: Unix time source for the registry and verifier.
        housekeeping_interval: seconds between housekeeping passes.
        shutdown: set it to shut down gracefully (see the module docstring).
        persist_replay: keep the replay cache in the data directory.
        persist_rooms: keep the rooms in the data directory (``build_state``).
        shared_limits: the cluster's per-agent buckets (a worker of a ``--redis`` node).
        task_status: receives a ``ServerInfo`` once the socket accepts connections.

    Raises:
        StartupError: a socket cannot be bound or the data directory cannot be written.
        ConfigError: see ``build_state``.
    """
    open_files = raise_open_file_limit()
    sock = _bind_http(config.http_host, config.http_port)
    journal: ReplayJournal | None = None
    state: AppState | None = None
    try:
        bound_host, bound_port = sock.getsockname()[:2]
        base_url = config.base_url(bound_port)
        try:
            state = build_state(config, base_url=base_url, clock=clock, persist_replay=persist_replay, persist_rooms=persist_rooms)
            state.shared_limits = shared_limits
        except (OSError, JwksError) as exc:
            where = getattr(exc, "filename", None) or config.data_dir
            raise StartupError(
                f"cannot use the data directory {where}: {getattr(exc, 'strerror', None) or exc}; "
                "choose another with --data-dir (or $BOTCALL_DATA_DIR)"
            ) from None
        ssl_context = server_tls(config, base_url=base_url)
        try:
            udp_sock = open_udp_socket(config.media_host, config.media_port)
        except OSError as exc:
            raise StartupError(_bind_problem("media (UDP)", config.media_host, config.media_port, exc, "--media-port (make run MEDIA_PORT=...)", "--media-host")) from None
        cached = state.verifier.replay_cache.journal
        journal = cached if isinstance(cached, ReplayJournal) else None
        try:
            announced, state.media_host = media_hosts(config)
        except StartupError:
            udp_sock.close()
            raise
        # None: batched where libc has the calls, recvfrom/sendto elsewhere.
        udp = UdpTransport(udp_sock, batched=None if config.media_batched_syscalls else False, fast_path=config.media_fast_path, fast_srtp=config.media_fast_srtp)
        attach_media(state, udp, announced)
        app = create_app(state)
        budget = ConnectionBudget(
            max_total=connection_ceiling(config.max_connections, open_files, config.fd_reserve),
            max_per_ip=config.max_connections_per_ip,
            rate_per_ip=config.connection_rate_per_ip,
            exempt=state.trusted_proxies,
        )
        parts = Parts()
        state.metrics.attach_http(budget, parts)
        host_in_url = f"[{bound_host}]" if ":" in bound_host else bound_host
        http_url = f"{'https' if ssl_context is not None else 'http'}://{host_in_url}:{bound_port}"

        async def http_part(*, task_status: trio.TaskStatus[None]) -> None:
            # A fresh server (and a dup of the listening socket) on every
            # (re)start: the socket itself stays open and bound across restarts.
            server = HttpServer(
                app,
                sock.dup(),
                hypercorn_config(
                    keep_alive_timeout=config.keep_alive_timeout_s,
                    ws_max_message_bytes=config.ws_max_message_bytes,
                    allow_http2=config.http2,
                ),
                budget,
                header_timeout=config.header_timeout_s,
                body_timeout=config.body_timeout_s,
                allow_http2=config.http2,
                contained=parts.contained,
                ssl_context=ssl_context,
            )
            parts.http = server
            await server.run(task_status=task_status)

        async def media_part(*, task_status: trio.TaskStatus[Address]) -> None:
            await udp.run(state.started_media().relay, task_status=task_status)

        async def housekeeping_part(*, task_status: trio.TaskStatus[None]) -> None:
            task_status.started()
            await _housekeeping_loop(state, housekeeping_interval)

        async def jwks_part(*, task_status: trio.TaskStatus[None]) -> None:
            task_status.started()
            await _jwks_refresh_loop(state, housekeeping_interval)

        async with trio.open_nursery() as nursery:
            await nursery.start(supervise, "media", media_part, parts)
            await nursery.start(supervise, "http", http_part, parts)
            await nursery.start(supervise, "housekeeping", housekeeping_part, parts)
            await nursery.start(supervise, "jwks", jwks_part, parts)
            log.info(
                "listening on %s (public URL %s); media advertised at udp %s:%d (browsers: %s)",
                http_url,
                base_url,
                state.media_host,
                state.media_port,
                ", ".join(state.started_media().hosts),
            )
            task_status.started(ServerInfo(http_url=http_url, http_port=bound_port, base_url=base_url, state=state, parts=parts))
            if shutdown is None:
                await trio.sleep_forever()
            await shutdown.wait()
            await drain(state, parts, config.shutdown_grace_s)
            nursery.cancel_scope.cancel()
    finally:
        sock.close()
        if journal is not None:
            journal.close()
        if state is not None and state.room_journal is not None:
            state.room_journal.close()


async def drain(state: AppState, parts: Parts, grace: float) -> None:
    """Graceful shutdown: stop accepting, close every room with ``server_shutdown``
    (each WebSocket hears ``room_closed`` and closes with 1001), and wait up to
    ``grace`` seconds for the sockets to close. ``/readyz`` answers 503 from the start."""
    state.draining = True
    if parts.http is not None:
        await parts.http.stop_accepting()
    now = state.clock()
    rooms = [room.room_id for room in state.registry.rooms()]
    for room_id in rooms:
        state.registry.close_room(room_id, Reason.SHUTDOWN, now=now)
    log.info("shutting down: closed %d room(s); waiting up to %g s for clients to go", len(rooms), grace)
    with trio.move_on_after(grace) as waited:
        await state.started_hub().wait_all_closed()
    if waited.cancelled_caught:
        log.info("shutting down: %d WebSocket(s) still open after %g s; closing them", state.started_hub().connection_count, grace)


# --- the command line ------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``botcall serve`` (``botcall/settings.py``: each overrides the
    environment and ``--config`` file, which override ``Config``'s defaults)."""
    settings.add_flags(parser)


def config_from_args(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> Config:
    """The effective ``Config`` for parsed ``serve`` flags, the environment and ``--config``.

    Args:
        args: from a parser set up by ``add_arguments``.
        environ: the environment (default ``os.environ``).

    Raises:
        ConfigError: one line naming the setting and where it was set.
    """
    return settings.load_from_args(args, os.environ if environ is None else environ).config


async def until_signalled(run: Callable[[trio.Event], Awaitable[None]]) -> None:
    """``run(shutdown)`` until SIGINT or SIGTERM: the first signal sets ``shutdown``
    (a graceful drain), a second one stops at once."""
    shutdown = trio.Event()
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:

            async def watch_signals() -> None:
                async for signum in signals:
                    if not shutdown.is_set():
                        log.info("received %s: shutting down (again to stop at once)", signal.Signals(signum).name)
                        shutdown.set()
                    else:
                        nursery.cancel_scope.cancel()

            nursery.start_soon(watch_signals)
            await run(shutdown)
            nursery.cancel_scope.cancel()


async def serve_until_signalled(config: Config, **kwargs: Any) -> None:
    """``run_server`` until SIGINT or SIGTERM (``until_signalled``)."""
    await until_signalled(lambda shutdown: run_server(config, shutdown=shutdown, **kwargs))


def run(args: argparse.Namespace) -> int:
    """Entry point of ``botcall serve``."""

    def serve() -> int:
        config = config_from_args(args)
        configure_logging(config.log_level, config.log_format, node=config.node_name)
        if not config.issuers and not config.dev_issuer_enabled:
            raise ConfigError("no trusted issuer: give --issuer/--jwks or keep the dev issuer")
        trio.run(serve_until_signalled, config)
        return 0

    return run_command("botcall serve", serve)


def run_command(name: str, body: Callable[[], int]) -> int:
    """Run a command's body; a configuration or start-up problem becomes one line on
    stderr and exit status 2 (configuration) or 1 (start-up), never a traceback."""
    try:
        return body()
    except (ConfigError, StartupError, BaseExceptionGroup) as exc:
        cause = sole_cause(exc)
        if not isinstance(cause, (ConfigError, StartupError)):
            raise
        print(f"{name}: {cause}", file=sys.stderr)
        return 2 if isinstance(cause, ConfigError) else 1
    except KeyboardInterrupt:
        return 0


def configure_logging(level: str, log_format: str = "human", *, node: str | None = None) -> None:
    """Log to stderr, with every credential pattern redacted.

    Args:
        level: ``DEBUG``, ``INFO``, ``WARNING`` or ``ERROR``.
        log_format: ``human`` (time, level, logger, message) or ``json`` (one object per line).
        node: this server's name in JSON lines (default: the host name) and, when
            given, in human lines (the supervisor and workers of ``--workers N`` /
            ``--redis`` give theirs: ``node`` and ``node/w<index>``).
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(json_formatter(node or socket.gethostname()) if log_format == "json" else human_formatter(node))
    logging.basicConfig(level=level, handlers=[handler])
    install_redaction()


def sole_cause(exc: BaseException) -> BaseException:
    """The one exception inside nested single-member exception groups (or ``exc`` itself)."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc
