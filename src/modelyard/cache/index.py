"""The vector index behind semantic look-ups: the cache's `Index` seam.

An `Index` holds one unit vector per cached entry, grouped by *partition*
(the conversation before the last user message, the parameters, the scope;
see `modelyard.cache.keys`). A search looks only inside one partition and
returns its nearest entry with the cosine similarity.

`VectorIndex` keeps each partition the cheapest way for its size:

- a small partition (most of them: every multi-turn conversation is its own)
  is a NumPy matrix searched exhaustively — exact, and a few microseconds
  for a few hundred rows;
- a partition that grows past `ANN_MIN` entries (single-turn traffic with
  one system prompt puts everything in one) moves to an HNSW graph
  (`usearch`, half-precision vectors): an exhaustive scan of 100,000 float32
  vectors reads 150 MB per query, 12 ms on this machine, while the graph
  answers in well under a millisecond.

The index lives in memory; the stores persist the vectors and rebuild it
when they open.
"""

from __future__ import annotations

import logging
from typing import Any, Awaitable, Callable, Protocol

import numpy as np

from ..extras import require

log = logging.getLogger(__name__)

#: a partition moves from an exhaustive NumPy scan to an HNSW graph past this many entries
ANN_MIN = 2048
DIM = 384


class Index(Protocol):
    """Vectors of cached entries, searched within one partition at a time."""

    def add(self, entry_id: str, partition: str, vector: np.ndarray) -> None:
        """Add (or replace) an entry's vector."""

    def remove(self, entry_id: str) -> None:
        """Forget an entry; unknown ids are ignored."""

    def search(self, partition: str, vector: np.ndarray) -> tuple[str | None, float]:
        """The nearest entry in `partition` and its cosine similarity, or (None, 0.0)."""

    def __len__(self) -> int: ...

    def memory_bytes(self) -> int:
        """About how much memory the index holds."""


def unit(vector: np.ndarray) -> np.ndarray:
    v = np.asarray(vector, dtype=np.float32).reshape(-1)
    norm = float(np.linalg.norm(v))
    return v / norm if norm > 0 else v


class _Partition:
    __slots__ = ("ids", "slots", "matrix", "size", "free", "ann")

    def __init__(self, dim: int) -> None:
        self.ids: list[str | None] = []
        self.slots: dict[str, int] = {}
        self.matrix: np.ndarray | None = np.zeros((8, dim), dtype=np.float32)
        self.size = 0  # rows in use in `matrix` (live or freed)
        self.free: list[int] = []
        self.ann = None  # usearch.index.Index once the partition is large

    def __len__(self) -> int:
        return len(self.slots)


