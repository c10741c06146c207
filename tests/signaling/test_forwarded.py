"""Which address is the client: the peer, or what a trusted proxy forwarded."""

from __future__ import annotations

import ipaddress

from hypothesis import given, strategies as st

from botcall.signaling.forwarded import client_address

PROXIES = (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("::1/128"))


def test_headers_from_an_untrusted_peer_are_ignored():
    headers = {"x-forwarded-for": "198.51.100.7", "forwarded": "for=198.51.100.8"}
    assert client_address("203.0.113.5", headers, PROXIES) == "203.0.113.5"
    assert client_address("203.0.113.5", headers, ()) == "203.0.113.5"


def test_a_trusted_proxy_names_the_client_read_from_the_right():
    # The client prepended a lie; the proxies appended what they saw.
    headers = {"x-forwarded-for": "1.2.3.4, 198.51.100.7, 10.1.1.1"}
    assert client_address("10.0.0.2", headers, PROXIES) == "198.51.100.7"


def test_forwarded_wins_over_x_forwarded_for_and_handles_ports_and_ipv6():
    headers = {
        "forwarded": 'for="[2001:db8::17]:4711";proto=https, for=10.2.2.2:8080',
        "x-forwarded-for": "198.51.100.9",
    }
    assert client_address("::1", headers, PROXIES) == "2001:db8::17"


def test_an_unreadable_hop_stops_the_walk_at_the_proxy():
    assert client_address("10.0.0.2", {"x-forwarded-for": "198.51.100.7, garbage"}, PROXIES) == "10.0.0.2"
    assert client_address("10.0.0.2", {"forwarded": "for=unknown"}, PROXIES) == "10.0.0.2"
    assert client_address("10.0.0.2", {}, PROXIES) == "10.0.0.2"


def test_only_proxies_in_the_chain_gives_the_leftmost():
    assert client_address("10.0.0.2", {"x-forwarded-for": "10.9.9.9, 10.8.8.8"}, PROXIES) == "10.9.9.9"


@given(peer=st.one_of(st.none(), st.text(max_size=40)), xff=st.text(max_size=200), fwd=st.text(max_size=200))
def test_never_raises_and_an_untrusted_peer_is_always_itself(peer, xff, fwd):
    headers = {"x-forwarded-for": xff, "forwarded": fwd}
    result = client_address(peer, headers, PROXIES)
    assert isinstance(result, str)
    if peer and not peer.startswith("10."):
        assert result == peer
