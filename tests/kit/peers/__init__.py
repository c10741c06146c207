"""Independent WebRTC humans (aiortc, werift) for the interoperability tests.

Each peer runs outside BotCall's virtualenv — aiortc in ``.venv-peers``, werift
from ``tests/kit/peers/werift/node_modules``, both made by ``scripts/setup.sh
test`` — and imports nothing from ``botcall``. ``external.py`` starts them and
speaks their line protocol.
"""
