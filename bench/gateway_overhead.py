"""Gateway overhead: what modelyard adds in front of a trivial OpenAI-compatible server.

A hosted-style deployment points at a local stub server (``tests/openai_stub.py``:
fixed JSON, 20 SSE content chunks when streaming). The same load is driven
straight at the stub and through modelyard, interleaved in small blocks in one
run so that noise on the machine hits both alike, and the script reports:

- p50/p99 latency (send to last byte) of both, and what the gateway adds;
- for streams, the time to the first content chunk, and what the gateway adds;
- the gateway process's CPU time per proxied request (CPU seconds ÷ requests),
  the figure that noise on a shared machine disturbs least, against the
  targets and against reference figures measured the same way for other
  gateways (LiteLLM's proxy, MLflow's AI gateway).

Usage recording and metrics are on (they always are). The gateway runs as
``modelyard up`` in its own process; the stub in another; this script is the
load generator, a third process speaking raw HTTP/1.1 keep-alive on asyncio
streams (the same client for both targets).

    .venv/bin/python bench/gateway_overhead.py               # 2,000 requests per scenario and target
    .venv/bin/python bench/gateway_overhead.py --quick       # 300
    .venv/bin/python bench/gateway_overhead.py --profile     # where the gateway's CPU goes (py-spy or cProfile)

Results: a table on stdout and ``bench/results/gateway_overhead.json``
(``gateway_profile.json`` and the raw profiles for ``--profile``).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import _procs  # noqa: E402
from _common import Samples, children_of, free_port, percentile  # noqa: E402
from _http import CONTENT_MARK, Connection, ConnectionLost, build_request  # noqa: E402
from _procs import Child, cpu_ns, cpu_ticks_s, ctx_switches, io_syscalls, thread_split  # noqa: E402

RESULTS = HERE / "results"

#: Targets from the issue, in ms of gateway CPU per request.
TARGET_CPU_MS = {False: 0.6, True: 1.0}
TARGET_ADDED_P50_MS_C1 = 1.0
#: Reference gateways, measured the same way on the same machine (ms CPU per request: low, high).
REFERENCE_CPU_MS = {
    "MLflow AI gateway": {False: (0.9, 0.9), True: (1.3, 2.0)},
    "LiteLLM proxy": {False: (7.0, 9.0), True: (17.0, 26.0)},
}

#: What the stub answers: 20 tokens "tok ", 10 prompt + 20 completion tokens.
EXPECTED_TEXT = b'"content":"' + b"tok " * 20 + b'"'
STREAM_CHUNKS = 20
#: The last event of a stream (= modelyard.wire.SSE_DONE): checked as bytes, so the load generator imports no modelyard.
SSE_DONE = b"data: [DONE]\n\n"
#: 10 prompt tokens at $1/1M + 20 completion tokens at $2/1M.
EXPECTED_COST = b"%.8f" % ((10 * 1.0 + 20 * 2.0) / 1e6)
USAGE_FLUSH_WAIT_S = 0.8  # the usage writer flushes every 0.5 s

CARD = """\
- id: bench-stub
  name: Benchmark stub (tests/openai_stub.py)
  family: stub
  task: chat
  format: hosted
  license: proprietary
  context_length: 8192
  source:
    type: hosted
    provider: openai-compatible
    base_url: http://127.0.0.1:{port}/v1
    model: stub-model
    api_key_env: BENCH_STUB_KEY
  price: {{input_per_1m: 1.0, output_per_1m: 2.0}}
