"""Indexes for retrieval: documents cut into chunks, embedded, stored, searched.

A flow's ``retrieve`` node and ``POST /api/indexes/NAME/query`` (behind
``modelyard index query``) both call `retrieve`, which ends in
`DocumentIndex.query`: the top-k chunks nearest to a query, with their
scores and metadata, optionally filtered on metadata. The modules, in the
order a document travels:

- `loaders` — a file (``.txt``, ``.md``, ``.html``, ``.pdf``) into a
  `Document`: text, sha256, metadata, sections; `UnreadableDocument` when it
  cannot be read;
- `chunk` — the text into `Chunk`\\ s of about N characters that overlap,
  cut at section, paragraph and sentence boundaries;
- `build` — documents into the index through an injected embedder, batched
  across documents, committed one whole document at a time; resumable;
- `store` — `DocumentIndex`: one SQLite file, vectors in the cache's
  `VectorIndex`; `registry` — `IndexRegistry`, the folder of indexes;
- `retrieve` — one query: a text embedded with the index's endpoint (or a
  vector), searched on a thread;
- `filters` — exact metadata filters; `spec` — `IndexSettings`.

usearch loads when an index grows past `store.ANN_MIN` chunks, pypdf when a PDF is read.
"""

from .build import BuildProgress, BuildResult, Embedder, EmbeddingFailed, Skipped, build
from .chunk import Chunk, split
from .loaders import Document, UnreadableDocument, find_files, load_file, parse
from .spec import IndexSettings, check_name
from .registry import IndexRegistry
from .retrieve import retrieve
from .store import DocumentIndex, DocumentInfo, Hit

__all__ = [
    "BuildProgress",
    "BuildResult",
    "Chunk",
    "Document",
    "DocumentIndex",
    "DocumentInfo",
    "Embedder",
    "EmbeddingFailed",
    "Hit",
    "IndexRegistry",
    "IndexSettings",
    "Skipped",
    "UnreadableDocument",
    "build",
    "check_name",
    "find_files",
    "load_file",
    "parse",
    "retrieve",
    "split",
]
