"""Media-port attacks: issue items 3 (STUN replay), 4 (spoofed-source latch), 7 (an
oversized RTP datagram) and a spray of malformed datagrams, each against a live
server with a concurrent call.

The relay's latching is about to gain return routability (it checks a new
address with a Binding request of its own and latches only after a signed
answer); legitimate bots here are SDK bots, which follow whatever the relay
asks, and the assertions are about outcomes: who receives media.
"""

from __future__ import annotations

import pytest

from tests.kit.attack import attacks
from tests.kit.attack.lab import RSS_BOUND

pytestmark = pytest.mark.attack

# The victim hears 50 packets a second: in the 2 s after the replay it must get
# at least half of them (a hijack leaves it none).
VICTIM_MIN_PACKETS = 50
# What the forged source may get: the relay's own check(s) and answers to the
# requests sent in its name, never media.
SPOOF_MAX_STUN = 10


async def test_a_replayed_binding_request_does_not_move_the_session(lab):
    # The issue: an old Binding request of bot A replayed from another port moved
    # A's session (its media went to the attacker).
    lab.start()
    async with lab.window("an old Binding request replayed from another port") as window:
        result = await attacks.stun_replay(lab.target)
    window.impact.assert_harmless(
        rss_bound=RSS_BOUND,
        checks=[
            (result["attacker"]["rtp"] == 0 and result["attacker"]["dtls"] == 0, f"the attacker received the victim's media: {result}"),
            (result["victim_after"] >= VICTIM_MIN_PACKETS, f"the victim stopped receiving: {result}"),
        ],
    )


async def test_a_binding_from_a_forged_source_gets_that_source_no_media(lab):
    # The issue: a Binding request with the attacker's own credentials and a forged
    # source address made the relay stream media to that address (a reflector).
    lab.start()
    async with lab.window("a Binding request from a forged source") as window:
        result = await attacks.stun_spoof_latch(lab.target)
    victim = result["victim"]
    window.impact.assert_harmless(
        rss_bound=RSS_BOUND,
        checks=[
            (victim["rtp"] == 0 and victim["dtls"] == 0 and victim["other"] == 0, f"media went to an address that never asked: {result}"),
            (victim["stun"] <= SPOOF_MAX_STUN, f"the relay kept sending STUN to that address: {result}"),
        ],
    )


async def test_an_oversized_rtp_datagram_is_not_forwarded(lab):
    # The issue: a 60 kB RTP datagram was truncated to 2,048 bytes and forwarded.
    lab.start()
    async with lab.window("one 60 kB RTP datagram") as window:
        result = await attacks.oversized_rtp(lab.target, size=60_000)
    window.impact.assert_harmless(
        rss_bound=RSS_BOUND,
        checks=[
            (result["largest_forwarded"] <= 1500, f"a {result['largest_forwarded']}-byte piece of the datagram was forwarded: {result}"),
            (result["received_after"] >= 10, f"the relay stopped forwarding after it: {result}"),
        ],
    )


async def test_a_spray_of_malformed_datagrams_is_dropped(lab):
    lab.start()
    async with lab.window("5,000 malformed datagrams") as window:
        result = await attacks.udp_spray(lab.target, count=5000)
    replies = result["replies"]
    window.impact.assert_harmless(
        rss_bound=RSS_BOUND,
        checks=[
            (replies["rtp"] == 0 and replies["dtls"] == 0, f"media came back to the sprayer: {result}"),
            (result["reply_bytes"] <= result["sent_bytes"], f"the relay amplified: {result}"),
        ],
    )
