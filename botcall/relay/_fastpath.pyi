"""Types of the compiled fast path (``_fastpath.c``); see ``fastpath.py``."""

from typing import Sequence

Address = tuple[str, int]
Route = tuple[int, Address, int, int, int, bool, Sequence[Address], float, int]

MAX_FANOUT: int
MAX_ROUTES: int
BATCH: int
MAX_DATAGRAM: int

class FastPath:
    def __init__(self, fd: int) -> None: ...
    def set_routes(self, routes: Sequence[Route], /) -> None: ...
    def take_stats(self) -> tuple[list[tuple[int, int, int, int, float, int]], dict[str, int]]: ...
    def drain(
        self, now: float, forward: bool, limit: int, /
    ) -> tuple[int, bool, list[tuple[bytes, Address]], list[tuple[bytes, int]], list[tuple[bytes, Address]], int]: ...
    def route_count(self) -> int: ...
