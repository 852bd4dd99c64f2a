"""Child processes for the benchmarks: start, wait for, measure and always stop them.

CPU time is read from ``/proc`` (Linux), two ways:

- `cpu_ns(pid)`: the sum of ``sum_exec_runtime`` over the process's threads
  (``/proc/PID/task/*/schedstat``), in nanoseconds — precise enough to measure
  a block of a hundred requests;
- `cpu_ticks_s(pid)`: ``utime + stime`` from ``/proc/PID/stat`` (clock ticks,
  usually 10 ms), which also counts threads that have exited — used as a
  cross-check over whole scenarios.

Ports and process trees (`free_port`, `children_of`) are in ``_common``.
"""

from __future__ import annotations

import atexit
import os
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

_TICK = os.sysconf("SC_CLK_TCK")
_children: list["Child"] = []


def cpu_ns(pid: int) -> int:
    """CPU time (user + system) of every live thread of `pid`, in nanoseconds."""
    total = 0
    base = f"/proc/{pid}/task"
    for tid in os.listdir(base):
        try:
            with open(f"{base}/{tid}/schedstat", "rb") as f:
                total += int(f.read().split(b" ", 1)[0])
        except (FileNotFoundError, ProcessLookupError):
            pass  # the thread ended between listdir and open
    return total


def cpu_ticks_s(pid: int) -> float:
    """utime + stime of `pid` (all threads, dead ones included), in seconds."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    # fields[0] is the state (field 3); utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / _TICK


def ctx_switches(pid: int) -> tuple[int, int]:
    """(voluntary, involuntary) context switches of every live thread of `pid`."""
    vol = invol = 0
    base = f"/proc/{pid}/task"
    for tid in os.listdir(base):
        try:
            with open(f"{base}/{tid}/status", "rb") as f:
                for line in f:
                    if line.startswith(b"voluntary_ctxt_switches"):
                        vol += int(line.split()[1])
                    elif line.startswith(b"nonvoluntary_ctxt_switches"):
                        invol += int(line.split()[1])
        except (FileNotFoundError, ProcessLookupError):
            pass
    return vol, invol


def thread_split(pid: int) -> tuple[int, int, int, int]:
    """(main thread CPU ns, other threads CPU ns, main voluntary switches, others' voluntary switches)."""
    main_ns = other_ns = main_cs = other_cs = 0
    base = f"/proc/{pid}/task"
    for tid in os.listdir(base):
        try:
            with open(f"{base}/{tid}/schedstat", "rb") as f:
                ns = int(f.read().split(b" ", 1)[0])
            cs = 0
            with open(f"{base}/{tid}/status", "rb") as f:
                for line in f:
                    if line.startswith(b"voluntary_ctxt_switches"):
                        cs = int(line.split()[1])
        except (FileNotFoundError, ProcessLookupError):
            continue
        if int(tid) == pid:
            main_ns, main_cs = ns, cs
        else:
            other_ns += ns
            other_cs += cs
    return main_ns, other_ns, main_cs, other_cs


def io_syscalls(pid: int) -> tuple[int, int]:
    """(read, write) system calls of `pid` so far (/proc/PID/io syscr, syscw: socket reads and writes included)."""
    r = w = 0
    with open(f"/proc/{pid}/io", "rb") as f:
        for line in f:
            if line.startswith(b"syscr:"):
                r = int(line.split()[1])
            elif line.startswith(b"syscw:"):
                w = int(line.split()[1])
    return r, w


class Child:
    """A subprocess whose output goes to a log file and which is stopped on exit, whatever happens."""

    def __init__(self, name: str, argv: list[str], *, env: dict[str, str] | None = None, log: Path, cwd: str | None = None) -> None:
        self.name = name
        self.log = log
        self._log_file = open(log, "wb")
        self.proc = subprocess.Popen(argv, env=env, cwd=cwd, stdout=self._log_file, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        _children.append(self)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def wait_http(self, url: str, timeout: float = 60.0) -> None:
        """Wait until GET `url` answers 200; raise with the child's log if it dies or times out."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode} while starting:\n{self.tail()}")
            try:
                with urllib.request.urlopen(url, timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"{self.name} did not answer {url} within {timeout:.0f}s:\n{self.tail()}")

    def stop(self, grace: float = 15.0) -> int | None:
        """SIGTERM (a clean shutdown: the gateway flushes usage), then SIGKILL after `grace` seconds."""
        if self.alive():
            try:
                self.proc.send_signal(signal.SIGTERM)
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
            except ProcessLookupError:
                pass
        self._log_file.close()
        if self in _children:
            _children.remove(self)
        return self.proc.returncode


def stop_all() -> None:
    for child in list(reversed(_children)):
        try:
            child.stop()
        except Exception:  # clean-up must go on
            try:
                child.proc.kill()
            except Exception:
                pass


def _on_term(signum, frame):  # SIGTERM to the benchmark behaves like Ctrl-C
    raise KeyboardInterrupt


atexit.register(stop_all)
signal.signal(signal.SIGTERM, _on_term)
signal.signal(signal.SIGINT, signal.default_int_handler)  # Ctrl-C raises KeyboardInterrupt, even if inherited as ignored
