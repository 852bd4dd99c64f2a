"""Routing quality: the learned router against the length rule, random and the oracle, on MMLU by subject.

Target (issue "Cost-aware router"): on the MMLU by-subject split (a fixed,
seeded 50/50 split of the 57 subject files; train on one half, test on the
other, both directions averaged) the learned router reaches APGR >= 0.65 and
CPT(50%) <= 30%, beating the rule "longer prompts go to the strong tier" in
the same run; and the learned decision, embedding included, takes <= 15 ms p50.

What runs, all in this process (`modelyard.routing.evaluate`):

- ``learned``: `LearnedRouter` (prompt features + all-MiniLM-L6-v2 embeddings,
  multinomial logistic regression) trained on each fold's training subjects,
  measured as it would serve: gated against the length rule on held-out
  subjects of the fold's training half (inactive — so the rule — when it
  does not beat it) and with the out-of-distribution fallback;
  ``learned-no-gate`` without the gate, ``learned-bare`` without either;
- ``length``: the score is the prompt's length in characters (no training);
- ``random``: the expected curve of a coin-flip router (PGR = strong share);
- ``oracle``: knows every outcome (the ceiling).

Then the out-of-distribution check: the share of training prompts, of
held-out subjects' prompts and of prompts written for this benchmark from
outside MMLU (word problems, open questions) that it sends to the fallback.

Also printed, as a reference that is *not* the target split: the same routers
on a seeded 50/50 split by rows (train and test share subjects: what a router
trained on an endpoint's own traffic faces).

Embeddings are cached under ``MODELYARD_HOME/cache/embeddings``; the first
run embeds all 14k prompts (minutes on 2 cores), later runs read the cache.
``--cold`` uses an empty temporary cache to time a first run.

Decision overhead: `LearnedRouter.score([prompt])` with the in-process
embedder (no cache), against the embedding alone (the baseline no classifier
avoids), the features + classifier alone (embeddings looked up) and the
length rule, in the same run: each query goes through every path in turn,
the order rotating, so noise from other processes hits all alike. torch runs
2 intra-op threads; when other processes keep the 2 cores busy, the
embedding's p50 rises several-fold — check the printed load average.

    .venv/bin/python bench/routing_quality.py             # ~1 min once the embeddings are cached
    .venv/bin/python bench/routing_quality.py --cold      # time a first run (embeds everything)
    .venv/bin/python bench/routing_quality.py --latency-only --latency-n 50

Results: stdout and ``bench/results/routing_quality.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "routing" / "mmlu"
RESULTS = ROOT / "bench" / "results"
TARGET_APGR, TARGET_CPT50, TARGET_P50_MS = 0.65, 0.30, 15.0


def _fmt(v: float | None, percent: bool = False) -> str:
    if v is None:
        return "–"
    return f"{v * 100:5.1f}%" if percent else f"{v:.3f}"


#: prompts from outside MMLU's domain, written for this benchmark (no outcomes: only the share the
#: out-of-distribution check sends to the fallback is measured on them)
OUTSIDE = {
    "word problems": [
        "A baker makes 48 muffins and sells them in boxes of 6. If she sells 5 boxes in the morning and 2 in the "
        "afternoon, how many muffins are left?",
        "Tom has twice as many marbles as Jake. Together they have 36 marbles. How many marbles does Tom have?",
        "A train leaves at 9:15 and travels 180 km at 60 km per hour. At what time does it arrive?",
        "Maria saves $12 a week. How many weeks will it take her to save enough for a bike that costs $150 if she "
        "already has $30?",
        "A garden is 8 meters long and 5 meters wide. Fencing costs $7 per meter. How much does it cost to fence "
        "the whole garden?",
        "There are 24 students in a class. Three eighths of them walk to school and the rest take the bus. How "
        "many take the bus?",
        "A shop sells pencils at 3 for $1. How much do 27 pencils cost?",
        "Ben reads 15 pages a day. His book has 240 pages and he has read for 6 days. How many days until he "
        "finishes?",
        "A recipe needs 2 cups of flour for 12 cookies. How much flour is needed for 30 cookies?",
        "Lena bought 4 notebooks at $2.50 each and a pen for $1.75. She paid with a $20 bill. What is her change?",
        "A water tank holds 500 liters and leaks 12 liters an hour. After 15 hours how much water is left?",
        "In a parking lot there are 3 times as many cars as motorbikes and 64 wheels in all. How many cars are "
        "there?",
    ],
    "open questions": [
        "Write a short persuasive blog post about why cities should have more bike lanes.",
        "Pretend you are a pirate captain and describe your ship to a new crew member.",
        "Compose a limerick about a cat who loves to cook.",
        "What are some good strategies for staying focused while working from home?",
        "Now rewrite your previous answer so that every sentence starts with the letter S.",
        "Help me plan a three-day trip to Kyoto on a modest budget.",
        "Explain the difference between a list and a tuple in Python, with a small example.",
        "Write a function that returns the longest palindromic substring of a string.",
        "Imagine you are a travel agent; convince me to visit Iceland in winter.",
        "Draft a friendly email to a colleague asking to move our meeting to Thursday.",
        "Summarise the plot of a heist movie you invent, in five sentences.",
        "Give me three ideas for a science fair project for a ten-year-old.",
    ],
}


def run_quality(data, split_name: str, embedder) -> dict:
    """The learned router as served (gated + out-of-distribution fallback), without the gate, bare; the rules."""
    from modelyard.routing.evaluate import evaluate, learned_router

    out = {}
    variants = {"learned": dict(gated=True, ood=True), "learned-no-gate": dict(gated=False, ood=True),
                "learned-bare": dict(gated=False, ood=False)}
    for strategy in (*variants, "length", "random"):
        t0 = time.perf_counter()
        router = learned_router(embedder, **variants[strategy]) if strategy in variants else None
        result = evaluate(data, strategy if strategy in ("length", "random") else "learned", router=router)
        out[strategy] = {**result.summary(), "seconds": round(time.perf_counter() - t0, 2),
                         "folds": [{"name": f.name, "apgr": f.curve.apgr, "cpt50": f.curve.cpt(0.5)}
                                   for f in result.folds]}
        if router is not None and router.gates:
            out[strategy]["gates"] = [g.to_json() for g in router.gates]
        if strategy == "length":
            out["oracle"] = {**result.summary("oracle"), "seconds": 0.0, "folds": []}
    print(f"\n{split_name}")
    print(f"  {'router':<16} {'APGR':>6} {'CPT(50%)':>9} {'CPT(80%)':>9}   folds (APGR)            seconds")
    for name in (*variants, "length", "random", "oracle"):
        r = out[name]
        folds = ", ".join(f"{f['name']} {f['apgr']:.3f}" for f in r["folds"])
        print(f"  {name:<16} {_fmt(r['apgr']):>6} {_fmt(r['cpt50'], True):>9} {_fmt(r['cpt80'], True):>9}   "
              f"{folds:<24} {r['seconds']:.1f}")
    for g in out["learned"].get("gates", []):
        print(f"  gate ({'passed' if g['passed'] else 'failed'}): {g['reason']}")
    ratio = out["learned"]["apgr"] / out["length"]["apgr"]
    out["ratio_learned_vs_length_apgr"] = ratio
    print(f"  learned (as served) / length APGR = {ratio:.3f}x")
    return out


def run_outside(data, embedder) -> dict:
    """Trained on every MMLU subject: the share of held-out subjects' and of non-MMLU prompts called out of
    distribution, by subject split (train on half the subjects) and on `OUTSIDE`."""
    from modelyard.routing.evaluate import subject_split
    from modelyard.routing.learned import LearnedRouter

    out: dict = {"held_out_subjects": []}
    for name, tr, te, _, _ in subject_split(data):
        train, test = data.subset(tr), data.subset(te)
        router = LearnedRouter(embedder=embedder).fit(train.prompts, train.weak, train.strong)
        inside = router.assess(train.prompts[:2000])
        held = router.assess(test.prompts)
        out["held_out_subjects"].append({"fold": name, "train_ood_share": float(inside.outside.mean()),
                                         "test_ood_share": float(held.outside.mean())})
    router = LearnedRouter(embedder=embedder).fit(data.prompts, data.weak, data.strong)
    for kind, prompts in OUTSIDE.items():
        a = router.assess(prompts)
        out[kind] = {"prompts": len(prompts), "ood_share": float(a.outside.mean()),
                     "distance_p50": float(np.median(a.distance)), "threshold": router.ood.threshold}
    print("\nout of distribution (mean distance to the 5 nearest training prompts above the training prompts' own 99% "
          "quantile, by embedding or by surface features)")
    for f in out["held_out_subjects"]:
        print(f"  {f['fold']}: training prompts {f['train_ood_share']:.1%}, held-out subjects {f['test_ood_share']:.1%}")
    for kind in OUTSIDE:
        o = out[kind]
        print(f"  trained on all of MMLU: {kind} (written for this benchmark, {o['prompts']}): {o['ood_share']:.0%} "
              f"out of distribution (distance p50 {o['distance_p50']:.3f}, threshold {o['threshold']:.3f})")
    return out


def run_latency(data, n: int, rounds: int) -> dict:
    import numpy as np

    from modelyard.routing.features import CachedEmbedder, MiniLMEmbedder
    from modelyard.routing.learned import LearnedRouter

    rng = np.random.default_rng(7)
    idx = rng.permutation(len(data))
    train = idx[:3000]
    router = LearnedRouter(embedder=CachedEmbedder.default())
    router.fit([data.prompts[i] for i in train], data.weak[train], data.strong[train])
    live = MiniLMEmbedder()
    router.embedder = live  # the live path: no cache
    queries = [data.prompts[i] for i in idx[3000:3000 + n]]
    vectors = dict(zip(queries, live(queries)))

    class Precomputed:  # the same vectors, looked up: times the features and the classifier alone
        name = live.name

        def __call__(self, texts: list[str]) -> np.ndarray:
            return np.vstack([vectors[t] for t in texts])

    classifier = LearnedRouter.load(_save(router), embedder=Precomputed())
    router.score(queries[:3])
    timings: dict[str, list[float]] = {"learned": [], "embedding": [], "classifier": [], "length": []}
    calls = {"learned": lambda q: router.score([q]), "embedding": lambda q: live([q]),
             "classifier": lambda q: classifier.score([q]), "length": lambda q: len(q) >= 300}
    names = list(calls)
    for r in range(rounds):  # each query through every path in turn, the order rotating: noise hits all alike
        for i, q in enumerate(queries):
            k = (r + i) % len(names)
            for name in names[k:] + names[:k]:
                t0 = time.perf_counter()
                calls[name](q)
                timings[name].append(time.perf_counter() - t0)
    p50 = {k: statistics.median(v) * 1000 for k, v in timings.items()}
    p90 = {k: sorted(v)[int(len(v) * 0.9)] * 1000 for k, v in timings.items()}
    res = {"learned_p50_ms": p50["learned"], "learned_p90_ms": p90["learned"],
           "embedding_p50_ms": p50["embedding"], "classifier_p50_ms": p50["classifier"],
           "length_rule_p50_ms": p50["length"],
           "ratio_learned_vs_embedding": p50["learned"] / p50["embedding"], "n": len(queries) * rounds}
    print("\ndecision overhead per request (MMLU prompts, in-process, p50)")
    print(f"  learned (embedding + features + classifier) {p50['learned']:.2f} ms (p90 {p90['learned']:.2f})"
          f"  vs embedding alone {p50['embedding']:.2f} ms = {res['ratio_learned_vs_embedding']:.2f}x")
    print(f"  features + classifier alone {p50['classifier']:.3f} ms; length rule {p50['length'] * 1000:.1f} µs")
    return res


def _save(router) -> Path:
    path = Path(tempfile.mkdtemp(prefix="modelyard-router-")) / "bench.npz"
    return router.save(path)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--cold", action="store_true", help="start from an empty embedding cache (times a first run)")
    ap.add_argument("--latency-n", type=int, default=100, help="prompts per timing block")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--no-rows", action="store_true", help="skip the by-row reference split")
    ap.add_argument("--latency-only", action="store_true", help="only the decision overhead")
    args = ap.parse_args()
    if not args.data.exists():
        print(f"no data at {args.data}", file=sys.stderr)
        return 2
    if args.cold:
        os.environ["MODELYARD_HOME"] = tempfile.mkdtemp(prefix="modelyard-routing-cold-")

    from modelyard.routing.data import load_outcomes
    from modelyard.routing.features import CachedEmbedder

    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    data = load_outcomes(args.data)
    embedder = CachedEmbedder.default()
    print(f"{args.data}: {len(data):,} prompts, {len(data.group_names)} subjects "
          f"({data.dropped_contaminated} contaminated dropped); load average {load:.1f}")
    results: dict = {"data": str(args.data), "rows": len(data), "load_average": load, "cold": args.cold}
    if args.latency_only:
        results["latency"] = run_latency(data, args.latency_n, args.rounds)
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "routing_quality_latency.json").write_text(json.dumps(results, indent=2))
        return 0
    results["subjects"] = run_quality(data, "MMLU by subject (50/50, seed 0, both directions averaged) — the target split",
                                      embedder)
    results["outside"] = run_outside(data, embedder)
    results["first_eval_seconds"] = round(time.perf_counter() - t0, 1)
    results["embeddings"] = {"cached": embedder.hits, "computed": embedder.misses}
    print(f"  time to here: {results['first_eval_seconds']:.1f} s, data loading and embeddings included "
          f"({embedder.misses:,} prompts embedded, {embedder.hits:,} read from the cache)")
    if not args.no_rows:
        by_rows = data.subset(data.weak == data.weak)
        by_rows.groups = ["all"] * len(by_rows)
        results["rows_reference"] = run_quality(by_rows, "reference: 50/50 by rows (subjects shared; not the target)",
                                                embedder)
    results["latency"] = run_latency(data, args.latency_n, args.rounds)

    s, lat = results["subjects"], results["latency"]
    checks = {
        f"APGR >= {TARGET_APGR}": s["learned"]["apgr"] >= TARGET_APGR,
        f"CPT(50%) <= {TARGET_CPT50:.0%}": s["learned"]["cpt50"] <= TARGET_CPT50,
        "beats the length rule": s["learned"]["apgr"] > s["length"]["apgr"],
        "never below the length rule": s["learned"]["apgr"] >= s["length"]["apgr"] - 0.002,
        f"decision p50 <= {TARGET_P50_MS:g} ms": lat["learned_p50_ms"] <= TARGET_P50_MS,
    }
    results["targets"] = checks
    print("\ntargets: " + "; ".join(f"{k}: {'met' if v else 'NOT met'}" for k, v in checks.items()))
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "routing_quality.json").write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
