"""Overload: four times the configured concurrency against a deployment with a small queue.

A deployment's ``request_settings`` bound what it takes: ``max_concurrent_requests_per_instance``
requests run at once, up to ``max_queue_size_per_instance`` more wait (at most
``max_queue_wait_ms``), and anything past that is answered at once with 429 and
``Retry-After`` (``serving/deployment.py``). This benchmark checks that promise
under load, against a baseline measured in the same run:

1. **baseline**: as many clients as the configured concurrency (C), each sending
   its next request as soon as the last is answered;
2. **overload**: 4 × C clients (``--factor``) for 60 s (``--overload-s``);
3. **after**: back to C clients.

Clients behave like the official ``openai`` client: after a 429 a client waits
the ``Retry-After`` seconds (at most 5) before its next request
(``--no-backoff``: it sends again at once, a retry storm).

Upstream (default, ``--model stub``): the tests' OpenAI stub as its own process
(``tests/openai_stub.py``), every request asking it to take ``--delay-ms`` (200)
via ``user: "stub:delay_ms=200"``; a hosted card on it; ``modelyard up
--no-defaults`` with endpoint ``overload``, deployment ``stub``: C = 4, queue 4,
queue wait 1 s. A hosted deployment has no instances, so the gateway process is
the only modelyard process on the path. ``--model default``: endpoint
``default`` with the Gemma 3 270M deployment ``modelyard up`` would create
(one instance), chat requests with ``max_tokens: 8``, temperature 0: C = 1,
queue 2, queue wait 2 s.

Reported:

- admitted requests' (200) p50/p99 latency in each phase (by send time), and the
  overload p99 ÷ baseline p99 (with a queue of Q per instance an admitted
  request can wait behind the Q requests queued before it, so about 1 + Q/C is
  what the queue itself costs);
- the share of 429 answers, that every 429 carries ``Retry-After`` and an OpenAI
  error body (``{"error": {"message", "type", "param", "code"}}``), how fast they
  come; no 5xx and no request left unanswered;
- the gateway's RSS and open file descriptors at the start (after warm-up),
  the middle of the overload and the end (flat: within 10%), instances' too;
- *back to baseline*: seconds from the end of the overload to the first request
  that starts a run of max(4, 2 × C) consecutive requests answered 200 within
  the baseline p99 × 1.2 (``--recovery-margin``) (target ≤ 5 s), and when the
  deployment's queue was empty again (``GET /api/endpoints/NAME``, polled every
  100 ms);
- usage rows (``GET /api/usage`` with the admin key, and by status from the
  database) against the requests answered, warm-up included.

    .venv/bin/python bench/overload.py                 # 20 s + 60 s + 20 s (~2 min)
    .venv/bin/python bench/overload.py --quick         # 8 s + 20 s + 10 s (~45 s)
    .venv/bin/python bench/overload.py --model default # Gemma 3 270M, max_tokens 8

Results: a summary on stdout and ``bench/results/overload.json`` (``--out``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sqlite3
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import _procs  # noqa: E402
import _up  # noqa: E402
from _common import percentile  # noqa: E402
from _http import Connection, ConnectionLost, build_request  # noqa: E402
from _resources import Drift, snapshot  # noqa: E402
from _stub import start_stub, write_stub_cards  # noqa: E402

TARGET_RECOVERY_S = 5.0
TARGET_FLAT = 0.10  # RSS and open files within 10% of the start
MAX_RETRY_AFTER_WAIT_S = 5.0
POLL_S = 0.1
SAMPLE_S = 1.0
ERROR_KEYS = {"message", "type", "param", "code"}
QUESTIONS = ["What is the capital of France?", "What is the capital of Spain?", "What is two plus two?",
             "What colour is the sky?"]

#: per upstream: the endpoint and deployment, and the default request settings (C, queue, queue wait)
SETUPS = {
    "stub": {"endpoint": "overload", "deployment": "stub", "model": "bench-stub",
             "concurrency": 4, "queue": 4, "queue_wait_ms": 1000},
    "default": {"endpoint": "default", "deployment": "gemma-3-270m", "model": "gemma-3-270m",
                "concurrency": 1, "queue": 2, "queue_wait_ms": 2000},
}


# --- set-up ---------------------------------------------------------------------------------


def start(args: argparse.Namespace, gw: _up.Gateway) -> dict[str, Any]:
    """Start the stub (for ``--model stub``) and the gateway; create the endpoint and its bounded deployment."""
    setup = SETUPS[args.model]
    stub = None
    if args.model == "stub":
        stub = start_stub(gw.home)
        write_stub_cards(gw.home, {setup["model"]: (stub.root + "/v1", (1.0, 2.0))})
    gw.start()
    gw.wait_ready(timeout=120)
    key = gw.admin_key
    ep, dep = setup["endpoint"], setup["deployment"]
    code, body = _up.http("POST", gw.url + "/api/endpoints", {"name": ep}, key=key)
    if code != 201:
        raise RuntimeError(f"creating endpoint {ep} answered {code}: {body}")
    spec = {"name": dep, "model": setup["model"], "instance_count": 1, "request_settings": {
        "max_concurrent_requests_per_instance": args.concurrency, "max_queue_size_per_instance": args.queue,
        "max_queue_wait_ms": args.queue_wait_ms}}
    code, body = _up.http("POST", gw.url + f"/api/endpoints/{ep}/deployments?all_traffic=true", spec, key=key,
                          timeout=300)
    if code != 201:
        raise RuntimeError(f"creating deployment {ep}/{dep} answered {code}: {body}")
    return {"stub": stub, "endpoint": ep, "deployment": dep, "spec": spec,
            "instances": {f"instance {i['name']}": i["pid"] for i in body["instances"] if i.get("pid")}}


def request_bytes(args: argparse.Namespace, port: int, endpoint: str, key: str) -> list[bytes]:
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    bodies = []
    for q in QUESTIONS:
        body: dict[str, Any] = {"model": endpoint, "messages": [{"role": "user", "content": q}]}
        if args.model == "stub":
            body.update(max_tokens=20, user=f"stub:delay_ms={args.delay_ms}")
        else:
            body.update(max_tokens=args.max_tokens, temperature=0)
        bodies.append(build_request("127.0.0.1", port, "/v1/chat/completions", json.dumps(body).encode(), headers))
    return bodies


def get_bytes(port: int, path: str, key: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {key}\r\n\r\n".encode()


# --- load -----------------------------------------------------------------------------------


def openai_error(body: bytes) -> tuple[bool, str | None]:
    """(is the body ``{"error": {message, type, param, code}}`` with a message and a type, its code)."""
    try:
        err = json.loads(body)["error"]
    except (ValueError, KeyError, TypeError):
        return False, None
    if not isinstance(err, dict):
        return False, None
    shaped = set(err) == ERROR_KEYS and isinstance(err.get("message"), str) and isinstance(err.get("type"), str)
    return shaped, err.get("code")


@dataclass
class Run:
    """Everything the load recorded; times in seconds from the start of the baseline."""

    phases: dict[str, tuple[float, float]]
    requests: list[dict[str, Any]] = field(default_factory=list)
    polls: list[dict[str, Any]] = field(default_factory=list)
    samples: list[dict[str, Any]] = field(default_factory=list)  # resource snapshots every SAMPLE_S
    marks: dict[str, Any] = field(default_factory=dict)  # start / middle / end snapshots, gateway CPU per phase
    warmup: int = 0


async def drive(args: argparse.Namespace, gw: _up.Gateway, setup: dict[str, Any]) -> Run:
    port, key, c = gw.port, gw.admin_key, args.concurrency
    raws = request_bytes(args, port, setup["endpoint"], key)
    poll_raw = get_bytes(port, f"/api/endpoints/{setup['endpoint']}", key)
    pids = {"gateway": gw.proc.pid, **setup["instances"]}  # type: ignore[union-attr]

    # warm-up: 5 requests per baseline client, unmeasured (counted as answered for the usage check)
    conns = [Connection("127.0.0.1", port) for _ in range(c * args.factor)]
    warmup = 0

    async def warm(conn: Connection) -> None:
        nonlocal warmup
        for raw in raws + raws[:1]:
            resp = await conn.request(raw, streaming=False)
            warmup += 1
            if resp.status != 200:
                raise RuntimeError(f"warm-up request answered {resp.status}: {resp.body[:300]!r}")
    await asyncio.gather(*(warm(conn) for conn in conns[:c]))

    b, o, a = args.baseline_s, args.overload_s, args.after_s
    run = Run(phases={"baseline": (0.0, b), "overload": (b, b + o), "after": (b + o, b + o + a)}, warmup=warmup)
    t0 = time.perf_counter()
    now = lambda: time.perf_counter() - t0  # noqa: E731

    async def until(t: float) -> None:
        await asyncio.sleep(max(0.0, t - now()))

    async def client(i: int, conn: Connection, start_at: float, stop_at: float) -> None:
        await until(start_at)
        n = i
        while now() < stop_at:
            raw = raws[n % len(raws)]
            n += 1
            rec: dict[str, Any] = {"client": i, "sent": now()}
            try:
                try:
                    resp = await conn.request(raw, streaming=False)
                except ConnectionLost:  # the keep-alive connection was closed while idle: once more on a new one
                    rec["reconnected"] = True
                    await conn.open()
                    resp = await conn.request(raw, streaming=False)
            except Exception as exc:  # no answer at all
                conn.close()
                rec.update(status=0, end=now(), error=f"{type(exc).__name__}: {exc}")
                run.requests.append(rec)
                continue
            rec.update(status=resp.status, end=resp.end - t0, latency_ms=(resp.end - resp.t0) * 1000)
            if resp.status != 200:
                shaped, code = openai_error(resp.body)
                retry_after = resp.headers.get(b"retry-after")
                rec.update(shaped=shaped, code=code, retry_after=retry_after.decode() if retry_after else None)
                if not shaped or resp.status != 429:
                    rec["body"] = resp.body[:300].decode(errors="replace")
                else:
                    rec["why"] = "queue full" if b"already waiting" in resp.body else (
                        "queue wait" if b"was free within" in resp.body else "other")
            run.requests.append(rec)
            if resp.status == 429 and not args.no_backoff:
                try:
                    wait = min(float(rec["retry_after"]), MAX_RETRY_AFTER_WAIT_S)
                except (TypeError, ValueError):
                    wait = 1.0
                await asyncio.sleep(wait)

    async def poller() -> None:
        conn = Connection("127.0.0.1", port)
        nxt = now()
        while nxt < b + o + a + 0.5:
            t = now()
            try:
                resp = await conn.request(poll_raw, streaming=False)
                dep = next(d for d in json.loads(resp.body)["deployments"] if d["name"] == setup["deployment"])
                run.polls.append({"t": t, "in_flight": dep["in_flight"], "queue_length": dep["queue_length"]})
            except Exception as exc:
                conn.close()
                run.polls.append({"t": t, "error": f"{type(exc).__name__}: {exc}"})
            nxt += POLL_S
            await until(nxt)
        conn.close()

    async def sampler() -> None:
        marks = {"start": 0.0, "middle": b + o / 2, "end": b + o + a}
        bounds = {"baseline": 0.0, "overload": b, "after": b + o, "end": b + o + a}
        cpu: dict[str, float] = {}
        t = 0.0
        while t <= b + o + a + 1e-9:
            await until(t)
            s = snapshot(pids)
            run.samples.append({"t": round(now(), 3), **s})
            for name, at in marks.items():  # each mark: the first sample at or after its time
                if t >= at - 1e-9 and name not in run.marks:
                    run.marks[name] = {"t": round(now(), 3), **s}
            for name, at in bounds.items():
                if t >= at - 1e-9 and name not in cpu:
                    cpu[name] = _procs.cpu_ticks_s(pids["gateway"])
            t += SAMPLE_S
        end = snapshot(pids)
        run.marks.setdefault("end", {"t": round(now(), 3), **end})
        cpu.setdefault("end", _procs.cpu_ticks_s(pids["gateway"]))
        keys = ["baseline", "overload", "after", "end"]
        run.marks["gateway_cpu_s"] = {k: cpu[keys[i + 1]] - cpu[k] for i, k in enumerate(keys[:-1]) if k in cpu
                                      and keys[i + 1] in cpu}

    meter = _up.CpuMeter()
    tasks = [client(i, conns[i], 0.0, b + o + a) for i in range(c)]
    tasks += [client(i, conns[i], b, b + o) for i in range(c, c * args.factor)]
    await asyncio.gather(poller(), sampler(), *tasks)
    run.marks["machine"] = meter.read()
    for conn in conns:
        conn.close()
    return run


# --- analysis -------------------------------------------------------------------------------


def phase_figures(reqs: list[dict[str, Any]], lo: float, hi: float, clients: int) -> dict[str, Any]:
    rs = [r for r in reqs if lo <= r["sent"] < hi]
    ok = [r["latency_ms"] for r in rs if r["status"] == 200]
    refused = [r for r in rs if r["status"] == 429]
    answered = [r for r in rs if r["status"]]
    statuses: dict[str, int] = {}
    for r in rs:
        statuses[str(r["status"])] = statuses.get(str(r["status"]), 0) + 1
    return {"clients": clients, "from_s": lo, "to_s": hi, "sent": len(rs), "answered": len(answered),
            "ok": len(ok), "status_429": len(refused), "status_5xx": sum(r["status"] >= 500 for r in rs),
            "no_answer": sum(r["status"] == 0 for r in rs), "statuses": statuses,
            "share_429": len(refused) / len(answered) if answered else None,
            "p50_ms": percentile(ok, 50), "p99_ms": percentile(ok, 99), "max_ms": max(ok) if ok else None,
            "admitted_per_s": len(ok) / (hi - lo) if hi > lo else None,
            "p50_429_ms": percentile([r["latency_ms"] for r in refused], 50),
            "p99_429_ms": percentile([r["latency_ms"] for r in refused], 99)}


def recovery(reqs: list[dict[str, Any]], t_end: float, threshold_ms: float, run_length: int) -> float | None:
    """Seconds from `t_end` to the first request (by send time) that starts a run of `run_length` consecutive
    requests, all answered 200 within `threshold_ms`; None when there is no such run."""
    after = sorted((r for r in reqs if r["sent"] >= t_end), key=lambda r: r["sent"])
    good = [r["status"] == 200 and r["latency_ms"] <= threshold_ms for r in after]
    for i in range(len(after) - run_length + 1):
        if all(good[i:i + run_length]):
            return after[i]["sent"] - t_end
    return None


def analyse(args: argparse.Namespace, run: Run) -> dict[str, Any]:
    reqs = run.requests
    c = args.concurrency
    phases = {name: phase_figures(reqs, lo, hi, c * (args.factor if name == "overload" else 1))
              for name, (lo, hi) in run.phases.items()}
    base_p99 = phases["baseline"]["p99_ms"]
    for ph in phases.values():
        ph["p99_vs_baseline"] = ph["p99_ms"] / base_p99 if ph["p99_ms"] and base_p99 else None
        ph["p50_vs_baseline"] = ph["p50_ms"] / phases["baseline"]["p50_ms"] if ph["p50_ms"] and phases["baseline"]["p50_ms"] else None
    t_end = run.phases["overload"][1]
    threshold = base_p99 * (1 + args.recovery_margin) if base_p99 else None
    run_length = max(4, 2 * c)
    back = recovery(reqs, t_end, threshold, run_length) if threshold else None
    drained = next((p["t"] - t_end for p in run.polls if p["t"] >= t_end and "queue_length" in p
                    and p["queue_length"] == 0 and p["in_flight"] <= c), None)
    refused = [r for r in reqs if r["status"] == 429]
    non_ok = [r for r in reqs if r["status"] not in (200, 429)]
    why: dict[str, int] = {}
    codes: dict[str, int] = {}
    for r in refused:
        why[r.get("why", "?")] = why.get(r.get("why", "?"), 0) + 1
        codes[str(r.get("code"))] = codes.get(str(r.get("code")), 0) + 1
    snaps = [run.marks.get(k) or {} for k in ("start", "middle", "end")]
    procs = [name for name in snaps[0] if name != "t"]
    drifts = {name: {fig: Drift.of(name, snaps, fig).as_dict() for fig in ("rss_mib", "anon_mib", "fds")} for name in procs}
    flat = {name: Drift.of(name, snaps, "rss_mib").within(TARGET_FLAT) for name in procs}
    polls_ok = [p for p in run.polls if "queue_length" in p]
    return {
        "phases": phases, "baseline_p99_ms": base_p99,
        "overload_p99_vs_baseline": phases["overload"]["p99_vs_baseline"],
        "recovery": {"threshold_ms": threshold, "run_length": run_length, "back_to_baseline_s": back,
                     "queue_drained_s": drained},
        "refusals": {"count": len(refused), "by_reason": why, "by_code": codes,
                     "with_retry_after": sum(bool(r.get("retry_after")) for r in refused),
                     "openai_shaped": sum(bool(r.get("shaped")) for r in refused),
                     "retry_after_values": sorted({r.get("retry_after") for r in refused if r.get("retry_after")})},
        "other_errors": {"count": len(non_ok), "examples": non_ok[:5]},
        "status_5xx": sum(r["status"] >= 500 for r in reqs), "no_answer": sum(r["status"] == 0 for r in reqs),
        "reconnects": sum(bool(r.get("reconnected")) for r in reqs),
        "queue": {"max_length": max((p["queue_length"] for p in polls_ok), default=None),
                  "max_in_flight": max((p["in_flight"] for p in polls_ok), default=None),
                  "poll_errors": sum("error" in p for p in run.polls)},
        "resources": {"snapshots": dict(zip(("start", "middle", "end"), snaps)), "drift": drifts, "rss_flat": flat},
        "gateway_cpu_s": run.marks.get("gateway_cpu_s"), "machine_cpu": run.marks.get("machine"),
    }


def usage_check(gw: _up.Gateway, endpoint: str, answered: int) -> dict[str, Any]:
    """Usage rows for `endpoint` from ``GET /api/usage`` (which flushes the writer first) and, by status, from the
    database, against the requests the gateway answered."""
    code, body = _up.http("GET", gw.url + "/api/usage?days=1", key=gw.admin_key)
    if code != 200:
        raise RuntimeError(f"/api/usage answered {code}: {body}")
    rows = [r for r in body["data"] if r["endpoint"] == endpoint]
    con = sqlite3.connect(f"file:{gw.home / 'modelyard.db'}?mode=ro", uri=True, timeout=10)
    try:
        by_status = {str(s): n for s, n in con.execute(
            "SELECT status, COUNT(*) FROM usage_records WHERE endpoint = ? GROUP BY status", (endpoint,))}
    finally:
        con.close()
    total = sum(r["requests"] for r in rows)
    return {"usage_requests": total, "usage_errors": sum(r["errors"] or 0 for r in rows), "by_status": by_status,
            "answered": answered, "match": total == answered}


# --- report ---------------------------------------------------------------------------------


def report(args: argparse.Namespace, setup: dict[str, Any], a: dict[str, Any], usage: dict[str, Any],
           env: dict[str, Any], runtime_s: float) -> dict[str, bool]:
    f = _up.fmt
    ph = a["phases"]
    up = "stub upstream (hosted deployment), %d ms per request" % args.delay_ms if args.model == "stub" else \
        f"Gemma 3 270M (1 instance), max_tokens {args.max_tokens}"
    print()
    print(f"Overload on {setup['endpoint']}/{setup['deployment']}: {up}; max_concurrent_requests_per_instance "
          f"{args.concurrency}, max_queue_size_per_instance {args.queue}, max_queue_wait_ms {args.queue_wait_ms}; "
          f"clients {'honour Retry-After' if not args.no_backoff else 'retry at once (no back-off)'}")
    print(f"load average {env['loadavg_start']} -> {_up.loadavg()}; other processes used "
          f"{a['machine_cpu']['foreign_cores']:.2f} cores on average; run took {runtime_s:.0f} s")
    print()
    rows = []
    for name in ("baseline", "overload", "after"):
        p = ph[name]
        rows.append([name, p["clients"], f"{p['from_s']:.0f}-{p['to_s']:.0f}s", p["sent"], p["ok"], p["status_429"],
                     f(None if p["share_429"] is None else 100 * p["share_429"]), p["status_5xx"] + p["no_answer"],
                     f(p["p50_ms"]), f(p["p99_ms"]), f(p["max_ms"]), f(p["p99_vs_baseline"], 2),
                     f(p["admitted_per_s"]), f(p["p50_429_ms"], 2)])
    print(_up.table(rows, ["phase (by send time)", "clients", "window", "sent", "200", "429", "429 %", "5xx/none",
                           "p50 ms", "p99 ms", "max ms", "p99/base", "200/s", "429 p50 ms"]))
    print()
    r = a["refusals"]
    rec = a["recovery"]
    res = a["resources"]
    print(f"overload p99 / baseline p99: {f(a['overload_p99_vs_baseline'], 2)}x "
          f"(the queue alone allows about {1 + args.queue / args.concurrency:.1f}x)")
    print(f"429 answers: {r['count']} ({', '.join(f'{k}: {v}' for k, v in r['by_reason'].items()) or 'none'}); "
          f"with Retry-After {r['with_retry_after']}/{r['count']} (values {r['retry_after_values']}); OpenAI-shaped "
          f"{r['openai_shaped']}/{r['count']} (codes {r['by_code']})")
    print(f"5xx: {a['status_5xx']}; unanswered: {a['no_answer']}; other non-200: {a['other_errors']['count']}; "
          f"reconnects: {a['reconnects']}; deployment queue max {a['queue']['max_length']}, in flight max "
          f"{a['queue']['max_in_flight']}")
    print(f"back to baseline (a run of {rec['run_length']} answers within baseline p99 x {1 + args.recovery_margin:.2f} "
          f"= {f(rec['threshold_ms'])} ms): {f(rec['back_to_baseline_s'], 2)} s after the overload ended "
          f"(target <= {TARGET_RECOVERY_S:.0f} s); queue empty after {f(rec['queue_drained_s'], 2)} s")
    for name, d in res["drift"].items():
        rss, anon, fds = d["rss_mib"], d["anon_mib"], d["fds"]
        print(f"{name} RSS start/middle/end: {' / '.join(f(v) for v in rss['values'])} MiB "
              f"(max change {f(None if rss['max_change'] is None else 100 * rss['max_change'])}%; of it anonymous "
              f"{' / '.join(f(v) for v in anon['values'])}); open files {' / '.join(f(v) for v in fds['values'])}")
    cpu = a.get("gateway_cpu_s") or {}
    if cpu:
        print("gateway CPU per phase: " + ", ".join(f"{k} {v:.1f} s ({100 * v / (phase_seconds(args, k) or 1):.0f}% of a core)"
                                                    for k, v in cpu.items()))
    print(f"usage rows for {setup['endpoint']}: {usage['usage_requests']} (by status {usage['by_status']}) for "
          f"{usage['answered']} requests answered, warm-up included")
    verdicts = {
        f"overload p99 <= {1 + args.queue / args.concurrency:.1f}x baseline p99 (what the queue allows) + 20%":
            a["overload_p99_vs_baseline"] is not None
            and a["overload_p99_vs_baseline"] <= (1 + args.queue / args.concurrency) * 1.2,
        "every 429 has Retry-After and an OpenAI error body": r["count"] > 0 and r["with_retry_after"] == r["count"]
            and r["openai_shaped"] == r["count"],
        "no 5xx, every request answered": a["status_5xx"] == 0 and a["no_answer"] == 0,
        f"gateway RSS flat within {TARGET_FLAT:.0%}": res["rss_flat"].get("gateway", False),
        f"back to baseline within {TARGET_RECOVERY_S:.0f} s": rec["back_to_baseline_s"] is not None
            and rec["back_to_baseline_s"] <= TARGET_RECOVERY_S,
        "usage rows = requests answered": usage["match"],
    }
    print()
    for k, v in verdicts.items():
        print(f"Verdict: {k}: {'met' if v else 'NOT MET'}")
    return verdicts


def phase_seconds(args: argparse.Namespace, phase: str) -> float:
    return {"baseline": args.baseline_s, "overload": args.overload_s, "after": args.after_s}.get(phase, 0.0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", choices=sorted(SETUPS), default="stub",
                    help="stub: the OpenAI stub with a fixed delay (default); default: the Gemma 3 270M endpoint")
    ap.add_argument("--quick", action="store_true", help="8 s baseline, 20 s overload, 10 s after")
    ap.add_argument("--baseline-s", type=float, default=20.0)
    ap.add_argument("--overload-s", type=float, default=60.0)
    ap.add_argument("--after-s", type=float, default=20.0)
    ap.add_argument("--factor", type=int, default=4, help="clients during the overload, x the concurrency (default 4)")
    ap.add_argument("--concurrency", type=int, help="max_concurrent_requests_per_instance (stub 4, default 1)")
    ap.add_argument("--queue", type=int, help="max_queue_size_per_instance (stub 4, default 2)")
    ap.add_argument("--queue-wait-ms", type=int, help="max_queue_wait_ms (stub 1000, default 2000)")
    ap.add_argument("--delay-ms", type=int, default=200, help="the stub's answer time (default 200)")
    ap.add_argument("--max-tokens", type=int, default=8, help="with --model default (default 8)")
    ap.add_argument("--no-backoff", action="store_true", help="clients send again at once after a 429")
    ap.add_argument("--recovery-margin", type=float, default=0.2,
                    help="back to baseline = within baseline p99 x (1 + this) (default 0.2)")
    ap.add_argument("--keep-home", action="store_true", help="keep the temporary MODELYARD_HOME (logs, database)")
    ap.add_argument("--out", type=Path, default=_up.RESULTS / "overload.json")
    args = ap.parse_args()
    setup_defaults = SETUPS[args.model]
    for name, key in (("concurrency", "concurrency"), ("queue", "queue"), ("queue_wait_ms", "queue_wait_ms")):
        if getattr(args, name) is None:
            setattr(args, name, setup_defaults[key])
    if args.quick:
        args.baseline_s, args.overload_s, args.after_s = 8.0, 20.0, 10.0
    _up.install_signal_handlers()
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass

    env = _up.environment()
    t_start = time.monotonic()
    home = Path(tempfile.mkdtemp(prefix="modelyard-bench-"))
    gw = _up.Gateway(home, log_name="overload", log_level="info", extra_args=("--no-defaults",))
    stopped = False
    try:
        setup = start(args, gw)
        print(f"gateway pid {gw.proc.pid} on {gw.url}; {setup['endpoint']}/{setup['deployment']} ready "  # type: ignore[union-attr]
              f"({setup['spec']['request_settings']}); {args.baseline_s:.0f} s at {args.concurrency} clients, "
              f"{args.overload_s:.0f} s at {args.concurrency * args.factor}, {args.after_s:.0f} s at {args.concurrency}",
              flush=True)
        run = asyncio.run(drive(args, gw, setup))
        answered = run.warmup + sum(1 for r in run.requests if r["status"])
        usage = usage_check(gw, setup["endpoint"], answered)
        gw.stop()
        stopped = True
        log_errors = [line for line in gw.log_path.read_text(errors="replace").splitlines()
                      if " ERROR " in line or "Traceback" in line][:20]
    except BaseException:
        if not stopped:
            print(gw.logs_report(), file=sys.stderr)
        raise
    finally:
        if not stopped:
            gw.stop()
        _procs.stop_all()
        if args.keep_home:
            print(f"MODELYARD_HOME kept: {home}", file=sys.stderr)
        else:
            shutil.rmtree(home, ignore_errors=True)

    runtime = time.monotonic() - t_start
    a = analyse(args, run)
    verdicts = report(args, setup, a, usage, env, runtime)
    if log_errors:
        print(f"gateway log: {len(log_errors)} ERROR/Traceback lines, e.g. {log_errors[0][:200]}")
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "benchmark": "overload", "settings": settings, "environment": env, "runtime_s": runtime,
        "deployment": setup["spec"], "result": a, "usage": usage, "verdicts": verdicts,
        "gateway_log_errors": log_errors, "requests": run.requests, "polls": run.polls, "samples": run.samples,
    }, indent=2, default=str) + "\n")
    print(f"\nwrote {args.out}")
    return 0 if all(verdicts.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
