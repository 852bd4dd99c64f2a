"""Routing overhead: what a traffic split with a mirror adds per request, against one deployment and no mirror.

Target (from the issue "Endpoints and deployments with cloud-grade operations"):
split/mirror decision and instance choice add <= 0.2 ms p50 per request, measured
against the same request to an endpoint with one deployment and no mirror.

Setup (as ``gateway_overhead.py``): the stub OpenAI server (``tests/openai_stub.py``)
runs as its own process; a temporary MODELYARD_HOME gets a hosted card ``bench-stub``
pointing at it; ``modelyard up --no-defaults`` runs as a second process. Through the
management API:

- endpoint ``single``: one hosted deployment ``only`` at 100%, no mirror (the baseline);
- endpoint ``split``: three hosted deployments on the same stub: ``blue`` 90%,
  ``green`` 10%, ``shadow`` at 0% receiving ``mirror_traffic`` 10%;
- endpoint ``splitnm`` (diagnostic, ``--no-diagnostic`` drops it): ``blue`` 90 /
  ``green`` 10 and no mirror, to tell the split's cost from the mirror's.

Load: this script, raw HTTP/1.1 keep-alive (``_http.py``), concurrency 1,
non-streaming, the same request body but for ``model``. Blocks of ``--block``
requests go to each endpoint in turn, rotating which goes first, so noise on the
machine hits all alike. Every response is checked (status 200, the stub's text,
the deployment header is one the endpoint may answer with).

Reported per endpoint: p50/p90/p99/mean latency (send to last byte), the p50
difference to ``single`` (and the median of per-round p50 differences, which noise
disturbs less), and the gateway's CPU per *live* request inside that endpoint's
blocks (all threads; the event-loop thread separately). ``split`` spawns a mirrored
copy for ~10% of its live requests: its CPU per live request includes those copies
(each is a second upstream call and a second usage row), so it is reported as is
and also as "per upstream call". At the end the usage rows must match: one per
live request, plus one ``mirror:shadow`` row per copy.

    .venv/bin/python bench/routing_overhead.py                  # 3000 requests per endpoint (~1 min on 2 cores)
    .venv/bin/python bench/routing_overhead.py --requests 500   # quick

Results: a table on stdout and ``bench/results/routing_overhead.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sqlite3
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import _procs  # noqa: E402
from _common import Samples, free_port, percentile  # noqa: E402
from _http import Connection, ConnectionLost, build_request  # noqa: E402
from _procs import Child, cpu_ns, thread_split  # noqa: E402
from gateway_overhead import CARD, EXPECTED_TEXT, _api, dist, machine  # noqa: E402

RESULTS = HERE / "results"
TARGET_ADDED_P50_MS = 0.2
MIRROR_PERCENT = 10
USAGE_FLUSH_WAIT_S = 1.0

#: endpoint -> (deployments, traffic, mirror_traffic)
ENDPOINTS = {
    "single": (["only"], {"only": 100}, {}),
    "split": (["blue", "green", "shadow"], {"blue": 90, "green": 10, "shadow": 0}, {"shadow": MIRROR_PERCENT}),
    "splitnm": (["nm-blue", "nm-green"], {"nm-blue": 90, "nm-green": 10}, {}),
}


@dataclass
class EndpointSamples(Samples):
    """What one endpoint did: `Samples`, per-block p50s, who answered, and the gateway's CPU in its blocks."""

    block_p50_ms: list[float] = field(default_factory=list)  # p50 of each block, in order
    deployments: dict[str, int] = field(default_factory=dict)
    gateway_cpu_ns: int = 0  # gateway CPU (all threads) while this endpoint's blocks ran
    loop_ns: int = 0  # of which the event-loop thread
    other_threads_ns: int = 0  # and the worker threads


