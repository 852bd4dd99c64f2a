"""`PythonWorker`: a flow's python nodes run in a process of their own, never in the gateway.

A flow's python code is the user's: it may block, crash, leak or call
``os._exit``. So, like a model instance, it gets its own process — one per
flow, started on the first call (or by `start`), running `python_child` —
and the gateway only exchanges JSON with it::

    worker = PythonWorker.for_flow(flow)           # the flow folder and its environment_variables
    value = await worker.call(node.tool.path, node.tool.function, {"hits": hits},
                              is_async=node.tool.is_async, timeout_s=60)
    await worker.close()

**Isolation.** The process runs in the flow folder (its working directory
and the first entry of ``sys.path``) in a session of its own, and gets a
filtered environment: only `ENV_ALLOWED` (``PATH``, ``HOME``, locale,
temporary folders, ``PYTHONPATH`` …) passes from the gateway's — never
``MODELYARD_*`` (the admin key, the database URL), ``*_API_KEY`` or any
other credential the gateway holds — plus the flow's own
``environment_variables``. Its stdout and stderr go to the gateway's log
(logger ``modelyard.flows.python_worker``), line by line.

**Failures**, each naming what happened, for the engine to name the node:

- the function raised → `PythonNodeError` (type, message, the traceback
  text from the user's code);
- it returned something JSON cannot carry (a set, NaN, an object) →
  `PythonNodeError` with ``kind == "result"``;
- the process died (killed, ``os._exit``, a crash in native code) →
  `PythonWorkerDied` for every call it was running; the next call starts a
  new process.

**Timeouts.** An async function past its time is cancelled in the worker
(one that will not stop within `ASYNC_CANCEL_GRACE_S` is treated like a
sync one). A sync one cannot be: Python cannot interrupt a thread. So a sync call
that runs past its deadline — whether or not anyone still waits for it
(the client may have hung up) — *retires* the process: new calls go to a
fresh one at once, and the old one is killed as soon as the calls it still
runs for others have finished. That is the honest way to get the CPU and
memory back, and no other run's node fails for it. A sync call abandoned
before its deadline (the run was cancelled) is left to finish; its answer
is dropped.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import os
import signal
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    from .model import Flow

log = logging.getLogger(__name__)

CHILD_SCRIPT = Path(__file__).with_name("python_child.py")
#: Environment variables the worker inherits from the gateway (and any ``LC_*``); nothing else.
ENV_ALLOWED = frozenset({
    "PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LANGUAGE", "TZ", "TMPDIR", "TEMP", "TMP",
    "SYSTEMROOT", "VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "PYTHONHASHSEED", "PYTHONIOENCODING",
    "PYTHONDONTWRITEBYTECODE", "SSL_CERT_FILE", "SSL_CERT_DIR",
})
#: How long a new worker may take to say it is ready.
START_TIMEOUT_S = 30.0
#: The longest answer line read from the worker (its own limit is 16 MiB of JSON, plus the envelope).
READ_LIMIT = 17 * 1024 * 1024
#: How many of the worker's last output lines a crash report quotes.
TAIL_LINES = 20
#: How long an async call may take to stop once cancelled before its process is retired.
ASYNC_CANCEL_GRACE_S = 1.0
#: How long `close` waits for the process to exit before killing it.
CLOSE_GRACE_S = 2.0


class PythonNodeError(Exception):
    """The function raised (``kind == "raised"``), or returned what JSON cannot carry (``"result"``)."""

    def __init__(self, kind: str, type_name: str, message: str, traceback: str = "") -> None:
        super().__init__(f"{type_name}: {message}" if kind == "raised" else message)
        self.kind = kind
        self.type_name = type_name
        self.message = message
        self.traceback = traceback


class PythonWorkerDied(Exception):
    """The worker process ended while running the call."""


@dataclass(eq=False)
class _Call:
    future: asyncio.Future[Any]
    is_async: bool
    deadline: float | None  # loop time
    abandoned: bool = False


@dataclass(eq=False)
class _Process:
    """One worker process and the calls it is running."""

    proc: asyncio.subprocess.Process
    calls: dict[int, _Call] = field(default_factory=dict)
    tail: collections.deque[str] = field(default_factory=lambda: collections.deque(maxlen=TAIL_LINES))
    retiring: bool = False
    #: the process has exited and its calls were failed
    ended: bool = False
    reader: asyncio.Task[None] | None = None
    logger: asyncio.Task[None] | None = None

    @property
    def alive(self) -> bool:
        return self.proc.returncode is None and not self.ended

    def live_calls(self) -> int:
        return sum(1 for c in self.calls.values() if not c.abandoned)

    def kill(self) -> None:
        if self.proc.returncode is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


class PythonWorker:
    """The process that runs one flow's python nodes; restarted for the next call when it dies."""

    def __init__(self, flow_dir: str | Path, *, env: Mapping[str, Any] | None = None, threads: int = 8,
                 name: str | None = None) -> None:
        self.flow_dir = Path(flow_dir).resolve()
        self.name = name or self.flow_dir.name
        self.threads = threads
        self.env = filtered_env(os.environ, env)
        #: processes started after the first (a crash, or a retirement after a timeout)
        self.restarts = 0
        self._current: _Process | None = None
        self._started = 0
        self._ids = itertools.count(1)
        self._starting: asyncio.Future[_Process] | None = None
        self._closed = False
        self._processes: set[_Process] = set()

    @classmethod
    def for_flow(cls, flow: Flow, **kwargs: Any) -> PythonWorker:
        """The worker of ``flow``: its folder, its ``environment_variables``."""
        return cls(flow.base_dir, env=flow.environment_variables, name=flow.name, **kwargs)

    @property
    def pid(self) -> int | None:
        """The current process's id (None before the first call or after it died)."""
        current = self._current
        return current.proc.pid if current is not None and current.alive else None

    async def start(self, preload: Iterable[str | Path] = ()) -> None:
        """Start the process now rather than on the first call, and import ``preload`` files in it (an
        import error is a `PythonNodeError`)."""
        for path in preload:
            await self._request({"op": "load", "path": str(Path(path).resolve())}, is_async=False, timeout_s=None)
        if self._current is None:
            await self._process()

    async def call(self, path: str | Path, function: str, kwargs: Mapping[str, Any], *, is_async: bool = False,
                   timeout_s: float | None = None) -> Any:
        """``function(**kwargs)`` from the file at ``path``, in the worker; its return value.

        ``kwargs`` must be JSON-serialisable (a `TypeError` says so). ``timeout_s`` is the call's deadline
        in the worker (see the module docstring); the caller bounds its own wait.
        """
        message = {"op": "call", "path": str(path), "function": function, "kwargs": kwargs}
        return await self._request(message, is_async=is_async, timeout_s=timeout_s)

    async def close(self) -> None:
        """Stop the worker: close its stdin (it exits), kill it if it has not after a moment."""
        self._closed = True
        if self._starting is not None:
            await asyncio.gather(self._starting, return_exceptions=True)
        processes = list(self._processes)
        self._current = None
        for process in processes:
            if process.proc.stdin is not None and not process.proc.stdin.is_closing():
                process.proc.stdin.close()
        for process in processes:
            try:
                await asyncio.wait_for(process.proc.wait(), CLOSE_GRACE_S)
            except asyncio.TimeoutError:
                process.kill()
                await process.proc.wait()
            process.kill()  # anything the user's code started in its session
            for task in (process.reader, process.logger):
                if task is not None:
                    await asyncio.gather(task, return_exceptions=True)

    # -- one request ----------------------------------------------------------

    async def _request(self, message: dict[str, Any], *, is_async: bool, timeout_s: float | None) -> Any:
        call_id = next(self._ids)
        try:
            line = orjson.dumps({"id": call_id, **message}) + b"\n"
        except TypeError as exc:
            raise TypeError(f"the inputs are not JSON-serialisable ({exc})") from None
        process = await self._process()
        loop = asyncio.get_running_loop()
        call = _Call(loop.create_future(), is_async, loop.time() + timeout_s if timeout_s is not None else None)
        if process.ended:  # it died before the call could be sent; the reader has failed its calls already
            raise PythonWorkerDied(f"the python worker died (exit code {process.proc.returncode}) before running it")
        process.calls[call_id] = call
        try:
            process.proc.stdin.write(line)  # type: ignore[union-attr]
            await process.proc.stdin.drain()  # type: ignore[union-attr]
        except (BrokenPipeError, ConnectionResetError):
            pass  # it died: the reader fails the call with the reason
        try:
            return await call.future
        except asyncio.CancelledError:
            self._abandon(process, call_id, call)
            raise

    def _abandon(self, process: _Process, call_id: int, call: _Call) -> None:
        """Nobody waits for the call any more (timed out, or the run was cancelled)."""
        # (the future itself is cancelled with the caller: whether the call still runs is whether it is listed)
        if call_id not in process.calls or not process.alive:
            return
        call.abandoned = True
        loop = asyncio.get_running_loop()
        if process.retiring and process.live_calls() == 0:
            process.kill()
        elif call.is_async:
            # cancelled in the worker; one that will not stop within a moment of its deadline retires it
            self._send(process, {"id": call_id, "op": "cancel"})
            if call.deadline is not None:
                loop.call_at(max(call.deadline, loop.time()) + ASYNC_CANCEL_GRACE_S, self._check_deadline,
                             process, call_id)
        elif call.deadline is None:
            return  # left to finish: nothing bounds it
        elif loop.time() >= call.deadline - 0.001:
            self._retire(process, f"a call of {self.name} ran past its deadline")
        else:
            loop.call_at(call.deadline, self._check_deadline, process, call_id)

    def _check_deadline(self, process: _Process, call_id: int) -> None:
        if call_id in process.calls and process.alive:
            self._retire(process, f"an abandoned call of {self.name} ran past its deadline")

    def _retire(self, process: _Process, why: str) -> None:
        if process.retiring:
            return
        log.warning("%s: replacing the python worker (pid %s) with a fresh one", why, process.proc.pid)
        process.retiring = True
        if self._current is process:
            self._current = None
        if process.live_calls() == 0:
            process.kill()

    def _send(self, process: _Process, message: dict[str, Any]) -> None:
        if process.alive and process.proc.stdin is not None and not process.proc.stdin.is_closing():
            try:
                process.proc.stdin.write(orjson.dumps(message) + b"\n")
            except (BrokenPipeError, ConnectionResetError):
                pass

    # -- the process ----------------------------------------------------------

    async def _process(self) -> _Process:
        current = self._current
        if current is not None and current.alive and not current.retiring:
            return current
        if self._closed:
            raise RuntimeError(f"the python worker of {self.name} is closed")
        if self._starting is None:
            # Started apart from the caller: a caller cancelled meanwhile (a node's timeout, a client that
            # hung up) does not cancel the start, and the process serves the next call.
            self._starting = asyncio.ensure_future(self._start_current())
            self._starting.add_done_callback(_retrieve)
        return await asyncio.shield(self._starting)

    async def _start_current(self) -> _Process:
        try:
            process = await self._spawn()
            self._current = process
            return process
        finally:
            self._starting = None

    async def _spawn(self) -> _Process:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, str(CHILD_SCRIPT), str(self.flow_dir), str(self.threads),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            cwd=self.flow_dir, env=self.env, start_new_session=True, limit=READ_LIMIT)
        process = _Process(proc)
        process.logger = asyncio.create_task(self._log_output(process), name=f"flow-python-log-{self.name}")
        try:
            first = await asyncio.wait_for(proc.stdout.readline(), START_TIMEOUT_S)  # type: ignore[union-attr]
            ready = orjson.loads(first) if first else None
        except (asyncio.TimeoutError, orjson.JSONDecodeError, ValueError):
            ready = None
        except BaseException:
            process.kill()
            raise
        if not isinstance(ready, dict) or not ready.get("ready"):
            process.kill()
            await proc.wait()
            await asyncio.gather(process.logger, return_exceptions=True)
            tail = "\n".join(process.tail)
            raise PythonWorkerDied(f"the python worker of {self.name} did not start (exit code "
                                   f"{proc.returncode}){': ' + tail if tail else ''}")
        if self._started:
            self.restarts += 1
        self._started += 1
        self._processes.add(process)
        process.reader = asyncio.create_task(self._read(process), name=f"flow-python-{self.name}")
        log.info("started the python worker of %s (pid %s)", self.name, proc.pid)
        return process

    async def _read(self, process: _Process) -> None:
        stdout = process.proc.stdout
        assert stdout is not None
        try:
            while True:
                try:
                    line = await stdout.readline()
                except ValueError:  # a line over READ_LIMIT: the child never sends one; treat it as broken
                    process.kill()
                    break
                if not line:
                    break
                self._answer(process, line)
        finally:
            code = await process.proc.wait()
            await asyncio.gather(process.logger, return_exceptions=True)  # type: ignore[arg-type]
            self._processes.discard(process)
            if self._current is process:
                self._current = None
            live = [c for c in process.calls.values() if not c.abandoned and not c.future.done()]
            if live or (code != 0 and not process.retiring and not self._closed):
                log.warning("the python worker of %s (pid %s) exited with code %s%s", self.name, process.proc.pid,
                            code, "; the next call starts a new one" if not self._closed else "")
            tail = "\n".join(process.tail)
            process.ended = True
            for call in process.calls.values():
                if not call.future.done() and not call.abandoned:
                    call.future.set_exception(PythonWorkerDied(
                        f"the python worker died (exit code {code}) while running it"
                        + (f"; its last output:\n{tail}" if tail else "")))
            process.calls.clear()

    def _answer(self, process: _Process, line: bytes) -> None:
        try:
            message = orjson.loads(line)
            call = process.calls.pop(message["id"])
        except (orjson.JSONDecodeError, KeyError, TypeError):
            return
        if not call.future.done() and not call.abandoned:
            if message.get("ok"):
                call.future.set_result(message.get("value"))
            else:
                error = message.get("error") or {}
                call.future.set_exception(PythonNodeError(error.get("kind", "raised"), error.get("type", "Exception"),
                                                          error.get("message", ""), error.get("traceback", "")))
        if process.retiring and process.live_calls() == 0:
            process.kill()

    async def _log_output(self, process: _Process) -> None:
        stderr = process.proc.stderr
        assert stderr is not None
        while True:
            try:
                line = await stderr.readline()
            except ValueError:  # an enormous line without a newline: skip what was buffered
                continue
            if not line:
                return
            text = line.decode(errors="replace").rstrip()
            process.tail.append(text)
            log.info("flow %s python: %s", self.name, text)


def filtered_env(environ: Mapping[str, str], extra: Mapping[str, Any] | None = None) -> dict[str, str]:
    """What the worker sees of the gateway's environment (`ENV_ALLOWED`, ``LC_*``) plus the flow's own
    variables (``extra``; non-strings as JSON)."""
    env = {k: v for k, v in environ.items() if k in ENV_ALLOWED or k.startswith("LC_")}
    env["PYTHONUNBUFFERED"] = "1"
    for key, value in (extra or {}).items():
        env[str(key)] = value if isinstance(value, str) else orjson.dumps(value).decode()
    return env


def _retrieve(future: asyncio.Future[Any]) -> None:
    """Mark a failed start as seen (its callers have the error, or left)."""
    if not future.cancelled():
        future.exception()
