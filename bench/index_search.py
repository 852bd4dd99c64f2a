"""Document indexes: top-k retrieval among 100,000 chunks, and building an index with a real embedding model.

Targets (issue "Document indexes"): a top-k query among 100,000 chunks
<= 5 ms p99; building an index >= 90% of the embedding model's own
throughput on the same chunks.

**Retrieval.** Random unit vectors of dimension 384 (all-MiniLM-L6-v2's), so
no model is needed. One index is written through `DocumentIndex.add`
(documents of 100 chunks of about 700 characters; document metadata
``group`` g0..g9) with the graph off, then its saved vectors are deleted and
it is opened through `IndexRegistry.get` as a server finds it: the vectors
rebuilt from SQLite (past `store.ANN_MIN` chunks, an HNSW graph in one
batch, far quicker than adding 100,000 vectors 16 at a time), saved, and
opened again from the save. Then, at each size of ``--chunks``, random unit
queries run through `retrieve` with a vector: what ``POST
/api/indexes/NAME/query`` (``modelyard index query``) runs once the body is
parsed — the filter-free search on a worker thread, then the hits' rows read
from SQLite. Per query, in a random order so machine noise hits all alike:

- ``retrieve()``: the real path (wall time, and the process's CPU time);
- ``DocumentIndex.query``: the same without the thread hop;
- ``VectorIndex.search_top``: the vector search alone (no SQLite, no hits);
- baseline: an exhaustive NumPy scan of the same vectors as a normalised
  float32 matrix (``matrix @ q``, ``argpartition``, the k sorted), exact;
- ``retrieve()`` with a filter on ``group`` (10% of the documents).

NumPy's BLAS runs on one thread (``--blas-threads``): the graph search uses
one, and OpenBLAS's second thread, spinning after each call, would bill its
CPU to whatever runs next. Also reported: recall@k against the exact scan
(of the group's chunks for the filter) — random vectors are the worst case
for a graph, nothing being much nearer than anything else — and how often a
query with one clearly nearest chunk (its vector plus as much noise) gets it
first. Before each size the script waits for a quiet machine
(``--wait-quiet``, ``--max-foreign``) and measures other processes' CPU per
block of 100 queries. On a shared machine the wall-time tail is mostly the
scheduler's, so two figures that noise disturbs less come with it: the
process's CPU time per query, and its wall time less the time this
process's threads spent runnable but waiting for a CPU (run-queue wait,
``/proc/self/task/*/schedstat``; read outside the timed span).

**Build.** ~1,500 chunks of MMLU questions (``../shared/data/routing/mmlu``,
one Markdown document per ~20 KB of a subject; the repository's own sources
when absent), default chunking (800/100), added with `build` to a new index
through an in-process embedder: the packaged all-MiniLM-L6-v2
(`MiniLMEmbedder`, the one embedder) on a worker thread, as an ``async``
function. Baseline: ``SentenceTransformer.encode`` of the same model on the
same chunk texts, same batch size. Torch gets one thread on both sides
(``--threads``; the gateway's in-process default). The documents are split in
``--segments`` parts; part by part, `build` adds the part to the index and
``encode`` embeds its texts, alternating which goes first, so a change in the
machine's load hits both alike. Throughput = chunks ÷ summed wall time; the
same per CPU-second of the process.

    .venv/bin/python bench/index_search.py             # 20k + 100k chunks, 1,500 built (~15-25 min on 2 busy cores)
    .venv/bin/python bench/index_search.py --quick     # 2k + 12k chunks, 300 built (~3-5 min)
    .venv/bin/python bench/index_search.py --chunks 50000 --queries 300 --no-build

Results: stdout and ``bench/results/index_search.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import hashlib
import os
import random
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from contextlib import closing, nullcontext
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import percentiles_ms  # noqa: E402
from _up import CpuMeter, environment, loadavg, table, wait_quiet, write_json  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MMLU = ROOT.parent / "shared" / "data" / "routing" / "mmlu"
DIM = 384
CHUNKS_PER_DOC = 100
GROUPS = 10
#: queries per block; other processes' CPU is measured per block
BLOCK = 100
PS = (50, 95, 99)
TARGET_P99_MS = 5.0
TARGET_BUILD_RATIO = 0.90


# --- retrieval ------------------------------------------------------------------------


def unit_rows(rng: np.random.Generator, n: int) -> np.ndarray:
    rows = rng.standard_normal((n, DIM), dtype=np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def text_pool(rng: np.random.Generator, chars: int = 1 << 20) -> str:
    """About `chars` characters of word-like text, for chunks to be sliced from."""
    letters = np.frombuffer(b"etaoinshrdlucmfwypvbgkjqxz", dtype=np.uint8)
    words = [bytes(letters[rng.integers(0, 26, rng.integers(2, 10))]).decode() for _ in range(5000)]
    picked = rng.integers(0, len(words), chars // 6)
    return " ".join(words[i] for i in picked)


def add_documents(index: Any, vectors: np.ndarray, start: int, stop: int, pool: str,
                  rng: np.random.Generator) -> None:
    """Chunks `start`..`stop` of `vectors` into `index`, as documents of `CHUNKS_PER_DOC` chunks."""
    from modelyard.index import Chunk, Document

    for first in range(start, stop, CHUNKS_PER_DOC):
        last = min(stop, first + CHUNKS_PER_DOC)
        number = first // CHUNKS_PER_DOC
        chunks, offset = [], 0
        for ordinal in range(last - first):
            at = int(rng.integers(0, len(pool) - 900))
            text = pool[at:at + int(rng.integers(600, 800))]
            chunks.append(Chunk(ordinal, text, offset, {"section": f"Part {ordinal // 10 + 1}"}))
            offset += len(text)
        path = f"docs/{number:06d}.md"
        index.add(Document(path, "", hashlib.sha256(path.encode()).hexdigest(),
                           {"title": f"Document {number}", "format": "markdown", "group": f"g{number % GROUPS}"}),
                  chunks, vectors[first:last])


def run_queue_s() -> float:
    """Seconds this process's threads have spent runnable but waiting for a CPU (``/proc/self/task/*/schedstat``)."""
    total = 0
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/schedstat", "rb") as f:
                total += int(f.read().split()[1])
        except FileNotFoundError:  # the thread ended meanwhile
            pass
    return total / 1e9


