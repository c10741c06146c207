"""``botcall serve``: the one ``trio.run`` and its top nursery.

``run_server`` binds the HTTP socket itself (so port 0 works and the bound
port is known before any request), hands it to Hypercorn's trio worker serving
the quart-trio app, and runs the housekeeping tasks beside it: expiring rooms
and sessions once a second, re-reading JWKS files when they change, refreshing
JWKS URLs; and the UDP media transport with its relay (``AppState.media``)
and the WebSocket hub (``AppState.hub``).
"""

from __future__ import annotations

import argparse
import logging
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve

from botcall.auth.attestation import AttestationVerifier, ReplayCache
from botcall.auth.keys import KeyRing, ensure_dev_issuer
from botcall.auth.ratelimit import Limiters
from botcall.config import Config, IssuerConfig
from botcall.errors import ConfigError
from botcall.metrics import Metrics
from botcall.media import MediaService
from botcall.rtp.dtls import DtlsCertificate
from botcall.rtp.relay import MediaRelay
from botcall.rtp.transport import UdpTransport, open_udp_socket
from botcall.signaling.http_api import AppState, create_app, fetch_issuer_keys
from botcall.signaling.rooms import RegistryEvent, RoomClosed, RoomRegistry, SessionRemoved
from botcall.signaling.ws import DISCONNECTED, Hub

log = logging.getLogger("botcall")


@dataclass(frozen=True)
class ServerInfo:
    """What ``run_server`` reports once it is accepting connections.

    Attributes:
        http_url: where the HTTP socket is bound (``http://127.0.0.1:54321``).
        http_port: the bound port.
        base_url: the public base URL used in invite and WebSocket URLs.
        state: the app state (tests replace ``state.clock``).
    """

    http_url: str
    http_port: int
    base_url: str
    state: AppState


def build_state(config: Config, *, base_url: str, clock: Callable[[], float] = time.time) -> AppState:
    """Create the registry, key ring, verifier, limiters and metrics for ``config``.

    With the dev issuer on, its key and JWKS are created in ``config.data_dir``
    on first use and trusted as ``config.dev_issuer_name``.

    Args:
        config: the configuration.
        base_url: the public base URL (see ``Config.base_url``).
        clock: returns Unix time.

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
    if config.dev_issuer:
        dev_issuer, created = ensure_dev_issuer(config.data_dir, config.dev_issuer_name)
        keyring.add_file(config.dev_issuer_name, dev_issuer.jwks_path)
        log.info(
            "dev issuer %r trusted (%s key %s); mint attestations with `botcall token --agent ID --controller ID`",
            dev_issuer.issuer,
            "created" if created else "existing",
            dev_issuer.key_path,
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
    verifier = AttestationVerifier(
        keyring=keyring,
        audience=config.audience,
        algorithms=config.algorithms,
        leeway=config.leeway_s,
        max_lifetime=config.max_token_lifetime_s,
        max_token_bytes=config.max_token_bytes,
        replay_cache=ReplayCache(config.replay_cache_max),
    )
    metrics = Metrics(live_rooms=lambda: registry.live_rooms, live_sessions=lambda: registry.live_sessions)

    def count_closed(event: RegistryEvent) -> None:
        if isinstance(event, RoomClosed):
            metrics.rooms_closed.labels(reason=event.reason).inc()

    registry.add_listener(count_closed)
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
    state.verifier.replay_cache.prune(now)
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
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, _, _, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    return sock


def attach_media(state: AppState, udp: UdpTransport) -> None:
    """Create the relay, the media service and the WebSocket hub on ``state``, and
    subscribe them to the registry.

    Args:
        state: the app state; ``media``, ``hub`` and ``media_port`` are set.
        udp: the bound media transport (its port is what joins advertise).
    """
    config = state.config
    relay = MediaRelay(
        udp.transmit,
        consent_timeout=config.media_consent_timeout_s,
        max_peers=config.max_sessions_total,
        max_handshakes=config.max_dtls_handshakes,
        max_packets_per_second=config.media_max_packets_per_second,
    )
    state.media_port = udp.local_address[1]
    state.media = MediaService(
        relay,
        udp.transmit,
        certificate=DtlsCertificate.generate(),
        host=_ip_literal(state.media_host),
        port=state.media_port,
    )
    state.media.udp = udp
    state.hub = Hub(state.clock, max_connections=config.max_sessions_total, connect_grace=config.ws_connect_grace_s)
    state.registry.add_listener(state.media.on_registry_event)
    state.registry.add_listener(state.hub.on_registry_event)
    hub = state.hub

    def speaking(peer, is_speaking: bool) -> None:
        hub.broadcast(peer.room_id, {"type": "speaking", "participant_id": peer.participant_id, "speaking": is_speaking})

    relay.on_speaking = speaking

    def is_speaking(session_id: str) -> bool:
        peer = relay.peer(session_id)
        return peer is not None and peer.speaking

    hub.is_speaking = is_speaking
    state.metrics.attach_media(relay, udp)


def _ip_literal(host: str) -> str:
    """SDP candidates need an address, not a name: resolve once at start-up."""
    return socket.getaddrinfo(host, None, type=socket.SOCK_DGRAM)[0][4][0]


async def run_server(
    config: Config,
    *,
    clock: Callable[[], float] = time.time,
    housekeeping_interval: float = 1.0,
    task_status: trio.TaskStatus[ServerInfo] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until cancelled.

    Args:
        config: the configuration (``http_port=0`` picks a free port).
        clock: Unix time source for the registry and verifier.
        housekeeping_interval: seconds between housekeeping passes.
        task_status: receives a ``ServerInfo`` once the socket accepts connections.

    Raises:
        OSError: the HTTP socket cannot be bound.
        ConfigError: see ``build_state``.
    """
    sock = _bind_http(config.http_host, config.http_port)
    bound_host, bound_port = sock.getsockname()[:2]
    base_url = config.base_url(bound_port)
    try:
        state = build_state(config, base_url=base_url, clock=clock)
    except BaseException:
        sock.close()
        raise
    try:
        udp = UdpTransport(open_udp_socket(config.media_host, config.media_port))
    except BaseException:
        sock.close()
        raise
    attach_media(state, udp)
    app = create_app(state)

    hypercorn_config = HypercornConfig()
    # Hypercorn adopts the descriptor (and closes it); we keep no handle on it.
    hypercorn_config.bind = [f"fd://{sock.detach()}"]
    hypercorn_config.errorlog = logging.getLogger("hypercorn.error")
    hypercorn_config.accesslog = None

    host_in_url = f"[{bound_host}]" if ":" in bound_host else bound_host
    http_url = f"http://{host_in_url}:{bound_port}"
    async with trio.open_nursery() as nursery:
        await nursery.start(udp.run, state.media.relay)
        await nursery.start(serve, app, hypercorn_config)
        nursery.start_soon(_housekeeping_loop, state, housekeeping_interval)
        nursery.start_soon(_jwks_refresh_loop, state, housekeeping_interval)
        log.info(
            "listening on %s (public URL %s); media advertised at udp %s:%d",
            http_url,
            base_url,
            state.media_host,
            state.media_port,
        )
        task_status.started(ServerInfo(http_url=http_url, http_port=bound_port, base_url=base_url, state=state))


