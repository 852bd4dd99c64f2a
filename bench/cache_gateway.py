"""A cache hit through the gateway, end to end, against the model's full generation.

Target (issue "Response cache"): a hit answers in <= 15 ms p50 end to end;
reported next to the time the model takes to generate the same answer.
Target (issue "Cache: verify before serving"): a semantic hit, embedding and
verification included, still <= 15 ms p50; the ratio against the same
semantic hit without verification (``verify: off``) is measured in the same
run, interleaved.

Setup: ``modelyard up --no-defaults`` in a temporary home (its own process),
an endpoint ``cached`` on the embedded Gemma 3 270M with ``cache.mode:
semantic`` (``verify: guards``, the default), its twin ``cached-plain`` with
``verify: off``, and an endpoint ``embed`` on all-MiniLM-L6-v2 (to time the other
way of embedding: a call to the embedding deployment over HTTP). The client is
this process (httpx, keep-alive), the official wire format, non-streaming.

1. miss — each question once: the model generates the answer (the baseline);
2. exact hit — the same questions again, in rounds;
3. semantic hit — paraphrases of them (each is embedded in the gateway);
4. embedding through the ``embed`` endpoint, one sentence a request, against
   the in-process embedder in this process (both all-MiniLM-L6-v2, 1 thread).

    .venv/bin/python bench/cache_gateway.py            # ~2 min
    .venv/bin/python bench/cache_gateway.py --rounds 3

Results: stdout and ``bench/results/cache_gateway.json``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import median, percentiles_ms  # noqa: E402
from _up import Gateway, environment, install_signal_handlers, loadavg, table, write_json  # noqa: E402

QUESTIONS = [
    ("What is the capital of France?", "What's the capital city of France?"),
    ("How many legs does a spider have?", "How many legs do spiders have?"),
    ("Who wrote the play Romeo and Juliet?", "Who is the author of the play Romeo and Juliet?"),
    ("What is the boiling point of water at sea level?", "At sea level, what is the boiling point of water?"),
    ("How do I reverse a list in Python?", "How can I reverse a list in Python?"),
    ("What is the largest planet in the solar system?", "Which planet is the largest in the solar system?"),
    ("What does a thermometer measure?", "What is measured by a thermometer?"),
    ("What is the chemical symbol for gold?", "Which chemical symbol stands for gold?"),
]


def chat(client: httpx.Client, question: str, max_tokens: int) -> tuple[float, str, dict]:
    body = {"model": "cached", "messages": [{"role": "user", "content": question}], "temperature": 0,
            "max_tokens": max_tokens}
    t0 = time.perf_counter()
    r = client.post("/v1/chat/completions", json=body)
    elapsed = time.perf_counter() - t0
    r.raise_for_status()
    return elapsed, r.headers.get("x-modelyard-cache", ""), r.json()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=10, help="rounds of hits per question")
    parser.add_argument("--max-tokens", type=int, default=48)
    args = parser.parse_args()
    install_signal_handlers()
    env = environment()
    gw = Gateway(log_name="cache", extra_args=("--no-defaults",)).start()
    try:
        gw.wait_ready()
        key = gw.admin_key
        api = httpx.Client(base_url=gw.url, headers={"Authorization": f"Bearer {key}"}, timeout=300)
        for name, model, cache in (("cached", "gemma-3-270m", {"mode": "semantic"}),
                                   ("cached-plain", "gemma-3-270m", {"mode": "semantic", "verify": "off"}),
                                   ("embed", "all-minilm-l6-v2", None)):
            r = api.post("/api/endpoints", json={"name": name, **({"cache": cache} if cache else {})})
            assert r.status_code == 201, r.text
            r = api.post(f"/api/endpoints/{name}/deployments", json={"name": "main", "model": model})
            assert r.status_code == 201, r.text
        time.sleep(3)  # the gateway loads the cache's embedding model in the background
        client = httpx.Client(base_url=gw.url, headers={"Authorization": f"Bearer {key}"}, timeout=300)
        chat(client, "Warm up.", 4)

        misses, exact, semantic, similarity, unverified = [], [], [], [], []
        answers = {}
        for question, _ in QUESTIONS:
            elapsed, state, body = chat(client, question, args.max_tokens)
            assert state == "miss", state
            misses.append(elapsed)
            answers[question] = body["choices"][0]["message"]["content"]
            r = client.post("/v1/chat/completions", json={"model": "cached-plain", "temperature": 0,
                                                          "max_tokens": args.max_tokens,
                                                          "messages": [{"role": "user", "content": question}]})
            r.raise_for_status()
        for _ in range(args.rounds):
            for question, paraphrase in QUESTIONS:
                elapsed, state, body = chat(client, question, args.max_tokens)
                assert state == "hit" and body["choices"][0]["message"]["content"] == answers[question]
                exact.append(elapsed)
                t0 = time.perf_counter()
                r = client.post("/v1/chat/completions", json={"model": "cached", "temperature": 0, "max_tokens": args.max_tokens,
                                                              "messages": [{"role": "user", "content": paraphrase}]})
                elapsed = time.perf_counter() - t0
                if r.headers.get("x-modelyard-cache") == "semantic-hit":
                    semantic.append(elapsed)
                    similarity.append(float(r.headers["x-modelyard-cache-similarity"]))
                t0 = time.perf_counter()  # the same paraphrase on the twin endpoint without verification
                r = client.post("/v1/chat/completions", json={"model": "cached-plain", "temperature": 0,
                                                              "max_tokens": args.max_tokens,
                                                              "messages": [{"role": "user", "content": paraphrase}]})
                elapsed = time.perf_counter() - t0
                if r.headers.get("x-modelyard-cache") == "semantic-hit":
                    unverified.append(elapsed)
        semantic_share = len(semantic) / (args.rounds * len(QUESTIONS))

        http_embed = []
        for i in range(60):
            t0 = time.perf_counter()
            r = client.post("/v1/embeddings", json={"model": "embed", "input": QUESTIONS[i % len(QUESTIONS)][1]})
            http_embed.append(time.perf_counter() - t0)
            r.raise_for_status()
        from modelyard.routing.features import MiniLMEmbedder

        local = MiniLMEmbedder()
        local(["warm up"])
        in_process = []
        for i in range(60):
            t0 = time.perf_counter()
            local([QUESTIONS[i % len(QUESTIONS)][1]])
            in_process.append(time.perf_counter() - t0)
        stats = api.get("/api/endpoints/cached/cache").json()
    finally:
        gw.stop()

    result = {
        "questions": len(QUESTIONS), "rounds": args.rounds, "max_tokens": args.max_tokens,
        "miss_generation_ms": {**percentiles_ms(misses), "n": len(misses)},
        "exact_hit_ms": {**percentiles_ms(exact), "n": len(exact)},
        "semantic_hit_ms": {**percentiles_ms(semantic), "n": len(semantic)},
        "semantic_hit_unverified_ms": {**percentiles_ms(unverified), "n": len(unverified)},
        "semantic_hit_share": semantic_share, "semantic_similarity_median": median(similarity),
        "embedding_via_endpoint_ms": percentiles_ms(http_embed),
        "embedding_in_process_ms": percentiles_ms(in_process),
        "cache_stats": stats, "environment": {**env, "loadavg_end": loadavg()},
    }
    gen = result["miss_generation_ms"]["p50"]
    rows = [
        ["miss: the model generates (baseline)", f"{gen:.1f}", f"{result['miss_generation_ms']['p99']:.1f}", "", ""],
        ["exact hit", f"{result['exact_hit_ms']['p50']:.2f}", f"{result['exact_hit_ms']['p99']:.2f}", "p50 <= 15 ms",
         f"{gen / result['exact_hit_ms']['p50']:.0f}x faster"],
    ]
    if semantic:
        rows.append(["semantic hit (embeds the paraphrase)", f"{result['semantic_hit_ms']['p50']:.2f}",
                     f"{result['semantic_hit_ms']['p99']:.2f}", "p50 <= 15 ms", f"{gen / result['semantic_hit_ms']['p50']:.0f}x faster"])
    if semantic and unverified:
        ratio = result["semantic_hit_ms"]["p50"] / result["semantic_hit_unverified_ms"]["p50"]
        result["verified_vs_unverified_p50"] = ratio
        rows.append(["semantic hit, verify: off (same run)", f"{result['semantic_hit_unverified_ms']['p50']:.2f}",
                     f"{result['semantic_hit_unverified_ms']['p99']:.2f}", "",
                     f"verified/unverified p50 {ratio:.2f}x"])
    rows += [
        ["embedding: call to the `embed` endpoint", f"{result['embedding_via_endpoint_ms']['p50']:.2f}",
         f"{result['embedding_via_endpoint_ms']['p99']:.2f}", "", ""],
        ["embedding: in-process (the cache's way)", f"{result['embedding_in_process_ms']['p50']:.2f}",
         f"{result['embedding_in_process_ms']['p99']:.2f}", "", ""],
    ]
    print(f"\nend to end through the gateway, Gemma 3 270M, max_tokens {args.max_tokens}, "
          f"{len(QUESTIONS)} questions x {args.rounds} rounds")
    print(table(rows, ["ms", "p50", "p99", "target", "vs generation"]))
    print(f"\nparaphrases answered as semantic hits: {semantic_share * 100:.0f}% (median similarity "
          f"{result['semantic_similarity_median']}); load average {result['environment']['loadavg_end']}")
    print(f"results: {write_json('cache_gateway.json', result)}")


if __name__ == "__main__":
    main()
