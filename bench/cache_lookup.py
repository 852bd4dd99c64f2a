"""Response cache look-ups with 100,000 entries, in-process.

Targets (issue "Response cache"): a semantic look-up p99 <= 5 ms with 100,000
entries (embedding timed separately); an exact look-up <= 0.2 ms p50.

Setup (worst case for the index: every entry in ONE partition, as single-turn
traffic under one system prompt is):

- the sentences of ``../shared/data/cache/paraphrase_pairs.json`` (or a
  built-in list when absent) are embedded with the packaged all-MiniLM-L6-v2;
- 100,000 entry vectors are made from them — the ~960 real origins plus
  mixtures of two origins and noise, so the vectors stay where sentence
  embeddings live — and written to a cache file as a restarted gateway finds it;
- `LocalStore.open()` loads them (timed: the restart cost, including the HNSW build);
- queries are the real paraphrases (``similar``), looked up with
  `LocalStore.nearest` (index search and reading the entry's body).

Baselines in the same run: an exhaustive NumPy scan of the same 100,000
float32 vectors (exact nearest neighbour; also gives the index's top-1
agreement with it), and for exact look-ups the SQLite primary-key read alone.

    .venv/bin/python bench/cache_lookup.py               # ~2 min on 2 cores
    .venv/bin/python bench/cache_lookup.py --entries 20000 --queries 300

Results: stdout and ``bench/results/cache_lookup.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import percentiles_ms  # noqa: E402
from _up import environment, loadavg, table, write_json  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PAIRS = ROOT.parent / "shared" / "data" / "cache" / "paraphrase_pairs.json"
FALLBACK = [("What is the capital of France?", "Which city is the capital of France?"),
            ("How do I reverse a list in Python?", "What is the way to reverse a Python list?"),
            ("Who wrote Pride and Prejudice?", "Who is the author of Pride and Prejudice?"),
            ("How many legs does a spider have?", "What is the number of legs on a spider?")]


def rss_mb() -> float:
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def make_vectors(origins: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """`origins` followed by mixtures of two origins plus noise, unit length."""
    extra = n - len(origins)
    a = origins[rng.integers(0, len(origins), extra)]
    b = origins[rng.integers(0, len(origins), extra)]
    noise = rng.standard_normal((extra, origins.shape[1])).astype(np.float32) / np.sqrt(origins.shape[1])
    mixed = a + rng.uniform(0.3, 1.0, (extra, 1)).astype(np.float32) * b + 0.3 * noise
    out = np.concatenate([origins, mixed]).astype(np.float32)
    return out / np.linalg.norm(out, axis=1, keepdims=True)


def write_cache_file(path: Path, vectors: np.ndarray) -> None:
    from modelyard.cache.entry import encode_body
    from modelyard.cache.local import SCHEMA

    now = time.time()
    body = encode_body({"id": "x", "object": "chat.completion", "model": "m",
                        "choices": [{"index": 0, "message": {"role": "assistant", "content": "a cached answer " * 8},
                                     "finish_reason": "stop"}]})
    with sqlite3.connect(path) as db:
        db.executescript(SCHEMA)
        db.executemany("INSERT INTO entries (id, partition, kind, query, vector, body, prompt_tokens, completion_tokens, "
                       "cost_usd, created_at, last_used_at, expires_at) VALUES (?, 'p', 'chat', ?, ?, ?, 10, 20, 0.0001, ?, ?, ?)",
                       ((f"e{i}", f"q{i}", v.tobytes(), body, now, now + i * 1e-6, now + 86400) for i, v in enumerate(vectors)))


async def measure(args: argparse.Namespace) -> dict:
    from modelyard.routing.features import MiniLMEmbedder
    from modelyard.cache.local import LocalStore

    pairs = [(p["origin"], p["similar"]) for p in json.loads(PAIRS.read_text())] if PAIRS.exists() else FALLBACK
    origins = sorted({o for o, _ in pairs})
    embedder = MiniLMEmbedder()
    t0 = time.perf_counter()
    embedder.load()
    load_model_s = time.perf_counter() - t0
    origin_vecs = embedder(origins)
    index_of = {o: i for i, o in enumerate(origins)}
    queries = pairs[: args.queries]
    query_vecs = embedder([s for _, s in queries])
    embed_times = []
    for _, similar in queries[:200]:
        t0 = time.perf_counter()
        embedder([similar])
        embed_times.append(time.perf_counter() - t0)

    rng = np.random.default_rng(0)
    vectors = make_vectors(origin_vecs, args.entries, rng)
    with tempfile.TemporaryDirectory(prefix="modelyard-cache-bench-") as tmp:
        path = Path(tmp) / "bench.db"
        write_cache_file(path, vectors)
        rss0 = rss_mb()
        store = LocalStore(path, ttl_s=86400, max_entries=args.entries + 10_000)
        t0 = time.perf_counter()
        await store.open()
        open_s = time.perf_counter() - t0
        rss1 = rss_mb()

        lookup, brute, agree, hits, correct = [], [], 0, 0, 0
        for rep in range(args.repeats):
            order = list(range(len(queries)))
            random.Random(rep).shuffle(order)
            for i in order:
                q = query_vecs[i]
                # alternate which goes first, so machine noise hits both alike
                if (i + rep) % 2:
                    t0 = time.perf_counter()
                    entry, sim = await store.nearest("p", q, args.threshold)
                    t1 = time.perf_counter()
                    scores = vectors @ q
                    best = int(np.argmax(scores))
                    t2 = time.perf_counter()
                    lookup.append(t1 - t0)
                    brute.append(t2 - t1)
                else:
                    t0 = time.perf_counter()
                    scores = vectors @ q
                    best = int(np.argmax(scores))
                    t1 = time.perf_counter()
                    entry, sim = await store.nearest("p", q, args.threshold)
                    t2 = time.perf_counter()
                    brute.append(t1 - t0)
                    lookup.append(t2 - t1)
                if rep == 0:
                    found, _ = store.index.search("p", q)
                    agree += found == f"e{best}"
                    if entry is not None:
                        hits += 1
                        correct += entry.id == f"e{index_of[queries[i][0]]}"

        ids = [f"e{i}" for i in rng.integers(0, args.entries, 2000)]
        exact, pk = [], []
        read = sqlite3.connect(path)
        for i, entry_id in enumerate(ids):
            t0 = time.perf_counter()
            got = await store.get(entry_id)
            t1 = time.perf_counter()
            read.execute("SELECT partition, kind, query, body, prompt_tokens, completion_tokens, cost_usd "
                         "FROM entries WHERE id = ?", (entry_id,)).fetchone()
            t2 = time.perf_counter()
            assert got is not None
            exact.append(t1 - t0)
            pk.append(t2 - t1)
        read.close()

        from modelyard.cache.entry import Entry

        puts = []
        now = time.time()
        for i in range(300):
            v = vectors[i] + 0.01 * rng.standard_normal(vectors.shape[1]).astype(np.float32)
            entry = Entry(f"new{i}", "p", "chat", "q", {"choices": [{"index": 0, "message": {"role": "assistant", "content": "x"},
                                                                     "finish_reason": "stop"}]}, 1, 1, 0.0, now, now + 3600, v)
            t0 = time.perf_counter()
            await store.put(entry)
            puts.append(time.perf_counter() - t0)
        memory = store.memory_bytes()
        await store.close()

    return {
        "entries": args.entries, "queries": len(queries), "repeats": args.repeats, "threshold": args.threshold,
        "pairs_file": str(PAIRS) if PAIRS.exists() else None,
        "model_load_s": load_model_s, "open_s": open_s, "rss_growth_mb": rss1 - rss0, "index_memory_mb": memory / 1e6,
        "semantic_lookup_ms": percentiles_ms(lookup),
        "brute_force_scan_ms": percentiles_ms(brute),
        "exact_lookup_ms": percentiles_ms(exact),
        "sqlite_pk_read_ms": percentiles_ms(pk),
        "embedding_ms": percentiles_ms(embed_times),
        "put_ms": percentiles_ms(puts),
        "top1_agreement_with_exact_scan": agree / len(queries),
        "hits_at_threshold": hits, "hits_on_own_origin": correct,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=999)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threshold", type=float, default=0.92)
    args = parser.parse_args()
    env = environment()
    result = asyncio.run(measure(args))
    result["environment"] = {**env, "loadavg_end": loadavg()}
    s, b, e, k = (result[x] for x in ("semantic_lookup_ms", "brute_force_scan_ms", "exact_lookup_ms", "sqlite_pk_read_ms"))
    rows = [
        ["semantic look-up (index + entry read)", f"{s['p50']:.3f}", f"{s['p99']:.3f}", "p99 <= 5 ms",
         f"{b['p50'] / s['p50']:.1f}x faster than the scan (p50)"],
        ["  baseline: exhaustive NumPy scan", f"{b['p50']:.3f}", f"{b['p99']:.3f}", "", ""],
        ["exact look-up (dict + body read)", f"{e['p50']:.3f}", f"{e['p99']:.3f}", "p50 <= 0.2 ms",
         f"{e['p50'] / k['p50']:.2f}x the bare SQLite read (p50)"],
        ["  baseline: SQLite primary-key read", f"{k['p50']:.3f}", f"{k['p99']:.3f}", "", ""],
        ["embedding one sentence (not in look-ups)", f"{result['embedding_ms']['p50']:.2f}",
         f"{result['embedding_ms']['p99']:.2f}", "", "all-MiniLM-L6-v2, 1 thread"],
        ["storing an answer (put)", f"{result['put_ms']['p50']:.3f}", f"{result['put_ms']['p99']:.3f}", "", ""],
    ]
    print(f"\n{result['entries']:,} entries in one partition, {result['queries']} paraphrase queries x {result['repeats']}")
    print(table(rows, ["ms", "p50", "p99", "target", "ratio"]))
    print(f"\nopening the store (restart, HNSW build): {result['open_s']:.1f} s; index memory {result['index_memory_mb']:.0f} MB "
          f"(process RSS grew {result['rss_growth_mb']:.0f} MB); top-1 agreement with the exact scan "
          f"{result['top1_agreement_with_exact_scan'] * 100:.1f}%; load average {result['environment']['loadavg_end']}")
    print(f"results: {write_json('cache_lookup.json', result)}")


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
