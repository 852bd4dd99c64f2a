"""``gateway_overhead.py --profile``: where the gateway's CPU goes, by library, in µs per request.

The same servers and load as the measurement, but only through the gateway
(no stub blocks) and with a profiler on the gateway process, one profile per
scenario:

- **py-spy** (default when installed: ``pip install py-spy``): a sampling
  profiler outside the process, 1000 samples a second, every thread (so the
  usage writer's database batches are seen), idle stacks dropped — so samples
  are proportional to CPU time, and the gateway runs at nearly full speed.
  Time inside C code (uvloop, httptools, pydantic-core, orjson) is charged to
  the Python frame that called it; the event loop's own C code (epoll, socket
  reads and writes, callback scheduling) shows as a stack ending in
  ``asyncio.Runner.run`` and is reported as *event loop*.
- **cProfile** (``--profiler cprofile``): deterministic, main thread only, with
  exact call counts; C functions called from Python (httptools' parser,
  uvloop's transport writes, orjson, pydantic-core) get their own rows. It
  slows Python code by a factor of about two, unevenly (many small calls are
  inflated most), so its shares are less faithful than py-spy's.

Each profile is summarized three ways: *self* time by package (where the CPU
is spent), *owner* (the same, with standard-library time charged to the
nearest third-party or modelyard caller: ``contextlib`` under anyio is
anyio's cost), and the functions with the most inclusive time. Shares become
µs per request by multiplying with the gateway's CPU per request measured
(from /proc) during the profiled window.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections import Counter, defaultdict
from pathlib import Path

from _procs import cpu_ns

HERE = Path(__file__).resolve().parent
EVENT_LOOP = "event loop (uvloop C: epoll, socket I/O, callbacks)"
_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>.*?)(?::(?P<line>\d+))?\)$")
_STDLIB_MARK = re.compile(r"/lib/python3\.\d+/")


# -- categories ------------------------------------------------------------------------------------

_PKG_ALIASES = {"pydantic_core": "pydantic", "typing_extensions": "stdlib typing", "_pytest": "pytest"}


def category(path: str, func: str = "") -> str:
    """The package a frame belongs to: 'uvicorn', 'modelyard.gateway', 'stdlib asyncio', ..."""
    if "/site-packages/" in path:
        top = path.split("/site-packages/", 1)[1].split("/", 1)[0]
        top = top[:-3] if top.endswith(".py") else top
        return _PKG_ALIASES.get(top, top)
    for mark in ("/src/modelyard/", "/modelyard/"):
        if mark in path:
            sub = path.split(mark, 1)[1].split("/", 1)[0]
            return "modelyard." + (sub[:-3] if sub.endswith(".py") else sub)
    if "/bench/" in path:
        return "bench"
    if path.startswith("<frozen"):
        return "stdlib " + path[len("<frozen "):-1].split(".")[0]
    m = _STDLIB_MARK.search(path)
    if m:
        top = path[m.end():].split("/", 1)[0]
        return "stdlib " + (top[:-3] if top.endswith(".py") else top)
    return path or "?"


def is_stdlib(cat: str) -> bool:
    return cat.startswith("stdlib")


def _is_loop_leaf(func: str, path: str) -> bool:
    return path.endswith(("asyncio/runners.py", "asyncio/base_events.py", "uvicorn/_compat.py")) and func in (
        "Runner.run", "run_until_complete", "BaseEventLoop.run_until_complete", "asyncio_run", "run", "run_forever")


# -- py-spy -----------------------------------------------------------------------------------------


def pyspy_binary() -> str | None:
    local = Path(sys.executable).with_name("py-spy")
    return str(local) if local.exists() else shutil.which("py-spy")


class PySpy:
    name = "py-spy"

    def __init__(self, binary: str, pid: int, out_dir: Path) -> None:
        self.binary, self.pid, self.out_dir = binary, pid, out_dir
        self.proc: subprocess.Popen | None = None
        self.out: Path | None = None

    def argv_prefix(self) -> list[str] | None:
        return None

    async def start(self, label: str, servers) -> None:
        self.out = self.out_dir / f"{label}.pyspy.txt"
        self.proc = subprocess.Popen(
            [self.binary, "record", "--pid", str(self.pid), "--rate", "1000", "--format", "raw", "--full-filenames",
             "--function", "--nonblocking", "--output", str(self.out)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        await asyncio.sleep(1.0)  # attach
        if self.proc.poll() is not None:
            raise RuntimeError("py-spy failed: " + self.proc.stdout.read().decode(errors="replace")[-2000:])
        self.cpu0 = cpu_ns(self.proc.pid)

    async def stop(self, servers) -> dict:
        assert self.proc is not None and self.out is not None
        spy_cpu = cpu_ns(self.proc.pid) - self.cpu0
        self.proc.send_signal(signal.SIGINT)
        text = (await asyncio.to_thread(self.proc.communicate, timeout=60))[0].decode(errors="replace")
        m = re.search(r"Samples: (\d+) Errors: (\d+)", text)
        info = {"samples": int(m.group(1)) if m else None, "errors": int(m.group(2)) if m else None,
                "profiler_cpu_s": spy_cpu / 1e9, "file": str(self.out)}
        info.update(analyze_pyspy(self.out))
        return info


def analyze_pyspy(path: Path) -> dict:
    self_c, owner_c, incl_fn, self_fn = Counter(), Counter(), Counter(), Counter()
    writer_thread = 0
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = []
        for raw in stack.split(";") if stack else []:
            m = _FRAME.match(raw)
            if m:
                frames.append((m.group("func"), m.group("file")))
        if not frames:
            self_c["?"] += n
            owner_c["?"] += n
            continue
        if any(f.endswith("concurrent/futures/thread.py") for _, f in frames):
            writer_thread += n
        func, file = frames[-1]
        if _is_loop_leaf(func, file):
            leaf = owner = EVENT_LOOP
        else:
            leaf = category(file, func)
            owner = leaf
            if is_stdlib(leaf):
                for f2, p2 in reversed(frames):
                    c2 = category(p2, f2)
                    if not is_stdlib(c2):
                        owner = c2
                        break
        self_c[leaf] += n
        owner_c[owner] += n
        self_fn[f"{func} ({_short(file)})"] += n
        for key in {f"{f} ({_short(p)})" for f, p in frames}:
            incl_fn[key] += n
    return {"total_samples": total, "self": dict(self_c), "owner": dict(owner_c), "self_functions": dict(self_fn),
            "inclusive_functions": dict(incl_fn), "worker_thread_samples": writer_thread}


def _short(path: str) -> str:
    for mark in ("/site-packages/", "/src/"):
        if mark in path:
            return path.split(mark, 1)[1]
    m = _STDLIB_MARK.search(path)
    return path[m.end():] if m else path


# -- cProfile ---------------------------------------------------------------------------------------


class CProfile:
    name = "cProfile"

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir
        self.segment = 0
        self.pokes = 0

    def argv_prefix(self) -> list[str]:
        return [sys.executable, str(HERE / "_cprofile_gateway.py"), str(self.out_dir)]

    async def _signal(self, servers, sig: int, ack: str) -> None:
        os.kill(servers.gateway.pid, sig)
        path = self.out_dir / ack
        deadline = time.monotonic() + 30
        while not path.exists():  # a request wakes the loop so the Python-level handler runs
            if time.monotonic() > deadline:
                raise RuntimeError(f"the profiled gateway did not acknowledge {ack}")
            await asyncio.to_thread(_get, f"http://127.0.0.1:{servers.gateway_port}/healthz")
            self.pokes += 1
            await asyncio.sleep(0.05)

    async def start(self, label: str, servers) -> None:
        self.label = label
        self.pokes = 0
        await self._signal(servers, signal.SIGUSR1, f"ack-started-{self.segment}")

    async def stop(self, servers) -> dict:
        await self._signal(servers, signal.SIGUSR2, f"ack-dumped-{self.segment}")
        src = self.out_dir / f"segment-{self.segment}.prof"
        dst = self.out_dir / f"{self.label}.prof"
        src.rename(dst)
        self.segment += 1
        info = {"file": str(dst), "healthz_pokes": self.pokes}
        info.update(analyze_cprofile(dst))
        return info


def _get(url: str) -> None:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            r.read()
    except OSError:
        pass


_BUILTIN_OWNERS = (("uvloop", "uvloop (C)"), ("httptools", "httptools (C)"), ("orjson", "orjson (C)"),
                   ("pydantic_core", "pydantic"), ("_hashlib", "stdlib hashlib (C)"), ("sqlite3", "sqlite3 (C)"),
                   ("_asyncio", "stdlib asyncio (C)"))


def analyze_cprofile(path: Path) -> dict:
    import pstats

    stats = pstats.Stats(str(path)).stats  # (file, line, name) -> (cc, nc, tt, ct, callers)

    def cat_of(fn) -> str:
        file, _, name = fn
        if file == "~":
            for mark, cat in _BUILTIN_OWNERS:
                if mark in name:
                    return cat
            return ""  # a plain builtin: charged to its callers
        return category(file, name)

    cats = {fn: cat_of(fn) for fn in stats}
    self_c: Counter = Counter()
    owner_c: Counter = Counter()
    calls = 0
    self_fn: Counter = Counter()
    incl_fn: dict[str, float] = {}
    ncalls: dict[str, int] = {}

    def owner_of(fn, depth=0) -> str:
        c = cats.get(fn, "")
        if c and not is_stdlib(c):
            return c
        if depth > 8:
            return c or "?"
        callers = stats[fn][4] if fn in stats else {}
        if not callers:
            return c or "?"
        best = max(callers.items(), key=lambda kv: kv[1][2])[0]  # the caller that spent the most here
        return owner_of(best, depth + 1)

    for fn, (cc, nc, tt, ct, callers) in stats.items():
        calls += nc
        label = f"{fn[2]} ({_short(fn[0])}:{fn[1]})" if fn[0] != "~" else fn[2]
        self_fn[label] += tt
        incl_fn[label] = max(incl_fn.get(label, 0.0), ct)
        ncalls[label] = ncalls.get(label, 0) + nc
        cat = cats[fn]
        if cat:
            self_c[cat] += tt
            owner_c[cat if not is_stdlib(cat) else owner_of(fn)] += tt
            continue
        # a plain builtin (dict.get, isinstance, ...): split its time over its callers
        edge_total = sum(e[2] for e in callers.values()) or 1.0
        for caller, edge in callers.items():
            share = tt * edge[2] / edge_total
            ccat = cats.get(caller) or "?"
            self_c[ccat] += share
            owner_c[ccat if not is_stdlib(ccat) else owner_of(caller)] += share
    total = sum(self_c.values())
    return {"total_s": total, "function_calls": calls, "self": dict(self_c), "owner": dict(owner_c),
            "self_functions": dict(self_fn), "inclusive_functions": incl_fn, "ncalls": ncalls}


# -- the run ----------------------------------------------------------------------------------------


async def _profile_all(args, servers, bench, profiler, out_dir: Path) -> list[dict]:
    gw = bench.Target("gateway", servers.gateway_port, servers.admin_key, gateway=True)
    results = []
    try:
        for sc in bench.SCENARIOS:
            await bench.run_block(gw, sc, args.warmup, None)
            await asyncio.sleep(bench.USAGE_FLUSH_WAIT_S)
            await profiler.start(sc.key, servers)
            c0 = cpu_ns(servers.gateway.pid)
            samples = bench.Samples()
            t0 = time.perf_counter()
            await bench.run_block(gw, sc, args.requests, samples)
            wall = time.perf_counter() - t0
            await asyncio.sleep(bench.USAGE_FLUSH_WAIT_S)
            cpu = cpu_ns(servers.gateway.pid) - c0
            info = await profiler.stop(servers)
            n = samples.ok + samples.errors
            r = {"scenario": sc.name, "key": sc.key, "requests": n, "errors": samples.errors,
                 "cpu_ms_per_request_profiled": cpu / n / 1e6, "wall_s": wall,
                 "latency_p50_ms": bench.pct(samples.latency_ms, 50), "profile": info}
            results.append(r)
            print(f"  {sc.name:<20} profiled: {n} requests, {r['cpu_ms_per_request_profiled']:.3f} ms gateway CPU/request "
                  f"(under {profiler.name})", flush=True)
    finally:
        gw.close()
    return results


def _reference_cpu(bench) -> dict[str, float]:
    """ms CPU/request per scenario from the last measurement run, to scale cProfile's inflated shares."""
    path = bench.RESULTS / "gateway_overhead.json"
    try:
        data = json.loads(path.read_text())
        return {("stream" if s["streaming"] else "json") + f"_c{s['concurrency']}": s["gateway_cpu"]["ms_per_request"]
                for s in data["scenarios"]}
    except (OSError, ValueError, KeyError):
        return {}


