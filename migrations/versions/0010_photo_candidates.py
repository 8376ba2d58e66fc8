"""A verified photo search in one round trip: imgsearch_photo_candidates.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-06

Adds imgsearch_photo_candidates, which checks the query's embedding space and returns both candidate sources
of a verified photo search (the global top n and the products sharing the most visual words) in one call,
instead of three statements and a space check. No table and no row is touched; downgrading drops the function.
"""

from collections.abc import Sequence

from alembic import op

from imgsearch import sql

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# New in this revision (dropped by the downgrade).
NEW = ("imgsearch_photo_candidates",)


def upgrade() -> None:
    sql.install(op.get_bind(), revision, NEW)


def downgrade() -> None:
    conn = op.get_bind()
    for name in NEW:
        sql.execute(conn, f"DROP FUNCTION IF EXISTS {name}")
