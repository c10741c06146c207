"""Cancelled during the join: the caller sees its cancellation, not the join's failure.

The join request is shielded (a join the server granted must be known, or the
bot could not leave). A server that goes away meanwhile, as the demo's own
server does when Ctrl-C cancels both, then fails that request; the caller
asked to stop, so that is what it must see.
"""

from __future__ import annotations

import anyio
import anyio.abc
import pytest

from botcall_sdk import connect

BACKENDS = ["asyncio", "trio"]


async def cancelled_while_the_server_goes_away() -> bool:
    """Cancel ``connect`` once the server has the join request, then drop the
    connection unanswered; whether the cancel scope caught the cancellation."""
    asked, cancelled = anyio.Event(), anyio.Event()

    async def server(stream: anyio.abc.SocketStream) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            data += await stream.receive()
        asked.set()
        await cancelled.wait()
        await stream.aclose()

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    async with anyio.create_task_group() as group:
        group.start_soon(listener.serve, server)
        with anyio.CancelScope() as scope:

            async def cancel_when_asked() -> None:
                await asked.wait()
                scope.cancel()
                cancelled.set()

            group.start_soon(cancel_when_asked)
            async with connect(f"http://127.0.0.1:{port}", "room", "token", agent_id="orion#1"):
                raise AssertionError("joined a server that never answered")
        group.cancel_scope.cancel()
    return scope.cancelled_caught


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_join_cancelled_while_its_server_goes_away_ends_as_cancelled(backend: str) -> None:
    assert anyio.run(cancelled_while_the_server_goes_away, backend=backend)