def exact_top(matrix: np.ndarray, q: np.ndarray, k: int) -> np.ndarray:
    """The baseline: rows of the normalised float32 `matrix` nearest to `q`, best first."""
    scores = matrix @ q
    top = np.argpartition(-scores, k - 1)[:k]
    return top[np.argsort(-scores[top])]


async def measure_size(index: Any, matrix: np.ndarray, chunk_ids: np.ndarray, groups: np.ndarray,
                       queries: np.ndarray, args: argparse.Namespace) -> dict[str, Any]:
    """Every query through each path, in a random order; latencies, CPU time, recall against the scan."""
    from modelyard.index import retrieve
    from modelyard.index.store import PARTITION

    async def no_embedder(texts: list[str]) -> list[list[float]]:
        raise AssertionError("a vector query embeds nothing")

    vectors = index._vectors  # the breakdown's one private read: the search alone, as `query` calls it
    k = min(args.top_k, len(matrix))

    async def real(q: np.ndarray, filter: dict[str, Any] | None = None) -> list[int]:
        hits = await retrieve(index, no_embedder, q.tolist(), k, filter)  # a list, as the route passes the body's
        return [h.chunk["id"] for h in hits]

    async def direct(q: np.ndarray) -> list[int]:
        return [h.chunk["id"] for h in index.query(q, k)]

    async def search(q: np.ndarray) -> list[int]:
        return [int(i) for i, _ in vectors.search_top(PARTITION, q, k)]

    async def scan(q: np.ndarray) -> list[int]:
        return chunk_ids[exact_top(matrix, q, k)].tolist()

    async def filtered(q: np.ndarray) -> list[int]:
        return await real(q, {"group": "g3"})

    paths = {"retrieve": real, "query": direct, "search_top": search, "numpy": scan, "filtered": filtered}
    wall: dict[str, list[float]] = {name: [] for name in paths}
    cpu: dict[str, list[float]] = {name: [] for name in paths}
    unqueued: dict[str, list[float]] = {name: [] for name in paths}  # wall time less our threads' run-queue wait
    found: dict[str, list[list[int]]] = {name: [] for name in paths}
    for q in queries[:50]:  # warm-up: the worker thread, the graph's pages, SQLite's cache
        for run in paths.values():
            await run(q)
    waited, _ = wait_quiet(1.0, args.max_foreign, args.wait_quiet)
    names = list(paths)
    order = random.Random(0)
    blocks = []
    for start in range(0, len(queries), BLOCK):
        meter = CpuMeter()
        for q in queries[start:start + BLOCK]:
            for name in order.sample(names, len(names)):  # a new order each time: no path always follows another
                q0 = run_queue_s()
                c0, t0 = time.process_time(), time.perf_counter()
                ids = await paths[name](q)
                t1, c1 = time.perf_counter(), time.process_time()
                wall[name].append(t1 - t0)
                cpu[name].append(c1 - c0)
                unqueued[name].append(t1 - t0 - (run_queue_s() - q0))
                found[name].append(ids)
        blocks.append(meter.read()["foreign_cores"])

    # Recall against the exact scan: of all chunks, and for the filter, of the group's chunks.
    def overlap(got: list[int], exact: list[int]) -> float:
        return len(set(got) & set(exact)) / len(exact)

    in_group = np.flatnonzero(groups == 3)
    sub, sub_ids = matrix[in_group], chunk_ids[in_group]
    group_exact = [sub_ids[exact_top(sub, q, min(k, len(sub)))].tolist() for q in queries]
    recall = {name: statistics.fmean(map(overlap, found[name], found["numpy"]))
              for name in ("retrieve", "query", "search_top")}
    recall["filtered"] = statistics.fmean(map(overlap, found["filtered"], group_exact))

    # A query with a clear nearest chunk (one chunk's vector plus as much noise: cosine ~0.71 to it, ~0.05 to
    # the others): how often the real path returns that chunk first.
    rng = np.random.default_rng(2)
    planted = rng.integers(0, len(matrix), min(200, len(queries)))
    noisy = matrix[planted] + unit_rows(rng, len(planted))
    first = [(await real(q / np.linalg.norm(q)))[0] for q in noisy]

    return {
        "chunks": len(matrix), "queries": len(queries), "top_k": k, "search": index.stats()["search"],
        "wall_ms": {name: percentiles_ms(wall[name], PS) for name in names},
        "cpu_ms": {name: percentiles_ms(cpu[name], PS) for name in names},
        "wall_less_run_queue_ms": {name: percentiles_ms(unqueued[name], PS) for name in names},
        "recall_at_k": recall, "filter": {"group": "g3"}, "filter_matches": int(len(in_group)),
        "planted_found_first": statistics.fmean(a == b for a, b in zip(first, chunk_ids[planted].tolist())),
        "retrieve_and_query_agree": statistics.fmean(a == b for a, b in zip(found["retrieve"], found["query"])),
        "waited_for_quiet_s": waited, "foreign_cores_per_block": blocks,
    }


