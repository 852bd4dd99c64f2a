"""The cache stage: answer from an earlier response when the endpoint allows it.

After auth (and the budget), before the policy: a hit never reaches a
deployment. For an endpoint whose spec has ``cache.mode`` ``exact`` or
``semantic``, a chat or completion request is

1. **checked**: cacheable by default only when its answer is meant to be
   repeatable (``temperature`` 0 or a ``seed``, no tools, one choice); the
   client opts in with ``x-modelyard-cache: allow``, skips the look-up with
   ``Cache-Control: no-cache`` and skips storing with ``no-store``;
2. **looked up** (see `modelyard.cache.service.ResponseCache.lookup`);
3. on a hit, **replayed** in the format asked for — a JSON body, or an SSE
   stream of the cached text — at zero cost, the usage line recording the
   tokens and USD the original answer cost (``saved_tokens``,
   ``saved_usd``);
4. on a miss, **stored** once the answer is complete, unless it failed or
   was cut by the token limit.

A semantic neighbour is served only when it asks the same thing
(``cache.verify``, see `modelyard.cache.verify`); with ``verify: judge`` the
`DeploymentJudge` asks one of the endpoint's deployments (``cache.judge``,
default its cheapest tier). ``x-modelyard-cache-rejected`` names the checks
that refused neighbours on the way (``numbers``, ``terms``, ``judge`` …).
A -1 rating of a cached answer deletes its entry (`modelyard.gateway.feedback`).

The ``x-modelyard-cache`` header says what happened: ``hit``,
``semantic-hit``, ``miss``, ``bypass`` (not cacheable, or a request that
names a deployment), ``unavailable`` (the store failed: the request is
answered without it), ``warming`` (the store is still loading its index
after a start: answered without it too) or ``off``; ``x-modelyard-cache-similarity`` gives the
cosine similarity of a semantic hit (1 for an exact one), or of the nearest
entry on a semantic miss. The cache never fails a request: its own errors
are logged and counted, and the call goes on.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from dataclasses import replace
from typing import Any, AsyncIterator

import anyio
import orjson

from ..cache.entry import storable
from ..cache.keys import cache_control, not_repeatable, request_keys
from ..cache.service import Lookup, ResponseCache
from ..telemetry import metering
from ..wire import KINDS, SSEDecoder, answer_text, gather, new_id, now, replay_stream, usage
from .pipeline import Call, Next, resolve_endpoint

log = logging.getLogger(__name__)

#: seconds the judge may take before its silence counts as "not the same question"
JUDGE_TIMEOUT_S = 2.0
JUDGE_PROMPT = ("Do these two questions ask for the same information, so that one answer serves both? "
                "Reply with one word, yes or no.\nQuestion A: {a}\nQuestion B: {b}")


class DeploymentJudge:
    """``verify: judge``: asks a deployment whether two questions are the same (a yes/no chat completion)."""

    def __init__(self, deployment: Any) -> None:
        self.deployment = deployment

    async def __call__(self, cached: str, query: str, call: Call | None = None) -> bool:
        """Whether the deployment says the two questions are the same. The judge's tokens and cost are
        counted on `call` (so its usage record and the budgets carry them), a failed judgement's too —
        except one cut off by `JUDGE_TIMEOUT_S`, whose partial use is not known (the look-up goes on
        without it)."""
        request = KINDS["chat"].model_validate({
            "model": self.deployment.name, "temperature": 0, "max_tokens": 3, "stream": False,
            "messages": [{"role": "user", "content": JUDGE_PROMPT.format(a=cached, b=query)}]})
        try:
            body, metered = await asyncio.wait_for(metering.complete(self.deployment, "chat", request),
                                                   JUDGE_TIMEOUT_S)
        except metering.MeteringError as err:
            if call is not None:
                call.add(err.metered)
            raise
        if call is not None:
            call.add(metered)
        return answer_text("chat", body).strip().lower().lstrip("*\"' ").startswith("yes")


class Cache:
    """The cache stage (see the module docstring)."""

    def __init__(self, endpoints, metrics, cache: ResponseCache | None = None) -> None:
        self.endpoints = endpoints
        self.metrics = metrics.cache
        self.cache = cache or ResponseCache(self.metrics)
        self._warming: set[asyncio.Task] = set()
        self._judges: dict[tuple[str, str], DeploymentJudge] = {}

    def warm(self) -> None:
        """Open the caches of the endpoints that have one, in the background, so first requests need not wait."""
        loop = asyncio.get_running_loop()
        for endpoint in self.endpoints.all():
            if endpoint.spec.cache.enabled:
                task = loop.create_task(self.cache.store(endpoint.name, endpoint.spec.cache))
                self._warming.add(task)
                task.add_done_callback(self._warming.discard)

    async def close(self) -> None:
        await asyncio.gather(*self._warming, return_exceptions=True)
        await self.cache.close()

    async def __call__(self, call: Call, call_next: Next) -> None:
        endpoint = resolve_endpoint(call, self.endpoints)
        if endpoint is None:
            return await call_next(call)  # the policy stage says what is wrong with the name
        spec = endpoint.spec.cache
        if spec.mode == "off" or call.kind == "embedding":
            return await call_next(call)
        try:
            keys = self._keys(call, endpoint, spec)
        except Exception:  # the cache never fails a request
            log.exception("working out the cache keys failed on endpoint %s", endpoint.name)
            keys = None
        if keys is None:
            call.cache = "bypass"
            self.metrics.lookups.labels(endpoint.name, "bypass").inc()
            return await call_next(call)
        before = (call.prompt_tokens, call.completion_tokens, call.cost_usd)  # a judge adds its own use
        try:
            judge = self._judge(endpoint, spec)
            found = await self.cache.lookup(endpoint.name, spec, keys,
                                            functools.partial(judge, call=call) if judge is not None else None)
        except Exception as exc:  # the cache never fails a request
            log.exception("cache look-up failed on endpoint %s", endpoint.name)
            self.cache.failed(endpoint.name, exc)
            found = Lookup("unavailable")
        self.metrics.lookups.labels(endpoint.name, found.result).inc()
        judged = (call.prompt_tokens - before[0], call.completion_tokens - before[1], call.cost_usd - before[2])
        if found.similarity is not None:
            call.headers["x-modelyard-cache-similarity"] = f"{found.similarity:.4f}"
        if found.rejected:
            call.headers["x-modelyard-cache-rejected"] = ",".join(dict.fromkeys(found.rejected))
        if found.entry is not None:
            self._replay(call, found)
            return
        call.cache = found.result
        await call_next(call)
        if not keys.store or found.result in ("unavailable", "warming"):
            return
        if call.stream is not None:
            call.stream = self._store_when_done(call, call.stream, spec, keys, found, judged)
        elif call.status == 200 and storable(call.body):
            await self._save(call, spec, keys, found, call.body, judged)  # type: ignore[arg-type]

    def _judge(self, endpoint: Any, spec: Any) -> DeploymentJudge | None:
        """The endpoint's judge (``verify: judge``): the deployment ``cache.judge`` names, else its cheapest tier."""
        if spec.verify != "judge" or spec.mode != "semantic":
            return None
        name = spec.judge or (endpoint.spec.tiers[0] if getattr(endpoint.spec, "tiers", None) else None) \
            or next(iter(endpoint.deployments), None)
        deployment = endpoint.deployments.get(name) if name else None
        if deployment is None:
            return None
        judge = self._judges.get((endpoint.name, name))
        if judge is None or judge.deployment is not deployment:
            judge = self._judges[(endpoint.name, name)] = DeploymentJudge(deployment)
        return judge

    def _keys(self, call: Call, endpoint: Any, spec: Any):
        """The request's cache keys, or None when it is not to be cached."""
        if call.target is not None:
            return None  # a request aimed at one deployment wants that deployment's answer
        allow, no_lookup, no_store = cache_control(call.request_headers)
        if not allow and not_repeatable(call.request) is not None:
            return None
        if no_lookup and no_store:
            return None
        live = [d for name, d in endpoint.deployments.items() if endpoint.spec.traffic.get(name, 0) > 0]
        models = tuple(sorted({d.card.id for d in (live or endpoint.deployments.values())}))
        # `scope: key`: the key itself (only ever hashed into the partition), not its row id, which two
        # gateways with databases of their own could both give to different keys of a shared Redis cache.
        scope = "*" if spec.scope == "endpoint" else f"key:{call.api_key or '-'}"
        keys = request_keys(call.kind, call.request, endpoint=endpoint.name, models=models, scope=scope)
        if keys is None:
            return None
        if no_lookup or no_store:
            keys = replace(keys, lookup=not no_lookup, store=not no_store)
        return keys

    # --- a hit ----------------------------------------------------------------------------

    def _replay(self, call: Call, found: Lookup) -> None:
        entry = found.entry
        assert entry is not None
        call.cache = found.result
        call.route = "cache"
        call.saved_tokens = entry.tokens
        call.saved_usd = entry.cost_usd
        self.metrics.saved_tokens.labels(call.endpoint.name).inc(entry.tokens)
        if entry.cost_usd:
            self.metrics.saved_usd.labels(call.endpoint.name).inc(entry.cost_usd)
        body = dict(entry.body)
        body["id"] = new_id("chatcmpl" if entry.kind == "chat" else "cmpl")
        self.cache.remember(body["id"], call.endpoint.name, entry.id, found.result, found.similarity or 1.0,
                            getattr(call.key, "id", None))
        body["created"] = now()
        body["usage"] = usage(0, 0)
        if call.streaming:
            call.ttft_s = call.elapsed_s()
            call.stream = replay_stream(entry.kind, body, include_usage=call.request.include_usage)
        else:
            call.body = body

    # --- a miss ---------------------------------------------------------------------------

    async def _save(self, call: Call, spec: Any, keys: Any, found: Lookup, body: dict[str, Any],
                    judged: tuple[int, int, float] = (0, 0, 0.0)) -> None:
        """Store the answer with what generating it cost (the judge's part of the call left out: a later hit
        saves the answer's cost, not the judging's)."""
        try:
            saved = await self.cache.save(call.endpoint.name, spec, keys, call.kind, body,
                                          call.prompt_tokens - judged[0], call.completion_tokens - judged[1],
                                          max(call.cost_usd - judged[2], 0.0), found.vector)
        except Exception as exc:
            log.exception("storing an answer in the cache of %s failed", call.endpoint.name)
            self.cache.failed(call.endpoint.name, exc)
            return
        if saved:
            self.metrics.stored.labels(call.endpoint.name).inc()
            if isinstance(body.get("id"), str):  # so that a -1 rating of this answer also removes it
                self.cache.remember(body["id"], call.endpoint.name, keys.exact, "stored", 1.0,
                                    getattr(call.key, "id", None))

    async def _store_when_done(self, call: Call, stream: AsyncIterator[bytes], spec: Any, keys: Any,
                               found: Lookup, judged: tuple[int, int, float]) -> AsyncIterator[bytes]:
        """Pass the client's events on; once the stream has ended well, store the answer it carried."""
        events: list[bytes] = []
        try:
            async for item in stream:
                events.append(item)
                yield item
        except BaseException:
            with anyio.CancelScope(shield=True):
                await stream.aclose()  # type: ignore[attr-defined]
            raise
        if call.status != 200:
            return
        try:
            body = _gathered(call.kind, b"".join(events))
        except Exception:  # an answer that cannot be read back is simply not stored
            log.exception("reading back a streamed answer for the cache of %s failed", call.endpoint.name)
            return
        if body is not None and storable(body):
            await self._save(call, spec, keys, found, body, judged)


def _gathered(kind: str, raw: bytes) -> dict[str, Any] | None:
    """The whole answer carried by a stream's SSE bytes, or None when it holds an error."""
    decoder = SSEDecoder()
    chunks = []
    for data in decoder.feed(raw) + decoder.flush():
        if data == b"[DONE]":
            continue
        try:
            chunk = orjson.loads(data)
        except orjson.JSONDecodeError:
            return None
        if "error" in chunk:
            return None
        if "modelyard_correction" not in chunk:  # a speculative correction event is not part of the answer
            chunks.append(chunk)
    if not chunks:
        return None
    return gather(kind, chunks)
