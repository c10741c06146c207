"""Where each ``Config`` value comes from: defaults < TOML file < ``BOTCALL_*`` environment < flags.

Every ``Config`` field can be set in all four places under one name:

* **file** (``--config FILE``, or ``$BOTCALL_CONFIG``): TOML, one top-level key
  per field (``playout_max_ahead_s = 60``). Rate limits are inline tables
  (``join_limit_per_ip = { rate = 2.0, burst = 20 }``), issuers an array of
  tables (``[[issuers]]`` with ``issuer`` and ``jwks``). A string is accepted
  wherever the environment syntax below is.
* **environment**: ``BOTCALL_`` + the field name in capitals
  (``BOTCALL_PLAYOUT_MAX_AHEAD_S=60``). Booleans are ``true``/``false``
  (also ``1``/``0``, ``yes``/``no``, ``on``/``off``); ``dev_issuer`` also takes
  ``auto``; an empty optional string means unset; lists are comma-separated
  (``BOTCALL_TRUSTED_PROXIES=10.0.0.0/8,192.168.0.0/16``); a rate limit is
  ``rate=2,burst=20`` (per second); issuers are ``ISS=JWKS`` pairs separated by
  whitespace (``BOTCALL_ISSUERS="https://a.example=https://a.example/jwks.json"``).
* **flags** of ``botcall serve`` (``--port``...), for the settings that have one.

A value that cannot be read is refused with one line naming the setting and
where it came from (``BOTCALL_PLAYOUT_MAX_AHEAD_S: expected a number, not 'soon'``);
``Config``'s own checks name the setting too, and ``load`` adds its source.

Pure: reads only the mapping and file it is given (no trio, no sockets).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import re
import tomllib
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from botcall.config import Config, IssuerConfig, RateLimit
from botcall.errors import ConfigError
from botcall.logs import redact

ENV_PREFIX = "BOTCALL_"
CONFIG_FILE_ENV = "BOTCALL_CONFIG"
REDACTED = "[redacted]"

# A string-valued field whose name has one of these words holds a credential.
_SECRET_WORDS = frozenset({"secret", "secrets", "password", "passwd", "token", "key", "apikey", "credential", "credentials"})
_TRUE = frozenset({"true", "1", "yes", "on"})
_FALSE = frozenset({"false", "0", "no", "off"})


class Source:
    """Where a value came from: ``default``, ``file``, ``env`` or ``flag``."""

    DEFAULT = "default"
    FILE = "file"
    ENV = "env"
    FLAG = "flag"


@dataclass(frozen=True)
class Origin:
    """One value's source and the name it was given under there.

    Attributes:
        source: one of ``Source``'s values.
        where: ``/etc/botcall.toml``, ``BOTCALL_HTTP_PORT``, ``--port`` (empty for defaults).
    """

    source: str
    where: str = ""

    def __str__(self) -> str:
        return f"{self.source} {self.where}".rstrip()


@dataclass(frozen=True)
class Loaded:
    """The effective configuration and where each field's value came from."""

    config: Config
    origins: Mapping[str, Origin]


def env_name(field_name: str) -> str:
    """``playout_max_ahead_s`` → ``BOTCALL_PLAYOUT_MAX_AHEAD_S``."""
    return ENV_PREFIX + field_name.upper()


def _field_types() -> dict[str, Any]:
    hints = typing.get_type_hints(Config)
    return {f.name: hints[f.name] for f in dataclasses.fields(Config)}


FIELD_TYPES: dict[str, Any] = _field_types()


# --- parsing one value ---------------------------------------------------------------------------


class BadValue(ConfigError):
    """A value of the wrong shape for its setting; ``read_env`` and ``read_file``
    re-raise it as a ``ConfigError`` that names the setting and its source."""


