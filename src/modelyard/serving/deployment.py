"""A running deployment: where its requests go and how many may run at once.

A local deployment owns instances started by the runtime; a hosted one is a
remote API with no instances. Either way the gateway calls
`Deployment.generate()` / `embed()`, and the deployment

- picks the ready instance with the fewest requests in flight (a hosted API
  counts as ``instance_count`` slots of its own),
- holds a request in a bounded queue while every slot is busy: past
  ``max_queue_size_per_instance`` waiting requests per instance, or after
  ``max_queue_wait_ms``, the answer is 429 with ``Retry-After``,
- answers 408 when ``request_timeout_ms`` passes, closing the upstream
  stream so the instance stops generating,
- retries once on another instance when an instance died before answering
  (a crash costs one instance, not the request); a stream cut by a crash
  ends with an error event.

It also lends idle capacity to background (batch) work. A call made inside
`background(share)` waits, without a deadline, until a slot is free, no live
request is waiting, and background calls hold fewer than ``share`` of the
deployment's capacity less the room recent live traffic needed (its peak in
flight over the last ``LIVE_RESERVE_S`` seconds); when that leaves no room,
one slot may still do background work while no live request is in flight.
A freed slot goes to a waiting live request first. Live requests never wait
for a background call that has not started; at worst for one that has.

An autoscaled deployment (``autoscale`` in its spec) is scaled by
`serving.autoscale.Scaler` through `scale_to()`. One scaled to zero starts an
instance when a live request arrives (a *cold start*) and the request waits
for it up to ``request_timeout_ms``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import deque
from contextlib import aclosing
from typing import Any, AsyncIterator

from ..backends.openai_compat import OpenAICompatBackend
from ..catalog.card import ModelCard
from ..errors import ModelyardError
from ..runtime.base import Runtime
from ..runtime.local import Instance, InstanceSpec
from ..runtime.procstats import CpuMeter
from ..telemetry.metering import BACKGROUND, BackgroundWork
from .spec import DeploymentSpec

log = logging.getLogger(__name__)

CRASH_CODES = {"upstream_unavailable"}
RETRY_AFTER_S = 1
#: requests in flight to a hosted API per `instance_count`, unless request settings say otherwise
HOSTED_CONCURRENCY = 64

#: after its last live request a deployment keeps room for its recent live peak this long
LIVE_RESERVE_S = 10.0
#: how often a waiting background call looks again without being woken (the live reserve decays)
BACKGROUND_POLL_S = 0.5


class _HostedSlot:
    """The stand-in for an instance when the deployment is a remote API: a pool of slots."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.in_flight = 0
        self.ready = True