def start(home: Path, endpoints: list[str]) -> tuple[Child, Child, str, str]:
    stub_port = free_port()
    stub = Child("stub", [sys.executable, str(ROOT / "tests" / "openai_stub.py"), "--port", str(stub_port)],
                 log=home / "stub.log", cwd=str(ROOT))
    stub.wait_http(f"http://127.0.0.1:{stub_port}/healthz", timeout=30)
    (home / "catalog").mkdir(parents=True, exist_ok=True)
    (home / "catalog" / "bench.yaml").write_text(CARD.format(port=stub_port))
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELYARD_") and k != "DATABASE_URL"}
    env.update(MODELYARD_HOME=str(home), BENCH_STUB_KEY="sk-bench-stub", PYTHONUNBUFFERED="1")
    port = free_port()
    gateway = Child("gateway", [sys.executable, "-m", "modelyard.cli", "up", "--no-defaults", "--port", str(port)],
                    env=env, log=home / "gateway.log", cwd=str(ROOT))
    gateway.wait_http(f"http://127.0.0.1:{port}/healthz", timeout=90)
    key = (home / "admin.key").read_text().strip()
    base = f"http://127.0.0.1:{port}"
    for name in endpoints:
        deps, traffic, mirror = ENDPOINTS[name]
        _api(base, key, "POST", "/api/endpoints", {"name": name})
        for d in deps:
            _api(base, key, "POST", f"/api/endpoints/{name}/deployments", {"name": d, "model": "bench-stub"})
        _api(base, key, "PATCH", f"/api/endpoints/{name}", {"traffic": traffic, "mirror_traffic": mirror})
        got = _api(base, key, "GET", f"/api/endpoints/{name}")
        assert got["traffic"] == traffic and got["mirror_traffic"] == mirror, got
    return stub, gateway, base, key


async def run_block(conn: Connection, raw: bytes, n: int, allowed: set[bytes], s: EndpointSamples | None) -> None:
    lat: list[float] = []
    for _ in range(n):
        try:
            try:
                resp = await conn.request(raw, streaming=False)
            except ConnectionLost:
                await conn.open()
                resp = await conn.request(raw, streaming=False)
        except Exception as exc:
            conn.close()
            if s is None:
                raise
            s.error(f"{type(exc).__name__}: {exc}")
            continue
        dep = resp.headers.get(b"x-modelyard-deployment", b"")
        problem = None
        if resp.status != 200:
            problem = f"status {resp.status}: {resp.body[:200]!r}"
        elif EXPECTED_TEXT not in resp.body:
            problem = f"unexpected body {resp.body[:200]!r}"
        elif dep not in allowed:
            problem = f"answered by deployment {dep!r}"
        if s is None:
            if problem:
                raise RuntimeError(f"warm-up request failed: {problem}")
            continue
        if problem:
            s.error(problem)
            continue
        s.ok += 1
        ms = (resp.end - resp.t0) * 1000
        s.latency_ms.append(ms)
        lat.append(ms)
        key = dep.decode()
        s.deployments[key] = s.deployments.get(key, 0) + 1
        ov = resp.headers.get(b"x-modelyard-overhead-ms")
        if ov is not None:
            s.overhead_header_ms.append(float(ov))
    if s is not None and lat:
        s.block_p50_ms.append(percentile(lat, 50))


def usage_rows(home: Path) -> dict[str, dict[str, int]]:
    """{endpoint: {route: rows}} straight from the database."""
    con = sqlite3.connect(f"file:{home / 'modelyard.db'}?mode=ro", uri=True, timeout=10)
    try:
        out: dict[str, dict[str, int]] = {}
        for ep, route, status, n in con.execute(
                "SELECT endpoint, route, status, COUNT(*) FROM usage_records GROUP BY endpoint, route, status"):
            key = route if status == 200 else f"{route} (status {status})"
            out.setdefault(ep, {})[key] = n
        return out
    finally:
        con.close()


