"""Building an index: files into chunks, chunks into vectors (in batches), documents into the store.

`build` takes the documents (files or already parsed `Document`\\ s) and an
*embedder* — any ``async (texts) -> vectors`` function; the gateway passes
one that calls the index's embedding endpoint through its own request path,
so the usage is recorded, and a test passes a fake. For each document:

1. a file is read and parsed (in a thread); one that cannot be is skipped
   and listed (`BuildResult.skipped`), the build goes on;
2. a document whose path and sha256 are stored already is left alone
   (`unchanged`): that is what makes a build resumable;
3. its text is cut into chunks (`chunk.split`, with the index's size and
   overlap) and the chunks join a queue **across documents**, so every call
   to the embedder carries `batch_size` chunks however small the files;
4. as soon as all of a document's chunks have their vectors, the document
   is committed, whole, in one transaction (on a thread, while the next
   batch is being embedded).

When the embedder fails (the endpoint is down, times out, answers
nonsense), the documents complete so far are committed, the others are not
started, and `EmbeddingFailed` says how many documents are in the index and
that running the same build again continues where it stopped.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable, Iterable, Sequence, Union

import numpy as np

from ..errors import ModelyardError
from .chunk import Chunk, split
from .loaders import Document, UnreadableDocument, load_file
from .store import DocumentIndex, dimension_mismatch

log = logging.getLogger(__name__)

#: ``async (texts) -> one vector per text``, in order
Embedder = Callable[[list[str]], Awaitable[Union[Sequence[Sequence[float]], np.ndarray]]]
#: what `build` takes: a parsed document, a file (named by its path), or a file and the name the index gives it
Source = Union[Document, Path, tuple[Path, str]]

DEFAULT_BATCH = 64


@dataclass
class Skipped:
    """A document that was not indexed, and why."""

    path: str
    reason: str


@dataclass
class BuildResult:
    """What a build did."""

    #: documents now in the index that were not (or were, in another version)
    added: list[str] = field(default_factory=list)
    #: documents stored already with the same sha256
    unchanged: list[str] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    #: chunks embedded and stored
    chunks: int = 0

    @property
    def done(self) -> int:
        return len(self.added) + len(self.unchanged) + len(self.skipped)

    def as_dict(self) -> dict[str, Any]:
        return {"added": self.added, "unchanged": self.unchanged, "chunks": self.chunks,
                "skipped": [{"path": s.path, "reason": s.reason} for s in self.skipped]}


@dataclass(frozen=True)
class BuildProgress:
    """Where a build is, after each document it finished (stored, left alone or skipped)."""

    done: int
    total: int | None
    chunks: int
    path: str


class EmbeddingFailed(ModelyardError):
    """The embedder failed during a build; `result` is what was done before (all of it committed)."""

    def __init__(self, message: str, result: BuildResult, *, status: int = 502) -> None:
        super().__init__(message, status=status, code="embedding_failed")
        self.result = result


@dataclass
class _Pending:
    document: Document
    chunks: list[Chunk]
    vectors: list[np.ndarray | None]
    missing: int


async def build(index: DocumentIndex, sources: Iterable[Source], embed: Embedder, *, batch_size: int = DEFAULT_BATCH,
                progress: Callable[[BuildProgress], None] | None = None) -> BuildResult:
    """Add `sources` to `index`, embedding their chunks `batch_size` at a time with `embed` (see the module
    docstring). Returns what was added, left alone and skipped; raises `EmbeddingFailed` when the embedder
    fails (what was done before it is kept)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, not {batch_size}")
    sources = list(sources)
    settings = index.settings
    result = BuildResult()
    waiting: list[_Pending] = []  # documents not committed yet, in order
    queue: list[tuple[_Pending, int]] = []  # chunks to embed: (document, chunk number)
    committing: asyncio.Future | None = None

    def report(path: str) -> None:
        if progress is not None:
            progress(BuildProgress(result.done, len(sources), result.chunks, path))

    def commit(ready: list[_Pending]) -> None:  # on a thread, one at a time
        for pending in ready:
            info = index.add(pending.document, pending.chunks, np.stack(pending.vectors))  # type: ignore[arg-type]
            if info is None:
                result.unchanged.append(pending.document.path)
            else:
                result.added.append(pending.document.path)
                result.chunks += len(pending.chunks)

    async def finish_commit() -> None:
        nonlocal committing
        if committing is not None:
            running, committing = committing, None
            await running

    async def commit_ready() -> None:
        nonlocal committing
        ready = []
        while waiting and waiting[0].missing == 0:
            ready.append(waiting.pop(0))
        if ready:
            await finish_commit()
            committing = asyncio.ensure_future(asyncio.to_thread(commit, ready))
            committing.add_done_callback(lambda _f: [report(p.document.path) for p in ready])

    async def embed_batch(batch: list[tuple[_Pending, int]]) -> None:
        texts = [pending.chunks[n].text for pending, n in batch]
        try:
            vectors = _as_matrix(await embed(texts), len(texts))
        except Exception as exc:
            await finish_commit()
            raise _failed(exc, index, result) from exc
        dims = index.settings.dimensions
        if dims is not None and vectors.shape[1] != dims:
            await finish_commit()
            raise dimension_mismatch(vectors.shape[1], dims, index.name)
        for (pending, n), vector in zip(batch, vectors):
            pending.vectors[n] = vector
            pending.missing -= 1
        await commit_ready()

    try:
        for source in sources:
            document = await _load(source, result)
            if document is None:
                report(_name(source))
                continue
            if index.contains(document.path, document.sha256):
                result.unchanged.append(document.path)
                report(document.path)
                continue
            chunks = split(document.text, settings.chunk_size, settings.overlap, document.sections)
            if not chunks:
                result.skipped.append(Skipped(document.path, "holds no text"))
                report(document.path)
                continue
            pending = _Pending(document, chunks, [None] * len(chunks), len(chunks))
            waiting.append(pending)
            queue.extend((pending, n) for n in range(len(chunks)))
            while len(queue) >= batch_size:
                batch, queue = queue[:batch_size], queue[batch_size:]
                await embed_batch(batch)
        if queue:
            await embed_batch(queue)
        await finish_commit()
    except BaseException:
        if committing is not None and not committing.done():
            await asyncio.wait([committing])  # a document being written is finished, never cut off
        raise
    return result


