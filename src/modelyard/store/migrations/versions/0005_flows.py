"""Flows: stored flow definitions, flow runs' traces on their usage records; batch files' indexes, outputs' expiry.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-07

Hand-written, like every migration here; plain SQLAlchemy types only.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "flows",
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("dag", sa.Text(), nullable=False),
        sa.Column("files", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_flows")),
    )
    with op.batch_alter_table("usage_records") as batch:
        batch.add_column(sa.Column("parent_request_id", sa.String(64), nullable=True))
        batch.add_column(sa.Column("trace", sa.JSON(), nullable=True))
        batch.create_index(op.f("ix_usage_records_parent_request_id"), ["parent_request_id"])
    with op.batch_alter_table("batch_jobs") as batch:
        batch.add_column(sa.Column("output_expires_after_s", sa.Integer(), nullable=True))
    op.create_index(op.f("ix_batch_files_owner_key_id"), "batch_files", ["owner_key_id"])
    op.create_index(op.f("ix_batch_files_expires_at"), "batch_files", ["expires_at"])


def downgrade() -> None:
    op.drop_index(op.f("ix_batch_files_expires_at"), table_name="batch_files")
    op.drop_index(op.f("ix_batch_files_owner_key_id"), table_name="batch_files")
    with op.batch_alter_table("batch_jobs") as batch:
        batch.drop_column("output_expires_after_s")
    with op.batch_alter_table("usage_records") as batch:
        batch.drop_index(op.f("ix_usage_records_parent_request_id"))
        batch.drop_column("trace")
        batch.drop_column("parent_request_id")
    op.drop_table("flows")
