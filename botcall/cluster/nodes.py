"""Nodes on Redis: the node registry, the room directory and the shared replay cache.

Keys (all under ``botcall:``; docs/architecture.md, "Nodes on Redis"):

* ``nodes`` — a set of node ids ever registered and not yet reaped;
* ``node:<id>`` — a JSON string ``{"url", "load", "draining", "rooms"}`` with
  a TTL of ``node_ttl_s``: the heartbeat (``SET ... PX``). When it expires the
  node is lost;
* ``node:<id>:rooms`` — a set of the room ids placed on the node;
* ``room:<id>`` — a hash ``node, worker, state (open|closed), reason, expires_at``
  expiring ``closed_rooms_remembered_s`` after the room does;
* ``jti:<sha256(iss NUL jti)>`` — a used attestation, ``SET NX PXAT`` until it
  could no longer be accepted: the first ``SET`` wins on every node at once;
* ``drain:<id>`` — set by ``botcall drain``: the node stops taking rooms;
* ``peer_secret`` — a random value every node reads at start; a node proves a
  request it forwards to a peer came from a node (not a client) with it.

A lost node's rooms are closed (reason ``node_lost``) by one Lua script, run
by every surviving node's reaper: atomic, and idempotent when two run it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
from dataclasses import dataclass
from typing import Any

from botcall.cluster.resp import Redis

log = logging.getLogger("botcall.cluster")

PREFIX = "botcall:"
NODE_LOST = "node_lost"

# KEYS: node key, node rooms set, nodes set. ARGV: node id, reason, room key prefix, now.
_REAP = """
if redis.call('EXISTS', KEYS[1]) == 1 then return -1 end
local rooms = redis.call('SMEMBERS', KEYS[2])
for _, room in ipairs(rooms) do
  local key = ARGV[3] .. room
  if redis.call('HGET', key, 'state') == 'open' then
    redis.call('HSET', key, 'state', 'closed', 'reason', ARGV[2], 'closed_at', ARGV[4])
  end
