"""The ``botcall`` command line.

Each sub-command lives in its own module exposing ``add_arguments(parser)`` and
``run(args) -> int``; only the module of the command being run is imported, so
``TOKEN=$(botcall token ...)`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("botcall.cluster.serve", "run the BotCall server (HTTP API, signaling, media relay)"),
    "config": ("botcall.config_cli", "show the effective configuration (flags > BOTCALL_* > --config file > defaults)"),
    "drain": ("botcall.cluster.drain_cli", "tell a node of a --redis cluster to stop taking rooms and wind down"),
    "token": ("botcall.auth.token_cli", "print a signed attestation from the local dev issuer"),
    "bot": ("botcall.bot_cli", "join a room as a bot: play a WAV, record what it hears"),
    "demo": ("botcall.demo.echo", "run the server plus a demo bot and print the invite link"),
    "media-demo": ("botcall.demo.media", "the media core over a simulated lossy network, offline"),
}


def _usage() -> str:
    lines = ["usage: botcall <command> [options]", "", "commands:"]
    lines += [f"  {name:<8} {help_}" for name, (_, help_) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    name = argv[0]
    if name not in COMMANDS:
        print(f"botcall: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    parser = argparse.ArgumentParser(prog=f"botcall {name}", description=COMMANDS[name][1])
    module.add_arguments(parser)
    args = parser.parse_args(argv[1:])
    return int(module.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
