"""Run ``modelyard`` (e.g. ``up``) under cProfile, switched on and off by signals.

    python bench/_cprofile_gateway.py OUT_DIR up --no-defaults --port 8400

The profiler starts off. ``SIGUSR1`` clears it and switches it on; ``SIGUSR2``
switches it off and writes ``OUT_DIR/segment-N.prof`` (N = 0, 1, ...). Each
signal is acknowledged by writing ``OUT_DIR/ack-started-N`` or ``ack-dumped-N``
so the benchmark knows the switch happened. Only the main thread (the event
loop, where every request runs) is profiled; the usage writer's database
batches run in a worker thread and are not seen here (py-spy sees them).
"""

from __future__ import annotations

import cProfile
import signal
import sys
from pathlib import Path

out = Path(sys.argv[1])
out.mkdir(parents=True, exist_ok=True)
profiler = cProfile.Profile()
segment = 0


def _start(signum, frame) -> None:
    profiler.disable()
    profiler.clear()
    profiler.enable()
    (out / f"ack-started-{segment}").touch()


def _stop(signum, frame) -> None:
    global segment
    profiler.disable()
    profiler.dump_stats(str(out / f"segment-{segment}.prof"))
    (out / f"ack-dumped-{segment}").touch()
    segment += 1


signal.signal(signal.SIGUSR1, _start)
signal.signal(signal.SIGUSR2, _stop)

sys.argv = ["modelyard", *sys.argv[2:]]
from modelyard.cli import main  # noqa: E402

main()
