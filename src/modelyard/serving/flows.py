"""Flows served like endpoints: stored in the database, loaded once, called by name.

A flow is applied with its folder's files (``flow.dag.yaml`` plus the
templates and python files it names). `FlowRegistry.apply` writes them to a
fresh folder under ``MODELYARD_HOME/flows/<name>/``, checks the flow there
(`flows.parse_flow`, every endpoint it names must exist), and only then
stores it and swaps it in: a bad flow is a 400 naming the line and changes
nothing. Each loaded flow keeps one `FlowEngine` and — when it has python
nodes — one `PythonWorker` process, started on the first call.

Flows and endpoints share one namespace (a request's ``model`` names
either), so a flow cannot take an endpoint's name, nor an endpoint a flow's.

Several gateways on one database: each keeps its loaded copies and compares
their versions with the stored ones now and then (`sync`, on the same timer
that re-reads keys), so a flow applied or deleted through one gateway is
served by all within a few seconds.
"""

from __future__ import annotations

import asyncio
import logging
import re
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Mapping

from ..errors import ModelyardError, invalid, not_found
from ..flows import Flow, FlowEngine, FlowError, PythonWorker, check_endpoints, parse_flow, variant
from ..flows.model import PythonNode
from ..store.flows import FlowStore, StoredFlow
from .spec import check_name

log = logging.getLogger(__name__)

#: A flow folder's limits: how many files besides flow.dag.yaml, and how many characters in all.
MAX_FILES = 64
MAX_CHARS = 1 << 20
_SAFE_PART = re.compile(r"^[A-Za-z0-9_.\-]+$")


@dataclass
class LoadedFlow:
    stored: StoredFlow
    flow: Flow
    engine: FlowEngine
    worker: PythonWorker | None
    folder: Path

    @property
    def name(self) -> str:
        return self.stored.name

    @property
    def version(self) -> int:
        return self.stored.version

    def engine_for(self, variants: Mapping[str, str] | None) -> FlowEngine:
        """The engine, or one running the given node variants (``{"compose": "variant_1"}``; a 400 if
        a node or variant does not exist)."""
        if not variants:
            return self.engine
        try:
            chosen = variant(self.flow, variants)
        except FlowError as exc:
            raise _with_param(exc.to_error(), "variants") from None
        return FlowEngine(chosen, python=self.worker, node_timeout_s=self.engine.node_timeout_s,
                          retries=self.engine.retries)


def _with_param(err: ModelyardError, param: str) -> ModelyardError:
    err.param = err.param or param
    return err


def check_files(files: Mapping[str, str]) -> dict[str, str]:
    """The flow folder's other files, checked: relative paths inside the folder, text, within the limits."""
    if len(files) > MAX_FILES:
        raise invalid(f"Invalid value for 'files': {len(files)} files, at most {MAX_FILES}.", param="files")
    total = 0
    clean: dict[str, str] = {}
    for path, text in files.items():
        parts = PurePosixPath(path).parts
        if (not parts or PurePosixPath(path).is_absolute() or any(p in ("..", ".") for p in parts)
                or not all(_SAFE_PART.match(p) for p in parts)):
            raise invalid(f"Invalid value for 'files': '{path}' is not a relative path inside the flow folder "
                          "(letters, digits, '_', '-', '.' and '/')", param="files")
        if not isinstance(text, str):
            raise invalid(f"Invalid value for 'files.{path}': expected the file's text.", param="files")
        total += len(text)
        clean["/".join(parts)] = text
    if total > MAX_CHARS:
        raise invalid(f"Invalid value for 'files': {total} characters in all, at most {MAX_CHARS}.", param="files")
    return clean


