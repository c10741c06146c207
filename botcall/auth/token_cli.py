"""``botcall token``: print an attestation signed by the local dev issuer, and nothing else.

``TOKEN=$(botcall token --agent orion#8f3a --controller gopi --scope "call:create call:voice")``
works because only the JWT goes to stdout. The key is created on first use in
the same data directory ``botcall serve`` uses, so a running dev server trusts
it (it re-reads the dev JWKS when the file changes).

Light to import: no trio, no quart.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from botcall.auth.attestation import SCOPE_CREATE, SCOPE_RECEIVE, SCOPE_VOICE
from botcall.auth.keys import ensure_dev_issuer
from botcall.errors import JwksError
from botcall.config import Config, default_data_dir

DEFAULT_SCOPE = f"{SCOPE_CREATE} {SCOPE_VOICE} {SCOPE_RECEIVE}"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``botcall token``."""
    defaults = Config()
    parser.add_argument("--agent", required=True, help="the agent id (sub), e.g. orion#8f3a")
    parser.add_argument("--controller", required=True, help="the human controller (ctl) who vouches for the agent")
    parser.add_argument("--scope", default=DEFAULT_SCOPE, help='space-separated scopes (default "%(default)s")')
    parser.add_argument("--ttl", type=int, default=int(defaults.max_token_lifetime_s),
                        help="lifetime in seconds (default %(default)s, the server's maximum)")
    parser.add_argument("--room", default=None, help="bind the attestation to one room id")
    parser.add_argument("--audience", default=defaults.audience, help="aud (default %(default)s)")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="where the dev issuer key lives (default $BOTCALL_DATA_DIR or ~/.local/share/botcall)")
    parser.add_argument("--issuer", default=defaults.dev_issuer_name, help="iss (default %(default)s)")


def run(args: argparse.Namespace) -> int:
    """Entry point of ``botcall token``: prints the JWT on stdout."""
    if args.ttl < 1:
        print("botcall token: --ttl must be at least 1 second", file=sys.stderr)
        return 2
    scopes = tuple(args.scope.split())
    data_dir = args.data_dir if args.data_dir is not None else default_data_dir()
    try:
        dev, _ = ensure_dev_issuer(data_dir, args.issuer)
    except (OSError, JwksError) as exc:
        print(f"botcall token: {exc}", file=sys.stderr)
        return 1
    token = dev.mint(
        agent=args.agent,
        controller=args.controller,
        audience=args.audience,
        scopes=scopes,
        ttl=args.ttl,
        now=time.time(),
        room=args.room,
    )
    print(token)
    return 0
