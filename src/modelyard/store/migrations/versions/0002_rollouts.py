"""Rollouts: gradual traffic shifts to a deployment, with their limits, state and history.

Revision ID: 0002
Revises: 0001
Create Date: 2025-02-01

Hand-written, like every migration here; plain SQLAlchemy types only
(``DateTime(timezone=True)`` for the models' ``UTCDateTime``).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _timestamp(name: str, *, nullable: bool = False) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "rollouts",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("endpoint", sa.String(length=64), nullable=False),
        sa.Column("deployment", sa.String(length=64), nullable=False),
        sa.Column("steps", sa.JSON(), nullable=False),
        sa.Column("interval_s", sa.Float(), nullable=False),
        sa.Column("max_error_rate", sa.Float(), nullable=False),
        sa.Column("max_p95_ms", sa.Float(), nullable=False),
        sa.Column("min_requests", sa.Integer(), nullable=False),
        sa.Column("from_traffic", sa.JSON(), nullable=False),
        sa.Column("from_mirror", sa.JSON(), nullable=False),
        sa.Column("current_step", sa.Integer(), nullable=False),
        _timestamp("step_started_at", nullable=True),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("history", sa.JSON(), nullable=False),
        _timestamp("created_at"),
        _timestamp("updated_at"),
        _timestamp("finished_at", nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_rollouts"),
    )
    op.create_index("ix_rollouts_endpoint", "rollouts", ["endpoint"])


def downgrade() -> None:
    op.drop_index("ix_rollouts_endpoint", table_name="rollouts")
    op.drop_table("rollouts")
