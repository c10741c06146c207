"""Sans-IO cost of the relay's per-packet work on browser (SRTP) legs, against bot legs.

Usage (from the repository root)::

    python -m bench.srtp_hot_path [--calls 1,500] [--packets 20000] [--repeat 30]

The measurement itself is :mod:`tests.kit.hot_path` (a test runs it at a tiny
size). No sockets and no Trio: ``MediaRelay.handle_datagram`` is called directly, in
one process on one core, the way the transport's read loop calls it. Each call
is one room with one UDP bot and one browser whose leg went through a real
ICE-lite check and a real DTLS 1.2 handshake (the browser side is the
simulated browser of ``tests/kit/browser.py``, offering what Chrome 156 offered), so the
relay's SRTP contexts are real libsrtp ones with the negotiated profile
(AEAD_AES_128_GCM). The directions, microseconds per packet, best of
``--repeat`` runs:

* ``bot->bot``: the reference, plain RTP between two bots of a room (separate
  rooms of two bots, as many as calls);
* ``bot->browser``: a bot's RTP through ``WebRtcSink.deliver_rtp``: floor,
  ``OutboundStream.rewrite``, ``SrtpContext.protect``, transmit;
* ``browser->bot``: a browser's SRTP through ``WebRtcLeg.handle_media``:
  ``unprotect_untrusted``, SSRC/payload type rewrite, ``MediaRelay.handle_rtp``
  and the bot's sink.

Packets (172 bytes: 12-byte header and a 160-byte payload) go round-robin over
the calls, each flow numbering on from the previous run so libsrtp's replay
checks pass; the browser's protect happens before the clock starts. ``transmit``
appends to a list; after the runs every direction's output is checked (count,
destination, and for the browser a sample unprotected back to the bot's
payload), so a broken path cannot post a fast number. Garbage collection is
off while the clock runs (the relay's allocation pattern, not the collector's
schedule, is what this measures).
"""

from __future__ import annotations

import argparse

from tests.kit.hot_path import DIRECTIONS, measure


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", default="1,500", help="comma-separated call counts")
    parser.add_argument("--packets", type=int, default=20_000, help="packets per run and direction")
    parser.add_argument("--repeat", type=int, default=30, help="runs per cell; the fastest is printed")
    args = parser.parse_args(argv)
    print(f"172-byte RTP, {args.packets} packets per run, best of {args.repeat} runs, µs per packet (sans-IO)")
    print(f"{'calls':>6}" + "".join(f"{direction:>14}" for direction in DIRECTIONS))
    for calls in (int(value) for value in args.calls.split(",")):
        best = measure(calls, args.packets, args.repeat)
        print(f"{calls:>6}" + "".join(f"{best[direction]:>14.2f}" for direction in DIRECTIONS))


if __name__ == "__main__":
    main()
