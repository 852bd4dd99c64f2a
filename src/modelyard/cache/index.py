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
when they open. A large graph is slow to rebuild (minutes for 100,000
vectors on two cores), so `save` writes the whole index to a folder and
`load` reads it back in well under a second; the caller reconciles it with
its own store (see `modelyard.index.store`).

Besides the nearest entry (`search`, the cache's look-up), `search_top`
returns the best *k* entries, optionally only those an `allowed` predicate
accepts: a graph is asked for more than *k* and the refused ones dropped,
and when too few pass, the allowed entries are scored exhaustively
(`exact_top`), so a filter never costs correctness.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any, Awaitable, Callable, Iterable, Protocol

import numpy as np

from ..extras import require

log = logging.getLogger(__name__)

#: a partition moves from an exhaustive NumPy scan to an HNSW graph past this many entries
ANN_MIN = 2048
DIM = 384
#: a filtered graph search asks for at least this many candidates, then 8 times more, up to
#: `GRAPH_FETCH_MAX`, before it scores the allowed entries exhaustively
OVERFETCH = 32
GRAPH_FETCH_MAX = 2048
#: how widely a graph search looks (usearch's ``expansion_search``): 64 keeps the nearest entry first for 98% of
#: real queries among 100,000 (`bench/index_recall.py`), all the cache's look-up needs; a document index, which
#: wants the whole top-k, passes 128 (see `modelyard.index.store.EXPANSION_SEARCH`)
EXPANSION_SEARCH = 64
#: how many of the nearest entries a semantic look-up tries before it misses (see `nearest_live`)
CANDIDATES = 4
#: the version of the folder `VectorIndex.save` writes
SAVE_FORMAT = 1


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

    def __init__(self, dim: int = DIM, *, ann_min: int = ANN_MIN, expansion_search: int = EXPANSION_SEARCH) -> None:
        self.dim = dim
        self.ann_min = ann_min
        self.expansion_search = expansion_search
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
        """Bulk-load entries (a store opening, a document's chunks): a large partition's graph is built, or
        grown, in one batch on `threads` threads (0: all cores), many times faster than adding its vectors
        one by one. An id already in the index is replaced."""
        for entry_id in ids:
            if entry_id in self._where:
                self.remove(entry_id)
        groups: dict[str, list[int]] = {}
        for i, partition in enumerate(partitions):
            groups.setdefault(partition, []).append(i)
        for partition, rows in groups.items():
            part = self._partitions.get(partition)
            if part is None and len(rows) > self.ann_min:
                part = self._partitions[partition] = _Partition(self.dim)
                part.matrix = None
                part.ann = self._graph()
            elif part is not None and part.ann is None and len(rows) > 1 and len(part) + len(rows) > self.ann_min:
                self._to_graph(part, threads=threads)
            if part is None or part.ann is None:
                for i in rows:
                    self.add(ids[i], partition, vectors[i])
                continue
            block = np.asarray(vectors[rows], dtype=np.float32).reshape(len(rows), -1)
            if block.shape[1] != self.dim:
                raise ValueError(f"vectors of {block.shape[1]} dimensions in an index of {self.dim}")
            block = block / np.maximum(np.linalg.norm(block, axis=1, keepdims=True), 1e-12)
            slots = []
            for i in rows:
                slot = part.free.pop() if part.free else self._new_slot(part)
                part.slots[ids[i]] = slot
                part.ids[slot] = ids[i]
                self._where[ids[i]] = partition
                slots.append(slot)
            part.ann.add(np.asarray(slots, dtype=np.uint64), block, threads=threads)

    def _graph(self):
        Graph = require("usearch.index", "cache", "the semantic cache's vector index").Index

        return Graph(ndim=self.dim, metric="ip", dtype="f16", connectivity=16, expansion_add=64,
                     expansion_search=self.expansion_search)

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

    def _to_graph(self, part: _Partition, *, threads: int = 1) -> None:
        graph = self._graph()
        slots = np.fromiter(part.slots.values(), dtype=np.uint64, count=len(part.slots))
        graph.add(slots, part.matrix[slots.astype(np.int64)], threads=threads)  # type: ignore[index]
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

    def search_top(self, partition: str, vector: np.ndarray, k: int, allowed: Callable[[str], bool] | None = None,
                   *, share: float = 1.0) -> list[tuple[str, float]]:
        """The (at most) `k` entries of `partition` nearest to `vector`, best first, with their cosine
        similarity; only entries `allowed` accepts, when it is given (`share`: about which part of the
        entries it accepts, if the caller knows).

        Exact below `ann_min` entries. In a graph, a filtered search fetches more candidates than `k`
        (and more again) and drops the refused ones; when still too few pass, the entries `allowed`
        accepts are scored exhaustively, so a selective filter is slower, never wrong."""
        part = self._partitions.get(partition)
        if part is None or k <= 0:
            return []
        v = unit(vector)
        want = min(k, len(part))
        if part.ann is None:
            return self._scan_top(part, v, want, allowed)
        first = max(4 * k, OVERFETCH, int(2 * k / max(share, 1e-6)))
        fetch = want if allowed is None else min(len(part), first, GRAPH_FETCH_MAX)
        while True:
            found = part.ann.search(v, fetch, threads=1)
            hits = []
            for slot, distance in zip(found.keys.tolist(), found.distances.tolist()):
                entry_id = part.ids[slot]
                if entry_id is not None and (allowed is None or allowed(entry_id)):
                    hits.append((entry_id, 1.0 - distance))
            if len(hits) >= want or allowed is None:
                return hits[:want]
            if fetch >= min(len(part), GRAPH_FETCH_MAX):
                break
            fetch = min(len(part), fetch * 8, GRAPH_FETCH_MAX)
        return self.exact_top(partition, (i for i in part.ids if i is not None and allowed(i)), v, k)

    def _scan_top(self, part: _Partition, v: np.ndarray, want: int,
                  allowed: Callable[[str], bool] | None) -> list[tuple[str, float]]:
        scores = part.matrix[: part.size] @ v  # type: ignore[index]
        # freed rows score 0 and are skipped, so look at that many more from the start
        fetch = min(part.size, want + len(part.free) if allowed is None else max(4 * want, OVERFETCH))
        while True:
            if fetch >= part.size:
                order = np.argsort(-scores, kind="stable")
            else:
                top = np.argpartition(-scores, fetch - 1)[:fetch]
                order = top[np.argsort(-scores[top], kind="stable")]
            hits = []
            for slot in order.tolist():
                entry_id = part.ids[slot]
                if entry_id is not None and (allowed is None or allowed(entry_id)):
                    hits.append((entry_id, float(scores[slot])))
                    if len(hits) == want:
                        return hits
            if fetch >= part.size:
                return hits
            fetch = min(part.size, fetch * 8)

    def exact_top(self, partition: str, ids: Iterable[str], vector: np.ndarray, k: int) -> list[tuple[str, float]]:
        """The (at most) `k` of `ids` nearest to `vector`, scored exhaustively, best first; ids that are not
        in `partition` are ignored. The way to search a small subset of a large partition."""
        part = self._partitions.get(partition)
        if part is None or k <= 0:
            return []
        slots = [part.slots[i] for i in ids if i in part.slots]
        if not slots:
            return []
        v = unit(vector)
        if part.ann is not None:
            # in the graph's own half precision: usearch's conversion costs more than NumPy's
            found = part.ann.get(np.asarray(slots, dtype=np.uint64))
            block = np.vstack(found).reshape(len(slots), self.dim).astype(np.float32)
        else:
            block = part.matrix[np.asarray(slots)]  # type: ignore[index]
        scores = block @ v
        if k < len(slots):
            top = np.argpartition(-scores, k - 1)[:k]
        else:
            top = np.arange(len(slots))
        top = top[np.argsort(-scores[top], kind="stable")]
        return [(part.ids[slots[j]], float(scores[j])) for j in top.tolist()]  # type: ignore[misc]

    def ids(self) -> list[str]:
        """Every entry's id."""
        return list(self._where)

    def save(self, path: Path, meta: dict[str, Any] | None = None) -> None:
        """Write the index to the folder `path`, with `meta` (the caller's own JSON-able facts, read back
        by `load`). The folder is written beside `path` and then renamed into place, so a crash leaves the
        old index, or none, never half of one."""
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        parts = []
        for n, (name, part) in enumerate(self._partitions.items()):
            if part.ann is not None:
                file = f"{n}.usearch"
                part.ann.save(str(tmp / file))
            else:
                file = f"{n}.npy"
                np.save(tmp / file, part.matrix[: part.size])  # type: ignore[index]
            parts.append({"name": name, "file": file, "ids": part.ids})
        header = {"format": SAVE_FORMAT, "dim": self.dim, "partitions": parts, "meta": meta or {}}
        (tmp / "index.json").write_text(json.dumps(header))
        old = path.with_name(path.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        if path.exists():
            path.rename(old)
        tmp.rename(path)
        shutil.rmtree(old, ignore_errors=True)

    @classmethod
    def load(cls, path: Path, *, ann_min: int = ANN_MIN,
             expansion_search: int = EXPANSION_SEARCH) -> tuple["VectorIndex", dict[str, Any]]:
        """An index `save` wrote, and its `meta`. Raises ValueError (or OSError) when the folder is missing,
        of another format, or damaged: the caller rebuilds from its own store then."""
        path = Path(path)
        header = json.loads((path / "index.json").read_text())
        if header.get("format") != SAVE_FORMAT:
            raise ValueError(f"{path}: format {header.get('format')!r}, not {SAVE_FORMAT}")
        index = cls(int(header["dim"]), ann_min=ann_min, expansion_search=expansion_search)
        for saved in header["partitions"]:
            part = _Partition(index.dim)
            part.ids = list(saved["ids"])
            part.slots = {entry_id: slot for slot, entry_id in enumerate(part.ids) if entry_id is not None}
            part.free = [slot for slot, entry_id in enumerate(part.ids) if entry_id is None]
            if saved["file"].endswith(".usearch"):
                part.matrix = None
                part.ann = index._graph()
                part.ann.load(str(path / saved["file"]))
                part.ann.expansion_search = index.expansion_search  # this process's setting, not the saved one
                if part.ann.size != len(part.slots):
                    raise ValueError(f"{path}: a graph of {part.ann.size} vectors for {len(part.slots)} entries")
            else:
                rows = np.load(path / saved["file"])
                if rows.shape != (len(part.ids), index.dim):
                    raise ValueError(f"{path}: a matrix of shape {rows.shape} for {len(part.ids)} slots")
                part.matrix = np.zeros((max(8, len(part.ids)), index.dim), dtype=np.float32)
                part.matrix[: len(part.ids)] = rows
                part.size = len(part.ids)
            if not part.slots:
                continue
            index._partitions[saved["name"]] = part
            for entry_id in part.slots:
                index._where[entry_id] = saved["name"]
        return index, header.get("meta") or {}

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
                       vector: np.ndarray, threshold: float,
                       accept: Callable[[Any, float], Awaitable[bool]] | None = None,
                       candidates: int = CANDIDATES) -> tuple[Any, float]:
    """The nearest entry of `partition` that `get` still returns and `accept` (when given) agrees to serve,
    if its similarity reaches `threshold`; and the best similarity seen.

    The `candidates` nearest entries are tried best first: one `get` drops (expired, corrupt) or `accept`
    refuses (a near neighbour that asks something else, see `modelyard.cache.verify`) is passed over for the
    next, as long as the next still reaches `threshold`."""
    best = 0.0
    tried: set[str] = set()
    for _ in range(2):  # a second round when candidates vanished under us (expired between search and get)
        found = index.search_top(partition, vector, candidates + len(tried))
        fresh = [(entry_id, similarity) for entry_id, similarity in found if entry_id not in tried]
        if not fresh:
            return None, best
        best = max(best, fresh[0][1])
        vanished = False
        for entry_id, similarity in fresh:
            if similarity < threshold or len(tried) >= candidates:
                return None, best
            tried.add(entry_id)
            entry = await get(entry_id)
            if entry is None:
                vanished = True
                continue
            if accept is None or await accept(entry, similarity):
                return entry, similarity
        if not vanished:
            return None, best
    return None, best
