"""The fine-tuning runner: jobs run inside the gateway, one at a time, durably, at a lower priority.

A job moves through OpenAI's statuses::

    validating_files ──▶ queued ──▶ running ──▶ succeeded
          │                │           ├──▶ failed     (the training process reported an error, or died)
          └──▶ failed      └───────────┴──▶ cancelled  (POST …/cancel; any status before a final one)

**Validating** (as soon as a job is created, whatever runs): the training and
validation files are copied into the job's folder, ``MODELYARD_HOME/fine_tuning/<job>/``
(``train.jsonl``, ``validation.jsonl``), checked line by line (`data.validate_file`),
``"auto"`` hyperparameters are resolved against the training file's size, and
``spec.json`` is written for the training process. A bad file fails the job with
the line and field named in ``error``.

**Running** is one job at a time, oldest first: training takes every core
it is given and several GB of memory. The runner starts the training process
(``python -m modelyard.finetune.worker JOB_DIR``; the command is a constructor
argument and MODELYARD_FINETUNE_WORKER) in its own session at a lower CPU
priority (``nice``), so live requests come first, and reads its stdout — one
JSON object per line — into the job's events (messages, per-step metrics) and
checkpoints. On ``done`` the adapter is published as a catalog model
(`publish.publish`) named ``<base>:ft-[<suffix>-]<6 hex>`` and the job has
``succeeded``; an ``error`` line or a process that dies fails it with the error.

**Cancel** moves the job to ``cancelled`` at once and stops its process
(SIGTERM, then SIGKILL after MODELYARD_FINETUNE_CANCEL_GRACE_S).

**Durable.** Everything is in the database and the job's folder. A gateway
that stops (cleanly or killed) leaves its job ``running``; the next one to
start runs the training process again, which resumes from its newest
checkpoint. A result already reported (``result.json``) is published without
training again. The process dies with the gateway (``PR_SET_PDEATHSIG`` on
Linux) and a leftover one is stopped before the job runs again. A gateway with
MODELYARD_FINETUNE_ENABLED=false keeps jobs in the database (create, list,
cancel work) but starts none.

**Several gateways** on one database (and one MODELYARD_HOME, or a shared
folder for ``fine_tuning/``) share the jobs: a gateway validates or runs a
job only while it holds the job's lease (``finetune:ID``, `store.leases`).
Should it die, the lease expires and another gateway's scheduler takes the
job over and trains on from the last checkpoint.
"""

from __future__ import annotations

import asyncio
import csv
import functools
import io
import json
import logging
import os
import shlex
import shutil
import signal
import sys
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from ..catalog.card import ModelCard
from ..catalog.sources import is_available, resolve_path
from ..errors import ModelyardError, invalid, not_found
from ..store.batches import storable
from ..store.finetune import ACTIVE_STATUSES, ID_WIDTH, FineTuneStore, JobRecord
from ..store.models import utcnow
from .process import child_setup, log_tail, read_json, sha256_of, signal_group, stop_leftover, write_atomic
from .spec import FineTuneCreate, resolve

log = logging.getLogger(__name__)

#: the purpose of the files fine-tuning reads, and of the results file a job writes
PURPOSE = "fine-tune"
RESULTS_PURPOSE = "fine-tune-results"
#: the longest line the training process may print (a metrics line is ~200 bytes)
MAX_LINE_BYTES = 1 << 20


