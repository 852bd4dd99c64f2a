"""The local runtime: instances as processes on this machine.

Each instance is ``python -m modelyard.worker`` on a free port of 127.0.0.1.
The runtime starts it, waits until ``/readyz`` answers, checks ``/healthz``
every probe period, and restarts an instance whose process died or stopped
answering, with exponential backoff (1 s, 2 s, 4 s … 30 s, reset after a
minute of good health). Stopping sends SIGTERM, then SIGKILL after a grace
period. Scaling is starting or stopping instances of a deployment; the
gateway picks among the ready ones, so a scale-up or a restart never drops a
request that another instance can take.

Two hooks report what happens, for the deployment event log: ``on_scale(key,
before, after, reason)`` when a deployment's instance count changes and
``on_instance(key, instance, kind, reason)`` when the supervisor restarts an
instance (``instance_restarted``) or gives up on one (``instance_failed``).
The Ray runtime calls an ``on_scale`` of the same shape.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import httpx
import orjson

from ..retry import Backoff

log = logging.getLogger(__name__)

#: ``on_scale(key, before, after, reason)``: a deployment's instance count changed
ScaleHook = Callable[[str, int, int, str], None]
#: ``on_instance(key, instance_name, kind, reason)``: ``instance_restarted`` or ``instance_failed``
InstanceHook = Callable[[str, str, str, str], None]

READY_TIMEOUT_S = 300.0
MAX_BACKOFF_S = 30.0
#: waits before restarting an instance that exited: 1 s, 2 s, 4 s … 30 s
RESTART_BACKOFF = Backoff(1.0, MAX_BACKOFF_S, jitter=0)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class InstanceSpec:
    """What an instance runs: a card and backend options, plus probe settings."""

    key: str  # endpoint/deployment
    card: Any
    options: dict[str, Any] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    probe_period_s: float = 10.0
    probe_timeout_s: float = 5.0
    failure_threshold: int = 3
    #: how long a removed instance may take to finish its requests before it is stopped anyway
    drain_timeout_s: float = 30.0
    #: CPUs, GPUs and memory one instance needs (`serving.spec.Resources`): the Ray runtime places by it
    resources: Any = None
    #: autoscale settings (`serving.spec.Autoscale`), for a runtime that scales by itself (Ray Serve)
    autoscale: Any = None
    #: requests one instance serves at once
    max_concurrent: int = 1


class Instance:
    """One worker process and its supervisor task."""

    def __init__(self, spec: InstanceSpec, index: int, logs_dir: Path, on_event: InstanceHook | None = None) -> None:
        self.spec = spec
        self.on_event = on_event
        self.index = index
        self.name = f"{spec.key.replace('/', '-')}-{index}"
        self.logs_dir = logs_dir
        self.port = 0
        #: what the gateway shows the instance (a bearer token): nobody else may call it
        self.token = secrets.token_urlsafe(24)
        self.process: asyncio.subprocess.Process | None = None
        self.state = "new"  # new | starting | ready | suspect | restarting | failed | stopped
        self.restarts = 0
        self.in_flight = 0
        self.started_at = 0.0
        self._stopping = False
        self._ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._http = httpx.AsyncClient(timeout=5.0)
        self.last_error: str | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_file(self) -> Path:
        return self.logs_dir / f"{self.name}.log"

    @property
    def ready(self) -> bool:
        return self.state == "ready"

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "state": self.state, "port": self.port, "pid": self.process.pid if self.process else None,
                "restarts": self.restarts, "in_flight": self.in_flight, "last_error": self.last_error}

    async def start(self) -> None:
        """Start the process and the supervisor; return when the instance is first ready (or raise)."""
        await self._spawn()
        self._task = asyncio.create_task(self._supervise(), name=f"supervise-{self.name}")
        try:
            ok = await self._wait_ready()
        except BaseException:
            # cancelled while loading (a scaling cancelled by the autoscaler's or the gateway's close): the
            # instance is in no runtime list yet, so nothing else would ever stop its process (its own session)
            await asyncio.shield(self.stop())
            raise
        if not ok:
            await self.stop()
            raise RuntimeError(f"instance {self.name} did not become ready: {self.last_error or 'see ' + str(self.log_file)}")

    async def _spawn(self) -> None:
        self.port = free_port()
        self.state = "starting"
        self._ready.clear()
        env = dict(os.environ)
        env.update(self.spec.env)
        env["MODELYARD_INSTANCE_TOKEN"] = self.token
        env["MODELYARD_WORKER_SPEC"] = orjson.dumps({"card": self.spec.card.model_dump(mode="json"),
                                                    "options": self.spec.options}).decode()
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        logf = open(self.log_file, "ab")
        try:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "modelyard.worker", "--port", str(self.port), "--name", self.name,
                stdout=logf, stderr=asyncio.subprocess.STDOUT, stdin=asyncio.subprocess.DEVNULL, env=env,
                start_new_session=True)
        finally:
            logf.close()
        self.started_at = time.monotonic()
        log.info("started %s (pid %s, port %s)", self.name, self.process.pid, self.port)

    async def _wait_ready(self) -> bool:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline and not self._stopping:
            if self.process is None or self.process.returncode is not None:
                self.last_error = f"process exited with code {self.process.returncode if self.process else None}"
                return False
            try:
                r = await self._http.get(self.url + "/readyz", timeout=2.0)
                if r.status_code == 200:
                    self.state = "ready"
                    self._ready.set()
                    return True
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.1)
        self.last_error = self.last_error or "timed out waiting for /readyz"
        return False

    async def _supervise(self) -> None:
        restarts_in_a_row = 0  # reset once an instance has stayed up a minute
        while not self._stopping:
            exited = asyncio.create_task(self.process.wait())  # type: ignore[union-attr]
            failures = 0
            while not self._stopping:
                done, _ = await asyncio.wait({exited}, timeout=self.spec.probe_period_s)
                if done:
                    break
                if self.state not in ("ready", "suspect"):
                    continue
                if await self._healthy():
                    if self.state == "suspect":
                        log.info("%s answers its health check again; back in rotation", self.name)
                        self.state = "ready"
                    failures = 0
                    if time.monotonic() - self.started_at > 60:
                        restarts_in_a_row = 0
                    continue
                failures += 1
                if failures >= self.spec.failure_threshold:
                    log.warning("%s failed %d health checks; killing it", self.name, failures)
                    self._report("instance_failed", f"failed {failures} health checks in a row; killed")
                    self._kill()
            if self._stopping:
                exited.cancel()
                return
            await exited
            code = self.process.returncode if self.process else None
            self.last_error = f"process exited with code {code}"
            backoff = RESTART_BACKOFF.delay(restarts_in_a_row)
            restarts_in_a_row += 1
            log.warning("%s exited (code %s); restarting in %.0fs", self.name, code, backoff)
            self.state = "restarting"
            await asyncio.sleep(backoff)
            if self._stopping:
                return
            self.restarts += 1
            await self._spawn()
            self._report("instance_restarted", f"{self.last_error}; restarted after {backoff:.0f}s")
            if not await self._wait_ready() and not self._stopping:
                self._report("instance_failed", f"not ready after a restart: {self.last_error}")
                self._kill()

    async def _healthy(self) -> bool:
        try:
            r = await self._http.get(self.url + "/healthz", timeout=self.spec.probe_timeout_s)
            return r.status_code == 200
        except httpx.HTTPError:
            return False

    def _report(self, kind: str, reason: str) -> None:
        if self.on_event is not None:
            try:
                self.on_event(self.spec.key, self.name, kind, reason)
            except Exception:  # a broken listener must not stop the supervisor
                log.exception("could not report %s of %s", kind, self.name)

    def suspect(self) -> None:
        """Take the instance out of rotation after a failed call, until the supervisor sees it healthy
        again (or restarts it): a request retried elsewhere must not land on it a second time."""
        if self.state == "ready":
            self.state = "suspect"

    def _kill(self, sig: int = signal.SIGKILL) -> None:
        if self.process and self.process.returncode is None:
            try:
                os.killpg(self.process.pid, sig)
            except ProcessLookupError:
                pass

    async def stop(self, grace_s: float = 10.0) -> None:
        """Stop for good: SIGTERM, then SIGKILL after `grace_s`."""
        self._stopping = True
        self.state = "stopped"
        if self.process and self.process.returncode is None:
            self._kill(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.process.wait(), grace_s)
            except asyncio.TimeoutError:
                self._kill(signal.SIGKILL)
                await self.process.wait()
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self._http.aclose()


class LocalRuntime:
    """Starts, watches, scales and stops the instances of local deployments."""

    def __init__(self, logs_dir: Path) -> None:
        self.logs_dir = logs_dir
        self._instances: dict[str, list[Instance]] = {}
        self._next_index: dict[str, int] = {}
        #: told when a deployment's instance count changes (the event log listens)
        self.on_scale: ScaleHook | None = None
        #: told when an instance is restarted or given up on
        self.on_instance: InstanceHook | None = None

    def instances(self, key: str) -> list[Instance]:
        return self._instances.get(key, [])

    async def scale(self, spec: InstanceSpec, count: int, *, reason: str = "") -> list[Instance]:
        """Bring the deployment `spec.key` to `count` instances; new ones are ready when this returns.

        Removed instances leave the rotation at once and are stopped once their requests are done (or
        after ``spec.drain_timeout_s``). `reason` goes to ``on_scale`` (by default: started, stopped or
        set to N).
        """
        current = self._instances.setdefault(spec.key, [])
        before = len(current)
        if count > len(current):
            new = []
            for _ in range(count - len(current)):
                index = self._next_index.get(spec.key, 0)
                self._next_index[spec.key] = index + 1
                new.append(Instance(spec, index, self.logs_dir, on_event=self.on_instance))
            results = await asyncio.gather(*(inst.start() for inst in new), return_exceptions=True)
            errors = [r for r in results if isinstance(r, BaseException)]
            started = [inst for inst, r in zip(new, results) if not isinstance(r, BaseException)]
            if self._instances.get(spec.key) is not current:
                # the deployment was stopped (or the runtime closed) while these loaded: they belong to nothing
                await asyncio.gather(*(inst.stop() for inst in started), return_exceptions=True)
                return []
            current.extend(started)
            self._scaled(spec.key, before, len(current), reason)
            if errors:
                raise RuntimeError(str(errors[0]))
        elif count < len(current):
            # Take the newest ones out of rotation first, then let their requests finish.
            leaving = current[count:]
            del current[count:]
            self._scaled(spec.key, before, len(current), reason)
            await asyncio.gather(*(_drain(inst, spec.drain_timeout_s) for inst in leaving))
            await asyncio.gather(*(inst.stop() for inst in leaving))
        return current

    def _scaled(self, key: str, before: int, after: int, reason: str) -> None:
        if self.on_scale is None or before == after:
            return
        if not reason:
            reason = ("deployment started" if before == 0 else "deployment stopped" if after == 0
                      else f"instance count set to {after}")
        try:
            self.on_scale(key, before, after, reason)
        except Exception:  # a broken listener must not stop scaling
            log.exception("could not report the scaling of %s", key)

    async def stop(self, key: str) -> None:
        await self.scale(InstanceSpec(key=key, card=None), 0)
        self._instances.pop(key, None)

    async def close(self) -> None:
        await asyncio.gather(*(inst.stop() for insts in self._instances.values() for inst in insts))
        self._instances.clear()


async def _drain(inst: Instance, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while inst.in_flight and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    if inst.in_flight:
        log.warning("%s still had %d request(s) in flight after %.0fs of draining; stopping it",
                    inst.name, inst.in_flight, timeout_s)