def parse_rate_limit(text: str) -> RateLimit:
    """``rate=2,burst=20`` → ``RateLimit(2.0, 20)``.

    Raises:
        BadValue: not that shape, or a value ``RateLimit`` refuses.
    """
    parts: dict[str, str] = {}
    for item in text.split(","):
        key, sep, value = item.partition("=")
        if not sep or key.strip() not in ("rate", "burst") or key.strip() in parts:
            raise BadValue(f"expected 'rate=R,burst=B', not {text!r}")
        parts[key.strip()] = value.strip()
    if set(parts) != {"rate", "burst"}:
        raise BadValue(f"expected 'rate=R,burst=B', not {text!r}")
    return _rate_limit(_number(parts["rate"], float), _number(parts["burst"], int))


def _rate_limit(rate: Any, burst: Any) -> RateLimit:
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or isinstance(burst, bool) or not isinstance(burst, int):
        raise BadValue(f"expected a number rate and an integer burst, not rate={rate!r}, burst={burst!r}")
    try:
        return RateLimit(rate=float(rate), burst=burst)
    except ConfigError as exc:
        raise BadValue(str(exc)) from None


def _number(text: str, kind: type) -> Any:
    try:
        value = kind(text.strip())
    except ValueError:
        raise BadValue(f"expected {'an integer' if kind is int else 'a number'}, not {text!r}") from None
    if kind is float and not math.isfinite(value):
        raise BadValue(f"expected a finite number, not {text!r}")
    return value


def parse_text(field_name: str, text: str) -> Any:
    """A field's value from its environment-variable text (see the module docstring).

    Raises:
        BadValue: the text does not have the field's shape.
    """
    kind = FIELD_TYPES[field_name]
    if kind is int:
        return _number(text, int)
    if kind is float:
        return _number(text, float)
    if kind is bool or kind == bool | None:
        lowered = text.strip().lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
        if kind != bool and lowered in ("auto", ""):
            return None
        choices = "true or false" + (" or auto" if kind != bool else "")
        raise BadValue(f"expected {choices}, not {text!r}")
    if kind is str:
        return text
    if kind == str | None:
        return text or None
    if kind is Path:
        return Path(text).expanduser()
    if kind == Path | None:
        return Path(text).expanduser() if text else None
    if kind is RateLimit:
        return parse_rate_limit(text)
    if kind == tuple[str, ...]:
        return tuple(item.strip() for item in text.split(",") if item.strip())
    if kind == tuple[IssuerConfig, ...]:
        issuers = []
        for pair in text.split():
            issuer, sep, jwks = pair.partition("=")
            if not sep or not issuer or not jwks:
                raise BadValue(f"expected ISSUER=JWKS pairs separated by spaces, not {pair!r}")
            issuers.append(IssuerConfig(issuer=issuer, jwks=jwks))
        return tuple(issuers)
    raise AssertionError(f"no text syntax for {field_name}: {kind}")  # a new field type needs one


def parse_toml_value(field_name: str, value: Any) -> Any:
    """A field's value from its TOML value (a string goes through ``parse_text``).

    Raises:
        BadValue: the value does not have the field's type.
    """
    kind = FIELD_TYPES[field_name]
    if isinstance(value, str) and kind is not str:
        return parse_text(field_name, value)
    if kind is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        if not math.isfinite(value):
            raise BadValue(f"expected a finite number, not {value!r}")
        return float(value)
    if kind in (bool, bool | None) and isinstance(value, bool):
        return value
    if kind in (str, str | None) and isinstance(value, str):
        return value
    if kind is RateLimit and isinstance(value, dict):
        if set(value) != {"rate", "burst"}:
            raise BadValue(f"expected a table {{ rate = R, burst = B }}, not {value!r}")
        return _rate_limit(value["rate"], value["burst"])
    if kind == tuple[str, ...] and isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    if kind == tuple[IssuerConfig, ...] and isinstance(value, list):
        issuers = []
        for entry in value:
            if not (isinstance(entry, dict) and set(entry) == {"issuer", "jwks"}
                    and all(isinstance(v, str) for v in entry.values())):
                raise BadValue(f"expected [[issuers]] tables with issuer and jwks strings, not {entry!r}")
            issuers.append(IssuerConfig(issuer=entry["issuer"], jwks=entry["jwks"]))
        return tuple(issuers)
    raise BadValue(f"expected {_describe(kind)}, not {value!r}")


