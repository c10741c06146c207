"""``botcall config show``: the effective configuration and where each value came from.

Takes the flags of ``botcall serve`` (and ``--config``), reads the environment
as ``serve`` does, and prints TOML with each line's source (``default``,
``file PATH``, ``env BOTCALL_…``, ``flag --…``); credentials are redacted. An
invalid value is refused as ``serve`` would refuse it: one line, exit 2.
"""

from __future__ import annotations

import argparse
import os
import sys

from botcall import settings
from botcall.errors import ConfigError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    commands = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    show = commands.add_parser("show", help="print the effective configuration with each value's source")
    settings.add_flags(show)


def run(args: argparse.Namespace) -> int:
    """Entry point of ``botcall config``."""
    try:
        loaded = settings.load_from_args(args, os.environ)
    except ConfigError as exc:
        print(f"botcall config: {exc}", file=sys.stderr)
        return 2
    sys.stdout.write(settings.render(loaded))
    return 0