end
redis.call('DEL', KEYS[2])
redis.call('SREM', KEYS[3], ARGV[1])
return #rooms
"""


@dataclass(frozen=True)
class Node:
    """A live node as its heartbeat describes it."""

    node_id: str
    url: str
    load: float
    draining: bool


@dataclass(frozen=True)
class RoomEntry:
    """A room as the directory holds it."""

    node: str
    worker: int
    state: str
    reason: str


class NodeDirectory:
    """One node's view of the cluster in Redis (see the module docstring).

    Args:
        redis: the connection.
        node_id: this node's id (unique in the cluster).
        url: where peers reach this node's front (its public URL).
        ttl: seconds a heartbeat lives.
        closed_for: seconds a closed room keeps answering ``410``.
    """

    def __init__(self, redis: Redis, node_id: str, url: str, *, ttl: float, closed_for: float) -> None:
        self.redis = redis
        self.node_id = node_id
        self.url = url.rstrip("/")
        self.ttl = ttl
        self.closed_for = closed_for
        self.peer_secret = ""
        self.draining = False

    async def join(self) -> None:
        """Read (or create) the peer secret. Raises ``RedisUnavailable``."""
        await self.redis.execute("SET", PREFIX + "peer_secret", secrets.token_urlsafe(32), "NX")
        value = await self.redis.execute("GET", PREFIX + "peer_secret")
        self.peer_secret = value.decode()

    async def heartbeat(self, load: float, rooms: dict[str, tuple[int, float]]) -> None:
        """Register (again) with ``load``; write every local room (``room → (worker,
        expires_at)``) that the directory lacks, so a Redis that lost its data
        learns them back. Reads the drain flag."""
        # A Redis that restarted empty gets the secret back from the nodes that hold it.
        await self.redis.execute("SET", PREFIX + "peer_secret", self.peer_secret, "NX")
        self.draining = self.draining or bool(await self.redis.execute("EXISTS", PREFIX + f"drain:{self.node_id}"))
        beat = json.dumps({"url": self.url, "load": load, "draining": self.draining})
        await self.redis.execute("SET", PREFIX + f"node:{self.node_id}", beat, "PX", int(self.ttl * 1000))
        await self.redis.execute("SADD", PREFIX + "nodes", self.node_id)
        if rooms:
            known = await self.redis.execute("SMEMBERS", PREFIX + f"node:{self.node_id}:rooms")
            missing = set(rooms) - {room.decode() for room in known}
            for room_id in missing:
                worker, expires_at = rooms[room_id]
                await self.room_created(room_id, worker, expires_at)

    async def nodes(self) -> list[Node]:
        """Every node with a live heartbeat."""
        ids = sorted(node.decode() for node in await self.redis.execute("SMEMBERS", PREFIX + "nodes"))
        if not ids:
            return []
        beats = await self.redis.execute("MGET", *(PREFIX + f"node:{node_id}" for node_id in ids))
        live = []
        for node_id, beat in zip(ids, beats):
            if beat is None:
                continue
            try:
                data = json.loads(beat)
                live.append(Node(node_id, str(data["url"]), float(data["load"]), bool(data["draining"])))
            except (ValueError, KeyError, TypeError):
                log.warning("node %s has an unreadable heartbeat", node_id)
        return live

    async def place(self, local_load: float) -> Node | None:
        """The least-loaded live node that is not draining (this one on a tie), or ``None``.

        Args:
            local_load: this node's load now (its heartbeat's may be a few seconds old,
                and misses the rooms placed since).
        """
        candidates = [node for node in await self.nodes() if not node.draining]
        candidates = [
            Node(node.node_id, node.url, local_load, node.draining) if node.node_id == self.node_id else node for node in candidates
        ]
        if not candidates:
            return None
        return min(candidates, key=lambda node: (node.load, node.node_id != self.node_id, node.node_id))

    async def node_url(self, node_id: str) -> str | None:
        beat = await self.redis.execute("GET", PREFIX + f"node:{node_id}")
        if beat is None:
            return None
        try:
            return str(json.loads(beat)["url"])
        except (ValueError, KeyError, TypeError):
            return None

    async def room_created(self, room_id: str, worker: int, expires_at: float) -> None:
        key = PREFIX + f"room:{room_id}"
        await self.redis.execute("HSET", key, "node", self.node_id, "worker", worker, "state", "open", "reason", "", "expires_at", expires_at)
        await self.redis.execute("PEXPIREAT", key, int((expires_at + self.closed_for) * 1000))
        await self.redis.execute("SADD", PREFIX + f"node:{self.node_id}:rooms", room_id)

    async def room_closed(self, room_id: str, reason: str, now: float) -> None:
        key = PREFIX + f"room:{room_id}"
        await self.redis.execute("HSET", key, "state", "closed", "reason", reason, "closed_at", now)
        await self.redis.execute("SREM", PREFIX + f"node:{self.node_id}:rooms", room_id)

    async def room(self, room_id: str) -> RoomEntry | None:
        values = await self.redis.execute("HGETALL", PREFIX + f"room:{room_id}")
        if not values:
            return None
        fields = {values[i].decode(): values[i + 1].decode() for i in range(0, len(values) - 1, 2)}
        try:
            return RoomEntry(fields["node"], int(fields["worker"]), fields["state"], fields.get("reason", ""))
        except (KeyError, ValueError):
            return None

    async def reap(self, now: float) -> dict[str, int]:
        """Close the rooms of every node whose heartbeat expired (``node_lost``).

        Returns:
            Rooms closed, by lost node id.
        """
        reaped = {}
        for raw in await self.redis.execute("SMEMBERS", PREFIX + "nodes"):
            node_id = raw.decode()
            if node_id == self.node_id:
                continue
            count = await self.redis.execute(
                "EVAL", _REAP, 3,
                PREFIX + f"node:{node_id}", PREFIX + f"node:{node_id}:rooms", PREFIX + "nodes",
                node_id, NODE_LOST, PREFIX + "room:", now,
            )
            if count >= 0:
                reaped[node_id] = count
        return reaped

    @staticmethod
    def _jti_key(issuer: str, jti: str) -> str:
        return PREFIX + "jti:" + hashlib.sha256(f"{issuer}\0{jti}".encode()).hexdigest()

    async def claim_token(self, issuer: str, jti: str, until: float) -> bool:
        """Mark ``(issuer, jti)`` used until ``until``; ``False`` if some node already had."""
        reply: Any = await self.redis.execute("SET", self._jti_key(issuer, jti), self.node_id, "NX", "PXAT", int(until * 1000))
        return bool(reply == "OK")

    async def release_token(self, issuer: str, jti: str) -> None:
        """Un-claim a token whose join the worker refused (it was not used)."""
        await self.redis.execute("DEL", self._jti_key(issuer, jti))


async def request_drain(redis: Redis, node_id: str) -> None:
    """``botcall drain``: tell ``node_id`` to stop taking rooms (and wind down)."""
    await redis.execute("SET", PREFIX + f"drain:{node_id}", "1", "EX", 86400)
