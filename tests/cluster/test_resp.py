"""The RESP2 codec (sans-IO) and the client against a real redis-server."""

from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from botcall.cluster.resp import NEED_DATA, Redis, RedisReplyError, RedisUnavailable, RespError, RespParser, encode_command
from tests.kit.redis import free_port, running_redis


def parse_all(data: bytes, *, bytewise: bool = False) -> list:
    parser = RespParser()
    replies = []
    chunks = [data[i : i + 1] for i in range(len(data))] if bytewise else [data]
    for chunk in chunks:
        parser.feed(chunk)
        while (reply := parser.next_reply_untrusted()) is not NEED_DATA:
            replies.append(reply)
    return replies


def test_replies_of_every_kind_whole_or_byte_by_byte():
    data = b"+OK\r\n-ERR wrong\r\n:42\r\n$5\r\nhello\r\n$-1\r\n*2\r\n$1\r\na\r\n*1\r\n:1\r\n$0\r\n\r\n"
    for bytewise in (False, True):
        replies = parse_all(data, bytewise=bytewise)
        assert replies[0] == "OK" and isinstance(replies[1], RedisReplyError) and replies[2:] == [42, b"hello", None, [b"a", [1]], b""]


def test_encode_command():
    assert encode_command("SET", "k", b"v\r\n", 5) == b"*4\r\n$3\r\nSET\r\n$1\r\nk\r\n$3\r\nv\r\n\r\n$1\r\n5\r\n"


@given(st.binary(max_size=200))
def test_any_bytes_parse_or_raise_resp_error(data):
    try:
        parse_all(data)
    except RespError:
        pass


@pytest.mark.parametrize("bad", [b"?x\r\n", b":12a\r\n", b"$99999999999\r\n", b"$2\r\nabcd", b"*" + b"*1\r\n" * 20])
def test_malformed_replies_raise_resp_error(bad):
    with pytest.raises(RespError):
        parse_all(bad)


async def test_commands_against_a_real_redis_and_a_clear_error_when_it_is_gone(tmp_path):
    async with running_redis(tmp_path) as server:
        redis = Redis(server.url)
        assert await redis.execute("SET", "k", "v", "NX") == "OK"
        assert await redis.execute("SET", "k", "w", "NX") is None
        assert await redis.execute("GET", "k") == b"v"
        with pytest.raises(RedisReplyError):
            await redis.execute("HGET", "k", "f")  # WRONGTYPE
        await server.stop()
        with pytest.raises(RedisUnavailable):
            await redis.execute("GET", "k")
        await server.start()
        assert await redis.execute("GET", "k") is None  # reconnected (to an empty server)
        await redis.aclose()
    with pytest.raises(RedisUnavailable):
        await Redis(f"redis://127.0.0.1:{free_port()}/0", timeout=1).execute("PING")
