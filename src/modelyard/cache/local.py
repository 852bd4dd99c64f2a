"""The local store: one gateway's cache, in memory and persisted to SQLite.

Each endpoint has its own file, ``MODELYARD_HOME/cache/ENDPOINT.db`` — apart
from the main database, so a busy cache never contends with usage records
and clearing one endpoint is deleting rows in one small file.

What lives where:

- **memory**: for every entry its id, expiry and place in the LRU order
  (an ``OrderedDict``), and in semantic mode its vector in a `VectorIndex`.
  Look-ups never touch the disk until they have found an entry.
- **SQLite**: everything, including the response body, which is read by
  primary key only on a hit. Writes go to one background thread, so the
  event loop never waits on a commit; a hit's new place in the LRU order is
  written there too, in batches.

Opening the store reads every live entry's metadata and vector back (the
index survives a restart); expired rows are deleted then. A row whose vector
or body is corrupt is dropped and counted, never served.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections import OrderedDict, deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Awaitable, Callable

import numpy as np

from .entry import CorruptEntry, Entry, decode_body, encode_body
from .index import DIM, VectorIndex, nearest_live

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    id TEXT PRIMARY KEY,
    partition TEXT NOT NULL,
    kind TEXT NOT NULL,
    query TEXT NOT NULL,
    vector BLOB,
    body BLOB NOT NULL,
    prompt_tokens INTEGER NOT NULL DEFAULT 0,
    completion_tokens INTEGER NOT NULL DEFAULT 0,
    cost_usd REAL NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    last_used_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    hits INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS entries_last_used ON entries (last_used_at);
"""

#: a hit's LRU position is written at most this often (seconds)
TOUCH_FLUSH_S = 1.0


