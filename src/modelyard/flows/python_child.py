"""The python worker process: runs a flow's python nodes, never inside the gateway.

`python_worker.PythonWorker` starts this file as a script, by its path —
``python .../flows/python_child.py <flow folder> <threads>`` — so the
process imports only the standard library before the flow's own code
(importing the ``modelyard.flows`` package would cost half a second at
every start and put the gateway's modules in the user's process).

The protocol is JSON lines on the process's original stdin and stdout; the
user's code sees stdin closed and stdout joined to stderr (a ``print()``
goes to the gateway's log, never into the protocol)::

    → {"id": 1, "op": "call", "path": "/abs/format_context.py", "function": "format_context",
       "kwargs": {"hits": [...]}}
    ← {"id": 1, "ok": true, "value": "..."}
    ← {"id": 1, "ok": false, "error": {"kind": "raised", "type": "ValueError", "message": "...",
                                        "traceback": "..."}}
    → {"id": 2, "op": "cancel"}                  (an async call the gateway no longer waits for)
    → {"id": 3, "op": "load", "path": "..."}     (import a file ahead of its first call)

The first line the process writes is ``{"ready": true, "pid": ...}``.
Sync functions run on a thread pool (several nodes at once); async ones on
one event loop in its own thread. Each file is imported once, by path, as
a module named after the file (sibling imports work: the flow folder is
the working directory and the first entry of ``sys.path``). When the
``promptflow`` package is not installed, a stand-in module gives the
flow's files ``promptflow.tool`` / ``promptflow.core.tool`` (they return the
function unchanged). The process exits when its stdin closes.
"""

import asyncio
import hashlib
import importlib.util
import inspect
import json
import os
import sys
import threading
import traceback
import types
from concurrent.futures import ThreadPoolExecutor

#: The longest answer line (bytes of JSON); the gateway reads lines up to a little more.
MAX_RESULT_BYTES = 16 * 1024 * 1024
MAX_TRACEBACK_CHARS = 8000


