"""The registry's events, carried to the media relay (signaling → relay, never back).

The registry (``rooms.py``) is the truth about sessions; the relay layer must
not import it. This listener is the one place where a registry event becomes a
call on ``MediaService``.
"""

from __future__ import annotations

from collections.abc import Callable

from botcall.relay.service import MediaService
from botcall.signaling.rooms import RegistryEvent, SessionAdded, SessionRemoved, SessionUpdated


def media_listener(media: MediaService) -> Callable[[RegistryEvent], None]:
    """A registry listener that adds, removes and mutes ``media``'s peers as sessions change."""

    def on_registry_event(event: RegistryEvent) -> None:
        if isinstance(event, SessionAdded):
            media.add_session(event.session)
        elif isinstance(event, SessionRemoved):
            media.remove_session(event.session.session_id)
        elif isinstance(event, SessionUpdated):
            media.set_muted(event.session.session_id, event.session.muted)

    return on_registry_event


__all__ = ["media_listener"]
