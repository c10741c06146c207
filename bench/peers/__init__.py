"""Harnesses for the relays ``bench/compare.py`` measures side by side.

Each module starts one relay on 127.0.0.1 with a fixed configuration, sets up
flows through it for the load generator (``bench/harness/loadgen.py``) and stops it:

What all of them share (the harness life cycle, pinned subprocesses, CPU time
from ``/proc``, kill on exit, reserved port blocks, Debian package install) is
:mod:`bench.harness.process`; the fan-out load is :mod:`bench.harness.fanout`.

* :mod:`bench.peers.coturn`: coturn (TURN ChannelData, one allocation per flow);
* :mod:`bench.peers.rtpengine`: rtpengine in userspace mode (ng protocol);
* :mod:`bench.peers.botcall_relay`: BotCall itself: the bench server, bots and
  simulated browsers of :mod:`bench.harness.server` (bot pairs, browser-style SRTP legs);
* :mod:`bench.peers.aiortc`: an aiortc ``MediaRelay`` in its own virtualenv.
"""
