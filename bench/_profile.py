"""``gateway_overhead.py --profile``: where the gateway's CPU goes, by library, in µs per request.

The same servers and load as the measurement, but only through the gateway
(no stub blocks) and with a profiler on the gateway process, one profile per
scenario:

- **py-spy** (default when installed: ``pip install py-spy``): a sampling
  profiler outside the process, 1000 samples a second, every thread, run
  ``--nonblocking`` (it never pauses the gateway, so the gateway runs at
  nearly full speed and idle threads are recognised). Time inside C code
  (uvloop, httptools, pydantic-core, orjson) is charged to the Python frame
  that called it; the event loop's own C code (epoll, socket reads, callback
  scheduling) is a stack ending in ``asyncio.Runner.run``, reported as *event
  loop*, and a leaf on a ``transport.write(...)`` line is reported as *socket
  writes* (the write syscall, which on loopback also delivers the data and
  wakes the reader). Caveats: a sample counts a thread that is runnable but
  preempted as busy, so on a crowded machine the socket-write and event-loop
  rows are overstated (perf's kernel share is the truer syscall cost); a
  worker thread waiting for the GIL is sometimes counted busy, so samples
  are never compared across threads: each thread class (event loop, workers)
  is scaled to the CPU it really used, read from /proc. Without pausing,
  some stacks come back cut short; inclusive times use whole stacks only.
- **perf** (when installed, alongside py-spy): ``perf record -e cpu-clock``
  on the gateway, summarized by shared object — kernel, the interpreter,
  uvloop, httptools, pydantic-core, orjson, SQLite — and CPython's GC.
- **cProfile** (``--profiler cprofile``): deterministic, main thread only, with
  exact call counts; C functions called from Python (httptools' parser,
  orjson, pydantic-core) get their own rows. It slows Python code by a
  factor of about two, unevenly (many small calls are inflated most), and it
  times wall-clock, so its shares are less faithful than py-spy's; its µs are
  scaled to the event-loop thread's CPU from the last measurement run.

Each profile is summarized three ways: *self* time by package (where the CPU
is spent), *owner* (the same, with standard-library time charged to the
nearest third-party or modelyard caller: ``contextlib`` under anyio is
anyio's cost), selected code paths with their inclusive time, and the
functions with the most self and inclusive time. Shares become µs per
request by multiplying with the CPU per request measured (from /proc) during
the profiled window.
"""

from __future__ import annotations

import asyncio
import json
import linecache
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from pathlib import Path

from _common import percentile
from _procs import cpu_ns, thread_split

HERE = Path(__file__).resolve().parent
EVENT_LOOP = "event loop (uvloop C: epoll, socket reads, callbacks)"
SOCKET_WRITES = "socket writes (transport.write: the syscall, waking the peer)"
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
             "--nonblocking", "--output", str(self.out)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        self.perf = Perf(perf_binary(), self.pid, self.out_dir) if perf_binary() else None
        if self.perf:
            self.perf.start(label)
        await asyncio.sleep(1.0)  # attach
        if self.proc.poll() is not None:
            raise RuntimeError("py-spy failed: " + self.proc.stdout.read().decode(errors="replace")[-2000:])
        self.cpu0 = cpu_ns(self.proc.pid)

    async def stop(self, servers) -> dict:
        assert self.proc is not None and self.out is not None
        spy_cpu = cpu_ns(self.proc.pid) - self.cpu0
        perf = await asyncio.to_thread(self.perf.stop) if self.perf else None
        self.proc.send_signal(signal.SIGINT)
        text = (await asyncio.to_thread(self.proc.communicate, timeout=60))[0].decode(errors="replace")
        m = re.search(r"Samples: (\d+) Errors: (\d+)", text)
        info = {"samples": int(m.group(1)) if m else None, "errors": int(m.group(2)) if m else None,
                "profiler_cpu_s": spy_cpu / 1e9, "file": str(self.out)}
        info.update(analyze_pyspy(self.out))
        info["perf"] = perf
        return info


_WRITE_CALL = re.compile(r"transport\.write\(|transport\.writelines\(")


def _is_socket_write(file: str, line: int | None) -> bool:
    """Whether the leaf sits on a line that writes to a socket transport (the time is the write syscall)."""
    if line is None or not (file.endswith("httptools_impl.py") or "/anyio/" in file or "/asyncio/" in file):
        return False
    return bool(_WRITE_CALL.search(linecache.getline(file, line).strip()))