def _describe(kind: Any) -> str:
    names = {int: "an integer", float: "a number", bool: "true or false", str: "a string", Path: "a path string",
             RateLimit: "a { rate, burst } table"}
    if kind in names:
        return names[kind]
    if kind == bool | None:
        return "true, false or \"auto\""
    if kind == str | None:
        return "a string"
    if kind == Path | None:
        return "a path string"
    return "a list"


# --- the layers ----------------------------------------------------------------------------------


def read_file(path: Path) -> dict[str, Any]:
    """The settings in a TOML file, parsed into field values.

    Raises:
        ConfigError: the file cannot be read, is not TOML, names an unknown
            setting, or holds a value of the wrong shape (naming the file and setting).
    """
    try:
        with open(path, "rb") as file:
            document = tomllib.load(file)
    except OSError as exc:
        raise ConfigError(f"cannot read the configuration file {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    values: dict[str, Any] = {}
    for name, value in document.items():
        if name not in FIELD_TYPES:
            raise ConfigError(f"{path}: unknown setting {name!r} (see `botcall config show`)")
        try:
            values[name] = parse_toml_value(name, value)
        except BadValue as exc:
            raise ConfigError(f"{path}: {name}: {exc}") from None
    return values


def read_env(environ: Mapping[str, str]) -> dict[str, Any]:
    """The settings in ``BOTCALL_*`` variables (others are ignored: the SDK and tests have their own).

    Raises:
        ConfigError: a value of the wrong shape, naming the variable.
    """
    values: dict[str, Any] = {}
    for name in FIELD_TYPES:
        text = environ.get(env_name(name))
        if text is None:
            continue
        try:
            values[name] = parse_text(name, text)
        except BadValue as exc:
            raise ConfigError(f"{env_name(name)}: {exc}") from None
    return values


def load(
    *,
    flags: Mapping[str, Any] | None = None,
    flag_names: Mapping[str, str] | None = None,
    environ: Mapping[str, str] | None = None,
    config_file: Path | None = None,
) -> Loaded:
    """The effective configuration: defaults, then the file, then the environment, then flags.

    Args:
        flags: field values given on the command line (only those given).
        flag_names: the flag that set each field (``{"http_port": "--port"}``), for ``Origin``.
        environ: the environment (``BOTCALL_*`` read; ``BOTCALL_CONFIG`` names a file
            when ``config_file`` is not given).
        config_file: the TOML file (``--config``).

    Returns:
        The ``Config`` and each field's ``Origin``.

    Raises:
        ConfigError: one line naming the setting and its source.
    """
    environ = environ or {}
    flags = flags or {}
    values: dict[str, Any] = {}
    origins: dict[str, Origin] = {name: Origin(Source.DEFAULT) for name in FIELD_TYPES}
    if config_file is None and environ.get(CONFIG_FILE_ENV):
        config_file = Path(environ[CONFIG_FILE_ENV]).expanduser()
    if config_file is not None:
        for name, value in read_file(config_file).items():
            values[name], origins[name] = value, Origin(Source.FILE, str(config_file))
    for name, value in read_env(environ).items():
        values[name], origins[name] = value, Origin(Source.ENV, env_name(name))
    for name, value in flags.items():
        values[name] = value
        origins[name] = Origin(Source.FLAG, (flag_names or {}).get(name, "--" + name.replace("_", "-")))
    try:
        config = Config(**values)
    except ConfigError as exc:
        raise ConfigError(_with_sources(str(exc), origins)) from None
    return Loaded(config, origins)


def _with_sources(message: str, origins: Mapping[str, Origin]) -> str:
    """``message`` with the source of every non-default setting it names appended."""
    named = [
        f"{origin.where}" for name, origin in origins.items()
        if origin.source != Source.DEFAULT and re.search(rf"\b{name}\b", message)
    ]
    return f"{message} (set by {', '.join(named)})" if named else message


# --- showing it ----------------------------------------------------------------------------------


def is_secret(field_name: str, value: Any) -> bool:
    """Whether a value must never be printed: text under a name that says credential
    (``admin_token``, ``redis_password``; not the limit ``max_token_bytes``)."""
    words = set(field_name.lower().split("_"))
    return isinstance(value, str) and bool(value) and bool(words & _SECRET_WORDS)


def _without_userinfo(text: str) -> str:
    """A URL's ``user:password@`` removed (a JWKS URL may carry basic-auth credentials)."""
    try:
        parts = urlsplit(text)
    except ValueError:
        return text
    if parts.scheme and parts.netloc and "@" in parts.netloc:
        return urlunsplit(parts._replace(netloc=REDACTED + "@" + parts.netloc.rpartition("@")[2]))
    return text


def _toml_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _shown(text: str) -> str:
    return _toml_string(redact(_without_userinfo(text)))


def show_value(field_name: str, value: Any) -> str:
    """One field's value as TOML (what ``read_file`` reads back), credentials redacted."""
    if is_secret(field_name, value):
        return _toml_string(REDACTED)
    if value is None:
        return '"auto"' if FIELD_TYPES[field_name] == bool | None else '""'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, Path):
        return _shown(str(value))
    if isinstance(value, str):
        return _shown(value)
    if isinstance(value, RateLimit):
        return f"{{ rate = {value.rate!r}, burst = {value.burst} }}"
    if isinstance(value, tuple) and all(isinstance(v, IssuerConfig) for v in value):
        return "[" + ", ".join(f"{{ issuer = {_shown(i.issuer)}, jwks = {_shown(i.jwks)} }}" for i in value) + "]"
    return "[" + ", ".join(_shown(str(v)) for v in value) + "]"