class FlowRegistry:
    """The flows this gateway serves (see the module docstring)."""

    def __init__(self, store: FlowStore, root: Path, *, endpoint_exists: Callable[[str], bool],
                 node_timeout_s: float = 60.0, retries: int = 2) -> None:
        self.store = store
        self.root = root
        self.endpoint_exists = endpoint_exists
        self.node_timeout_s = node_timeout_s
        self.retries = retries
        self._flows: dict[str, LoadedFlow] = {}
        self._lock = asyncio.Lock()
        #: told a flow's name after it was applied or deleted here (the gateway publishes a change notice;
        #: the other gateways `sync`)
        self.published: Callable[[str], None] = lambda name: None

    # -- reading ------------------------------------------------------------------------

    def get(self, name: str) -> LoadedFlow | None:
        return self._flows.get(name)

    def find(self, name: str) -> LoadedFlow:
        loaded = self._flows.get(name)
        if loaded is None:
            raise not_found(f"There is no flow '{name}'.", param="name", code="flow_not_found")
        return loaded

    def all(self) -> list[LoadedFlow]:
        return sorted(self._flows.values(), key=lambda f: f.name)

    def __contains__(self, name: object) -> bool:
        return name in self._flows

    # -- changing -----------------------------------------------------------------------

    def check(self, name: str, dag: str, files: Mapping[str, str]) -> Flow:
        """Check a flow without storing it: a 400 naming the line for anything wrong."""
        folder = self._staging(name, dag, check_files(files))
        try:
            return self._parse(name, dag, folder)
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    async def apply(self, name: str, dag: str, files: Mapping[str, str], description: str = "") -> LoadedFlow:
        """Create or replace flow ``name``: checked first (nothing changes if it is wrong), then stored and
        served. A 409 when an endpoint has the name."""
        try:
            check_name(name)
        except ValueError as exc:
            raise invalid(f"Invalid value for 'name': {exc}", param="name") from None
        if self.endpoint_exists(name):
            raise ModelyardError(f"An endpoint is named '{name}'; a flow and an endpoint cannot share a name.",
                                 status=409, param="name", code="name_taken")
        files = check_files(files)
        async with self._lock:
            staging = await asyncio.to_thread(self._staging, name, dag, files)
            try:
                flow = self._parse(name, dag, staging)
                description = description or flow.description or ""
                stored = await asyncio.to_thread(self.store.save, name, dag, files, description)
                folder = self._folder(name, stored.version)
                await asyncio.to_thread(_replace, staging, folder)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
            loaded = self._load(stored, folder)
            old = self._flows.get(name)
            self._flows[name] = loaded
        self.published(name)
        if old is not None:
            await self._retire(old)
        return loaded

    async def delete(self, name: str) -> None:
        self.find(name)
        async with self._lock:
            await asyncio.to_thread(self.store.delete, name)
            old = self._flows.pop(name, None)
        self.published(name)
        if old is not None:
            await self._retire(old)

    async def load(self) -> None:
        """Load every stored flow (at start-up). A flow that no longer loads — an endpoint it names was
        deleted — is still served: its calls answer 424 naming the endpoint (see `missing_endpoints`)."""
        await self.sync()

    async def sync(self) -> None:
        """Bring the loaded flows in line with the stored ones (another gateway may have changed them).

        The stored versions are read under the lock: read before it, an `apply` finishing in between would
        look deleted and be dropped from this gateway."""
        async with self._lock:
            stored = await asyncio.to_thread(self.store.versions)
            gone = [n for n in self._flows if n not in stored]
            changed = [n for n, v in stored.items() if n not in self._flows or self._flows[n].version != v]
            retired = [self._flows.pop(n) for n in gone]
            for name in changed:
                row = await asyncio.to_thread(self.store.get, name)
                if row is None:
                    continue
                try:
                    folder = self._folder(name, row.version)
                    await asyncio.to_thread(self._write_folder, folder, row.dag, row.files)
                    loaded = self._load(row, folder)
                except (FlowError, ModelyardError, OSError) as exc:
                    log.error("flow %s (version %d) does not load: %s", name, row.version, exc)
                    continue
                if name in self._flows:
                    retired.append(self._flows[name])
                self._flows[name] = loaded
        for old in retired:
            await self._retire(old)

    async def close(self) -> None:
        for loaded in list(self._flows.values()):
            if loaded.worker is not None:
                await loaded.worker.close()

    def missing_endpoints(self, loaded: LoadedFlow) -> list[str]:
        """Endpoints the flow names (any variant) that do not exist now."""
        missing: list[str] = []

        def exists(name: str) -> bool:
            if not self.endpoint_exists(name):
                missing.append(name)
            return True
        check_endpoints(loaded.flow, exists)
        return sorted(set(missing))

    # -- helpers ------------------------------------------------------------------------

    def _parse(self, name: str, dag: str, folder: Path, *, verify: bool = True) -> Flow:
        flow = parse_flow(dag, folder, source=f"{name}/flow.dag.yaml",
                          endpoint_exists=self.endpoint_exists if verify else None)
        if flow.name is None:
            flow = flow.model_copy(update={"name": name})
        return flow

    def _load(self, stored: StoredFlow, folder: Path) -> LoadedFlow:
        flow = self._parse(stored.name, stored.dag, folder, verify=False)
        flow = flow.model_copy(update={"name": stored.name})
        has_python = any(isinstance(n, PythonNode) for n in flow.nodes) or any(
            isinstance(n, PythonNode) for v in flow.variants.values() for n in v.nodes.values())
        worker = PythonWorker.for_flow(flow) if has_python else None
        engine = FlowEngine(flow, python=worker, node_timeout_s=self.node_timeout_s, retries=self.retries)
        return LoadedFlow(stored, flow, engine, worker, folder)

    async def _retire(self, old: LoadedFlow) -> None:
        if old.worker is not None:
            await old.worker.close()
        current = self._flows.get(old.name)
        if current is None or current.folder != old.folder:
            await asyncio.to_thread(shutil.rmtree, old.folder, True)

    def _folder(self, name: str, version: int) -> Path:
        return self.root / name / f"v{version}"

    def _staging(self, name: str, dag: str, files: Mapping[str, str]) -> Path:
        """A fresh folder holding the flow's files, to check it before anything changes."""
        folder = self.root / name / f".staging-{uuid.uuid4().hex[:12]}"
        self._write_folder(folder, dag, files)
        return folder

    @staticmethod
    def _write_folder(folder: Path, dag: str, files: Mapping[str, str]) -> None:
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        (folder / "flow.dag.yaml").write_text(dag, encoding="utf-8")
        for path, text in files.items():
            target = folder / path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text, encoding="utf-8")


