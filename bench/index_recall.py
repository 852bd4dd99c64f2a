"""Document index recall on real embeddings: the HNSW graph against an exact scan, by search expansion.

`bench/index_search.py` measures speed on random unit vectors, the graph's
worst case (nothing is much nearer than anything else). This script answers
the question a user has: on text embedded by the packaged all-MiniLM-L6-v2,
how many of the true top-k chunks does the document index return, and what
does a wider search (``expansion_search``) cost?

**Corpus.** Real text, cut into chunks of 200-400 characters at paragraph
breaks: the MMLU prompts in ``../shared/data/routing/mmlu`` (when present),
then the docstrings of the Python standard library and of the installed
packages on this machine, until ``--chunks`` chunks (default 12,000: past the
document index's `ANN_MIN`, so it is a graph). Embedded once with
all-MiniLM-L6-v2 and kept in ``~/.cache/modelyard-bench/`` keyed by the
texts' hash — on 2 shared cores the model embeds about 7-10 such chunks a
second, so 100,000 real chunks would take hours. The index is then grown to
``--grow-to`` (default 100,000) with *blends*: each a random mix of two real
vectors plus a little noise, which keeps the real embeddings' structure
(clusters of related text) where random unit vectors have none. The blended
size is a stand-in for 100,000 real chunks, not the real thing.

**Queries.** ``--queries`` texts embedded the same way but not in the index,
half of each kind: held-out MMLU questions (a question looking for related
material) and held-out chunks (a passage looking for its neighbours).

**Measured**, at each size and ``expansion_search``, on a `VectorIndex` built
as a document index builds it (``add_many``, one batch): recall@k against the
exact top-k of a float32 NumPy scan of the same vectors, the share of queries
whose exact first hit comes first, and the search's CPU time per query
(p50/p99, ``time.thread_time``, so other processes' load does not enter), with
the exact scan's CPU time as the baseline in the same run.

    .venv/bin/python bench/index_recall.py                  # 12,000 real chunks, grown to 100,000; 600 queries
    .venv/bin/python bench/index_recall.py --chunks 20000 --grow-to 0 --expansions 32,64,128

Results: stdout and ``bench/results/index_recall.json``.
"""

from __future__ import annotations

import argparse
import ast
import csv
import hashlib
import json
import random
import sys
import sysconfig
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
MMLU = ROOT.parent / "shared" / "data" / "routing" / "mmlu"
CACHE = Path.home() / ".cache" / "modelyard-bench"
PARTITION = "doc"


def paragraphs_of_mmlu() -> list[str]:
    if not MMLU.is_dir():
        return []
    csv.field_size_limit(1 << 24)
    out = []
    for file in sorted(MMLU.glob("mmlu_*.csv")):
        with file.open(newline="") as f:
            out.extend(row["prompt"].strip() for row in csv.DictReader(f))
    return out


