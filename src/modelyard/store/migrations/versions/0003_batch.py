"""Batch jobs: uploaded files, jobs and the state of each input line.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26

Hand-written, like every migration here; plain SQLAlchemy types only
(``DateTime(timezone=True)`` for the models' ``UTCDateTime``).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa  # noqa: F401
from alembic import op  # noqa: F401

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Usage columns shared by batch jobs, the response cache and the router.
    with op.batch_alter_table("usage_records") as t:
        t.add_column(sa.Column("batch_id", sa.String(64), nullable=True))
        t.add_column(sa.Column("saved_tokens", sa.Integer(), nullable=False, server_default="0"))
        t.add_column(sa.Column("saved_usd", sa.Float(), nullable=False, server_default="0"))
        t.add_column(sa.Column("tiers", sa.JSON(), nullable=True))
        t.create_index(op.f("ix_usage_records_batch_id"), ["batch_id"])


def downgrade() -> None:
    with op.batch_alter_table("usage_records") as t:
        t.drop_index(op.f("ix_usage_records_batch_id"))
        for name in ("tiers", "saved_usd", "saved_tokens", "batch_id"):
            t.drop_column(name)
