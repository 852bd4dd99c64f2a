"""The batch runner: jobs run inside the gateway process, durably, on capacity live traffic leaves.

A job moves through OpenAI's statuses::

    validating ──▶ in_progress ──▶ finalizing ──▶ completed
        │              ├──▶ cancelling ──▶ cancelled
        └──▶ failed    ├──▶ failed   (more failed lines than error_threshold)
                       └──▶ expired  (the 24 h completion window passed)

**Validating** reads the input file (`validate.parse_input`); a bad file
fails the job with every problem named by line, a good one becomes one
``batch_lines`` row per request and the job is ``in_progress``.

**Running.** Pending lines are read in input order a *mini-batch* at a
time. Workers (as many as the target deployments serve at once, times the
job's share) take them one line at a time, and once every line of a
mini-batch has finished, its results, their usage records and the job's
counters are committed in one transaction (`BatchStore.commit_results`);
the error threshold is checked after each commit. Each line goes through a pipeline of the
gateway's own stages — record ▶ policy (the endpoint's traffic split, or the
job's deployment) ▶ dispatch — inside `serving.deployment.background()`, so
it waits for capacity live requests leave and never holds more than the
job's share of a deployment. A line is attempted up to ``max_retries``
times on a retryable error (408, 429, 5xx), with a doubling back-off; a
body the request models refuse fails at once.

**Durable.** Only committed lines count. A line whose result was not
committed when the gateway stopped (cleanly or killed) is still pending and
runs again when the gateway starts (`BatchRunner.start` resumes every
unfinished job), so the output has every input line exactly once, and so do
the usage records of the lines that succeeded.

**Engines.** The above is the ``local`` engine, the default. A job created with ``engine:
"ray-data"`` runs its lines as a Ray Dataset on a Ray cluster instead (`ray_data.RayDataEngine`),
committed through the same stages and `BatchStore.commit_results`, with the same threshold, cancel,
retry and resume rules.

**Expired files** (uploaded with ``expires_after``) are deleted by a sweeper
at start and every MODELYARD_BATCH_SWEEP_INTERVAL_S, except the input of a
job that has not finished, so that a key's quota frees up and the disk the
database lives on does not fill.

**Finishing** writes the output file (lines that succeeded) and the error
file (lines that failed, and — for a cancelled, failed or expired job — the
lines that never ran), in input order, and moves the job to its final
status in the same transaction that adds the files' rows.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import time
from datetime import timedelta
from typing import Any

import orjson
import tenacity
from pydantic import ValidationError

from ..errors import ModelyardError, from_validation_error, invalid, not_found
from ..gateway.dispatch import dispatch
from ..gateway.flows import Flows
from ..gateway.budget import Budget
from ..gateway.pipeline import Call, Pipeline
from ..gateway.policy import Policy
from ..gateway.record import Record
from ..retry import Backoff, retry_after_s
from ..telemetry.metering import background
from ..serving.endpoints import TrafficSplit
from ..store.batches import ID_WIDTH, BatchStore, JobRecord, LineRecord, LineResult, storable
from ..store.models import utcnow
from ..store.usage import normalize_record
from ..wire import KINDS
from .files import FileStore
from .jobs import NOT_RUN, RETRYABLE, BatchConfig, BatchCreate, key_revoked as _key_revoked, output_line
from .ray_data import RayDataEngine, ray_deployment, ray_installed
from .validate import parse_input

log = logging.getLogger(__name__)

MAX_BACKOFF_S = 30.0
#: how long a failing commit of results is retried before the job gives up
COMMIT_RETRY_S = 60.0
#: ... but only this long once the gateway is stopping, so that the usage writer still flushes within a
#: typical 30 s shutdown grace (lines not committed run again after the restart)
SHUTDOWN_COMMIT_RETRY_S = 5.0


class _UsageCapture:
    """Stands in for the `UsageWriter`: keeps each attempt's usage record until its line commits."""

    def __init__(self) -> None:
        self._records: dict[str, dict[str, Any]] = {}
        #: a flow line's steps' records, by the line's request id: they commit with the line
        self._steps: dict[str, list[dict[str, Any]]] = {}

    def submit(self, record: dict[str, Any]) -> None:
        row = normalize_record(record)
        if row.get("parent_request_id"):
            self._steps.setdefault(row["parent_request_id"], []).append(row)
        else:
            self._records[row["request_id"]] = row

    def take(self, request_id: str) -> list[dict[str, Any]]:
        """The attempt's record and, for a flow, its steps' records."""
        own = self._records.pop(request_id, None)
        return [*self._steps.pop(request_id, ()), *([own] if own is not None else [])]


