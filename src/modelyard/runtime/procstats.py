"""CPU and memory of an instance process, read from ``/proc`` (Linux; no psutil).

`process_stats()` reads one process's counters::

    >>> process_stats(os.getpid())   # doctest: +SKIP
    {"pid": 4242, "state": "S", "threads": 3, "rss_mb": 61.4, "pss_mb": 58.9,
     "cpu_seconds": 1.37, "start_ticks": 81234567}

- ``rss_mb``: resident memory (``VmRSS`` in ``/proc/PID/status``). Instances
  of one GGUF model memory-map the same file, so their RSS counts the shared
  pages once per instance;
- ``pss_mb``: proportional set size from ``/proc/PID/smaps_rollup`` (shared
  pages divided among the processes that map them, so the PSS of all
  instances adds up to the memory really used), or None where that file is
  missing or unreadable (another user's process, older kernels);
- ``cpu_seconds``: user + system CPU time (``utime + stime`` over
  ``SC_CLK_TCK``), which only grows.

A CPU *percentage* needs two readings; `CpuMeter` keeps the previous one per
process. Everything returns None, never raises, for a process that is gone
or on a system without ``/proc``.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PROC = Path("/proc")


def _clock_ticks() -> int:
    try:
        return int(os.sysconf("SC_CLK_TCK"))
    except (AttributeError, ValueError, OSError):
        return 100


CLK_TCK = _clock_ticks()


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except (OSError, ValueError):
        return None


def _number_field(text: str, name: str) -> int | None:
    """The number on a ``Name:   1234 kB`` (or ``Threads: 3``) line of /proc/PID/status or smaps_rollup."""
    for line in text.splitlines():
        if line.startswith(name + ":"):
            parts = line.split()
            if len(parts) >= 2 and parts[1].isdigit():
                return int(parts[1])
    return None


def process_stats(pid: int | None) -> dict[str, Any] | None:
    """Memory and CPU time of process ``pid``, or None if it does not exist (or there is no /proc)."""
    if not pid:
        return None
    base = PROC / str(pid)
    stat = _read(base / "stat")
    if stat is None:
        return None
    # The command name (field 2) is in parentheses and may hold spaces or ')': split after the last ')'.
    fields = stat[stat.rfind(")") + 2:].split()
    try:
        state = fields[0]
        utime, stime = int(fields[11]), int(fields[12])
        start_ticks = int(fields[19])
    except (IndexError, ValueError):
        return None
    status = _read(base / "status") or ""
    rss_kb = _number_field(status, "VmRSS")  # absent for a zombie
    threads = _number_field(status, "Threads")
    rollup = _read(base / "smaps_rollup")
    pss_kb = _number_field(rollup, "Pss") if rollup else None
    return {
        "pid": pid,
        "state": state,
        "threads": threads,
        "rss_mb": round((rss_kb or 0) / 1024, 1),
        "pss_mb": round(pss_kb / 1024, 1) if pss_kb is not None else None,
        "cpu_seconds": (utime + stime) / CLK_TCK,
        "start_ticks": start_ticks,
    }


def _uptime_s() -> float | None:
    text = _read(PROC / "uptime")
    try:
        return float(text.split()[0]) if text else None
    except (IndexError, ValueError):
        return None


@dataclass
class _Reading:
    start_ticks: int
    cpu_seconds: float
    at: float  # time.monotonic()
    percent: float | None


class CpuMeter:
    """CPU use of processes as a percentage of one core, between successive readings.

    ::

        meter = CpuMeter()
        meter.sample(pid)   # first time: the average since the process started
        ...
        meter.sample(pid)   # {"cpu_percent": 97.5, "rss_mb": ..., ...}: since the call before

    Like ``top``, a process busy on four cores reads 400. Readings closer
    together than ``min_interval_s`` return the previous percentage (ten
    milliseconds of CPU clock would make them noise). A reused pid is noticed
    (its start time differs) and measured afresh; readings of processes not
    sampled for ``forget_after_s`` are dropped.
    """

    def __init__(self, *, min_interval_s: float = 0.5, forget_after_s: float = 600.0) -> None:
        self.min_interval_s = min_interval_s
        self.forget_after_s = forget_after_s
        self._last: dict[int, _Reading] = {}

    def sample(self, pid: int | None) -> dict[str, Any] | None:
        """`process_stats(pid)` plus ``cpu_percent``; None if the process is gone."""
        stats = process_stats(pid)
        if stats is None:
            self._last.pop(pid or 0, None)
            return None
        now = time.monotonic()
        self._forget_old(now)
        previous = self._last.get(stats["pid"])
        if previous is not None and previous.start_ticks == stats["start_ticks"]:
            elapsed = now - previous.at
            if elapsed < self.min_interval_s:
                return {**stats, "cpu_percent": previous.percent}
            percent = max(0.0, stats["cpu_seconds"] - previous.cpu_seconds) / elapsed * 100
        else:
            percent = self._lifetime_percent(stats)
        percent = round(percent, 1) if percent is not None else None
        self._last[stats["pid"]] = _Reading(stats["start_ticks"], stats["cpu_seconds"], now, percent)
        return {**stats, "cpu_percent": percent}

    def cpu_percent(self, pid: int | None) -> float | None:
        """Just the percentage of `sample`."""
        stats = self.sample(pid)
        return stats["cpu_percent"] if stats else None

    @staticmethod
    def _lifetime_percent(stats: dict[str, Any]) -> float | None:
        uptime = _uptime_s()
        if uptime is None:
            return None
        age_s = uptime - stats["start_ticks"] / CLK_TCK
        if age_s <= 0:
            return None
        return stats["cpu_seconds"] / age_s * 100

    def _forget_old(self, now: float) -> None:
        stale = [pid for pid, r in self._last.items() if now - r.at > self.forget_after_s]
        for pid in stale:
            del self._last[pid]
