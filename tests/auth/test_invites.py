"""Invite URLs and secrets."""

from __future__ import annotations

import pytest

from botcall.auth.invites import (
    InviteLink,
    invite_secret_matches,
    invite_url,
    new_invite_secret,
    parse_invite_url_untrusted,
)
from botcall.errors import BadRequest


def test_secrets_carry_at_least_128_bits_and_do_not_repeat():
    secrets = {new_invite_secret() for _ in range(1000)}
    assert len(secrets) == 1000
    # token_urlsafe: 6 bits per character.
    assert all(len(s) * 6 >= 128 for s in secrets)


def test_invite_url_round_trip_keeps_the_secret_in_the_fragment():
    secret = new_invite_secret()
    url = invite_url("https://call.example", "ab12-cd34-ef56", secret)
    assert url == f"https://call.example/join/ab12-cd34-ef56#invite={secret}"
    assert parse_invite_url_untrusted(url) == InviteLink(room_id="ab12-cd34-ef56", secret=secret)


@pytest.mark.parametrize(
    "url",
    [
        "https://call.example/join/ab12",
        "https://call.example/join/ab12#invite=short",
        "https://call.example/rooms/ab12#invite=" + "a" * 24,
        "https://call.example/join/a/b#invite=" + "a" * 24,
        "https://call.example/join/ab12#invite=" + "a" * 23 + "!",
        "http://[::1/join/x#invite=" + "a" * 24,
        "x" * 3000,
        None,
    ],
)
def test_malformed_invite_urls_raise_bad_request(url):
    with pytest.raises(BadRequest) as info:
        parse_invite_url_untrusted(url)
    assert info.value.code == "invite_malformed"


def test_secret_comparison():
    secret = new_invite_secret()
    assert invite_secret_matches(secret, secret)
    assert not invite_secret_matches(secret, secret[:-1])
    assert not invite_secret_matches(secret, secret + "x")
    assert not invite_secret_matches(secret, None)
    assert not invite_secret_matches(secret, 42)
    assert not invite_secret_matches(secret, "\udcff")
