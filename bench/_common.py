"""What every benchmark shares: ports, process trees, percentiles, request samples, SSE streams.

Importing this module has no side effects and imports only the standard library
(``modelyard.wire`` is imported when a stream is first decoded), so a load
generator or a poller can use it for free. Side effects live elsewhere:
``_procs`` (child processes, stopped at exit; SIGTERM becomes KeyboardInterrupt)
and ``_up`` (``modelyard up`` and its instances).

Each name here has one meaning across bench/:

- `free_port`: a TCP port on 127.0.0.1 that the OS just handed out;
- `children_of`: the *direct* children of a process; `descendants_of`: all of
  them, at any depth;
- `percentile`: linear interpolation between the two nearest ranks (numpy's
  default, ``statistics.quantiles(method="inclusive")``, Excel's PERCENTILE.INC),
  so ``percentile(xs, 50)`` is the median; `median` is ``statistics.median``
  (the same value; it skips None and keeps an int when the middle is one int);
- `Samples`: the outcome of the measured requests one target answered;
- `sse_chunks`: the JSON chunks of an OpenAI-style SSE stream, framed by
  ``modelyard.wire.SSEDecoder``.
"""

from __future__ import annotations

import json
import math
import os
import socket
import statistics
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator

# --- ports and processes --------------------------------------------------------------


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the OS picked it; nothing holds it now)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _parents() -> dict[int, list[int]]:
    """{ppid: [pid, ...]} for every live process, from /proc/*/stat."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                ppid = int(f.read().rsplit(b")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):  # gone meanwhile, or not ours to read
            continue
        parents.setdefault(ppid, []).append(int(entry))
    return parents


def children_of(pid: int) -> list[int]:
    """The direct child processes of `pid` (not theirs: see `descendants_of`)."""
    return _parents().get(pid, [])


def descendants_of(pid: int) -> list[int]:
    """Every live descendant of `pid`, at any depth (children, grandchildren, ...)."""
    parents = _parents()
    out, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


# --- statistics -----------------------------------------------------------------------


def percentile(values: Iterable[float], p: float) -> float | None:
    """The `p`-th percentile (0-100) of `values`, by linear interpolation; None when there are none.

    The value at rank ``(n - 1) * p / 100`` (0-based) of the sorted values, interpolated
    between its two neighbours: numpy's default ("linear", Hyndman & Fan type 7). So
    p0 is the minimum, p100 the maximum, p50 the median (the mean of the two middle
    values when n is even), and a high percentile of few samples lies between the
    top ones rather than on one of them.
    """
    s = sorted(values)
    if not s:
        return None
    rank = (len(s) - 1) * p / 100
    lo = math.floor(rank)
    frac = rank - lo
    if frac == 0:
        return s[lo]
    return s[lo] + (s[lo + 1] - s[lo]) * frac


def percentiles_ms(seconds: Iterable[float], ps: tuple[float, ...] = (50, 99)) -> dict[str, float | None]:
    """Durations in seconds as ``{"p50": ms, "p99": ms}`` (one key per `ps`), by `percentile`."""
    ms = [s * 1000 for s in seconds]
    return {f"p{p:g}": percentile(ms, p) for p in ps}


def median(values: Iterable[float | None]) -> float | None:
    """``statistics.median`` of the values that are not None (None when none are): the same value as
    ``percentile(values, 50)``, but an odd count of ints gives an int."""
    xs = [x for x in values if x is not None]
    return statistics.median(xs) if xs else None


@dataclass
class Samples:
    """The outcome of the measured requests one target (a server, an endpoint) answered.

    Benchmarks subclass it for what else they count per target (CPU, syscalls, ...).
    """

    latency_ms: list[float] = field(default_factory=list)  # per answered request, send to last byte
    overhead_header_ms: list[float] = field(default_factory=list)  # the gateway's own x-modelyard-overhead-ms
    ok: int = 0
    errors: int = 0
    error_examples: list[str] = field(default_factory=list)  # the first five
    wall_s: float = 0.0  # time spent in this target's blocks

    def error(self, message: str) -> None:
        self.errors += 1
        if len(self.error_examples) < 5:
            self.error_examples.append(message)


# --- server-sent events ---------------------------------------------------------------


def sse_chunks(pieces: Iterable[bytes]) -> Iterator[dict[str, Any]]:
    """The JSON chunks of an OpenAI-style SSE stream, in order, without the closing ``[DONE]``.

    `pieces` are the stream's bytes as they arrive (``response.iter_bytes()``), or the
    whole body at once (``[body]``); events are split by ``modelyard.wire.SSEDecoder``
    (comments and ``event:`` lines dropped), and each chunk is yielded as soon as its
    event is complete, so a caller can time it. A modelyard event with a name (such as
    ``modelyard.correction``) is told apart by its payload (``modelyard_correction``).
    """
    from modelyard.wire import SSEDecoder

    decoder = SSEDecoder()
    for piece in pieces:
        for data in decoder.feed(piece):
            if data != b"[DONE]":
                yield json.loads(data)
    for data in decoder.flush():
        if data != b"[DONE]":
            yield json.loads(data)
