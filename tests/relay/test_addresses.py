"""Which media addresses are announced to browsers and told to bots (relay/addresses.py)."""

import pytest

from botcall.relay.addresses import announced_hosts, bot_media_host, local_addresses

MACHINE = ["127.0.0.1", "192.0.2.2", "fe80::fc:ff:fe00:1", "::1", "fd00::2", "169.254.3.4", "10.1.2.3"]


def test_a_wildcard_announces_every_usable_address_of_its_family_loopback_last():
    assert announced_hosts("0.0.0.0", [], MACHINE) == ("192.0.2.2", "10.1.2.3", "127.0.0.1")


def test_a_dual_stack_wildcard_announces_both_families_ipv4_first():
    assert announced_hosts("::", [], MACHINE) == ("192.0.2.2", "10.1.2.3", "fd00::2", "127.0.0.1", "::1")


def test_a_specific_bind_address_is_announced_alone():
    assert announced_hosts("192.0.2.2", [], MACHINE) == ("192.0.2.2",)


def test_advertised_addresses_replace_the_local_ones_in_their_order():
    assert announced_hosts("0.0.0.0", ["203.0.113.9", "192.0.2.2", "203.0.113.9"], MACHINE) == ("203.0.113.9", "192.0.2.2")


@pytest.mark.parametrize(
    ("announced", "http_is_loopback", "expected"),
    [
        (("192.0.2.2", "127.0.0.1"), True, "127.0.0.1"),
        (("192.0.2.2", "127.0.0.1"), False, "192.0.2.2"),
        (("192.0.2.2",), True, "192.0.2.2"),
    ],
)
def test_bots_get_loopback_only_when_they_must_be_on_this_machine(announced, http_is_loopback, expected):
    assert bot_media_host(announced, http_is_loopback=http_is_loopback) == expected


def test_this_machine_has_loopback_among_its_addresses():
    assert "127.0.0.1" in local_addresses()