def _replace(staging: Path, folder: Path) -> None:
    if folder.exists():
        shutil.rmtree(folder)
    shutil.copytree(staging, folder)


def describe(loaded: LoadedFlow, *, with_files: bool = False) -> dict[str, Any]:
    """A flow as the API shows it: its inputs, outputs, nodes (with what each reads) and variants."""
    flow = loaded.flow
    deps = flow.dependencies()
    nodes = []
    for node in flow.nodes:
        entry: dict[str, Any] = {"name": node.name, "type": node.kind, "depends_on": sorted(deps[node.name]),
                                 "variant": node.variant}
        endpoint = getattr(node, "endpoint", None)
        if isinstance(endpoint, str):
            entry["endpoint"] = endpoint
        index = getattr(node, "index", None)
        if isinstance(index, str):
            entry["index"] = index
        if node.activate is not None:
            entry["activate"] = {"when": str(node.activate.when), "is": node.activate.equals}
        nodes.append(entry)
    out: dict[str, Any] = {
        "name": loaded.name, "object": "flow", "version": loaded.version, "description": loaded.stored.description,
        "is_chat": flow.is_chat,
        "warnings": list(flow.warnings),
        "inputs": {k: {"type": v.type, "default": v.default, "required": not v.has_default and not v.is_chat_history,
                       "description": v.description, "enum": v.enum, "is_chat_input": v.is_chat_input,
                       "is_chat_history": v.is_chat_history} for k, v in flow.inputs.items()},
        "outputs": {k: {"type": v.type, "reference": str(v.reference), "is_chat_output": v.is_chat_output}
                    for k, v in flow.outputs.items()},
        "nodes": nodes,
        "variants": {name: {"default": v.default, "variants": sorted(v.nodes),
                            "endpoints": {vid: getattr(n, "endpoint", None) if isinstance(getattr(n, "endpoint", None),
                                                                                          str) else None
                                          for vid, n in v.nodes.items()},
                            "descriptions": dict(v.descriptions)}
                     for name, v in flow.variants.items()},
        "created_at": loaded.stored.created_at.isoformat(), "updated_at": loaded.stored.updated_at.isoformat(),
    }
    if with_files:
        out["yaml"] = loaded.stored.dag
        out["files"] = loaded.stored.files
    return out
