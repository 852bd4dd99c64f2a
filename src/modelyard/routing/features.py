"""What a router sees of a prompt: surface features, and sentence embeddings.

`prompt_features` turns a prompt into a short vector of generic signals that
predict how hard a prompt is for a small model — length, how much of it is
numbers or mathematics, code, lists of choices, negations — none of which is
tied to one benchmark. `Embedder` (`backends.sentence`) is the seam for the
embedding part: any callable ``list[str] -> np.ndarray`` of L2-normalised
rows. The default, `MiniLMEmbedder`, is the one `SentenceEmbedder` on the
packaged all-MiniLM-L6-v2 (loaded lazily, once per process); `CachedEmbedder` keeps vectors on
disk under ``MODELYARD_HOME/cache/embeddings`` keyed by a hash of the text
and the model, so evaluating a data set twice embeds it once.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np

from ..backends.sentence import SentenceEmbedder
from ..catalog import Catalog, resolve_path
from ..settings import Settings

log = logging.getLogger(__name__)

DEFAULT_EMBEDDING_MODEL = "all-minilm-l6-v2"

# --- surface features ------------------------------------------------------------------------

_WORD = re.compile(r"[^\W\d_]+(?:'[^\W\d_]+)?")
_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")
_MATH_CHARS = frozenset("=+*/^<>%|±×÷√∞∑∏∫∂≤≥≠≈πθλμσΔΩ∈∩∪→")
_LATEX = re.compile(r"\\[a-zA-Z]+|\$[^$]+\$")
_CODE = re.compile(r"[{};]|\b(?:def|return|class|import|function|var|let|const|for|while|int|void|printf|print)\b|==|!=|->|=>|\[\]")
_LIST_ITEM = re.compile(r"^\s*(?:\(?[A-Za-z0-9]{1,2}[.):]|[-*•])\s+", re.MULTILINE)
_NEGATION = re.compile(r"\b(?:not|no|never|none|except|false|incorrect|least|neither|nor|cannot|isn't|doesn't)\b",
                       re.IGNORECASE)
_SENTENCE = re.compile(r"[.!?](?:\s|$)")

#: the names of `prompt_features`' columns, in order
FEATURE_NAMES: tuple[str, ...] = (
    "log_chars", "log_words", "log_lines", "mean_word_len", "long_word_share", "type_token_ratio",
    "log_sentences", "words_per_sentence", "digit_share", "log_numbers", "math_share", "log_latex",
    "code_share", "upper_share", "punct_share", "non_ascii_share", "question_marks", "log_list_items",
    "list_item_words", "stem_share", "negations",
)


def prompt_features(text: str) -> np.ndarray:
    """Surface features of one prompt, as a float vector in `FEATURE_NAMES` order."""
    n = max(len(text), 1)
    words = _WORD.findall(text)
    n_words = len(words)
    lines = [ln for ln in text.splitlines() if ln.strip()]
    numbers = _NUMBER.findall(text)
    # map() over builtins keeps these counts in C: prompts can be pages long
    digits = sum(map(str.isdigit, text))
    math_chars = sum(map(_MATH_CHARS.__contains__, text))
    alnum = sum(map(str.isalnum, text))
    spaces = sum(map(str.isspace, text))
    items = list(_LIST_ITEM.finditer(text))
    item_lines = [ln for ln in lines if _LIST_ITEM.match(ln)]
    item_words = sum(len(_WORD.findall(ln)) for ln in item_lines)
    stem = text[: items[0].start()] if items else text
    sentences = max(len(_SENTENCE.findall(text)), 1)
    lengths = [len(w) for w in words]
    return np.array([
        math.log1p(len(text)),
        math.log1p(n_words),
        math.log1p(len(lines)),
        (sum(lengths) / n_words) if n_words else 0.0,
        (sum(x >= 9 for x in lengths) / n_words) if n_words else 0.0,
        (len({w.lower() for w in words}) / n_words) if n_words else 0.0,
        math.log1p(sentences),
        math.log1p(n_words / sentences),
        digits / n,
        math.log1p(len(numbers)),
        math_chars / n,
        math.log1p(len(_LATEX.findall(text))),
        len(_CODE.findall(text)) / max(n_words, 1),
        sum(map(str.isupper, text)) / n,
        (len(text) - alnum - spaces) / n,
        (len(text) - len(text.encode("ascii", "ignore"))) / n,
        math.log1p(text.count("?")),
        math.log1p(len(items)),
        math.log1p(item_words / len(item_lines)) if item_lines else 0.0,
        len(stem) / n,
        math.log1p(len(_NEGATION.findall(text))),
    ], dtype=np.float64)


def feature_matrix(texts: list[str]) -> np.ndarray:
    """`prompt_features` of each text, one row each."""
    if not texts:
        return np.empty((0, len(FEATURE_NAMES)))
    return np.vstack([prompt_features(t) for t in texts])


# --- embeddings ------------------------------------------------------------------------------


def embedder_name(embedder: Callable[[list[str]], np.ndarray]) -> str:
    """The model name of an embedder (its ``name`` attribute, else its type)."""
    return str(getattr(embedder, "name", None) or type(embedder).__name__)


class MiniLMEmbedder(SentenceEmbedder):
    """all-MiniLM-L6-v2 in this process, from the weights its catalog card points at (a Python package).

    The weights are found when the model first loads (a few seconds, once per
    process, whichever part asks first: the cache and the router share it).
    ``settings`` say where the catalog is; without them they are read from
    the environment.
    """

    def __init__(self, card_id: str = DEFAULT_EMBEDDING_MODEL, *, path: str | None = None, batch_size: int = 64,
                 threads: int | None = None, settings: Settings | None = None) -> None:
        super().__init__(path, name=card_id, batch_size=batch_size, threads=threads)
        self.card_id = card_id
        self._settings = settings

    def weights_path(self) -> str:
        if self.path:
            return self.path
        settings = self._settings or Settings.from_env()
        return str(resolve_path(Catalog.load(settings).get(self.card_id), settings))


class CachedEmbedder:
    """Wraps an embedder with an on-disk cache keyed by sha256(text) and the model name.

    Vectors live in ``DIR/<model>/shard-*.npz`` files (``keys``: hex digests,
    ``vectors``: float32 rows). Each call that embeds anything new writes one
    new shard atomically (temp file + rename), so a crash loses at most that
    call's vectors and never corrupts the cache; many small shards are merged
    into one when there are more than ``max_shards``.
    """

    def __init__(self, embedder: Callable[[list[str]], np.ndarray], directory: str | Path, *,
                 max_shards: int = 16) -> None:
        self.embedder = embedder
        self.name = embedder_name(embedder)
        self.dir = Path(directory) / re.sub(r"[^A-Za-z0-9_.-]+", "_", self.name)
        self.max_shards = max_shards
        self._index: dict[bytes, np.ndarray] | None = None
        self.hits = 0
        self.misses = 0

    @classmethod
    def default(cls, embedder: Callable[[list[str]], np.ndarray] | None = None, *,
                settings: Settings | None = None) -> "CachedEmbedder":
        """The cache under ``MODELYARD_HOME/cache/embeddings`` around ``embedder`` (default: MiniLM)."""
        settings = settings or Settings.from_env()
        return cls(embedder or MiniLMEmbedder(settings=settings), settings.home / "cache" / "embeddings")

    def _load_index(self) -> dict[bytes, np.ndarray]:
        if self._index is None:
            self._index = {}
            for shard in sorted(self.dir.glob("shard-*.npz")):
                try:
                    with np.load(shard, allow_pickle=False) as npz:
                        keys, vectors = npz["keys"], npz["vectors"]
                except (OSError, ValueError, KeyError) as exc:  # a torn or foreign file: ignore it
                    log.warning("ignoring unreadable embedding cache file %s: %s", shard, exc)
                    continue
                for key, vec in zip(keys.tolist(), vectors):
                    self._index[key] = vec
        return self._index

    def __call__(self, texts: list[str]) -> np.ndarray:
        index = self._load_index()
        keys = [hashlib.sha256(t.encode("utf-8")).hexdigest().encode() for t in texts]
        missing = list(dict.fromkeys(k for k in keys if k not in index))
        self.hits += len(keys) - len(missing)
        self.misses += len(missing)
        if missing:
            first = {k: t for k, t in zip(keys, texts)}
            vectors = np.asarray(self.embedder([first[k] for k in missing]), dtype=np.float32)
            for key, vec in zip(missing, vectors):
                index[key] = vec
            self._write_shard(missing, vectors)
        if not keys:
            return np.empty((0, 0), dtype=np.float32)
        return np.vstack([index[k] for k in keys])

    def _write_shard(self, keys: list[bytes], vectors: np.ndarray) -> None:
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            shards = sorted(self.dir.glob("shard-*.npz"))
            if len(shards) >= self.max_shards:  # merge everything known into one shard
                index = self._load_index()
                keys, vectors = list(index), np.vstack(list(index.values()))
            name = self.dir / f"shard-{time.time_ns()}-{os.getpid()}.npz"
            fd, tmp = tempfile.mkstemp(dir=self.dir, suffix=".tmp")
            with os.fdopen(fd, "wb") as fh:
                np.savez(fh, keys=np.array(keys, dtype="S64"), vectors=vectors.astype(np.float32))
            os.replace(tmp, name)
            if len(shards) >= self.max_shards:
                for old in shards:
                    old.unlink(missing_ok=True)
        except OSError as exc:  # a read-only home must not break evaluation
            log.warning("could not write the embedding cache under %s: %s", self.dir, exc)
