"""Spend counters shared by several gateways, in Redis: reserve before a paid call, settle after.

One gateway counts an endpoint's spend in memory (`telemetry.budget.BudgetTracker`).
Several gateways in front of one database must count it once and enforce its
limits together, or each would admit calls until *its own* count reached the
limit. With ``MODELYARD_REDIS_URL`` set, every budget limit (an endpoint's or
a key's, per UTC day or month) is a Redis hash::

    modelyard:spend:<ns>:<endpoint>:<key id or *>:<day|month>:<period start>
        spent          USD recorded by every gateway (usage records)
        r:<gateway>    USD reserved by calls under way on that gateway

**Reserve** (one Lua script, so atomic across gateways): a paid call may go
ahead only while ``spent + reserved < limit`` for every limit that applies;
then its estimated cost — an upper bound: prompt bytes and the call's token
limit at the card's prices — is added to this gateway's reservation. So once
the counters say a limit is reached, no gateway admits another paid call, and
what was admitted before can take spend past the limit by at most the last
admitted call's cost.

**Settle**: each usage record's cost is added to ``spent`` (`add`), and then
the call's reservation is taken back (`release`), in that order, by one
background task per gateway, so a call's cost is never missing from both.

A gateway that dies cannot take its reservations back: each gateway keeps a
heartbeat key (``…:gw:<gateway>``, 15 s) and the reserve script drops the
reservations of gateways whose heartbeat is gone.

A counter starts (the first time a gateway sees a budget) from the usage
records already in the database for that period, so a budget added to a
busy endpoint, or Redis restarted, starts from what was really spent.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

log = logging.getLogger(__name__)

#: How often the gateway's heartbeat is renewed, and how long it lives.
HEARTBEAT_S, HEARTBEAT_TTL_S = 5.0, 15
#: Counters outlive their period by this much, then Redis drops them.
COUNTER_TTL_S = 40 * 86400

# KEYS: the counters. ARGV: amount, my field (r:<gateway>), heartbeat key prefix, ttl, then one limit per key.
# Returns {index of the first counter at its limit (0: admitted), spent_1, reserved_1, spent_2, ...} as strings.
_RESERVE = """
local amount = tonumber(ARGV[1])
local me = ARGV[2]
local beat = ARGV[3]
local ttl = tonumber(ARGV[4])
local out = {}
local blocked = 0
for i, key in ipairs(KEYS) do
  local limit = tonumber(ARGV[4 + i])
  local fields = redis.call('HGETALL', key)
  local spent, reserved = 0, 0
  for j = 1, #fields, 2 do
    local f, v = fields[j], tonumber(fields[j + 1])
    if f == 'spent' then
      spent = v
    elseif string.sub(f, 1, 2) == 'r:' then
      if f == me or redis.call('EXISTS', beat .. string.sub(f, 3)) == 1 then
        reserved = reserved + v
      else
        redis.call('HDEL', key, f)
      end
    end
  end
  if blocked == 0 and spent + reserved >= limit then blocked = i end
  out[#out + 1] = tostring(spent)
  out[#out + 1] = tostring(reserved)
end
if blocked == 0 then
  for _, key in ipairs(KEYS) do
    redis.call('HINCRBYFLOAT', key, me, amount)
    redis.call('EXPIRE', key, ttl)
  end
end
table.insert(out, 1, tostring(blocked))
return out
"""

# KEYS: counters. ARGV: cost. Adds to 'spent' only where the counter was started (seeded) already.
_ADD = """
for _, key in ipairs(KEYS) do
  if redis.call('HEXISTS', key, 'spent') == 1 then redis.call('HINCRBYFLOAT', key, 'spent', ARGV[1]) end
end
return 0
"""

# KEYS: counters. ARGV: my field, amount. Takes a reservation back (the field goes once it is ~0).
_RELEASE = """
for _, key in ipairs(KEYS) do
  local left = tonumber(redis.call('HINCRBYFLOAT', key, ARGV[1], -tonumber(ARGV[2])))
  if left < 1e-12 then redis.call('HDEL', key, ARGV[1]) end
end
return 0
"""


@dataclass(frozen=True, slots=True)
class Counter:
    """One limit's counter: whose (endpoint, key id or None), which period and when it began, the limit."""

    endpoint: str
    key_id: int | None
    period: str  # day | month
    start: datetime
    limit: float = 0.0


@dataclass(frozen=True, slots=True)
class Reserved:
    """What the counters said when a reservation was asked for: ``blocked`` is the counter at its limit
    (None: admitted), ``totals`` each counter's (spent, reserved by calls under way)."""

    blocked: Counter | None
    totals: dict[Counter, tuple[float, float]]


#: ``seed(endpoint, key_id, since)``: USD the usage records say was spent since then
Seed = Callable[[str, "int | None", datetime], float]


class RedisSpendCounters:
    """The shared counters of one gateway (``gateway``) in the Redis at ``url``; ``namespace`` keeps the
    installations that share a Redis apart (the database they use)."""

    def __init__(self, url: str, gateway: str, seed: Seed, *, namespace: str = "default") -> None:
        import redis.asyncio as aioredis

        self.gateway = gateway
        self.prefix = f"modelyard:spend:{namespace}"
        self._me = f"r:{gateway}"
        self._beat = f"{self.prefix}:gw:"
        self._seed = seed
        self._client = aioredis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
        self._reserve = self._client.register_script(_RESERVE)
        self._add = self._client.register_script(_ADD)
        self._release = self._client.register_script(_RELEASE)
        self._seeded: set[str] = set()
        self._ops: asyncio.Queue[tuple[str, list[str], list[Any]]] | None = None
        self._task: asyncio.Task[None] | None = None
        self._pending = 0

    def key(self, counter: Counter) -> str:
        who = "*" if counter.key_id is None else str(counter.key_id)
        return f"{self.prefix}:{counter.endpoint}:{who}:{counter.period}:{counter.start.date().isoformat()}"

    # -- on the request path -----------------------------------------------------------

    async def reserve(self, counters: Sequence[Counter], amount: float) -> Reserved:
        """Reserve ``amount`` USD on every counter, or nothing when one is at its limit (atomic)."""
        self._ensure_task()
        keys = [self.key(c) for c in counters]
        await self._ensure_seeded(counters, keys)
        reply = await self._reserve(keys=keys, args=[repr(float(amount)), self._me, self._beat, COUNTER_TTL_S,
                                                     *(repr(float(c.limit)) for c in counters)])
        values = [r.decode() if isinstance(r, bytes) else str(r) for r in reply]
        blocked = int(values[0])
        totals = {c: (float(values[1 + 2 * i]), float(values[2 + 2 * i])) for i, c in enumerate(counters)}
        return Reserved(counters[blocked - 1] if blocked else None, totals)

    async def _ensure_seeded(self, counters: Sequence[Counter], keys: list[str]) -> None:
        for counter, key in zip(counters, keys):
            if key in self._seeded:
                continue
            if not await self._client.hexists(key, "spent"):
                spent = await asyncio.to_thread(self._seed, counter.endpoint, counter.key_id, counter.start)
                if await self._client.hsetnx(key, "spent", repr(float(spent))):
                    await self._client.expire(key, COUNTER_TTL_S)
                    log.info("budget counter %s starts at $%.6f (the usage records so far)", key, spent)
            self._seeded.add(key)

    # -- off the request path, in order ------------------------------------------------

    def add(self, counters: Sequence[Counter], cost: float) -> None:
        """Count a usage record's cost on the counters (queued; counters not started yet are left alone)."""
        self._queue("add", [self.key(c) for c in counters], [repr(float(cost))])

    def release(self, counters: Sequence[Counter], amount: float) -> None:
        """Take a reservation back (queued behind the cost of the call it was for)."""
        self._queue("release", [self.key(c) for c in counters], [self._me, repr(float(amount))])

    def _queue(self, op: str, keys: list[str], args: list[Any]) -> None:
        self._ensure_task()
        assert self._ops is not None
        self._pending += 1
        self._ops.put_nowait((op, keys, args))

    def _ensure_task(self) -> None:
        if self._task is None or self._task.done():
            self._ops = self._ops or asyncio.Queue()
            self._task = asyncio.get_running_loop().create_task(self._run(), name="modelyard-spend-counters")

    async def _run(self) -> None:
        """Apply queued adds and releases in order, and keep this gateway's heartbeat alive."""
        assert self._ops is not None
        loop = asyncio.get_running_loop()
        next_beat = 0.0
        while True:
            if loop.time() >= next_beat:
                try:
                    await self._client.set(self._beat + self.gateway, "1", ex=HEARTBEAT_TTL_S)
                    next_beat = loop.time() + HEARTBEAT_S
                except Exception as exc:
                    log.warning("budget counters: Redis unavailable for the heartbeat (%s)", exc)
                    next_beat = loop.time() + 1.0
            try:
                op, keys, args = await asyncio.wait_for(self._ops.get(), timeout=max(next_beat - loop.time(), 0.05))
            except asyncio.TimeoutError:
                continue
            script = self._add if op == "add" else self._release
            for attempt in range(20):
                try:
                    await script(keys=keys, args=args)
                    break
                except Exception as exc:  # Redis restarting: the order matters, so wait rather than skip
                    log.warning("budget counters: could not %s (%s); retrying", op, exc)
                    await asyncio.sleep(min(0.1 * 2 ** attempt, 2.0))
            self._pending -= 1

    async def flush(self) -> None:
        """Wait until every queued add and release is applied (tests, shutdown)."""
        while self._pending > 0 and self._task is not None and not self._task.done():
            await asyncio.sleep(0.01)
        await asyncio.sleep(0)

    async def close(self) -> None:
        try:
            await asyncio.wait_for(self.flush(), timeout=5)
        except asyncio.TimeoutError:
            log.warning("budget counters: closing with %d update(s) not applied", self._ops.qsize() if self._ops else 0)
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        try:
            await self._client.delete(self._beat + self.gateway)  # our reservations go at once
        except Exception:
            pass
        await self._client.aclose()