class VectorIndex:
    """`Index` over NumPy matrices for small partitions and HNSW graphs for large ones."""

    def __init__(self, dim: int = DIM, *, ann_min: int = ANN_MIN) -> None:
        self.dim = dim
        self.ann_min = ann_min
        self._partitions: dict[str, _Partition] = {}
        self._where: dict[str, str] = {}

    def __len__(self) -> int:
        return len(self._where)

    def __contains__(self, entry_id: str) -> bool:
        return entry_id in self._where

    @property
    def partitions(self) -> int:
        return len(self._partitions)

    def add(self, entry_id: str, partition: str, vector: np.ndarray) -> None:
        if entry_id in self._where:
            self.remove(entry_id)
        v = unit(vector)
        if v.shape != (self.dim,):
            raise ValueError(f"a vector of {v.shape[0]} dimensions in an index of {self.dim}")
        part = self._partitions.get(partition)
        if part is None:
            part = self._partitions[partition] = _Partition(self.dim)
        slot = part.free.pop() if part.free else self._new_slot(part)
        part.slots[entry_id] = slot
        part.ids[slot] = entry_id
        self._where[entry_id] = partition
        if part.ann is not None:
            part.ann.add(slot, v, threads=1)
        else:
            part.matrix[slot] = v  # type: ignore[index]
            if len(part) > self.ann_min:
                self._to_graph(part)

    def add_many(self, ids: list[str], partitions: list[str], vectors: np.ndarray, *, threads: int = 0) -> None:
        """Bulk-load entries (a store opening): a large partition's graph is built in one batch, on
        `threads` threads (0: all cores), many times faster than adding its vectors one by one."""
        groups: dict[str, list[int]] = {}
        for i, partition in enumerate(partitions):
            groups.setdefault(partition, []).append(i)
        for partition, rows in groups.items():
            if len(rows) <= self.ann_min or partition in self._partitions:
                for i in rows:
                    self.add(ids[i], partition, vectors[i])
                continue
            part = self._partitions[partition] = _Partition(self.dim)
            block = np.asarray(vectors[rows], dtype=np.float32)
            block /= np.maximum(np.linalg.norm(block, axis=1, keepdims=True), 1e-12)
            part.ids = [ids[i] for i in rows]
            part.slots = {entry_id: slot for slot, entry_id in enumerate(part.ids)}
            part.matrix = None
            part.ann = self._graph()
            part.ann.add(np.arange(len(rows), dtype=np.uint64), block, threads=threads)
            for entry_id in part.ids:
                self._where[entry_id] = partition

    def _graph(self):
        Graph = require("usearch.index", "cache", "the semantic cache's vector index").Index

        return Graph(ndim=self.dim, metric="ip", dtype="f16", connectivity=16, expansion_add=64, expansion_search=64)

    def _new_slot(self, part: _Partition) -> int:
        slot = len(part.ids)
        part.ids.append(None)
        if part.ann is None:
            if slot >= part.matrix.shape[0]:  # type: ignore[union-attr]
                grown = np.zeros((part.matrix.shape[0] * 2, self.dim), dtype=np.float32)  # type: ignore[union-attr]
                grown[:slot] = part.matrix[:slot]  # type: ignore[index]
                part.matrix = grown
            part.size = slot + 1
        return slot

    def _to_graph(self, part: _Partition) -> None:
        graph = self._graph()
        slots = np.fromiter(part.slots.values(), dtype=np.uint64, count=len(part.slots))
        graph.add(slots, part.matrix[slots.astype(np.int64)], threads=1)  # type: ignore[index]
        part.ann, part.matrix = graph, None
        log.debug("partition of %d entries moved to an HNSW graph", len(part))

    def remove(self, entry_id: str) -> None:
        partition = self._where.pop(entry_id, None)
        if partition is None:
            return
        part = self._partitions[partition]
        slot = part.slots.pop(entry_id)
        part.ids[slot] = None
        if part.ann is not None:
            part.ann.remove(slot)
        else:
            part.matrix[slot] = 0.0  # type: ignore[index]  # a zero row scores 0, below any threshold
        part.free.append(slot)
        if not part.slots:
            del self._partitions[partition]

    def search(self, partition: str, vector: np.ndarray) -> tuple[str | None, float]:
        part = self._partitions.get(partition)
        if part is None:
            return None, 0.0
        v = unit(vector)
        if part.ann is not None:
            found = part.ann.search(v, 1, threads=1)
            if len(found.keys) == 0:
                return None, 0.0
            slot = int(found.keys[0])
            return part.ids[slot], float(1.0 - found.distances[0])
        scores = part.matrix[: part.size] @ v  # type: ignore[index]
        best = int(np.argmax(scores))
        return part.ids[best], float(scores[best])

    def clear(self) -> None:
        self._partitions.clear()
        self._where.clear()

    def memory_bytes(self) -> int:
        total = 0
        for part in self._partitions.values():
            total += part.matrix.nbytes if part.matrix is not None else int(part.ann.memory_usage)
            total += 120 * len(part.ids)  # the id strings and the slot maps
        return total


async def nearest_live(index: "VectorIndex", get: Callable[[str], Awaitable[Any]], partition: str,
                       vector: np.ndarray, threshold: float) -> tuple[Any, float]:
    """The nearest entry of `partition` that `get` still returns, if its similarity reaches `threshold`;
    and the best similarity seen. A candidate `get` drops (expired, corrupt) is left out and the search
    repeated, a few times at most."""
    best = 0.0
    for _ in range(4):
        entry_id, similarity = index.search(partition, vector)
        if entry_id is None:
            return None, best
        best = max(best, similarity)
        if similarity < threshold:
            return None, best
        entry = await get(entry_id)
        if entry is not None:
            return entry, similarity
    return None, best
