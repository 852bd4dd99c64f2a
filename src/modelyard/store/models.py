"""The tables modelyard keeps, as SQLAlchemy 2 typed declarative models.

| table | one row is | written by |
|---|---|---|
| ``endpoints`` | an `EndpointSpec`, stored as JSON under its unique name | `serving.config.ConfigStore` |
| ``deployments`` | a `DeploymentSpec`, unique per (endpoint, name) | `serving.config.ConfigStore` |
| ``api_keys`` | a key's sha256, display prefix, scope and revocation | `KeyStore` |
| ``usage_records`` | one request: tokens, cost, latency, status, cache/route | `UsageWriter` |
| ``rollouts`` | a gradual traffic shift to a deployment: steps, limits, state, history | `RolloutStore` |
| ``batch_files`` | an uploaded batch input, or a job's output/error file (bytes on disk) | `BatchStore` |
| ``batch_jobs`` | a batch job: status, settings, counts, timestamps, file ids | `BatchStore` |
| ``batch_lines`` | one input line of a job: its request, state, attempts and result | `BatchStore` |
| ``fine_tuning_jobs`` | a fine-tuning job: base model, files, hyperparameters, status, result | `FineTuneStore` |
| ``fine_tuning_events`` | a job's messages and per-step training metrics | `FineTuneStore` |
| ``fine_tuning_checkpoints`` | a checkpoint a job's training wrote: step, metrics, folder | `FineTuneStore` |
| ``leases`` | which gateway owns a rollout, batch job or fine-tuning job, until when | `LeaseStore` |
| ``deployment_events`` | a deployment scaled, or one of its instances restarted or failed | `EventLog` |

The schema is created by the hand-written Alembic migrations in
``store/migrations/versions``; a test compares the migrated database with this
module so the two cannot drift apart. Change a table here, then add a new
migration: a shipped migration is never edited.

Timestamps are stored in UTC and always come back as timezone-aware UTC
datetimes, on SQLite (which has no time zones) as on Postgres.

There are deliberately no foreign keys between these tables: a deployment may
be applied before its endpoint (files are applied in any order), and usage
records outlive the endpoints and keys they mention.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, DateTime, Float, Index, Integer, MetaData, String, Text, UniqueConstraint
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

#: Constraint and index names are spelled out so migrations can refer to them.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

#: The kinds of request a usage record can describe.
USAGE_KINDS = ("chat", "completion", "embedding", "flow")


def utcnow() -> datetime:
    """The current time as an aware UTC datetime."""
    return datetime.now(timezone.utc)


class UTCDateTime(TypeDecorator[datetime]):
    """A ``DateTime(timezone=True)`` that always stores and returns UTC.

    Naive datetimes given to it are taken to be UTC already. SQLite keeps the
    naive UTC value (its date functions then work on it directly); Postgres
    keeps a ``timestamptz``. Either way the value read back is aware UTC.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        value = value.astimezone(timezone.utc)
        if dialect.name == "sqlite":
            return value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc)


