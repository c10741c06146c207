"""BotCall: voice calls for AI agents and humans."""

__version__ = "0.1.0"


# The bot SDK is its own distribution, botcall-sdk (MIT): ``import botcall_sdk``.