class Deployment:
    def __init__(self, spec: DeploymentSpec, card: ModelCard, runtime: Runtime) -> None:
        self.spec = spec
        self.card = card
        self.runtime = runtime
        self.key = f"{spec.endpoint_name}/{spec.name}"
        self.state = "new"  # new | starting | ready | failed | stopped
        self.error: str | None = None
        #: requests waiting for a free instance right now
        self.waiting = 0
        #: the requests waiting for a slot, in arrival order (each holds its place by a token)
        self._queue: deque[object] = deque()
        self._clients: dict[str, OpenAICompatBackend] = {}
        self._hosted: OpenAICompatBackend | None = None
        self._slot = _HostedSlot(f"{spec.name}-hosted")
        self._changed = asyncio.Condition()
        self._cpu = CpuMeter()
        #: background calls holding a slot, and waiting for one
        self.bg_in_flight = 0
        self.bg_waiting = 0
        self._bg_wake = asyncio.Event()
        self._live_in_flight = 0
        self._live_peak = 0
        self._live_seen = -LIVE_RESERVE_S
        #: held while instances are added or removed (the autoscaler, a cold start, a reconfiguration)
        self._scaling = asyncio.Lock()
        self._cold_start: asyncio.Task[None] | None = None

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def is_hosted(self) -> bool:
        return self.card.is_hosted

    @property
    def instances(self) -> list[Instance]:
        return self.runtime.instances(self.key)

    @property
    def capacity(self) -> int:
        """Requests the deployment serves at once when every instance is up (autoscaled: the instances now)."""
        if self.is_hosted:
            return self._capacity_per_slot()
        if self.spec.autoscale is not None:
            return self._capacity_per_slot() * max(1, len(self.instances))
        return self._capacity_per_slot() * self.spec.instance_count

    @property
    def in_flight(self) -> int:
        return self._slot.in_flight if self.is_hosted else sum(i.in_flight for i in self.instances)

    @property
    def scaling(self) -> bool:
        """Whether instances are being added or removed right now."""
        return self._scaling.locked()

    def live_load(self) -> int:
        """Live requests in flight and waiting for a slot: what the autoscaler follows."""
        return self._live_in_flight + self.waiting

    def background_load(self) -> int:
        """Background (batch) calls in flight and waiting for a slot."""
        return self.bg_in_flight + self.bg_waiting

    def describe(self) -> dict[str, Any]:
        instances = []
        for inst in self.instances:
            info = inst.describe()
            stats = self._cpu.sample(inst.process.pid) if inst.process and inst.process.returncode is None else None
            if stats:
                info.update(rss_mb=stats["rss_mb"], pss_mb=stats["pss_mb"], cpu_percent=stats["cpu_percent"])
            instances.append(info)
        return {**self.spec.model_dump(mode="json", exclude={"endpoint_name"}),
                "state": self.state, "error": self.error, "hosted": self.is_hosted,
                "in_flight": self.in_flight, "queue_length": self.waiting, "background_in_flight": self.bg_in_flight,
                "instances": instances}

    def _instance_spec(self) -> InstanceSpec:
        probe = self.spec.liveness_probe
        options = dict(self.spec.options)
        # (a runtime that places instances on their own cores, Ray's, gives each the threads it holds)
        if self.card.format == "gguf" and "threads" not in options and getattr(self.runtime, "divides_cores", True):
            # llama.cpp threads busy-wait for each other: instances that together ask for more threads than
            # there are cores slow each other down many times over (bench/instance_throughput.py). An
            # autoscaled deployment may run max_instances at once.
            most = self.spec.autoscale.max_instances if self.spec.autoscale else self.spec.instance_count
            options["threads"] = max(1, (os.cpu_count() or 1) // max(1, most))
        return InstanceSpec(key=self.key, card=self.card, options=options, env=self.spec.environment_variables,
                            probe_period_s=probe.period, probe_timeout_s=probe.timeout,
                            failure_threshold=probe.failure_threshold, resources=self.spec.resources,
                            autoscale=self.spec.autoscale, max_concurrent=self._per_instance(),
                            # a removed instance finishes its requests: none outlives the request timeout
                            drain_timeout_s=self.spec.request_settings.request_timeout_ms / 1000 + 5)

    def _instance_target(self, spec: DeploymentSpec, current: int | None = None) -> int:
        """Instances to run: ``instance_count``; autoscaled, the count now (at start ``instance_count``, and
        at least one so that a model that cannot load fails at creation) within min and max."""
        auto = spec.autoscale
        if auto is None:
            return spec.instance_count
        if current is None:
            return min(max(spec.instance_count, auto.min_instances, 1), auto.max_instances)
        return min(max(current, auto.min_instances), auto.max_instances)

    def _new_hosted_client(self) -> OpenAICompatBackend:
        settings = self.spec.request_settings
        return OpenAICompatBackend.for_card(self.card, timeout=settings.request_timeout_ms / 1000,
                                            max_retries=settings.max_retries)

    async def start(self) -> None:
        """Start instances (local) or open the client (hosted); ready when this returns."""
        self.state = "starting"
        try:
            if self.is_hosted:
                self._hosted = self._new_hosted_client()
            else:
                async with self._scaling:
                    await self.runtime.scale(self._instance_spec(), self._instance_target(self.spec))
            self.state = "ready"
        except Exception as exc:
            self.state, self.error = "failed", str(exc)
            log.error("deployment %s failed to start: %s", self.key, exc)
            raise
        finally:
            await self._notify(all_waiters=True)

    async def reconfigure(self, spec: DeploymentSpec) -> None:
        """Apply a new instance count or request settings, live.

        New instances get requests only once ready; removed ones are taken out
        of rotation first and stopped after their requests finish.
        """
        old, self.spec = self.spec, spec
        if self.is_hosted:
            if old.request_settings != spec.request_settings:
                stale, self._hosted = self._hosted, self._new_hosted_client()
                if stale is not None:
                    asyncio.get_running_loop().create_task(_close_later(stale, old.request_settings.request_timeout_ms))
        else:
            if old.request_settings.request_timeout_ms != spec.request_settings.request_timeout_ms:
                stale = list(self._clients.values())
                self._clients.clear()
                for client in stale:
                    asyncio.get_running_loop().create_task(_close_later(client, old.request_settings.request_timeout_ms))
            async with self._scaling:
                await self.runtime.scale(self._instance_spec(), self._instance_target(spec, len(self.instances)))
        await self._notify(all_waiters=True)

    async def scale_to(self, count: int, reason: str) -> None:
        """Run `count` instances (the autoscaler, a cold start): new ones take requests once ready, removed
        ones leave the rotation at once and stop when their requests are done."""
        async with self._scaling:
            if self.state != "ready" or count == len(self.instances):
                return
            await self.runtime.scale(self._instance_spec(), count, reason=reason)
        await self._notify(all_waiters=True)

    def _start_cold(self) -> None:
        """A live request found a deployment scaled to zero: start an instance (once)."""
        if self._cold_start is not None and not self._cold_start.done():
            return
        self.error = None

        async def cold_start() -> None:
            try:
                await self.scale_to(1, "cold start: a request arrived while scaled to zero")
            except Exception as exc:
                self.error = f"cold start failed: {exc}"
                log.error("deployment %s: %s", self.key, self.error)
            await self._notify(all_waiters=True)

        self._cold_start = asyncio.get_running_loop().create_task(cold_start(), name=f"cold-start-{self.key}")

    def _scaled_to_zero(self) -> bool:
        return (self.spec.autoscale is not None and not self.is_hosted and self.state == "ready"
                and not self.instances)

    async def stop(self) -> None:
        self.state = "stopped"
        if not self.is_hosted:
            await self.runtime.stop(self.key)
        for client in [*self._clients.values(), *([self._hosted] if self._hosted else [])]:
            await client.close()
        self._clients.clear()
        await self._notify(all_waiters=True)

    # --- choosing where a request runs ---------------------------------------

    def _client(self, inst: Any) -> OpenAICompatBackend:
        if self._hosted is not None:
            return self._hosted
        url = inst.url + "/v1"
        client = self._clients.get(url)
        if client is None:
            timeout = self.spec.request_settings.request_timeout_ms / 1000
            if hasattr(self.runtime, "client"):  # the runtime knows the way to its instances (Ray Serve's)
                client = self.runtime.client(inst, timeout)
            else:
                # No retries here: a failed instance is retried on another instance by `generate`.
                client = OpenAICompatBackend(url, api_key=inst.token, timeout=timeout, max_retries=0,
                                             provider="modelyard")
            self._clients[url] = client
        return client

    def _slots(self) -> list[Any]:
        if self.is_hosted:
            return [self._slot]
        return self.instances

    def _per_instance(self) -> int:
        return self.spec.request_settings.max_concurrent_requests_per_instance or (
            HOSTED_CONCURRENCY if self.is_hosted else 1)

    def _capacity_per_slot(self) -> int:
        per_instance = self._per_instance()
        # A hosted API has no instances: `instance_count` sizes its share of the remote service.
        if self.is_hosted:
            return per_instance * self.spec.instance_count
        if hasattr(self.runtime, "slot_capacity"):  # Ray Serve queues (and autoscales on) some requests itself
            return self.runtime.slot_capacity(per_instance, self.spec.autoscale)
        return per_instance

    def _free_slot(self, avoid: Any) -> Any:
        limit = self._capacity_per_slot()
        best = None
        for slot in self._slots():
            if slot.ready and slot.in_flight < limit and slot is not avoid:
                if best is None or slot.in_flight < best.in_flight:
                    best = slot
        if best is None and avoid is not None and avoid.ready and avoid.in_flight < limit:
            best = avoid  # a lone instance is retried on itself
        return best

    async def _acquire(self, avoid: Any = None, background: BackgroundWork | None = None) -> Any:
        if background is not None:
            return await self._acquire_background(background, avoid)
        if not self._queue:  # nobody waits: a free slot is this request's
            slot = self._free_slot(avoid)
            if slot is not None:
                slot.in_flight += 1
                self._live_started()
                return slot
        settings = self.spec.request_settings
        queue_limit = settings.max_queue_size_per_instance * max(len(self._slots()), 1)
        if self.waiting >= queue_limit:
            raise self._busy(f"{self.waiting} requests are already waiting")
        deadline = time.monotonic() + settings.max_queue_wait_ms / 1000
        cold = self._scaled_to_zero()
        if cold:  # wait for the instance to start, as long as the request may take
            self._start_cold()
            deadline = max(deadline, time.monotonic() + settings.request_timeout_ms / 1000)
        self.waiting += 1
        turn = object()
        self._queue.append(turn)
        try:
            async with self._changed:
                while True:
                    # first come, first served: only the head of the queue takes a slot that frees up (a request
                    # that arrives meanwhile queues behind it instead of taking the slot before it wakes)
                    slot = self._free_slot(avoid) if self._queue[0] is turn else None
                    if slot is not None:
                        self._queue.popleft()
                        if self._queue:
                            self._changed.notify_all()  # the next in line may find another free slot
                        slot.in_flight += 1
                        self._live_started()
                        return slot
                    remaining = deadline - time.monotonic()
                    failed_cold = cold and self._cold_start is not None and self._cold_start.done() and not self.instances
                    if remaining <= 0 or self.state == "stopped" or failed_cold:
                        if cold and not any(s.ready for s in self._slots()):
                            why = self.error if failed_cold else \
                                f"no instance was ready within request_timeout_ms={settings.request_timeout_ms}"
                            raise ModelyardError(f"deployment {self.key} was scaled to zero and could not start an "
                                                 f"instance: {why}", status=503, code="deployment_unavailable",
                                                 headers={"retry-after": str(RETRY_AFTER_S)})
                        if any(s.ready for s in self._slots()):
                            raise self._busy(f"no instance was free within {settings.max_queue_wait_ms} ms")
                        raise ModelyardError(f"deployment {self.key} has no ready instance ({self.state})", status=503,
                                             code="deployment_unavailable", headers={"retry-after": str(RETRY_AFTER_S)})
                    try:
                        await asyncio.wait_for(self._changed.wait(), min(remaining, 0.5))
                    except asyncio.TimeoutError:
                        pass
        finally:
            self.waiting -= 1
            if turn in self._queue:  # refused, timed out or cancelled while waiting: the next in line goes on
                self._queue.remove(turn)
                if self._queue:
                    await self._notify(all_waiters=True)

    def _live_started(self) -> None:
        self._live_in_flight += 1
        now = time.monotonic()
        if now - self._live_seen > LIVE_RESERVE_S:
            self._live_peak = 0
        self._live_seen = now
        if self._live_in_flight > self._live_peak:
            self._live_peak = self._live_in_flight

    def _background_limit(self, share: float) -> int:
        """How many slots background calls may hold now: their share, less the room live traffic keeps."""
        capacity = self._capacity_per_slot() * sum(1 for s in self._slots() if s.ready)
        if capacity == 0:
            return 0
        recent = self._live_in_flight or time.monotonic() - self._live_seen < LIVE_RESERVE_S
        reserve = max(self._live_peak, self._live_in_flight) if recent else 0
        room = capacity - reserve
        if room < 1 and not self._live_in_flight:
            room = 1  # live traffic is between requests: one slot may do background work meanwhile
        return min(max(1, int(capacity * share)), room)

    async def _acquire_background(self, work: BackgroundWork, avoid: Any) -> Any:
        self.bg_waiting += 1
        t0 = time.monotonic()
        try:
            while True:
                if self.state in ("stopped", "failed"):
                    raise ModelyardError(f"deployment {self.key} is {self.state}", status=503,
                                         code="deployment_unavailable", headers={"retry-after": str(RETRY_AFTER_S)})
                if not self.waiting and self.bg_in_flight < self._background_limit(work.share):
                    slot = self._free_slot(avoid)
                    if slot is not None:
                        slot.in_flight += 1
                        self.bg_in_flight += 1
                        return slot
                self._bg_wake.clear()
                try:
                    await asyncio.wait_for(self._bg_wake.wait(), BACKGROUND_POLL_S)
                except asyncio.TimeoutError:
                    pass
        finally:
            self.bg_waiting -= 1
            work.waited_s += time.monotonic() - t0

    def _busy(self, why: str) -> ModelyardError:
        return ModelyardError(f"deployment {self.key} is at capacity ({why}); retry later", status=429,
                              code="deployment_at_capacity", headers={"retry-after": str(RETRY_AFTER_S)})

    async def _release(self, slot: Any, background: bool = False) -> None:
        slot.in_flight -= 1
        if background:
            self.bg_in_flight -= 1
        else:
            self._live_in_flight -= 1
        if self.waiting:
            await self._notify(all_waiters=True)  # each waiter checks whether it is first in line
        elif self.bg_waiting:
            self._bg_wake.set()

    async def _notify(self, all_waiters: bool = False) -> None:
        if all_waiters:
            self._bg_wake.set()
        async with self._changed:
            if all_waiters:
                self._changed.notify_all()
            else:
                self._changed.notify()

    def _timeout(self, err: ModelyardError) -> ModelyardError:
        if err.code == "upstream_timeout":
            ms = self.spec.request_settings.request_timeout_ms
            return ModelyardError(f"deployment {self.key} did not answer within request_timeout_ms={ms}; "
                                  "the generation was stopped", status=408, code="request_timeout")
        return err

    # --- calls ------------------------------------------------------------------

    async def generate(self, kind: str, request: Any) -> AsyncIterator[dict[str, Any]]:
        tried: Any = None
        work = BACKGROUND.get()
        for attempt in range(2):
            slot = await self._acquire(avoid=tried, background=work)
            yielded = False
            try:
                # aclosing: a client that hangs up closes the instance's stream at once, which stops generation.
                async with aclosing(self._client(slot).generate(kind, request)) as chunks:
                    async for chunk in chunks:
                        yielded = True
                        yield chunk
                return
            except ModelyardError as err:
                if yielded or err.code not in CRASH_CODES or attempt == 1 or self.is_hosted:
                    raise self._timeout(err) from None
                log.warning("instance %s failed before answering (%s); retrying on another", slot.name, err.message)
                slot.suspect()
                tried = slot
            finally:
                await self._release(slot, work is not None)

    async def embed(self, request: Any) -> dict[str, Any]:
        tried: Any = None
        work = BACKGROUND.get()
        for attempt in range(2):
            slot = await self._acquire(avoid=tried, background=work)
            try:
                return await self._client(slot).embed(request)
            except ModelyardError as err:
                if err.code not in CRASH_CODES or attempt == 1 or self.is_hosted:
                    raise self._timeout(err) from None
                slot.suspect()
                tried = slot
            finally:
                await self._release(slot, work is not None)
        raise AssertionError("unreachable")


async def _close_later(client: OpenAICompatBackend, timeout_ms: int) -> None:
    """Close a replaced client once the requests it carries can have finished."""
    await asyncio.sleep(timeout_ms / 1000 + 1)
    await client.close()