class Base(DeclarativeBase):
    """Declarative base whose metadata Alembic compares against."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Endpoint(Base):
    """A stored `EndpointSpec` (the spec itself is the JSON column)."""

    __tablename__ = "endpoints"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(64), nullable=False, unique=True)
    spec: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)

    def __repr__(self) -> str:
        return f"Endpoint(id={self.id!r}, name={self.name!r})"


class Deployment(Base):
    """A stored `DeploymentSpec`; its name is unique within its endpoint."""

    __tablename__ = "deployments"
    __table_args__ = (UniqueConstraint("endpoint_name", "name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    endpoint_name: Mapped[str] = mapped_column(String(64), nullable=False)
    name: Mapped[str] = mapped_column(String(64), nullable=False)
    spec: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)

    def __repr__(self) -> str:
        return f"Deployment(id={self.id!r}, endpoint_name={self.endpoint_name!r}, name={self.name!r})"


class ApiKey(Base):
    """An API key, known only by its sha256 hex digest and a display prefix.

    ``endpoint_name`` is the one endpoint the key may call, or None for every
    endpoint. A revoked key keeps its row (for the audit trail in usage
    records) with ``revoked_at`` set.
    """

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(128), nullable=False)
    endpoint_name: Mapped[str | None] = mapped_column(String(64), nullable=True)
    prefix: Mapped[str] = mapped_column(String(16), nullable=False)
    key_hash: Mapped[str] = mapped_column(String(64), nullable=False, unique=True)
    is_admin: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)

    def __repr__(self) -> str:
        return f"ApiKey(id={self.id!r}, name={self.name!r}, prefix={self.prefix!r})"


class UsageRecord(Base):
    """One request as the gateway saw it; written in batches by `UsageWriter`.

    ``kind`` is one of `USAGE_KINDS`; ``status`` is the HTTP status returned
    to the client; ``cache`` and ``route`` hold the cache and router decisions
    (the values of the ``x-modelyard-cache`` / ``x-modelyard-route`` headers).
    """

    __tablename__ = "usage_records"
    __table_args__ = (Index(None, "endpoint", "created_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    request_id: Mapped[str] = mapped_column(String(64), nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, index=True, default=utcnow)
    endpoint: Mapped[str] = mapped_column(String(64), nullable=False)
    deployment: Mapped[str | None] = mapped_column(String(64), nullable=True)
    model: Mapped[str | None] = mapped_column(String(255), nullable=True)
    key_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    kind: Mapped[str] = mapped_column(String(16), nullable=False)
    stream: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    prompt_tokens: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    completion_tokens: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    cost_usd: Mapped[float] = mapped_column(Float, nullable=False, default=0.0)
    latency_ms: Mapped[float] = mapped_column(Float, nullable=False, default=0.0)
    ttft_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    status: Mapped[int] = mapped_column(Integer, nullable=False)
    error_code: Mapped[str | None] = mapped_column(String(64), nullable=True)
    cache: Mapped[str | None] = mapped_column(String(32), nullable=True)
    route: Mapped[str | None] = mapped_column(String(64), nullable=True)
    #: the batch job this request belongs to (None for live traffic)
    batch_id: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    #: a cached answer: the tokens and USD the original generation cost, saved this time
    saved_tokens: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    saved_usd: Mapped[float] = mapped_column(Float, nullable=False, default=0.0)
    #: a routed answer: each tier that was called, in order
    #: (``[{"deployment", "prompt_tokens", "completion_tokens", "cost_usd", "outcome"}]``)
    tiers: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON, nullable=True)
    #: a flow step: the request id of the flow call it is part of (whose record holds the run's trace)
    parent_request_id: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    #: a flow call (``kind`` ``flow``): the run's trace, a span per node (`flows.trace.Trace.to_dict`)
    trace: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)

    def __repr__(self) -> str:
        return f"UsageRecord(id={self.id!r}, request_id={self.request_id!r}, endpoint={self.endpoint!r})"


class FlowRecord(Base):
    """A flow (a prompt flow DAG) served under its name like an endpoint; see `store.flows`.

    ``dag`` is the ``flow.dag.yaml`` text, ``files`` the other files of the
    flow folder it names (``{relative path: text}``: templates, python).
    ``version`` grows by one with each change, so every gateway sharing the
    database can tell its loaded copy is stale.
    """

    __tablename__ = "flows"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    version: Mapped[int] = mapped_column(Integer, nullable=False)
    description: Mapped[str] = mapped_column(Text, nullable=False, default="")
    dag: Mapped[str] = mapped_column(Text, nullable=False)
    files: Mapped[dict[str, str]] = mapped_column(JSON, nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)


class Rollout(Base):
    """One gradual traffic shift to a deployment, its limits and what happened; written by `RolloutStore`.

    ``steps`` are the new deployment's percentages in order; ``current_step``
    indexes them (-1 before the first). ``from_traffic`` and ``from_mirror``
    are the endpoint's split before the rollout: what a rollback restores.
    ``state`` is ``running``, ``succeeded``, ``rolled_back``, ``cancelled`` or
    ``reverted``; ``reason`` says why it ended as it did. ``history`` is a
    list of events (``{"at", "event", "step", "traffic", "message"}``, plus
    ``"stats"`` when a step was judged).
    """

    __tablename__ = "rollouts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    endpoint: Mapped[str] = mapped_column(String(64), nullable=False, index=True)
    deployment: Mapped[str] = mapped_column(String(64), nullable=False)
    steps: Mapped[list[int]] = mapped_column(JSON, nullable=False)
    interval_s: Mapped[float] = mapped_column(Float, nullable=False)
    max_error_rate: Mapped[float] = mapped_column(Float, nullable=False)
    max_p95_ms: Mapped[float] = mapped_column(Float, nullable=False)
    min_requests: Mapped[int] = mapped_column(Integer, nullable=False, default=1)
    from_traffic: Mapped[dict[str, int]] = mapped_column(JSON, nullable=False)
    from_mirror: Mapped[dict[str, int]] = mapped_column(JSON, nullable=False)
    current_step: Mapped[int] = mapped_column(Integer, nullable=False, default=-1)
    step_started_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    state: Mapped[str] = mapped_column(String(16), nullable=False, default="running")
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    history: Mapped[list[dict[str, Any]]] = mapped_column(JSON, nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)

    def __repr__(self) -> str:
        return (f"Rollout(id={self.id!r}, endpoint={self.endpoint!r}, deployment={self.deployment!r}, "
                f"state={self.state!r})")


class RoutedResponse(Base):
    """An answer of a router endpoint, kept so it can be rated and improved; written by `ResponseStore`.

    ``tier`` answered first; ``status`` is ``answered``, ``checking`` /
    ``confirmed`` / ``corrected`` (speculative check), ``improving`` /
    ``improved`` (after negative feedback) or ``check_failed`` /
    ``improve_failed``. ``latest_content`` and ``latest_tier`` hold the
    answer that replaced the first one, if any.
    """

    __tablename__ = "routed_responses"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    endpoint: Mapped[str] = mapped_column(String(64), nullable=False, index=True)
    key_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    kind: Mapped[str] = mapped_column(String(16), nullable=False)
    request: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False)
    prompt: Mapped[str] = mapped_column(Text, nullable=False, default="")
    tier: Mapped[str] = mapped_column(String(64), nullable=False)
    tier_index: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    content: Mapped[str] = mapped_column(Text, nullable=False, default="")
    status: Mapped[str] = mapped_column(String(16), nullable=False, default="answered")
    latest_tier: Mapped[str | None] = mapped_column(String(64), nullable=True)
    latest_content: Mapped[str | None] = mapped_column(Text, nullable=True)
    similarity: Mapped[float | None] = mapped_column(Float, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow, index=True)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)


class Feedback(Base):
    """A user's rating of a routed answer (-1 or 1), and the tier that gave it."""

    __tablename__ = "feedback"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    response_id: Mapped[str] = mapped_column(String(64), nullable=False, index=True)
    endpoint: Mapped[str] = mapped_column(String(64), nullable=False, index=True)
    tier: Mapped[str] = mapped_column(String(64), nullable=False)
    rating: Mapped[int] = mapped_column(Integer, nullable=False)
    comment: Mapped[str | None] = mapped_column(Text, nullable=True)
    key_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)