def print_profile(r: dict, profiler_name: str, reference_ms: float | None) -> None:
    p = r["profile"]
    n = r["requests"]
    measured = r["cpu_ms_per_request_profiled"]
    # py-spy barely slows the gateway: its window's CPU/request is the figure. cProfile inflates it:
    # scale its shares to the unprofiled measurement when there is one.
    base_ms = reference_ms if (profiler_name == "cProfile" and reference_ms) else measured
    total = p["total_samples"] if profiler_name == "py-spy" else p["total_s"]
    print()
    print(f"== {r['scenario']}: {n} requests through the gateway, {measured:.3f} ms gateway CPU/request under {profiler_name}"
          + (f"; µs below scaled to the unprofiled {base_ms:.3f} ms" if base_ms != measured else ""))
    if profiler_name == "py-spy":
        print(f"   {p['total_samples']} samples ({p.get('errors')} incomplete dropped), "
              f"{p['worker_thread_samples'] / max(total, 1):.1%} in worker threads (usage writer); "
              f"py-spy itself used {p['profiler_cpu_s']:.2f} s CPU")
    else:
        print(f"   {p['function_calls'] / n:.0f} Python/C function calls per request; {r['profile']['healthz_pokes']} "
              f"/healthz requests to deliver the signals are included")
    print(f"   {'package (self time)':<52} {'share':>6} {'µs/req':>7}   {'owner (stdlib charged to its caller)':<40} {'share':>6} {'µs/req':>7}")
    self_rows = sorted(p["self"].items(), key=lambda kv: -kv[1])
    owner_rows = sorted(p["owner"].items(), key=lambda kv: -kv[1])
    for i in range(max(len(self_rows), len(owner_rows))):
        left = right = ""
        if i < len(self_rows):
            k, v = self_rows[i]
            left = f"{k[:52]:<52} {v / total:>6.1%} {v / total * base_ms * 1000:>7.1f}"
        if i < len(owner_rows):
            k, v = owner_rows[i]
            right = f"{k[:40]:<40} {v / total:>6.1%} {v / total * base_ms * 1000:>7.1f}"
        if (i < len(self_rows) and self_rows[i][1] / total < 0.004) and (i >= len(owner_rows) or owner_rows[i][1] / total < 0.004):
            break
        print(f"   {left:<67}   {right}")
    print(f"   top functions by self time{'':<44} top functions by inclusive time")
    selfs = sorted(p["self_functions"].items(), key=lambda kv: -kv[1])[:22]
    incl = [kv for kv in sorted(p["inclusive_functions"].items(), key=lambda kv: -kv[1]) if kv[1] / total < 0.97
            and not kv[0].startswith(("<module>", "_run_", "main (", "Typer.", "Command.", "TyperGroup.", "Context.",
                                      "get_callback", "up (", "run (uvicorn", "Server.run", "asyncio_run",
                                      "Runner.run", "_main ("))][:22]
    for i in range(max(len(selfs), len(incl))):
        left = f"{selfs[i][1] / total:>6.1%} {selfs[i][1] / total * base_ms * 1000:>6.1f}µs {selfs[i][0][:58]:<58}" if i < len(selfs) else ""
        right = f"{incl[i][1] / total:>6.1%} {incl[i][1] / total * base_ms * 1000:>6.1f}µs {incl[i][0][:70]}" if i < len(incl) else ""
        print(f"   {left:<74} {right}")