def _thread_class(frames) -> str:
    """'worker' for a sample from a worker thread (the usage writer's asyncio.to_thread), else 'main'."""
    for func, file, _ in frames:
        if file.endswith(("concurrent/futures/thread.py", "/threading.py")) or "/sqlalchemy/" in file or "/store/usage.py" in file and func.endswith("_write_batch"):
            return "worker"
    return "main"


def analyze_pyspy(path: Path) -> dict:
    """Sample counts per thread class: self time by package, owner, function; inclusive time per function."""
    classes = {c: {"total": 0, "complete": 0, "self": Counter(), "owner": Counter(), "self_functions": Counter(),
                   "inclusive_functions": Counter()} for c in ("main", "worker")}
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        frames = []
        for raw in stack.split(";") if stack else []:
            m = _FRAME.match(raw)
            if m:
                frames.append((m.group("func"), m.group("file"), int(m.group("line")) if m.group("line") else None))
        cls = classes[_thread_class(frames)]
        cls["total"] += n
        if not frames:
            cls["self"]["?"] += n
            cls["owner"]["?"] += n
            continue
        func, file, lineno = frames[-1]
        if _is_loop_leaf(func, file):
            leaf = owner = EVENT_LOOP
        elif _is_socket_write(file, lineno):
            leaf = owner = SOCKET_WRITES
        else:
            leaf = category(file, func)
            owner = leaf
            if is_stdlib(leaf):
                for f2, p2, _ in reversed(frames):
                    c2 = category(p2, f2)
                    if not is_stdlib(c2):
                        owner = c2
                        break
        cls["self"][leaf] += n
        cls["owner"][owner] += n
        cls["self_functions"][f"{func} ({_short(file)})"] += n
        # Without pausing the process py-spy sometimes reads a stack cut short (outer frames missing):
        # inclusive time counts the frames a sample has, so it is a lower bound, tightest for inner frames.
        if frames[0][0] in _ROOTS:
            cls["complete"] += n
        for key in {f"{f} ({_short(p)})" for f, p, _ in frames}:
            cls["inclusive_functions"][key] += n
    return {"total_samples": sum(c["total"] for c in classes.values()),
            "worker_thread_samples": classes["worker"]["total"],
            "classes": {k: {kk: (dict(vv) if isinstance(vv, Counter) else vv) for kk, vv in v.items()} for k, v in classes.items()}}


def pyspy_us(p: dict, main_ms: float, worker_ms: float) -> dict:
    """Samples to µs per request, each thread class scaled to the CPU that class really used (from /proc).

    py-spy's idle detection is reliable for the event-loop thread but not for a worker thread that waits
    for the GIL, so samples are never compared across threads; each class gets its measured CPU.
    """
    out = {k: Counter() for k in ("self", "owner", "self_functions", "inclusive_functions")}
    for name, ms in (("main", main_ms), ("worker", worker_ms)):
        c = p["classes"][name]
        if not c["total"]:
            continue
        for k in ("self", "owner", "self_functions"):
            for key, v in c[k].items():
                out[k][key] += v / c["total"] * ms * 1000
        for key, v in c["inclusive_functions"].items():
            out["inclusive_functions"][key] += v / c["total"] * ms * 1000
    return {k: dict(v) for k, v in out.items()}


#: The outermost frame of a whole stack: the main thread (``python -m modelyard.cli``) or a worker thread.
_ROOTS = ("_run_module_as_main", "Thread._bootstrap", "<module>")


def _short(path: str) -> str:
    for mark in ("/site-packages/", "/src/"):
        if mark in path:
            return path.split(mark, 1)[1]
    m = _STDLIB_MARK.search(path)
    return path[m.end():] if m else path


# -- perf (native: kernel, interpreter, C extensions) ----------------------------------------------

_DSO_NAMES = [
    ("[kernel", "kernel (syscalls, loopback TCP, wake-ups)"), ("libpython", "Python interpreter (libpython)"),
    ("python3", "Python interpreter (libpython)"), ("loop.cpython", "uvloop (C)"), ("parser.cpython", "httptools (C)"),
    ("url_parser.cpython", "httptools (C)"), ("_pydantic_core", "pydantic-core (Rust)"), ("orjson", "orjson (Rust)"),
    ("libc.so", "libc (malloc, memcpy)"), ("libsqlite3", "SQLite"), ("_sqlite3", "SQLite"),
    ("libcrypto", "OpenSSL (sha256 of the API key)"), ("_hashlib", "OpenSSL (sha256 of the API key)"),
]
#: CPython's cyclic garbage collector, by symbol.
_GC_SYMBOLS = ("gc_collect_main", "visit_decref", "visit_reachable", "move_unreachable", "subtract_refs",
               "update_refs", "deduce_unreachable", "move_legacy_finalizers", "gc_collect_with_callback",
               "gc_collect_generations", "untrack_dicts", "untrack_tuples", "move_legacy_finalizer_reachable",
               "dict_traverse", "list_traverse", "tupletraverse", "subtype_traverse", "func_traverse")


def perf_binary() -> str | None:
    return shutil.which("perf")