def render(loaded: Loaded) -> str:
    """The effective configuration as TOML, each line commented with its source.

    The output can be saved and passed back with ``--config`` (redacted values excepted).
    """
    rows = [(name, show_value(name, getattr(loaded.config, name)), str(loaded.origins[name])) for name in FIELD_TYPES]
    # Sources line up in a column; a long value pushes only its own comment along.
    width = min(max(len(name) + 3 + len(value) for name, value, _ in rows), 64)
    return "\n".join(f"{f'{name} = {value}':<{width}}  # {origin}" for name, value, origin in rows) + "\n"


# --- the flags of ``botcall serve`` ---------------------------------------------------------------


def add_flags(parser: argparse.ArgumentParser) -> None:
    """The flags of ``botcall serve`` (and ``botcall config show``). Each defaults to
    "not given", so the file and the environment show through; help texts name
    the built-in defaults."""
    defaults = {f.name: f.default for f in dataclasses.fields(Config)}

    def default(name: str) -> str:
        return f"(default {defaults[name]}; ${env_name(name)})"

    parser.add_argument("--config", type=Path, default=None, metavar="FILE",
                        help=f"a TOML file of settings, under flags and the environment (default ${CONFIG_FILE_ENV})")
    parser.add_argument("--host", default=None, help=f"HTTP bind address {default('http_host')}")
    parser.add_argument("--port", type=int, default=None, help=f"HTTP port, 0 = any free {default('http_port')}")
    parser.add_argument("--media-host", default=None,
                        help=f"UDP media bind address {default('media_host')}; on a wildcard every local address is announced to browsers")
    parser.add_argument("--media-port", type=int, default=None, help=f"UDP media port {default('media_port')}")
    parser.add_argument("--media-advertised-host", default=None, metavar="HOST[,HOST...]",
                        help="announce only these media addresses to browsers and bots, e.g. a NAT's public one "
                        "(default: --media-host, or every local address when that is a wildcard)")
    parser.add_argument("--public-url", default=None, help="base of invite and WebSocket URLs (default: http://HOST:PORT)")
    parser.add_argument("--issuer", action="append", default=[], metavar="ISS", help="a trusted issuer (exact iss); pair each with --jwks")
    parser.add_argument("--jwks", action="append", default=[], metavar="URL_OR_FILE", help="the JWKS of the matching --issuer")
    parser.add_argument("--audience", default=None, help=f"the aud attestations must name {default('audience')}")
    dev = parser.add_mutually_exclusive_group()
    dev.add_argument("--dev-issuer", dest="dev_issuer", action="store_const", const=True, default=None,
                     help="trust the local dev issuer even with --issuer (default: only when no issuer is given)")
    dev.add_argument("--no-dev-issuer", dest="dev_issuer", action="store_const", const=False,
                     help="never create or trust the local dev issuer")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="dev issuer key and replay cache (default $BOTCALL_DATA_DIR or ~/.local/share/botcall)")
    parser.add_argument("--trusted-proxy", action="append", default=[], metavar="CIDR",
                        help="believe X-Forwarded-For/Forwarded from these addresses (repeatable)")
    parser.add_argument("--tls-cert", type=Path, default=None, metavar="FILE",
                        help="serve HTTPS and WSS with this PEM certificate (chain); needs --tls-key")
    parser.add_argument("--tls-key", type=Path, default=None, metavar="FILE", help="the PEM private key of --tls-cert")
    parser.add_argument("--tls-self-signed", action="store_const", const=True, default=None,
                        help="serve HTTPS with a development certificate made in the data directory (prints how to trust it)")
    parser.add_argument("--turn-uri", action="append", default=[], metavar="URI",
                        help="a TURN server for clients behind strict networks, e.g. turn:host:3478?transport=udp, "
                        "turns:host:5349?transport=tcp (repeatable; needs --turn-secret)")
    parser.add_argument("--turn-secret", default=None, metavar="SECRET",
                        help="the TURN server's static-auth-secret (coturn use-auth-secret); prefer $BOTCALL_TURN_SECRET")
    parser.add_argument("--max-connections", type=int, default=None,
                        help=f"open HTTP/WebSocket connections at once, kept below the open-file limit {default('max_connections')}")
    parser.add_argument("--max-connections-per-ip", type=int, default=None,
                        help=f"open connections at once from one address {default('max_connections_per_ip')}")
    parser.add_argument("--connection-rate-per-ip", type=float, default=None,
                        help=f"new connections per second from one address, burst 4x (default {Config.connection_rate_per_ip.rate})")
    parser.add_argument("--header-timeout", type=float, default=None,
                        help=f"seconds for a request's headers to arrive {default('header_timeout_s')}")
    parser.add_argument("--body-timeout", type=float, default=None,
                        help=f"seconds for a request body to arrive {default('body_timeout_s')}")
    parser.add_argument("--http2", action="store_const", const=True, default=None,
                        help="allow HTTP/2 (h2 over TLS, h2c); off by default")
    parser.add_argument("--shutdown-grace", type=float, default=None,
                        help=f"seconds clients get to close on SIGTERM {default('shutdown_grace_s')}")
    parser.add_argument("--log-level", default=None, choices=("DEBUG", "INFO", "WARNING", "ERROR"),
                        help=f"{default('log_level')}")
    parser.add_argument("--log-format", default=None, choices=("human", "json"),
                        help=f"human lines or one JSON object per line {default('log_format')}")
    parser.add_argument("--redis", default=None, metavar="redis://HOST:PORT/DB",
                        help="clustered mode: share rooms, nodes and used tokens with every node on this Redis (default: none, in memory)")
    parser.add_argument("--node-ttl", type=float, default=None,
                        help=f"seconds of missed heartbeats before a node is lost {default('node_ttl_s')}")
    parser.add_argument("--drain-timeout", type=float, default=None,
                        help=f"seconds a draining node lets its calls run {default('drain_timeout_s')}")
    parser.add_argument("--cluster-ca", type=Path, default=None, metavar="FILE",
                        help="with --redis: the PEM CA bundle other nodes' HTTPS certificates are checked with (default: the system's)")
    parser.add_argument("--node-name", default=None,
                        help="this node's id in the cluster and in logs (default: host name:port)")
    parser.add_argument("--workers", default=None, metavar="N|auto",
                        help=f"worker processes, each with its own media port (media port + index); auto = one per core {default('workers')}")


