"""How well semantic look-ups tell a paraphrase from a different question.

Two kinds of file: *labeled* pairs with hard negatives (`evaluate_labeled`,
see `modelyard.cache.labeled`: the cache crowded with every first question,
each verification layer measured) and, below, today's positive-only file.

The evaluation runs the real store and index (`LocalStore` in a temporary
folder) on a file of paraphrase pairs (``[{"origin": ..., "similar": ...}]``):

1. the distinct ``origin`` sentences are shuffled (fixed seed) and half are
   inserted as cached questions; the other half are **withheld**, so their
   paraphrases should miss;
2. every ``similar`` sentence is looked up at each threshold.

Per threshold:

- ``precision``: of the hits, the share that returned the query's own origin
  (a hit on any other entry is a false hit, even a close paraphrase);
- ``recall``: of the queries whose origin was inserted, the share that hit it;
- ``false_hit_rate``: of the queries whose origin was withheld (true misses),
  the share that were answered anyway;
- ``lookup_p50_ms`` / ``lookup_p99_ms``: the store's look-up (index search and
  reading the entry), without the embedding, which is timed separately
  (``embedding_p50_ms``) on single sentences as the gateway embeds them.
"""

from __future__ import annotations

import asyncio
import json
import random
import tempfile
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, AsyncIterator

import numpy as np

from ..backends.sentence import Embedder
from ..routing.features import MiniLMEmbedder
from .entry import Entry
from .spec import DEFAULT_SIMILARITY

PARTITION = "eval"


def load_pairs(path: str | Path) -> list[tuple[str, str]]:
    """The (origin, similar) pairs of a JSON file; ValueError naming what is wrong."""
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ValueError(f"no pairs file at {path}") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not JSON: {exc}") from None
    if not isinstance(data, list) or not data:
        raise ValueError(f"{path} must hold a non-empty JSON list of {{\"origin\": ..., \"similar\": ...}} objects")
    pairs = []
    for i, item in enumerate(data):
        if not isinstance(item, dict) or not isinstance(item.get("origin"), str) or not isinstance(item.get("similar"), str):
            raise ValueError(f"{path}: item {i} is not an object with string 'origin' and 'similar'")
        pairs.append((item["origin"], item["similar"]))
    return pairs


def parse_thresholds(text: str) -> list[float]:
    """``0.8:0.99:0.01`` (start:stop:step, both ends included) or ``0.85,0.9,0.95``."""
    try:
        if ":" in text:
            start, stop, step = (float(x) for x in text.split(":"))
            if step <= 0 or stop < start:
                raise ValueError
            count = int(round((stop - start) / step)) + 1
            values = [round(start + i * step, 6) for i in range(count)]
        else:
            values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"thresholds must be start:stop:step (0.8:0.99:0.01) or a list (0.85,0.9), not {text!r}") from None
    bad = [v for v in values if not 0 < v <= 1]
    if not values or bad:
        raise ValueError(f"thresholds are cosine similarities in (0, 1]; got {bad or text!r}")
    return values


def _ms(samples: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(samples) * 1000, q)) if samples else 0.0


