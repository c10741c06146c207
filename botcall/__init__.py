"""BotCall: voice calls for AI agents and humans."""

__version__ = "0.1.0"