# Flags that set one field under another name (the rest map --a-b onto a_b).
_FLAG_FIELDS = {
    "host": "http_host", "port": "http_port", "header_timeout": "header_timeout_s",
    "body_timeout": "body_timeout_s", "shutdown_grace": "shutdown_grace_s",
    "redis": "redis_url", "node_ttl": "node_ttl_s", "drain_timeout": "drain_timeout_s",
}
_PLAIN_FLAGS = (
    "host", "port", "media_host", "media_port", "media_advertised_host", "public_url", "audience",
    "dev_issuer", "data_dir", "max_connections", "max_connections_per_ip", "header_timeout",
    "body_timeout", "http2", "shutdown_grace", "log_level", "log_format", "tls_cert", "tls_key", "tls_self_signed",
    "turn_secret",
    "workers", "redis", "node_ttl", "drain_timeout", "node_name", "cluster_ca",
)


def flags_from_args(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, str]]:
    """The fields the flags in ``args`` set, and the flag that set each.

    Raises:
        ConfigError: unpaired ``--issuer``/``--jwks``, or a bad ``--connection-rate-per-ip``.
    """
    values: dict[str, Any] = {}
    names: dict[str, str] = {}
    for dest in _PLAIN_FLAGS:
        value = getattr(args, dest)
        if value is not None:
            field_name = _FLAG_FIELDS.get(dest, dest)
            values[field_name], names[field_name] = value, "--" + dest.replace("_", "-")
    if len(args.issuer) != len(args.jwks):
        raise ConfigError("give exactly one --jwks for each --issuer")
    if args.issuer:
        values["issuers"] = tuple(IssuerConfig(issuer=i, jwks=j) for i, j in zip(args.issuer, args.jwks))
        names["issuers"] = "--issuer/--jwks"
    if args.trusted_proxy:
        values["trusted_proxies"], names["trusted_proxies"] = tuple(args.trusted_proxy), "--trusted-proxy"
    if args.turn_uri:
        values["turn_uris"], names["turn_uris"] = tuple(args.turn_uri), "--turn-uri"
    if args.connection_rate_per_ip is not None:
        rate = args.connection_rate_per_ip
        try:
            values["connection_rate_per_ip"] = RateLimit(rate=rate, burst=max(1, round(4 * rate)) if math.isfinite(rate) else 1)
        except ConfigError as exc:
            raise ConfigError(f"--connection-rate-per-ip: {exc}") from None
        names["connection_rate_per_ip"] = "--connection-rate-per-ip"
    return values, names


def load_from_args(args: argparse.Namespace, environ: Mapping[str, str]) -> Loaded:
    """``load`` with the flags in ``args`` (from ``add_flags``), ``--config`` and ``environ``.

    Raises:
        ConfigError: see ``load`` and ``flags_from_args``.
    """
    flags, names = flags_from_args(args)
    return load(flags=flags, flag_names=names, environ=environ, config_file=args.config)


__all__ = [
    "BadValue", "CONFIG_FILE_ENV", "ENV_PREFIX", "Loaded", "Origin", "Source", "add_flags", "env_name", "flags_from_args",
    "is_secret", "load", "load_from_args", "parse_text", "read_env", "read_file", "render", "show_value",
]