class FineTuneConfig(BaseSettings):
    """Gateway-wide fine-tuning settings, from the environment (MODELYARD_FINETUNE_ENABLED is in `Settings`).

    | variable | default | meaning |
    |---|---|---|
    | MODELYARD_FINETUNE_WORKER | ``python -m modelyard.finetune.worker`` | the training command; the job's folder is appended |
    | MODELYARD_FINETUNE_NICE | 10 | how much lower than the gateway's the training process's CPU priority is |
    | MODELYARD_FINETUNE_THREADS | 0 (every core) | torch threads for training |
    | MODELYARD_FINETUNE_CHECKPOINT_EVERY | 10 | steps between checkpoints (what a restart loses at most) |
    | MODELYARD_FINETUNE_CANCEL_GRACE_S | 10 | wait after SIGTERM before a cancelled job's process is killed |
    | MODELYARD_FINETUNE_MIN_EXAMPLES | 10 | fewer training examples fail the job |
    | MODELYARD_FINETUNE_POLL_S | 2 | how often new jobs, and cancels made elsewhere, are looked for |
    """

    model_config = SettingsConfigDict(env_prefix="MODELYARD_FINETUNE_", env_ignore_empty=True, frozen=True,
                                      extra="ignore")

    worker: str = ""
    nice: int = Field(default=10, ge=0, le=19)
    threads: int = Field(default=0, ge=0)
    checkpoint_every: int = Field(default=10, ge=1)
    cancel_grace_s: float = Field(default=10.0, gt=0)
    min_examples: int = Field(default=10, ge=1)
    poll_s: float = Field(default=2.0, gt=0)

    @classmethod
    def from_env(cls) -> "FineTuneConfig":
        return cls()

    def command(self) -> list[str]:
        return shlex.split(self.worker) if self.worker.strip() else [sys.executable, "-m", "modelyard.finetune.worker"]


class _Run:
    """The training process of the job running now, and why it should stop."""

    def __init__(self, job: JobRecord) -> None:
        self.job = job
        self.process: asyncio.subprocess.Process | None = None
        self.task: asyncio.Task[None] | None = None
        self.reason: str | None = None  # cancelled | shutdown
        self.done: dict[str, Any] | None = None
        self.error: dict[str, Any] | None = None
        #: (step, monotonic time) of this process's first metrics line: the rate behind estimated_finish
        self.first_step: tuple[int, float] | None = None


