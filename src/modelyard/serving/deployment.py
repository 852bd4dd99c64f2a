"""A running deployment: where its requests go and how many may run at once.

A local deployment owns instances started by the runtime; a hosted one is a
single remote API with no instances. Either way the gateway calls
`Deployment.generate()` / `embed()`, and the deployment

- picks the ready instance with the fewest requests in flight,
- holds a request in a queue while every instance is at its
  ``max_concurrent_requests_per_instance`` (429 after ``max_queue_wait_ms``),
- retries once on another instance when an instance died before answering
  (a crash costs one instance, not the request).
"""

from __future__ import annotations

import asyncio
import logging
import time
from contextlib import aclosing
from typing import Any, AsyncIterator

from ..backends.openai_compat import OpenAICompatBackend
from ..catalog.card import ModelCard
from ..errors import ModelyardError
from ..runtime.local import Instance, InstanceSpec, LocalRuntime
from .spec import DeploymentSpec

log = logging.getLogger(__name__)

CRASH_CODES = {"upstream_unavailable"}


class Deployment:
    def __init__(self, spec: DeploymentSpec, card: ModelCard, runtime: LocalRuntime) -> None:
        self.spec = spec
        self.card = card
        self.runtime = runtime
        self.key = f"{spec.endpoint_name}/{spec.name}"
        self.state = "new"  # new | starting | ready | failed | stopped
        self.error: str | None = None
        self._clients: dict[str, OpenAICompatBackend] = {}
        self._hosted: OpenAICompatBackend | None = None
        self._changed = asyncio.Condition()

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def is_hosted(self) -> bool:
        return self.card.is_hosted

    @property
    def instances(self) -> list[Instance]:
        return self.runtime.instances(self.key)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "model": self.card.id, "state": self.state, "error": self.error,
                "instance_count": self.spec.instance_count, "hosted": self.is_hosted,
                "instances": [i.describe() for i in self.instances]}

    def _instance_spec(self) -> InstanceSpec:
        probe = self.spec.liveness_probe
        return InstanceSpec(key=self.key, card=self.card, options=self.spec.options, env=self.spec.environment_variables,
                            probe_period_s=probe.period, probe_timeout_s=probe.timeout,
                            failure_threshold=probe.failure_threshold)

    async def start(self) -> None:
        """Start instances (local) or open the client (hosted); ready when this returns."""
        self.state = "starting"
        try:
            if self.is_hosted:
                timeout = self.spec.request_settings.request_timeout_ms / 1000
                self._hosted = OpenAICompatBackend.for_card(self.card, timeout=timeout)
            else:
                await self.runtime.scale(self._instance_spec(), self.spec.instance_count)
            self.state = "ready"
        except Exception as exc:
            self.state, self.error = "failed", str(exc)
            log.error("deployment %s failed to start: %s", self.key, exc)
            raise
        finally:
            async with self._changed:
                self._changed.notify_all()

    async def scale(self, count: int) -> None:
        self.spec = self.spec.model_copy(update={"instance_count": count})
        if not self.is_hosted:
            await self.runtime.scale(self._instance_spec(), count)
        async with self._changed:
            self._changed.notify_all()

    async def stop(self) -> None:
        self.state = "stopped"
        if not self.is_hosted:
            await self.runtime.stop(self.key)
        for client in [*self._clients.values(), *([self._hosted] if self._hosted else [])]:
            await client.close()
        self._clients.clear()

    # --- choosing where a request runs ---------------------------------------

    def _client(self, inst: Instance) -> OpenAICompatBackend:
        url = inst.url + "/v1"
        client = self._clients.get(url)
        if client is None:
            timeout = self.spec.request_settings.request_timeout_ms / 1000
            # No retries here: a failed instance is retried on another instance by `_acquire`.
            client = OpenAICompatBackend(url, timeout=timeout, max_retries=0, provider="modelyard")
            self._clients[url] = client
        return client

    async def _acquire(self, avoid: Instance | None = None) -> Instance:
        limit = self.spec.request_settings.max_concurrent_requests_per_instance
        wait_s = self.spec.request_settings.max_queue_wait_ms / 1000
        deadline = time.monotonic() + wait_s
        async with self._changed:
            while True:
                ready = [i for i in self.instances if i.ready and i.in_flight < limit and i is not avoid]
                if not ready and avoid is not None:
                    ready = [i for i in self.instances if i.ready and i.in_flight < limit]
                if ready:
                    inst = min(ready, key=lambda i: i.in_flight)
                    inst.in_flight += 1
                    return inst
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    if any(i.ready for i in self.instances):
                        raise ModelyardError(f"deployment {self.key} is at capacity; retry later", status=429,
                                             code="deployment_at_capacity")
                    raise ModelyardError(f"deployment {self.key} has no ready instance ({self.state})", status=503,
                                         code="deployment_unavailable")
                try:
                    await asyncio.wait_for(self._changed.wait(), min(remaining, 0.25))
                except asyncio.TimeoutError:
                    pass

    async def _release(self, inst: Instance) -> None:
        inst.in_flight -= 1
        async with self._changed:
            self._changed.notify()

    # --- calls ------------------------------------------------------------------

    async def generate(self, kind: str, request: Any) -> AsyncIterator[dict[str, Any]]:
        if self._hosted is not None:
            async with aclosing(self._hosted.generate(kind, request)) as chunks:
                async for chunk in chunks:
                    yield chunk
            return
        tried: Instance | None = None
        for attempt in range(2):
            inst = await self._acquire(avoid=tried)
            yielded = False
            try:
                # aclosing: a client that hangs up closes the instance's stream at once, which stops generation.
                async with aclosing(self._client(inst).generate(kind, request)) as chunks:
                    async for chunk in chunks:
                        yielded = True
                        yield chunk
                return
            except ModelyardError as err:
                if yielded or err.code not in CRASH_CODES or attempt == 1:
                    raise
                log.warning("instance %s failed before answering (%s); retrying on another", inst.name, err.message)
                tried = inst
            finally:
                await self._release(inst)

    async def embed(self, request: Any) -> dict[str, Any]:
        if self._hosted is not None:
            return await self._hosted.embed(request)
        tried: Instance | None = None
        for attempt in range(2):
            inst = await self._acquire(avoid=tried)
            try:
                return await self._client(inst).embed(request)
            except ModelyardError as err:
                if err.code not in CRASH_CODES or attempt == 1:
                    raise
                tried = inst
            finally:
                await self._release(inst)
        raise AssertionError("unreachable")