"""


# ---------------------------------------------------------------------------------------------
# setup


@dataclass
class Servers:
    home: Path
    stub: Child
    stub_port: int
    gateway: Child
    gateway_port: int
    admin_key: str


def start_servers(home: Path, *, gateway_argv_prefix: list[str] | None = None) -> Servers:
    stub_port = free_port()
    stub = Child("stub", [sys.executable, str(ROOT / "tests" / "openai_stub.py"), "--port", str(stub_port)],
                 log=home / "stub.log", cwd=str(ROOT))
    stub.wait_http(f"http://127.0.0.1:{stub_port}/healthz", timeout=30)

    (home / "catalog").mkdir(parents=True, exist_ok=True)
    (home / "catalog" / "bench.yaml").write_text(CARD.format(port=stub_port))
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELYARD_") and k != "DATABASE_URL"}
    env.update(MODELYARD_HOME=str(home), BENCH_STUB_KEY="sk-bench-stub", PYTHONUNBUFFERED="1")
    gateway_port = free_port()
    argv = (gateway_argv_prefix or [sys.executable, "-m", "modelyard.cli"]) + ["up", "--no-defaults", "--port", str(gateway_port)]
    gateway = Child("gateway", argv, env=env, log=home / "gateway.log", cwd=str(ROOT))
    gateway.wait_http(f"http://127.0.0.1:{gateway_port}/healthz", timeout=90)
    admin_key = (home / "admin.key").read_text().strip()

    base = f"http://127.0.0.1:{gateway_port}"
    _api(base, admin_key, "POST", "/api/endpoints", {"name": "bench"})
    _api(base, admin_key, "POST", "/api/endpoints/bench/deployments", {"name": "stub", "model": "bench-stub"})
    deadline = time.monotonic() + 30
    while _api(base, admin_key, "GET", "/readyz", expect=(200, 503))["status"] != "ready":
        if time.monotonic() > deadline:
            raise RuntimeError("the bench endpoint did not become ready:\n" + gateway.tail())
        time.sleep(0.1)
    return Servers(home, stub, stub_port, gateway, gateway_port, admin_key)


def _api(base: str, key: str, method: str, path: str, body: dict | None = None, expect=(200, 201)) -> dict:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(base + path, data=data, method=method,
                                 headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            status, raw = r.status, r.read()
    except urllib.error.HTTPError as e:
        status, raw = e.code, e.read()
    if status not in expect:
        raise RuntimeError(f"{method} {path} answered {status}: {raw[:500]!r}")
    return json.loads(raw) if raw else {}


def gateway_processes(servers: Servers) -> list[int]:
    """The gateway's child processes: a hosted deployment has no instances, so this should be empty."""
    return children_of(servers.gateway.pid)


# ---------------------------------------------------------------------------------------------
# load


@dataclass(frozen=True)
class Scenario:
    concurrency: int
    streaming: bool

    @property
    def name(self) -> str:
        return f"{'streaming' if self.streaming else 'non-streaming'} c={self.concurrency}"

    @property
    def key(self) -> str:
        return f"{'stream' if self.streaming else 'json'}_c{self.concurrency}"


SCENARIOS = [Scenario(1, False), Scenario(1, True), Scenario(32, False), Scenario(32, True)]


@dataclass
class TargetSamples(Samples):
    """What one target did in one scenario: `Samples`, and what the processes spent meanwhile."""

    ttft_ms: list[float] = field(default_factory=list)
    reconnects: int = 0
    client_cpu_s: float = 0.0
    gateway_cpu_ns: int = 0  # gateway CPU while this target's blocks ran
    stub_cpu_ns: int = 0  # stub CPU while this target's blocks ran
    gateway_rw: list[int] = field(default_factory=lambda: [0, 0])  # gateway read, write syscalls in these blocks
    stub_rw: list[int] = field(default_factory=lambda: [0, 0])  # stub read, write syscalls in these blocks
    gateway_ctx: list[int] = field(default_factory=lambda: [0, 0])  # gateway voluntary, involuntary context switches


