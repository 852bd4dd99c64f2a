"""Where an index lives: one SQLite file of documents, chunks and vectors, searched in memory.

``MODELYARD_HOME/indexes/NAME.db`` holds everything an index knows:

- ``settings`` — the `IndexSettings` (embedding endpoint, chunk size and
  overlap, the vectors' size), fixed at creation, and a random ``uid``;
- ``documents`` — one row per source path: its sha256, metadata (title,
  format, mtime …), how many chunks and characters;
- ``chunks`` — each chunk's text, ordinal, offset, section metadata and
  vector (float16 by default: half the disk, scores within about 1e-3).

A document and all its chunks are written in **one transaction**, after
their embeddings are computed, so an interruption never leaves half of a
document; adding the same path with the same sha256 again does nothing (a
re-run build continues where it stopped), with another sha256 it replaces
the old version in the same transaction.

Opening an index reads the documents and the chunks' metadata into memory
and the vectors into a `VectorIndex` (the cache's: exact NumPy search below
`ANN_MIN` chunks, an HNSW graph above). Rebuilding a large graph takes
minutes, so the in-memory index is also saved beside the file
(``NAME.vectors/``), at most every `SAVE_EVERY_S` seconds while it changes
and when the index closes; opening loads it and reconciles it with the
chunks table (vectors of chunks written after the last save are added,
those of removed chunks dropped). SQLite is the truth: a missing or damaged
save only costs the rebuild.

Threads: one writer at a time (a lock), any number of readers. A query
holds the in-memory lock only while it searches, then reads the chunks'
text through its own connection; a writer commits to SQLite first and then
updates memory, its vectors `ADD_SLICE` at a time, so what a query finds is
on disk (a chunk removed in between is left out of the answer) and a query
waits for one slice at most. (Once, when an index grows past `ANN_MIN`
chunks, its vectors move into a graph under the lock: seconds.)
"""

from __future__ import annotations

import json
import logging
import secrets
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..cache.index import VectorIndex
from ..errors import ModelyardError, not_found
from .chunk import Chunk
from .filters import MISSING, Conditions, compile_filter, matches
from .loaders import Document
from .spec import IndexSettings

log = logging.getLogger(__name__)

#: exact (NumPy) search below this many chunks: about 2 ms a query at 10,000 × 384; an HNSW graph above
ANN_MIN = 10_000
#: the graph's search width: twice the cache's, because a query wants its whole top-k, not only the first hit.
#: On all-MiniLM-L6-v2 embeddings of real text among 100,000 chunks (`bench/index_recall.py`), 128 finds
#: 97.6% of the exact top-10 (64: 96.5%) at 1.3 ms of CPU per query p50, against 13.5 ms for a full scan.
EXPANSION_SEARCH = 128
#: a filter that leaves at most this many chunks is searched exhaustively over them (in a graph, reading
#: 2,000 vectors back costs a few milliseconds); one that leaves more, through the graph with over-fetching
EXACT_SUBSET = 2048
#: a writer adds a document's vectors to memory this many at a time, letting queries in between
ADD_SLICE = 16
#: while an index changes, its in-memory vectors are saved at most this often (and always on close)
SAVE_EVERY_S = 30.0
SCHEMA_VERSION = 1
PARTITION = "chunks"
#: document fields that metadata cannot override
RESERVED = ("id", "path", "sha256")

SCHEMA = """
CREATE TABLE IF NOT EXISTS settings (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS documents (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    path TEXT NOT NULL UNIQUE,
    sha256 TEXT NOT NULL,
    metadata TEXT NOT NULL,
    chunks INTEGER NOT NULL,
    chars INTEGER NOT NULL,
    added_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS chunks (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    document_id INTEGER NOT NULL REFERENCES documents (id) ON DELETE CASCADE,
    ordinal INTEGER NOT NULL,
    start INTEGER NOT NULL,
    text TEXT NOT NULL,
    metadata TEXT NOT NULL,
    vector BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS chunks_document ON chunks (document_id);
"""


@dataclass(frozen=True)
class DocumentInfo:
    """A stored document."""

    id: int
    path: str
    sha256: str
    metadata: dict[str, Any]
    chunks: int
    chars: int
    added_at: float

    def fields(self) -> dict[str, Any]:
        """What a query returns as the hit's document: id, path, sha256 and the metadata."""
        return {**self.metadata, "id": self.id, "path": self.path, "sha256": self.sha256}

    def value(self, key: str) -> Any:
        if key in ("id", "path", "sha256"):
            return getattr(self, key)
        return self.metadata.get(key, MISSING)

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "path": self.path, "sha256": self.sha256, "chunks": self.chunks, "chars": self.chars,
                "added_at": iso(self.added_at), "metadata": self.metadata}


