"""Router decision overhead: what deciding a tier costs per request, in-process.

Targets (issue "Cost-aware router"): the ``rules`` decision <= 0.5 ms p50; the
``learned`` decision including the prompt's embedding <= 15 ms p50 on this CPU.

Measured in one process, in alternating blocks so machine noise hits both alike:

- rules: `RulesPolicy.choose()` over four rules (keywords, metadata tags,
  prompt length, a max-cost header) on varied chat requests; baseline: the
  traffic split's `TrafficSplit.choose()` for the same number of requests
  (the decision a split endpoint makes);
- learned: `LearnedRouter.score([prompt])` — embedding with the packaged
  all-MiniLM-L6-v2 plus the classifier — on MMLU-like prompts; baseline: the
  embedding alone (the part no classifier can avoid). A model is trained
  first on ``../shared/data/routing/mmlu`` when present, else on synthetic rows
  (training embeddings come from the on-disk cache; the timed calls embed afresh);
- the out-of-distribution check: `LearnedRouter.assess([prompt])` — what the
  live strategy calls: the score plus the distance to the nearest training
  prompts — against `score` alone (before the check existed), and the check
  by itself on a precomputed embedding.

    .venv/bin/python bench/router_decision.py              # ~1 min
    .venv/bin/python bench/router_decision.py --n 200      # quick

Results: stdout and ``bench/results/router_decision.json``.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import percentile  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "routing" / "mmlu"
RESULTS = ROOT / "bench" / "results"

PROMPTS = [
    "What is the capital of France?",
    "Please prove that the square root of two is irrational, step by step.",
    "Summarise the following paragraph in one sentence: " + "the quick brown fox jumps over the lazy dog " * 12,
    "Which of these is a prime number? A) 21 B) 27 C) 29 D) 33",
    "Translate 'good morning' into German.",
    "Derive the closed form of the sum of the first n odd numbers.",
]


def p50_ms(samples: list[float]) -> float:
    """The median of durations in seconds, in ms."""
    return percentile(samples, 50) * 1000


def bench_rules(n: int, rounds: int) -> dict:
    from modelyard.routing.policy import RulesPolicy
    from modelyard.routing.spec import RulesRouter
    from modelyard.serving.endpoints import TrafficSplit
    from modelyard.wire import ChatCompletionRequest

    spec = RulesRouter.model_validate({"strategy": "rules", "rules": [
        {"name": "cheap", "when": {"max_cost_below": 0.001}, "tier": "small"},
        {"name": "premium", "when": {"metadata": {"user_tier": ["premium", "gold"]}}, "tier": "large"},
        {"name": "proofs", "when": {"keywords": ["prove", "derive", "step by step"]}, "tier": "large"},
        {"name": "long", "when": {"min_prompt_tokens": 200}, "tier": "large"},
    ]})
    policy = RulesPolicy(spec)
    rng = random.Random(1)
    requests = [ChatCompletionRequest.model_validate({
        "model": "assistant", "messages": [{"role": "system", "content": "You are helpful."},
                                           {"role": "user", "content": rng.choice(PROMPTS)}],
        **({"metadata": {"user_tier": rng.choice(["free", "gold"])}} if rng.random() < 0.5 else {})})
        for _ in range(n)]
    headers = [{"x-modelyard-max-cost": "0.01"} if rng.random() < 0.3 else {} for _ in range(n)]

    class _Dep:
        def __init__(self, name):
            self.name = name

    class _Spec:
        traffic = {"blue": 90, "green": 10}

    class _Endpoint:
        name = "split"
        spec = _Spec()
        deployments = {"blue": _Dep("blue"), "green": _Dep("green")}

    split, endpoint = TrafficSplit(random.Random(2)), _Endpoint()
    rules_t, split_t = [], []
    for r in range(rounds):
        blocks = [("rules", rules_t), ("split", split_t)]
        for name, out in (blocks if r % 2 == 0 else blocks[::-1]):
            for req, hdr in zip(requests, headers):
                t0 = time.perf_counter()
                if name == "rules":
                    policy.choose(req, hdr)
                else:
                    split.choose(endpoint)
                out.append(time.perf_counter() - t0)
    return {"rules_p50_ms": p50_ms(rules_t), "split_p50_ms": p50_ms(split_t),
            "rules_p99_ms": percentile(rules_t, 99) * 1000,
            "ratio_rules_vs_split": p50_ms(rules_t) / p50_ms(split_t), "target_ms": 0.5}


def bench_learned(n: int, rounds: int, threads: int) -> dict:
    from modelyard.routing.features import MiniLMEmbedder
    from modelyard.routing.learned import LearnedRouter

    from modelyard.routing.features import CachedEmbedder

    embedder = MiniLMEmbedder(threads=threads)  # the gateway uses 1 (routing.models.Models)
    if DATA.exists():
        from modelyard.routing.data import load_outcomes

        data = load_outcomes(DATA)
        rows = list(zip(data.prompts, data.weak, data.strong))
        random.Random(3).shuffle(rows)
        rows = rows[:2000]
        prompts, weak, strong = [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows]
        source = "mmlu (2000 rows)"
    else:
        prompts = [p + f" ({i})" for i, p in enumerate(PROMPTS * 50)]
        weak = [float(len(p) < 60) for p in prompts]
        strong = [1.0] * len(prompts)
        source = "synthetic"
    model = LearnedRouter(embedder=CachedEmbedder.default(embedder))
    model.fit(prompts, weak, strong)
    model.embedder = embedder  # the timed calls embed each prompt, as the gateway does
    queries = [prompts[i % len(prompts)] for i in range(n)]
    model.score(queries[:5])  # warm: the embedder is loaded
    vectors = embedder(queries)
    learned_t, embed_t, assess_t, check_t = [], [], [], []
    for r in range(rounds):
        blocks = [("learned", learned_t), ("embed", embed_t), ("assess", assess_t), ("check", check_t)]
        for name, out in (blocks[r % 4:] + blocks[:r % 4]):
            for i, q in enumerate(queries):
                t0 = time.perf_counter()
                if name == "learned":
                    model.score([q])
                elif name == "assess":
                    model.assess([q])
                elif name == "check":
                    model.ood.outside(vectors[i:i + 1])
                else:
                    embedder([q])
                out.append(time.perf_counter() - t0)
    lengths = [len(q) for q in queries]
    return {"trained_on": source, "threads": embedder.threads, "prompt_chars_p50": percentile(lengths, 50), "learned_p50_ms": p50_ms(learned_t), "embedding_only_p50_ms": p50_ms(embed_t),
            "classifier_share_ms": p50_ms(learned_t) - p50_ms(embed_t),
            "ratio_learned_vs_embedding": p50_ms(learned_t) / p50_ms(embed_t), "target_ms": 15.0,
            "with_ood_check_p50_ms": p50_ms(assess_t), "ood_check_alone_p50_ms": p50_ms(check_t),
            "ood_reference_rows": int(len(model.ood.reference)),
            "ratio_with_check_vs_without": p50_ms(assess_t) / p50_ms(learned_t)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000, help="decisions per block (rules); a tenth of it for learned")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1, help="torch threads for the embedding (the gateway uses 1)")
    args = ap.parse_args()
    out = {"rules": bench_rules(args.n, args.rounds), "learned": bench_learned(max(20, args.n // 10), args.rounds, args.threads)}
    r, l_ = out["rules"], out["learned"]
    print(f"rules    p50 {r['rules_p50_ms']:.4f} ms (p99 {r['rules_p99_ms']:.4f})  vs split {r['split_p50_ms']:.4f} ms "
          f"= {r['ratio_rules_vs_split']:.1f}x   target <= 0.5 ms: {'met' if r['rules_p50_ms'] <= 0.5 else 'NOT met'}")
    print(f"learned  p50 {l_['learned_p50_ms']:.2f} ms  vs embedding alone {l_['embedding_only_p50_ms']:.2f} ms "
          f"= {l_['ratio_learned_vs_embedding']:.2f}x   target <= 15 ms: "
          f"{'met' if l_['learned_p50_ms'] <= 15 else 'NOT met'}  (trained on {l_['trained_on']}; {l_['threads']} torch "
          f"thread(s); prompts of {l_['prompt_chars_p50']} characters p50)")
    print(f"ood      p50 {l_['with_ood_check_p50_ms']:.2f} ms with the out-of-distribution check vs "
          f"{l_['learned_p50_ms']:.2f} ms without = {l_['ratio_with_check_vs_without']:.3f}x  (the check alone: "
          f"{l_['ood_check_alone_p50_ms']:.3f} ms over {l_['ood_reference_rows']} reference prompts)")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "router_decision.json").write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
