"""indexes on generations' created_at and finished_at, for the figures and alerts' time windows

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-05 03:05:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_generations_created_at", "generations", ["created_at"], unique=False)
    op.create_index("ix_generations_finished_at", "generations", ["finished_at"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_generations_finished_at", table_name="generations")
    op.drop_index("ix_generations_created_at", table_name="generations")
