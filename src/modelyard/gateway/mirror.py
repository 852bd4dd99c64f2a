"""The mirror stage: a share of live traffic, copied to a deployment under test.

An endpoint's ``mirror_traffic`` ({deployment: percent}) sends a copy of
that share of its live requests to a deployment that has no live traffic.
The copy runs in the background through its own record ▶ dispatch chain:
its answer is never returned to the client, and it is recorded like any
request with the route ``mirror:NAME``, so its latency, errors and tokens
can be compared with the live deployment's. A slow or failing mirror never
slows or fails the live request; when too many copies are already running
the new one is skipped rather than queued. Requests that name a deployment
are never mirrored.
"""

from __future__ import annotations

import asyncio
import logging
import random

from .pipeline import Call, Next, Pipeline

log = logging.getLogger(__name__)


class Mirror:
    def __init__(self, shadow: Pipeline, *, max_running: int = 64, rng: random.Random | None = None) -> None:
        self.shadow = shadow
        self.max_running = max_running
        self.rng = rng or random.Random()
        self._running: set[asyncio.Task[None]] = set()
        self.skipped = 0

    async def __call__(self, call: Call, call_next: Next) -> None:
        mirror = call.endpoint.spec.mirror_traffic if call.endpoint is not None else None
        if mirror and call.target is None:
            for name, percent in mirror.items():
                target = call.endpoint.deployments.get(name)
                if target is not None and target is not call.deployment and self.rng.random() * 100 < percent:
                    self._start(call, target)
        await call_next(call)

    def _start(self, call: Call, target) -> None:
        if len(self._running) >= self.max_running:
            self.skipped += 1
            log.warning("mirror to %s skipped: %d copies already running", target.name, len(self._running))
            return
        copy = Call(kind=call.kind, request=call.request, api_key=call.api_key, key=call.key,
                    endpoint=call.endpoint, deployment=target, route=f"mirror:{target.name}",
                    budget=call.budget)
        task = asyncio.get_running_loop().create_task(self._run(copy))
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def _run(self, copy: Call) -> None:
        try:
            await self.shadow(copy)
            if copy.stream is not None:
                async for _ in copy.stream:
                    pass
        except Exception as exc:  # recorded by the shadow chain's record stage; never the client's problem
            log.debug("mirrored call to %s failed: %s", copy.deployment.name, exc)

    async def close(self) -> None:
        for task in list(self._running):
            task.cancel()
        await asyncio.gather(*self._running, return_exceptions=True)
