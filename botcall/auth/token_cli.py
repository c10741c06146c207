"""``botcall token``: print an attestation signed by the local dev issuer, and nothing else.

``TOKEN=$(botcall token --agent orion#8f3a --controller gopi --scope "call:create call:voice")``
works because only the JWT goes to stdout. The key is created on first use in
the same data directory ``botcall serve`` uses, so a running dev server trusts
it (it re-reads the dev JWKS when the file changes).

The lifetime cap, audience, issuer name and data directory are read as ``serve``
reads them (``--config`` / ``$BOTCALL_CONFIG``, then ``BOTCALL_*``), so a token
the server would refuse — a ``--ttl`` over its ``max_token_lifetime_s``, or a
scope it does not know — is refused here at once, in one line (exit 2).

Light to import: no trio, no quart.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from botcall import settings
from botcall.auth.attestation import SCOPE_CREATE, SCOPE_RECEIVE, SCOPE_VOICE, SCOPES
from botcall.auth.keys import ensure_dev_issuer
from botcall.errors import ConfigError, JwksError

DEFAULT_SCOPE = f"{SCOPE_CREATE} {SCOPE_VOICE} {SCOPE_RECEIVE}"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``botcall token``."""
    parser.add_argument("--agent", required=True, help="the agent id (sub), e.g. orion#8f3a")
    parser.add_argument("--controller", required=True, help="the human controller (ctl) who vouches for the agent")
    parser.add_argument("--scope", default=DEFAULT_SCOPE,
                        help=f'space-separated scopes, of {" ".join(SCOPES)} (default "%(default)s")')
    parser.add_argument("--ttl", type=int, default=None,
                        help="lifetime in seconds (default and maximum: the server's max_token_lifetime_s, 3600 unless configured)")
    parser.add_argument("--room", default=None, help="bind the attestation to one room id")
    parser.add_argument("--audience", default=None, help="aud (default: the server's audience setting, botcall)")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="where the dev issuer key lives (default $BOTCALL_DATA_DIR or ~/.local/share/botcall)")
    parser.add_argument("--issuer", default=None, help="iss (default: the server's dev_issuer_name, botcall-dev)")
    parser.add_argument("--config", type=Path, default=None, metavar="FILE",
                        help="the server's TOML settings, for its limits (default $BOTCALL_CONFIG)")


def _fail(message: str) -> int:
    print(f"botcall token: {message}", file=sys.stderr)
    return 2


def run(args: argparse.Namespace) -> int:
    """Entry point of ``botcall token``: prints the JWT on stdout.

    Returns:
        0 with the JWT printed; 2 for a request the server would refuse or a bad
        setting; 1 when the dev issuer key cannot be read or created.
    """
    try:
        loaded = settings.load(environ=os.environ, config_file=args.config)
    except ConfigError as exc:
        return _fail(str(exc))
    config = loaded.config
    cap = int(config.max_token_lifetime_s)
    ttl = cap if args.ttl is None else args.ttl
    if ttl < 1:
        return _fail("--ttl must be at least 1 second")
    if ttl > cap:
        origin = loaded.origins["max_token_lifetime_s"]
        return _fail(f"--ttl {ttl} is over the server's maximum token lifetime of {cap} s (max_token_lifetime_s, {origin})")
    scopes = tuple(args.scope.split())
    unknown = [scope for scope in scopes if scope not in SCOPES]
    if unknown:
        return _fail(f"unknown scope(s) {' '.join(unknown)}; the scopes are {' '.join(SCOPES)}")
    if not scopes:
        return _fail(f"--scope names no scope; the scopes are {' '.join(SCOPES)}")
    data_dir = args.data_dir if args.data_dir is not None else config.data_dir
    try:
        dev, _ = ensure_dev_issuer(data_dir, args.issuer or config.dev_issuer_name)
    except (OSError, JwksError) as exc:
        print(f"botcall token: {exc}", file=sys.stderr)
        return 1
    token = dev.mint(
        agent=args.agent,
        controller=args.controller,
        audience=args.audience or config.audience,
        scopes=scopes,
        ttl=ttl,
        now=time.time(),
        room=args.room,
    )
    print(token)
    return 0
