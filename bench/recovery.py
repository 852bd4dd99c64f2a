"""Recovery: kill -9 one instance of a 2-instance gemma deployment under steady load.

Targets (from the issue "Endpoints and deployments with cloud-grade operations"):
the time from ``kill -9`` of an instance to its replacement answering, and the
requests lost during a 60-second load with one kill: 0 (non-streaming).

Setup: ``modelyard up --no-defaults`` (temporary MODELYARD_HOME), endpoint ``chat``
with one gemma-3-270m deployment of ``instance_count: 2`` and ``options: {threads:
cpu_count // 2}`` (``--threads N``; ``--threads 0`` leaves it unset: the backend's
default, cpu_count threads per instance, oversubscribes the cores and makes every
request slow and erratic, see ``instance_throughput.py``).

Load: this script, raw HTTP/1.1 keep-alive (``_http.py``), concurrency 2,
non-streaming chat requests with ``max_tokens: 8``, temperature 0, for
``--duration`` seconds (60). Every request's send time, end time and status are
kept. At ``--kill-at`` seconds (20) one instance gets SIGKILL — the one with a
request in flight if there is one, so the gateway's retry path is exercised —
its pid read from ``GET /api/endpoints/chat``, which is polled every 100 ms the
whole time (instance name, pid, state, restarts, in_flight).

Definitions (from those polls, so each is at most ~100 ms late):

- *detected*: the killed instance no longer shows ``ready`` (the supervisor saw the exit);
- *replacement ready*: the instance of the same name shows a new pid, ``restarts``
  one higher and state ``ready``; after this both instances take requests;
- *replacement answering*: requests cannot be sent to one instance, so this is
  the end of the first request that was sent after *replacement ready* and answered
  200 while both instances were ready (the brief's definition). As a cross-check,
  *replacement busy* is the first poll after *replacement ready* that shows a
  request in flight on the replacement itself.

Reported: those times from the kill; requests sent, errors (status != 200, or
no answer: the target is 0); p50/p99 latency of requests sent before the kill,
during recovery (kill -> replacement ready) and after; the gateway's own "retrying
on another" log lines; and the usage rows in MODELYARD_HOME/modelyard.db (table
``usage_records``) against the requests sent (every request recorded, none lost).

    .venv/bin/python bench/recovery.py [--duration 60] [--kill-at 20] [--threads N]

Results: a table on stdout and ``bench/results/recovery.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import _up  # noqa: E402
from _common import percentile  # noqa: E402
from _http import Connection, ConnectionLost, build_request  # noqa: E402

POLL_S = 0.1
TARGET_ERRORS = 0
QUESTIONS = ["What is the capital of France?", "What is the capital of Spain?", "What is two plus two?",
             "What colour is the sky?"]


def get_request(port: int, path: str, key: str) -> bytes:
    return (f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {key}\r\n\r\n").encode()


async def one(conn: Connection, raw: bytes) -> tuple[int, bytes, dict[bytes, bytes], float, float]:
    try:
        resp = await conn.request(raw, streaming=False)
    except ConnectionLost:
        await conn.open()
        resp = await conn.request(raw, streaming=False)
    return resp.status, resp.body, resp.headers, resp.t0, resp.end


async def run(gw: _up.Gateway, args: argparse.Namespace) -> dict[str, Any]:
    port, key = gw.port, gw.admin_key
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    raws = [build_request("127.0.0.1", port, "/v1/chat/completions",
                          json.dumps({"model": "chat", "messages": [{"role": "user", "content": q}], "max_tokens": 8,
                                      "temperature": 0}).encode(), headers) for q in QUESTIONS]
    poll_raw = get_request(port, "/api/endpoints/chat", key)

    # warm-up: every question once per worker connection, not measured (but counted as sent)
    conns = [Connection("127.0.0.1", port) for _ in range(args.concurrency)]
    for c in conns:
        await c.open()
    warmup = 0
    for c in conns:
        for raw in raws:
            status, body, *_ = await one(c, raw)
            warmup += 1
            if status != 200:
                raise RuntimeError(f"warm-up request failed: {status} {body[:300]!r}")
    for c in conns:  # fresh connections: one idle through the others' warm-up may have passed keep-alive
        await c.open()

    requests: list[dict[str, Any]] = []
    polls: list[dict[str, Any]] = []
    kill: dict[str, Any] = {}
    t0 = time.perf_counter()
    stop_at = t0 + args.duration

    async def worker(i: int, conn: Connection) -> None:
        n = i
        while time.perf_counter() < stop_at:
            raw = raws[n % len(raws)]
            n += 1
            sent = time.perf_counter()
            rec: dict[str, Any] = {"worker": i, "sent": sent - t0}
            try:
                resp = await conn.request(raw, streaming=False)  # no silent resend: a dropped connection is an error
                status, body, end = resp.status, resp.body, resp.end
                rec.update(status=status, end=end - t0, latency_ms=(end - sent) * 1000)
                if status != 200:
                    rec["error"] = body[:300].decode(errors="replace")
                else:
                    usage = json.loads(body).get("usage") or {}
                    rec["completion_tokens"] = usage.get("completion_tokens")
            except Exception as exc:  # no answer at all: counted as an error
                conn.close()
                end = time.perf_counter()
                rec.update(status=0, end=end - t0, latency_ms=(end - sent) * 1000, error=f"{type(exc).__name__}: {exc}")
                await conn.open()
            requests.append(rec)

    async def poller() -> None:
        conn = Connection("127.0.0.1", port)
        await conn.open()
        try:
            nxt = time.perf_counter()
            while time.perf_counter() < stop_at + 1.0:
                t = time.perf_counter()
                try:
                    status, body, *_ = await one(conn, poll_raw)
                    data = json.loads(body)
                    inst = [{k: i.get(k) for k in ("name", "pid", "state", "restarts", "in_flight")}
                            for d in data["deployments"] for i in d["instances"]]
                    polls.append({"t": t - t0, "dt_ms": (time.perf_counter() - t) * 1000, "instances": inst})
                except Exception as exc:
                    conn.close()
                    polls.append({"t": t - t0, "error": f"{type(exc).__name__}: {exc}"})
                    await conn.open()
                nxt += POLL_S
                await asyncio.sleep(max(0.0, nxt - time.perf_counter()))
        finally:
            conn.close()

    async def killer() -> None:
        await asyncio.sleep(max(0.0, t0 + args.kill_at - time.perf_counter()))
        last = next(p for p in reversed(polls) if "instances" in p)["instances"]
        ready = [i for i in last if i["state"] == "ready" and i["pid"]]
        victim = next((i for i in ready if i["in_flight"]), ready[0])
        if "modelyard.worker" not in _up.cmdline(victim["pid"]):
            raise RuntimeError(f"pid {victim['pid']} is not a modelyard worker: {_up.cmdline(victim['pid'])!r}")
        t = time.perf_counter()
        os.kill(victim["pid"], signal.SIGKILL)
        kill.update(t=t - t0, victim=victim, in_flight_at_kill=victim["in_flight"],
                    others=[i for i in last if i["name"] != victim["name"]])
        print(f"  t={t - t0:5.2f}s  kill -9 {victim['pid']} ({victim['name']}, {victim['in_flight']} in flight)", flush=True)

    meter = _up.CpuMeter()
    await asyncio.gather(poller(), killer(), *(worker(i, c) for i, c in enumerate(conns)))
    cpu = meter.read()
    for c in conns:
        c.close()
    return {"requests": requests, "polls": polls, "kill": kill, "warmup": warmup, "cpu": cpu}


def analyse(data: dict[str, Any]) -> dict[str, Any]:
    reqs, polls, kill = data["requests"], data["polls"], data["kill"]
    victim = kill["victim"]
    tk = kill["t"]
    detected = ready = busy = None
    new_pid = None
    for p in polls:
        if p["t"] < tk or "instances" not in p:
            continue
        me = next((i for i in p["instances"] if i["name"] == victim["name"]), None)
        if me is None:
            continue
        if detected is None and (me["state"] != "ready" or me["pid"] != victim["pid"]):
            detected = p["t"]
        if ready is None and me["pid"] != victim["pid"] and me["state"] == "ready" \
                and me["restarts"] == victim["restarts"] + 1 \
                and all(i["state"] == "ready" for i in p["instances"]):
            ready, new_pid = p["t"], me["pid"]
        if ready is not None and busy is None and p["t"] > ready and me["in_flight"]:
            busy = p["t"]
    answered = None
    if ready is not None:
        after = [r for r in reqs if r["sent"] >= ready and r["status"] == 200]
        answered = min((r["end"] for r in after), default=None)
    states = []  # the victim's state transitions, for the record
    for p in polls:
        me = next((i for i in p.get("instances", []) if i["name"] == victim["name"]), None)
        if me and (not states or (states[-1]["state"], states[-1]["pid"]) != (me["state"], me["pid"])):
            states.append({"t": round(p["t"], 3), "state": me["state"], "pid": me["pid"], "restarts": me["restarts"]})

    def phase(lo: float, hi: float) -> dict[str, Any]:
        rs = [r for r in reqs if lo <= r["sent"] < hi]
        lat = [r["latency_ms"] for r in rs if r["status"] == 200]
        return {"from_s": lo, "to_s": hi, "sent": len(rs), "errors": sum(r["status"] != 200 for r in rs),
                "p50_ms": percentile(lat, 50), "p99_ms": percentile(lat, 99), "max_ms": max(lat) if lat else None}

    end = max((r["end"] for r in reqs), default=0.0)
    rel = lambda t: None if t is None else t - tk  # noqa: E731
    errors = [r for r in reqs if r["status"] != 200]
    by_code: dict[str, int] = {}
    for r in errors:
        try:
            code = json.loads(r.get("error") or "")["error"]["code"]
        except (ValueError, KeyError, TypeError):
            code = "no answer" if r["status"] == 0 else f"status {r['status']}"
        by_code[code] = by_code.get(code, 0) + 1
    # requests in flight when the kill landed
    at_kill = [r for r in reqs if r["sent"] <= tk <= r["end"]]
    return {
        "kill_at_s": tk, "victim": victim, "replacement_pid": new_pid,
        "detected_s": rel(detected), "replacement_ready_s": rel(ready), "replacement_answering_s": rel(answered),
        "replacement_busy_s": rel(busy), "victim_states": states,
        "requests_sent": len(reqs), "errors": len(errors), "error_examples": errors[:5], "errors_by_code": by_code,
        "errors_sent_window_s": [rel(min(r["sent"] for r in errors)), rel(max(r["sent"] for r in errors))] if errors else None,
        "requests_in_flight_at_kill": [{k: r.get(k) for k in ("sent", "end", "status", "latency_ms")} for r in at_kill],
        "phases": {"before": phase(0.0, tk), "during": phase(tk, ready if ready is not None else end + 1),
                   "after": phase(ready, end + 1) if ready is not None else None, "all": phase(0.0, end + 1)},
        "throughput_rps": len(reqs) / end if end else None,
        "poll_interval_ms_p50": percentile([b["t"] - a["t"] for a, b in zip(polls, polls[1:])], 50) * 1000 if len(polls) > 1 else None,
        "poll_ms_p50": percentile([p["dt_ms"] for p in polls if "dt_ms" in p], 50),
    }


def usage_rows(db: Path) -> dict[str, Any]:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        rows = con.execute("SELECT status, COUNT(*) FROM usage_records WHERE endpoint = 'chat' GROUP BY status").fetchall()
        return {"total": sum(n for _, n in rows), "by_status": {str(s): n for s, n in rows}}
    finally:
        con.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=60.0, help="seconds of load (default 60)")
    ap.add_argument("--kill-at", type=float, default=20.0, help="seconds into the load (default 20)")
    ap.add_argument("--concurrency", type=int, default=2)
    ap.add_argument("--threads", type=int, default=max(1, (os.cpu_count() or 1) // 2),
                    help="deployment options.threads (default: cpu_count // 2, one core per instance: see "
                         "instance_throughput.py); 0 = not set, the backend's default (cpu_count)")
    args = ap.parse_args()
    _up.install_signal_handlers()
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass

    env = _up.environment()
    print(f"load average before: {env['loadavg_start']}  cpus: {env['cpus']}", flush=True)
    gw = _up.Gateway(log_name="recovery", log_level="info", extra_args=("--no-defaults",))
    t_start = time.monotonic()
    stopped = False
    try:
        gw.start()
        gw.wait_ready(timeout=120)
        key = gw.admin_key
        code, body = _up.http("POST", gw.url + "/api/endpoints", {"name": "chat"}, key=key)
        assert code == 201, body
        spec: dict[str, Any] = {"name": "gemma", "model": "gemma-3-270m", "instance_count": 2}
        if args.threads:
            spec["options"] = {"threads": args.threads}
        t0 = time.monotonic()
        code, body = _up.http("POST", gw.url + "/api/endpoints/chat/deployments", spec, key=key, timeout=300)
        assert code == 201, body
        print(f"deployment chat/gemma: 2 instances (pids {[i['pid'] for i in body['instances']]}) ready in "
              f"{time.monotonic() - t0:.1f}s; load for {args.duration:.0f}s at concurrency {args.concurrency}, "
              f"kill -9 at {args.kill_at:.0f}s", flush=True)
        gw.note_children()
        data = asyncio.run(run(gw, args))
        gw.note_children()
        time.sleep(1.5)  # the usage writer flushes every 0.5 s
        db = gw.home / "modelyard.db"
        rows_live = usage_rows(db)
        final = _up.http("GET", gw.url + "/api/endpoints/chat", key=key)[1]
        log_text = gw.log_path.read_text(errors="replace")
        gw.stop()
        stopped = True
        rows_after_stop = usage_rows(db)
    finally:
        if not stopped:
            gw.stop()
        gw.cleanup_home()

    env["loadavg_end"] = _up.loadavg()
    a = analyse(data)
    sent_total = a["requests_sent"] + data["warmup"]
    retries = [line for line in log_text.splitlines() if "retrying on another" in line]
    restarts = [line for line in log_text.splitlines() if "restarting in" in line]
    a.update(warmup_requests=data["warmup"], sent_including_warmup=sent_total, usage_rows_live=rows_live,
             usage_rows_after_stop=rows_after_stop, usage_rows_match=rows_live["total"] == sent_total,
             gateway_retry_log_lines=retries, gateway_restart_log_lines=restarts,
             final_instances=[{k: i.get(k) for k in ("name", "pid", "state", "restarts")}
                              for d in final["deployments"] for i in d["instances"]],
             foreign_cores=data["cpu"]["foreign_cores"])
    a["verdicts"] = {"0 errors (non-streaming)": a["errors"] == TARGET_ERRORS,
                     "usage rows = requests sent": a["usage_rows_match"],
                     "replacement ready": a["replacement_ready_s"] is not None}

    f = _up.fmt
    print()
    print(f"gemma-3-270m, 2 instances (threads {args.threads or 'unset: cpu_count'}); {args.duration:.0f}s of "
          f"non-streaming requests (max_tokens 8) at concurrency {args.concurrency}; kill -9 at {a['kill_at_s']:.2f}s; "
          f"load average {env['loadavg_start']} -> {env['loadavg_end']}; other processes used "
          f"{a['foreign_cores']:.2f} cores on average")
    print()
    print(_up.table([
        ["killed instance", f"{a['victim']['name']} pid {a['victim']['pid']} ({a['victim']['in_flight']} in flight)"],
        ["kill -> detected (not ready)", f"{f(a['detected_s'], 2)} s"],
        ["kill -> replacement ready", f"{f(a['replacement_ready_s'], 2)} s (pid {a['replacement_pid']})"],
        ["kill -> replacement answering*", f"{f(a['replacement_answering_s'], 2)} s"],
        ["kill -> replacement busy (poll)", f"{f(a['replacement_busy_s'], 2)} s"],
        ["requests in flight at the kill", ", ".join(f"{r['status']} in {r['latency_ms']:.0f} ms"
                                                     for r in a["requests_in_flight_at_kill"]) or "none"],
        ["gateway 'retrying on another' lines", str(len(retries))],
        ["errors by code", ", ".join(f"{k}: {v}" for k, v in a["errors_by_code"].items()) or "none"],
        ["errors sent between (from kill)", "-" if not a["errors_sent_window_s"] else
         f"{a['errors_sent_window_s'][0]:+.3f} s and {a['errors_sent_window_s'][1]:+.3f} s"],
    ], ["recovery", "value"]))
    print()
    rows = []
    for name in ("before", "during", "after", "all"):
        ph = a["phases"][name]
        if ph is None:
            continue
        rows.append([name, f"{ph['from_s']:.1f}-{min(ph['to_s'], args.duration + 60):.1f}s", ph["sent"], ph["errors"],
                     f(ph["p50_ms"]), f(ph["p99_ms"]), f(ph["max_ms"])])
    print(_up.table(rows, ["phase (by send time)", "window", "sent", "errors", "p50 ms", "p99 ms", "max ms"]))
    print()
    print(f"requests sent: {a['requests_sent']} (+{data['warmup']} warm-up); errors: {a['errors']}; "
          f"usage rows for 'chat': {rows_live['total']} while running, {rows_after_stop['total']} after shutdown, "
          f"for {sent_total} sent (by status {rows_live['by_status']})")
    print(f"final instances: {a['final_instances']}")
    print("* replacement answering = end of the first request sent after the replacement was ready (both instances "
          "ready) that was answered 200; replacement busy = first 100 ms poll showing a request in flight on the "
          "replacement itself")
    for e in a["error_examples"]:
        print(f"  error: sent {e['sent']:.2f}s status {e['status']}: {e.get('error', '')[:200]}")
    print()
    for k, v in a["verdicts"].items():
        print(f"Verdict: {k}: {'met' if v else 'NOT MET'}")
    path = _up.write_json("recovery.json", {
        "benchmark": "recovery", "settings": vars(args), "environment": env, "runtime_s": time.monotonic() - t_start,
        "result": a, "requests": data["requests"], "polls": data["polls"]})
    print(f"\nwrote {path}")
    return 0 if all(a["verdicts"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