class LocalStore:
    """An endpoint's cache in this process, persisted to one SQLite file."""

    backend = "local"

    def __init__(self, path: Path, *, ttl_s: float, max_entries: int, on_corrupt: Callable[[int], None] = lambda n: None,
                 clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self.on_corrupt = on_corrupt
        self.clock = clock
        self.index = VectorIndex(DIM)
        self.corrupt_dropped = 0
        self._lru: OrderedDict[str, tuple[float, float]] = OrderedDict()  # id -> (created_at, expires_at)
        self._expiry: deque[tuple[float, str]] = deque()
        self._touched: dict[str, float] = {}
        self._unwritten: dict[str, Entry] = {}  # stored, and on its way to the disk
        self._touch_task: asyncio.Task | None = None
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"cache-{self.path.stem}")
        self._pending: set[asyncio.Future] = set()
        self._read: sqlite3.Connection | None = None
        self._write: sqlite3.Connection | None = None

    def configure(self, *, ttl_s: float, max_entries: int) -> None:
        """New limits from an edited spec; entries over the new maximum go at the next store."""
        self.ttl_s, self.max_entries = ttl_s, max_entries

    # --- opening and closing -------------------------------------------------------------

    async def open(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._writer, self._load)

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        return conn

    def _load(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._write = self._connect()
        self._write.executescript(SCHEMA)
        self._read = self._connect()
        now = self.clock()
        expired = self._write.execute("DELETE FROM entries WHERE expires_at <= ?", (now,)).rowcount
        bad: list[str] = []
        ids: list[str] = []
        partitions: list[str] = []
        vectors: list[np.ndarray] = []
        rows = self._write.execute(
            "SELECT id, partition, vector, created_at, expires_at FROM entries ORDER BY last_used_at")
        for entry_id, partition, blob, created_at, expires_at in rows:
            if blob is not None:
                vector = np.frombuffer(blob, dtype=np.float32) if len(blob) == DIM * 4 else None
                if vector is None or not np.isfinite(vector).all():
                    bad.append(entry_id)
                    continue
                ids.append(entry_id)
                partitions.append(partition)
                vectors.append(vector)
            self._lru[entry_id] = (created_at, expires_at)
        if ids:
            self.index.add_many(ids, partitions, np.stack(vectors))
        for entry_id in sorted(self._lru, key=lambda i: self._lru[i][1]):
            self._expiry.append((self._lru[entry_id][1], entry_id))
        if bad:
            self._write.executemany("DELETE FROM entries WHERE id = ?", [(i,) for i in bad])
            self._corrupt(len(bad), "a vector of the wrong size")
        log.info("cache %s: %d entries loaded, %d expired ones deleted", self.path, len(self._lru), expired)

    async def close(self) -> None:
        if self._touch_task is not None:
            self._touch_task.cancel()
            self._touch_task = None
        self._flush_touches()
        await asyncio.gather(*list(self._pending), return_exceptions=True)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._writer, self._close_connections)
        self._writer.shutdown(wait=True)

    def _close_connections(self) -> None:
        for conn in (self._read, self._write):
            if conn is not None:
                conn.close()
        self._read = self._write = None

    # --- reading --------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._lru)

    async def get(self, entry_id: str) -> Entry | None:
        """The live entry with this exact key, or None."""
        meta = self._lru.get(entry_id)
        if meta is None:
            return None
        now = self.clock()
        if meta[1] <= now:
            self._forget([entry_id])
            return None
        pending = self._unwritten.get(entry_id)
        if pending is not None:
            self._lru.move_to_end(entry_id)
            return pending
        row = self._read.execute(  # type: ignore[union-attr]
            "SELECT partition, kind, query, body, prompt_tokens, completion_tokens, cost_usd FROM entries WHERE id = ?",
            (entry_id,)).fetchone()
        if row is None:  # deleted behind our back (a clear from another connection): forget it
            self._forget([entry_id], write=False)
            return None
        partition, kind, query, raw, prompt_tokens, completion_tokens, cost_usd = row
        try:
            body = decode_body(raw, kind)
        except CorruptEntry as exc:
            self._forget([entry_id])
            self._corrupt(1, str(exc))
            return None
        self._lru.move_to_end(entry_id)
        self._touch(entry_id, now)
        return Entry(entry_id, partition, kind, query, body, prompt_tokens, completion_tokens, cost_usd, meta[0], meta[1])

    async def nearest(self, partition: str, vector: np.ndarray, threshold: float,
                      accept: Callable[[Entry, float], Awaitable[bool]] | None = None) -> tuple[Entry | None, float]:
        """The nearest live entry in `partition` that `accept` agrees to serve, if its similarity reaches
        `threshold`; and the best similarity seen."""
        return await nearest_live(self.index, self.get, partition, vector, threshold, accept)

    # --- writing --------------------------------------------------------------------------

    async def put(self, entry: Entry) -> None:
        now = self.clock()
        self._purge_expired(now)
        self._lru[entry.id] = (entry.created_at, entry.expires_at)
        self._lru.move_to_end(entry.id)
        self._expiry.append((entry.expires_at, entry.id))
        if entry.vector is not None:
            self.index.add(entry.id, entry.partition, entry.vector)
        evicted = []
        while len(self._lru) > self.max_entries:
            old, _ = self._lru.popitem(last=False)
            self.index.remove(old)
            evicted.append(old)
        blob = None if entry.vector is None else np.asarray(entry.vector, dtype=np.float32).tobytes()
        row = (entry.id, entry.partition, entry.kind, entry.query, blob, encode_body(entry.body), entry.prompt_tokens,
               entry.completion_tokens, entry.cost_usd, entry.created_at, now, entry.expires_at)
        self._unwritten[entry.id] = entry
        for old in evicted:
            self._unwritten.pop(old, None)
        future = self._submit(self._write_entry, row, evicted)
        future.add_done_callback(lambda _f, e=entry: self._unwritten.pop(e.id, None) if self._unwritten.get(e.id) is e else None)

    def _write_entry(self, row: tuple[Any, ...], evicted: list[str]) -> None:
        conn = self._write
        conn.execute("BEGIN")  # type: ignore[union-attr]
        try:
            conn.execute("INSERT OR REPLACE INTO entries (id, partition, kind, query, vector, body, prompt_tokens, "  # type: ignore[union-attr]
                         "completion_tokens, cost_usd, created_at, last_used_at, expires_at) "
                         "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", row)
            if evicted:
                conn.executemany("DELETE FROM entries WHERE id = ?", [(i,) for i in evicted])  # type: ignore[union-attr]
            conn.execute("COMMIT")  # type: ignore[union-attr]
        except BaseException:
            conn.execute("ROLLBACK")  # type: ignore[union-attr]
            raise

    async def delete(self, entry_id: str) -> bool:
        """Delete one entry (a down-rated answer); False when it was not there."""
        if entry_id not in self._lru:
            return False
        self._forget([entry_id])
        await asyncio.gather(*list(self._pending), return_exceptions=True)
        return True

    async def clear(self, older_than_s: float | None = None) -> int:
        """Delete every entry, or those stored more than `older_than_s` seconds ago; returns how many."""
        if older_than_s is None:
            ids = list(self._lru)
        else:
            cutoff = self.clock() - older_than_s
            ids = [i for i, (created, _) in self._lru.items() if created < cutoff]
        self._forget(ids)
        await asyncio.gather(*list(self._pending), return_exceptions=True)
        return len(ids)

    def _forget(self, ids: list[str], *, write: bool = True) -> None:
        for entry_id in ids:
            self._lru.pop(entry_id, None)
            self._touched.pop(entry_id, None)
            self._unwritten.pop(entry_id, None)
            self.index.remove(entry_id)
        if ids and write:
            self._submit(self._delete, ids)

    def _delete(self, ids: list[str]) -> None:
        self._write.executemany("DELETE FROM entries WHERE id = ?", [(i,) for i in ids])  # type: ignore[union-attr]

    def _purge_expired(self, now: float) -> None:
        gone = []
        while self._expiry and self._expiry[0][0] <= now:
            expires_at, entry_id = self._expiry.popleft()
            meta = self._lru.get(entry_id)
            if meta is not None and meta[1] <= now:
                gone.append(entry_id)
        if gone:
            self._forget(gone)

    def _touch(self, entry_id: str, now: float) -> None:
        self._touched[entry_id] = now
        if self._touch_task is None:
            self._touch_task = asyncio.get_running_loop().create_task(self._touch_later())

    async def _touch_later(self) -> None:
        await asyncio.sleep(TOUCH_FLUSH_S)
        self._touch_task = None
        self._flush_touches()

    def _flush_touches(self) -> None:
        if self._touched:
            rows = [(t, i) for i, t in self._touched.items()]
            self._touched = {}
            self._submit(self._write_touches, rows)

    def _write_touches(self, rows: list[tuple[float, str]]) -> None:
        self._write.executemany("UPDATE entries SET last_used_at = ?, hits = hits + 1 WHERE id = ?", rows)  # type: ignore[union-attr]

    def _submit(self, fn: Callable[..., None], *args: Any) -> asyncio.Future:
        future = asyncio.get_running_loop().run_in_executor(self._writer, fn, *args)
        self._pending.add(future)
        future.add_done_callback(self._written)
        return future

    def _written(self, future: asyncio.Future) -> None:
        self._pending.discard(future)
        if not future.cancelled() and future.exception() is not None:
            log.error("cache %s: a write failed: %s", self.path, future.exception())

    def _corrupt(self, count: int, why: str) -> None:
        self.corrupt_dropped += count
        log.warning("cache %s: dropped %d corrupt entr%s (%s)", self.path, count, "y" if count == 1 else "ies", why)
        self.on_corrupt(count)

    # --- reporting ------------------------------------------------------------------------

    def memory_bytes(self) -> int:
        """The vector index plus about 200 bytes of bookkeeping per entry (bodies stay on disk)."""
        return self.index.memory_bytes() + 200 * len(self._lru)

    async def stats(self) -> dict[str, Any]:
        size = sum(p.stat().st_size for p in self.path.parent.glob(self.path.name + "*") if p.is_file())
        return {"backend": "local", "entries": len(self._lru), "partitions": self.index.partitions,
                "memory_bytes": self.memory_bytes(), "disk_bytes": size,
                "corrupt_dropped": self.corrupt_dropped, "path": str(self.path)}