async def _load(source: Source, result: BuildResult) -> Document | None:
    if isinstance(source, Document):
        return source
    file, name = source if isinstance(source, tuple) else (source, None)
    try:
        return await asyncio.to_thread(load_file, Path(file), name)
    except UnreadableDocument as exc:
        log.info("skipped %s: %s", exc.path, exc.reason)
        result.skipped.append(Skipped(exc.path, exc.reason))
        return None


def _name(source: Source) -> str:
    if isinstance(source, Document):
        return source.path
    return source[1] if isinstance(source, tuple) else Path(source).as_posix()


def _as_matrix(vectors: Any, count: int) -> np.ndarray:
    """The embedder's answer as a (count, dims) float32 matrix, or a ValueError saying what is wrong with it."""
    try:
        matrix = np.asarray(vectors, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"the embedder returned something that is not a list of vectors ({exc})") from None
    if matrix.ndim != 2 or matrix.shape[0] != count or matrix.shape[1] == 0:
        raise ValueError(f"the embedder returned {matrix.shape} for {count} texts; expected one vector per text")
    if not np.isfinite(matrix).all():
        raise ValueError("the embedder returned NaN or infinity")
    return matrix


def _failed(exc: Exception, index: DocumentIndex, result: BuildResult) -> EmbeddingFailed:
    cause = exc.message if isinstance(exc, ModelyardError) else f"{type(exc).__name__}: {exc}"
    status = exc.status if isinstance(exc, ModelyardError) and exc.status >= 500 else 502
    stored = len(index)
    message = (f"Embedding through endpoint '{index.settings.embed}' failed: {cause} — "
               f"{len(result.added)} document(s) were added before it did ({result.chunks} chunks), each whole; "
               f"index '{index.name}' now holds {stored} document(s). Run the same command again to continue "
               "where it stopped.")
    return EmbeddingFailed(message, result, status=status)
