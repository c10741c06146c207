"""Nodes on Redis: the node registry, the room directory and the shared replay cache.

Keys (all under ``botcall:``; docs/architecture.md, "Nodes on Redis"):

* ``nodes`` — a set of node ids ever registered and not yet reaped;
* ``node:<id>`` — a JSON string ``{"url", "load", "draining", "starting"}`` with
  a TTL of ``node_ttl_s``: the heartbeat (``SET ... PX``). When it expires the
  node is lost;
* ``node:<id>:rooms`` — a set of the room ids placed on the node;
* ``room:<id>`` — a hash ``node, worker, state (open|closed), reason, expires_at``
  and the room's record (``Room.record()``: owner, limits, created_at,
  interruption, the invite secret's SHA-256), expiring
  ``closed_rooms_remembered_s`` after the room does;
* ``jti:<sha256(iss NUL jti)>`` — a used attestation, ``SET NX PXAT`` until it
  could no longer be accepted: the first ``SET`` wins on every node at once;
* ``drain:<id>`` — set by ``botcall drain``: the node stops taking rooms;
* ``peer_secret`` — a random value every node reads at start; a node proves a
  request it forwards to a peer came from a node (not a client) with it.

A lost node's rooms are closed (reason ``node_lost``) by one Lua script, run
by every surviving node's reaper: atomic, and idempotent when two run it.

A node that starts again under the same id runs ``resume`` (another script)
before its workers start: if its heartbeat is still alive, its open, unexpired
rooms come back as records for the workers to hold again; if the heartbeat
expired, the node *was* lost (other nodes may already have answered
``410 node_lost``), so its rooms are closed ``node_lost`` as a reaper would.
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import trio

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


# KEYS: node key, node rooms set, nodes set. ARGV: node id, reason, room key prefix,
# now, heartbeat, heartbeat ttl (ms), restore (1|0), then the room ids the node holds.
# Returns the HGETALL of every room to restore.
_RESUME = """
local alive = redis.call('EXISTS', KEYS[1]) == 1 and ARGV[7] == '1'
local held = {}
for i = 8, #ARGV do held[ARGV[i]] = true end
local now = tonumber(ARGV[4])
local out = {}
for _, room in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  if not held[room] then
    local key = ARGV[3] .. room
    if redis.call('HGET', key, 'state') ~= 'open' then
      redis.call('SREM', KEYS[2], room)
    elseif alive and (tonumber(redis.call('HGET', key, 'expires_at')) or 0) > now then
      out[#out + 1] = redis.call('HGETALL', key)
    else
      local reason = ARGV[2]
      if alive then reason = 'expired' end
      redis.call('HSET', key, 'state', 'closed', 'reason', reason, 'closed_at', ARGV[4])
      redis.call('SREM', KEYS[2], room)
    end
  end
end
redis.call('SET', KEYS[1], ARGV[5], 'PX', ARGV[6])
redis.call('SADD', KEYS[3], ARGV[1])
return out
"""


@dataclass(frozen=True)
class Node:
    """A live node as its heartbeat describes it (``starting``: restoring its rooms,
    its workers not yet ready: no rooms are placed there yet)."""

    node_id: str
    url: str
    load: float
    draining: bool
    starting: bool = False


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

    def __init__(self, redis: Redis, node_id: str, url: str, *, ttl: float, closed_for: float, max_rooms: int = 100_000) -> None:
        self.redis = redis
        self.node_id = node_id
        self.url = url.rstrip("/")
        self.ttl = ttl
        self.closed_for = closed_for
        self.peer_secret = ""
        self.draining = False
        self.starting = True
        self.max_rooms = max_rooms
        # Room records (``Room.record()``) of this node's live rooms, by room id,
        # and the (worker, record) and (reason, at) not yet written to Redis: the
        # workers report them on stdout and ``flush`` writes them (again after an
        # outage). Each holds at most ``max_rooms`` entries, oldest dropped first.
        self.records: OrderedDict[str, dict[str, str]] = OrderedDict()
        self.unwritten_rooms: OrderedDict[str, int] = OrderedDict()
        self.unwritten_closes: OrderedDict[str, tuple[str, float]] = OrderedDict()
        # The supervisor's room writer and its heartbeat both flush: one at a time,
        # or both would write (and then forget) the same oldest entry.
        self._flushing = trio.Lock()

    def _beat(self, load: float) -> str:
        return json.dumps({"url": self.url, "load": load, "draining": self.draining, "starting": self.starting})

    async def resume(self, now: float, *, restore: bool, held: tuple[str, ...] = ()) -> list[dict[str, str]]:
        """Register (this node starting) and settle the rooms Redis says it holds.

        Args:
            now: Unix time.
            restore: the node has just started (its workers hold nothing yet): if
                its heartbeat is still alive, return its open, unexpired rooms to
                hold again. Otherwise (``False``, or the heartbeat expired: the node
                was lost) close them ``node_lost``.
            held: rooms this node does hold: left alone.

        Returns:
            The rooms to restore: each its directory hash (``node``, ``worker``,
            ``state``, … and the ``Room.record()`` fields).

        Raises:
            RedisUnavailable: Redis did not answer.
        """
        reply = await self.redis.execute(
            "EVAL", _RESUME, 3,
            PREFIX + f"node:{self.node_id}", PREFIX + f"node:{self.node_id}:rooms", PREFIX + "nodes",
            self.node_id, NODE_LOST, PREFIX + "room:", now, self._beat(0.0), int(self.ttl * 1000), int(restore), *held,
        )
        rooms = []
        for values in reply or []:
            fields = {values[i].decode(): values[i + 1].decode() for i in range(0, len(values) - 1, 2)}
            rooms.append(fields)
        return rooms

    # --- what the workers report (synchronous; ``flush`` writes it) ---------------------------

    def note_room(self, record: dict[str, str], worker: int) -> None:
        """A worker opened (or restored) a room: remember its record, to write."""
        room_id = record["room_id"]
        self.records[room_id] = record
        self.records.move_to_end(room_id)
        self.unwritten_rooms[room_id] = worker
        self.unwritten_closes.pop(room_id, None)
        for table in (self.records, self.unwritten_rooms):
            while len(table) > self.max_rooms:
                table.popitem(last=False)

    def note_closed(self, room_id: str, reason: str, now: float) -> None:
        """A room of this node closed (its worker said so, or the worker died): to write."""
        self.records.pop(room_id, None)
        self.unwritten_closes[room_id] = (reason, now)
        while len(self.unwritten_closes) > self.max_rooms:
            self.unwritten_closes.popitem(last=False)

    def holds(self, room_id: str) -> bool:
        """Whether ``room_id`` is one of this node's live rooms (reported open, not closed)."""
        return room_id in self.records

    def restore_refused(self, room_id: str, now: float) -> None:
        """A worker could not hold ``room_id`` again: it is lost (``node_lost``)."""
        self.note_closed(room_id, NODE_LOST, now)

    @property
    def unwritten(self) -> bool:
        return bool(self.unwritten_rooms or self.unwritten_closes)

    async def flush(self) -> None:
        """Write the noted rooms and closes to Redis, oldest first (opens before
        closes: a room's close always follows its opening).

        Concurrent calls take turns (the room writer and the heartbeat both
        flush). A room noted again while its write is under way stays noted,
        to be written again: the newer note wins.

        Raises:
            RedisUnavailable: what is not written yet stays noted.
        """
        async with self._flushing:
            while self.unwritten_rooms:
                room_id, worker = next(iter(self.unwritten_rooms.items()))
                record = self.records.get(room_id)
                if record is not None:
                    await self.room_created(room_id, worker, float(record["expires_at"]))
                if self.unwritten_rooms.get(room_id) == worker and self.records.get(room_id) is record:
                    del self.unwritten_rooms[room_id]
            while self.unwritten_closes:
                room_id, close = next(iter(self.unwritten_closes.items()))
                await self.room_closed(room_id, *close)
                if self.unwritten_closes.get(room_id) is close:
                    del self.unwritten_closes[room_id]

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
        await self.redis.execute("SET", PREFIX + f"node:{self.node_id}", self._beat(load), "PX", int(self.ttl * 1000))
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
                live.append(Node(node_id, str(data["url"]), float(data["load"]), bool(data["draining"]), bool(data.get("starting", False))))
            except (ValueError, KeyError, TypeError):
                log.warning("node %s has an unreadable heartbeat", node_id)
        return live

    async def place(self, local_load: float) -> Node | None:
        """The least-loaded live node that is not draining (this one on a tie), or ``None``.

        Args:
            local_load: this node's load now (its heartbeat's may be a few seconds old,
                and misses the rooms placed since).
        """
        candidates = [node for node in await self.nodes() if not node.draining and not node.starting]
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
        """``room_id`` is open on this node's ``worker`` (with its record, if a worker reported it)."""
        key = PREFIX + f"room:{room_id}"
        record = [part for name, value in self.records.get(room_id, {}).items() if name != "expires_at" for part in (name, value)]
        await self.redis.execute(
            "HSET", key, "node", self.node_id, "worker", worker, "state", "open", "reason", "", "expires_at", expires_at, *record
        )
        await self.redis.execute("PEXPIREAT", key, int((expires_at + self.closed_for) * 1000))
        await self.redis.execute("SADD", PREFIX + f"node:{self.node_id}:rooms", room_id)

    async def room_closed(self, room_id: str, reason: str, now: float) -> None:
        """``room_id`` (of this node) closed: it answers ``410`` with ``reason`` and is never restored."""
        key = PREFIX + f"room:{room_id}"
        await self.redis.execute("HSET", key, "state", "closed", "reason", reason, "closed_at", now)
        await self.redis.execute("PEXPIRE", key, int(self.closed_for * 1000), "NX")  # a key that had lost its TTL
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