class FineTuneRunner:
    """Creates, validates, runs, resumes and cancels fine-tuning jobs; one per gateway.

    ``command`` (default: MODELYARD_FINETUNE_WORKER, else the real worker) is started with the job's folder as
    its last argument; ``publish`` and ``validate`` default to `finetune.publish.publish` and
    `finetune.data.validate_file`, imported when first needed.
    """

    def __init__(self, store: FineTuneStore, files: Any, catalog: Any, settings: Any, *,
                 config: FineTuneConfig | None = None, enabled: bool = True, command: list[str] | None = None,
                 publish: Callable[..., Any] | None = None, validate: Callable[..., int] | None = None) -> None:
        self.store = store
        self.files = files
        self.catalog = catalog
        self.settings = settings
        self.config = config or FineTuneConfig.from_env()
        self.enabled = enabled
        self.command = list(command) if command else self.config.command()
        self.root = Path(settings.home) / "fine_tuning"
        self._publish = publish
        self._validate = validate
        self._validating: dict[str, asyncio.Task[None]] = {}
        self._current: _Run | None = None
        self._wake = asyncio.Event()
        self._scheduler: asyncio.Task[None] | None = None
        self._closing = False
        #: the `store.leases.LeaseKeeper` sharing jobs with other gateways on the database (None: all run here)
        self.leases: Any = None
        #: told a new tuned model's id once it is in the catalog (the gateway tells the other gateways)
        self.published: Callable[[str], None] = lambda model_id: None

    def job_dir(self, job_id: str) -> Path:
        return self.root / job_id

    # --- lifecycle --------------------------------------------------------------------

    async def start(self) -> None:
        """Look for work now and every MODELYARD_FINETUNE_POLL_S: unvalidated jobs, then the running or oldest
        queued job (a job left ``running`` by a stopped gateway runs again and resumes)."""
        if not self.enabled:
            waiting = await asyncio.to_thread(self.store.jobs_in, *ACTIVE_STATUSES)
            log.info("fine-tuning is turned off on this gateway (MODELYARD_FINETUNE_ENABLED=false); %d job(s) wait",
                     len(waiting))
            return
        self.root.mkdir(parents=True, exist_ok=True)
        if self._scheduler is None:
            self._scheduler = asyncio.get_running_loop().create_task(self._schedule(), name="finetune-scheduler")

    async def close(self) -> None:
        """Stop looking for work and stop the training process; the job stays ``running`` and resumes later."""
        self._closing = True
        if self._scheduler is not None:
            self._scheduler.cancel()
            await asyncio.gather(self._scheduler, return_exceptions=True)
        for task in list(self._validating.values()):
            task.cancel()
        await asyncio.gather(*self._validating.values(), return_exceptions=True)
        run = self._current
        if run is not None:
            run.reason = run.reason or "shutdown"
            await self._stop(run)
            if run.task is not None:
                await asyncio.gather(run.task, return_exceptions=True)

    async def _schedule(self) -> None:
        while True:
            try:
                await self._look_for_work()
            except Exception as exc:  # the database is away for a moment: look again later
                log.warning("fine-tuning: could not look for jobs (%s: %s)", type(exc).__name__, exc)
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=self.config.poll_s)
            except asyncio.TimeoutError:
                pass
            self._wake.clear()

    async def _look_for_work(self) -> None:
        loop = asyncio.get_running_loop()
        for job in await asyncio.to_thread(self.store.jobs_in, "validating_files"):
            if job.id not in self._validating and not self._closing and await self._lease(job.id):
                task = loop.create_task(self._validate_files(job), name=f"finetune-validate-{job.id}")
                self._validating[job.id] = task
                task.add_done_callback(lambda _t, job_id=job.id: (self._validating.pop(job_id, None),
                                                                  self._wake.set(), self._unlease(job_id)))
        if self._current is not None or self._closing:
            return
        candidates = await asyncio.to_thread(self.store.jobs_in, "running", "queued")
        # a job left running by a stopped gateway goes first, then the oldest queued one; each only where its
        # lease is held (a job running on another live gateway is not taken)
        for job in sorted(candidates, key=lambda j: j.status != "running"):
            if self._current is not None or not await self._lease(job.id):
                continue
            run = _Run(job)
            self._current = run
            run.task = loop.create_task(self._run(run), name=f"finetune-{run.job.id}")
            run.task.add_done_callback(lambda _t, job_id=job.id: (setattr(self, "_current", None), self._wake.set(),
                                                                  self._unlease(job_id)))
            return

    async def _lease(self, job_id: str) -> bool:
        return self.leases is None or await self.leases.acquire(f"finetune:{job_id}", self._lost)

    def _unlease(self, job_id: str) -> None:
        if self.leases is not None and not self._closing:  # at shutdown the keeper releases them itself
            asyncio.get_running_loop().create_task(self.leases.drop(f"finetune:{job_id}"))

    def _lost(self, name: str) -> None:
        """Another gateway took the job over (this one could not renew its lease): stop training here; the job
        stays ``running`` for that gateway."""
        run = self._current
        if run is not None and f"finetune:{run.job.id}" == name and run.reason is None:
            run.reason = "shutdown"
            asyncio.get_running_loop().create_task(self._stop(run))

    # --- the API ----------------------------------------------------------------------

    async def create(self, req: FineTuneCreate, key: Any) -> JobRecord:
        """Check a create request against the catalog and the files, store the job and start validating it."""
        card = self.catalog.get(req.model)  # 404 model_not_found
        await asyncio.to_thread(self._check_card, card)
        hyperparameters = req.requested()
        if hyperparameters["max_length"] > card.context_length:
            raise invalid(f"max_length {hyperparameters['max_length']} is longer than {card.id}'s context of "
                          f"{card.context_length} tokens.", param="hyperparameters.max_length")
        for param, file_id in (("training_file", req.training_file), ("validation_file", req.validation_file)):
            if file_id is not None:
                await asyncio.to_thread(self._check_file, file_id, param, key)
        job_id = "ftjob-" + os.urandom(12).hex()
        tag = os.urandom(3).hex()
        name = f"{card.id}:ft-{req.suffix}-{tag}" if req.suffix else f"{card.id}:ft-{tag}"
        seed = req.seed if req.seed is not None else int.from_bytes(os.urandom(4), "big") & 0x7FFFFFFF
        job = JobRecord(id=job_id, model=card.id, fine_tuned_model=name, training_file=req.training_file,
                        validation_file=req.validation_file, hyperparameters=hyperparameters, seed=seed,
                        suffix=req.suffix, meta=req.metadata, owner_key_id=getattr(key, "id", None))
        first = f"Validating training file: {req.training_file}" + (
            f" and validation file: {req.validation_file}" if req.validation_file else "")
        await asyncio.to_thread(self.store.create_job, job, event=first)
        if not self.enabled:
            await asyncio.to_thread(
                self.store.add_event, job_id, "Fine-tuning is turned off on this gateway "
                "(MODELYARD_FINETUNE_ENABLED=false): the job waits for a gateway on this database that runs "
                "fine-tuning jobs.", level="warn")
        self._wake.set()
        log.info("fine-tuning job %s created: %s on %s", job_id, name, req.training_file)
        return job

    def _check_card(self, card: ModelCard) -> None:
        """Only a local chat model in GGUF whose weights are here can be tuned; a 400 naming ``model`` otherwise."""
        if card.is_hosted:
            raise invalid(f"The model '{card.id}' is hosted ({card.source.base_url}); fine-tuning is not supported "
                          "locally for it. Tune a local GGUF chat model from the catalog.", param="model",
                          code="model_not_supported")
        if card.adapter is not None:
            raise invalid(f"The model '{card.id}' is itself a fine-tuned model; continued training is not supported: "
                          f"tune its base '{card.adapter.base}' on the combined data.", param="model",
                          code="model_not_supported")
        if card.format != "gguf" or card.task != "chat":
            raise invalid(f"The model '{card.id}' is a {card.format} {card.task} model; only local GGUF chat models "
                          "can be fine-tuned.", param="model", code="model_not_supported")
        if not is_available(card, self.settings):
            try:
                resolve_path(card, self.settings)
            except ModelyardError as err:  # not pulled / not installed / files missing: the 400 says what to do
                raise invalid(err.message, param="model", code=err.code or "model_not_available") from None
        if not card.chat_template:
            raise invalid(f"The model '{card.id}' has no chat_template in its card; fine-tuning renders "
                          "conversations with a named template (dialogue, chatml, llama3, phi3, gemma): add one to "
                          "its card.", param="model", code="model_not_supported")

    def _check_file(self, file_id: str, param: str, key: Any) -> None:
        try:
            record = self.files.get(file_id)
        except ModelyardError:
            record = None
        if record is None or not _visible(record, key):
            raise not_found(f"No such File object: {file_id[:ID_WIDTH]}", param=param, code="file_not_found")
        if record.purpose != PURPOSE:
            raise invalid(f"File {file_id} was uploaded with purpose '{record.purpose}'; fine-tuning reads files "
                          f"uploaded with purpose '{PURPOSE}'.", param=param, code="invalid_file_purpose")

    async def get(self, job_id: str, key: Any) -> JobRecord:
        job = await asyncio.to_thread(self.store.get_job, job_id) if storable(job_id, ID_WIDTH) else None
        if job is None or not _visible(job, key):
            raise not_found(f"No such fine-tuning job: {job_id[:ID_WIDTH]}", param="fine_tuning_job_id",
                            code="fine_tuning_job_not_found")
        return job

    async def cancel(self, job_id: str, key: Any) -> JobRecord:
        """Cancel a job that has not finished: ``cancelled`` at once; its training process is stopped."""
        job = await self.get(job_id, key)
        if job.final:
            raise ModelyardError(f"Fine-tuning job {job_id} has already {job.status}; only a job that has not "
                                 "finished can be cancelled.", status=409, param="fine_tuning_job_id",
                                 code="job_not_cancellable")
        job = await asyncio.to_thread(self.store.set_status, job_id, "cancelled", when=ACTIVE_STATUSES,
                                      event="Fine-tuning job cancelled.")
        run = self._current
        if run is not None and run.job.id == job_id:
            run.reason = "cancelled"
            asyncio.get_running_loop().create_task(self._stop(run))
        return job

    # --- validating -------------------------------------------------------------------

    async def _validate_files(self, job: JobRecord) -> None:
        try:
            await self._validate_job(job)
        except Exception as exc:  # the database is away: the job is still validating_files and is tried again
            log.warning("fine-tuning job %s: could not validate its files (%s: %s); trying again", job.id,
                        type(exc).__name__, exc)

    async def _validate_job(self, job: JobRecord) -> None:
        try:
            values = await asyncio.to_thread(self._prepare, job)
        except ModelyardError as err:
            error = _error(err.code or "invalid_file", err.message, err.param)
        except OSError as exc:  # the disk is full, the folder cannot be written …
            error = _error("validation_failed", f"The job's files could not be prepared: {exc}")
        else:
            n = values["training_examples"]
            await asyncio.to_thread(self.store.set_status, job.id, "queued", when=("validating_files",),
                                    event=f"Files validated: {n} training examples; the job is queued.", **values)
            return
        log.info("fine-tuning job %s: %s", job.id, error["message"])
        await asyncio.to_thread(self.store.set_status, job.id, "failed", when=("validating_files",), error=error,
                                event=error["message"], level="error")

    def _prepare(self, job: JobRecord) -> dict[str, Any]:
        """Copy and check the files, resolve the hyperparameters, write ``spec.json`` (blocking)."""
        validate = self._validate
        if validate is None:
            from .data import validate_file as validate
        folder = self.job_dir(job.id)
        folder.mkdir(parents=True, exist_ok=True)
        train = self._copy(job.training_file, folder / "train.jsonl", "training_file")
        n_train = validate(train, param="training_file", min_examples=self.config.min_examples)
        valid = None
        if job.validation_file:
            valid = self._copy(job.validation_file, folder / "validation.jsonl", "validation_file")
            validate(valid, param="validation_file", min_examples=1)
        card = self.catalog.get(job.model)
        try:
            base = resolve_path(card, self.settings)
        except (ModelyardError, ValueError) as err:
            message = getattr(err, "message", str(err))
            raise invalid(f"The base model's weights are not available: {message}", param="model",
                          code="model_not_available") from None
        hyperparameters = resolve(job.hyperparameters, n_train)
        spec = {"job_id": job.id, "base_model": card.id, "base_gguf": str(Path(base).resolve()),
                "chat_template": card.chat_template, "stop": list(card.stop), "training_file": str(train.resolve()),
                "validation_file": str(valid.resolve()) if valid else None, "hyperparameters": hyperparameters,
                "seed": job.seed, "checkpoint_every": self.config.checkpoint_every,
                "threads": self.config.threads or os.cpu_count() or 1}
        write_atomic(folder / "spec.json", json.dumps(spec, indent=2).encode())
        return {"hyperparameters": hyperparameters, "training_examples": n_train}

    def _copy(self, file_id: str, target: Path, param: str) -> Path:
        try:
            source = self.files.path(self.files.get(file_id).id)
            if not source.is_file():
                raise FileNotFoundError(source)
        except (ModelyardError, FileNotFoundError):
            raise ModelyardError(f"The {param.replace('_', ' ')} {file_id} no longer exists.", status=400,
                                 param=param, code="file_not_found") from None
        partial = target.with_name(target.name + ".partial")
        shutil.copyfile(source, partial)
        os.replace(partial, target)
        return target

    # --- running ----------------------------------------------------------------------

    async def _run(self, run: _Run) -> None:
        job = run.job
        try:
            if job.status == "queued":
                job, moved = await asyncio.to_thread(self.store.update_job, job.id, when=("queued",),
                                                     status="running", event="Fine-tuning job started.")
                if not moved:
                    return
            else:
                await asyncio.to_thread(self.store.add_event, job.id, "Fine-tuning job resumed after a gateway "
                                        "restart; training goes on from its last checkpoint.")
            run.job = job
            done = read_json(self.job_dir(job.id) / "result.json")
            if done is None:
                done = await self._train(run)
            if done is not None and run.reason is None:
                await self._succeed(job, done)
        except asyncio.CancelledError:
            raise
        except ModelyardError as err:
            await self._fail(job, _error(err.code or "training_failed", err.message, err.param))
        except Exception as exc:
            log.exception("fine-tuning job %s: the runner failed", job.id)
            await self._fail(job, _error("internal_error", f"The job's runner failed: {type(exc).__name__}: {exc}"))

    async def _train(self, run: _Run) -> dict[str, Any] | None:
        """Run the training process to its end; its ``done`` report, or None (failed, cancelled, stopping)."""
        job = run.job
        folder = self.job_dir(job.id)
        await asyncio.to_thread(stop_leftover, folder, self.config.cancel_grace_s)
        if run.reason is not None:
            return None
        attempt = await asyncio.to_thread(self.store.count_attempt, job.id)
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        with open(folder / "worker.log", "ab") as logfile:
            logfile.write(f"--- attempt {attempt}, {utcnow().isoformat()} ---\n".encode())
            logfile.flush()
            try:
                run.process = await asyncio.create_subprocess_exec(
                    *self.command, str(folder), stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                    stderr=logfile, env=env, cwd=folder, start_new_session=True, limit=MAX_LINE_BYTES,
                    preexec_fn=functools.partial(child_setup, self.config.nice))
            except OSError as exc:
                raise ModelyardError(f"The training process could not be started ({' '.join(self.command)}): "
                                     f"{exc}", code="worker_not_started") from None
            (folder / "worker.pid").write_text(str(run.process.pid))
            if run.reason is not None:  # cancelled or stopping while it started
                await self._stop(run)
            log.info("fine-tuning job %s: training process %d started (attempt %d)", job.id, run.process.pid, attempt)
            watcher = asyncio.get_running_loop().create_task(self._watch(run))
            try:
                await self._read(run, logfile)
                code = await run.process.wait()
            finally:
                watcher.cancel()
        (folder / "worker.pid").unlink(missing_ok=True)
        if run.reason is not None:
            log.info("fine-tuning job %s: training process stopped (%s)", job.id, run.reason)
            return None
        if run.done is not None and Path(str(run.done.get("adapter", ""))).is_file():
            if code != 0:
                log.warning("fine-tuning job %s: the training process reported done but exited %s", job.id, code)
            return run.done
        if run.error is not None:
            await self._fail(job, run.error)
            return None
        why = (f"was killed by signal {signal.Signals(-code).name}" if code < 0 else f"exited with status {code}")
        if run.done is not None:
            why = f"reported an adapter at {run.done.get('adapter')}, which does not exist"
        elif code == 0:
            why = "exited without reporting a result"
        tail = log_tail(folder / "worker.log")
        await self._fail(job, _error("training_failed", f"The training process {why}." + (
            f" Last lines of its log ({folder / 'worker.log'}): {tail}" if tail else "")))
        return None

    async def _read(self, run: _Run, logfile: Any) -> None:
        assert run.process is not None and run.process.stdout is not None
        while True:
            try:
                raw = await run.process.stdout.readline()
            except ValueError:  # a line longer than MAX_LINE_BYTES: not a report, so log it
                raw = b"(an over-long line)\n"
                logfile.write(raw)
                continue
            if not raw:
                return
            try:
                report = json.loads(raw)
            except ValueError:
                report = None
            if not isinstance(report, dict) or not isinstance(report.get("type"), str):
                logfile.write(raw)
                logfile.flush()
                continue
            try:
                await self._handle(run, report)
            except Exception as exc:  # a report the database would not take: the training goes on
                log.warning("fine-tuning job %s: could not record %s report (%s: %s)", run.job.id,
                            report.get("type"), type(exc).__name__, exc)

    async def _handle(self, run: _Run, report: dict[str, Any]) -> None:
        job, kind = run.job, report["type"]
        if kind == "message":
            level = report.get("level") if report.get("level") in ("info", "warn", "error") else "info"
            await asyncio.to_thread(self.store.add_event, job.id, str(report.get("message", ""))[:4000], level=level)
        elif kind == "metrics":
            data = {k: v for k, v in report.items() if k != "type"}
            step, total = int(data.get("step") or 0), int(data.get("total_steps") or 0)
            message = f"Step {step}/{total}: training loss={_num(data.get('train_loss'))}"
            if data.get("valid_loss") is not None:
                message += f", validation loss={_num(data.get('valid_loss'))}"
            await asyncio.to_thread(self.store.add_event, job.id, message, type="metrics", data=data)
            finish = self._estimate(run, step, total)
            if finish is not None:
                await asyncio.to_thread(self.store.update_job, job.id, when=("running",), estimated_finish=finish)
        elif kind == "checkpoint":
            step = int(report.get("step") or 0)
            metrics = {"step": float(step), "train_loss": report.get("train_loss"),
                       "valid_loss": report.get("valid_loss")}
            await asyncio.to_thread(self.store.add_checkpoint, job.id, step=step, metrics=metrics,
                                    path=str(report.get("path", "")), name=_checkpoint_name(job.fine_tuned_model, step))
            await asyncio.to_thread(self.store.add_event, job.id, f"Checkpoint created at step {step}.")
        elif kind == "done":
            run.done = report
            # kept on disk first: a gateway stopped before publishing publishes it after a restart
            await asyncio.to_thread(write_atomic, self.job_dir(job.id) / "result.json", json.dumps(report).encode())
        elif kind == "error":
            run.error = _error(str(report.get("code") or "training_failed"),
                               str(report.get("message") or "the training process failed"), report.get("param"))
        else:
            log.debug("fine-tuning job %s: unknown report %r", job.id, kind)

    def _estimate(self, run: _Run, step: int, total: int) -> Any:
        """When the job should finish, from this process's steps per second so far."""
        now = time.monotonic()
        if run.first_step is None:
            run.first_step = (step, now)
            return None
        first, began = run.first_step
        if step <= first or total <= step:
            return None
        return utcnow() + timedelta(seconds=(total - step) * (now - began) / (step - first))

    async def _watch(self, run: _Run) -> None:
        """Stop the process of a job cancelled through another gateway (or the database)."""
        while run.reason is None:
            await asyncio.sleep(self.config.poll_s)
            try:
                job = await asyncio.to_thread(self.store.get_job, run.job.id)
            except Exception:
                continue
            if job is None or job.status != "running":
                run.reason = "cancelled"
                await self._stop(run)

    async def _stop(self, run: _Run) -> None:
        """SIGTERM the training process's group, SIGKILL it after the grace period."""
        process = run.process
        if process is None or process.returncode is not None:
            return
        signal_group(process.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), timeout=self.config.cancel_grace_s)
        except asyncio.TimeoutError:
            log.warning("fine-tuning job %s: training process %d ignored SIGTERM; killing it", run.job.id, process.pid)
            signal_group(process.pid, signal.SIGKILL)
            await process.wait()

    # --- finishing --------------------------------------------------------------------

    async def _succeed(self, job: JobRecord, done: dict[str, Any]) -> None:
        adapter = Path(str(done["adapter"]))
        if not adapter.is_file():
            return await self._fail(job, _error("adapter_missing", f"The trained adapter {adapter} is missing."))
        publish = self._publish
        if publish is None:
            from .publish import publish
        card = self.catalog.get(job.model)
        lineage = await asyncio.to_thread(self._lineage, job, done)
        try:
            await asyncio.to_thread(publish, self.settings, self.catalog, job_id=job.id, base_card=card,
                                    model_id=job.fine_tuned_model, adapter=adapter, lineage=lineage)
        except ModelyardError as err:
            return await self._fail(job, _error(err.code or "publish_failed", err.message, err.param))
        self.published(job.fine_tuned_model)
        results = await asyncio.to_thread(self._write_results, job)
        tokens = int(done.get("trained_tokens") or 0)
        await asyncio.to_thread(self.store.update_job, job.id, when=("running",),
                                event=f"New fine-tuned model created: {job.fine_tuned_model}")
        await asyncio.to_thread(self.store.set_status, job.id, "succeeded", when=("running",), trained_tokens=tokens,
                                result_files=[results] if results else [], error=None,
                                event="The job has successfully completed.")
        log.info("fine-tuning job %s succeeded: %s (%d tokens)", job.id, job.fine_tuned_model, tokens)

    def _lineage(self, job: JobRecord, done: dict[str, Any]) -> dict[str, Any]:
        folder = self.job_dir(job.id)
        files = {"training_file": {"id": job.training_file, "sha256": sha256_of(folder / "train.jsonl")}}
        if job.validation_file:
            files["validation_file"] = {"id": job.validation_file, "sha256": sha256_of(folder / "validation.jsonl")}
        current = self.store.get_job(job.id) or job
        return {"job_id": job.id, "base_model": job.model, "files": files, "hyperparameters": current.hyperparameters,
                "seed": job.seed, "trained_tokens": done.get("trained_tokens"), "metrics": done.get("metrics") or {},
                "training_examples": current.training_examples, "created_at": int(job.created_at.timestamp())
                if job.created_at else None}

    def _write_results(self, job: JobRecord) -> str | None:
        """The results file OpenAI jobs have: one CSV row per step (step, train_loss, valid_loss, …)."""
        rows = self.store.metrics(job.id)
        if not rows:
            return None
        out = io.StringIO()
        writer = csv.writer(out)
        columns = ["step", "train_loss", "valid_loss", "epoch", "train_tokens_per_s"]
        writer.writerow(columns)
        for row in rows:
            writer.writerow(["" if row.get(c) is None else row.get(c) for c in columns])
        record = self.files.write([out.getvalue().encode()], filename=f"{job.id}_results.csv",
                                  purpose=RESULTS_PURPOSE, owner_key_id=job.owner_key_id)
        self.files.store.add_file(record)
        return record.id

    async def _fail(self, job: JobRecord, error: dict[str, Any]) -> None:
        log.info("fine-tuning job %s failed: %s", job.id, error["message"])
        await asyncio.to_thread(self.store.set_status, job.id, "failed", when=("running",), error=error,
                                event=error["message"], level="error")


def _visible(record: Any, key: Any) -> bool:
    """A key sees what it created; an admin key (or none, inside the gateway) sees everything."""
    return key is None or getattr(key, "is_admin", False) or record.owner_key_id == key.id


def _error(code: str, message: str, param: Any = None) -> dict[str, Any]:
    return {"code": code, "message": message, "param": param if isinstance(param, str) else None}


def _num(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, (int, float)) else "n/a"


def _checkpoint_name(model: str | None, step: int) -> str:
    """``<tuned model>:ckpt-step-N``, the model's part shortened so that it fits its column (255)."""
    tail = f":ckpt-step-{step}"
    return f"{(model or '')[:255 - len(tail)]}{tail}"
