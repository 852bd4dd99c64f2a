"""Router: recorded responses, feedback and router models.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26

Hand-written, like every migration here; plain SQLAlchemy types only
(``DateTime(timezone=True)`` for the models' ``UTCDateTime``).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa  # noqa: F401
from alembic import op  # noqa: F401

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