#: Column names of ``usage_records`` that a submitted record may set.
USAGE_COLUMNS: tuple[str, ...] = tuple(c.name for c in UsageRecord.__table__.columns if c.name != "id")


class BatchFile(Base):
    """A file uploaded for (or written by) a batch job; its bytes live under ``MODELYARD_HOME/files/<id>``.

    ``purpose`` is ``batch`` (an input file) or ``batch_output`` (a job's
    output or error file). ``owner_key_id`` is the key that uploaded it, or
    that created the job that wrote it.
    """

    __tablename__ = "batch_files"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    filename: Mapped[str] = mapped_column(String(255), nullable=False)
    purpose: Mapped[str] = mapped_column(String(32), nullable=False)
    bytes: Mapped[int] = mapped_column(BigInteger, nullable=False)
    owner_key_id: Mapped[int | None] = mapped_column(Integer, nullable=True, index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, index=True, default=utcnow)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True, index=True)


class BatchJob(Base):
    """One batch job: the OpenAI Batch object's fields plus the Azure-ML batch settings; see `store.batches`.

    ``endpoint`` is the OpenAI route of every line (``/v1/chat/completions``);
    ``model`` the modelyard endpoint that answers them when the job names one
    (otherwise each line's body ``model`` does) and ``deployment`` the one
    deployment it targets, if any. ``total``/``completed``/``failed`` count
    lines; tokens and cost are in ``usage_records`` rows tagged with the id.
    """

    __tablename__ = "batch_jobs"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    endpoint: Mapped[str] = mapped_column(String(64), nullable=False)
    model: Mapped[str | None] = mapped_column(String(64), nullable=True)
    deployment: Mapped[str | None] = mapped_column(String(64), nullable=True)
    input_file_id: Mapped[str] = mapped_column(String(64), nullable=False)
    output_file_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    error_file_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    completion_window: Mapped[str] = mapped_column(String(16), nullable=False)
    status: Mapped[str] = mapped_column(String(16), nullable=False, index=True)
    mini_batch_size: Mapped[int] = mapped_column(Integer, nullable=False)
    max_retries: Mapped[int] = mapped_column(Integer, nullable=False)
    error_threshold: Mapped[int] = mapped_column(Integer, nullable=False)
    output_action: Mapped[str] = mapped_column(String(16), nullable=False)
    max_share: Mapped[float | None] = mapped_column(Float, nullable=True)
    meta: Mapped[dict[str, str] | None] = mapped_column("metadata", JSON, nullable=True)
    errors: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON, nullable=True)
    total: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    completed: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    failed: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    owner_key_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    #: ``output_expires_after.seconds``: the output and error files expire this long after they are written
    output_expires_after_s: Mapped[int | None] = mapped_column(Integer, nullable=True)
    #: where the lines run: ``local`` (the gateway's deployments) or ``ray-data`` (a Ray cluster)
    engine: Mapped[str] = mapped_column(String(16), nullable=False, default="local", server_default="local")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, index=True, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    in_progress_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    finalizing_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    failed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    expired_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    cancelling_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    cancelled_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class BatchLine(Base):
    """One input line of a batch job and, once it ran, its result.

    ``state`` is ``pending``, ``succeeded`` or ``failed``; a line's result is
    written in the same transaction as its usage records, so a crash loses
    only lines still pending, which run again on resume. ``response`` is the
    JSON body answered (an OpenAI error body for a failed line).
    """

    __tablename__ = "batch_lines"
    __table_args__ = (
        UniqueConstraint("batch_id", "line"),
        UniqueConstraint("batch_id", "custom_id"),
        Index(None, "batch_id", "state", "line"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    batch_id: Mapped[str] = mapped_column(String(64), nullable=False)
    line: Mapped[int] = mapped_column(Integer, nullable=False)
    custom_id: Mapped[str] = mapped_column(String(512), nullable=False)
    kind: Mapped[str] = mapped_column(String(16), nullable=False)
    body: Mapped[str] = mapped_column(Text, nullable=False)
    state: Mapped[str] = mapped_column(String(16), nullable=False, default="pending")
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    status_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    request_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    response: Mapped[str | None] = mapped_column(Text, nullable=True)
    error_code: Mapped[str | None] = mapped_column(String(64), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class FineTuningJob(Base):
    """One fine-tuning job: the OpenAI FineTuningJob object's fields; see `store.finetune`.

    ``model`` is the base model's catalog id; ``fine_tuned_model`` the name the tuned model gets, chosen when
    the job is created (its checkpoints are named after it) and shown once the job has ``succeeded``.
    ``hyperparameters`` holds what the client asked for until the files are validated, then the values used
    (``"auto"`` resolved). ``error`` is ``{"code", "message", "param"}`` for a failed job. ``attempts`` counts the
    training processes started for it (more than one after a gateway restart resumed it).
    """

    __tablename__ = "fine_tuning_jobs"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    model: Mapped[str] = mapped_column(String(255), nullable=False)
    fine_tuned_model: Mapped[str] = mapped_column(String(255), nullable=False)
    status: Mapped[str] = mapped_column(String(32), nullable=False, index=True)
    training_file: Mapped[str] = mapped_column(String(64), nullable=False)
    validation_file: Mapped[str | None] = mapped_column(String(64), nullable=True)
    hyperparameters: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False)
    method: Mapped[str] = mapped_column(String(32), nullable=False, default="supervised")
    seed: Mapped[int] = mapped_column(Integer, nullable=False)
    suffix: Mapped[str | None] = mapped_column(String(64), nullable=True)
    meta: Mapped[dict[str, str] | None] = mapped_column("metadata", JSON, nullable=True)
    training_examples: Mapped[int | None] = mapped_column(Integer, nullable=True)
    trained_tokens: Mapped[int | None] = mapped_column(Integer, nullable=True)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    result_files: Mapped[list[str] | None] = mapped_column(JSON, nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    owner_key_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, index=True, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    estimated_finish: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class FineTuningEvent(Base):
    """Something that happened to a fine-tuning job: a ``message`` (level info, warn or error) or the
    ``metrics`` of one training step (``data``: step, total_steps, train_loss, valid_loss, …)."""

    __tablename__ = "fine_tuning_events"
    __table_args__ = (Index(None, "job_id", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(String(64), nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)
    level: Mapped[str] = mapped_column(String(8), nullable=False)
    type: Mapped[str] = mapped_column(String(16), nullable=False)
    message: Mapped[str] = mapped_column(Text, nullable=False)
    data: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)


class FineTuningCheckpoint(Base):
    """A checkpoint a fine-tuning job's training process wrote (one per step at most); ``path`` is its folder."""

    __tablename__ = "fine_tuning_checkpoints"
    __table_args__ = (UniqueConstraint("job_id", "step"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(String(64), nullable=False)
    step: Mapped[int] = mapped_column(Integer, nullable=False)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False)
    path: Mapped[str] = mapped_column(Text, nullable=False)
    fine_tuned_model_checkpoint: Mapped[str] = mapped_column(String(255), nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)


class DeploymentEvent(Base):
    """Something that happened to a deployment's instances: ``scale_up`` / ``scale_down`` (``from_count`` →
    ``to_count``), ``instance_restarted`` or ``instance_failed`` (``instance`` names it), with the reason."""

    __tablename__ = "deployment_events"
    __table_args__ = (Index(None, "endpoint", "deployment", "created_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)
    endpoint: Mapped[str] = mapped_column(String(64), nullable=False)
    deployment: Mapped[str] = mapped_column(String(64), nullable=False)
    kind: Mapped[str] = mapped_column(String(32), nullable=False)
    from_count: Mapped[int | None] = mapped_column(Integer, nullable=True)
    to_count: Mapped[int | None] = mapped_column(Integer, nullable=True)
    instance: Mapped[str | None] = mapped_column(String(128), nullable=True)
    reason: Mapped[str] = mapped_column(Text, nullable=False, default="")


class Lease(Base):
    """Who owns a piece of background work (``rollout:7``, ``batch:batch_…``, ``finetune:ftjob-…``) until when.

    Written by `store.leases.LeaseStore`: several gateways on one database each take the work whose lease
    they hold, and a gateway that stops renewing loses it at ``expires_at`` to whichever asks next."""

    __tablename__ = "leases"

    name: Mapped[str] = mapped_column(String(255), primary_key=True)
    owner: Mapped[str] = mapped_column(String(255), nullable=False)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    acquired_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)
