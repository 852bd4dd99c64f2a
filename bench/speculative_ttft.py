"""Speculative routing: time to first token vs the local tier alone.

Target (issue "Cost-aware router"): in speculative mode the time to the first
token equals the local tier's (within 10%), while the strong tier's answer is
available as a correction.

Setup: ``modelyard up --no-defaults`` in a temporary home; endpoint ``spec``
with tiers ``fast`` (the packaged Gemma 3 270M, local) and ``strong`` (a
hosted card on a local OpenAI-compatible stand-in that answers after 1 s).
Baseline: the same request to the same endpoint with the header
``modelyard-deployment: fast`` — straight to the local deployment, no
router. Requests alternate between the two, streaming, so machine noise
hits both alike; TTFT is measured at the client (the first chunk with text).
Every speculative answer is checked to carry the strong tier's verdict
(a ``modelyard.correction`` event, or a ``confirmed``/``corrected`` status at
``GET /v1/responses/{id}``). The stand-in runs in its own process, so it
does not compete with the measuring client for the GIL.

    .venv/bin/python bench/speculative_ttft.py            # 30 pairs (~2 min)
    .venv/bin/python bench/speculative_ttft.py --pairs 10
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from _common import percentile, sse_chunks  # noqa: E402
from tests.live_gateway import start_server  # noqa: E402
from tests.cards import tier_cards  # noqa: E402
from tests.openai_stub import Script, StubServer  # noqa: E402

QUESTIONS = ["What is the capital of France?", "Name a colour of the sky.", "What do bees make?",
             "How many legs does a dog have?", "What is water made of?"]


def ttft(client: httpx.Client, question: str, headers: dict[str, str]) -> tuple[float, str | None, bool]:
    t0 = time.perf_counter()
    first, rid, corrected = None, None, False
    body = {"model": "spec", "stream": True, "max_tokens": 24, "temperature": 0,
            "messages": [{"role": "user", "content": question}]}
    with client.stream("POST", "/v1/chat/completions", json=body, headers=headers) as r:
        r.raise_for_status()
        for chunk in sse_chunks(r.iter_bytes()):
            if "modelyard_correction" in chunk:  # the data of an `event: modelyard.correction`
                corrected = True
            rid = rid or chunk.get("id")
            if first is None and chunk.get("choices") and chunk["choices"][0].get("delta", {}).get("content"):
                first = time.perf_counter() - t0
    return first if first is not None else float("nan"), rid, corrected


def _serve_stub(ready) -> None:
    stub = StubServer().start()
    stub.tiers["strong"] = Script(answer="A careful answer from the strong tier.", delay_s=1.0)
    ready.put(stub.root)
    while True:
        time.sleep(3600)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=30)
    args = ap.parse_args()
    # The stand-in for the strong tier runs in a process of its own: in this one it would take the GIL from
    # the client just as the first token arrives (the strong tier is asked right then) and skew the timing.
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Queue()
    stub_process = ctx.Process(target=_serve_stub, args=(ready,), daemon=True)
    stub_process.start()
    stub = StubServer()
    stub.root = ready.get(timeout=60)
    home = Path(tempfile.mkdtemp(prefix="spec-bench-")) / "home"
    (home / "catalog").mkdir(parents=True)
    (home / "catalog" / "tiers.yaml").write_text(tier_cards(stub, {"strong": (5.0, 15.0)}))
    srv = start_server(home, "--no-defaults")
    try:
        api = httpx.Client(base_url=srv.url, headers={"Authorization": f"Bearer {srv.admin_key}"}, timeout=600)
        assert api.post("/api/endpoints", json={"name": "spec"}).status_code == 201
        for name, model in (("fast", "gemma-3-270m"), ("strong", "tier-strong")):
            r = api.post("/api/endpoints/spec/deployments", json={"name": name, "model": model})
            assert r.status_code == 201, r.text
        r = api.post("/api/apply", json={"kind": "endpoint", "spec": {
            "name": "spec", "policy": "router", "tiers": ["fast", "strong"],
            "router": {"strategy": "speculative", "similarity": 0.8, "grace_ms": 5000}}})
        assert r.status_code == 200, r.text
        for q in QUESTIONS[:2]:  # warm both paths (and the embedder in the gateway)
            ttft(api, q, {})
            ttft(api, q, {"modelyard-deployment": "fast"})
        spec_t, base_t, verdicts = [], [], 0
        for i in range(args.pairs):
            q = QUESTIONS[i % len(QUESTIONS)]
            order = [("spec", {}), ("base", {"modelyard-deployment": "fast"})]
            for name, headers in (order if i % 2 == 0 else order[::-1]):
                t, rid, corrected = ttft(api, q, headers)
                if name == "spec":
                    spec_t.append(t)
                    status = api.get(f"/v1/responses/{rid}").json()["status"]
                    verdicts += corrected or status in ("confirmed", "corrected")
                else:
                    base_t.append(t)
        s50, b50 = statistics.median(spec_t) * 1000, statistics.median(base_t) * 1000
        # Per pair (same question, back to back): the paired difference is what noise disturbs least.
        diffs = sorted((s - b) * 1000 for s, b in zip(spec_t, base_t))
        q = [percentile(diffs, p) for p in (25, 50, 75)]
        out = {"pairs": args.pairs, "paired_difference_ms": {"p25": q[0], "p50": q[1], "p75": q[2]}, "speculative_ttft_p50_ms": s50, "local_ttft_p50_ms": b50, "ratio": s50 / b50,
               "answers_with_strong_verdict": verdicts, "target": "ratio <= 1.10"}
        print(f"TTFT p50: speculative {s50:.1f} ms vs local tier alone {b50:.1f} ms = {s50 / b50:.3f}x "
              f"(target <= 1.10: {'met' if s50 / b50 <= 1.10 else 'NOT met'}); "
              f"strong verdict on {verdicts}/{args.pairs} answers; paired difference p25/p50/p75 "
              f"{q[0]:+.1f}/{q[1]:+.1f}/{q[2]:+.1f} ms")
        results = ROOT / "bench" / "results"
        results.mkdir(parents=True, exist_ok=True)
        (results / "speculative_ttft.json").write_text(json.dumps(out, indent=2))
    finally:
        srv.stop()
        stub_process.terminate()


if __name__ == "__main__":
    main()
