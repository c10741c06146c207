"""BotCall as a benchmark subject in the comparison with other relays.

The server, its bench configuration, the bots and the simulated browsers are
those of every BotCall benchmark (:mod:`bench.harness.server`); this harness gives
them the interface ``bench/compare.py`` drives coturn and rtpengine through
(:class:`~bench.harness.process.Harness`). What differs from the other
benchmarks, and why:

* the server runs at the comparison's niceness, as coturn and rtpengine do
  (not :data:`~bench.harness.machine.BENCH_NICE`), so no relay is favoured;
* media consent lasts a day: the comparison latches every bot and browser
  once and measures for up to half an hour, and no peer's flows expire;
* rooms may hold up to ``max_humans`` browsers (the fan-out's K);
* the sockets are the harness's own, not connected to the relay, so the load
  generator sends to BotCall with ``sendto`` exactly as it does to the peers.

Set-up goes through the public interfaces, as a bot or a browser would:
``POST /v1/join`` with a dev-issuer attestation and a STUN Binding request to
latch, answering the relay's check of the address (a bot); the human signaling
WebSocket, a Chrome-shaped ICE check with USE-CANDIDATE, the answer to the
relay's check (signed with the offer's ice-pwd, as a browser does) and a DTLS
1.2 handshake in the client role (a browser-style subscriber,
:class:`~tests.kit.browser.Browser`).
"""

from __future__ import annotations

import socket
from pathlib import Path

from bench.harness.loadgen import Flow
from bench.harness.process import Harness
from bench.harness.server import Api, Bot, RelayProcess, bot_pairs, join_bot, join_browsers, latch_bots
from botcall.webrtc.dtls.certificate import DtlsCertificate
from tests.kit.browser import Browser

# A whole benchmark run fits well inside this; latched addresses must survive it.
BENCH_IDLE_S = 24 * 3600.0
DEFAULT_MAX_HUMANS = 1000
# Configuration changes a variant's name may carry (``botcall+fast+plain``), for
# old-against-new runs in one process: issue 17's compiled fast path
# (docs/bench-results.md §18).
VARIANT_TOKENS: dict[str, dict[str, object]] = {
    "fast": {"media_fast_path": "inline"},
    "fastthread": {"media_fast_path": "thread"},
    "noplayout": {"media_bot_playout": False},
    "nospeech": {"speech_detection": False},
    "plain": {"media_bot_playout": False, "speech_detection": False},
    "mmsg": {"media_batched_syscalls": True},
}


def variant_config(name: str) -> dict[str, object]:
    """The configuration changes of a variant name (``botcall`` alone: none).

    Raises:
        ValueError: not ``botcall`` followed by known ``+TOKEN`` parts.
    """
    head, *tokens = name.split("+")
    if head != "botcall" or any(token not in VARIANT_TOKENS for token in tokens):
        raise ValueError(f"not a BotCall variant: {name!r} (botcall[+{'|'.join(VARIANT_TOKENS)}]...)")
    config: dict[str, object] = {}
    for token in tokens:
        config.update(VARIANT_TOKENS[token])
    return config


class BotCallRelay(Harness):
    """BotCall's bench server in a subprocess, plus bots and browser legs through it.

    Use as a context manager::

        with BotCallRelay(core=0) as relay:
            flows = relay.create_flows(100, packet_size=172)

    Args:
        core: CPU to pin the server to (None: unpinned).
        workdir: the server's data directory and log (default: a new temp dir).
        max_humans: the most browsers one room may hold.
        variant: a name ``botcall+TOKEN+...`` (see :data:`VARIANT_TOKENS`):
            the same server with those configuration changes, compared side
            by side with the default one.
    """

    name = "botcall"

    def __init__(
        self, *, core: int | None = 0, workdir: Path | None = None, max_humans: int = DEFAULT_MAX_HUMANS, variant: str = "botcall"
    ) -> None:
        super().__init__(core=core, workdir=workdir)
        self.max_humans = max_humans
        self.name = variant
        self.config = variant_config(variant)
        self.api: Api | None = None
        self._certificate: DtlsCertificate | None = None
        self._speakers = 0

    def launch(self) -> None:
        """Start the server; returns once it serves.

        Raises:
            HarnessError: the server exits or never becomes ready.
        """
        self.process = self._stack.enter_context(
            RelayProcess(
                core=self.core, data_dir=self.workdir, consent_timeout=BENCH_IDLE_S, max_humans=self.max_humans, nice=None, config=self.config
            )
        )
        self.api = Api(self.process.http_url, self.process.data_dir)
        self._stack.callback(self.api.close)

    def _socket(self, relay_addr: tuple[str, int]) -> socket.socket:
        return self.socket()

    def create_flows(self, count: int, *, packet_size: int = 172) -> list:
        """``count`` bot-to-bot flows, one room of two latched UDP bots each.

        Args:
            count: number of flows.
            packet_size: unused (plain RTP needs no framing); kept so every
                harness is called the same way.

        Returns:
            ``bench.harness.loadgen.Flow`` objects: bot A's socket sends with its
            assigned SSRC, bot B's socket receives what the relay forwards.
        """
        pairs = bot_pairs(self.process, self.api, count, first_index=self.flows_created, new_socket=self._socket)
        self.flows_created += count
        return [Flow(send_sock=a.sock, dest=a.relay_addr, recv_sock=b.sock, ssrc=a.ssrc) for a, b in pairs]

    def create_subscribers(self, count: int) -> tuple[Bot, list[Browser]]:
        """One room: a latched UDP bot speaker and ``count`` connected browser-style subscribers.

        Args:
            count: subscribers (at most ``max_humans``).

        Returns:
            The speaker and the subscribers (their SRTP contexts ready).
        """
        if self._certificate is None:
            self._certificate = DtlsCertificate.generate()
        agent = f"bench-speaker{self._speakers}"
        self._speakers += 1
        room_id, invite = self.api.create_room(agent, max_humans=count)
        speaker = join_bot(self.api, agent, room_id, self.process.media_addr, new_socket=self._socket)
        latch_bots([speaker])
        legs = join_browsers(self.process, [(room_id, invite)] * count, self._certificate, new_socket=self._socket)
        return speaker, legs