class Target:
    def __init__(self, name: str, port: int, admin_key: str, *, gateway: bool) -> None:
        self.name = name
        self.port = port
        self.gateway = gateway
        self.conns: list[Connection] = []
        headers = {"Authorization": f"Bearer {admin_key}", "Content-Type": "application/json"}
        messages = [{"role": "user", "content": "Say hello in twenty tokens."}]
        self.raw = {
            streaming: build_request("127.0.0.1", port, "/v1/chat/completions",
                                     json.dumps({"model": "bench", "messages": messages, "max_tokens": 20,
                                                 "stream": streaming}, separators=(",", ":")).encode(), headers)
            for streaming in (False, True)
        }

    async def ensure(self, n: int) -> None:
        while len(self.conns) < n:
            conn = Connection("127.0.0.1", self.port)
            await conn.open()
            self.conns.append(conn)

    def close(self) -> None:
        for c in self.conns:
            c.close()
        self.conns.clear()


def check(target: Target, streaming: bool, resp) -> str | None:
    """None when the response is what the stub sends (through the gateway: plus its accounting), else why not."""
    if resp.status != 200:
        return f"status {resp.status}: {resp.body[:200]!r}"
    if streaming:
        if not resp.body.endswith(SSE_DONE):
            return f"stream does not end with [DONE]: ...{resp.body[-120:]!r}"
        n = resp.body.count(CONTENT_MARK + b"tok ")
        if n != STREAM_CHUNKS:
            return f"stream has {n} content chunks, not {STREAM_CHUNKS}"
        if resp.first is None:
            return "no content chunk seen"
    else:
        if EXPECTED_TEXT not in resp.body:
            return f"unexpected body: {resp.body[:200]!r}"
        if target.gateway and resp.headers.get(b"x-modelyard-cost-usd") != EXPECTED_COST:
            return f"cost header {resp.headers.get(b'x-modelyard-cost-usd')!r}, expected {EXPECTED_COST!r}"
    return None


async def run_block(target: Target, sc: Scenario, n: int, samples: TargetSamples | None) -> None:
    """`n` requests at `target` with `sc.concurrency` in flight; results into `samples` (None: warm-up)."""
    raw = target.raw[sc.streaming]
    left = n

    async def worker(conn: Connection) -> None:
        nonlocal left
        while left > 0:
            left -= 1
            try:
                try:
                    resp = await conn.request(raw, streaming=sc.streaming)
                except ConnectionLost:  # keep-alive expired while the other target ran: reconnect once
                    if samples is not None:
                        samples.reconnects += 1
                    await conn.open()
                    resp = await conn.request(raw, streaming=sc.streaming)
            except Exception as exc:  # count, reconnect, go on
                conn.close()
                if samples is not None:
                    samples.error(f"{type(exc).__name__}: {exc}")
                continue
            problem = check(target, sc.streaming, resp)
            if samples is None:
                if problem:
                    raise RuntimeError(f"warm-up request to {target.name} failed: {problem}")
                continue
            if problem:
                samples.error(problem)
                continue
            samples.ok += 1
            samples.latency_ms.append((resp.end - resp.t0) * 1000)
            if sc.streaming:
                samples.ttft_ms.append((resp.first - resp.t0) * 1000)
            if target.gateway:
                ov = resp.headers.get(b"x-modelyard-overhead-ms")
                if ov is not None:
                    samples.overhead_header_ms.append(float(ov))

    await target.ensure(sc.concurrency)
    await asyncio.gather(*(worker(c) for c in target.conns[:sc.concurrency]))


def split(total: int, block: int) -> list[int]:
    """`total` requests as near-equal blocks of about `block`."""
    count = max(1, math.ceil(total / block))
    base, extra = divmod(total, count)
    return [base + (1 if i < extra else 0) for i in range(count)]


async def idle_cpu_rate(pid: int, seconds: float = 2.0) -> float:
    """CPU the idle gateway burns (timers, the usage writer waking), in ns per second."""
    c0, t0 = cpu_ns(pid), time.perf_counter()
    await asyncio.sleep(seconds)
    return (cpu_ns(pid) - c0) / (time.perf_counter() - t0)