# --- the command line ------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``botcall serve`` (defaults come from ``Config``)."""
    defaults = Config.__dataclass_fields__
    parser.add_argument("--host", default=defaults["http_host"].default, help="HTTP bind address (default %(default)s)")
    parser.add_argument("--port", type=int, default=defaults["http_port"].default, help="HTTP port, 0 = any free (default %(default)s)")
    parser.add_argument("--media-host", default=defaults["media_host"].default, help="UDP media bind address (default %(default)s)")
    parser.add_argument("--media-port", type=int, default=defaults["media_port"].default, help="UDP media port (default %(default)s)")
    parser.add_argument("--media-advertised-host", default=None, help="host bots are told to send media to (default: --media-host)")
    parser.add_argument("--public-url", default=None, help="base of invite and WebSocket URLs (default: http://HOST:PORT)")
    parser.add_argument("--issuer", action="append", default=[], metavar="ISS", help="a trusted issuer (exact iss); pair each with --jwks")
    parser.add_argument("--jwks", action="append", default=[], metavar="URL_OR_FILE", help="the JWKS of the matching --issuer")
    parser.add_argument("--audience", default=defaults["audience"].default, help="the aud attestations must name (default %(default)s)")
    parser.add_argument("--no-dev-issuer", action="store_true", help="do not create or trust the local dev issuer")
    parser.add_argument("--data-dir", type=Path, default=None, help="where the dev issuer key lives (default $BOTCALL_DATA_DIR or ~/.local/share/botcall)")
    parser.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))


def config_from_args(args: argparse.Namespace) -> Config:
    """Build a ``Config`` from parsed ``serve`` flags.

    Raises:
        ConfigError: inconsistent flags (unpaired ``--issuer``/``--jwks``, bad values).
    """
    if len(args.issuer) != len(args.jwks):
        raise ConfigError("give exactly one --jwks for each --issuer")
    overrides: dict[str, object] = {
        "http_host": args.host,
        "http_port": args.port,
        "media_host": args.media_host,
        "media_port": args.media_port,
        "media_advertised_host": args.media_advertised_host,
        "public_url": args.public_url,
        "audience": args.audience,
        "dev_issuer": not args.no_dev_issuer,
        "issuers": tuple(IssuerConfig(issuer=i, jwks=j) for i, j in zip(args.issuer, args.jwks)),
    }
    if args.data_dir is not None:
        overrides["data_dir"] = args.data_dir
    return Config(**overrides)


async def _serve_until_signalled(config: Config) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            await nursery.start(run_server, config)
            async for signum in signals:
                log.info("received %s, shutting down", signal.Signals(signum).name)
                nursery.cancel_scope.cancel()
                break


def run(args: argparse.Namespace) -> int:
    """Entry point of ``botcall serve``."""
    logging.basicConfig(level=args.log_level, format="botcall: %(message)s", stream=sys.stderr)
    try:
        config = config_from_args(args)
        if not config.issuers and not config.dev_issuer:
            raise ConfigError("no trusted issuer: give --issuer/--jwks or keep the dev issuer")
        trio.run(_serve_until_signalled, config)
    except (ConfigError, OSError, BaseExceptionGroup) as exc:
        cause = _sole_cause(exc)
        if not isinstance(cause, (ConfigError, OSError)):
            raise
        print(f"botcall serve: {cause}", file=sys.stderr)
        return 2 if isinstance(cause, ConfigError) else 1
    return 0


def _sole_cause(exc: BaseException) -> BaseException:
    """The one exception inside nested single-member exception groups (or ``exc`` itself)."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc
