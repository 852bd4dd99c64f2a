"""Helpers for the benchmarks that run a real ``modelyard up``: start it, wait for it,
find its instances, read their memory, and always stop every process it started.

Why the care on shutdown: the gateway runs in its own session (so a Ctrl-C of the
benchmark does not reach it first), and the local runtime starts each instance with
``start_new_session=True`` too, so killing the gateway's process group does not reach
the instances. `Gateway.stop` therefore asks politely (SIGTERM to the gateway, which
stops its instances), waits, and then SIGKILLs every process group it has seen:
the gateway's and each descendant's, collected from ``/proc`` while they were alive.
"""

from __future__ import annotations

import atexit
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from _common import descendants_of, free_port

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
VENV_BIN = Path(sys.executable).parent

_live: list["Gateway"] = []


def loadavg() -> tuple[float, float, float]:
    one, five, fifteen = open("/proc/loadavg").read().split()[:3]
    return float(one), float(five), float(fifteen)


# --- /proc ------------------------------------------------------------------------


def memory(pid: int) -> dict[str, float]:
    """RSS (VmRSS) and PSS/shared/private (smaps_rollup) of one process, in MiB."""
    out: dict[str, float] = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "RssAnon:", "RssFile:")):
                key, value = line.split(":")
                out[key.lower().replace("vm", "")] = int(value.split()[0]) / 1024
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in ("Pss", "Shared_Clean", "Private_Clean", "Private_Dirty"):
                    out[key.lower()] = int(rest.split()[0]) / 1024
    except OSError:
        pass
    return out


_TICK = os.sysconf("SC_CLK_TCK")


def _proc_cpu_s(pid: int, with_children: bool) -> float:
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])  # utime, stime
    if with_children:
        ticks += int(fields[13]) + int(fields[14])  # cutime, cstime: children that exited and were waited for
    return ticks / _TICK


class CpuMeter:
    """CPU seconds the whole machine spent vs. what this process tree spent, between two snapshots.

    `foreign` is the rest: other people's work on a shared machine, which skews timings.
    Ours is this process plus its live descendants (their exited, waited-for children included).
    """

    def __init__(self) -> None:
        self.t0, self.busy0, self.ours0 = self._snap()

    @staticmethod
    def _busy_s() -> float:
        with open("/proc/stat") as f:
            parts = [int(x) for x in f.readline().split()[1:]]
        # user nice system idle iowait irq softirq [steal ...]: busy = the first seven less idle and iowait
        return (sum(parts[:7]) - parts[3] - parts[4]) / _TICK

    def _snap(self) -> tuple[float, float, float]:
        me = os.getpid()
        ours = _proc_cpu_s(me, True)
        for pid in descendants_of(me):
            try:
                ours += _proc_cpu_s(pid, True)
            except (OSError, IndexError):
                pass
        return time.monotonic(), self._busy_s(), ours

    def read(self) -> dict[str, float]:
        """Since construction: wall seconds, machine busy CPU-s, ours, foreign (>= 0), foreign share of the cores."""
        t, busy, ours = self._snap()
        wall = t - self.t0
        foreign = max(0.0, (busy - self.busy0) - (ours - self.ours0))
        return {"wall_s": wall, "busy_cpu_s": busy - self.busy0, "ours_cpu_s": ours - self.ours0,
                "foreign_cpu_s": foreign, "foreign_cores": foreign / wall if wall > 0 else 0.0}


def wait_quiet(min_s: float, threshold: float, max_wait_s: float, window_s: float = 1.0) -> tuple[float, float]:
    """Sleep at least `min_s`; then, while other processes use more than `threshold` cores (measured over
    `window_s`), keep waiting, up to `max_wait_s` in all. Returns (seconds waited, last foreign cores)."""
    t0 = time.monotonic()
    meter = CpuMeter()
    time.sleep(min_s)
    foreign = meter.read()["foreign_cores"]
    while foreign > threshold and time.monotonic() - t0 < max_wait_s:
        meter = CpuMeter()
        time.sleep(window_s)
        foreign = meter.read()["foreign_cores"]
    return time.monotonic() - t0, foreign


def cmdline(pid: int) -> str:
    try:
        return open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


# --- HTTP (stdlib, so polling costs nothing to import) ----------------------------------


def http(method: str, url: str, body: Any = None, key: str | None = None, timeout: float = 30.0) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    if key:
        req.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            raw = r.read()
            status = r.status
    except urllib.error.HTTPError as e:
        raw, status = e.read(), e.code
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode(errors="replace")


# --- the gateway --------------------------------------------------------------------


class Gateway:
    """One ``modelyard up`` process with its own MODELYARD_HOME and port."""

    def __init__(self, home: Path | None = None, port: int | None = None, log_name: str = "gateway",
                 log_level: str = "warning", extra_args: tuple[str, ...] = (), env: dict[str, str] | None = None) -> None:
        self.log_level = log_level
        self.extra_args = tuple(extra_args)
        self.env = dict(env or {})  # on top of this process's environment (PYTHONPATH=another source tree, say)
        self._tmp = None
        if home is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="modelyard-bench-")
            home = Path(self._tmp.name)
        self.home = Path(home)
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = self.home / f"bench-{log_name}.log"
        self.proc: subprocess.Popen | None = None
        self.t_launch = 0.0  # time.monotonic() just before the process was created
        self.seen: set[int] = set()  # every descendant pid seen alive, for the final kill
        self.stop_s: float | None = None

    @property
    def admin_key(self) -> str:
        return (self.home / "admin.key").read_text().strip()

    def start(self) -> "Gateway":
        env = {**os.environ, **self.env}
        env["MODELYARD_HOME"] = str(self.home)
        env.pop("MODELYARD_ADMIN_KEY", None)
        env.pop("DATABASE_URL", None)
        logf = open(self.log_path, "ab")
        try:
            self.t_launch = time.monotonic()
            self.proc = subprocess.Popen(
                [str(VENV_BIN / "modelyard"), "up", "--port", str(self.port), "--log-level", self.log_level, *self.extra_args],
                cwd=str(ROOT), env=env, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True)
        finally:
            logf.close()
        _live.append(self)
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def note_children(self) -> list[int]:
        if not self.alive():
            return []
        kids = descendants_of(self.proc.pid)  # type: ignore[union-attr]
        self.seen.update(kids)
        return kids

    def wait_ready(self, timeout: float = 300.0, poll_s: float = 0.05) -> float:
        """Seconds from launch until /readyz answers 200."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(f"modelyard up exited with {self.proc.returncode}; see {self.log_path}")  # type: ignore[union-attr]
            self.note_children()
            try:
                status, _ = http("GET", self.url + "/readyz", timeout=2.0)
                if status == 200:
                    return time.monotonic() - self.t_launch
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            time.sleep(poll_s)
        raise TimeoutError(f"gateway not ready after {timeout:.0f}s; see {self.log_path}")

    def status(self) -> dict[str, Any]:
        code, body = http("GET", self.url + "/api/status", key=self.admin_key)
        if code != 200:
            raise RuntimeError(f"/api/status answered {code}: {body}")
        return body

    def instances(self) -> list[dict[str, Any]]:
        """[{endpoint, deployment, model, name, pid, ...}] for every instance."""
        out = []
        for e in self.status()["endpoints"]:
            for d in e["deployments"]:
                for i in d["instances"]:
                    out.append({"endpoint": e["name"], "deployment": d["name"], "model": d["model"], **i})
                    if i.get("pid"):
                        self.seen.add(int(i["pid"]))
        return out

    def stop(self, grace_s: float = 20.0) -> None:
        """SIGTERM the gateway (it stops its instances), then SIGKILL whatever is left."""
        if self.proc is None:
            return
        self.note_children()
        t0 = time.monotonic()
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(grace_s)
                self.stop_s = time.monotonic() - t0
            except subprocess.TimeoutExpired:
                pass
        leftovers = [p for p in sorted(self.seen) if "modelyard" in cmdline(p)]  # never a recycled pid
        for pid in [self.proc.pid, *leftovers]:
            for kill in (os.killpg, os.kill):
                try:
                    kill(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            pass
        if self in _live:
            _live.remove(self)

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def logs_report(self, n: int = 25) -> str:
        """The tail of the gateway's log and of every instance log, for a failure report."""
        parts = [f"--- {self.log_path.name} (gateway) ---", self.log_tail(n)]
        for log in sorted((self.home / "logs").glob("*.log")):
            try:
                lines = log.read_text(errors="replace").splitlines()[-n:]
            except OSError:
                continue
            parts += [f"--- {log.name} ---", "\n".join(lines)]
        return "\n".join(parts)

    def save_logs(self, dest: Path) -> Path:
        """Copy the gateway's and the instances' logs to `dest` (a folder), e.g. before the home is removed."""
        import shutil

        dest.mkdir(parents=True, exist_ok=True)
        for log in [self.log_path, *sorted((self.home / "logs").glob("*.log"))]:
            if log.exists():
                shutil.copy2(log, dest / log.name)
        return dest

    def cleanup_home(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> "Gateway":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


@atexit.register
def _stop_all() -> None:
    for gw in list(_live):
        gw.stop(grace_s=5.0)


def install_signal_handlers() -> None:
    """Turn SIGTERM/SIGHUP into SystemExit so `finally` blocks (and atexit) run."""
    def _exit(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _exit)


# --- output -------------------------------------------------------------------------


def table(rows: list[list[Any]], header: list[str]) -> str:
    cells = [[str(c) for c in header]] + [[("" if c is None else str(c)) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = []
    for n, r in enumerate(cells):
        lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def fmt(x: Any, digits: int = 1) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def write_json(name: str, data: Any) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / name
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")
    return path


def environment() -> dict[str, Any]:
    import platform

    info: dict[str, Any] = {"python": platform.python_version(), "cpus": os.cpu_count(), "loadavg_start": loadavg(),
                            "machine": platform.machine()}
    try:
        import llama_cpp

        info["llama_cpp_python"] = llama_cpp.__version__
    except ImportError:
        pass
    return info
