"""The Redis store: one cache shared by every gateway that names the same Redis.

Debian's ``redis-server`` has no vector search (that is the RediSearch
module), so the work is split:

- **Redis holds the entries** — each a hash ``modelyard:cache:ENDPOINT:e:ID``
  with the body, the costs, the partition and the vector, expiring by itself
  at the TTL (``PEXPIREAT``) — plus a sorted set of ids by last use (the LRU
  order every gateway shares) and a **stream** of changes (added with its
  vector, deleted, cleared).
- **Each gateway keeps its own vector index**, rebuilt from the hashes when
  it opens and kept consistent by reading the stream: before each semantic
  look-up it reads the events it has not seen (one round trip, batched with
  a check that the stream was not trimmed past its cursor — if it was, the
  index is rebuilt from the hashes).

Why not a vector index in Redis: it needs a module the distribution does not
ship, and a per-process index answers without a round trip per candidate.
Why not a per-process persisted index synchronised some other way (pub/sub):
a stream is ordered and durable, so a gateway that was away, or started
later, catches up instead of silently missing entries.

An exact look-up is one round trip (the hash, and its LRU position
refreshed in the same pipeline). An entry that expired or was evicted by
another gateway is found missing, dropped from the local index, and the
search goes on. Connection errors propagate: `ResponseCache` turns them
into "cache unavailable" and the gateway answers without it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Awaitable, Callable

import numpy as np

from .entry import CorruptEntry, Entry, decode_body, encode_body
from .index import DIM, VectorIndex, nearest_live
from ..extras import require

log = logging.getLogger(__name__)

#: seconds a Redis command may take before the cache is declared unavailable
TIMEOUT_S = 0.5


class RedisStore:
    """An endpoint's cache in a Redis shared by several gateways."""

    backend = "redis"

    def __init__(self, url: str, endpoint: str, *, ttl_s: float, max_entries: int,
                 on_corrupt: Callable[[int], None] = lambda n: None, clock: Callable[[], float] = time.time) -> None:
        aioredis = require("redis.asyncio", "cache", "a Redis response cache")

        self.url = url
        self.ns = f"modelyard:cache:{endpoint}"
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self.on_corrupt = on_corrupt
        self.clock = clock
        self.index = VectorIndex(DIM)
        self.corrupt_dropped = 0
        self._cursor = "0-0"
        self.redis = aioredis.Redis.from_url(url, socket_timeout=TIMEOUT_S, socket_connect_timeout=TIMEOUT_S,
                                             health_check_interval=30)

    def configure(self, *, ttl_s: float, max_entries: int) -> None:
        self.ttl_s, self.max_entries = ttl_s, max_entries

    def _key(self, entry_id: str) -> str:
        return f"{self.ns}:e:{entry_id}"

    @property
    def _lru(self) -> str:
        return f"{self.ns}:lru"

    @property
    def _log(self) -> str:
        return f"{self.ns}:log"

    @property
    def _stream_max(self) -> int:
        return 2 * self.max_entries + 10_000

    # --- opening and closing -------------------------------------------------------------

    async def open(self) -> None:
        await self._rebuild()

    async def _rebuild(self) -> None:
        """Read every entry's vector back from Redis; events after the stream's current end are read later."""
        last = await self.redis.xrevrange(self._log, count=1)
        cursor = _text(last[0][0]) if last else "0-0"
        ids = [_text(i) for i in await self.redis.zrange(self._lru, 0, -1)]
        found: list[str] = []
        partitions: list[str] = []
        vectors: list[np.ndarray] = []
        for start in range(0, len(ids), 1000):
            batch = ids[start:start + 1000]
            pipe = self.redis.pipeline(transaction=False)
            for entry_id in batch:
                pipe.hmget(self._key(entry_id), "partition", "vector")
            for entry_id, (partition, vector) in zip(batch, await pipe.execute()):
                if partition is not None and vector is not None and len(vector) == DIM * 4:
                    found.append(entry_id)
                    partitions.append(_text(partition))
                    vectors.append(np.frombuffer(vector, dtype=np.float32))
        index = VectorIndex(DIM)
        if found:  # a large graph is built off the event loop
            await asyncio.to_thread(index.add_many, found, partitions, np.stack(vectors))
        self.index = index
        self._cursor = cursor
        log.info("cache %s: %d vectors loaded from %s", self.ns, len(self.index), self.url)

    async def close(self) -> None:
        await self.redis.aclose()

    # --- keeping the local index in step -----------------------------------------------------

    async def sync(self) -> None:
        """Apply the changes other gateways made since the last call (one round trip)."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.xrange(self._log, "-", "+", count=1)
        pipe.xread({self._log: self._cursor}, count=10_000)
        first, events = await pipe.execute()
        if first and self._cursor != "0-0" and _stream_id(_text(first[0][0])) > _stream_id(self._cursor):
            log.warning("cache %s: the change stream was trimmed past this gateway's position; reloading", self.ns)
            await self._rebuild()
            return
        for _stream, items in events or ():
            for event_id, fields in items:
                self._apply({_text(k): v for k, v in fields.items()})
                self._cursor = _text(event_id)

    def _apply(self, event: dict[str, Any]) -> None:
        op = _text(event.get("op", b""))
        if op == "add":
            vector = event.get("vector")
            if vector is not None and len(vector) == DIM * 4:
                self.index.add(_text(event["id"]), _text(event["partition"]), np.frombuffer(vector, dtype=np.float32))
        elif op == "del":
            for entry_id in _text(event.get("ids", b"")).split(","):
                self.index.remove(entry_id)
        elif op == "clear":
            self.index.clear()

    # --- reading --------------------------------------------------------------------------

    async def get(self, entry_id: str) -> Entry | None:
        pipe = self.redis.pipeline(transaction=False)
        pipe.hgetall(self._key(entry_id))
        pipe.zadd(self._lru, {entry_id: self.clock()}, xx=True)
        fields, _ = await pipe.execute()
        if not fields:
            self.index.remove(entry_id)
            return None
        f = {_text(k): v for k, v in fields.items()}
        try:
            kind = _text(f["kind"])
            body = decode_body(f.get("body"), kind)
            entry = Entry(entry_id, _text(f["partition"]), kind, _text(f.get("query", b"")), body,
                          int(f.get("prompt_tokens", 0)), int(f.get("completion_tokens", 0)),
                          float(f.get("cost_usd", 0.0)), float(f["created_at"]), float(f["expires_at"]))
        except (CorruptEntry, KeyError, ValueError, UnicodeDecodeError) as exc:
            await self._delete([entry_id])
            self._corrupt(1, str(exc) or type(exc).__name__)
            return None
        if entry.expires_at <= self.clock():
            await self._delete([entry_id])
            return None
        return entry

    async def nearest(self, partition: str, vector: np.ndarray, threshold: float,
                      accept: Callable[[Entry, float], Awaitable[bool]] | None = None) -> tuple[Entry | None, float]:
        await self.sync()
        return await nearest_live(self.index, self.get, partition, vector, threshold, accept)

    # --- writing --------------------------------------------------------------------------

    async def put(self, entry: Entry) -> None:
        now = self.clock()
        mapping: dict[str, Any] = {
            "partition": entry.partition, "kind": entry.kind, "query": entry.query, "body": encode_body(entry.body),
            "prompt_tokens": entry.prompt_tokens, "completion_tokens": entry.completion_tokens,
            "cost_usd": entry.cost_usd, "created_at": entry.created_at, "expires_at": entry.expires_at,
        }
        event: dict[str, Any] = {"op": "add", "id": entry.id, "partition": entry.partition}
        if entry.vector is not None:
            blob = np.asarray(entry.vector, dtype=np.float32).tobytes()
            mapping["vector"] = event["vector"] = blob
            self.index.add(entry.id, entry.partition, entry.vector)
        pipe = self.redis.pipeline(transaction=False)
        pipe.hset(self._key(entry.id), mapping=mapping)
        pipe.pexpireat(self._key(entry.id), int(entry.expires_at * 1000))
        pipe.zadd(self._lru, {entry.id: now})
        if entry.vector is not None:
            pipe.xadd(self._log, event, maxlen=self._stream_max, approximate=True)
        pipe.zremrangebyscore(self._lru, "-inf", now - self.ttl_s)  # used last before the TTL: surely expired
        pipe.zcard(self._lru)
        results = await pipe.execute()
        over = results[-1] - self.max_entries
        if over > 0:
            popped = await self.redis.zpopmin(self._lru, over)
            await self._delete([_text(member) for member, _score in popped])

    async def _delete(self, ids: list[str]) -> None:
        if not ids:
            return
        for entry_id in ids:
            self.index.remove(entry_id)
        pipe = self.redis.pipeline(transaction=False)
        pipe.delete(*[self._key(i) for i in ids])
        pipe.zrem(self._lru, *ids)
        pipe.xadd(self._log, {"op": "del", "ids": ",".join(ids)}, maxlen=self._stream_max, approximate=True)
        await pipe.execute()

    async def delete(self, entry_id: str) -> bool:
        """Delete one entry (a down-rated answer), for every gateway; False when it was not there."""
        existed = bool(await self.redis.exists(self._key(entry_id)))
        await self._delete([entry_id])
        return existed

    async def clear(self, older_than_s: float | None = None) -> int:
        ids = [_text(i) for i in await self.redis.zrange(self._lru, 0, -1)]
        if older_than_s is not None:
            cutoff = self.clock() - older_than_s
            pipe = self.redis.pipeline(transaction=False)
            for entry_id in ids:
                pipe.hget(self._key(entry_id), "created_at")
            created = await pipe.execute()
            ids = [i for i, c in zip(ids, created) if c is None or float(c) < cutoff]
            for start in range(0, len(ids), 1000):
                await self._delete(ids[start:start + 1000])
            return len(ids)
        keys = [k async for k in self.redis.scan_iter(match=f"{self.ns}:e:*", count=1000)]
        pipe = self.redis.pipeline(transaction=False)
        for start in range(0, len(keys), 1000):
            pipe.delete(*keys[start:start + 1000])
        pipe.delete(self._lru)
        pipe.xadd(self._log, {"op": "clear"}, maxlen=self._stream_max, approximate=True)
        await pipe.execute()
        self.index.clear()
        return len(keys)

    def _corrupt(self, count: int, why: str) -> None:
        self.corrupt_dropped += count
        log.warning("cache %s: dropped %d corrupt entr%s (%s)", self.ns, count, "y" if count == 1 else "ies", why)
        self.on_corrupt(count)

    # --- reporting ------------------------------------------------------------------------

    def __len__(self) -> int:
        """Entries this gateway holds vectors for (semantic mode); `stats` counts the ones in Redis."""
        return len(self.index)

    def memory_bytes(self) -> int:
        return self.index.memory_bytes()

    async def stats(self) -> dict[str, Any]:
        pipe = self.redis.pipeline(transaction=False)
        pipe.zcard(self._lru)
        pipe.info("memory")
        entries, info = await pipe.execute()
        return {"backend": "redis", "url": _redact(self.url), "entries": int(entries),
                "partitions": self.index.partitions, "memory_bytes": self.index.memory_bytes(),
                "redis_used_memory_bytes": int(info.get("used_memory", 0)), "corrupt_dropped": self.corrupt_dropped}


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _stream_id(value: str) -> tuple[int, int]:
    ms, _, seq = value.partition("-")
    return int(ms), int(seq or 0)


def _redact(url: str) -> str:
    """A Redis URL without its password."""
    if "@" not in url:
        return url
    scheme, _, rest = url.partition("://")
    return f"{scheme}://***@{rest.split('@', 1)[1]}"
