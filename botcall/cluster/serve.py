"""``botcall serve``: one process (``botcall.server``) or, with ``--workers N``
(N > 1, or ``auto`` on a machine of several cores) or ``--redis``, the
supervisor with its routing front and N worker processes (``supervisor.py``).
TLS (``--tls-cert``/``--tls-self-signed``) ends at the front, with workers
and with ``--redis``: a node forwards to another node's ``https://`` public URL
over TLS, checked with ``--cluster-ca`` (or the system's CAs)."""

from __future__ import annotations

import argparse
import os
import sys

import trio

from botcall import server
from botcall.cluster.supervisor import supervise_until_signalled
from botcall.errors import ConfigError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of ``botcall serve`` (``botcall/settings.py``)."""
    server.add_arguments(parser)


def run(args: argparse.Namespace, argv: list[str] | None = None) -> int:
    """Entry point of ``botcall serve``.

    Args:
        args: the parsed flags.
        argv: the flags as given (passed on to the workers); default ``sys.argv[2:]``.
    """
    config = server.config_from_args(args) if _valid(args) else None
    if config is None or (config.worker_count(os.cpu_count() or 1) == 1 and config.redis_url is None):
        return server.run(args)
    serve_argv = list(sys.argv[2:] if argv is None else argv)

    def supervise() -> int:
        # The workers call themselves <node>/w<i> (worker.py): the supervisor is <node>.
        server.configure_logging(config.log_level, config.log_format, node=config.node_name or os.uname().nodename)
        if not config.issuers and not config.dev_issuer_enabled:
            raise ConfigError("no trusted issuer: give --issuer/--jwks or keep the dev issuer")
        trio.run(supervise_until_signalled, config, serve_argv)
        return 0

    return server.run_command("botcall serve", supervise)


def _valid(args: argparse.Namespace) -> bool:
    """Whether the settings load; if not, ``server.run`` reports the problem as usual."""
    try:
        server.config_from_args(args)
    except ConfigError:
        return False
    return True
