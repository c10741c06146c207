"""The replay cache on disk: used tokens stay used across restarts."""

from __future__ import annotations

import os

import pytest

from botcall.auth.attestation import ReplayCache
from botcall.auth.replay_journal import COMPACT_SLACK, ReplayJournal
from botcall.errors import AttestationError
from tests.kit.server import T0, running_server


def test_entries_survive_a_new_journal_and_expired_ones_are_dropped(tmp_path):
    journal = ReplayJournal.in_dir(tmp_path)
    cache = ReplayCache(100, journal=journal)
    cache.record("iss", "a", until=T0 + 60)
    cache.record("iss", "b", until=T0 + 5)
    journal.close()

    again = ReplayJournal.in_dir(tmp_path)
    restored = ReplayCache(100, journal=again)
    restored.restore(again.load(now=T0 + 10))
    with pytest.raises(AttestationError) as info:
        restored.check("iss", "a", T0 + 10)
    assert info.value.code == "attestation_replayed"
    restored.check("iss", "b", T0 + 10)  # expired: forgotten
    assert oct(os.stat(again.path).st_mode & 0o777) == "0o600"


def test_torn_and_foreign_lines_are_skipped(tmp_path):
    path = tmp_path / "replay-cache.jsonl"
    path.write_bytes(
        b'[1900000000.0,"iss","good"]\n'
        b"not json\n"
        b'{"until": 1}\n'
        b'[1900000000.0, 5, "bad-issuer-type"]\n'
        b"[" + b"9" * 5000 + b"]\n"
        b'[1900000000.0,"iss","torn'  # a crash mid-write: no newline
    )
    entries = ReplayJournal(path).load(now=T0)
    assert entries == [("iss", "good", 1900000000.0)]


def test_compaction_keeps_live_entries_and_is_bounded(tmp_path):
    journal = ReplayJournal.in_dir(tmp_path)
    cache = ReplayCache(100_000, journal=journal)
    for k in range(COMPACT_SLACK + 100):
        cache.record("iss", f"old{k}", until=T0 + 1)
    cache.record("iss", "live", until=T0 + 1000)
    cache.prune(T0 + 2)
    assert len(cache) == 1 and journal.needs_compaction(len(cache))
    journal.compact(cache.entries())
    assert journal.lines == 1 and not journal.needs_compaction(len(cache))
    assert journal.path.read_bytes().count(b"\n") == 1
    cache.record("iss", "after", until=T0 + 1000)  # appends to the new file
    assert {jti for _, jti, _ in ReplayJournal(journal.path).load(T0 + 3)} == {"live", "after"}


async def test_a_token_used_before_a_restart_is_refused_after_it(tmp_path):
    async with running_server(tmp_path) as srv:
        room_id = (await srv.create_room(srv.token(agent="creator#1"))).json()["room_id"]
        token = srv.token()
        assert (await srv.join(token, room_id)).status == 200
    async with running_server(tmp_path) as srv:
        response = await srv.join(token, room_id)
        # The token is refused first (the room is back too: the rooms journal).
        assert (response.status, response.error_code) == (401, "attestation_replayed")