class Perf:
    """``perf record`` on the gateway at the same time as py-spy: where CPU goes below Python."""

    def __init__(self, binary: str, pid: int, out_dir: Path) -> None:
        self.binary, self.pid, self.out_dir = binary, pid, out_dir
        self.proc: subprocess.Popen | None = None

    def start(self, label: str) -> None:
        self.out = self.out_dir / f"{label}.perf.data"
        for stale in (self.out, self.out.with_name(self.out.name + ".old")):
            stale.unlink(missing_ok=True)  # perf would keep the previous run as .old
        self.proc = subprocess.Popen([self.binary, "record", "-e", "cpu-clock", "-F", "999", "-p", str(self.pid),
                                      "-o", str(self.out)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def stop(self) -> dict | None:
        if self.proc is None:
            return None
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return None
        return analyze_perf(self.binary, self.out)


def _perf_report(binary: str, data: Path, sort: str) -> list[tuple[float, str]]:
    out = subprocess.run([binary, "report", "-i", str(data), "--sort", sort, "--stdio", "-g", "none", "-q"],
                         capture_output=True, text=True, timeout=120).stdout
    rows = []
    for line in out.splitlines():
        parts = line.split(None, 1)
        if len(parts) == 2 and parts[0].endswith("%"):
            try:
                rows.append((float(parts[0][:-1]), parts[1].strip()))
            except ValueError:
                pass
    return rows


def analyze_perf(binary: str, data: Path) -> dict | None:
    try:
        dsos = _perf_report(binary, data, "dso")
        syms = _perf_report(binary, data, "sym")
    except (OSError, subprocess.SubprocessError):
        return None
    if not dsos:
        return None
    groups: Counter = Counter()
    for share, dso in dsos:
        name = next((label for mark, label in _DSO_NAMES if mark in dso), "other: " + dso)
        groups[name] += share
    gc = sum(share for share, sym in syms if sym.split()[-1] in _GC_SYMBOLS)
    malloc = sum(share for share, sym in syms if sym.split()[-1] in ("_PyObject_Malloc", "_PyObject_Free", "malloc", "free",
                                                                     "_int_malloc", "_int_free", "pymalloc_alloc"))
    return {"dso_percent": dict(groups), "gc_percent": gc, "malloc_percent": malloc,
            "top_symbols": [(share, sym) for share, sym in syms[:15]]}


# -- cProfile ---------------------------------------------------------------------------------------


class CProfile:
    name = "cProfile"

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir
        # The launcher's segments and acknowledgements go to a folder emptied first: a stale
        # acknowledgement from an earlier run would be taken for this one's.
        self.work_dir = out_dir / "cprofile-segments"
        shutil.rmtree(self.work_dir, ignore_errors=True)
        self.work_dir.mkdir(parents=True)
        self.segment = 0
        self.pokes = 0

    def argv_prefix(self) -> list[str]:
        return [sys.executable, str(HERE / "_cprofile_gateway.py"), str(self.work_dir)]

    async def _signal(self, servers, sig: int, ack: str) -> None:
        os.kill(servers.gateway.pid, sig)
        path = self.work_dir / ack
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
        src = self.work_dir / f"segment-{self.segment}.prof"
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


def cprofile_us(p: dict, base_ms: float) -> dict:
    total = p["total_s"] or 1.0
    return {k: {key: v / total * base_ms * 1000 for key, v in p[k].items()}
            for k in ("self", "owner", "self_functions", "inclusive_functions")}


# -- the run ----------------------------------------------------------------------------------------


async def _profile_all(args, servers, bench, profiler, out_dir: Path) -> list[dict]:
    gw = bench.Target("gateway", servers.gateway_port, servers.admin_key, gateway=True)
    results = []
    try:
        for sc in bench.SCENARIOS:
            await bench.run_block(gw, sc, args.warmup, None)
            await asyncio.sleep(bench.USAGE_FLUSH_WAIT_S)
            await profiler.start(sc.key, servers)
            c0, split0 = cpu_ns(servers.gateway.pid), thread_split(servers.gateway.pid)
            samples = bench.TargetSamples()
            t0 = time.perf_counter()
            await bench.run_block(gw, sc, args.requests, samples)
            wall = time.perf_counter() - t0
            await asyncio.sleep(bench.USAGE_FLUSH_WAIT_S)
            cpu = cpu_ns(servers.gateway.pid) - c0
            threads = [b - a for a, b in zip(split0, thread_split(servers.gateway.pid))]
            info = await profiler.stop(servers)
            n = samples.ok + samples.errors
            r = {"scenario": sc.name, "key": sc.key, "requests": n, "errors": samples.errors,
                 "cpu_ms_per_request_profiled": cpu / n / 1e6, "wall_s": wall,
                 "event_loop_thread_ms_per_request": threads[0] / n / 1e6, "worker_threads_ms_per_request": threads[1] / n / 1e6,
                 "latency_p50_ms": percentile(samples.latency_ms, 50), "profile": info}
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
        return {("stream" if s["streaming"] else "json") + f"_c{s['concurrency']}":
                s["gateway_cpu"].get("event_loop_thread_ms_per_request", s["gateway_cpu"]["ms_per_request"])
                for s in data["scenarios"]}
    except (OSError, ValueError, KeyError):
        return {}


#: Code paths worth a line of their own (function names as profilers print them; the heaviest match is shown).
SELECTED = [
    "RequestResponseCycle.run_asgi", "run_asgi", "HttpToolsProtocol.data_received", "data_received",
    "ExceptionTelemetryMiddleware.__call__", "solve_dependencies",
    "_handle", "read_body", "_validate", "Pipeline.__call__", "Record.__call__", "Auth.__call__", "Policy.__call__",
    "dispatch", "OpenAICompatBackend._body", "OpenAICompatBackend._post", "_post", "OpenAICompatBackend._stream", "_stream",
    "AsyncClient.send", "AsyncConnectionPool.handle_async_request", "AsyncConnectionPool._assign_requests_to_connections",
    "Cookies.extract_cookies", "extract_cookies",
    "_events", "Record._watch", "_watch", "StreamingResponse.__call__", "Response.__call__", "json_response", "_headers",
    "Record._finish", "_finish", "GatewayMetrics.observe", "observe", "UsageWriter.submit", "submit", "UsageWriter._write_batch",
    "_write_batch", "new_id",
]


def print_profile(r: dict, profiler_name: str, reference_ms: float | None) -> None:
    p = r["profile"]
    n = r["requests"]
    measured = r["cpu_ms_per_request_profiled"]
    main_ms, worker_ms = r["event_loop_thread_ms_per_request"], r["worker_threads_ms_per_request"]
    print()
    print(f"== {r['scenario']}: {n} requests through the gateway; gateway CPU {measured:.3f} ms/request under {profiler_name} "
          f"(event-loop thread {main_ms:.3f}, worker threads {worker_ms:.3f})")
    if profiler_name == "py-spy":
        us = pyspy_us(p, main_ms, worker_ms)
        whole = sum(c["complete"] for c in p["classes"].values()) / max(p["total_samples"], 1)
        print(f"   {p['total_samples']} samples ({whole:.0%} with the whole stack), {p.get('errors')} unreadable dropped; "
              f"py-spy itself used {p['profiler_cpu_s']:.2f} s CPU. µs = each thread's share of samples x its CPU in /proc; "
              f"inclusive µs are lower bounds")
    else:
        # cProfile sees the event-loop thread only and slows it down: scale to the unprofiled measurement.
        base = reference_ms or main_ms
        us = cprofile_us(p, base)
        print(f"   {p['function_calls'] / n:.0f} Python/C function calls per request (event-loop thread); "
              f"µs scaled to {'the unprofiled measurement' if reference_ms else 'the profiled run'}: {base:.3f} ms; "
              f"{r['profile']['healthz_pokes']} /healthz requests to deliver the signals are included")
    perf = p.get("perf")
    if perf:
        print("   below Python (perf, cpu-clock samples, all threads): " + ", ".join(
            f"{k} {v:.1f}% ({v / 100 * measured * 1000:.0f} µs)" for k, v in sorted(perf["dso_percent"].items(), key=lambda kv: -kv[1])
            if v >= 0.3))
        print(f"   of which CPython's cyclic GC {perf['gc_percent']:.1f}% ({perf['gc_percent'] / 100 * measured * 1000:.0f} µs), "
              f"object malloc/free {perf['malloc_percent']:.1f}%")
    total = sum(us["self"].values()) or 1.0
    print(f"   {'package (self time)':<52} {'share':>6} {'µs/req':>7}   {'owner (stdlib charged to its caller)':<40} {'share':>6} {'µs/req':>7}")
    self_rows = sorted(us["self"].items(), key=lambda kv: -kv[1])
    owner_rows = sorted(us["owner"].items(), key=lambda kv: -kv[1])
    for i in range(max(len(self_rows), len(owner_rows))):
        left = right = ""
        if i < len(self_rows):
            k, v = self_rows[i]
            left = f"{k[:52]:<52} {v / total:>6.1%} {v:>7.1f}"
        if i < len(owner_rows):
            k, v = owner_rows[i]
            right = f"{k[:40]:<40} {v / total:>6.1%} {v:>7.1f}"
        if (i >= len(self_rows) or self_rows[i][1] / total < 0.004) and (i >= len(owner_rows) or owner_rows[i][1] / total < 0.004):
            break
        print(f"   {left:<67}   {right}")
    print(f"   selected code paths, inclusive (everything they call){'':<17} share  µs/req")
    seen = set()
    for name in SELECTED:
        hits = [(k, v) for k, v in us["inclusive_functions"].items() if k.startswith(name + " (") and k not in seen]
        if hits:
            k, v = max(hits, key=lambda kv: kv[1])
            seen.add(k)
            print(f"     {k[:66]:<66} {v / total:>6.1%} {v:>7.1f}")
    print(f"   top functions by self time{'':<44} top functions by inclusive time")
    selfs = sorted(us["self_functions"].items(), key=lambda kv: -kv[1])[:24]
    incl = [kv for kv in sorted(us["inclusive_functions"].items(), key=lambda kv: -kv[1]) if kv[1] / total < 0.9
            and not kv[0].startswith(("<module>", "_run_", "main (", "Typer.", "Command.", "TyperGroup.", "Context.",
                                      "get_callback", "up (", "run (uvicorn", "Server.run", "asyncio_run",
                                      "Runner.run", "_main (", "Thread.", "_worker (", "_WorkItem.run"))][:24]
    for i in range(max(len(selfs), len(incl))):
        left = f"{selfs[i][1] / total:>6.1%} {selfs[i][1]:>6.1f}µs {selfs[i][0][:58]:<58}" if i < len(selfs) else ""
        right = f"{incl[i][1] / total:>6.1%} {incl[i][1]:>6.1f}µs {incl[i][0][:70]}" if i < len(incl) else ""
        print(f"   {left:<74} {right}")
    r["per_request_us"] = {k: dict(sorted(v.items(), key=lambda kv: -kv[1])[:60]) for k, v in us.items()}


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
    for r in results:  # keep the JSON readable: µs per request (per_request_us) and only the heavier raw rows
        r["profile"].pop("classes", None)
        for k in ("self_functions", "inclusive_functions", "ncalls"):
            if k in r["profile"]:
                items = sorted(r["profile"][k].items(), key=lambda kv: -kv[1])[:80]
                r["profile"][k] = dict(items)
    out.write_text(json.dumps({"meta": meta, "scenarios": results}, indent=2))
    print(f"\nProfiles: {out_dir.relative_to(bench.ROOT)}; summary: {out.relative_to(bench.ROOT)}")
    return 0