async def run_scenario(sc: Scenario, stub: Target, gw: Target, servers: Servers, args, idle_ns_per_s: float) -> dict:
    gpid, spid = servers.gateway.pid, servers.stub.pid
    for t in (stub, gw):
        await run_block(t, sc, args.warmup, None)
    await asyncio.sleep(USAGE_FLUSH_WAIT_S)  # the warm-up's usage rows are written before measuring starts

    res = {stub.name: TargetSamples(), gw.name: TargetSamples()}
    block = args.block or max(100, 8 * sc.concurrency)
    blocks = split(args.requests, block)
    g_ns0, g_tick0, s_ns0, split0 = cpu_ns(gpid), cpu_ticks_s(gpid), cpu_ns(spid), thread_split(gpid)
    wall0 = time.perf_counter()
    for i, n in enumerate(blocks):
        for t in ((stub, gw) if i % 2 == 0 else (gw, stub)):  # alternate who goes first
            s = res[t.name]
            grw0, srw0, gx0 = io_syscalls(gpid), io_syscalls(spid), ctx_switches(gpid)
            g0, s0, c0, w0 = cpu_ns(gpid), cpu_ns(spid), time.process_time(), time.perf_counter()
            await run_block(t, sc, n, s)
            s.wall_s += time.perf_counter() - w0
            s.client_cpu_s += time.process_time() - c0
            s.gateway_cpu_ns += cpu_ns(gpid) - g0
            s.stub_cpu_ns += cpu_ns(spid) - s0
            for acc, before, after in ((s.gateway_rw, grw0, io_syscalls(gpid)), (s.stub_rw, srw0, io_syscalls(spid)),
                                       (s.gateway_ctx, gx0, ctx_switches(gpid))):
                acc[0] += after[0] - before[0]
                acc[1] += after[1] - before[1]
    await asyncio.sleep(USAGE_FLUSH_WAIT_S)  # let the usage writer write the last rows: that CPU is the gateway's too
    wall = time.perf_counter() - wall0
    g_total_ns, g_total_tick_s = cpu_ns(gpid) - g_ns0, cpu_ticks_s(gpid) - g_tick0
    s_total_ns = cpu_ns(spid) - s_ns0
    threads = [b - a for a, b in zip(split0, thread_split(gpid))]
    out = summarize(sc, res[stub.name], res[gw.name], wall=wall, g_total_ns=g_total_ns, g_total_tick_s=g_total_tick_s,
                    s_total_ns=s_total_ns, idle_ns_per_s=idle_ns_per_s, blocks=blocks)
    n = out["requests_per_target"]
    # Over the whole window: the event-loop thread (every request) and the worker threads
    # (the usage writer's batched INSERTs run in asyncio.to_thread).
    out["gateway_cpu"].update(event_loop_thread_ms_per_request=threads[0] / n / 1e6,
                              worker_threads_ms_per_request=threads[1] / n / 1e6,
                              event_loop_thread_voluntary_switches_per_request=threads[2] / n,
                              worker_threads_voluntary_switches_per_request=threads[3] / n)
    return out


# ---------------------------------------------------------------------------------------------
# statistics and report


def dist(values: list[float]) -> dict:
    """n, p50/p90/p99 (`percentile`: linear interpolation), mean and max of `values`."""
    return {"n": len(values), **{f"p{p}": percentile(values, p) for p in (50, 90, 99)},
            "mean": sum(values) / len(values) if values else None, "max": max(values) if values else None}


def _sub(a, b):
    return None if a is None or b is None else a - b