@asynccontextmanager
async def filled_store(texts: list[str], vectors: np.ndarray) -> AsyncIterator[Any]:
    """A throw-away `LocalStore` (in a temporary folder) holding each of `texts` as a cached question of
    partition `PARTITION`, entry ids ``e0``, ``e1`` … in order, each answered with its own text."""
    from .local import LocalStore

    with tempfile.TemporaryDirectory() as tmp:
        store = LocalStore(Path(tmp) / "eval.db", ttl_s=86400, max_entries=len(texts) + 1)
        await store.open()
        try:
            now = time.time()
            for i, (text, vec) in enumerate(zip(texts, vectors)):
                body = {"choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                     "finish_reason": "stop"}]}
                await store.put(Entry(f"e{i}", PARTITION, "chat", text, body, 0, 0, 0.0, now, now + 86400, vec))
            yield store
        finally:
            await store.close()


async def _run(pairs: list[tuple[str, str]], thresholds: list[float], embedder: Embedder, seed: int) -> dict[str, Any]:

    origins = sorted({o for o, _ in pairs})
    random.Random(seed).shuffle(origins)
    inserted = set(origins[: (len(origins) + 1) // 2])
    keep = sorted(inserted)
    origin_vecs = embedder(keep)
    query_vecs = embedder([s for _, s in pairs])
    embed_times = []
    for _, similar in pairs[:200]:
        t0 = time.perf_counter()
        embedder([similar])
        embed_times.append(time.perf_counter() - t0)
    async with filled_store(keep, origin_vecs) as store:
        rows = []
        for threshold in thresholds:
            rows.append(await _measure(store, pairs, query_vecs, inserted, threshold))
    return {"pairs": len(pairs), "origins": len(origins), "inserted": len(keep), "withheld": len(origins) - len(keep),
            "seed": seed, "embedding_p50_ms": _ms(embed_times, 50), "embedding_p99_ms": _ms(embed_times, 99),
            "thresholds": rows}


async def _measure(store: Any, pairs: list[tuple[str, str]], vectors: np.ndarray, inserted: set[str],
                   threshold: float) -> dict[str, Any]:
    hits = correct = withheld = withheld_hits = 0
    times = []
    for (origin, _), vec in zip(pairs, vectors):
        t0 = time.perf_counter()
        entry, _similarity = await store.nearest(PARTITION, vec, threshold)
        times.append(time.perf_counter() - t0)
        if origin not in inserted:
            withheld += 1
        if entry is None:
            continue
        hits += 1
        if entry.query == origin:
            correct += 1
        elif origin not in inserted:
            withheld_hits += 1
    should_hit = len(pairs) - withheld
    return {
        "threshold": threshold,
        "precision": correct / hits if hits else None,
        "recall": correct / should_hit if should_hit else None,
        "false_hit_rate": withheld_hits / withheld if withheld else None,
        "hits": hits,
        "false_hits": hits - correct,
        "lookup_p50_ms": _ms(times, 50),
        "lookup_p99_ms": _ms(times, 99),
    }


def evaluate(pairs: list[tuple[str, str]], thresholds: list[float], *, default: float = DEFAULT_SIMILARITY,
             embedder: Embedder | None = None, seed: int = 0) -> dict[str, Any]:
    """Precision, recall, false-hit rate and look-up time per threshold, and at `default`."""
    if embedder is None:
        embedder = MiniLMEmbedder()
    wanted = sorted(set(thresholds) | {default})
    result = asyncio.run(_run(pairs, wanted, embedder, seed))
    rows = {row["threshold"]: row for row in result["thresholds"]}
    result["default"] = rows[default]
    result["thresholds"] = [rows[t] for t in sorted(set(thresholds))]
    return result


def evaluate_labeled(pairs: list[Any], thresholds: list[float], *, default: float = DEFAULT_SIMILARITY,
                     embedder: Embedder | None = None, judge: Any = None) -> dict[str, Any]:
    """Labeled pairs (`modelyard.cache.labeled.load_labeled`) in a crowded cache, per verification layer."""
    from .labeled import evaluate_labeled as run

    return run(pairs, thresholds, default=default, embedder=embedder or MiniLMEmbedder(), judge=judge)


def plot(result: dict[str, Any], path: str | Path) -> None:
    """Precision, recall and false-hit rate against the threshold, as a PNG."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:  # pragma: no cover - the `plot` extra brings matplotlib
        raise RuntimeError("plotting needs matplotlib: pip install 'modelyard[plot]'") from exc
    rows = result["thresholds"]
    xs = [r["threshold"] for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    for key, label in (("precision", "precision"), ("recall", "recall"), ("false_hit_rate", "false-hit rate")):
        ax.plot(xs, [r[key] if r[key] is not None else float("nan") for r in rows], marker="o", markersize=3, label=label)
    default = result["default"]["threshold"]
    ax.axvline(default, color="grey", linestyle="--", linewidth=1, label=f"default {default:g}")
    ax.set_xlabel("similarity threshold (cosine)")
    ax.set_ylim(0, 1.02)
    ax.set_title(f"semantic cache: {result['pairs']} pairs, {result['withheld']} of {result['origins']} origins withheld")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