async def measure_retrieval(args: argparse.Namespace) -> list[dict[str, Any]]:
    from modelyard.index import IndexRegistry, IndexSettings

    rng = np.random.default_rng(0)
    sizes = sorted(args.chunks)
    matrix = unit_rows(rng, sizes[-1])
    queries = unit_rows(np.random.default_rng(1), args.queries)
    pool = text_pool(rng)
    groups = (np.arange(sizes[-1]) // CHUNKS_PER_DOC) % GROUPS
    results = []
    with tempfile.TemporaryDirectory(prefix="modelyard-index-bench-") as tmp:
        root = Path(tmp)
        # Written with the graph off (adding 100,000 vectors to a graph 16 at a time takes minutes more than
        # building it at once); the saved vectors are then deleted, so the index opens as a server finds one
        # whose save is missing: it rebuilds its vectors from SQLite (the graph in one batch) and saves them.
        writer = IndexRegistry(root, ann_min=1 << 62)
        writer.create("bench", IndexSettings(embed="bench"))
        writer.close()
        have = 0
        for size in sizes:
            t0 = time.perf_counter()
            await asyncio.to_thread(add_documents, writer.get("bench"), matrix, have, size, pool, rng)
            writer.close()
            added_s = time.perf_counter() - t0
            shutil.rmtree(root / "bench.vectors")
            reader = IndexRegistry(root)
            t0 = time.perf_counter()
            reader.get("bench")
            rebuild_s = time.perf_counter() - t0
            reader.close()  # saves the vectors
            t0 = time.perf_counter()
            index = reader.get("bench")  # what a restarted server does on the first query
            open_s = time.perf_counter() - t0
            with closing(sqlite3.connect(f"{(root / 'bench.db').as_uri()}?mode=ro", uri=True)) as db:
                chunk_ids = np.array([r[0] for r in db.execute("SELECT id FROM chunks ORDER BY id")], dtype=np.int64)
            assert len(chunk_ids) == size, (len(chunk_ids), size)
            print(f"  {size:,} chunks: {size - have:,} added in {added_s:.1f} s, vectors rebuilt from SQLite in "
                  f"{rebuild_s:.1f} s, opened from the save in {open_s:.2f} s; {args.queries} queries ...", flush=True)
            result = await measure_size(index, matrix[:size], chunk_ids, groups[:size], queries, args)
            result.update(added=size - have, added_s=added_s, rebuild_s=rebuild_s, open_s=open_s,
                          memory_mb=index.stats()["memory_bytes"] / 1e6)
            results.append(result)
            reader.close()
            shutil.rmtree(root / "bench.vectors")  # the writer adds to NumPy rows again
            have = size
    return results


def blas_threads(n: int) -> Any:
    """NumPy's BLAS limited to `n` threads meanwhile (0: unchanged)."""
    if not n:
        return nullcontext()
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        print("  threadpoolctl is not installed: BLAS keeps its default threads", flush=True)
        return nullcontext()
    return threadpool_limits(n, user_api="blas")


# --- build ----------------------------------------------------------------------------


def build_documents(target_chunks: int) -> tuple[list[Any], str]:
    """Markdown documents of about 20 KB, until their chunks reach `target_chunks`; and where they came from."""
    from modelyard.index import IndexSettings, parse, split

    settings = IndexSettings(embed="bench")
    docs: list[Any] = []
    chunks = 0

    def add(name: str, title: str, paragraphs: list[str]) -> None:
        nonlocal chunks
        text = f"# {title}\n\n" + "\n\n".join(p.strip() for p in paragraphs) + "\n"
        doc = parse(text.encode(), f"{name}-{len(docs)}.md")
        docs.append(doc)
        chunks += len(split(doc.text, settings.chunk_size, settings.overlap, doc.sections))

    def take(name: str, title: str, paragraphs: list[str]) -> bool:
        """Documents of `paragraphs`; True once there are enough chunks."""
        part: list[str] = []
        for paragraph in paragraphs:
            part.append(paragraph)
            if sum(map(len, part)) >= 20_000:
                add(name, title, part)
                part = []
                if chunks >= target_chunks:
                    return True
        if part:
            add(name, title, part)
        return chunks >= target_chunks

    if MMLU.is_dir():
        csv.field_size_limit(1 << 24)
        for file in sorted(MMLU.glob("mmlu_*.csv")):
            with file.open(newline="") as f:
                prompts = [row["prompt"] for row in csv.DictReader(f)]
            subject = file.stem.removeprefix("mmlu_")
            if take(subject, subject.replace("_", " ").capitalize(), prompts):
                return docs, f"mmlu ({MMLU})"
    for file in sorted((ROOT / "src").rglob("*.py")) + sorted(ROOT.glob("*.md")):
        if take(file.relative_to(ROOT).as_posix(), file.name, file.read_text().split("\n\n")):
            break
    return docs, "the repository's own sources"


def split_evenly(docs: list[Any], texts: list[list[str]], parts: int) -> list[tuple[list[Any], list[str]]]:
    """The documents (with their chunks' texts) in `parts` runs of consecutive documents, of about as many chunks."""
    total = sum(map(len, texts))
    out: list[tuple[list[Any], list[str]]] = [([], [])]
    done = 0
    for doc, chunks in zip(docs, texts):
        if done >= total * len(out) / parts and len(out) < parts:
            out.append(([], []))
        out[-1][0].append(doc)
        out[-1][1].extend(chunks)
        done += len(chunks)
    return out


async def measure_build(args: argparse.Namespace) -> dict[str, Any]:
    from modelyard.index import IndexRegistry, IndexSettings, build, split
    from modelyard.routing.features import MiniLMEmbedder

    docs, source = build_documents(args.build_chunks)
    settings = IndexSettings(embed="bench")
    parts = split_evenly(docs, [[c.text for c in split(d.text, settings.chunk_size, settings.overlap, d.sections)]
                                for d in docs], args.segments)
    texts = [t for _, part in parts for t in part]
    embedder = MiniLMEmbedder(threads=args.threads, batch_size=args.batch_size)
    t0 = time.perf_counter()
    embedder.load()
    load_s = time.perf_counter() - t0
    model = embedder.model
    print(f"  {len(docs)} documents, {len(texts)} chunks ({source}) in {len(parts)} parts; model loaded in "
          f"{load_s:.1f} s; {args.rounds} round(s) ...", flush=True)

    async def embed(batch: list[str]) -> np.ndarray:  # what build is given: async, off the event loop
        return await asyncio.to_thread(embedder, batch)

    def encode(batch: list[str]) -> np.ndarray:
        return model.encode(batch, batch_size=args.batch_size, normalize_embeddings=True,
                            convert_to_numpy=True, show_progress_bar=False)

    encode(texts[: args.batch_size])  # warm-up
    seconds: dict[str, list[float]] = {"build": [], "encode": []}
    cpu: dict[str, list[float]] = {"build": [], "encode": []}
    foreign: dict[str, list[float]] = {"build": [], "encode": []}
    with tempfile.TemporaryDirectory(prefix="modelyard-index-build-") as tmp:
        registry = IndexRegistry(Path(tmp))
        waited, _ = wait_quiet(1.0, args.max_foreign, args.wait_quiet)
        for r in range(args.rounds):
            index = registry.create(f"build{r}", settings)
            for n, (part_docs, part_texts) in enumerate(parts):
                for kind in ("build", "encode") if (n + r) % 2 == 0 else ("encode", "build"):
                    meter = CpuMeter()
                    c0, t0 = time.process_time(), time.perf_counter()
                    if kind == "build":
                        result = await build(index, part_docs, embed, batch_size=args.batch_size)
                        assert result.chunks == len(part_texts) and not result.skipped, result.as_dict()
                    else:
                        encode(part_texts)
                    seconds[kind].append(time.perf_counter() - t0)
                    cpu[kind].append(time.process_time() - c0)
                    foreign[kind].append(meter.read()["foreign_cores"])
        # The index holds the model's vectors: a chunk's own vector finds it first.
        sample = range(0, len(texts), max(1, len(texts) // 50))
        own = encode([texts[i] for i in sample])
        found_self = statistics.fmean(index.query(v, 1)[0].text == texts[i] for i, v in zip(sample, own))
        registry.close()

    chunks = len(texts) * args.rounds
    rate = {kind: chunks / sum(s) for kind, s in seconds.items()}
    cpu_rate = {kind: chunks / sum(s) for kind, s in cpu.items()}
    return {
        "documents": len(docs), "chunks": len(texts), "source": source, "parts": len(parts),
        "batch_size": args.batch_size, "threads": args.threads or "torch default", "rounds": args.rounds,
        "model_load_s": load_s, "waited_for_quiet_s": waited,
        "seconds": seconds, "cpu_seconds": cpu, "foreign_cores": foreign,
        "chunks_per_s": rate, "chunks_per_cpu_s": cpu_rate,
        "part_ratios": [e / b for b, e in zip(seconds["build"], seconds["encode"])],
        "ratio": rate["build"] / rate["encode"], "cpu_ratio": cpu_rate["build"] / cpu_rate["encode"],
        "target_ratio": TARGET_BUILD_RATIO, "found_self_top1": found_self,
    }


# --- output ---------------------------------------------------------------------------


def retrieval_table(results: list[dict[str, Any]]) -> str:
    rows = []
    labels = {"retrieve": "retrieve() (the query route's path)", "query": "  DocumentIndex.query (no thread hop)",
              "search_top": "  VectorIndex.search_top (search alone)", "numpy": "baseline: exhaustive NumPy scan",
              "filtered": "retrieve() with filter (10% of docs)"}
    for r in results:
        w, c, unqueued = r["wall_ms"], r["cpu_ms"], r["wall_less_run_queue_ms"]
        for name, label in labels.items():
            ratio = f"{w['numpy']['p99'] / w[name]['p99']:.1f}x" if name in ("retrieve", "query", "search_top") else ""
            rows.append([f"{r['chunks']:,} {label}", *(f"{w[name][f'p{p}']:.3f}" for p in PS),
                         f"{c[name]['p50']:.3f}", f"{c[name]['p99']:.3f}",
                         f"{unqueued[name]['p99']:.3f}",
                         f"{r['recall_at_k'][name]:.3f}" if name in r["recall_at_k"] else "1 (exact)", ratio])
    return table(rows, ["ms per query", *(f"p{p}" for p in PS), "cpu p50", "cpu p99", "p99 less runq wait",
                        "recall@k", "scan/index p99"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chunks", type=lambda s: [int(x) for x in s.split(",")], default=None,
                        help="index sizes for retrieval, comma-separated (default 20000,100000)")
    parser.add_argument("--queries", type=int, default=None, help="queries per size (default 1000)")
    parser.add_argument("--top-k", type=int, default=10)
    parser.add_argument("--build-chunks", type=int, default=None, help="about how many chunks to build (default 1500)")
    parser.add_argument("--batch-size", type=int, default=64, help="embedding batch size (build's default)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads for the build part, both sides (0: torch's default; the gateway's "
                             "in-process embedder uses MODELYARD_EMBED_THREADS, default 1)")
    parser.add_argument("--blas-threads", type=int, default=1,
                        help="NumPy's BLAS threads during retrieval (0: its default; see the module docstring)")
    parser.add_argument("--rounds", type=int, default=1, help="times the whole build is measured (a new index each)")
    parser.add_argument("--max-foreign", type=float, default=0.15,
                        help="other processes' cores counted as quiet")
    parser.add_argument("--wait-quiet", type=float, default=None,
                        help="before each size's queries and before the build, wait up to this many seconds for a "
                             "quiet machine (default 120, 10 with --quick; 0: no wait)")
    parser.add_argument("--segments", type=int, default=None,
                        help="build and encode alternate over this many parts of the documents (default 5, 2 with "
                             "--quick; 1: one build() call and one encode() call per round)")
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument("--no-build", action="store_true", help="retrieval only (no model needed)")
    parser.add_argument("--no-retrieval", action="store_true", help="build only")
    args = parser.parse_args()
    quick = args.quick
    args.chunks = args.chunks or ([2_000, 12_000] if quick else [20_000, 100_000])
    args.queries = args.queries or (200 if quick else 1000)
    args.build_chunks = args.build_chunks or (300 if quick else 1500)
    args.segments = args.segments or (2 if quick else 5)
    if args.wait_quiet is None:
        args.wait_quiet = 10.0 if quick else 120.0

    result: dict[str, Any] = {"environment": environment(), "quick": quick}
    if not args.no_retrieval:
        print(f"retrieval: random unit vectors of {DIM} dimensions, top-{args.top_k}, BLAS on "
              f"{args.blas_threads or 'its default'} thread(s)", flush=True)
        with blas_threads(args.blas_threads):
            result["retrieval"] = asyncio.run(measure_retrieval(args))
        result["blas_threads"] = args.blas_threads or "default"
    if not args.no_build:
        print("build: all-MiniLM-L6-v2 in-process", flush=True)
        result["build"] = asyncio.run(measure_build(args))
    result["environment"]["loadavg_end"] = loadavg()

    for r in result.get("retrieval", []):
        r["verdict"] = {"p99_ms": r["wall_ms"]["retrieve"]["p99"], "target_ms": TARGET_P99_MS,
                        "met": r["wall_ms"]["retrieve"]["p99"] <= TARGET_P99_MS}
    if "retrieval" in result:
        print()
        print(retrieval_table(result["retrieval"]))
        for r in result["retrieval"]:
            noisy = sum(f > args.max_foreign for f in r["foreign_cores_per_block"])
            print(f"{r['chunks']:,} chunks ({r['search']}): retrieve() p99 {r['verdict']['p99_ms']:.2f} ms, target "
                  f"<= {TARGET_P99_MS:g} ms: {'met' if r['verdict']['met'] else 'NOT met'} (less the time its "
                  f"threads waited for a CPU: {r['wall_less_run_queue_ms']['retrieve']['p99']:.2f} ms); p50 "
                  f"{r['wall_ms']['numpy']['p50'] / r['wall_ms']['retrieve']['p50']:.1f}x faster than the scan; "
                  f"a planted nearest chunk found first {r['planted_found_first'] * 100:.0f}%; "
                  f"{r['memory_mb']:.0f} MB of vectors, opened in {r['open_s']:.2f} s "
                  f"(rebuilt in {r['rebuild_s']:.1f} s); "
                  f"other processes used {statistics.fmean(r['foreign_cores_per_block']):.2f} cores "
                  f"(max {max(r['foreign_cores_per_block']):.2f}; {noisy} of {len(r['foreign_cores_per_block'])} "
                  f"blocks over {args.max_foreign})")
    if "build" in result:
        b = result["build"]
        wall, cpu = b["chunks_per_s"], b["chunks_per_cpu_s"]
        rows = [[label, f"{wall[kind]:.2f}", f"{wall[kind] / wall['encode']:.3f}", f"{cpu[kind]:.2f}",
                 f"{cpu[kind] / cpu['encode']:.3f}", f"{sum(b['seconds'][kind]):.1f}",
                 f"{statistics.fmean(b['foreign_cores'][kind]):.2f}"]
                for kind, label in (("build", "build() into the index"), ("encode", "baseline: encode()"))]
        print(f"\nbuild: {b['chunks']} chunks in {b['documents']} documents ({b['source']}), {b['parts']} parts "
              f"x {b['rounds']} round(s), batch {b['batch_size']}, torch threads {b['threads']}")
        print(table(rows, ["", "chunks/s", "ratio", "per CPU-s", "ratio", "wall s", "others' cores"]))
        print(f"build / encode = {b['ratio']:.3f} (per part: "
              f"{' '.join(f'{x:.2f}' for x in b['part_ratios'])}; per CPU-second {b['cpu_ratio']:.3f}), target >= "
              f"{TARGET_BUILD_RATIO}: {'met' if b['ratio'] >= TARGET_BUILD_RATIO else 'NOT met'}; "
              f"chunks found by their own vector first: {b['found_self_top1'] * 100:.0f}%")
    print(f"load average {result['environment']['loadavg_end']}")
    print(f"results: {write_json('index_search.json', result)}")


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    main()