@dataclass(frozen=True)
class Hit:
    """One chunk a query found: its text, cosine similarity, document and chunk metadata."""

    text: str
    score: float
    document: dict[str, Any]
    chunk: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"text": self.text, "score": round(self.score, 6), "document": self.document, "chunk": self.chunk}


def dimension_mismatch(got: int, expected: int, name: str) -> ModelyardError:
    return ModelyardError(f"The embeddings have {got} dimensions, but index '{name}' holds vectors of {expected}: its "
                          "embedding endpoint now runs another model. Create a new index for it.", status=409,
                          code="dimension_mismatch")


class DocumentIndex:
    """One index: its SQLite file and its vectors in memory. `create` a new one, or open an existing file."""

    def __init__(self, path: Path, *, ann_min: int = ANN_MIN) -> None:
        self.path = Path(path)
        self.name = self.path.stem
        self.ann_min = ann_min
        if not self.path.is_file():
            raise FileNotFoundError(self.path)
        self._write_lock = threading.Lock()  # one writer
        self._lock = threading.RLock()  # the in-memory state
        self._read_lock = threading.Lock()  # the reading connection
        self._write = _connect(self.path)
        self._read = _connect(self.path)
        self._closed = False
        self._dirty = False
        self._saved_at = time.monotonic()
        self._docs: dict[int, DocumentInfo] = {}
        self._by_path: dict[str, DocumentInfo] = {}
        self._chunks: dict[int, tuple[int, dict[str, Any]]] = {}  # chunk id -> (document id, metadata)
        self._doc_chunks: dict[int, list[int]] = {}
        self._chunk_keys: set[str] = set()  # every key some chunk's metadata has
        self._vectors: VectorIndex | None = None
        try:
            self._load()
        except BaseException:
            self._write.close()
            self._read.close()
            raise

    @classmethod
    def create(cls, path: Path, settings: IndexSettings, *, ann_min: int = ANN_MIN) -> "DocumentIndex":
        """A new, empty index at `path` (FileExistsError if there is one). The file is written beside it and
        renamed into place: an index exists whole or not at all."""
        path = Path(path)
        if path.exists():
            raise FileExistsError(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        conn = sqlite3.connect(tmp, isolation_level=None)
        try:
            conn.executescript(SCHEMA)
            conn.executemany("INSERT INTO settings (key, value) VALUES (?, ?)", [
                ("settings", settings.model_dump_json()), ("uid", json.dumps(secrets.token_hex(16))),
                ("created_at", json.dumps(time.time()))])
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        finally:
            conn.close()
        tmp.rename(path)
        return cls(path, ann_min=ann_min)

    # --- opening --------------------------------------------------------------------------

    def _load(self) -> None:
        version = self._write.execute("PRAGMA user_version").fetchone()[0]
        if version != SCHEMA_VERSION:
            raise ValueError(f"{self.path} is not an index of this modelyard (schema {version}, not {SCHEMA_VERSION})")
        stored = dict(self._write.execute("SELECT key, value FROM settings"))
        self._settings = IndexSettings.model_validate_json(stored["settings"])
        self.uid = json.loads(stored["uid"])
        self.created_at = float(json.loads(stored.get("created_at", "0")))
        for row in self._write.execute("SELECT id, path, sha256, metadata, chunks, chars, added_at FROM documents"):
            info = DocumentInfo(row[0], row[1], row[2], json.loads(row[3]), row[4], row[5], row[6])
            self._docs[info.id] = info
            self._by_path[info.path] = info
            self._doc_chunks[info.id] = []
        shared: dict[str, dict[str, Any]] = {}  # chunks of one section share one metadata dict
        for chunk_id, doc_id, raw in self._write.execute("SELECT id, document_id, metadata FROM chunks ORDER BY id"):
            meta = shared.get(raw)
            if meta is None:
                meta = shared[raw] = json.loads(raw)
                self._chunk_keys.update(meta)
            self._chunks[chunk_id] = (doc_id, meta)
            self._doc_chunks.setdefault(doc_id, []).append(chunk_id)
        if self._settings.dimensions is not None:
            self._vectors = self._load_vectors(self._settings.dimensions)
        log.info("index %s: %d documents, %d chunks", self.name, len(self._docs), len(self._chunks))

    @property
    def _dtype(self) -> np.dtype:
        return np.dtype(self._settings.vector_dtype)

    def _saved_path(self) -> Path:
        return self.path.with_suffix(".vectors")

    def _load_vectors(self, dims: int) -> VectorIndex:
        try:
            vectors, meta = VectorIndex.load(self._saved_path(), ann_min=self.ann_min,
                                              expansion_search=EXPANSION_SEARCH)
            if meta.get("uid") != self.uid or vectors.dim != dims:
                raise ValueError("saved for another index")
        except FileNotFoundError:
            return self._rebuild_vectors(dims)
        except (OSError, ValueError, KeyError, TypeError, RuntimeError) as exc:
            log.warning("index %s: the saved vectors cannot be used (%s); rebuilding them from %s",
                        self.name, exc, self.path.name)
            return self._rebuild_vectors(dims)
        live = {str(i) for i in self._chunks}
        present = set(vectors.ids())
        for gone in present - live:
            vectors.remove(gone)
        missing = sorted(int(i) for i in live - present)
        for start in range(0, len(missing), 500):
            self._add_rows(vectors, self._write.execute(
                f"SELECT id, vector FROM chunks WHERE id IN ({','.join('?' * len(missing[start:start + 500]))})",
                missing[start:start + 500]))
        log.info("index %s: saved vectors loaded, %d added and %d dropped since", self.name, len(missing),
                 len(present - live))
        return vectors

    def _rebuild_vectors(self, dims: int) -> VectorIndex:
        vectors = VectorIndex(dims, ann_min=self.ann_min, expansion_search=EXPANSION_SEARCH)
        self._add_rows(vectors, self._write.execute("SELECT id, vector FROM chunks ORDER BY id"))
        self._dirty = len(vectors) > 0
        return vectors

    def _add_rows(self, vectors: VectorIndex, rows: Any) -> None:
        ids: list[str] = []
        blocks: list[np.ndarray] = []
        size = vectors.dim * self._dtype.itemsize
        bad = 0
        for chunk_id, blob in rows:
            vector = np.frombuffer(blob, dtype=self._dtype) if len(blob) == size else None
            if vector is None or not np.isfinite(vector).all():
                bad += 1
                continue
            ids.append(str(chunk_id))
            blocks.append(vector)
        if bad:
            log.warning("index %s: %d chunks with a damaged vector are left out of searches", self.name, bad)
        if ids:
            vectors.add_many(ids, [PARTITION] * len(ids), np.stack(blocks).astype(np.float32))

    # --- reading --------------------------------------------------------------------------

    @property
    def settings(self) -> IndexSettings:
        return self._settings

    def __len__(self) -> int:
        """How many documents."""
        return len(self._docs)

    @property
    def chunk_count(self) -> int:
        return len(self._chunks)

    # These three take no lock (a dict look-up or copy is atomic in CPython): the event loop calls them, and
    # must not wait while a writer adds a document's vectors to the graph.

    def contains(self, path: str, sha256: str) -> bool:
        """Whether this version of the document at `path` is stored (adding it again would do nothing)."""
        info = self._by_path.get(path)
        return info is not None and info.sha256 == sha256

    def document(self, path: str) -> DocumentInfo | None:
        return self._by_path.get(path)

    def documents(self) -> list[DocumentInfo]:
        """Every document, by path."""
        return sorted(list(self._docs.values()), key=lambda d: d.path)

    def query(self, vector: Sequence[float] | np.ndarray, top_k: int = 3,
              filter: dict[str, Any] | None = None) -> list[Hit]:
        """The `top_k` chunks nearest to `vector` (by cosine similarity, best first) among those that match
        `filter` (see `modelyard.index.filters`). A ValueError names a bad filter."""
        conditions = compile_filter(filter)
        v = np.asarray(vector, dtype=np.float32).reshape(-1)
        if top_k < 1:
            raise ValueError(f"top_k must be at least 1, not {top_k}")
        with self._lock:
            self._check_open()
            if self._vectors is None or not len(self._vectors):
                return []
            if v.shape[0] != self._vectors.dim:
                raise dimension_mismatch(v.shape[0], self._vectors.dim, self.name)
            found = self._search(v, top_k, conditions)
            owners = {int(i): self._docs[self._chunks[int(i)][0]] for i, _ in found if int(i) in self._chunks}
        if not found:
            return []
        ids = [int(i) for i, _ in found]
        with self._read_lock:
            self._check_open()
            rows = {row[0]: row for row in self._read.execute(
                f"SELECT id, ordinal, start, text, metadata FROM chunks WHERE id IN ({','.join('?' * len(ids))})", ids)}
        hits = []
        for (chunk_id, score), number in zip(found, ids):
            row = rows.get(number)
            if row is None or number not in owners:  # removed while we searched
                continue
            chunk = {**json.loads(row[4]), "id": number, "ordinal": row[1], "offset": row[2]}
            hits.append(Hit(row[3], score, owners[number].fields(), chunk))
        return hits

    def _search(self, v: np.ndarray, top_k: int, conditions: Conditions) -> list[tuple[str, float]]:
        vectors = self._vectors
        assert vectors is not None
        if not conditions:
            return vectors.search_top(PARTITION, v, top_k)
        by_chunk = [(k, want) for k, want in conditions if k in self._chunk_keys]
        by_doc = [(k, want) for k, want in conditions if k not in self._chunk_keys]
        if by_doc:
            docs = {d for d, info in self._docs.items() if all(matches(info.value(k), want) for k, want in by_doc)}
            if not docs:
                return []
        else:
            docs = self._docs.keys()  # type: ignore[assignment]

        def chunk_matches(chunk_id: int) -> bool:
            doc_id, meta = self._chunks[chunk_id]
            info = self._docs[doc_id]
            return all(matches(meta[k] if k in meta else info.value(k), want) for k, want in by_chunk)

        candidates = sum(len(self._doc_chunks.get(d, ())) for d in docs) if by_doc else len(self._chunks)
        if candidates <= EXACT_SUBSET:
            subset = (str(c) for d in docs for c in self._doc_chunks.get(d, ()) if not by_chunk or chunk_matches(c))
            return vectors.exact_top(PARTITION, subset, v, top_k)

        def allowed(entry_id: str) -> bool:
            chunk_id = int(entry_id)
            return (not by_doc or self._chunks[chunk_id][0] in docs) and (not by_chunk or chunk_matches(chunk_id))

        return vectors.search_top(PARTITION, v, top_k, allowed, share=candidates / max(1, len(self._chunks)))

    def stats(self) -> dict[str, Any]:
        """What ``GET /api/indexes/NAME`` shows."""
        with self._lock:
            vectors = self._vectors
            memory = vectors.memory_bytes() if vectors is not None else 0
            search = "exact" if vectors is None or len(vectors) <= self.ann_min else "hnsw"
            body = {"name": self.name, **self._settings.model_dump(), "documents": len(self._docs),
                    "chunks": len(self._chunks), "chars": sum(d.chars for d in self._docs.values()),
                    "created_at": iso(self.created_at), "search": search, "memory_bytes": memory}
        body["disk_bytes"] = disk_bytes(self.path)
        return body

    # --- writing --------------------------------------------------------------------------

    def add(self, document: Document, chunks: Sequence[Chunk], vectors: Any) -> DocumentInfo | None:
        """Store `document` with its `chunks` and their `vectors` (one row each, in order) in one
        transaction. None when this path is stored with the same sha256 already; an older version of the
        path is replaced."""
        block = np.asarray(vectors, dtype=np.float32)
        if block.size == 0:
            block = block.reshape(0, self._settings.dimensions or 0)
        if block.ndim != 2 or block.shape[0] != len(chunks):
            raise ValueError(f"{len(chunks)} chunks need as many vectors, not an array of shape {block.shape}")
        if not np.isfinite(block).all():
            raise ValueError(f"{document.path}: an embedding holds NaN or infinity")
        with self._write_lock:
            self._check_open()
            old = self._by_path.get(document.path)
            if old is not None and old.sha256 == document.sha256:
                return None
            settings = self._settings
            if chunks and settings.dimensions is None:
                settings = settings.model_copy(update={"dimensions": int(block.shape[1])})
            elif chunks and block.shape[1] != settings.dimensions:
                raise dimension_mismatch(block.shape[1], settings.dimensions or 0, self.name)
            stored = block.astype(self._dtype)
            metadata = {k: v for k, v in document.metadata.items() if k not in RESERVED}
            now = time.time()
            conn = self._write
            conn.execute("BEGIN IMMEDIATE")
            try:
                if old is not None:
                    conn.execute("DELETE FROM chunks WHERE document_id = ?", (old.id,))
                    conn.execute("DELETE FROM documents WHERE id = ?", (old.id,))
                chars = sum(len(c.text) for c in chunks)
                doc_id = conn.execute(
                    "INSERT INTO documents (path, sha256, metadata, chunks, chars, added_at) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    (document.path, document.sha256, json.dumps(metadata), len(chunks), chars, now)).lastrowid
                conn.executemany(
                    "INSERT INTO chunks (document_id, ordinal, start, text, metadata, vector) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    [(doc_id, c.ordinal, c.offset, c.text, json.dumps(c.metadata), stored[i].tobytes())
                     for i, c in enumerate(chunks)])
                chunk_ids = [r[0] for r in conn.execute("SELECT id FROM chunks WHERE document_id = ? ORDER BY id",
                                                        (doc_id,))]
                if settings is not self._settings:
                    conn.execute("UPDATE settings SET value = ? WHERE key = 'settings'", (settings.model_dump_json(),))
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            info = DocumentInfo(int(doc_id or 0), document.path, document.sha256, metadata, len(chunks), chars, now)
            with self._lock:
                if old is not None:
                    self._forget(old)
                self._settings = settings
                if chunks and self._vectors is None:
                    self._vectors = VectorIndex(int(block.shape[1]), ann_min=self.ann_min,
                                                expansion_search=EXPANSION_SEARCH)
                self._docs[info.id] = info
                self._by_path[info.path] = info
                self._doc_chunks[info.id] = chunk_ids
                for chunk_id, chunk in zip(chunk_ids, chunks):
                    self._chunks[chunk_id] = (info.id, chunk.metadata)
                    self._chunk_keys.update(chunk.metadata)
                self._dirty = True
            # The vectors go in a few at a time, so a query waits for one slice, not for a whole document's
            # graph insertions (until they are in, the document's chunks are simply not found).
            ids = [str(i) for i in chunk_ids]
            for start in range(0, len(ids), ADD_SLICE):
                part = ids[start:start + ADD_SLICE]
                with self._lock:
                    assert self._vectors is not None
                    self._vectors.add_many(part, [PARTITION] * len(part),
                                           stored[start:start + len(part)].astype(np.float32))
            self._save_if_due()
            return info

    def remove(self, path: str) -> DocumentInfo | None:
        """Delete the document at `path` and its chunks; the removed document, or None when there is none."""
        with self._write_lock:
            self._check_open()
            info = self._by_path.get(path)
            if info is None:
                return None
            conn = self._write
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.execute("DELETE FROM chunks WHERE document_id = ?", (info.id,))
                conn.execute("DELETE FROM documents WHERE id = ?", (info.id,))
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            with self._lock:
                self._forget(info)
                self._dirty = True
            self._save_if_due()
            return info

    def _forget(self, info: DocumentInfo) -> None:
        for chunk_id in self._doc_chunks.pop(info.id, []):
            self._chunks.pop(chunk_id, None)
            if self._vectors is not None:
                self._vectors.remove(str(chunk_id))
        self._docs.pop(info.id, None)
        if self._by_path.get(info.path) is info:
            del self._by_path[info.path]

    def _save_if_due(self) -> None:
        # called by a writer, which holds the write lock
        if self._dirty and time.monotonic() - self._saved_at >= SAVE_EVERY_S:
            self._save()

    def save(self) -> None:
        """Save the in-memory vectors beside the file now (when they changed since the last save), so the next
        open need not rebuild them."""
        with self._write_lock:
            self._save()

    def _save(self) -> None:
        # Under the write lock: nothing changes the vectors meanwhile, and queries only read them.
        if not self._dirty or self._vectors is None or self._closed:
            return
        started = time.perf_counter()
        self._vectors.save(self._saved_path(), {"uid": self.uid})
        self._dirty = False
        self._saved_at = time.monotonic()
        log.info("index %s: %d vectors saved in %.2f s", self.name, len(self._vectors), time.perf_counter() - started)

    def close(self) -> None:
        """Save the vectors when they changed, and close the file. Later calls raise a 404."""
        with self._write_lock:
            if self._closed:
                return
            try:
                self._save()
            except OSError as exc:  # only the next open's speed depends on it
                log.warning("index %s: could not save its vectors (%s)", self.name, exc)
            with self._lock, self._read_lock:
                self._closed = True
                self._write.close()
                self._read.close()

    def _check_open(self) -> None:
        if self._closed:
            raise not_found(f"The index '{self.name}' was closed or deleted.", param="name", code="index_not_found")


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA foreign_keys=ON")
    return conn


def disk_bytes(path: Path) -> int:
    total = sum(p.stat().st_size for p in path.parent.glob(path.name + "*") if p.is_file())
    saved = path.with_suffix(".vectors")
    if saved.is_dir():
        total += sum(p.stat().st_size for p in saved.iterdir() if p.is_file())
    return total


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="seconds")