def summarize(sc: Scenario, stub: TargetSamples, gw: TargetSamples, *, wall: float, g_total_ns: int, g_total_tick_s: float,
              s_total_ns: int, idle_ns_per_s: float, blocks: list[int]) -> dict:
    n_gw = max(gw.ok + gw.errors, 1)
    n_stub = max(stub.ok + stub.errors, 1)
    # The headline: all the gateway's CPU over the scenario window (its blocks, the usage rows written
    # whenever the writer woke, the tail flush), less what it burns idle while the stub's blocks ran.
    idle_outside_ns = idle_ns_per_s * max(wall - gw.wall_s, 0.0)
    cpu_ms = (g_total_ns - idle_outside_ns) / n_gw / 1e6
    lat_s, lat_g = dist(stub.latency_ms), dist(gw.latency_ms)
    out = {
        "scenario": sc.name, "concurrency": sc.concurrency, "streaming": sc.streaming,
        "requests_per_target": n_gw, "blocks": blocks,
        "stub": {"latency_ms": lat_s, "ttft_ms": dist(stub.ttft_ms) if sc.streaming else None,
                 "ok": stub.ok, "errors": stub.errors, "error_examples": stub.error_examples,
                 "reconnects": stub.reconnects, "throughput_rps": stub.ok / stub.wall_s if stub.wall_s else None,
                 "cpu_ms_per_request": stub.stub_cpu_ns / n_stub / 1e6,
                 "read_write_syscalls_per_request": [x / n_stub for x in stub.stub_rw],
                 "client_cpu_ms_per_request": stub.client_cpu_s * 1000 / n_stub,
                 "gateway_cpu_ms_per_request_while_idle": stub.gateway_cpu_ns / n_stub / 1e6},
        "gateway": {"latency_ms": lat_g, "ttft_ms": dist(gw.ttft_ms) if sc.streaming else None,
                    "ok": gw.ok, "errors": gw.errors, "error_examples": gw.error_examples,
                    "reconnects": gw.reconnects, "throughput_rps": gw.ok / gw.wall_s if gw.wall_s else None,
                    "self_reported_overhead_ms": dist(gw.overhead_header_ms),
                    "client_cpu_ms_per_request": gw.client_cpu_s * 1000 / n_gw,
                    "stub_cpu_ms_per_proxied_request": gw.stub_cpu_ns / n_gw / 1e6,
                    "read_write_syscalls_per_request": [x / n_gw for x in gw.gateway_rw],
                    "stub_read_write_syscalls_per_proxied_request": [x / n_gw for x in gw.stub_rw],
                    "context_switches_per_request": [x / n_gw for x in gw.gateway_ctx]},
        "added_ms": {"p50": _sub(lat_g["p50"], lat_s["p50"]), "p90": _sub(lat_g["p90"], lat_s["p90"]),
                     "p99": _sub(lat_g["p99"], lat_s["p99"]), "mean": _sub(lat_g["mean"], lat_s["mean"])},
        "added_ttft_ms": ({"p50": _sub(percentile(gw.ttft_ms, 50), percentile(stub.ttft_ms, 50)),
                           "p99": _sub(percentile(gw.ttft_ms, 99), percentile(stub.ttft_ms, 99))} if sc.streaming else None),
        "gateway_cpu": {
            "ms_per_request": cpu_ms,
            "ms_per_request_in_gateway_blocks_only": gw.gateway_cpu_ns / n_gw / 1e6,
            "ms_per_request_whole_window_ticks": g_total_tick_s * 1000 / n_gw,
            "window_s": wall, "window_cpu_s": g_total_ns / 1e9, "idle_correction_s": idle_outside_ns / 1e9,
        },
        "target_cpu_ms": TARGET_CPU_MS[sc.streaming],
    }
    out["verdicts"] = verdicts(out)
    return out


def verdicts(r: dict) -> dict:
    v = {}
    target = TARGET_CPU_MS[r["streaming"]]
    errors = r["stub"]["errors"] + r["gateway"]["errors"]
    v[f"CPU <= {target} ms/request"] = r["gateway_cpu"]["ms_per_request"] <= target and errors == 0
    if r["concurrency"] == 1:
        added = r["added_ms"]["p50"]
        v[f"p50 added latency <= {TARGET_ADDED_P50_MS_C1} ms"] = added is not None and added <= TARGET_ADDED_P50_MS_C1
    return v


