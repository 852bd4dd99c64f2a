"""CPU and memory of an instance process, through psutil.

`process_stats()` reads one process's counters::

    >>> process_stats(os.getpid())   # doctest: +SKIP
    {"pid": 4242, "state": "sleeping", "threads": 3, "rss_mb": 61.4, "pss_mb": 58.9,
     "cpu_seconds": 1.37, "started_at": 1796630000.12}

- ``rss_mb``: resident memory. Instances of one GGUF model memory-map the
  same file, so their RSS counts the shared pages once per instance;
- ``pss_mb``: proportional set size (``memory_full_info().pss``: shared pages
  divided among the processes that map them, so the PSS of all instances
  adds up to the memory really used), or None where the system does not say
  (another user's process, a platform without it);
- ``cpu_seconds``: user + system CPU time, which only grows.

A CPU *percentage* needs two readings; `CpuMeter` keeps the previous one per
process. Everything returns None, never raises, for a process that is gone.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import psutil


def process_stats(pid: int | None) -> dict[str, Any] | None:
    """Memory and CPU time of process ``pid``, or None if it does not exist."""
    if not pid:
        return None
    try:
        process = psutil.Process(pid)
        with process.oneshot():
            state = process.status()
            if state == psutil.STATUS_ZOMBIE:
                return None
            cpu = process.cpu_times()
            stats = {
                "pid": pid,
                "state": state,
                "threads": process.num_threads(),
                "rss_mb": round(process.memory_info().rss / 2**20, 1),
                "pss_mb": None,
                "cpu_seconds": cpu.user + cpu.system,
                "started_at": process.create_time(),
            }
        try:
            pss = getattr(process.memory_full_info(), "pss", None)
        except (psutil.AccessDenied, psutil.ZombieProcess, OSError):
            pss = None
        if pss is not None:
            stats["pss_mb"] = round(pss / 2**20, 1)
        return stats
    except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
        return None


@dataclass
class _Reading:
    started_at: float
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
        if previous is not None and previous.started_at == stats["started_at"]:
            elapsed = now - previous.at
            if elapsed < self.min_interval_s:
                return {**stats, "cpu_percent": previous.percent}
            percent: float | None = max(0.0, stats["cpu_seconds"] - previous.cpu_seconds) / elapsed * 100
        else:
            age_s = time.time() - stats["started_at"]
            percent = stats["cpu_seconds"] / age_s * 100 if age_s > 0 else None
        percent = round(percent, 1) if percent is not None else None
        self._last[stats["pid"]] = _Reading(stats["started_at"], stats["cpu_seconds"], now, percent)
        return {**stats, "cpu_percent": percent}

    def cpu_percent(self, pid: int | None) -> float | None:
        """Just the percentage of `sample`."""
        stats = self.sample(pid)
        return stats["cpu_percent"] if stats else None

    def _forget_old(self, now: float) -> None:
        stale = [pid for pid, r in self._last.items() if now - r.at > self.forget_after_s]
        for pid in stale:
            del self._last[pid]
