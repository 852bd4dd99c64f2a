"""Batch jobs: uploaded files, jobs and the state of each input line.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26

Hand-written, like every migration here; plain SQLAlchemy types only
(``DateTime(timezone=True)`` for the models' ``UTCDateTime``).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: the moments a batch job records, each as a ``<event>_at`` column
_EVENTS = ("in_progress", "finalizing", "completed", "failed", "expired", "cancelling", "cancelled")


def _timestamp(name: str, *, nullable: bool = False) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    # Usage columns shared by batch jobs, the response cache and the router.
    with op.batch_alter_table("usage_records") as t:
        t.add_column(sa.Column("batch_id", sa.String(64), nullable=True))
        t.add_column(sa.Column("saved_tokens", sa.Integer(), nullable=False, server_default="0"))
        t.add_column(sa.Column("saved_usd", sa.Float(), nullable=False, server_default="0"))
        t.add_column(sa.Column("tiers", sa.JSON(), nullable=True))
        t.create_index(op.f("ix_usage_records_batch_id"), ["batch_id"])

    op.create_table(
        "batch_files",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("filename", sa.String(length=255), nullable=False),
        sa.Column("purpose", sa.String(length=32), nullable=False),
        sa.Column("bytes", sa.BigInteger(), nullable=False),
        sa.Column("owner_key_id", sa.Integer(), nullable=True),
        _timestamp("created_at"),
        _timestamp("expires_at", nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_batch_files"),
    )
    op.create_index("ix_batch_files_created_at", "batch_files", ["created_at"])
    op.create_table(
        "batch_jobs",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("endpoint", sa.String(length=64), nullable=False),
        sa.Column("model", sa.String(length=64), nullable=True),
        sa.Column("deployment", sa.String(length=64), nullable=True),
        sa.Column("input_file_id", sa.String(length=64), nullable=False),
        sa.Column("output_file_id", sa.String(length=64), nullable=True),
        sa.Column("error_file_id", sa.String(length=64), nullable=True),
        sa.Column("completion_window", sa.String(length=16), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("mini_batch_size", sa.Integer(), nullable=False),
        sa.Column("max_retries", sa.Integer(), nullable=False),
        sa.Column("error_threshold", sa.Integer(), nullable=False),
        sa.Column("output_action", sa.String(length=16), nullable=False),
        sa.Column("max_share", sa.Float(), nullable=True),
        sa.Column("metadata", sa.JSON(), nullable=True),
        sa.Column("errors", sa.JSON(), nullable=True),
        sa.Column("total", sa.Integer(), nullable=False),
        sa.Column("completed", sa.Integer(), nullable=False),
        sa.Column("failed", sa.Integer(), nullable=False),
        sa.Column("owner_key_id", sa.Integer(), nullable=True),
        _timestamp("created_at"),
        _timestamp("updated_at"),
        _timestamp("expires_at", nullable=True),
        *(_timestamp(f"{event}_at", nullable=True) for event in _EVENTS),
        sa.PrimaryKeyConstraint("id", name="pk_batch_jobs"),
    )
    op.create_index("ix_batch_jobs_created_at", "batch_jobs", ["created_at"])
    op.create_index("ix_batch_jobs_status", "batch_jobs", ["status"])
    op.create_table(
        "batch_lines",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("batch_id", sa.String(length=64), nullable=False),
        sa.Column("line", sa.Integer(), nullable=False),
        sa.Column("custom_id", sa.String(length=512), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=True),
        sa.Column("request_id", sa.String(length=64), nullable=True),
        sa.Column("response", sa.Text(), nullable=True),
        sa.Column("error_code", sa.String(length=64), nullable=True),
        _timestamp("finished_at", nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_batch_lines"),
        sa.UniqueConstraint("batch_id", "line", name="uq_batch_lines_batch_id_line"),
        sa.UniqueConstraint("batch_id", "custom_id", name="uq_batch_lines_batch_id_custom_id"),
    )
    op.create_index("ix_batch_lines_batch_id_state_line", "batch_lines", ["batch_id", "state", "line"])


def downgrade() -> None:
    op.drop_index("ix_batch_lines_batch_id_state_line", table_name="batch_lines")
    op.drop_table("batch_lines")
    op.drop_index("ix_batch_jobs_status", table_name="batch_jobs")
    op.drop_index("ix_batch_jobs_created_at", table_name="batch_jobs")
    op.drop_table("batch_jobs")
    op.drop_index("ix_batch_files_created_at", table_name="batch_files")
    op.drop_table("batch_files")
    with op.batch_alter_table("usage_records") as t:
        t.drop_index(op.f("ix_usage_records_batch_id"))
        for name in ("tiers", "saved_usd", "saved_tokens", "batch_id"):
            t.drop_column(name)
