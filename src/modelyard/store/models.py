"""The tables modelyard keeps, as SQLAlchemy 2 typed declarative models.

| table | one row is | written by |
|---|---|---|
| ``endpoints`` | an `EndpointSpec`, stored as JSON under its unique name | `ConfigStore` |
| ``deployments`` | a `DeploymentSpec`, unique per (endpoint, name) | `ConfigStore` |
| ``api_keys`` | a key's sha256, display prefix, scope and revocation | `KeyStore` |
| ``usage_records`` | one request: tokens, cost, latency, status, cache/route | `UsageWriter` |
| ``rollouts`` | a gradual traffic shift to a deployment: steps, limits, state, history | `RolloutStore` |

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

from sqlalchemy import JSON, Boolean, DateTime, Float, Index, Integer, MetaData, String, Text, UniqueConstraint
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
USAGE_KINDS = ("chat", "completion", "embedding")


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

    def __repr__(self) -> str:
        return f"UsageRecord(id={self.id!r}, request_id={self.request_id!r}, endpoint={self.endpoint!r})"


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


#: Column names of ``usage_records`` that a submitted record may set.
USAGE_COLUMNS: tuple[str, ...] = tuple(c.name for c in UsageRecord.__table__.columns if c.name != "id")
