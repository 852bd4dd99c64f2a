"""Batch jobs name their engine: ``local`` (the gateway's deployments) or ``ray-data`` (a Ray cluster).

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-20

Hand-written, like every migration here; plain SQLAlchemy types only. Jobs that exist already ran on the
local engine, which the server default gives them.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("batch_jobs") as batch:
        batch.add_column(sa.Column("engine", sa.String(16), nullable=False, server_default="local"))


def downgrade() -> None:
    with op.batch_alter_table("batch_jobs") as batch:
        batch.drop_column("engine")