class _Quiet:
    """Batch lines stay out of the Prometheus latency and in-flight series, which describe live traffic."""

    class _Gauge:
        def inc(self) -> None: ...
        def dec(self) -> None: ...

    in_flight = _Gauge()

    def observe(self, *args: Any) -> None: ...


class _Control:
    """One running job: why it should stop, and the results not yet committed."""

    def __init__(self, job_id: str) -> None:
        self.id = job_id
        self.task: asyncio.Task[None] | None = None
        self.reason: str | None = None  # cancelled | failed | expired
        self.shutdown = False
        self.stopped = asyncio.Event()
        #: mini-batches handed out and not yet committed
        self.open: list[_MiniBatch] = []
        self.commits: set[asyncio.Task[JobRecord]] = set()
        #: what broke a worker (a commit that kept failing, a bug): the job fails with it
        self.error: Exception | None = None
        #: the errors a job that stops as ``failed`` reports (None: the job's own)
        self.errors: list[dict[str, Any]] | None = None

    def stop(self, reason: str | None) -> None:
        if reason is not None and self.reason is None:
            self.reason = reason
        self.stopped.set()


class _MiniBatch:
    """Lines read, and committed, together; their results as they finish."""

    def __init__(self, lines: list[LineRecord]) -> None:
        self.lines = lines
        self.results: list[LineResult | None] = [None] * len(lines)
        self.left = len(lines)

    def finished(self) -> list[LineResult]:
        return [r for r in self.results if r is not None]


class _Feed:
    """Hands out pending lines in input order, each once, reading them a mini-batch at a time.

    Workers take single lines, so a slow line holds up no other and every worker stays busy to the
    end of the job; a mini-batch is committed by whichever worker finishes its last line.
    """

    def __init__(self, store: BatchStore, job: JobRecord, ctl: _Control) -> None:
        self.store = store
        self.job = job
        self.ctl = ctl
        self.after = 0
        self.current: _MiniBatch | None = None
        self.pos = 0
        self.lock = asyncio.Lock()

    async def next(self) -> tuple[_MiniBatch, int] | None:
        async with self.lock:
            if self.current is None or self.pos == len(self.current.lines):
                lines = await asyncio.to_thread(self.store.pending_lines, self.job.id, after=self.after,
                                                limit=self.job.mini_batch_size)
                if not lines:
                    return None
                self.after = lines[-1].line
                self.current, self.pos = _MiniBatch(lines), 0
                self.ctl.open.append(self.current)
            self.pos += 1
            return self.current, self.pos - 1


