"""What long-running processes hold: resident memory and open file descriptors, sampled over a run.

A reliability benchmark asks whether the gateway and its instances stay flat
under load: the same memory and the same number of open files at the end as
at the start. `snapshot` reads both for a set of named processes (psutil);
`Drift` compares a series of snapshots and says whether each stayed within a
tolerance of where it started.

    s0 = snapshot({"gateway": pid})
    ...
    drift = Drift.of("gateway", [s0, s_mid, s_end], "rss_mib")   # drift.within(0.10)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psutil


def snapshot(pids: dict[str, int]) -> dict[str, dict[str, Any]]:
    """``{name: {"pid", "rss_mib", "anon_mib", "file_mib", "fds", "sockets", "threads"}}`` for every named
    process still alive (gone ones: ``None``); ``sockets`` are the TCP/UDP ones among the ``fds``.

    ``anon_mib`` (RssAnon: heap, stacks, arenas) is where a leak shows; ``file_mib`` (RssFile) is mapped files.
    A llama.cpp instance maps its GGUF, and the pages of the token-embedding table are read in as new tokens
    are first seen, so its RSS climbs through file pages for a while without anything leaking.
    """
    out: dict[str, dict[str, Any]] = {}
    for name, pid in pids.items():
        try:
            proc = psutil.Process(pid)
            with proc.oneshot():
                out[name] = {"pid": pid, "rss_mib": proc.memory_info().rss / 2**20, **_rss_split(pid),
                             "fds": proc.num_fds(), "sockets": len(proc.net_connections(kind="inet")),
                             "threads": proc.num_threads()}
        except (psutil.NoSuchProcess, psutil.AccessDenied, FileNotFoundError, ProcessLookupError):
            out[name] = None  # type: ignore[assignment]
    return out


def _rss_split(pid: int) -> dict[str, float]:
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("RssAnon:", "RssFile:")):
                key, value = line.split(":")
                out["anon_mib" if key == "RssAnon" else "file_mib"] = int(value.split()[0]) / 1024
    return out


@dataclass
class Drift:
    """One figure of one process across snapshots: its first value, every later one, and the largest change."""

    name: str
    figure: str
    values: list[float | None]

    @classmethod
    def of(cls, name: str, snapshots: list[dict[str, dict[str, Any]]], figure: str) -> "Drift":
        return cls(name, figure, [(s.get(name) or {}).get(figure) for s in snapshots])

    @property
    def start(self) -> float | None:
        return self.values[0] if self.values else None

    @property
    def max_change(self) -> float | None:
        """The largest relative change from the first value (+0.05 = 5% more), or None when a value is missing."""
        if not self.values or any(v is None for v in self.values) or not self.start:
            return None
        return max((v - self.start) / self.start for v in self.values[1:]) if len(self.values) > 1 else 0.0

    @property
    def max_abs_change(self) -> float | None:
        if not self.values or any(v is None for v in self.values) or not self.start:
            return None
        return max(abs(v - self.start) / self.start for v in self.values[1:]) if len(self.values) > 1 else 0.0

    def within(self, tolerance: float) -> bool:
        """Every later value lies within ``tolerance`` (0.10 = 10%) of the first, up or down."""
        change = self.max_abs_change
        return change is not None and change <= tolerance

    def as_dict(self) -> dict[str, Any]:
        return {"process": self.name, "figure": self.figure, "values": self.values,
                "max_change": self.max_change, "max_abs_change": self.max_abs_change}
