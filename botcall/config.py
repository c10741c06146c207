"""The one server configuration: a frozen ``Config`` with embedded defaults.

``botcall serve`` with no flags runs on these defaults: HTTP on 127.0.0.1:8080,
media on UDP port 40000 of every interface (announced to browsers as one host
candidate per local address, so any browser on this machine or the LAN can
reach it; see ``relay/addresses.py``), the local development issuer switched on and its
key kept in the data directory. Every table or queue an outsider can grow has
its limit here.

Times are seconds. Rates are tokens per second with a burst size (see
``botcall.auth.ratelimit``).

Every field can also be set from a TOML file (``--config``) and from a
``BOTCALL_<FIELD>`` environment variable; ``botcall/settings.py`` reads them
(flags > environment > file > these defaults) and ``botcall config show``
prints the result with each value's source.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from botcall.errors import ConfigError

# Asymmetric JWS algorithms (RFC 7518 §3.1, RFC 8037 §3.1) that may appear in an
# allow-list. HS* (shared secrets) and "none" are deliberately absent: an
# attestation must be verifiable by anyone holding only the issuer's public key.
ASYMMETRIC_ALGORITHMS = frozenset(
    {"EdDSA", "ES256", "ES384", "ES512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512"}
)

# RFC 7519 §4.1.4 lets verifiers allow "a few minutes" of leeway; we allow at most a minute.
MAX_LEEWAY_S = 60.0

DATA_DIR_ENV = "BOTCALL_DATA_DIR"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
LOG_FORMATS = ("human", "json")
# RFC 7065 §3.1: turn:/turns: host [":" port] ["?transport=" udp|tcp]; a host is
# a name, an IPv4 literal or a bracketed IPv6 literal.
TURN_URI = re.compile(r"turns?:(?:\[(?P<ipv6>[0-9A-Fa-f:.]+)\]|(?P<host>[A-Za-z0-9.-]+))(?::[0-9]{1,5})?(?:\?transport=(?:udp|tcp))?")


# Worker processes at most (each holds a media port and an HTTP port).
MAX_WORKERS = 64


def default_data_dir() -> Path:
    """Where the dev issuer key lives unless told otherwise.

    Returns:
        ``$BOTCALL_DATA_DIR`` when set, else ``~/.local/share/botcall``.
    """
    env = os.environ.get(DATA_DIR_ENV)
    if env:
        return Path(env).expanduser()
    return Path.home() / ".local" / "share" / "botcall"


@dataclass(frozen=True, slots=True)
class RateLimit:
    """A token bucket's parameters: ``burst`` requests at once, refilled at ``rate`` per second."""

    rate: float
    burst: int

    def __post_init__(self) -> None:
        if not (math.isfinite(self.rate) and self.rate > 0):
            raise ConfigError(f"rate must be a positive number, not {self.rate!r}")
        if self.burst < 1:
            raise ConfigError(f"burst must be at least 1, not {self.burst!r}")


@dataclass(frozen=True, slots=True)
class IssuerConfig:
    """A trusted attestation issuer and where its public keys are published.

    Attributes:
        issuer: the exact ``iss`` value (compared byte for byte, never as a prefix).
        jwks: an ``http://``/``https://`` URL of its JWKS, or a path to a JWKS file.
    """

    issuer: str
    jwks: str

    @property
    def jwks_is_url(self) -> bool:
        return self.jwks.startswith(("http://", "https://"))