class BatchRunner:
    """Creates, runs, resumes and cancels batch jobs; one per gateway."""

    def __init__(self, store: BatchStore, files: FileStore, endpoints: Any, keys: Any, *,
                 config: BatchConfig, budget: Any = None, flows: Any = None, indexes: Any = None,
                 settings: Any = None) -> None:
        self.store = store
        self.flows = flows
        self.files = files
        self.endpoints = endpoints
        self.keys = keys
        self.config = config
        self._usage = _UsageCapture()
        # A spent budget stops a job's paid lines like live requests (429, retried, then failed).
        stages = [Record(self._usage, _Quiet(), budget)] + ([Budget(budget, endpoints)] if budget is not None else [])
        answer = [Policy(endpoints, TrafficSplit()), dispatch]
        # A line naming a flow runs it (`gateway.flows`); its steps' records commit with the line.
        staged = [Flows(flows, Pipeline([*stages, *answer]), indexes)] if flows is not None else []
        self.pipeline = Pipeline([*stages, *staged, *answer])
        #: jobs with ``engine: ray-data`` (the same stages, the actors' answers in place of dispatch)
        self.ray_data = RayDataEngine(self, stages, settings, max_actors=config.ray_max_actors)
        self._jobs: dict[str, _Control] = {}
        self._closing = False
        self._closing_since: float | None = None
        self._sweeper: asyncio.Task[None] | None = None
        #: several gateways on one database: a job runs where its lease (``batch:ID``) is held
        #: (`store.leases.LeaseKeeper`; None: every job runs here)
        self.leases: Any = None

    # --- lifecycle --------------------------------------------------------------------

    async def start(self) -> None:
        """Remove files a crash left half-written, resume every unfinished job and start sweeping expired files."""
        await asyncio.to_thread(self.files.sweep)
        for job in await asyncio.to_thread(self.store.unfinished_jobs):
            if await self._claim(job.id):
                log.info("batch %s: resuming (%s, %d/%d lines done)", job.id, job.status, job.completed + job.failed,
                         job.total)
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep_expired(), name="batch-file-sweeper")

    async def _sweep_expired(self) -> None:
        """Delete expired files now and every ``sweep_interval_s``; a failure (the database is away) waits for
        the next round."""
        while True:
            try:
                await asyncio.to_thread(self.files.remove_expired)
            except Exception as exc:
                log.warning("could not remove expired files (%s: %s); trying again in %.0f s", type(exc).__name__,
                            exc, self.config.sweep_interval_s)
            await asyncio.sleep(self.config.sweep_interval_s)

    async def close(self) -> None:
        """Stop every job; finished lines are committed, unfinished ones run again after a restart."""
        self._closing = True
        self._closing_since = time.monotonic()
        if self._sweeper is not None:
            self._sweeper.cancel()
            await asyncio.gather(self._sweeper, return_exceptions=True)
        controls = list(self._jobs.values())
        for ctl in controls:
            ctl.shutdown = True
            ctl.stop(None)
        await asyncio.gather(*(c.task for c in controls if c.task is not None), return_exceptions=True)

    def _stop_when_closing(self, state: tenacity.RetryCallState) -> bool:
        """A commit stops trying once the gateway has been stopping for `SHUTDOWN_COMMIT_RETRY_S`."""
        if not self._closing:
            return False
        self._closing_since = self._closing_since or time.monotonic()
        return time.monotonic() - self._closing_since >= SHUTDOWN_COMMIT_RETRY_S

    def _launch(self, job_id: str) -> None:
        if self._closing or job_id in self._jobs:
            return
        ctl = _Control(job_id)
        self._jobs[job_id] = ctl
        ctl.task = asyncio.get_running_loop().create_task(self._run(ctl), name=f"batch-{job_id}")

    async def _claim(self, job_id: str) -> bool:
        """Run the job here if this gateway gets its lease (always, with no leases); False when another has it."""
        if self._closing or job_id in self._jobs:
            return False
        if self.leases is not None and not await self.leases.acquire(f"batch:{job_id}", self._lost):
            return False
        self._launch(job_id)
        return True

    async def claim_unowned(self) -> None:
        """Take over unfinished jobs whose gateway stopped renewing their leases (it died), and stop the jobs
        running here that were cancelled through another gateway."""
        for job in await asyncio.to_thread(self.store.unfinished_jobs):
            ctl = self._jobs.get(job.id)
            if ctl is None:
                if await self._claim(job.id):
                    log.info("batch %s: taken over from a gateway that stopped (%d/%d lines done)", job.id,
                             job.completed + job.failed, job.total)
            elif job.status == "cancelling":
                ctl.stop("cancelled")

    def _lost(self, name: str) -> None:
        """Another gateway took the job over: stop it here as at shutdown (its committed lines stay)."""
        ctl = self._jobs.get(name.split(":", 1)[1])
        if ctl is not None:
            ctl.shutdown = True
            ctl.stop(None)

    # --- the API ----------------------------------------------------------------------

    async def create(self, req: BatchCreate, key: Any) -> JobRecord:
        """Check a create request against the file and the endpoints, store the job and start it."""
        try:
            source = await asyncio.to_thread(self.files.get, req.input_file_id)
        except ModelyardError:
            source = None
        if source is None or not visible(source, key):
            raise not_found(f"No such File object: {req.input_file_id}", param="input_file_id", code="file_not_found")
        if source.purpose != "batch":
            raise invalid(f"File {source.id} was uploaded with purpose '{source.purpose}'; a batch reads a file "
                          "uploaded with purpose 'batch'.", param="input_file_id", code="invalid_file")
        if req.model is not None:
            if not (self.flows is not None and req.model in self.flows):
                self.endpoints.get(req.model)  # 404 model_not_found
            if key is not None and not key.allows(req.model):
                raise ModelyardError(f"This key may not call endpoint '{req.model}'.", status=403, param="model",
                                     code="endpoint_not_allowed")
            if req.deployment is not None:
                self.endpoints.deployment(req.model, req.deployment)  # 404 deployment_not_found (a flow has none)
        if req.engine == "ray-data":
            if not ray_installed():
                raise ModelyardError("engine 'ray-data' needs the 'ray' extra, which is not installed here: pip "
                                     "install 'modelyard[ray]'.", status=501, param="engine", code="extra_not_installed")
            if req.model is not None:  # otherwise checked once the lines are read (their one model)
                ray_deployment(self.endpoints, self.flows, req.model, req.deployment)
        now = utcnow()
        job = JobRecord(id="batch_" + os.urandom(12).hex(), endpoint=req.endpoint, input_file_id=source.id,
                        completion_window=req.completion_window, model=req.model, deployment=req.deployment,
                        mini_batch_size=req.mini_batch_size, max_retries=req.max_retries,
                        error_threshold=req.error_threshold, output_action=req.output_action,
                        max_share=req.max_share, engine=req.engine, meta=req.metadata, owner_key_id=key.id if key is not None else None,
                        output_expires_after_s=req.output_expires_after.seconds if req.output_expires_after else None,
                        created_at=now, expires_at=now + timedelta(seconds=self.config.completion_window_s))
        await asyncio.to_thread(self.store.create_job, job)
        await self._claim(job.id)
        return job

    async def get(self, job_id: str, key: Any) -> JobRecord:
        job = await asyncio.to_thread(self.store.get_job, job_id) if storable(job_id, ID_WIDTH) else None
        if job is None or not visible(job, key):
            raise not_found(f"No such batch: {job_id[:ID_WIDTH]}", param="batch_id", code="batch_not_found")
        return job

    async def cancel(self, job_id: str, key: Any) -> JobRecord:
        """Ask a job to stop: ``cancelling`` now, ``cancelled`` once its finished lines are committed."""
        job = await self.get(job_id, key)
        if job.final:
            raise ModelyardError(f"Batch {job_id} is already {job.status}; only a validating or in-progress batch "
                                 "can be cancelled.", status=409, param="batch_id", code="batch_not_cancellable")
        job = await asyncio.to_thread(self.store.request_cancel, job_id)
        ctl = self._jobs.get(job_id)
        if ctl is not None:
            ctl.stop("cancelled")
        elif job is not None and job.status == "cancelling":
            await self._claim(job_id)  # the gateway running it, if any, sees the status and stops it
        return job

    # --- one job ----------------------------------------------------------------------

    async def _run(self, ctl: _Control) -> None:
        try:
            job = await asyncio.to_thread(self.store.get_job, ctl.id)
            if job is None or job.final:
                return
            if job.status == "validating":
                job = await self._validate(job)
            if job.status == "in_progress":
                outcome = await self._process(job, ctl)
                if outcome is not None:
                    await self._finish(job.id, outcome, errors=ctl.errors)
            elif job.status == "finalizing":
                await self._finish(job.id, "completed")
            elif job.status == "cancelling":
                await self._finish(job.id, "cancelled")
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("batch %s failed", ctl.id)
            try:
                error = {"code": "internal_error", "line": None, "param": None,
                         "message": f"The batch stopped on an unexpected error: {type(exc).__name__}: {exc}"}
                await asyncio.to_thread(self.store.set_status, ctl.id, "failed", errors=[error],
                                        when=("validating", "in_progress", "finalizing", "cancelling"))
            except Exception:
                log.exception("batch %s: could not record the failure", ctl.id)
        finally:
            self._jobs.pop(ctl.id, None)
            if self.leases is not None:
                await self.leases.drop(f"batch:{ctl.id}")

    async def _validate(self, job: JobRecord) -> JobRecord:
        path = self.files.path(job.input_file_id)
        owner = await asyncio.to_thread(self.keys.get, job.owner_key_id) if job.owner_key_id is not None else None

        def check_model(name: str, kind: str) -> tuple[str, str] | None:
            if self.flows is not None and name in self.flows:
                if owner is not None and not owner.allows(name):
                    return "endpoint_not_allowed", f"the batch's key may not call flow '{name}'."
                if kind != "chat":
                    return "wrong_task", f"'{name}' is a flow: a batch runs it with chat completions requests."
                if job.deployment is not None:
                    return "deployment_not_found", f"'{name}' is a flow, which has no deployment '{job.deployment}'."
                return None
            try:
                endpoint = self.endpoints.get(name)
            except ModelyardError:
                return "model_not_found", f"endpoint '{name}' does not exist."
            if owner is not None and not owner.allows(name):
                return "endpoint_not_allowed", f"the batch's key may not call endpoint '{name}'."
            if kind not in endpoint.tasks:
                return "wrong_task", f"endpoint '{name}' does not answer {kind} requests."
            if job.deployment is not None and job.deployment not in endpoint.deployments:
                return "deployment_not_found", f"endpoint '{name}' has no deployment '{job.deployment}'."
            if job.deployment is None and getattr(endpoint.spec, "policy", "split") == "router":
                return "router_endpoint", (f"endpoint '{name}' routes each request between tiers; a batch goes "
                                           "to one of its deployments: name it (deployment).")
            return None

        if owner is not None and owner.revoked:
            parsed_errors = [_key_revoked(owner.id)]
        elif not path.exists():
            parsed_errors = [{"code": "file_not_found", "line": None, "param": "input_file_id",
                              "message": f"The input file {job.input_file_id} no longer exists."}]
        else:
            parsed = await asyncio.to_thread(parse_input, path, url=job.endpoint, model=job.model,
                                             max_lines=self.config.max_lines, check_model=check_model)
            parsed_errors = parsed.errors
        if parsed_errors:
            log.info("batch %s: input file %s is invalid (%d problems)", job.id, job.input_file_id, len(parsed_errors))
            return await asyncio.to_thread(self.store.set_status, job.id, "failed", errors=parsed_errors,
                                           when=("validating",))
        model = job.model or (next(iter(parsed.models)) if len(parsed.models) == 1 else None)
        job = await asyncio.to_thread(self.store.start_job, job.id, parsed.lines, model=model)
        log.info("batch %s: %d requests to run (%s)", job.id, job.total, job.model or "several endpoints")
        return job

    def _verdict(self, job: JobRecord) -> str | None:
        """Why a running job must stop now, if it must."""
        if job.status == "cancelling":
            return "cancelled"
        if 0 <= job.error_threshold < job.failed:
            return "failed"
        if job.expires_at is not None and utcnow() >= job.expires_at:
            return "expired"
        return None

    def _worker_count(self, job: JobRecord, share: float) -> int:
        """As many workers as the job's deployments serve requests at once (its share of them)."""
        capacity = 0
        names = [job.model] if job.model else [e.name for e in self.endpoints.all()]
        for name in names:
            try:
                endpoint = self.endpoints.get(name)
            except ModelyardError:
                continue
            for dep in endpoint.deployments.values():
                if job.deployment is None or dep.name == job.deployment:
                    capacity += dep.capacity
        return max(1, min(self.config.max_workers, math.ceil(capacity * share)))

    async def _process(self, job: JobRecord, ctl: _Control) -> str | None:
        """Run the pending lines; the job's final status, or None when the gateway is stopping."""
        verdict = self._verdict(job)
        if verdict is not None:
            return verdict
        owner = await asyncio.to_thread(self.keys.get, job.owner_key_id) if job.owner_key_id is not None else None
        share = job.max_share or self.config.max_share
        if job.engine == "ray-data":
            workers = [asyncio.create_task(self._guarded(self.ray_data.run(job, owner, ctl), ctl))]
        else:
            feed = _Feed(self.store, job, ctl)
            workers = [asyncio.create_task(self._worker(job, owner, feed, ctl, share))
                       for _ in range(self._worker_count(job, share))]
        everything = asyncio.gather(*workers, return_exceptions=True)
        stop = asyncio.create_task(ctl.stopped.wait())
        expires_in = (job.expires_at - utcnow()).total_seconds() if job.expires_at else None
        try:
            done, _ = await asyncio.wait({everything, stop}, timeout=expires_in, return_when=asyncio.FIRST_COMPLETED)
            if not done:
                ctl.stop("expired")
        finally:
            stop.cancel()
            for w in workers:
                if not w.done():
                    w.cancel()
            await asyncio.gather(everything, return_exceptions=True)
            await self._drain(ctl)
        if ctl.error is not None:
            raise ctl.error
        if ctl.shutdown:
            return None
        if ctl.reason is not None:
            return ctl.reason
        job = await asyncio.to_thread(self.store.get_job, job.id)
        return self._verdict(job) or "completed"

    async def _worker(self, job: JobRecord, owner: Any, feed: _Feed, ctl: _Control, share: float) -> None:
        await self._guarded(self._work(job, owner, feed, ctl, share), ctl)

    @staticmethod
    async def _guarded(work: Any, ctl: _Control) -> None:
        """Run a job's work; what breaks it (a commit that kept failing, a bug) stops the job with it."""
        try:
            await work
        except Exception as exc:
            ctl.error = ctl.error or exc
            ctl.stop(None)

    async def _work(self, job: JobRecord, owner: Any, feed: _Feed, ctl: _Control, share: float) -> None:
        with background(share):
            while not ctl.stopped.is_set():
                if owner is not None and not self.keys.is_active(owner.id):
                    # revoked while the job runs: no request more is sent (and paid for) with its key
                    ctl.errors = [_key_revoked(owner.id)]
                    ctl.stop("failed")
                    return
                item = await feed.next()
                if item is None:
                    return
                batch, i = item
                batch.results[i] = await self._run_line(job, owner, batch.lines[i])
                batch.left -= 1
                if batch.left:
                    continue
                ctl.open.remove(batch)
                after = await self._commit(ctl, batch.results)
                verdict = self._verdict(after)
                if verdict is not None:
                    ctl.stop(verdict)

    async def _commit(self, ctl: _Control, results: list[LineResult]) -> JobRecord:
        # The commit finishes even if the worker is cancelled meanwhile; `_drain` waits for it.
        task = asyncio.get_running_loop().create_task(asyncio.to_thread(self._commit_blocking, ctl.id, results))
        ctl.commits.add(task)
        task.add_done_callback(ctl.commits.discard)
        return await asyncio.shield(task)

    def _commit_blocking(self, job_id: str, results: list[LineResult]) -> JobRecord:
        """Commit, trying again for up to `COMMIT_RETRY_S` while the database fails (busy, restarting)."""
        for attempt in tenacity.Retrying(
            stop=tenacity.stop_after_delay(COMMIT_RETRY_S) | self._stop_when_closing,
            wait=tenacity.wait_random_exponential(multiplier=0.2, max=5.0),
            before_sleep=lambda state: log.warning("batch %s: could not commit %d results (%s); retrying", job_id,
                                                   len(results), state.outcome.exception()),
            reraise=True,
        ):
            with attempt:
                return self.store.commit_results(job_id, results)
        raise AssertionError("unreachable")

    async def _drain(self, ctl: _Control) -> None:
        """Wait for commits in flight, then commit the lines that finished in interrupted mini-batches."""
        if ctl.commits:
            await asyncio.gather(*list(ctl.commits), return_exceptions=True)
        leftovers = [r for batch in ctl.open for r in batch.finished()]
        ctl.open.clear()
        if leftovers:
            await asyncio.to_thread(self._commit_blocking, ctl.id, leftovers)

    # --- one line ---------------------------------------------------------------------

    async def _run_line(self, job: JobRecord, owner: Any, line: LineRecord) -> LineResult:
        """Attempt one line up to ``max_retries`` times; its result and every attempt's usage."""
        body = orjson.loads(line.body)
        if job.model is not None:
            body["model"] = job.model
        try:
            if body.get("stream"):
                raise invalid("stream is not supported in a batch request: each line gets one whole response",
                              param="stream")
            request = KINDS[line.kind].model_validate(body)
        except ValidationError as exc:
            return _failed(line, 1, None, from_validation_error(exc), [])
        except ModelyardError as err:
            return _failed(line, 1, None, err, [])
        usage: list[dict[str, Any]] = []
        backoff = Backoff(self.config.retry_backoff_s, MAX_BACKOFF_S)
        for attempt in range(1, job.max_retries + 1):
            call = Call(line.kind, request, None, target=job.deployment, batch_id=job.id)
            call.key = owner
            try:
                await self.pipeline(call)
                error = None
            except ModelyardError as err:
                error = err
            except Exception as exc:  # a bug or an unexpected upstream failure: counted, retried
                log.exception("batch %s line %d: unexpected error", job.id, line.line)
                error = ModelyardError(f"The gateway failed on this request: {type(exc).__name__}", status=500,
                                       code="internal_error")
            finally:
                usage.extend(self._usage.take(call.request_id))
            if error is None:
                return LineResult(line_id=line.id, state="succeeded", attempts=attempt, status_code=200,
                                  request_id=call.request_id, response=orjson.dumps(call.body).decode()
                                  if job.output_action == "append_row" else None, usage=usage)
            if error.status not in RETRYABLE or attempt == job.max_retries:
                return _failed(line, attempt, call.request_id, error, usage)
            wait = retry_after_s(error.headers, cap_s=MAX_BACKOFF_S) or backoff.delay(attempt - 1)
            log.info("batch %s line %d: attempt %d failed (%s %s); retrying in %.1fs", job.id, line.line, attempt,
                     error.status, error.code, wait)
            await asyncio.sleep(wait)
        raise AssertionError("unreachable")

    # --- finishing --------------------------------------------------------------------

    async def _finish(self, job_id: str, outcome: str, *, errors: list[dict[str, Any]] | None = None) -> JobRecord:
        """Write the output and error files and move the job to its final status (with ``errors`` in place
        of the job's own, when given)."""
        active = ("in_progress", "finalizing", "cancelling")
        if outcome == "completed":
            job = await asyncio.to_thread(self.store.set_status, job_id, "finalizing", when=("in_progress",))
            if job.status == "cancelling":
                outcome = "cancelled"
        job = await asyncio.to_thread(self.store.get_job, job_id)
        if errors is None:
            errors = job.errors
            if outcome == "failed" and 0 <= job.error_threshold < job.failed:
                errors = [await asyncio.to_thread(self._threshold_error, job)]
        files = await asyncio.to_thread(self._write_outputs, job, outcome)
        final = await asyncio.to_thread(
            self.store.set_status, job_id, outcome, when=active, files=tuple(f for f in files.values() if f),
            output_file_id=files["output"].id if files["output"] else None,
            error_file_id=files["error"].id if files["error"] else None, errors=errors)
        log.info("batch %s %s: %d succeeded, %d failed of %d", job_id, final.status, final.completed, final.failed,
                 final.total)
        return final

    def _threshold_error(self, job: JobRecord) -> dict[str, Any]:
        shown = []
        for line in self.store.first_failures(job.id):
            try:
                message = orjson.loads(line.response or "{}")["error"]["message"]
            except Exception:
                message = line.error_code or "failed"
            shown.append(f"line {line.line} ({line.custom_id}): {message}")
        return {"code": "error_threshold_exceeded", "line": None, "param": "error_threshold",
                "message": f"{job.failed} requests failed, more than error_threshold={job.error_threshold}; the "
                           f"batch stopped with {job.total - job.completed - job.failed} requests not run. First "
                           f"failures: {'; '.join(shown)}"}

    def _write_outputs(self, job: JobRecord, outcome: str) -> dict[str, Any]:
        """The output file (lines that succeeded) and error file (the others), in input order."""
        out: dict[str, Any] = {"output": None, "error": None}
        if job.output_action == "summary_only":
            return out
        not_run = NOT_RUN.get(outcome)
        pending = job.total - job.completed - job.failed
        if job.completed:
            out["output"] = self.files.write(
                (output_line(job.id, line) for line in self.store.lines(job.id) if line.state == "succeeded"),
                filename=f"{job.id}_output.jsonl", owner_key_id=job.owner_key_id,
                expires_after_s=job.output_expires_after_s)
        if job.failed or (pending and not_run):
            out["error"] = self.files.write(
                (output_line(job.id, line, not_run) for line in self.store.lines(job.id)
                 if line.state == "failed" or (line.state == "pending" and not_run)),
                filename=f"{job.id}_error.jsonl", owner_key_id=job.owner_key_id,
                expires_after_s=job.output_expires_after_s)
        return out


def visible(record: Any, key: Any) -> bool:
    """A key sees what it created; an admin key (or none, inside the gateway) sees everything."""
    return key is None or key.is_admin or record.owner_key_id == key.id


def _failed(line: LineRecord, attempts: int, request_id: str | None, err: ModelyardError,
            usage: list[dict[str, Any]]) -> LineResult:
    return LineResult(line_id=line.id, state="failed", attempts=attempts, status_code=err.status,
                      request_id=request_id, response=orjson.dumps(err.body()).decode(), error_code=err.code,
                      usage=usage)