def machine() -> dict:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--", "src"], cwd=ROOT, capture_output=True,
                                    text=True).stdout.strip())
    except OSError:
        commit, dirty = "", False
    return {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "nproc": os.cpu_count(),
            "cpu": model, "python": platform.python_version(), "platform": platform.platform(),
            "modelyard_commit": commit + ("+dirty src" if dirty else "")}


def _f(x, fmt="{:.2f}") -> str:
    return "-" if x is None else fmt.format(x)


def _ratio(x: float, lo: float, hi: float) -> str:
    return f"{x / lo:.2f}x" if lo == hi else f"{x / hi:.2f}-{x / lo:.2f}x"


def print_report(meta: dict, results: list[dict]) -> None:
    print()
    print(f"modelyard gateway overhead — {meta['date']}")
    print(f"machine: {meta['nproc']} CPUs ({meta['cpu']}), Python {meta['python']}, {meta['platform']}, "
          f"modelyard {meta['modelyard_commit']}")
    print(f"{meta['requests']} measured requests per target and scenario, in interleaved blocks, after "
          f"{meta['warmup']} warm-up requests each; usage recording and metrics on")
    print(f"gateway idle CPU: {meta['idle_cpu_ms_per_s']:.3f} ms per second")
    print()
    print("Latency, ms (send to last byte; TTFT = to the first content chunk)")
    hdr = f"{'scenario':<20} {'stub p50':>8} {'stub p99':>8} {'gw p50':>8} {'gw p99':>8} {'+p50':>7} {'+p99':>7} {'+TTFT p50':>9} {'gw hdr p50':>10} {'errors':>6}"
    print(hdr)
    print("-" * len(hdr))
    for r in results:
        s, g = r["stub"], r["gateway"]
        print(f"{r['scenario']:<20} {_f(s['latency_ms']['p50']):>8} {_f(s['latency_ms']['p99']):>8} "
              f"{_f(g['latency_ms']['p50']):>8} {_f(g['latency_ms']['p99']):>8} {_f(r['added_ms']['p50'], '{:+.2f}'):>7} "
              f"{_f(r['added_ms']['p99'], '{:+.2f}'):>7} "
              f"{_f(r['added_ttft_ms']['p50'] if r['added_ttft_ms'] else None, '{:+.2f}'):>9} "
              f"{_f(g['self_reported_overhead_ms']['p50'], '{:.3f}'):>10} {s['errors'] + g['errors']:>6}")
    print()
    print("CPU per request, ms (gateway: its whole CPU over the scenario ÷ requests it proxied)")
    hdr = (f"{'scenario':<20} {'gateway':>8} {'(blocks)':>8} {'target':>6} {'/target':>7} {'vs MLflow':>11} "
           f"{'vs LiteLLM':>11} {'stub':>6} {'client':>7} {'gw rps':>7} {'stub rps':>8}")
    print(hdr)
    print("-" * len(hdr))
    for r in results:
        c = r["gateway_cpu"]["ms_per_request"]
        st = r["streaming"]
        print(f"{r['scenario']:<20} {c:>8.3f} {r['gateway_cpu']['ms_per_request_in_gateway_blocks_only']:>8.3f} "
              f"{TARGET_CPU_MS[st]:>6.1f} {c / TARGET_CPU_MS[st]:>6.2f}x "
              f"{_ratio(c, *REFERENCE_CPU_MS['MLflow AI gateway'][st]):>11} "
              f"{_ratio(c, *REFERENCE_CPU_MS['LiteLLM proxy'][st]):>11} {r['stub']['cpu_ms_per_request']:>6.3f} "
              f"{r['gateway']['client_cpu_ms_per_request']:>7.3f} {_f(r['gateway']['throughput_rps'], '{:.0f}'):>7} "
              f"{_f(r['stub']['throughput_rps'], '{:.0f}'):>8}")
    print("  (blocks) = gateway CPU inside its own blocks only; stub = stub CPU per direct request; client = this "
          "load generator's CPU per gateway request")
    print("  references, ms CPU/request (non-streaming; streaming): MLflow 0.9; 1.3-2 — LiteLLM 7-9; 17-26")
    print()
    print("System calls, context switches and threads, per request (from /proc/PID/io, /proc/PID/task/*/{status,schedstat}); "
          "worker threads = the usage writer's INSERTs")
    hdr = (f"{'scenario':<20} {'gw reads':>8} {'gw writes':>9} {'gw vol cs':>9} {'gw invol':>8} "
           f"{'stub r/w direct':>15} {'stub r/w proxied':>16} {'stub CPU proxied':>16}   "
           f"{'gw CPU: loop thread':>19} {'worker threads':>14} {'worker vol cs':>13}")
    print(hdr)
    print("-" * len(hdr))
    for r in results:
        g, s = r["gateway"], r["stub"]
        rw, cs = g["read_write_syscalls_per_request"], g["context_switches_per_request"]
        sd, sp = s["read_write_syscalls_per_request"], g["stub_read_write_syscalls_per_proxied_request"]
        print(f"{r['scenario']:<20} {rw[0]:>8.2f} {rw[1]:>9.2f} {cs[0]:>9.2f} {cs[1]:>8.2f} "
              f"{sd[0]:>7.2f}/{sd[1]:<7.2f} {sp[0]:>8.2f}/{sp[1]:<7.2f} {g['stub_cpu_ms_per_proxied_request']:>13.3f} ms   "
              f"{r['gateway_cpu']['event_loop_thread_ms_per_request']:>16.3f} ms {r['gateway_cpu']['worker_threads_ms_per_request']:>11.3f} ms "
              f"{r['gateway_cpu']['worker_threads_voluntary_switches_per_request']:>13.2f}")
    print()
    print("Verdicts")
    for r in results:
        for name, ok in r["verdicts"].items():
            print(f"  {r['scenario']:<20} {name:<32} {'met' if ok else 'NOT MET'}")
    for r in results:
        for who in ("stub", "gateway"):
            if r[who]["errors"]:
                print(f"  {r['scenario']}: {r[who]['errors']} {who} errors, e.g. {r[who]['error_examples'][:2]}")