@dataclass(frozen=True)
class Config:
    """Everything ``botcall serve`` can be told. Construct with keywords; all have defaults."""

    # --- network ------------------------------------------------------------------
    http_host: str = "127.0.0.1"
    http_port: int = 8080
    # Media listens on every interface: nothing reaches a peer without ICE
    # credentials from a join (latching, docs/protocol.md), and browsers other
    # than Chromium only reach a non-loopback address (Firefox's default ICE
    # pairs only the default-route interface). The HTTP API stays on loopback
    # unless told otherwise: it is what hands out those credentials.
    media_host: str = "0.0.0.0"
    media_port: int = 40000
    # The addresses announced for media (comma-separated), instead of every
    # local one: a NAT's public address, or one address of many. Each must be
    # this machine's or a public one (checked at start).
    media_advertised_host: str | None = None
    # Base of invite_url and websocket_url. Default: http://<http_host>:<bound port>.
    public_url: str | None = None
    data_dir: Path = field(default_factory=default_data_dir)

    # --- TLS (docs/deploy.md) -----------------------------------------------------------
    # Serve HTTPS and WSS on the HTTP port with this PEM certificate (its chain
    # may follow it in the file) and PEM private key. Both or neither.
    tls_cert: Path | None = None
    tls_key: Path | None = None
    # Serve HTTPS with a development certificate, made once in data_dir by a
    # development CA there (reused while valid); not with tls_cert.
    tls_self_signed: bool = False

    # --- TURN (docs/protocol.md, "TURN: ice_servers") -------------------------------------
    # turn:/turns: URIs handed to every client in ice_servers, with short-lived
    # credentials (TURN REST scheme) made with turn_secret, the static-auth-secret
    # the TURN server (coturn: use-auth-secret) shares. Both or neither.
    turn_uris: tuple[str, ...] = ()
    turn_secret: str | None = None

    # --- media -------------------------------------------------------------------------
    # RFC 7675: a peer's address is forgotten after this long without a valid STUN check.
    media_consent_timeout_s: float = 30.0
    # DTLS handshakes in progress at once (browsers); more ClientHellos wait for a retransmit.
    max_dtls_handshakes: int = 64
    # A speaker's RTP packets per second beyond this are dropped (a flood hurts no one).
    media_max_packets_per_second: int = 200
    # A session with no WebSocket for this long (never connected, or dropped) is ended.
    ws_connect_grace_s: float = 30.0
    # A bot session's recent events kept for replay after a WebSocket drop
    # (signaling/event_log.py; also bounded to 128 KiB of text).
    ws_replay_max_events: int = 256
    # A bot may send its speech this many seconds ahead of real time; the relay
    # holds it (about 4 kB a second of Opus) and plays it out. Beyond: playout_full.
    playout_max_ahead_s: float = 120.0
    # Marks a bot may have waiting to fire.
    playout_max_marks: int = 1000
    # Streams without RFC 6464 levels decoded at once for speech detection
    # (about 0.2 ms of CPU per 20 ms frame each while speaking); beyond this,
    # packet sizes decide (relay/speech.py).
    speech_max_decoders: int = 8
    # Downstream audio tracks per browser in a group call: it hears up to this
    # many other participants at once (1 = the old single floor). 1-8
    # (webrtc/leg.py MAX_RECEIVE_TRACKS); docs/protocol.md "Group calls".
    max_receive_tracks: int = 3
    # The packet duration (ms) each answer asks a browser to send its voice in:
    # 20 (no a=ptime: what browsers send unasked) or 10 (a=ptime:10, followed
    # by Chromium and Firefox; twice the packets on each human's uplink, and a
    # bot hears the human up to 10 ms sooner). docs/protocol.md "Browser packets";
    # figures in docs/bench-results.md §16e.
    browser_ptime_ms: int = 20
    # Read the media socket with recvmmsg and send with sendmmsg (ctypes, Linux)
    # instead of one recvfrom/sendto per datagram. Off by default: on the
    # benchmark machine it did not lower the relay's CPU per packet (500 bot
    # legs: 15.4-16.2 against 13.8-15.6 µs; docs/bench-results.md §13).
    # True where the C library lacks the calls falls back to recvfrom/sendto.
    media_batched_syscalls: bool = False
    # Forward plain RTP between latched UDP bots in C (botcall/relay/_fastpath.c,
    # built by `pip install`; without it the relay forwards in Python as before):
    # "inline" (after each wakeup of the read loop) or "thread" (the helper's
    # own thread blocks on the socket without the GIL). It takes only speakers
    # whose packets need nothing but forwarding: no playout (see
    # media_bot_playout), not muted, every listener a latched UDP bot; so
    # "thread" is refused unless media_bot_playout is false. "inline" by
    # default: in the default configuration it takes established browser legs'
    # SRTP toward bots (their speech still reaches Python's trackers) and cut
    # the relay's CPU per packet by ~20 % (docs/bench-results.md §18c); "off"
    # keeps every packet in Python. Where the extension is not built, "inline"
    # acts as "off".
    media_fast_path: str = "inline"
    # With media_fast_path on: established browser legs' SRTP takes the fast
    # path too (decrypted, renumbered and protected in C with the legs' own
    # libsrtp sessions; 1:1 calls, docs/bench-results.md §18). False keeps
    # every packet to or from a browser on the Python path.
    media_fast_srtp: bool = True
    # Pace each UDP bot's speech through its playout (marks, clear, barge-in,
    # TTS sent ahead of time played at real time). Off, a UDP bot's packets go
    # to the room as they arrive (a plain relay, as coturn): marks, clear and
    # barge-in do nothing for it. WebSocket bots always have a playout.
    media_bot_playout: bool = True
    # Speech detection on every peer's audio, browsers' included (speaking
    # events, barge-in); off, no peer has a speech tracker.
    speech_detection: bool = True

    # --- attestations ---------------------------------------------------------------
    audience: str = "botcall"
    issuers: tuple[IssuerConfig, ...] = ()
    algorithms: tuple[str, ...] = ("EdDSA", "ES256")
    # None = on exactly when no issuer is configured; True/False force it.
    dev_issuer: bool | None = None
    dev_issuer_name: str = "botcall-dev"
    leeway_s: float = 30.0
    max_token_lifetime_s: float = 3600.0
    max_token_bytes: int = 8192
    replay_cache_max: int = 100_000
    jwks_refetch_min_interval_s: float = 60.0
    jwks_refresh_interval_s: float = 600.0
    jwks_fetch_timeout_s: float = 5.0
    jwks_max_bytes: int = 256 * 1024
    jwks_max_keys: int = 64

    # --- rooms ----------------------------------------------------------------------
    room_default_expires_in: int = 3600
    room_max_expires_in: int = 86_400
    room_empty_timeout_s: float = 300.0
    room_default_max_humans: int = 1
    room_max_humans: int = 16
    room_max_bots: int = 4
    max_live_rooms_per_controller: int = 10
    max_rooms_total: int = 10_000
    max_sessions_total: int = 50_000
    # How many recently closed room ids are remembered (for 410 instead of 404), and how long.
    closed_rooms_remembered: int = 10_000
    closed_rooms_remembered_s: float = 3600.0
    max_display_name_chars: int = 64

    # --- abuse limits ----------------------------------------------------------------
    create_limit_per_agent: RateLimit = RateLimit(rate=10 / 60, burst=5)
    create_limit_per_ip: RateLimit = RateLimit(rate=30 / 60, burst=10)
    join_limit_per_agent: RateLimit = RateLimit(rate=1.0, burst=10)
    join_limit_per_ip: RateLimit = RateLimit(rate=2.0, burst=20)
    query_limit_per_ip: RateLimit = RateLimit(rate=5.0, burst=20)
    rate_limit_table_max: int = 10_000
    max_body_bytes: int = 16 * 1024

    # --- connection budgets (docs/security.md) ------------------------------------------
    # Open HTTP/WebSocket connections at once, server-wide. Also kept below the
    # open-file limit (RLIMIT_NOFILE, raised to its hard limit at start) minus
    # fd_reserve, so the process never runs out of descriptors for its own use.
    max_connections: int = 10_000
    fd_reserve: int = 256
    # Open connections at once from one client address (trusted proxies exempt).
    max_connections_per_ip: int = 64
    # New connections per second from one client address (trusted proxies exempt).
    connection_rate_per_ip: RateLimit = RateLimit(rate=50.0, burst=200)
    # WebSockets at once per client address as the app sees it (behind a
    # trusted proxy: the forwarded address).
    max_websockets_per_ip: int = 32
    # Browsers in a room's lobby (signaling sockets without a session) at once.
    max_lobby_sockets_per_room: int = 32
    # A request's headers must arrive within this long of its first byte.
    header_timeout_s: float = 10.0
    # A request body must arrive within this long of the headers.
    body_timeout_s: float = 30.0
    # Idle keep-alive connections are closed after this long.
    keep_alive_timeout_s: float = 5.0
    # Every WebSocket message (text or binary) is at most this large; larger ends
    # the socket with close code 1009.
    ws_max_message_bytes: int = 128 * 1024
    # Control, chat and ping messages per WebSocket.
    ws_message_limit: RateLimit = RateLimit(rate=20.0, burst=40)
    # HTTP/2 (h2 over TLS, h2c) is off unless asked for.
    http2: bool = False
    # Peers whose X-Forwarded-For / Forwarded headers are believed (CIDRs).
    trusted_proxies: tuple[str, ...] = ()
    # On SIGTERM/SIGINT: how long clients get to hear room_closed and go.
    shutdown_grace_s: float = 5.0

    # --- operations ---------------------------------------------------------------------
    log_level: str = "INFO"
    # "human": timestamped lines; "json": one object per line (botcall/logs.py).
    log_format: str = "human"
    # This server's name in JSON logs; None = the host name.
    node_name: str | None = None
    # Worker processes of `botcall serve` (botcall/cluster): "1" serves in this
    # process as always; N > 1 runs a supervisor, a routing front on the HTTP
    # port and N workers (each its own media port); "auto" = one per core.
    workers: str = "1"
    # Clustered mode (botcall/cluster/nodes.py): redis://host:port/db of the
    # directory every node shares; None = this machine alone, in memory.
    redis_url: str | None = None
    # Seconds a node's heartbeat lives in Redis: a node silent this long is lost
    # (its rooms close with node_lost). It beats every third of this.
    node_ttl_s: float = 10.0
    # PEM CA bundle a node verifies other nodes' HTTPS with when it forwards to
    # an https:// public URL; None = the system's trusted CAs.
    cluster_ca: Path | None = None
    # Seconds a draining node (SIGTERM, `botcall drain`) lets its rooms run
    # before closing them with server_shutdown.
    drain_timeout_s: float = 300.0

    def worker_count(self, cores: int) -> int:
        """The number of worker processes for ``workers`` on a machine of ``cores`` cores."""
        return max(1, cores) if self.workers == "auto" else int(self.workers)

    def __post_init__(self) -> None:
        if self.redis_url is not None and not self.redis_url.startswith("redis://"):
            raise ConfigError(f"redis_url must be redis://host[:port][/db], not {self.redis_url!r}")
        if not 0.5 <= self.node_ttl_s <= 3600:
            raise ConfigError(f"node_ttl_s must be 0.5-3600, not {self.node_ttl_s}")
        if not 0 <= self.drain_timeout_s <= 86400:
            raise ConfigError(f"drain_timeout_s must be 0-86400, not {self.drain_timeout_s}")
        if self.workers != "auto" and not (self.workers.isdigit() and 1 <= int(self.workers) <= MAX_WORKERS):
            raise ConfigError(f"workers must be 'auto' or 1-{MAX_WORKERS}, not {self.workers!r}")
        if self.log_level not in LOG_LEVELS:
            raise ConfigError(f"log_level must be one of {', '.join(LOG_LEVELS)}, not {self.log_level!r}")
        if self.log_format not in LOG_FORMATS:
            raise ConfigError(f"log_format must be one of {', '.join(LOG_FORMATS)}, not {self.log_format!r}")
        for name in ("http_port", "media_port"):
            port = getattr(self, name)
            if not 0 <= port <= 65535:
                raise ConfigError(f"{name} must be 0-65535, not {port}")
        if self.media_advertised_host is not None and not all(self.media_advertised_hosts):
            raise ConfigError(f"media_advertised_host has an empty entry: {self.media_advertised_host!r}")
        if self.public_url is not None:
            parts = urlsplit(self.public_url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ConfigError(f"public_url must be an http(s) URL, not {self.public_url!r}")
            if parts.query or parts.fragment:
                raise ConfigError("public_url must not carry a query or fragment")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigError("tls_cert and tls_key go together: give both or neither")
        if self.tls_self_signed and self.tls_cert is not None:
            raise ConfigError("tls_self_signed and tls_cert exclude each other: give one")
        for uri in self.turn_uris:
            if not TURN_URI.fullmatch(uri):
                raise ConfigError(
                    f"turn_uris: {uri!r} is not a TURN URI like turn:host:3478?transport=udp "
                    "or turns:host:5349?transport=tcp (RFC 7065)"
                )
        if bool(self.turn_uris) != bool(self.turn_secret):
            raise ConfigError("turn_uris and turn_secret go together: give both or neither")
        if not self.audience:
            raise ConfigError("audience must not be empty")
        unknown = set(self.algorithms) - ASYMMETRIC_ALGORITHMS
        if unknown or not self.algorithms:
            raise ConfigError(
                f"algorithms must be a non-empty subset of {sorted(ASYMMETRIC_ALGORITHMS)}; "
                f"refused {sorted(unknown)}"
            )
        if self.dev_issuer_enabled and "EdDSA" not in self.algorithms:
            raise ConfigError("the dev issuer signs with EdDSA; allow it or turn the dev issuer off")
        names = [i.issuer for i in self.issuers]
        if self.dev_issuer_enabled:
            names.append(self.dev_issuer_name)
        if len(set(names)) != len(names) or not all(names):
            raise ConfigError(f"issuer names must be non-empty and distinct: {names}")
        if not 0 <= self.leeway_s <= MAX_LEEWAY_S:
            raise ConfigError(f"leeway_s must be 0-{MAX_LEEWAY_S:g}, not {self.leeway_s}")
        positive = (
            "max_token_lifetime_s", "max_token_bytes", "replay_cache_max",
            "jwks_refetch_min_interval_s", "jwks_refresh_interval_s", "jwks_fetch_timeout_s",
            "jwks_max_bytes", "jwks_max_keys", "room_default_expires_in", "room_max_expires_in",
            "room_empty_timeout_s", "room_default_max_humans", "room_max_humans", "room_max_bots",
            "max_live_rooms_per_controller", "max_rooms_total", "max_sessions_total",
            "closed_rooms_remembered", "closed_rooms_remembered_s", "max_display_name_chars",
            "rate_limit_table_max", "max_body_bytes", "media_consent_timeout_s",
            "max_dtls_handshakes", "media_max_packets_per_second", "ws_connect_grace_s", "ws_replay_max_events",
            "playout_max_ahead_s", "playout_max_marks", "speech_max_decoders",
            "max_connections", "fd_reserve", "max_connections_per_ip", "max_websockets_per_ip",
            "max_lobby_sockets_per_room", "header_timeout_s", "body_timeout_s",
            "keep_alive_timeout_s", "ws_max_message_bytes", "shutdown_grace_s",
        )
        for name in positive:
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ConfigError(f"{name} must be positive, not {value!r}")
        if self.room_default_expires_in > self.room_max_expires_in:
            raise ConfigError("room_default_expires_in exceeds room_max_expires_in")
        if self.room_default_max_humans > self.room_max_humans:
            raise ConfigError("room_default_max_humans exceeds room_max_humans")
        if self.media_fast_path not in ("off", "inline", "thread"):
            raise ConfigError(f"media_fast_path must be off, inline or thread, not {self.media_fast_path!r}")
        if self.media_fast_path == "thread" and self.media_bot_playout:
            # With playouts no speaker qualifies, and every datagram would cross
            # the thread to Python: 2-3x the CPU per packet (bench-results §18).
            raise ConfigError("media_fast_path = thread needs media_bot_playout = false (with playouts it only adds cost)")
        if not (isinstance(self.max_receive_tracks, int) and 1 <= self.max_receive_tracks <= 8):
            # 8: webrtc/leg.py MAX_RECEIVE_TRACKS (config sits below webrtc and cannot import it).
            raise ConfigError(f"max_receive_tracks must be 1-8, not {self.max_receive_tracks!r}")
        if self.browser_ptime_ms not in (10, 20):
            # webrtc/sdp.py PTIMES_MS (config sits below webrtc and cannot import it).
            raise ConfigError(f"browser_ptime_ms must be 10 or 20, not {self.browser_ptime_ms!r}")
        for cidr in self.trusted_proxies:
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError as exc:
                raise ConfigError(f"trusted proxy {cidr!r} is not an address or CIDR: {exc}") from None

    @property
    def tls_enabled(self) -> bool:
        """Whether the HTTP port serves TLS (a configured or a development certificate)."""
        return self.tls_cert is not None or self.tls_self_signed

    @property
    def dev_issuer_enabled(self) -> bool:
        """Whether the local dev issuer is trusted: as configured, else only when
        no other issuer is (a production set-up never trusts it by accident)."""
        if self.dev_issuer is None:
            return not self.issuers
        return self.dev_issuer

    @property
    def trusted_proxy_networks(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        """``trusted_proxies`` parsed."""
        return tuple(ipaddress.ip_network(cidr, strict=False) for cidr in self.trusted_proxies)

    @property
    def media_advertised_hosts(self) -> tuple[str, ...]:
        """``media_advertised_host`` split at commas, as written (names or IP literals)."""
        if self.media_advertised_host is None:
            return ()
        return tuple(host.strip() for host in self.media_advertised_host.split(","))

    @property
    def advertised_media_host(self) -> str:
        """The UDP host bots are told before start-up resolves the announced
        addresses (``server.attach_media`` then sets the one joins carry)."""
        if self.media_advertised_hosts:
            return self.media_advertised_hosts[0]
        if self.media_host in ("0.0.0.0", "::", ""):
            return "127.0.0.1"
        return self.media_host

    def base_url(self, bound_port: int | None = None) -> str:
        """The public base URL, without a trailing slash.

        Args:
            bound_port: the HTTP port actually bound (differs from ``http_port`` when that is 0).

        Returns:
            ``public_url`` when configured, else ``http://<http_host>:<port>``
            (``https://`` when the server serves TLS itself).
        """
        if self.public_url is not None:
            return self.public_url.rstrip("/")
        host = self.http_host
        if host in ("0.0.0.0", "::", ""):
            host = "127.0.0.1"
        if ":" in host:  # an IPv6 literal needs brackets in a URL (RFC 3986 §3.2.2)
            host = f"[{host}]"
        scheme = "https" if self.tls_enabled else "http"
        return f"{scheme}://{host}:{self.http_port if bound_port is None else bound_port}"
