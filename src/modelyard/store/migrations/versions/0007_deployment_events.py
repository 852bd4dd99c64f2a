"""Deployment events: scaling decisions and instance restarts, per endpoint and deployment.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07

Hand-written, like every migration here; plain SQLAlchemy types only
(``DateTime(timezone=True)`` for the models' ``UTCDateTime``).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "deployment_events",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("endpoint", sa.String(64), nullable=False),
        sa.Column("deployment", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("from_count", sa.Integer(), nullable=True),
        sa.Column("to_count", sa.Integer(), nullable=True),
        sa.Column("instance", sa.String(128), nullable=True),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_deployment_events")),
    )
    op.create_index(op.f("ix_deployment_events_endpoint_deployment_created_at"), "deployment_events",
                    ["endpoint", "deployment", "created_at"])


def downgrade() -> None:
    op.drop_index(op.f("ix_deployment_events_endpoint_deployment_created_at"), table_name="deployment_events")
    op.drop_table("deployment_events")