# ---------------------------------------------------------------------------------------------
# main


def usage_check(servers: Servers) -> dict:
    """The usage rows and the request counter the gateway kept: one per request it answered."""
    base = f"http://127.0.0.1:{servers.gateway_port}"
    rows = _api(base, servers.admin_key, "GET", "/api/usage?days=1")["data"]
    bench = [r for r in rows if r["endpoint"] == "bench"]
    scrape = urllib.request.Request(base + "/metrics", headers={"Authorization": f"Bearer {servers.admin_key}"})
    with urllib.request.urlopen(scrape, timeout=10) as r:
        metrics = r.read().decode()
    counted = 0.0
    for line in metrics.splitlines():
        if line.startswith("modelyard_requests_total{") and 'endpoint="bench"' in line:
            counted += float(line.rsplit(" ", 1)[1])
    return {"usage_rows": sum(r["requests"] for r in bench), "usage_errors": sum(r["errors"] or 0 for r in bench),
            "usage_cost_usd": sum(r["cost_usd"] or 0 for r in bench), "metrics_requests": counted}


async def measure(servers: Servers, args) -> tuple[dict, list[dict]]:
    stub = Target("stub", servers.stub_port, servers.admin_key, gateway=False)
    gw = Target("gateway", servers.gateway_port, servers.admin_key, gateway=True)
    try:
        idle = await idle_cpu_rate(servers.gateway.pid)
        results = []
        for sc in SCENARIOS:
            t0 = time.perf_counter()
            r = await run_scenario(sc, stub, gw, servers, args, idle)
            print(f"  {sc.name:<20} done in {time.perf_counter() - t0:5.1f}s: gateway {r['gateway_cpu']['ms_per_request']:.3f} "
                  f"ms CPU/request, +{_f(r['added_ms']['p50'])} ms p50", flush=True)
            results.append(r)
        return {"idle_cpu_ms_per_s": idle / 1e6}, results
    finally:
        stub.close()
        gw.close()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=2000, help="measured requests per scenario and target (default 2000)")
    p.add_argument("--quick", action="store_true", help="300 requests per scenario and target")
    p.add_argument("--warmup", type=int, default=100, help="warm-up requests per scenario and target (default 100)")
    p.add_argument("--block", type=int, default=0,
                   help="requests per interleaved block (default: 100, or 8 x concurrency when larger)")
    p.add_argument("--scenarios", default="", help="comma-separated subset, e.g. json_c1,stream_c32")
    p.add_argument("--profile", action="store_true",
                   help="instead of measuring, profile the gateway under the same load (see bench/_profile.py)")
    p.add_argument("--profiler", choices=("auto", "py-spy", "cprofile"), default="auto",
                   help="with --profile: py-spy (sampling, all threads) or cProfile (main thread, exact call counts)")
    p.add_argument("--keep-home", action="store_true", help="keep the temporary MODELYARD_HOME (logs, database)")
    p.add_argument("--out", type=Path, default=RESULTS / "gateway_overhead.json")
    args = p.parse_args()
    if args.quick:
        args.requests = 300
    if args.scenarios:
        wanted = set(args.scenarios.split(","))
        SCENARIOS[:] = [s for s in SCENARIOS if s.key in wanted]
        if not SCENARIOS:
            p.error("no scenario matches --scenarios")

    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass

    home = Path(tempfile.mkdtemp(prefix="modelyard-bench-"))
    t_start = time.perf_counter()
    try:
        if args.profile:
            import _profile
            return _profile.run(args, home, sys.modules[__name__])
        servers = start_servers(home)
        meta = machine()
        meta.update(requests=args.requests, warmup=args.warmup, gateway_children=gateway_processes(servers),
                    stub_port=servers.stub_port, gateway_port=servers.gateway_port)
        print(f"stub pid {servers.stub.pid} on :{servers.stub_port}, gateway pid {servers.gateway.pid} on "
              f":{servers.gateway_port} (child processes: {meta['gateway_children'] or 'none'}); home {home}", flush=True)
        extra, results = asyncio.run(measure(servers, args))
        meta.update(extra)
        meta["accounting"] = usage_check(servers)
        meta["runtime_s"] = time.perf_counter() - t_start
        print_report(meta, results)
        sent = sum(r["requests_per_target"] for r in results) + len(results) * args.warmup
        acc = meta["accounting"]
        print(f"\nAccounting: {acc['usage_rows']} usage rows and {acc['metrics_requests']:.0f} counted requests for "
              f"{sent} sent through the gateway; recorded cost ${acc['usage_cost_usd']:.6f} "
              f"(expected ${sent * (10 + 40) / 1e6:.6f})")
        meta["accounting"]["sent"] = sent
        meta["accounting"]["ok"] = acc["usage_rows"] == sent and int(acc["metrics_requests"]) == sent
        if not meta["accounting"]["ok"]:
            print("  MISMATCH: the gateway did not record every request it answered")
        code = servers.gateway.stop()
        meta["gateway_exit_code"] = code
        servers.stub.stop()
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"meta": meta, "scenarios": results}, indent=2))
        print(f"Results: {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out}; "
              f"run took {meta['runtime_s']:.0f}s")
        errors = sum(r["stub"]["errors"] + r["gateway"]["errors"] for r in results)
        return 1 if errors or not meta["accounting"]["ok"] else 0
    except KeyboardInterrupt:
        print("\ninterrupted; stopping the servers", file=sys.stderr)
        return 130
    finally:
        _procs.stop_all()
        if args.keep_home:
            print(f"MODELYARD_HOME kept: {home}", file=sys.stderr)
        else:
            shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
