"""Autoscaling: a local deployment's instances follow its load.

A deployment with ``autoscale`` in its spec (`serving.spec.Autoscale`) gets
between ``min_instances`` and ``max_instances`` instances. The `Scaler`, one
per gateway, looks at each such deployment every `SAMPLE_S` seconds:

1. **Load.** The live requests in flight on its instances plus those waiting
   for a free instance, averaged over the last `LOAD_WINDOW_S` seconds of
   samples (a request that ends a moment before the next begins is not a dip).
   Background (batch) work does not add load: it uses what live traffic leaves.
   While background work waits or runs, at least one instance is wanted.
2. **Wanted.** ``ceil(load / target_in_flight)``, clamped to
   ``[min_instances, max_instances]``. With ``min_instances: 0`` an idle
   deployment wants no instance at all.
3. **Held for the delay.** The scaler scales *up* to ``n`` once every sample
   over the last ``upscale_delay_s`` wanted ``n`` or more, and *down* to ``n``
   once every sample over the last ``downscale_delay_s`` wanted ``n`` or
   fewer (and it has watched that long since its last change). So a burst
   shorter than the up-delay adds no instance, and one busy moment within
   the down-delay keeps them all. These are Ray Serve's ``upscale_delay_s`` /
   ``downscale_delay_s`` (a decision must hold that long) with Azure ML's
   target-utilisation rule (instances = load / target per instance). A count
   outside ``[min, max]`` (the settings just changed) is brought inside at once.

Scaling up returns once the new instances answer ``/readyz``: until then the
waiting requests stay queued and get the new instances as they come. Scaling
down takes instances out of rotation at once and stops each only when its
requests have finished (or after the request timeout): no request in flight
is cut. Each change is a ``scale_up``/``scale_down`` event with its reason in
the deployment event log (`store.events`), through the runtime's ``on_scale``.

**Scale to zero** (``min_instances: 0``, local runtime only): after
``downscale_delay_s`` without a request the last instance is stopped. The
next request starts one at once — no delay applies to this *cold start* —
and waits for it, up to the deployment's ``request_timeout_ms`` (instead of
``max_queue_wait_ms``); if the instance cannot start, waiting requests get
503 with the reason. Expect the time to load the model on the first request
(`bench/autoscale.py` measures it).

A runtime that scales by itself (``runtime.scales_itself``, e.g. Ray Serve's
autoscaler on the Ray runtime) is left alone. The loop costs a few
attribute reads per autoscaled deployment per sample; it starts no task
unless a count changes.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from .spec import Autoscale

log = logging.getLogger(__name__)

#: seconds between two looks at the load
SAMPLE_S = 0.25
#: the load is the mean of the samples over this many seconds
LOAD_WINDOW_S = 1.0


def wanted_instances(load: float, settings: Autoscale, *, background: bool = False) -> int:
    """Instances `load` (requests in flight and waiting) asks for, within ``[min_instances, max_instances]``.

    >>> wanted_instances(9, Autoscale(min_instances=1, max_instances=8, target_in_flight=4))
    3
    >>> wanted_instances(0, Autoscale(min_instances=0, max_instances=8))
    0
    """
    want = math.ceil(load / settings.target_in_flight - 1e-9) if load > 0 else 0
    if background:
        want = max(want, 1)
    return min(max(want, settings.min_instances), settings.max_instances)


@dataclass(frozen=True)
class ScaleDecision:
    count: int
    reason: str


class AutoscalePolicy:
    """The decision for one deployment, fed one load sample at a time (pure: the caller owns the clock)."""

    def __init__(self, settings: Autoscale, now: float) -> None:
        self.settings = settings
        self._loads: deque[tuple[float, float]] = deque()  # (time, load) within LOAD_WINDOW_S
        self._wants: deque[tuple[float, int]] = deque()  # (time, wanted) within the longer delay
        self._since = now  # watching without a change since

    def restart(self, now: float) -> None:
        """Start watching afresh (after a change: the next one must hold its whole delay again)."""
        self._wants.clear()
        self._since = now

    def observe(self, now: float, load: float, current: int, *, background: bool = False) -> ScaleDecision | None:
        """Take one sample; the count to scale to now, or None."""
        s = self.settings
        self._loads.append((now, load))
        while self._loads and self._loads[0][0] <= now - LOAD_WINDOW_S:
            self._loads.popleft()
        mean = sum(x for _, x in self._loads) / len(self._loads)
        want = wanted_instances(mean, s, background=background)
        self._wants.append((now, want))
        horizon = max(s.upscale_delay_s, s.downscale_delay_s)
        while self._wants and self._wants[0][0] < now - horizon:
            self._wants.popleft()

        if current < s.min_instances:
            return ScaleDecision(s.min_instances, f"below min_instances={s.min_instances}")
        if current > s.max_instances:
            return ScaleDecision(s.max_instances, f"above max_instances={s.max_instances}")
        watched = now - self._since
        if want > current and watched >= s.upscale_delay_s:
            held = min(w for t, w in self._wants if t >= now - s.upscale_delay_s)
            if held > current:
                return ScaleDecision(held, self._why(mean, held, s.upscale_delay_s))
        if want < current and watched >= s.downscale_delay_s:
            held = max(w for t, w in self._wants if t >= now - s.downscale_delay_s)
            if held < current:
                return ScaleDecision(held, self._why(mean, held, s.downscale_delay_s))
        return None

    def _why(self, load: float, count: int, delay_s: float) -> str:
        if count == 0:
            return f"no requests for {delay_s:g}s (min_instances=0)"
        return (f"load {load:.1f} (in flight + waiting) wants {count} at target_in_flight="
                f"{self.settings.target_in_flight:g}, held for {delay_s:g}s")


class Scaler:
    """Runs `AutoscalePolicy` for every autoscaled local deployment of a gateway.

    `endpoints` is anything with ``all()`` giving endpoints that have ``deployments`` (`serving.endpoints.Endpoints`);
    each deployment offers ``spec.autoscale``, ``live_load()``, ``background_load()``, ``instances``,
    ``scaling`` and ``scale_to(count, reason)`` (`serving.deployment.Deployment`).
    """

    def __init__(self, endpoints: Any, *, clock: Callable[[], float] = time.monotonic,
                 sample_s: float = SAMPLE_S) -> None:
        self.endpoints = endpoints
        self.clock = clock
        self.sample_s = sample_s
        self._policies: dict[str, tuple[Any, Autoscale, AutoscalePolicy]] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._loop: asyncio.Task[None] | None = None

    def _deployments(self) -> Iterable[Any]:
        for endpoint in self.endpoints.all():
            for dep in list(endpoint.deployments.values()):
                if dep.spec.autoscale is not None and not dep.is_hosted and dep.state == "ready" \
                        and not getattr(dep.runtime, "scales_itself", False):
                    yield dep

    def step(self) -> list[tuple[str, ScaleDecision]]:
        """Look once at every autoscaled deployment; start the scalings decided. Returns them (for tests)."""
        now = self.clock()
        seen: set[str] = set()
        decided = []
        for dep in self._deployments():
            seen.add(dep.key)
            settings = dep.spec.autoscale
            known = self._policies.get(dep.key)
            if known is None or known[0] is not dep or known[1] != settings:
                known = self._policies[dep.key] = (dep, settings, AutoscalePolicy(settings, now))
            policy = known[2]
            if dep.scaling or dep.key in self._tasks:
                policy.restart(now)  # a change is under way (here, by a cold start or a PATCH): watch afresh after it
                continue
            decision = policy.observe(now, dep.live_load(), len(dep.instances), background=dep.background_load() > 0)
            if decision is not None:
                decided.append((dep.key, decision))
                self._tasks[dep.key] = asyncio.get_running_loop().create_task(
                    self._apply(dep, decision, policy), name=f"autoscale-{dep.key}")
        for key in set(self._policies) - seen:
            del self._policies[key]
        return decided

    async def _apply(self, dep: Any, decision: ScaleDecision, policy: AutoscalePolicy) -> None:
        try:
            await dep.scale_to(decision.count, decision.reason)
        except Exception as exc:
            log.error("could not scale %s to %d instance(s): %s", dep.key, decision.count, exc)
        finally:
            self._tasks.pop(dep.key, None)
            policy.restart(self.clock())

    async def _run(self) -> None:
        while True:
            try:
                self.step()
            except Exception:  # one bad deployment must not stop autoscaling for the others
                log.exception("autoscaler step failed")
            await asyncio.sleep(self.sample_s)

    async def wait_idle(self) -> None:
        """Wait for the scalings under way (tests, shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks.values()), return_exceptions=True)

    def start(self) -> None:
        if self._loop is None:
            self._loop = asyncio.get_running_loop().create_task(self._run(), name="modelyard-autoscaler")

    async def close(self) -> None:
        if self._loop is not None:
            self._loop.cancel()
            await asyncio.gather(self._loop, return_exceptions=True)
            self._loop = None
        for task in list(self._tasks.values()):
            task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)
