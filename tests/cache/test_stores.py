"""The vector index and the two stores, on their own: what is found, what
expires, what is evicted, what survives a restart, what is dropped as corrupt.

The Redis tests run a real redis-server (see conftest.py) and are skipped
with a reason where it is not installed."""

from __future__ import annotations

import asyncio
import sqlite3
import time

import numpy as np
import pytest

from modelyard.cache.entry import Entry
from modelyard.cache.index import DIM, VectorIndex
from modelyard.cache.keys import CacheKeys
from modelyard.cache.local import LocalStore
from modelyard.cache.service import ResponseCache
from modelyard.cache.spec import CacheSpec
from modelyard.telemetry.metrics import GatewayMetrics

pytestmark = pytest.mark.anyio


def vec(seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal(DIM).astype(np.float32)
    return v / np.linalg.norm(v)


def near(v: np.ndarray, noise: float = 0.05, seed: int = 0) -> np.ndarray:
    w = v + noise * np.random.default_rng(seed).standard_normal(DIM).astype(np.float32) / np.sqrt(DIM) * 4
    return w / np.linalg.norm(w)


def entry(i: int, *, partition: str = "p", t: float = 1000.0, ttl: float = 3600, vector=True, text: str | None = None) -> Entry:
    body = {"id": f"x{i}", "object": "chat.completion", "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text or f"answer {i}"}, "finish_reason": "stop"}]}
    return Entry(f"e{i}", partition, "chat", f"question {i}", body, 10, 20, 0.001 * i, t, t + ttl, vec(i) if vector else None)


class Clock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


# --- the index ----------------------------------------------------------------------------


@pytest.mark.parametrize("ann_min", [10_000, 16], ids=["numpy", "hnsw"])
def test_index_finds_the_nearest_in_its_partition_only(ann_min):
    index = VectorIndex(ann_min=ann_min)
    for i in range(40):
        index.add(f"a{i}", "A", vec(i))
        index.add(f"b{i}", "B", vec(1000 + i))
    found, sim = index.search("A", near(vec(5)))
    assert found == "a5" and sim > 0.9
    found, sim = index.search("B", near(vec(5)))  # same vector, other partition: not a5
    assert found != "a5" and sim < 0.5
    assert index.search("C", vec(5)) == (None, 0.0)
    index.remove("a5")
    found, _ = index.search("A", vec(5))
    assert found != "a5"
    index.add("a5", "A", vec(5))  # a freed slot is reused
    assert index.search("A", vec(5))[0] == "a5"
    assert len(index) == 80 and index.memory_bytes() > 80 * DIM * 2


def test_index_refuses_a_vector_of_the_wrong_size():
    with pytest.raises(ValueError):
        VectorIndex().add("x", "p", np.ones(10))


# --- the local store ------------------------------------------------------------------------


def open_local(tmp_path, clock=None, **kw) -> LocalStore:
    store = LocalStore(tmp_path / "ep.db", ttl_s=kw.pop("ttl_s", 3600), max_entries=kw.pop("max_entries", 100),
                       clock=clock or Clock(), **kw)
    return store


async def test_local_exact_and_nearest(tmp_path):
    store = open_local(tmp_path)
    await store.open()
    await store.put(entry(1))
    got = await store.get("e1")
    assert got.body["choices"][0]["message"]["content"] == "answer 1" and got.tokens == 30
    assert await store.get("nope") is None
    found, sim = await store.nearest("p", near(vec(1)), 0.9)
    assert found.id == "e1" and sim > 0.9
    found, sim = await store.nearest("p", vec(99), 0.9)
    assert found is None and sim < 0.5
    await store.close()


async def test_local_ttl_expiry(tmp_path):
    clock = Clock()
    store = open_local(tmp_path, clock, ttl_s=60)
    await store.open()
    await store.put(entry(1, t=clock.t, ttl=60))
    clock.t += 59
    assert await store.get("e1") is not None
    clock.t += 2
    assert await store.get("e1") is None
    assert (await store.nearest("p", vec(1), 0.5))[0] is None
    assert len(store) == 0
    await store.close()


async def test_local_lru_eviction_keeps_the_recently_used(tmp_path):
    store = open_local(tmp_path, max_entries=3)
    await store.open()
    for i in range(3):
        await store.put(entry(i))
    assert await store.get("e0") is not None  # e0 is now the most recently used; e1 the least
    await store.put(entry(3))
    assert len(store) == 3
    assert await store.get("e1") is None
    assert all([await store.get(f"e{i}") for i in (0, 2, 3)])
    await store.close()
    with sqlite3.connect(tmp_path / "ep.db") as db:
        assert sorted(r[0] for r in db.execute("select id from entries")) == ["e0", "e2", "e3"]


async def test_local_index_survives_a_restart(tmp_path):
    store = open_local(tmp_path)
    await store.open()
    for i in range(5):
        await store.put(entry(i))
    await store.close()
    again = open_local(tmp_path)
    await again.open()
    assert len(again) == 5
    found, sim = await again.nearest("p", near(vec(3)), 0.9)
    assert found.id == "e3" and found.body["choices"][0]["message"]["content"] == "answer 3"
    stats = await again.stats()
    assert stats["entries"] == 5 and stats["memory_bytes"] > 5 * DIM * 4 and stats["disk_bytes"] > 0
    await again.close()


async def test_local_corrupt_entries_are_dropped_counted_and_never_served(tmp_path):
    counted = []
    store = open_local(tmp_path, on_corrupt=counted.append)
    await store.open()
    for i in range(3):
        await store.put(entry(i))
    await store.close()
    with sqlite3.connect(tmp_path / "ep.db") as db:
        db.execute("update entries set body = ? where id = 'e0'", (b"{not json",))
        db.execute("update entries set body = ? where id = 'e1'", (b'{"format": 99, "body": {}}',))
        db.execute("update entries set vector = ? where id = 'e2'", (b"\x00" * 10,))
    store = open_local(tmp_path, on_corrupt=counted.append)
    await store.open()
    assert counted == [1]  # e2's vector, found while loading
    assert await store.get("e0") is None and await store.get("e1") is None
    assert (await store.nearest("p", vec(0), 0.5))[0] is None
    assert sum(counted) == 3 and store.corrupt_dropped == 3 and len(store) == 0
    await store.close()
    with sqlite3.connect(tmp_path / "ep.db") as db:
        assert db.execute("select count(*) from entries").fetchone()[0] == 0


async def test_local_clear_older_than(tmp_path):
    clock = Clock()
    store = open_local(tmp_path, clock, ttl_s=86400)
    await store.open()
    await store.put(entry(1, t=clock.t, ttl=86400))
    clock.t += 7200
    await store.put(entry(2, t=clock.t, ttl=86400))
    assert await store.clear(3600) == 1
    assert await store.get("e1") is None and await store.get("e2") is not None
    assert await store.clear() == 1 and len(store) == 0
    await store.close()


# --- the Redis store ------------------------------------------------------------------------


def redis_store(url: str, clock=None, **kw):
    from modelyard.cache.redis_store import RedisStore

    return RedisStore(url, "ep", ttl_s=kw.pop("ttl_s", 3600), max_entries=kw.pop("max_entries", 100),
                      clock=clock or time.time, **kw)


def live(i: int, **kw) -> Entry:
    """An entry stored now (Redis expires entries on the real clock)."""
    return entry(i, t=time.time(), **kw)


async def test_two_redis_stores_share_entries_and_vectors(redis_db):
    a, b = redis_store(redis_db), redis_store(redis_db)
    await a.open()
    await b.open()
    await a.put(live(1))
    got = await b.get("e1")
    assert got is not None and got.body["choices"][0]["message"]["content"] == "answer 1"
    found, sim = await b.nearest("p", near(vec(1)), 0.9)  # b learns a's vector from the change stream
    assert found.id == "e1" and sim > 0.9
    late = redis_store(redis_db)  # a gateway that starts later loads the vectors from the hashes
    await late.open()
    assert (await late.nearest("p", near(vec(1)), 0.9))[0].id == "e1"
    assert await a.clear() == 1
    assert (await b.nearest("p", near(vec(1)), 0.9))[0] is None
    for s in (a, b, late):
        await s.close()


async def test_redis_eviction_and_corrupt_entries(redis_db):
    import redis

    counted = []
    store = redis_store(redis_db, max_entries=2, on_corrupt=counted.append)
    await store.open()
    for i in range(3):
        await store.put(live(i))
    assert await store.get("e0") is None and await store.get("e2") is not None
    raw = redis.Redis.from_url(redis_db)
    raw.hset("modelyard:cache:ep:e:e2", "body", b"garbage")
    assert await store.get("e2") is None
    assert counted == [1] and not raw.exists("modelyard:cache:ep:e:e2")
    raw.close()
    await store.close()


async def test_redis_entries_expire_by_themselves(redis_db):
    store = redis_store(redis_db, ttl_s=1)
    await store.open()
    now = time.time()
    await store.put(entry(1, t=now, ttl=0.3))
    assert await store.get("e1") is not None
    await asyncio.sleep(0.5)
    assert await store.get("e1") is None
    await store.close()


# --- the never-fail rule --------------------------------------------------------------------


async def test_an_unreachable_redis_is_reported_not_raised(caplog):
    from tests.live_gateway import free_port

    metrics = GatewayMetrics().cache
    cache = ResponseCache(metrics)
    spec = CacheSpec(mode="exact", backend=f"redis://127.0.0.1:{free_port()}/0")
    keys = CacheKeys(partition="p", exact="e1", query="q")
    found = await cache.lookup("ep", spec, keys)
    assert found.result == "unavailable"
    assert await cache.save("ep", spec, keys, "chat", entry(1).body, 1, 1, 0.0, None) is False  # within the retry pause
    assert metrics.backend_up.labels("ep")._value.get() == 0
    assert metrics.errors.labels("ep")._value.get() >= 1
    assert "unavailable" in caplog.text
    stats = await cache.stats("ep", spec)
    assert stats["available"] is False and "Connection" in (stats["error"] or "")
    await cache.close()


async def test_service_semantic_lookup_with_a_fake_embedder(tmp_path):
    class Fake:
        dim = DIM

        def __call__(self, texts):
            return np.stack([vec(len(t)) for t in texts])  # same length, same vector

    from modelyard.cache.embed import AsyncEmbedder

    cache = ResponseCache(GatewayMetrics().cache, root=tmp_path, embedder=AsyncEmbedder(Fake()))
    spec = CacheSpec(mode="semantic", similarity=0.95)
    first = CacheKeys(partition="p", exact="k1", query="How do I reset it?")
    miss = await cache.lookup("ep", spec, first)
    assert miss.result == "miss" and miss.vector is not None
    assert await cache.save("ep", spec, first, "chat", entry(1).body, 5, 6, 0.5, miss.vector)
    assert (await cache.lookup("ep", spec, first)).result == "hit"
    # a rewording of the same length (the fake gives it the same vector), which the guards accept
    para = await cache.lookup("ep", spec, CacheKeys(partition="p", exact="k2", query="How can I reset it"))
    assert para.result == "semantic-hit" and para.entry.id == "k1" and para.similarity > 0.99
    other = await cache.lookup("ep", spec, CacheKeys(partition="q", exact="k3", query="How can I reset it"))
    assert other.result == "miss"
    await cache.close()


def test_bulk_load_builds_the_graph_of_a_large_partition_in_one_go():
    index = VectorIndex(ann_min=16)
    ids = [f"a{i}" for i in range(100)] + [f"b{i}" for i in range(5)]
    partitions = ["A"] * 100 + ["B"] * 5
    index.add_many(ids, partitions, np.stack([vec(i) for i in range(105)]), threads=1)
    assert len(index) == 105 and index.partitions == 2
    assert index.search("A", near(vec(42)))[0] == "a42"
    assert index.search("B", near(vec(102)))[0] == "b2"
    index.remove("a42")
    assert index.search("A", vec(42))[0] != "a42"
    index.add("a42", "A", vec(42))
    assert index.search("A", vec(42))[0] == "a42"


async def test_requests_go_without_a_store_that_is_still_loading(tmp_path):
    class SlowStore:
        def __init__(self) -> None:
            self.inner = open_local(tmp_path)

        async def open(self):
            await asyncio.sleep(3)  # a large index being rebuilt
            await self.inner.open()

        def __getattr__(self, name):
            return getattr(self.inner, name)

        def __len__(self):
            return len(self.inner)

    cache = ResponseCache(GatewayMetrics().cache, root=tmp_path)
    cache._make_store = lambda endpoint, spec: SlowStore()
    spec = CacheSpec(mode="exact")
    keys = CacheKeys(partition="p", exact="e1", query="q")
    assert (await cache.lookup("ep", spec, keys)).result == "warming"
    assert await cache.save("ep", spec, keys, "chat", entry(1).body, 1, 1, 0.0, None) is False
    await asyncio.sleep(1.5)
    assert (await cache.lookup("ep", spec, keys)).result == "miss"
    await cache.close()