def run(args, home: Path, bench) -> int:
    out_dir = bench.RESULTS / "profiles"
    out_dir.mkdir(parents=True, exist_ok=True)
    choice = args.profiler
    binary = pyspy_binary()
    if choice == "auto":
        choice = "py-spy" if binary else "cprofile"
    if choice == "py-spy" and not binary:
        print("py-spy is not installed (pip install py-spy); use --profiler cprofile", file=sys.stderr)
        return 2
    cprof = CProfile(out_dir) if choice == "cprofile" else None
    servers = bench.start_servers(home, gateway_argv_prefix=cprof.argv_prefix() if cprof else None)
    profiler = cprof or PySpy(binary, servers.gateway.pid, out_dir)
    meta = bench.machine()
    meta.update(requests=args.requests, warmup=args.warmup, profiler=profiler.name)
    print(f"profiling the gateway (pid {servers.gateway.pid}) with {profiler.name}; {args.requests} requests per scenario",
          flush=True)
    results = asyncio.run(_profile_all(args, servers, bench, profiler, out_dir))
    reference = _reference_cpu(bench)
    print(f"\nmodelyard gateway CPU profile — {meta['date']}; {meta['nproc']} CPUs, Python {meta['python']}")
    for r in results:
        print_profile(r, profiler.name, reference.get(r["key"]))
    out = bench.RESULTS / "gateway_profile.json"
    for r in results:  # keep the JSON readable: only the heavier functions
        for k in ("self_functions", "inclusive_functions", "ncalls"):
            if k in r["profile"]:
                items = sorted(r["profile"][k].items(), key=lambda kv: -kv[1])[:80]
                r["profile"][k] = dict(items)
    out.write_text(json.dumps({"meta": meta, "scenarios": results}, indent=2))
    print(f"\nProfiles: {out_dir.relative_to(bench.ROOT)}; summary: {out.relative_to(bench.ROOT)}")
    return 0
