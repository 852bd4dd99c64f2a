"""`ResponseCache`: every endpoint's store, opened on first use, and the rule
that the cache never fails a request.

The gateway's cache stage asks three things of it — `lookup`, `save` and,
for the management API, `stats`/`clear` — and it answers from the store the
endpoint's ``cache`` spec names (`LocalStore` or `RedisStore`), opening it
the first time and reopening it when the spec changes.

A semantic neighbour is served only when `modelyard.cache.verify` finds
that it asks the same thing (``cache.verify``, guards by default); a
rejected one falls to the next-nearest, and the look-up says which guard
refused (`Lookup.rejected`).

Feedback closes the loop (`rated_down`): a -1 rating of an answer the cache
served deletes that entry and, when it was a semantic hit, raises the
endpoint's effective threshold by `TIGHTEN_STEP` (at most `TIGHTEN_MAX`
above its ``similarity``). The raised threshold is kept in
``MODELYARD_HOME/cache/thresholds.json`` and shown by `stats`.

When a store fails (Redis unreachable, a disk error) the failure is logged
once, counted (``modelyard_cache_errors_total``) and the gauge
``modelyard_cache_backend_up`` drops to 0; for the next `RETRY_S` seconds
the endpoint is answered without its cache (header ``x-modelyard-cache:
unavailable``), then the store is tried again.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..settings import Settings
from .embed import AsyncEmbedder
from .entry import Entry
from .keys import CacheKeys
from .spec import CacheSpec
from .verify import Judge, Verdict, Verifier

log = logging.getLogger(__name__)

#: seconds an endpoint goes without its cache after the store failed
RETRY_S = 5.0
#: how long a request waits for a store that is still opening (loading its index) before going without it
OPEN_WAIT_S = 1.0
#: what `ResponseCache.store` returns while a store is still opening
WARMING = object()
#: how much one down-rated semantic hit raises the endpoint's threshold, and how far above its spec it may go
TIGHTEN_STEP = 0.01
TIGHTEN_MAX = 0.05
#: answers the cache remembers having served (or stored), so that a rating can find their entry
SERVED_MAX = 100_000


@dataclass(slots=True)
class Lookup:
    """What a look-up found: ``hit``, ``semantic-hit``, ``miss``, ``unavailable`` or ``warming``."""

    result: str
    entry: Entry | None = None
    similarity: float | None = None
    #: the query's embedding (semantic mode), kept to store the answer under
    vector: np.ndarray | None = None
    #: the guards (or the judge) that refused near neighbours on the way, e.g. ``["numbers"]``
    rejected: list[str] | None = None


@dataclass(slots=True)
class Served:
    """An answer the cache served (or stored), remembered by its response id for feedback."""

    endpoint: str
    entry_id: str
    result: str  # semantic-hit | hit | stored
    similarity: float
    key_id: Any


class _Slot:
    __slots__ = ("spec", "store", "opening", "down_until", "error")

    def __init__(self, spec: CacheSpec) -> None:
        self.spec = spec
        self.store: Any = None
        self.opening: asyncio.Task | None = None
        self.down_until = 0.0
        self.error: str | None = None


class ResponseCache:
    """The response caches of one gateway, one per endpoint."""

    def __init__(self, metrics: Any = None, *, root: Path | None = None, embedder: AsyncEmbedder | None = None) -> None:
        self.metrics = metrics
        self._root = root
        self._embedder = embedder
        self._slots: dict[str, _Slot] = {}
        self._verifiers: dict[str, Verifier] = {}
        self._served: OrderedDict[str, Served] = OrderedDict()
        self._tightened: dict[str, float] | None = None
        self._removed: dict[str, int] = {}

    @property
    def root(self) -> Path:
        if self._root is None:
            self._root = Settings.from_env().home / "cache"  # a cache made outside a gateway (tests, tools)
        return self._root

    @property
    def embedder(self) -> AsyncEmbedder:
        if self._embedder is None:
            self._embedder = AsyncEmbedder()
        return self._embedder

    # --- stores ---------------------------------------------------------------------------

    def _make_store(self, endpoint: str, spec: CacheSpec) -> Any:
        on_corrupt = (lambda n: self.metrics.corrupt.labels(endpoint).inc(n)) if self.metrics else (lambda n: None)
        if spec.is_redis:
            from .redis_store import RedisStore

            return RedisStore(spec.backend, endpoint, ttl_s=spec.ttl_s, max_entries=spec.max_entries, on_corrupt=on_corrupt)
        from .local import LocalStore

        return LocalStore(self.root / f"{endpoint}.db", ttl_s=spec.ttl_s, max_entries=spec.max_entries, on_corrupt=on_corrupt)

    async def store(self, endpoint: str, spec: CacheSpec, *, wait_s: float | None = OPEN_WAIT_S) -> Any:
        """The endpoint's open store; None while it is unavailable; `WARMING` while it is still
        opening after `wait_s` seconds (None: wait until it is open). Raises nothing."""
        slot = self._slots.get(endpoint)
        if slot is None or (slot.spec is not spec and slot.spec != spec):
            slot = await self._reconfigure(endpoint, slot, spec)
        if slot.down_until and time.monotonic() < slot.down_until:
            return None
        if slot.store is not None and slot.opening is None:
            if slot.error is not None:
                self._up(endpoint, slot)  # tried again after a failure; the next failure takes it down again
            return slot.store
        if slot.opening is None:
            slot.opening = asyncio.get_running_loop().create_task(self._open(endpoint, slot))
        try:
            await asyncio.wait_for(asyncio.shield(slot.opening), wait_s)
        except asyncio.TimeoutError:
            return WARMING
        return slot.store

    async def _open(self, endpoint: str, slot: _Slot) -> None:
        store = self._make_store(endpoint, slot.spec)
        try:
            await store.open()
        except Exception as exc:
            slot.opening = None
            self.failed(endpoint, exc)
            await _quietly_close(store)
            return
        slot.opening = None
        if self._slots.get(endpoint) is not slot:  # the spec changed while this store was opening
            await _quietly_close(store)
            return
        slot.store = store
        self._up(endpoint, slot)
        if self.metrics is not None:
            self.metrics.entries.labels(endpoint).set_function(lambda: len(store))
            self.metrics.memory.labels(endpoint).set_function(store.memory_bytes)

    async def _reconfigure(self, endpoint: str, slot: _Slot | None, spec: CacheSpec) -> _Slot:
        if slot is not None and slot.store is not None and slot.opening is None \
                and (slot.spec.backend, slot.spec.mode) == (spec.backend, spec.mode):
            slot.store.configure(ttl_s=spec.ttl_s, max_entries=spec.max_entries)
            slot.spec = spec
            return slot
        if slot is not None and slot.store is not None:
            await _quietly_close(slot.store)
        slot = self._slots[endpoint] = _Slot(spec)
        if spec.mode == "semantic":
            self.embedder.warm()
        return slot

    def failed(self, endpoint: str, exc: BaseException) -> None:
        """A store operation failed: go without this endpoint's cache for a while, and say so."""
        slot = self._slots.get(endpoint)
        first = slot is None or slot.error is None
        if slot is not None:
            slot.down_until = time.monotonic() + RETRY_S
            slot.error = f"{type(exc).__name__}: {exc}"
            if slot.spec.is_redis and slot.store is not None:
                # Reconnect and reload the vectors when the store is next tried.
                store, slot.store = slot.store, None
                asyncio.get_running_loop().create_task(_quietly_close(store))
        if first:
            log.warning("cache of endpoint %s unavailable, answering without it for now: %s", endpoint, exc)
        else:
            log.debug("cache of endpoint %s still unavailable: %s", endpoint, exc)
        if self.metrics is not None:
            self.metrics.errors.labels(endpoint).inc()
            self.metrics.backend_up.labels(endpoint).set(0)

    def _up(self, endpoint: str, slot: _Slot) -> None:
        if slot.error is not None:
            log.warning("cache of endpoint %s is available again", endpoint)
        slot.error = None
        if self.metrics is not None:
            self.metrics.backend_up.labels(endpoint).set(1)

    # --- the request path -----------------------------------------------------------------

    def similarity(self, endpoint: str, spec: CacheSpec) -> float:
        """The endpoint's effective threshold: its ``similarity``, raised by down-rated semantic hits."""
        # read back within `TIGHTEN_MAX` of the spec as it is now: a lowered setting lowers it too
        return max(spec.similarity, min(self._tightenings().get(endpoint, 0.0), spec.similarity + TIGHTEN_MAX))

    def verifier(self, spec: CacheSpec) -> Verifier | None:
        if spec.verify == "off":
            return None
        verifier = self._verifiers.get(spec.verify)
        if verifier is None:
            verifier = self._verifiers[spec.verify] = Verifier()
        return verifier

    async def lookup(self, endpoint: str, spec: CacheSpec, keys: CacheKeys, judge: Judge | None = None) -> Lookup:
        """Exact first (no embedding needed), then — in semantic mode — the nearest paraphrase that the
        verification accepts (`judge` only with ``verify: judge``)."""
        store = await self.store(endpoint, spec)
        if store is None:
            return Lookup("unavailable")
        if store is WARMING:
            return Lookup("warming")
        rejected: list[str] = []
        try:
            entry = await store.get(keys.exact) if keys.lookup else None
            if entry is not None:
                return Lookup("hit", entry, 1.0)
            if spec.mode != "semantic":
                return Lookup("miss")
            vector = await self.embedder.embed(keys.query)
            if not keys.lookup:
                return Lookup("miss", vector=vector)
            verifier = self.verifier(spec)
            use_judge = judge if spec.verify == "judge" else None

            async def verified(candidate: Entry, _similarity: float) -> bool:
                if verifier is None:
                    return True
                verdict = verifier.check(candidate.query, keys.query)
                if verdict.same and use_judge is not None:
                    try:
                        same = await use_judge(candidate.query, keys.query)
                    except Exception as exc:  # a judge that fails says no: a miss costs less than a wrong hit
                        log.warning("the cache judge of endpoint %s failed, not serving: %s", endpoint, exc)
                        same = False
                    verdict = verdict if same else Verdict(False, "judge")
                if not verdict.same:
                    rejected.append(verdict.guard or "judge")
                    if self.metrics is not None:
                        self.metrics.rejected.labels(endpoint, verdict.guard or "judge").inc()
                return verdict.same

            entry, similarity = await store.nearest(keys.partition, vector, self.similarity(endpoint, spec),
                                                    verified if verifier is not None else None)
        except Exception as exc:
            self.failed(endpoint, exc)
            return Lookup("unavailable")
        if entry is not None:
            return Lookup("semantic-hit", entry, similarity, vector, rejected or None)
        return Lookup("miss", similarity=similarity or None, vector=vector, rejected=rejected or None)

    # --- feedback --------------------------------------------------------------------------

    def remember(self, response_id: str, endpoint: str, entry_id: str, result: str, similarity: float,
                 key_id: Any = None) -> None:
        """Note that the answer with `response_id` came from (or went into) entry `entry_id`."""
        self._served[response_id] = Served(endpoint, entry_id, result, similarity, key_id)
        self._served.move_to_end(response_id)
        while len(self._served) > SERVED_MAX:
            self._served.popitem(last=False)

    def served(self, response_id: str) -> Served | None:
        """What the cache knows of an answer it served or stored, or None."""
        return self._served.get(response_id)

    async def rated_down(self, response_id: str, spec: CacheSpec) -> dict[str, Any] | None:
        """A -1 rating of an answer the cache served or stored: delete its entry and, for a semantic hit,
        raise the endpoint's threshold. None when the cache knows nothing of `response_id`."""
        served = self._served.get(response_id)
        if served is None:
            return None
        removed = False
        store = await self.store(served.endpoint, spec, wait_s=None)
        if store is not None and store is not WARMING:
            try:
                removed = await store.delete(served.entry_id)
            except Exception as exc:
                self.failed(served.endpoint, exc)
        if removed:
            self._removed[served.endpoint] = self._removed.get(served.endpoint, 0) + 1
        before = self.similarity(served.endpoint, spec)
        after = before
        if served.result == "semantic-hit" and removed:  # one answer tightens once, however often it is rated
            ceiling = min(0.99, spec.similarity + TIGHTEN_MAX)
            after = round(min(ceiling, max(before, before + TIGHTEN_STEP)), 4)
            if after > before:
                self._tightenings()[served.endpoint] = after
                self._save_tightenings()
                log.info("cache of endpoint %s: a down-rated semantic hit (similarity %.4f) raised the threshold "
                         "from %.4f to %.4f", served.endpoint, served.similarity, before, after)
        return {"entry_removed": removed, "similarity_before": before, "similarity_after": after,
                "result": served.result}

    def _tightenings(self) -> dict[str, float]:
        if self._tightened is None:
            try:
                data = json.loads((self.root / "thresholds.json").read_text())
                self._tightened = {str(k): float(v) for k, v in data.items() if 0 < float(v) <= 1}
            except (OSError, ValueError, AttributeError, TypeError):
                self._tightened = {}
        return self._tightened

    def _save_tightenings(self) -> None:
        path = self.root / "thresholds.json"
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(self._tightenings(), indent=1, sort_keys=True))
            tmp.replace(path)
        except OSError as exc:  # the raised threshold still holds in this process
            log.warning("could not keep the cache thresholds in %s: %s", path, exc)

    async def save(self, endpoint: str, spec: CacheSpec, keys: CacheKeys, kind: str, body: dict[str, Any],
                   prompt_tokens: int, completion_tokens: int, cost_usd: float, vector: np.ndarray | None) -> bool:
        """Store an answer; False (and logged) when the store is unavailable."""
        store = await self.store(endpoint, spec)
        if store is None or store is WARMING:
            return False
        now = time.time()
        entry = Entry(keys.exact, keys.partition, kind, keys.query, body, prompt_tokens, completion_tokens, cost_usd,
                      now, now + spec.ttl_s, vector)
        try:
            if spec.mode == "semantic" and vector is None:
                entry.vector = await self.embedder.embed(keys.query)
            await store.put(entry)
        except Exception as exc:
            self.failed(endpoint, exc)
            return False
        return True

    # --- management -----------------------------------------------------------------------

    async def stats(self, endpoint: str, spec: CacheSpec) -> dict[str, Any]:
        out: dict[str, Any] = {"mode": spec.mode, "backend": spec.backend if not spec.is_redis else "redis",
                               "available": True, "similarity": spec.similarity, "ttl": spec.ttl,
                               "max_entries": spec.max_entries, "scope": spec.scope, "verify": spec.verify,
                               "effective_similarity": self.similarity(endpoint, spec),
                               "removed_by_feedback": self._removed.get(endpoint, 0)}
        if not spec.enabled:
            return {**out, "entries": 0, "memory_bytes": 0}
        store = await self.store(endpoint, spec)
        slot = self._slots.get(endpoint)
        if store is WARMING:
            return {**out, "warming": True, "entries": None, "memory_bytes": None}
        if store is None:
            return {**out, "available": False, "error": slot.error if slot else None, "entries": None, "memory_bytes": None}
        try:
            return {**out, **await store.stats()}
        except Exception as exc:
            self.failed(endpoint, exc)
            return {**out, "available": False, "error": f"{type(exc).__name__}: {exc}", "entries": None,
                    "memory_bytes": None}

    async def clear(self, endpoint: str, spec: CacheSpec, older_than_s: float | None = None) -> int:
        """Delete the endpoint's entries (or those older than `older_than_s`); raises when the store is down."""
        store = await self.store(endpoint, spec, wait_s=None)
        if store is None:
            slot = self._slots.get(endpoint)
            raise RuntimeError(slot.error if slot and slot.error else "the cache store is unavailable")
        return await store.clear(older_than_s)

    async def close(self) -> None:
        for slot in self._slots.values():
            if slot.opening is not None:
                await asyncio.gather(slot.opening, return_exceptions=True)
            if slot.store is not None:
                await _quietly_close(slot.store)
        self._slots.clear()
        if self._embedder is not None:
            self._embedder.close()


async def _quietly_close(store: Any) -> None:
    try:
        await store.close()
    except Exception as exc:  # closing a store that already failed
        log.debug("closing a cache store failed: %s", exc)