class Child:
    def __init__(self, flow_dir: str, threads: int, out) -> None:  # noqa: ANN001 - a binary file
        self.flow_dir = flow_dir
        self.out = out
        self.write_lock = threading.Lock()
        self.import_lock = threading.Lock()
        self.modules: dict[str, types.ModuleType] = {}
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="flow-node")
        self.loop = asyncio.new_event_loop()
        self.tasks: dict[int, asyncio.Task] = {}
        threading.Thread(target=self.loop.run_forever, name="flow-async", daemon=True).start()

    # -- answers ------------------------------------------------------------

    def send(self, message: dict) -> None:
        line = json.dumps(message, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()
        with self.write_lock:
            self.out.write(line + b"\n")
            self.out.flush()

    def answer(self, call_id: int, value) -> None:  # noqa: ANN001
        if isinstance(value, types.GeneratorType):  # prompt flow's streaming tools: the text, joined
            value = list(value)
            if all(isinstance(v, str) for v in value):
                value = "".join(value)
        try:
            line = json.dumps({"id": call_id, "ok": True, "value": value}, ensure_ascii=False,
                              allow_nan=False, separators=(",", ":")).encode()
        except (TypeError, ValueError) as exc:
            self.fail(call_id, "result", type(exc).__name__, f"the function returned a value that is not "
                      f"JSON-serialisable ({exc})")
            return
        if len(line) > MAX_RESULT_BYTES:
            self.fail(call_id, "result", "ValueError", f"the function returned {len(line)} bytes of JSON; "
                      f"at most {MAX_RESULT_BYTES} are passed on")
            return
        with self.write_lock:
            self.out.write(line + b"\n")
            self.out.flush()

    def fail(self, call_id: int, kind: str, type_name: str, message: str, tb: str = "") -> None:
        self.send({"id": call_id, "ok": False,
                   "error": {"kind": kind, "type": type_name, "message": message, "traceback": tb}})

    def raised(self, call_id: int, exc: BaseException) -> None:
        self.fail(call_id, "raised", type(exc).__name__, str(exc), _traceback(exc))

    # -- calls --------------------------------------------------------------

    def function(self, path: str, name: str):  # noqa: ANN201
        module = self.module(path)
        fn = getattr(module, name, None)
        if not callable(fn):
            raise AttributeError(f"{os.path.basename(path)} has no function {name!r}")
        return fn

    def module(self, path: str) -> types.ModuleType:
        with self.import_lock:
            module = self.modules.get(path)
            if module is not None:
                return module
            name = os.path.splitext(os.path.basename(path))[0]
            taken = sys.modules.get(name)
            if taken is not None and getattr(taken, "__file__", None) != path:
                name = f"_flow_{name}_{hashlib.sha1(path.encode()).hexdigest()[:8]}"
            spec = importlib.util.spec_from_file_location(name, path)
            if spec is None or spec.loader is None:
                raise ImportError(f"cannot import {path}")
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            try:
                spec.loader.exec_module(module)
            except BaseException:
                sys.modules.pop(name, None)
                raise
            self.modules[path] = module
            return module

    def call(self, message: dict) -> None:
        call_id = message["id"]
        try:
            fn = self.function(message["path"], message["function"])
        except BaseException as exc:  # an import error is the node's error
            self.raised(call_id, exc)
            return
        kwargs = message.get("kwargs") or {}
        if inspect.iscoroutinefunction(fn):
            asyncio.run_coroutine_threadsafe(self.run_async(call_id, fn, kwargs), self.loop)
        else:
            self.pool.submit(self.run_sync, call_id, fn, kwargs)

    def run_sync(self, call_id: int, fn, kwargs: dict) -> None:  # noqa: ANN001
        try:
            value = fn(**kwargs)
            if inspect.isawaitable(value):
                value = asyncio.run_coroutine_threadsafe(_awaited(value), self.loop).result()
        except BaseException as exc:  # noqa: BLE001 - user code: everything is the node's error
            self.raised(call_id, exc)
            return
        self.answer(call_id, value)

    async def run_async(self, call_id: int, fn, kwargs: dict) -> None:  # noqa: ANN001
        self.tasks[call_id] = asyncio.current_task()
        try:
            value = await fn(**kwargs)
        except asyncio.CancelledError:
            self.fail(call_id, "cancelled", "CancelledError", "cancelled")
            return
        except BaseException as exc:  # noqa: BLE001
            self.raised(call_id, exc)
            return
        finally:
            self.tasks.pop(call_id, None)
        self.answer(call_id, value)

    def cancel(self, call_id: int) -> None:
        def cancel_task() -> None:
            task = self.tasks.get(call_id)
            if task is not None:
                task.cancel()
        self.loop.call_soon_threadsafe(cancel_task)

    def load(self, message: dict) -> None:
        try:
            self.module(message["path"])
        except BaseException as exc:  # noqa: BLE001
            self.raised(message["id"], exc)
            return
        self.answer(message["id"], None)

    def serve(self, lines) -> None:  # noqa: ANN001 - a binary file
        for line in lines:
            try:
                message = json.loads(line)
            except ValueError:
                continue
            op = message.get("op")
            if op == "call":
                self.call(message)
            elif op == "cancel":
                self.cancel(message["id"])
            elif op == "load":
                self.pool.submit(self.load, message)


async def _awaited(value):  # noqa: ANN001, ANN202
    return await value


def _traceback(exc: BaseException) -> str:
    """The traceback from the user's code on (this file's own frames left out), cut to a few KB."""
    te = traceback.TracebackException.from_exception(exc)
    te.stack = traceback.StackSummary.from_list([f for f in te.stack if f.filename != __file__])
    text = "".join(te.format())
    return text if len(text) <= MAX_TRACEBACK_CHARS else "…" + text[-MAX_TRACEBACK_CHARS:]


def _install_promptflow_stand_in() -> None:
    """``from promptflow import tool`` / ``from promptflow.core import tool`` without prompt flow installed."""
    try:
        if importlib.util.find_spec("promptflow") is not None:
            return
    except (ImportError, ValueError):
        pass

    def tool(func=None, **_kwargs):  # noqa: ANN001, ANN202 - @tool and @tool(...)
        return func if callable(func) else (lambda f: f)

    package = types.ModuleType("promptflow")
    package.__path__ = []  # a package, so that promptflow.core imports
    core = types.ModuleType("promptflow.core")
    package.tool = core.tool = tool
    package.core = core
    sys.modules["promptflow"] = package
    sys.modules["promptflow.core"] = core


def main() -> None:
    flow_dir, threads = sys.argv[1], int(sys.argv[2])
    # The protocol keeps the original stdin and stdout; the user's code gets neither.
    proto_in = os.fdopen(os.dup(0), "rb")
    proto_out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    sys.stdout.reconfigure(line_buffering=True)
    sys.path[0] = flow_dir
    os.chdir(flow_dir)
    _install_promptflow_stand_in()
    child = Child(flow_dir, threads, proto_out)
    child.send({"ready": True, "pid": os.getpid()})
    child.serve(proto_in)
    # stdin closed: the gateway is done with this worker (or gone). Threads still running are abandoned.
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
