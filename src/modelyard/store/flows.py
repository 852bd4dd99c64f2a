"""Flows as stored: their definitions (table ``flows``) and their runs (flow calls' usage records).

A flow's folder — ``flow.dag.yaml`` and the templates and python files it
names — is one row: the YAML text, the other files as ``{path: text}`` and
a version that grows with every change. A flow's runs are not a table of
their own: each flow call writes one usage record (``kind`` ``flow``) whose
``trace`` column holds the run's trace, written by the usage writer with
every other record (so the same batching, quarantine and bounded queue
apply), and each of its steps writes its own record with
``parent_request_id`` set to the flow call's request id. The run id is the
flow call's request id.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, select, update

from .db import Database
from .models import FlowRecord, UsageRecord, utcnow

_USAGE = UsageRecord.__table__.c

#: The run summary columns `runs` returns (the trace itself only from `run`).
_RUN_COLUMNS = (_USAGE.request_id, _USAGE.created_at, _USAGE.key_id, _USAGE.status, _USAGE.error_code,
                _USAGE.stream, _USAGE.prompt_tokens, _USAGE.completion_tokens, _USAGE.cost_usd,
                _USAGE.latency_ms, _USAGE.batch_id)


@dataclass(frozen=True, slots=True)
class StoredFlow:
    name: str
    version: int
    description: str
    dag: str
    files: dict[str, str]
    created_at: datetime
    updated_at: datetime


def _stored(row: FlowRecord) -> StoredFlow:
    return StoredFlow(row.name, row.version, row.description, row.dag, dict(row.files), row.created_at,
                      row.updated_at)


class FlowStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    def save(self, name: str, dag: str, files: dict[str, str], description: str = "") -> StoredFlow:
        """Create the flow, or replace its definition (its version goes up by one)."""
        with self.db.session() as session:
            row = session.get(FlowRecord, name)
            now = utcnow()
            if row is None:
                row = FlowRecord(name=name, version=1, description=description, dag=dag, files=files,
                                 created_at=now, updated_at=now)
                session.add(row)
            else:
                row.version += 1
                row.description, row.dag, row.files, row.updated_at = description, dag, files, now
            session.commit()
            return _stored(row)

    def get(self, name: str) -> StoredFlow | None:
        with self.db.session() as session:
            row = session.get(FlowRecord, name)
            return _stored(row) if row is not None else None

    def all(self) -> list[StoredFlow]:
        with self.db.session() as session:
            return [_stored(r) for r in session.scalars(select(FlowRecord).order_by(FlowRecord.name))]

    def versions(self) -> dict[str, int]:
        """Every flow's name and version: what a gateway compares its loaded copies with."""
        t = FlowRecord.__table__.c
        with self.db.engine.connect() as conn:
            return {name: version for name, version in conn.execute(select(t.name, t.version))}

    def delete(self, name: str) -> bool:
        with self.db.session() as session:
            deleted = session.execute(delete(FlowRecord).where(FlowRecord.name == name)).rowcount
            session.commit()
            return bool(deleted)

    def touch(self, name: str) -> None:
        """Bump the version without changing the definition (other gateways reload it)."""
        with self.db.session() as session:
            session.execute(update(FlowRecord).where(FlowRecord.name == name)
                            .values(version=FlowRecord.version + 1, updated_at=utcnow()))
            session.commit()

    # -- runs -------------------------------------------------------------------------------

    def runs(self, name: str, *, limit: int = 50, key_id: int | None = None) -> list[dict[str, Any]]:
        """The flow's latest runs, newest first, without their traces (``key_id``: only that key's)."""
        query = (select(*_RUN_COLUMNS).where(_USAGE.endpoint == name, _USAGE.kind == "flow")
                 .order_by(_USAGE.created_at.desc(), _USAGE.id.desc()).limit(max(1, min(int(limit), 1000))))
        if key_id is not None:
            query = query.where(_USAGE.key_id == key_id)
        with self.db.engine.connect() as conn:
            return [_run_row(r) for r in conn.execute(query).mappings()]

    def run(self, name: str, run_id: str) -> dict[str, Any] | None:
        """One run with its trace, and the usage records of its steps."""
        query = select(*_RUN_COLUMNS, _USAGE.trace).where(_USAGE.endpoint == name, _USAGE.kind == "flow",
                                                          _USAGE.request_id == run_id)
        steps = (select(_USAGE.request_id, _USAGE.endpoint, _USAGE.deployment, _USAGE.kind, _USAGE.status,
                        _USAGE.cache, _USAGE.prompt_tokens, _USAGE.completion_tokens, _USAGE.cost_usd,
                        _USAGE.latency_ms).where(_USAGE.parent_request_id == run_id).order_by(_USAGE.id))
        with self.db.engine.connect() as conn:
            row = conn.execute(query).mappings().first()
            if row is None:
                return None
            out = _run_row(row)
            out["trace"] = row["trace"]
            out["steps"] = [dict(s) for s in conn.execute(steps).mappings()]
        return out


def _run_row(row: Any) -> dict[str, Any]:
    return {"id": row["request_id"], "created_at": row["created_at"].isoformat(), "key_id": row["key_id"],
            "status": row["status"], "error_code": row["error_code"], "stream": bool(row["stream"]),
            "prompt_tokens": row["prompt_tokens"], "completion_tokens": row["completion_tokens"],
            "cost_usd": row["cost_usd"], "latency_ms": row["latency_ms"], "batch_id": row["batch_id"]}