def paragraphs_of_python(want: int) -> list[str]:
    """Docstrings of the modules, classes and functions of the standard library, then of the installed
    packages, paragraph by paragraph, until about `want` characters."""
    out: list[str] = []
    total = 0
    paths = sysconfig.get_paths()
    files = sorted(Path(paths["stdlib"]).rglob("*.py"))
    files += [f for f in sorted(Path(paths["purelib"]).rglob("*.py")) if f not in set(files)]
    for file in files:
        if total >= want:
            break
        if "test" in file.parts or "tests" in file.parts or file.name.startswith("test_"):
            continue
        try:
            tree = ast.parse(file.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc:
                    for p in doc.split("\n\n"):
                        if len(p.strip()) > 60:
                            out.append(p.strip())
                            total += len(out[-1])
    return out


def chunks_of(paragraphs: list[str], low: int = 200, high: int = 400) -> list[str]:
    """Consecutive paragraphs joined into chunks of `low`..`high` characters (a longer paragraph is cut)."""
    out, part = [], ""
    for p in paragraphs:
        while len(p) > high:
            out.append(p[:high])
            p = p[high:]
        part = f"{part}\n\n{p}" if part else p
        if len(part) >= low:
            out.append(part[:high])
            part = ""
    if part:
        out.append(part)
    return list(dict.fromkeys(out))  # no duplicates: a duplicate ties with itself


def embed(texts: list[str], threads: int) -> np.ndarray:
    key = hashlib.sha256("\x00".join(texts).encode()).hexdigest()[:16]
    path = CACHE / f"minilm-{len(texts)}-{key}.npy"
    if path.exists():
        return np.load(path)
    from modelyard.routing.features import MiniLMEmbedder

    embedder = MiniLMEmbedder(threads=threads, batch_size=64)
    t0 = time.perf_counter()
    rows = []
    for start in range(0, len(texts), 2048):
        rows.append(np.asarray(embedder(texts[start:start + 2048]), dtype=np.float32))
        done = start + len(rows[-1])
        print(f"  embedded {done:,}/{len(texts):,} ({done / (time.perf_counter() - t0):.0f}/s)", flush=True)
    vectors = np.concatenate(rows)
    CACHE.mkdir(parents=True, exist_ok=True)
    np.save(path, vectors)
    return vectors


def measure(index: Any, matrix: np.ndarray, queries: np.ndarray, k: int, expansion: int) -> dict[str, Any]:
    graph = index._partitions[PARTITION].ann
    graph.expansion_search = expansion
    recall, first, times, scans = [], [], [], []
    order = list(range(len(queries)))
    random.Random(expansion).shuffle(order)
    for i in order:
        q = queries[i]
        t0 = time.thread_time()
        got = [int(entry_id) for entry_id, _ in index.search_top(PARTITION, q, k)]
        times.append(time.thread_time() - t0)
        t0 = time.thread_time()
        scores = matrix @ q
        top = np.argpartition(-scores, k)[:k]
        exact = top[np.argsort(-scores[top])].tolist()
        scans.append(time.thread_time() - t0)
        recall.append(len(set(got) & set(exact)) / k)
        first.append(bool(got) and got[0] == exact[0])
    ms = np.asarray(times) * 1000
    scan_ms = np.asarray(scans) * 1000
    return {"expansion_search": expansion, "recall_at_k": float(np.mean(recall)),
            "first_hit_kept": float(np.mean(first)),
            "cpu_p50_ms": float(np.percentile(ms, 50)), "cpu_p99_ms": float(np.percentile(ms, 99)),
            "exact_scan_cpu_p50_ms": float(np.percentile(scan_ms, 50)),
            "exact_scan_cpu_p99_ms": float(np.percentile(scan_ms, 99))}


def blends(matrix: np.ndarray, n: int) -> np.ndarray:
    """`n` stand-ins for more real chunks: each a random blend of two real vectors plus a little noise,
    so the index grows along the real embeddings' own directions rather than uniformly at random."""
    rng = np.random.default_rng(1)
    a = matrix[rng.integers(0, len(matrix), n)]
    b = matrix[rng.integers(0, len(matrix), n)]
    w = rng.uniform(0.2, 0.8, (n, 1)).astype(np.float32)
    out = w * a + (1 - w) * b + rng.standard_normal(a.shape, dtype=np.float32) * 0.02
    return out / np.linalg.norm(out, axis=1, keepdims=True)


def measure_size(label: str, matrix: np.ndarray, queries: np.ndarray, questions: int,
                 args: argparse.Namespace) -> dict[str, Any]:
    from modelyard.cache.index import VectorIndex

    index = VectorIndex(matrix.shape[1])
    t0 = time.perf_counter()
    index.add_many([str(i) for i in range(len(matrix))], [PARTITION] * len(matrix), matrix)
    built_s = time.perf_counter() - t0
    print(f"{label}: {len(matrix):,} chunks, graph built in {built_s:.1f} s", flush=True)
    rows = []
    for expansion in (int(x) for x in args.expansions.split(",")):
        row = measure(index, matrix, queries, args.top_k, expansion)
        for kind, part in (("questions", slice(0, questions)), ("chunks", slice(questions, None))):
            row[f"recall_{kind}"] = measure(index, matrix, queries[part], args.top_k, expansion)["recall_at_k"]
        rows.append(row)
        print(f"  expansion {expansion:>4}: recall@{args.top_k} {row['recall_at_k']:.3f} "
              f"(questions {row['recall_questions']:.3f}, chunks {row['recall_chunks']:.3f}), "
              f"first hit kept {row['first_hit_kept']:.3f}, CPU p50/p99 {row['cpu_p50_ms']:.2f}/{row['cpu_p99_ms']:.2f} ms "
              f"(exact scan {row['exact_scan_cpu_p50_ms']:.2f}/{row['exact_scan_cpu_p99_ms']:.2f} ms, "
              f"ratio p99 {row['cpu_p99_ms'] / row['exact_scan_cpu_p99_ms']:.2f})", flush=True)
    return {"label": label, "chunks": len(matrix), "graph_build_s": built_s, "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chunks", type=int, default=12_000, help="real chunks embedded")
    parser.add_argument("--grow-to", type=int, default=100_000,
                        help="then grow the index to this many with blends of the real vectors (0: do not)")
    parser.add_argument("--queries", type=int, default=600)
    parser.add_argument("--top-k", type=int, default=10)
    parser.add_argument("--expansions", default="32,64,96,128,192,256")
    parser.add_argument("--threads", type=int, default=2, help="torch threads for the one-off embedding")
    args = parser.parse_args()
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(1, user_api="blas")  # the graph searches on one thread; so does the baseline
    except ImportError:
        pass
    rng = random.Random(0)
    mmlu = paragraphs_of_mmlu()
    rng.shuffle(mmlu)
    held_questions = [q[:800] for q in mmlu[: args.queries // 2]]
    texts = chunks_of(mmlu[args.queries // 2:]) + chunks_of(paragraphs_of_python(args.chunks * 700))
    if len(texts) < args.chunks + args.queries:
        sys.exit(f"only {len(texts):,} chunks of text found; ask for fewer with --chunks")
    rng.shuffle(texts)
    held_chunks = texts[: args.queries - len(held_questions)]
    corpus = texts[len(held_chunks): len(held_chunks) + args.chunks]
    print(f"corpus {len(corpus):,} chunks ({len(mmlu):,} MMLU prompts available), "
          f"queries {len(held_questions)} questions + {len(held_chunks)} chunks", flush=True)
    vectors = embed(corpus, args.threads)
    queries = embed(held_questions + held_chunks, args.threads)
    matrix = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    queries = queries / np.linalg.norm(queries, axis=1, keepdims=True)

    sizes = [("real", matrix)]
    if args.grow_to > len(matrix):
        sizes.append(("real + blends", np.concatenate([matrix, blends(matrix, args.grow_to - len(matrix))])))
    out: dict[str, Any] = {"real_chunks": len(corpus), "queries": len(queries), "top_k": args.top_k, "sizes": []}
    for label, rows_matrix in sizes:
        out["sizes"].append(measure_size(label, rows_matrix, queries, len(held_questions), args))
    results = ROOT / "bench" / "results"
    results.mkdir(exist_ok=True)
    (results / "index_recall.json").write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
