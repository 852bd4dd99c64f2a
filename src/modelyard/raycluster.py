"""Joining Ray, once per process: the cluster at ``RAY_ADDRESS``, or a Ray started on this machine.

Whatever in the gateway needs Ray (the Ray runtime, batch jobs on Ray Data) calls `ray_connect()`; the
first call joins (``ray.init`` takes 10-40 s on a small machine, so call it off the event loop), later
calls return at once. The gateway calls `ray_disconnect()` as it stops: a Ray this process started is
shut down with its helper processes (Ray's own exit hook does not run when uvicorn ends the process by
re-raising SIGTERM, and would leave them behind); a cluster it joined keeps running.

    ray = ray_connect(settings.ray_address or "local")   # a ModelyardError 501 when the ray extra is missing
"""

from __future__ import annotations

import logging
import signal
import threading
from types import ModuleType

from .extras import require

log = logging.getLogger(__name__)

_lock = threading.Lock()
#: whether `ray_connect` started the Ray this process is joined to (so `ray_disconnect` stops it)
_started_here = False
#: whether `ray_connect` joined Ray at all: a Ray the embedding process initialized itself is not ours to leave
_joined_here = False


def ray_connect(address: str | None = None, *, num_cpus: int | None = None) -> ModuleType:
    """The ``ray`` module, joined to the cluster at ``address``: ``"local"`` starts a Ray of this process (with
    ``num_cpus`` CPUs, all of them by default), never joining whichever Ray happens to run on this machine;
    None does what ``ray.init()`` does (RAY_ADDRESS, else a Ray running here, else a new one). Thread-safe;
    joins only the first time."""
    global _started_here, _joined_here
    ray = require("ray", "ray", "Running on Ray")
    with _lock:
        if ray.is_initialized():
            return ray
        options: dict[str, object] = {"include_dashboard": False, "log_to_driver": False,
                                      "configure_logging": False}
        if address:
            options["address"] = address
        if address in (None, "local") and num_cpus is not None:
            options["num_cpus"] = num_cpus
        ray.init(**options)
        _joined_here = True
        _started_here = address == "local"
        resources = ray.cluster_resources()
        log.info("joined Ray at %s: %d nodes, %s CPUs, %s GPUs", address or "a local Ray",
                 len([n for n in ray.nodes() if n.get("Alive")]), resources.get("CPU", 0), resources.get("GPU", 0))
        return ray


def ray_disconnect() -> None:
    """Leave Ray, stopping it if `ray_connect` started it here (blocking; a no-op when `ray_connect` did not
    join it: a Ray the embedding process initialized itself stays up, and a gateway that never used Ray does
    not even import it)."""
    global _started_here, _joined_here
    with _lock:
        joined, started, _joined_here, _started_here = _joined_here, _started_here, False, False
        if not joined:
            return
        import ray

        if not ray.is_initialized():
            return
        if started:
            log.info("stopping the Ray this gateway started")
        ray.shutdown()  # a driver's leaving ends its jobs' actors; a Ray started here stops with it


def restore_sigterm() -> None:
    """Give SIGTERM back to Python's handler (the server's graceful shutdown); call it on the main thread
    after `ray_connect`.

    Joining Ray installs Ray's crash handler for SIGTERM too: it logs "SIGTERM received" and kills the process
    at once, so a gateway told to stop never ran its shutdown (measured: exit status -15, nothing closed).
    Setting the handler Python already knows again puts Python's own in front. Only the main thread may."""
    if threading.current_thread() is threading.main_thread():
        handler = signal.getsignal(signal.SIGTERM)
        if handler is not None:
            signal.signal(signal.SIGTERM, handler)
