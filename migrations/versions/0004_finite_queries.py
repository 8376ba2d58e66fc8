"""Search: query vectors scaled to length 1 inside the database, NaN price limits refused.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-22

A backend that passes a raw vector such as [1e38, ...] (whose squared length overflows single precision) or
[1e-45, 0, ...] got rows with NaN distances; and a max_price of 'NaN' silently meant no limit. Cosine distance
ignores length, so imgsearch_similar now scales the query to length 1 first (pgvector's l2_normalize works in
double precision) and refuses NaN limits. The other search functions call it, so they follow.
"""

from collections.abc import Sequence

from alembic import op

from imgsearch import sql

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OBJECTS = ("imgsearch_similar",)


def upgrade() -> None:
    sql.install(op.get_bind(), revision, OBJECTS)


def downgrade() -> None:
    sql.restore_previous(op.get_bind(), revision, OBJECTS)
