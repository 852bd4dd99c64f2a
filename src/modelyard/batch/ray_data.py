"""Batch jobs on Ray Data: a job created with ``engine: "ray-data"`` runs its lines on a Ray cluster.

The gateway stays the job's driver and its bookkeeper; Ray does the model work::

    pending lines ──from_items──▶ Dataset ──map_batches(LineRunner, actor pool 1..N)──▶ result batches
                                                  │ each actor: card ▶ weights on its node ▶ Backend
    gateway (driver) ◀──iter_batches (as they finish)──┘
        each result ▶ record ▶ budget ▶ policy ▶ (the Ray answer) ▶ BatchStore.commit_results

**Reading.** The job's pending lines (those not committed yet: on a resumed job, only those) become a
Ray Dataset with one block per mini-batch. A line whose body the request models refuse fails at once,
as on the local engine, and never reaches Ray.

**Running.** ``map_batches`` runs `LineRunner` in an autoscaling actor pool of 1 to N actors (N: the
deployment's ``autoscale.max_instances`` or ``instance_count``, times the job's share; or
MODELYARD_BATCH_RAY_MAX_ACTORS). Each actor asks Ray for the deployment's ``resources`` (CPUs, GPUs,
memory) and holds one backend of the deployment's model, built like an instance builds it
(``worker/__main__.py``): the card, the weights on that node — the gateway's own file when the node
sees it (same machine, shared disk), else the catalog's pull on that node into its MODELYARD_HOME —
and `load_backend`. It answers each line of a mini-batch in turn and hands back per line the response
(or error) body, the tokens, the seconds it worked and the time to the first token.

**Bookkeeping, the same as the local engine.** The driver takes the result batches as Ray finishes
them (``iter_batches``) and passes every line through the gateway's own stages — the record stage (one
usage record, with ``batch_id``, priced by `telemetry.metering` from the tokens and the seconds the actor
worked: the same rule as a local instance's busy seconds), the budget and the policy stage — with the
actor's answer in place of dispatch. A mini-batch's results and their usage records are committed in
one transaction (`BatchStore.commit_results`), then the error threshold, a cancel and the owner key are
checked, as on the local engine. A line that failed with a retryable status (408, 429, 5xx) runs again
in a next pass over the lines left, up to ``max_retries`` attempts, its attempts' usage records
committed with its final result.

**Killed gateway.** Only committed lines count. When the gateway (the driver) dies, Ray ends the job's
actors; the restarted gateway resumes the job and builds a Dataset of the lines still pending, so no
committed line runs again and each line gets one result and its usage records once.

**Hosted models are refused** (400, ``param: engine``): their work happens at the remote API, so Ray
actors would only add a hop; the local engine already sends such a job at the API's concurrency.

On one machine Ray adds its start-up (seconds to join, seconds per actor to load the model) and gains
nothing over the local engine's instances; it gains with the nodes a cluster adds
(bench/batch_ray_data.py measures both).
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import math
import os
import threading
import time
from typing import Any, Iterator

import orjson
from pydantic import ValidationError

from ..catalog.card import ModelCard
from ..catalog.sources import resolve_path
from ..errors import ModelyardError, from_validation_error, invalid
from ..gateway.pipeline import Call, Next, Pipeline
from ..gateway.policy import Policy
from ..raycluster import ray_connect, restore_sigterm
from ..retry import Backoff
from ..serving.endpoints import TrafficSplit
from ..settings import Settings
from ..store.batches import JobRecord, LineRecord, LineResult
from ..telemetry.cost import deployment_cost
from ..telemetry.metering import Metered
from ..wire import KINDS, gather
from .jobs import RETRYABLE, key_revoked

log = logging.getLogger(__name__)

ENGINE = "ray-data"
#: the columns `LineRunner` answers with, one row per line
RESULT_COLUMNS = ("line_id", "status", "body", "prompt_tokens", "completion_tokens", "busy_s", "ttft_s")
#: the longest wait before a line's next attempt (as on the local engine)
MAX_BACKOFF_S = 30.0
#: how long a cancelled or stopping job waits for Ray to wind its dataset down
STOP_WAIT_S = 10.0


# --- which deployment a job runs on Ray -----------------------------------------------------


def ray_installed() -> bool:
    return importlib.util.find_spec("ray") is not None


def ray_deployment(endpoints: Any, flows: Any, model: str | None, deployment: str | None) -> Any:
    """The one deployment whose model a ray-data job runs, or the 4xx that says why there is none.

    A job names its endpoint (``model``, or the one model all its lines name) and, when the endpoint
    splits its traffic between several deployments, the deployment (Ray runs one model per actor pool).
    """
    if model is None:
        raise invalid("engine 'ray-data' runs one deployment's model on Ray: name the endpoint every line goes to "
                      "(model), or give every line the same body.model.", param="model", code="engine_unsupported")
    if flows is not None and model in flows:
        raise invalid(f"'{model}' is a flow, whose steps run through the gateway; engine 'ray-data' runs one "
                      "deployment's model on Ray. Use engine 'local' for a flow.", param="engine",
                      code="engine_unsupported")
    endpoint = endpoints.get(model)  # 404 model_not_found
    if deployment is not None:
        chosen = endpoints.deployment(model, deployment)  # 404 deployment_not_found
    else:
        weighted = [name for name, w in endpoint.spec.traffic.items() if w > 0 and name in endpoint.deployments]
        if getattr(endpoint.spec, "policy", "split") != "router" and len(weighted) == 1:
            chosen = endpoint.deployments[weighted[0]]
        elif not weighted and len(endpoint.deployments) == 1 and endpoint.spec.policy != "router":
            chosen = next(iter(endpoint.deployments.values()))
        else:
            names = ", ".join(endpoint.deployments) or "none"
            raise invalid(f"endpoint '{model}' shares its requests between deployments ({names}); engine 'ray-data' "
                          "runs one deployment's model on Ray: name it (deployment).", param="deployment",
                          code="deployment_required")
    if chosen.card.is_hosted:
        raise invalid(f"deployment '{chosen.name}' of endpoint '{model}' is hosted model '{chosen.card.id}', which "
                      "answers at its remote API: engine 'ray-data' runs models on Ray nodes. Use engine 'local', "
                      "which sends the lines to the API directly.", param="engine", code="engine_unsupported")
    return chosen


def actor_count(dep: Any, share: float, override: int | None) -> int:
    """Most actors the job's pool grows to: the deployment's most instances (times the job's share)."""
    if override:
        return override
    spec = dep.spec
    most = spec.autoscale.max_instances if spec.autoscale is not None else spec.instance_count
    return max(1, math.ceil(most * share))


# --- the Ray side: one actor, one backend ---------------------------------------------------


def _weights_here(card: ModelCard, driver_path: str | None, driver_size: int | None) -> str:
    """Where the model's weights are on this node: the gateway's file when this node sees the same one
    (same machine, shared disk), else the catalog's pull into this node's MODELYARD_HOME."""
    if driver_path and os.path.exists(driver_path) and (
            driver_size is None or os.path.isdir(driver_path) or os.path.getsize(driver_path) == driver_size):
        return driver_path
    return str(resolve_path(card, Settings.from_env(), download=True))


class LineRunner:
    """Ray Data's callable class: an actor that holds one backend of a deployment's model and answers
    mini-batches of batch lines (``line_id``, ``kind``, ``body``) with `RESULT_COLUMNS`."""

    def __init__(self, card: dict[str, Any], options: dict[str, Any], timeout_s: float,
                 driver_path: str | None = None, driver_size: int | None = None) -> None:
        from ..backends.base import load_backend

        model = ModelCard.model_validate(card)
        options = dict(options)
        options.setdefault("path", _weights_here(model, driver_path, driver_size))
        self.timeout_s = timeout_s
        self.loop = asyncio.new_event_loop()
        self.backend = load_backend(model, options)
        self.loop.run_until_complete(self.backend.start())

    def __call__(self, batch: Any) -> dict[str, list[Any]]:
        out: dict[str, list[Any]] = {name: [] for name in RESULT_COLUMNS}
        for row in batch.to_pylist():
            for name, value in zip(RESULT_COLUMNS, self.loop.run_until_complete(self._answer(row))):
                out[name].append(value)
        return out

    async def _answer(self, row: dict[str, Any]) -> tuple[Any, ...]:
        kind = row["kind"]
        started = time.perf_counter()
        first: list[float] = []
        usage: dict[str, Any] = {}
        try:
            request = KINDS[kind].model_validate_json(row["body"])
            if kind == "embedding":
                body = await asyncio.wait_for(self.backend.embed(request), self.timeout_s)
            else:
                body = await asyncio.wait_for(self._generate(kind, request, started, first), self.timeout_s)
            status, text = 200, orjson.dumps(body).decode()
            usage = body.get("usage") or {}
        except ModelyardError as err:
            status, text = err.status, orjson.dumps(err.body()).decode()
        except (asyncio.TimeoutError, TimeoutError):
            err = ModelyardError(f"The request took longer than {self.timeout_s:.0f} s.", status=408,
                                 code="request_timeout")
            status, text = err.status, orjson.dumps(err.body()).decode()
        except Exception as exc:  # a bug or a backend failure: counted and retried like an instance's 500
            log.exception("batch line %s failed", row["line_id"])
            err = ModelyardError(f"The model failed on this request: {type(exc).__name__}", status=500,
                                 code="internal_error")
            status, text = err.status, orjson.dumps(err.body()).decode()
        return (row["line_id"], status, text, int(usage.get("prompt_tokens") or 0),
                int(usage.get("completion_tokens") or 0), time.perf_counter() - started, first[0] if first else None)

    async def _generate(self, kind: str, request: Any, started: float, first: list[float]) -> dict[str, Any]:
        chunks = []
        async for chunk in self.backend.generate(kind, request):
            if not first and chunk.get("choices"):
                first.append(time.perf_counter() - started)
            chunks.append(chunk)
        return gather(kind, chunks)


# --- the driver: the gateway --------------------------------------------------------------


class _Pending:
    """A line waiting for its next attempt, with the usage records of the attempts so far."""

    __slots__ = ("line", "body", "request", "attempts", "usage")

    def __init__(self, line: LineRecord, body: str, request: Any) -> None:
        self.line = line
        #: the request as the actor reads it (the job's ``model`` in place of the line's)
        self.body = body
        self.request = request
        self.attempts = 0
        self.usage: list[dict[str, Any]] = []


class RayDataEngine:
    """Runs a batch runner's ray-data jobs: one per job at a time, the runner's bookkeeping throughout.

    ``runner`` is the `BatchRunner` (its stages, usage capture, commit and stop rules are reused);
    ``settings`` the gateway's (``ray_address``: the Ray cluster, RAY_ADDRESS; unset: a Ray started in the
    gateway, once, shared with the Ray runtime; and where the gateway's own copy of a model is).
    """

    def __init__(self, runner: Any, stages: list[Any], settings: Any = None, max_actors: int | None = None) -> None:
        self.runner = runner
        self.settings = settings
        self.address = getattr(settings, "ray_address", None)
        self.max_actors = max_actors
        #: the actor's answer of each line being settled, by its call's request id (read by `_replay`)
        self._answers: dict[str, dict[str, Any]] = {}
        self.pipeline = Pipeline([*stages, Policy(runner.endpoints, TrafficSplit()), self._replay])

    # --- one job --------------------------------------------------------------------

    async def run(self, job: JobRecord, owner: Any, ctl: Any) -> None:
        """Run the job's pending lines on Ray; commit as results come. Stops (leaving lines pending) when
        ``ctl`` is stopped; a job that cannot run on Ray stops ``failed`` with the reason."""
        try:
            dep = ray_deployment(self.runner.endpoints, self.runner.flows, job.model, job.deployment)
        except ModelyardError as err:
            ctl.errors = [{"code": err.code, "line": None, "param": err.param, "message": err.message}]
            ctl.stop("failed")
            return
        lines = await asyncio.to_thread(self._pending, job.id)
        waiting: list[_Pending] = []
        refused: list[LineResult] = []
        for line in lines:
            body = orjson.loads(line.body)
            body["model"] = job.model
            try:
                if body.get("stream"):
                    raise invalid("stream is not supported in a batch request: each line gets one whole response",
                                  param="stream")
                waiting.append(_Pending(line, orjson.dumps(body).decode(), KINDS[line.kind].model_validate(body)))
            except ValidationError as exc:
                refused.append(_refused(line, from_validation_error(exc)))
            except ModelyardError as err:
                refused.append(_refused(line, err))
        if refused and not await self._commit(job, ctl, refused):
            return
        backoff = Backoff(self.runner.config.retry_backoff_s, MAX_BACKOFF_S)
        attempt = 0
        while waiting and not ctl.stopped.is_set():
            if attempt:
                await asyncio.sleep(backoff.delay(attempt - 1))
            attempt += 1
            waiting = await self._pass(job, owner, ctl, dep, waiting)

    def _pending(self, job_id: str) -> list[LineRecord]:
        lines: list[LineRecord] = []
        while True:
            chunk = self.runner.store.pending_lines(job_id, after=lines[-1].line if lines else 0, limit=5000)
            if not chunk:
                return lines
            lines.extend(chunk)

    async def _pass(self, job: JobRecord, owner: Any, ctl: Any, dep: Any,
                    lines: list[_Pending]) -> list[_Pending]:
        """One Dataset over ``lines``; the lines to try again (a retryable failure with attempts left)."""
        # joins once per gateway (seconds), then returns at once; unset: a Ray of the gateway's own, as the runtime
        await asyncio.to_thread(ray_connect, self.address or "local")
        restore_sigterm()  # the gateway's own graceful shutdown, not Ray's crash handler
        share = job.max_share or self.runner.config.max_share
        dataset = await asyncio.to_thread(self._dataset, job, dep, lines, share)
        by_id = {p.line.id: p for p in lines}
        again: list[_Pending] = []
        queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=4)
        stop = threading.Event()
        loop = asyncio.get_running_loop()
        reader: asyncio.Future[None] = loop.create_future()
        threading.Thread(target=self._read, args=(dataset, queue, loop, stop, reader), daemon=True,
                         name=f"ray-data-{job.id}").start()
        try:
            while True:
                item = await queue.get()
                if item is None:
                    break
                if isinstance(item, BaseException):
                    raise item
                results = []
                for row in item:
                    pending = by_id[row["line_id"]]
                    result = await self._settle(job, owner, dep, pending, row)
                    if result is None:
                        again.append(pending)
                    else:
                        results.append(result)
                if results and not await self._commit(job, ctl, results):
                    return []
                if owner is not None and not self.runner.keys.is_active(owner.id):
                    ctl.errors = [key_revoked(owner.id)]
                    ctl.stop("failed")
                if ctl.stopped.is_set():
                    return []
        finally:
            stop.set()
            while not queue.empty():
                queue.get_nowait()
            # the reader closes the dataset's iterator, which ends its actors; a cancelled job does not wait
            # for a mini-batch in flight longer than STOP_WAIT_S
            await asyncio.wait([reader], timeout=STOP_WAIT_S)
        return again

    def _dataset(self, job: JobRecord, dep: Any, lines: list[_Pending], share: float) -> Any:
        import ray.data  # heavy, and only on a gateway that runs a ray-data job (`ray_connect` checked the extra)

        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False
        card = dep.card
        resources = dep.spec.resources
        num_cpus = resources.num_cpus if resources is not None else 1.0
        options = dict(dep.spec.options)
        if card.format == "gguf" and "threads" not in options:
            options["threads"] = max(1, int(num_cpus))  # llama.cpp busy-waits: no more threads than CPUs asked for
        driver_path = driver_size = None
        if self.settings is not None:
            try:
                path = resolve_path(card, self.settings)
                driver_path, driver_size = str(path), (path.stat().st_size if path.is_file() else None)
            except Exception:  # not on the gateway's machine (not pulled here): each node pulls its own
                pass
        size = job.mini_batch_size
        items = [{"line_id": p.line.id, "kind": p.line.kind, "body": p.body} for p in lines]
        most = min(actor_count(dep, share, self.max_actors), math.ceil(len(items) / size))
        remote: dict[str, Any] = {"num_cpus": num_cpus}
        if resources is not None and resources.num_gpus:
            remote["num_gpus"] = resources.num_gpus
        if resources is not None and resources.memory_gb:
            remote["memory"] = int(resources.memory_gb * 1024**3)
        timeout_s = dep.spec.request_settings.request_timeout_ms / 1000
        log.info("batch %s: %d lines on Ray Data, %d-%d actors of %s (%s CPUs each)", job.id, len(items), 1, most,
                 card.id, num_cpus)
        return (ray.data.from_items(items, override_num_blocks=math.ceil(len(items) / size))
                .map_batches(LineRunner, batch_size=size, batch_format="pyarrow",
                             fn_constructor_args=(card.model_dump(mode="json"), options, timeout_s, driver_path,
                                                  driver_size),
                             # grows while mini-batches queue up at its actors (Ray Data's autoscaler)
                             compute=ray.data.ActorPoolStrategy(min_size=1, max_size=most),
                             **remote))

    @staticmethod
    def _read(dataset: Any, queue: asyncio.Queue[Any], loop: asyncio.AbstractEventLoop, stop: threading.Event,
              done: asyncio.Future[None]) -> None:
        """In a thread of its own: hand each result batch (a list of rows) to the job's task as Ray finishes
        it; None at the end, or the exception that ended it. Closing the iterator ends the dataset's actors."""
        def put(item: Any) -> None:
            asyncio.run_coroutine_threadsafe(queue.put(item), loop).result()

        batches: Iterator[Any] = iter(dataset.iter_batches(batch_size=None, batch_format="pyarrow",
                                                           prefetch_batches=0))
        try:
            for batch in batches:
                if stop.is_set():
                    return
                put(batch.to_pylist())
            put(None)
        except BaseException as exc:
            if not stop.is_set():
                try:
                    put(exc)
                except RuntimeError:  # the loop is gone: the gateway stopped
                    pass
        finally:
            close = getattr(batches, "close", None)
            try:
                if close is not None:
                    close()
            finally:
                try:
                    loop.call_soon_threadsafe(lambda: done.done() or done.set_result(None))
                except RuntimeError:
                    pass

    # --- one line's result, through the gateway's stages ---------------------------------

    async def _settle(self, job: JobRecord, owner: Any, dep: Any, pending: _Pending,
                      row: dict[str, Any]) -> LineResult | None:
        """The line's result (with every attempt's usage), or None when it should run again."""
        pending.attempts += 1
        call = Call(pending.line.kind, pending.request, None, target=dep.name, batch_id=job.id)
        call.key = owner
        call.started = time.perf_counter() - float(row["busy_s"])  # the record's latency: the actor's seconds
        self._answers[call.request_id] = row
        error: ModelyardError | None = None
        try:
            await self.pipeline(call)
        except ModelyardError as err:
            error = err
        finally:
            self._answers.pop(call.request_id, None)
            pending.usage.extend(self.runner._usage.take(call.request_id))
        line = pending.line
        if error is None:
            return LineResult(line_id=line.id, state="succeeded", attempts=pending.attempts, status_code=200,
                              request_id=call.request_id, response=orjson.dumps(call.body).decode()
                              if job.output_action == "append_row" else None, usage=pending.usage)
        if error.status in RETRYABLE and pending.attempts < job.max_retries:
            log.info("batch %s line %d: attempt %d failed on Ray (%s %s); trying again", job.id, line.line,
                     pending.attempts, error.status, error.code)
            return None
        return LineResult(line_id=line.id, state="failed", attempts=pending.attempts, status_code=error.status,
                          request_id=call.request_id, response=orjson.dumps(error.body()).decode(),
                          error_code=error.code, usage=pending.usage)

    async def _replay(self, call: Call, call_next: Next) -> None:
        """The dispatch stage's place: the actor's answer, metered as a local instance's would be."""
        row = self._answers[call.request_id]
        busy_s = float(row["busy_s"])
        status = int(row["status"])
        body = orjson.loads(row["body"])
        prompt, completion = int(row["prompt_tokens"]), int(row["completion_tokens"])
        metered = Metered(call.deployment, prompt_tokens=prompt, completion_tokens=completion, busy_s=busy_s,
                          ttft_s=row["ttft_s"], cost_usd=deployment_cost(call.deployment, prompt, completion, busy_s))
        call.add(metered)
        if status != 200:
            raise ModelyardError.from_body(status, body)
        call.body = body

    async def _commit(self, job: JobRecord, ctl: Any, results: list[LineResult]) -> bool:
        """Commit results like the local engine; False when the job must stop (threshold, cancel)."""
        after = await self.runner._commit(ctl, results)
        verdict = self.runner._verdict(after)
        if verdict is not None:
            ctl.stop(verdict)
            return False
        return True


def _refused(line: LineRecord, err: ModelyardError) -> LineResult:
    return LineResult(line_id=line.id, state="failed", attempts=1, status_code=err.status, request_id=None,
                      response=orjson.dumps(err.body()).decode(), error_code=err.code, usage=[])

