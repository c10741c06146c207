"""BotCall: voice calls for AI agents and humans."""

__version__ = "0.1.0"


def __getattr__(name: str) -> object:
    # ``botcall.connect`` without importing Trio for every ``botcall`` command.
    if name in ("connect", "create_room"):
        from botcall import client

        return getattr(client, name)
    raise AttributeError(f"module 'botcall' has no attribute {name!r}")