async def measure(port: int, key: str, gw_pid: int, names: list[str], args) -> tuple[dict[str, EndpointSamples], dict]:
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    raws, conns, allowed = {}, {}, {}
    for name in names:
        body = {"model": name, "messages": [{"role": "user", "content": "Say hello in twenty tokens."}], "max_tokens": 20}
        raws[name] = build_request("127.0.0.1", port, "/v1/chat/completions",
                                   json.dumps(body, separators=(",", ":")).encode(), headers)
        conns[name] = Connection("127.0.0.1", port)
        await conns[name].open()
        deps, traffic, _ = ENDPOINTS[name]
        allowed[name] = {d.encode() for d, w in traffic.items() if w > 0}
    try:
        for name in names:
            await run_block(conns[name], raws[name], args.warmup, allowed[name], None)
        await asyncio.sleep(USAGE_FLUSH_WAIT_S)
        res = {name: EndpointSamples() for name in names}
        rounds = max(1, args.requests // args.block)
        t0, tot0, split0 = time.perf_counter(), cpu_ns(gw_pid), thread_split(gw_pid)
        for r in range(rounds):
            order = names[r % len(names):] + names[:r % len(names)]
            for name in order:
                s = res[name]
                c0, th0, w0 = cpu_ns(gw_pid), thread_split(gw_pid), time.perf_counter()
                await run_block(conns[name], raws[name], args.block, allowed[name], s)
                s.wall_s += time.perf_counter() - w0
                th1 = thread_split(gw_pid)
                s.gateway_cpu_ns += cpu_ns(gw_pid) - c0
                s.loop_ns += th1[0] - th0[0]
                s.other_threads_ns += th1[1] - th0[1]
        await asyncio.sleep(USAGE_FLUSH_WAIT_S)  # the last usage rows (and mirrored copies) are written
        window = {"wall_s": time.perf_counter() - t0, "gateway_cpu_s": (cpu_ns(gw_pid) - tot0) / 1e9,
                  "loop_thread_cpu_s": (thread_split(gw_pid)[0] - split0[0]) / 1e9,
                  "other_threads_cpu_s": (thread_split(gw_pid)[1] - split0[1]) / 1e9, "rounds": rounds}
        return res, window
    finally:
        for c in conns.values():
            c.close()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=3000, help="measured requests per endpoint (default 3000)")
    p.add_argument("--block", type=int, default=100, help="requests per interleaved block (default 100)")
    p.add_argument("--warmup", type=int, default=200, help="warm-up requests per endpoint (default 200)")
    p.add_argument("--no-diagnostic", action="store_true", help="leave out the split-without-mirror endpoint")
    p.add_argument("--keep-home", action="store_true")
    p.add_argument("--out", type=Path, default=RESULTS / "routing_overhead.json")
    args = p.parse_args()
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass

    names = ["single", "split"] + ([] if args.no_diagnostic else ["splitnm"])
    home = Path(tempfile.mkdtemp(prefix="modelyard-bench-routing-"))
    meta = machine()
    meta["loadavg_start"] = os.getloadavg()
    print(f"load average before: {meta['loadavg_start'][0]:.2f} {meta['loadavg_start'][1]:.2f} "
          f"{meta['loadavg_start'][2]:.2f} on {meta['nproc']} CPUs", flush=True)
    t_start = time.perf_counter()
    try:
        stub, gateway, base, key = start(home, names)
        port = int(base.rsplit(":", 1)[1])
        print(f"stub pid {stub.pid}, gateway pid {gateway.pid} on :{port}; endpoints {', '.join(names)}", flush=True)
        res, window = asyncio.run(measure(port, key, gateway.pid, names, args))
        meta["loadavg_end"] = os.getloadavg()
        rows_live = usage_rows(home)
        gateway.stop()
        stub.stop()
        rows = usage_rows(home)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    finally:
        _procs.stop_all()

    try:
        base_s = res["single"]
        out: dict = {"meta": {**meta, "requests_per_endpoint": window["rounds"] * args.block, "block": args.block,
                              "warmup": args.warmup, "window": window, "runtime_s": time.perf_counter() - t_start},
                     "endpoints": {}}
        for name in names:
            s = res[name]
            n = max(s.ok + s.errors, 1)
            lat = dist(s.latency_ms)
            pairs = [b - a for a, b in zip(base_s.block_p50_ms, s.block_p50_ms)]
            routes = rows.get(name, {})
            mirrored = sum(v for k, v in routes.items() if k.startswith("mirror:"))
            upstream_calls = n + (mirrored * n / max(sum(routes.values()) - mirrored, 1) if mirrored else 0)
            out["endpoints"][name] = {
                "deployments": ENDPOINTS[name][0], "traffic": ENDPOINTS[name][1], "mirror_traffic": ENDPOINTS[name][2],
                "latency_ms": lat, "ok": s.ok, "errors": s.errors, "error_examples": s.error_examples,
                "answered_by": s.deployments, "self_reported_overhead_ms": dist(s.overhead_header_ms),
                "added_vs_single_ms": {k: (lat[k] - dist(base_s.latency_ms)[k]) if lat[k] is not None else None
                                       for k in ("p50", "p90", "p99", "mean")},
                "added_p50_ms_median_of_block_pairs": percentile(pairs, 50) if pairs else None,
                "gateway_cpu_ms_per_live_request": s.gateway_cpu_ns / n / 1e6,
                "gateway_cpu_ms_per_upstream_call": s.gateway_cpu_ns / upstream_calls / 1e6,
                "loop_thread_cpu_ms_per_live_request": s.loop_ns / n / 1e6,
                "other_threads_cpu_ms_per_live_request": s.other_threads_ns / n / 1e6,
                "throughput_rps": s.ok / s.wall_s if s.wall_s else None,
                "usage_rows": routes,
            }
        sp, si = out["endpoints"]["split"], out["endpoints"]["single"]
        added = sp["added_vs_single_ms"]["p50"]
        mirrored = sum(v for k, v in sp["usage_rows"].items() if k.startswith("mirror:"))
        live_rows = sum(v for k, v in sp["usage_rows"].items() if not k.startswith("mirror:"))
        acc_ok = all(sum(e["usage_rows"].values()) - sum(v for k, v in e["usage_rows"].items() if k.startswith("mirror:"))
                     == e["ok"] + e["errors"] + args.warmup for e in out["endpoints"].values())
        out["mirror"] = {"copies": mirrored, "live_requests": live_rows,
                         "share": mirrored / live_rows if live_rows else None, "expected_share": MIRROR_PERCENT / 100}
        out["accounting_ok"] = acc_ok
        out["usage_rows_before_shutdown"] = rows_live
        errors = sum(e["errors"] for e in out["endpoints"].values())
        out["verdict"] = {f"p50 added <= {TARGET_ADDED_P50_MS} ms": added is not None and added <= TARGET_ADDED_P50_MS and errors == 0}

        m = out["meta"]
        print()
        print(f"modelyard routing overhead — {m['date']}, {m['nproc']} CPUs ({m['cpu']}), modelyard {m['modelyard_commit']}")
        print(f"{m['requests_per_endpoint']} requests per endpoint, concurrency 1, non-streaming, blocks of {args.block} "
              f"rotated; load average {m['loadavg_start'][0]:.2f} -> {m['loadavg_end'][0]:.2f}")
        print()
        hdr = (f"{'endpoint':<9} {'p50':>6} {'p90':>6} {'p99':>6} {'mean':>6} {'+p50':>7} {'+p50 blk':>8} {'+p99':>7} "
               f"{'CPU/live':>8} {'loop':>6} {'others':>6} {'CPU/call':>8} {'hdr p50':>7} {'rps':>5} {'err':>4}  answered by")
        print(hdr)
        print("-" * len(hdr))
        for name, e in out["endpoints"].items():
            L, A = e["latency_ms"], e["added_vs_single_ms"]
            f = lambda x, s="{:.3f}": "-" if x is None else s.format(x)  # noqa: E731
            print(f"{name:<9} {f(L['p50']):>6} {f(L['p90']):>6} {f(L['p99']):>6} {f(L['mean']):>6} "
                  f"{f(A['p50'], '{:+.3f}'):>7} {f(e['added_p50_ms_median_of_block_pairs'], '{:+.3f}'):>8} "
                  f"{f(A['p99'], '{:+.3f}'):>7} {e['gateway_cpu_ms_per_live_request']:>8.3f} "
                  f"{e['loop_thread_cpu_ms_per_live_request']:>6.3f} {e['other_threads_cpu_ms_per_live_request']:>6.3f} "
                  f"{e['gateway_cpu_ms_per_upstream_call']:>8.3f} {f(e['self_reported_overhead_ms']['p50']):>7} "
                  f"{f(e['throughput_rps'], '{:.0f}'):>5} {e['errors']:>4}  "
                  + ", ".join(f"{k} {v}" for k, v in sorted(e["answered_by"].items())))
        print("  latency ms, send to last byte; +p50/+p99 = minus 'single'; '+p50 blk' = median over rounds of the "
              "per-block p50 difference")
        print("  CPU ms per live request inside the endpoint's own blocks (gateway, all threads; loop = event-loop thread, "
              "others = worker threads: usage INSERTs); CPU/call = per upstream call (live + mirrored copies)")
        print(f"  mirror: {mirrored} copies to shadow for {live_rows} live split requests "
              f"({100 * (out['mirror']['share'] or 0):.1f}%, configured {MIRROR_PERCENT}%)")
        d_cpu = sp["gateway_cpu_ms_per_live_request"] - si["gateway_cpu_ms_per_live_request"]
        print(f"  split - single CPU per live request: {d_cpu:+.3f} ms"
              + (f" (split without mirror: {out['endpoints']['splitnm']['gateway_cpu_ms_per_live_request'] - si['gateway_cpu_ms_per_live_request']:+.3f} ms)"
                 if "splitnm" in out["endpoints"] else ""))
        print("  usage rows (from the database): " + "; ".join(f"{k}: {v}" for k, v in rows.items())
              + f" — {'match' if acc_ok else 'MISMATCH'} (live rows = requests sent incl. {args.warmup} warm-up each)")
        print()
        for k, v in out["verdict"].items():
            print(f"Verdict: split+mirror {k}: {'met' if v else 'NOT MET'} (measured {added:+.3f} ms; "
                  f"median of block pairs {sp['added_p50_ms_median_of_block_pairs']:+.3f} ms)")
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(out, indent=2))
        print(f"Results: {args.out}; run took {time.perf_counter() - t_start:.0f}s")
        return 0 if errors == 0 and acc_ok else 1
    finally:
        if args.keep_home:
            print(f"MODELYARD_HOME kept: {home}", file=sys.stderr)
        else:
            shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
