"""Harnesses for the relays ``bench/compare.py`` measures side by side.

Each module starts one relay on 127.0.0.1 with a fixed configuration, sets up
flows through it for the load generator (``bench/loadgen.py``) and stops it:

* :mod:`bench.peers.process`: subprocess control shared by all of them (core
  pinning, CPU time from ``/proc``, kill on exit, Debian package install);
* :mod:`bench.peers.coturn`: coturn (TURN ChannelData, one allocation per flow);
* :mod:`bench.peers.rtpengine`: rtpengine in userspace mode (ng protocol);
* :mod:`bench.peers.botcall_relay`: BotCall itself (bot pairs, browser-style SRTP legs);
* :mod:`bench.peers.aiortc`: an aiortc ``MediaRelay`` in its own virtualenv.
"""
